//! A small HTTP/1.1 client over the daemon's Unix socket or, with `--url`, over TCP with a bearer token: one
//! request a connection (`Connection: close`), the
//! response head parsed with `httparse`, then the body read whole (`Content-Length`, chunked, or to the end of
//! the stream) or, for the log stream, chunk by chunk as the daemon sends it.
//!
//! It knows nothing of the API: which paths, bodies and statuses mean what is the commands' business (`super`).

use std::fmt;
use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Longest response head accepted (the daemon's are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
/// Largest body read whole: well above the daemon's result and log limits (1 MiB and 64 KiB), so that only a
/// broken peer reaches it.
const MAX_BODY: u64 = 64 << 20;
/// Longest line of chunked framing (a chunk size with its extensions, or a trailer).
const MAX_CHUNK_LINE: u64 = 4096;

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Socket(PathBuf),
    /// `--url http://HOST:PORT`: HOST:PORT as given.
    Tcp(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Address::Socket(path) => write!(f, "{}", path.display()),
            Address::Tcp(host) => write!(f, "http://{host}"),
        }
    }
}

impl Address {
    /// `http://HOST[:PORT][/]` (port 80 when none); anything else is refused with the reason.
    pub fn from_url(url: &str) -> Result<Address, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(if url.starts_with("https://") {
                "https is not spoken here: use http:// to a node, or a TLS proxy in front of it".to_string()
            } else {
                "a URL is http://HOST:PORT".to_string()
            });
        };
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.is_empty() || host.contains(['/', '?', '#', '@']) || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("a URL is http://HOST:PORT, without a path".to_string());
        }
        let has_port = match host.rsplit_once(':') {
            Some((h, port)) => {
                !h.ends_with(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']'))
            }
            None => false,
        };
        Ok(Address::Tcp(if has_port { host.to_string() } else { format!("{host}:80") }))
    }
}

/// The daemon to talk to, and the token to show it (TCP only: the socket's mode is its guard).
#[derive(Clone, Debug)]
pub struct Daemon {
    pub address: Address,
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot reach the daemon at {daemon}")]
    Connect { daemon: Address, source: io::Error },
    #[error("talking to the daemon at {daemon}")]
    Io { daemon: Address, source: io::Error },
    #[error("the daemon at {daemon} closed the connection before the response was complete")]
    Truncated { daemon: Address },
    #[error("the daemon at {daemon} sent a malformed response: {what}")]
    Malformed { daemon: Address, what: String },
}

/// A connection to the daemon, over either transport.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// A request to send: the target is sent exactly as given (the daemon checks names, not the client).
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// A response whose head has been read; its body is still on the connection.
pub struct Response {
    pub status: u16,
    body: Body,
}

/// The body of a whole response.
pub struct Whole {
    pub status: u16,
    pub body: Vec<u8>,
}

struct Body {
    reader: BufReader<io::Chain<Cursor<Vec<u8>>, Conn>>,
    framing: Framing,
    daemon: Address,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Framing {
    Length(u64),
    Chunked,
    ToEnd,
    /// The body has been read to its end.
    Done,
}

/// Connect, send the request, and read the response head.
pub fn send(daemon: &Daemon, req: &Request) -> Result<Response, HttpError> {
    let address = &daemon.address;
    let connect_err = |source| HttpError::Connect { daemon: address.clone(), source };
    let (mut stream, host) = match address {
        Address::Socket(path) => (Conn::Unix(UnixStream::connect(path).map_err(connect_err)?), "localhost"),
        Address::Tcp(host) => (Conn::Tcp(TcpStream::connect(host.as_str()).map_err(connect_err)?), host.as_str()),
    };
    let io_err = |source| HttpError::Io { daemon: address.clone(), source };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: taskcell/{}\r\nConnection: close\r\n",
        req.method,
        req.target,
        env!("CARGO_PKG_VERSION")
    );
    if let (Address::Tcp(_), Some(token)) = (address, &daemon.token) {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(ct) = req.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if !req.body.is_empty() || matches!(req.method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let sent = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(req.body));
    // A daemon that refuses a request early (413 as soon as the head announces too large a body) answers and
    // closes before it has read everything: its answer says more than our broken pipe, so read it first.
    match (read_head(stream, address), sent) {
        (Ok(r), _) => Ok(r),
        (Err(_), Err(e)) => Err(io_err(e)),
        (Err(e), Ok(())) => Err(e),
    }
}

fn read_head(mut stream: Conn, daemon: &Address) -> Result<Response, HttpError> {
    let malformed = |what: String| HttpError::Malformed { daemon: daemon.clone(), what };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(HttpError::Io { daemon: daemon.clone(), source }),
        };
        if n == 0 {
            return Err(HttpError::Truncated { daemon: daemon.clone() });
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.ok_or_else(|| malformed("no status code".into()))?;
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).trim().to_string()))
                    .collect();
                let framing = framing(status, &headers).map_err(malformed)?;
                let rest = buf.split_off(len);
                let reader = BufReader::new(Cursor::new(rest).chain(stream));
                return Ok(Response { status, body: Body { reader, framing, daemon: daemon.clone() } });
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(malformed(format!("a head over {MAX_HEAD} bytes"))),
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(malformed(e.to_string())),
        }
    }
}

