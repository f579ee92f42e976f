//! The event loop: connections, routing, sandboxes, timers and log fan-out on one thread.
//!
//! Fixed sources have fixed tokens; connections and sandboxes live in generational slabs whose keys are packed
//! into tokens, so that an event for a closed connection or a dead sandbox can never reach the new owner of its
//! slot. Every read and write drains until `WouldBlock`. Blocking work happens elsewhere: sandboxes are made on
//! spawner threads, deployed code is written and fsynced on the store thread, dead sandboxes' cgroups are
//! removed on the reaper thread; each reports back through the waker.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use runtime::{Decoder, Frame, RunMeta};

use super::code_cache::{self, CodeCaches, Lookup};
use super::cpus::{self, CpuClasses, CpuTime};
use super::api::{self, ApiRequest};
use super::http::{self, Parsed, Request, Response};
use super::logs::{self, Captured};
use super::metrics::{ColdStart, Gauges, Metrics};
use super::slab::{Key, Slab};
use super::spawner::{Spawned, Spawner};
use super::store::{self, Store, TaskInfo};
use super::Config;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Token layout for slab members: kind in the top bits, then generation, slot index and sub-source.
const CONN_KIND: usize = 1 << 60;
const SB_KIND: usize = 2 << 60;
const SB_SOCKET: usize = 0;
const SB_PIDFD: usize = 1;
const SB_OUTPUT: usize = 2;

fn conn_token(k: Key) -> Token {
    Token(CONN_KIND | (k.gen as usize & 0xff_ffff) << 32 | k.index as usize)
}

fn sb_token(k: Key, sub: usize) -> Token {
    Token(SB_KIND | (k.gen as usize & 0xff_ffff) << 32 | (k.index as usize) << 2 | sub)
}

fn decode_token(t: Token) -> Option<(usize, u32, u32, usize)> {
    let kind = t.0 & (0xf << 60);
    let gen = ((t.0 >> 32) & 0xff_ffff) as u32;
    let low = (t.0 & 0xffff_ffff) as u32;
    match kind {
        CONN_KIND => Some((CONN_KIND, gen, low, 0)),
        SB_KIND => Some((SB_KIND, gen, low >> 2, (low & 3) as usize)),
        _ => None,
    }
}

/// A connection still sending its request may take this long between bytes of it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A log subscriber that falls this far behind loses events.
const SUBSCRIBER_BACKLOG: usize = 1 << 20;
/// Output kept from a sandbox's stdout and stderr, to tell a V8 heap failure from other deaths.
const OUTPUT_TAIL: usize = 8 << 10;
/// How long a closing connection may keep sending before it is cut off.
const LINGER: Duration = Duration::from_secs(2);
/// Pipelined requests parsed from one connection per turn of the loop: one client that pipelines thousands
/// of requests answered at once (404s, health) gets its share of the loop, then the others get theirs.
const PIPELINE_BUDGET: usize = 32;
/// Connections accepted per turn of the loop.
const ACCEPT_BUDGET: usize = 64;
/// Bytes read from one connection per turn of the loop (a client that streams garbage at a subscriber
/// connection, whose input is discarded, must not hold the loop either).
const CONN_READ_BUDGET: usize = 256 << 10;
/// A connection whose unsent answers pass this many bytes is not parsed further until they drain: a client
/// that pipelines and never reads is pushed back (its input, then its socket, fill up), not buffered for.
const OUTPUT_HIGH_WATER: usize = 256 << 10;
/// A sandbox that leaves a frame half-sent this long is broken (or hostile): a protocol error.
const PARTIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames waiting to be written to one sandbox (Runs with their sources and data) beyond which new
/// invocations for it are refused with 503: a sandbox that stops reading must not make the daemon buffer
/// every request sent its way until their deadlines.
const SANDBOX_OUTBOX_LIMIT: usize = 64 << 20;
/// A log message from a sandbox is cut to this many bytes (the spec's per-invocation cap): tenant code can
/// bypass the bootstrap and send a frame of 8 MiB.
pub const LOG_MESSAGE_CAP: usize = 64 << 10;
/// A sandbox that has compiled this many distinct sources is recycled when next idle.
const MAX_COMPILED: usize = 1024;
/// CPU weight (cgroup v2 units) of a sandbox booting or waiting in the pool, and of a tenant's.
pub const BOOT_CPU_WEIGHT: u64 = 10;
/// Bytes read from one sandbox's socket per turn of the loop, so that one flooding its logs cannot hold the
/// loop while other tenants' requests and answers wait.
const SANDBOX_READ_BUDGET: usize = 64 << 10;
/// The event loop thread's nice value (the spawners run at 10, sandboxes' processes at 0 in their own groups).
const LOOP_NICE: i32 = -10;
const TENANT_CPU_WEIGHT: u64 = 100;
const HOUSEKEEPING: Duration = Duration::from_millis(250);

enum ConnState {
    /// Reading (or between) requests.
    Idle,
    /// A request is being answered; further pipelined requests wait in the buffer, in order.
    Busy,
    /// A `/v1/logs` subscriber.
    Streaming { tenant: Option<String>, dropped: u64 },
    /// Write what is buffered, then close.
    Closing,
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    state: ConnState,
    keep_alive: bool,
    deadline: Instant,
    read_closed: bool,
    /// In the loop's `advance_queue` (to be parsed further or closed on its next pass).
    scheduled: bool,
    /// Reading stopped with more perhaps waiting (the input buffer was full or the turn's read budget spent):
    /// the socket's edge-triggered readiness will not repeat, so the loop reads again itself.
    read_pending: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillReason {
    Timeout,
    Protocol,
    Idle,
    MaxAge,
    MaxRequests,
    Evicted,
    Shutdown,
}

impl KillReason {
    fn as_str(self) -> &'static str {
        match self {
            KillReason::Timeout => "timeout",
            KillReason::Protocol => "protocol_error",
            KillReason::Idle => "idle",
            KillReason::MaxAge => "max_age",
            KillReason::MaxRequests => "max_requests",
            KillReason::Evicted => "evicted",
            KillReason::Shutdown => "shutdown",
        }
    }
}

struct Sb {
    sandbox: Option<jailer::Sandbox>,
    socket: UnixStream,
    output: OwnedFd,
    output_tail: Vec<u8>,
    decoder: Decoder,
    outbox: Vec<u8>,
    tenant: Option<String>,
    in_flight: HashSet<u32>,
    compiled: HashSet<String>,
    created: Instant,
    last_used: Instant,
    served: u64,
    killed: Option<KillReason>,
    /// Confined to the batch CPUs: booting in the pool, or a tenant's sandbox that is busy (see `cpus`).
    on_batch: bool,
    /// Its processes when it became ready (see `Spawned::processes`).
    boot_processes: Vec<i32>,
    /// Its Node's CPU time, sampled every housekeeping tick to find work left running in the background.
    cpu_time: Option<CpuTime>,
    /// Since when the decoder has held part of a frame (see `PARTIAL_FRAME_TIMEOUT`).
    partial_since: Option<Instant>,
}

impl Sb {
    /// Move a tenant's sandbox to the batch CPUs at the pool's boot weight: there it shares the CPUs with
    /// the other busy sandboxes and the pool's boots on an equal footing (at the tenant weight it would
    /// starve the boots, and new tenants would wait for the pool). True if a thread moved.
    fn move_to_batch(&mut self, cpus: &CpuClasses) -> bool {
        self.on_batch = true;
        let Some(sandbox) = &self.sandbox else { return false };
        let _ = sandbox.set_cpu_weight(BOOT_CPU_WEIGHT);
        sandbox.set_affinity(&cpus.batch) > 0
    }

