//! `make bench`: taskcell measured side by side with its baselines in one run, on one machine.
//!
//! Six groups of rows (see benches/README.md): making a sandbox, warm invocation, cold invocation,
//! throughput, pool refill and memory, a burst of new tenants. Rows within a group are sampled round-robin so that drift on a
//! shared machine hits them alike; every figure is a percentile from an hdrhistogram. The daemons and
//! servers under test are started here, in a temp dir under the output dir, and stopped (SIGTERM, then
//! wait) before the bench exits. The bench owns nothing else and kills nothing else.

mod burst;
mod daemon;
mod egress;
mod http;
mod invoke;
mod lanes;
mod modules;
mod pool;
mod procs;
mod report;
mod sandbox;
mod throughput;
mod workerd;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use report::Report;

pub const TASK_JS: &str = include_str!("../js/task.js");
const SERVER_JS: &str = include_str!("../js/server.js");
const IDLE_JS: &str = include_str!("../js/idle.js");

/// What every group needs to know about this run.
pub struct Ctx {
    pub quick: bool,
    /// The taskcell binary, or why there is none.
    pub taskcell: Result<PathBuf, String>,
    pub rootfs: Option<PathBuf>,
    pub node: PathBuf,
    pub out: PathBuf,
    /// target/bench/tmp-<pid>: sockets, state dirs, logs, fixtures; removed at the end.
    pub tmp: PathBuf,
    pub pool_size: usize,
}

const USAGE: &str = "usage: taskcell-bench [--quick] [--taskcell PATH] [--rootfs DIR] [--node PATH]
                      [--pool-size N] [--out DIR] [--only 1,2,3,4,5,6]

  --quick          every row with few samples (make bench-quick; well under two minutes)
  --taskcell PATH  the taskcell binary (default target/release/taskcell)
  --rootfs DIR     passed to `taskcell jail` and `taskcell serve` (default: theirs)
  --node PATH      Node for the baselines (default /usr/bin/node; sandboxes use their own)
  --pool-size N    the daemons' pre-warmed pool (default 4; the pool-empty row uses 0, the burst its own)
  --out DIR        where results.json, the no-op fixture and the temp dir go (default target/bench)
  --only LIST      run only these groups (1 sandbox, 2 warm, 3 cold, 4 throughput, 5 pool/memory,
                   6 burst of new tenants)";

