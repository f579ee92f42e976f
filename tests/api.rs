//! The v1 API of `taskcell serve`, endpoint by endpoint and error kind by error kind, through the real Unix
//! socket of a real daemon (no mocks). See shared/spec/api.md and docs/api.md.
//!
//! Most tests share one daemon (each with tenants of its own); those that need special flags (time and memory
//! limits) or stop the daemon (kill -9, SIGTERM) start their own. Root required; see tests/common/mod.rs.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::{unique, wait_until, Client, Daemon};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

static SHARED: OnceLock<Daemon> = OnceLock::new();

fn shared() -> &'static Daemon {
    Daemon::shared(&SHARED, "api", &["--pool-size", "3"])
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

// ---------- the run envelope ----------

#[test]
fn run_envelope_has_result_logs_cold_and_duration() {
    need_root!("run_envelope_has_result_logs_cold_and_duration");
    let d = shared();
    let t = unique("env");
    let code = r#"module.exports = (data) => {
        console.log('one', 1);
        console.info('two');
        console.warn('three');
        console.error('four');
        console.debug('five');
        return {got: data, n: 42};
    }"#;
    let first = d.run_ok(&t, code, json!({"a": [1, 2]}));
    assert_eq!(first["result"], json!({"got": {"a": [1, 2]}, "n": 42}));
    let logs: Vec<(String, String)> = first["logs"]
        .as_array()
        .expect("logs array")
        .iter()
        .map(|l| (l["level"].as_str().unwrap().to_string(), l["message"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = [("log", "one 1"), ("info", "two"), ("warn", "three"), ("error", "four"), ("debug", "five")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(logs, want);
    assert_eq!(first["cold"], true, "first invocation of a tenant is cold: {first}");
    assert!(first["duration_us"].as_u64().is_some(), "duration_us is a whole number: {first}");
    let second = d.run_ok(&t, code, json!(null));
    assert_eq!(second["cold"], false, "second invocation reuses the tenant's sandbox: {second}");
    assert_eq!(second["result"]["got"], Value::Null);
    assert!(second["duration_us"].as_u64().is_some());
    // Logs are per invocation: the second has its own five lines, not ten.
    assert_eq!(second["logs"].as_array().unwrap().len(), 5);
}

#[test]
fn ctx_and_request_ids() {
    need_root!("ctx_and_request_ids");
    let d = shared();
    let t = unique("ctx");
    let r = d.run(&t, "module.exports = (d, ctx) => ctx", Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    let env = r.json();
    let id = r.header("x-request-id").expect("X-Request-Id header").to_string();
    assert!(!id.is_empty());
    // Version 1.1 adds the tenant's secrets (none here) to the taskcell model's ctx.
    assert_eq!(env["result"], json!({"tenant": t, "task": null, "requestId": id, "secrets": {}}));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // A client's own id is echoed, in the header and in ctx.
    let body = json!({"code": "module.exports = (d, ctx) => ctx.requestId"}).to_string();
    let r = d.request("POST", &format!("/v1/tenants/{t}/run"), &[("X-Request-Id", "my-trace-0042")], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("my-trace-0042"));
    assert_eq!(r.json()["result"], "my-trace-0042");

    // Ids the daemon makes differ between requests.
    let a = d.get("/v1/health");
    let b = d.get("/v1/health");
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));

    // A named task sees its own name.
    assert_eq!(d.put_task(&t, "whoami", "module.exports = (d, ctx) => ctx").status, 201);
    let r = d.run_task(&t, "whoami", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(r.json()["result"], json!({"tenant": t, "task": "whoami", "requestId": id, "secrets": {}}));
}

#[test]
fn async_callback_and_sync_styles() {
    need_root!("async_callback_and_sync_styles");
    let d = shared();
    let t = unique("styles");
    let cases = [
        ("module.exports = async (d) => { await new Promise(r => setTimeout(r, 20)); return d * 2 }", json!(21), json!(42)),
        ("module.exports = (d) => Promise.resolve(d + '!')", json!("hi"), json!("hi!")),
        ("module.exports = (d, ctx, cb) => setTimeout(() => cb(null, {cb: d}), 10)", json!(7), json!({"cb": 7})),
        ("module.exports = function (d, ctx, cb) { cb(undefined, [d, ctx.tenant]) }", json!(true), json!([true, t])),
        ("module.exports = (d) => d", json!({"x": [1, "two", null]}), json!({"x": [1, "two", null]})),
        ("module.exports = () => undefined", json!(1), Value::Null),
        ("module.exports = async () => {}", json!(1), Value::Null),
        ("module.exports = (d, ctx, cb) => cb(null)", json!(1), Value::Null),
        ("exports.ignored = 1; module.exports = () => 'module.exports wins'", Value::Null, json!("module.exports wins")),
        ("const os = require('os'); module.exports = () => typeof os.cpus", Value::Null, json!("function")),
    ];
    for (code, data, want) in cases {
        let env = d.run_ok(&t, code, data);
        assert_eq!(env["result"], want, "code {code}");
    }
}

#[test]
fn task_errors() {
    need_root!("task_errors");
    let d = shared();
    let t = unique("errs");
    let cases = [
        ("module.exports = () => { console.log('before'); throw new Error('thrown-xyz') }", "thrown-xyz"),
        ("module.exports = async () => { throw new TypeError('async-thrown') }", "async-thrown"),
        ("module.exports = () => Promise.reject(new Error('rejected-abc'))", "rejected-abc"),
        ("module.exports = (d, ctx, cb) => setTimeout(() => cb(new Error('callback-err')), 5)", "callback-err"),
        ("module.exports = () => { throw 'a plain string' }", "a plain string"),
        ("throw new Error('module-body-throws')", "module-body-throws"),
        ("module.exports = 5", "module.exports"),
        ("module.exports = () => BigInt(1)", "BigInt"),
        ("module.exports = () => () => 1", "function"),
        ("module.exports = () => { const a = {}; a.a = a; return a }", "circular"),
        ("module.exports = () => 'x'.repeat(1 << 20)", "1048576"),
    ];
    for (code, needle) in cases {
        let r = d.run(&t, code, Value::Null);
        let v = r.assert_error(500, "task_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.to_lowercase().contains(&needle.to_lowercase()), "message of {code:?} should name {needle:?}: {msg}");
        assert!(v["logs"].is_array(), "an invocation's error carries its logs: {v}");
    }
    // Logs written before the failure are in the error body.
    let r = d.run(&t, "module.exports = () => { console.log('before'); throw new Error('x') }", Value::Null);
    let v = r.assert_error(500, "task_error");
    assert_eq!(v["logs"][0]["message"], "before");
    // The sandbox survived all of it: the tenant's next run is warm.
    let env = d.run_ok(&t, "module.exports = () => 'fine'", Value::Null);
    assert_eq!((env["result"].clone(), env["cold"].clone()), (json!("fine"), json!(false)));
    // A result just under the limit is fine.
    let env = d.run_ok(&t, "module.exports = () => 'y'.repeat(1000000)", Value::Null);
    assert_eq!(env["result"].as_str().map(str::len), Some(1_000_000));
}

#[test]
fn logs_are_capped_with_a_note() {
    need_root!("logs_are_capped_with_a_note");
    let d = shared();
    let t = unique("logcap");
    let code = "module.exports = () => { for (let i = 0; i < 5000; i++) console.log('line ' + i + ' ' + 'z'.repeat(100)); return 'done' }";
    let env = d.run_ok(&t, code, Value::Null);
    assert_eq!(env["result"], "done");
    let logs = env["logs"].as_array().unwrap();
    let total: usize = logs.iter().map(|l| l["message"].as_str().unwrap().len()).sum();
    assert!(total <= 64 * 1024 + 512, "logs hold {total} bytes, over the 64 KiB cap");
    assert!(total >= 60 * 1024, "logs hold only {total} bytes: the cap is 64 KiB");
    assert_eq!(logs[0]["message"].as_str().unwrap(), format!("line 0 {}", "z".repeat(100)));
    let last = logs.last().unwrap()["message"].as_str().unwrap();
    assert!(last.contains("truncated"), "the last entry says the logs were truncated: {last}");
    // The next invocation has a fresh budget.
    let env = d.run_ok(&t, "module.exports = () => { console.log('fresh'); return 1 }", Value::Null);
    assert_eq!(env["logs"], json!([{"level": "log", "message": "fresh"}]));
}

// ---------- named tasks ----------

#[test]
fn task_crud() {
    need_root!("task_crud");
    let d = shared();
    let t = unique("crud");
    let v1 = "module.exports = (d) => ({v: 1, d})\n";
    let v2 = "module.exports = (d) => ({v: 2, d}) // é\n";

    let r = d.get(&format!("/v1/tenants/{t}/tasks"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"tasks": []}));

    let r = d.put_task(&t, "hello", v1);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!({"tenant": t, "task": "hello", "sha256": sha256_hex(v1.as_bytes()), "size": v1.len()}));

    let r = d.put_task(&t, "hello", v2);
    assert_eq!(r.status, 200, "replacing answers 200: {}", r.text());
    assert_eq!(r.json(), json!({"tenant": t, "task": "hello", "sha256": sha256_hex(v2.as_bytes()), "size": v2.len()}));

    let r = d.get(&format!("/v1/tenants/{t}/tasks/hello"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, v2.as_bytes());
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/javascript")), "{:?}", r.headers);
    assert_eq!(r.header("etag").map(str::to_string), Some(format!("\"{}\"", sha256_hex(v2.as_bytes()))));

    assert_eq!(d.put_task(&t, "other", v1).status, 201);
    let r = d.get(&format!("/v1/tenants/{t}/tasks"));
    assert_eq!(r.status, 200);
    let mut tasks = r.json()["tasks"].as_array().unwrap().clone();
    tasks.sort_by_key(|x| x["task"].as_str().unwrap().to_string());
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert_eq!(tasks[0]["task"], "hello");
    assert_eq!(tasks[0]["sha256"], sha256_hex(v2.as_bytes()));
    assert_eq!(tasks[0]["size"], v2.len());
    assert_eq!(tasks[1]["task"], "other");
    for task in &tasks {
        let updated = task["updated"].as_str().unwrap_or_else(|| panic!("updated is a string: {task}"));
        assert!(updated.len() >= 20 && updated.starts_with("20"), "updated looks like an RFC 3339 time: {updated}");
    }

    let r = d.request("DELETE", &format!("/v1/tenants/{t}/tasks/hello"), &[], b"");
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    d.request("DELETE", &format!("/v1/tenants/{t}/tasks/hello"), &[], b"").assert_error(404, "not_found");
    d.get(&format!("/v1/tenants/{t}/tasks/hello")).assert_error(404, "not_found");
    d.run_task(&t, "hello", b"").assert_error(404, "not_found");
    d.run_task(&t, "never-deployed", b"{}").assert_error(404, "not_found");
    let r = d.get(&format!("/v1/tenants/{t}/tasks"));
    assert_eq!(r.json()["tasks"].as_array().unwrap().len(), 1);
    // A tenant nobody has heard of has no tasks (not an error).
    let r = d.get(&format!("/v1/tenants/{}/tasks", unique("nobody")));
    assert_eq!((r.status, r.json()), (200, json!({"tasks": []})));
}

#[test]
fn compile_errors_store_nothing() {
    need_root!("compile_errors_store_nothing");
    let d = shared();
    let t = unique("compile");
    let bad = "module.exports = (d) => {\n  return d +;\n}\n";
    let r = d.put_task(&t, "broken", bad);
    let v = r.assert_error(400, "compile_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 2"), "the message names the line: {msg}");
    assert!(msg.contains("column"), "the message names the column: {msg}");
    d.get(&format!("/v1/tenants/{t}/tasks/broken")).assert_error(404, "not_found");
    d.run_task(&t, "broken", b"").assert_error(404, "not_found");
    assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks")).json(), json!({"tasks": []}));
    let dir = d.state.join("tasks").join(&t);
    let files: Vec<String> =
        std::fs::read_dir(&dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    assert!(files.is_empty(), "nothing stored for a source that does not compile: {files:?}");

    // A good version deploys afterwards; a bad replacement keeps the good one.
    assert_eq!(d.put_task(&t, "broken", "module.exports = () => 'good'").status, 201);
    d.put_task(&t, "broken", "module.exports = ) =>").assert_error(400, "compile_error");
    assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks/broken")).body, b"module.exports = () => 'good'");
    assert_eq!(d.run_task(&t, "broken", b"").json()["result"], "good");

    // Ad-hoc code that does not compile.
    d.run(&t, "module.exports = function ( {", Value::Null).assert_error(400, "compile_error");
    // Non-UTF-8 source.
    let r = d.request("PUT", &format!("/v1/tenants/{t}/tasks/bin"), &[], b"module.exports = () => '\xff\xfe'");
    assert_eq!(r.status, 400, "{}", r.text());
    d.get(&format!("/v1/tenants/{t}/tasks/bin")).assert_error(404, "not_found");
}

#[test]
fn task_input_data() {
    need_root!("task_input_data");
    let d = shared();
    let t = unique("input");
    assert_eq!(d.put_task(&t, "echo", "module.exports = (d) => ({d})").status, 201);
    assert_eq!(d.run_task(&t, "echo", b"").json()["result"], json!({"d": null}));
    assert_eq!(d.run_task(&t, "echo", b"  \n").json()["result"], json!({"d": null}));
    assert_eq!(d.run_task(&t, "echo", br#"{"k": [1, 2.5, "s"]}"#).json()["result"], json!({"d": {"k": [1, 2.5, "s"]}}));
    assert_eq!(d.run_task(&t, "echo", b"\"text\"").json()["result"], json!({"d": "text"}));
    d.run_task(&t, "echo", b"{not json").assert_error(400, "bad_request");
    // Ad-hoc code without data gets null.
    let body = json!({"code": "module.exports = (d) => d === null"}).to_string();
    let r = d.request("POST", &format!("/v1/tenants/{t}/run"), &[], body.as_bytes());
    assert_eq!(r.json()["result"], true);
}

#[test]
fn state_persists_within_a_tenant_only() {
    need_root!("state_persists_within_a_tenant_only");
    let d = shared();
    let (a, b) = (unique("state-a"), unique("state-b"));
    let counter = "let n = 0; module.exports = () => ++n";
    assert_eq!(d.put_task(&a, "counter", counter).status, 201);
    assert_eq!(d.put_task(&a, "counter2", counter).status, 201);
    assert_eq!(d.put_task(&b, "counter", counter).status, 201);
    for want in 1..=3 {
        assert_eq!(d.run_task(&a, "counter", b"").json()["result"], want, "module scope persists per task");
    }
    assert_eq!(d.run_task(&a, "counter2", b"").json()["result"], 1, "each task has its own module scope");
    assert_eq!(d.run_task(&b, "counter", b"").json()["result"], 1, "tenants do not share module scope");

    // globalThis: shared by a tenant's tasks and ad-hoc code.
    assert_eq!(d.put_task(&a, "setter", "module.exports = (d) => { globalThis.cache = d; return true }").status, 201);
    assert_eq!(d.run_task(&a, "setter", br#"{"token": "secret-of-a"}"#).status, 200);
    assert_eq!(d.run_ok(&a, "module.exports = () => globalThis.cache", Value::Null)["result"], json!({"token": "secret-of-a"}));
    assert_eq!(d.put_task(&a, "getter", "module.exports = () => globalThis.cache").status, 201);
    assert_eq!(d.run_task(&a, "getter", b"").json()["result"], json!({"token": "secret-of-a"}));
    // ...and not by another tenant.
    let env = d.run_ok(&b, "module.exports = () => [typeof globalThis.cache, Object.keys(globalThis).includes('cache')]", Value::Null);
    assert_eq!(env["result"], json!(["undefined", false]));
}

#[test]
fn replaced_task_is_recompiled() {
    need_root!("replaced_task_is_recompiled");
    let d = shared();
    let t = unique("replace");
    assert_eq!(d.put_task(&t, "job", "let n = 100; module.exports = () => ['v1', ++n]").status, 201);
    assert_eq!(d.run_task(&t, "job", b"").json()["result"], json!(["v1", 101]));
    assert_eq!(d.run_task(&t, "job", b"").json()["result"], json!(["v1", 102]));
    assert_eq!(d.put_task(&t, "job", "let n = 200; module.exports = () => ['v2', ++n]").status, 200);
    let env = d.run_task(&t, "job", b"").json();
    assert_eq!(env["result"], json!(["v2", 201]), "the new code runs, with a fresh module scope");
    assert_eq!(env["cold"], false);
    // Back to the first source: it runs again (whether its old module scope is kept is not promised).
    assert_eq!(d.put_task(&t, "job", "let n = 100; module.exports = () => ['v1', ++n]").status, 200);
    assert_eq!(d.run_task(&t, "job", b"").json()["result"][0], "v1");
}

// ---------- routing and request errors ----------

#[test]
fn unknown_paths_and_wrong_methods() {
    need_root!("unknown_paths_and_wrong_methods");
    let d = shared();
    for path in [
        "/",
        "/v1",
        "/v2/health",
        "/v1/healthz",
        "/v1/tenants",
        "/v1/tenants/acme",
        "/v1/tenants/acme/tasks/a/b",
        "/v1/tenants/acme/run/x",
        "/metrics/x",
    ] {
        d.get(path).assert_error(404, "not_found");
    }
    let cases = [
        ("POST", "/v1/health"),
        ("DELETE", "/metrics"),
        ("POST", "/v1/logs"),
        ("GET", "/v1/tenants/acme/run"),
        ("PUT", "/v1/tenants/acme/run"),
        ("POST", "/v1/tenants/acme/tasks"),
        ("DELETE", "/v1/tenants/acme/tasks"),
        ("POST", "/v1/tenants/acme/tasks/job"),
        ("PATCH", "/v1/tenants/acme/tasks/job"),
        ("GET", "/v1/tenants/acme/tasks/job/run"),
    ];
    for (method, path) in cases {
        let r = d.request(method, path, &[], b"");
        r.assert_error(405, "method_not_allowed");
        assert!(r.header("allow").is_some(), "405 for {method} {path} names the allowed methods");
    }
}

fn state_entries(d: &Daemon) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                walk(&p, root, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d.dir, &d.dir, &mut out);
    out
}

#[test]
fn bad_names_are_refused_and_create_nothing() {
    need_root!("bad_names_are_refused_and_create_nothing");
    let d = shared();
    let long = "a".repeat(64);
    let ok63 = "b".repeat(63);
    let bad = ["Acme", "ACME", "..", ".", "%2e%2e", "%2E%2E", "..%2f..%2fetc", "a%2fb", "a.b", "-lead", "_lead", "sp%20ace", &long, "a\\b"];
    for name in bad {
        for (method, path, body) in [
            ("POST", format!("/v1/tenants/{name}/run"), json!({"code": "module.exports = () => 1"}).to_string()),
            ("PUT", format!("/v1/tenants/{name}/tasks/job"), "module.exports = () => 1".to_string()),
            ("PUT", format!("/v1/tenants/okay/tasks/{name}"), "module.exports = () => 1".to_string()),
            ("GET", format!("/v1/tenants/{name}/tasks"), String::new()),
            ("GET", format!("/v1/tenants/okay/tasks/{name}"), String::new()),
            ("DELETE", format!("/v1/tenants/okay/tasks/{name}"), String::new()),
            ("POST", format!("/v1/tenants/okay/tasks/{name}/run"), String::new()),
        ] {
            let r = d.request(method, &path, &[], body.as_bytes());
            assert_eq!(r.status, 400, "{method} {path} -> {} {}", r.status, r.text());
            assert_eq!(r.kind(), "bad_request");
        }
    }
    // Empty segments.
    for (method, path) in [
        ("POST", "/v1/tenants//run"),
        ("PUT", "/v1/tenants//tasks/job"),
        ("PUT", "/v1/tenants/okay/tasks/"),
        ("POST", "/v1/tenants/okay/tasks//run"),
    ] {
        let r = d.request(method, path, &[], b"module.exports = () => 1");
        assert!(r.status == 400 || r.status == 404, "{method} {path} -> {} {}", r.status, r.text());
    }
    let r = d.get("/v1/logs?tenant=Bad..Name");
    r.assert_error(400, "bad_request");
    // The longest valid name works.
    assert_eq!(d.put_task(&ok63, &ok63, "module.exports = () => 63").status, 201);
    assert_eq!(d.run_task(&ok63, &ok63, b"").json()["result"], 63);
    // Nothing was created for a bad name: every entry of the test directory is the daemon's own or a valid name.
    let valid = |n: &str| {
        let b = n.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
    };
    for entry in state_entries(d) {
        let parts: Vec<&str> = entry.split('/').collect();
        match parts.as_slice() {
            // The harness keeps the secrets key beside the state directory, never in it.
            ["s.sock"] | ["daemon.log"] | ["secrets.key"] | ["state"] | ["state", ".lock"] | ["state", "tasks"] => {}
            ["state", "tasks", tenant] => assert!(valid(tenant), "unexpected tenant directory {entry}"),
            // Another test sharing this daemon may be mid-deploy: its temporary file is the store's own.
            ["state", "tasks", tenant, file] if file.starts_with(".tmp-") => assert!(valid(tenant), "unexpected {entry}"),
            ["state", "tasks", tenant, file] => {
                assert!(valid(tenant), "unexpected {entry}");
                // A task's source, or the V8 code cache its deploy made.
                // Or its settings: `<task>.settings.<sha256>`.
                let settings = file.split_once(".settings.").map(|(task, _)| task);
                let task = file
                    .strip_suffix(".js.v8cache")
                    .or_else(|| file.strip_suffix(".js"))
                    .or(settings)
                    .unwrap_or_else(|| panic!("unexpected file {entry}"));
                assert!(valid(task), "unexpected file {entry}");
            }
            _ => panic!("unexpected entry in the daemon's directory: {entry}"),
        }
        assert!(!entry.contains("okay"), "a directory was made for a request with a bad name: {entry}");
    }
}

#[test]
fn bad_bodies() {
    need_root!("bad_bodies");
    let d = shared();
    let t = unique("bodies");
    let path = format!("/v1/tenants/{t}/run");
    for body in [
        &b"{not json"[..],
        b"",
        b"[1,2]",
        b"\"code\"",
        br#"{"data": 1}"#,
        br#"{"code": 42}"#,
        br#"{"code": null}"#,
        b"{\"code\": \"x\"} trailing",
    ] {
        let r = d.request("POST", &path, &[], body);
        r.assert_error(400, "bad_request");
    }
    // Exactly 1 MiB of body is allowed.
    let prefix = br#"{"code": "module.exports = (d) => d.length", "data": ""#;
    let suffix = br#""}"#;
    let mut body = prefix.to_vec();
    let fill = (1 << 20) - prefix.len() - suffix.len();
    body.extend(std::iter::repeat_n(b'q', fill));
    body.extend_from_slice(suffix);
    assert_eq!(body.len(), 1 << 20);
    let r = d.request("POST", &path, &[], &body);
    assert_eq!(r.status, 200, "a body of exactly 1 MiB is accepted: {}", r.text());
    assert_eq!(r.json()["result"], fill);
}

#[test]
fn oversized_body_gets_413() {
    need_root!("oversized_body_gets_413");
    let d = shared();
    let t = unique("big");
    // Announced and sent: the daemon may answer before reading it all.
    let mut c = d.client();
    let body = vec![b'x'; (1 << 20) + 1];
    let head = format!("PUT /v1/tenants/{t}/tasks/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    let _ = c.send_raw(head.as_bytes());
    let writer = {
        let mut s = c.stream().try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = s.write_all(&body);
        })
    };
    let r = c.read_response().expect("a response to an oversized body");
    r.assert_error(413, "payload_too_large");
    assert!(c.closed_within(Duration::from_secs(20)), "the connection is closed after a 413");
    let _ = c.stream().shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    d.get(&format!("/v1/tenants/{t}/tasks/big")).assert_error(404, "not_found");
    // Announced only: answered at once.
    let mut c = d.client();
    c.send_raw(format!("POST /v1/tenants/{t}/run HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 50 << 20).as_bytes()).unwrap();
    c.read_response().unwrap().assert_error(413, "payload_too_large");
}

#[test]
fn huge_headers_get_431() {
    need_root!("huge_headers_get_431");
    let d = shared();
    let mut c = d.client();
    let big = "v".repeat(20 << 10);
    let _ = c.send_raw(format!("GET /v1/health HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let r = c.read_response().expect("a response to huge headers");
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(c.closed_within(Duration::from_secs(20)));
    // Many small headers adding up to over 16 KiB.
    let mut c = d.client();
    let mut req = String::from("GET /v1/health HTTP/1.1\r\n");
    for i in 0..60 {
        req.push_str(&format!("X-H{i}: {}\r\n", "w".repeat(400)));
    }
    req.push_str("\r\n");
    let _ = c.send_raw(req.as_bytes());
    assert_eq!(c.read_response().expect("a response").status, 431);
    // Headers of a normal size are fine.
    let r = d.request("GET", "/v1/health", &[("X-Fine", &"f".repeat(8 << 10))], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn chunked_request_body_refused() {
    need_root!("chunked_request_body_refused");
    let d = shared();
    let t = unique("chunked");
    let mut c = d.client();
    let body = "module.exports = () => 1";
    c.send_raw(
        format!("PUT /v1/tenants/{t}/tasks/job HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
            .as_bytes(),
    )
    .unwrap();
    let r = c.read_response().expect("a response to a chunked body");
    assert!(r.status == 411 || r.status == 400, "chunked body: {} {}", r.status, r.text());
    assert!(c.closed_within(Duration::from_secs(20)), "the connection is closed: the stream's framing is unknown");
    d.get(&format!("/v1/tenants/{t}/tasks/job")).assert_error(404, "not_found");
}

// ---------- health, metrics, logs ----------

#[test]
fn health_and_metrics() {
    need_root!("health_and_metrics");
    let d = shared();
    let h = d.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["pool"]["size"], 3);
    for field in ["idle", "starting"] {
        assert!(h["pool"][field].is_u64(), "pool.{field}: {h}");
    }
    for field in ["tenants", "total"] {
        assert!(h["sandboxes"][field].is_u64(), "sandboxes.{field}: {h}");
    }
    for field in ["invocations_in_flight", "queued", "connections"] {
        assert!(h[field].is_u64(), "{field}: {h}");
    }
    // Make sure there is something to count.
    let t = unique("metrics");
    d.run_ok(&t, "module.exports = () => 1", Value::Null);
    let _ = d.run(&t, "module.exports = () => { throw new Error('x') }", Value::Null);
    let r = d.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", r.header("content-type"));
    let text = r.text();
    for family in [
        "taskcell_invocations_total",
        "taskcell_cold_starts_total",
        "taskcell_pool_idle_sandboxes",
        "taskcell_sandboxes_created_total",
        "taskcell_sandboxes_killed_total",
        "taskcell_invocation_duration_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "metrics lack {family}:\n{text}");
    }
    assert!(text.contains("taskcell_invocation_duration_seconds_bucket{le=\"+Inf\"}"), "a latency histogram:\n{text}");
    let ok: f64 = text
        .lines()
        .find(|l| l.starts_with("taskcell_invocations_total{") && l.contains("\"ok\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no ok invocations counted:\n{text}"));
    assert!(ok >= 1.0);
    assert!(text.lines().any(|l| l.starts_with("taskcell_invocations_total{") && l.contains("task_error")), "{text}");
    // Every sample line is `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad sample line {line:?}");
    }
}

/// Read NDJSON events from a log stream until `done` says so; panics on a hang.
fn read_events(c: &mut Client, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut events = Vec::new();
    let mut partial = Vec::new();
    loop {
        let chunk = c.read_chunk().expect("log stream chunk").expect("the log stream does not end");
        partial.extend_from_slice(&chunk);
        while let Some(i) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            let v: Value =
                serde_json::from_slice(&line).unwrap_or_else(|e| panic!("bad NDJSON line {:?}: {e}", String::from_utf8_lossy(&line)));
            let stop = done(&v);
            events.push(v);
            if stop {
                return events;
            }
        }
    }
}

#[test]
fn log_stream() {
    need_root!("log_stream");
    let d = shared();
    let (a, b) = (unique("logs-a"), unique("logs-b"));
    let mut all = d.client();
    all.send("GET", "/v1/logs", &[], b"").unwrap();
    let (status, headers) = all.read_stream_head().unwrap();
    assert_eq!(status, 200);
    let h = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    assert!(h("content-type").is_some_and(|c| c.starts_with("application/x-ndjson")), "{headers:?}");
    assert!(h("transfer-encoding").is_some_and(|c| c.eq_ignore_ascii_case("chunked")), "{headers:?}");
    assert!(h("x-request-id").is_some());
    let mut only_a = d.client();
    only_a.send("GET", &format!("/v1/logs?tenant={a}"), &[], b"").unwrap();
    assert_eq!(only_a.read_stream_head().unwrap().0, 200);
    // Both subscribers are registered once the daemon counts them.
    wait_until(Duration::from_secs(20), "two log subscribers", || {
        d.get("/metrics").text().lines().any(|l| {
            l.starts_with("taskcell_log_subscribers ") && l.split(' ').nth(1).and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 2.0)
        })
    });

    let rb = d.run(&b, "module.exports = () => { console.log('marker-of-b'); return 1 }", Value::Null);
    assert_eq!(rb.status, 200);
    assert_eq!(d.put_task(&a, "talker", "module.exports = (d) => { console.warn('marker-of-a', d); return 2 }").status, 201);
    let ra = d.run_task(&a, "talker", b"5");
    assert_eq!(ra.status, 200);
    let id_a = ra.header("x-request-id").unwrap().to_string();
    let id_b = rb.header("x-request-id").unwrap().to_string();

    let seen = read_events(&mut only_a, |e| e["message"] == "marker-of-a 5");
    let last = seen.last().unwrap();
    assert_eq!(last["tenant"], a.as_str());
    assert_eq!(last["task"], "talker");
    assert_eq!(last["requestId"], id_a.as_str());
    assert_eq!(last["level"], "warn");
    assert!(last["time"].is_string());
    for e in &seen {
        assert_eq!(e["tenant"], a.as_str(), "the tenant filter lets through only its tenant: {e}");
    }

    let mut got_a = false;
    let mut got_b = false;
    read_events(&mut all, |e| {
        if e["message"] == "marker-of-b" {
            assert_eq!(e["tenant"], b.as_str());
            assert_eq!(e["requestId"], id_b.as_str());
            assert_eq!(e["task"], Value::Null);
            got_b = true;
        }
        if e["message"] == "marker-of-a 5" {
            assert!(got_b, "events arrive in order");
            got_a = true;
        }
        got_a && got_b
    });
}

// ---------- crashes (shared daemon, tenants of their own) ----------

#[test]
fn sandbox_crashes_are_502_and_the_tenant_recovers() {
    need_root!("sandbox_crashes_are_502_and_the_tenant_recovers");
    let d = shared();
    for (code, needle) in [
        ("module.exports = () => { process.abort() }", "signal"),
        ("module.exports = () => { process.exit(3) }", "3"),
        ("module.exports = () => { process.kill(process.pid, 'SIGKILL'); for (;;) {} }", "signal"),
        ("module.exports = () => { setTimeout(() => process.exit(0), 10); return new Promise(() => {}) }", "exit"),
    ] {
        let t = unique("crash");
        let env = d.run_ok(&t, "globalThis.mark = 'before'; module.exports = () => 1", Value::Null);
        assert_eq!(env["cold"], true);
        let r = d.run(&t, code, Value::Null);
        let v = r.assert_error(502, "sandbox_crashed");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{code}: the message says how it died: {msg}");
        let env = d.run_ok(&t, "module.exports = () => typeof globalThis.mark", Value::Null);
        assert_eq!(env["cold"], true, "after a crash the tenant gets a fresh sandbox: {env}");
        assert_eq!(env["result"], "undefined", "the fresh sandbox has none of the old state");
    }
    d.assert_healthy();
}

// ---------- limits (own daemons) ----------

#[test]
fn timeouts_are_504_and_the_sandbox_is_replaced() {
    need_root!("timeouts_are_504_and_the_sandbox_is_replaced");
    let d = Daemon::start("timeout", &["--timeout-ms", "1000"]);
    let t = "slowpoke";
    for code in [
        "module.exports = () => { for (;;) {} }",
        "module.exports = () => new Promise(() => {})",
        "module.exports = (d, ctx, cb) => { /* never calls back */ }",
        "module.exports = async () => { while (true) { await null } }",
    ] {
        let env = d.run_ok(t, "globalThis.kept = 'yes'; module.exports = () => globalThis.kept", Value::Null);
        assert_eq!(env["result"], "yes");
        let r = d.run(t, code, Value::Null);
        let v = r.assert_error(504, "timeout");
        assert!(v["error"]["message"].as_str().unwrap().contains("1000"), "{v}");
        let env = d.run_ok(t, "module.exports = () => typeof globalThis.kept", Value::Null);
        assert_eq!(env["cold"], true, "after a timeout the tenant's next request gets a fresh sandbox: {env}");
        assert_eq!(env["result"], "undefined", "state is gone with the killed sandbox");
    }
    // A named task that times out, then works after a fix.
    assert_eq!(d.put_task(t, "spin", "module.exports = () => { while (1) {} }").status, 201);
    d.run_task(t, "spin", b"").assert_error(504, "timeout");
    assert_eq!(d.put_task(t, "spin", "module.exports = () => 'fixed'").status, 200);
    assert_eq!(d.run_task(t, "spin", b"").json()["result"], "fixed");
    d.assert_healthy();
    let text = d.get("/metrics").text();
    assert!(text.lines().any(|l| l.starts_with("taskcell_invocations_total{") && l.contains("timeout")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("taskcell_sandboxes_killed_total{") && l.contains("timeout")), "{text}");
}

#[test]
fn memory_bombs_are_507_and_the_sandbox_is_replaced() {
    need_root!("memory_bombs_are_507_and_the_sandbox_is_replaced");
    let d = Daemon::start("memory", &["--memory", "100000000", "--timeout-ms", "30000"]);
    let t = "hog";
    // V8's heap is bounded below the sandbox's memory (the bootstrap resets the flag, not the limit).
    let limit = d.run_ok(t, "module.exports = () => require('v8').getHeapStatistics().heap_size_limit", Value::Null);
    let limit = limit["result"].as_u64().expect("the heap limit");
    assert!(limit < 100_000_000, "V8's heap limit {limit} is not below the sandbox's memory");
    for code in [
        // On the V8 heap.
        "module.exports = () => { const a = []; for (;;) a.push(new Array(100000).fill(Math.random())) }",
        "module.exports = () => { let s = []; for (let i = 0; ; i++) s.push({i, s: 'k' + i, o: {i}}) }",
        // Off the heap: Buffers, pages touched.
        "module.exports = () => { const b = []; for (;;) b.push(Buffer.alloc(1 << 20, 1)) }",
        "module.exports = async () => { const b = []; for (;;) { b.push(Buffer.alloc(4 << 20, 7)); await null } }",
    ] {
        let env = d.run_ok(t, "globalThis.kept = 1; module.exports = () => 'ok'", Value::Null);
        assert_eq!(env["result"], "ok");
        let r = d.run(t, code, Value::Null);
        r.assert_error(507, "memory_limit");
        let env = d.run_ok(t, "module.exports = () => typeof globalThis.kept", Value::Null);
        assert_eq!(env["cold"], true, "after a memory kill the tenant gets a fresh sandbox: {env}");
        assert_eq!(env["result"], "undefined");
    }
    d.assert_healthy();
}

// ---------- lifecycle (own daemons) ----------

#[test]
fn pool_fills_at_start() {
    need_root!("pool_fills_at_start");
    // Several daemons at once, as on a busy host: each must fill its pool (no sandbox start may hang).
    let daemons: Vec<Daemon> = thread_start(4, |i| Daemon::start(&format!("pool{i}"), &["--pool-size", "3"]));
    let mut stuck = Vec::new();
    for d in &daemons {
        if let Err(last) = d.wait_pool_full(Duration::from_secs(60)) {
            stuck.push(format!("{}: {last}", d.dir.display()));
        }
    }
    assert!(stuck.is_empty(), "pools that did not fill within 60 s (a sandbox start hangs):\n  {}", stuck.join("\n  "));
    for d in &daemons {
        d.assert_healthy();
    }
}

#[test]
fn event_loop_runs_ahead_of_sandboxes() {
    need_root!("event_loop_runs_ahead_of_sandboxes");
    let d = shared();
    // The loop is the daemon's main thread; every request waits on it twice, so it runs at nice -10 with the
    // kernel's shortest slice, preempting a busy sandbox when it wakes.
    let pid = d.pid();
    let nice = testkit::procfs::task_stat(pid, pid).expect("loop thread's stat").nice;
    assert_eq!(nice, -10, "the event loop's nice value");
    let sched = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/sched")).unwrap_or_default();
    match sched.lines().find(|l| l.starts_with("se.slice")) {
        Some(line) => assert!(line.trim_end().ends_with(" 100000"), "the event loop's slice: {line}"),
        None => eprintln!("NOT CHECKED: this kernel shows no se.slice (before Linux 6.12)"),
    }
}

fn thread_start(n: usize, f: impl Fn(usize) -> Daemon + Sync) -> Vec<Daemon> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || f(i))).collect();
        handles.into_iter().map(|h| h.join().expect("starting a daemon")).collect()
    })
}

#[test]
fn deployed_tasks_survive_kill_9_and_restart() {
    need_root!("deployed_tasks_survive_kill_9_and_restart");
    let d = Daemon::start("kill9", &[]);
    let source = "module.exports = (d) => ({durable: d})";
    assert_eq!(d.put_task("keeper", "job", source).status, 201);
    assert_eq!(d.put_task("keeper", "job2", "module.exports = () => 2").status, 201);
    assert_eq!(d.request("DELETE", "/v1/tenants/keeper/tasks/job2", &[], b"").status, 204);
    assert_eq!(d.run_task("keeper", "job", b"1").json()["result"], json!({"durable": 1}));
    d.snapshot_descendants();
    d.kill9();
    assert!(d.socket.exists(), "kill -9 leaves the socket file behind (that is what the restart must handle)");
    d.restart();
    let r = d.get("/v1/tenants/keeper/tasks/job");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, source.as_bytes());
    assert_eq!(r.header("etag").map(str::to_string), Some(format!("\"{}\"", sha256_hex(source.as_bytes()))));
    d.get("/v1/tenants/keeper/tasks/job2").assert_error(404, "not_found");
    let env = d.run_task("keeper", "job", b"2").json();
    assert_eq!(env["result"], json!({"durable": 2}));
    assert_eq!(env["cold"], true);
    let list = d.get("/v1/tenants/keeper/tasks").json();
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");
    // A second kill -9 in a row, and a restart again.
    d.kill9();
    d.restart();
    assert_eq!(d.run_task("keeper", "job", b"3").json()["result"], json!({"durable": 3}));
    // Drop checks that no sandbox of any of the three daemons and no cgroup of theirs is left.
}

#[test]
fn sigterm_lets_a_running_invocation_finish() {
    need_root!("sigterm_lets_a_running_invocation_finish");
    let d = Daemon::start("drain", &[]);
    let mut c = d.client();
    let body = json!({"code": "module.exports = () => new Promise(r => setTimeout(() => r('finished'), 2000))"}).to_string();
    c.send("POST", "/v1/tenants/slow/run", &[], body.as_bytes()).unwrap();
    wait_until(Duration::from_secs(30), "the invocation to be in flight", || d.health()["invocations_in_flight"].as_u64() >= Some(1));
    d.signal(libc::SIGTERM);
    let r = c.read_response().expect("the in-flight invocation is answered during the drain");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "finished");
    assert_eq!(
        r.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("close"),
        "responses during the drain close the connection"
    );
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "the daemon exits cleanly after SIGTERM: {status}");
    assert!(!d.socket.exists(), "the socket is removed on SIGTERM");
}

