//! Group 1: making a sandbox. A static no-op run under each isolation tool against plain fork/exec,
//! and the time to a ready Node (first byte on stdout) in a taskcell sandbox against a bare `node`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::lanes::{self, Lane};
use crate::procs::{which, Pre, Spawn, Until, CLEAN_PATH};
use crate::report::{Row, Unit};
use crate::Ctx;

pub const FORK_EXEC: &str = "fork/exec static no-op";
pub const UNSHARE: &str = "unshare -Urmnpiu --fork no-op";
pub const JAIL_NOOP: &str = "taskcell jail no-op";
pub const BARE_NODE: &str = "bare node start (clean env)";
pub const JAIL_NODE: &str = "taskcell jail node start";

/// Builds the static no-op into target/bench/bin (kept there: it is the benchmark's own fixture).
fn build_noop(ctx: &Ctx) -> Result<PathBuf, String> {
    let dir = ctx.out.join("bin");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let src = ctx.tmp.join("noop.c");
    fs::write(&src, "int main(void) { return 0; }\n").map_err(|e| e.to_string())?;
    let bin = dir.join("noop");
    let gcc = which("gcc").or_else(|| which("cc")).ok_or("no gcc or cc to build the static no-op")?;
    let out = Command::new(gcc)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("running gcc: {e}"))?;
    if !out.status.success() {
        return Err(format!("gcc -static failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(bin)
}

/// Runs a spawn once, capturing its output, to learn whether the row can be measured at all.
fn probe(s: &Spawn, until: Until) -> Result<(), String> {
    let o = s.run(until, true).map_err(|e| format!("spawn: {e}"))?;
    if o.status != 0 {
        return Err(o.describe());
    }
    Ok(())
}

fn lane_for<'a>(row: Row, n: usize, warmup: usize, s: Spawn, until: Until) -> Lane<'a> {
    if let Err(e) = probe(&s, until) {
        return Lane::na(row, e);
    }
    Lane::new(
        row,
        n,
        warmup,
        Box::new(move || {
            let o = s.run(until, false).map_err(|e| e.to_string())?;
            if o.status != 0 {
                return Err(format!("exit status {}", o.status));
            }
            Ok(o.micros)
        }),
    )
}

/// An OCI bundle for crun: the no-op as the whole rootfs, and the same namespaces as the other rows.
fn crun_bundle(ctx: &Ctx, crun: &Path, noop: &Path) -> Result<PathBuf, String> {
    let bundle = ctx.tmp.join("crun-bundle");
    let rootfs = bundle.join("rootfs");
    // The mount points crun's default spec needs, made here: the rootfs is read-only and owned by a
    // host uid outside the container's map.
    for d in ["proc", "dev/pts", "dev/shm", "dev/mqueue", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
    }
    fs::copy(noop, rootfs.join("noop")).map_err(|e| format!("copying the no-op: {e}"))?;
    let out = Command::new(crun)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .map_err(|e| format!("crun spec: {e}"))?;
    if !out.status.success() {
        return Err(format!("crun spec: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let path = bundle.join("config.json");
    let mut c: Value =
        serde_json::from_slice(&fs::read(&path).map_err(|e| e.to_string())?).map_err(|e| format!("crun spec wrote bad JSON: {e}"))?;
    c["process"]["args"] = json!(["/noop"]);
    c["process"]["terminal"] = json!(false);
    c["root"]["readonly"] = json!(true);
    if let Some(ns) = c["linux"]["namespaces"].as_array_mut() {
        for t in ["user", "cgroup", "network", "ipc", "uts", "mount", "pid"] {
            if !ns.iter().any(|n| n["type"] == t) {
                ns.push(json!({"type": t}));
            }
        }
    }
    // As root, a user namespace needs explicit maps: an unprivileged host range, as taskcell uses.
    c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    fs::write(&path, serde_json::to_vec_pretty(&c).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(bundle)
}

/// A crun row: each sample runs a fresh container id (crun removes the container when `run` ends).
fn crun_lane<'a>(ctx: &Ctx, row: Row, n: usize, warmup: usize, noop: &Path) -> Lane<'a> {
    let Some(crun) = which("crun") else {
        return Lane::na(row, "crun not installed");
    };
    let bundle = match crun_bundle(ctx, &crun, noop) {
        Ok(b) => b,
        Err(e) => return Lane::na(row, e),
    };
    let state = ctx.tmp.join("crun-state");
    let _ = fs::create_dir_all(&state);
    let pid = std::process::id();
    let mk = move |i: usize, pre: Pre| {
        Spawn::new(
            &crun,
            &["--root", &state.to_string_lossy(), "run", "--bundle", &bundle.to_string_lossy(), &format!("tcbench-{pid}-{i}")],
        )
        .with_pre(pre)
    };
    let mut pre = Pre::None;
    let mut row = row;
    if let Err(e) = probe(&mk(0, pre), Until::Exit) {
        if e.contains("hybrid") {
            pre = Pre::HideUnifiedCgroup;
            if let Err(e2) = probe(&mk(1, pre), Until::Exit) {
                return Lane::na(row, format!("{e}; and without the unified hierarchy: {e2}"));
            }
            row.note("crun 1.8 refuses this host's hybrid cgroups: run in a private mount ns without /sys/fs/cgroup/unified (its unshare is in the figure)");
        } else {
            return Lane::na(row, e);
        }
    }
    let mut i = 2;
    Lane::new(
        row,
        n,
        warmup,
        Box::new(move || {
            i += 1;
            let o = mk(i, pre).run(Until::Exit, false).map_err(|e| e.to_string())?;
            if o.status != 0 {
                return Err(format!("exit status {}", o.status));
            }
            Ok(o.micros)
        }),
    )
}

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let (n_noop, n_node) = if ctx.quick { (20, 6) } else { (500, 200) };
    let (w_noop, w_node) = if ctx.quick { (2, 1) } else { (10, 3) };
    let mut rows = Vec::new();

    let noop = build_noop(ctx);
    let noop_dir = noop.as_ref().ok().and_then(|p| p.parent()).map(Path::to_path_buf);
    let mut lanes: Vec<Lane> = Vec::new();
    let r = |name: &str| Row::new(1, name, Unit::Micros);
    match &noop {
        Err(e) => {
            for name in [FORK_EXEC, UNSHARE, "bwrap --unshare-all no-op", "crun run no-op", JAIL_NOOP] {
                lanes.push(Lane::na(r(name), format!("no static no-op: {e}")));
            }
        }
        Ok(noop) => {
            let noop_dir = noop_dir.clone().expect("noop has a parent");
            lanes.push(lane_for(r(FORK_EXEC), n_noop, w_noop, Spawn::new(noop, &[]), Until::Exit));
            match which("unshare") {
                Some(u) => lanes.push(lane_for(
                    r(UNSHARE).vs(FORK_EXEC),
                    n_noop,
                    w_noop,
                    Spawn::new(
                        &u,
                        &["--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", &noop.to_string_lossy()],
                    ),
                    Until::Exit,
                )),
                None => lanes.push(Lane::na(r(UNSHARE).vs(FORK_EXEC), "unshare (util-linux) not installed")),
            }
            let bw = r("bwrap --unshare-all no-op").vs(FORK_EXEC);
            match which("bwrap") {
                Some(b) => lanes.push(lane_for(
                    bw,
                    n_noop,
                    w_noop,
                    Spawn::new(&b, &["--unshare-all", "--ro-bind", &noop_dir.to_string_lossy(), "/bench", "/bench/noop"]),
                    Until::Exit,
                )),
                None => lanes.push(Lane::na(bw, "bwrap (bubblewrap) not installed")),
            }
            lanes.push(crun_lane(ctx, r("crun run no-op").vs(FORK_EXEC), n_noop, w_noop, noop));
            let jr = r(JAIL_NOOP).vs(FORK_EXEC);
            match &ctx.taskcell {
                Err(e) => lanes.push(Lane::na(jr, e.clone())),
                Ok(tc) => {
                    let bind = format!("{}:/bench", noop_dir.display());
                    let args = jail_args(ctx, &["--bind-ro", &bind], &["/bench/noop"]);
                    lanes.push(lane_for(
                        jr,
                        n_noop,
                        w_noop,
                        Spawn::new(tc, &args.iter().map(String::as_str).collect::<Vec<_>>()),
                        Until::Exit,
                    ));
                }
            }
        }
    }
    rows.extend(lanes::run(lanes));

    // Time to a ready Node: spawn until the first byte it writes.
    let script = "process.stdout.write('x')";
    let mut lanes: Vec<Lane> = Vec::new();
    lanes.push(lane_for(r(BARE_NODE), n_node, w_node, Spawn::new(&ctx.node, &["-e", script]), Until::FirstByte));
    let jr = r(JAIL_NODE).vs(BARE_NODE);
    match &ctx.taskcell {
        Err(e) => lanes.push(Lane::na(jr, e.clone())),
        Ok(tc) => {
            let args = jail_args(ctx, &[], &["/usr/bin/node", "-e", script]);
            lanes.push(lane_for(
                jr,
                n_node,
                w_node,
                Spawn::new(tc, &args.iter().map(String::as_str).collect::<Vec<_>>()),
                Until::FirstByte,
            ));
        }
    }
    rows.extend(lanes::run(lanes));
    rows
}

/// `jail EXTRA... [--rootfs DIR] -- CMD...`: the arguments of `taskcell jail` as the bench runs it.
fn jail_args(ctx: &Ctx, extra: &[&str], cmd: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = std::iter::once("jail").chain(extra.iter().copied()).map(String::from).collect();
    if let Some(rootfs) = &ctx.rootfs {
        args.push("--rootfs".into());
        args.push(rootfs.to_string_lossy().into_owned());
    }
    args.push("--".into());
    args.extend(cmd.iter().map(|a| a.to_string()));
    args
}
