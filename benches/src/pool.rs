//! Group 5: how fast the pool refills and what an idle sandbox costs in memory.
//!
//! Memory is read from outside: the sandboxes are the daemon's descendant trees in other PID
//! namespaces; each one's RSS and PSS are summed over its processes (/proc/PID/smaps_rollup), and its
//! memory cgroup's own charge is read too. The baseline is the same number of idle bare Nodes running a
//! bootstrap-like script (benches/js/idle.js), alive at the same time, so that PSS splits shared pages
//! the same way.

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::http::{build, Conn};
use crate::invoke::{adhoc_body, check_run};
use crate::procs::{self, Child};
use crate::report::{Row, Unit};
use crate::sandbox::BARE_NODE;
use crate::Ctx;

pub const REFILL: &str = "pool refill, per sandbox";
const BARE_RSS: &str = "idle bare node: RSS";
const BARE_PSS: &str = "idle bare node: PSS";
// Measured again with the tenant rows: PSS depends on how many processes share a page at that moment.
const BARE_RSS_END: &str = "idle bare node, at the end: RSS";
const BARE_PSS_END: &str = "idle bare node, at the end: PSS";

struct Mem {
    rss: Vec<u64>,
    pss: Vec<u64>,
    cgroup: Vec<u64>,
    procs: Vec<usize>,
}

fn measure(sbs: &[procs::Sandbox]) -> Mem {
    let mut m = Mem { rss: Vec::new(), pss: Vec::new(), cgroup: Vec::new(), procs: Vec::new() };
    for s in sbs {
        let (mut rss, mut pss, mut n) = (0, 0, 0);
        for p in &s.pids {
            if let Some((r, ps)) = procs::rss_pss(*p) {
                rss += r;
                pss += ps;
                n += 1;
            }
        }
        if n > 0 {
            m.rss.push(rss);
            m.pss.push(pss);
            m.procs.push(n);
        }
        if let Some((kib, _)) = procs::cgroup_memory(s.root) {
            m.cgroup.push(kib);
        }
    }
    m
}

fn mem_rows(prefix: &str, m: &Mem, own_cgroup: bool, base: (&str, &str), rows: &mut Vec<Row>) {
    let mut rss = Row::new(5, format!("{prefix}: RSS"), Unit::KiB).vs(base.0);
    let mut pss = Row::new(5, format!("{prefix}: PSS"), Unit::KiB).vs(base.1);
    let mut cg = Row::new(5, format!("{prefix}: cgroup charge"), Unit::KiB).vs(base.0);
    if m.rss.is_empty() {
        rss.set_na("no sandbox processes found below the daemon");
        pss.set_na("no sandbox processes found below the daemon");
    }
    for v in &m.rss {
        rss.record(*v);
    }
    for v in &m.pss {
        pss.record(*v);
    }
    if let (Some(lo), Some(hi)) = (m.procs.iter().min(), m.procs.iter().max()) {
        rss.note(format!("{lo}-{hi} processes per sandbox; n = sandboxes"));
    }
    if !own_cgroup {
        cg.set_na("sandbox processes are not in a memory cgroup of their own");
    } else if m.cgroup.is_empty() {
        cg.set_na("no memory cgroup readable for the sandboxes");
    }
    for v in &m.cgroup {
        cg.record(*v);
    }
    cg.note("pages charged to the sandbox's own cgroup: shared file pages are charged to whoever touched them first");
    rows.extend([rss, pss, cg]);
}

fn bare_rows(names: (&str, &str), nodes: &Result<Vec<Child>, String>) -> (Row, Row) {
    let mut rss = Row::new(5, names.0, Unit::KiB);
    let mut pss = Row::new(5, names.1, Unit::KiB);
    match nodes {
        Err(e) => {
            rss.set_na(e.clone());
            pss.set_na(e.clone());
        }
        Ok(nodes) => {
            for c in nodes {
                if let Some((r, p)) = procs::rss_pss(c.pid()) {
                    rss.record(r);
                    pss.record(p);
                }
            }
            rss.note("benches/js/idle.js, as many as the pool holds, alive alongside the sandboxes");
        }
    }
    (rss, pss)
}

/// Starts `n` idle bare Nodes and waits until each has printed its ready byte.
fn idle_nodes(ctx: &Ctx, n: usize) -> Result<Vec<Child>, String> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut cmd = Command::new(&ctx.node);
        cmd.arg(ctx.tmp.join("js/idle.js")).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut c = Child::spawn(cmd, &format!("idle-node-{i}")).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        let got = c.inner.stdout.as_mut().map(|o| o.read(&mut b)).transpose().map_err(|e| e.to_string())?;
        if got != Some(1) {
            return Err("idle node did not start".into());
        }
        out.push(c);
    }
    Ok(out)
}

