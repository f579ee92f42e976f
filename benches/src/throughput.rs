//! Group 4: throughput. C client threads, each with its own keep-alive connections, send requests
//! back to back for a fixed time, spread over T tenants. The baselines: the bare Node server at the same
//! C (one process, no tenants), one plain Node process per tenant (the same spread over T processes, no
//! isolation) and workerd with one worker per tenant; each taskcell row is read against the Node process
//! per tenant of its shape. Each row's time is cut into slices run round-robin with the other rows.

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::daemon::{Daemon, NodeServer};
use crate::http::{build, Conn};
use crate::invoke::{adhoc_body, check_run};
use crate::procs;
use crate::report::{new_hist, Row, Unit};
use crate::workerd::{self, Workerd};
use crate::Ctx;

const CLIENTS: [usize; 3] = [1, 8, 64];
const COLD: &[u8] = b"\"cold\":true";
const TENANTS: [usize; 3] = [1, 10, 100];

/// One request of a row: which of the row's sockets it goes to (a tenant's own process, or the one
/// server) and its bytes.
#[derive(Clone)]
struct Target {
    socket: usize,
    req: Vec<u8>,
}

fn tenant_req(t: usize) -> Vec<u8> {
    build("POST", &format!("/v1/tenants/tp-{t}/run"), &adhoc_body(1))
}

