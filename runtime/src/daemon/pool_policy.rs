//! How many sandboxes to start, and how many idle tenants' sandboxes to evict for them: the pool's policy,
//! pure, so that it can be tested without a sandbox.
//!
//! The pool wants `pool_size` idle sandboxes plus one for each tenant waiting for a sandbox; no more than
//! `max_starting` boot at once; and no more than `max_sandboxes` are alive at once. At that cap a tenant that
//! is waiting may take the place of the least recently used idle tenant's sandbox (one eviction for each
//! waiting tenant at most); the pool alone never evicts anyone.

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
    pub pool_size: usize,
    pub max_starting: usize,
    pub max_sandboxes: usize,
}

/// What to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refill {
    /// Sandboxes to start now.
    pub start: usize,
    /// Idle tenants' sandboxes to evict first (least recently used first), to stay within the cap.
    pub evict: usize,
}

pub fn plan(s: PoolState) -> Refill {
    let demand = s.pool_size + s.waiting_tenants;
    let (mut starting, mut live, mut evictable, mut evictions) = (s.starting, s.live, s.evictable, s.waiting_tenants);
    let mut out = Refill::default();
    while s.idle + starting < demand && starting < s.max_starting {
        if live + starting >= s.max_sandboxes {
            if evictions == 0 || evictable == 0 {
                break;
            }
            evictions -= 1;
            evictable -= 1;
            live -= 1;
            out.evict += 1;
        }
        starting += 1;
        out.start += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PoolState {
        PoolState { pool_size: 4, max_starting: 4, max_sandboxes: 100, ..PoolState::default() }
    }

    #[test]
    fn an_empty_pool_fills_up_to_its_size_within_the_boot_limit() {
        assert_eq!(plan(state()), Refill { start: 4, evict: 0 });
        assert_eq!(plan(PoolState { max_starting: 2, ..state() }), Refill { start: 2, evict: 0 });
        assert_eq!(plan(PoolState { idle: 3, ..state() }), Refill { start: 1, evict: 0 });
        assert_eq!(plan(PoolState { idle: 2, starting: 2, ..state() }), Refill { start: 0, evict: 0 });
        assert_eq!(plan(PoolState { idle: 9, ..state() }), Refill::default(), "never more than asked");
    }

    #[test]
    fn waiting_tenants_add_to_the_demand() {
        let s = PoolState { idle: 0, waiting_tenants: 3, max_starting: 16, ..state() };
        assert_eq!(plan(s), Refill { start: 7, evict: 0 });
    }

    #[test]
    fn at_the_cap_only_waiting_tenants_evict_and_one_each() {
        let full = PoolState { live: 100, evictable: 50, max_starting: 16, ..state() };
        // The pool alone never evicts anyone.
        assert_eq!(plan(full), Refill::default());
        // Two tenants waiting: two evictions, two starts, however many more the pool would like.
        assert_eq!(plan(PoolState { waiting_tenants: 2, ..full }), Refill { start: 2, evict: 2 });
        // Nothing idle to evict: wait.
        assert_eq!(plan(PoolState { waiting_tenants: 2, evictable: 0, ..full }), Refill::default());
        assert_eq!(plan(PoolState { waiting_tenants: 3, evictable: 1, ..full }), Refill { start: 1, evict: 1 });
    }

    #[test]
    fn below_the_cap_starts_without_evicting_until_it_is_reached() {
        let s = PoolState { live: 98, evictable: 10, waiting_tenants: 1, max_starting: 16, ..state() };
        // Demand 5: two fit under the cap, the third needs the one eviction the waiting tenant allows.
        assert_eq!(plan(s), Refill { start: 3, evict: 1 });
    }
}
