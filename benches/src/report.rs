//! Rows, their percentiles and ratios, and the two outputs: the printed table and `results.json`.
//!
//! A row owns one hdrhistogram of its samples (microseconds, or KiB for memory rows) and names the row
//! whose p50 is its baseline; ratios are computed once every group has run, so that a row can take a
//! baseline measured in another group of the same run.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unit {
    /// Latency in microseconds.
    Micros,
    /// Memory in KiB.
    KiB,
}

impl Unit {
    fn json_name(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::KiB => "KiB",
        }
    }
}

pub struct Row {
    pub group: u8,
    pub name: String,
    pub unit: Unit,
    pub hist: Histogram<u64>,
    /// Name of the row whose p50 divides this row's p50.
    pub baseline: Option<String>,
    /// Set when the row could not be measured; the table prints it instead of figures.
    pub na: Option<String>,
    pub notes: Vec<String>,
    /// Operations per second (throughput rows) or sandboxes per second (pool refill).
    pub rate: Option<f64>,
    /// Name of the row whose rate divides this row's rate.
    pub rate_baseline: Option<String>,
    pub errors: u64,
    pub first_error: Option<String>,
    ratio: Option<f64>,
    rate_ratio: Option<f64>,
}

pub fn new_hist() -> Histogram<u64> {
    // 1 us .. 1 hour (or 1 KiB .. ~3.4 TiB), three significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Row {
    pub fn new(group: u8, name: impl Into<String>, unit: Unit) -> Row {
        Row {
            group,
            name: name.into(),
            unit,
            hist: new_hist(),
            baseline: None,
            na: None,
            notes: Vec::new(),
            rate: None,
            rate_baseline: None,
            errors: 0,
            first_error: None,
            ratio: None,
            rate_ratio: None,
        }
    }

    pub fn vs(mut self, baseline: &str) -> Row {
        self.baseline = Some(baseline.to_string());
        self
    }

    pub fn record(&mut self, v: u64) {
        self.hist.saturating_record(v.max(1));
    }

    pub fn error(&mut self, msg: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg.into());
        }
    }

    pub fn set_na(&mut self, reason: impl Into<String>) {
        if self.na.is_none() {
            self.na = Some(reason.into());
        }
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn ok(&self) -> bool {
        self.na.is_none() && !self.hist.is_empty()
    }

    fn p(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    pub fn p50(&self) -> Option<u64> {
        self.ok().then(|| self.p(0.5))
    }
}

pub struct Report {
    pub mode: &'static str,
    pub date: String,
    pub machine: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub warnings: Vec<String>,
    pub goals: Vec<String>,
}

fn fmt_value(unit: Unit, v: u64) -> String {
    match unit {
        Unit::Micros => {
            let v = v as f64;
            if v < 1_000.0 {
                format!("{v:.0}us")
            } else if v < 10_000.0 {
                format!("{:.2}ms", v / 1e3)
            } else if v < 1_000_000.0 {
                format!("{:.1}ms", v / 1e3)
            } else {
                format!("{:.2}s", v / 1e6)
            }
        }
        Unit::KiB => {
            let v = v as f64;
            if v < 1024.0 {
                format!("{v:.0}KiB")
            } else {
                format!("{:.1}MiB", v / 1024.0)
            }
        }
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}/s")
    } else {
        format!("{r:.1}/s")
    }
}

const GROUP_TITLES: [&str; 7] = [
    "",
    "1. making a sandbox (spawn to exit; node rows: spawn to first byte on stdout)",
    "2. warm invocation, one keep-alive client over a Unix socket",
    "3. cold invocation: a new tenant's first request",
    "4. throughput: keep-alive clients for a fixed time (latency under load; rate in ops/s)",
    "5. pool refill and memory per idle sandbox",
    "6. burst: 200 new tenants at once from 32 keep-alive clients (first-request latency; rate in new tenants/s)",
];

