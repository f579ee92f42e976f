//! The route table: every endpoint of the v1 API, its path shape and its methods, in one place.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Metrics,
    Logs,
    RunAdhoc,
    Tasks,
    Task,
    RunTask,
    /// `.../tasks/{k}/http[/{rest}]`: the task answers an HTTP request.
    Http,
    Secrets,
    Secret,
    Egress,
}

pub struct Route<'a, 's> {
    pub endpoint: Endpoint,
    pub methods: &'static [&'static str],
    pub tenant: Option<&'a str>,
    pub task: Option<&'a str>,
    /// The `{s}` segment: a secret's name.
    pub secret: Option<&'a str>,
    /// What a `{*}` row matched past its fixed segments (none, one or many, empty ones included).
    pub rest: &'s [&'a str],
}

/// `{t}`, `{k}` and `{s}` stand for the tenant, task and secret segments; a last `{*}` for any number of
/// segments (the row then matches any path at least as long as its fixed part).
const TABLE: &[(&[&str], Endpoint, &[&str])] = &[
    (&["v1", "health"], Endpoint::Health, &["GET"]),
    (&["metrics"], Endpoint::Metrics, &["GET"]),
    (&["v1", "logs"], Endpoint::Logs, &["GET"]),
    (&["v1", "tenants", "{t}", "run"], Endpoint::RunAdhoc, &["POST"]),
    (&["v1", "tenants", "{t}", "tasks"], Endpoint::Tasks, &["GET"]),
    (&["v1", "tenants", "{t}", "tasks", "{k}"], Endpoint::Task, &["GET", "PUT", "DELETE"]),
    (&["v1", "tenants", "{t}", "tasks", "{k}", "run"], Endpoint::RunTask, &["POST"]),
    (&["v1", "tenants", "{t}", "tasks", "{k}", "http", "{*}"], Endpoint::Http, &["GET", "POST", "PUT", "PATCH", "DELETE"]),
    (&["v1", "tenants", "{t}", "secrets"], Endpoint::Secrets, &["GET"]),
    (&["v1", "tenants", "{t}", "secrets", "{s}"], Endpoint::Secret, &["PUT", "DELETE"]),
    (&["v1", "tenants", "{t}", "egress"], Endpoint::Egress, &["GET", "PUT"]),
];

/// Match the path's segments (without the leading slash) against the table.
pub fn route<'a, 's>(segments: &'s [&'a str]) -> Option<Route<'a, 's>> {
    'rows: for (shape, endpoint, methods) in TABLE {
        let (shape, open) = match shape.split_last() {
            Some((&"{*}", fixed)) => (fixed, true),
            _ => (*shape, false),
        };
        if shape.len() > segments.len() || (!open && shape.len() != segments.len()) {
            continue;
        }
        let (mut tenant, mut task, mut secret) = (None, None, None);
        for (want, got) in shape.iter().zip(segments) {
            match *want {
                "{t}" => tenant = Some(*got),
                "{k}" => task = Some(*got),
                "{s}" => secret = Some(*got),
                literal if literal == *got => {}
                _ => continue 'rows,
            }
        }
        return Some(Route { endpoint: *endpoint, methods, tenant, task, secret, rest: &segments[shape.len()..] });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(path: &str) -> Option<(Endpoint, Option<&str>, Option<&str>)> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        route(&segs).map(|r| (r.endpoint, r.tenant, r.task))
    }

    #[test]
    fn table_matches() {
        assert_eq!(of("/v1/health"), Some((Endpoint::Health, None, None)));
        assert_eq!(of("/v1/tenants/acme/run"), Some((Endpoint::RunAdhoc, Some("acme"), None)));
        assert_eq!(of("/v1/tenants/acme/tasks/t1/run"), Some((Endpoint::RunTask, Some("acme"), Some("t1"))));
        assert_eq!(of("/v1/tenants/../tasks"), Some((Endpoint::Tasks, Some(".."), None)));
        assert_eq!(of("/v1/tenants/a/b/run"), None);
        assert_eq!(of("/v1/tenants/acme/tasks/t1/http"), Some((Endpoint::Http, Some("acme"), Some("t1"))));
        assert_eq!(of("/v1/tenants/acme/tasks/t1/http/a/b/"), Some((Endpoint::Http, Some("acme"), Some("t1"))));
        assert_eq!(of("/v1/tenants/acme/tasks/t1/httpx"), None);
        let segs = ["v1", "tenants", "a", "tasks", "t", "http", "x", "", "y"];
        assert_eq!(route(&segs).unwrap().rest, ["x", "", "y"]);
        assert!(route(&segs[..6]).unwrap().rest.is_empty());
        assert_eq!(of("/v1/tenants/acme/egress"), Some((Endpoint::Egress, Some("acme"), None)));
        assert_eq!(of("/"), None);
    }
}
