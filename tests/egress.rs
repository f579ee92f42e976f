//! Egress (issue 13), from the outside: tenant code in real sandboxes reaching servers this test starts,
//! through the daemon, by names fixed with `--egress-resolve` or looked up by the daemon in a DNS server of the
//! test's. Daemons, servers and that DNS server all live in a network namespace the test binary makes, holding
//! only `lo` (`common::netns`): no packet can leave the machine whatever the daemon does, not even to the
//! metadata address; every destination is 127.0.0.x, or an address the daemon must refuse before connecting,
//! which the test servers' accept counts prove.
//!
//! What is proven: the allow-list API (checked, durable, back as given), unchanged Node APIs (fetch, http,
//! https with a test CA, net, tls, explicit agents) working through the tunnel, TLS end to end (the server
//! sees the ClientHello, the daemon adds nothing), refusals fast and typed (`EGRESS_DENIED`, a message naming
//! host, port and reason) for every spelling of a private address, DNS rebinding defeated (one lookup, the
//! address checked is the address connected to), the per-invocation limit, log events and metrics, no
//! connection outliving its sandbox, a responsive daemon under a connection loop, and flat descriptors and
//! memory over thousands of connections.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Daemon};
use serde_json::{json, Value};
use testkit::procfs::{fd_count, rss_kib};

// ---------- servers on the host's loopback, owned by the test ----------

/// A TCP echo server on 127.0.0.1: counts connections accepted and open.
struct Echo {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

fn echo() -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let port = l.local_addr().unwrap().port();
    let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, o) = (accepted.clone(), open.clone());
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                drop(s);
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Echo { port, accepted, open }
}

/// A plain HTTP/1.1 server: answers `hello <method> <path>` and closes; counts requests.
fn http_server() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP server");
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let c = c.clone();
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&head);
                let mut words = text.split(' ');
                let body = format!("hello {} {}", words.next().unwrap_or(""), words.next().unwrap_or(""));
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes());
            });
        }
    });
    (port, count)
}

/// Keeps the first bytes of every connection, then closes it: what a destination receives.
fn sniffer() -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the sniffer");
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while got.len() < 64 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            s2.lock().unwrap().push(got);
        }
    });
    (port, seen)
}

/// A test CA's certificate for `api.test` (self-signed, made with openssl) and an HTTPS server using it: the
/// host's Node, a child of this test that exits when its stdin closes (so even a panic leaves nothing).
struct Https {
    port: u16,
    cert: String,
    child: Child,
    dir: PathBuf,
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn https_server() -> Https {
    let dir = std::env::temp_dir().join(format!("taskcell-egress-tls-{}-{}", std::process::id(), common::unique("c")));
    fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=api.test",
        ])
        .args(["-addext", "subjectAltName=DNS:api.test,DNS:sub.api.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt package openssl; .ci/run installs it) makes the test CA");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    let script = "const https = require('https'), fs = require('fs');
        const s = https.createServer({ key: fs.readFileSync(process.argv[1]), cert: fs.readFileSync(process.argv[2]) },
          (q, r) => { r.setHeader('connection', 'close'); r.end('secure ' + q.method + ' ' + q.url); });
        s.listen(0, '127.0.0.1', () => process.stdout.write(s.address().port + '\\n'));
        process.stdin.on('end', () => process.exit(0)); process.stdin.resume();";
    let mut child = Command::new("/usr/bin/node")
        .arg("-e")
        .arg(script)
        .arg(&key)
        .arg(&cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env_remove("NODE_EXTRA_CA_CERTS")
        .spawn()
        .expect("start the HTTPS test server");
    let mut line = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while stdout.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let port: u16 = String::from_utf8_lossy(&line).trim().parse().expect("the HTTPS server's port");
    Https { port, cert: fs::read_to_string(&cert).unwrap(), child, dir }
}

// ---------- daemons ----------

const RESOLVE: &[&str] = &[
    "--egress-resolve",
    "api.test=127.0.0.1",
    "--egress-resolve",
    "sub.api.test=127.0.0.1",
    "--egress-resolve",
    "private.test=10.9.9.9",
    "--egress-resolve",
    "meta.test=169.254.169.254",
];

/// The test servers are on 127.0.0.1, so the operator allows that one address; nothing else private.
fn daemon() -> &'static Daemon {
    static D: OnceLock<Daemon> = OnceLock::new();
    let mut flags = vec!["--egress-allow-private", "127.0.0.1/32", "--egress-max-conns", "16", "--timeout-ms", "8000"];
    flags.extend_from_slice(RESOLVE);
    let d = Daemon::shared(&D, "egress", &flags);
    in_the_test_namespace(d);
    d
}

/// Every daemon of these tests lives in the test's network namespace (only `lo`), as its servers do.
fn in_the_test_namespace(d: &Daemon) {
    assert_eq!(common::netns::of_process(d.pid()), common::netns::inode(), "the daemon runs in the test's network namespace");
}

fn put_list(d: &Daemon, tenant: &str, allow: &[String]) {
    let body = json!({ "allow": allow }).to_string();
    let r = d.request("PUT", &format!("/v1/tenants/{tenant}/egress"), &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 200, "PUT egress: {}", r.text());
    assert_eq!(r.json(), json!({ "allow": allow }));
}

fn result(d: &Daemon, tenant: &str, code: &str, data: Value) -> Value {
    d.run_ok(tenant, code, data)["result"].clone()
}

// ---------- the allow-list API ----------