fn framing(status: u16, headers: &[(String, String)]) -> Result<Framing, String> {
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Framing::Length(0));
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if let Some(te) = header("transfer-encoding") {
        if te.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked")) {
            return Ok(Framing::Chunked);
        }
        return Err(format!("Transfer-Encoding {te:?}"));
    }
    match header("content-length") {
        Some(v) => v.parse().map(Framing::Length).map_err(|_| format!("Content-Length {v:?}")),
        None => Ok(Framing::ToEnd),
    }
}

impl Response {
    /// Read the rest of the body.
    pub fn whole(mut self) -> Result<Whole, HttpError> {
        let mut body = Vec::new();
        while let Some(piece) = self.next_piece()? {
            if body.len() as u64 + piece.len() as u64 > MAX_BODY {
                return Err(self.body.malformed(format!("a body over {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&piece);
        }
        Ok(Whole { status: self.status, body })
    }

    /// The next piece of the body as it arrives (for a chunked body, one chunk); None at its end.
    pub fn next_piece(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        self.body.next_piece()
    }
}

impl Body {
    fn next_piece(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        match self.framing {
            Framing::Done | Framing::Length(0) => {
                self.framing = Framing::Done;
                Ok(None)
            }
            Framing::Length(n) => {
                let piece = self.read_exact(n.min(64 * 1024))?;
                self.framing = Framing::Length(n - piece.len() as u64);
                Ok(Some(piece))
            }
            Framing::ToEnd => {
                let mut piece = vec![0u8; 64 * 1024];
                let n = loop {
                    match self.reader.read(&mut piece) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(self.io(e)),
                    }
                };
                if n == 0 {
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                piece.truncate(n);
                Ok(Some(piece))
            }
            Framing::Chunked => {
                let line = self.read_line()?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16).map_err(|_| self.malformed(format!("chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line that ends the body.
                    while !self.read_line()?.is_empty() {}
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                if size > MAX_BODY {
                    return Err(self.malformed(format!("a chunk of {size} bytes")));
                }
                let piece = self.read_exact(size)?;
                if !self.read_line()?.is_empty() {
                    return Err(self.malformed("no CRLF after a chunk".into()));
                }
                Ok(Some(piece))
            }
        }
    }

    fn read_exact(&mut self, n: u64) -> Result<Vec<u8>, HttpError> {
        let mut piece = vec![0u8; n as usize];
        self.reader.read_exact(&mut piece).map_err(|e| self.io(e))?;
        Ok(piece)
    }

    /// One line of chunked framing, without its CRLF.
    fn read_line(&mut self) -> Result<String, HttpError> {
        let mut line = Vec::new();
        let n = (&mut self.reader).take(MAX_CHUNK_LINE).read_until(b'\n', &mut line).map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(HttpError::Truncated { daemon: self.daemon.clone() });
        }
        if !line.ends_with(b"\n") {
            return Err(self.malformed(format!("a chunk line over {MAX_CHUNK_LINE} bytes")));
        }
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| self.malformed("a chunk line that is not text".into()))
    }

    fn io(&self, e: io::Error) -> HttpError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HttpError::Truncated { daemon: self.daemon.clone() }
        } else {
            HttpError::Io { daemon: self.daemon.clone(), source: e }
        }
    }

    fn malformed(&self, what: String) -> HttpError {
        HttpError::Malformed { daemon: self.daemon.clone(), what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::thread;

    /// A one-shot server on a socket in a temporary directory: reads the request head, writes `answer`.
    fn serve(answer: &'static [u8]) -> (PathBuf, thread::JoinHandle<Vec<u8>>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("taskcell-cli-http-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(answer).unwrap();
            got
        });
        (path, server)
    }

    fn at(path: &Path) -> Daemon {
        Daemon { address: Address::Socket(path.to_path_buf()), token: Some("never-sent".into()) }
    }

    fn get(path: &Path) -> Result<Whole, HttpError> {
        send(&at(path), &Request { method: "GET", target: "/v1/x", content_type: None, body: b"" })?.whole()
    }

    #[test]
    fn content_length_body() {
        let (path, server) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Request-Id: a\r\n\r\nhello");
        let r = get(&path).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let req = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(req.starts_with("GET /v1/x HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Connection: close\r\n") && !req.contains("Content-Length"), "{req}");
        // The socket's mode guards it: a token goes over TCP only.
        assert!(!req.contains("Authorization"), "{req}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn chunked_body_piece_by_piece() {
        let (path, server) =
            serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: t\r\n\r\n");
        let mut r = send(&at(&path), &Request { method: "GET", target: "/v1/logs", content_type: None, body: b"" }).unwrap();
        assert_eq!(r.next_piece().unwrap(), Some(b"abc".to_vec()));
        assert_eq!(r.next_piece().unwrap(), Some(b"de".to_vec()));
        assert_eq!(r.next_piece().unwrap(), None);
        assert_eq!(r.next_piece().unwrap(), None);
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_cut_chunked_stream_is_truncated() {
        let (path, server) = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        let mut r = send(&at(&path), &Request { method: "GET", target: "/v1/logs", content_type: None, body: b"" }).unwrap();
        assert_eq!(r.next_piece().unwrap(), Some(b"abc".to_vec()));
        server.join().unwrap();
        assert!(matches!(r.next_piece(), Err(HttpError::Truncated { .. })));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bodies_without_length_and_no_content() {
        let (path, server) = serve(b"HTTP/1.1 200 OK\r\n\r\nto the end");
        assert_eq!(get(&path).unwrap().body, b"to the end");
        server.join().unwrap();
        let (path2, server) = serve(b"HTTP/1.1 204 No Content\r\nX-Request-Id: a\r\n\r\n");
        assert_eq!(get(&path2).unwrap().status, 204);
        server.join().unwrap();
        let (path3, server) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");
        assert!(matches!(get(&path3), Err(HttpError::Truncated { .. })));
        server.join().unwrap();
        let (path4, server) = serve(b"HTTP/1.1 2x0 OK\r\n\r\n");
        assert!(matches!(get(&path4), Err(HttpError::Malformed { .. })));
        server.join().unwrap();
        for p in [path, path2, path3, path4] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn posts_carry_their_length() {
        let (path, server) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let r = send(&at(&path), &Request { method: "POST", target: "/v1/t", content_type: Some("application/json"), body: b"" })
            .unwrap()
            .whole()
            .unwrap();
        assert_eq!(r.status, 200);
        let req = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(req.contains("Content-Length: 0\r\n") && req.contains("Content-Type: application/json\r\n"), "{req}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn urls_name_a_host_and_port() {
        assert_eq!(Address::from_url("http://127.0.0.1:8080"), Ok(Address::Tcp("127.0.0.1:8080".into())));
        assert_eq!(Address::from_url("http://node-1.example/"), Ok(Address::Tcp("node-1.example:80".into())));
        assert_eq!(Address::from_url("http://[::1]:9"), Ok(Address::Tcp("[::1]:9".into())));
        assert_eq!(Address::from_url("http://[::1]"), Ok(Address::Tcp("[::1]:80".into())));
        for bad in ["https://x:1", "x:1", "http://", "http://x:1/v1", "http://u@x:1", "http://x y:1"] {
            assert!(Address::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_daemon_is_a_connect_error() {
        let path = std::env::temp_dir().join(format!("taskcell-cli-none-{}.sock", std::process::id()));
        assert!(matches!(get(&path), Err(HttpError::Connect { .. })));
    }
}
