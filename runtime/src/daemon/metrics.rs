//! Counters and the invocation latency histogram behind `GET /metrics`, rendered in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! Owned by the event loop and updated from it only, hence plain integers. Gauges describe state that other
//! modules own (the pool, connections, log subscribers), so the caller reads them at render time and passes
//! them in as `Gauges` rather than this module keeping copies that could drift.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// The `Content-Type` of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets; `+Inf` follows implicitly.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Where a tenant's new sandbox came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColdStart {
    /// Taken from the pre-warmed pool.
    Pool,
    /// The pool was empty; made for this request.
    OnDemand,
}

/// Values read from their owners when `/metrics` is served.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub pool_target: u64,
    pub pool_idle: u64,
    pub tenant_sandboxes: u64,
    pub connections_open: u64,
    pub log_subscribers: u64,
    /// A counter, but kept by the log fan-out, which drops events for slow subscribers.
    pub log_events_dropped: u64,
    pub egress_open: u64,
    /// With a log hub: this node's events the hub did not get (a counter, kept by the publisher), and whether
    /// the connection to it is up.
    pub log_hub: Option<(u64, bool)>,
    /// With `--store`: the shared store's connection, version and change counts.
    pub store: Option<StoreGauges>,
}

/// What `/metrics` tells of the shared store (kept by its threads, read when served).
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreGauges {
    pub connected: bool,
    pub version: u64,
    pub committed: u64,
    pub refused: u64,
    pub followed: u64,
}

#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket, not cumulative; the last slot is `+Inf`.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    invocations: BTreeMap<String, u64>,
    http_requests: BTreeMap<u16, u64>,
    cold_pool: u64,
    cold_on_demand: u64,
    sandboxes_created: u64,
    sandboxes_killed: BTreeMap<String, u64>,
    /// Tenant sandboxes moved to the batch CPUs (busy) and back (idle again).
    sandboxes_to_batch: u64,
    code_cache_runs: u64,
    sandboxes_from_batch: u64,
    /// Connections refused past `--max-connections`.
    connections_refused: u64,
    /// Frames from sandboxes that broke the protocol (each killed its sandbox).
    protocol_errors: u64,
    /// Code caches dropped for being too large for their source.
    code_caches_refused: u64,
    duration: Histogram,
    /// Egress connections by outcome (`allowed`, `not_allowed`, `private_address`, `limit`, ...).
    egress: BTreeMap<String, u64>,
    egress_bytes_in: u64,
    egress_bytes_out: u64,
}

impl Metrics {
    /// One finished invocation; `outcome` is `ok` or the error kind of the API (`timeout`, `task_error`, ...).
    pub fn invocation(&mut self, outcome: &str) {
        bump(&mut self.invocations, outcome);
    }

    /// One response sent, by status code.
    pub fn http_request(&mut self, status: u16) {
        *self.http_requests.entry(status).or_default() += 1;
    }

    pub fn cold_start(&mut self, source: ColdStart) {
        match source {
            ColdStart::Pool => self.cold_pool += 1,
            ColdStart::OnDemand => self.cold_on_demand += 1,
        }
    }

    pub fn sandbox_created(&mut self) {
        self.sandboxes_created += 1;
    }

    /// A Run that carried a V8 code cache with its source.
    pub fn code_cache_sent(&mut self) {
        self.code_cache_runs += 1;
    }

    /// A busy tenant sandbox moved to the batch CPUs (`to_batch`), or an idle one given every CPU back.
    pub fn sandbox_moved(&mut self, to_batch: bool) {
        if to_batch {
            self.sandboxes_to_batch += 1;
        } else {
            self.sandboxes_from_batch += 1;
        }
    }

    pub fn connection_refused(&mut self) {
        self.connections_refused += 1;
    }

    pub fn protocol_error(&mut self) {
        self.protocol_errors += 1;
    }

    pub fn code_cache_refused(&mut self) {
        self.code_caches_refused += 1;
    }

    /// One egress connection's outcome.
    pub fn egress(&mut self, outcome: &str) {
        bump(&mut self.egress, outcome);
    }

    /// What one egress connection carried, when it ended.
    pub fn egress_bytes(&mut self, bytes_in: u64, bytes_out: u64) {
        self.egress_bytes_in += bytes_in;
        self.egress_bytes_out += bytes_out;
    }

    /// One sandbox ended, by reason (`timeout`, `memory_limit`, `crashed`, `idle`, `max_age`, ...).
    pub fn sandbox_killed(&mut self, reason: &str) {
        bump(&mut self.sandboxes_killed, reason);
    }