#[test]
fn allow_lists_are_checked_kept_as_given_and_survive_a_restart() {
    need_root!("allow_lists_are_checked_kept_as_given_and_survive_a_restart");
    common::netns::enter();
    let d = Daemon::start("egress-api", &["--egress-allow", "op.test:443"]);
    let r = d.get("/v1/tenants/fresh/egress");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"allow": [], "operator": ["op.test:443"]}));

    let list = vec!["API.test:443".to_string(), "*.slack.test:443".to_string(), "10.1.2.3:5432".to_string(), "[::1]:80".to_string()];
    put_list(&d, "acme", &list);
    let bad = d.request("PUT", "/v1/tenants/acme/egress", &[], br#"{"allow": ["ok.test:443", "db.test"]}"#);
    let e = bad.assert_error(400, "bad_request");
    assert!(e["error"]["message"].as_str().unwrap().contains("\"db.test\""), "the error names the entry: {e}");
    for body in [&b"not json"[..], br#"{"allow": "x.test:1"}"#, br#"{}"#, br#"{"allow": ["x.test:0"]}"#, br#"{"allow": ["*.:1"]}"#] {
        d.request("PUT", "/v1/tenants/acme/egress", &[], body).assert_error(400, "bad_request");
    }
    assert_eq!(d.request("DELETE", "/v1/tenants/acme/egress", &[], b"").status, 405);
    assert_eq!(d.get("/v1/tenants/acme/egress").json()["allow"], json!(list), "a refused PUT changed nothing");

    // The command line says the same.
    let tc = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_taskcell")).args(args).env("TASKCELL_SOCKET", &d.socket).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stdout, _) = tc(&["egress", "set", "cli", "a.test:443", "*.b.test:80"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("a.test:443") && stdout.contains("*.b.test:80"), "{stdout}");
    let (code, stdout, _) = tc(&["egress", "get", "cli", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"allow": ["a.test:443", "*.b.test:80"], "operator": ["op.test:443"]})
    );
    let (code, _, stderr) = tc(&["egress", "set", "cli", "nope"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("\"nope\""), "{stderr}");

    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(15)).success(), "{}", d.log_tail());
    d.restart();
    assert_eq!(d.get("/v1/tenants/acme/egress").json()["allow"], json!(list), "the list survives a restart");
    assert_eq!(d.get("/v1/tenants/cli/egress").json()["allow"], json!(["a.test:443", "*.b.test:80"]));
    d.assert_healthy();
}

// ---------- allowed: unchanged Node APIs ----------

const ALLOWED_TASK: &str = r#"
module.exports = async ({ http: hp, echo, https: sp, ca }) => {
  const http = require('http'), https = require('https'), net = require('net'), tls = require('tls');
  const body = (r) => new Promise((res, rej) => { let b = ''; r.setEncoding('utf8'); r.on('data', (d) => b += d); r.on('end', () => res(b)); r.on('error', rej); });
  const get = (mod, opts) => new Promise((res, rej) => { const q = mod.request(opts, (r) => body(r).then(res, rej)); q.on('error', rej); q.end(); });
  const echoed = (socket, text) => new Promise((res, rej) => {
    let got = ''; socket.setEncoding('utf8');
    socket.on('data', (d) => { got += d; if (got.length >= text.length) { socket.end(); res(got); } });
    socket.on('error', rej);
  });
  const out = {};
  out.fetch = await (await fetch(`http://api.test:${hp}/fetch`)).text();
  out.httpGet = await new Promise((res, rej) => http.get(`http://api.test:${hp}/get`, (r) => body(r).then(res, rej)).on('error', rej));
  out.httpAgent = await get(http, { host: 'api.test', port: hp, path: '/agent', agent: new http.Agent({ keepAlive: true }) });
  out.httpsRequest = await get(https, { host: 'api.test', port: sp, path: '/secure', ca });
  out.httpsAgent = await get(https, { host: 'api.test', port: sp, path: '/agent', agent: new https.Agent({ ca, keepAlive: true }) });
  // fetch cannot be given a CA in Node 20: the TLS handshake still goes end to end, unverified here.
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
  try { out.fetchTls = await (await fetch(`https://api.test:${sp}/fetch`)).text(); } finally { delete process.env.NODE_TLS_REJECT_UNAUTHORIZED; }
  { const s = net.connect(echo, 'api.test', () => s.write('net.connect')); out.netConnect = await echoed(s, 'net.connect'); }
  { const s = net.createConnection({ host: 'api.test', port: echo }); s.write('queued before connect'); out.queued = await echoed(s, 'queued before connect'); }
  { const s = new net.Socket(); s.connect({ host: 'api.test', port: echo }, () => s.write('socket.connect')); out.socketConnect = await echoed(s, 'socket.connect'); }
  out.tls = await new Promise((res, rej) => {
    const s = tls.connect({ host: 'api.test', port: sp, ca, servername: 'api.test' }, () => {
      out.authorized = s.authorized;
      s.write('GET /raw HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n');
    });
    let b = ''; s.setEncoding('utf8'); s.on('data', (d) => b += d); s.on('end', () => res(b.split('\r\n\r\n')[1])); s.on('error', rej);
  });
  // The sandbox's own loopback stays direct.
  const server = net.createServer((c) => c.pipe(c));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  { const s = net.connect(server.address().port, '127.0.0.1', () => s.write('local')); out.local = await echoed(s, 'local'); }
  server.close();
  return out;
};
"#;

#[test]
fn allowed_destinations_work_through_unchanged_node_apis() {
    need_root!("allowed_destinations_work_through_unchanged_node_apis");
    common::netns::enter();
    let d = daemon();
    let (hp, requests) = http_server();
    let e = echo();
    let tls = https_server();
    put_list(d, "allowed", &[format!("api.test:{hp}"), format!("api.test:{}", e.port), format!("api.test:{}", tls.port)]);
    let data = json!({"http": hp, "echo": e.port, "https": tls.port, "ca": tls.cert});
    let out = result(d, "allowed", ALLOWED_TASK, data.clone());
    let expect = json!({
        "fetch": "hello GET /fetch", "httpGet": "hello GET /get", "httpAgent": "hello GET /agent",
        "httpsRequest": "secure GET /secure", "httpsAgent": "secure GET /agent", "fetchTls": "secure GET /fetch",
        "netConnect": "net.connect", "queued": "queued before connect", "socketConnect": "socket.connect",
        "authorized": true, "tls": "secure GET /raw", "local": "local",
    });
    assert_eq!(out, expect, "{}", d.log_tail());
    assert_eq!(requests.load(Ordering::SeqCst), 3, "the plain HTTP server served fetch, http.get and the agent");
    // Again, warm: the same sandbox, the same answers.
    assert_eq!(result(d, "allowed", ALLOWED_TASK, data), expect);
}

