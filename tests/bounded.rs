//! No client and no sandbox can stop the daemon (issue 10, items 1-4): pipelined floods are answered in
//! turns with back-pressure, a client that never reads holds no one up, connections and log subscribers are
//! capped, and every frame a sandbox sends is checked by the daemon itself — tenant code here bypasses the
//! bootstrap and writes raw frames to the runtime's socket (fd 3), as an attacker would.
//!
//! Figures (RSS, a second client's latency) are printed with the prefix `BOUNDED`; nothing asserts a time:
//! reads time out only to detect a hang. Root required; see tests/common/mod.rs.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use common::{rss_kib, unique, wait_until, Client, Daemon};
use serde_json::{json, Value};

static SHARED: OnceLock<Daemon> = OnceLock::new();

fn shared() -> &'static Daemon {
    Daemon::shared(&SHARED, "bounded", &["--pool-size", "2"])
}

/// `n` health checks on a fresh connection each; their latencies, sorted.
fn health_latencies(d: &Daemon, n: usize) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let mut c = d.client();
            let r = c.request("GET", "/v1/health", &[], b"");
            assert_eq!(r.status, 200, "health answered while another client floods");
            let took = t.elapsed();
            thread::sleep(Duration::from_millis(20));
            took
        })
        .collect();
    out.sort();
    out
}

fn median(v: &[Duration]) -> Duration {
    v[v.len() / 2]
}

#[test]
fn pipelined_flood_that_never_reads_is_pushed_back_and_others_are_served() {
    need_root!("pipelined_flood_that_never_reads_is_pushed_back_and_others_are_served");
    let d = shared();
    let quiet = median(&health_latencies(d, 10));
    let rss_before = rss_kib(d.pid());
    // About 6 MB of requests answered at once (404), written without reading a byte of the answers. The
    // writer blocks once the daemon stops reading it: that is the back-pressure.
    const N: usize = 300_000;
    let one = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
    let flood = UnixStream::connect(&d.socket).expect("connect");
    flood.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut writer_side = flood.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        for _ in 0..N / 1000 {
            writer_side.write_all(&batch).expect("the daemon keeps reading the flood once its answers are read");
        }
    });
    // While it is blocked, others are served and the daemon's memory stays bounded.
    thread::sleep(Duration::from_millis(500));
    let during = health_latencies(d, 20);
    let rss_during = rss_kib(d.pid());
    let mut deploy = d.client();
    let t = unique("flooded");
    let env = d.run_ok(&t, "module.exports = (x) => x + 1", json!(41));
    assert_eq!(env["result"], 42);
    assert!(!writer.is_finished(), "the flood was absorbed without back-pressure: the daemon buffered {N} answers");
    // Now read every answer: each a 404, in order, none lost; the writer finishes.
    let mut reader = Client::from_stream(flood);
    for i in 0..N {
        let r = reader.read_response().unwrap_or_else(|e| panic!("answer {i} of {N}: {e}"));
        assert_eq!(r.status, 404, "answer {i}");
    }
    writer.join().unwrap();
    let rss_after = rss_kib(d.pid());
    println!(
        "BOUNDED pipelined flood of {N} requests, never read: daemon RSS {rss_before} KiB before, {rss_during} during, {rss_after} after; \
         a second client's health p50 {:?} quiet, {:?} during (max {:?})",
        quiet,
        median(&during),
        during.last().unwrap()
    );
    assert!(rss_during < rss_before + 64 * 1024, "the daemon's memory grew by {} KiB under the flood", rss_during - rss_before);
    drop(deploy.request("GET", "/v1/health", &[], b""));
    d.assert_healthy();
}

#[test]
fn a_flood_that_is_read_is_answered_in_turns_with_other_clients() {
    need_root!("a_flood_that_is_read_is_answered_in_turns_with_other_clients");
    let d = shared();
    // Several clients pipelining at once, reading as they go; a quiet client meanwhile.
    let floods: Vec<_> = (0..3)
        .map(|_| {
            let sock = d.socket.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&sock);
                let req = b"GET /v1/nothing HTTP/1.1\r\n\r\nPOST /v1/health HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
                let batch: Vec<u8> = req.iter().copied().cycle().take(req.len() * 2000).collect();
                let mut w = c.stream().try_clone().unwrap();
                let writer = thread::spawn(move || w.write_all(&batch).unwrap());
                for i in 0..4000 {
                    let r = c.read_response().unwrap();
                    assert_eq!(r.status, if i % 2 == 0 { 404 } else { 405 }, "answer {i} in order");
                }
                writer.join().unwrap();
            })
        })
        .collect();
    let during = health_latencies(d, 20);
    for f in floods {
        f.join().unwrap();
    }
    println!(
        "BOUNDED three pipelining clients reading as they go: a fourth's health p50 {:?}, max {:?}",
        median(&during),
        during.last().unwrap()
    );
    d.assert_healthy();
}

