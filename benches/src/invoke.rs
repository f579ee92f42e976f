//! Groups 2 and 3: one invocation at a time over a keep-alive connection. Warm (the tenant's sandbox
//! already running) against a bare Node HTTP server and against node started per request; cold (a new
//! tenant) from the pre-warmed pool and with no pool at all.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::{Daemon, NodeServer, PoolWait};
use crate::http::{build, Conn, Resp};
use crate::lanes::{self, Lane};
use crate::procs::{Spawn, Until};
use crate::report::{Row, Unit};
use crate::{Ctx, TASK_JS};

pub const BARE_WARM: &str = "bare node http server (no isolation)";
pub const TC_WARM: &str = "taskcell warm, ad-hoc code";
pub const TC_WARM_NAMED: &str = "taskcell warm, named task";
pub const TC_WARM_WEBTASK: &str = "taskcell warm, webtask (ctx, cb) task";
pub const TC_WARM_HTTP: &str = "taskcell warm, named task on the HTTP endpoint";
/// The same task as `TASK_JS` written for the webtask model.
const WEBTASK_JS: &str = "module.exports = function (ctx, cb) { cb(null, {ok: true, n: ctx.data.n}); };";
pub const NODE_PER_REQ: &str = "node per request (CGI style)";
pub const TC_WARM_REF: &str = "taskcell warm, same daemon (reference)";
pub const COLD_POOL: &str = "taskcell cold: new tenant, pool hit";
pub const BARE_FIRST: &str = "bare node: first request after idle";
pub const COLD_EMPTY: &str = "taskcell cold: new tenant, pool empty";
pub const BIG_CACHE: &str = "600 KB task, fresh sandbox, code cache";
pub const BIG_NO_CACHE: &str = "600 KB task, fresh sandbox, no cache";

pub fn adhoc_body(n: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"code": TASK_JS, "data": {"n": n}})).expect("static JSON")
}

