//! The HTTP endpoint (`.../tasks/{task}/http[/{rest}]`) through the real socket: webhooks and pages written
//! as `webtask (ctx, req, res)` answer with their own status, headers and body; every other model's result is
//! a 200 JSON body; what a task sends is checked by the daemon, whatever the bootstrap let through.

mod common;

use std::sync::OnceLock;

use common::{unique, Daemon};
use serde_json::{json, Value};

static DAEMON: OnceLock<Daemon> = OnceLock::new();

fn daemon() -> &'static Daemon {
    Daemon::shared(&DAEMON, "http", &["--timeout-ms", "4000"])
}

fn put_ok(d: &Daemon, tenant: &str, task: &str, query: &str, source: &str) {
    let r = d.request("PUT", &format!("/v1/tenants/{tenant}/tasks/{task}{query}"), &[], source.as_bytes());
    assert!(r.status == 201 || r.status == 200, "deploy {task}: {} {}", r.status, r.text());
}

fn http(d: &Daemon, method: &str, tenant: &str, task: &str, rest: &str, headers: &[(&str, &str)], body: &[u8]) -> common::Response {
    d.request(method, &format!("/v1/tenants/{tenant}/tasks/{task}/http{rest}"), headers, body)
}

#[test]
fn a_webhook_answers_302_with_a_location() {
    need_root!("a_webhook_answers_302_with_a_location");
    let d = daemon();
    let t = unique("hook");
    let source = "return function (ctx, req, res) {\n  res.writeHead(302, { Location: 'https://example.com/next?from=' + ctx.query.from });\n  res.end();\n};\n";
    put_ok(d, &t, "go", "?model=webtask", source);
    let r = http(d, "GET", &t, "go", "?from=login", &[("X-Request-Id", "hook-1")], b"");
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("https://example.com/next?from=login"));
    assert_eq!((r.header("content-length"), r.header("x-request-id")), (Some("0"), Some("hook-1")));
    assert!(r.body.is_empty());
}

#[test]
fn an_html_page() {
    need_root!("an_html_page");
    let d = daemon();
    let t = unique("page");
    let source = r#"module.exports = function (ctx, req, res) {
  res.statusCode = 200;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.end('<!doctype html><h1>Hello, ' + (ctx.query.name || 'you') + '</h1><p>' + req.method + ' ' + req.url + '</p>');
};"#;
    put_ok(d, &t, "page", "?model=webtask", source);
    let r = http(d, "GET", &t, "page", "/a/b?name=Ann", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.text(), "<!doctype html><h1>Hello, Ann</h1><p>GET /a/b?name=Ann</p>");
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
}

#[test]
fn a_form_post_is_read_from_req_as_a_stream() {
    need_root!("a_form_post_is_read_from_req_as_a_stream");
    let d = daemon();
    let t = unique("form");
    let source = r#"const qs = require('querystring');
module.exports = function (ctx, req, res) {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    const form = qs.parse(body);
    res.writeHead(201, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ form, type: req.headers['content-type'], method: req.method }));
  });
};"#;
    put_ok(d, &t, "form", "?model=webtask", source);
    let r = http(
        d,
        "POST",
        &t,
        "form",
        "/submit",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=Ann+Lee&city=K%C3%B8benhavn",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"form": {"name": "Ann Lee", "city": "København"}, "type": "application/x-www-form-urlencoded", "method": "POST"})
    );
}