#[test]
fn connections_past_the_limit_are_refused_with_503_and_closed() {
    need_root!("connections_past_the_limit_are_refused_with_503_and_closed");
    let d = Daemon::start("bounded-conns", &["--pool-size", "1", "--max-connections", "8", "--max-log-subscribers", "2"]);
    let mut held: Vec<Client> = (0..8)
        .map(|_| {
            let mut c = d.client();
            assert_eq!(c.request("GET", "/v1/health", &[], b"").status, 200);
            c
        })
        .collect();
    for _ in 0..3 {
        let mut extra = d.client();
        let r = extra.read_response().expect("the refused connection is told why");
        r.assert_error(503, "overloaded");
        assert!(r.header("Retry-After").is_some());
        assert!(extra.closed_within(Duration::from_secs(20)), "a refused connection is closed");
    }
    // The held ones still work; once one closes, a new client is served again.
    assert_eq!(held[3].request("GET", "/v1/health", &[], b"").status, 200);
    drop(held.pop());
    wait_until(Duration::from_secs(10), "a closed connection frees its place", || {
        let mut c = d.client();
        c.try_request("GET", "/v1/health", &[], b"").is_ok_and(|r| r.status == 200)
    });
    drop(held);
    // Log subscribers: two stream, the third is refused.
    let subs: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = d.client();
            c.send("GET", "/v1/logs", &[], b"").unwrap();
            assert_eq!(c.read_stream_head().unwrap().0, 200);
            c
        })
        .collect();
    let mut third = d.client();
    third.request("GET", "/v1/logs", &[], b"").assert_error(503, "overloaded");
    drop(subs);
    wait_until(Duration::from_secs(10), "a subscriber's place is freed when it leaves", || {
        let mut c = d.client();
        c.send("GET", "/v1/logs", &[], b"").unwrap();
        c.read_stream_head().is_ok_and(|(s, _)| s == 200)
    });
    let m = d.get("/metrics").text();
    assert!(m.lines().any(|l| l.starts_with("taskcell_connections_refused_total ") && !l.ends_with(" 0")), "{m}");
}

