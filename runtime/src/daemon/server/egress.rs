//! Egress: tenant code's TCP connections out of its sandbox, through the daemon (docs/protocol.md, "Egress").
//!
//! Every sandbox has two listeners inside its own network namespace, made by the spawner with
//! `jailer::net::listen_inside`: 127.0.0.1:3128, and the abstract Unix socket `crate::EGRESS_SOCKET` that the
//! bootstrap uses (Node spends a third less CPU reading a Unix socket than TCP over loopback, and a download
//! goes at the rate Node reads; docs/egress.md). The namespace still holds only `lo`. A connection to either is
//! a tunnel, the same behind both: the runtime writes `CONNECT host:port HTTP/1.1`, the daemon checks the tenant's allow-list, the limits, resolves
//! the name itself (`--egress-resolve` first, else on a resolver thread), checks the address
//! (`egress_policy::check_address`) and connects to that very address (no second lookup, so a name that
//! answers differently the second time changes nothing), answers `200` or a refusal naming why, and then
//! splices bytes both ways without looking at them (TLS stays end to end).
//!
//! The loop never waits on a tunnel: the listener is drained within a budget, connects are non-blocking,
//! resolution happens on its own threads, and each tunnel moves at most `TUNNEL_BUDGET` bytes a turn; a side
//! whose buffer toward the other is full is not read (back-pressure through the sockets). A sandbox's death
//! or kill closes all its tunnels. Every tunnel, allowed or refused, is one log event with an `egress` field.

use super::*;

use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::Registry;

use crate::daemon::egress_policy::{self, Destination, Rule};

/// A CONNECT request's head is at most this long.
pub(super) const HEAD_LIMIT: usize = 8 << 10;
/// Bytes buffered in each direction of a tunnel; a full buffer stops reading the side that fills it.
const TUNNEL_BUFFER: usize = 256 << 10;
/// The send buffer of a tunnel's Unix socket toward the sandbox. A Unix stream socket holds what the reader has
/// not yet read against the writer's send buffer (the default, about 208 KiB, wakes the loop every 200 KiB
/// of a download); this much lets the loop hand Node a megabyte a wake-up.
const UNIX_SNDBUF: usize = 1 << 20;
/// Bytes a tunnel moves (both directions) per turn of the loop before the others have theirs.
const TUNNEL_BUDGET: usize = 1 << 20;
/// Connections accepted from one sandbox's listener per turn.
const ACCEPT_BUDGET: usize = 16;
/// Tunnels open at once in one sandbox (past the allow-list: resolving, connecting or open).
pub(super) const SANDBOX_OPEN_MAX: usize = 64;
/// Connections held for one sandbox in any phase (the heads not yet read included): past it a new one is
/// closed as soon as accepted, so that a sandbox cannot park its whole descriptor limit in the daemon.
const SANDBOX_TUNNELS_MAX: usize = 2 * SANDBOX_OPEN_MAX;
/// From accept to connected (the CONNECT head, resolution and the connect itself).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused tunnel is kept this long at most for its answer to reach the sandbox.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Reading the CONNECT head.
    Head,
    /// Waiting for a resolver thread.
    Resolving,
    /// A non-blocking connect is under way.
    Connecting,
    /// Splicing.
    Open,
    /// A refusal was written: waiting for the sandbox to close (or `REFUSAL_LINGER`).
    Closing,
}

/// One direction's bytes in flight, in a pipe of the daemon's: spliced in from one socket and out into the
/// other (splice(2)), so that they never pass through the daemon's memory (a download costs one copy less each
/// way than read and write, and the daemon holds no buffer of its own). The pipe is made on first use and
/// closed again while empty (a refused tunnel or an idle keep-alive one holds none).
#[derive(Default)]
struct Pipe {
    /// Read and write ends; None until first use.
    ends: Option<(OwnedFd, OwnedFd)>,
    /// Bytes in the pipe.
    len: usize,
    /// The pipe has no free slot although it holds fewer than `TUNNEL_BUFFER` bytes (a slot per segment
    /// spliced in): filling waits until it is drained.
    full: bool,
}

/// What one splice into a pipe did.
enum Filled {
    Bytes(usize),
    Eof,
    /// The socket has nothing to read now.
    SocketEmpty,
    /// The pipe is full: drain it first.
    PipeFull,
}

impl Pipe {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn has_space(&self) -> bool {
        !self.full && self.len < TUNNEL_BUFFER
    }

