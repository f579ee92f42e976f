//! How large the pool should be, how many sandboxes to start, and how many idle tenants' sandboxes to evict
//! for them: the pool's policy, pure, so that it can be tested without a sandbox.
//!
//! **Sizing** ([`Demand`], [`target`]), reactive like OpenWhisk's prewarming: the target is the minimum
//! (`--pool-min`) plus what recent demand says, up to the maximum (`--pool-max`) and to what memory allows.
//! Demand is the number of tenants that needed a sandbox (a pool hit or a wait) in the busiest
//! [`SPAN_S`]-second span of the last `--pool-window`: after a burst of 200 new tenants the pool holds 200
//! (bounded) for the next one, and once the window has passed quietly it is back at its minimum. Memory: each
//! sandbox more is counted at what an idle one is charged (measured), and the target never takes
//! `MemAvailable` below a reserve (a tenth of the RAM). The window's counts outlive a restart: [`Demand::export`]
//! gives them as ages, [`Demand::import`] takes them back aged by the downtime (the daemon keeps them in its
//! state directory).
//!
//! **Refill** ([`plan`]): the pool wants `target` idle sandboxes plus one for each tenant waiting; no more than
//! `max_starting` boot at once; and no more than `max_sandboxes` are alive at once. At that cap a tenant that
//! is waiting may take the place of the least recently used idle tenant's sandbox (one eviction for each
//! waiting tenant at most), and the pool itself may take the place of a tenant's sandbox that has been idle
//! for `--pool-reclaim-idle-ms` (reclaimed): a tenant that came, was served and has gone quiet gives its
//! place to the next new one, who then finds a booted sandbox instead of waiting for one. Never a tenant
//! with an invocation in flight, and never more than the pool is short of its target.

/// What the loop knows when it refills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    /// Idle sandboxes in the pool.
    pub idle: usize,
    /// Sandboxes being made.
    pub starting: usize,
    /// Distinct tenants with a request queued and no sandbox.
    pub waiting_tenants: usize,
    /// Sandboxes alive (not killed), pool and tenants.
    pub live: usize,
    /// Idle tenants' sandboxes that could be evicted (nothing in flight).
    pub evictable: usize,
    /// Of those, the ones idle for at least the reclaim time (the least recently used, so the first evicted).
    pub reclaimable: usize,
    /// The pool's target size (see [`target`]).
    pub pool_size: usize,
    pub max_starting: usize,
    pub max_sandboxes: usize,
}

/// What to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refill {
    /// Sandboxes to start now.
    pub start: usize,
    /// Idle tenants' sandboxes to evict first (least recently used first), to stay within the cap, for
    /// tenants that wait.
    pub evict: usize,
    /// Then the next least recently used, for the pool (each idle for at least the reclaim time).
    pub reclaim: usize,
}

pub fn plan(s: PoolState) -> Refill {
    let demand = s.pool_size + s.waiting_tenants;
    let (mut starting, mut live, mut evictable) = (s.starting, s.live, s.evictable);
    let mut for_waiting = s.waiting_tenants;
    // Victims go least recently used first, so a waiting tenant's eviction takes a reclaimable one while
    // there are any: what is left of them is what the pool may take.
    let mut reclaimable = s.reclaimable.min(s.evictable);
    let mut out = Refill::default();
    while s.idle + starting < demand && starting < s.max_starting {
        if live + starting >= s.max_sandboxes {
            if evictable == 0 {
                break;
            }
            if for_waiting > 0 {
                for_waiting -= 1;
                reclaimable = reclaimable.saturating_sub(1);
                out.evict += 1;
            } else if reclaimable > 0 {
                reclaimable -= 1;
                out.reclaim += 1;
            } else {
                break;
            }
            evictable -= 1;
            live -= 1;
        }
        starting += 1;
        out.start += 1;
    }
    out
}

/// Demand is read over spans of this many seconds: the busiest span in the window sizes the pool.
pub const SPAN_S: u64 = 10;

