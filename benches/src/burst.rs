//! Group 6: a burst of tenants the daemon has never seen. 32 clients, each with its own keep-alive
//! connection, share a counter of 200 new tenants and send each one request, all at once; the figures are
//! each tenant's first-request latency and the burst's rate of new tenants served. Once with the daemon's
//! default pool (what an operator who sets nothing gets), then a second burst of 200 other new tenants on the
//! same daemon once its pool has refilled to the target the first burst taught it (docs/pool.md), and once
//! with a pool sized for the burst.
//!
//! Then the same at the cap on sandboxes, with and without the pool taking quiet tenants' places
//! (`--pool-reclaim-idle-ms`): a daemon of 96 places and a pool of 32 serves 96 tenants one after another
//! (the morning's logins, each then quiet), waits for its pool, and takes a burst of 32 new tenants from 32
//! clients.
//!
//! Every round has a fresh daemon whose pool is full (polled on `/v1/health`) before the burst: a daemon
//! keeps each tenant's sandbox and its pool takes a tenant's place only after 30 s idle (pool_policy), so after one
//! burst a daemon near its cap on sandboxes could not start the next round with a full pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::daemon::{Daemon, PoolWait};
use crate::http::{build, Conn};
use crate::invoke::{adhoc_body, check_run, COLD_POOL};
use crate::procs;
use crate::report::{new_hist, Row, Unit};
use crate::Ctx;

const TENANTS: usize = 200;
const CLIENTS: usize = 32;
pub const DEFAULT_POOL: &str = "burst: 200 new tenants, default pool";
pub const SIZED_POOL: &str = "burst: 200 new tenants, pool of 200";
pub const SECOND_BURST: &str = "burst: 200 more, same daemon, self-sized pool";
/// A pool that holds the whole burst, and room for it to refill while the tenants keep theirs.
const SIZED_POOL_SIZE: usize = 200;
const SIZED_FLAGS: &[&str] = &["--max-sandboxes", "260"];
pub const CAP_RECLAIM: &str = "at the cap: 32 new tenants, quiet ones' places reclaimed";
pub const CAP_NO_RECLAIM: &str = "at the cap: 32 new tenants, reclaiming off";
const CAP_PLACES: usize = 96;
const CAP_POOL: usize = 32;
/// How long a tenant of the cap rounds is idle before the pool may take its place (the default is 30 s).
const CAP_RECLAIM_MS: &str = "1000";

#[derive(Default)]
struct Burst {
    hist: Option<Histogram<u64>>,
    ok: u64,
    /// 503 with Retry-After: the daemon had no sandbox in time for the tenant.
    overloaded: u64,
    /// Answers that did not say `"cold":true`, though every tenant was new.
    not_cold: u64,
    errors: u64,
    first_error: Option<String>,
    wall: Duration,
}

