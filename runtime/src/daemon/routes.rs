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
}

pub struct Route<'a> {
    pub endpoint: Endpoint,
    pub methods: &'static [&'static str],
    pub tenant: Option<&'a str>,
    pub task: Option<&'a str>,
}

/// `{t}` and `{k}` stand for the tenant and task segments.
const TABLE: &[(&[&str], Endpoint, &[&str])] = &[
    (&["v1", "health"], Endpoint::Health, &["GET"]),
    (&["metrics"], Endpoint::Metrics, &["GET"]),
    (&["v1", "logs"], Endpoint::Logs, &["GET"]),
    (&["v1", "tenants", "{t}", "run"], Endpoint::RunAdhoc, &["POST"]),
    (&["v1", "tenants", "{t}", "tasks"], Endpoint::Tasks, &["GET"]),
    (&["v1", "tenants", "{t}", "tasks", "{k}"], Endpoint::Task, &["GET", "PUT", "DELETE"]),
    (&["v1", "tenants", "{t}", "tasks", "{k}", "run"], Endpoint::RunTask, &["POST"]),
];

/// Match the path's segments (without the leading slash) against the table.
pub fn route<'a>(segments: &[&'a str]) -> Option<Route<'a>> {
    'rows: for (shape, endpoint, methods) in TABLE {
        if shape.len() != segments.len() {
            continue;
        }
        let (mut tenant, mut task) = (None, None);
        for (want, got) in shape.iter().zip(segments) {
            match *want {
                "{t}" => tenant = Some(*got),
                "{k}" => task = Some(*got),
                literal if literal == *got => {}
                _ => continue 'rows,
            }
        }
        return Some(Route { endpoint: *endpoint, methods, tenant, task });
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
        assert_eq!(of("/"), None);
    }
}
