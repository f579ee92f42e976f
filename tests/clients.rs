//! Bad and demanding clients of the front socket: garbage, half-sent requests, pipelining, `Connection: close`,
//! hundreds of concurrent connections, clients that leave mid-invocation or never read. The daemon answers
//! what can be answered, closes what must be closed, and keeps serving everyone else.
//!
//! Root required; see tests/common/mod.rs.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::Duration;

use common::{encode, unique, wait_until, Client, Daemon};
use serde_json::{json, Value};

static SHARED: OnceLock<Daemon> = OnceLock::new();

fn shared() -> &'static Daemon {
    Daemon::shared(&SHARED, "clients", &["--pool-size", "3"])
}

#[test]
fn garbage_gets_400_and_close() {
    need_root!("garbage_gets_400_and_close");
    let d = shared();
    let inputs: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec(),
        b"HELLO WORLD\r\n\r\n".to_vec(),
        b"GET /v1/health HTTP/9.9\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET /v1/health HTTP/1.1\r\nBad Header Without Colon\r\n\r\n".to_vec(),
        b"POST /v1/tenants/x/run HTTP/1.1\r\nContent-Length: -5\r\n\r\n".to_vec(),
        b"POST /v1/tenants/x/run HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(),
        b"GET /v1/he\x7flth HTTP/1.1\r\n\r\n".to_vec(),
        (0..2048u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).chain(*b"\r\n\r\n").collect(),
    ];
    for raw in inputs {
        let mut c = d.client();
        c.send_raw(&raw).unwrap();
        let r = c.read_response().unwrap_or_else(|e| panic!("no answer to {:?}: {e}", String::from_utf8_lossy(&raw)));
        assert_eq!(r.status, 400, "{:?} -> {} {}", String::from_utf8_lossy(&raw), r.status, r.text());
        r.assert_error(400, "bad_request");
        assert!(
            c.closed_within(Duration::from_secs(20)),
            "the connection is closed after malformed input {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    // A good request after a good one on the same connection, then garbage: the good one is answered.
    let mut c = d.client();
    assert_eq!(c.request("GET", "/v1/health", &[], b"").status, 200);
    c.send_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 400);
    assert!(c.closed_within(Duration::from_secs(20)));
    d.assert_healthy();
}

#[test]
fn half_sent_requests_time_out_without_holding_others() {
    need_root!("half_sent_requests_time_out_without_holding_others");
    let d = shared();
    let t = unique("half");
    let halves: Vec<Vec<u8>> = vec![
        b"GET /v1/hea".to_vec(),
        b"POST /v1/tenants/x/run HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"co".to_vec(),
        b"PUT /v1/tenants/x/tasks/y HTTP/1.1\r\nContent-Le".to_vec(),
    ];
    let mut stalled: Vec<Client> = halves
        .iter()
        .map(|h| {
            let mut c = d.client();
            c.send_raw(h).unwrap();
            c
        })
        .collect();
    // Others are served meanwhile, on new and on kept-alive connections.
    let mut kept = d.client();
    for i in 0..5 {
        assert_eq!(kept.request("GET", "/v1/health", &[], b"").status, 200);
        let env = d.run_ok(&t, "module.exports = (d) => d", json!(i));
        assert_eq!(env["result"], i);
    }
    // The daemon closes the stalled ones (docs/api.md: 10 s after the first byte; allow for slack).
    let handles: Vec<_> = stalled.drain(..).map(|mut c| thread::spawn(move || c.closed_within(Duration::from_secs(40)))).collect();
    for h in handles {
        assert!(h.join().unwrap(), "a half-sent request's connection was never closed by the daemon");
    }
    d.assert_healthy();
}

