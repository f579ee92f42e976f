//! Per-invocation log capture (capped) and the log event format streamed to `/v1/logs` subscribers.

use crate::LogLevel;

/// The most log bytes kept for one invocation's response.
pub const INVOCATION_LOG_CAP: usize = 64 << 10;

/// The logs of one invocation, kept as a JSON array under construction.
#[derive(Default)]
pub struct Captured {
    json: Vec<u8>,
    bytes: usize,
    dropped: usize,
}

impl Captured {
    pub fn push(&mut self, level: LogLevel, message: &str) {
        if self.bytes + message.len() > INVOCATION_LOG_CAP {
            self.dropped += message.len();
            return;
        }
        self.bytes += message.len();
        self.entry(level.as_str(), message);
    }

    fn entry(&mut self, level: &str, message: &str) {
        self.json.push(if self.json.is_empty() { b'[' } else { b',' });
        self.json.extend_from_slice(b"{\"level\":\"");
        self.json.extend_from_slice(level.as_bytes());
        self.json.extend_from_slice(b"\",\"message\":");
        self.json.extend_from_slice(serde_json::Value::from(message).to_string().as_bytes());
        self.json.push(b'}');
    }

    /// The finished JSON array, with a last entry saying how much was cut.
    pub fn finish(mut self) -> Vec<u8> {
        if self.dropped > 0 {
            let note = format!("[logs truncated: {} more bytes over the {} byte limit]", self.dropped, INVOCATION_LOG_CAP);
            self.entry("warn", &note);
        }
        if self.json.is_empty() {
            return b"[]".to_vec();
        }
        self.json.push(b']');
        self.json
    }
}

/// One NDJSON line of the log stream.
pub fn event_line(tenant: &str, task: Option<&str>, request_id: Option<&str>, level: &str, message: &str) -> Vec<u8> {
    event_line_with(tenant, task, request_id, level, message, None)
}

/// The same with one more field (an egress connection's `egress`).
pub fn event_line_with(
    tenant: &str,
    task: Option<&str>,
    request_id: Option<&str>,
    level: &str,
    message: &str,
    extra: Option<(&str, serde_json::Value)>,
) -> Vec<u8> {
    let mut event = serde_json::json!({
        "time": now_rfc3339(),
        "tenant": tenant,
        "task": task,
        "requestId": request_id,
        "level": level,
        "message": message,
    });
    if let Some((name, value)) = extra {
        event[name] = value;
    }
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The line that tells a subscriber how many events it missed.
pub fn dropped_line(count: u64) -> Vec<u8> {
    let mut line = serde_json::json!({"time": now_rfc3339(), "dropped": count}).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// An event line with this node's name added as its last field, `node`: every line a node streams or hands to
/// the log hub carries it. `line` is one JSON object and a newline, as `event_line` makes them; a node's name
/// needs no escaping (`valid_node_name`).
pub fn with_node(line: &[u8], node: &str) -> Vec<u8> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let Some(open) = body.strip_suffix(b"}") else { return line.to_vec() };
    let mut out = Vec::with_capacity(line.len() + node.len() + 12);
    out.extend_from_slice(open);
    out.extend_from_slice(if open.len() > 1 { b",\"node\":\"" } else { b"\"node\":\"" });
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(b"\"}\n");
    out
}

/// The line that tells the hub's subscribers how many of a tenant's events this node could not deliver.
pub fn hub_dropped_line(tenant: &str, node: &str, count: u64) -> Vec<u8> {
    let mut line = serde_json::json!({"time": now_rfc3339(), "tenant": tenant, "node": node, "dropped": count}).to_string().into_bytes();
    line.push(b'\n');
    line
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = super::store::civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, now.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_logs_are_capped_with_a_note() {
        let mut c = Captured::default();
        c.push(LogLevel::Log, "hello \"x\"");
        let big = "y".repeat(INVOCATION_LOG_CAP);
        c.push(LogLevel::Warn, &big);
        let v: serde_json::Value = serde_json::from_slice(&c.finish()).unwrap();
        assert_eq!(v[0]["message"], "hello \"x\"");
        assert!(v[1]["message"].as_str().unwrap().contains("truncated"));
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn empty_logs_are_an_empty_array() {
        assert_eq!(Captured::default().finish(), b"[]");
    }

    #[test]
    fn the_node_is_added_to_a_line() {
        let line = with_node(&event_line("acme", None, Some("r1"), "log", "a } \\\" b"), "node-1.x");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!((v["node"].as_str(), v["message"].as_str(), v["tenant"].as_str()), (Some("node-1.x"), Some("a } \\\" b"), Some("acme")));
        assert_eq!(with_node(b"{}\n", "n"), b"{\"node\":\"n\"}\n");
        let v: serde_json::Value = serde_json::from_slice(&hub_dropped_line("acme", "b", 3)).unwrap();
        assert_eq!((v["dropped"].as_u64(), v["node"].as_str()), (Some(3), Some("b")));
    }

    #[test]
    fn timestamps_look_right() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
