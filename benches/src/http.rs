//! A minimal HTTP/1.1 client over a Unix stream socket: one request at a time on a keep-alive
//! connection, responses framed by `Content-Length`. Enough to time requests without a client library's
//! own overhead in the figures; it is not a general client (no chunked bodies, no pipelining).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Conn {
    path: PathBuf,
    stream: Option<UnixStream>,
    buf: Vec<u8>,
    /// Times the connection was found closed by the server and opened again.
    pub reconnects: u64,
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A short description for error notes: status and the start of the body.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(160).collect();
        format!("HTTP {} {}", self.status, body.trim())
    }
}

pub fn build(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: taskcell\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

const TIMEOUT: Duration = Duration::from_secs(60);

fn connect(path: &Path) -> io::Result<UnixStream> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    pub fn open(path: &Path) -> io::Result<Conn> {
        Ok(Conn {
            path: path.to_path_buf(),
            stream: Some(connect(path)?),
            buf: Vec::with_capacity(64 * 1024),
            reconnects: 0,
        })
    }

    pub fn get(&mut self, target: &str) -> io::Result<Resp> {
        self.request(&build("GET", target, b""))
    }

    /// Sends one prebuilt request and reads its response. A keep-alive connection that the server
    /// closed while idle (write fails, or EOF before any response byte) is opened again once.
    pub fn request(&mut self, req: &[u8]) -> io::Result<Resp> {
        match self.try_request(req) {
            Err(e) if self.buf.is_empty() && is_stale(&e) => {
                self.stream = None;
                self.reconnects += 1;
                self.try_request(req)
            }
            r => r,
        }
    }

    fn try_request(&mut self, req: &[u8]) -> io::Result<Resp> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.path)?);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().expect("just connected");
        if let Err(e) = stream.write_all(req) {
            self.stream = None;
            return Err(e);
        }
        let r = self.read_response();
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn fill(&mut self) -> io::Result<usize> {
        let stream = self.stream.as_mut().expect("connected");
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn read_response(&mut self) -> io::Result<Resp> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("response headers over 64 KiB"));
            }
            if self.fill()? == 0 {
                let e = if self.buf.is_empty() {
                    io::ErrorKind::UnexpectedEof
                } else {
                    io::ErrorKind::InvalidData
                };
                return Err(io::Error::new(
                    e,
                    "connection closed before a full response header",
                ));
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| bad("non-UTF-8 response header"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut len: Option<usize> = None;
        let mut close = false;
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.parse().map_err(|_| bad("bad Content-Length"))?);
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked response (unsupported by the bench client)"));
            }
        }
        let start = head_end + 4;
        let body = match len {
            Some(len) => {
                while self.buf.len() < start + len {
                    if self.fill()? == 0 {
                        return Err(bad("connection closed inside the response body"));
                    }
                }
                let body = self.buf[start..start + len].to_vec();
                self.buf.drain(..start + len);
                body
            }
            None => {
                // No length: the body runs to the end of the connection.
                while self.fill()? != 0 {}
                let body = self.buf[start..].to_vec();
                self.buf.clear();
                close = true;
                body
            }
        };
        if close {
            self.stream = None;
        }
        Ok(Resp { status, body })
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}