struct Load {
    hist: Histogram<u64>,
    ok: u64,
    /// Responses that said `"cold":true`: the tenant had no sandbox (evicted, recycled).
    cold: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

/// The connections of client k, one to each socket its requests go to (k + m*C mod T over m), all opened
/// before the clock runs.
fn open_conns(sockets: &[PathBuf], targets: &[Target], k: usize, clients: usize) -> Result<Vec<Option<Conn>>, String> {
    let mut conns: Vec<Option<Conn>> = sockets.iter().map(|_| None).collect();
    for m in 0..targets.len() {
        let s = targets[(k + m * clients) % targets.len()].socket;
        if conns[s].is_none() {
            conns[s] = Some(Conn::open(&sockets[s]).map_err(|e| format!("connect {}: {e}", sockets[s].display()))?);
        }
    }
    Ok(conns)
}

/// C threads for `dur`; client k's m-th request is target (k + m*C) mod T, on its connection to that
/// target's socket.
fn load(sockets: &[PathBuf], targets: &[Target], clients: usize, dur: Duration) -> Load {
    let barrier = Barrier::new(clients + 1);
    let mut total = Load { hist: new_hist(), ok: 0, cold: 0, errors: 0, first_error: None, elapsed: Duration::ZERO };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut h = new_hist();
                    let (mut ok, mut cold, mut errors, mut first) = (0u64, 0u64, 0u64, None);
                    let conns = open_conns(sockets, targets, k, clients);
                    barrier.wait();
                    // The main thread stamps the start right after this barrier; the deadline follows.
                    barrier.wait();
                    let deadline = Instant::now() + dur;
                    match conns {
                        Err(e) => {
                            errors += 1;
                            first = Some(e);
                        }
                        Ok(mut conns) => {
                            let mut m = 0;
                            while Instant::now() < deadline {
                                let target = &targets[(k + m * clients) % targets.len()];
                                m += 1;
                                let Some(c) = conns[target.socket].as_mut() else { break };
                                let t0 = Instant::now();
                                match c.request(&target.req) {
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
                                        match Conn::open(&sockets[target.socket]) {
                                            Ok(nc) => *c = nc,
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

fn shape(c: usize, t: usize) -> String {
    format!("{} x {}", plural(c, "client"), plural(t, "tenant"))
}

fn per_tenant_name(c: usize, t: usize) -> String {
    format!("node process per tenant, {}", shape(c, t))
}

fn workerd_name(c: usize, t: usize) -> String {
    format!("workerd worker per tenant, {}", shape(c, t))
}

fn tc_name(c: usize, t: usize) -> String {
    format!("taskcell, {}", shape(c, t))
}

/// Gives each tenant its sandbox before the clock runs (cold starts are group 3's business).
fn warm_tenants(d: &Daemon, tenants: usize) -> Result<Duration, String> {
    d.settle_start();
    let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    for t in 0..tenants {
        let req = tenant_req(t);
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

/// Each baseline server's first request, before any clock runs (Node compiles its HTTP path on first use,
/// as taskcell's tenants have had their first run too).
fn first_requests(sockets: &[PathBuf], targets: &[Target]) -> Result<(), String> {
    for t in targets {
        let mut c = Conn::open(&sockets[t.socket]).map_err(|e| format!("connect {}: {e}", sockets[t.socket].display()))?;
        let r = c.request(&t.req).map_err(|e| format!("first request: {e}"))?;
        check_run(&r, 1).map_err(|e| format!("first request: {e}"))?;
    }
    Ok(())
}

/// The sockets of started servers whose first requests went through, or why there are none.
fn warmed(sockets: Result<Vec<PathBuf>, String>, targets: &[Target]) -> Result<Vec<PathBuf>, String> {
    let sockets = sockets?;
    first_requests(&sockets, targets)?;
    Ok(sockets)
}

/// T tenants, each on its own socket (one process per tenant) or all on one (`shared`).
fn targets(t: usize, shared: bool) -> Vec<Target> {
    (0..t).map(|i| Target { socket: if shared { 0 } else { i }, req: tenant_req(i) }).collect()
}

struct Cfg {
    row: Row,
    clients: usize,
    sockets: Option<Vec<PathBuf>>,
    targets: Vec<Target>,
    ok: u64,
    cold: u64,
    elapsed: Duration,
}

impl Cfg {
    fn new(mut row: Row, clients: usize, servers: &Result<Vec<PathBuf>, String>, targets: Vec<Target>) -> Cfg {
        let sockets = match servers {
            Ok(s) => Some(s.clone()),
            Err(e) => {
                row.set_na(e.clone());
                None
            }
        };
        Cfg { row, clients, sockets, targets, ok: 0, cold: 0, elapsed: Duration::ZERO }
    }

    /// The row's baseline for both its latency and its rate.
    fn against(mut self, baseline: &str) -> Cfg {
        self.row = self.row.vs(baseline);
        self.row.rate_baseline = Some(baseline.to_string());
        self
    }

    fn slice(&mut self, dur: Duration) {
        let Some(sockets) = &self.sockets else { return };
        let l = load(sockets, &self.targets, self.clients, dur);
        let _ = self.row.hist.add(&l.hist);
        self.ok += l.ok;
        self.cold += l.cold;
        self.elapsed += l.elapsed;
        self.row.errors += l.errors;
        if self.row.first_error.is_none() {
            self.row.first_error = l.first_error;
        }
    }

    fn finish(mut self) -> Row {
        if self.row.na.is_some() {
            return self.row;
        }
        if self.ok == 0 {
            let e = self.row.first_error.clone().unwrap_or_else(|| "no successful request".into());
            self.row.set_na(format!("failed: {e}"));
        } else if self.elapsed > Duration::ZERO {
            self.row.rate = Some(self.ok as f64 / self.elapsed.as_secs_f64());
        }
        if self.cold > 0 {
            self.row.note(format!(
                "{} of {} responses cold: tenants lost their sandboxes under load (the daemon's sandbox cap, recycling)",
                self.cold, self.ok
            ));
        }
        self.row
    }
}

/// The table has one baseline per row: the taskcell row names workerd of the same shape in a note.
fn note_workerd(rows: &mut [Row]) {
    for c in CLIENTS {
        for t in TENANTS {
            let Some(w) = rows.iter().find(|r| r.name == workerd_name(c, t)) else { continue };
            let (Some(wp50), Some(wrate)) = (w.p50(), w.rate) else { continue };
            let Some(row) = rows.iter_mut().find(|r| r.name == tc_name(c, t)) else { continue };
            if let (Some(p50), Some(rate)) = (row.p50(), row.rate) {
                row.note(format!("vs workerd worker per tenant: p50 {:.2}x, rate {:.2}x", p50 as f64 / wp50.max(1) as f64, rate / wrate));
            }
        }
    }
}

pub fn run(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let (slices, slice) = if ctx.quick { (1, Duration::from_millis(300)) } else { (3, Duration::from_millis(1500)) };
    let most = *TENANTS.iter().max().unwrap_or(&1);
    let bare_req = vec![Target { socket: 0, req: build("POST", "/v1/tenants/bare/run", &adhoc_body(1)) }];
    let bare = NodeServer::start(ctx, "bare-tp");
    let bare_sockets = warmed(bare.as_ref().map(|s| vec![s.socket.clone()]).map_err(|e| e.clone()), &bare_req);
    let per_tenant = NodeServer::start_many(ctx, "tenant-tp", most);
    let per_tenant_sockets =
        warmed(per_tenant.as_ref().map(|v| v.iter().map(|s| s.socket.clone()).collect()).map_err(|e| e.clone()), &targets(most, false));
    let names: Vec<String> = (0..most).map(|i| format!("tp-{i}")).collect();
    let wd = workerd::install(ctx).and_then(|bin| Workerd::start(ctx, &bin, &names));
    let wd_sockets = warmed(wd.as_ref().map(|w| vec![w.socket.clone()]).map_err(|e| e.clone()), &targets(most, true));
    let daemon = Daemon::start(ctx, "tp", ctx.pool_size);
    let warm = daemon.as_ref().map_err(|e| e.clone()).and_then(|d| warm_tenants(d, most));
    let tc_sockets = match (&daemon, &warm) {
        (Ok(d), Ok(_)) => Ok(vec![d.socket.clone()]),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };

    let mut cfgs: Vec<Cfg> = Vec::new();
    for c in CLIENTS {
        cfgs.push(Cfg::new(Row::new(4, bare_name(c), Unit::Micros), c, &bare_sockets, bare_req.clone()));
        for t in TENANTS {
            let row = |name: String| Row::new(4, name, Unit::Micros);
            cfgs.push(Cfg::new(row(per_tenant_name(c, t)), c, &per_tenant_sockets, targets(t, false)).against(&bare_name(c)));
            cfgs.push(Cfg::new(row(workerd_name(c, t)), c, &wd_sockets, targets(t, true)).against(&per_tenant_name(c, t)));
            cfgs.push(Cfg::new(row(tc_name(c, t)), c, &tc_sockets, targets(t, true)).against(&per_tenant_name(c, t)));
        }
    }
    let k = cfgs.len();
    'outer: for s in 0..slices {
        for j in 0..k {
            if procs::stopping() {
                break 'outer;
            }
            cfgs[(s + j) % k].slice(slice);
        }
    }
    let mut rows: Vec<Row> = cfgs.into_iter().map(Cfg::finish).collect();
    note_workerd(&mut rows);
    if let (Ok(w), Some(row)) = (&warm, rows.iter_mut().find(|r| r.name == tc_name(1, 100))) {
        row.note(format!("giving the 100 tenants their sandboxes took {:.1} s before the clock ran", w.as_secs_f64()));
    }
    if let Ok(d) = daemon {
        d.stop(warnings);
    }
    drop((bare, per_tenant, wd));
    rows
}
