//! The servers under test, started by the bench in its own temp dir: `taskcell serve` and the bare
//! Node HTTP server (benches/js/server.js), both on Unix sockets. Readiness, `/v1/health` reading
//! (tolerant of its exact shape) and an orderly stop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::procfs;

use crate::http::Conn;
use crate::procs::{self, Child};
use crate::Ctx;

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pool_size: usize,
    /// JSON pointers into /v1/health: the pool's idle count and its target size, when found.
    pub idle_ptr: Option<String>,
    pub target_ptr: Option<String>,
    /// Sandboxes being made for the pool, when health says.
    pub starting_ptr: Option<String>,
    pub health_sample: String,
}

/// The most telling lines of a log: the last ones that mention an error, else the last ones.
fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let errs: Vec<&str> = v
        .iter()
        .copied()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("fail") || l.contains("panic") || l.contains("usage")
        })
        .collect();
    let pick = if errs.is_empty() { &v } else { &errs };
    let t = pick[pick.len().saturating_sub(lines)..].join(" | ");
    if t.is_empty() {
        return "no log output".into();
    }
    t.chars().take(200).collect()
}

impl Daemon {
    /// Starts `taskcell serve` and waits until `GET /v1/health` answers 200.
    pub fn start(ctx: &Ctx, name: &str, pool_size: usize) -> Result<Daemon, String> {
        Daemon::start_with(ctx, name, pool_size, &[])
    }

    /// As `start`, with more flags for `taskcell serve`.
    pub fn start_with(ctx: &Ctx, name: &str, pool_size: usize, flags: &[&str]) -> Result<Daemon, String> {
        Daemon::spawn(ctx, name, Some(pool_size), flags)
    }

    /// As `start_with`, without `--pool-size`: the daemon's own default pool is what is measured; its size is
    /// read from `/v1/health`.
    pub fn start_default_pool(ctx: &Ctx, name: &str, flags: &[&str]) -> Result<Daemon, String> {
        Daemon::spawn(ctx, name, None, flags)
    }

