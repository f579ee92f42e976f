//! The human forms of the daemon's answers: pretty JSON that keeps the task's own key order, log lines with the
//! level coloured when a terminal reads them, the task table, the health summary.
//!
//! Pure functions of the server's JSON: nothing here reads the socket or decides an exit status.

use serde_json::Value;

/// Colours for one output stream: on only when a terminal reads it and `NO_COLOR` is not set.
#[derive(Clone, Copy)]
pub struct Paint {
    pub on: bool,
}

impl Paint {
    pub fn for_stream(is_terminal: bool) -> Paint {
        Paint { on: is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }

    fn wrap(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A console level, coloured as its severity.
    pub fn level(self, level: &str, text: &str) -> String {
        let code = match level {
            "error" => "31",
            "warn" => "33",
            "info" => "36",
            "debug" => "90",
            _ => "32",
        };
        self.wrap(code, text)
    }

    pub fn warning(self, text: &str) -> String {
        self.wrap("33", text)
    }

    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }
}

/// Re-indent JSON text (two spaces, `"key": value`, as `serde_json::to_string_pretty`) without parsing it into a
/// map, so that objects keep the order the task gave their keys and numbers keep their digits. `raw` must be
/// valid JSON, as the daemon's envelope guarantees.
pub fn pretty_json(raw: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    }
    let mut out = String::with_capacity(raw.len() + raw.len() / 2);
    let mut depth = 0usize;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.next_if_eq(&close).is_some() {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// A multi-line message as one block: continuation lines indented under the first.
fn indent_continuations(message: &str, indent: usize) -> String {
    let message = message.strip_suffix('\n').unwrap_or(message);
    message.replace('\n', &format!("\n{}", " ".repeat(indent)))
}

/// One log entry of a run envelope: `[level] message`.
pub fn envelope_log(paint: Paint, entry: &Value) -> String {
    let level = entry["level"].as_str().unwrap_or("log");
    let message = entry["message"].as_str().map(str::to_string).unwrap_or_else(|| entry["message"].to_string());
    let tag = format!("[{level}]");
    format!("{} {}", paint.level(level, &tag), indent_continuations(&message, tag.len() + 1))
}

/// One event of the log stream: `TIME TENANT/TASK LEVEL message` (task `-` for ad-hoc code). Any field the
/// line does not show (an `egress` record, a `node`) follows the message as compact JSON.
pub fn stream_event(paint: Paint, event: &Value) -> String {
    let text = |key: &str| event[key].as_str().unwrap_or("-");
    let level = text("level");
    let head = format!("{} {}/{}", text("time"), text("tenant"), text("task"));
    let mut message = event["message"].as_str().unwrap_or("").to_string();
    if let Value::Object(fields) = event {
        let extra: serde_json::Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "time" | "tenant" | "task" | "requestId" | "level" | "message"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !extra.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&Value::Object(extra).to_string());
        }
    }
    let level_col = format!("{level:<5}");
    format!("{head} {} {}", paint.level(level, &level_col), indent_continuations(&message, head.len() + level_col.len() + 2))
}

/// `(cold, 1.2 ms)`.
pub fn run_summary(cold: bool, duration_us: u64) -> String {
    format!("({}, {})", if cold { "cold" } else { "warm" }, duration(duration_us))
}

pub fn duration(us: u64) -> String {
    if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

pub fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// The first 12 hex digits of a SHA-256, enough to tell versions apart by eye.
pub fn short_sha(sha: &str) -> String {
    match sha.get(..12) {
        Some(short) if sha.len() > 12 => format!("{short}…"),
        _ => sha.to_string(),
    }
}

/// Columns padded to their widest cell, separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `GET .../tasks`: task, model, time limit, size, sha256 (short), updated.
pub fn tasks(tenant: &str, list: &Value) -> String {
    let tasks = list["tasks"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if tasks.is_empty() {
        return format!("no tasks deployed for {tenant}");
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t["task"].as_str().unwrap_or("?").to_string(),
                t["model"].as_str().unwrap_or("taskcell").to_string(),
                t["timeout_ms"].as_u64().map(|ms| format!("{ms} ms")).unwrap_or_else(|| "?".into()),
                t["size"].as_u64().map(size).unwrap_or_else(|| "?".into()),
                short_sha(t["sha256"].as_str().unwrap_or("?")),
                t["updated"].as_str().unwrap_or("?").to_string(),
            ]
        })
        .collect();
    table(&["TASK", "MODEL", "TIMEOUT", "SIZE", "SHA256", "UPDATED"], &rows)
}