fn micros_since(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// Checks a run envelope: 200, `result.n == n`; returns its `cold` flag.
pub fn check_run(r: &Resp, n: u64) -> Result<Option<bool>, String> {
    if r.status != 200 {
        return Err(r.describe());
    }
    let v: Value = r.try_json().ok_or_else(|| format!("not JSON: {}", r.describe()))?;
    if v.pointer("/result/n").and_then(Value::as_u64) != Some(n) {
        return Err(format!("wrong result: {}", r.describe()));
    }
    Ok(v.get("cold").and_then(Value::as_bool))
}

/// A tenant's first (cold) run, outside any measurement: a 503 `overloaded` (a busy machine making
/// sandboxes slowly) is retried a few times.
pub fn first_run(c: &mut Conn, tenant: &str) -> Result<(), String> {
    let req = build("POST", &format!("/v1/tenants/{tenant}/run"), &adhoc_body(0));
    let mut tries = 0;
    loop {
        let r = c.request(&req).map_err(|e| format!("first run of tenant {tenant}: {e}"))?;
        if r.status == 503 && tries < 5 && !crate::procs::stopping() {
            tries += 1;
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        return check_run(&r, 0).map(|_| ()).map_err(|e| format!("first run of tenant {tenant}: {e}"));
    }
}

/// One timed request on `conn`, checked; counts responses whose `cold` flag is not what was expected.
fn timed_run(conn: &mut Conn, req: &[u8], n: u64, want_cold: Option<bool>, odd: &Cell<u64>) -> Result<u64, String> {
    let t0 = Instant::now();
    let r = conn.request(req).map_err(|e| e.to_string())?;
    let us = micros_since(t0);
    let cold = check_run(&r, n)?;
    if want_cold.is_some() && cold != want_cold {
        odd.set(odd.get() + 1);
    }
    Ok(us)
}

fn note_cold(rows: &mut [Row], name: &str, odd: &Cell<u64>, what: &str) {
    if odd.get() > 0 {
        if let Some(r) = rows.iter_mut().find(|r| r.name == name) {
            r.note(format!("{} responses had cold != {what}", odd.get()));
        }
    }
}

pub fn warm(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let (n_warm, n_cgi) = if ctx.quick { (200, 10) } else { (3000, 150) };
    let (w_warm, w_cgi) = if ctx.quick { (20, 1) } else { (200, 3) };
    let r = |name: &str| Row::new(2, name, Unit::Micros);

    let bare = NodeServer::start(ctx, "bare-warm");
    let mut bare_conn = bare.as_ref().map_err(|e| e.clone()).and_then(|s| Conn::open(&s.socket).map_err(|e| e.to_string()));
    let daemon = Daemon::start(ctx, "warm", ctx.pool_size);
    let setup = |d: &Result<Daemon, String>| -> Result<(Conn, Conn), String> {
        let d = d.as_ref().map_err(|e| e.clone())?;
        let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
        // The tenant's first request gives it a sandbox; from then on it is warm.
        d.settle_start();
        first_run(&mut c, "bench-warm")?;
        let put = c.request(&build("PUT", "/v1/tenants/bench-warm/tasks/echo", TASK_JS.as_bytes())).map_err(|e| format!("deploy: {e}"))?;
        if put.status != 200 && put.status != 201 {
            return Err(format!("deploy: {}", put.describe()));
        }
        let put = c
            .request(&build("PUT", "/v1/tenants/bench-warm/tasks/wt?model=webtask", WEBTASK_JS.as_bytes()))
            .map_err(|e| format!("deploy: {e}"))?;
        if put.status != 200 && put.status != 201 {
            return Err(format!("deploy of the webtask: {}", put.describe()));
        }
        let c2 = Conn::open(&d.socket).map_err(|e| e.to_string())?;
        Ok((c, c2))
    };
    let conns = setup(&daemon);
    let odd_adhoc = Cell::new(0);
    let odd_named = Cell::new(0);
    let (mut c_adhoc, mut c_named) = match conns {
        Ok((a, b)) => (Ok(a), Ok(b)),
        Err(e) => (Err(e.clone()), Err(e)),
    };

    // The webtask model and the HTTP endpoint, each against the named task on /run (same daemon, same tenant).
    let open = |d: &Result<Daemon, String>| -> Result<Conn, String> {
        let d = d.as_ref().map_err(|e| e.clone())?;
        c_named.as_ref().map_err(|e| e.clone())?;
        Conn::open(&d.socket).map_err(|e| e.to_string())
    };
    let (mut c_wt, mut c_http) = (open(&daemon), open(&daemon));
    let mut lanes: Vec<Lane> = Vec::new();
    let mut i = 0u64;
    lanes.push(match bare_conn.as_mut() {
        Err(e) => Lane::na(r(BARE_WARM), e.clone()),
        Ok(c) => Lane::new(
            r(BARE_WARM),
            n_warm,
            w_warm,
            Box::new(move || {
                i += 1;
                let req = build("POST", "/v1/tenants/bench-warm/run", &adhoc_body(i));
                timed_run(c, &req, i, None, &Cell::new(0))
            }),
        ),
    });
    let mut j = 0u64;
    let odd = &odd_adhoc;
    lanes.push(match c_adhoc.as_mut() {
        Err(e) => Lane::na(r(TC_WARM).vs(BARE_WARM), e.clone()),
        Ok(c) => Lane::new(
            r(TC_WARM).vs(BARE_WARM),
            n_warm,
            w_warm,
            Box::new(move || {
                j += 1;
                let req = build("POST", "/v1/tenants/bench-warm/run", &adhoc_body(j));
                timed_run(c, &req, j, Some(false), odd)
            }),
        ),
    });
    let mut k = 0u64;
    let odd = &odd_named;
    lanes.push(match c_named.as_mut() {
        Err(e) => Lane::na(r(TC_WARM_NAMED).vs(BARE_WARM), e.clone()),
        Ok(c) => Lane::new(
            r(TC_WARM_NAMED).vs(BARE_WARM),
            n_warm,
            w_warm,
            Box::new(move || {
                k += 1;
                let body = serde_json::to_vec(&json!({"n": k})).expect("static JSON");
                let req = build("POST", "/v1/tenants/bench-warm/tasks/echo/run", &body);
                timed_run(c, &req, k, Some(false), odd)
            }),
        ),
    });
    let odd_wt = Cell::new(0);
    let mut w = 0u64;
    let odd = &odd_wt;
    lanes.push(match c_wt.as_mut() {
        Err(e) => Lane::na(r(TC_WARM_WEBTASK).vs(TC_WARM_NAMED), e.clone()),
        Ok(c) => Lane::new(
            r(TC_WARM_WEBTASK).vs(TC_WARM_NAMED),
            n_warm,
            w_warm,
            Box::new(move || {
                w += 1;
                let body = serde_json::to_vec(&json!({"n": w})).expect("static JSON");
                let req = build("POST", "/v1/tenants/bench-warm/tasks/wt/run", &body);
                timed_run(c, &req, w, Some(false), odd)
            }),
        ),
    });
    let mut h = 0u64;
    lanes.push(match c_http.as_mut() {
        Err(e) => Lane::na(r(TC_WARM_HTTP).vs(TC_WARM_NAMED), e.clone()),
        Ok(c) => Lane::new(
            r(TC_WARM_HTTP).vs(TC_WARM_NAMED),
            n_warm,
            w_warm,
            Box::new(move || {
                h += 1;
                let body = serde_json::to_vec(&json!({"n": h})).expect("static JSON");
                let req = build("POST", "/v1/tenants/bench-warm/tasks/echo/http", &body);
                let t0 = Instant::now();
                let resp = c.request(&req).map_err(|e| e.to_string())?;
                let us = micros_since(t0);
                // The result itself is the body here, not a run envelope.
                let n = resp.try_json().and_then(|v| v.get("n").and_then(Value::as_u64));
                if resp.status != 200 || n != Some(h) {
                    return Err(format!("wrong answer: {}", resp.describe()));
                }
                Ok(us)
            }),
        ),
    });
    // CGI style: a fresh node per request, the function evaluated, the data on argv, the result on stdout.
    let script = format!("{TASK_JS}\n;process.stdout.write(JSON.stringify({{result: module.exports(JSON.parse(process.argv[1]))}}));");
    let mut m = 0u64;
    let node = ctx.node.clone();
    lanes.push(Lane::new(
        r(NODE_PER_REQ).vs(BARE_WARM),
        n_cgi,
        w_cgi,
        Box::new(move || {
            m += 1;
            let data = json!({"n": m}).to_string();
            let o = Spawn::new(&node, &["-e", &script, &data]).run(Until::Exit, true).map_err(|e| e.to_string())?;
            if o.status != 0 {
                return Err(o.describe());
            }
            let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("stdout not JSON: {e}"))?;
            if v.pointer("/result/n").and_then(Value::as_u64) != Some(m) {
                return Err(format!("wrong result {v}"));
            }
            Ok(o.micros)
        }),
    ));
    let mut rows = lanes::run(lanes);
    note_cold(&mut rows, TC_WARM, &odd_adhoc, "false");
    note_cold(&mut rows, TC_WARM_NAMED, &odd_named, "false");
    note_cold(&mut rows, TC_WARM_WEBTASK, &odd_wt, "false");
    if let Ok(c) = &c_adhoc {
        if c.reconnects > 0 {
            warnings.push(format!("warm: the daemon closed the idle keep-alive connection {} times", c.reconnects));
        }
    }
    drop((c_adhoc, c_named, c_wt, c_http, bare_conn));
    if let Ok(d) = daemon {
        d.stop(warnings);
    }
    drop(bare);
    rows
}

/// The pool-hit daemon of group 3, its two connections and its warm reference tenant. Every new tenant
/// keeps its sandbox (for 30 s at least, `--pool-reclaim-idle-ms`), so a daemon with a cap on sandboxes
/// (taskcell's default depends on the machine's memory) may stop refilling its pool; the bench then starts
/// a fresh daemon, so that every pool-hit sample really finds a full pool.
const MAX_RESTARTS: u32 = 10;

struct ColdDaemon<'c> {
    ctx: &'c Ctx,
    d: Option<Daemon>,
    client: Option<Conn>,
    health: Option<Conn>,
    restarts: u32,
    last_stuck: Option<String>,
    /// Set when /v1/health has no pool idle count: sleep between samples instead.
    no_idle: Option<String>,
    warnings: Vec<String>,
    /// When each pooled sandbox was seen in the pool, oldest first: the daemon hands them out in that order.
    ready: VecDeque<Instant>,
    /// A pool hit took a sandbox: the next full pool holds its replacement.
    refilling: bool,
    /// How long each pool hit's sandbox had waited in the pool (ms), and the last one's wait: the bare
    /// servers of the anchor row wait as long.
    idle_ms: Vec<u64>,
    last_idle: Option<Duration>,
}