    /// One invocation's duration, into the latency histogram.
    pub fn observe(&mut self, duration: Duration) {
        let secs = duration.as_secs_f64();
        let h = &mut self.duration;
        let slot = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
        h.counts[slot] += 1;
        h.sum += secs;
        h.count += 1;
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;

        family(o, "taskcell_invocations_total", "counter", "Invocations finished, by outcome.");
        for (outcome, n) in &self.invocations {
            sample(o, "taskcell_invocations_total", &[("outcome", outcome)], *n);
        }
        family(o, "taskcell_http_requests_total", "counter", "HTTP responses sent, by status.");
        for (status, n) in &self.http_requests {
            sample(o, "taskcell_http_requests_total", &[("status", &status.to_string())], *n);
        }
        family(o, "taskcell_cold_starts_total", "counter", "Invocations that had to give the tenant a sandbox.");
        sample(o, "taskcell_cold_starts_total", &[("source", "pool")], self.cold_pool);
        sample(o, "taskcell_cold_starts_total", &[("source", "on_demand")], self.cold_on_demand);
        family(o, "taskcell_sandboxes_created_total", "counter", "Sandboxes made.");
        sample(o, "taskcell_sandboxes_created_total", &[], self.sandboxes_created);
        family(o, "taskcell_sandboxes_killed_total", "counter", "Sandboxes ended, by reason.");
        for (reason, n) in &self.sandboxes_killed {
            sample(o, "taskcell_sandboxes_killed_total", &[("reason", reason)], *n);
        }
        family(o, "taskcell_code_cache_runs_total", "counter", "Runs that gave a sandbox a task's source with its V8 code cache.");
        sample(o, "taskcell_code_cache_runs_total", &[], self.code_cache_runs);
        family(o, "taskcell_connections_refused_total", "counter", "Client connections refused past --max-connections.");
        sample(o, "taskcell_connections_refused_total", &[], self.connections_refused);
        family(
            o,
            "taskcell_sandbox_protocol_errors_total",
            "counter",
            "Frames from sandboxes that broke the protocol (the sandbox was killed).",
        );
        sample(o, "taskcell_sandbox_protocol_errors_total", &[], self.protocol_errors);
        family(o, "taskcell_code_caches_refused_total", "counter", "Code caches dropped for being too large for their source.");
        sample(o, "taskcell_code_caches_refused_total", &[], self.code_caches_refused);
        family(o, "taskcell_sandbox_cpu_moves_total", "counter", "Tenant sandboxes moved to the batch CPUs when busy, and back when idle.");
        sample(o, "taskcell_sandbox_cpu_moves_total", &[("to", "batch")], self.sandboxes_to_batch);
        sample(o, "taskcell_sandbox_cpu_moves_total", &[("to", "all")], self.sandboxes_from_batch);

        family(o, "taskcell_egress_connections_total", "counter", "Egress connections from sandboxes, by outcome.");
        for (outcome, n) in &self.egress {
            sample(o, "taskcell_egress_connections_total", &[("outcome", outcome)], *n);
        }
        family(o, "taskcell_egress_bytes_total", "counter", "Bytes carried by egress connections that ended (in: to the sandbox).");
        sample(o, "taskcell_egress_bytes_total", &[("direction", "in")], self.egress_bytes_in);
        sample(o, "taskcell_egress_bytes_total", &[("direction", "out")], self.egress_bytes_out);
        let gauge_rows = [
            ("taskcell_pool_target_size", "Pre-warmed sandboxes the pool aims to hold.", gauges.pool_target),
            ("taskcell_pool_idle_sandboxes", "Pre-warmed sandboxes waiting in the pool.", gauges.pool_idle),
            ("taskcell_tenant_sandboxes", "Sandboxes currently assigned to a tenant.", gauges.tenant_sandboxes),
            ("taskcell_connections_open", "Client connections open.", gauges.connections_open),
            ("taskcell_log_subscribers", "Clients following /v1/logs.", gauges.log_subscribers),
            ("taskcell_egress_connections_open", "Egress connections open (any phase).", gauges.egress_open),
        ];
        for (name, help, value) in gauge_rows {
            family(o, name, "gauge", help);
            sample(o, name, &[], value);
        }
        let dropped = "taskcell_log_events_dropped_total";
        family(o, dropped, "counter", "Log events not delivered to a subscriber too slow to keep up.");
        sample(o, dropped, &[], gauges.log_events_dropped);
        if let Some((hub_dropped, connected)) = gauges.log_hub {
            let name = "taskcell_log_hub_events_dropped_total";
            family(o, name, "counter", "This node's log events not delivered to the log hub (unreachable, too slow, queue full).");
            sample(o, name, &[], hub_dropped);
            let name = "taskcell_log_hub_connected";
            family(o, name, "gauge", "1 while the connection to the log hub's input is up.");
            sample(o, name, &[], connected as u64);
        }
        if let Some(st) = gauges.store {
            #[rustfmt::skip]
            let rows = [
                ("taskcell_store_connected", "gauge", "1 while the follower's connection to the shared store is up.", st.connected as u64),
                ("taskcell_store_version", "gauge", "The last version of the shared store applied to this node's copy.", st.version),
                ("taskcell_store_changes_committed_total", "counter", "Changes through this node committed to the shared store.", st.committed),
                ("taskcell_store_changes_refused_total", "counter", "Changes through this node the shared store could not take (503 or 500).", st.refused),
                ("taskcell_store_changes_followed_total", "counter", "Changes read from the shared store and applied to this node's copy.", st.followed),
            ];
            for (name, kind, help, value) in rows {
                family(o, name, kind, help);
                sample(o, name, &[], value);
            }
        }

        let name = "taskcell_invocation_duration_seconds";
        family(o, name, "histogram", "Time the daemon spent on an invocation, in seconds.");
        let h = &self.duration;
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(&h.counts) {
            cumulative += n;
            sample(o, &format!("{name}_bucket"), &[("le", &le.to_string())], cumulative);
        }
        sample(o, &format!("{name}_bucket"), &[("le", "+Inf")], h.count);
        // f64's Display never uses an exponent, so the sum is always a valid exposition float.
        let _ = writeln!(o, "{name}_sum {}", h.sum);
        sample(o, &format!("{name}_count"), &[], h.count);
        out
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// The `# HELP` and `# TYPE` lines that open a family. Help texts are constants free of `\` and newlines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values may hold anything but must escape `\`, `"` and newline.
fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// A strict reader of the exposition format: panics on any line it does not understand, checks that
    /// every sample belongs to a family declared by `# TYPE` before it and that no family is declared twice.
    fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
        assert!(text.ends_with('\n'));
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(line);
                assert!(is_name(name) && !help.is_empty(), "{line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(is_name(name), "{line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "declared twice: {line}");
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let name_end = line.find(['{', ' ']).expect(line);
            let name = &line[..name_end];
            assert!(is_name(name), "{line}");
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(mut l) = rest.strip_prefix('{') {
                loop {
                    let (label, after) = l.split_once("=\"").expect(line);
                    assert!(is_name(label), "{line}");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next().expect(line) {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next().expect(line).1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => panic!("bad escape \\{c} in {line}"),
                            },
                            (_, '\n') => panic!("raw newline in {line}"),
                            (_, c) => value.push(c),
                        }
                    };
                    labels.push((label.to_owned(), value));
                    l = &after[end + 1..];
                    if let Some(more) = l.strip_prefix(',') {
                        l = more;
                    } else {
                        rest = l.strip_prefix('}').expect(line);
                        break;
                    }
                }
            }
            let value = rest.strip_prefix(' ').expect(line);
            let value: f64 = if value == "+Inf" { f64::INFINITY } else { value.parse().expect(line) };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample before its # TYPE: {line}");
            samples.push(Sample { name: name.to_owned(), labels, value });
        }
        (samples, types)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn empty_metrics_render_every_family() {
        let (samples, types) = parse(&Metrics::default().render(&Gauges::default()));
        for family in [
            "taskcell_invocations_total",
            "taskcell_http_requests_total",
            "taskcell_cold_starts_total",
            "taskcell_sandboxes_created_total",
            "taskcell_sandboxes_killed_total",
            "taskcell_pool_target_size",
            "taskcell_pool_idle_sandboxes",
            "taskcell_tenant_sandboxes",
            "taskcell_connections_open",
            "taskcell_log_subscribers",
            "taskcell_log_events_dropped_total",
            "taskcell_invocation_duration_seconds",
        ] {
            assert!(types.contains_key(family), "{family} missing");
        }
        assert_eq!(value(&samples, "taskcell_sandboxes_created_total", &[]), Some(0.0));
        assert_eq!(value(&samples, "taskcell_cold_starts_total", &[("source", "on_demand")]), Some(0.0));
        assert_eq!(value(&samples, "taskcell_invocation_duration_seconds_count", &[]), Some(0.0));
        assert_eq!(value(&samples, "taskcell_invocation_duration_seconds_bucket", &[("le", "+Inf")]), Some(0.0));
    }

    #[test]
    fn counters_and_gauges() {
        let mut m = Metrics::default();
        m.invocation("ok");
        m.invocation("ok");
        m.invocation("timeout");
        m.http_request(200);
        m.http_request(503);
        m.http_request(200);
        m.cold_start(ColdStart::Pool);
        m.sandbox_created();
        m.sandbox_killed("timeout");
        let g = Gauges { pool_target: 4, pool_idle: 3, tenant_sandboxes: 2, connections_open: 7, ..Gauges::default() };
        let (s, _) = parse(&m.render(&g));
        assert_eq!(value(&s, "taskcell_invocations_total", &[("outcome", "ok")]), Some(2.0));
        assert_eq!(value(&s, "taskcell_invocations_total", &[("outcome", "timeout")]), Some(1.0));
        assert_eq!(value(&s, "taskcell_http_requests_total", &[("status", "200")]), Some(2.0));
        assert_eq!(value(&s, "taskcell_http_requests_total", &[("status", "503")]), Some(1.0));
        assert_eq!(value(&s, "taskcell_cold_starts_total", &[("source", "pool")]), Some(1.0));
        assert_eq!(value(&s, "taskcell_sandboxes_created_total", &[]), Some(1.0));
        assert_eq!(value(&s, "taskcell_sandboxes_killed_total", &[("reason", "timeout")]), Some(1.0));
        assert_eq!(value(&s, "taskcell_pool_target_size", &[]), Some(4.0));
        assert_eq!(value(&s, "taskcell_connections_open", &[]), Some(7.0));
        assert_eq!(value(&s, "taskcell_log_events_dropped_total", &[]), Some(0.0));
    }

    #[test]
    fn histogram_is_cumulative_and_inf_equals_count() {
        let mut m = Metrics::default();
        let observed = [0.0, 0.0005, 0.0007, 0.003, 0.003, 0.2, 1.0, 9.0, 10.0, 11.0, 3600.0];
        for secs in observed {
            m.observe(Duration::from_secs_f64(secs));
        }
        let (s, _) = parse(&m.render(&Gauges::default()));
        let name = "taskcell_invocation_duration_seconds";
        let buckets: Vec<(f64, f64)> = s
            .iter()
            .filter(|x| x.name == format!("{name}_bucket"))
            .map(|x| {
                let le = &x.labels[0].1;
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, x.value)
            })
            .collect();
        assert_eq!(buckets.len(), 15);
        for pair in buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0, "bounds ascend");
            assert!(pair[0].1 <= pair[1].1, "counts are cumulative");
        }
        for (le, n) in &buckets {
            let expected = observed.iter().filter(|&&o| o <= *le).count() as f64;
            assert_eq!(*n, expected, "le={le}");
        }
        let count = value(&s, &format!("{name}_count"), &[]).unwrap();
        assert_eq!(count, observed.len() as f64);
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
        let sum = value(&s, &format!("{name}_sum"), &[]).unwrap();
        assert!((sum - observed.iter().sum::<f64>()).abs() < 1e-6, "{sum}");
        let les: Vec<&str> = s.iter().filter(|x| x.name == format!("{name}_bucket")).map(|x| x.labels[0].1.as_str()).collect();
        assert_eq!(les[..3], ["0.0005", "0.001", "0.0025"]);
        assert_eq!(les[10..], ["1", "2.5", "5", "10", "+Inf"]);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = Metrics::default();
        let nasty = "a\\b\"c\nd}e,f=\"g";
        m.invocation(nasty);
        m.sandbox_killed("x\n# TYPE evil counter");
        let text = m.render(&Gauges::default());
        assert!(text.contains(r#"taskcell_invocations_total{outcome="a\\b\"c\nd}e,f=\"g"} 1"#), "{text}");
        let (s, types) = parse(&text);
        assert!(!types.contains_key("evil"));
        assert_eq!(value(&s, "taskcell_invocations_total", &[("outcome", nasty)]), Some(1.0));
        assert_eq!(value(&s, "taskcell_sandboxes_killed_total", &[("reason", "x\n# TYPE evil counter")]), Some(1.0));
    }
}