#[test]
fn slow_but_steady_client_is_served() {
    need_root!("slow_but_steady_client_is_served");
    let d = shared();
    let t = unique("drip");
    let body = json!({"code": "module.exports = (d) => d.n * 2", "data": {"n": 21}}).to_string();
    let raw = encode("POST", &format!("/v1/tenants/{t}/run"), &[], body.as_bytes());
    let mut c = d.client();
    // Byte by byte in a few pieces with pauses well under the request timeout.
    for piece in raw.chunks(raw.len().div_ceil(4)) {
        c.send_raw(piece).unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], 42);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    need_root!("pipelined_requests_are_answered_in_order");
    let d = shared();
    let t = unique("pipe");
    d.run_ok(&t, "module.exports = () => 'warm'", Value::Null);
    let slow = json!({"code": "module.exports = (d) => new Promise((r) => setTimeout(() => r(d), 300))", "data": "slow"}).to_string();
    let fast = json!({"code": "module.exports = (d) => d", "data": "fast"}).to_string();
    let path = format!("/v1/tenants/{t}/run");
    let mut batch = Vec::new();
    batch.extend(encode("POST", &path, &[("X-Request-Id", "req-1")], slow.as_bytes()));
    batch.extend(encode("GET", "/v1/health", &[("X-Request-Id", "req-2")], b""));
    batch.extend(encode("POST", &path, &[("X-Request-Id", "req-3")], fast.as_bytes()));
    batch.extend(encode("GET", "/nope", &[("X-Request-Id", "req-4")], b""));
    batch.extend(encode("POST", &path, &[("X-Request-Id", "req-5")], slow.as_bytes()));
    let mut c = d.client();
    c.send_raw(&batch).unwrap();
    let want = [
        ("req-1", 200, Some("slow")),
        ("req-2", 200, None),
        ("req-3", 200, Some("fast")),
        ("req-4", 404, None),
        ("req-5", 200, Some("slow")),
    ];
    for (id, status, result) in want {
        let r = c.read_response().unwrap();
        assert_eq!((r.header("x-request-id"), r.status), (Some(id), status), "responses out of order: {}", r.text());
        if let Some(result) = result {
            assert_eq!(r.json()["result"], result);
        }
    }
    // The connection is still usable afterwards.
    assert_eq!(c.request("GET", "/v1/health", &[], b"").status, 200);
}

