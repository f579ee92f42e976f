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
    fn timestamps_look_right() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
