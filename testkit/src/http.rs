//! An HTTP/1.1 client over a Unix stream socket (or a TCP connection, for a node's `--listen-tcp`): one
//! connection, keep-alive, one request at a time.
//!
//! Responses are framed by `Content-Length` ([`Client::read_response`]); a chunked stream (the log stream) is
//! read head first and then chunk by chunk ([`Client::read_stream_head`], [`Client::read_chunk`]). Raw bytes can
//! be sent for malformed input. Every read times out ([`HANG`] unless set otherwise) and a timeout is the error
//! kind `TimedOut`, so that a daemon that hangs fails a test or a bench row instead of blocking it forever; the
//! timeouts only detect hangs, nothing asserts how fast anything is.
//!
//! The parsing is in pure functions over bytes ([`parse_head`], [`parse_chunk`]), unit-tested on canned input.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any single read or write may block before it is called a hang.
pub const HANG: Duration = Duration::from_secs(60);

/// Longest response head read before the response is called malformed.
pub const MAX_HEAD: usize = 64 << 10;

/// Status, headers and body of one response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of this name, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    /// The body as JSON, if it is.
    pub fn try_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A short description for notes: status and the start of the body.
    pub fn describe(&self) -> String {
        let body: String = String::from_utf8_lossy(&self.body).chars().take(160).collect();
        format!("HTTP {} {}", self.status, body.trim())
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.trim().eq_ignore_ascii_case("close"))
    }

    /// The error kind of a taskcell error body (`{"error": {"kind": ..}}`); panics if it is none.
    pub fn kind(&self) -> String {
        self.json()["error"]["kind"].as_str().unwrap_or_else(|| panic!("not an error body: {}", self.text())).to_string()
    }

    /// Assert the status and error kind, and the error body's shape: a message, and an `X-Request-Id`.
    pub fn assert_error(&self, status: u16, kind: &str) -> Value {
        assert_eq!(
            (self.status, self.text().contains(kind)),
            (status, true),
            "expected {status} {kind}, got {} {}",
            self.status,
            self.text()
        );
        let v = self.json();
        assert_eq!(v["error"]["kind"], kind, "body: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {v}");
        assert!(self.header("x-request-id").is_some(), "error response without X-Request-Id");
        v
    }
}

/// A response head: its length in bytes (up to and with the blank line), status and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parse a response head at the start of `buf`: `None` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            let headers = resp.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
            Ok(Some(Head { len, status, headers }))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(invalid(format!("response head over {MAX_HEAD} bytes"))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(invalid(format!("bad response head: {e}: {:?}", String::from_utf8_lossy(buf)))),
    }
}

/// The body length a head announces; an error for a response without `Content-Length` or with a bad one.
pub fn content_length(status: u16, headers: &[(String, String)]) -> io::Result<usize> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>().map_err(|_| invalid("bad Content-Length".into())))
        .transpose()?
        .ok_or_else(|| invalid(format!("response {status} without Content-Length")))
}

/// One chunk of a chunked body at the start of `buf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// More bytes are needed.
    Partial,
    /// A chunk of data, and how many bytes of `buf` it took (size line and CRLFs included).
    Data(Vec<u8>, usize),
    /// The last (zero-size) chunk, and its length in `buf`.
    End(usize),
}

/// Parse one chunk (`SIZE[;ext]\r\nDATA\r\n`) at the start of `buf`. Panics if the data is not followed by
/// CRLF: the daemon broke the framing, which no caller should take for a quiet stream.
pub fn parse_chunk(buf: &[u8]) -> io::Result<Chunk> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(Chunk::Partial) };
    let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
    let data_end = line_end + 2 + size;
    if buf.len() < data_end + 2 {
        return Ok(Chunk::Partial);
    }
    assert_eq!(&buf[data_end..data_end + 2], b"\r\n", "chunk not followed by CRLF");
    Ok(if size == 0 { Chunk::End(data_end + 2) } else { Chunk::Data(buf[line_end + 2..data_end].to_vec(), data_end + 2) })
}

/// The bytes of one request, with `Host`, and with `Content-Length` for any body (and for every POST and PUT)
/// unless the caller gives its own framing headers.
pub fn encode(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: taskcell\r\n").into_bytes();
    let framed = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding"));
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if !framed && (!body.is_empty() || matches!(method, "POST" | "PUT")) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A client's connection, over either transport.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(buf),
            Conn::Tcp(s) => s.write_all(buf),
        }
    }
}

