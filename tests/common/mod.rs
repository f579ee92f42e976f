//! Shared harness of the daemon's integration tests: a real `taskcell serve` in a temporary directory of its own,
//! and a small HTTP/1.1 client over its Unix socket. The client and the /proc and cgroup readers are the crate
//! `testkit`'s (the benches use the same), re-exported here; what knows taskcell's own names (`taskcell-<pid>`
//! groups, `sb-*` sandboxes) stays here.
//!
//! [`Daemon`] starts the binary that Cargo built for this test run, waits until `GET /v1/health` answers 200 and
//! the pre-warmed pool is full, and when dropped stops it with SIGTERM (SIGKILL after 15 s, which fails the test)
//! and checks that nothing of it is left: no process whose command line names its directory, none of the
//! processes it started, no `taskcell-<pid>` cgroup, no socket file. Then it removes the directory.
//!
//! [`Client`] (`testkit::http`) speaks HTTP/1.1 with keep-alive over one connection, can send raw bytes for malformed input, and
//! reads with a timeout so that a hang fails the test instead of blocking it forever. Timeouts here only detect
//! hangs; no test asserts how fast anything is.
//!
//! These tests need root (namespaces, cgroups). Without it they print a loud `SKIPPED: needs root`, and fail if
//! `CI` is set. The rootfs is `target/rootfs` (built by `make`) unless `TASKCELL_TEST_ROOTFS` names another.

#![allow(dead_code)]

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{cgroup, procfs};

pub mod cluster;
pub mod netns;

// Re-exported for the tests; not every test file uses every one (as with dead code, see the top).
/// The HTTP/1.1 client; `HANG` is the longest any single read may block before the test calls it a hang.
#[allow(unused_imports)]
pub use testkit::http::{encode, Client, Response, HANG};
#[allow(unused_imports)]
pub use testkit::procfs::{descendant_pids, rss_kib};
/// Longest the daemon may take to come up (it boots a pool of sandboxes).
const START_GUARD: Duration = Duration::from_secs(60);
/// Longest the harness waits for a full pool before it settles for a partial one (and says so).
const POOL_GUARD: Duration = Duration::from_secs(20);
/// Longest the daemon may take to stop after SIGTERM before it is killed and the test fails.
const STOP_GUARD: Duration = Duration::from_secs(15);

// ---------- preconditions ----------

/// True if the test can run. Without root it says so loudly, and fails under CI, where a skip would hide a
/// regression.
pub fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("\n**********\nSKIPPED: needs root: {test}\n**********\n");
    assert!(std::env::var_os("CI").is_none(), "{test} needs root, and CI is set: these tests must not be skipped in CI");
    false
}

/// Skip the calling test (with a loud note) unless it runs as root.
#[macro_export]
macro_rules! need_root {
    ($name:expr) => {
        if !common::root($name) {
            return;
        }
    };
}

pub fn rootfs() -> PathBuf {
    let rootfs = match std::env::var_os("TASKCELL_TEST_ROOTFS") {
        Some(r) => PathBuf::from(r),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/rootfs"),
    };
    assert!(
        rootfs.join("usr/bin/node").exists(),
        "{} holds no usr/bin/node: run `make` first (it builds the rootfs), or set TASKCELL_TEST_ROOTFS",
        rootfs.display()
    );
    rootfs
}

// ---------- the daemon ----------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A `taskcell serve` of this test's own.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    flags: Vec<String>,
    env: Vec<(String, String)>,
    /// Files bound over host paths in a mount namespace of the daemon's own (`start_with_binds`).
    binds: Vec<(CString, CString)>,
    inner: Mutex<Inner>,
}

struct Inner {
    child: Option<Child>,
    /// Every daemon process this harness started in this directory (restarts included): their cgroup groups
    /// and sandbox processes must be gone at the end.
    pids: Vec<u32>,
    /// Processes seen as descendants of our daemons, with their start times: none may outlive the daemon.
    descendants: HashSet<(u32, u64)>,
    /// cgroup directories the daemon lives in (its groups are created below them).
    cgroup_dirs: Vec<PathBuf>,
    stopped: bool,
}

impl Daemon {
    /// Start a daemon with a pool of 2 and these extra flags (`["--timeout-ms", "1000"]`).
    pub fn start(name: &str, flags: &[&str]) -> Daemon {
        Daemon::start_with_env(name, flags, &[])
    }

    /// As `start`, with these variables added to the daemon's environment.
    pub fn start_with_env(name: &str, flags: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(name, flags, env, &[])
    }

