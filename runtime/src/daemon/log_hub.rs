//! Live logs across nodes: the ZeroMQ side of `/v1/logs` (`--log-hub-in`, `--log-hub-out`) and the hub itself
//! (`taskcell log-hub`, a zmq proxy from an XSUB socket bound at `--in` to an XPUB socket bound at `--out`).
//!
//! The event loop never touches a zmq socket. The publisher thread owns an XPUB socket (a PUB that hears subscriptions) connected to the hub's
//! input and is fed by a bounded channel that the loop only ever `try_send`s into: a full channel, an
//! unreachable hub or a hub that does not keep up is a dropped event, counted (`Stats`) and reported on the
//! other nodes' streams as a `dropped` line once events get through again; a run is never slowed. The
//! subscriber thread owns a SUB socket connected to the hub's output, subscribed to what this node's
//! `/v1/logs` clients follow, and feeds the loop through a bounded channel and the waker.
//!
//! A message is three frames: the topic `TENANT\0` (the NUL ends the name, so that a subscription to tenant
//! `a`, `a\0`, never matches tenant `ab`; the empty subscription is every tenant), the sending daemon's
//! instance id (its node name and a random number: a node skips its own events, which its own subscribers had
//! from it directly, even if two nodes were given one name), and the event line as a node's `/v1/logs` sends
//! it (NDJSON, with `node`). Nothing here may block the loop, and nothing from the hub is trusted to be an
//! event until it is checked (`parse_message`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Events waiting for the publisher thread; past it the loop drops (and counts) them.
pub const PUBLISH_QUEUE: usize = 4096;
/// Events held by zmq for the hub connection (its send high-water mark); past it the thread drops them.
const PUBLISH_HWM: i32 = 10_000;
/// Other nodes' events waiting for the loop; past it the subscriber thread drops (and counts) them.
pub const RECEIVE_QUEUE: usize = 4096;
/// How often the threads look at their control channel and the connection's state when nothing else happens.
const TICK: Duration = Duration::from_millis(100);
/// The largest event line accepted from the hub (a message is cut to 64 KiB, plus the other fields).
const MAX_LINE: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{what} {endpoint}")]
    Socket {
        what: &'static str,
        endpoint: String,
        #[source]
        source: zmq::Error,
    },
    #[error("{0} is not tcp://HOST:PORT")]
    Address(String),
    #[error("blocking SIGTERM and SIGINT")]
    Signals(#[source] std::io::Error),
}

/// `tcp://HOST:PORT` (an IP literal or a name, a port number; `*` for a port the hub binds), as zmq takes it.
pub fn valid_endpoint(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("tcp://") else { return false };
    let Some((host, port)) = rest.rsplit_once(':') else { return false };
    !host.is_empty() && !host.contains('/') && (port == "*" || port.parse::<u16>().is_ok())
}

/// The topic of a tenant's events: its name and a NUL.
pub fn topic(tenant: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(tenant.len() + 1);
    t.extend_from_slice(tenant.as_bytes());
    t.push(0);
    t
}

/// One event from another node, checked: a valid tenant name in the topic, another instance's id, one JSON
/// object on one line whose `tenant` is the topic's. None for anything else (and this node's own).
pub fn parse_message(frames: &[Vec<u8>], own_id: &[u8]) -> Option<(String, Vec<u8>)> {
    let [topic, id, line] = frames else { return None };
    let tenant = std::str::from_utf8(topic.strip_suffix(b"\0")?).ok()?;
    if id.as_slice() == own_id || !super::store::valid_name(tenant) || line.len() > MAX_LINE {
        return None;
    }
    let body = line.strip_suffix(b"\n")?;
    if body.contains(&b'\n') {
        return None;
    }
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    if event.get("tenant")?.as_str()? != tenant || !event.get("node")?.is_string() {
        return None;
    }
    Some((tenant.to_string(), line.clone()))
}

/// What the publisher thread and the loop count together (shown in `/metrics` and `/v1/health`).
#[derive(Default)]
pub struct Stats {
    /// Events not delivered to the hub: the queue was full, the hub unreachable or not keeping up.
    pub dropped: AtomicU64,
    /// The publishing socket's connection to the hub is up (from zmq's socket monitor).
    pub connected: AtomicBool,
}

