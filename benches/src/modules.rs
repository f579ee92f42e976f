//! npm modules (groups 2 and 3): a task that requires lodash against the same task without it, on one daemon
//! started with `--modules`. Warm: the tenant's sandbox already loaded the module (the goal is within 1.1x of
//! the plain task). Cold: the first call in a fresh sandbox (`--max-requests 1`), which loads lodash from the
//! read-only modules directory. lodash is installed once per bench run with `taskcell modules add` (npm and the
//! registry needed; without them the rows are n/a) into the bench's temp dir, removed at the end.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::daemon::Daemon;
use crate::http::{build, Conn};
use crate::invoke::{check_run, first_run};
use crate::lanes::{self, Lane};
use crate::report::{Row, Unit};
use crate::{Ctx, TASK_JS};

pub const WARM_PLAIN: &str = "taskcell warm, named task (--modules daemon)";
pub const WARM_LODASH: &str = "taskcell warm, task requiring lodash";
pub const COLD_PLAIN: &str = "plain task, fresh sandbox (--modules daemon)";
pub const COLD_LODASH: &str = "task requiring lodash, fresh sandbox";

/// The bench's task, with lodash doing a little of the work.
const LODASH_JS: &str = "const _ = require('lodash'); module.exports = (d) => ({ok: true, n: _.identity(d.n)});";

static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn installed(ctx: &Ctx) -> Result<PathBuf, String> {
    INSTALLED
        .get_or_init(|| {
            let bin = ctx.taskcell.as_ref().map_err(|e| e.clone())?;
            let dir = ctx.tmp.join("modules");
            let o = Command::new(bin)
                .args(["modules", "add", "--dir"])
                .arg(&dir)
                .arg("lodash@4.17.21")
                .output()
                .map_err(|e| format!("taskcell modules add: {e}"))?;
            if !o.status.success() {
                let err = String::from_utf8_lossy(&o.stderr);
                return Err(format!("taskcell modules add lodash@4.17.21: {}", err.lines().last().unwrap_or("failed")));
            }
            Ok(dir)
        })
        .clone()
}

/// A daemon with the modules and the two tasks deployed for tenant bench-mod.
fn setup(ctx: &Ctx, name: &str, flags: &[&str]) -> Result<(Daemon, Conn), String> {
    let dir = installed(ctx)?;
    let dir = dir.to_str().ok_or("temp dir not UTF-8")?;
    let mut all = vec!["--modules", dir];
    all.extend(flags);
    let d = Daemon::start_with(ctx, name, ctx.pool_size, &all)?;
    let mut c = Conn::open(&d.socket).map_err(|e| e.to_string())?;
    d.settle_start();
    first_run(&mut c, "bench-mod")?;
    for (task, src) in [("plain", TASK_JS), ("lodash", LODASH_JS)] {
        let put = c
            .request(&build("PUT", &format!("/v1/tenants/bench-mod/tasks/{task}"), src.as_bytes()))
            .map_err(|e| format!("deploy {task}: {e}"))?;
        if put.status != 200 && put.status != 201 {
            return Err(format!("deploy {task}: {}", put.describe()));
        }
    }
    Ok((d, c))
}

fn call(c: &mut Conn, task: &str, n: u64) -> Result<u64, String> {
    let body = serde_json::to_vec(&json!({"n": n})).expect("static JSON");
    let req = build("POST", &format!("/v1/tenants/bench-mod/tasks/{task}/run"), &body);
    let t0 = Instant::now();
    let r = c.request(&req).map_err(|e| e.to_string())?;
    let us = t0.elapsed().as_micros() as u64;
    check_run(&r, n)?;
    Ok(us)
}

pub fn warm(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let (n, w) = if ctx.quick { (200, 20) } else { (3000, 200) };
    let r = |name: &str| Row::new(2, name, Unit::Micros);
    let (plain, lodash) = (r(WARM_PLAIN), r(WARM_LODASH).vs(WARM_PLAIN));
    let (daemon, mut c) = match setup(ctx, "mod-warm", &[]) {
        Ok(x) => x,
        Err(e) => return lanes::run(vec![Lane::na(plain, e.clone()), Lane::na(lodash, e)]),
    };
    let mut c2 = match Conn::open(&daemon.socket) {
        Ok(c) => c,
        Err(e) => return lanes::run(vec![Lane::na(plain, e.to_string()), Lane::na(lodash, e.to_string())]),
    };
    let (mut i, mut j) = (0, 0);
    let rows = lanes::run(vec![
        Lane::new(
            plain,
            n,
            w,
            Box::new(|| {
                i += 1;
                call(&mut c, "plain", i)
            }),
        ),
        Lane::new(
            lodash,
            n,
            w,
            Box::new(|| {
                j += 1;
                call(&mut c2, "lodash", j)
            }),
        ),
    ]);
    daemon.stop(warnings);
    rows
}

pub fn cold(ctx: &Ctx, warnings: &mut Vec<String>) -> Vec<Row> {
    let n = if ctx.quick { 5 } else { 40 };
    let r = |name: &str| Row::new(3, name, Unit::Micros);
    let (plain, lodash) = (r(COLD_PLAIN), r(COLD_LODASH).vs(COLD_PLAIN));
    // Every run is a tenant's last in its sandbox: the next one finds a fresh sandbox from the pool.
    let (daemon, mut c) = match setup(ctx, "mod-cold", &["--max-requests", "1"]) {
        Ok(x) => x,
        Err(e) => return lanes::run(vec![Lane::na(plain, e.clone()), Lane::na(lodash, e)]),
    };
    let mut h = match Conn::open(&daemon.socket) {
        Ok(h) => h,
        Err(e) => return lanes::run(vec![Lane::na(plain, e.to_string()), Lane::na(lodash, e.to_string())]),
    };
    let mut rows = {
        let d = &daemon;
        let mut i = 0;
        let mut sample = |task: &str| {
            let _ = d.wait_pool_full(&mut h, Duration::from_secs(5));
            i += 1;
            call(&mut c, task, i)
        };
        let sample = std::cell::RefCell::new(&mut sample);
        lanes::run(vec![
            Lane::new(plain, n, 1, Box::new(|| (sample.borrow_mut())("plain"))),
            Lane::new(lodash, n, 1, Box::new(|| (sample.borrow_mut())("lodash"))),
        ])
    };
    for row in &mut rows {
        row.note("first call in a fresh sandbox (--max-requests 1), pool full before each sample");
    }
    daemon.stop(warnings);
    rows
}
