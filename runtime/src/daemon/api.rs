//! The API's requests as types: a parsed HTTP request becomes one [`ApiRequest`] or one [`ApiError`].
//!
//! Everything that can be decided from the request alone happens here (route, method, names, query,
//! body shape), so that the event loop only acts on well-formed requests and the fuzz target
//! (`fuzz/fuzz_targets/http_front.rs`) drives exactly this code. Each error's status and kind is fixed by
//! its constructor, in one place. Knows nothing of sandboxes, the store or the event loop.

use bytes::Bytes;

use super::http::{Request, Response};
use super::routes::{self, Endpoint};
use super::secrets;
use super::store::{self, TaskSettings};

/// A request the daemon understood.
#[derive(Debug, PartialEq, Eq)]
pub enum ApiRequest {
    Health,
    Metrics,
    /// `GET /v1/logs[?tenant=T]`.
    Logs {
        tenant: Option<String>,
    },
    /// `POST /v1/tenants/T/run`: the source, the input as JSON text (`null` when absent), and the run's
    /// settings (checked against the operator's models and limits by the handler).
    RunAdhoc {
        tenant: String,
        source: Bytes,
        data: Bytes,
        settings: TaskSettings,
    },
    ListTasks {
        tenant: String,
    },
    GetTask {
        tenant: String,
        task: String,
    },
    /// `PUT ...?model=M&timeout_ms=N`: the source is UTF-8 (checked here); its syntax is checked in a sandbox
    /// by its model's compiler.
    PutTask {
        tenant: String,
        task: String,
        source: Bytes,
        settings: TaskSettings,
    },
    DeleteTask {
        tenant: String,
        task: String,
    },
    /// `POST .../run`: the input as JSON text (`null` for an empty body).
    RunTask {
        tenant: String,
        task: String,
        data: Bytes,
    },
    /// `.../tasks/K/http[/REST]`: the request for the task, hop-by-hop headers dropped.
    Http {
        tenant: String,
        task: String,
        http: crate::HttpRequestMeta,
        body: Bytes,
    },
    ListSecrets {
        tenant: String,
    },
    /// The value is UTF-8 of at most `secrets::MAX_VALUE` bytes (checked here).
    PutSecret {
        tenant: String,
        name: String,
        value: String,
    },
    DeleteSecret {
        tenant: String,
        name: String,
    },
    GetEgress {
        tenant: String,
    },
    /// `PUT .../egress`: every entry checked (`egress_policy::Rule::parse`); kept as given.
    PutEgress {
        tenant: String,
        allow: Vec<String>,
    },
}

/// Entries an allow-list may hold.
pub const EGRESS_RULES_MAX: usize = 1024;

/// Why a request was refused before anything was done for it.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
    /// A run's input was refused: `/metrics` counts it as an invocation that ended `bad_request`.
    pub refused_run: bool,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: 400, kind: "bad_request", message: message.into(), allow: None, refused_run: false }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: 404, kind: "not_found", message: message.into(), allow: None, refused_run: false }
    }

    fn method_not_allowed(method: &str, path: &str, methods: &[&str]) -> ApiError {
        let allow = methods.join(", ");
        let message = format!("{method} is not allowed on {path}; allowed: {allow}");
        ApiError { status: 405, kind: "method_not_allowed", message, allow: Some(allow), refused_run: false }
    }

    fn refused_run(mut self) -> ApiError {
        self.refused_run = true;
        self
    }

    pub fn response(&self) -> Response {
        let r = Response::error(self.status, self.kind, &self.message, None);
        match &self.allow {
            Some(allow) => r.header("Allow", allow.clone()),
            None => r,
        }
    }
}