#[test]
fn tls_stays_end_to_end() {
    need_root!("tls_stays_end_to_end");
    common::netns::enter();
    let d = daemon();
    let (port, seen) = sniffer();
    put_list(d, "tls", &[format!("api.test:{port}")]);
    let code = "module.exports = ({ port }) => new Promise((res) => {
        const s = require('tls').connect({ host: 'api.test', port, servername: 'api.test' });
        s.on('error', (e) => res(e.code || e.message)); s.on('close', () => res('closed'));
    });";
    let r = result(d, "tls", code, json!({"port": port}));
    assert!(r.is_string(), "{r}");
    wait_until(Duration::from_secs(10), "the sniffer saw the connection", || !seen.lock().unwrap().is_empty());
    let first = seen.lock().unwrap()[0].clone();
    // A TLS handshake record (0x16, version 3.x) carrying the SNI: the ClientHello as the task's TLS sent it,
    // with nothing of the tunnel before it.
    assert!(first.len() > 5 && first[0] == 0x16 && first[1] == 0x03, "the server got {:?}", String::from_utf8_lossy(&first));
    assert!(first.windows(8).any(|w| w == b"api.test"), "no SNI in the ClientHello");
    assert!(!first.windows(7).any(|w| w == b"CONNECT"), "the CONNECT head leaked to the destination");
}

// ---------- refused ----------

const REFUSALS_TASK: &str = r#"
module.exports = async ({ targets }) => {
  const net = require('net'), http = require('http'), tls = require('tls');
  const outcome = (e) => ({ code: e.code, message: e.message, reason: e.reason });
  const out = {};
  for (const [host, port] of targets) {
    out[`${host}:${port}`] = await new Promise((res) => {
      const s = net.connect(port, host, () => { s.destroy(); res({ connected: true }); });
      s.on('error', (e) => res(outcome(e)));
    });
  }
  const [h, p] = targets[0];
  try { await fetch(`http://${h}:${p}/`); out.fetch = 'connected'; } catch (e) { out.fetch = { name: e.name, cause: outcome(e.cause) }; }
  out.http = await new Promise((res) => http.get({ host: h, port: p }, () => res('connected')).on('error', (e) => res(outcome(e))));
  out.tls = await new Promise((res) => tls.connect({ host: h, port: p }, () => res('connected')).on('error', (e) => res(outcome(e))));
  return out;
};
"#;

#[test]
fn refusals_fail_fast_with_egress_denied_naming_host_port_and_reason() {
    need_root!("refusals_fail_fast_with_egress_denied_naming_host_port_and_reason");
    common::netns::enter();
    let d = daemon();
    let e = echo();
    let p = e.port;
    let (hp, _) = http_server();
    put_list(
        d,
        "refused",
        &[
            format!("*.api.test:{p}"),
            format!("private.test:{p}"),
            "meta.test:80".into(),
            "169.254.169.254:80".into(),
            format!("api.test:{hp}"),
        ],
    );
    let targets = json!([
        ["other.test", p],
        ["api.test", p],         // the apex of a *. entry
        ["api.test", p + 1],     // a port not listed
        ["sub.api.test", hp],    // the subdomain, on another port
        ["private.test", p],     // listed, resolves to 10.9.9.9
        ["meta.test", 80],       // listed, resolves to the metadata address
        ["169.254.169.254", 80], // the metadata address itself, listed
    ]);
    let out = result(d, "refused", REFUSALS_TASK, json!({"targets": targets}));
    let expect = [
        ("other.test", p, "not on the allow-list"),
        ("api.test", p, "not on the allow-list"),
        ("api.test", p + 1, "not on the allow-list"),
        ("sub.api.test", hp, "not on the allow-list"),
        ("private.test", p, "private address 10.9.9.9"),
        ("meta.test", 80, "private address 169.254.169.254"),
        ("169.254.169.254", 80, "private address 169.254.169.254"),
    ];
    for (host, port, why) in expect {
        let got = &out[format!("{host}:{port}")];
        assert_eq!(got["code"], "EGRESS_DENIED", "{host}:{port}: {got}");
        let msg = got["message"].as_str().unwrap();
        assert!(msg.contains(&format!("{host}:{port}")) && msg.contains(why), "{host}:{port}: {msg}");
    }
    assert_eq!(out["fetch"]["name"], "TypeError", "{out}");
    assert_eq!(out["fetch"]["cause"]["code"], "EGRESS_DENIED", "{out}");
    assert_eq!(out["http"]["code"], "EGRESS_DENIED", "{out}");
    assert_eq!(out["tls"]["code"], "EGRESS_DENIED", "{out}");
    assert_eq!(out["other.test:".to_string() + &p.to_string()]["reason"], "not_allowed");
    assert_eq!(out[format!("private.test:{p}")]["reason"], "private_address");
    assert_eq!(e.accepted.load(Ordering::SeqCst), 0, "a refused connection reached the server");
}

/// The daemon enforces, not the bootstrap: tenant code that speaks CONNECT itself, with every spelling of
/// loopback, unspecified, link-local and the metadata address, all of them on its list, is refused each
/// time before anything is connected. This daemon allows no private range at all.
#[test]
fn every_spelling_of_a_private_address_is_refused_before_connecting() {
    need_root!("every_spelling_of_a_private_address_is_refused_before_connecting");
    common::netns::enter();
    let e = echo();
    let p = e.port;
    let d = Daemon::start("egress-ssrf", &["--egress-resolve", "lo.test=127.0.0.1", "--egress-resolve", "mapped.test=::ffff:127.0.0.1"]);
    let spellings = [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "0.0.0.0",
        "0",
        "[::]",
        "169.254.169.254",
        "[::ffff:169.254.169.254]",
        "[fe80::1]",
        "[fd00::1]",
        "10.0.0.1",
        "192.168.1.1",
        "lo.test",
        "mapped.test",
    ];
    let list: Vec<String> = spellings.iter().map(|h| format!("{h}:{p}")).collect();
    put_list(&d, "ssrf", &list);
    let code = r#"module.exports = async ({ targets }) => {
        const net = require('net');
        const ask = (target) => new Promise((res) => {
          const s = net.connect(3128, '127.0.0.1', () => s.write(`CONNECT ${target} HTTP/1.1\r\n\r\n`));
          let b = ''; s.setEncoding('latin1'); s.on('data', (d) => b += d);
          s.on('end', () => res(b)); s.on('error', (e) => res('error ' + e.code));
        });
        const out = {};
        for (const t of targets) out[t] = await ask(t);
        const viaBootstrap = await new Promise((res) => net.connect(targets[1].split(':')[1], '2130706433').on('error', (e) => res(e.code)));
        return { out, viaBootstrap };
    };"#;
    let r = result(&d, "ssrf", code, json!({"targets": list}));
    for target in &list {
        let answer = r["out"][target].as_str().unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 403 "), "{target}: {answer}");
        assert!(answer.contains("X-Taskcell-Egress-Reason: private_address"), "{target}: {answer}");
    }
    assert_eq!(r["viaBootstrap"], "EGRESS_DENIED");
    // Nothing on the host's loopback was reached.
    assert_eq!(e.accepted.load(Ordering::SeqCst), 0);
    d.assert_healthy();
}