    /// As `start`, in a private mount namespace where each `(file, over)` pair binds a test's file over a host
    /// path, for the daemon alone (its own /etc/resolv.conf: the host's stays as it is).
    pub fn start_with_binds(name: &str, flags: &[&str], binds: &[(&std::path::Path, &str)]) -> Daemon {
        Daemon::start_with(name, flags, &[], binds)
    }

    fn start_with(name: &str, flags: &[&str], env: &[(&str, &str)], binds: &[(&std::path::Path, &str)]) -> Daemon {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("taskcell-it-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test's temporary directory");
        // The secrets key in the test's own directory, never the host's /etc/taskcell.
        let key = dir.join("secrets.key").display().to_string();
        let mut all = vec![
            "--pool-size".to_string(),
            "2".to_string(),
            "--rootfs".to_string(),
            rootfs().display().to_string(),
            "--secrets-key".to_string(),
            key,
        ];
        all.extend(flags.iter().map(|s| s.to_string()));
        let d = Daemon {
            socket: dir.join("s.sock"),
            state: dir.join("state"),
            log: dir.join("daemon.log"),
            dir,
            flags: all,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            binds: binds
                .iter()
                .map(|(file, over)| (CString::new(file.as_os_str().as_bytes()).unwrap(), CString::new(*over).unwrap()))
                .collect(),
            inner: Mutex::new(Inner {
                child: None,
                pids: Vec::new(),
                descendants: HashSet::new(),
                cgroup_dirs: Vec::new(),
                stopped: false,
            }),
        };
        d.spawn();
        d
    }

