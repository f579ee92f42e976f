//! HTTP/1.1 framing for the front socket: requests parsed with httparse, responses written whole.
//!
//! Owns the limits (header and body sizes) in one place and turns every malformed input into an [`HttpError`]
//! with the status and kind the API promises. Knows nothing of routes or tenants.

use bytes::Bytes;

/// Limits of one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line and headers, bytes (431 beyond).
    pub max_head: usize,
    /// Body, bytes (413 beyond).
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 16 << 10, max_body: 1 << 20 }
    }
}

pub const MAX_HEADERS: usize = 64;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Option<String>,
    pub body: Bytes,
    /// False for `Connection: close` (or HTTP/1.0 without keep-alive).
    pub keep_alive: bool,
    /// The client's `X-Request-Id`, when it is a sane token.
    pub request_id: Option<String>,
    /// Every header as sent (names as spelt, values lossily UTF-8), in order: the HTTP endpoint hands
    /// them to the task.
    pub headers: Vec<(String, String)>,
}

/// Why a request could not be read. The connection is answered and then closed: after a framing error the
/// next byte's place in the stream is unknown.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl HttpError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> HttpError {
        HttpError { status, kind, message: message.into() }
    }
}

pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole request, and how many bytes of the buffer it took.
    Complete(Request, usize),
}

/// Parse one request from the front of `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head {
                return Err(HttpError::new(431, "bad_request", format!("request headers exceed {} bytes", limits.max_head)));
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "bad_request", format!("more than {MAX_HEADERS} request headers")));
        }
        Err(e) => return Err(HttpError::new(400, "bad_request", format!("malformed HTTP request: {e}"))),
    };
    if head_len > limits.max_head {
        return Err(HttpError::new(431, "bad_request", format!("request headers exceed {} bytes", limits.max_head)));
    }
    let version = req.version.unwrap_or(1);
    let mut keep_alive = version >= 1;
    let mut content_length: Option<usize> = None;
    let mut request_id = None;
    let mut all = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name;
        all.push((name.to_string(), String::from_utf8_lossy(h.value).into_owned()));
        if name.eq_ignore_ascii_case("content-length") {
            // RFC 9110: 1*DIGIT. `usize::from_str` alone would also take `+5`, and `trim` Unicode spaces.
            let text = std::str::from_utf8(h.value).unwrap_or("").trim_matches([' ', '\t']);
            let invalid = || HttpError::new(400, "bad_request", format!("invalid Content-Length {text:?}"));
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let n: usize = text.parse().map_err(|_| invalid())?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::new(400, "bad_request", "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::new(411, "bad_request", "chunked request bodies are not accepted; send Content-Length"));
        } else if name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            let ok = !h.value.is_empty() && h.value.len() <= 128 && h.value.iter().all(|b| b.is_ascii_graphic());
            if ok {
                request_id = Some(String::from_utf8_lossy(h.value).into_owned());
            }
        }
    }
    let length = content_length.unwrap_or(0);
    if length > limits.max_body {
        return Err(HttpError::new(
            413,
            "payload_too_large",
            format!("request body of {length} bytes exceeds the limit of {} bytes", limits.max_body),
        ));
    }
    if buf.len() < head_len + length {
        return Ok(Parsed::Partial);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path,
        query,
        body: Bytes::copy_from_slice(&buf[head_len..head_len + length]),
        keep_alive,
        request_id,
        headers: all,
    };
    Ok(Parsed::Complete(request, head_len + length))
}

/// What the TCP listener's token check reads of a request, as soon as its head is complete (before its body).
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Option<String>,
    /// The `Authorization` header's value, if there is exactly one (two are no token).
    pub authorization: Option<String>,
}

/// The head of the request at the front of `buf`, once it is all there; None while it is not, and for a
/// malformed one (`parse` then says what is wrong with it).
pub fn head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(buf) else { return None };
    let mut values = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("authorization"));
    let authorization = match (values.next(), values.next()) {
        (Some(h), None) => std::str::from_utf8(h.value).ok().map(str::to_owned),
        _ => None,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Some(Head { method: req.method.unwrap_or("").to_string(), path, query, authorization })
}

/// Reason phrases for the statuses the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        415 => "Unsupported Media Type",
        418 => "I'm a teapot",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        501 => "Not Implemented",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// What every response carries besides its own headers: the request's id (`X-Request-Id`) and the name of
/// the node that answered (`X-Taskcell-Node`, `--node-name`).
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub request_id: &'a str,
    pub node: &'a str,
}

impl Stamp<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "X-Request-Id: {}\r\nX-Taskcell-Node: {}\r\n", self.request_id, self.node);
    }
}

/// A response, written whole with Content-Length.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    pub fn json(status: u16, body: impl Into<Bytes>) -> Response {
        Response { status, content_type: "application/json", headers: Vec::new(), body: body.into() }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The API's error body: `{"error": {"kind", "message"}, "logs": [...]}`.
    pub fn error(status: u16, kind: &str, message: &str, logs: Option<&[u8]>) -> Response {
        let mut body =
            format!("{{\"error\":{{\"kind\":{},\"message\":{}}}", serde_json::Value::from(kind), serde_json::Value::from(message))
                .into_bytes();
        if let Some(logs) = logs {
            body.extend_from_slice(b",\"logs\":");
            body.extend_from_slice(logs);
        }
        body.push(b'}');
        Response::json(status, body)
    }

    /// Serialise head and body into `out`.
    pub fn write(&self, out: &mut Vec<u8>, stamp: Stamp, keep_alive: bool) {
        use std::io::Write;
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if self.status != 204 {
            let _ = write!(out, "Content-Type: {}\r\nContent-Length: {}\r\n", self.content_type, self.body.len());
        } else {
            out.extend_from_slice(b"Content-Length: 0\r\n");
        }
        stamp.write(out);
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n\r\n" } else { b"Connection: close\r\n\r\n" });
        if self.status != 204 {
            out.extend_from_slice(&self.body);
        }
    }
}