    /// Every CPU and the tenant weight back. True if a thread moved.
    fn move_to_all(&mut self, cpus: &CpuClasses) -> bool {
        self.on_batch = false;
        let Some(sandbox) = &self.sandbox else { return false };
        let _ = sandbox.set_cpu_weight(TENANT_CPU_WEIGHT);
        sandbox.set_affinity(&cpus.all) > 0
    }
}

enum Job {
    Run { task: Option<String>, key: String, source: Bytes, data: Bytes },
    Compile { task: String, source: Bytes },
}

struct Invocation {
    conn: Key,
    keep_alive: bool,
    request_id: String,
    tenant: String,
    task: Option<String>,
    sb: Key,
    cold: bool,
    started: Instant,
    deadline: Instant,
    logs: Captured,
    compile: Option<Bytes>,
    /// The compiled-code key a Run used, forgotten again if the code fails to compile.
    key: Option<String>,
}

struct Pending {
    conn: Key,
    keep_alive: bool,
    request_id: String,
    tenant: String,
    job: Job,
    started: Instant,
    give_up: Instant,
}

/// A Run waiting for the store thread to load its task's code cache (see `dispatch`).
struct Deferred {
    sb: Key,
    conn: Key,
    keep_alive: bool,
    request_id: String,
    job: Job,
    cold: bool,
    started: Instant,
}

/// Work for the store thread, and its answers.
enum StoreJob {
    /// `cache`: the V8 code cache the syntax check made (empty if none).
    Put { conn: Key, keep_alive: bool, request_id: String, tenant: String, task: String, source: Bytes, cache: Bytes },
    Delete { conn: Key, keep_alive: bool, request_id: String, tenant: String, task: String },
    /// Read a task's code cache from disk (a version the loop does not hold in memory).
    LoadCache { tenant: String, task: String, sha: String, key: String },
}

struct StoreDone {
    /// The answer to a client's request, if the job was one.
    reply: Option<(Key, bool, String, Response)>,
    code_cache: CodeCacheUpdate,
}

/// What a finished store job changes in the loop's code caches.
enum CodeCacheUpdate {
    None,
    /// A task stored: its code cache, for the key its Runs will carry.
    Set { tenant: String, task: String, key: String, cache: Bytes },
    /// A task deleted (or stored without a cache): none any more.
    Forget { tenant: String, task: String },
}

pub struct Server {
    config: Config,
    poll: Poll,
    listener: Option<UnixListener>,
    signals: OwnedFd,
    conns: Slab<Conn>,
    sbs: Slab<Sb>,
    tenants: HashMap<String, Key>,
    pool: VecDeque<Key>,
    starting: usize,
    pending: VecDeque<Pending>,
    invocations: HashMap<u32, Invocation>,
    deadlines: BTreeMap<(Instant, u32), ()>,
    /// When to look whether an invocation is still running, to move its sandbox to the batch CPUs; in time
    /// order (each is its dispatch time plus the same delay).
    busy_checks: VecDeque<(Instant, u32)>,
    /// When each tenant was last seen busy (an invocation past `BUSY_AFTER`, a memory kill).
    busy_tenants: HashMap<String, Instant>,
    code_caches: CodeCaches,
    /// Runs waiting for a code cache being loaded, by tenant and task.
    cache_waits: HashMap<(String, String), Vec<Deferred>>,
    /// Sandboxes that used up their read budget with more perhaps waiting: read again after this turn.
    read_again: VecDeque<Key>,
    /// Connections to read, parse or close on the next pass of the loop (see `schedule`): answers never
    /// recurse into parsing the next pipelined request.
    advance_queue: VecDeque<Key>,
    /// The listener's backlog was not drained in the last turn (connections accepted per turn are bounded).
    accept_again: bool,
    cpus: Option<CpuClasses>,
    next_id: u32,
    spawner: Spawner,
    spawn_backoff: Option<(Instant, Duration)>,
    last_spawn_error: Option<String>,
    store: Arc<Store>,
    store_jobs: Sender<StoreJob>,
    store_done: Receiver<StoreDone>,
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
}

pub struct Parts {
    pub poll: Poll,
    pub waker: Arc<Waker>,
    pub listener: UnixListener,
    pub signals: OwnedFd,
    pub spawner: Spawner,
    pub store: Arc<Store>,
    pub cpus: Option<CpuClasses>,
}

impl Server {
    pub fn new(config: Config, parts: Parts) -> io::Result<Server> {
        let Parts { poll, waker, mut listener, signals, spawner, store, cpus } = parts;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)?;
        let (store_jobs, store_done) = start_store_thread(store.clone(), waker.clone());
        let (reaper, reaper_thread) = start_reaper_thread(cpus.map(|c| c.batch));
        let code_cache_bytes = config.code_cache_bytes;
        let boot_id = format!("{:08x}", std::process::id() ^ (Instant::now().elapsed().subsec_nanos()) ^ rand_u32());
        Ok(Server {
            config,
            poll,
            listener: Some(listener),
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
            advance_queue: VecDeque::new(),
            accept_again: false,
            cpus,
            next_id: 1,
            spawner,
            spawn_backoff: None,
            last_spawn_error: None,
            store,
            store_jobs,
            store_done,
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
        self.refill_pool();
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            let mut wake_at = next_housekeeping;
            if let Some(((t, _), _)) = self.deadlines.first_key_value() {
                wake_at = wake_at.min(*t);
            }
            if let Some((t, _)) = self.busy_checks.front() {
                wake_at = wake_at.min(*t);
            }
            let more_to_do = !self.read_again.is_empty() || !self.advance_queue.is_empty() || self.accept_again;
            let timeout = if more_to_do { Duration::ZERO } else { wake_at.saturating_duration_since(now) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    SIGNALS => self.on_signal(),
                    token => match decode_token(token) {
                        Some((CONN_KIND, gen, index, _)) => {
                            if let Some(key) = self.conns.find(index, gen) {
                                self.on_conn_event(key, event.is_readable() || event.is_read_closed(), event.is_writable());
                            }
                        }
                        Some((SB_KIND, gen, index, sub)) => {
                            let key = self.sbs.find(index, gen);
                            if let Some(key) = key {
                                match sub {
                                    SB_SOCKET => self.on_sandbox_socket(key, event.is_readable() || event.is_read_closed(), event.is_writable()),
                                    SB_PIDFD => self.on_sandbox_exit(key),
                                    _ => self.on_sandbox_output(key),
                                }
                            }
                        }
                        _ => {}
                    },
                }
            }
            if std::mem::take(&mut self.accept_again) {
                self.accept();
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
            // Answers from the helper threads arrive through the waker; check them every turn (cheap).
            self.collect_spawned();
            self.collect_store_results();
            self.fire_deadlines();
            self.move_busy_sandboxes();
            if Instant::now() >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            if self.draining.is_some() && self.drained() {
                self.shutdown();
                return Ok(());
            }
        }
    }

    // ---- connections -------------------------------------------------------------------------------

