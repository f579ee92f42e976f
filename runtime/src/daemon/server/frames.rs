//! A sandbox's socket: frames written to it, frames read from it within a per-turn budget, and each frame
//! checked against the protocol by the daemon itself (tenant code can write to the socket past the
//! bootstrap): a frame that breaks it kills the sandbox.

use super::*;

/// A sandbox that leaves a frame half-sent this long is broken (or hostile): a protocol error.
pub(super) const PARTIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames waiting to be written to one sandbox (Runs with their sources and data) beyond which new
/// invocations for it are refused with 503: a sandbox that stops reading must not make the daemon buffer
/// every request sent its way until their deadlines.
pub(super) const SANDBOX_OUTBOX_LIMIT: usize = 64 << 20;

/// A log message from a sandbox is cut to this many bytes (the spec's per-invocation cap): tenant code can
/// bypass the bootstrap and send a frame of 8 MiB.
pub const LOG_MESSAGE_CAP: usize = 64 << 10;

/// Bytes read from one sandbox's socket per turn of the loop, so that one flooding its logs cannot hold the
/// loop while other tenants' requests and answers wait.
pub(super) const SANDBOX_READ_BUDGET: usize = 64 << 10;

/// A log message as text, cut to `LOG_MESSAGE_CAP` bytes (on a character boundary) with a note of the rest.
pub(super) fn log_text(message: &[u8]) -> String {
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

impl Server {
    /// Write the sandbox's frames at the end of this turn (once, however often asked).
    pub(super) fn schedule_flush(&mut self, key: Key) {
        if let Some(s) = self.sbs.get_mut(key) {
            if !s.flush_scheduled {
                s.flush_scheduled = true;
                self.flush_queue.push(key);
            }
        }
    }

    pub(super) fn flush_sandbox(&mut self, key: Key) {
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
        // Woken for writability only while frames wait (a sandbox that reads slowly).
        let token = Source::Sandbox(key, SandboxFd::Socket).token();
        set_write_interest(self.poll.registry(), &mut s.socket, token, &mut s.write_interest, !s.outbox.is_empty());
    }

    pub(super) fn on_sandbox_socket(&mut self, key: Key, readable: bool, writable: bool) {
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
            let buf = &mut self.read_buf[..];
            let mut budget = SANDBOX_READ_BUDGET;
            // A short read emptied the socket: later frames are a new edge of its readiness (as in
            // `read_conn`), so no read is spent on the WouldBlock. The sandbox's end is told by its pidfd.
            let mut drained;
            loop {
                if budget == 0 {
                    // More may be waiting (a log flood): come back after the other ready connections and
                    // sandboxes have had their turn, rather than serve one sandbox until it pauses.
                    self.read_again.push_back(key);
                    break;
                }
                match s.socket.read(buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        drained = n < buf.len();
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
                if protocol_error.is_some() || drained {
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
    pub(super) fn on_frame(&mut self, key: Key, frame: Frame) {
        let expects = |s: &Server, id: u32| s.invocations.get(&id).filter(|i| i.sb == key).map(|i| i.expect);
        match frame {
            Frame::Result { id, json } if matches!(expects(self, id), Some(Expect::Result | Expect::Http)) => {
                if json.len() > crate::RESULT_LIMIT {
                    let msg = format!("the result is {} bytes, over the limit of {} bytes", json.len(), crate::RESULT_LIMIT);
                    self.complete(id, Err((500, "task_error", msg)));
                } else {
                    self.complete(id, Ok(json));
                }
            }
            Frame::HttpResponse { id, status, headers, body } if expects(self, id) == Some(Expect::Http) => {
                // Names, values and status were checked by the decoder; the body is bounded like a result.
                if body.len() > crate::RESULT_LIMIT {
                    let msg = format!("the response body is {} bytes, over the limit of {} bytes", body.len(), crate::RESULT_LIMIT);
                    self.complete(id, Err((500, "task_error", msg)));
                } else {
                    self.complete_http(id, status, headers, body);
                }
            }
            Frame::Compiled { id, cache } if expects(self, id) == Some(Expect::Compiled) => {
                // A code cache is V8's compiled form of the source: bounded by the source's size, so that a
                // 10-byte task cannot park megabytes in the daemon's cache budget (a larger one is dropped;
                // the deploy still succeeds).
                let source_len = self.invocations.get(&id).and_then(|i| i.compile.as_ref()).map_or(0, |(s, _)| s.len());
                let cache = if cache.len() > code_cache::max_cache_len(source_len) {
                    self.metrics.code_cache_refused();
                    Bytes::new()
                } else {
                    cache
                };
                self.complete(id, Ok(cache))
            }
            // bad_request answers a Run only (a webtask (ctx, req, res) on /run, input a model cannot take).
            Frame::Error { id, kind, message }
                if expects(self, id).is_some_and(|e| kind != crate::ErrorKind::BadRequest || e != Expect::Compiled) =>
            {
                if kind == crate::ErrorKind::CompileError {
                    // The sandbox did not keep code that failed to compile: send it again next time.
                    let code_key = self.invocations.get(&id).and_then(|i| i.key.clone());
                    if let (Some(s), Some(k)) = (self.sbs.get_mut(key), code_key) {
                        s.compiled.remove(&k);
                    }
                }
                let message: String = message.chars().take(16 << 10).collect();
                let tenant = self.sbs.get(key).and_then(|s| s.tenant.clone()).unwrap_or_default();
                let message = self.secrets.mask(&tenant, message);
                let status = match kind {
                    crate::ErrorKind::CompileError | crate::ErrorKind::BadRequest => 400,
                    crate::ErrorKind::TaskError => 500,
                };
                self.complete(id, Err((status, kind.as_str(), message)));
            }
            Frame::Log { id, level, message } => {
                let tenant = self.sbs.get(key).and_then(|s| s.tenant.clone()).unwrap_or_default();
                // Masked here, not only in the bootstrap: tenant code can write its own frames.
                let text = self.secrets.mask(&tenant, log_text(&message));
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
                    Frame::Result { .. } | Frame::Compiled { .. } | Frame::Error { .. } | Frame::HttpResponse { .. } => {
                        match expects(self, other.id()) {
                            None => "an answer for an invocation it does not hold",
                            Some(Expect::Compiled) => "a Result, an HttpResponse or a bad_request for a deploy's check",
                            Some(Expect::Result) => "a Compiled or an HttpResponse for a run",
                            Some(Expect::Http) => "a Compiled for a run on the HTTP endpoint",
                        }
                    }
                    _ => "a frame only the daemon sends",
                };
                eprintln!("taskcell: sandbox sent {what} ({} frame, id {}); killing it", other.frame_type(), other.id());
                self.metrics.protocol_error();
                self.kill_sandbox(key, KillReason::Protocol);
            }
        }
    }

    pub(super) fn on_sandbox_output(&mut self, key: Key) {
        let Some(s) = self.sbs.get_mut(key) else { return };
        drain_output(s);
    }
}