// ---------- names the daemon looks up itself ----------

/// A DNS server on 127.0.0.1:53 of the test's network namespace (one for the test binary): for each name in
/// its script, the A answers of the successive queries (the last one repeats); a name it does not know is
/// NXDOMAIN; AAAA queries get no record. Counts A queries by name.
struct Dns {
    script: Mutex<HashMap<String, Vec<Ipv4Addr>>>,
    asked: Mutex<HashMap<String, usize>>,
}

impl Dns {
    fn get() -> &'static Dns {
        static DNS: OnceLock<&'static Dns> = OnceLock::new();
        DNS.get_or_init(|| {
            let dns: &'static Dns = Box::leak(Box::new(Dns { script: Mutex::default(), asked: Mutex::default() }));
            let socket = UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53 in the test's network namespace");
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Some(answer) = dns.answer(&buf[..n]) {
                        let _ = socket.send_to(&answer, from);
                    }
                }
            });
            dns
        })
    }

    fn script(&self, name: &str, answers: &[Ipv4Addr]) {
        self.script.lock().unwrap().insert(name.to_string(), answers.to_vec());
    }

    fn asked(&self, name: &str) -> usize {
        self.asked.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// The response to one query (RFC 1035 4.1), None for what is not a query of one question.
    fn answer(&self, q: &[u8]) -> Option<Vec<u8>> {
        if q.len() < 12 || q[2] & 0x80 != 0 || q[4..6] != [0, 1] {
            return None;
        }
        let (mut at, mut labels) = (12, Vec::new());
        while *q.get(at)? != 0 {
            let len = q[at] as usize;
            labels.push(String::from_utf8_lossy(q.get(at + 1..at + 1 + len)?).to_ascii_lowercase());
            at += 1 + len;
        }
        let question_end = at + 5;
        let qtype = u16::from_be_bytes([*q.get(at + 1)?, *q.get(at + 2)?]);
        q.get(question_end - 1)?;
        let name = labels.join(".");
        let mut addresses = Vec::new();
        let known = {
            let script = self.script.lock().unwrap();
            match script.get(&name) {
                Some(answers) if qtype == 1 => {
                    let mut asked = self.asked.lock().unwrap();
                    let n = asked.entry(name.clone()).or_default();
                    addresses.push(answers[(*n).min(answers.len() - 1)]);
                    *n += 1;
                    true
                }
                Some(_) => true,
                None => false,
            }
        };
        let mut r = q[..2].to_vec();
        r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }, 0, 1, 0, addresses.len() as u8, 0, 0, 0, 0]);
        r.extend_from_slice(&q[12..question_end]);
        for a in addresses {
            // The name by a pointer to the question's, type A, class IN, TTL 0, four bytes.
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            r.extend_from_slice(&a.octets());
        }
        Some(r)
    }
}

