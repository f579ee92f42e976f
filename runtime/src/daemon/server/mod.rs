//! The event loop: connections, routing, sandboxes, timers and log fan-out on one thread.
//!
//! One `Server` owns all of it; each concern adds its methods to it from a module of its own:
//!
//! | module | owns |
//! | --- | --- |
//! | `tokens` | what an event's token names ([`tokens::Source`]) |
//! | `front` | the front listeners (Unix socket, TCP) and their streams, one type each |
//! | `wire` | client connections: accepting, reading, the per-connection HTTP state machine, writing, back-pressure |
//! | `handlers` | one handler per endpoint, acting on the typed requests of `daemon::api` |
//! | `invoke` | invocations: dispatch to a sandbox, completion, deadlines |
//! | `pool` | sandboxes' lives: the pool, assignment to tenants, eviction, recycling, deaths |
//! | `demand_file` | the pool's demand kept across restarts, in the state directory |
//! | `frames` | a sandbox's socket: reading frames within a budget and checking each against the protocol |
//! | `placement` | CPU classes: moving busy sandboxes to the batch CPUs and back |
//! | `threads` | the store and reaper threads and what goes to and from them |
//!
//! This file holds the state, the loop itself, housekeeping, signals and shutdown. Every read and write
//! drains until `WouldBlock` or a budget; blocking work happens elsewhere: sandboxes are made on spawner
//! threads, deployed code is written and fsynced on the store thread, dead sandboxes' cgroups are removed on
//! the reaper thread; each reports back through the waker.

mod demand_file;
mod egress;
mod frames;
mod front;
mod handlers;
mod invoke;
mod placement;
mod pool;
mod threads;
mod tokens;
mod wire;

use frames::*;
use front::{Listener, Stream, Transport};
use invoke::*;
use placement::*;
use pool::*;
use threads::*;
use tokens::{End, SandboxFd, Source, Via};
use wire::*;

pub use placement::BOOT_CPU_WEIGHT;

/// The token of the waker that helper threads use to wake the loop (`daemon::serve` makes it).
pub const WAKER_TOKEN: mio::Token = mio::Token(1);

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Decoder, Frame, RunMeta};
use bytes::Bytes;
use mio::net::{TcpListener, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Waker};

use crate::daemon::api::{self, ApiRequest};
use crate::daemon::auth::{self, Access};
use crate::daemon::code_cache::{self, CodeCaches, Lookup};
use crate::daemon::cpus::{self, CpuClasses, CpuTime};
use crate::daemon::http::{self, Parsed, Request, Response};
use crate::daemon::log_hub;
use crate::daemon::logs::{self, Captured};
use crate::daemon::metrics::{ColdStart, Gauges, Metrics};
use crate::daemon::pool_policy;
use crate::daemon::secrets::{self, Secrets};
use crate::daemon::shared_store;
use crate::daemon::slab::{Key, Slab};
use crate::daemon::spawner::{Spawned, Spawner};
use crate::daemon::store::{self, Store, TaskInfo, TaskSettings};
use crate::daemon::Config;

/// The event loop thread's nice value (the spawners run at 10, sandboxes' processes at 0 in their own groups).
const LOOP_NICE: i32 = -10;
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// The most read from a client's or a sandbox's socket at once, into the loop's one read buffer.
const READ_CHUNK: usize = 64 << 10;