impl Burst {
    fn add(&mut self, o: Burst) {
        if let Some(h) = o.hist {
            let _ = self.hist.get_or_insert_with(new_hist).add(&h);
        }
        self.ok += o.ok;
        self.overloaded += o.overloaded;
        self.not_cold += o.not_cold;
        self.errors += o.errors;
        self.wall += o.wall;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// One client: takes the next tenant from the counter until there are none of the `tenants`, one request each.
fn client(mut conn: Conn, prefix: &str, next: &AtomicUsize, tenants: usize) -> Burst {
    let mut b = Burst { hist: Some(new_hist()), ..Burst::default() };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= tenants || procs::stopping() {
            return b;
        }
        let req = build("POST", &format!("/v1/tenants/{prefix}-{i}/run"), &adhoc_body(i as u64));
        let t0 = Instant::now();
        let r = conn.request(&req);
        let us = t0.elapsed().as_micros() as u64;
        let outcome = match r {
            Ok(r) if r.status == 503 && r.header("Retry-After").is_some() => {
                b.overloaded += 1;
                continue;
            }
            Ok(r) => check_run(&r, i as u64),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(cold) => {
                if let Some(h) = b.hist.as_mut() {
                    h.saturating_record(us.max(1));
                }
                b.ok += 1;
                if cold != Some(true) {
                    b.not_cold += 1;
                }
            }
            Err(e) => {
                b.errors += 1;
                b.first_error.get_or_insert(e);
            }
        }
    }
}

/// 200 new tenants named `prefix-N` through 32 connections opened before the clock runs.
fn burst(d: &Daemon, prefix: &str) -> Result<Burst, String> {
    burst_of(d, prefix, TENANTS)
}

fn burst_of(d: &Daemon, prefix: &str, tenants: usize) -> Result<Burst, String> {
    let conns = (0..CLIENTS).map(|_| Conn::open(&d.socket)).collect::<Result<Vec<_>, _>>().map_err(|e| format!("connect: {e}"))?;
    let next = AtomicUsize::new(0);
    let barrier = Barrier::new(CLIENTS + 1);
    let mut total = Burst::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|c| {
                let (next, barrier) = (&next, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    client(c, prefix, next, tenants)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        for h in handles {
            if let Ok(b) = h.join() {
                total.add(b);
            }
        }
        total.wall = t0.elapsed();
    });
    Ok(total)
}

/// A fresh daemon, its pool full, one burst; on the default daemon a second one, once the pool has grown to
/// what the first taught it (or as far as the cap on sandboxes lets it); the daemon stopped.
fn round(ctx: &Ctx, name: &str, sized: bool, prefix: &str, warnings: &mut Vec<String>) -> Result<(Burst, Option<Burst>, usize), String> {
    let d = if sized { Daemon::start_with(ctx, name, SIZED_POOL_SIZE, SIZED_FLAGS) } else { Daemon::start_default_pool(ctx, name, &[]) }?;
    let mut h = Conn::open(&d.socket).map_err(|e| e.to_string())?;
    let first = d.wait_pool_full(&mut h, Duration::from_secs(10)).map_err(|e| e.to_string()).and_then(|_| burst(&d, prefix));
    let second = match (&first, sized) {
        (Ok(_), false) => match d.wait_pool_full(&mut h, Duration::from_secs(60)) {
            Ok(_) | Err(PoolWait::Stuck(_)) => Some(burst(&d, &format!("{prefix}-again"))),
            Err(PoolWait::Error(e)) => Some(Err(e)),
        },
        _ => None,
    };
    let pool = d.pool_size;
    d.stop(warnings);
    let second = second.transpose()?;
    first.map(|b| (b, second, pool))
}

/// A daemon of `CAP_PLACES` places with a pool of `CAP_POOL`: as many tenants as places, one after another
/// from one client (each then quiet), the pool waited for (it refills from their places only when
/// reclaiming), then one burst of `CAP_POOL` new tenants from as many clients; the daemon stopped. Returns
/// the burst and the pool's idle count before it.
fn cap_round(ctx: &Ctx, reclaim: bool, prefix: &str, warnings: &mut Vec<String>) -> Result<(Burst, u64), String> {
    let (name, ms) = if reclaim { ("burst-cap-reclaim", CAP_RECLAIM_MS) } else { ("burst-cap-keep", "0") };
    let places = CAP_PLACES.to_string();
    let d = Daemon::start_with(ctx, name, CAP_POOL, &["--max-sandboxes", &places, "--pool-reclaim-idle-ms", ms])?;
    let result = (|| {
        let mut h = Conn::open(&d.socket).map_err(|e| e.to_string())?;
        d.wait_pool_full(&mut h, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
        for i in 0..CAP_PLACES {
            crate::invoke::first_run(&mut c, &format!("{prefix}-quiet-{i}"))?;
        }
        // Quiet for longer than the reclaim time, then as full as the pool gets (a stall when it cannot refill).
        std::thread::sleep(Duration::from_millis(1500));
        match d.wait_pool_full(&mut h, Duration::from_secs(5)) {
            Ok(_) | Err(PoolWait::Stuck(_)) => {}
            Err(PoolWait::Error(e)) => return Err(e),
        }
        let idle = d.pool(&mut h)?.idle;
        let b = burst_of(&d, &format!("{prefix}-new"), CAP_POOL)?;
        Ok((b, idle))
    })();
    d.stop(warnings);
    result
}

pub fn run(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let rounds = if ctx.quick { 1 } else { 3 };
    let pid = std::process::id();
    let mut rows = Vec::new();
    let mut results: [(Burst, Option<String>, usize); 3] = Default::default();
    // The two daemons take turns, round by round, so that noise on the machine hits both alike.
    'rounds: for r in 0..rounds {
        for (k, (name, sized)) in [("burst-default", false), ("burst-sized", true)].into_iter().enumerate() {
            if procs::stopping() {
                break 'rounds;
            }
            let k = if sized { 1 } else { k };
            match round(ctx, name, sized, &format!("{name}-{pid}-{r}"), warnings) {
                Ok((b, second, pool)) => {
                    results[k].0.add(b);
                    results[k].2 = pool;
                    if let Some(b) = second {
                        results[2].0.add(b);
                        results[2].2 = pool;
                    }
                }
                Err(e) => {
                    results[k].1.get_or_insert(e);
                }
            }
        }
    }
    for (name, (b, err, pool)) in [DEFAULT_POOL, SIZED_POOL, SECOND_BURST].into_iter().zip(results) {
        rows.push(row(name, b, err, pool, rounds));
    }
    // At the cap, the two daemons taking turns.
    let mut cap: [(Burst, Option<String>, Vec<u64>); 2] = Default::default();
    'cap: for r in 0..rounds {
        for (k, reclaim) in [true, false].into_iter().enumerate() {
            if procs::stopping() {
                break 'cap;
            }
            match cap_round(ctx, reclaim, &format!("cap{k}-{pid}-{r}"), warnings) {
                Ok((b, idle)) => {
                    cap[k].0.add(b);
                    cap[k].2.push(idle);
                }
                Err(e) => {
                    cap[k].1.get_or_insert(e);
                }
            }
        }
    }
    let [(b_on, err_on, idle_on), (b_off, err_off, idle_off)] = cap;
    for (name, b, err, idle, ms) in [(CAP_RECLAIM, b_on, err_on, idle_on, CAP_RECLAIM_MS), (CAP_NO_RECLAIM, b_off, err_off, idle_off, "0")]
    {
        let mut r = row(name, b, err, CAP_POOL, rounds);
        r.note(format!(
            "serve --pool-size {CAP_POOL} --max-sandboxes {CAP_PLACES} --pool-reclaim-idle-ms {ms}: {CAP_PLACES} tenants one after another, then {rounds} x {CAP_POOL} new tenants by {CAP_POOL} clients; pool idle before each burst: {idle:?}"
        ));
        rows.push(r);
    }
    rows
}