/// One connection.
pub struct Client {
    stream: Conn,
    buf: Vec<u8>,
    /// Bytes received on this connection so far.
    received: u64,
}

impl Client {
    /// Connect, or panic saying to what.
    pub fn connect(path: &Path) -> Client {
        Client::try_connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()))
    }

    /// Connect, with reads and writes that time out after [`HANG`].
    pub fn try_connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(HANG))?;
        stream.set_write_timeout(Some(HANG))?;
        Ok(Client { stream: Conn::Unix(stream), buf: Vec::new(), received: 0 })
    }

    /// Connect over TCP, with reads and writes that time out after [`HANG`]; panics saying to what.
    pub fn connect_tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(HANG)).expect("set the read timeout");
        stream.set_write_timeout(Some(HANG)).expect("set the write timeout");
        Client { stream: Conn::Tcp(stream), buf: Vec::new(), received: 0 }
    }

    /// A client on a stream connected elsewhere (its reads time out after [`HANG`]).
    pub fn from_stream(stream: UnixStream) -> Client {
        stream.set_read_timeout(Some(HANG)).expect("set the read timeout");
        Client { stream: Conn::Unix(stream), buf: Vec::new(), received: 0 }
    }

    /// How long a read may block from now on.
    pub fn set_timeout(&mut self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("set the read timeout");
    }

    /// The Unix stream of a client made with `connect` or `from_stream` (panics for a TCP one).
    pub fn stream(&self) -> &UnixStream {
        match &self.stream {
            Conn::Unix(s) => s,
            Conn::Tcp(_) => panic!("a TCP client has no Unix stream"),
        }
    }

    /// Send a request and read its response; panics on a hang or a broken connection.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.try_request(method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        self.send(method, path, headers, body)?;
        self.read_response()
    }

    /// Write one request (see [`encode`]).
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        self.stream.write_all(&encode(method, path, headers, body))
    }

    /// Write these bytes as they are: a prebuilt request, or malformed input.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Read once into the buffer: the byte count, 0 at the end of the stream, `TimedOut` after the timeout.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            return match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.received += n as u64;
                    Ok(n)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time: the daemon hangs"))
                }
                Err(e) => Err(e),
            };
        }
    }

    fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        loop {
            if let Some(head) = parse_head(&self.buf)? {
                self.buf.drain(..head.len);
                return Ok((head.status, head.headers));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
            }
        }
    }

    /// Read one whole response, framed by `Content-Length` (a chunked one is read with `read_stream_head`).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let (status, headers) = self.read_head()?;
        let len = content_length(status, &headers)?;
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in a response body"));
            }
        }
        let body = self.buf.drain(..len).collect();
        Ok(Response { status, headers, body })
    }

    /// Read the head of a streamed (chunked) response.
    pub fn read_stream_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        self.read_head()
    }

    /// The next chunk of a chunked response; `None` at its end. A timeout leaves what arrived in the buffer, so
    /// the call can be repeated.
    pub fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            match parse_chunk(&self.buf)? {
                Chunk::Data(data, used) => {
                    self.buf.drain(..used);
                    return Ok(Some(data));
                }
                Chunk::End(used) => {
                    self.buf.drain(..used);
                    return Ok(None);
                }
                Chunk::Partial => {
                    if self.fill()? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in a chunked body"));
                    }
                }
            }
        }
    }

    /// Wait (up to `guard`) for the server to close the connection; true if it did, false if it stayed open.
    /// Whatever arrives meanwhile is appended to the buffer (see `pending`).
    pub fn closed_within(&mut self, guard: Duration) -> bool {
        self.set_timeout(guard);
        let start = Instant::now();
        loop {
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
            if start.elapsed() > guard {
                return false;
            }
        }
    }

    /// Bytes received but not consumed yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes received on this connection so far, consumed or not: whether anything of an answer came.
    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nX-Request-Id: 7\r\n\r\n{\"a\": true}";

    #[test]
    fn head_complete_partial_and_bad() {
        let head = parse_head(OK).unwrap().expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(head.len, OK.len() - 11);
        assert_eq!(head.headers[1], ("Content-Length".to_string(), "11".to_string()));
        assert_eq!(content_length(head.status, &head.headers).unwrap(), 11);
        assert_eq!(parse_head(&OK[..20]).unwrap(), None);
        assert_eq!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").unwrap_err().kind(), io::ErrorKind::InvalidData);
        let endless = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(parse_head(&endless).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn content_length_missing_or_bad() {
        let h = |v: &str| vec![("content-length".to_string(), v.to_string())];
        assert_eq!(content_length(200, &h(" 42 ")).unwrap(), 42);
        assert!(content_length(200, &h("-1")).is_err());
        let err = content_length(204, &[("Transfer-Encoding".into(), "chunked".into())]).unwrap_err();
        assert!(err.to_string().contains("204 without Content-Length"), "{err}");
    }

    #[test]
    fn chunks() {
        assert_eq!(parse_chunk(b"").unwrap(), Chunk::Partial);
        assert_eq!(parse_chunk(b"5\r\nhel").unwrap(), Chunk::Partial);
        assert_eq!(parse_chunk(b"5\r\nhello").unwrap(), Chunk::Partial);
        assert_eq!(parse_chunk(b"5\r\nhello\r\n0\r\n").unwrap(), Chunk::Data(b"hello".to_vec(), 10));
        assert_eq!(parse_chunk(b"a;name=x\r\n0123456789\r\n").unwrap(), Chunk::Data(b"0123456789".to_vec(), 22));
        assert_eq!(parse_chunk(b"0\r\n\r\n").unwrap(), Chunk::End(5));
        assert_eq!(parse_chunk(b"zz\r\n").unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    #[should_panic(expected = "chunk not followed by CRLF")]
    fn chunk_without_crlf() {
        let _ = parse_chunk(b"2\r\nabXY");
    }

    #[test]
    fn encode_frames_bodies() {
        assert_eq!(encode("GET", "/v1/health", &[], b""), b"GET /v1/health HTTP/1.1\r\nHost: taskcell\r\n\r\n");
        assert_eq!(encode("POST", "/r", &[("A", "b")], b""), b"POST /r HTTP/1.1\r\nHost: taskcell\r\nA: b\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            encode("PUT", "/t", &[("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
            b"PUT /t HTTP/1.1\r\nHost: taskcell\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn response_helpers() {
        let r = Response {
            status: 404,
            headers: vec![("X-Request-Id".into(), "1".into()), ("Connection".into(), "close".into())],
            body: br#"{"error":{"kind":"not_found","message":"no such task"}}"#.to_vec(),
        };
        assert_eq!(r.header("x-request-id"), Some("1"));
        assert!(r.closes());
        assert_eq!(r.kind(), "not_found");
        r.assert_error(404, "not_found");
        assert!(r.describe().starts_with("HTTP 404 {\"error\""));
        assert_eq!(Response { status: 200, headers: vec![], body: b"nope".to_vec() }.try_json(), None);
    }

    /// The client over a socket pair, against canned bytes: a response, then a chunked stream split anywhere.
    #[test]
    fn client_reads_canned_bytes() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut c = Client::from_stream(ours);
        c.set_timeout(Duration::from_secs(5));
        let server = std::thread::spawn(move || {
            let mut req = [0u8; 256];
            let n = theirs.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /x HTTP/1.1\r\n"));
            theirs.write_all(OK).unwrap();
            let stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
            for piece in stream.chunks(5) {
                theirs.write_all(piece).unwrap();
                theirs.flush().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let r = c.request("GET", "/x", &[], b"");
        assert_eq!((r.status, r.json()["a"].as_bool()), (200, Some(true)));
        assert_eq!(c.read_stream_head().unwrap().0, 200);
        assert_eq!(c.read_chunk().unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(c.read_chunk().unwrap().as_deref(), Some(&b"defg"[..]));
        assert_eq!(c.read_chunk().unwrap(), None);
        server.join().unwrap();
        assert_eq!(c.received(), (OK.len() + 69) as u64);
        assert!(c.closed_within(Duration::from_secs(5)));
        assert!(c.pending().is_empty());
    }

    #[test]
    fn a_silent_server_is_a_timeout() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut c = Client::from_stream(ours);
        c.set_timeout(Duration::from_millis(50));
        assert_eq!(c.read_response().unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(!c.closed_within(Duration::from_millis(50)));
    }
}