/// DNS rebinding: the daemon looks a name up once for a connection and connects to the very address it
/// checked. `rebind.test` first resolves to the allowed 127.0.0.1 and afterwards to 127.0.0.2 (loopback, not
/// allowed), where a second server listens on the same port: a daemon that looked the name up again to
/// connect (or let anything else do it) would reach that server. `turn.test` is the other way round: the
/// first answer is refused and nothing is retried. The daemon's resolver is the host's libc with a test
/// /etc/resolv.conf bound over the host's in a mount namespace of the daemon's own.
#[test]
fn a_name_whose_second_lookup_would_differ_is_connected_to_the_address_checked() {
    need_root!("a_name_whose_second_lookup_would_differ_is_connected_to_the_address_checked");
    common::netns::enter();
    let dns = Dns::get();
    let e = echo();
    let p = e.port;
    let other = TcpListener::bind(("127.0.0.2", p)).expect("bind 127.0.0.2 on the echo server's port");
    let reached_other = Arc::new(AtomicUsize::new(0));
    let r2 = reached_other.clone();
    thread::spawn(move || {
        for s in other.incoming().flatten() {
            r2.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let (first, second) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    dns.script("rebind.test", &[first, second]);
    dns.script("turn.test", &[second, first]);
    dns.script("good.test", &[first]);

    let dir = std::env::temp_dir().join(common::unique(&format!("taskcell-egress-dns-{}", std::process::id())));
    fs::create_dir_all(&dir).unwrap();
    let (resolv, nsswitch) = (dir.join("resolv.conf"), dir.join("nsswitch.conf"));
    fs::write(&resolv, "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n").unwrap();
    fs::write(&nsswitch, "hosts: files dns\n").unwrap();
    let d = Daemon::start_with_binds(
        "egress-dns",
        &["--egress-allow-private", "127.0.0.1/32", "--timeout-ms", "15000"],
        &[(resolv.as_path(), "/etc/resolv.conf"), (nsswitch.as_path(), "/etc/nsswitch.conf")],
    );
    in_the_test_namespace(&d);
    let hosts = ["rebind.test", "turn.test", "good.test", "nowhere.test"];
    put_list(&d, "dns", &hosts.iter().map(|h| format!("{h}:{p}")).collect::<Vec<_>>());
    let code = r#"module.exports = async ({ hosts, port }) => {
        const net = require('net');
        const ping = (host) => new Promise((res) => {
          const s = net.connect(port, host, () => s.write('ping'));
          s.once('data', (d) => { s.destroy(); res(d.toString()); });
          s.on('error', (e) => res({ code: e.code, reason: e.reason, message: e.message }));
        });
        const out = {};
        for (const h of hosts) out[h] = await ping(h);
        return out;
    };"#;
    let r = result(&d, "dns", code, json!({"hosts": hosts, "port": p}));
    assert_eq!(r["rebind.test"], "ping", "the first answer (127.0.0.1) is allowed and connected to: {r}");
    assert_eq!(r["good.test"], "ping", "{r}");
    assert_eq!(r["turn.test"]["code"], "EGRESS_DENIED", "{r}");
    assert_eq!(r["turn.test"]["reason"], "private_address", "{r}");
    assert!(r["turn.test"]["message"].as_str().unwrap_or("").contains("127.0.0.2"), "{r}");
    assert_eq!(r["nowhere.test"]["code"], "ENOTFOUND", "an unknown name: {r}");
    assert_eq!(dns.asked("rebind.test"), 1, "one lookup for one connection");
    assert_eq!(dns.asked("turn.test"), 1, "a refused answer is not looked up again");
    assert_eq!(e.accepted.load(Ordering::SeqCst), 2, "rebind.test and good.test reached 127.0.0.1");

    // The next connection looks the name up again, gets 127.0.0.2, and is refused before connecting.
    let again = result(&d, "dns", code, json!({"hosts": ["rebind.test"], "port": p}));
    assert_eq!(again["rebind.test"]["code"], "EGRESS_DENIED", "{again}");
    assert!(again["rebind.test"]["message"].as_str().unwrap_or("").contains("127.0.0.2"), "{again}");
    assert_eq!(reached_other.load(Ordering::SeqCst), 0, "nothing ever reached the address no check allowed");
    drop(d);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn connections_are_limited_per_invocation() {
    need_root!("connections_are_limited_per_invocation");
    common::netns::enter();
    let d = daemon();
    let e = echo();
    put_list(d, "limited", &[format!("api.test:{}", e.port)]);
    // Sixteen open at once (the daemon's --egress-max-conns 16), then one more.
    let code = r#"module.exports = async ({ port }) => {
        const net = require('net');
        const open = (i) => new Promise((res) => {
          const s = net.connect(port, 'api.test', () => s.write('x' + i));
          s.once('data', () => res({ s })); s.on('error', (e) => res({ e: { code: e.code, message: e.message, reason: e.reason } }));
        });
        const held = [];
        for (let i = 0; i < 16; i++) held.push(await open(i));
        const ninth = await open(16);
        for (const h of held) if (h.s) h.s.destroy();
        return { opened: held.filter((h) => h.s).length, ninth: ninth.e || 'connected' };
    };"#;
    for round in 0..2 {
        let r = result(d, "limited", code, json!({"port": e.port}));
        assert_eq!(r["opened"], 16, "round {round}: {r}");
        assert_eq!(r["ninth"]["code"], "EGRESS_DENIED", "round {round}: {r}");
        assert_eq!(r["ninth"]["reason"], "limit", "round {round}: {r}");
        assert!(r["ninth"]["message"].as_str().unwrap().contains("limit of 16"), "{r}");
    }
    wait_until(Duration::from_secs(10), "the echo connections closed", || e.open.load(Ordering::SeqCst) == 0);
    assert_eq!(e.accepted.load(Ordering::SeqCst), 32);
}

// ---------- logs and metrics ----------

#[test]
fn every_connection_is_a_log_event_and_metrics_count_them() {
    need_root!("every_connection_is_a_log_event_and_metrics_count_them");
    common::netns::enter();
    let d = daemon();
    let (hp, _) = http_server();
    put_list(d, "logged", &[format!("api.test:{hp}")]);
    let mut sub = d.client();
    sub.send("GET", "/v1/logs?tenant=logged", &[], b"").unwrap();
    let (status, _) = sub.read_stream_head().unwrap();
    assert_eq!(status, 200);
    let code = r#"module.exports = async ({ hp }) => {
        const text = await (await fetch(`http://api.test:${hp}/logged`)).text();
        let refused;
        try { await fetch(`http://nope.test:${hp}/`); } catch (e) { refused = e.cause.code; }
        return { text, refused };
    };"#;
    let r = result(d, "logged", code, json!({"hp": hp}));
    assert_eq!(r, json!({"text": "hello GET /logged", "refused": "EGRESS_DENIED"}));
    let mut events: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.len() < 2 && Instant::now() < deadline {
        let chunk = sub.read_chunk().unwrap().expect("the stream goes on");
        for line in String::from_utf8_lossy(&chunk).lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if v.get("egress").is_some() {
                events.push(v);
            }
        }
    }
    let allowed = events.iter().find(|e| e["egress"]["allowed"] == true).unwrap_or_else(|| panic!("no allowed event in {events:?}"));
    let eg = &allowed["egress"];
    assert_eq!(
        (eg["host"].as_str(), eg["port"].as_u64(), eg["address"].as_str()),
        (Some("api.test"), Some(hp as u64), Some("127.0.0.1")),
        "{allowed}"
    );
    assert!(eg["reason"].is_null(), "{allowed}");
    assert!(eg["bytes_in"].as_u64().unwrap() > 17 && eg["bytes_out"].as_u64().unwrap() > 20, "{allowed}");
    assert_eq!(allowed["tenant"], "logged");
    assert!(allowed["requestId"].is_string(), "{allowed}");
    let refused = events.iter().find(|e| e["egress"]["allowed"] == false).unwrap_or_else(|| panic!("no refused event in {events:?}"));
    assert_eq!(
        refused["egress"],
        json!({"host": "nope.test", "port": hp, "address": null, "allowed": false, "reason": "not_allowed", "bytes_in": 0, "bytes_out": 0})
    );
    assert!(refused["message"].as_str().unwrap().contains("not on the allow-list"), "{refused}");

    let metrics = d.get("/metrics").text();
    let count = |outcome: &str| -> u64 {
        let prefix = format!("taskcell_egress_connections_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    assert!(count("allowed") >= 1 && count("not_allowed") >= 1, "{metrics}");
    assert!(metrics.contains("taskcell_egress_connections_open "), "{metrics}");
    assert!(metrics.contains("taskcell_egress_bytes_total{direction=\"in\"} "), "{metrics}");
}

// ---------- lifetimes, isolation between tenants, leaks ----------

#[test]
fn no_connection_survives_its_sandbox() {
    need_root!("no_connection_survives_its_sandbox");
    common::netns::enter();
    let e = echo();
    let d = Daemon::start(
        "egress-death",
        &["--egress-allow-private", "127.0.0.1/32", "--egress-resolve", "api.test=127.0.0.1", "--timeout-ms", "1500"],
    );
    put_list(&d, "dies", &[format!("api.test:{}", e.port)]);
    // Three connections held open, and an invocation that never ends: its sandbox is killed at the deadline.
    let code = r#"module.exports = async ({ port }) => {
        const net = require('net');
        for (let i = 0; i < 3; i++) await new Promise((res) => { const s = net.connect(port, 'api.test', () => s.write('x')); s.once('data', res); });
        await new Promise(() => {});
    };"#;
    let r = d.run("dies", code, json!({"port": e.port}));
    r.assert_error(504, "timeout");
    assert_eq!(e.accepted.load(Ordering::SeqCst), 3);
    wait_until(Duration::from_secs(10), "the sandbox's connections closed", || e.open.load(Ordering::SeqCst) == 0);
    let open = d.get("/metrics").text();
    assert!(open.contains("taskcell_egress_connections_open 0"), "{open}");
    d.assert_healthy();
}

#[test]
fn the_daemon_stays_responsive_while_a_tenant_opens_connections_in_a_loop() {
    need_root!("the_daemon_stays_responsive_while_a_tenant_opens_connections_in_a_loop");
    common::netns::enter();
    let d = daemon();
    let e = echo();
    put_list(d, "looper", &[format!("api.test:{}", e.port)]);
    let socket = d.socket.clone();
    let looper = thread::spawn(move || {
        let code = r#"module.exports = async ({ port }) => {
            const net = require('net');
            let n = 0; const t0 = Date.now();
            while (Date.now() - t0 < 3000) {
              await new Promise((res) => { const s = net.connect(port, 'api.test', () => { s.destroy(); res(); }); s.on('error', res); });
              await new Promise((res) => net.connect(port, 'nope.test').on('error', res));
              n++;
            }
            return n;
        };"#;
        let mut c = common::Client::connect(&socket);
        let body = json!({"code": code, "data": {"port": e.port}}).to_string();
        c.request("POST", "/v1/tenants/looper/run", &[], body.as_bytes())
    });
    let mut served = 0;
    while !looper.is_finished() || served < 20 {
        let r = d.run_ok("quiet", "module.exports = (d) => d.n * 2", json!({"n": served}));
        assert_eq!(r["result"], served * 2);
        served += 1;
    }
    let r = looper.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    println!("RELIABILITY egress loop: {} connection pairs in 3 s; {served} quiet invocations served meanwhile", r.json()["result"]);
    assert!(r.json()["result"].as_u64().unwrap() > 10);
}

