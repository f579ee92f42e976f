//! The API's requests as types: a parsed HTTP request becomes one [`ApiRequest`] or one [`ApiError`].
//!
//! Everything that can be decided from the request alone happens here (route, method, names, query,
//! body shape), so that the event loop only acts on well-formed requests and the fuzz target
//! (`fuzz/fuzz_targets/http_front.rs`) drives exactly this code. Each error's status and kind is fixed by
//! its constructor, in one place. Knows nothing of sandboxes, the store or the event loop.

use bytes::Bytes;

use super::http::{Request, Response};
use super::routes::{self, Endpoint};
use super::store;

/// A request the daemon understood.
#[derive(Debug, PartialEq, Eq)]
pub enum ApiRequest {
    Health,
    Metrics,
    /// `GET /v1/logs[?tenant=T]`.
    Logs { tenant: Option<String> },
    /// `POST /v1/tenants/T/run`: the source, and the input as JSON text (`null` when absent).
    RunAdhoc { tenant: String, source: Bytes, data: Bytes },
    ListTasks { tenant: String },
    GetTask { tenant: String, task: String },
    /// `PUT`: the source is UTF-8 (checked here); its syntax is checked in a sandbox.
    PutTask { tenant: String, task: String, source: Bytes },
    DeleteTask { tenant: String, task: String },
    /// `POST .../run`: the input as JSON text (`null` for an empty body).
    RunTask { tenant: String, task: String, data: Bytes },
}

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
    let tenant = || route.tenant.expect("the route has a tenant").to_string();
    let task = || route.task.expect("the route has a task").to_string();
    Ok(match (route.endpoint, method) {
        (Endpoint::Health, _) => ApiRequest::Health,
        (Endpoint::Metrics, _) => ApiRequest::Metrics,
        (Endpoint::Logs, _) => ApiRequest::Logs { tenant: logs_tenant(req.query.as_deref())? },
        (Endpoint::RunAdhoc, _) => {
            let (source, data) = adhoc_body(&req.body).map_err(ApiError::refused_run)?;
            ApiRequest::RunAdhoc { tenant: tenant(), source, data }
        }
        (Endpoint::Tasks, _) => ApiRequest::ListTasks { tenant: tenant() },
        (Endpoint::Task, "GET") => ApiRequest::GetTask { tenant: tenant(), task: task() },
        (Endpoint::Task, "PUT") => {
            if std::str::from_utf8(&req.body).is_err() {
                return Err(ApiError::bad_request("the task source must be UTF-8"));
            }
            ApiRequest::PutTask { tenant: tenant(), task: task(), source: req.body.clone() }
        }
        (Endpoint::Task, _) => ApiRequest::DeleteTask { tenant: tenant(), task: task() },
        (Endpoint::RunTask, _) => ApiRequest::RunTask { tenant: tenant(), task: task(), data: task_input(&req.body).map_err(ApiError::refused_run)? },
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

/// `{"code": "...", "data": <any JSON>}`: the source and the input's JSON text.
fn adhoc_body(body: &[u8]) -> Result<(Bytes, Bytes), ApiError> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        code: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let code = parsed.code.ok_or_else(|| ApiError::bad_request("the body needs a \"code\" field holding the task's source"))?;
    let data = parsed.data.map_or_else(|| Bytes::from_static(b"null"), |d| Bytes::copy_from_slice(d.get().as_bytes()));
    Ok((Bytes::copy_from_slice(code.as_bytes()), data))
}

/// A task run's body: JSON, or empty for `null`.
fn task_input(body: &Bytes) -> Result<Bytes, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Bytes::from_static(b"null"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| ApiError::bad_request("the body must be JSON (the task's input) or empty"))?;
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
        assert_eq!(run, Ok(ApiRequest::RunAdhoc { tenant: "acme".into(), source: Bytes::from_static(b"x"), data: Bytes::from_static(b"{\"a\":[1, 2]}") }));
        let task = api("POST /v1/tenants/acme/tasks/t/run HTTP/1.1\r\nContent-Length: 1\r\n\r\n ");
        assert_eq!(task, Ok(ApiRequest::RunTask { tenant: "acme".into(), task: "t".into(), data: Bytes::from_static(b"null") }));
        assert_eq!(api("DELETE /v1/tenants/acme/tasks/t HTTP/1.1\r\n\r\n"), Ok(ApiRequest::DeleteTask { tenant: "acme".into(), task: "t".into() }));
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
        assert_eq!(err("POST /v1/tenants/a/run HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").message, "the body needs a \"code\" field holding the task's source");
        assert_eq!(err("POST /v1/tenants/a/run HTTP/1.1\r\nContent-Length: 1\r\n\r\n{").status, 400);
        assert_eq!(err("POST /v1/tenants/a/tasks/t/run HTTP/1.1\r\nContent-Length: 3\r\n\r\nnul").status, 400);
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
