//! Client connections: accepting (bounded per turn, refused past `--max-connections`), reading (within a
//! budget), the per-connection HTTP state machine (`ConnState`), answering and writing. Parsing is
//! iterative and bounded: at most `PIPELINE_BUDGET` requests of a connection per pass, none while its unsent
//! answers pass `OUTPUT_HIGH_WATER`; an answer never parses the next request from inside itself, it
//! schedules the connection for the loop's next pass. Both listeners' connections go through the same code
//! and limits; a TCP connection's request is first checked against its token (`daemon::auth`) as soon as its
//! head is in, before its body is read. Knows no endpoint: whole requests go to `handle`.

use super::*;

/// A connection still sending its request may take this long between bytes of it.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An idle keep-alive connection is closed after this long.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A log subscriber that falls this far behind loses events.
pub(super) const SUBSCRIBER_BACKLOG: usize = 1 << 20;

/// How long a closing connection may keep sending before it is cut off.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// Pipelined requests parsed from one connection per turn of the loop: one client that pipelines thousands
/// of requests answered at once (404s, health) gets its share of the loop, then the others get theirs.
pub(super) const PIPELINE_BUDGET: usize = 32;

/// Connections accepted per turn of the loop.
pub(super) const ACCEPT_BUDGET: usize = 64;

/// Bytes read from one connection per turn of the loop (a client that streams garbage at a subscriber
/// connection, whose input is discarded, must not hold the loop either).
pub(super) const CONN_READ_BUDGET: usize = 256 << 10;

/// A connection whose unsent answers pass this many bytes is not parsed further until they drain: a client
/// that pipelines and never reads is pushed back (its input, then its socket, fill up), not buffered for.
pub(super) const OUTPUT_HIGH_WATER: usize = 256 << 10;

pub(super) enum ConnState {
    /// Reading (or between) requests.
    Idle,
    /// A request is being answered; further pipelined requests wait in the buffer, in order.
    Busy,
    /// A `/v1/logs` subscriber.
    Streaming { tenant: Option<String>, dropped: u64 },
    /// Write what is buffered, then close.
    Closing,
}

pub(super) struct Conn {
    pub(super) stream: Stream,
    /// What the request being read may reach, once its head has been checked (see `authorize`).
    pub(super) access: Option<Access>,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) state: ConnState,
    pub(super) keep_alive: bool,
    pub(super) deadline: Instant,
    pub(super) read_closed: bool,
    /// In the loop's `advance_queue` (to be parsed further or closed on its next pass).
    pub(super) scheduled: bool,
    /// Reading stopped with more perhaps waiting (the input buffer was full or the turn's read budget spent):
    /// the socket's edge-triggered readiness will not repeat, so the loop reads again itself.
    pub(super) read_pending: bool,
    /// Registered for writability too: only while `output` holds what the socket would not take (see
    /// `flush`). Registered for it always, the loop would be woken each time the client reads an answer.
    pub(super) write_interest: bool,
    /// The kernel said the client has shut down its side: read on to the end of the stream, not only to a
    /// short read (see `read_conn`).
    pub(super) peer_closed: bool,
}