/// Tenants that needed a sandbox, counted per second over a window of seconds (oldest first).
#[derive(Debug)]
pub struct Demand {
    window_s: u64,
    seconds: std::collections::VecDeque<(u64, u32)>,
}

impl Demand {
    pub fn new(window_s: u64) -> Demand {
        Demand { window_s: window_s.max(SPAN_S), seconds: std::collections::VecDeque::new() }
    }

    /// One tenant needed a sandbox at second `now_s` (seconds of a monotonic clock).
    pub fn record(&mut self, now_s: u64) {
        match self.seconds.back_mut() {
            Some((s, n)) if *s == now_s => *n += 1,
            _ => self.seconds.push_back((now_s, 1)),
        }
        self.forget(now_s);
    }

    fn forget(&mut self, now_s: u64) {
        while self.seconds.front().is_some_and(|(s, _)| s + self.window_s <= now_s) {
            self.seconds.pop_front();
        }
    }

    /// The window's counts as (age in seconds at `now_s`, tenants), oldest first: what a restart takes over.
    pub fn export(&mut self, now_s: u64) -> Vec<(u64, u32)> {
        self.forget(now_s);
        self.seconds.iter().map(|&(s, n)| (now_s.saturating_sub(s), n)).collect()
    }

    /// Counts an earlier run exported, `elapsed_s` seconds ago, added at `now_s` (their ages grown by
    /// `elapsed_s`). What has left the window, or would date from before `now_s`'s clock began, is dropped; at
    /// most one entry a second of the window is kept, so a hostile or corrupt file cannot make it grow.
    pub fn import(&mut self, counts: &[(u64, u32)], elapsed_s: u64, now_s: u64) {
        let mut seconds: std::collections::BTreeMap<u64, u32> = self.seconds.iter().copied().collect();
        for &(age, n) in counts {
            let Some(age) = age.checked_add(elapsed_s) else { continue };
            if age >= self.window_s || age > now_s || n == 0 {
                continue;
            }
            let slot = seconds.entry(now_s - age).or_insert(0);
            *slot = slot.saturating_add(n);
        }
        self.seconds = seconds.into_iter().collect();
        self.forget(now_s);
    }

    /// The most tenants within any `SPAN_S` seconds of the window that ends at `now_s`.
    pub fn peak(&mut self, now_s: u64) -> u64 {
        self.forget(now_s);
        let (mut best, mut sum, mut tail) = (0u64, 0u64, 0);
        for i in 0..self.seconds.len() {
            sum += self.seconds[i].1 as u64;
            while self.seconds[tail].0 + SPAN_S <= self.seconds[i].0 {
                sum -= self.seconds[tail].1 as u64;
                tail += 1;
            }
            best = best.max(sum);
        }
        best
    }
}

/// Why the pool has the target it has (health shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// No recent demand beyond the minimum.
    Minimum,
    /// Recent demand: `peak` tenants in the busiest span.
    Demand { peak: u64 },
    /// Demand asks for more than `--pool-max`.
    Maximum { peak: u64 },
    /// Demand asks for more than memory allows.
    Memory { peak: u64, room: u64 },
}

/// What the sizing knows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sizing {
    pub min: usize,
    pub max: usize,
    /// Tenants in the busiest span of the window.
    pub peak: u64,
    /// Sandboxes in the pool and booting now (what memory already holds).
    pub have: usize,
    /// Bytes that more sandboxes may take (MemAvailable less the reserve); None: unknown, not a limit.
    pub memory_room: Option<u64>,
    /// What an idle sandbox is charged.
    pub sandbox_bytes: u64,
}