/// An event for the hub: its tenant, the finished line, and how many of the tenant's events the loop dropped
/// before it (the queue was full), to be reported ahead of it.
pub struct Outgoing {
    pub tenant: String,
    pub line: Vec<u8>,
    pub dropped_before: u64,
}

/// The loop's end of the publisher thread.
pub struct Publisher {
    queue: Option<SyncSender<Outgoing>>,
    pub stats: Arc<Stats>,
    /// Per tenant, events dropped at a full queue and not yet reported.
    dropped: HashMap<String, u64>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Connect a publishing socket to the hub's input (zmq connects, and reconnects, in the background: a hub that is
    /// not there yet is not an error) and start the thread that owns it.
    pub fn start(ctx: &zmq::Context, endpoint: &str, instance: &[u8], node: &str) -> Result<Publisher, HubError> {
        let err = |what, source| HubError::Socket { what, endpoint: endpoint.to_string(), source };
        // XPUB rather than PUB: the same publisher, which also hears what the hub's subscribers follow.
        let mut socket = ctx.socket(zmq::XPUB).map_err(|e| err("making an XPUB socket for", e))?;
        socket.set_linger(0).map_err(|e| err("setting linger on", e))?;
        socket.set_sndhwm(PUBLISH_HWM).map_err(|e| err("setting the high-water mark of", e))?;
        // A full pipe to the hub makes a non-blocking send fail with EAGAIN instead of dropping in silence,
        // so that the thread can count what the hub lost. zmq's bindings have no setter for it.
        let on: std::ffi::c_int = 1;
        // SAFETY: the socket pointer is this live socket's, and ZMQ_XPUB_NODROP takes an int, whose address and
        // size are given; libzmq copies the value before returning.
        let rc = unsafe {
            zmq_sys::zmq_setsockopt(
                socket.as_mut_ptr(),
                zmq_sys::ZMQ_XPUB_NODROP as std::ffi::c_int,
                (&on as *const std::ffi::c_int).cast(),
                std::mem::size_of::<std::ffi::c_int>(),
            )
        };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(err("setting ZMQ_XPUB_NODROP on", zmq::Error::from_raw(errno)));
        }
        let monitor_at = format!("inproc://log-hub-publisher-{}", String::from_utf8_lossy(instance));
        // Up once the ZeroMQ handshake is done (a port that accepts TCP but is no hub is not a connection).
        let events = (zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED | zmq_sys::ZMQ_EVENT_DISCONNECTED) as i32;
        socket.monitor(&monitor_at, events).map_err(|e| err("monitoring", e))?;
        let monitor = ctx.socket(zmq::PAIR).map_err(|e| err("making the monitor of", e))?;
        monitor.connect(&monitor_at).map_err(|e| err("monitoring", e))?;
        socket.connect(endpoint).map_err(|e| err("connecting to", e))?;
        let (queue, rx) = mpsc::sync_channel(PUBLISH_QUEUE);
        let stats = Arc::new(Stats::default());
        let ctx = PublisherThread { socket, monitor, rx, stats: stats.clone(), id: instance.to_vec(), node: node.to_string() };
        let thread =
            std::thread::Builder::new().name("log-hub-pub".into()).spawn(move || ctx.run()).expect("spawning the log-hub publisher");
        Ok(Publisher { queue: Some(queue), stats, dropped: HashMap::new(), thread: Some(thread) })
    }

    /// Hand one event line to the thread, or count it as dropped: never waits.
    pub fn offer(&mut self, tenant: &str, line: &[u8]) {
        let Some(queue) = &self.queue else { return };
        let dropped_before = self.dropped.remove(tenant).unwrap_or(0);
        let event = Outgoing { tenant: tenant.to_string(), line: line.to_vec(), dropped_before };
        if let Err(TrySendError::Full(event) | TrySendError::Disconnected(event)) = queue.try_send(event) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            *self.dropped.entry(event.tenant).or_default() += event.dropped_before + 1;
        }
    }

    /// Close the queue and wait for the thread, which ends at once (the socket lingers for nothing).
    pub fn stop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
    }
}

struct PublisherThread {
    socket: zmq::Socket,
    monitor: zmq::Socket,
    rx: Receiver<Outgoing>,
    stats: Arc<Stats>,
    id: Vec<u8>,
    node: String,
}

