//! Task settings and programming models through the real socket: real code of the shapes the spec names
//! (the wt CLI's webtask samples, OpenWhisk's hello action, an Auth0 rule through an operator's compiler)
//! deployed as it is, and every bad setting refused with nothing stored.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::{unique, Daemon};
use serde_json::{json, Value};

static DAEMON: OnceLock<Daemon> = OnceLock::new();

fn compilers_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compilers").to_string()
}

fn daemon() -> &'static Daemon {
    Daemon::shared(&DAEMON, "models", &["--compilers-dir", &compilers_dir(), "--max-timeout-ms", "20000", "--timeout-ms", "4000"])
}

fn put(d: &Daemon, tenant: &str, task: &str, query: &str, source: &str) -> common::Response {
    d.request("PUT", &format!("/v1/tenants/{tenant}/tasks/{task}{query}"), &[("Content-Type", "application/javascript")], source.as_bytes())
}

fn put_ok(d: &Daemon, tenant: &str, task: &str, query: &str, source: &str) {
    let r = put(d, tenant, task, query, source);
    assert!(r.status == 201 || r.status == 200, "deploy {task}{query}: {} {}", r.status, r.text());
}

fn run_ok(d: &Daemon, tenant: &str, task: &str, input: Value) -> Value {
    let r = d.run_task(tenant, task, input.to_string().as_bytes());
    assert_eq!(r.status, 200, "run {task}: {}", r.text());
    r.json()["result"].clone()
}