#[test]
fn other_models_answer_200_json_with_the_body_as_input() {
    need_root!("other_models_answer_200_json_with_the_body_as_input");
    let d = daemon();
    let t = unique("json");
    put_ok(d, &t, "echo", "", "module.exports = (input, ctx) => ({ input, task: ctx.task });");
    let r = http(d, "POST", &t, "echo", "", &[("Content-Type", "application/json; charset=utf-8")], br#"{"a":[1,2]}"#);
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")), "{}", r.text());
    assert_eq!(r.json(), json!({"input": {"a": [1, 2]}, "task": "echo"}), "the result itself, not a run envelope");
    assert_eq!(http(d, "GET", &t, "echo", "", &[], b"").json()["input"], Value::Null, "an empty body is null");
    assert_eq!(
        http(d, "PUT", &t, "echo", "/x", &[("Content-Type", "text/plain")], b"hi").json()["input"],
        "hi",
        "else the body as a string"
    );
    http(d, "POST", &t, "echo", "", &[("Content-Type", "application/json")], b"{nope").assert_error(400, "bad_request");
    // webtask (ctx, cb): the query in ctx.query, merged under the body into ctx.data; headers lower-cased.
    let wt = "module.exports = function (ctx, cb) { cb(null, { data: ctx.data, body: ctx.body, query: ctx.query, agent: ctx.headers['x-agent'] }); };";
    put_ok(d, &t, "wt", "?model=webtask", wt);
    let r = http(d, "PATCH", &t, "wt", "?a=1&b=2", &[("Content-Type", "application/json"), ("X-Agent", "test")], br#"{"b":"body"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"data": {"a": "1", "b": "body"}, "body": {"b": "body"}, "query": {"a": "1", "b": "2"}, "agent": "test"}));
    // openwhisk: params from the JSON body.
    put_ok(
        d,
        &t,
        "ow",
        "?model=openwhisk",
        "function main(params) { return { payload: 'Hello, ' + params.name, method: params.__ow_method }; }",
    );
    let r = http(d, "POST", &t, "ow", "", &[("Content-Type", "application/json")], br#"{"name":"Ann"}"#);
    assert_eq!(r.json(), json!({"payload": "Hello, Ann", "method": "post"}), "{}", r.text());
    // Errors are the version 1 envelope and statuses.
    put_ok(d, &t, "throws", "", "module.exports = () => { console.log('before'); throw new Error('kaput'); };");
    let v = http(d, "DELETE", &t, "throws", "", &[], b"").assert_error(500, "task_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("kaput") && v["logs"][0]["message"] == "before", "{v}");
    http(d, "GET", &t, "nosuch", "", &[], b"").assert_error(404, "not_found");
    http(d, "HEAD", &t, "echo", "", &[], b"");
    assert_eq!(d.request("OPTIONS", &format!("/v1/tenants/{t}/tasks/echo/http"), &[], b"").status, 405);
}

#[test]
fn a_req_res_task_on_run_is_400() {
    need_root!("a_req_res_task_on_run_is_400");
    let d = daemon();
    let t = unique("onrun");
    put_ok(d, &t, "raw", "?model=webtask", "module.exports = function (ctx, req, res) { res.end('x'); };");
    let v = d.run_task(&t, "raw", b"").assert_error(400, "bad_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("/http"), "{v}");
    assert_eq!(http(d, "GET", &t, "raw", "", &[], b"").text(), "x", "and it runs on the HTTP endpoint");
}

#[test]
fn streaming_writes_are_collected() {
    need_root!("streaming_writes_are_collected");
    let d = daemon();
    let t = unique("stream");
    let source = r#"const { Readable } = require('stream');
module.exports = function (ctx, req, res) {
  res.setHeader('Content-Type', 'text/plain');
  res.write('one ');
  setTimeout(() => {
    res.write(Buffer.from('two '));
    Readable.from(['three ', 'four']).pipe(res);
  }, 10);
};"#;
    put_ok(d, &t, "s", "?model=webtask", source);
    let r = http(d, "GET", &t, "s", "", &[], b"");
    assert_eq!((r.status, r.text()), (200, "one two three four".to_string()));
    assert_eq!(r.header("transfer-encoding"), None);
}

#[test]
fn hop_by_hop_headers_are_dropped_both_ways() {
    need_root!("hop_by_hop_headers_are_dropped_both_ways");
    let d = daemon();
    let t = unique("hop");
    let source = r#"module.exports = function (ctx, req, res) {
  res.setHeader('Connection', 'close');
  res.setHeader('Transfer-Encoding', 'chunked');
  res.setHeader('Keep-Alive', 'timeout=1');
  res.setHeader('Upgrade', 'h2c');
  res.setHeader('Content-Length', '999');
  res.setHeader('X-Request-Id', 'forged');
  res.setHeader('Set-Cookie', ['a=1', 'b=2']);
  res.setHeader('X-Fine', 'yes');
  res.end(JSON.stringify(Object.keys(req.headers).sort()));
};"#;
    put_ok(d, &t, "h", "?model=webtask", source);
    let mut c = d.client();
    let headers = [
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "p"),
        ("Keep-Alive", "5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic x"),
        ("Upgrade", "websocket"),
        ("X-Public", "1"),
        ("X-Request-Id", "hop-1"),
    ];
    let r = c.request("GET", &format!("/v1/tenants/{t}/tasks/h/http"), &headers, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Vec<String> = serde_json::from_slice(&r.body).unwrap();
    assert!(seen.contains(&"x-public".to_string()) && seen.contains(&"x-request-id".to_string()), "{seen:?}");
    for hop in ["connection", "keep-alive", "te", "proxy-authorization", "upgrade", "x-private"] {
        assert!(!seen.contains(&hop.to_string()), "the task saw {hop}: {seen:?}");
    }
    assert_eq!(r.header("x-fine"), Some("yes"));
    for hop in ["transfer-encoding", "keep-alive", "upgrade"] {
        assert_eq!(r.header(hop), None, "{hop} reached the client");
    }
    assert_eq!((r.header("x-request-id"), r.header("connection")), (Some("hop-1"), Some("keep-alive")));
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    assert_eq!(r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).count(), 2);
    // The task's Connection: close did not close the client's keep-alive connection.
    let again = c.request("GET", &format!("/v1/tenants/{t}/tasks/h/http"), &[], b"");
    assert_eq!(again.status, 200);
}

#[test]
fn what_a_task_sends_is_checked() {
    need_root!("what_a_task_sends_is_checked");
    let d = daemon();
    let t = unique("check");
    // Through the bootstrap: refused as a task_error naming the header.
    put_ok(
        d,
        &t,
        "crlf",
        "?model=webtask",
        "module.exports = function (ctx, req, res) { res.setHeader('X-Bad', 'a\\r\\nSet-Cookie: evil=1'); res.end('x'); };",
    );
    let v = http(d, "GET", &t, "crlf", "", &[], b"").assert_error(500, "task_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("X-Bad"), "{v}");
    put_ok(d, &t, "name", "?model=webtask", "module.exports = function (ctx, req, res) { res.setHeader('Bad Name', 'v'); res.end(); };");
    http(d, "GET", &t, "name", "", &[], b"").assert_error(500, "task_error");
    put_ok(d, &t, "status", "?model=webtask", "module.exports = function (ctx, req, res) { res.statusCode = 99; res.end(); };");
    http(d, "GET", &t, "status", "", &[], b"").assert_error(500, "task_error");
    put_ok(
        d,
        &t,
        "big",
        "?model=webtask",
        "module.exports = function (ctx, req, res) { res.write(Buffer.alloc(1024 * 1024, 97)); res.end('!'); };",
    );
    let v = http(d, "GET", &t, "big", "", &[], b"").assert_error(500, "task_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("too large"), "{v}");
    // Bypassing the bootstrap: an HttpResponse frame written to the runtime's socket with a CR/LF in a header
    // is a protocol error: the sandbox is killed, and the client gets 502, not the header.
    let forged = r#"module.exports = function (ctx, req, res) {
  const meta = Buffer.from(JSON.stringify({ status: 200, headers: [['X-Evil', 'a\r\nSet-Cookie: evil=1']] }));
  const frame = Buffer.alloc(13 + meta.length);
  frame.writeUInt32BE(9 + meta.length, 0);
  frame[4] = 21;
  frame.writeUInt32BE(1, 5);
  frame.writeUInt32BE(meta.length, 9);
  meta.copy(frame, 13);
  require('fs').writeSync(3, frame);
};"#;
    put_ok(d, &t, "forged", "?model=webtask", forged);
    let r = http(d, "GET", &t, "forged", "", &[], b"");
    let v = r.assert_error(502, "sandbox_crashed");
    assert!(v["error"]["message"].as_str().unwrap().contains("protocol"), "{v}");
    assert!(r.header("x-evil").is_none() && r.header("set-cookie").is_none());
    d.assert_healthy();
}
