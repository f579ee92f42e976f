//! `--store postgres://...` (issue 15): two or three real daemons on this machine sharing one real PostgreSQL,
//! a server of the test's own (initdb in a temporary directory, run as the `postgres` user on a Unix socket in
//! that directory only, stopped and removed when the test ends, panics included).
//!
//! Without PostgreSQL's binaries these tests print a loud SKIPPED, and fail under CI (`.ci/run` installs the
//! `postgresql` package). "Within a second" is not asserted: tests poll for the change, never time it.
mod common;

use std::time::Duration;

use common::cluster::Postgres;
use common::{wait_until, Daemon};
use serde_json::Value;

/// Longest a change may take to reach another node before the test calls it lost (a hang detector).
const SYNC_GUARD: Duration = Duration::from_secs(15);

fn node(name: &str, pg: &Postgres) -> Daemon {
    Daemon::start(name, &["--store", &pg.url(), "--node-name", name])
}

/// Nodes of one cluster share the secrets key (one file here, in the database's directory).
fn node_with_key(name: &str, pg: &Postgres) -> Daemon {
    let key = pg.dir.join("secrets.key");
    if !key.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key).expect("the key");
        std::io::Write::write_all(&mut f, &[7u8; 32]).expect("write the key");
    }
    Daemon::start(name, &["--store", &pg.url(), "--node-name", name, "--secrets-key", key.to_str().unwrap()])
}

fn put_secret(d: &Daemon, tenant: &str, name: &str, value: &str) -> common::Response {
    d.request("PUT", &format!("/v1/tenants/{tenant}/secrets/{name}"), &[("Content-Type", "text/plain")], value.as_bytes())
}

fn put_egress(d: &Daemon, tenant: &str, allow: &[&str]) -> common::Response {
    let body = serde_json::json!({ "allow": allow }).to_string();
    d.request("PUT", &format!("/v1/tenants/{tenant}/egress"), &[("Content-Type", "application/json")], body.as_bytes())
}

/// The task's result on this node, or its error kind.
fn result(d: &Daemon, tenant: &str, task: &str) -> Result<Value, String> {
    let r = d.run_task(tenant, task, b"{}");
    if r.status == 200 {
        Ok(r.json()["result"].clone())
    } else {
        Err(format!("{} {}", r.status, r.text()))
    }
}

fn wait_for(d: &Daemon, tenant: &str, task: &str, want: &Value, what: &str) {
    wait_until(SYNC_GUARD, what, || result(d, tenant, task).as_ref() == Ok(want));
}