const LEAK_ROUNDS: usize = 20;
const LEAK_PER_ROUND: usize = 200;

#[test]
fn thousands_of_connections_leave_descriptors_and_memory_flat() {
    need_root!("thousands_of_connections_leave_descriptors_and_memory_flat");
    common::netns::enter();
    let e = echo();
    let (hp, _) = http_server();
    let d = Daemon::start(
        "egress-leaks",
        &[
            "--egress-allow-private",
            "127.0.0.1/32",
            "--egress-resolve",
            "api.test=127.0.0.1",
            "--egress-max-conns",
            "100000",
            "--timeout-ms",
            "30000",
        ],
    );
    put_list(&d, "leaky", &[format!("api.test:{}", e.port), format!("api.test:{hp}")]);
    let pid = d.pid();
    // Echo (data both ways, half-close), an HTTP request, a refusal, and one abandoned mid-handshake.
    let code = r#"module.exports = async ({ port, hp, n }) => {
        const net = require('net');
        let ok = 0, refused = 0;
        for (let i = 0; i < n; i++) {
          const kind = i % 4;
          if (kind === 0) ok += await new Promise((res) => { const s = net.connect(port, 'api.test', () => s.end('ping')); let b = ''; s.on('data', (d) => b += d); s.on('close', () => res(b === 'ping' ? 1 : 0)); s.on('error', () => res(0)); });
          else if (kind === 1) ok += (await (await fetch(`http://api.test:${hp}/x`)).text()).startsWith('hello') ? 1 : 0;
          else if (kind === 2) refused += await new Promise((res) => net.connect(port, 'nope.test').on('error', (e) => res(e.code === 'EGRESS_DENIED' ? 1 : 0)));
          else { const s = net.connect(3128, '127.0.0.1', () => { s.write('CONNECT api.test:' + port + ' HTTP/1.1\r\n'); setImmediate(() => s.destroy()); }); await new Promise((res) => s.on('close', res)); ok++; }
        }
        return { ok, refused };
    };"#;
    let round = |d: &Daemon| {
        let r = result(d, "leaky", code, json!({"port": e.port, "hp": hp, "n": LEAK_PER_ROUND}));
        assert_eq!(r, json!({"ok": LEAK_PER_ROUND * 3 / 4, "refused": LEAK_PER_ROUND / 4}), "{}", d.log_tail());
    };
    let quiet = |d: &Daemon| {
        wait_until(Duration::from_secs(20), "egress tunnels closed", || {
            d.get("/metrics").text().contains("taskcell_egress_connections_open 0")
        });
        wait_until(Duration::from_secs(20), "echo connections closed", || e.open.load(Ordering::SeqCst) == 0);
    };
    // Warm up (buffers, the slab, the tenant's sandbox), then measure.
    round(&d);
    round(&d);
    quiet(&d);
    let (fd0, rss0) = (fd_count(pid), rss_kib(pid));
    let mut samples = Vec::new();
    for _ in 0..LEAK_ROUNDS {
        round(&d);
        samples.push((fd_count(pid), rss_kib(pid)));
    }
    quiet(&d);
    let (fd1, rss1) = (fd_count(pid), rss_kib(pid));
    println!(
        "RELIABILITY egress leaks: {} connections; fds {fd0} -> {fd1}, RSS {rss0} -> {rss1} KiB; during: {samples:?}",
        LEAK_ROUNDS * LEAK_PER_ROUND
    );
    assert!(fd1 <= fd0 + 2, "descriptors: {fd1} after, {fd0} before");
    assert!(rss1 <= rss0 + (8 << 10), "RSS: {rss1} KiB after, {rss0} KiB before");
    let half = samples.len() / 2;
    let max_first = samples[..half].iter().map(|s| s.1).max().unwrap();
    let max_last = samples[half..].iter().map(|s| s.1).max().unwrap();
    assert!(max_last <= max_first + (4 << 10), "RSS grew over the run: {samples:?}");
    let seen: HashSet<u64> = samples.iter().map(|s| s.0).collect();
    assert!(seen.iter().all(|&f| f <= fd0 + 70), "descriptors during the run: {samples:?}");
    d.assert_healthy();
}