/// Route, check and parse one request.
pub fn parse(req: &Request) -> Result<ApiRequest, ApiError> {
    let segments: Vec<&str> = req.path.strip_prefix('/').unwrap_or(&req.path).split('/').collect();
    let route = routes::route(&segments).ok_or_else(|| ApiError::not_found(format!("no such endpoint: {}", req.path)))?;
    let method = req.method.as_str();
    if !route.methods.contains(&method) {
        return Err(ApiError::method_not_allowed(method, &req.path, route.methods));
    }
    for name in route.tenant.iter().chain(route.task.iter()) {
        if !store::valid_name(name) {
            return Err(ApiError::bad_request(format!("invalid name {name:?}: names match ^[a-z0-9][a-z0-9_-]{{0,62}}$")));
        }
    }
    if let Some(name) = route.secret {
        if !secrets::valid_name(name) {
            return Err(ApiError::bad_request(format!("invalid secret name {name:?}: names match ^[A-Za-z_][A-Za-z0-9_]{{0,63}}$")));
        }
    }
    let tenant = || route.tenant.expect("the route has a tenant").to_string();
    let secret = || route.secret.expect("the route has a secret").to_string();
    let task = || route.task.expect("the route has a task").to_string();
    Ok(match (route.endpoint, method) {
        (Endpoint::Health, _) => ApiRequest::Health,
        (Endpoint::Metrics, _) => ApiRequest::Metrics,
        (Endpoint::Logs, _) => ApiRequest::Logs { tenant: logs_tenant(req.query.as_deref())? },
        (Endpoint::RunAdhoc, _) => {
            let (source, data, settings) = adhoc_body(&req.body).map_err(ApiError::refused_run)?;
            ApiRequest::RunAdhoc { tenant: tenant(), source, data, settings }
        }
        (Endpoint::Tasks, _) => ApiRequest::ListTasks { tenant: tenant() },
        (Endpoint::Task, "GET") => ApiRequest::GetTask { tenant: tenant(), task: task() },
        (Endpoint::Task, "PUT") => {
            if std::str::from_utf8(&req.body).is_err() {
                return Err(ApiError::bad_request("the task source must be UTF-8"));
            }
            ApiRequest::PutTask { tenant: tenant(), task: task(), source: req.body.clone(), settings: task_settings(req.query.as_deref())? }
        }
        (Endpoint::Task, _) => ApiRequest::DeleteTask { tenant: tenant(), task: task() },
        (Endpoint::Secrets, _) => ApiRequest::ListSecrets { tenant: tenant() },
        (Endpoint::Secret, "PUT") => ApiRequest::PutSecret { tenant: tenant(), name: secret(), value: secret_value(&req.body)? },
        (Endpoint::Secret, _) => ApiRequest::DeleteSecret { tenant: tenant(), name: secret() },
        (Endpoint::Http, _) => {
            ApiRequest::Http { tenant: tenant(), task: task(), http: http_request(req, route.rest), body: req.body.clone() }
        }
        (Endpoint::RunTask, _) => {
            ApiRequest::RunTask { tenant: tenant(), task: task(), data: task_input(&req.body).map_err(ApiError::refused_run)? }
        }
        (Endpoint::Egress, "GET") => ApiRequest::GetEgress { tenant: tenant() },
        (Endpoint::Egress, _) => ApiRequest::PutEgress { tenant: tenant(), allow: egress_body(&req.body)? },
    })
}

/// `?tenant=NAME` of the log stream (other parameters are ignored).
fn logs_tenant(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut tenant = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("tenant", t)) if store::valid_name(t) => tenant = Some(t.to_string()),
            Some(("tenant", t)) => return Err(ApiError::bad_request(format!("invalid tenant name {t:?}"))),
            _ => {}
        }
    }
    Ok(tenant)
}

/// `{"code": "...", "data": <any JSON>, "model": "...", "timeout_ms": N}`: the source, the input's JSON
/// text and the run's settings.
fn adhoc_body(body: &[u8]) -> Result<(Bytes, Bytes, TaskSettings), ApiError> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        code: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let code = parsed.code.ok_or_else(|| ApiError::bad_request("the body needs a \"code\" field holding the task's source"))?;
    let data = parsed.data.map_or_else(|| Bytes::from_static(b"null"), |d| Bytes::copy_from_slice(d.get().as_bytes()));
    let settings = settings_of(parsed.model.as_deref(), parsed.timeout_ms)?;
    Ok((Bytes::copy_from_slice(code.as_bytes()), data, settings))
}

