//! The daemon's HTTP front on arbitrary bytes, through the real code of the `runtime` library:
//! `daemon::http` (parser and response writer), `daemon::api` (a request into a typed request or an API
//! error, exactly what `Server::handle` calls first), `daemon::routes` (route table) and
//! `daemon::store::valid_name`. Nothing is copied.
//!
//! The input is one connection's byte stream. It is driven as `Server::read_conn` and `Server::handle`
//! drive it: parse a request from the front of the buffer, drop the bytes it used, route its path,
//! validate the tenant and task names, answer, and go on with the rest until `Partial` or an error. This is
//! done twice, with the daemon's default limits and with tiny ones (so that the 413 and 431 paths are
//! reached with inputs of fuzzer size).
//!
//! Invariants (any violation panics, which libFuzzer reports as a crash):
//! - nothing panics;
//! - `Complete(req, used)`: `0 < used <= buf.len()`, `req.body.len() <= max_body`, and the request is
//!   the same whatever way the stream was cut: every prefix shorter than `used` is `Partial` and the
//!   prefix of exactly `used` bytes parses to the same request;
//! - an error's status is one of 400, 411, 413, 431 (and its kind is `bad_request` or
//!   `payload_too_large`);
//! - a request is only accepted with Content-Length values that are `1*DIGIT` (RFC 9110 section 8.6)
//!   once the SP/HTAB around them is dropped: anything looser (`+5`, a non-ASCII space) is a framing
//!   disagreement with any proxy in front, the stuff of request smuggling;
//! - `valid_name` accepts exactly `^[a-z0-9][a-z0-9_-]{0,62}$`, checked by hand below;
//! - a route's tenant and task are the segments at the table's `{t}` and `{k}` places;
//! - every response the daemon would write for the request (404, 405 with Allow, 400 for a bad name, or
//!   the framing error) parses back with httparse as one complete response whose Content-Length is the
//!   length of what follows the head, whose X-Request-Id is the one given, and whose body is the API's
//!   error JSON with the kind and message given.
#![no_main]

use libfuzzer_sys::fuzz_target;

use runtime::daemon::{api, http, routes, store};

use api::ApiRequest;
use http::{HttpError, Limits, Parsed, Request, Response};
use routes::Endpoint;

/// `^[a-z0-9][a-z0-9_-]{0,62}$`, written out independently of `store::valid_name`.
fn name_matches_pattern(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return false;
    }
    let first_ok = matches!(bytes[0], b'a'..=b'z' | b'0'..=b'9');
    let rest_ok = bytes[1..].iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    first_ok && rest_ok
}