#[test]
fn a_client_that_never_finishes_its_request_is_cut_off() {
    need_root!("a_client_that_never_finishes_its_request_is_cut_off");
    let d = shared();
    // A slowloris: one byte a second, never the end of the head. The request's time runs from its first byte.
    let mut c = d.client();
    let start = Instant::now();
    let mut closed = false;
    for b in b"GET /v1/health HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat_n(&b'a', 60)) {
        if c.send_raw(&[*b]).is_err() {
            closed = true;
            break;
        }
        if c.closed_within(Duration::from_millis(1000)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a request trickled for {:?} is still held open", start.elapsed());
    let answer = String::from_utf8_lossy(c.pending()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

// ---------- sandboxes that bypass the bootstrap ----------

/// Tenant code that writes `frames` (built in JavaScript by `build`) raw to the runtime's socket, fd 3.
fn raw_frames(build: &str) -> String {
    format!(
        r#"module.exports = async () => {{
            const fs = require('fs');
            const frame = (type, id, meta, body) => {{
                const m = Buffer.from(meta === null ? '' : JSON.stringify(meta));
                const b = Buffer.isBuffer(body) ? body : Buffer.from(body || '');
                const h = Buffer.alloc(13);
                h.writeUInt32BE(9 + m.length + b.length, 0); h.writeUInt8(type, 4); h.writeUInt32BE(id, 5); h.writeUInt32BE(m.length, 9);
                return Buffer.concat([h, m, b]);
            }};
            const out = [];
            {build}
            const all = Buffer.concat(out);
            let off = 0;
            while (off < all.length) {{
                try {{ off += fs.writeSync(3, all, off); }} catch (e) {{ if (e.code !== 'EAGAIN') throw e; await new Promise(r => setTimeout(r, 1)); }}
            }}
            await new Promise(r => setTimeout(r, 3000));
            return 'not killed';
        }};"#
    )
}

fn assert_killed_for_protocol(d: &Daemon, tenant: &str, build: &str, what: &str) {
    let r = d.run(tenant, &raw_frames(build), Value::Null);
    let body = r.assert_error(502, "sandbox_crashed");
    let msg = body["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("protocol"), "{what}: {msg}");
    // The tenant's next request gets a fresh sandbox.
    let env = d.run_ok(tenant, "module.exports = () => 'fresh'", Value::Null);
    assert_eq!(env["result"], "fresh", "{what}");
    assert_eq!(env["cold"], true, "{what}: the broken sandbox was not reused");
}

#[test]
fn answers_of_the_wrong_kind_or_for_invocations_a_sandbox_does_not_hold_kill_it() {
    need_root!("answers_of_the_wrong_kind_or_for_invocations_a_sandbox_does_not_hold_kill_it");
    let d = shared();
    let t = unique("liar");
    // A Compiled (type 20) for every id that could be its own Run's: its cache bytes must never become a
    // result. Ids are handed out in sequence, so one of these is the run's.
    assert_killed_for_protocol(
        d,
        &t,
        "for (let id = 1; id < 20000; id++) out.push(frame(20, id, null, '\"stolen\"'));",
        "Compiled for a run",
    );
    // Results (type 17) for every id: one may be its own run's (a valid answer, as returning the value
    // would be), the rest are others' invocations or none: the sandbox is killed, and another tenant's
    // invocation in flight meanwhile gets its own answer.
    let other = unique("victim");
    let socket = d.socket.clone();
    let slow = thread::spawn(move || {
        let body = json!({"code": "module.exports = () => new Promise(r => setTimeout(() => r('mine'), 1500))"}).to_string();
        Client::connect(&socket).request("POST", &format!("/v1/tenants/{other}/run"), &[], body.as_bytes()).json()
    });
    let r = d.run(&t, &raw_frames("for (let id = 1; id < 20000; id++) out.push(frame(17, id, null, '\"forged\"'));"), Value::Null);
    assert!(r.status == 502 || (r.status == 200 && r.json()["result"] == "forged"), "{} {}", r.status, r.text());
    let env = d.run_ok(&t, "module.exports = () => 'fresh'", Value::Null);
    assert_eq!(env["cold"], true, "a sandbox that answered invocations it does not hold was not killed");
    assert_eq!(slow.join().unwrap()["result"], "mine", "another tenant's invocation got its own answer");
    // A Result whose body is not one JSON value.
    assert_killed_for_protocol(
        d,
        &t,
        "for (let id = 1; id < 20000; id++) out.push(frame(17, id, null, '{\"a\":1} {\"b\":'));",
        "non-JSON Result",
    );
    // A Ready after start-up, and a Run (a frame only the daemon sends).
    assert_killed_for_protocol(d, &t, "out.push(frame(16, 0, {pid: 1, node: 'v0'}, ''));", "late Ready");
    assert_killed_for_protocol(
        d,
        &t,
        "out.push(frame(1, 7, {tenant: 'x', requestId: 'r', key: 'k', sourceLen: 0}, 'null'));",
        "Run from a sandbox",
    );
    // Garbage.
    assert_killed_for_protocol(d, &t, "out.push(Buffer.from('\\xff\\xff\\xff\\xff garbage'));", "an oversized length");
    let m = d.get("/metrics").text();
    assert!(m.lines().any(|l| l.starts_with("taskcell_sandbox_protocol_errors_total ") && !l.ends_with(" 0")), "{m}");
    d.assert_healthy();
}

#[test]
fn a_raw_log_frame_of_megabytes_is_cut_to_the_cap_everywhere() {
    need_root!("a_raw_log_frame_of_megabytes_is_cut_to_the_cap_everywhere");
    let d = shared();
    let t = unique("biglog");
    let mut sub = d.client();
    sub.send("GET", &format!("/v1/logs?tenant={t}"), &[], b"").unwrap();
    assert_eq!(sub.read_stream_head().unwrap().0, 200);
    // 4 MiB in one Log frame (type 19, id 0), sent past the bootstrap; and through console.log for the
    // envelope's cap.
    let code = raw_frames("out.push(frame(19, 0, {level: 'log'}, Buffer.alloc(4 << 20, 0x61)));")
        .replace("return 'not killed';", "console.log('b'.repeat(3 << 20)); return 'done';")
        .replace("await new Promise(r => setTimeout(r, 3000));", "");
    let env = d.run_ok(&t, &code, Value::Null);
    assert_eq!(env["result"], "done");
    let logs = env["logs"].as_array().unwrap();
    let total: usize = logs.iter().map(|l| l["message"].as_str().unwrap_or_default().len()).sum();
    assert!(total <= (64 << 10) + 512, "the envelope's logs hold {total} bytes");
    assert!(logs.last().unwrap()["message"].as_str().unwrap().contains("truncated"), "{:?}", logs.last());
    // On the stream: both lines arrive, each cut to 64 KiB with a note.
    let mut seen = 0;
    while seen < 2 {
        let chunk = sub.read_chunk().unwrap().expect("the stream goes on");
        for line in String::from_utf8_lossy(&chunk).lines() {
            let ev: Value = serde_json::from_str(line).unwrap();
            let Some(msg) = ev["message"].as_str() else { continue };
            assert!(msg.len() <= (64 << 10) + 256, "a streamed log line of {} bytes", msg.len());
            assert!(msg.contains("truncated"), "{}", &msg[msg.len().saturating_sub(200)..]);
            seen += 1;
        }
    }
    d.assert_healthy();
}

#[test]
fn a_frame_left_half_sent_kills_the_sandbox() {
    need_root!("a_frame_left_half_sent_kills_the_sandbox");
    let d = Daemon::start("bounded-partial", &["--pool-size", "1", "--timeout-ms", "30000"]);
    let t = unique("half");
    // A header promising 1000 bytes, then nothing: the bootstrap's own answer becomes part of that frame,
    // which never completes. The daemon does not wait for the invocation's 30 s.
    let code = raw_frames("const h = Buffer.alloc(13); h.writeUInt32BE(1000, 0); h.writeUInt8(19, 4); out.push(h);")
        .replace("await new Promise(r => setTimeout(r, 3000));", "");
    let started = Instant::now();
    let r = d.run(&t, &code, Value::Null);
    let body = r.assert_error(502, "sandbox_crashed");
    assert!(body["error"]["message"].as_str().unwrap().contains("protocol"), "{body}");
    println!("BOUNDED a half-sent frame ended its invocation after {:?} (time limit 30 s)", started.elapsed());
    assert_eq!(d.run_ok(&t, "module.exports = () => 1", Value::Null)["result"], 1);
}

#[test]
fn code_caches_stay_within_the_tenant_share() {
    need_root!("code_caches_stay_within_the_tenant_share");
    let d = Daemon::start("bounded-caches", &["--pool-size", "1", "--code-cache-bytes", "4M"]);
    let t = unique("greedy");
    // Sources of ~110 KB of parenthesised functions (compiled at once: caches of ~420 KB each), whose caches
    // add up to three times the tenant's share of 1 MiB.
    for i in 0..8 {
        let body: String = (0..2000).map(|j| format!("const f{j} = (function (a) {{ return a * {j} + {i}; }});\n")).collect();
        let source = format!("{body}module.exports = () => f1({i});");
        let r = d.put_task(&t, &format!("t{i}"), &source);
        assert!(r.status == 201 || r.status == 200, "{} {}", r.status, r.text());
    }
    let h = d.health();
    let caches = &h["code_caches"];
    println!("BOUNDED code caches after 8 deploys of ~200 KB: {caches}");
    assert!(caches["bytes"].as_u64().unwrap() > 0, "no code cache was kept at all: {caches}");
    assert!(caches["largest_tenant_bytes"].as_u64().unwrap() <= caches["tenant_limit"].as_u64().unwrap(), "{caches}");
    assert!(caches["bytes"].as_u64().unwrap() <= caches["limit"].as_u64().unwrap(), "{caches}");
    // Every task still runs, with or without its cache.
    for i in 0..8 {
        let r = d.run_task(&t, &format!("t{i}"), b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