fn row(name: &str, b: Burst, err: Option<String>, pool: usize, rounds: usize) -> Row {
    let mut row = Row::new(6, name, Unit::Micros).vs(COLD_POOL);
    if let Some(h) = b.hist.as_ref() {
        let _ = row.hist.add(h);
    }
    row.errors = b.errors;
    row.first_error = b.first_error;
    if row.hist.is_empty() {
        row.set_na(err.or(row.first_error.clone()).unwrap_or_else(|| "no successful request".into()));
        return row;
    }
    if b.wall > Duration::ZERO {
        row.rate = Some(b.ok as f64 / b.wall.as_secs_f64());
    }
    if name == SECOND_BURST {
        row.note(format!(
            "{rounds} x {TENANTS} more tenants by {CLIENTS} clients, on the default daemon after its first burst, its pool refilled (from a minimum of {pool}) to the target that burst set, or as far as --max-sandboxes lets it"
        ));
    } else if name != CAP_RECLAIM && name != CAP_NO_RECLAIM {
        row.note(format!(
            "{rounds} x {TENANTS} tenants by {CLIENTS} clients, each round on a fresh daemon with its pool of {pool} full; rate: answered tenants / burst wall time"
        ));
    }
    if name == SIZED_POOL {
        row.note(format!("serve --pool-size {SIZED_POOL_SIZE} {}", SIZED_FLAGS.join(" ")));
    }
    row.note(format!("{} overloaded (503 with Retry-After), {} errors", b.overloaded, row.errors));
    if b.not_cold > 0 {
        row.note(format!("{} answers not cold", b.not_cold));
    }
    if let Some(e) = err {
        row.note(format!("a round failed: {e}"));
    }
    row
}