fn metric(d: &Daemon, name: &str) -> Option<f64> {
    d.get("/metrics").text().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

const V1: &str = "module.exports = () => ({v: 1})\n";
const V2: &str = "module.exports = () => ({v: 2})\n";

#[test]
fn a_deploy_through_one_node_runs_on_the_other() {
    need_root!("a_deploy_through_one_node_runs_on_the_other");
    let Some(pg) = Postgres::start("deploy-sync") else { return };
    let (a, b) = (node("pg-a", &pg), node("pg-b", &pg));
    let t = common::unique("pgt");

    let r = a.put_task(&t, "hello", V1);
    assert_eq!(r.status, 201, "{}", r.text());
    wait_for(&b, &t, "hello", &serde_json::json!({"v": 1}), "node b runs the task deployed through node a");

    // A new version through the other node: 200 (the database knew the task), and back to the first.
    let r = b.put_task(&t, "hello", V2);
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(&a, &t, "hello", &serde_json::json!({"v": 2}), "node a runs the version deployed through node b");

    // A delete reaches the other node too.
    let r = a.request("DELETE", &format!("/v1/tenants/{t}/tasks/hello"), &[], b"");
    assert_eq!(r.status, 204, "{}", r.text());
    wait_until(SYNC_GUARD, "node b forgets the task deleted through node a", || b.run_task(&t, "hello", b"{}").status == 404);
    b.request("DELETE", &format!("/v1/tenants/{t}/tasks/hello"), &[], b"").assert_error(404, "not_found");

    // /metrics counts what each node committed, and what it followed from the database (all three changes).
    assert_eq!(metric(&a, "taskcell_store_changes_committed_total"), Some(2.0));
    assert_eq!(metric(&b, "taskcell_store_changes_committed_total"), Some(1.0));
    wait_until(SYNC_GUARD, "node b to have followed all three changes", || {
        metric(&b, "taskcell_store_changes_followed_total") == Some(3.0)
    });
    assert_eq!(metric(&b, "taskcell_store_version"), Some(3.0));
    assert_eq!(metric(&b, "taskcell_store_connected"), Some(1.0));
    assert_eq!(metric(&a, "taskcell_store_changes_refused_total"), Some(0.0));
}

#[test]
fn secrets_and_egress_lists_reach_the_other_node_and_the_database_holds_no_value() {
    need_root!("secrets_and_egress_lists_reach_the_other_node_and_the_database_holds_no_value");
    let Some(pg) = Postgres::start("secrets-egress") else { return };
    let (a, b) = (node_with_key("pg-a", &pg), node_with_key("pg-b", &pg));
    let t = common::unique("pgt");
    let value = "s3cret-only-in-sandboxes-9f2c";

    assert_eq!(put_secret(&a, &t, "TOKEN", value).status, 201);
    let read = "module.exports = (d, ctx) => ctx.secrets.TOKEN === undefined ? null : ctx.secrets.TOKEN";
    wait_until(SYNC_GUARD, "node b's sandbox sees the secret set through node a", || {
        let r = b.run(&t, read, Value::Null);
        r.status == 200 && r.json()["result"] == value
    });
    let dump = pg.dump();
    let contains = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    // The sealed file is a bytea, which pg_dump writes in hex: the value must be in neither form.
    let hex = |b: &[u8]| b.iter().map(|c| format!("{c:02x}")).collect::<String>();
    assert!(contains(b"taskcell_secrets") && contains(hex(b"\"TOKEN\"").as_bytes()), "the dump has the sealed secret");
    assert!(!contains(value.as_bytes()) && !contains(hex(value.as_bytes()).as_bytes()), "a secret's value is in pg_dump's output");

    // Deleted through the other node: gone on the first too.
    assert_eq!(b.request("DELETE", &format!("/v1/tenants/{t}/secrets/TOKEN"), &[], b"").status, 204);
    wait_until(SYNC_GUARD, "node a forgets the secret deleted through node b", || {
        let r = a.run(&t, read, Value::Null);
        r.status == 200 && r.json()["result"].is_null()
    });

    let r = put_egress(&a, &t, &["api.example.com:443"]);
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(SYNC_GUARD, "node b has the allow-list put through node a", || {
        b.get(&format!("/v1/tenants/{t}/egress")).json()["allow"] == serde_json::json!(["api.example.com:443"])
    });
}

#[test]
fn a_node_started_after_a_deploy_serves_it() {
    need_root!("a_node_started_after_a_deploy_serves_it");
    let Some(pg) = Postgres::start("late-node") else { return };
    let a = node("pg-a", &pg);
    let t = common::unique("pgt");
    assert_eq!(a.put_task(&t, "hello", V1).status, 201);
    assert_eq!(a.put_task(&t, "gone", V1).status, 201);

    // Caught up before it answers its first request: no polling here.
    let b = node("pg-b", &pg);
    assert_eq!(result(&b, &t, "hello"), Ok(serde_json::json!({"v": 1})));

    // Down while the task changes and another is deleted: back, it has both changes at once.
    b.signal(libc::SIGTERM);
    b.wait_exit(Duration::from_secs(15));
    assert_eq!(a.put_task(&t, "hello", V2).status, 200);
    assert_eq!(a.request("DELETE", &format!("/v1/tenants/{t}/tasks/gone"), &[], b"").status, 204);
    b.restart();
    assert_eq!(result(&b, &t, "hello"), Ok(serde_json::json!({"v": 2})));
    b.run_task(&t, "gone", b"{}").assert_error(404, "not_found");
}

#[test]
fn a_database_made_anew_is_followed_from_its_first_version() {
    need_root!("a_database_made_anew_is_followed_from_its_first_version");
    let Some(mut pg) = Postgres::start("db-anew") else { return };
    let a = node("pg-a", &pg);
    let t = common::unique("pgt");
    assert_eq!(a.put_task(&t, "old", V1).status, 201);
    wait_until(SYNC_GUARD, "node a has applied version 1", || a.health()["store"]["version"] == 1);

    // The new database's first change is version 1 again: node a must not take it for one it has.
    pg.recreate();
    let b = node("pg-b", &pg);
    assert_eq!(b.put_task(&t, "new", V2).status, 201);
    wait_for(&a, &t, "new", &serde_json::json!({"v": 2}), "node a follows the database made anew");
}

#[test]
fn losing_the_database_keeps_serving_and_refuses_deploys() {
    need_root!("losing_the_database_keeps_serving_and_refuses_deploys");
    let Some(mut pg) = Postgres::start("db-down") else { return };
    let (a, b) = (node("pg-a", &pg), node("pg-b", &pg));
    let t = common::unique("pgt");
    assert_eq!(a.put_task(&t, "hello", V1).status, 201);
    wait_for(&b, &t, "hello", &serde_json::json!({"v": 1}), "node b has the task before the database goes");

    assert_eq!(b.health()["store"]["connected"], true, "{}", b.health());
    pg.stop();
    wait_until(SYNC_GUARD, "node b's health says the store is gone", || b.health()["store"]["connected"] == false);
    for d in [&a, &b] {
        assert_eq!(result(d, &t, "hello"), Ok(serde_json::json!({"v": 1})), "a node without its database serves what it has");
    }
    let r = a.put_task(&t, "hello", V2);
    let e = r.assert_error(503, "store_unavailable");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("cannot be reached")), "{e}");
    assert_eq!(r.header("retry-after"), Some("1"));
    b.request("DELETE", &format!("/v1/tenants/{t}/tasks/hello"), &[], b"").assert_error(503, "store_unavailable");
    assert_eq!(result(&a, &t, "hello"), Ok(serde_json::json!({"v": 1})), "a refused deploy changes nothing");
    put_egress(&a, &t, &["api.example.com:443"]).assert_error(503, "store_unavailable");
    assert_eq!(a.get(&format!("/v1/tenants/{t}/egress")).json()["allow"], serde_json::json!([]));
    put_secret(&b, &t, "TOKEN", "refused-value").assert_error(503, "store_unavailable");
    assert_eq!(b.get(&format!("/v1/tenants/{t}/secrets")).json()["secrets"], serde_json::json!([]), "a refused secret is not held");
    assert_eq!(metric(&a, "taskcell_store_changes_refused_total"), Some(2.0));
    assert_eq!(metric(&b, "taskcell_store_changes_refused_total"), Some(2.0));
    assert_eq!(metric(&b, "taskcell_store_connected"), Some(0.0));

    pg.run();
    wait_until(SYNC_GUARD, "node a takes deploys again once the database is back", || a.put_task(&t, "hello", V2).status == 200);
    wait_for(&b, &t, "hello", &serde_json::json!({"v": 2}), "node b hears of the deploy made after the database came back");
    assert_eq!(b.health()["store"]["connected"], true, "{}", b.health());
    a.assert_running("after the database came back");
    b.assert_running("after the database came back");
}