impl PublisherThread {
    fn run(self) {
        // Per tenant, events lost and not yet reported to the hub's subscribers.
        let mut unreported: HashMap<String, u64> = HashMap::new();
        // The topics someone at the hub follows (an XPUB socket hears them): an event nobody follows is not
        // lost, and a report of losses waits for someone to read it.
        let mut followed: HashSet<Vec<u8>> = HashSet::new();
        loop {
            let event = match self.rx.recv_timeout(TICK) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.watch(&mut followed);
            let Some(Outgoing { tenant, line, dropped_before }) = event else { continue };
            let lost = unreported.remove(&tenant).unwrap_or(0) + dropped_before;
            let mut keep = |tenant: String, n: u64| {
                if n > 0 {
                    unreported.insert(tenant, n);
                }
            };
            if !self.stats.connected.load(Ordering::Relaxed) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                keep(tenant, lost + 1);
                continue;
            }
            let topic = topic(&tenant);
            if !followed.contains(&topic) && !followed.contains(&b""[..]) {
                keep(tenant, lost);
                continue;
            }
            if lost > 0 && !self.send(&topic, &super::logs::hub_dropped_line(&tenant, &self.node, lost)) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                keep(tenant, lost + 1);
                continue;
            }
            if !self.send(&topic, &line) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                keep(tenant, 1);
            }
        }
    }

    /// One message, without waiting: false if the pipe to the hub is full (or the socket failed).
    fn send(&self, topic: &[u8], line: &[u8]) -> bool {
        self.socket.send_multipart([topic, &self.id, line], zmq::DONTWAIT).is_ok()
    }

    /// Take what happened since the last look: the connection to the hub went up or down (the monitor), a
    /// topic is followed at the hub or no longer (a byte 1 or 0, then the topic; zmq sends the first
    /// subscription to a topic and its last unsubscription, the latter also when the hub goes away).
    fn watch(&self, followed: &mut HashSet<Vec<u8>>) {
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(head) = frames.first().filter(|f| f.len() >= 2) else { continue };
            // Compared as numbers: the bindings' `SocketEvent::from_raw` panics on an event it does not know.
            match u32::from(u16::from_ne_bytes([head[0], head[1]])) {
                zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED => self.stats.connected.store(true, Ordering::Relaxed),
                zmq_sys::ZMQ_EVENT_DISCONNECTED => self.stats.connected.store(false, Ordering::Relaxed),
                _ => {}
            }
        }
        while let Ok(message) = self.socket.recv_bytes(zmq::DONTWAIT) {
            match message.split_first() {
                Some((1, topic)) => {
                    followed.insert(topic.to_vec());
                }
                Some((0, topic)) => {
                    followed.remove(topic);
                }
                _ => {}
            }
        }
    }
}

/// What the loop asks of the subscriber thread: a topic to follow (the empty one is everything) or to stop
/// following. zmq counts subscriptions, so each follower subscribes and unsubscribes its own.
pub enum Follow {
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
}

/// An event from another node, checked, with how many of that tenant's events this node dropped before it.
pub struct Incoming {
    pub tenant: String,
    pub line: Vec<u8>,
    pub dropped_before: u64,
}

/// The loop's end of the subscriber thread.
pub struct Subscriber {
    follow: Option<mpsc::Sender<Follow>>,
    pub events: Receiver<Incoming>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(ctx: &zmq::Context, endpoint: &str, instance: &[u8], waker: Arc<mio::Waker>) -> Result<Subscriber, HubError> {
        let err = |what, source| HubError::Socket { what, endpoint: endpoint.to_string(), source };
        let socket = ctx.socket(zmq::SUB).map_err(|e| err("making a SUB socket for", e))?;
        socket.set_linger(0).map_err(|e| err("setting linger on", e))?;
        socket.connect(endpoint).map_err(|e| err("connecting to", e))?;
        let (follow, follow_rx) = mpsc::channel();
        let (events_tx, events) = mpsc::sync_channel(RECEIVE_QUEUE);
        let ctx = SubscriberThread { socket, follow: follow_rx, events: events_tx, waker, id: instance.to_vec() };
        let thread =
            std::thread::Builder::new().name("log-hub-sub".into()).spawn(move || ctx.run()).expect("spawning the log-hub subscriber");
        Ok(Subscriber { follow: Some(follow), events, thread: Some(thread) })
    }