struct Args {
    quick: bool,
    taskcell: PathBuf,
    rootfs: Option<PathBuf>,
    node: PathBuf,
    pool_size: usize,
    out: PathBuf,
    only: Vec<u8>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        taskcell: PathBuf::from("target/release/taskcell"),
        rootfs: None,
        node: PathBuf::from("/usr/bin/node"),
        pool_size: 4,
        out: PathBuf::from("target/bench"),
        only: vec![1, 2, 3, 4, 5, 6],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--full" => a.quick = false,
            "--taskcell" => a.taskcell = PathBuf::from(val("--taskcell")?),
            "--rootfs" => a.rootfs = Some(PathBuf::from(val("--rootfs")?)),
            "--node" => a.node = PathBuf::from(val("--node")?),
            "--out" => a.out = PathBuf::from(val("--out")?),
            "--pool-size" => {
                a.pool_size = val("--pool-size")?.parse().map_err(|_| "--pool-size needs a number")?;
                if a.pool_size == 0 {
                    return Err("--pool-size must be at least 1 (the pool-empty row uses 0 by itself)".into());
                }
            }
            "--only" => {
                a.only = val("--only")?
                    .split(',')
                    .map(|g| g.trim().parse::<u8>().ok().filter(|g| (1..=6).contains(g)).ok_or(format!("bad group {g:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn first_line(path: &str, key: &str) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
}

fn version_of(prog: &Path, arg: &str) -> String {
    Command::new(prog)
        .arg(arg)
        .env_clear()
        .env("PATH", procs::CLEAN_PATH)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|| "not found".into())
}

fn machine(ctx: &Ctx) -> Vec<(String, String)> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let mut m = vec![
        ("nproc".to_string(), nproc.to_string()),
        ("cpu".into(), first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into())),
        ("kernel".into(), fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()),
        ("memory".into(), first_line("/proc/meminfo", "MemTotal").unwrap_or_else(|| "?".into())),
        ("node".into(), version_of(&ctx.node, "--version")),
        (
            "taskcell".into(),
            match &ctx.taskcell {
                Ok(p) => p.display().to_string(),
                Err(e) => e.clone(),
            },
        ),
        ("load average at start".into(), fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()),
    ];
    for tool in ["unshare", "bwrap", "crun"] {
        let v = procs::which(tool).map(|p| version_of(&p, "--version")).unwrap_or_else(|| "not installed".into());
        m.push((tool.into(), v));
    }
    m
}

fn ratio(r: &Report, a: &str, b: &str, qa: f64) -> Option<f64> {
    let ra = r.row(a).filter(|x| x.ok())?;
    let rb = r.row(b).filter(|x| x.ok())?;
    Some(ra.hist.value_at_quantile(qa) as f64 / rb.hist.value_at_quantile(0.5).max(1) as f64)
}

fn goals(r: &Report) -> Vec<String> {
    let mut g = Vec::new();
    let verdict = |x: f64, limit: f64| if x <= limit { "met" } else { "NOT met" };
    if let Some(x) = ratio(r, invoke::TC_WARM, invoke::BARE_WARM, 0.5) {
        g.push(format!("warm p50 / bare node server p50 = {x:.2} (goal <= 1.5: {})", verdict(x, 1.5)));
    }
    for (row, what) in [(invoke::TC_WARM_WEBTASK, "webtask (ctx, cb)"), (invoke::TC_WARM_HTTP, "HTTP endpoint")] {
        if let Some(x) = ratio(r, row, invoke::TC_WARM_NAMED, 0.5) {
            g.push(format!("warm {what} p50 / named task on /run p50 = {x:.2} (goal <= 1.1: {})", verdict(x, 1.1)));
        }
    }
    if let Some(x) = ratio(r, modules::WARM_LODASH, modules::WARM_PLAIN, 0.5) {
        g.push(format!("warm task requiring lodash p50 / plain named task p50 = {x:.2} (goal <= 1.1: {})", verdict(x, 1.1)));
    }
    if let Some(x) = ratio(r, modules::COLD_LODASH, modules::COLD_PLAIN, 0.5) {
        g.push(format!("first call requiring lodash in a fresh sandbox p50 / plain task's p50 = {x:.2} (loading lodash, no goal)"));
    }
    if let (Some(a), Some(b)) = (r.row(egress::TC_GET).and_then(|x| x.p50()), r.row(egress::BARE_GET).and_then(|x| x.p50())) {
        let limit = b as f64 * 1.3 + 200.0;
        g.push(format!(
            "GET through egress p50 {:.3} ms vs bare node's {:.3} ms (goal <= 1.3x + 0.2 ms = {:.3} ms: {})",
            a as f64 / 1e3,
            b as f64 / 1e3,
            limit / 1e3,
            verdict(a as f64, limit)
        ));
    }
    if let Some(x) = ratio(r, egress::BARE_10MB, egress::TC_10MB, 0.5) {
        g.push(format!(
            "10 MB download through egress, rate / bare node's rate = {x:.2} (goal >= 0.8: {})",
            if x >= 0.8 { "met" } else { "NOT met" }
        ));
    }
    if let Some(x) = ratio(r, invoke::COLD_POOL, invoke::BARE_WARM, 0.99) {
        g.push(format!("cold pool-hit p99 / bare node server p50 = {x:.1} (goal <= 20: {})", verdict(x, 20.0)));
    }
    if let Some(x) = ratio(r, sandbox::JAIL_NOOP, sandbox::UNSHARE, 0.5) {
        g.push(format!("jail no-op p50 / unshare p50 = {x:.2} (goal <= 1: {})", verdict(x, 1.0)));
    }
    if let (Some(a), Some(b)) = (r.row(sandbox::JAIL_NODE).and_then(|x| x.p50()), r.row(sandbox::BARE_NODE).and_then(|x| x.p50())) {
        g.push(format!(
            "jail node start p50 - bare node start p50 = {:+.1} ms (isolation on top of Node's own start-up)",
            (a as f64 - b as f64) / 1e3
        ));
    }
    if let Some(x) = ratio(r, "idle pool sandbox: PSS", "idle bare node: PSS", 0.5) {
        g.push(format!("idle sandbox PSS / idle bare node PSS = {x:.2} (goal: close to 1)"));
    }
    g
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("taskcell-bench: {e}");
            std::process::exit(2);
        }
    };
    procs::install_signal_handlers();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("taskcell-bench: panic: {info}");
        procs::emergency_cleanup();
    }));

    let out = args.out.clone();
    if let Err(e) = fs::create_dir_all(&out) {
        eprintln!("taskcell-bench: creating {}: {e}", out.display());
        std::process::exit(1);
    }
    let out = fs::canonicalize(&out).unwrap_or(out);
    let tmp = out.join(format!("tmp-{}", std::process::id()));
    procs::register_tmpdir(&tmp);
    let setup = fs::create_dir_all(tmp.join("js"))
        .and_then(|_| fs::write(tmp.join("js/task.js"), TASK_JS))
        .and_then(|_| fs::write(tmp.join("js/server.js"), SERVER_JS))
        .and_then(|_| fs::write(tmp.join("js/idle.js"), IDLE_JS));
    if let Err(e) = setup {
        eprintln!("taskcell-bench: setting up {}: {e}", tmp.display());
        procs::remove_tmpdirs();
        std::process::exit(1);
    }
    let taskcell = if args.taskcell.is_file() {
        Ok(fs::canonicalize(&args.taskcell).unwrap_or(args.taskcell.clone()))
    } else {
        Err(format!("taskcell binary not found at {}", args.taskcell.display()))
    };
    let ctx = Ctx {
        quick: args.quick,
        taskcell,
        rootfs: args.rootfs.clone(),
        node: args.node.clone(),
        out: out.clone(),
        tmp: tmp.clone(),
        pool_size: args.pool_size,
    };

    let started = Instant::now();
    let mut report = Report {
        mode: if ctx.quick { "quick" } else { "full" },
        date: testkit::date::utc_now(),
        machine: machine(&ctx),
        rows: Vec::new(),
        warnings: Vec::new(),
        goals: Vec::new(),
    };
    eprintln!("taskcell-bench: {} run, groups {:?}", report.mode, args.only);
    for g in &args.only {
        if procs::stopping() {
            break;
        }
        let t0 = Instant::now();
        let rows = match g {
            1 => sandbox::run(&ctx),
            2 => {
                let mut rows = invoke::warm(&ctx, &mut report.warnings);
                rows.extend(modules::warm(&ctx, &mut report.warnings));
                rows.extend(egress::warm(&ctx, &mut report.warnings));
                rows
            }
            3 => {
                let mut rows = invoke::cold(&ctx, &mut report.warnings);
                rows.extend(invoke::big_task(&ctx, &mut report.warnings));
                rows.extend(modules::cold(&ctx, &mut report.warnings));
                rows
            }
            4 => throughput::run(&ctx, &mut report.warnings),
            5 => pool::run(&ctx, &mut report.warnings),
            _ => burst::run(&ctx, &mut report.warnings),
        };
        eprintln!("taskcell-bench: group {g} done in {:.1} s", t0.elapsed().as_secs_f64());
        report.rows.extend(rows);
    }
    let interrupted = procs::stopping();
    if interrupted {
        report.warnings.push("interrupted: the table holds what was measured before the signal".into());
    }
    report.finish();
    report.goals = goals(&report);
    report.machine.push(("bench wall time".into(), format!("{:.1} s", started.elapsed().as_secs_f64())));
    report.machine.push(("load average at end".into(), fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()));
    procs::remove_tmpdirs();

    print!("{}", report.table());
    let json_path = out.join("results.json");
    let body = serde_json::to_vec_pretty(&report.json()).unwrap_or_default();
    match fs::write(&json_path, body) {
        Ok(()) => println!("results: {}", json_path.display()),
        Err(e) => {
            eprintln!("taskcell-bench: writing {}: {e}", json_path.display());
            std::process::exit(1);
        }
    }
    if interrupted {
        std::process::exit(130);
    }
}