    fn ends(&mut self) -> io::Result<&(OwnedFd, OwnedFd)> {
        if self.ends.is_none() {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two descriptors into the array, owned from here on.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both were just made by pipe2 and are owned by nothing else.
            self.ends = Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) });
            // Four times the default: a quarter of the splices and turns for a download (measured: the daemon's
            // CPU time for 10 MB fell by about a third). Refused past /proc/sys/fs/pipe-max-size: then the
            // default, which only means more turns.
            // SAFETY: fcntl on the pipe just made.
            unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, TUNNEL_BUFFER as libc::c_int) };
        }
        Ok(self.ends.as_ref().expect("made above"))
    }

    /// Splice once from `from` into the free space.
    fn fill(&mut self, from: &impl AsRawFd) -> io::Result<Filled> {
        let want = TUNNEL_BUFFER - self.len;
        let w = self.ends()?.1.as_raw_fd();
        match splice(from.as_raw_fd(), w, want) {
            Ok(0) => Ok(Filled::Eof),
            Ok(n) => {
                self.len += n;
                Ok(Filled::Bytes(n))
            }
            // EAGAIN is either side: an empty pipe cannot be full, a pipe with bytes in it may be.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.len == 0 => Ok(Filled::SocketEmpty),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.full = true;
                Ok(Filled::PipeFull)
            }
            Err(e) => Err(e),
        }
    }

    /// Splice once from the pipe into `to`.
    fn drain_into(&mut self, to: &impl AsRawFd) -> io::Result<usize> {
        let len = self.len;
        let r = self.ends()?.0.as_raw_fd();
        let n = splice(r, to.as_raw_fd(), len)?;
        self.len -= n;
        if n > 0 {
            self.full = false;
        }
        Ok(n)
    }

    /// Close the pipe while empty.
    fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.ends = None;
            self.full = false;
        }
    }

    /// Bytes that go first (the head's leftovers, the answer): written into the empty pipe, far smaller than
    /// it.
    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let w = self.ends()?.1.as_raw_fd();
        // SAFETY: a write of the slice's bytes into the pipe this tunnel owns.
        let n = unsafe { libc::write(w, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        self.len += n;
        if n < bytes.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the early bytes do not fit the pipe"));
        }
        Ok(())
    }
}

/// splice(2) between a socket and a pipe, non-blocking on both sides.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: splice between two descriptors this tunnel owns, with no offsets (both are a socket or a pipe).
        let n = unsafe {
            libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A sandbox's egress listeners (see `jailer::net`).
pub(super) struct Listeners {
    tcp: TcpListener,
    /// By `Via::Unix`'s index: at most two (the name exact and padded).
    unix: Vec<UnixListener>,
}

impl Listeners {
    pub(super) fn from_std(e: jailer::net::Endpoints) -> Listeners {
        Listeners { tcp: TcpListener::from_std(e.tcp), unix: e.unix.into_iter().take(2).map(UnixListener::from_std).collect() }
    }

    pub(super) fn register(&mut self, registry: &Registry, sb: Key) -> io::Result<()> {
        registry.register(&mut self.tcp, Source::Sandbox(sb, SandboxFd::Egress(Via::Tcp)).token(), Interest::READABLE)?;
        for (i, l) in self.unix.iter_mut().enumerate() {
            registry.register(l, Source::Sandbox(sb, SandboxFd::Egress(Via::Unix(i as u8))).token(), Interest::READABLE)?;
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.tcp);
        for l in &mut self.unix {
            let _ = registry.deregister(l);
        }
    }

    fn accept(&self, via: Via) -> io::Result<Inner> {
        match via {
            Via::Tcp => self.tcp.accept().map(|(s, _)| Inner::Tcp(s)),
            Via::Unix(i) => match self.unix.get(usize::from(i)) {
                Some(l) => l.accept().map(|(s, _)| Inner::Unix(s)),
                None => Err(io::ErrorKind::NotFound.into()),
            },
        }
    }
}

/// The sandbox's end of a tunnel, whichever listener it came through.
enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Inner {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Inner::Tcp(s) => s,
            Inner::Unix(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Inner::Tcp(s) => s.read(buf),
            Inner::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Inner::Tcp(s) => s.write(buf),
            Inner::Unix(s) => s.write(buf),
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Inner::Tcp(s) => s.shutdown(how),
            Inner::Unix(s) => s.shutdown(how),
        }
    }

    /// Made ready to carry a tunnel's bytes.
    fn tune(&self) {
        match self {
            Inner::Tcp(s) => {
                let _ = s.set_nodelay(true);
            }
            // SO_SNDBUFFORCE, past net.core.wmem_max, needs CAP_NET_ADMIN; without it SO_SNDBUF, which the
            // kernel caps at wmem_max (only more wake-ups).
            Inner::Unix(s) => {
                let _ =
                    set_buffer(s.as_raw_fd(), libc::SO_SNDBUFFORCE, UNIX_SNDBUF) || set_buffer(s.as_raw_fd(), libc::SO_SNDBUF, UNIX_SNDBUF);
            }
        }
    }
}