/// `?model=M&timeout_ms=N` of a deploy (other parameters are ignored; names need no decoding).
fn task_settings(query: Option<&str>) -> Result<TaskSettings, ApiError> {
    let (mut model, mut timeout_ms) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "model" => model = Some(value),
            "timeout_ms" => {
                let n = value.parse::<u64>().ok().filter(|_| value.bytes().all(|b| b.is_ascii_digit()));
                timeout_ms =
                    Some(n.ok_or_else(|| {
                        ApiError::bad_request(format!("timeout_ms must be a whole number of milliseconds, not {value:?}"))
                    })?);
            }
            _ => {}
        }
    }
    settings_of(model, timeout_ms)
}

/// Settings as far as the request alone decides: a model named as models are (`taskcell` is the default,
/// kept as none), a timeout of at least 1 ms. Whether the model exists and the timeout is within the
/// operator's limit is the handler's to check.
fn settings_of(model: Option<&str>, timeout_ms: Option<u64>) -> Result<TaskSettings, ApiError> {
    if let Some(m) = model.filter(|m| !store::valid_name(m)) {
        return Err(ApiError::bad_request(format!("unknown model {m:?}: model names match ^[a-z0-9][a-z0-9_-]{{0,62}}$")));
    }
    if timeout_ms == Some(0) {
        return Err(ApiError::bad_request("timeout_ms must be at least 1"));
    }
    Ok(TaskSettings { model: model.filter(|m| *m != "taskcell").map(str::to_owned), timeout_ms })
}

/// Hop-by-hop request headers (RFC 9110 7.6.1), never handed to a task, and any that `Connection` names.
fn hop_by_hop(name: &str, connection: &[String]) -> bool {
    const HOP: &[&str] = &["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
        || connection.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// The request as the task sees it: method, `/{rest}` with the query string, headers but the hop-by-hop ones.
fn http_request(req: &Request, rest: &[&str]) -> crate::HttpRequestMeta {
    let mut url = format!("/{}", rest.join("/"));
    if let Some(q) = &req.query {
        url.push('?');
        url.push_str(q);
    }
    let connection: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_string()).collect::<Vec<_>>())
        .collect();
    let headers = req.headers.iter().filter(|(n, _)| !hop_by_hop(n, &connection)).cloned().collect();
    crate::HttpRequestMeta { method: req.method.clone(), url, headers }
}

/// A secret's value: the body as it is, UTF-8, at most 4 KiB. The message never repeats it.
fn secret_value(body: &Bytes) -> Result<String, ApiError> {
    if body.len() > secrets::MAX_VALUE {
        return Err(ApiError::bad_request(format!("a secret's value is at most {} bytes; this one is {}", secrets::MAX_VALUE, body.len())));
    }
    String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("a secret's value must be UTF-8"))
}

/// `{"allow": ["host:port", ...]}`: every entry a rule, at most `EGRESS_RULES_MAX` of them.
fn egress_body(body: &[u8]) -> Result<Vec<String>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Body {
        allow: Option<Vec<String>>,
    }
    let parsed: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e} (expected {{\"allow\": [\"host:port\", ...]}})")))?;
    let allow =
        parsed.allow.ok_or_else(|| ApiError::bad_request("the body needs an \"allow\" field holding a list of host:port entries"))?;
    if allow.len() > EGRESS_RULES_MAX {
        return Err(ApiError::bad_request(format!("the allow-list has {} entries, over the limit of {EGRESS_RULES_MAX}", allow.len())));
    }
    for entry in &allow {
        if let Err(e) = super::egress_policy::Rule::parse(entry) {
            return Err(ApiError::bad_request(format!("allow-list entry {e}")));
        }
    }
    Ok(allow)
}