pub struct Server {
    config: Config,
    poll: Poll,
    /// The Unix socket, and the TCP listener of `--listen-tcp` with the key its tokens are checked under;
    /// None once draining.
    listener: Option<Listener>,
    tcp_listener: Option<Listener>,
    verifier: Option<auth::Verifier>,
    signals: OwnedFd,
    conns: Slab<Conn>,
    sbs: Slab<Sb>,
    tenants: HashMap<String, Key>,
    pool: VecDeque<Key>,
    /// The pool's target and the demand and memory behind it.
    sizing: PoolSizing,
    starting: usize,
    pending: VecDeque<Pending>,
    invocations: HashMap<u32, Invocation>,
    deadlines: BTreeMap<(Instant, u32), ()>,
    /// When to look at a running invocation's sandbox's CPU time, to move it to the batch CPUs if it is busy,
    /// with its CPU time at the previous look (None: the first) and how many busy windows in a row it has
    /// seen; in time order (each is the time it was pushed plus the same window).
    busy_checks: VecDeque<(Instant, u32, Option<Duration>, u8)>,
    /// When each tenant was last seen busy (most of a CPU during an invocation, a memory kill).
    busy_tenants: HashMap<String, Instant>,
    code_caches: CodeCaches,
    /// Runs waiting for a code cache being loaded, by tenant and task.
    cache_waits: HashMap<(String, String), Vec<Deferred>>,
    /// Sandboxes that used up their read budget with more perhaps waiting: read again after this turn.
    read_again: VecDeque<Key>,
    /// Sandboxes given frames this turn: written at its end, so that the invocations dispatched to one
    /// sandbox in a turn cost one write and wake it once (see `schedule_flush`).
    flush_queue: Vec<Key>,
    /// Where sockets are read into (then copied to the connection's input or the sandbox's decoder): one
    /// buffer, not one zeroed on the stack at every read.
    read_buf: Box<[u8]>,
    /// Connections to read, parse or close on the next pass of the loop (see `schedule`): answers never
    /// recurse into parsing the next pipelined request.
    advance_queue: VecDeque<Key>,
    /// A listener's backlog was not drained in the last turn (connections accepted per turn are bounded).
    accept_again: bool,
    cpus: Option<CpuClasses>,
    next_id: u32,
    spawner: Spawner,
    spawn_backoff: Option<(Instant, Duration)>,
    last_spawn_error: Option<String>,
    store: Arc<Store>,
    /// Tenants' secrets, opened (see `daemon::secrets`).
    secrets: Secrets,
    store_jobs: Sender<StoreJob>,
    /// `--store`: deploys and deletes go to the database thread first, which passes them on to the store thread
    /// once committed.
    db_jobs: Option<Sender<StoreJob>>,
    store_done: Receiver<StoreDone>,
    /// `--store`: what other nodes changed, already applied to the local store by the follower.
    store_changes: Option<Receiver<shared_store::Applied>>,
    /// `--store`: the follower's connection and version, for health.
    store_status: Option<Arc<shared_store::Status>>,
    /// Store jobs sent and not yet answered: a drain waits for them.
    store_pending: usize,
    reaper: Sender<jailer::Sandbox>,
    reaper_thread: Option<std::thread::JoinHandle<()>>,
    metrics: Metrics,
    subscribers: HashSet<Key>,
    log_dropped: u64,
    request_seq: u64,
    boot_id: String,
    started: Instant,
    draining: Option<Instant>,
    /// Egress tunnels (see `egress`), and those with budget-bound work left from this turn.
    tunnels: Slab<egress::Tunnel>,
    tunnel_again: VecDeque<Key>,
    /// Sandboxes' egress listeners that had more connections waiting than one turn accepts.
    egress_accept_again: VecDeque<(Key, Via)>,
    /// Each tenant's stored allow-list: the entries as given, and parsed.
    egress_lists: HashMap<String, (Vec<String>, Vec<crate::daemon::egress_policy::Rule>)>,
    resolver: Sender<ResolveJob>,
    resolved: Receiver<ResolveDone>,
    /// `--log-hub-in` and `--log-hub-out` (see `daemon::log_hub`): where events go to and come from other nodes.
    hub: Option<HubLink>,
}

pub struct Parts {
    pub poll: Poll,
    pub waker: Arc<Waker>,
    pub listener: UnixListener,
    /// `--listen-tcp`: the bound listener and the verifier of its tokens.
    pub tcp: Option<(TcpListener, auth::Verifier)>,
    pub signals: OwnedFd,
    pub spawner: Spawner,
    pub store: Arc<Store>,
    pub secrets: Secrets,
    pub cpus: Option<CpuClasses>,
    /// `--store`: the database's clients (see `daemon::shared_store`).
    pub shared: Option<SharedParts>,
}

/// The shared store's writer (for the database thread) and follower (for its own thread), with the follower's
/// connection if it has one already.
pub struct SharedParts {
    pub writer: shared_store::Writer,
    pub follower: shared_store::Follower,
    pub client: Option<postgres::Client>,
}

