//! The pool sizes itself (issue 14; docs/pool.md): a burst of new tenants raises its target from the minimum
//! by the demand seen, health says the target and why, every request of the burst is answered 200 (or 503
//! with `Retry-After`, never a hang), and once the window has passed quietly the pool is back at its minimum,
//! its extra sandboxes gone. The harness checks at the end that nothing is left behind. No time is asserted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{wait_until, Daemon};
use serde_json::json;

#[test]
fn a_burst_grows_the_pool_and_a_quiet_window_shrinks_it_back() {
    need_root!("a_burst_grows_the_pool_and_a_quiet_window_shrinks_it_back");
    let d = Daemon::start("pool-sizing", &["--pool-min", "2", "--pool-max", "24", "--pool-window-ms", "4000"]);
    let h = d.health();
    assert_eq!(h["pool"]["size"], 2, "{h}");
    assert_eq!(h["pool"]["sizing"]["min"], 2, "{h}");
    assert_eq!(h["pool"]["sizing"]["max"], 24, "{h}");
    assert!(h["pool"]["sizing"]["why"].as_str().unwrap().starts_with("the minimum"), "{h}");

    // 40 new tenants from 8 clients, one request each.
    let next = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (next, answers, socket) = (next.clone(), answers.clone(), d.socket.clone());
            thread::spawn(move || {
                let mut c = common::Client::connect(&socket);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 40 {
                        return;
                    }
                    let body = json!({"code": "module.exports = (d) => d.i", "data": {"i": i}}).to_string();
                    let r =
                        c.request("POST", &format!("/v1/tenants/burst-{i}/run"), &[("Content-Type", "application/json")], body.as_bytes());
                    let retry = r.header("retry-after").map(str::to_string);
                    answers.lock().unwrap().push((i, r.status, r.json(), retry));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), 40);
    let mut ok = 0;
    for (i, status, body, retry) in answers.iter() {
        match status {
            200 => {
                assert_eq!(body["result"], json!(i), "{body}");
                ok += 1;
            }
            503 => {
                assert_eq!(body["error"]["kind"], "overloaded", "{body}");
                assert!(retry.is_some(), "a 503 without Retry-After: {body}");
            }
            _ => panic!("tenant {i}: {status} {body}"),
        }
    }
    assert!(ok > 0, "no request of the burst was served");

    // The demand raised the target (the minimum plus the 40 tenants, within the maximum of 24).
    let h = d.health();
    assert_eq!(h["pool"]["size"], 24, "{h}");
    let why = h["pool"]["sizing"]["why"].as_str().unwrap().to_string();
    assert!(why.starts_with("the maximum") && why.contains("40 tenants"), "{why}");
    wait_until(Duration::from_secs(90), "the pool refilled to its raised target", || {
        let h = d.health();
        h["pool"]["idle"].as_u64() >= Some(24) || h["pool"]["size"] == 2
    });

    // Quiet for the window: back at the minimum, the extra sandboxes retired.
    wait_until(Duration::from_secs(60), "the pool back at its minimum", || {
        let h = d.health();
        h["pool"]["size"] == 2 && h["pool"]["idle"] == 2 && h["pool"]["starting"] == 0
    });
    let h = d.health();
    assert!(h["pool"]["sizing"]["why"].as_str().unwrap().starts_with("the minimum"), "{h}");
    let metrics = d.request("GET", "/metrics", &[], b"").text();
    let retired = metrics
        .lines()
        .find(|l| l.starts_with("taskcell_sandboxes_killed_total{reason=\"pool_shrink\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retired >= 1.0, "no pool sandbox was retired:\n{metrics}");
    d.assert_healthy();
}

/// New tenants one after another, one request each; every answer 200.
fn new_tenants(d: &Daemon, prefix: &str, n: usize) {
    let mut c = d.client();
    for i in 0..n {
        let body = json!({"code": "module.exports = (d) => d.i", "data": {"i": i}}).to_string();
        let r = c.request("POST", &format!("/v1/tenants/{prefix}-{i}/run"), &[("Content-Type", "application/json")], body.as_bytes());
        assert_eq!(r.status, 200, "tenant {prefix}-{i}: {}", r.text());
    }
}

#[test]
fn a_restart_keeps_the_demand_that_sized_the_pool_and_ignores_a_bad_record_of_it() {
    need_root!("a_restart_keeps_the_demand_that_sized_the_pool_and_ignores_a_bad_record_of_it");
    let d = Daemon::start("pool-restart", &["--pool-min", "2", "--pool-max", "10", "--pool-window-ms", "120000"]);
    let file = d.state.join("pool-demand.json");
    let restored = |log: &str| log.contains("the last run's demand (12 tenants") && log.contains("pool target 10");
    new_tenants(&d, "before", 12);
    let h = d.health();
    assert_eq!(h["pool"]["size"], 10, "{h}");

    // kill -9: what the daemon saved on its own (every 10 s while demand changes) is what the next start has.
    wait_until(Duration::from_secs(30), "the demand saved while running", || file.exists());
    d.kill9();
    d.restart();
    let h = d.health();
    assert_eq!(h["pool"]["size"], 10, "the target after kill -9 and a restart: {h}");
    let why = h["pool"]["sizing"]["why"].as_str().unwrap().to_string();
    assert!(why.starts_with("the maximum") && why.contains("12 tenants"), "{why}");
    // Logged by the start's own sizing, before the first refill, with the target it set.
    assert!(restored(&d.log_tail()), "{}", d.log_tail());
    wait_until(Duration::from_secs(90), "the restarted pool full at the target", || d.health()["pool"]["idle"].as_u64() >= Some(10));

    // A clean stop writes it again; the next start has it too, and no temporary file is left.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(15)).success(), "{}", d.log_tail());
    assert!(!d.state.join("pool-demand.json.tmp").exists());
    d.restart();
    assert_eq!(d.health()["pool"]["size"], 10);

    // Files that are not one (corrupt, over the size limit, saved by a clock far ahead): reported, ignored, and
    // the daemon starts with its minimum and serves.
    let bad: [(&[u8], &str); 3] = [
        (b"{\"saved_unix_s\": \"soon\", \"seconds\": [[1, -5]]", "is not a demand file"),
        (&[b' '; (4 << 20) + 1], "is over 4194304 bytes"),
        (b"{\"saved_unix_s\": 99999999999, \"seconds\": [[1, 50]]}", "ahead of this clock"),
    ];
    for (content, complaint) in bad {
        d.signal(libc::SIGTERM);
        assert!(d.wait_exit(Duration::from_secs(15)).success(), "{}", d.log_tail());
        std::fs::write(&file, content).unwrap();
        d.restart();
        let h = d.health();
        assert_eq!(h["pool"]["size"], 2, "{complaint}: {h}");
        assert!(h["pool"]["sizing"]["why"].as_str().unwrap().starts_with("the minimum"), "{h}");
        assert!(d.log_tail().contains(complaint), "{complaint}: {}", d.log_tail());
    }
    new_tenants(&d, "after", 3);
    d.assert_healthy();
}

/// The value of one `taskcell_sandboxes_killed_total` series (0 if it is not there yet).
fn killed(d: &Daemon, reason: &str) -> f64 {
    let metrics = d.request("GET", "/metrics", &[], b"").text();
    let series = format!("taskcell_sandboxes_killed_total{{reason=\"{reason}\"}}");
    metrics.lines().find(|l| l.starts_with(&series)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0)
}

/// Six new tenants on a daemon of `--max-sandboxes 6 --pool-size 2`, each once the pool has a sandbox
/// again (so that none waits, and none evicts another): at the end six tenants and an empty pool.
fn fill_to_the_cap(d: &Daemon) {
    for i in 0..6 {
        wait_until(Duration::from_secs(60), "a pool sandbox for the next tenant", || {
            let h = d.health();
            h["pool"]["starting"] == 0 && h["pool"]["idle"].as_u64() > Some(0)
        });
        let env = d.run_ok(&format!("quiet-{i}"), "module.exports = (d) => d.i", json!({"i": i}));
        assert_eq!((env["result"].clone(), env["cold"].clone()), (json!(i), json!(true)), "{env}");
    }
    assert_eq!(killed(d, "evicted"), 0.0, "a tenant waited for a sandbox");
}

/// At `--max-sandboxes`, tenants that have gone quiet give their places to the pool, least recently used
/// first, so that the next new tenant finds a booted sandbox; a tenant still at work keeps its own. With
/// `--pool-reclaim-idle-ms 0` the pool stays empty at the cap and a new tenant evicts one for itself.
#[test]
fn at_the_cap_tenants_gone_quiet_give_their_places_to_the_pool() {
    need_root!("at_the_cap_tenants_gone_quiet_give_their_places_to_the_pool");
    let d = Daemon::start("pool-reclaim", &["--max-sandboxes", "6", "--pool-size", "2", "--pool-reclaim-idle-ms", "2000"]);
    // Six tenants, each a pool hit: the cap is reached with the pool empty.
    fill_to_the_cap(&d);
    // One tenant goes on working; the rest go quiet, and the pool takes two of their places.
    let mut working = 0;
    wait_until(Duration::from_secs(60), "the pool refilled from quiet tenants' places", || {
        let env = d.run_ok("quiet-5", "module.exports = (d) => d.i", json!({"i": 5}));
        assert_eq!(env["result"], 5, "{env}");
        assert_eq!(env["cold"], false, "the tenant at work lost its sandbox: {env}");
        working += 1;
        let h = d.health();
        h["pool"]["idle"] == 2 && h["pool"]["starting"] == 0
    });
    assert!(working > 0);
    // The counter moves when the killed sandbox has been reaped, which may come after its replacement's boot.
    wait_until(Duration::from_secs(30), "two reclaimed sandboxes counted", || killed(&d, "reclaimed") >= 2.0);
    assert_eq!(killed(&d, "evicted"), 0.0, "no tenant waited, so none was evicted for one");
    let h = d.health();
    assert_eq!(h["sandboxes"]["tenants"], 4, "six tenants less the two reclaimed: {h}");
    // The least recently used went first: quiet-0 starts again in a fresh sandbox (a pool hit), and
    // a new tenant gets the other.
    let env = d.run_ok("quiet-0", "module.exports = (d) => d.i", json!({"i": 0}));
    assert_eq!((env["result"].clone(), env["cold"].clone()), (json!(0), json!(true)), "{env}");
    let env = d.run_ok("newcomer", "module.exports = (d) => d.i", json!({"i": 7}));
    assert_eq!((env["result"].clone(), env["cold"].clone()), (json!(7), json!(true)), "{env}");
    d.assert_healthy();
    drop(d);

    // Reclaiming off: at the cap the pool stays empty, and a new tenant evicts one idle tenant for itself.
    let d = Daemon::start("pool-no-reclaim", &["--max-sandboxes", "6", "--pool-size", "2", "--pool-reclaim-idle-ms", "0"]);
    fill_to_the_cap(&d);
    thread::sleep(Duration::from_millis(2500));
    let h = d.health();
    assert_eq!(h["pool"]["idle"], 0, "the pool took a tenant's place with reclaiming off: {h}");
    assert_eq!(killed(&d, "reclaimed"), 0.0);
    let env = d.run_ok("newcomer", "module.exports = (d) => d.i", json!({"i": 7}));
    assert_eq!(env["result"], 7, "{env}");
    wait_until(Duration::from_secs(30), "the newcomer's eviction counted", || killed(&d, "evicted") >= 1.0);
    d.assert_healthy();
}