fn adhoc(d: &Daemon, tenant: &str, body: Value) -> common::Response {
    d.request("POST", &format!("/v1/tenants/{tenant}/run"), &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

fn listed(d: &Daemon, tenant: &str, task: &str) -> Option<Value> {
    let r = d.get(&format!("/v1/tenants/{tenant}/tasks"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["tasks"].as_array().unwrap().iter().find(|t| t["task"] == task).cloned()
}

#[test]
fn webtask_samples_of_the_wt_cli_run_unchanged() {
    need_root!("webtask_samples_of_the_wt_cli_run_unchanged");
    let d = daemon();
    let t = unique("wt");
    put_ok(d, &t, "hello", "?model=webtask", "module.exports = function (cb) { cb(null, 'Hello'); }");
    assert_eq!(run_ok(d, &t, "hello", Value::Null), "Hello");
    put_ok(d, &t, "name", "?model=webtask", "module.exports = function (ctx, cb) { cb(null, ctx.data.name) }");
    assert_eq!(run_ok(d, &t, "name", json!({"name": "Ann"})), "Ann");
    // The whole ctx: data is the input object, body the input, meta names the invocation.
    put_ok(
        d,
        &t,
        "ctx",
        "?model=webtask",
        "module.exports = function (ctx, cb) { cb(null, { data: ctx.data, body: ctx.body, query: ctx.query, headers: ctx.headers, secrets: typeof ctx.secrets, frozen: Object.isFrozen(ctx.secrets), meta: ctx.meta }); };",
    );
    let r = d.request("POST", &format!("/v1/tenants/{t}/tasks/ctx/run"), &[("X-Request-Id", "wt-ctx-1")], b"[1,2]");
    assert_eq!(r.status, 200, "{}", r.text());
    let ctx = &r.json()["result"];
    assert_eq!(ctx["data"], json!({}), "an input that is not an object gives data {{}}: {ctx}");
    assert_eq!(ctx["body"], json!([1, 2]));
    assert_eq!((ctx["query"].clone(), ctx["headers"].clone()), (json!({}), json!({})));
    assert_eq!((ctx["secrets"].as_str(), ctx["frozen"].as_bool()), (Some("object"), Some(true)));
    assert_eq!(ctx["meta"], json!({"tenant": t, "task": "ctx", "requestId": "wt-ctx-1"}));
    // A callback error is a task_error; a webtask's module may end with a top-level return.
    put_ok(d, &t, "err", "?model=webtask", "return function (ctx, cb) { cb(new Error('nope')); };");
    let r = d.run_task(&t, "err", b"");
    assert!(r.assert_error(500, "task_error")["error"]["message"].as_str().unwrap().contains("nope"));
    put_ok(
        d,
        &t,
        "ret",
        "?model=webtask",
        "var greeting = 'Hi';\nreturn function (ctx, cb) { cb(null, greeting + ' ' + ctx.data.who); };\n",
    );
    assert_eq!(run_ok(d, &t, "ret", json!({"who": "Bob"})), "Hi Bob");
}

#[test]
fn a_webtask_for_req_and_res_is_refused_on_run_saying_why() {
    need_root!("a_webtask_for_req_and_res_is_refused_on_run_saying_why");
    let d = daemon();
    let t = unique("raw");
    let source =
        "return function (ctx, req, res) {\n  res.writeHead(200, { 'Content-Type': 'text/html' });\n  res.end('<h1>Hello</h1>');\n};\n";
    put_ok(d, &t, "page", "?model=webtask", source);
    let v = d.run_task(&t, "page", b"").assert_error(400, "bad_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("HTTP endpoint"), "{v}");
    // The same for ad-hoc code, and the sandbox is fine afterwards.
    let v = adhoc(d, &t, json!({"code": source, "model": "webtask"})).assert_error(400, "bad_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("(ctx, req, res)"), "{v}");
    put_ok(d, &t, "ok", "?model=webtask", "module.exports = function (cb) { cb(null, 1); }");
    assert_eq!(run_ok(d, &t, "ok", Value::Null), 1);
}

#[test]
fn openwhisk_actions_run_unchanged() {
    need_root!("openwhisk_actions_run_unchanged");
    let d = daemon();
    let t = unique("ow");
    // The catalog's hello, as a top-level function main.
    put_ok(d, &t, "hello", "?model=openwhisk", "function main(params) { return {payload: 'Hello, ' + params.name}; }");
    assert_eq!(run_ok(d, &t, "hello", json!({"name": "Ann"})), json!({"payload": "Hello, Ann"}));
    assert_eq!(run_ok(d, &t, "hello", Value::Null), json!({"payload": "Hello, undefined"}), "null input is params {{}}");
    // exports.main with a Promise, and module.exports itself; params carry __secrets.
    put_ok(
        d,
        &t,
        "later",
        "?model=openwhisk",
        "function main(params) { return new Promise((resolve) => setTimeout(() => resolve({ n: params.n + 1, secrets: typeof params.__secrets }), 5)); }\nexports.main = main;\n",
    );
    assert_eq!(run_ok(d, &t, "later", json!({"n": 1})), json!({"n": 2, "secrets": "object"}));
    put_ok(d, &t, "fn", "?model=openwhisk", "module.exports = (params) => ({ keys: Object.keys(params).sort() });");
    assert_eq!(run_ok(d, &t, "fn", json!({"a": 1})), json!({"keys": ["__secrets", "a"]}));
    let v = d.run_task(&t, "fn", b"[1]").assert_error(400, "bad_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("JSON object"), "{v}");
    put_ok(d, &t, "none", "?model=openwhisk", "const x = 1;");
    let v = d.run_task(&t, "none", b"{}").assert_error(500, "task_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("main"), "{v}");
    // Ad-hoc code takes a model too.
    let r = adhoc(d, &t, json!({"code": "function main(p) { return {sum: p.a + p.b}; }", "data": {"a": 2, "b": 3}, "model": "openwhisk"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], json!({"sum": 5}));
}

/// Auth0's "Set roles to a user" rule from its public rules repository, as it is (it calls
/// `auth0.users.updateAppMetadata`, a free variable of Auth0's runtime, which the compiler provides).
const AUTH0_SET_ROLES: &str = r#"function setRolesToUser(user, context, callback) {
  // Roles should only be set to verified users.
  if (!user.email || !user.email_verified) {
    return callback(null, user, context);
  }

  user.app_metadata = user.app_metadata || {};
  // You can add a Role based on what you want
  // In this case I check domain
  const addRolesToUser = function (user) {
    const endsWith = '@example.com';

    if (
      user.email &&
      user.email.substring(
        user.email.length - endsWith.length,
        user.email.length
      ) === endsWith
    ) {
      return ['admin'];
    }
    return ['user'];
  };

  const roles = addRolesToUser(user);

  user.app_metadata.roles = roles;
  auth0.users
    .updateAppMetadata(user.user_id, user.app_metadata)
    .then(function () {
      context.idToken['https://example.com/roles'] = user.app_metadata.roles;
      callback(null, user, context);
    })
    .catch(function (err) {
      callback(err);
    });
}
"#;

#[test]
fn an_unmodified_auth0_rule_runs_with_the_rule_compiler() {
    need_root!("an_unmodified_auth0_rule_runs_with_the_rule_compiler");
    let d = daemon();
    let t = unique("auth0");
    put_ok(d, &t, "roles", "?model=rule", AUTH0_SET_ROLES);
    assert_eq!(listed(d, &t, "roles").unwrap()["model"], "rule");
    let input = json!({"user": {"user_id": "auth0|1", "email": "ann@example.com", "email_verified": true}, "context": {"clientName": "portal", "idToken": {}}});
    let out = run_ok(d, &t, "roles", input);
    assert_eq!(out["user"]["app_metadata"], json!({"roles": ["admin"]}), "{out}");
    assert_eq!(out["context"]["idToken"]["https://example.com/roles"], json!(["admin"]), "{out}");
    let input = json!({"user": {"user_id": "auth0|2", "email": "bob@other.org", "email_verified": true}, "context": {"idToken": {}}});
    assert_eq!(run_ok(d, &t, "roles", input)["user"]["app_metadata"]["roles"], json!(["user"]));
    let input = json!({"user": {"email": "eve@example.com"}, "context": {}});
    assert_eq!(run_ok(d, &t, "roles", input)["user"].get("app_metadata"), None, "unverified users get no roles");
    // `configuration` is the tenant's secrets (a frozen object); a rule's error is a task_error.
    let source = "function (user, context, callback) {\n  if (!user.email) return callback(new UnauthorizedError('no email'));\n  context.kind = typeof configuration;\n  callback(null, user, context);\n}";
    put_ok(d, &t, "conf", "?model=rule", source);
    assert_eq!(run_ok(d, &t, "conf", json!({"user": {"email": "a@b"}, "context": {}}))["context"]["kind"], "object");
    let v = d.run_task(&t, "conf", br#"{"user": {}}"#).assert_error(500, "task_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("UnauthorizedError: no email"), "{v}");
    // A rule the compiler cannot load is a compile_error at deploy, and nothing is stored.
    let r = put(d, &t, "broken", "?model=rule", "function (user, context, callback) {");
    r.assert_error(400, "compile_error");
    assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks/broken")).status, 404);
}

#[test]
fn bad_settings_are_refused_and_nothing_is_stored() {
    need_root!("bad_settings_are_refused_and_nothing_is_stored");
    let d = daemon();
    let t = unique("bad");
    let source = "module.exports = () => 1;";
    for query in
        ["?model=nosuch", "?model=Webtask", "?timeout_ms=0", "?timeout_ms=20001", "?timeout_ms=x", "?model=webtask&timeout_ms=99999999"]
    {
        let v = put(d, &t, "t", query, source).assert_error(400, "bad_request");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks/t")).status, 404, "{query} stored something");
    }
    let v = put(d, &t, "t", "?model=nosuch", source).assert_error(400, "bad_request");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("nosuch") && message.contains("webtask") && message.contains("rule"), "names the known models: {message}");
    for body in [
        json!({"code": source, "model": "nosuch"}),
        json!({"code": source, "timeout_ms": 0}),
        json!({"code": source, "timeout_ms": 20001}),
        json!({"code": source, "timeout_ms": "5"}),
    ] {
        adhoc(d, &t, body).assert_error(400, "bad_request");
    }
    // A compiler that throws: compile_error, naming what it said; nothing stored.
    let v = put(d, &t, "s", "?model=strict", source).assert_error(400, "compile_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("must start with \"use strict\""), "{v}");
    assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks/s")).status, 404);
    put_ok(d, &t, "s", "?model=strict", "'use strict';\nmodule.exports = (d) => d + 1;");
    assert_eq!(run_ok(d, &t, "s", json!(1)), 2);
    // A compiler that never returns: a timeout like any task (its sandbox is killed), nothing stored.
    let v = put(d, &t, "f", "?model=forever&timeout_ms=300", source).assert_error(504, "timeout");
    assert!(v["error"]["message"].as_str().unwrap().contains("300 ms"), "{v}");
    assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks/f")).status, 404);
    // A source the model cannot load: compile_error.
    put(d, &t, "w", "?model=webtask", "return function (cb) {").assert_error(400, "compile_error");
    put(d, &t, "o", "?model=openwhisk", "function main(params) { return {").assert_error(400, "compile_error");
    assert!(listed(d, &t, "w").is_none() && listed(d, &t, "o").is_none());
    d.assert_healthy();
}

#[test]
fn settings_are_stored_listed_reset_and_kept_across_a_restart() {
    need_root!("settings_are_stored_listed_reset_and_kept_across_a_restart");
    let d = Daemon::start("settings", &["--timeout-ms", "3000", "--compilers-dir", &compilers_dir()]);
    let t = unique("set");
    put_ok(&d, &t, "hook", "?model=webtask&timeout_ms=12000", "module.exports = function (ctx, cb) { cb(null, ctx.data.n * 2); };");
    put_ok(&d, &t, "plain", "", "module.exports = (d) => d;");
    let hook = listed(&d, &t, "hook").unwrap();
    assert_eq!((hook["model"].as_str(), hook["timeout_ms"].as_u64()), (Some("webtask"), Some(12000)), "{hook}");
    let plain = listed(&d, &t, "plain").unwrap();
    assert_eq!((plain["model"].as_str(), plain["timeout_ms"].as_u64()), (Some("taskcell"), Some(3000)), "defaults: {plain}");
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(15));
    d.restart();
    assert_eq!(listed(&d, &t, "hook").unwrap()["model"], "webtask", "settings survive a restart");
    assert_eq!(run_ok(&d, &t, "hook", json!({"n": 21})), 42);
    // A later PUT without them resets them to the defaults (the same source: the taskcell model now).
    put_ok(&d, &t, "hook", "", "module.exports = function (ctx, cb) { cb(null, ctx.data.n * 2); };");
    let hook = listed(&d, &t, "hook").unwrap();
    assert_eq!((hook["model"].as_str(), hook["timeout_ms"].as_u64()), (Some("taskcell"), Some(3000)), "{hook}");
    // As a taskcell task it is called as (data, ctx, cb): data is {n}, so ctx.data is undefined.
    let v = d.run_task(&t, "hook", br#"{"n": 21}"#).assert_error(500, "task_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("TypeError"), "{v}");
}

#[test]
fn an_invocation_has_its_own_time_limit() {
    need_root!("an_invocation_has_its_own_time_limit");
    let d = daemon();
    let t = unique("time");
    let slow = "module.exports = () => new Promise((resolve) => setTimeout(() => resolve('late'), 1500));";
    // Longer than the daemon's 4000 ms default is fine when asked for: it finishes.
    put_ok(d, &t, "short", "?timeout_ms=300", slow);
    let v = d.run_task(&t, "short", b"").assert_error(504, "timeout");
    assert!(v["error"]["message"].as_str().unwrap().contains("300 ms"), "{v}");
    let v = adhoc(d, &t, json!({"code": slow, "timeout_ms": 200})).assert_error(504, "timeout");
    assert!(v["error"]["message"].as_str().unwrap().contains("200 ms"), "{v}");
    let r =
        adhoc(d, &t, json!({"code": "module.exports = () => new Promise((r) => setTimeout(() => r('done'), 4500));", "timeout_ms": 9000}));
    assert_eq!(r.status, 200, "a run past the daemon's default but within its own limit: {}", r.text());
    assert_eq!(r.json()["result"], "done");
}

#[test]
fn the_same_source_under_two_models_is_two_functions() {
    need_root!("the_same_source_under_two_models_is_two_functions");
    let d = daemon();
    let t = unique("two");
    // Called as (data, ctx) by taskcell and as (ctx, cb) by webtask: the sandbox must not mix them up.
    let wt = "module.exports = function (a, b) { const m = a !== null && typeof a === 'object' && 'meta' in a ? 'webtask' : 'taskcell'; if (typeof b === 'function') b(null, m); return m; };";
    let r = adhoc(d, &t, json!({"code": wt, "data": {"x": 1}}));
    assert_eq!(r.json()["result"], "taskcell", "{}", r.text());
    let r = adhoc(d, &t, json!({"code": wt, "data": {"x": 1}, "model": "webtask"}));
    assert_eq!(r.json()["result"], "webtask", "{}", r.text());
    put_ok(d, &t, "k", "", wt);
    assert_eq!(run_ok(d, &t, "k", json!({})), "taskcell");
    put_ok(d, &t, "k", "?model=webtask", wt);
    assert_eq!(run_ok(d, &t, "k", json!({})), "webtask");
}