/// `^[A-Za-z_][A-Za-z0-9_]{0,63}$`, written out independently of `secrets::valid_name`.
fn secret_name_matches(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && matches!(b[0], b'A'..=b'Z' | b'a'..=b'z' | b'_')
        && b.iter().all(|c| matches!(c, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

fn check_name(name: &str) -> bool {
    let ok = store::valid_name(name);
    assert_eq!(ok, name_matches_pattern(name), "valid_name({name:?}) disagrees with the pattern");
    if ok {
        // What the store then does with it: <dir>/<tenant>/<task>.js must stay one path component.
        assert!(!name.contains('/') && !name.contains('.') && !name.contains('\0'));
    }
    ok
}

/// Writes `response` as the daemon does and checks that it reads back as one well-formed response.
fn check_response(response: &Response, request_id: &str, keep_alive: bool, kind: &str, message: &str) {
    let mut out = Vec::new();
    response.write(&mut out, http::Stamp { request_id, node: "fuzz" }, keep_alive);
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("the daemon wrote a response httparse cannot read: {other:?}\n{:?}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(parsed.code, Some(response.status));
    assert_eq!(parsed.version, Some(1));
    let mut content_length = None;
    let mut seen_request_id = None;
    let mut connection = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            assert!(content_length.is_none(), "two Content-Length headers");
            let text = std::str::from_utf8(h.value).expect("Content-Length is ASCII");
            content_length = Some(text.parse::<usize>().expect("Content-Length is a number"));
        } else if h.name.eq_ignore_ascii_case("x-request-id") {
            seen_request_id = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection = Some(h.value.to_vec());
        }
    }
    let content_length = content_length.expect("every response has a Content-Length");
    assert_eq!(content_length, out.len() - head_len, "Content-Length is not the length of the body written");
    assert_eq!(content_length, response.body.len());
    assert_eq!(seen_request_id.as_deref(), Some(request_id.as_bytes()));
    let want_connection: &[u8] = if keep_alive { b"keep-alive" } else { b"close" };
    assert_eq!(connection.as_deref(), Some(want_connection));
    let body: serde_json::Value = serde_json::from_slice(&out[head_len..]).expect("the error body is JSON");
    assert_eq!(body["error"]["kind"], kind);
    assert_eq!(body["error"]["message"], message);
}

/// `Server::handle`'s first step, the daemon's own: `api::parse` turns the request into a typed request or
/// an error, and nothing else is decided before the loop acts on it. Checked here against the route table's
/// shape and the name pattern, independently.
fn route_request(req: &Request, request_id: &str) {
    let keep = req.keep_alive;
    let segments: Vec<&str> = req.path.strip_prefix('/').unwrap_or(&req.path).split('/').collect();
    let parsed = api::parse(req);
    let Some(route) = routes::route(&segments) else {
        let e = parsed.expect_err("no route, yet a request");
        assert_eq!((e.status, e.kind), (404, "not_found"));
        return check_response(&e.response(), request_id, keep, e.kind, &e.message);
    };
    assert!(!route.methods.is_empty());
    // The shape of the table: tenant at index 2, task at index 4, literals elsewhere.
    match route.endpoint {
        Endpoint::Health => assert_eq!(segments, ["v1", "health"]),
        Endpoint::Metrics => assert_eq!(segments, ["metrics"]),
        Endpoint::Logs => assert_eq!(segments, ["v1", "logs"]),
        Endpoint::RunAdhoc
        | Endpoint::Tasks
        | Endpoint::Task
        | Endpoint::RunTask
        | Endpoint::Http
        | Endpoint::Secrets
        | Endpoint::Secret
        | Endpoint::Egress => {
            assert_eq!(&segments[..2], ["v1", "tenants"]);
            assert_eq!(route.tenant, Some(segments[2]));
        }
    }
    match route.endpoint {
        Endpoint::Secrets | Endpoint::Secret => assert_eq!(segments[3], "secrets"),
        _ => assert_eq!(route.secret, None),
    }
    if route.endpoint == Endpoint::Secret {
        assert_eq!(route.secret, Some(segments[4]));
    }
    match route.endpoint {
        Endpoint::Task | Endpoint::RunTask | Endpoint::Http => {
            assert_eq!(segments[3], "tasks");
            assert_eq!(route.task, Some(segments[4]));
        }
        _ => assert_eq!(route.task, None),
    }
    match route.endpoint {
        Endpoint::Health | Endpoint::Metrics | Endpoint::Logs => assert_eq!(route.tenant, None),
        _ => {}
    }
    let names_ok = route.tenant.iter().chain(route.task.iter()).all(|n| check_name(n));
    match parsed {
        Err(e) => {
            assert!(matches!((e.status, e.kind), (400, "bad_request") | (405, "method_not_allowed")), "{e:?}");
            if e.status == 405 {
                assert!(!route.methods.contains(&req.method.as_str()));
                let allow = e.allow.clone().expect("a 405 says what is allowed");
                assert_eq!(allow, route.methods.join(", "));
                let response = e.response();
                assert!(response.headers.iter().any(|(n, v)| *n == "Allow" && *v == allow));
            } else if !names_ok {
                assert!(e.message.starts_with("invalid name"), "{e:?}");
            } else if route.secret.is_some_and(|n| !secret_name_matches(n)) {
                assert!(e.message.starts_with("invalid secret name"), "{e:?}");
            }
            check_response(&e.response(), request_id, keep, e.kind, &e.message);
        }
        Ok(api_request) => {
            assert!(route.methods.contains(&req.method.as_str()), "{} accepted on {}", req.method, req.path);
            assert!(names_ok, "a bad name was accepted: {api_request:?}");
            match &api_request {
                ApiRequest::RunAdhoc { data, .. } | ApiRequest::RunTask { data, .. } => {
                    // The input reaches the sandbox as JSON text.
                    serde_json::from_slice::<serde_json::Value>(data).expect("a run's input is JSON");
                }
                ApiRequest::PutTask { source, .. } => assert!(std::str::from_utf8(source).is_ok()),
                ApiRequest::PutSecret { name, value, .. } => {
                    assert!(secret_name_matches(name), "a bad secret name was accepted: {name:?}");
                    assert!(value.len() <= 4096);
                }
                ApiRequest::DeleteSecret { name, .. } => assert!(secret_name_matches(name)),
                ApiRequest::Http { http, .. } => {
                    // Hop-by-hop headers never reach a task.
                    for (n, _) in &http.headers {
                        let n = n.to_ascii_lowercase();
                        assert!(
                            !matches!(n.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "te" | "trailer"),
                            "{n}"
                        );
                    }
                }
                ApiRequest::Logs { tenant: Some(t) } => assert!(check_name(t)),
                ApiRequest::ListTasks { tenant } | ApiRequest::GetTask { tenant, .. } | ApiRequest::DeleteTask { tenant, .. } => {
                    assert!(check_name(tenant))
                }
                ApiRequest::GetEgress { tenant } => assert!(check_name(tenant)),
                // Every entry of an accepted allow-list is a rule the daemon can use.
                ApiRequest::PutEgress { tenant, allow } => {
                    assert!(check_name(tenant));
                    assert!(allow.len() <= api::EGRESS_RULES_MAX);
                    for entry in allow {
                        assert!(runtime::daemon::egress_policy::Rule::parse(entry).is_ok(), "an unusable rule was accepted: {entry:?}");
                    }
                }
                _ => {}
            }
        }
    }
}

/// Known, reported bugs whose checks can be switched off (comma-separated names in
/// `TASKCELL_FUZZ_TOLERATE`) so that a long run can go on looking for others. See docs/fuzzing.md.
fn tolerated(name: &str) -> bool {
    static LIST: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| std::env::var("TASKCELL_FUZZ_TOLERATE").unwrap_or_default().split(',').map(str::to_owned).collect())
        .iter()
        .any(|n| n == name)
}

/// Every Content-Length value of an accepted request is digits only, as the RFC's grammar says.
fn check_content_length_grammar(head: &[u8]) {
    if tolerated("content-length-grammar") {
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; http::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return;
    }
    for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        let v = h.value;
        let start = v.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(v.len());
        let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(start, |e| e + 1);
        let digits = &v[start..end];
        assert!(
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
            "accepted a request with Content-Length {:?}, which is not 1*DIGIT",
            String::from_utf8_lossy(v)
        );
    }
}