// ---------- npm modules built on http ----------

/// Removes a directory when dropped (the test's modules directory; the daemon that used it is stopped first).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// axios and node-fetch, installed from the registry with `taskcell modules add` as an operator would, work
/// unchanged through egress: both are built on http.request, which the bootstrap points at the daemon.
#[test]
fn npm_http_clients_work_unchanged() {
    need_root!("npm_http_clients_work_unchanged");
    let dir = RemoveDir(std::env::temp_dir().join(format!("taskcell-egress-modules-{}", std::process::id())));
    let _ = fs::remove_dir_all(&dir.0);
    let out = Command::new(env!("CARGO_BIN_EXE_taskcell"))
        .args(["modules", "add", "--dir", dir.0.to_str().unwrap(), "axios@1.7.9", "node-fetch@2.7.0"])
        .output()
        .expect("run taskcell modules add");
    assert!(out.status.success(), "modules add: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Installed from the registry in the host's namespace; everything from here on runs in the test's.
    common::netns::enter();
    let (hp, _) = http_server();
    let tls = https_server();
    {
        let d = Daemon::start(
            "egress-npm",
            &["--modules", dir.0.to_str().unwrap(), "--egress-allow-private", "127.0.0.1/32", "--egress-resolve", "api.test=127.0.0.1"],
        );
        put_list(&d, "npm", &[format!("api.test:{hp}"), format!("api.test:{}", tls.port)]);
        let code = r#"module.exports = async ({ hp, sp, ca }) => {
            const axios = require('axios'), fetch = require('node-fetch'), https = require('https');
            const out = {};
            out.axios = (await axios.get(`http://api.test:${hp}/axios`)).data;
            out.axiosTls = (await axios.get(`https://api.test:${sp}/axios`, { httpsAgent: new https.Agent({ ca }) })).data;
            out.nodeFetch = await (await fetch(`http://api.test:${hp}/node-fetch`)).text();
            try { await axios.get(`http://nope.test:${hp}/`); } catch (e) { out.axiosRefused = e.code; }
            try { await fetch(`http://nope.test:${hp}/`); } catch (e) { out.nodeFetchRefused = e.code; }
            return out;
        };"#;
        let r = result(&d, "npm", code, json!({"hp": hp, "sp": tls.port, "ca": tls.cert}));
        let expect = json!({
            "axios": "hello GET /axios", "axiosTls": "secure GET /axios", "nodeFetch": "hello GET /node-fetch",
            "axiosRefused": "EGRESS_DENIED", "nodeFetchRefused": "EGRESS_DENIED",
        });
        assert_eq!(r, expect);
    }
}

/// Five invocations at once in one tenant's sandbox, each opening its 16 (the per-invocation limit here):
/// the sandbox holds 64 open at most, the rest are refused with the limit named.
#[test]
fn a_sandbox_holds_at_most_64_connections_open() {
    need_root!("a_sandbox_holds_at_most_64_connections_open");
    common::netns::enter();
    let d = daemon();
    let e = echo();
    put_list(d, "crowded", &[format!("api.test:{}", e.port)]);
    d.run_ok("crowded", "module.exports = () => { globalThis.arrived = 0; return 1; }", Value::Null);
    let code = r#"module.exports = async ({ port }) => {
        const net = require('net');
        const held = []; let limited = 0, other = 0;
        for (let i = 0; i < 16; i++) {
          await new Promise((res) => {
            const s = net.connect(port, 'api.test', () => s.write('x'));
            s.once('data', () => { held.push(s); res(); });
            s.on('error', (e) => { if (e.reason === 'limit' && e.message.includes('64')) limited++; else other++; res(); });
          });
        }
        globalThis.arrived++;
        const t0 = Date.now();
        while (globalThis.arrived < 5 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
        for (const s of held) s.destroy();
        return { opened: held.length, limited, other };
    };"#;
    let socket = d.socket.clone();
    let port = e.port;
    let runs: Vec<_> = (0..5)
        .map(|_| {
            let socket = socket.clone();
            thread::spawn(move || {
                let mut c = common::Client::connect(&socket);
                let body = json!({"code": code, "data": {"port": port}}).to_string();
                c.request("POST", "/v1/tenants/crowded/run", &[], body.as_bytes())
            })
        })
        .collect();
    let (mut opened, mut limited) = (0, 0);
    for r in runs {
        let r = r.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json()["result"].clone();
        assert_eq!(v["other"], 0, "{v}");
        opened += v["opened"].as_u64().unwrap();
        limited += v["limited"].as_u64().unwrap();
    }
    assert_eq!((opened, limited), (64, 16));
    wait_until(Duration::from_secs(10), "the echo connections closed", || e.open.load(Ordering::SeqCst) == 0);
}