#[test]
fn connection_close_is_honoured() {
    need_root!("connection_close_is_honoured");
    let d = shared();
    let t = unique("close");
    let mut c = d.client();
    let r = c.request("GET", "/v1/health", &[("Connection", "close")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("close"));
    assert!(c.closed_within(Duration::from_secs(20)), "the daemon closes after Connection: close");

    let mut c = d.client();
    let body = json!({"code": "module.exports = () => 'bye'"}).to_string();
    let r = c.request("POST", &format!("/v1/tenants/{t}/run"), &[("Connection", "close")], body.as_bytes());
    assert_eq!(r.json()["result"], "bye");
    assert!(c.closed_within(Duration::from_secs(20)));

    // HTTP/1.0 without keep-alive closes too.
    let mut c = d.client();
    c.send_raw(b"GET /v1/health HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
    assert!(c.closed_within(Duration::from_secs(20)));

    // Keep-alive by default: the same connection serves several requests.
    let mut c = d.client();
    for _ in 0..3 {
        let r = c.request("GET", "/v1/health", &[], b"");
        assert_eq!(r.status, 200);
        assert_ne!(r.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("close"));
    }
    // Requests pipelined behind a Connection: close are not answered.
    let mut c = d.client();
    let mut batch = encode("GET", "/v1/health", &[("Connection", "close"), ("X-Request-Id", "last-one")], b"");
    batch.extend(encode("GET", "/v1/health", &[("X-Request-Id", "after-close")], b""));
    c.send_raw(&batch).unwrap();
    assert_eq!(c.read_response().unwrap().header("x-request-id"), Some("last-one"));
    assert!(c.closed_within(Duration::from_secs(20)));
    assert!(c.pending().is_empty(), "nothing is answered after Connection: close: {:?}", String::from_utf8_lossy(c.pending()));
}

#[test]
fn two_hundred_concurrent_connections() {
    need_root!("two_hundred_concurrent_connections");
    let d = shared();
    let tenants: Vec<String> = (0..4).map(|_| unique("crowd")).collect();
    for t in &tenants {
        d.run_ok(t, "module.exports = () => 'warm'", Value::Null);
    }
    const N: usize = 200;
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let barrier = barrier.clone();
            let socket = d.socket.clone();
            let tenant = tenants[i % tenants.len()].clone();
            thread::spawn(move || {
                let mut c = Client::connect(&socket);
                barrier.wait();
                if i % 5 == 0 {
                    let r = c.request("GET", "/v1/health", &[], b"");
                    (r.status, Value::Null, r.text())
                } else {
                    let body = json!({"code": "module.exports = (d) => d * 3", "data": i}).to_string();
                    let r = c.request("POST", &format!("/v1/tenants/{tenant}/run"), &[], body.as_bytes());
                    let v = if r.status == 200 { r.json()["result"].clone() } else { Value::Null };
                    (r.status, v, r.text())
                }
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, result, text) = h.join().expect("a client thread");
        assert_eq!(status, 200, "client {i}: {text}");
        if i % 5 != 0 {
            assert_eq!(result, json!(i * 3), "client {i} got another's answer");
        }
    }
    wait_until(Duration::from_secs(30), "the connections to be closed", || d.health()["connections"].as_u64() <= Some(5));
    d.assert_healthy();
}

#[test]
fn client_leaving_mid_invocation() {
    need_root!("client_leaving_mid_invocation");
    let d = shared();
    let t = unique("leaver");
    d.run_ok(&t, "globalThis.kept = 'k'; module.exports = () => 1", Value::Null);
    for _ in 0..5 {
        let mut c = d.client();
        let body = json!({"code": "module.exports = () => new Promise((r) => setTimeout(() => r('late'), 500))"}).to_string();
        c.send("POST", &format!("/v1/tenants/{t}/run"), &[], body.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(100));
        drop(c);
    }
    // A client that leaves half-way through sending, too.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"POST /v1/tenants/x/run HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{").unwrap();
    drop(s);
    wait_until(Duration::from_secs(30), "the abandoned invocations to finish", || d.health()["invocations_in_flight"].as_u64() == Some(0));
    let env = d.run_ok(&t, "module.exports = () => globalThis.kept", Value::Null);
    assert_eq!(env["result"], "k", "the tenant's sandbox is unharmed by clients that left");
    d.assert_healthy();
}

#[test]
fn client_that_never_reads() {
    need_root!("client_that_never_reads");
    let d = shared();
    let t = unique("noread");
    // Ask for big answers and never read them: the daemon must not block on this client.
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let mut c = d.client();
        let body = json!({"code": "module.exports = () => 'z'.repeat(1000000)"}).to_string();
        let mut batch = Vec::new();
        for _ in 0..8 {
            batch.extend(encode("POST", &format!("/v1/tenants/{t}/run"), &[], body.as_bytes()));
        }
        c.send_raw(&batch).unwrap();
        sleepers.push(c);
    }
    let other = unique("reader");
    for i in 0..10 {
        let env = d.run_ok(&other, "module.exports = (d) => d", json!(i));
        assert_eq!(env["result"], i);
    }
    assert_eq!(d.get("/metrics").status, 200);
    drop(sleepers);
    d.assert_healthy();
}

#[test]
fn connections_that_open_and_close_without_a_word() {
    need_root!("connections_that_open_and_close_without_a_word");
    let d = shared();
    for _ in 0..300 {
        drop(UnixStream::connect(&d.socket).unwrap());
    }
    let idle: Vec<UnixStream> = (0..50).map(|_| UnixStream::connect(&d.socket).unwrap()).collect();
    d.assert_healthy();
    drop(idle);
    wait_until(Duration::from_secs(30), "the silent connections to be closed", || d.health()["connections"].as_u64() <= Some(5));
}