impl<'c> ColdDaemon<'c> {
    fn start(&mut self) -> Result<(), String> {
        if let Some(d) = self.d.take() {
            self.client = None;
            self.health = None;
            d.stop(&mut self.warnings);
        }
        let d = Daemon::start(self.ctx, "cold", self.ctx.pool_size)?;
        let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
        d.settle_start();
        first_run(&mut c, "bench-ref")?;
        self.health = Some(Conn::open(&d.socket).map_err(|e| e.to_string())?);
        self.client = Some(c);
        self.d = Some(d);
        self.ready.clear();
        Ok(())
    }

    /// Before every sample of the group: the pool full and idle, so that no sample shares the CPUs
    /// with a refill. Notes when the pool's newest sandbox arrived.
    fn settle(&mut self) -> Result<(), String> {
        let full = self.wait_full()?;
        if self.ready.is_empty() {
            // A fresh daemon: its whole pool is about as old as this.
            self.ready = vec![full; self.ctx.pool_size].into();
        } else if self.refilling {
            self.ready.push_back(full);
        }
        self.refilling = false;
        Ok(())
    }

    /// Waits for a full pool (or sleeps where it cannot tell); returns when it was full.
    fn wait_full(&mut self) -> Result<Instant, String> {
        if self.d.is_none() {
            self.start()?;
        }
        if self.no_idle.is_some() || self.restarts >= MAX_RESTARTS {
            std::thread::sleep(Duration::from_millis(if self.ctx.quick { 300 } else { 600 }));
            return Ok(Instant::now());
        }
        let stall = Duration::from_secs(if self.ctx.quick { 3 } else { 5 });
        for attempt in 0..2 {
            let (Some(d), Some(h)) = (self.d.as_ref(), self.health.as_mut()) else {
                return Err("no daemon".into());
            };
            match d.wait_pool_full(h, stall) {
                Ok(full) => return Ok(full),
                Err(PoolWait::Error(e)) if e.contains("no pool idle count") => {
                    self.no_idle = Some(e);
                    return Ok(Instant::now());
                }
                Err(PoolWait::Error(e)) => return Err(e),
                Err(PoolWait::Stuck(s)) => {
                    if attempt == 1 || self.restarts + 1 >= MAX_RESTARTS {
                        return Err(format!("a fresh daemon's pool stays short of its size: {s}"));
                    }
                    self.last_stuck = Some(s);
                    self.restarts += 1;
                    self.start()?;
                }
            }
        }
        Ok(Instant::now())
    }