/// Tenant code that opens hundreds of connections to the egress listener and never sends a CONNECT parks at
/// most 128 of them in the daemon (the rest are closed as soon as accepted), each for at most 10 s.
#[test]
fn silent_connections_to_the_proxy_are_bounded() {
    need_root!("silent_connections_to_the_proxy_are_bounded");
    common::netns::enter();
    let d = daemon();
    let code = r#"module.exports = async () => {
        const net = require('net');
        const socks = []; let closed = 0, connected = 0;
        for (let i = 0; i < 300; i++) {
          const s = net.connect(3128, '127.0.0.1', () => connected++);
          s.on('error', () => {}); s.on('close', () => closed++); socks.push(s);
        }
        await new Promise((r) => setTimeout(r, 1500));
        const open = socks.length - closed;
        for (const s of socks) s.destroy();
        return { open, closed, connected };
    };"#;
    let r = result(d, "silent", code, Value::Null);
    assert!(r["open"].as_u64().unwrap() <= 128, "{r}");
    assert!(r["closed"].as_u64().unwrap() >= 172, "{r}");
    d.assert_healthy();
}

/// The bootstrap tunnels through the sandbox's Unix socket; tenant code may speak CONNECT on it or on
/// 127.0.0.1:3128 itself: both get the same decisions, and share the sandbox's bound on held connections.
#[test]
fn both_endpoints_make_the_same_decisions_under_one_bound() {
    need_root!("both_endpoints_make_the_same_decisions_under_one_bound");
    common::netns::enter();
    let d = daemon();
    let e = echo();
    put_list(d, "endpoints", &[format!("api.test:{}", e.port)]);
    let code = r#"module.exports = async ({ port }) => {
        const net = require('net');
        const endpoints = { tcp: { port: 3128, host: '127.0.0.1' }, unix: { path: '\0taskcell-egress' } };
        const ask = (to, target) => new Promise((res) => {
          const s = net.connect(to, () => s.write(`CONNECT ${target} HTTP/1.1\r\n\r\n`));
          let b = ''; s.setEncoding('latin1');
          s.on('data', (d) => { b += d; if (b.startsWith('HTTP/1.1 200 ') && b.endsWith('\r\n\r\n')) s.write('ping'); if (b.endsWith('ping')) s.destroy(), res(b); });
          s.on('end', () => res(b)); s.on('error', (e) => res('error ' + e.code));
        });
        const out = {};
        for (const [name, to] of Object.entries(endpoints)) {
          out[name] = { allowed: await ask(to, `api.test:${port}`), refused: await ask(to, 'elsewhere.test:80') };
        }
        // Silent connections, half through each endpoint: one bound for both.
        const socks = []; let closed = 0;
        for (let i = 0; i < 300; i++) {
          const s = net.connect(i % 2 ? endpoints.tcp : endpoints.unix);
          s.on('error', () => {}); s.on('close', () => closed++); socks.push(s);
        }
        await new Promise((r) => setTimeout(r, 1500));
        out.open = socks.length - closed;
        for (const s of socks) s.destroy();
        return out;
    };"#;
    let r = result(d, "endpoints", code, json!({"port": e.port}));
    for name in ["tcp", "unix"] {
        let allowed = r[name]["allowed"].as_str().unwrap_or_default();
        assert!(allowed.starts_with("HTTP/1.1 200 ") && allowed.ends_with("\r\n\r\nping"), "{name}: {allowed}");
        let refused = r[name]["refused"].as_str().unwrap_or_default();
        assert!(refused.starts_with("HTTP/1.1 403 "), "{name}: {refused}");
        assert!(refused.contains("X-Taskcell-Egress-Reason: not_allowed"), "{name}: {refused}");
    }
    assert_eq!(e.accepted.load(Ordering::SeqCst), 2, "one connection through each endpoint");
    assert!(r["open"].as_u64().unwrap() <= 128, "{r}");
    d.assert_healthy();
}

/// Node's libuv reaches an abstract name with the whole of `sun_path` (1.46, 1.47: this host's Node 20) or with
/// the name's own length (1.48 on): the daemon must answer on both forms. The test joins a sandbox's network
/// namespace itself (a thread of its own, by the sandbox Node's /proc entry) and asks through each form; from
/// outside any invocation, both get the same refusal (the padded form with an invocation is what every
/// other test here goes through).
#[test]
fn the_unix_endpoint_answers_on_both_forms_of_its_name() {
    use std::os::linux::net::SocketAddrExt;
    need_root!("the_unix_endpoint_answers_on_both_forms_of_its_name");
    common::netns::enter();
    // A daemon of its own: the shared one's sandboxes come and go with the other tests'.
    let d = Daemon::start("egress-both-forms", &[]);
    let e = echo();
    // Any sandbox of this daemon: its pool's stay as they are while nothing else runs here.
    let node = common::descendant_pids(d.pid())
        .into_iter()
        .find(|p| testkit::procfs::cmdline(*p).contains("bootstrap.js"))
        .expect("a sandbox's Node among the daemon's descendants");
    let sandboxes = d.health()["sandboxes"]["total"].clone();
    let ns = fs::File::open(format!("/proc/{node}/ns/net")).expect("the sandbox's network namespace");
    let port = e.port;
    let answers = thread::spawn(move || {
        // SAFETY: setns on a descriptor of our own, on this thread alone (it ends here).
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let mut padded = [0u8; 107];
        padded[..15].copy_from_slice(b"taskcell-egress");
        let mut out = Vec::new();
        for name in [&b"taskcell-egress"[..], &padded[..]] {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
            let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect to the abstract name");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(format!("CONNECT api.test:{port} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            out.push(String::from_utf8_lossy(&head).to_string());
        }
        out
    })
    .join()
    .expect("the thread in the sandbox's namespace");
    for head in &answers {
        assert!(head.starts_with("HTTP/1.1 403 ") && head.contains("X-Taskcell-Egress-Reason: no_invocation"), "{head}");
    }
    assert_eq!(answers[0], answers[1], "both forms of the name reach the same proxy");
    assert_eq!(e.accepted.load(Ordering::SeqCst), 0, "nothing connected outside an invocation");
    assert_eq!(d.health()["sandboxes"]["total"], sandboxes, "the sandbox asked is still there");
    d.assert_healthy();
}