    pub fn follow(&self, what: Follow) {
        if let Some(f) = &self.follow {
            let _ = f.send(what);
        }
    }

    pub fn stop(&mut self) {
        self.follow = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop();
    }
}

struct SubscriberThread {
    socket: zmq::Socket,
    follow: Receiver<Follow>,
    events: SyncSender<Incoming>,
    waker: Arc<mio::Waker>,
    id: Vec<u8>,
}

impl SubscriberThread {
    fn run(self) {
        let mut dropped: HashMap<String, u64> = HashMap::new();
        loop {
            loop {
                match self.follow.try_recv() {
                    Ok(Follow::Subscribe(t)) => {
                        let _ = self.socket.set_subscribe(&t);
                    }
                    Ok(Follow::Unsubscribe(t)) => {
                        let _ = self.socket.set_unsubscribe(&t);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if !matches!(self.socket.poll(zmq::POLLIN, TICK.as_millis() as i64), Ok(n) if n > 0) {
                continue;
            }
            // A burst at most before the loop is woken, so that it is woken once for many.
            let mut sent = false;
            for _ in 0..256 {
                let Ok(frames) = self.socket.recv_multipart(zmq::DONTWAIT) else { break };
                let Some((tenant, line)) = parse_message(&frames, &self.id) else { continue };
                let dropped_before = dropped.remove(&tenant).unwrap_or(0);
                match self.events.try_send(Incoming { tenant, line, dropped_before }) {
                    Ok(()) => sent = true,
                    // Counted by the loop when it takes the tenant's next event (as its subscribers' drops).
                    Err(TrySendError::Full(e)) => {
                        *dropped.entry(e.tenant).or_default() += e.dropped_before + 1;
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            if sent {
                let _ = self.waker.wake();
            }
        }
    }
}

/// A random instance id for this daemon's messages: its node name and 64 random bits.
pub fn instance_id(node: &str) -> Vec<u8> {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into the local array.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    format!("{node}/{:016x}", u64::from_ne_bytes(b)).into_bytes()
}

// ---- taskcell log-hub -------------------------------------------------------------------------------------

const HUB_USAGE: &str = "usage: taskcell log-hub --in ADDR --out ADDR
  the hub of live logs across nodes: nodes publish (serve --log-hub-in) to --in, nodes' /v1/logs
  subscribe (serve --log-hub-out) at --out. ADDR: tcp://HOST:PORT (both bound here; port * or 0: any free one,
  logged). A ZeroMQ proxy, XSUB on --in and XPUB on --out; stops on SIGTERM or SIGINT.";

/// `taskcell log-hub --in ADDR --out ADDR`.
pub fn hub_main(raw: Vec<String>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (input, output) = match crate::args::named_values("taskcell log-hub", raw, &["--in", "--out"], HUB_USAGE) {
        Ok(mut v) => (v[0].take(), v[1].take()),
        Err(code) => return code,
    };
    let (Some(input), Some(output)) = (input, output) else {
        eprintln!("taskcell log-hub: --in and --out are required\n{HUB_USAGE}");
        return ExitCode::from(2);
    };
    match run_hub(&input, &output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskcell log-hub: {}", crate::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// Bind both ends, proxy until SIGTERM or SIGINT.
pub fn run_hub(input: &str, output: &str) -> Result<(), HubError> {
    // Port 0 means any free port, as for --listen-tcp; zmq spells it `*`.
    let any = |e: &str| match e.strip_suffix(":0") {
        Some(head) => format!("{head}:*"),
        None => e.to_string(),
    };
    let (input, output) = (any(input), any(output));
    for e in [&input, &output] {
        if !valid_endpoint(e) {
            return Err(HubError::Address(e.clone()));
        }
    }
    // Before zmq's I/O threads exist, so that they inherit the mask and the signals wait in the signalfd.
    let signals = crate::signals::block(&[libc::SIGINT, libc::SIGTERM]).map_err(HubError::Signals)?;
    let ctx = zmq::Context::new();
    let err = |what, endpoint: &str, source| HubError::Socket { what, endpoint: endpoint.to_string(), source };
    let mut xsub = ctx.socket(zmq::XSUB).map_err(|e| err("making the XSUB socket for", &input, e))?;
    let mut xpub = ctx.socket(zmq::XPUB).map_err(|e| err("making the XPUB socket for", &output, e))?;
    for s in [&xsub, &xpub] {
        s.set_linger(0).map_err(|e| err("setting linger on", &input, e))?;
    }
    xsub.bind(&input).map_err(|e| err("binding", &input, e))?;
    xpub.bind(&output).map_err(|e| err("binding", &output, e))?;
    let bound = |s: &zmq::Socket, e: &str| s.get_last_endpoint().ok().and_then(|r| r.ok()).unwrap_or_else(|| e.to_string());
    eprintln!("taskcell log-hub: in {} out {}", bound(&xsub, &input), bound(&xpub, &output));
    // The proxy runs here; a thread waits for the signal and tells it to stop over its control socket.
    let mut control = ctx.socket(zmq::PAIR).map_err(|e| err("making the control socket of", &input, e))?;
    control.bind("inproc://log-hub-control").map_err(|e| err("binding", "inproc://log-hub-control", e))?;
    let stopper = ctx.socket(zmq::PAIR).map_err(|e| err("making the control socket of", &input, e))?;
    stopper.connect("inproc://log-hub-control").map_err(|e| err("connecting to", "inproc://log-hub-control", e))?;
    let waiter = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            use std::os::fd::AsRawFd;
            let mut info = [0u8; 128];
            // SAFETY: reads one signalfd_siginfo record (128 bytes) into a local buffer of that size; blocks.
            while unsafe { libc::read(signals.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } <= 0 {}
            eprintln!("taskcell log-hub: stopping");
            let _ = stopper.send("TERMINATE", 0);
        })
        .expect("spawning the signal thread");
    let result = zmq::proxy_steerable(&mut xsub, &mut xpub, &mut control).map_err(|e| err("proxying", &input, e));
    let _ = waiter.join();
    eprintln!("taskcell log-hub: stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str, node: &str) -> Vec<u8> {
        let mut l = serde_json::json!({"tenant": tenant, "node": node, "message": "m"}).to_string().into_bytes();
        l.push(b'\n');
        l
    }

    #[test]
    fn a_tenant_topic_is_not_a_prefix_of_another() {
        assert_eq!(topic("a"), b"a\0");
        assert!(!topic("ab").starts_with(&topic("a")));
        assert!(topic("a").starts_with(b""), "the empty subscription is every tenant");
    }

    #[test]
    fn messages_from_the_hub_are_checked() {
        let ok = vec![topic("acme"), b"b/1".to_vec(), event("acme", "b")];
        assert_eq!(parse_message(&ok, b"a/1").map(|(t, _)| t).as_deref(), Some("acme"));
        assert!(parse_message(&ok, b"b/1").is_none(), "a node's own events come back from the hub: skipped");
        let other = vec![topic("acme"), b"b/1".to_vec(), event("evil", "b")];
        assert!(parse_message(&other, b"a/1").is_none(), "a line of another tenant than its topic's");
        let bad_topic = vec![b"acme".to_vec(), b"b/1".to_vec(), event("acme", "b")];
        assert!(parse_message(&bad_topic, b"a/1").is_none());
        let no_node = vec![topic("acme"), b"b/1".to_vec(), b"{\"tenant\":\"acme\"}\n".to_vec()];
        assert!(parse_message(&no_node, b"a/1").is_none());
        let two_lines = vec![topic("acme"), b"b/1".to_vec(), b"{\"tenant\":\"acme\",\"node\":\"b\"}\n{}\n".to_vec()];
        assert!(parse_message(&two_lines, b"a/1").is_none());
        assert!(parse_message(&ok[..2], b"a/1").is_none());
        let bad_name = vec![topic("../x"), b"b/1".to_vec(), event("../x", "b")];
        assert!(parse_message(&bad_name, b"a/1").is_none());
    }

    #[test]
    fn endpoints() {
        assert!(valid_endpoint("tcp://127.0.0.1:5555") && valid_endpoint("tcp://hub.internal:5555") && valid_endpoint("tcp://[::1]:1"));
        assert!(valid_endpoint("tcp://127.0.0.1:*"));
        assert!(!valid_endpoint("127.0.0.1:5555") && !valid_endpoint("tcp://127.0.0.1") && !valid_endpoint("tcp://:1"));
        assert!(!valid_endpoint("ipc:///tmp/x") && !valid_endpoint("tcp://h:99999"));
    }
}
