//! Group 4: throughput. C client threads, each with its own keep-alive connection, send requests
//! back to back for a fixed time, spread over T tenants; the bare Node server at the same C is the
//! baseline. Each row's time is cut into slices run round-robin with the other rows.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::daemon::{Daemon, NodeServer};
use crate::http::{build, Conn};
use crate::invoke::{adhoc_body, check_run};
use crate::procs;
use crate::report::{new_hist, Row, Unit};
use crate::Ctx;

const CLIENTS: [usize; 3] = [1, 8, 64];
const COLD: &[u8] = b"\"cold\":true";
const TENANTS: [usize; 3] = [1, 10, 100];

struct Load {
    hist: Histogram<u64>,
    ok: u64,
    /// Responses that said `"cold":true`: the tenant had no sandbox (evicted, recycled).
    cold: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

/// C threads against `socket` for `dur`; client k's m-th request goes to tenant (k + m*C) mod T.
fn load(socket: &std::path::Path, reqs: &[Vec<u8>], clients: usize, dur: Duration) -> Load {
    let barrier = Barrier::new(clients + 1);
    let mut total = Load { hist: new_hist(), ok: 0, cold: 0, errors: 0, first_error: None, elapsed: Duration::ZERO };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut h = new_hist();
                    let (mut ok, mut cold, mut errors, mut first) = (0u64, 0u64, 0u64, None);
                    let conn = Conn::open(socket);
                    barrier.wait();
                    // The main thread stamps the start right after this barrier; the deadline follows.
                    barrier.wait();
                    let deadline = Instant::now() + dur;
                    match conn {
                        Err(e) => {
                            errors += 1;
                            first = Some(format!("connect: {e}"));
                        }
                        Ok(mut c) => {
                            let mut m = 0;
                            while Instant::now() < deadline {
                                let req = &reqs[(k + m * clients) % reqs.len()];
                                m += 1;
                                let t0 = Instant::now();
                                match c.request(req) {
                                    Ok(r) if r.status == 200 => {
                                        h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                                        ok += 1;
                                        if r.body.windows(COLD.len()).any(|w| w == COLD) {
                                            cold += 1;
                                        }
                                    }
                                    Ok(r) => {
                                        errors += 1;
                                        first.get_or_insert_with(|| r.describe());
                                    }
                                    Err(e) => {
                                        errors += 1;
                                        first.get_or_insert_with(|| e.to_string());
                                        // A broken connection: try a new one rather than spin on errors.
                                        std::thread::sleep(Duration::from_millis(10));
                                        match Conn::open(socket) {
                                            Ok(nc) => c = nc,
                                            Err(_) => break,
                                        }
                                    }
                                }
                            }
                        }
                    }
                    (h, ok, cold, errors, first)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        barrier.wait();
        for hd in handles {
            if let Ok((h, ok, cold, errors, first)) = hd.join() {
                let _ = total.hist.add(&h);
                total.ok += ok;
                total.cold += cold;
                total.errors += errors;
                if total.first_error.is_none() {
                    total.first_error = first;
                }
            }
        }
        total.elapsed = t0.elapsed();
    });
    total
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn bare_name(c: usize) -> String {
    format!("bare node, {}", plural(c, "client"))
}

fn tc_name(c: usize, t: usize) -> String {
    format!("taskcell, {} x {}", plural(c, "client"), plural(t, "tenant"))
}