    fn run(&mut self, tenant: &str, n: u64, want_cold: bool, odd: &Cell<u64>) -> Result<u64, String> {
        self.settle()?;
        if want_cold {
            if let Some(since) = self.ready.pop_front() {
                self.last_idle = Some(since.elapsed());
                self.idle_ms.push(since.elapsed().as_millis() as u64);
            }
            self.refilling = true;
        }
        let c = self.client.as_mut().ok_or("no daemon")?;
        let req = build("POST", &format!("/v1/tenants/{tenant}/run"), &adhoc_body(n));
        timed_run(c, &req, n, Some(want_cold), odd)
    }
}

/// The longest a bare server is kept waiting to match a pool sandbox's idle time.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(10);

/// The pool-hit row's anchor: bare Node servers that have served one untimed request (as a pool sandbox's
/// runtime warms its own invocation path up before it says it is ready: the anchor measures idling, not
/// Node's first use of its HTTP code), oldest first, as many as the daemon's pool holds and taken at the same
/// pace, so that each has idled about as long as the pool's sandbox it stands beside. Each one's connection
/// is opened when it starts, as the daemon's is.
struct IdleServers<'c> {
    ctx: &'c Ctx,
    waiting: VecDeque<(NodeServer, Conn, Instant)>,
    started: usize,
    idle_ms: Vec<u64>,
}

