//! Sandboxes' lives: the pre-warmed pool and its refill, assignment to a tenant, the queue of requests
//! waiting for a sandbox, eviction at the cap, recycling of spent sandboxes, and what a sandbox's death
//! means for the invocations it held.

use super::*;

use std::path::PathBuf;

use super::demand_file::{self, SavedDemand};

/// Output kept from a sandbox's stdout and stderr, to tell a V8 heap failure from other deaths.
pub(super) const OUTPUT_TAIL: usize = 8 << 10;

/// A sandbox that has compiled this many distinct sources is recycled when next idle.
pub(super) const MAX_COMPILED: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KillReason {
    Timeout,
    Protocol,
    Idle,
    MaxAge,
    MaxRequests,
    Evicted,
    /// A tenant's sandbox idle for `--pool-reclaim-idle-ms` at the cap, its place given to the pool.
    Reclaimed,
    /// An idle pool sandbox beyond the pool's target.
    PoolShrink,
    Shutdown,
}

impl KillReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            KillReason::Timeout => "timeout",
            KillReason::Protocol => "protocol_error",
            KillReason::Idle => "idle",
            KillReason::MaxAge => "max_age",
            KillReason::MaxRequests => "max_requests",
            KillReason::Evicted => "evicted",
            KillReason::Reclaimed => "reclaimed",
            KillReason::PoolShrink => "pool_shrink",
            KillReason::Shutdown => "shutdown",
        }
    }
}

pub(super) struct Sb {
    pub(super) sandbox: Option<jailer::Sandbox>,
    pub(super) socket: UnixStream,
    pub(super) output: OwnedFd,
    pub(super) output_tail: Vec<u8>,
    pub(super) decoder: Decoder,
    pub(super) outbox: Vec<u8>,
    /// In the loop's `flush_queue`.
    pub(super) flush_scheduled: bool,
    /// Registered for writability too: only while `outbox` holds what the socket would not take.
    pub(super) write_interest: bool,
    pub(super) tenant: Option<String>,
    pub(super) in_flight: HashSet<u32>,
    pub(super) compiled: HashSet<String>,
    pub(super) created: Instant,
    pub(super) last_used: Instant,
    pub(super) served: u64,
    pub(super) killed: Option<KillReason>,
    /// Confined to the batch CPUs: booting in the pool, or a tenant's sandbox that is busy (see `cpus`).
    pub(super) on_batch: bool,
    /// Its processes when it became ready (see `Spawned::processes`).
    pub(super) boot_processes: Vec<i32>,
    /// Its CPU time counter (see `cpus::CpuTime`), sampled while an invocation runs and every housekeeping
    /// tick (to find work left running in the background), with the tick's last sample.
    pub(super) cpu_time: Option<CpuTime>,
    pub(super) cpu_seen: Duration,
    /// Since when the decoder has held part of a frame (see `PARTIAL_FRAME_TIMEOUT`).
    pub(super) partial_since: Option<Instant>,
    /// The version of its tenant's secrets it was last sent (0: none).
    pub(super) secrets_version: u64,
    /// The egress proxy's listeners inside the sandbox (dropped when it is killed), and its tunnels.
    pub(super) egress: Option<egress::Listeners>,
    pub(super) tunnels: HashSet<Key>,
    /// Of those, the ones past the allow-list (resolving, connecting or open): at most `SANDBOX_OPEN_MAX`.
    pub(super) egress_open: usize,
}

impl Sb {
    /// A tenant's live sandbox with nothing in flight: what an eviction, a reclaim or a recycle may take.
    pub(super) fn idle_tenant(&self) -> bool {
        self.tenant.is_some() && self.killed.is_none() && self.in_flight.is_empty()
    }
}