impl Report {
    /// Ratios against baselines, once every row is in.
    pub fn finish(&mut self) {
        let p50s: Vec<(String, Option<u64>, Option<f64>)> = self.rows.iter().map(|r| (r.name.clone(), r.p50(), r.rate)).collect();
        for row in &mut self.rows {
            if let (Some(b), Some(mine)) = (&row.baseline, row.p50()) {
                if let Some((_, Some(base), _)) = p50s.iter().find(|(n, _, _)| n == b) {
                    row.ratio = Some(mine as f64 / (*base).max(1) as f64);
                }
            }
            if let (Some(b), Some(mine)) = (&row.rate_baseline, row.rate) {
                if let Some((_, _, Some(base))) = p50s.iter().find(|(n, _, _)| n == b) {
                    if *base > 0.0 {
                        row.rate_ratio = Some(mine / base);
                    }
                }
            }
        }
    }

    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("taskcell bench ({}), {}\n", self.mode, self.date));
        for (k, v) in &self.machine {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        let w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(20).max(20);
        out.push_str(&format!(
            "\n  {:<w$} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}\n",
            "row", "n", "p50", "p90", "p99", "max", "ratio", "rate"
        ));
        let mut group = 0;
        let mut last_base: Option<&str> = None;
        for r in &self.rows {
            if r.group != group {
                group = r.group;
                last_base = None;
                out.push_str(&format!("{}\n", GROUP_TITLES.get(group as usize).copied().unwrap_or("")));
            }
            if let Some(reason) = &r.na {
                out.push_str(&format!("  {:<w$} n/a ({reason})\n", r.name));
                continue;
            }
            if r.hist.is_empty() {
                out.push_str(&format!("  {:<w$} n/a (no samples)\n", r.name));
                continue;
            }
            let ratio = match (&r.baseline, r.ratio) {
                (None, _) => "base".to_string(),
                (Some(_), Some(x)) => format!("{x:.2}x"),
                (Some(_), None) => "-".to_string(),
            };
            let rate = r.rate.map(fmt_rate).unwrap_or_default();
            out.push_str(&format!(
                "  {:<w$} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}\n",
                r.name,
                r.hist.len(),
                fmt_value(r.unit, r.p(0.5)),
                fmt_value(r.unit, r.p(0.9)),
                fmt_value(r.unit, r.p(0.99)),
                fmt_value(r.unit, r.hist.max()),
                ratio,
                rate
            ));
            let mut notes = Vec::new();
            match &r.baseline {
                None => last_base = Some(&r.name),
                // The baseline is named unless it is the base row just above.
                Some(b) if Some(b.as_str()) != last_base => notes.push(format!("ratio vs {b}")),
                Some(_) => {}
            }
            if let (Some(b), Some(x)) = (&r.rate_baseline, r.rate_ratio) {
                if Some(b.as_str()) == last_base {
                    notes.push(format!("rate {x:.2}x base"));
                } else if r.baseline.as_ref() == Some(b) {
                    // Named just before, in "ratio vs".
                    notes.push(format!("rate {x:.2}x"));
                } else {
                    notes.push(format!("rate {x:.2}x {b}"));
                }
            }
            if r.errors > 0 {
                notes.push(format!("{} errors, first: {}", r.errors, r.first_error.as_deref().unwrap_or("?")));
            }
            notes.extend(r.notes.iter().cloned());
            if !notes.is_empty() {
                out.push_str(&format!("  {:<w$}   {}\n", "", notes.join("; ")));
            }
        }
        if !self.goals.is_empty() {
            out.push_str("goals (DESIGN.md and issues 2-3), from this run:\n");
            for g in &self.goals {
                out.push_str(&format!("  {g}\n"));
            }
        }
        if !self.warnings.is_empty() {
            out.push_str("warnings:\n");
            for w in &self.warnings {
                out.push_str(&format!("  {w}\n"));
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let figures = if r.ok() {
                    json!({
                        "n": r.hist.len(),
                        "p50": r.p(0.5),
                        "p90": r.p(0.9),
                        "p99": r.p(0.99),
                        "max": r.hist.max(),
                        "mean": (r.hist.mean() * 10.0).round() / 10.0,
                    })
                } else {
                    json!({"n": r.hist.len()})
                };
                let mut v = json!({
                    "group": r.group,
                    "name": r.name,
                    "unit": r.unit.json_name(),
                    "status": if r.ok() { "ok" } else { "n/a" },
                    "baseline": r.baseline,
                    "ratio_p50": r.ratio.map(|x| (x * 1000.0).round() / 1000.0),
                    "rate_per_s": r.rate.map(|x| (x * 10.0).round() / 10.0),
                    "rate_baseline": r.rate_baseline,
                    "rate_ratio": r.rate_ratio.map(|x| (x * 1000.0).round() / 1000.0),
                    "errors": r.errors,
                    "first_error": r.first_error,
                    "notes": r.notes,
                    "na_reason": r.na.clone().or_else(|| r.hist.is_empty().then(|| "no samples".to_string())),
                });
                if let (Value::Object(m), Value::Object(f)) = (&mut v, figures) {
                    m.extend(f);
                }
                v
            })
            .collect();
        let machine: serde_json::Map<String, Value> = self.machine.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        json!({
            "mode": self.mode,
            "date": self.date,
            "machine": machine,
            "rows": rows,
            "goals": self.goals,
            "warnings": self.warnings,
        })
    }
}