/// Set a socket's send or receive buffer (`SO_SNDBUF`, `SO_SNDBUFFORCE`, `SO_RCVBUF`...) to `size` bytes;
/// false if the kernel refused.
fn set_buffer(fd: RawFd, opt: libc::c_int, size: usize) -> bool {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads an int from a pointer to a local int, with that int's size; an fd that is not
    // a socket is an error return, not undefined behaviour.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

impl AsRawFd for Inner {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Inner::Tcp(s) => s.as_raw_fd(),
            Inner::Unix(s) => s.as_raw_fd(),
        }
    }
}

#[derive(Clone, Copy)]
struct Ready {
    inner_read: bool,
    inner_write: bool,
    outer_read: bool,
    outer_write: bool,
}

impl Ready {
    const ALL: Ready = Ready { inner_read: true, inner_write: true, outer_read: true, outer_write: true };
}

pub(super) struct Tunnel {
    sb: Key,
    inner: Inner,
    outer: Option<TcpStream>,
    phase: Phase,
    head: Vec<u8>,
    /// As the CONNECT request gave it, and the address checked and connected to.
    host: String,
    port: u16,
    address: Option<SocketAddr>,
    tenant: String,
    task: Option<String>,
    request_id: Option<String>,
    /// Sandbox to destination, and back.
    up: Pipe,
    down: Pipe,
    /// Readiness as the last events said and no call since has denied (edge-triggered: a side is tried only
    /// when it may have room or data, and each `WouldBlock` waits for its next event).
    ready: Ready,
    inner_eof: bool,
    outer_eof: bool,
    outer_shut: bool,
    inner_shut: bool,
    bytes_in: u64,
    bytes_out: u64,
    deadline: Option<Instant>,
    /// Counted in its sandbox's open tunnels.
    counted: bool,
    logged: bool,
}

/// The CONNECT request's head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ConnectHead {
    pub(super) host: String,
    pub(super) port: u16,
    /// `X-Taskcell-Invocation`: the invocation the runtime says it connects for.
    pub(super) invocation: Option<u32>,
    /// Where the bytes after the head start.
    pub(super) len: usize,
}

/// `CONNECT host:port HTTP/1.1\r\n` then headers up to an empty line; `Ok(None)` while incomplete.
pub(super) fn parse_connect_head(buf: &[u8]) -> Result<Option<ConnectHead>, &'static str> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > HEAD_LIMIT { Err("the CONNECT request's head is over 8 KiB") } else { Ok(None) };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "the CONNECT request is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some("CONNECT"), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("expected CONNECT host:port HTTP/1.1");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("expected CONNECT host:port HTTP/1.1");
    }
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or("the target must be host:port")?;
        (format!("[{h}]"), p)
    } else {
        let (h, p) = target.rsplit_once(':').ok_or("the target must be host:port")?;
        (h.to_string(), p)
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or("the port must be a number from 1 to 65535")?;
    if host.is_empty() {
        return Err("the target must be host:port");
    }
    let mut invocation = None;
    for header in lines {
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("x-taskcell-invocation") {
                invocation = value.trim().parse().ok();
            }
        }
    }
    Ok(Some(ConnectHead { host, port, invocation, len: end + 4 }))
}