/// Gives each tenant its sandbox before the clock runs (cold starts are group 3's business).
fn warm_tenants(d: &Daemon, tenants: usize) -> Result<Duration, String> {
    d.settle_start();
    let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    for t in 0..tenants {
        let req = build("POST", &format!("/v1/tenants/tp-{t}/run"), &adhoc_body(1));
        let mut tries = 0;
        loop {
            if procs::stopping() {
                return Err("interrupted".into());
            }
            let r = c.request(&req).map_err(|e| format!("tenant tp-{t}: {e}"))?;
            if r.status == 503 && tries < 600 {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            check_run(&r, 1).map_err(|e| format!("tenant tp-{t}: {e}"))?;
            break;
        }
    }
    Ok(t0.elapsed())
}

pub fn run(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let (slices, slice) = if ctx.quick { (1, Duration::from_millis(300)) } else { (3, Duration::from_millis(1500)) };
    let bare = NodeServer::start(ctx, "bare-tp");
    let daemon = Daemon::start(ctx, "tp", ctx.pool_size);
    let warm = daemon.as_ref().map_err(|e| e.clone()).and_then(|d| warm_tenants(d, *TENANTS.iter().max().unwrap_or(&1)));

    struct Cfg {
        row: Row,
        socket: Option<std::path::PathBuf>,
        reqs: Vec<Vec<u8>>,
        ok: u64,
        cold: u64,
        elapsed: Duration,
    }
    let cfg = |row, socket, reqs| Cfg { row, socket, reqs, ok: 0, cold: 0, elapsed: Duration::ZERO };
    let mut cfgs: Vec<Cfg> = Vec::new();
    for c in CLIENTS {
        let mut row = Row::new(4, bare_name(c), Unit::Micros);
        let socket = match &bare {
            Ok(s) => Some(s.socket.clone()),
            Err(e) => {
                row.set_na(e.clone());
                None
            }
        };
        let reqs = vec![build("POST", "/v1/tenants/bare/run", &adhoc_body(1))];
        cfgs.push(cfg(row, socket, reqs));
        for t in TENANTS {
            let mut row = Row::new(4, tc_name(c, t), Unit::Micros).vs(&bare_name(c));
            row.rate_baseline = Some(bare_name(c));
            let socket = match (&daemon, &warm) {
                (Ok(d), Ok(_)) => Some(d.socket.clone()),
                (Err(e), _) | (_, Err(e)) => {
                    row.set_na(e.clone());
                    None
                }
            };
            let reqs = (0..t).map(|i| build("POST", &format!("/v1/tenants/tp-{i}/run"), &adhoc_body(1))).collect();
            cfgs.push(cfg(row, socket, reqs));
        }
    }
    let k = cfgs.len();
    'outer: for s in 0..slices {
        for j in 0..k {
            if procs::stopping() {
                break 'outer;
            }
            let cfg = &mut cfgs[(s + j) % k];
            let Some(socket) = cfg.socket.clone() else {
                continue;
            };
            let clients = CLIENTS[((s + j) % k) / (1 + TENANTS.len())];
            let l = load(&socket, &cfg.reqs, clients, slice);
            let _ = cfg.row.hist.add(&l.hist);
            cfg.ok += l.ok;
            cfg.cold += l.cold;
            cfg.elapsed += l.elapsed;
            cfg.row.errors += l.errors;
            if cfg.row.first_error.is_none() {
                cfg.row.first_error = l.first_error;
            }
        }
    }
    let mut rows = Vec::new();
    for mut cfg in cfgs {
        if cfg.row.na.is_none() {
            if cfg.ok == 0 {
                let e = cfg.row.first_error.clone().unwrap_or_else(|| "no successful request".into());
                cfg.row.set_na(format!("failed: {e}"));
            } else if cfg.elapsed > Duration::ZERO {
                cfg.row.rate = Some(cfg.ok as f64 / cfg.elapsed.as_secs_f64());
            }
            if cfg.cold > 0 {
                cfg.row.note(format!(
                    "{} of {} responses cold: tenants lost their sandboxes under load (the daemon's sandbox cap, recycling)",
                    cfg.cold, cfg.ok
                ));
            }
        }
        rows.push(cfg.row);
    }
    if let (Ok(w), Some(row)) = (&warm, rows.iter_mut().find(|r| r.name == tc_name(1, 100))) {
        row.note(format!("giving the 100 tenants their sandboxes took {:.1} s before the clock ran", w.as_secs_f64()));
    }
    if let Ok(d) = daemon {
        d.stop(warnings);
    }
    drop(bare);
    rows
}