pub fn run(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let drains = if ctx.quick { 2 } else { 10 };
    let settle = Duration::from_millis(if ctx.quick { 500 } else { 1500 });
    let mut rows = Vec::new();
    let daemon = Daemon::start(ctx, "pool", ctx.pool_size);
    let nodes = idle_nodes(ctx, ctx.pool_size.max(1));
    let mut health = daemon.as_ref().ok().and_then(|d| Conn::open(&d.socket).ok());

    // The pool full and untouched: every sandbox below the daemon is an idle pool sandbox.
    let pool_ready = match (&daemon, health.as_mut()) {
        (Ok(d), Some(h)) => d.wait_pool_full(h, Duration::from_secs(10)).map(|_| ()).map_err(|e| e.to_string()),
        (Err(e), _) => Err(e.clone()),
        (_, None) => Err("cannot connect to the daemon".into()),
    };
    std::thread::sleep(settle);
    let (bare_rss, bare_pss) = bare_rows((BARE_RSS, BARE_PSS), &nodes);
    let s0: Vec<procs::Sandbox> = match &daemon {
        Ok(d) => procs::sandboxes(d.pid()),
        Err(_) => Vec::new(),
    };
    let own_cgroup = {
        let mine = procs::cgroup_memory(std::process::id() as i32).map(|x| x.1);
        let d = daemon.as_ref().ok().and_then(|d| procs::cgroup_memory(d.pid())).map(|x| x.1);
        s0.first()
            .and_then(|s| procs::cgroup_memory(s.root))
            .map(|x| x.1)
            .is_some_and(|p| Some(&p) != mine.as_ref() && Some(&p) != d.as_ref())
    };
    match (&daemon, &pool_ready) {
        (Err(e), _) => {
            for name in ["idle pool sandbox: RSS", "idle pool sandbox: PSS", "idle pool sandbox: cgroup charge"] {
                let mut r = Row::new(5, name, Unit::KiB);
                r.set_na(e.clone());
                rows.push(r);
            }
        }
        (Ok(_), ready) => {
            let before = rows.len();
            mem_rows("idle pool sandbox", &measure(&s0), own_cgroup, (BARE_RSS, BARE_PSS), &mut rows);
            if let Err(e) = ready {
                for r in &mut rows[before..] {
                    r.note(format!("pool not confirmed full: {e}"));
                }
            }
        }
    }
    rows.push(bare_rss);
    rows.push(bare_pss);

    // Refill: take every pooled sandbox with new tenants, time until the pool is full again.
    let mut refill = Row::new(5, REFILL, Unit::Micros).vs(BARE_NODE);
    let pid = std::process::id();
    match (&daemon, &pool_ready) {
        (Err(e), _) => refill.set_na(e.clone()),
        (Ok(_), Err(e)) => refill.set_na(e.clone()),
        (Ok(d), Ok(())) => {
            let mut c = Conn::open(&d.socket);
            let h = health.as_mut().expect("health connection exists when the pool was seen full");
            'drains: for round in 0..drains {
                if procs::stopping() {
                    break;
                }
                let Ok(c) = c.as_mut() else { break };
                let target = match d.pool(h) {
                    Ok(st) => st.target,
                    Err(e) => {
                        refill.set_na(e);
                        break;
                    }
                };
                let t0 = Instant::now();
                for i in 0..target {
                    let req = build("POST", &format!("/v1/tenants/refill-{pid}-{round}-{i}/run"), &adhoc_body(i));
                    match c.request(&req).map_err(|e| e.to_string()).and_then(|r| check_run(&r, i)) {
                        Ok(_) => {}
                        Err(e) => {
                            refill.error(e);
                            continue 'drains;
                        }
                    }
                }
                match d.wait_pool_full(h, Duration::from_secs(5)) {
                    Ok(t1) => refill.record((t1 - t0).as_micros() as u64 / target.max(1)),
                    Err(e) => {
                        warnings.push(format!("pool refill: daemon's {e}"));
                        refill.error(e.to_string());
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if let Some(p50) = refill.p50() {
                refill.rate = Some(1e6 / p50.max(1) as f64);
                refill.note(format!(
                    "drain all {} pooled sandboxes with new tenants, time until /v1/health shows the pool full, / pool size",
                    d.pool_size
                ));
            }
        }
    }
    rows.push(refill);

    // The sandboxes that were idle in the pool at the start have each served one invocation by now.
    match &daemon {
        Ok(d) if !s0.is_empty() => {
            std::thread::sleep(settle);
            let live: HashSet<i32> = procs::sandboxes(d.pid()).iter().map(|s| s.root).collect();
            let used: Vec<procs::Sandbox> =
                procs::sandboxes(d.pid()).into_iter().filter(|s| s0.iter().any(|x| x.root == s.root) && live.contains(&s.root)).collect();
            let before = rows.len();
            mem_rows("idle tenant sandbox after 1 run", &measure(&used), own_cgroup, (BARE_RSS_END, BARE_PSS_END), &mut rows);
            if used.is_empty() {
                for r in &mut rows[before..] {
                    r.set_na("the first pool sandboxes were gone by the end of the refill rounds");
                }
            }
        }
        _ => {
            for name in ["RSS", "PSS", "cgroup charge"] {
                let mut r = Row::new(5, format!("idle tenant sandbox after 1 run: {name}"), Unit::KiB);
                r.set_na(daemon.as_ref().err().cloned().unwrap_or_else(|| "no pool sandboxes found below the daemon".into()));
                rows.push(r);
            }
        }
    }
    let (r, p) = bare_rows((BARE_RSS_END, BARE_PSS_END), &nodes);
    rows.extend([r, p]);
    drop(health);
    if let Ok(d) = daemon {
        d.stop(warnings);
    }
    drop(nodes);
    rows
}