/// Why a tunnel was not opened.
enum Refusal {
    BadRequest(&'static str),
    NoInvocation,
    NotAllowed,
    InvocationLimit(usize),
    SandboxLimit,
    Private { address: IpAddr, why: &'static str },
    Resolve(String),
    Connect(io::Error),
    Timeout,
}

impl Refusal {
    /// The answer's status, the error code the runtime gives the task, the reason's short name (the log
    /// event's and the metric's), and whether the allow-list let it through.
    fn parts(&self) -> (u16, &'static str, &'static str, bool) {
        match self {
            Refusal::BadRequest(_) => (400, "EGRESS_DENIED", "bad_request", false),
            Refusal::NoInvocation => (403, "EGRESS_DENIED", "no_invocation", false),
            Refusal::NotAllowed => (403, "EGRESS_DENIED", "not_allowed", false),
            Refusal::InvocationLimit(_) | Refusal::SandboxLimit => (429, "EGRESS_DENIED", "limit", true),
            Refusal::Private { .. } => (403, "EGRESS_DENIED", "private_address", true),
            Refusal::Resolve(_) => (502, "ENOTFOUND", "resolve_failed", true),
            Refusal::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => (502, "ECONNREFUSED", "connect_failed", true),
            Refusal::Connect(_) => (502, "ECONNRESET", "connect_failed", true),
            Refusal::Timeout => (504, "ETIMEDOUT", "timeout", true),
        }
    }

    fn message(&self, host: &str, port: u16, tenant: &str) -> String {
        let to = format!("egress to {host}:{port}");
        match self {
            Refusal::BadRequest(why) => format!("egress refused: {why}"),
            Refusal::NoInvocation => format!("{to} refused: no invocation of tenant {tenant} is running in this sandbox"),
            Refusal::NotAllowed => format!("{to} refused: not on the allow-list of tenant {tenant}"),
            Refusal::InvocationLimit(n) => format!("{to} refused: limit of {n} egress connections an invocation reached"),
            Refusal::SandboxLimit => {
                format!("{to} refused: limit of {SANDBOX_OPEN_MAX} egress connections open at once in a sandbox reached")
            }
            Refusal::Private { address, why } => {
                format!("{to} refused: private address {address} ({why}), which the operator has not allowed")
            }
            Refusal::Resolve(e) => format!("{to} failed: the name could not be resolved ({e})"),
            Refusal::Connect(e) => format!("{to} failed: connect: {e}"),
            Refusal::Timeout => format!("{to} failed: not connected within {} s", CONNECT_TIMEOUT.as_secs()),
        }
    }
}

impl Server {
    /// The tenant's effective rules: the operator's (`--egress-allow`) and its own.
    fn egress_allows(&self, tenant: &str, dest: &Destination, port: u16) -> bool {
        let own = self.egress_lists.get(tenant).map(|(_, rules)| rules.as_slice()).unwrap_or_default();
        self.config.egress.allow.iter().map(|(_, r)| r).chain(own).any(|r: &Rule| r.allows(dest, port))
    }

    /// `GET /v1/tenants/T/egress`.
    pub(super) fn egress_json(&self, tenant: &str) -> String {
        let own: &[String] = self.egress_lists.get(tenant).map(|(text, _)| text.as_slice()).unwrap_or_default();
        let mut body = serde_json::json!({ "allow": own });
        if !self.config.egress.allow.is_empty() {
            let operator: Vec<&str> = self.config.egress.allow.iter().map(|(t, _)| t.as_str()).collect();
            body["operator"] = serde_json::json!(operator);
        }
        body.to_string()
    }

    /// A stored list is in force from the moment its `PUT` is answered.
    pub(super) fn set_egress_list(&mut self, tenant: String, allow: Vec<String>) {
        let rules: Vec<Rule> = allow.iter().filter_map(|r| Rule::parse(r).ok()).collect();
        self.egress_lists.insert(tenant, (allow, rules));
    }

    pub(super) fn open_egress_tunnels(&self) -> usize {
        self.tunnels.len()
    }

    pub(super) fn on_egress_accept(&mut self, sb: Key, via: Via) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(s) = self.sbs.get_mut(sb) else { return };
            let Some(listeners) = s.egress.as_ref() else { return };
            let stream = match listeners.accept(via) {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued; try again next turn rather than spin.
                    eprintln!("taskcell: accepting an egress connection: {e}");
                    return;
                }
            };
            if s.tunnels.len() >= SANDBOX_TUNNELS_MAX {
                drop(stream);
                self.metrics.egress("limit");
                continue;
            }
            let tenant = s.tenant.clone().unwrap_or_default();
            let tunnel = Tunnel {
                sb,
                inner: stream,
                outer: None,
                phase: Phase::Head,
                head: Vec::new(),
                host: String::new(),
                port: 0,
                address: None,
                tenant,
                task: None,
                request_id: None,
                up: Pipe::default(),
                down: Pipe::default(),
                ready: Ready::ALL,
                inner_eof: false,
                outer_eof: false,
                outer_shut: false,
                inner_shut: false,
                bytes_in: 0,
                bytes_out: 0,
                deadline: Some(Instant::now() + CONNECT_TIMEOUT),
                counted: false,
                logged: false,
            };
            let key = self.tunnels.insert(tunnel);
            let t = self.tunnels.get_mut(key).expect("just inserted");
            if self
                .poll
                .registry()
                .register(t.inner.source(), Source::Tunnel(key, End::Inner).token(), Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                self.tunnels.remove(key);
                continue;
            }
            if let Some(s) = self.sbs.get_mut(sb) {
                s.tunnels.insert(key);
            }
            // The head is usually there already.
            self.on_tunnel_event(key, End::Inner, true, false);
        }
        // More may be waiting: after everyone else's turn.
        self.egress_accept_again.push_back((sb, via));
    }

    pub(super) fn on_tunnel_event(&mut self, key: Key, end: End, readable: bool, writable: bool) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        // An event that is neither (an error, a hang-up) is worth trying both ways: the calls will say.
        let (readable, writable) = if readable || writable { (readable, writable) } else { (true, true) };
        match end {
            End::Inner => {
                t.ready.inner_read |= readable;
                t.ready.inner_write |= writable;
            }
            End::Outer => {
                t.ready.outer_read |= readable;
                t.ready.outer_write |= writable;
            }
        }
        match t.phase {
            Phase::Head if end == End::Inner && readable => self.read_head(key),
            Phase::Connecting if end == End::Outer => self.finish_connect(key),
            Phase::Open => self.pump(key),
            Phase::Closing if readable || writable => {
                // Discard what the sandbox still sends until it closes, a turn's budget at most: one that keeps
                // sending past it is not waited for.
                let mut buf = [0u8; 4096];
                let mut budget = TUNNEL_BUDGET;
                loop {
                    match t.inner.read(&mut buf) {
                        Ok(0) => return self.close_tunnel(key, false),
                        Ok(n) if n >= budget => return self.close_tunnel(key, false),
                        Ok(n) => budget -= n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(_) => return self.close_tunnel(key, false),
                    }
                }
            }
            _ => {}
        }
    }

    fn read_head(&mut self, key: Key) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        let mut buf = [0u8; 2048];
        let parsed = loop {
            match t.inner.read(&mut buf) {
                Ok(0) => return self.close_tunnel(key, false),
                Ok(n) => {
                    t.head.extend_from_slice(&buf[..n]);
                    match parse_connect_head(&t.head) {
                        Ok(None) => continue,
                        other => break other,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close_tunnel(key, false),
            }
        };
        match parsed {
            Ok(Some(head)) => self.decide(key, head),
            Ok(None) => {}
            Err(why) => self.refuse(key, Refusal::BadRequest(why)),
        }
    }

    /// The allow-list, the limits, then the address: in that order, so that a name not on the list is never
    /// looked up.
    fn decide(&mut self, key: Key, head: ConnectHead) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        t.host = head.host.clone();
        t.port = head.port;
        // Bytes sent after the head wait in `head` until the tunnel is open.
        t.head = t.head.split_off(head.len);
        let sb = t.sb;
        let Some(s) = self.sbs.get(sb) else { return self.close_tunnel(key, false) };
        if s.killed.is_some() {
            return self.close_tunnel(key, false);
        }
        // The invocation it is for: the one the runtime named if it is in flight here, else the oldest here.
        // Tenant code could name another of its own invocations; never another tenant's.
        let inv_id = head.invocation.filter(|id| s.in_flight.contains(id)).or_else(|| s.in_flight.iter().min().copied());
        let open_here = s.egress_open;
        let Some(inv_id) = inv_id else { return self.refuse(key, Refusal::NoInvocation) };
        let Some(inv) = self.invocations.get(&inv_id) else { return self.refuse(key, Refusal::NoInvocation) };
        let (task, request_id, conns) = (inv.task.clone(), inv.request_id.clone(), inv.egress_conns);
        if let Some(t) = self.tunnels.get_mut(key) {
            t.task = task;
            t.request_id = Some(request_id);
        }
        let Some(dest) = Destination::parse(&head.host) else {
            return self.refuse(key, Refusal::BadRequest("the host is neither a DNS name nor an IP address"));
        };
        let tenant = self.tunnels.get(key).map(|t| t.tenant.clone()).unwrap_or_default();
        if !self.egress_allows(&tenant, &dest, head.port) {
            return self.refuse(key, Refusal::NotAllowed);
        }
        if open_here >= SANDBOX_OPEN_MAX {
            return self.refuse(key, Refusal::SandboxLimit);
        }
        let max = self.config.egress.max_conns;
        if conns >= max {
            return self.refuse(key, Refusal::InvocationLimit(max));
        }
        if let Some(inv) = self.invocations.get_mut(&inv_id) {
            inv.egress_conns += 1;
        }
        if let Some(s) = self.sbs.get_mut(sb) {
            s.egress_open += 1;
        }
        let Some(t) = self.tunnels.get_mut(key) else { return };
        t.counted = true;
        match dest {
            Destination::Ip(ip) => self.connect_to(key, Ok(vec![ip])),
            Destination::Name(name) => match self.config.egress.resolve.get(&name) {
                Some(ip) => self.connect_to(key, Ok(vec![*ip])),
                None => {
                    t.phase = Phase::Resolving;
                    if self.resolver.send(ResolveJob { tunnel: key, name }).is_err() {
                        self.connect_to(key, Err("the resolver is gone".into()));
                    }
                }
            },
        }
    }

    pub(super) fn collect_resolved(&mut self) {
        while let Ok(done) = self.resolved.try_recv() {
            // A tunnel closed meanwhile (its sandbox died) is a stale key: the slab refuses it.
            if self.tunnels.get(done.tunnel).is_some_and(|t| t.phase == Phase::Resolving) {
                self.connect_to(done.tunnel, done.result);
            }
        }
    }

    /// Check the addresses a name has (or the literal's), then connect to the first one allowed: the address
    /// checked is the address connected to.
    fn connect_to(&mut self, key: Key, addresses: Result<Vec<IpAddr>, String>) {
        let addresses = match addresses {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => return self.refuse(key, Refusal::Resolve("no address".into())),
            Err(e) => return self.refuse(key, Refusal::Resolve(e)),
        };
        let private = &self.config.egress.allow_private;
        let Some(ip) = addresses.iter().copied().find(|ip| egress_policy::check_address(*ip, private).is_none()) else {
            let address = addresses[0];
            let why = egress_policy::check_address(address, private).unwrap_or("refused");
            if let Some(t) = self.tunnels.get_mut(key) {
                t.address = Some(SocketAddr::new(address, t.port));
            }
            return self.refuse(key, Refusal::Private { address, why });
        };
        let Some(t) = self.tunnels.get_mut(key) else { return };
        let addr = SocketAddr::new(ip, t.port);
        t.address = Some(addr);
        let mut outer = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.refuse(key, Refusal::Connect(e)),
        };
        if let Err(e) =
            self.poll.registry().register(&mut outer, Source::Tunnel(key, End::Outer).token(), Interest::READABLE | Interest::WRITABLE)
        {
            return self.refuse(key, Refusal::Connect(e));
        }
        t.outer = Some(outer);
        t.phase = Phase::Connecting;
        t.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        // A nearby destination (loopback, the same host) is often connected already: no turn wasted.
        self.finish_connect(key);
    }

    fn finish_connect(&mut self, key: Key) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        let Some(outer) = t.outer.as_ref() else { return };
        match outer.take_error() {
            Ok(Some(e)) | Err(e) => return self.refuse(key, Refusal::Connect(e)),
            Ok(None) => {}
        }
        match outer.peer_addr() {
            Ok(_) => {}
            // Still connecting: a spurious wake-up.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.refuse(key, Refusal::Connect(e)),
        }
        let _ = outer.set_nodelay(true);
        t.inner.tune();
        t.phase = Phase::Open;
        t.deadline = None;
        t.ready = Ready::ALL;
        // The answer goes ahead of the destination's bytes; it is not counted as theirs.
        let early = std::mem::take(&mut t.head);
        if let Err(e) = t.down.push(ESTABLISHED).and_then(|()| t.up.push(&early)) {
            return self.refuse(key, Refusal::Connect(e));
        }
        self.metrics.egress("allowed");
        self.pump(key);
    }

    /// Move bytes both ways until both sides would block, a buffer is full and its reader blocked, or the
    /// budget is spent (then again next turn).
    pub(super) fn pump(&mut self, key: Key) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        let Some(outer) = t.outer.as_mut() else { return };
        let mut budget = TUNNEL_BUDGET;
        let mut failed = false;
        loop {
            let mut moved = false;
            // Sandbox -> destination.
            if t.ready.inner_read && !t.inner_eof && t.up.has_space() {
                match t.up.fill(&t.inner) {
                    Ok(Filled::Eof) => t.inner_eof = true,
                    Ok(Filled::Bytes(n)) => {
                        t.bytes_out += n as u64;
                        budget = budget.saturating_sub(n);
                        moved = true;
                    }
                    Ok(Filled::SocketEmpty) => t.ready.inner_read = false,
                    Ok(Filled::PipeFull) => {}
                    Err(_) => failed = true,
                }
            }
            if t.ready.outer_write && !t.up.is_empty() {
                match t.up.drain_into(outer) {
                    Ok(0) => failed = true,
                    Ok(_) => moved = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => t.ready.outer_write = false,
                    Err(_) => failed = true,
                }
            }
            if t.inner_eof && t.up.is_empty() && !t.outer_shut {
                let _ = outer.shutdown(Shutdown::Write);
                t.outer_shut = true;
            }
            // Destination -> sandbox.
            if t.ready.outer_read && !t.outer_eof && t.down.has_space() {
                match t.down.fill(outer) {
                    Ok(Filled::Eof) => t.outer_eof = true,
                    Ok(Filled::Bytes(n)) => {
                        t.bytes_in += n as u64;
                        budget = budget.saturating_sub(n);
                        moved = true;
                    }
                    Ok(Filled::SocketEmpty) => t.ready.outer_read = false,
                    Ok(Filled::PipeFull) => {}
                    Err(_) => failed = true,
                }
            }
            if t.ready.inner_write && !t.down.is_empty() {
                match t.down.drain_into(&t.inner) {
                    Ok(0) => failed = true,
                    Ok(_) => moved = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => t.ready.inner_write = false,
                    Err(_) => failed = true,
                }
            }
            if t.outer_eof && t.down.is_empty() && !t.inner_shut {
                let _ = t.inner.shutdown(Shutdown::Write);
                t.inner_shut = true;
            }
            if failed || (t.inner_shut && t.outer_shut) {
                return self.close_tunnel(key, false);
            }
            if !moved {
                return;
            }
            if budget == 0 {
                self.tunnel_again.push_back(key);
                return;
            }
        }
    }

    /// Answer the sandbox with the refusal, log it, count it, and let the connection close.
    fn refuse(&mut self, key: Key, why: Refusal) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        let (status, code, reason, allowed) = why.parts();
        let host = if t.host.is_empty() { "?".to_string() } else { t.host.clone() };
        let message = why.message(&host, t.port, &t.tenant);
        let phrase = match status {
            400 => "Bad Request",
            403 => "Forbidden",
            429 => "Too Many Requests",
            504 => "Gateway Timeout",
            _ => "Bad Gateway",
        };
        let answer = format!(
            "HTTP/1.1 {status} {phrase}\r\nX-Taskcell-Egress-Code: {code}\r\nX-Taskcell-Egress-Reason: {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
            message.len()
        );
        // One write into an empty socket buffer: a refusal is far smaller than it.
        let _ = t.inner.write(answer.as_bytes());
        let _ = t.inner.shutdown(Shutdown::Write);
        if let Some(mut outer) = t.outer.take() {
            let _ = self.poll.registry().deregister(&mut outer);
        }
        t.phase = Phase::Closing;
        t.deadline = Some(Instant::now() + REFUSAL_LINGER);
        self.metrics.egress(reason);
        self.log_tunnel(key, allowed, Some(reason), &message);
        self.uncount(key);
    }

    fn uncount(&mut self, key: Key) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        if std::mem::take(&mut t.counted) {
            let sb = t.sb;
            if let Some(s) = self.sbs.get_mut(sb) {
                s.egress_open = s.egress_open.saturating_sub(1);
            }
        }
    }

    /// The tunnel's one log event, on the tenant's stream.
    fn log_tunnel(&mut self, key: Key, allowed: bool, reason: Option<&str>, message: &str) {
        let Some(t) = self.tunnels.get_mut(key) else { return };
        if std::mem::replace(&mut t.logged, true) {
            return;
        }
        let egress = serde_json::json!({
            "host": t.host,
            "port": t.port,
            "address": t.address.map(|a| a.ip().to_string()),
            "allowed": allowed,
            "reason": reason,
            "bytes_in": t.bytes_in,
            "bytes_out": t.bytes_out,
        });
        self.metrics.egress_bytes(t.bytes_in, t.bytes_out);
        let line = logs::event_line_with(
            &t.tenant,
            t.task.as_deref(),
            t.request_id.as_deref(),
            if allowed && reason.is_none() { "info" } else { "warn" },
            message,
            Some(("egress", egress)),
        );
        let tenant = t.tenant.clone();
        self.publish_line(&tenant, &line);
    }

    /// Close a tunnel now. `sandbox_ended`: closed because its sandbox was killed or died (the log says so).
    pub(super) fn close_tunnel(&mut self, key: Key, sandbox_ended: bool) {
        if let Some(t) = self.tunnels.get(key) {
            let why = if sandbox_ended { " (its sandbox ended)" } else { "" };
            if t.phase == Phase::Open {
                let message = format!("egress to {}:{} closed: {} bytes in, {} bytes out{why}", t.host, t.port, t.bytes_in, t.bytes_out);
                self.log_tunnel(key, true, sandbox_ended.then_some("sandbox_ended"), &message);
            } else if matches!(t.phase, Phase::Resolving | Phase::Connecting) {
                let message = format!("egress to {}:{} abandoned before it was connected{why}", t.host, t.port);
                self.metrics.egress("abandoned");
                self.log_tunnel(key, true, Some("abandoned"), &message);
            }
        }
        self.uncount(key);
        let Some(mut t) = self.tunnels.remove(key) else { return };
        let registry = self.poll.registry();
        let _ = registry.deregister(t.inner.source());
        if let Some(mut outer) = t.outer.take() {
            let _ = registry.deregister(&mut outer);
        }
        if let Some(s) = self.sbs.get_mut(t.sb) {
            s.tunnels.remove(&key);
        }
    }

    /// A sandbox killed or dead: no connection survives it, and none can be made to it any more.
    pub(super) fn close_sandbox_egress(&mut self, sb: Key) {
        let Some(s) = self.sbs.get_mut(sb) else { return };
        if let Some(mut listeners) = s.egress.take() {
            listeners.deregister(self.poll.registry());
        }
        let keys: Vec<Key> = s.tunnels.drain().collect();
        for key in keys {
            self.close_tunnel(key, true);
        }
    }

    /// Every turn: tunnels that used their budget, listeners with more waiting.
    pub(super) fn egress_turn(&mut self) {
        for key in std::mem::take(&mut self.tunnel_again) {
            self.pump(key);
        }
        for (sb, via) in std::mem::take(&mut self.egress_accept_again) {
            self.on_egress_accept(sb, via);
        }
    }

    pub(super) fn egress_more_to_do(&self) -> bool {
        !self.tunnel_again.is_empty() || !self.egress_accept_again.is_empty()
    }

    /// Housekeeping: heads, lookups and connects that took too long, refusals left lingering; the buffers of
    /// tunnels with nothing in flight freed.
    pub(super) fn expire_tunnels(&mut self, now: Instant) {
        for (_, t) in self.tunnels.iter_mut() {
            t.up.release_if_empty();
            t.down.release_if_empty();
        }
        let expired: Vec<(Key, Phase)> =
            self.tunnels.iter().filter(|(_, t)| t.deadline.is_some_and(|d| now >= d)).map(|(k, t)| (k, t.phase)).collect();
        for (key, phase) in expired {
            match phase {
                Phase::Resolving | Phase::Connecting => self.refuse(key, Refusal::Timeout),
                Phase::Head => self.refuse(key, Refusal::BadRequest("the CONNECT request did not arrive within 10 s")),
                Phase::Open | Phase::Closing => self.close_tunnel(key, false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pair of connected loopback sockets: (the std end the test drives, a non-blocking mio end).
    fn pair() -> (std::net::TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, TcpStream::from_std(b))
    }

    /// Small socket buffers, so that a few megabytes fill them and the pipe behind them whatever the
    /// machine's TCP autotuning.
    fn small_buffers(fd: RawFd, opt: libc::c_int) {
        assert!(set_buffer(fd, opt, 32 << 10));
    }

    /// Bytes spliced through a pipe arrive whole and in order while the reader stops and starts (it reads
    /// only while the pipe is full, so the socket behind and the pipe fill up every time), and the writer's
    /// EOF is seen once everything has passed.
    #[test]
    fn a_pipe_moves_every_byte_in_order_through_back_pressure() {
        let (mut writer, from) = pair();
        let (mut reader, to) = pair();
        small_buffers(to.as_raw_fd(), libc::SO_SNDBUF);
        small_buffers(reader.as_raw_fd(), libc::SO_RCVBUF);
        let total = 8 << 20;
        let sent: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        let data = sent.clone();
        let w = std::thread::spawn(move || {
            for chunk in data.chunks(1000) {
                writer.write_all(chunk).unwrap();
            }
        });
        let (mut pipe, mut got, mut eof, mut fills) = (Pipe::default(), Vec::new(), false, 0);
        reader.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; 64 << 10];
        while !(eof && pipe.is_empty()) {
            assert!(start.elapsed() < Duration::from_secs(60), "stuck after {} bytes", got.len());
            if !eof && pipe.has_space() {
                match pipe.fill(&from).unwrap() {
                    Filled::Eof => eof = true,
                    Filled::Bytes(_) | Filled::SocketEmpty | Filled::PipeFull => {}
                }
            }
            if !pipe.is_empty() {
                match pipe.drain_into(&to) {
                    Ok(n) => assert!(n > 0),
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                }
            }
            // The reader reads only while the pipe is full (or the writer is done).
            if !pipe.has_space() || eof {
                fills += usize::from(!pipe.has_space());
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
        w.join().unwrap();
        drop(to);
        reader.set_nonblocking(false).unwrap();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes arrived changed or out of order");
        assert!(fills > 0, "the test never filled the pipe");
        pipe.release_if_empty();
        assert!(pipe.ends.is_none(), "an empty pipe is closed");
    }

    #[test]
    fn connect_heads_parse() {
        let h = parse_connect_head(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\nX-Taskcell-Invocation: 7\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h, ConnectHead { host: "api.test".into(), port: 443, invocation: Some(7), len: 79 });
        let h = parse_connect_head(b"CONNECT [::ffff:127.0.0.1]:80 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.host.as_str(), h.port, h.invocation), ("[::ffff:127.0.0.1]", 80, None));
        assert_eq!(parse_connect_head(b"CONNECT a.test:1 HTTP/1.1\r\n"), Ok(None));
        assert!(parse_connect_head(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_connect_head(b"CONNECT a.test HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_connect_head(b"CONNECT a.test:0 HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_connect_head(b"CONNECT a.test:99999 HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_connect_head(&vec![b'x'; HEAD_LIMIT + 1]).is_err());
    }
}