fn metric(d: &Daemon, name: &str) -> u64 {
    let text = d.get("/metrics").text();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok())).unwrap_or(0.0) as u64
}

#[test]
fn a_deployed_task_reaches_new_sandboxes_with_its_code_cache() {
    need_root!("a_deployed_task_reaches_new_sandboxes_with_its_code_cache");
    // A daemon of its own: the counter below must be this test's alone.
    let d = Daemon::start("codecache", &["--max-requests", "1"]);
    let tenant = unique("cc");
    // A bundle-sized task, so that V8 makes a cache worth having.
    let mut source = String::from("const T = {};\n");
    for i in 0..2000 {
        source.push_str(&format!("T.f{i} = function (a) {{ return [a, {i}].map((v) => v * 2).reduce((s, v) => s + v, 0) }};\n"));
    }
    source.push_str("module.exports = (d) => T.f7(d.n) + T.f1999(1);\n");
    assert_eq!(d.put_task(&tenant, "big", &source).status, 201);
    assert_eq!(metric(&d, "taskcell_code_cache_runs_total"), 0);
    // --max-requests 1: every run is in a sandbox that has not compiled the task, so each gets the source and,
    // with it, the cache the deploy's syntax check made; the answers are those of the source.
    for n in 0..3 {
        let r = d.run_task(&tenant, "big", json!({"n": n}).to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["result"], (2 * n + 14) + (2 + 3998));
    }
    assert_eq!(metric(&d, "taskcell_code_cache_runs_total"), 3);
    // A new version replaces the cache: its runs carry the new one (a stale cache would only be refused by
    // V8, but must not even be sent).
    let v2 = source.replace("T.f1999(1)", "T.f1999(2)");
    assert_eq!(d.put_task(&tenant, "big", &v2).status, 200);
    let r = d.run_task(&tenant, "big", json!({"n": 0}).to_string().as_bytes());
    assert_eq!(r.json()["result"], 14 + (4 + 3998));
    assert_eq!(metric(&d, "taskcell_code_cache_runs_total"), 4);
    // Kept on disk beside the task: a restarted daemon still has it to give.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    d.restart();
    let r = d.run_task(&tenant, "big", json!({"n": 1}).to_string().as_bytes());
    assert_eq!(r.json()["result"], 16 + (4 + 3998));
    assert_eq!(metric(&d, "taskcell_code_cache_runs_total"), 1, "after the restart");
    // Deleted: no cache left to send, and nothing to run.
    assert_eq!(d.request("DELETE", &format!("/v1/tenants/{tenant}/tasks/big"), &[], b"").status, 204);
    assert_eq!(d.run_task(&tenant, "big", b"").status, 404);
    let dir = d.state.join("tasks").join(&tenant);
    let left: Vec<_> = std::fs::read_dir(&dir).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    d.assert_healthy();
}
