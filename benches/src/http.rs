//! The bench's connection to a server under test: testkit's HTTP/1.1 client (the one the tests use), one request
//! at a time on a keep-alive connection, responses framed by `Content-Length`, kept free of a client library's
//! own overhead in the figures. What it adds is reconnecting: a keep-alive connection the server closed while it
//! was idle is opened again once, and counted.

use std::io;
use std::path::{Path, PathBuf};

use testkit::http::{encode, Client};

pub use testkit::http::Response as Resp;

/// The bytes of one request with a JSON body (an empty one for GET), prepared before it is timed.
pub fn build(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    encode(method, target, &[("Content-Type", "application/json")], body)
}

pub struct Conn {
    path: PathBuf,
    client: Option<Client>,
    /// Times the connection was found closed by the server and opened again.
    pub reconnects: u64,
}

impl Conn {
    pub fn open(path: &Path) -> io::Result<Conn> {
        Ok(Conn { path: path.to_path_buf(), client: Some(Client::try_connect(path)?), reconnects: 0 })
    }

    pub fn get(&mut self, target: &str) -> io::Result<Resp> {
        self.request(&build("GET", target, b""))
    }

    /// Sends one prebuilt request and reads its response. A keep-alive connection that the server
    /// closed while idle (write fails, or EOF before any response byte) is opened again once.
    pub fn request(&mut self, req: &[u8]) -> io::Result<Resp> {
        match self.try_request(req) {
            Err((e, true)) if is_stale(&e) => {
                self.reconnects += 1;
                self.try_request(req).map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// The response, or the error and whether nothing of a response had arrived.
    fn try_request(&mut self, req: &[u8]) -> Result<Resp, (io::Error, bool)> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self.client.insert(Client::try_connect(&self.path).map_err(|e| (e, false))?),
        };
        let before = client.received();
        let r = client.send_raw(req).and_then(|()| client.read_response());
        let nothing = client.received() == before;
        match r {
            Ok(resp) => {
                if resp.closes() {
                    self.client = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.client = None;
                Err((e, nothing))
            }
        }
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
}