pub fn target(s: Sizing) -> (usize, Why) {
    let wanted = (s.min as u64).saturating_add(s.peak);
    let mut target = wanted.min(s.max as u64);
    let mut why = if s.peak == 0 {
        Why::Minimum
    } else if wanted > s.max as u64 {
        Why::Maximum { peak: s.peak }
    } else {
        Why::Demand { peak: s.peak }
    };
    if let Some(room) = s.memory_room {
        let more = room / s.sandbox_bytes.max(1);
        let fits = (s.have as u64).saturating_add(more).max(s.min as u64);
        if fits < target {
            target = fits;
            why = Why::Memory { peak: s.peak, room: more };
        }
    }
    (target.max(s.min as u64) as usize, why)
}

impl Why {
    pub fn describe(self, window_s: u64) -> String {
        match self {
            Why::Minimum => format!("the minimum: no tenant needed a sandbox in the last {window_s} s"),
            Why::Demand { peak } => format!("demand: {peak} tenants needed a sandbox within {SPAN_S} s in the last {window_s} s"),
            Why::Maximum { peak } => format!("the maximum: {peak} tenants needed a sandbox within {SPAN_S} s in the last {window_s} s"),
            Why::Memory { peak, room } => {
                format!("memory: room for {room} more sandboxes; {peak} tenants needed one within {SPAN_S} s in the last {window_s} s")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PoolState {
        PoolState { pool_size: 4, max_starting: 4, max_sandboxes: 100, ..PoolState::default() }
    }

    #[test]
    fn an_empty_pool_fills_up_to_its_size_within_the_boot_limit() {
        assert_eq!(plan(state()), Refill { start: 4, ..Refill::default() });
        assert_eq!(plan(PoolState { max_starting: 2, ..state() }), Refill { start: 2, ..Refill::default() });
        assert_eq!(plan(PoolState { idle: 3, ..state() }), Refill { start: 1, ..Refill::default() });
        assert_eq!(plan(PoolState { idle: 2, starting: 2, ..state() }), Refill::default());
        assert_eq!(plan(PoolState { idle: 9, ..state() }), Refill::default(), "never more than asked");
    }

    #[test]
    fn waiting_tenants_add_to_the_demand() {
        let s = PoolState { idle: 0, waiting_tenants: 3, max_starting: 16, ..state() };
        assert_eq!(plan(s), Refill { start: 7, ..Refill::default() });
    }

    #[test]
    fn at_the_cap_only_waiting_tenants_evict_and_one_each() {
        let full = PoolState { live: 100, evictable: 50, max_starting: 16, ..state() };
        // The pool alone evicts no one who has not been idle for the reclaim time.
        assert_eq!(plan(full), Refill::default());
        // Two tenants waiting: two evictions, two starts, however many more the pool would like.
        assert_eq!(plan(PoolState { waiting_tenants: 2, ..full }), Refill { start: 2, evict: 2, reclaim: 0 });
        // Nothing idle to evict: wait.
        assert_eq!(plan(PoolState { waiting_tenants: 2, evictable: 0, ..full }), Refill::default());
        assert_eq!(plan(PoolState { waiting_tenants: 3, evictable: 1, ..full }), Refill { start: 1, evict: 1, reclaim: 0 });
    }

    #[test]
    fn at_the_cap_the_pool_reclaims_long_idle_tenants_up_to_its_target() {
        let full = PoolState { live: 100, evictable: 50, max_starting: 16, ..state() };
        // Ten idle past the reclaim time, the pool four short: four reclaimed, four started.
        assert_eq!(plan(PoolState { reclaimable: 10, ..full }), Refill { start: 4, evict: 0, reclaim: 4 });
        // Two of them: two.
        assert_eq!(plan(PoolState { reclaimable: 2, ..full }), Refill { start: 2, evict: 0, reclaim: 2 });
        // The pool at its target: no one.
        assert_eq!(plan(PoolState { reclaimable: 10, idle: 4, ..full }), Refill::default());
        // A waiting tenant's eviction takes the least recently used first, a reclaimable one: one left.
        assert_eq!(plan(PoolState { reclaimable: 2, waiting_tenants: 1, ..full }), Refill { start: 2, evict: 1, reclaim: 1 });
        // Never more than are idle at all, nor more boots at once than allowed.
        assert_eq!(plan(PoolState { reclaimable: 9, evictable: 3, ..full }), Refill { start: 3, evict: 0, reclaim: 3 });
        assert_eq!(plan(PoolState { reclaimable: 10, max_starting: 1, ..full }), Refill { start: 1, evict: 0, reclaim: 1 });
        assert_eq!(plan(PoolState { reclaimable: 10, starting: 3, max_starting: 4, ..full }), Refill { start: 1, evict: 0, reclaim: 1 });
    }

    #[test]
    fn below_the_cap_starts_without_evicting_until_it_is_reached() {
        let s = PoolState { live: 98, evictable: 10, waiting_tenants: 1, max_starting: 16, ..state() };
        // Demand 5: two fit under the cap, the third needs the one eviction the waiting tenant allows.
        assert_eq!(plan(s), Refill { start: 3, evict: 1, reclaim: 0 });
    }
    #[test]
    fn demand_is_the_busiest_span_of_the_window_and_is_forgotten() {
        let mut d = Demand::new(60);
        assert_eq!(d.peak(0), 0);
        for _ in 0..5 {
            d.record(100);
        }
        for _ in 0..3 {
            d.record(105);
        }
        d.record(130);
        // 100 and 105 are within one 10 s span; 130 is not.
        assert_eq!(d.peak(130), 8);
        // 100 and 105 fall out of the window at 160 and 165.
        assert_eq!(d.peak(161), 3);
        assert_eq!(d.peak(166), 1);
        assert_eq!(d.peak(190), 0);
    }

    #[test]
    fn demand_survives_a_restart_aged_by_the_time_between() {
        let mut before = Demand::new(60);
        for _ in 0..40 {
            before.record(500);
        }
        before.record(530);
        let saved = before.export(540);
        assert_eq!(saved, vec![(40, 40), (10, 1)]);
        // A new run's clock starts elsewhere; 5 s passed between the save and the start.
        let mut after = Demand::new(60);
        after.import(&saved, 5, 70);
        assert_eq!(after.peak(70), 40, "the burst 45 s ago still sizes the pool");
        // Its second falls out of the window 60 s after it happened: 15 s later.
        assert_eq!(after.peak(85), 1);
        // A save older than the window, or counts from before the new clock's start, bring nothing.
        let mut late = Demand::new(60);
        late.import(&saved, 30, 70);
        assert_eq!(late.peak(70), 1);
        let mut early = Demand::new(60);
        early.import(&saved, 0, 20);
        assert_eq!(early.peak(20), 1);
        // Hostile counts: duplicates are summed into one second, overflow saturates, nothing grows past the window.
        let mut hostile = Demand::new(60);
        let junk: Vec<(u64, u32)> = (0..100_000).map(|i| (i % 70, u32::MAX)).chain([(u64::MAX, 1)]).collect();
        hostile.import(&junk, 0, 1000);
        assert_eq!(hostile.seconds.len(), 60);
        assert!(hostile.peak(1000) > 0);
    }

    #[test]
    fn the_target_is_the_minimum_plus_demand_within_the_maximum_and_memory() {
        let s = Sizing { min: 4, max: 100, peak: 0, have: 4, memory_room: None, sandbox_bytes: 8 << 20 };
        assert_eq!(target(s), (4, Why::Minimum));
        assert_eq!(target(Sizing { peak: 30, ..s }), (34, Why::Demand { peak: 30 }));
        assert_eq!(target(Sizing { peak: 300, ..s }), (100, Why::Maximum { peak: 300 }));
        // Room for 10 more at 8 MiB: 4 held + 10.
        let tight = Sizing { peak: 300, memory_room: Some(80 << 20), ..s };
        assert_eq!(target(tight), (14, Why::Memory { peak: 300, room: 10 }));
        // No room at all: never below the minimum.
        assert_eq!(target(Sizing { memory_room: Some(0), have: 0, ..tight }).0, 4);
    }
}