/// `GET /v1/health`: status, pool, tenant sandboxes, in flight, uptime (and why sandboxes cannot be made).
pub fn health(h: &Value) -> String {
    let n = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let mut lines = vec![
        ("status", h["status"].as_str().unwrap_or("?").to_string()),
        ("pool", format!("{} idle of {} ({} starting)", n(&h["pool"]["idle"]), n(&h["pool"]["size"]), n(&h["pool"]["starting"]))),
        ("sandboxes", format!("{} for tenants, {} in all", n(&h["sandboxes"]["tenants"]), n(&h["sandboxes"]["total"]))),
        ("in flight", format!("{} ({} queued)", n(&h["invocations_in_flight"]), n(&h["queued"]))),
        ("uptime", h["uptime_s"].as_u64().map(uptime).unwrap_or_else(|| "?".into())),
    ];
    if let Some(e) = h["last_spawn_error"].as_str() {
        lines.push(("spawn error", e.to_string()));
    }
    lines.iter().map(|(k, v)| format!("{k:<12}{v}")).collect::<Vec<_>>().join("\n")
}

fn uptime(s: u64) -> String {
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: Paint = Paint { on: false };

    #[test]
    fn pretty_json_keeps_key_order_and_numbers() {
        let raw = r#"{"zeta":1,"alpha":[1, 2.50,{}],"s":"a,b:{\"c\"}","e":[ ],"big":12345678901234567890}"#;
        let pretty = pretty_json(raw);
        let want = "{\n  \"zeta\": 1,\n  \"alpha\": [\n    1,\n    2.50,\n    {}\n  ],\n  \"s\": \"a,b:{\\\"c\\\"}\",\n  \"e\": [],\n  \"big\": 12345678901234567890\n}";
        assert_eq!(pretty, want);
        assert_eq!(pretty_json("null"), "null");
        assert_eq!(pretty_json("\"x\""), "\"x\"");
        // Same layout as serde_json's where key order does not differ.
        let v = json!({"a": [1, {"b": null}], "c": "d"});
        assert_eq!(pretty_json(&v.to_string()), serde_json::to_string_pretty(&v).unwrap());
    }

    #[test]
    fn log_lines() {
        assert_eq!(envelope_log(PLAIN, &json!({"level": "warn", "message": "careful"})), "[warn] careful");
        assert_eq!(envelope_log(PLAIN, &json!({"level": "log", "message": "a\nb\n"})), "[log] a\n      b");
        assert_eq!(envelope_log(Paint { on: true }, &json!({"level": "error", "message": "x"})), "\x1b[31m[error]\x1b[0m x");
        let e =
            json!({"time": "2026-11-29T15:30:00.123Z", "tenant": "acme", "task": null, "requestId": "r", "level": "info", "message": "hi"});
        assert_eq!(stream_event(PLAIN, &e), "2026-11-29T15:30:00.123Z acme/- info  hi");
        let e = json!({"time": "T", "tenant": "acme", "task": "greet", "level": "log", "message": "m", "node": "n1"});
        assert_eq!(stream_event(PLAIN, &e), "T acme/greet log   m {\"node\":\"n1\"}");
    }

    #[test]
    fn figures() {
        assert_eq!(run_summary(true, 1234), "(cold, 1.2 ms)");
        assert_eq!(run_summary(false, 2_500_000), "(warm, 2.50 s)");
        assert_eq!((size(123), size(2048), size(3 << 20)), ("123 B".into(), "2.0 KiB".into(), "3.0 MiB".into()));
        assert_eq!(short_sha("ab12cd34ef56ab12cd34"), "ab12cd34ef56…");
        assert_eq!(uptime(3725), "1h 2m");
        assert_eq!(uptime(59), "59s");
    }

    #[test]
    fn tables_and_health() {
        let list = json!({"tasks": [{"task": "greet", "model": "webtask", "timeout_ms": 5000, "size": 123, "sha256": "0123456789abcdef", "updated": "2026-01-01T00:00:00Z"}]});
        assert_eq!(
            tasks("acme", &list),
            "TASK   MODEL    TIMEOUT  SIZE   SHA256         UPDATED\ngreet  webtask  5000 ms  123 B  0123456789ab…  2026-01-01T00:00:00Z"
        );
        assert_eq!(tasks("acme", &json!({"tasks": []})), "no tasks deployed for acme");
        let h = json!({"status": "ok", "pool": {"size": 2, "idle": 1, "starting": 1}, "sandboxes": {"tenants": 3, "total": 4},
            "invocations_in_flight": 0, "queued": 0, "uptime_s": 12, "last_spawn_error": null});
        assert_eq!(
            health(&h),
            "status      ok\npool        1 idle of 2 (1 starting)\nsandboxes   3 for tenants, 4 in all\nin flight   0 (0 queued)\nuptime      12s"
        );
    }
}
