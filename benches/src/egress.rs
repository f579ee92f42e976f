//! Egress (group 2): an HTTP GET from a warm task to a server on 127.0.0.1 through the daemon's egress tunnel,
//! against the same GET from a bare Node process on the host; and a 10 MB download the same two ways. Both are
//! timed inside Node around the request alone, on a new connection each time (so the tunnel's CONNECT and the
//! daemon's connect are in the figure), with the same client code: what the rows compare is the path out of
//! the sandbox, not the invocation around it. The server is a thread of the bench.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::http::{build, Conn};
use crate::invoke::first_run;
use crate::lanes::{self, Lane};
use crate::report::{Row, Unit};
use crate::Ctx;

pub const BARE_GET: &str = "bare node: HTTP GET to a local server";
pub const TC_GET: &str = "taskcell task: the same GET through egress";
pub const BARE_10MB: &str = "bare node: 10 MB download from a local server";
pub const TC_10MB: &str = "taskcell task: the same download through egress";

const BIG: usize = 10 << 20;

/// The request, timed in Node (`HOST` is filled in: the name inside the sandbox, the address outside).
const GET_JS: &str = r#"const http = require('http');
const get = (port, path) => new Promise((res, rej) => {
  const t0 = process.hrtime.bigint();
  http.get({ host: HOST, port, path, agent: false }, (r) => {
    let n = 0; r.on('data', (d) => { n += d.length; });
    r.on('end', () => res({ us: Number((process.hrtime.bigint() - t0) / 1000n), n }));
  }).on('error', rej);
});
"#;

/// An HTTP/1.1 server on 127.0.0.1: `/small` is two bytes, anything else 10 MB; one response a connection.
fn server() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let big: Arc<Vec<u8>> = Arc::new(vec![b'x'; BIG]);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let big = big.clone();
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body: &[u8] = if head.starts_with(b"GET /small ") { b"ok" } else { &big };
                let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
                let _ = s.write_all(body);
            });
        }
    });
    Ok(port)
}

/// A Node process on the host running `GET_JS`: one line in (the path), one line out (`{us, n}`).
struct Bare {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Bare {
    fn start(ctx: &Ctx, port: u16) -> Result<Bare, String> {
        let script = format!(
            "{}\nrequire('readline').createInterface({{ input: process.stdin }}).on('line', (path) => get({port}, path).then((r) => process.stdout.write(JSON.stringify(r) + '\\n'), (e) => process.stdout.write(JSON.stringify({{ error: String(e) }}) + '\\n')));",
            GET_JS.replace("HOST", "'127.0.0.1'")
        );
        let mut child = Command::new(&ctx.node)
            .args(["-e", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting node: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Bare { child, stdin, stdout })
    }

    fn get(&mut self, path: &str, want: usize) -> Result<u64, String> {
        writeln!(self.stdin, "{path}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        timed(&serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?, want)
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn timed(v: &Value, want: usize) -> Result<u64, String> {
    if v["n"].as_u64() != Some(want as u64) {
        return Err(format!("wrong answer {v}"));
    }
    v["us"].as_u64().ok_or_else(|| format!("no time in {v}"))
}

fn setup(ctx: &Ctx, port: u16) -> Result<(Daemon, Conn), String> {
    let flags = ["--egress-allow-private", "127.0.0.1/32", "--egress-resolve", "api.test=127.0.0.1"];
    let d = Daemon::start_with(ctx, "egress", ctx.pool_size, &flags)?;
    let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
    d.settle_start();
    first_run(&mut c, "bench-egress")?;
    let list = json!({ "allow": [format!("api.test:{port}")] }).to_string();
    let r = c.request(&build("PUT", "/v1/tenants/bench-egress/egress", list.as_bytes())).map_err(|e| format!("egress list: {e}"))?;
    if r.status != 200 {
        return Err(format!("egress list: {}", r.describe()));
    }
    let task = format!("{}\nmodule.exports = (d) => get(d.port, d.path);", GET_JS.replace("HOST", "'api.test'"));
    let r = c.request(&build("PUT", "/v1/tenants/bench-egress/tasks/get", task.as_bytes())).map_err(|e| format!("deploy: {e}"))?;
    if r.status != 200 && r.status != 201 {
        return Err(format!("deploy: {}", r.describe()));
    }
    Ok((d, c))
}

fn task_get(c: &mut Conn, port: u16, path: &str, want: usize) -> Result<u64, String> {
    let body = json!({"port": port, "path": path}).to_string();
    let r = c.request(&build("POST", "/v1/tenants/bench-egress/tasks/get/run", body.as_bytes())).map_err(|e| e.to_string())?;
    let v = r.try_json().ok_or_else(|| format!("not JSON: {}", r.describe()))?;
    if r.status != 200 {
        return Err(r.describe());
    }
    timed(&v["result"], want)
}

pub fn warm(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let (n_get, n_big) = if ctx.quick { (100, 5) } else { (1000, 40) };
    let r = |name: &str| Row::new(2, name, Unit::Micros);
    let port = match server() {
        Ok(p) => p,
        Err(e) => {
            return [r(BARE_GET), r(TC_GET).vs(BARE_GET), r(BARE_10MB), r(TC_10MB).vs(BARE_10MB)]
                .into_iter()
                .map(|mut row| {
                    row.set_na(format!("local server: {e}"));
                    row
                })
                .collect()
        }
    };
    let mut bare = Bare::start(ctx, port);
    let daemon = setup(ctx, port);
    let (mut d, mut c) = match daemon {
        Ok((d, c)) => (Ok(d), Ok(c)),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    // Two lanes share each side's process and connection: one mutable borrow at a time, through a cell.
    let bare_cell = std::cell::RefCell::new(bare.as_mut().map_err(|e| e.clone()));
    let tc_cell = std::cell::RefCell::new(c.as_mut().map_err(|e| e.clone()));
    let mut lanes: Vec<Lane> = Vec::new();
    for (name, base, path, want, n, warm) in [(BARE_GET, None, "/small", 2, n_get, 20), (BARE_10MB, None, "/big", BIG, n_big, 2)] {
        let row = match base {
            Some(b) => r(name).vs(b),
            None => r(name),
        };
        let cell = &bare_cell;
        lanes.push(Lane::new(
            row,
            n,
            warm,
            Box::new(move || match &mut *cell.borrow_mut() {
                Ok(b) => b.get(path, want),
                Err(e) => Err(e.clone()),
            }),
        ));
    }
    for (name, base, path, want, n, warm) in [(TC_GET, BARE_GET, "/small", 2, n_get, 20), (TC_10MB, BARE_10MB, "/big", BIG, n_big, 2)] {
        let cell = &tc_cell;
        lanes.push(Lane::new(
            r(name).vs(base),
            n,
            warm,
            Box::new(move || match &mut *cell.borrow_mut() {
                Ok(c) => task_get(c, port, path, want),
                Err(e) => Err(e.clone()),
            }),
        ));
    }
    let mut rows = lanes::run(lanes);
    for row in rows.iter_mut().filter(|r| r.name == BARE_10MB || r.name == TC_10MB) {
        if let Some(p50) = row.p50() {
            row.note(format!("{:.0} MB/s at p50", BIG as f64 / p50.max(1) as f64));
        }
    }
    drop((bare_cell, tc_cell));
    drop(c);
    if let Ok(d) = std::mem::replace(&mut d, Err(String::new())) {
        d.stop(warnings);
    }
    drop(bare);
    rows
}