/// Headers a task's response may not set: hop-by-hop ones (RFC 9110 7.6.1) and the framing, id and node
/// headers the daemon writes itself.
pub fn daemon_owned_header(name: &str) -> bool {
    const OWNED: &[&str] =
        &["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length", "x-request-id", "x-taskcell-node"];
    OWNED.iter().any(|h| name.eq_ignore_ascii_case(h)) || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// A response a task made on the HTTP endpoint: its status, its headers (names and values already checked by
/// the frame decoder; hop-by-hop ones, Content-Length and X-Request-Id are dropped here) and its body, with
/// the daemon's own Content-Length and X-Request-Id. 204 and 304 carry no body.
pub fn write_task_response(out: &mut Vec<u8>, status: u16, headers: &[(String, String)], body: &[u8], stamp: Stamp, keep_alive: bool) {
    use std::io::Write;
    let no_body = status == 204 || status == 304;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n", reason(status), if no_body { 0 } else { body.len() });
    stamp.write(out);
    for (name, value) in headers.iter().filter(|(n, _)| !daemon_owned_header(n)) {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n\r\n" } else { b"Connection: close\r\n\r\n" });
    if !no_body {
        out.extend_from_slice(body);
    }
}

/// The head of the chunked log stream.
pub fn stream_head(out: &mut Vec<u8>, stamp: Stamp) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n",
    );
    stamp.write(out);
    out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
}

/// One chunk of the log stream.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> (Request, usize) {
        match parse(raw, &Limits::default()) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            Ok(Parsed::Partial) => panic!("partial"),
            Err(e) => panic!("error {e:?}"),
        }
    }

    #[test]
    fn parses_a_request_with_body_and_query() {
        let (r, n) = complete(b"POST /v1/logs?tenant=a HTTP/1.1\r\nContent-Length: 2\r\nX-Request-Id: abc\r\n\r\n{}rest");
        assert_eq!((r.method.as_str(), r.path.as_str(), r.query.as_deref()), ("POST", "/v1/logs", Some("tenant=a")));
        assert_eq!(&r.body[..], b"{}");
        assert_eq!(r.request_id.as_deref(), Some("abc"));
        assert!(r.keep_alive);
        assert_eq!(n, 75);
    }

    #[test]
    fn partial_until_the_body_is_there() {
        assert!(matches!(parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", &Limits::default()), Ok(Parsed::Partial)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x", &Limits::default()), Ok(Parsed::Partial)));
    }

    #[test]
    fn errors_have_the_promised_statuses() {
        let status = |raw: &[u8]| parse(raw, &Limits::default()).err().map(|e| e.status);
        assert_eq!(status(b"GARBAGE\x00\x01 / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"), Some(413));
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Some(400));
        // 1*DIGIT only (found by fuzzing): a sign or a Unicode space would let a proxy frame it differently.
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}"), Some(400));
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: \u{a0}2\r\n\r\n{}".as_bytes()), Some(400));
        assert_eq!(status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(411));
        let mut huge = b"GET / HTTP/1.1\r\nX-A: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 20_000));
        assert_eq!(status(&huge), Some(431));
    }

    #[test]
    fn the_head_is_read_before_the_body() {
        let raw = b"PUT /v1/tenants/a/tasks/t?x=1 HTTP/1.1\r\nauthorization: Bearer abc\r\nContent-Length: 5\r\n\r\nab";
        assert!(matches!(parse(raw, &Limits::default()), Ok(Parsed::Partial)));
        let h = head(raw).expect("the head is complete");
        assert_eq!((h.method.as_str(), h.path.as_str(), h.query.as_deref()), ("PUT", "/v1/tenants/a/tasks/t", Some("x=1")));
        assert_eq!(h.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(head(b"GET / HTTP/1.1\r\nAuthorization: a\r\n"), None);
        let twice = head(b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n").unwrap();
        assert_eq!(twice.authorization, None);
    }

    #[test]
    fn connection_close_is_honoured() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn a_task_response_keeps_its_headers_but_the_daemon_owned_ones() {
        let headers = [
            ("Location", "/x"),
            ("Connection", "close"),
            ("content-length", "99"),
            ("Proxy-Authenticate", "x"),
            ("X-Request-Id", "mine"),
            ("X-Taskcell-Node", "forged"),
            ("Set-Cookie", "a=1"),
        ];
        let headers: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let mut out = Vec::new();
        let stamp = Stamp { request_id: "rid", node: "n1" };
        write_task_response(&mut out, 302, &headers, b"moved", stamp, true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "HTTP/1.1 302 Found\r\nContent-Length: 5\r\nX-Request-Id: rid\r\nX-Taskcell-Node: n1\r\nLocation: /x\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\r\nmoved");
        let mut out = Vec::new();
        write_task_response(&mut out, 204, &[], b"ignored", stamp, false);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("Content-Length: 0\r\nX-Request-Id: rid\r\nX-Taskcell-Node: n1\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn error_body_shape() {
        let r = Response::error(404, "not_found", "no \"x\"", Some(b"[]"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["kind"], "not_found");
        assert_eq!(v["error"]["message"], "no \"x\"");
        assert!(v["logs"].is_array());
    }
}