    fn accept(&mut self) {
        // Bounded per turn: a connect flood gets its share of the loop, then the others theirs.
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= self.config.max_connections {
                        self.refuse_connection(stream);
                        continue;
                    }
                    let conn = Conn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        state: ConnState::Idle,
                        keep_alive: true,
                        deadline: Instant::now() + IDLE_TIMEOUT,
                        read_closed: false,
                        scheduled: false,
                        read_pending: false,
                    };
                    let key = self.conns.insert(conn);
                    let conn = self.conns.get_mut(key).expect("just inserted");
                    if let Err(e) = self.poll.registry().register(&mut conn.stream, conn_token(key), Interest::READABLE | Interest::WRITABLE) {
                        eprintln!("taskcell: registering a connection: {e}");
                        self.conns.remove(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog for the next turn.
                    eprintln!("taskcell: accept: {e}");
                    return;
                }
            }
        }
        self.accept_again = true;
    }

    /// Past `--max-connections`: one 503 written without waiting (into an empty socket buffer it fits) and
    /// a close, before reading anything. The client learns why; the daemon holds nothing for it.
    fn refuse_connection(&mut self, mut stream: UnixStream) {
        self.metrics.connection_refused();
        let request_id = self.new_request_id();
        let msg = format!("too many connections (the limit is {}); retry later", self.config.max_connections);
        let mut out = Vec::new();
        Response::error(503, "overloaded", &msg, None).header("Retry-After", "1").write(&mut out, &request_id, false);
        let _ = stream.write(&out);
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    fn on_conn_event(&mut self, key: Key, readable: bool, writable: bool) {
        if writable {
            self.flush(key);
        }
        if readable {
            self.read_conn(key);
        }
        self.advance(key);
    }

    /// Put a connection on the loop's list for its next pass (once, however often asked).
    fn schedule(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.scheduled {
                conn.scheduled = true;
                self.advance_queue.push_back(key);
            }
        }
    }

    fn read_conn(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let limit = self.config.max_body + (64 << 10);
        let mut buf = [0u8; 64 << 10];
        let mut budget = CONN_READ_BUDGET;
        loop {
            // A busy connection's pipelined input is bounded: stop reading and let the socket push back.
            // Parsing frees room, and the loop reads again then (`read_pending`).
            if conn.input.len() > limit || budget == 0 {
                conn.read_pending = true;
                if budget == 0 {
                    let _ = conn;
                    self.schedule(key);
                }
                return;
            }
            match conn.stream.read(&mut buf[..budget.min(64 << 10)]) {
                Ok(0) => {
                    conn.read_closed = true;
                    return;
                }
                Ok(n) => {
                    budget -= n;
                    if conn.input.is_empty() && matches!(conn.state, ConnState::Idle) {
                        conn.deadline = Instant::now() + REQUEST_TIMEOUT;
                    }
                    if !matches!(conn.state, ConnState::Streaming { .. } | ConnState::Closing) {
                        conn.input.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    conn.read_closed = true;
                    conn.state = ConnState::Closing;
                    conn.output.clear();
                    return;
                }
            }
        }
    }

    /// Parse and dispatch what the connection has buffered, as far as its state, its output and its budget
    /// for this turn allow; close it when done. Iterative: an answer given at once never parses the next
    /// request from inside itself (`respond` schedules the connection instead).
    fn advance(&mut self, key: Key) {
        for _ in 0..PIPELINE_BUDGET {
            let Some(conn) = self.conns.get_mut(key) else { return };
            match conn.state {
                ConnState::Busy => return,
                ConnState::Streaming { .. } => {
                    if conn.read_closed {
                        self.close(key);
                    }
                    return;
                }
                ConnState::Closing => {
                    // Lingering close: once the answer is out, half-close and discard what the client still
                    // sends (an oversized body, say) until it closes, so that it reads the answer instead of
                    // a connection reset. Housekeeping ends the wait after LINGER.
                    conn.input.clear();
                    if conn.output.is_empty() {
                        if conn.read_closed {
                            self.close(key);
                        } else {
                            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                        }
                    }
                    return;
                }
                ConnState::Idle => {}
            }
            if conn.input.is_empty() {
                if conn.read_closed && conn.output.is_empty() {
                    self.close(key);
                } else if conn.read_pending {
                    self.schedule(key);
                }
                return;
            }
            if conn.output.len() > OUTPUT_HIGH_WATER {
                // Back-pressure: parse on once the client has read its answers (`flush` schedules us).
                return;
            }
            let limits = http::Limits { max_head: 16 << 10, max_body: self.config.max_body };
            match http::parse(&conn.input, &limits) {
                Ok(Parsed::Partial) => {
                    if conn.read_closed {
                        self.close(key);
                    } else if conn.input.len() > limits.max_head + limits.max_body + (64 << 10) {
                        self.fail_conn(key, 413, "payload_too_large", "request too large");
                    } else if conn.read_pending {
                        self.schedule(key);
                    }
                    return;
                }
                Ok(Parsed::Complete(request, used)) => {
                    conn.input.drain(..used);
                    conn.state = ConnState::Busy;
                    conn.keep_alive = request.keep_alive && self.draining.is_none();
                    self.handle(key, request);
                }
                Err(e) => {
                    self.fail_conn(key, e.status, e.kind, &e.message);
                    return;
                }
            }
        }
        // The budget is spent with requests perhaps still buffered: the rest on the next pass.
        self.schedule(key);
    }

    /// Answer a framing error and close: the rest of the stream cannot be trusted.
    fn fail_conn(&mut self, key: Key, status: u16, kind: &str, message: &str) {
        let request_id = self.new_request_id();
        self.metrics.http_request(status);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.input.clear();
            Response::error(status, kind, message, None).write(&mut conn.output, &request_id, false);
            conn.state = ConnState::Closing;
            conn.keep_alive = false;
            conn.deadline = Instant::now() + LINGER;
        }
        self.flush(key);
        self.schedule(key);
    }

    fn respond(&mut self, key: Key, request_id: &str, keep_alive: bool, response: Response) {
        self.metrics.http_request(response.status);
        let Some(conn) = self.conns.get_mut(key) else { return };
        let keep = keep_alive && conn.keep_alive && self.draining.is_none();
        response.write(&mut conn.output, request_id, keep);
        conn.state = if keep { ConnState::Idle } else { ConnState::Closing };
        conn.deadline = Instant::now() + if keep { IDLE_TIMEOUT } else { LINGER };
        self.flush(key);
        // The next pipelined request (or the close) on the loop's next pass, never from here.
        self.schedule(key);
    }

    fn flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let before = conn.output.len();
        let mut written = 0;
        while written < conn.output.len() {
            match conn.stream.write(&conn.output[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    conn.output.clear();
                    conn.read_closed = true;
                    conn.state = ConnState::Closing;
                    let _ = conn;
                    self.schedule(key);
                    return;
                }
            }
        }
        conn.output.drain(..written);
        if let ConnState::Streaming { dropped, .. } = &mut conn.state {
            if *dropped > 0 && conn.output.len() < SUBSCRIBER_BACKLOG / 2 {
                http::chunk(&mut conn.output, &logs::dropped_line(*dropped));
                *dropped = 0;
            }
        }
        // Parsing waited for the answers to drain (back-pressure), or a closing connection is now empty.
        let resume = before > OUTPUT_HIGH_WATER && conn.output.len() <= OUTPUT_HIGH_WATER && !conn.input.is_empty();
        let closing_done = matches!(conn.state, ConnState::Closing) && conn.output.is_empty() && written > 0;
        if resume || closing_done {
            self.schedule(key);
        }
    }

    fn close(&mut self, key: Key) {
        if let Some(mut conn) = self.conns.remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.subscribers.remove(&key);
    }

    fn new_request_id(&mut self) -> String {
        self.request_seq += 1;
        format!("{}-{:x}", self.boot_id, self.request_seq)
    }

    // ---- routes ------------------------------------------------------------------------------------

    fn handle(&mut self, key: Key, req: Request) {
        let request_id = req.request_id.clone().unwrap_or_else(|| self.new_request_id());
        let keep = req.keep_alive;
        let request = match api::parse(&req) {
            Ok(r) => r,
            Err(e) => {
                if e.refused_run {
                    self.metrics.invocation("bad_request");
                }
                return self.respond(key, &request_id, keep, e.response());
            }
        };
        match request {
            ApiRequest::Health => {
                let body = self.health_json();
                self.respond(key, &request_id, keep, Response::json(200, body));
            }
            ApiRequest::Metrics => {
                let text = self.metrics.render(&self.gauges());
                let mut r = Response::json(200, text);
                r.content_type = super::metrics::CONTENT_TYPE;
                self.respond(key, &request_id, keep, r);
            }
            ApiRequest::Logs { tenant } => self.subscribe(key, &request_id, tenant),
            ApiRequest::RunAdhoc { tenant, source, data } => {
                let job = Job::Run { task: None, key: format!("adhoc:{}", store::sha256_hex(&source)), source, data };
                self.invoke(key, request_id, keep, tenant, job, Instant::now());
            }
            ApiRequest::ListTasks { tenant } => {
                let response = match self.store.list(&tenant) {
                    Ok(list) => {
                        let tasks: Vec<serde_json::Value> = list.iter().map(task_json).collect();
                        Response::json(200, serde_json::json!({ "tasks": tasks }).to_string())
                    }
                    Err(e) => Response::error(500, "internal", &format!("listing tasks: {}", crate::jail::error_chain(&e)), None),
                };
                self.respond(key, &request_id, keep, response);
            }
            ApiRequest::GetTask { tenant, task } => {
                let response = match self.store.get(&tenant, &task) {
                    Ok(Some((info, source))) => Response { status: 200, content_type: "application/javascript", headers: vec![("ETag", format!("\"{}\"", info.sha256))], body: source },
                    Ok(None) => Response::error(404, "not_found", &format!("tenant {tenant} has no task {task}"), None),
                    Err(e) => Response::error(500, "internal", &crate::jail::error_chain(&e), None),
                };
                self.respond(key, &request_id, keep, response);
            }
            // The syntax check runs in the tenant's sandbox; storing happens when it answers `Compiled`.
            ApiRequest::PutTask { tenant, task, source } => self.invoke(key, request_id, keep, tenant, Job::Compile { task, source }, Instant::now()),
            ApiRequest::DeleteTask { tenant, task } => self.send_store_job(StoreJob::Delete { conn: key, keep_alive: keep, request_id, tenant, task }),
            ApiRequest::RunTask { tenant, task, data } => self.run_task(key, request_id, keep, tenant, task, data),
        }
    }

    fn run_task(&mut self, key: Key, request_id: String, keep: bool, tenant: String, task: String, data: Bytes) {
        match self.store.get(&tenant, &task) {
            Ok(Some((info, source))) => {
                let job = Job::Run { key: format!("task:{task}:{}", info.sha256), task: Some(task), source, data };
                self.invoke(key, request_id, keep, tenant, job, Instant::now());
            }
            Ok(None) => {
                self.metrics.invocation("not_found");
                self.respond(key, &request_id, keep, Response::error(404, "not_found", &format!("tenant {tenant} has no task {task}"), None))
            }
            Err(e) => self.respond(key, &request_id, keep, Response::error(500, "internal", &crate::jail::error_chain(&e), None)),
        }
    }

    fn subscribe(&mut self, key: Key, request_id: &str, tenant: Option<String>) {
        if self.subscribers.len() >= self.config.max_log_subscribers {
            let msg = format!("too many log subscribers (the limit is {}); retry later", self.config.max_log_subscribers);
            let r = Response::error(503, "overloaded", &msg, None).header("Retry-After", "1");
            return self.respond(key, request_id, true, r);
        }
        self.metrics.http_request(200);
        let Some(conn) = self.conns.get_mut(key) else { return };
        http::stream_head(&mut conn.output, request_id);
        conn.state = ConnState::Streaming { tenant, dropped: 0 };
        conn.input.clear();
        self.subscribers.insert(key);
        self.flush(key);
    }

    fn publish(&mut self, tenant: &str, task: Option<&str>, request_id: Option<&str>, level: &str, message: &str) {
        if self.subscribers.is_empty() {
            return;
        }
        let line = logs::event_line(tenant, task, request_id, level, message);
        let subs: Vec<Key> = self.subscribers.iter().copied().collect();
        for key in subs {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let ConnState::Streaming { tenant: filter, dropped } = &mut conn.state else { continue };
            if filter.as_deref().is_some_and(|f| f != tenant) {
                continue;
            }
            if conn.output.len() > SUBSCRIBER_BACKLOG {
                *dropped += 1;
                self.log_dropped += 1;
                continue;
            }
            if *dropped > 0 {
                http::chunk(&mut conn.output, &logs::dropped_line(*dropped));
                *dropped = 0;
            }
            http::chunk(&mut conn.output, &line);
            self.flush(key);
        }
    }

    fn health_json(&self) -> String {
        let idle = self.pool.len();
        serde_json::json!({
            "status": if self.draining.is_some() { "draining" } else { "ok" },
            "pool": { "size": self.config.pool_size, "idle": idle, "starting": self.starting },
            "sandboxes": { "tenants": self.tenants.len(), "total": self.sbs.len() },
            "invocations_in_flight": self.invocations.len(),
            "queued": self.pending.len(),
            "connections": self.conns.len(),
            "uptime_s": self.started.elapsed().as_secs(),
            "last_spawn_error": self.last_spawn_error,
            "code_caches": {
                "bytes": self.code_caches.bytes(),
                "limit": self.config.code_cache_bytes,
                "tenant_limit": self.code_caches.tenant_limit(),
                "largest_tenant_bytes": self.code_caches.largest_tenant_bytes(),
            },
            "cpus": self.cpus.map(|c| serde_json::json!({"all": c.all.list(), "reserved": c.reserved.list(), "batch": c.batch.list()})),
        })
        .to_string()
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            pool_target: self.config.pool_size as u64,
            pool_idle: self.pool.len() as u64,
            tenant_sandboxes: self.tenants.len() as u64,
            connections_open: self.conns.len() as u64,
            log_subscribers: self.subscribers.len() as u64,
            log_events_dropped: self.log_dropped,
        }
    }

    // ---- invocations -------------------------------------------------------------------------------

    fn invoke(&mut self, conn: Key, request_id: String, keep_alive: bool, tenant: String, job: Job, started: Instant) {
        if self.draining.is_some() {
            self.metrics.invocation("overloaded");
            let r = Response::error(503, "overloaded", "taskcell is shutting down", None).header("Retry-After", "1");
            return self.respond(conn, &request_id, keep_alive, r);
        }
        let (sb, cold) = match self.tenants.get(&tenant).copied() {
            Some(sb) => (sb, false),
            None => match self.take_from_pool() {
                Some(sb) => {
                    self.metrics.cold_start(ColdStart::Pool);
                    self.assign(sb, &tenant);
                    (sb, true)
                }
                None => {
                    let give_up = Instant::now() + self.config.queue_timeout;
                    self.pending.push_back(Pending { conn, keep_alive, request_id, tenant, job, started, give_up });
                    self.refill_pool();
                    return;
                }
            },
        };
        self.dispatch(sb, conn, keep_alive, request_id, tenant, job, cold, started);
    }

    fn take_from_pool(&mut self) -> Option<Key> {
        while let Some(sb) = self.pool.pop_front() {
            if self.sbs.get(sb).is_some_and(|s| s.killed.is_none()) {
                self.refill_pool();
                return Some(sb);
            }
        }
        None
    }

    fn assign(&mut self, sb: Key, tenant: &str) {
        let recently_busy = self.recently_busy(tenant);
        if let Some(s) = self.sbs.get_mut(sb) {
            // A tenant busy a moment ago gets its new sandbox on the batch CPUs, at the boot weight it has;
            // any other, the tenant weight and (if it booted there) every CPU.
            if !(s.on_batch && recently_busy) {
                if let Some(Err(e)) = s.sandbox.as_ref().map(|sandbox| sandbox.set_cpu_weight(TENANT_CPU_WEIGHT)) {
                    eprintln!("taskcell: raising a sandbox's CPU weight: {}", crate::jail::error_chain(&e));
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

    #[allow(clippy::too_many_arguments)]
    fn dispatch(&mut self, sb: Key, conn: Key, keep_alive: bool, request_id: String, tenant: String, job: Job, cold: bool, started: Instant) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let deadline = Instant::now() + self.config.timeout;
        if self.sbs.get(sb).is_some_and(|s| s.outbox.len() > SANDBOX_OUTBOX_LIMIT) {
            self.metrics.invocation("overloaded");
            let msg = "the tenant's sandbox is not taking new invocations (it has stopped reading them)";
            let r = Response::error(503, "overloaded", msg, None).header("Retry-After", "1");
            return self.respond(conn, &request_id, keep_alive, r);
        }
        // A deployed task's first Run in this sandbox carries its code cache, which may still be on disk
        // only (after a restart, or evicted): the store thread reads it, and the Run waits for that (well
        // under a millisecond) rather than the loop reading the disk or the sandbox compiling without it.
        let mut wait_for = None;
        if let Job::Run { task: Some(task), key, .. } = &job {
            let first_here = self.sbs.get(sb).is_some_and(|s| !s.compiled.contains(key));
            if first_here {
                match self.code_caches.get(&tenant, task, key) {
                    Lookup::Hit(_) => {}
                    Lookup::Loading => wait_for = Some(task.clone()),
                    Lookup::Miss => {
                        self.code_caches.loading(&tenant, task, key);
                        let sha = key.rsplit(':').next().unwrap_or_default().to_string();
                        self.send_store_job(StoreJob::LoadCache { tenant: tenant.clone(), task: task.clone(), sha, key: key.clone() });
                        wait_for = Some(task.clone());
                    }
                }
            }
        }
        if let Some(task) = wait_for {
            let waiting = Deferred { sb, conn, keep_alive, request_id, job, cold, started };
            self.cache_waits.entry((tenant, task)).or_default().push(waiting);
            return;
        }
        let s = self.sbs.get_mut(sb).expect("dispatch to a live sandbox");
        let (frame, task, compile, code_key) = match job {
            Job::Run { task, key, source, data } => {
                let send_source = !s.compiled.contains(&key);
                if send_source {
                    s.compiled.insert(key.clone());
                }
                let meta = RunMeta { tenant: tenant.clone(), task: task.clone(), request_id: request_id.clone(), key: key.clone() };
                // With the source goes the tenant's own code cache for it, if its deploy made one.
                let cache = match (&task, send_source) {
                    (Some(task), true) => match self.code_caches.get(&tenant, task, &key) {
                        Lookup::Hit(cache) => cache,
                        Lookup::Loading | Lookup::Miss => Bytes::new(),
                    },
                    _ => Bytes::new(),
                };
                if !cache.is_empty() {
                    self.metrics.code_cache_sent();
                }
                let source = if send_source { source } else { Bytes::new() };
                (Frame::Run { id, meta, source, cache, data }, task, None, Some(key))
            }
            Job::Compile { task, source } => {
                let meta = runtime::CompileMeta { tenant: tenant.clone(), task: Some(task.clone()), cache: self.code_caches.enabled() };
                (Frame::Compile { id, meta, source: source.clone() }, Some(task), Some(source), None)
            }
        };
        let Some(s) = self.sbs.get_mut(sb) else { return };
        if runtime::encode(&frame, &mut s.outbox).is_err() {
            let r = Response::error(500, "internal", "could not encode the invocation", None);
            return self.respond(conn, &request_id, keep_alive, r);
        }
        s.in_flight.insert(id);
        s.last_used = Instant::now();
        s.served += 1;
        self.invocations.insert(id, Invocation { conn, keep_alive, request_id, tenant, task, sb, cold, started, deadline, logs: Captured::default(), compile, key: code_key });
        self.deadlines.insert((deadline, id), ());
        if self.cpus.is_some() {
            self.busy_checks.push_back((Instant::now() + cpus::BUSY_AFTER, id));
        }
        self.flush_sandbox(sb);
    }

    /// Sandboxes whose invocation has been running for `BUSY_AFTER`: to the batch CPUs.
    fn move_busy_sandboxes(&mut self) {
        let Some(cpus) = self.cpus else { return };
        let now = Instant::now();
        while let Some(&(t, id)) = self.busy_checks.front() {
            if t > now {
                break;
            }
            self.busy_checks.pop_front();
            let Some(inv) = self.invocations.get(&id) else { continue };
            self.busy_tenants.insert(inv.tenant.clone(), now);
            let Some(s) = self.sbs.get_mut(inv.sb) else { continue };
            // Counted only if a thread moved: without CAP_SYS_NICE none can, and the metric says so.
            if !s.on_batch && s.killed.is_none() && s.move_to_batch(&cpus) {
                self.metrics.sandbox_moved(true);
            }
        }
    }

    /// Tenant sandboxes whose Node used more than half a CPU over the last tick (work left running after an
    /// invocation answered, or one that is running): busy, to the batch CPUs.
    fn watch_cpu_time(&mut self) {
        let Some(cpus) = self.cpus else { return };
        let now = Instant::now();
        for (_, s) in self.sbs.iter_mut() {
            let (Some(tenant), Some(time), None) = (&s.tenant, s.cpu_time.as_mut(), s.killed) else { continue };
            if time.used() < HOUSEKEEPING / 2 {
                continue;
            }
            self.busy_tenants.insert(tenant.clone(), now);
            if !s.on_batch && s.move_to_batch(&cpus) {
                self.metrics.sandbox_moved(true);
            }
        }
    }

    fn recently_busy(&self, tenant: &str) -> bool {
        self.busy_tenants.get(tenant).is_some_and(|t| t.elapsed() < cpus::BUSY_MEMORY)
    }

    /// Tenant sandboxes on the batch CPUs with nothing in flight, whose tenant has not been busy lately: every
    /// CPU back.
    fn release_idle_sandboxes(&mut self) {
        let Some(cpus) = self.cpus else { return };
        self.busy_tenants.retain(|_, t| t.elapsed() < cpus::BUSY_MEMORY);
        for (_, s) in self.sbs.iter_mut() {
            let quiet = s.tenant.as_ref().is_some_and(|t| !self.busy_tenants.contains_key(t));
            if s.on_batch && quiet && s.in_flight.is_empty() && s.killed.is_none() && s.move_to_all(&cpus) {
                self.metrics.sandbox_moved(false);
            }
        }
    }

    /// Finish an invocation with a response (or a store job, for a deploy that compiled).
    fn complete(&mut self, id: u32, outcome: Result<Bytes, (u16, &'static str, String)>) {
        let Some(inv) = self.invocations.remove(&id) else { return };
        self.deadlines.remove(&(inv.deadline, id));
        if let Some(s) = self.sbs.get_mut(inv.sb) {
            s.in_flight.remove(&id);
            s.last_used = Instant::now();
        }
        let elapsed = inv.started.elapsed();
        let logs = inv.logs.finish();
        if let (Some(source), Ok(cache)) = (&inv.compile, &outcome) {
            // A deploy that compiled: now store it durably, off the loop (with the code cache the check made).
            let job = StoreJob::Put {
                conn: inv.conn,
                keep_alive: inv.keep_alive,
                request_id: inv.request_id,
                tenant: inv.tenant,
                task: inv.task.unwrap_or_default(),
                source: source.clone(),
                cache: cache.clone(),
            };
            self.send_store_job(job);
            return;
        }
        let response = match outcome {
            Ok(result) => {
                self.metrics.invocation("ok");
                self.metrics.observe(elapsed);
                let mut body = Vec::with_capacity(result.len() + logs.len() + 64);
                body.extend_from_slice(b"{\"result\":");
                body.extend_from_slice(&result);
                body.extend_from_slice(b",\"logs\":");
                body.extend_from_slice(&logs);
                body.extend_from_slice(format!(",\"cold\":{},\"duration_us\":{}}}", inv.cold, elapsed.as_micros()).as_bytes());
                Response::json(200, body)
            }
            Err((status, kind, message)) => {
                self.metrics.invocation(kind);
                self.metrics.observe(elapsed);
                let mut r = Response::error(status, kind, &message, Some(&logs));
                if status == 503 {
                    r = r.header("Retry-After", "1");
                }
                r
            }
        };
        self.respond(inv.conn, &inv.request_id, inv.keep_alive, response);
        self.recycle_if_spent(inv.sb);
    }

    fn fire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(((t, id), _)) = self.deadlines.first_key_value() {
            if *t > now {
                break;
            }
            let id = *id;
            self.deadlines.pop_first();
            let Some(inv) = self.invocations.get(&id) else { continue };
            let sb = inv.sb;
            let limit = self.config.timeout.as_millis();
            // Killed first, so that the reason recorded is the timeout (completing could recycle it otherwise).
            self.kill_sandbox(sb, KillReason::Timeout);
            self.complete(id, Err((504, "timeout", format!("the invocation ran past its time limit of {limit} ms; its sandbox was killed"))));
        }
    }

    // ---- sandboxes ---------------------------------------------------------------------------------

    fn refill_pool(&mut self) {
        if self.draining.is_some() {
            return;
        }
        if let Some((until, _)) = self.spawn_backoff {
            if Instant::now() < until {
                return;
            }
        }
        let waiting = self.waiting_tenants();
        let demand = self.config.pool_size + waiting;
        let mut evictions = waiting;
        while self.pool.len() + self.starting < demand && self.starting < self.config.max_starting {
            if self.live_sandboxes() + self.starting >= self.config.max_sandboxes {
                // At the cap, a tenant that is waiting may take the place of the least recently used idle
                // tenant's sandbox; the pool alone never evicts anyone.
                if evictions == 0 || !self.evict_idle() {
                    break;
                }
                evictions -= 1;
            }
            self.starting += 1;
            self.spawner.request();
        }
    }

    /// Sandboxes not yet killed (the killed ones are gone as soon as the kernel has reaped them).
    fn live_sandboxes(&self) -> usize {
        self.sbs.iter().filter(|(_, s)| s.killed.is_none()).count()
    }

    /// Kill the least recently used tenant sandbox with nothing in flight; false if there is none.
    fn evict_idle(&mut self) -> bool {
        let victim = self
            .sbs
            .iter()
            .filter(|(_, s)| s.tenant.is_some() && s.killed.is_none() && s.in_flight.is_empty())
            .min_by_key(|(_, s)| s.last_used)
            .map(|(k, _)| k);
        match victim {
            Some(k) => {
                self.kill_sandbox(k, KillReason::Evicted);
                true
            }
            None => false,
        }
    }

    fn waiting_tenants(&self) -> usize {
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.pending {
            if !seen.contains(&p.tenant.as_str()) && !self.tenants.contains_key(&p.tenant) {
                seen.push(&p.tenant);
            }
        }
        seen.len()
    }

    fn collect_spawned(&mut self) {
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

    fn adopt(&mut self, spawned: Spawned) -> Option<Key> {
        let Spawned { sandbox, socket, output, processes } = spawned;
        // SAFETY: setting O_NONBLOCK on a pipe descriptor we own.
        unsafe { libc::fcntl(output.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let sb = Sb {
            socket: UnixStream::from_std(socket),
            output,
            output_tail: Vec::new(),
            decoder: Decoder::new(),
            outbox: Vec::new(),
            tenant: None,
            in_flight: HashSet::new(),
            compiled: HashSet::new(),
            created: Instant::now(),
            last_used: Instant::now(),
            served: 0,
            killed: None,
            on_batch: self.cpus.is_some(),
            // The command is the init's child: the second process of the tree (when there are CPU classes).
            cpu_time: if self.cpus.is_some() { processes.get(1).and_then(|&pid| CpuTime::open(pid)) } else { None },
            boot_processes: processes,
            partial_since: None,
            sandbox: Some(sandbox),
        };
        let key = self.sbs.insert(sb);
        let registry = self.poll.registry();
        let s = self.sbs.get_mut(key).expect("just inserted");
        let pidfd = s.sandbox.as_ref().expect("set").pidfd().as_raw_fd();
        let ok = registry.register(&mut s.socket, sb_token(key, SB_SOCKET), Interest::READABLE | Interest::WRITABLE).is_ok()
            && registry.register(&mut SourceFd(&pidfd), sb_token(key, SB_PIDFD), Interest::READABLE).is_ok()
            && registry.register(&mut SourceFd(&s.output.as_raw_fd()), sb_token(key, SB_OUTPUT), Interest::READABLE).is_ok();
        if !ok {
            eprintln!("taskcell: could not register a sandbox with the event loop");
            self.remove_sandbox(key);
            return None;
        }
        Some(key)
    }

    /// Give sandboxes (from the pool) to the tenants whose requests are queued, oldest first.
    fn serve_pending(&mut self) {
        let mut waiting = std::mem::take(&mut self.pending);
        while let Some(p) = waiting.pop_front() {
            let sb = match self.tenants.get(&p.tenant).copied() {
                Some(sb) => Some((sb, false)),
                None => self.take_from_pool().map(|sb| {
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
    }

    fn flush_sandbox(&mut self, key: Key) {
        let Some(s) = self.sbs.get_mut(key) else { return };
        let mut written = 0;
        let mut broken = false;
        while written < s.outbox.len() {
            match s.socket.write(&s.outbox[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        s.outbox.drain(..written);
        if broken {
            // The runtime closed its end: it is dying; its pidfd will tell how.
            s.outbox.clear();
        }
    }

    fn on_sandbox_socket(&mut self, key: Key, readable: bool, writable: bool) {
        if writable {
            self.flush_sandbox(key);
        }
        if !readable {
            return;
        }
        let mut frames = Vec::new();
        let mut protocol_error = None;
        {
            let Some(s) = self.sbs.get_mut(key) else { return };
            let mut buf = [0u8; 64 << 10];
            let mut budget = SANDBOX_READ_BUDGET;
            loop {
                if budget == 0 {
                    // More may be waiting (a log flood): come back after the other ready connections and
                    // sandboxes have had their turn, rather than serve one sandbox until it pauses.
                    self.read_again.push_back(key);
                    break;
                }
                match s.socket.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        s.decoder.feed(&buf[..n])
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                loop {
                    match s.decoder.next() {
                        Ok(Some(f)) => frames.push(f),
                        Ok(None) => break,
                        Err(e) => {
                            protocol_error = Some(e.to_string());
                            break;
                        }
                    }
                }
                if protocol_error.is_some() {
                    break;
                }
            }
        }
        if let Some(s) = self.sbs.get_mut(key) {
            s.partial_since = match (s.decoder.buffered(), s.partial_since) {
                (0, _) => None,
                (_, Some(t)) => Some(t),
                (_, None) => Some(Instant::now()),
            };
        }
        for frame in frames {
            self.on_frame(key, frame);
        }
        if let Some(e) = protocol_error {
            eprintln!("taskcell: sandbox sent a malformed frame ({e}); killing it");
            self.kill_sandbox(key, KillReason::Protocol);
        }
    }

    /// One frame from a sandbox, checked against the protocol by the daemon itself: tenant code can bypass
    /// the bootstrap and write any bytes to its socket. An answer must be for an invocation in flight in
    /// this sandbox and of the kind that invocation expects (a `Result` for a run, `Compiled` for a deploy's
    /// check, `Error` for either); anything else is a protocol error that kills the sandbox, so that no
    /// sandbox bytes reach a response unchecked (a `Result`'s JSON is checked by the decoder, its size here).
    fn on_frame(&mut self, key: Key, frame: Frame) {
        let expects = |s: &Server, id: u32| s.invocations.get(&id).filter(|i| i.sb == key).map(|i| i.compile.is_some());
        match frame {
            Frame::Result { id, json } if expects(self, id) == Some(false) => {
                if json.len() > runtime::RESULT_LIMIT {
                    let msg = format!("the result is {} bytes, over the limit of {} bytes", json.len(), runtime::RESULT_LIMIT);
                    self.complete(id, Err((500, "task_error", msg)));
                } else {
                    self.complete(id, Ok(json));
                }
            }
            Frame::Compiled { id, cache } if expects(self, id) == Some(true) => {
                // A code cache is V8's compiled form of the source: bounded by the source's size, so that a
                // 10-byte task cannot park megabytes in the daemon's cache budget (a larger one is dropped;
                // the deploy still succeeds).
                let source_len = self.invocations.get(&id).and_then(|i| i.compile.as_ref()).map_or(0, |s| s.len());
                let cache = if cache.len() > code_cache::max_cache_len(source_len) {
                    self.metrics.code_cache_refused();
                    Bytes::new()
                } else {
                    cache
                };
                self.complete(id, Ok(cache))
            }
            Frame::Error { id, kind, message } if expects(self, id).is_some() => {
                if kind == runtime::ErrorKind::CompileError {
                    // The sandbox did not keep code that failed to compile: send it again next time.
                    let code_key = self.invocations.get(&id).and_then(|i| i.key.clone());
                    if let (Some(s), Some(k)) = (self.sbs.get_mut(key), code_key) {
                        s.compiled.remove(&k);
                    }
                }
                let message: String = message.chars().take(16 << 10).collect();
                self.complete(id, Err((if kind == runtime::ErrorKind::CompileError { 400 } else { 500 }, kind.as_str(), message)));
            }
            Frame::Log { id, level, message } => {
                let text = log_text(&message);
                let tenant = self.sbs.get(key).and_then(|s| s.tenant.clone()).unwrap_or_default();
                let (task, request_id) = match self.invocations.get_mut(&id) {
                    Some(inv) if inv.sb == key => {
                        inv.logs.push(level, &text);
                        (inv.task.clone(), Some(inv.request_id.clone()))
                    }
                    _ => (None, None),
                };
                self.publish(&tenant, task.as_deref(), request_id.as_deref(), level.as_str(), &text);
            }
            // An answer for an invocation this sandbox does not hold (another's, one already answered, or
            // none), or of the wrong kind, or a frame only the daemon sends: the bootstrap never does this.
            other => {
                let what = match &other {
                    Frame::Result { .. } | Frame::Compiled { .. } | Frame::Error { .. } => match expects(self, other.id()) {
                        None => "an answer for an invocation it does not hold",
                        Some(true) => "a Result for a deploy's syntax check",
                        Some(false) => "a Compiled for a run",
                    },
                    _ => "a frame only the daemon sends",
                };
                eprintln!("taskcell: sandbox sent {what} ({} frame, id {}); killing it", other.frame_type(), other.id());
                self.metrics.protocol_error();
                self.kill_sandbox(key, KillReason::Protocol);
            }
        }
    }

    fn on_sandbox_output(&mut self, key: Key) {
        let Some(s) = self.sbs.get_mut(key) else { return };
        drain_output(s);
    }

    fn kill_sandbox(&mut self, key: Key, reason: KillReason) {
        let Some(s) = self.sbs.get_mut(key) else { return };
        if s.killed.is_none() {
            s.killed = Some(reason);
        }
        if let Some(sandbox) = &s.sandbox {
            sandbox.kill();
        }
        // From now on the tenant's next request gets a fresh sandbox.
        if let Some(t) = s.tenant.clone() {
            if self.tenants.get(&t) == Some(&key) {
                self.tenants.remove(&t);
            }
        }
        self.pool.retain(|k| *k != key);
    }

    fn on_sandbox_exit(&mut self, key: Key) {
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
            (507, "memory_limit", format!("the sandbox hit its memory limit of {limit} bytes{}", if heap { " (V8 heap exhausted)" } else { " (killed by the cgroup OOM killer)" }))
        } else if killed == Some(KillReason::Protocol) {
            (502, "sandbox_crashed", "the sandbox broke the frame protocol (something in it wrote to the runtime's socket what the runtime never sends); it was killed".to_string())
        } else if killed == Some(KillReason::Timeout) {
            (502, "sandbox_crashed", "the sandbox was killed because another invocation in it ran past its time limit".to_string())
        } else if exit.seccomp_killed() {
            let culprit = s.sandbox.as_ref().and_then(|sb| sb.seccomp_culprit()).map_or("a system call".to_string(), |c| format!("the system call {c}"));
            (502, "sandbox_crashed", format!("the sandbox was killed by seccomp (SIGSYS): the task made {culprit}, which the sandbox's policy forbids"))
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
            eprintln!("taskcell: sandbox output before it died: {}", tail.trim().chars().rev().take(500).collect::<String>().chars().rev().collect::<String>());
        }
        self.remove_sandbox(key);
        self.refill_pool();
    }

    fn remove_sandbox(&mut self, key: Key) {
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

    fn recycle_if_spent(&mut self, key: Key) {
        let Some(s) = self.sbs.get(key) else { return };
        // Every distinct piece of code stays compiled in the sandbox for its life: bound that too.
        let spent = s.served >= self.config.max_requests || s.compiled.len() > MAX_COMPILED;
        if s.in_flight.is_empty() && s.killed.is_none() && spent {
            self.kill_sandbox(key, KillReason::MaxRequests);
        }
    }

    // ---- timers and signals ------------------------------------------------------------------------

    fn housekeeping(&mut self) {
        self.watch_cpu_time();
        self.release_idle_sandboxes();
        let now = Instant::now();
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

    fn spent_sandboxes(&self, now: Instant) -> Vec<(Key, KillReason)> {
        let mut out = Vec::new();
        for (key, s) in self.sbs.iter() {
            if s.tenant.is_none() || s.killed.is_some() || !s.in_flight.is_empty() {
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

    fn on_signal(&mut self) {
        let mut info = [0u8; 128];
        // SAFETY: reads signalfd_siginfo records (128 bytes) into a local buffer of that size.
        while unsafe { libc::read(self.signals.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {
            if self.draining.is_none() {
                eprintln!("taskcell: stopping: finishing in-flight work (up to {} ms)", self.config.drain_timeout.as_millis());
                self.draining = Some(Instant::now() + self.config.drain_timeout);
                if let Some(mut l) = self.listener.take() {
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
                        eprintln!("taskcell: removing a sandbox's cgroup: {}", crate::jail::error_chain(&e));
                    }
                }
            }
        }
        // Sandboxes still booting on the spawner threads: wait for them and destroy them too.
        for spawned in self.spawner.stop() {
            if let Err(e) = spawned.sandbox.destroy() {
                eprintln!("taskcell: removing a sandbox's cgroup: {}", crate::jail::error_chain(&e));
            }
        }
        // Let the reaper finish what it was given: closing its channel ends its loop.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.reaper, tx));
        if let Some(thread) = self.reaper_thread.take() {
            let _ = thread.join();
        }
    }

    fn send_store_job(&mut self, job: StoreJob) {
        if self.store_jobs.send(job).is_ok() {
            self.store_pending += 1;
        }
    }

    fn collect_store_results(&mut self) {
        while let Ok(done) = self.store_done.try_recv() {
            self.store_pending = self.store_pending.saturating_sub(1);
            match done.code_cache {
                CodeCacheUpdate::None => {}
                CodeCacheUpdate::Set { tenant, task, key, cache } => {
                    let waiting = self.cache_waits.remove(&(tenant.clone(), task.clone())).unwrap_or_default();
                    self.code_caches.set(tenant.clone(), task, key, cache);
                    for w in waiting {
                        // Its sandbox may have died meanwhile: then it is a new invocation for the tenant.
                        let alive = self.sbs.get(w.sb).is_some_and(|s| s.killed.is_none()) && self.tenants.get(&tenant) == Some(&w.sb);
                        if alive {
                            self.dispatch(w.sb, w.conn, w.keep_alive, w.request_id, tenant.clone(), w.job, w.cold, w.started);
                        } else {
                            self.invoke(w.conn, w.request_id, w.keep_alive, tenant.clone(), w.job, w.started);
                        }
                    }
                }
                CodeCacheUpdate::Forget { tenant, task } => self.code_caches.forget(&tenant, &task),
            }
            if let Some((conn, keep_alive, request_id, response)) = done.reply {
                self.respond(conn, &request_id, keep_alive, response);
            }
        }
    }
}

/// A log message as text, cut to `LOG_MESSAGE_CAP` bytes (on a character boundary) with a note of the rest.
fn log_text(message: &[u8]) -> String {
    if message.len() <= LOG_MESSAGE_CAP {
        return String::from_utf8_lossy(message).into_owned();
    }
    let mut text = String::from_utf8_lossy(&message[..LOG_MESSAGE_CAP]).into_owned();
    // A character cut in two became U+FFFD: drop it rather than keep half of one.
    if text.ends_with('\u{fffd}') {
        text.pop();
    }
    text.push_str(&format!(" [log message truncated: {} bytes over the limit of {LOG_MESSAGE_CAP}]", message.len() - LOG_MESSAGE_CAP));
    text
}

fn drain_output(s: &mut Sb) {
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

fn task_json(info: &TaskInfo) -> serde_json::Value {
    serde_json::json!({"task": info.task, "sha256": info.sha256, "size": info.size, "updated": info.updated})
}

fn signal_name(sig: i32) -> &'static str {
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

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the local array.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    u32::from_ne_bytes(b)
}

fn start_store_thread(store: Arc<Store>, waker: Arc<Waker>) -> (Sender<StoreJob>, Receiver<StoreDone>) {
    let (jobs_tx, jobs) = mpsc::channel::<StoreJob>();
    let (done_tx, done) = mpsc::channel::<StoreDone>();
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            for job in jobs {
                let done = match job {
                    StoreJob::Put { conn, keep_alive, request_id, tenant, task, source, cache } => {
                        let (response, code_cache) = match store.put(&tenant, &task, &source) {
                            Ok((info, created)) => {
                                let body = serde_json::json!({"tenant": tenant, "task": task, "sha256": info.sha256, "size": info.size});
                                let response = Response::json(if created { 201 } else { 200 }, body.to_string()).header("ETag", format!("\"{}\"", info.sha256));
                                let key = format!("task:{task}:{}", info.sha256);
                                // Kept on disk too, so that a restart does not forget it (best effort).
                                if cache.is_empty() {
                                    store.forget_code_cache(&tenant, &task);
                                } else if let Err(e) = store.put_code_cache(&tenant, &task, &info.sha256, &cache) {
                                    eprintln!("taskcell: {}", crate::jail::error_chain(&e));
                                }
                                (response, CodeCacheUpdate::Set { tenant, task, key, cache })
                            }
                            Err(e) => (Response::error(500, "internal", &format!("storing the task: {}", crate::jail::error_chain(&e)), None), CodeCacheUpdate::None),
                        };
                        StoreDone { reply: Some((conn, keep_alive, request_id, response)), code_cache }
                    }
                    StoreJob::Delete { conn, keep_alive, request_id, tenant, task } => {
                        let response = match store.delete(&tenant, &task) {
                            Ok(true) => Response { status: 204, content_type: "application/json", headers: Vec::new(), body: Bytes::new() },
                            Ok(false) => Response::error(404, "not_found", &format!("tenant {tenant} has no task {task}"), None),
                            Err(e) => Response::error(500, "internal", &format!("deleting the task: {}", crate::jail::error_chain(&e)), None),
                        };
                        StoreDone { reply: Some((conn, keep_alive, request_id, response)), code_cache: CodeCacheUpdate::Forget { tenant, task } }
                    }
                    StoreJob::LoadCache { tenant, task, sha, key } => {
                        let cache = store.code_cache(&tenant, &task, &sha).unwrap_or_default();
                        StoreDone { reply: None, code_cache: CodeCacheUpdate::Set { tenant, task, key, cache } }
                    }
                };
                if done_tx.send(done).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        })
        .expect("spawning the store thread");
    (jobs_tx, done)
}

fn start_reaper_thread(batch: Option<jailer::sched::CpuSet>) -> (Sender<jailer::Sandbox>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<jailer::Sandbox>();
    let thread = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            // Removing cgroups is kernel work that waits and holds locks: batch work, off the reserved CPUs.
            if let Some(batch) = &batch {
                let _ = jailer::sched::set_affinity(0, batch);
            }
            for sandbox in rx {
                if let Err(e) = sandbox.destroy() {
                    eprintln!("taskcell: removing a sandbox's cgroup: {}", crate::jail::error_chain(&e));
                }
            }
        })
        .expect("spawning the reaper thread");
    (tx, thread)
}