pub(super) fn drain_output(s: &mut Sb) {
    let mut buf = [0u8; 16 << 10];
    loop {
        // SAFETY: a non-blocking read into a local buffer from a pipe we own.
        let n = unsafe { libc::read(s.output.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        s.output_tail.extend_from_slice(&buf[..n as usize]);
        if s.output_tail.len() > OUTPUT_TAIL {
            let cut = s.output_tail.len() - OUTPUT_TAIL;
            s.output_tail.drain(..cut);
        }
    }
}

pub(super) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

/// What an idle sandbox is taken to cost until one has been measured.
const SANDBOX_BYTES_GUESS: u64 = 32 << 20;
/// Idle pool sandboxes retired per housekeeping tick when the target falls (teardown is kernel work).
const SHRINK_PER_TICK: usize = 2;

/// How often changed demand is written out (and always at shutdown).
const DEMAND_SAVE_EVERY: Duration = Duration::from_secs(10);

/// The pool's sizing state (see `pool_policy`).
pub(super) struct PoolSizing {
    demand: pool_policy::Demand,
    window_s: u64,
    /// Seconds are counted from a window before this instant (`now_s`), so that demand an earlier run saved
    /// has seconds to go in (an `Instant` a window back may not exist soon after the machine booted).
    epoch: Instant,
    pub(super) target: usize,
    why: pool_policy::Why,
    memory_room: Option<u64>,
    /// What an idle sandbox is charged (memory cgroup, averaged over the sandboxes made).
    sandbox_bytes: u64,
    demand_file: PathBuf,
    /// Demand recorded since the last save.
    unsaved: bool,
    last_save: Instant,
    /// The last error saving demand, printed once until it changes.
    save_error: Option<String>,
}

impl PoolSizing {
    pub(super) fn new(config: &Config) -> PoolSizing {
        // The demand counts over at least one span, whatever the flag says; so do the seconds here.
        let window_s = config.pool_window.as_secs().max(pool_policy::SPAN_S);
        let now = Instant::now();
        PoolSizing {
            demand: pool_policy::Demand::new(window_s),
            window_s,
            epoch: now,
            target: config.pool_min,
            why: pool_policy::Why::Minimum,
            memory_room: None,
            sandbox_bytes: SANDBOX_BYTES_GUESS,
            demand_file: config.state_dir.join(demand_file::NAME),
            unsaved: false,
            last_save: now,
            save_error: None,
        }
    }

    /// The demand an earlier run saved, aged by the time since: a daemon restarted after a burst (an upgrade,
    /// a rolling deploy, a crash) comes back with the pool that burst sized, not its minimum. A missing file
    /// is a first start; a bad one is reported and ignored, never a reason not to start. Returns the busiest
    /// span's tenants and how long ago the file was saved, if it brought any demand.
    fn load_demand(&mut self) -> Option<(u64, u64)> {
        let saved = match demand_file::read(&self.demand_file) {
            Ok(saved) => saved?,
            Err(e) => {
                eprintln!("taskcell: {e}; the pool starts from its minimum");
                return None;
            }
        };
        let elapsed = demand_file::unix_now_s().saturating_sub(saved.saved_unix_s);
        let now = self.now_s();
        self.demand.import(&saved.seconds, elapsed, now);
        let peak = self.demand.peak(now);
        (peak > 0).then_some((peak, elapsed))
    }

    /// Writes the window's demand if it changed (or `force`, at shutdown), at most every `DEMAND_SAVE_EVERY`.
    pub(super) fn save_demand(&mut self, force: bool) {
        if !force && (!self.unsaved || self.last_save.elapsed() < DEMAND_SAVE_EVERY) {
            return;
        }
        self.last_save = Instant::now();
        self.unsaved = false;
        let now = self.now_s();
        let mut seconds = self.demand.export(now);
        seconds.drain(..seconds.len().saturating_sub(demand_file::MAX_ENTRIES));
        match demand_file::write(&self.demand_file, &SavedDemand { saved_unix_s: demand_file::unix_now_s(), seconds }) {
            Ok(()) => self.save_error = None,
            Err(e) => {
                let message = e.to_string();
                if self.save_error.as_deref() != Some(message.as_str()) {
                    eprintln!("taskcell: {message}");
                }
                self.save_error = Some(message);
            }
        }
    }

    fn now_s(&self) -> u64 {
        self.window_s + self.epoch.elapsed().as_secs()
    }

    pub(super) fn health(&self, config: &Config) -> serde_json::Value {
        serde_json::json!({
            "min": config.pool_min,
            "max": config.pool_max,
            "target": self.target,
            "why": self.why.describe(self.window_s),
            "sandbox_bytes": self.sandbox_bytes,
        })
    }
}

/// Bytes more sandboxes may take: MemAvailable less a tenth of MemTotal; None if /proc/meminfo says nothing.
fn memory_room() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let (total, available) = (kib("MemTotal:")?, kib("MemAvailable:")?);
    Some(available.saturating_sub(total / 10) << 10)
}

impl Server {
    /// A tenant needs a sandbox (it has none): demand that sizes the pool.
    pub(super) fn note_demand(&mut self) -> &mut Server {
        let now = self.sizing.now_s();
        self.sizing.demand.record(now);
        self.sizing.unsaved = true;
        self.retarget_pool();
        self
    }

    fn retarget_pool(&mut self) {
        let now = self.sizing.now_s();
        let sizing = pool_policy::Sizing {
            min: self.config.pool_min,
            max: self.config.pool_max,
            peak: self.sizing.demand.peak(now),
            have: self.pool.len() + self.starting,
            memory_room: self.sizing.memory_room,
            sandbox_bytes: self.sizing.sandbox_bytes,
        };
        (self.sizing.target, self.sizing.why) = pool_policy::target(sizing);
    }

    /// At start: the target from memory and the demand the last run saved, before the first refill.
    pub(super) fn start_sizing(&mut self) {
        let restored = self.sizing.load_demand();
        self.sizing.memory_room = memory_room();
        self.retarget_pool();
        if let Some((peak, elapsed)) = restored {
            eprintln!(
                "taskcell: the last run's demand ({peak} tenants needed a sandbox within {} s, saved {elapsed} s ago): pool target {}, {}",
                pool_policy::SPAN_S,
                self.sizing.target,
                self.sizing.why.describe(self.sizing.window_s)
            );
        }
    }

    /// Housekeeping: memory read again, the target recomputed (demand leaves the window), idle sandboxes
    /// beyond it retired, a few a tick, the longest idle first.
    pub(super) fn size_pool(&mut self) {
        self.sizing.memory_room = memory_room();
        self.retarget_pool();
        self.sizing.save_demand(false);
        let mut retired = 0;
        while self.pool.len() > self.sizing.target && retired < SHRINK_PER_TICK {
            let Some(sb) = self.pool.pop_front() else { break };
            self.kill_sandbox(sb, KillReason::PoolShrink);
            retired += 1;
        }
        if self.pool.len() + self.starting < self.sizing.target {
            self.refill_pool();
        }
    }
}

impl Server {
    pub(super) fn refill_pool(&mut self) {
        if self.draining.is_some() {
            return;
        }
        if let Some((until, _)) = self.spawn_backoff {
            if Instant::now() < until {
                return;
            }
        }
        let (mut evictable, mut reclaimable) = (0, 0);
        let reclaim = self.config.pool_reclaim_idle;
        let now = Instant::now();
        for (_, s) in self.sbs.iter().filter(|(_, s)| s.idle_tenant()) {
            evictable += 1;
            if !reclaim.is_zero() && now.duration_since(s.last_used) >= reclaim {
                reclaimable += 1;
            }
        }
        let state = pool_policy::PoolState {
            idle: self.pool.len(),
            starting: self.starting,
            waiting_tenants: self.waiting_tenants(),
            live: self.live_sandboxes(),
            evictable,
            reclaimable,
            pool_size: self.sizing.target,
            max_starting: self.config.max_starting,
            max_sandboxes: self.config.max_sandboxes,
        };
        let refill = pool_policy::plan(state);
        // Tenants waiting, or the next new one would: boots are what they wait for, on every CPU.
        self.spawner.set_urgent(state.waiting_tenants > 0 || state.idle == 0);
        for _ in 0..refill.evict {
            self.evict_idle(KillReason::Evicted);
        }
        for _ in 0..refill.reclaim {
            self.evict_idle(KillReason::Reclaimed);
        }
        for _ in 0..refill.start {
            self.starting += 1;
            self.spawner.request();
        }
    }

    /// Sandboxes not yet killed (the killed ones are gone as soon as the kernel has reaped them).
    pub(super) fn live_sandboxes(&self) -> usize {
        self.sbs.iter().filter(|(_, s)| s.killed.is_none()).count()
    }

    /// Kill the least recently used tenant sandbox with nothing in flight; false if there is none.
    pub(super) fn evict_idle(&mut self, reason: KillReason) -> bool {
        let victim = self.sbs.iter().filter(|(_, s)| s.idle_tenant()).min_by_key(|(_, s)| s.last_used).map(|(k, _)| k);
        match victim {
            Some(k) => {
                self.kill_sandbox(k, reason);
                true
            }
            None => false,
        }
    }

    pub(super) fn waiting_tenants(&self) -> usize {
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.pending {
            if !seen.contains(&p.tenant.as_str()) && !self.tenants.contains_key(&p.tenant) {
                seen.push(&p.tenant);
            }
        }
        seen.len()
    }

    pub(super) fn collect_spawned(&mut self) {
        while let Ok(outcome) = self.spawner.results.try_recv() {
            self.starting = self.starting.saturating_sub(1);
            match outcome {
                Ok(spawned) => {
                    self.spawn_backoff = None;
                    self.last_spawn_error = None;
                    self.metrics.sandbox_created();
                    if let Some(sb) = self.adopt(spawned) {
                        self.pool.push_back(sb);
                        self.serve_pending();
                    }
                }
                Err(message) => {
                    eprintln!("taskcell: could not make a sandbox: {message}");
                    let pause = self.spawn_backoff.map_or(Duration::from_millis(250), |(_, p)| (p * 2).min(Duration::from_secs(10)));
                    self.spawn_backoff = Some((Instant::now() + pause, pause));
                    self.last_spawn_error = Some(message.clone());
                    // Requests queued for a sandbox will not get one from this attempt: answer them now
                    // rather than at their deadline, unless another start is still under way.
                    if self.starting == 0 && self.pool.is_empty() {
                        let pending: Vec<Pending> = self.pending.drain(..).collect();
                        for p in pending {
                            if let Some(&sb) = self.tenants.get(&p.tenant) {
                                self.dispatch(sb, p.conn, p.keep_alive, p.request_id, p.tenant, p.job, false, p.started);
                                continue;
                            }
                            self.metrics.invocation("overloaded");
                            let msg = format!("no sandbox could be made: {message}");
                            let r = Response::error(503, "overloaded", &msg, None).header("Retry-After", "1");
                            self.respond(p.conn, &p.request_id, p.keep_alive, r);
                        }
                    }
                }
            }
        }
        self.refill_pool();
    }

    pub(super) fn adopt(&mut self, spawned: Spawned) -> Option<Key> {
        let Spawned { sandbox, socket, output, egress, processes } = spawned;
        // SAFETY: setting O_NONBLOCK on a pipe descriptor we own.
        unsafe { libc::fcntl(output.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let cpu_time = if self.cpus.is_some() { CpuTime::of_sandbox(&sandbox, processes.get(1).copied()) } else { None };
        let charged = sandbox.memory_current();
        if charged > 0 {
            self.sizing.sandbox_bytes = (self.sizing.sandbox_bytes * 7 + charged) / 8;
        }
        let sb = Sb {
            socket: UnixStream::from_std(socket),
            output,
            output_tail: Vec::new(),
            decoder: Decoder::new(),
            outbox: Vec::new(),
            flush_scheduled: false,
            write_interest: false,
            tenant: None,
            in_flight: HashSet::new(),
            compiled: HashSet::new(),
            created: Instant::now(),
            last_used: Instant::now(),
            served: 0,
            killed: None,
            on_batch: self.cpus.is_some(),
            cpu_seen: cpu_time.as_ref().and_then(|c| c.total()).unwrap_or_default(),
            cpu_time,
            boot_processes: processes,
            partial_since: None,
            secrets_version: 0,
            egress: Some(egress::Listeners::from_std(egress)),
            tunnels: HashSet::new(),
            egress_open: 0,
            sandbox: Some(sandbox),
        };
        let key = self.sbs.insert(sb);
        let registry = self.poll.registry();
        let s = self.sbs.get_mut(key).expect("just inserted");
        let pidfd = s.sandbox.as_ref().expect("set").pidfd().as_raw_fd();
        let ok = registry.register(&mut s.socket, Source::Sandbox(key, SandboxFd::Socket).token(), Interest::READABLE).is_ok()
            && registry.register(&mut SourceFd(&pidfd), Source::Sandbox(key, SandboxFd::Pid).token(), Interest::READABLE).is_ok()
            && registry
                .register(&mut SourceFd(&s.output.as_raw_fd()), Source::Sandbox(key, SandboxFd::Output).token(), Interest::READABLE)
                .is_ok()
            && s.egress.as_mut().is_some_and(|l| l.register(registry, key).is_ok());
        if !ok {
            eprintln!("taskcell: could not register a sandbox with the event loop");
            self.remove_sandbox(key);
            return None;
        }
        Some(key)
    }

    /// Give sandboxes (from the pool) to the tenants whose requests are queued, oldest first.
    pub(super) fn serve_pending(&mut self) {
        let mut waiting = std::mem::take(&mut self.pending);
        let mut took = false;
        while let Some(p) = waiting.pop_front() {
            let sb = match self.tenants.get(&p.tenant).copied() {
                Some(sb) => Some((sb, false)),
                None => self.take_from_pool().map(|sb| {
                    took = true;
                    self.metrics.cold_start(ColdStart::OnDemand);
                    self.assign(sb, &p.tenant);
                    (sb, true)
                }),
            };
            match sb {
                Some((sb, cold)) => self.dispatch(sb, p.conn, p.keep_alive, p.request_id, p.tenant, p.job, cold, p.started),
                None => self.pending.push_back(p),
            }
        }
        // Once more with every tenant still waiting back in the queue: the refills above counted only those
        // already put back.
        if took && !self.pending.is_empty() {
            self.refill_pool();
        }
    }

    /// A pool sandbox for a tenant, or None; the pool is refilled at once, before the tenant's request goes to
    /// the sandbox. (Measured the other way round, refilling after the dispatch, sequential pool hits were
    /// 0.3-0.6 ms slower at p50 in six of six pairs: docs/pool.md.)
    pub(super) fn take_from_pool(&mut self) -> Option<Key> {
        while let Some(sb) = self.pool.pop_front() {
            if self.sbs.get(sb).is_some_and(|s| s.killed.is_none()) {
                self.refill_pool();
                return Some(sb);
            }
        }
        None
    }

    pub(super) fn assign(&mut self, sb: Key, tenant: &str) {
        let recently_busy = self.recently_busy(tenant);
        if let Some(s) = self.sbs.get_mut(sb) {
            // A tenant busy a moment ago gets its new sandbox on the batch CPUs, at the boot weight it has;
            // any other, the tenant weight and (if it booted there) every CPU.
            if !(s.on_batch && recently_busy) {
                if let Some(Err(e)) = s.sandbox.as_ref().map(|sandbox| sandbox.set_cpu_weight(TENANT_CPU_WEIGHT)) {
                    eprintln!("taskcell: raising a sandbox's CPU weight: {}", crate::error_chain(&e));
                }
                if let (Some(cpus), true) = (&self.cpus, s.on_batch) {
                    // Idle in the pool, it has the processes and threads it had when ready: one pass over
                    // those, not a walk of its tree (~0.2 ms here).
                    for &pid in &s.boot_processes {
                        jailer::sched::set_process_affinity(pid, &cpus.all);
                    }
                    s.on_batch = false;
                }
            }
            s.tenant = Some(tenant.to_string());
            s.created = Instant::now();
            s.last_used = Instant::now();
        }
        self.tenants.insert(tenant.to_string(), sb);
    }

    pub(super) fn kill_sandbox(&mut self, key: Key, reason: KillReason) {
        let Some(s) = self.sbs.get_mut(key) else { return };
        if s.killed.is_none() {
            s.killed = Some(reason);
        }
        if let Some(sandbox) = &s.sandbox {
            sandbox.kill();
        }
        self.close_sandbox_egress(key);
        let Some(s) = self.sbs.get_mut(key) else { return };
        // From now on the tenant's next request gets a fresh sandbox.
        if let Some(t) = s.tenant.clone() {
            if self.tenants.get(&t) == Some(&key) {
                self.tenants.remove(&t);
            }
        }
        self.pool.retain(|k| *k != key);
    }

    pub(super) fn on_sandbox_exit(&mut self, key: Key) {
        let Some(s) = self.sbs.get_mut(key) else { return };
        let Some(sandbox) = s.sandbox.as_mut() else { return };
        let exit = match sandbox.try_wait(false) {
            Ok(Some(exit)) => exit,
            Ok(None) => return,
            Err(e) => {
                eprintln!("taskcell: waiting for a sandbox: {e}");
                return;
            }
        };
        drain_output(s);
        let tail = String::from_utf8_lossy(&s.output_tail).into_owned();
        let heap = tail.contains("JavaScript heap out of memory") || tail.contains("Reached heap limit");
        let memory = exit.oom_killed || heap;
        let reason = if memory {
            "memory_limit"
        } else if let Some(r) = s.killed {
            r.as_str()
        } else if exit.seccomp_killed() {
            "seccomp"
        } else {
            "crashed"
        };
        self.metrics.sandbox_killed(reason);
        if memory && self.cpus.is_some() {
            if let Some(t) = &s.tenant {
                self.busy_tenants.insert(t.clone(), Instant::now());
            }
        }
        let killed = s.killed;
        let in_flight: Vec<u32> = s.in_flight.iter().copied().collect();
        let (status, kind, message) = if memory {
            let limit = self.config.memory;
            (
                507,
                "memory_limit",
                format!(
                    "the sandbox hit its memory limit of {limit} bytes{}",
                    if heap { " (V8 heap exhausted)" } else { " (killed by the cgroup OOM killer)" }
                ),
            )
        } else if killed == Some(KillReason::Protocol) {
            (502, "sandbox_crashed", "the sandbox broke the frame protocol (something in it wrote to the runtime's socket what the runtime never sends); it was killed".to_string())
        } else if killed == Some(KillReason::Timeout) {
            (502, "sandbox_crashed", "the sandbox was killed because another invocation in it ran past its time limit".to_string())
        } else if exit.seccomp_killed() {
            let culprit = s
                .sandbox
                .as_ref()
                .and_then(|sb| sb.seccomp_culprit())
                .map_or("a system call".to_string(), |c| format!("the system call {c}"));
            (
                502,
                "sandbox_crashed",
                format!("the sandbox was killed by seccomp (SIGSYS): the task made {culprit}, which the sandbox's policy forbids"),
            )
        } else {
            let how = match exit.status {
                jailer::pid::Status::Exited(c) => format!("exited with status {c}"),
                jailer::pid::Status::Signaled(sig) => format!("was killed by signal {sig} ({})", signal_name(sig)),
            };
            (502, "sandbox_crashed", format!("the sandbox {how} during the invocation"))
        };
        for id in in_flight {
            self.complete(id, Err((status, kind, message.clone())));
        }
        if !tail.trim().is_empty() && killed.is_none() {
            eprintln!(
                "taskcell: sandbox output before it died: {}",
                tail.trim().chars().rev().take(500).collect::<String>().chars().rev().collect::<String>()
            );
        }
        self.remove_sandbox(key);
        self.refill_pool();
    }

    pub(super) fn remove_sandbox(&mut self, key: Key) {
        self.close_sandbox_egress(key);
        let Some(mut s) = self.sbs.remove(key) else { return };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut s.socket);
        let _ = registry.deregister(&mut SourceFd(&s.output.as_raw_fd()));
        if let Some(sandbox) = s.sandbox.take() {
            let _ = registry.deregister(&mut SourceFd(&sandbox.pidfd().as_raw_fd()));
            // Removing the cgroup may wait for the kernel: the reaper thread does it.
            let _ = self.reaper.send(sandbox);
        }
        if let Some(t) = &s.tenant {
            if self.tenants.get(t) == Some(&key) {
                self.tenants.remove(t);
            }
        }
        self.pool.retain(|k| *k != key);
    }

    pub(super) fn recycle_if_spent(&mut self, key: Key) {
        let Some(s) = self.sbs.get(key) else { return };
        // Every distinct piece of code stays compiled in the sandbox for its life: bound that too.
        let spent = s.served >= self.config.max_requests || s.compiled.len() > MAX_COMPILED;
        if s.in_flight.is_empty() && s.killed.is_none() && spent {
            self.kill_sandbox(key, KillReason::MaxRequests);
        }
    }

    pub(super) fn spent_sandboxes(&self, now: Instant) -> Vec<(Key, KillReason)> {
        let mut out = Vec::new();
        for (key, s) in self.sbs.iter() {
            if !s.idle_tenant() {
                continue;
            }
            if now.duration_since(s.last_used) >= self.config.idle_timeout {
                out.push((key, KillReason::Idle));
            } else if now.duration_since(s.created) >= self.config.max_age {
                out.push((key, KillReason::MaxAge));
            } else if s.served >= self.config.max_requests {
                out.push((key, KillReason::MaxRequests));
            }
        }
        out
    }
}