impl Server {
    pub(super) fn accept(&mut self, transport: Transport) {
        // Bounded per turn: a connect flood gets its share of the loop, then the others theirs.
        for _ in 0..ACCEPT_BUDGET {
            let listener = match transport {
                Transport::Unix => &self.listener,
                Transport::Tcp => &self.tcp_listener,
            };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok(stream) => {
                    if self.conns.len() >= self.config.max_connections {
                        self.refuse_connection(stream);
                        continue;
                    }
                    let conn = Conn {
                        stream,
                        access: None,
                        input: Vec::new(),
                        output: Vec::new(),
                        state: ConnState::Idle,
                        keep_alive: true,
                        deadline: Instant::now() + IDLE_TIMEOUT,
                        read_closed: false,
                        scheduled: false,
                        read_pending: false,
                        write_interest: false,
                        peer_closed: false,
                    };
                    let key = self.conns.insert(conn);
                    let conn = self.conns.get_mut(key).expect("just inserted");
                    if let Err(e) = self.poll.registry().register(&mut conn.stream, Source::Conn(key).token(), Interest::READABLE) {
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
    pub(super) fn refuse_connection(&mut self, mut stream: Stream) {
        self.metrics.connection_refused();
        let request_id = self.new_request_id();
        let msg = format!("too many connections (the limit is {}); retry later", self.config.max_connections);
        let mut out = Vec::new();
        let stamp = http::Stamp { request_id: &request_id, node: &self.config.node_name };
        Response::error(503, "overloaded", &msg, None).header("Retry-After", "1").write(&mut out, stamp, false);
        let _ = stream.write(&out);
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    pub(super) fn on_conn_event(&mut self, key: Key, readable: bool, writable: bool) {
        if writable {
            self.flush(key);
        }
        if readable {
            self.read_conn(key);
        }
        self.advance(key);
    }

    /// Put a connection on the loop's list for its next pass (once, however often asked).
    pub(super) fn schedule(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.scheduled {
                conn.scheduled = true;
                self.advance_queue.push_back(key);
            }
        }
    }

    pub(super) fn read_conn(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let limit = self.config.max_body + (64 << 10);
        let buf = &mut self.read_buf[..];
        let mut budget = CONN_READ_BUDGET;
        loop {
            // A busy connection's pipelined input is bounded: stop reading and let the socket push back.
            // Parsing frees room, and the loop reads again then (`read_pending`).
            if conn.input.len() > limit || budget == 0 {
                conn.read_pending = true;
                if budget == 0 {
                    self.schedule(key);
                }
                return;
            }
            let asked = budget.min(READ_CHUNK);
            match conn.stream.read(&mut buf[..asked]) {
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
                    // A short read emptied the socket's queue: bytes arriving later are a new edge of its
                    // readiness, so the read that would only say WouldBlock is spared (one syscall of about
                    // four a request; libuv and nginx stop here too). Not once the client has shut down its
                    // side: that was reported with this edge, so the end of the stream is read now.
                    if n < asked && !conn.peer_closed {
                        return;
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
    pub(super) fn advance(&mut self, key: Key) {
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
            if conn.access.is_none() {
                match authorize(conn, self.verifier.as_ref()) {
                    Ok(access) => conn.access = access,
                    Err(refusal) => {
                        // Its body is never read: the lingering close discards it.
                        let mut r = Response::error(refusal.status(), refusal.kind(), refusal.message(), None);
                        if refusal.status() == 401 {
                            r = r.header("WWW-Authenticate", "Bearer");
                        }
                        self.fail_conn_with(key, r);
                        return;
                    }
                }
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
                    // The head was checked above once it was complete, and the request is complete now.
                    let Some(access) = conn.access.take() else {
                        return self.fail_conn(key, 401, "unauthorized", "the request's head could not be checked");
                    };
                    conn.state = ConnState::Busy;
                    conn.keep_alive = request.keep_alive && self.draining.is_none();
                    self.handle(key, request, access);
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
    pub(super) fn fail_conn(&mut self, key: Key, status: u16, kind: &str, message: &str) {
        self.fail_conn_with(key, Response::error(status, kind, message, None));
    }

    /// Answer with this response and close, without reading any more of the stream.
    pub(super) fn fail_conn_with(&mut self, key: Key, response: Response) {
        let request_id = self.new_request_id();
        self.metrics.http_request(response.status);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.input.clear();
            let stamp = http::Stamp { request_id: &request_id, node: &self.config.node_name };
            response.write(&mut conn.output, stamp, false);
            conn.state = ConnState::Closing;
            conn.keep_alive = false;
            conn.deadline = Instant::now() + LINGER;
        }
        self.flush(key);
        self.schedule(key);
    }

    pub(super) fn respond(&mut self, key: Key, request_id: &str, keep_alive: bool, response: Response) {
        self.respond_with(key, response.status, keep_alive, |out, node, keep| response.write(out, http::Stamp { request_id, node }, keep));
    }

    /// Answer with a response that `write` puts into the connection's output (told this node's name and
    /// whether to keep the connection alive).
    pub(super) fn respond_with(&mut self, key: Key, status: u16, keep_alive: bool, write: impl FnOnce(&mut Vec<u8>, &str, bool)) {
        self.metrics.http_request(status);
        let Some(conn) = self.conns.get_mut(key) else { return };
        let keep = keep_alive && conn.keep_alive && self.draining.is_none();
        write(&mut conn.output, &self.config.node_name, keep);
        conn.state = if keep { ConnState::Idle } else { ConnState::Closing };
        conn.deadline = Instant::now() + if keep { IDLE_TIMEOUT } else { LINGER };
        self.flush(key);
        // The next pipelined request (or the close) on the loop's next pass, never from here.
        self.schedule(key);
    }

    pub(super) fn flush(&mut self, key: Key) {
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
        // Woken for writability only while something waits (a WouldBlock above, or the dropped line just added).
        let want = !conn.output.is_empty();
        set_write_interest(self.poll.registry(), &mut conn.stream, Source::Conn(key).token(), &mut conn.write_interest, want);
        // Parsing waited for the answers to drain (back-pressure), or a closing connection is now empty.
        let resume = before > OUTPUT_HIGH_WATER && conn.output.len() <= OUTPUT_HIGH_WATER && !conn.input.is_empty();
        let closing_done = matches!(conn.state, ConnState::Closing) && conn.output.is_empty() && written > 0;
        if resume || closing_done {
            self.schedule(key);
        }
    }

    pub(super) fn close(&mut self, key: Key) {
        if let Some(mut conn) = self.conns.remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        if self.subscribers.remove(&key) {
            if let Some(hub) = self.hub.as_mut() {
                hub.unfollow(key);
            }
        }
    }

    pub(super) fn new_request_id(&mut self) -> String {
        self.request_seq += 1;
        format!("{}-{:x}", self.boot_id, self.request_seq)
    }
}

/// What the request at the front of a connection's input may reach: everything on the Unix socket (its file
/// mode decided who could connect); on TCP, what its token allows, decided from its head alone. `Ok(None)`
/// while the head is incomplete (or malformed: the parser answers that).
fn authorize(conn: &Conn, verifier: Option<&auth::Verifier>) -> Result<Option<Access>, auth::Refusal> {
    match conn.stream.transport() {
        Transport::Unix => Ok(Some(Access::Operator)),
        Transport::Tcp => {
            let Some(head) = http::head(&conn.input) else { return Ok(None) };
            // serve never binds TCP without a key; a verifier missing here refuses everything all the same.
            let verifier = verifier.ok_or_else(|| auth::Refusal::Unauthorized("this node has no token key".into()))?;
            verifier.authorize(&head.method, &head.path, head.query.as_deref(), head.authorization.as_deref()).map(Some)
        }
    }
}