    fn spawn(ctx: &Ctx, name: &str, pool_size: Option<usize>, flags: &[&str]) -> Result<Daemon, String> {
        let bin = ctx.taskcell.as_ref().map_err(|e| e.clone())?;
        let socket = ctx.tmp.join(format!("{name}.sock"));
        let state = ctx.tmp.join(format!("state-{name}"));
        let log = ctx.tmp.join(format!("{name}.log"));
        if socket.as_os_str().len() > 100 {
            return Err(format!("socket path too long for a Unix socket: {}", socket.display()));
        }
        // Every daemon the bench starts gets an empty state directory: a daemon keeps its pool's demand across
        // restarts (docs/pool.md), and a round of the default pool must start from the default.
        if state.exists() {
            fs::remove_dir_all(&state).map_err(|e| format!("emptying {}: {e}", state.display()))?;
        }
        fs::create_dir_all(&state).map_err(|e| format!("creating {}: {e}", state.display()))?;
        let logf = fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .arg("--secrets-key")
            .arg(ctx.tmp.join(format!("{name}.secrets.key")));
        if let Some(n) = pool_size {
            cmd.arg("--pool-size").arg(n.to_string());
        }
        if let Some(r) = &ctx.rootfs {
            cmd.arg("--rootfs").arg(r);
        }
        cmd.args(flags);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
        let mut child = Child::spawn(cmd, name).map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let t0 = Instant::now();
        let mut last_err = String::from("socket never appeared");
        loop {
            if let Some(st) = child.exited() {
                return Err(format!("taskcell serve exited at start ({st}): {}", tail(&log, 1)));
            }
            if procs::stopping() {
                return Err("interrupted".into());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let how = child.stop(Duration::from_secs(10));
                return Err(format!("not ready after 60 s ({last_err}); {how}; log: {}", tail(&log, 3)));
            }
            if socket.exists() {
                match Conn::open(&socket).and_then(|mut c| c.get("/v1/health")) {
                    Ok(r) if r.status == 200 => {
                        let health = r.try_json().unwrap_or(Value::Null);
                        let (idle_ptr, target_ptr) = find_pool_fields(&health);
                        let starting_ptr = find_starting_field(&health);
                        let pool_size = pool_size
                            .or_else(|| target_ptr.as_deref().and_then(|p| health.pointer(p)).and_then(Value::as_u64).map(|n| n as usize))
                            .unwrap_or(0);
                        return Ok(Daemon {
                            child,
                            socket,
                            log,
                            pool_size,
                            idle_ptr,
                            target_ptr,
                            starting_ptr,
                            health_sample: health.to_string().chars().take(300).collect(),
                        });
                    }
                    Ok(r) => last_err = format!("/v1/health: {}", r.describe()),
                    Err(e) => last_err = format!("/v1/health: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After start: let the pool fill, so that the first measurements do not race the initial boot of
    /// every pooled sandbox. Best effort: rows notice a pool that never fills.
    pub fn settle_start(&self) {
        if self.pool_size == 0 {
            return;
        }
        if let Ok(mut h) = Conn::open(&self.socket) {
            let _ = self.wait_pool_full(&mut h, Duration::from_secs(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 3)
    }

    /// The pool's state, read from one health response.
    pub fn pool(&self, conn: &mut Conn) -> Result<PoolState, String> {
        let r = conn.get("/v1/health").map_err(|e| format!("/v1/health: {e}"))?;
        if r.status != 200 {
            return Err(format!("/v1/health: {}", r.describe()));
        }
        let v = r.try_json().ok_or("/v1/health: not JSON")?;
        let ptr = self.idle_ptr.as_deref().ok_or_else(|| format!("no pool idle count in /v1/health ({})", self.health_sample))?;
        let idle = v.pointer(ptr).and_then(Value::as_u64).ok_or("pool idle count missing")?;
        let num = |p: &Option<String>| p.as_deref().and_then(|p| v.pointer(p)).and_then(Value::as_u64);
        let target = num(&self.target_ptr).unwrap_or(self.pool_size as u64);
        let starting = num(&self.starting_ptr);
        let parent = ptr.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let raw = if parent.is_empty() { v.to_string() } else { v.pointer(parent).map(Value::to_string).unwrap_or_default() };
        Ok(PoolState { idle, target, starting, raw: raw.chars().take(160).collect() })
    }

    /// Polls /v1/health until the pool's idle count reaches its target; returns when it did.
    /// Gives up early, as `Stuck`, when the pool is short and nothing is being made for it (for
    /// 100 ms; as when the daemon is at its cap on sandboxes), or when its figures have not moved for
    /// `stall` (a sandbox start that never ends).
    pub fn wait_pool_full(&self, conn: &mut Conn, stall: Duration) -> Result<Instant, PoolWait> {
        let mut last: Option<((u64, Option<u64>), Instant)> = None;
        loop {
            let st = self.pool(conn).map_err(PoolWait::Error)?;
            if st.idle >= st.target {
                return Ok(Instant::now());
            }
            if procs::stopping() {
                return Err(PoolWait::Error("interrupted".into()));
            }
            let now = (st.idle, st.starting);
            match last {
                Some((prev, since)) if prev == now => {
                    if st.starting == Some(0) && since.elapsed() > Duration::from_millis(100) {
                        return Err(PoolWait::Stuck(format!("nothing starting: {}", st.raw)));
                    }
                    if since.elapsed() > stall {
                        return Err(PoolWait::Stuck(format!("no change for {:.0} s: {}", stall.as_secs_f64(), st.raw)));
                    }
                }
                _ => last = Some((now, Instant::now())),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGTERM and wait; reports anything it left behind (socket, sandbox processes).
    pub fn stop(mut self, warnings: &mut Vec<String>) {
        let sbs = procs::sandboxes(self.pid());
        let before: Vec<(i32, Option<u64>)> = sbs.iter().flat_map(|s| s.pids.iter().map(|p| (*p, procfs::start_time(*p as u32)))).collect();
        // The sandboxes' cgroups, and the daemon's own parent for them, which it should remove.
        let own: std::collections::HashSet<PathBuf> = procs::cgroup_dirs(self.pid()).into_iter().collect();
        let mut cgroups: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
        for s in &sbs {
            for d in procs::cgroup_dirs(s.root) {
                // A hierarchy's root (a sandbox caught before it joined its own group reads as in the daemon's,
                // which on a host without systemd is the root) is never the daemon's to remove.
                let is_root =
                    d.parent().is_none_or(|p| p == std::path::Path::new("/sys/fs/cgroup")) || d == std::path::Path::new("/sys/fs/cgroup");
                if own.contains(&d) || is_root {
                    continue;
                }
                if let Some(parent) = d.parent().filter(|p| !own.contains(*p)) {
                    cgroups.insert(parent.to_path_buf());
                }
                cgroups.insert(d);
            }
        }
        if let Some(st) = self.child.exited() {
            warnings.push(format!("daemon {} had exited during the run ({st}): {}", self.child.name, self.log_tail()));
        }
        let how = self.child.stop(Duration::from_secs(30));
        if how.contains("killed") {
            warnings.push(format!("daemon {}: {how}", self.child.name));
        }
        // What the daemon tears down may finish just after it exits: give it two seconds.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            let procs_left = before.iter().any(|(p, st)| st.is_some() && procfs::start_time(*p as u32) == *st);
            if !procs_left && !cgroups.iter().any(|d| d.exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<i32> =
            before.iter().filter(|(p, st)| st.is_some() && procfs::start_time(*p as u32) == *st).map(|(p, _)| *p).collect();
        if !left.is_empty() {
            warnings.push(format!(
                "daemon {} left {} sandbox processes running 2 s after it exited (pids {:?}); not killed by the bench",
                self.child.name,
                left.len(),
                &left[..left.len().min(8)]
            ));
        }
        let left: Vec<&PathBuf> = cgroups.iter().filter(|d| d.exists()).collect();
        if !left.is_empty() {
            let shown: Vec<String> = left.iter().take(4).map(|d| d.display().to_string()).collect();
            warnings.push(format!(
                "daemon {} left {} cgroup directories 2 s after SIGTERM: {}{}",
                self.child.name,
                left.len(),
                shown.join(", "),
                if left.len() > 4 { ", ..." } else { "" }
            ));
        }
        if self.socket.exists() {
            warnings.push(format!("daemon {} left its socket behind after SIGTERM", self.child.name));
        }
    }
}

pub struct PoolState {
    pub idle: u64,
    pub target: u64,
    pub starting: Option<u64>,
    /// The pool's part of the health response, for notes.
    pub raw: String,
}

pub enum PoolWait {
    /// Health could not be read, or has no idle count.
    Error(String),
    /// The pool stays short of its size (the health figures, for the note).
    Stuck(String),
}

impl std::fmt::Display for PoolWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolWait::Error(e) => write!(f, "{e}"),
            PoolWait::Stuck(s) => write!(f, "pool stays short of its size: {s}"),
        }
    }
}

/// Finds a count of sandboxes being started for the pool, if health has one.
pub fn find_starting_field(v: &Value) -> Option<String> {
    let mut leaves = Vec::new();
    flatten(v, String::new(), &mut leaves);
    leaves.into_iter().find(|p| {
        let l = p.to_lowercase();
        l.contains("pool") && ["starting", "booting", "spawning", "pending", "making"].iter().any(|w| last(&l).contains(w))
    })
}

/// Finds the pool's idle count and target size in a /v1/health body, whatever their exact names:
/// numeric fields whose path mentions the pool, idle/ready/available for the count, size/target for
/// the target.
pub fn find_pool_fields(v: &Value) -> (Option<String>, Option<String>) {
    let mut leaves = Vec::new();
    flatten(v, String::new(), &mut leaves);
    let has = |s: &str, words: &[&str]| words.iter().any(|w| s.contains(w));
    const IDLE: &[&str] = &["idle", "ready", "available", "free", "warm", "waiting"];
    const TARGET: &[&str] = &["size", "target", "capacity", "max", "want", "desired", "configured"];
    let lower: Vec<(String, String)> = leaves.iter().map(|p| (p.clone(), p.to_lowercase())).collect();
    let idle = lower
        .iter()
        .find(|(_, l)| l.contains("pool") && has(last(l), IDLE))
        .or_else(|| lower.iter().find(|(_, l)| l.contains("pool") && has(l, IDLE)))
        .or_else(|| lower.iter().find(|(_, l)| l == "/pool" || l == "/pooled"))
        .or_else(|| lower.iter().find(|(_, l)| has(last(l), &["idle"]) && !l.contains("tenant")))
        .map(|(p, _)| p.clone());
    let target = lower.iter().find(|(p, l)| Some(p) != idle.as_ref() && l.contains("pool") && has(last(l), TARGET)).map(|(p, _)| p.clone());
    (idle, target)
}

fn last(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn flatten(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(x, format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Number(n) if n.is_u64() => out.push(path),
        _ => {}
    }
}

/// The bare Node HTTP server: the same function, no isolation, Node's own HTTP parser.
pub struct NodeServer {
    /// Held for its Drop, which stops the server.
    _child: Child,
    pub socket: PathBuf,
}

impl NodeServer {
    pub fn start(ctx: &Ctx, name: &str) -> Result<NodeServer, String> {
        NodeServer::spawn(ctx, name)?.ready()
    }

    /// `n` servers booting at once (a hundred one after the other would take seconds), each ready.
    pub fn start_many(ctx: &Ctx, prefix: &str, n: usize) -> Result<Vec<NodeServer>, String> {
        let booting = (0..n).map(|i| NodeServer::spawn(ctx, &format!("{prefix}-{i}"))).collect::<Result<Vec<_>, _>>()?;
        booting.into_iter().map(Booting::ready).collect()
    }

    fn spawn(ctx: &Ctx, name: &str) -> Result<Booting, String> {
        let socket = ctx.tmp.join(format!("{name}.sock"));
        let log = ctx.tmp.join(format!("{name}.log"));
        let logf = fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&ctx.node);
        cmd.arg(ctx.tmp.join("js/server.js"))
            .arg(&socket)
            .arg(ctx.tmp.join("js/task.js"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = Child::spawn(cmd, name).map_err(|e| format!("spawning node: {e}"))?;
        Ok(Booting { child, socket, log, t0: Instant::now() })
    }
}

/// A bare Node server started and not yet known to listen.
struct Booting {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    t0: Instant,
}

impl Booting {
    fn ready(mut self) -> Result<NodeServer, String> {
        loop {
            if let Some(st) = self.child.exited() {
                return Err(format!("node server exited ({st}): {}", tail(&self.log, 3)));
            }
            if self.socket.exists() && Conn::open(&self.socket).is_ok() {
                return Ok(NodeServer { _child: self.child, socket: self.socket });
            }
            if self.t0.elapsed() > Duration::from_secs(20) || procs::stopping() {
                self.child.stop(Duration::from_secs(5));
                return Err("bare node server not listening after 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pool_fields_in_common_shapes() {
        let (i, t) = find_pool_fields(&json!({"status":"ok","pool":{"idle":3,"size":4},"sandboxes":7}));
        assert_eq!((i.as_deref(), t.as_deref()), (Some("/pool/idle"), Some("/pool/size")));
        let (i, t) = find_pool_fields(&json!({"status":"ok","pool_idle":3,"pool_size":4}));
        assert_eq!((i.as_deref(), t.as_deref()), (Some("/pool_idle"), Some("/pool_size")));
        let (i, t) = find_pool_fields(&json!({"status":"ok","pool":{"ready":1,"target":2},"tenants":1}));
        assert_eq!((i.as_deref(), t.as_deref()), (Some("/pool/ready"), Some("/pool/target")));
        let (i, _) = find_pool_fields(&json!({"status":"ok","sandboxes":{"idle_pool":2,"tenant":1}}));
        assert_eq!(i.as_deref(), Some("/sandboxes/idle_pool"));
    }
}