/// A task run's body: JSON, or empty for `null`.
fn task_input(body: &Bytes) -> Result<Bytes, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Bytes::from_static(b"null"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|_| ApiError::bad_request("the body must be JSON (the task's input) or empty"))?;
    Ok(body.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::http::{self, Limits, Parsed};

    fn request(raw: &[u8]) -> Request {
        match http::parse(raw, &Limits::default()) {
            Ok(Parsed::Complete(r, _)) => r,
            _ => panic!("not a whole request: {:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn api(raw: &str) -> Result<ApiRequest, ApiError> {
        parse(&request(raw.as_bytes()))
    }

    #[test]
    fn requests_become_types() {
        assert_eq!(api("GET /v1/health HTTP/1.1\r\n\r\n"), Ok(ApiRequest::Health));
        assert_eq!(api("GET /v1/logs?tenant=acme&x=1 HTTP/1.1\r\n\r\n"), Ok(ApiRequest::Logs { tenant: Some("acme".into()) }));
        let run = api("POST /v1/tenants/acme/run HTTP/1.1\r\nContent-Length: 34\r\n\r\n{\"code\":\"x\",\"data\":{\"a\":[1, 2]}}  ");
        let settings = TaskSettings::default();
        assert_eq!(
            run,
            Ok(ApiRequest::RunAdhoc {
                tenant: "acme".into(),
                source: Bytes::from_static(b"x"),
                data: Bytes::from_static(b"{\"a\":[1, 2]}"),
                settings
            })
        );
        let task = api("POST /v1/tenants/acme/tasks/t/run HTTP/1.1\r\nContent-Length: 1\r\n\r\n ");
        assert_eq!(task, Ok(ApiRequest::RunTask { tenant: "acme".into(), task: "t".into(), data: Bytes::from_static(b"null") }));
        assert_eq!(
            api("DELETE /v1/tenants/acme/tasks/t HTTP/1.1\r\n\r\n"),
            Ok(ApiRequest::DeleteTask { tenant: "acme".into(), task: "t".into() })
        );
        let body = r#"{"allow": ["api.test:443", "*.b.test:80", "[::1]:5432"]}"#;
        let put = api(&format!("PUT /v1/tenants/acme/egress HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        let allow = vec!["api.test:443".to_string(), "*.b.test:80".to_string(), "[::1]:5432".to_string()];
        assert_eq!(put, Ok(ApiRequest::PutEgress { tenant: "acme".into(), allow }));
        assert_eq!(api("GET /v1/tenants/acme/egress HTTP/1.1\r\n\r\n"), Ok(ApiRequest::GetEgress { tenant: "acme".into() }));
    }

    #[test]
    fn settings_come_from_the_query_or_the_body() {
        let put = api("PUT /v1/tenants/a/tasks/t?model=webtask&timeout_ms=20000&x=1 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx");
        let settings = TaskSettings { model: Some("webtask".into()), timeout_ms: Some(20_000) };
        assert_eq!(put, Ok(ApiRequest::PutTask { tenant: "a".into(), task: "t".into(), source: Bytes::from_static(b"x"), settings }));
        // taskcell is the default, kept as none: a later PUT without settings is the same task.
        let put = api("PUT /v1/tenants/a/tasks/t?model=taskcell HTTP/1.1\r\nContent-Length: 1\r\n\r\nx");
        assert!(matches!(put, Ok(ApiRequest::PutTask { settings, .. }) if settings.is_default()));
        let body = r#"{"code":"x","model":"openwhisk","timeout_ms":7}"#;
        let run = api(&format!("POST /v1/tenants/a/run HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        assert!(
            matches!(run, Ok(ApiRequest::RunAdhoc { settings, .. }) if settings == TaskSettings { model: Some("openwhisk".into()), timeout_ms: Some(7) })
        );
        for bad in [
            "model=",
            "model=Web",
            "model=a%2fb",
            "timeout_ms=0",
            "timeout_ms=-1",
            "timeout_ms=1.5",
            "timeout_ms=+5",
            "timeout_ms=99999999999999999999",
        ] {
            let e = api(&format!("PUT /v1/tenants/a/tasks/t?{bad} HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")).expect_err(bad);
            assert_eq!((e.status, e.kind), (400, "bad_request"), "{bad}");
        }
        for bad in [r#"{"code":"x","timeout_ms":"5"}"#, r#"{"code":"x","model":3}"#, r#"{"code":"x","timeout_ms":0}"#] {
            let e = api(&format!("POST /v1/tenants/a/run HTTP/1.1\r\nContent-Length: {}\r\n\r\n{bad}", bad.len())).expect_err(bad);
            assert_eq!((e.status, e.kind, e.refused_run), (400, "bad_request", true), "{bad}");
        }
    }

    #[test]
    fn the_http_endpoint_hands_over_the_request_but_hop_by_hop_headers() {
        let raw = "POST /v1/tenants/a/tasks/t/http/hook/x?y=1&z=%20 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: p\r\nUpgrade: ws\r\nX-Keep: k\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
        let Ok(ApiRequest::Http { tenant, task, http, body }) = api(raw) else { panic!("not an Http request") };
        assert_eq!((tenant.as_str(), task.as_str(), &body[..]), ("a", "t", &b"hi"[..]));
        assert_eq!((http.method.as_str(), http.url.as_str()), ("POST", "/hook/x?y=1&z=%20"));
        let names: Vec<&str> = http.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Host", "X-Keep", "Content-Type", "Content-Length"]);
        let Ok(ApiRequest::Http { http, .. }) = api("GET /v1/tenants/a/tasks/t/http HTTP/1.1\r\n\r\n") else { panic!() };
        assert_eq!(http.url, "/");
        let Ok(ApiRequest::Http { http, .. }) = api("DELETE /v1/tenants/a/tasks/t/http/?q HTTP/1.1\r\n\r\n") else { panic!() };
        assert_eq!(http.url, "/?q");
        assert_eq!(api("HEAD /v1/tenants/a/tasks/t/http HTTP/1.1\r\n\r\n").unwrap_err().status, 405);
        assert_eq!(api("GET /v1/tenants/a/tasks/T/http HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
    }

    #[test]
    fn each_error_has_its_status_and_kind() {
        let err = |raw: &str| api(raw).expect_err(raw);
        assert_eq!(err("GET /nope HTTP/1.1\r\n\r\n").status, 404);
        let e = err("POST /v1/health HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((e.status, e.kind, e.allow.as_deref()), (405, "method_not_allowed", Some("GET")));
        assert_eq!(e.response().headers, vec![("Allow", "GET".to_string())]);
        assert_eq!(err("GET /v1/tenants/ACME/tasks HTTP/1.1\r\n\r\n").kind, "bad_request");
        assert_eq!(err("GET /v1/tenants/a/tasks/%2e%2e HTTP/1.1\r\n\r\n").status, 400);
        assert_eq!(err("GET /v1/logs?tenant=../x HTTP/1.1\r\n\r\n").status, 400);
        assert_eq!(
            err("POST /v1/tenants/a/run HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").message,
            "the body needs a \"code\" field holding the task's source"
        );
        assert_eq!(err("POST /v1/tenants/a/run HTTP/1.1\r\nContent-Length: 1\r\n\r\n{").status, 400);
        assert_eq!(err("POST /v1/tenants/a/tasks/t/run HTTP/1.1\r\nContent-Length: 3\r\n\r\nnul").status, 400);
        let body = r#"{"allow": ["ok.test:443", "no-port.test"]}"#;
        let e = err(&format!("PUT /v1/tenants/a/egress HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        assert_eq!(e.status, 400);
        assert!(e.message.contains("\"no-port.test\""), "{}", e.message);
        let not_utf8 = parse(&request(b"PUT /v1/tenants/a/tasks/t HTTP/1.1\r\nContent-Length: 1\r\n\r\n\xff")).expect_err("not UTF-8");
        assert_eq!(not_utf8.message, "the task source must be UTF-8");
    }

    /// Every input kept under fuzz/regressions/http_front/ (each once crashed or broke an invariant), through
    /// the same code the fuzz target drives: the framing parser, then this module, until the input is used up.
    #[test]
    fn fuzz_regressions_parse_without_panicking() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/http_front");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/http_front") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            for limits in [Limits::default(), Limits { max_head: 96, max_body: 16 }] {
                let mut rest = &data[..];
                while let Ok(Parsed::Complete(req, used)) = http::parse(rest, &limits) {
                    let _ = parse(&req).map_err(|e| e.response());
                    rest = &rest[used..];
                }
            }
            seen += 1;
        }
        assert!(seen > 0, "no regression inputs in {}", dir.display());
    }
}