fn same_request(a: &Request, b: &Request) -> bool {
    a.method == b.method
        && a.path == b.path
        && a.query == b.query
        && a.body == b.body
        && a.keep_alive == b.keep_alive
        && a.request_id == b.request_id
}

fn check_error(e: &HttpError) {
    assert!(matches!(e.status, 400 | 411 | 413 | 431), "unexpected framing error status {}: {e:?}", e.status);
    assert!(matches!(e.kind, "bad_request" | "payload_too_large"), "unexpected kind {e:?}");
    assert_eq!(e.status == 413, e.kind == "payload_too_large", "{e:?}");
    // `Server::fail_conn`.
    check_response(&Response::error(e.status, e.kind, &e.message, None), "boot-1", false, e.kind, &e.message);
}

fn drive(data: &[u8], limits: &Limits) {
    let mut rest = data;
    // Bounded: every Complete consumes at least one byte.
    loop {
        match http::parse(rest, limits) {
            Ok(Parsed::Partial) => {
                assert!(rest.len() <= limits.max_head || head_complete(rest), "Partial past max_head without a complete head");
                return;
            }
            Err(e) => return check_error(&e),
            Ok(Parsed::Complete(req, used)) => {
                assert!(used > 0, "Complete with 0 bytes used");
                assert!(used <= rest.len(), "used {used} > buffer {}", rest.len());
                assert!(req.body.len() <= limits.max_body);
                assert!(!req.path.contains('?'));
                check_content_length_grammar(&rest[..used]);
                if let Some(id) = &req.request_id {
                    assert!(!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()));
                }
                // The same request however the stream was cut: the daemon parses whatever has arrived.
                match http::parse(&rest[..used], limits) {
                    Ok(Parsed::Complete(again, n)) => {
                        assert_eq!(n, used);
                        assert!(same_request(&req, &again), "{req:?} != {again:?}");
                    }
                    _ => panic!("the first {used} bytes alone do not parse to the same request"),
                }
                for cut in [used - 1, used / 2, 0] {
                    match http::parse(&rest[..cut], limits) {
                        Ok(Parsed::Partial) => {}
                        Ok(Parsed::Complete(r, n)) => panic!("a prefix of {cut} bytes is already a request of {n}: {r:?}"),
                        Err(e) => panic!("a prefix of {cut} bytes of a valid request is an error: {e:?}"),
                    }
                }
                let request_id = req.request_id.clone().unwrap_or_else(|| "boot-1".to_string());
                route_request(&req, &request_id);
                rest = &rest[used..];
            }
        }
    }
}

/// Whether httparse sees a complete head (a Partial past max_head is then waiting for a body).
fn head_complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; http::MAX_HEADERS];
    matches!(httparse::Request::new(&mut headers).parse(buf), Ok(httparse::Status::Complete(_)))
}

fuzz_target!(|data: &[u8]| {
    drive(data, &Limits::default());
    drive(data, &Limits { max_head: 96, max_body: 16 });
    // Names straight from the input, not only those that survive httparse's URI rules.
    if let Ok(text) = std::str::from_utf8(data) {
        for part in text.split(['/', '?', '&', '=', ' ']) {
            check_name(part);
        }
    }
});