impl Server {
    pub fn new(config: Config, parts: Parts) -> io::Result<Server> {
        let Parts { poll, waker, listener, tcp, signals, spawner, store, secrets, cpus, shared } = parts;
        let mut listener = Listener::Unix(listener);
        poll.registry().register(&mut listener, Source::Listener(Transport::Unix).token(), Interest::READABLE)?;
        let (tcp_listener, verifier) = match tcp {
            Some((l, verifier)) => {
                let mut l = Listener::Tcp(l);
                poll.registry().register(&mut l, Source::Listener(Transport::Tcp).token(), Interest::READABLE)?;
                (Some(l), Some(verifier))
            }
            None => (None, None),
        };
        poll.registry().register(&mut SourceFd(&signals.as_raw_fd()), Source::Signals.token(), Interest::READABLE)?;
        let store_status = shared.as_ref().map(|s| s.follower.status.clone());
        let (store_jobs, db_jobs, store_done, store_changes) = start_store_thread(store.clone(), waker.clone(), shared);
        let (reaper, reaper_thread) = start_reaper_thread(cpus.map(|c| c.batch));
        let (resolver, resolved) = start_resolver_threads(RESOLVER_THREADS, waker.clone());
        let stored =
            store.egress_lists().map_err(|e| io::Error::other(format!("reading egress allow-lists: {}", crate::error_chain(&e))))?;
        let hub = HubLink::start(&config, &waker).map_err(|e| io::Error::other(crate::error_chain(&e)))?;
        let code_cache_bytes = config.code_cache_bytes;
        let boot_id = format!("{:08x}", std::process::id() ^ (Instant::now().elapsed().subsec_nanos()) ^ rand_u32());
        Ok(Server {
            sizing: PoolSizing::new(&config),
            config,
            poll,
            listener: Some(listener),
            tcp_listener,
            verifier,
            signals,
            conns: Slab::default(),
            sbs: Slab::default(),
            tenants: HashMap::new(),
            pool: VecDeque::new(),
            starting: 0,
            pending: VecDeque::new(),
            invocations: HashMap::new(),
            deadlines: BTreeMap::new(),
            busy_checks: VecDeque::new(),
            busy_tenants: HashMap::new(),
            code_caches: CodeCaches::new(code_cache_bytes),
            cache_waits: HashMap::new(),
            read_again: VecDeque::new(),
            flush_queue: Vec::new(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            advance_queue: VecDeque::new(),
            accept_again: false,
            cpus,
            next_id: 1,
            spawner,
            spawn_backoff: None,
            last_spawn_error: None,
            store,
            secrets,
            store_jobs,
            db_jobs,
            store_done,
            store_changes,
            store_status,
            store_pending: 0,
            reaper,
            reaper_thread: Some(reaper_thread),
            metrics: Metrics::default(),
            subscribers: HashSet::new(),
            log_dropped: 0,
            request_seq: 0,
            boot_id,
            started: Instant::now(),
            draining: None,
            tunnels: Slab::default(),
            tunnel_again: VecDeque::new(),
            egress_accept_again: VecDeque::new(),
            egress_lists: HashMap::new(),
            resolver,
            resolved,
            hub,
        })
        .map(|mut server| {
            for (tenant, allow) in stored {
                server.set_egress_list(tenant, allow);
            }
            server
        })
    }

    /// Run until SIGTERM or SIGINT has drained everything.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The loop's work per event is microseconds, and every request waits on it twice: a short slice and
        // nice -10 let it preempt a busy sandbox as soon as a client or a sandbox wakes it (best effort: the
        // slice needs Linux 6.12, the nice CAP_SYS_NICE; see jailer::sched).
        let _ = jailer::sched::set_slice(jailer::sched::SHORT_SLICE_NS);
        // SAFETY: setpriority on this thread's own id, with integers only.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, LOOP_NICE) };
        self.start_sizing();
        self.refill_pool();
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            let mut wake_at = next_housekeeping;
            if let Some(((t, _), _)) = self.deadlines.first_key_value() {
                wake_at = wake_at.min(*t);
            }
            if let Some((t, _, _, _)) = self.busy_checks.front() {
                wake_at = wake_at.min(*t);
            }
            let more_to_do = !self.read_again.is_empty()
                || !self.advance_queue.is_empty()
                || self.accept_again
                || self.egress_more_to_do()
                || self.hub.as_ref().is_some_and(|h| h.again);
            let timeout = if more_to_do { Duration::ZERO } else { wake_at.saturating_duration_since(now) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                let readable = event.is_readable() || event.is_read_closed();
                match Source::of(event.token()) {
                    Some(Source::Listener(transport)) => self.accept(transport),
                    Some(Source::Waker) | None => {}
                    Some(Source::Signals) => self.on_signal(),
                    Some(Source::Conn(k)) => {
                        if let Some(key) = self.conns.find(k.index, k.gen) {
                            if event.is_read_closed() {
                                if let Some(conn) = self.conns.get_mut(key) {
                                    conn.peer_closed = true;
                                }
                            }
                            self.on_conn_event(key, readable, event.is_writable());
                        }
                    }
                    Some(Source::Sandbox(k, fd)) => {
                        if let Some(key) = self.sbs.find(k.index, k.gen) {
                            match fd {
                                SandboxFd::Socket => self.on_sandbox_socket(key, readable, event.is_writable()),
                                SandboxFd::Pid => self.on_sandbox_exit(key),
                                SandboxFd::Output => self.on_sandbox_output(key),
                                SandboxFd::Egress(via) => self.on_egress_accept(key, via),
                            }
                        }
                    }
                    Some(Source::Tunnel(k, end)) => {
                        if let Some(key) = self.tunnels.find(k.index, k.gen) {
                            self.on_tunnel_event(key, end, readable, event.is_writable());
                        }
                    }
                }
            }
            if std::mem::take(&mut self.accept_again) {
                // Whichever listener it was: one more accept on the other costs a WouldBlock.
                self.accept(Transport::Unix);
                self.accept(Transport::Tcp);
            }
            for key in std::mem::take(&mut self.read_again) {
                self.on_sandbox_socket(key, true, false);
            }
            // Connections with work left from this turn: at most their budget each, then everyone else's turn.
            for key in std::mem::take(&mut self.advance_queue) {
                let Some(conn) = self.conns.get_mut(key) else { continue };
                conn.scheduled = false;
                let read = std::mem::take(&mut conn.read_pending);
                self.on_conn_event(key, read, false);
            }
            self.egress_turn();
            // Answers from the helper threads arrive through the waker; check them every turn (cheap).
            self.collect_spawned();
            self.collect_resolved();
            self.collect_store_results();
            self.collect_store_changes();
            self.collect_hub_events();
            self.fire_deadlines();
            self.move_busy_sandboxes();
            if Instant::now() >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            // Last, once everything that may dispatch this turn has: each sandbox's frames in one write.
            for key in std::mem::take(&mut self.flush_queue) {
                if let Some(s) = self.sbs.get_mut(key) {
                    s.flush_scheduled = false;
                }
                self.flush_sandbox(key);
            }
            if self.draining.is_some() && self.drained() {
                self.shutdown();
                return Ok(());
            }
        }
    }

    // ---- routes ------------------------------------------------------------------------------------

    // ---- sandboxes ---------------------------------------------------------------------------------

    // ---- timers and signals ------------------------------------------------------------------------

    fn housekeeping(&mut self) {
        self.size_pool();
        self.watch_cpu_time();
        self.release_idle_sandboxes();
        let now = Instant::now();
        self.expire_tunnels(now);
        // Connections that stalled mid-request or idled too long.
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get(key) else { continue };
            let expired = now >= conn.deadline;
            match conn.state {
                ConnState::Idle if expired && !conn.input.is_empty() => {
                    self.fail_conn(key, 408, "bad_request", "the request was not completed in time");
                }
                ConnState::Idle if expired => self.close(key),
                ConnState::Closing if expired => self.close(key),
                _ => {}
            }
        }
        // Requests that waited too long for a sandbox.
        let mut still = VecDeque::new();
        while let Some(p) = self.pending.pop_front() {
            if now >= p.give_up {
                self.metrics.invocation("overloaded");
                let waited = self.config.queue_timeout.as_millis();
                let why = self.last_spawn_error.as_deref().map_or(String::new(), |e| format!(" (sandboxes cannot be made: {e})"));
                let msg = format!("no sandbox could be had within {waited} ms{why}");
                let r = Response::error(503, "overloaded", &msg, None).header("Retry-After", "1");
                self.respond(p.conn, &p.request_id, p.keep_alive, r);
            } else {
                still.push_back(p);
            }
        }
        self.pending = still;
        // Sandboxes that left a frame half-sent too long: broken or hostile, either way not to be waited on.
        let stalled: Vec<Key> = self
            .sbs
            .iter()
            .filter(|(_, s)| s.killed.is_none() && s.partial_since.is_some_and(|t| now.duration_since(t) >= PARTIAL_FRAME_TIMEOUT))
            .map(|(k, _)| k)
            .collect();
        for key in stalled {
            eprintln!("taskcell: a sandbox left a frame half-sent for {} s; killing it", PARTIAL_FRAME_TIMEOUT.as_secs());
            self.metrics.protocol_error();
            self.kill_sandbox(key, KillReason::Protocol);
        }
        // Tenant sandboxes that idled, aged or served enough.
        for (key, reason) in self.spent_sandboxes(now) {
            self.kill_sandbox(key, reason);
        }
        self.refill_pool();
    }

    fn on_signal(&mut self) {
        let mut info = [0u8; 128];
        // SAFETY: reads signalfd_siginfo records (128 bytes) into a local buffer of that size.
        while unsafe { libc::read(self.signals.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {
            if self.draining.is_none() {
                eprintln!("taskcell: stopping: finishing in-flight work (up to {} ms)", self.config.drain_timeout.as_millis());
                self.draining = Some(Instant::now() + self.config.drain_timeout);
                for mut l in [self.listener.take(), self.tcp_listener.take()].into_iter().flatten() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                let _ = std::fs::remove_file(&self.config.socket);
                // Requests still waiting for a sandbox will not get one now.
                let pending: Vec<Pending> = self.pending.drain(..).collect();
                for p in pending {
                    self.metrics.invocation("overloaded");
                    let r = Response::error(503, "overloaded", "taskcell is shutting down", None).header("Retry-After", "1");
                    self.respond(p.conn, &p.request_id, p.keep_alive, r);
                }
                for key in self.conns.keys() {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.keep_alive = false;
                        if matches!(c.state, ConnState::Streaming { .. }) || (matches!(c.state, ConnState::Idle) && c.input.is_empty()) {
                            c.state = ConnState::Closing;
                        }
                    }
                    if let Some(c) = self.conns.get_mut(key) {
                        if matches!(c.state, ConnState::Closing) && c.output.is_empty() {
                            self.close(key);
                        }
                    }
                }
            }
        }
    }

    fn drained(&self) -> bool {
        let deadline_passed = self.draining.is_some_and(|d| Instant::now() >= d);
        deadline_passed
            || (self.invocations.is_empty()
                && self.pending.is_empty()
                && self.store_pending == 0
                && self.conns.iter().all(|(_, c)| c.output.is_empty()))
    }

    fn shutdown(&mut self) {
        self.sizing.save_demand(true);
        let ids: Vec<u32> = self.invocations.keys().copied().collect();
        for id in ids {
            self.complete(id, Err((503, "overloaded", "taskcell stopped before the invocation finished".into())));
        }
        for key in self.conns.keys() {
            self.flush(key);
            self.close(key);
        }
        for key in self.sbs.keys() {
            self.kill_sandbox(key, KillReason::Shutdown);
        }
        for key in self.sbs.keys() {
            if let Some(mut s) = self.sbs.remove(key) {
                if let Some(sandbox) = s.sandbox.take() {
                    // Kill, reap and remove the cgroup, here and now: nothing may outlive the daemon.
                    if let Err(e) = sandbox.destroy() {
                        eprintln!("taskcell: removing a sandbox's cgroup: {}", crate::error_chain(&e));
                    }
                }
            }
        }
        // Sandboxes still booting on the spawner threads: wait for them and destroy them too.
        for spawned in self.spawner.stop() {
            if let Err(e) = spawned.sandbox.destroy() {
                eprintln!("taskcell: removing a sandbox's cgroup: {}", crate::error_chain(&e));
            }
        }
        // The log hub's threads: what was queued for the hub is not waited for (events are best effort).
        if let Some(hub) = self.hub.as_mut() {
            hub.stop();
        }
        // Let the reaper finish what it was given: closing its channel ends its loop.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.reaper, tx));
        if let Some(thread) = self.reaper_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Registered for writability only while something waits to be written (`want`): always registered, a
/// socket would wake the loop each time its peer reads. Re-arming also reports a socket that became writable
/// meanwhile, so no wake-up is lost. `armed` is what the registration is now.
fn set_write_interest(registry: &mio::Registry, source: &mut impl mio::event::Source, token: mio::Token, armed: &mut bool, want: bool) {
    if want != *armed {
        let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if registry.reregister(source, token, interest).is_ok() {
            *armed = want;
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the local array.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    u32::from_ne_bytes(b)
}