    /// One daemon shared by the tests of a file, stopped and checked when the test binary exits.
    pub fn shared(cell: &'static OnceLock<Daemon>, name: &str, flags: &[&str]) -> &'static Daemon {
        Daemon::shared_with_env(cell, name, flags, &[])
    }

    pub fn shared_with_env(cell: &'static OnceLock<Daemon>, name: &str, flags: &[&str], env: &[(&str, &str)]) -> &'static Daemon {
        cell.get_or_init(|| {
            let d = Daemon::start_with_env(name, flags, env);
            register_at_exit(cell);
            d
        })
    }

    fn spawn(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open the daemon's log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskcell"));
        if !self.binds.is_empty() {
            let binds = self.binds.clone();
            // SAFETY: between fork and exec only async-signal-safe calls (unshare, mount) on strings made before.
            unsafe {
                command.pre_exec(move || {
                    let none = std::ptr::null::<libc::c_char>();
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    for (file, over) in &binds {
                        if libc::mount(file.as_ptr(), over.as_ptr(), none, libc::MS_BIND, std::ptr::null()) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .args(&self.flags)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start taskcell serve");
        let pid = child.id();
        inner.pids.push(pid);
        for dir in cgroup::hierarchy_dirs(pid) {
            if !inner.cgroup_dirs.contains(&dir) {
                inner.cgroup_dirs.push(dir);
            }
        }
        inner.child = Some(child);
        inner.stopped = false;
        drop(inner);
        self.wait_ready();
    }

    /// The daemon's current process id.
    pub fn pid(&self) -> u32 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).child.as_ref().expect("daemon running").id()
    }

    /// Ready: health answers 200 and the pool is full. A pool that stays short of full (a sandbox start that
    /// hangs) is reported loudly after `POOL_GUARD` but does not stop the test as long as one sandbox is idle:
    /// `pool_fills_at_start` in tests/api.rs is the test that fails for it.
    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            self.assert_running("while starting");
            let last = match self.try_health() {
                Ok(h) => {
                    let (idle, size) = (h["pool"]["idle"].as_u64().unwrap_or(0), h["pool"]["size"].as_u64().unwrap_or(0));
                    if idle >= size || (idle >= 1 && start.elapsed() > POOL_GUARD) {
                        if idle < size {
                            eprintln!(
                                "\n**********\nWARNING: the pool of {} is not full after {POOL_GUARD:?}: {h}\n**********",
                                self.dir.display()
                            );
                        }
                        self.snapshot_descendants();
                        return;
                    }
                    format!("health {h}")
                }
                Err(e) => e,
            };
            assert!(start.elapsed() < START_GUARD, "the daemon did not become ready in {START_GUARD:?}; last: {last}\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_health(&self) -> Result<Value, String> {
        let mut c = Client::try_connect(&self.socket).map_err(|e| format!("connect: {e}"))?;
        c.set_timeout(Duration::from_secs(10));
        match c.try_request("GET", "/v1/health", &[], b"") {
            Ok(r) if r.status == 200 => serde_json::from_slice(&r.body).map_err(|e| format!("health is not JSON: {e}")),
            Ok(r) => Err(format!("health answered {} {}", r.status, r.text())),
            Err(e) => Err(format!("health: {e}")),
        }
    }

    /// Wait until the pre-warmed pool is full; the last health seen if it is not within `guard`.
    pub fn wait_pool_full(&self, guard: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let last = match self.try_health() {
                Ok(h) if h["pool"]["idle"].as_u64() >= h["pool"]["size"].as_u64() => return Ok(()),
                Ok(h) => format!("health {h}"),
                Err(e) => e,
            };
            if start.elapsed() > guard {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panic (with the log) if the daemon has exited.
    pub fn assert_running(&self, when: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let child = inner.child.as_mut().expect("daemon started");
        if let Ok(Some(status)) = child.try_wait() {
            drop(inner);
            panic!("the daemon exited ({status}) {when}\n{}", self.log_tail());
        }
    }

    /// Remember the daemon's current descendants, so that the final check can tell if any outlived it.
    pub fn snapshot_descendants(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(child) = &inner.child else { return };
        let found = procfs::descendants_with_start(child.id());
        inner.descendants.extend(found);
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("--- daemon log ({}), last lines ---\n{}\n---", self.log.display(), lines[from..].join("\n"))
    }

    // ---- lifecycle operations for tests ----

    /// Send a signal to the daemon without waiting.
    pub fn signal(&self, sig: i32) {
        self.snapshot_descendants();
        let pid = self.pid();
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped (we hold its Child).
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// Wait for the daemon to exit after a signal; panics after `guard`.
    pub fn wait_exit(&self, guard: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                let child = inner.child.as_mut().expect("daemon started");
                if let Ok(Some(status)) = child.try_wait() {
                    inner.stopped = true;
                    return status;
                }
            }
            if start.elapsed() > guard {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                let child = inner.child.as_mut().expect("daemon started");
                let _ = child.kill();
                let _ = child.wait();
                inner.stopped = true;
                drop(inner);
                panic!("the daemon did not exit within {guard:?}; killed it\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the daemon and reap it.
    pub fn kill9(&self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(STOP_GUARD);
    }

    /// Start the daemon again over the same directory, socket and state, with the same flags.
    pub fn restart(&self) {
        {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            assert!(inner.stopped, "restart of a daemon that is still running");
        }
        self.spawn();
    }

    /// SIGTERM, wait, and check that nothing is left. Idempotent. Returns the problems found.
    fn stop_and_check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let running = !self.inner.lock().unwrap_or_else(|e| e.into_inner()).stopped;
        if running {
            self.signal(libc::SIGTERM);
            let start = Instant::now();
            loop {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                let child = inner.child.as_mut().expect("daemon started");
                match child.try_wait() {
                    Ok(Some(status)) => {
                        inner.stopped = true;
                        if !status.success() {
                            problems.push(format!("the daemon exited with {status} after SIGTERM"));
                        }
                        break;
                    }
                    _ if start.elapsed() > STOP_GUARD => {
                        let _ = child.kill();
                        let _ = child.wait();
                        inner.stopped = true;
                        problems.push(format!("the daemon did not stop within {STOP_GUARD:?} of SIGTERM; killed it"));
                        break;
                    }
                    _ => {}
                }
                drop(inner);
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.socket.exists() {
                problems.push(format!("the socket {} is still there after SIGTERM", self.socket.display()));
            }
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Processes: wait a little for the kernel to finish killing PID namespaces, then look.
        let start = Instant::now();
        let mut left;
        loop {
            left = Vec::new();
            for (pid, starttime) in &inner.descendants {
                if let Some(st) = procfs::stat(*pid) {
                    if st.starttime == *starttime {
                        left.push(format!("pid {pid} ({}) state {}", procfs::cmdline(*pid), st.state));
                    }
                }
            }
            let needle = self.dir.display().to_string();
            for pid in procfs::pids() {
                if procfs::cmdline(pid).contains(&needle) {
                    left.push(format!("pid {pid} ({}) names the test directory", procfs::cmdline(pid)));
                }
            }
            if left.is_empty() || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        problems.extend(left.into_iter().map(|l| format!("left behind: {l}")));
        for pid in &inner.pids {
            for dir in &inner.cgroup_dirs {
                let group = dir.join(format!("taskcell-{pid}"));
                if group.exists() {
                    problems.push(format!("cgroup left behind: {}", group.display()));
                    // Reported; now tidy up so that the machine is not littered (rmdir only: empty groups).
                    cgroup::remove_empty_tree(&group);
                }
            }
        }
        problems
    }

    // ---- requests ----

    /// A new connection to the daemon.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// One request on a new connection.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.client().request(method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// `POST /v1/tenants/{tenant}/run` with this code and data.
    pub fn run(&self, tenant: &str, code: &str, data: Value) -> Response {
        let body = serde_json::json!({"code": code, "data": data}).to_string();
        self.request("POST", &format!("/v1/tenants/{tenant}/run"), &[("Content-Type", "application/json")], body.as_bytes())
    }

    /// Run and expect a 200: the envelope.
    pub fn run_ok(&self, tenant: &str, code: &str, data: Value) -> Value {
        let r = self.run(tenant, code, data);
        assert_eq!(r.status, 200, "run for {tenant} failed: {}\n{}", r.text(), self.log_tail());
        r.json()
    }

    pub fn put_task(&self, tenant: &str, task: &str, source: &str) -> Response {
        self.request("PUT", &format!("/v1/tenants/{tenant}/tasks/{task}"), &[("Content-Type", "application/javascript")], source.as_bytes())
    }

    pub fn run_task(&self, tenant: &str, task: &str, body: &[u8]) -> Response {
        self.request("POST", &format!("/v1/tenants/{tenant}/tasks/{task}/run"), &[], body)
    }

    pub fn health(&self) -> Value {
        let r = self.get("/v1/health");
        assert_eq!(r.status, 200, "health: {}", r.text());
        r.json()
    }

    /// Health answers 200 with status ok, and a fresh tenant can run code: the daemon is fine.
    pub fn assert_healthy(&self) {
        self.assert_running("while it should be healthy");
        let h = self.health();
        assert_eq!(h["status"], "ok", "health: {h}");
        let tenant = format!("probe{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let env = self.run_ok(&tenant, "module.exports = () => 6 * 7", Value::Null);
        assert_eq!(env["result"], 42);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let problems = self.stop_and_check();
        let panicking = std::thread::panicking();
        if panicking || !problems.is_empty() {
            eprintln!("{}", self.log_tail());
        }
        let _ = fs::remove_dir_all(&self.dir);
        if !problems.is_empty() {
            let msg = format!("after stopping the daemon of {}:\n  {}", self.dir.display(), problems.join("\n  "));
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

static AT_EXIT: Mutex<Vec<&'static OnceLock<Daemon>>> = Mutex::new(Vec::new());

fn register_at_exit(cell: &'static OnceLock<Daemon>) {
    let mut list = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    if list.is_empty() {
        // SAFETY: registers a plain extern "C" function with no captured state.
        unsafe { libc::atexit(stop_shared) };
    }
    list.push(cell);
}

/// At exit of the test binary: stop the shared daemons and check them as `Drop` does.
extern "C" fn stop_shared() {
    let list = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    let mut failed = false;
    for cell in list {
        let Some(d) = cell.get() else { continue };
        let problems = d.stop_and_check();
        if !problems.is_empty() {
            eprintln!("{}", d.log_tail());
            eprintln!(
                "\n**********\nFAILED: after stopping the shared daemon of {}:\n  {}\n**********",
                d.dir.display(),
                problems.join("\n  ")
            );
            failed = true;
        }
        let _ = fs::remove_dir_all(&d.dir);
    }
    if failed {
        // SAFETY: _exit ends the process at once; nothing is left to run.
        unsafe { libc::_exit(1) };
    }
}

// ---------- processes and cgroups ----------

/// The `taskcell-<pid>` group `pid` makes in each hierarchy that limits a sandbox, whether it exists or not:
/// computed from the cgroup of this test process, which every daemon it starts inherits.
pub fn group_paths(pid: u32) -> Vec<PathBuf> {
    cgroup::limit_dirs(std::process::id()).into_iter().map(|(_, dir)| dir.join(format!("taskcell-{pid}"))).collect()
}

/// Sandbox cgroup directories (`sb-*`) under the daemon's groups, all hierarchies together.
pub fn sandbox_cgroups(groups: &[PathBuf]) -> usize {
    groups
        .iter()
        .map(|g| {
            fs::read_dir(g)
                .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("sb-") && e.path().is_dir()).count())
                .unwrap_or(0)
        })
        .sum()
}

/// A directory of the test's own, `taskcell-<label>-<pid>` under the temporary directory, made empty and
/// removed when dropped (a failed test leaves nothing behind either).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("taskcell-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test's temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A name no other test uses: tenants of a shared daemon stay apart.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Wait until `f` is true, polling; panics with `what` after `guard`.
pub fn wait_until(guard: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < guard, "gave up waiting for {what} after {guard:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// xorshift64*, seeded from getrandom: no dependency, good enough to pick victims, delays and sizes.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most 8 bytes into the local array.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
        Rng(u64::from_ne_bytes(b) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