#[test]
fn a_single_nodes_state_is_imported_and_served_by_the_nodes_of_the_store() {
    need_root!("a_single_nodes_state_is_imported_and_served_by_the_nodes_of_the_store");
    let Some(pg) = Postgres::start("import") else { return };
    // A single node, no --store: a task with settings, a plain one, a secret and an allow-list.
    let single = Daemon::start("pg-single", &["--node-name", "single"]);
    let t = common::unique("pgt");
    let webtask = "module.exports = function (ctx, cb) { cb(null, 'hello ' + ctx.data.name) }\n";
    let r = single.request(
        "PUT",
        &format!("/v1/tenants/{t}/tasks/greet?model=webtask"),
        &[("Content-Type", "application/javascript")],
        webtask.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(single.put_task(&t, "plain", V1).status, 201);
    let value = "imported-secret-value-7a1e";
    assert_eq!(put_secret(&single, &t, "TOKEN", value).status, 201);
    assert_eq!(put_egress(&single, &t, &["api.example.com:443"]).status, 200);
    single.signal(libc::SIGTERM);
    single.wait_exit(Duration::from_secs(15));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskcell"))
        .args(["store-import", "--state-dir", single.state.to_str().unwrap(), "--store", &pg.url()])
        .output()
        .expect("taskcell store-import");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "store-import: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("2 task(s), 1 egress allow-list(s), 1 secrets file(s) committed"), "{said}");
    assert!(!said.contains(value), "store-import printed a secret's value: {said}");

    // A new node of the store, with the key the secrets were sealed under, serves all of it.
    let key = single.dir.join("secrets.key");
    let b = Daemon::start("pg-b", &["--store", &pg.url(), "--node-name", "pg-b", "--secrets-key", key.to_str().unwrap()]);
    let r = b.run_task(&t, "greet", br#"{"name": "Ada"}"#);
    assert_eq!((r.status, r.json()["result"].clone()), (200, serde_json::json!("hello Ada")), "{}", r.text());
    assert_eq!(result(&b, &t, "plain"), Ok(serde_json::json!({"v": 1})));
    let read = "module.exports = (d, ctx) => ctx.secrets.TOKEN || null";
    assert_eq!(b.run_ok(&t, read, Value::Null)["result"], value, "{}", b.log_tail());
    assert_eq!(b.get(&format!("/v1/tenants/{t}/egress")).json()["allow"], serde_json::json!(["api.example.com:443"]));
    let dump = pg.dump();
    assert!(!dump.windows(value.len()).any(|w| w == value.as_bytes()), "a secret's value is in pg_dump's output");

    // The single node itself joins the store: it follows its own changes back and serves as before.
    let joined = Daemon::start(
        "pg-joined",
        &[
            "--store",
            &pg.url(),
            "--node-name",
            "joined",
            "--secrets-key",
            key.to_str().unwrap(),
            "--state-dir",
            single.state.to_str().unwrap(),
        ],
    );
    assert_eq!(result(&joined, &t, "plain"), Ok(serde_json::json!({"v": 1})));
    assert_eq!(joined.health()["store"]["version"], 4, "{}", joined.health());
    // b and joined name single's directory (its key): they go first.
    drop((joined, b));
    drop(single);

    // Bad use is refused with a clear word and exit 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskcell"))
        .args(["store-import", "--state-dir", "/nonexistent", "--store", &pg.url()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a state directory"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn runs_never_fail_and_the_nodes_agree_while_the_database_restarts_under_load() {
    need_root!("runs_never_fail_and_the_nodes_agree_while_the_database_restarts_under_load");
    let Some(mut pg) = Postgres::start("db-chaos") else { return };
    let (a, b) = (node("pg-a", &pg), node("pg-b", &pg));
    let t = common::unique("pgt");
    assert_eq!(a.put_task(&t, "hello", V1).status, 201);
    wait_for(&b, &t, "hello", &serde_json::json!({"v": 1}), "node b has the task before the load starts");

    // Clients on both nodes run the task without pause; a deployer pushes numbered versions through both
    // nodes in turn. The database is restarted three times under them.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (runs, failures, acked, refused) = std::thread::scope(|s| {
        let runners: Vec<_> = [&a, &b]
            .into_iter()
            .map(|d| {
                let (stop, t) = (&stop, &t);
                s.spawn(move || {
                    let (mut runs, mut failures) = (0u64, Vec::new());
                    let mut c = d.client();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r =
                            c.request("POST", &format!("/v1/tenants/{t}/tasks/hello/run"), &[("Content-Type", "application/json")], b"{}");
                        runs += 1;
                        if r.status != 200 {
                            failures.push(format!("{} {}", r.status, r.text()));
                        }
                    }
                    (runs, failures)
                })
            })
            .collect();
        let (a, b, t, stop) = (&a, &b, &t, &stop);
        let deployer = s.spawn(move || {
            let (mut acked, mut refused, mut version) = (None, 0u64, 1u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                version += 1;
                let through = if version % 2 == 0 { a } else { b };
                let r = through.put_task(t, "hello", &format!("module.exports = () => ({{v: {version}}})\n"));
                match r.status {
                    200 => acked = Some(version),
                    503 => {
                        assert_eq!(r.kind(), "store_unavailable", "{}", r.text());
                        refused += 1;
                    }
                    other => panic!("a deploy while the database restarts: {other} {}", r.text()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (acked, refused)
        });
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            pg.stop();
            std::thread::sleep(Duration::from_millis(700));
            pg.run();
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (acked, refused) = deployer.join().expect("the deployer");
        let (mut runs, mut failures) = (0, Vec::new());
        for r in runners {
            let (n, f) = r.join().expect("a runner");
            runs += n;
            failures.extend(f);
        }
        (runs, failures, acked, refused)
    });
    eprintln!("STORE CHAOS: {runs} runs, {} failed; last deploy acknowledged {acked:?}, {refused} refused with 503", failures.len());
    assert!(failures.is_empty(), "runs failed while the database restarted: {:?}", &failures[..failures.len().min(5)]);
    assert!(refused > 0, "no deploy was refused: the database never went away under the load");
    // Once it is back for good, both nodes settle on the last version the database acknowledged.
    let last = acked.expect("some deploy was acknowledged");
    for d in [&a, &b] {
        wait_for(d, &t, "hello", &serde_json::json!({"v": last}), "each node settles on the last acknowledged version");
        assert_eq!(d.health()["store"]["connected"], true);
        d.assert_running("after the database restarted under load");
    }
    assert_eq!(a.health()["store"]["version"], b.health()["store"]["version"]);
}

#[test]
fn a_database_on_tcp_is_reached_over_verified_tls_only() {
    need_root!("a_database_on_tcp_is_reached_over_verified_tls_only");
    let Some(pg) = Postgres::start_tls("tls") else { return };
    let ca = pg.dir.join("ca.pem").display().to_string();
    let t = common::unique("pgt");
    // sslmode=require, the certificate checked against the test's CA and the name localhost.
    let url = pg.tcp_url("localhost", "sslmode=require");
    let (a, b) = (
        Daemon::start("pg-tls-a", &["--store", &url, "--store-ca", &ca, "--node-name", "a"]),
        Daemon::start("pg-tls-b", &["--store", &url, "--store-ca", &ca, "--node-name", "b"]),
    );
    assert_eq!(a.health()["store"]["connected"], true, "{}", a.log_tail());
    assert_eq!(a.put_task(&t, "hello", V1).status, 201);
    wait_for(&b, &t, "hello", &serde_json::json!({"v": 1}), "node b follows over TLS");
    // The server saw TLS: pg_stat_ssl says so for every connection of the daemons (application_name taskcell).
    let said = pg.psql(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'taskcell'",
    );
    let (tls, all) = said.split_once('|').expect("two counts");
    assert!(all.parse::<u32>().unwrap() >= 2 && tls == all, "connections with TLS | all: {said}");

    // Without TLS (sslmode=disable) the server turns the node away: deploys are refused, nothing is changed.
    let plain = Daemon::start("pg-tls-plain", &["--store", &pg.tcp_url("localhost", "sslmode=disable"), "--store-ca", &ca]);
    assert_eq!(plain.health()["store"]["connected"], false);
    plain.put_task(&t, "other", V1).assert_error(503, "store_unavailable");
    // Without the CA (the system's roots only), and with the CA but a name the certificate is not for: the
    // node refuses the server.
    let unknown_ca = Daemon::start("pg-tls-noca", &["--store", &url]);
    let wrong_name = Daemon::start("pg-tls-name", &["--store", &pg.tcp_url("127.0.0.1", "sslmode=require"), "--store-ca", &ca]);
    for d in [&unknown_ca, &wrong_name] {
        assert_eq!(d.health()["store"]["connected"], false);
        d.put_task(&t, "other", V1).assert_error(503, "store_unavailable");
        assert!(std::fs::read_to_string(&d.log).unwrap().contains("certificate verify failed"), "{}", d.log_tail());
    }
    assert_eq!(a.run_task(&t, "other", b"{}").status, 404, "a refused deploy reached the database");
}
