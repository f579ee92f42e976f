//! Interleaved sampling: the rows of a group take their samples round-robin (starting with a
//! different row each round), so that drift on a shared, noisy machine hits every row alike.
//! A row with fewer samples than the others is spread evenly over the rounds.

use crate::procs;
use crate::report::Row;

pub type SampleFn<'a> = Box<dyn FnMut() -> Result<u64, String> + 'a>;

pub struct Lane<'a> {
    pub row: Row,
    pub n: usize,
    pub warmup: usize,
    pub f: Option<SampleFn<'a>>,
    failing: u64,
}

impl<'a> Lane<'a> {
    pub fn new(row: Row, n: usize, warmup: usize, f: SampleFn<'a>) -> Lane<'a> {
        Lane { row, n, warmup, f: Some(f), failing: 0 }
    }

    /// A row that cannot be measured in this run.
    pub fn na(mut row: Row, reason: impl Into<String>) -> Lane<'a> {
        row.set_na(reason);
        Lane { row, n: 0, warmup: 0, f: None, failing: 0 }
    }
}

/// After this many failures in a row, a row stops sampling (n/a if it has no sample at all).
const GIVE_UP: u64 = 5;

fn sample(lane: &mut Lane, keep: bool) {
    let Some(f) = lane.f.as_mut() else { return };
    match f() {
        Ok(v) => {
            lane.failing = 0;
            if keep {
                lane.row.record(v);
            }
        }
        Err(e) => {
            lane.row.error(e);
            lane.failing += 1;
            if lane.failing >= GIVE_UP {
                if lane.row.hist.is_empty() {
                    let first = lane.row.first_error.clone().unwrap_or_default();
                    lane.row.set_na(format!("failed: {first}"));
                } else {
                    lane.row.note(format!("stopped sampling after {GIVE_UP} failures in a row"));
                }
                lane.f = None;
            }
        }
    }
}

/// Runs warm-up samples, then the measured ones, interleaved. Returns the rows.
pub fn run(mut lanes: Vec<Lane>) -> Vec<Row> {
    let w = lanes.iter().map(|l| l.warmup).max().unwrap_or(0);
    for round in 0..w {
        for l in lanes.iter_mut().filter(|l| round < l.warmup) {
            sample(l, false);
        }
    }
    // Warm-up failures count only towards giving up, not as errors of the measured run.
    for l in lanes.iter_mut().filter(|l| l.f.is_some()) {
        if l.row.errors > 0 {
            l.row.note(format!("{} warm-up errors", l.row.errors));
        }
        l.row.errors = 0;
        l.row.first_error = None;
    }
    let rounds = lanes.iter().map(|l| l.n).max().unwrap_or(0);
    let k = lanes.len();
    'outer: for round in 0..rounds {
        for j in 0..k {
            if procs::stopping() {
                break 'outer;
            }
            let l = &mut lanes[(round + j) % k];
            // Row with n of `rounds` samples: due when floor(round * n / rounds) steps up.
            let due = (round + 1) * l.n / rounds > round * l.n / rounds;
            if due {
                sample(l, true);
            }
        }
    }
    lanes.into_iter().map(|l| l.row).collect()
}