impl<'c> IdleServers<'c> {
    fn start(ctx: &'c Ctx) -> Result<IdleServers<'c>, String> {
        let mut s = IdleServers { ctx, waiting: VecDeque::new(), started: 0, idle_ms: Vec::new() };
        for _ in 0..ctx.pool_size {
            s.add()?;
        }
        Ok(s)
    }

    fn add(&mut self) -> Result<(), String> {
        let server = NodeServer::start(self.ctx, &format!("bare-first-{}", self.started))?;
        self.started += 1;
        let mut conn = Conn::open(&server.socket).map_err(|e| e.to_string())?;
        let warm = build("POST", "/v1/tenants/bare/run", &adhoc_body(0));
        timed_run(&mut conn, &warm, 0, None, &Cell::new(0))?;
        self.waiting.push_back((server, conn, Instant::now()));
        Ok(())
    }

    /// The oldest server's first request, once it has idled `idle` (the last pool hit's sandbox's wait);
    /// then a new server in its place, untimed.
    fn first_request(&mut self, idle: Option<Duration>, n: u64) -> Result<u64, String> {
        let (server, mut conn, since) = self.waiting.pop_front().ok_or("no bare server waiting")?;
        let until = since + idle.unwrap_or_default().min(MAX_IDLE_WAIT);
        while Instant::now() < until && !crate::procs::stopping() {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        self.idle_ms.push(since.elapsed().as_millis() as u64);
        let req = build("POST", "/v1/tenants/bare/run", &adhoc_body(n));
        let us = timed_run(&mut conn, &req, n, None, &Cell::new(0));
        drop((conn, server));
        self.add()?;
        us
    }
}

fn p50_ms(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

pub fn cold(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let (n_pool, n_empty, n_ref) = if ctx.quick { (10, 5, 20) } else { (200, 60, 400) };
    let r = |name: &str| Row::new(3, name, Unit::Micros);
    let pid = std::process::id();
    let cd = RefCell::new(ColdDaemon {
        ctx,
        d: None,
        client: None,
        health: None,
        restarts: 0,
        last_stuck: None,
        no_idle: None,
        warnings: Vec::new(),
        ready: VecDeque::new(),
        refilling: false,
        idle_ms: Vec::new(),
        last_idle: None,
    });
    let started = cd.borrow_mut().start();
    let bare = RefCell::new(IdleServers::start(ctx));
    let empty = Daemon::start(ctx, "cold-empty", 0);
    let (odd_ref, odd_pool, odd_empty) = (Cell::new(0), Cell::new(0), Cell::new(0));

    let mut lanes: Vec<Lane> = Vec::new();
    match &started {
        Err(e) => {
            lanes.push(Lane::na(r(TC_WARM_REF), e.clone()));
            lanes.push(Lane::na(r(COLD_POOL).vs(BARE_FIRST), e.clone()));
        }
        Ok(()) => {
            let (cdr, odd) = (&cd, &odd_ref);
            let mut i = 0;
            lanes.push(Lane::new(
                r(TC_WARM_REF),
                n_ref,
                if ctx.quick { 5 } else { 50 },
                Box::new(move || {
                    i += 1;
                    cdr.borrow_mut().run("bench-ref", i, false, odd)
                }),
            ));
            let (cdr, odd) = (&cd, &odd_pool);
            let mut i = 0;
            lanes.push(Lane::new(
                r(COLD_POOL).vs(BARE_FIRST),
                n_pool,
                1,
                Box::new(move || {
                    i += 1;
                    cdr.borrow_mut().run(&format!("cold-{pid}-{i}"), i, true, odd)
                }),
            ));
        }
    }
    let have_pool_daemon = started.is_ok();
    match bare.borrow().as_ref() {
        Err(e) => lanes.push(Lane::na(r(BARE_FIRST), e.clone())),
        Ok(_) => {
            let (cdr, bare) = (&cd, &bare);
            let mut i = 0;
            lanes.push(Lane::new(
                r(BARE_FIRST),
                n_pool,
                1,
                Box::new(move || {
                    // As for the pool-empty row: the daemon's refill is done (and seen when done), not beside this.
                    let idle = if have_pool_daemon {
                        let mut cd = cdr.borrow_mut();
                        cd.settle()?;
                        cd.last_idle
                    } else {
                        None
                    };
                    i += 1;
                    bare.borrow_mut().as_mut().map_err(|e| e.clone())?.first_request(idle, i)
                }),
            ));
        }
    }
    let er = r(COLD_EMPTY).vs(TC_WARM_REF);
    match &empty {
        Err(e) => lanes.push(Lane::na(er, format!("--pool-size 0: {e}"))),
        Ok(e) => match Conn::open(&e.socket) {
            Err(err) => lanes.push(Lane::na(er, err.to_string())),
            Ok(mut c) => {
                let (cdr, odd) = (&cd, &odd_empty);
                let mut i = 0;
                lanes.push(Lane::new(
                    er,
                    n_empty,
                    1,
                    Box::new(move || {
                        // The other daemon's pool settled too, so that no refill runs beside this sample.
                        if have_pool_daemon {
                            cdr.borrow_mut().settle()?;
                        }
                        i += 1;
                        let req = build("POST", &format!("/v1/tenants/empty-{pid}-{i}/run"), &adhoc_body(i));
                        timed_run(&mut c, &req, i, Some(true), odd)
                    }),
                ));
            }
        },
    }
    let mut rows = lanes::run(lanes);
    note_cold(&mut rows, TC_WARM_REF, &odd_ref, "false");
    note_cold(&mut rows, COLD_POOL, &odd_pool, "true");
    note_cold(&mut rows, COLD_EMPTY, &odd_empty, "true");
    let mut cd = cd.into_inner();
    if let (Some(row), Ok(b)) = (rows.iter_mut().find(|r| r.name == BARE_FIRST), bare.into_inner()) {
        row.note(format!(
            "a server that has served one untimed request, idle {} ms (p50) before its first request; the pool hits' sandboxes had waited {} ms (p50)",
            p50_ms(&b.idle_ms),
            p50_ms(&cd.idle_ms)
        ));
    }
    if let Some(row) = rows.iter_mut().find(|r| r.name == COLD_POOL) {
        if let Some(e) = &cd.no_idle {
            row.note(format!("{e}: slept between samples instead of waiting for a full pool"));
        } else if let Some(p) = cd.d.as_ref().and_then(|d| d.idle_ptr.clone()) {
            row.note(format!("pool full before each sample (health {p})"));
        }
        if let Some(s) = &cd.last_stuck {
            row.note(format!("daemon restarted {} times because its pool stopped refilling: {s}", cd.restarts));
            if cd.restarts >= MAX_RESTARTS {
                row.note("then slept between samples instead");
            }
        }
    }
    if let Some(d) = cd.d.take() {
        d.stop(&mut cd.warnings);
    }
    warnings.append(&mut cd.warnings);
    if let Ok(d) = empty {
        d.stop(warnings);
    }
    rows
}

/// A bundle-sized task (~600 KB of small functions, as a bundler makes them); `module.exports` returns
/// `{n}` like the bench's small task.
fn big_task_js() -> String {
    let mut src = String::from("const T = {};\n");
    for i in 0..3000 {
        src.push_str(&format!(
            "T.f{i} = function f{i}(a, b) {{ const x = [a, b, {i}].map((v) => v * 2 + {m}); if (x[0] > {i}) {{ return x.reduce((s, v) => s + v, 0) }} else {{ return {{ k: 'v{i}', n: x.length, s: String(a) + '{i}' }} }} }};\n",
            m = i % 7
        ));
    }
    src.push_str("module.exports = (d) => { let s = 0; for (let i = 0; i < 3000; i += 97) s += JSON.stringify(T['f' + i](d.n, i)).length; return { n: d.n, s } };\n");
    src
}

/// The first run of a large named task in a sandbox that has not compiled it (every run, with
/// `--max-requests 1`), with the code cache its deploy made and without (`--code-cache-bytes 0`); the pool
/// is full before each sample.
pub fn big_task(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let n = if ctx.quick { 5 } else { 40 };
    let src = big_task_js();
    let r = |name: &str| Row::new(3, name, Unit::Micros);
    let mut daemons = Vec::new();
    let mut lanes: Vec<Lane> = Vec::new();
    for (name, flags, row) in [
        ("big-cache", &["--max-requests", "1"][..], r(BIG_CACHE).vs(BIG_NO_CACHE)),
        ("big-nocache", &["--max-requests", "1", "--code-cache-bytes", "0"][..], r(BIG_NO_CACHE)),
    ] {
        let setup = || -> Result<(Daemon, Conn, Conn), String> {
            let d = Daemon::start_with(ctx, name, ctx.pool_size, flags)?;
            let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
            d.settle_start();
            let put = c.request(&build("PUT", "/v1/tenants/bench-big/tasks/big", src.as_bytes())).map_err(|e| format!("deploy: {e}"))?;
            if put.status != 200 && put.status != 201 {
                return Err(format!("deploy: {}", put.describe()));
            }
            let h = Conn::open(&d.socket).map_err(|e| e.to_string())?;
            Ok((d, c, h))
        };
        match setup() {
            Err(e) => lanes.push(Lane::na(row, e)),
            Ok((d, mut c, mut h)) => {
                let d = std::rc::Rc::new(d);
                daemons.push(d.clone());
                let mut i = 0;
                lanes.push(Lane::new(
                    row,
                    n,
                    1,
                    Box::new(move || {
                        let _ = d.wait_pool_full(&mut h, Duration::from_secs(5));
                        i += 1;
                        let body = serde_json::to_vec(&json!({"n": i})).expect("static JSON");
                        let req = build("POST", "/v1/tenants/bench-big/tasks/big/run", &body);
                        let t0 = Instant::now();
                        let resp = c.request(&req).map_err(|e| e.to_string())?;
                        let us = micros_since(t0);
                        check_run(&resp, i)?;
                        Ok(us)
                    }),
                ));
            }
        }
    }
    let rows = lanes::run(lanes);
    for d in daemons {
        // The lanes, and their references, are gone once run.
        if let Ok(d) = std::rc::Rc::try_unwrap(d) {
            d.stop(warnings);
        }
    }
    rows
}
