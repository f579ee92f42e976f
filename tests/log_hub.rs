//! Live logs across nodes (`--log-hub-in`, `--log-hub-out`, `taskcell log-hub`): a real hub process and real
//! daemons on 127.0.0.1. A node's `/v1/logs` streams every node's events, each once, with its `node`; the
//! tenant filter holds; a hub that is absent or dies never fails a run, and what it lost is counted in
//! `/metrics` and reported on the stream (a `dropped` line) once it is back.
//!
//! zmq connects and subscribes in the background, so a test first sends probes until they come through: the
//! waits here only bound how long that may take; no test asserts a time.

#[macro_use]
mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::Value;

/// How many probes may go unseen before the hub is called broken.
const PROBES: usize = 120;

/// A port held by a listener that is no hub (it never speaks ZeroMQ), to be freed for the hub that comes later.
fn held_endpoint() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = format!("tcp://{}", l.local_addr().unwrap());
    (l, at)
}

fn node(name: &str, node: &str, hub_in: &str, hub_out: &str, more: &[&str]) -> Daemon {
    let mut flags = vec!["--node-name", node, "--log-hub-in", hub_in, "--log-hub-out", hub_out];
    flags.extend_from_slice(more);
    Daemon::start(name, &flags)
}

fn log_run(d: &Daemon, tenant: &str, message: &str) {
    let code = format!("module.exports = () => {{ console.log({}); return 1 }}", Value::from(message));
    let r = d.run(tenant, &code, Value::Null);
    assert_eq!(r.status, 200, "{}", r.describe());
}

fn is(e: &Value, message: &str, node: &str) -> bool {
    e["message"] == message && e["node"] == node
}

/// Send probes from `from` (node name `node`) for `tenant` until each stream has one: zmq has connected every
/// socket and passed every subscription on. Returns what each stream saw.
fn probe_until_through(from: &Daemon, node: &str, tenant: &str, streams: &mut [&mut LogStream]) -> Vec<Vec<Value>> {
    let mut seen: Vec<Vec<Value>> = vec![Vec::new(); streams.len()];
    for n in 0..PROBES {
        log_run(from, tenant, &format!("probe-{n}"));
        for (s, seen) in streams.iter_mut().zip(seen.iter_mut()) {
            seen.extend(s.drain());
        }
        let through =
            |seen: &Vec<Value>| seen.iter().any(|e| e["node"] == node && e["message"].as_str().is_some_and(|m| m.starts_with("probe-")));
        if seen.iter().all(through) {
            return seen;
        }
    }
    panic!("{PROBES} probes from {node} did not all come through the hub: {seen:?}");
}

