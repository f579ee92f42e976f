//! Tenants' secrets through the real daemon (spec 1.1, "Secrets"): write-only values, names listed, sealed
//! at rest under a key outside the state directory, delivered to the tenant's own sandboxes only, masked in
//! what tasks log, and nowhere else: not in the state directory's files, the daemon's log, `/metrics`,
//! `/v1/health` or an error message.
//!
//! Root required; see tests/common/mod.rs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use common::{unique, Daemon};
use serde_json::{json, Value};

static SHARED: OnceLock<Daemon> = OnceLock::new();

fn shared() -> &'static Daemon {
    Daemon::shared(&SHARED, "secrets", &["--pool-size", "2"])
}

fn put_secret(d: &Daemon, tenant: &str, name: &str, value: &[u8]) -> common::Response {
    d.request("PUT", &format!("/v1/tenants/{tenant}/secrets/{name}"), &[("Content-Type", "text/plain")], value)
}

/// Every file under `dir`, recursively, that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return hits };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[test]
fn a_secret_reaches_its_tenant_masked_and_nowhere_else() {
    need_root!("a_secret_reaches_its_tenant_masked_and_nowhere_else");
    let d = shared();
    let (t, other) = (unique("vault"), unique("neighbour"));
    let value = format!("sk_live_{}", unique("v"));
    let r = put_secret(d, &t, "STRIPE_KEY", value.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!((v["tenant"].as_str(), v["secret"].as_str()), (Some(t.as_str()), Some("STRIPE_KEY")));
    assert!(v["updated"].is_string() && !r.text().contains(&value), "the answer never repeats the value");
    assert_eq!(put_secret(d, &t, "STRIPE_KEY", value.as_bytes()).status, 200, "replaced");
    assert_eq!(put_secret(d, &t, "SHORT", b"abc").status, 201);

    // Listed by name only.
    let list = d.get(&format!("/v1/tenants/{t}/secrets"));
    assert_eq!(list.status, 200);
    assert!(!list.text().contains(&value));
    let names: Vec<String> = list.json()["secrets"].as_array().unwrap().iter().map(|s| s["secret"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["SHORT", "STRIPE_KEY"]);

    // The tenant's task sees it as ctx.secrets (frozen); what it logs is masked, in the envelope and on the
    // stream; what it throws is masked too.
    let mut sub = d.client();
    sub.send("GET", &format!("/v1/logs?tenant={t}"), &[], b"").unwrap();
    assert_eq!(sub.read_stream_head().unwrap().0, 200);
    let code = "module.exports = (d, ctx) => { console.log('using ' + ctx.secrets.STRIPE_KEY + ' and ' + ctx.secrets.SHORT); \
                ctx.secrets.STRIPE_KEY = 'changed'; return { len: ctx.secrets.STRIPE_KEY.length, frozen: Object.isFrozen(ctx.secrets), names: Object.keys(ctx.secrets) }; }";
    let env = d.run_ok(&t, code, Value::Null);
    assert_eq!(env["result"]["len"], value.len(), "{env}");
    assert_eq!(env["result"]["frozen"], true);
    assert_eq!(env["result"]["names"], json!(["SHORT", "STRIPE_KEY"]));
    assert_eq!(env["logs"][0]["message"], "using [secret:STRIPE_KEY] and abc", "values of 6+ characters are masked");
    let chunk = sub.read_chunk().unwrap().unwrap();
    let line = String::from_utf8_lossy(&chunk).into_owned();
    assert!(line.contains("[secret:STRIPE_KEY]") && !line.contains(&value), "{line}");
    let thrown = d.run(&t, "module.exports = (d, ctx) => { throw new Error('bad key ' + ctx.secrets.STRIPE_KEY) }", Value::Null);
    let body = thrown.assert_error(500, "task_error");
    assert!(!thrown.text().contains(&value), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("[secret:STRIPE_KEY]"), "{body}");

    // Another tenant never sees it.
    let env = d.run_ok(&other, "module.exports = (d, ctx) => ctx.secrets", Value::Null);
    assert_eq!(env["result"], json!({}));

    // Nowhere else: the state directory's files, the daemon's log, health, metrics.
    assert_eq!(files_containing(&d.state, value.as_bytes()), Vec::<String>::new(), "the value is sealed at rest");
    assert!(!std::fs::read_to_string(&d.log).unwrap_or_default().contains(&value), "the daemon's log holds the value");
    assert!(!d.get("/v1/health").text().contains(&value));
    assert!(!d.get("/metrics").text().contains(&value));
    // The key is outside the state directory, 0600.
    let key = d.dir.join("secrets.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);
    assert!(!key.starts_with(&d.state));
}

#[test]
fn a_changed_secret_is_seen_by_the_next_invocation_and_a_removed_one_is_gone() {
    need_root!("a_changed_secret_is_seen_by_the_next_invocation_and_a_removed_one_is_gone");
    let d = shared();
    let t = unique("rotate");
    let read = "module.exports = (d, ctx) => ctx.secrets.TOKEN === undefined ? null : ctx.secrets.TOKEN.length";
    assert_eq!(d.run_ok(&t, read, Value::Null)["result"], Value::Null);
    assert_eq!(put_secret(d, &t, "TOKEN", b"first-value").status, 201);
    assert_eq!(d.run_ok(&t, read, Value::Null)["result"], 11, "the same warm sandbox sees the new secret");
    assert_eq!(put_secret(d, &t, "TOKEN", b"second-longer-value").status, 200);
    assert_eq!(d.run_ok(&t, read, Value::Null)["result"], 19);
    let r = d.request("DELETE", &format!("/v1/tenants/{t}/secrets/TOKEN"), &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(d.run_ok(&t, read, Value::Null)["result"], Value::Null);
    d.request("DELETE", &format!("/v1/tenants/{t}/secrets/TOKEN"), &[], b"").assert_error(404, "not_found");
}

#[test]
fn secrets_survive_a_restart() {
    need_root!("secrets_survive_a_restart");
    let d = Daemon::start("secrets-restart", &["--pool-size", "1"]);
    let t = unique("durable");
    assert_eq!(put_secret(&d, &t, "DB_PASSWORD", b"correct horse battery").status, 201);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(std::time::Duration::from_secs(30)).success());
    d.restart();
    let env = d.run_ok(&t, "module.exports = (d, ctx) => ctx.secrets.DB_PASSWORD", Value::Null);
    assert_eq!(env["result"], "correct horse battery");
}

#[test]
fn bad_names_values_and_counts_are_400_and_store_nothing() {
    need_root!("bad_names_values_and_counts_are_400_and_store_nothing");
    let d = shared();
    let t = unique("badsec");
    for name in ["1ABC", "a-b", "a.b", "%2e%2e", &"X".repeat(65)] {
        let r = put_secret(d, &t, name, b"v");
        assert!(r.status == 400 || r.status == 404, "{name}: {} {}", r.status, r.text());
    }
    put_secret(d, &t, "TOO_BIG", &vec![b'x'; 4097]).assert_error(400, "bad_request");
    put_secret(d, &t, "NOT_UTF8", b"\xff\xfe").assert_error(400, "bad_request");
    put_secret(d, "BadTenant", "OK", b"v").assert_error(400, "bad_request");
    let listed = d.get(&format!("/v1/tenants/{t}/secrets")).json();
    assert_eq!(listed["secrets"], json!([]), "nothing was stored");
    // At most 100 a tenant.
    for i in 0..100 {
        assert_eq!(put_secret(d, &t, &format!("S{i}"), b"v").status, 201);
    }
    let r = put_secret(d, &t, "S100", b"v");
    r.assert_error(400, "bad_request");
    assert_eq!(put_secret(d, &t, "S7", b"replacing one is fine").status, 200);
    // A GET or POST on a secret is not allowed (values are write-only).
    d.request("GET", &format!("/v1/tenants/{t}/secrets/S7"), &[], b"").assert_error(405, "method_not_allowed");
}

#[test]
fn the_cli_sets_lists_and_removes_secrets_without_echoing_a_value() {
    need_root!("the_cli_sets_lists_and_removes_secrets_without_echoing_a_value");
    use std::io::Write;
    use std::process::{Command, Stdio};
    let d = shared();
    let t = unique("clisec");
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskcell"))
            .args(args)
            .arg("--socket")
            .arg(&d.socket)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("taskcell");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    // From stdin (out of shell history), its trailing newline not part of the value.
    let (code, text) = cli(&["secrets", "set", &t, "API_TOKEN"], Some(b"tok-from-stdin\n"));
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("tok-from-stdin"), "{text}");
    let env = d.run_ok(&t, "module.exports = (d, ctx) => ctx.secrets.API_TOKEN", Value::Null);
    assert_eq!(env["result"], "tok-from-stdin");
    let (code, text) = cli(&["secrets", "list", &t], None);
    assert_eq!(code, Some(0));
    assert!(text.contains("API_TOKEN") && !text.contains("tok-from-stdin"), "{text}");
    let (code, text) = cli(&["secrets", "rm", &t, "API_TOKEN"], None);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = cli(&["secrets", "rm", &t, "API_TOKEN"], None);
    assert_eq!(code, Some(1), "removing it twice is the daemon's not_found: {text}");
    assert!(text.contains("not_found"), "{text}");
    let (code, _) = cli(&["secrets", "frobnicate", &t], None);
    assert_eq!(code, Some(2), "a usage error");
}