fn metric(d: &Daemon, name: &str) -> Option<f64> {
    d.get("/metrics").text().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn every_node_streams_every_nodes_events_once() {
    need_root!("every_node_streams_every_nodes_events_once");
    let mut hub = Hub::start("hub", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0");
    let key = TokenKey::new();
    let tcp = ["--listen-tcp", "127.0.0.1:0", "--token-key", key.0.to_str().unwrap()];
    let a = node("hub-a", "node-a", &hub.input, &hub.output, &tcp);
    let b = node("hub-b", "node-b", &hub.input, &hub.output, &[]);
    let (t, other) = (unique("hubt"), unique("hubo"));
    let mut all = LogStream::open(&a, "/v1/logs");
    let mut only_t = LogStream::open(&a, &format!("/v1/logs?tenant={t}"));
    // A tenant's token on TCP follows its tenant's events only, from every node, without asking for them.
    let bearer = format!("Bearer {}", key.token(&t));
    let mut token_t = LogStream::on(Client::connect_tcp(tcp_addr(&a)), "/v1/logs", &[("Authorization", &bearer)]);
    probe_until_through(&b, "node-b", &t, &mut [&mut all, &mut only_t, &mut token_t]);
    // The other tenant's subscription is the empty one (all's): probes for it come through too.
    probe_until_through(&b, "node-b", &other, &mut [&mut all]);

    log_run(&b, &t, "from-b");
    log_run(&a, &t, "from-a");
    log_run(&b, &other, "other-from-b");
    log_run(&a, &other, "other-from-a");
    // Last, through the hub: anything of a's own that came back from the hub would be in by then.
    log_run(&a, &t, "end-a");
    log_run(&b, &t, "end-b");
    for (name, stream) in [("all", &mut all), ("only_t", &mut only_t), ("token_t", &mut token_t)] {
        let (mut end_a, mut end_b) = (false, false);
        let mut seen = stream.until("end-a and end-b", |e| {
            end_a |= is(e, "end-a", "node-a");
            end_b |= is(e, "end-b", "node-b");
            end_a && end_b
        });
        seen.extend(stream.drain());
        let count = |m: &str, n: &str| seen.iter().filter(|e| is(e, m, n)).count();
        assert_eq!(count("from-b", "node-b"), 1, "{name}: node b's event, once, with node b: {seen:?}");
        assert_eq!(count("from-a", "node-a"), 1, "{name}: node a's own event, once, with node a: {seen:?}");
        assert_eq!(count("end-a", "node-a") + count("end-b", "node-b"), 2, "{name}: {seen:?}");
        for e in &seen {
            assert!(e["node"] == "node-a" || e["node"] == "node-b", "{name}: every event names its node: {e}");
            assert!(e["time"].is_string() && e["level"] == "log" && e["task"].is_null() && e["requestId"].is_string(), "{e}");
        }
        if name == "all" {
            assert_eq!(count("other-from-b", "node-b") + count("other-from-a", "node-a"), 2, "{seen:?}");
        } else {
            assert!(seen.iter().all(|e| e["tenant"] == t.as_str()), "?tenant= lets through only its tenant, from any node: {seen:?}");
        }
    }
    // Both nodes are connected (a's publisher too, which its own stream does not need).
    for d in [&a, &b] {
        wait_until(Duration::from_secs(30), "the node's connection to the hub", || d.health()["log_hub"]["connected"] == true);
        assert_eq!(metric(d, "taskcell_log_hub_connected"), Some(1.0));
    }
    drop((all, only_t, token_t));
    let status = hub.signal(libc::SIGTERM);
    assert!(status.success(), "the hub exits cleanly on SIGTERM: {status}");
}

#[test]
fn an_absent_or_dead_hub_never_fails_a_run_and_its_losses_are_reported() {
    need_root!("an_absent_or_dead_hub_never_fails_a_run_and_its_losses_are_reported");
    let ((held_in, input), (held_out, output)) = (held_endpoint(), held_endpoint());
    // No hub yet (something that accepts TCP connections and never answers): the nodes serve all the same.
    let a = node("nohub-a", "node-a", &input, &output, &[]);
    let b = node("nohub-b", "node-b", &input, &output, &[]);
    let t = unique("nohub");
    let mut stream = LogStream::open(&a, &format!("/v1/logs?tenant={t}"));
    for n in 0..3 {
        log_run(&b, &t, &format!("unheard-{n}"));
    }
    // Counted by the publisher thread, after the runs answered.
    wait_until(Duration::from_secs(30), "b to count the 3 events it could not publish", || {
        metric(&b, "taskcell_log_hub_events_dropped_total").is_some_and(|n| n >= 3.0)
    });
    assert_eq!(metric(&b, "taskcell_log_hub_connected"), Some(0.0));
    assert_eq!(b.health()["log_hub"]["connected"], false);
    // a's own events reach its own stream without the hub.
    log_run(&a, &t, "local-a");
    stream.until("local-a", |e| is(e, "local-a", "node-a"));

    // The hub comes up where the nodes expect it: b's first event through it follows the report of what
    // b lost meanwhile, as a slow subscriber's drops are reported (before the next event).
    drop((held_in, held_out));
    let mut hub = Hub::start("hub2", &input, &output);
    let seen = probe_until_through(&b, "node-b", &t, &mut [&mut stream]).remove(0);
    let first_probe = seen.iter().position(|e| e["node"] == "node-b" && e["message"].is_string()).unwrap();
    let report = seen[..first_probe].iter().find(|e| e["node"] == "node-b" && e["dropped"].is_u64());
    let report = report.unwrap_or_else(|| panic!("no dropped line from node-b before its first event: {seen:?}"));
    assert!(report["dropped"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["tenant"], t.as_str());
    assert!(seen.iter().all(|e| !e["message"].as_str().is_some_and(|m| m.starts_with("unheard-"))), "{seen:?}");

    // The hub dies mid-test: runs still answer, and the losses are counted again.
    let status = hub.signal(libc::SIGKILL);
    assert!(!status.success());
    let before = metric(&b, "taskcell_log_hub_events_dropped_total").unwrap();
    let mut n = 0;
    wait_until(Duration::from_secs(30), "b to count events lost with the hub gone", || {
        n += 1;
        log_run(&b, &t, &format!("after-death-{n}"));
        metric(&b, "taskcell_log_hub_events_dropped_total").unwrap() > before
    });
    assert!(a.health()["status"] == "ok" && b.health()["status"] == "ok");
    log_run(&a, &t, "still-local-a");
    stream.until("still-local-a", |e| is(e, "still-local-a", "node-a"));
}

#[test]
fn a_hub_address_must_be_tcp() {
    // No daemon is started: the flag is refused before anything is made.
    let out = Command::new(env!("CARGO_BIN_EXE_taskcell")).args(["serve", "--log-hub-in", "127.0.0.1:5555"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp://HOST:PORT"));
    let out = Command::new(env!("CARGO_BIN_EXE_taskcell")).args(["log-hub", "--in", "tcp://127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
