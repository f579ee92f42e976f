//! Reliability under faults (issue 5, items 5 and 6), through the real daemon:
//!
//! - **restarts**: SIGTERM under load drains the invocations in flight (200), refuses new connections (the socket
//!   is gone at once) and exits 0 within the drain timeout; SIGKILL at random points of a burst of deploys never
//!   leaves a half-written task that is then served, and loses no deploy that was acknowledged; a daemon started
//!   again over the dirty state (stale socket file, stale cgroups) cleans up and serves; a second daemon on a
//!   live socket refuses to start and leaves the first alone.
//! - **jailer failure paths**: a missing rootfs or one without Node stops the daemon at start with a clear
//!   message; a Node that cannot run makes requests 503 `overloaded` with a message naming the problem, health
//!   says why, and the daemon does not spin retrying; so does a host that refuses the daemon new cgroups (its
//!   cgroup filesystems remounted read-only in a mount namespace of its own), and it recovers when they are
//!   allowed again; an exhausted pool answers 503 with `Retry-After`.
//!
//! Figures are printed to stdout with the prefix `RELIABILITY` (run with `--nocapture`). Nothing asserts a
//! wall-clock time beyond "no hang" bounds. Tests of this file run one at a time (a lock). Root required.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{descendant_pids as descendants, group_paths, sandbox_cgroups, wait_until, Client, Daemon, Rng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use testkit::cgroup::remove_empty_tree;
use testkit::procfs::cpu_seconds;

// ---------- helpers ----------

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Processes still in any cgroup under these groups.
fn cgroup_members(groups: &[PathBuf]) -> Vec<u32> {
    let mut out = Vec::new();
    for g in groups {
        let Ok(rd) = fs::read_dir(g) else { continue };
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            if let Ok(t) = fs::read_to_string(e.path().join("cgroup.procs")) {
                out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    out
}

fn error_of(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    (v["error"]["kind"].as_str().unwrap_or("").to_string(), v["error"]["message"].as_str().unwrap_or("").to_string())
}

/// A `taskcell serve` started by hand, for the cases the shared harness cannot start (it waits for a full pool):
/// no readiness wait; SIGTERM on drop, then a check that its cgroup groups are gone.
struct Raw {
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: u32,
}

impl Raw {
    fn start_in(dir: PathBuf, flags: &[&str]) -> Raw {
        Raw::start_with(dir, flags, false)
    }

    /// As `start_in`, the daemon in a mount namespace of its own (mounts private), so that a test may change
    /// its view of the filesystem without touching the host's.
    fn start_in_own_mount_ns(dir: PathBuf, flags: &[&str]) -> Raw {
        Raw::start_with(dir, flags, true)
    }

    fn start_with(dir: PathBuf, flags: &[&str], own_mount_ns: bool) -> Raw {
        use std::os::unix::process::CommandExt;
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("s.sock");
        let log = dir.join("daemon.log");
        let out = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskcell"));
        if own_mount_ns {
            // SAFETY: between fork and exec the closure makes two system calls on constants, nothing else.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
                            != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--secrets-key")
            .arg(dir.join("secrets.key"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start taskcell serve");
        let pid = child.id();
        Raw { dir, socket, log, child: Some(child), pid }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the daemon to exit by itself (it must, within `guard`); its status.
    fn wait_exit(&mut self, guard: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if start.elapsed() > guard {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("the daemon did not exit within {guard:?} (killed it); log:\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_serving(&mut self, guard: Duration) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited ({st}) while starting; log:\n{}", self.log_text());
            }
            if let Ok(mut c) = Client::try_connect(&self.socket) {
                c.set_timeout(Duration::from_secs(10));
                if c.try_request("GET", "/v1/health", &[], b"").is_ok_and(|r| r.status == 200) {
                    return;
                }
            }
            assert!(start.elapsed() < guard, "the daemon did not answer health within {guard:?}; log:\n{}", self.log_text());
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket);
        c.set_timeout(Duration::from_secs(60));
        c
    }

    fn health(&self) -> Value {
        let r = self.client().request("GET", "/v1/health", &[], b"");
        assert_eq!(r.status, 200);
        r.json()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            let _ = descendants(self.pid);
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(st)) if st.success() => break,
                    Ok(Some(st)) => {
                        problems.push(format!("exited with {st} after SIGTERM"));
                        break;
                    }
                    _ if start.elapsed() > Duration::from_secs(15) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        problems.push("did not stop within 15 s of SIGTERM".to_string());
                        break;
                    }
                    _ => thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        for g in group_paths(self.pid) {
            if g.exists() {
                problems.push(format!("cgroup left behind: {}", g.display()));
                remove_empty_tree(&g);
            }
        }
        if problems.is_empty() || thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if !problems.is_empty() {
            let msg = format!("daemon in {}: {problems:?}\n{}", self.dir.display(), self.log_text());
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// A temporary directory removed when dropped, even by a failing test (it may hold a ~100 MB rootfs copy).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("taskcell-rel-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------- 5a. SIGTERM drains ----------

const SLEEPER: &str = "module.exports = async (d) => { await new Promise(r => setTimeout(r, d.ms)); return {n: d.n} }";

#[test]
fn sigterm_under_load_drains_in_flight_requests_and_exits_0() {
    need_root!("sigterm_under_load_drains_in_flight_requests_and_exits_0");
    let _serial = serial();
    let d = Daemon::start("drain", &["--pool-size", "2", "--drain-timeout-ms", "10000", "--timeout-ms", "20000"]);
    let tenants: Vec<String> = (0..6).map(|i| format!("drain{i}")).collect();
    for t in &tenants {
        d.run_ok(t, "module.exports = () => 1", Value::Null);
    }
    // In flight: one 1.5 s invocation per tenant, and two more sharing the first tenant's sandbox.
    let mut jobs: Vec<(String, u64)> = tenants.iter().cloned().zip(0..).collect();
    jobs.push((tenants[0].clone(), 100));
    jobs.push((tenants[0].clone(), 101));
    let in_flight: Vec<_> = jobs
        .iter()
        .cloned()
        .map(|(t, n)| {
            let socket = d.socket.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&socket);
                c.set_timeout(Duration::from_secs(30));
                let body = json!({"code": SLEEPER, "data": {"n": n, "ms": 1500}}).to_string();
                let t0 = Instant::now();
                let r = c.try_request("POST", &format!("/v1/tenants/{t}/run"), &[], body.as_bytes());
                (n, r, t0.elapsed())
            })
        })
        .collect();
    // An idle keep-alive connection, and one that has sent half a request, when the signal comes.
    let mut idle = d.client();
    assert_eq!(idle.request("GET", "/v1/health", &[], b"").status, 200);
    let mut half = d.client();
    half.set_timeout(Duration::from_secs(30));
    let late_body = json!({"code": "module.exports = () => 'late'"}).to_string();
    let late = common::encode("POST", "/v1/tenants/late/run", &[], late_body.as_bytes());
    let split = late.len() - 5;
    half.send_raw(&late[..split]).unwrap();
    wait_until(Duration::from_secs(30), "8 invocations in flight", || d.health()["invocations_in_flight"] == 8);

    let t_sig = Instant::now();
    d.signal(libc::SIGTERM);
    wait_until(Duration::from_secs(5), "the socket to be removed", || !d.socket.exists());
    let refused = Client::try_connect(&d.socket);
    assert!(refused.is_err(), "a new connection was accepted during the drain");
    // The half-sent request, completed now: 503 overloaded, Retry-After, Connection: close (docs/api.md).
    half.send_raw(&late[split..]).unwrap();
    let late_answer = half.read_response();
    // The idle keep-alive connection: closed by the daemon, or a 503 if it reads the request first.
    let idle_answer = idle.try_request("GET", "/v1/health", &[], b"");

    let status = d.wait_exit(Duration::from_secs(25));
    let stop_after = t_sig.elapsed();
    let mut got = BTreeMap::new();
    for h in in_flight {
        let (n, r, took) = h.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("in-flight request {n} got no answer: {e}"));
        assert_eq!(r.status, 200, "in-flight request {n}: {}", r.text());
        assert_eq!(r.json()["result"]["n"], n);
        got.insert(n, took.as_millis());
    }
    println!("RELIABILITY drain: SIGTERM with 8 invocations of 1.5 s in flight: all 200; exit {status} {stop_after:?} after the signal");
    match &late_answer {
        Ok(r) => {
            println!(
                "RELIABILITY drain: half-sent request completed during the drain: {} {} (Connection: {:?})",
                r.status,
                r.text(),
                r.header("connection")
            );
            assert_eq!((r.status, error_of(&r.body).0.as_str()), (503, "overloaded"), "{}", r.text());
            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
            assert!(r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")), "no Connection: close during the drain");
        }
        Err(e) => panic!("the half-sent request completed during the drain got no answer: {e}"),
    }
    match &idle_answer {
        Ok(r) => println!("RELIABILITY drain: idle keep-alive connection, new request during the drain: {} {}", r.status, r.text()),
        Err(e) => println!("RELIABILITY drain: idle keep-alive connection, new request during the drain: closed ({e})"),
    }
    if let Ok(r) = &idle_answer {
        assert_eq!(r.status, 503, "a new request during the drain: {}", r.text());
    }
    assert!(status.success(), "exit status after SIGTERM: {status}\n{}", d.log_tail());
    drop(d); // the harness checks that nothing is left
}

#[test]
fn drain_timeout_cuts_off_long_invocations_with_503() {
    need_root!("drain_timeout_cuts_off_long_invocations_with_503");
    let _serial = serial();
    let d = Daemon::start("drain-cut", &["--pool-size", "2", "--drain-timeout-ms", "2000", "--timeout-ms", "30000"]);
    d.run_ok("short", "module.exports = () => 1", Value::Null);
    d.run_ok("long", "module.exports = () => 1", Value::Null);
    let spawn = |t: &str, ms: u64| {
        let (socket, t) = (d.socket.clone(), t.to_string());
        thread::spawn(move || {
            let mut c = Client::connect(&socket);
            c.set_timeout(Duration::from_secs(30));
            let body = json!({"code": SLEEPER, "data": {"n": ms, "ms": ms}}).to_string();
            c.try_request("POST", &format!("/v1/tenants/{t}/run"), &[], body.as_bytes())
        })
    };
    let short = spawn("short", 500);
    let long = spawn("long", 20_000);
    wait_until(Duration::from_secs(30), "2 invocations in flight", || d.health()["invocations_in_flight"] == 2);
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    let took = t0.elapsed();
    let short = short.join().unwrap().expect("the short invocation got an answer");
    let long = long.join().unwrap().expect("the long invocation got an answer");
    println!(
        "RELIABILITY drain: drain timeout 2 s: short {} / long {} {}; exit {status} after {took:?}",
        short.status,
        long.status,
        long.text()
    );
    assert_eq!(short.status, 200, "{}", short.text());
    assert_eq!((long.status, error_of(&long.body).0.as_str()), (503, "overloaded"), "{}", long.text());
    assert!(long.header("retry-after").is_some());
    assert!(status.success(), "{status}");
}

// ---------- 5b. SIGKILL during deploys ----------

const DEPLOY_ROUNDS: usize = 6;
const DEPLOY_THREADS: usize = 5;

/// A task source that says which task and version it is, padded so that writing it takes more than one
/// system call: a torn or mixed file can never equal any source that was sent.
fn source_of(task: &str, round: usize, version: usize, rng: &mut Rng) -> String {
    let tag = format!("{task}-r{round}-v{version}");
    let pad = 20_000 + rng.below(200_000) as usize;
    let mut s = format!("module.exports = () => ({{tag: {tag:?}}});\n/* ");
    while s.len() < pad {
        s.push_str(&tag);
        s.push(' ');
    }
    s.push_str("*/\n");
    s
}

#[derive(Default)]
struct Sent {
    /// Every source sent for the task, in the order sent (one thread per task, rounds in order).
    sources: Vec<String>,
    /// Index in `sources` of the last one whose PUT was answered 200/201.
    acked: Option<usize>,
}

#[test]
fn sigkill_during_deploys_never_serves_a_torn_task_and_loses_no_acknowledged_one() {
    need_root!("sigkill_during_deploys_never_serves_a_torn_task_and_loses_no_acknowledged_one");
    let _serial = serial();
    let d = Daemon::start("deploys", &["--pool-size", "2"]);
    let tenant = "dep";
    let sent: Arc<Mutex<BTreeMap<String, Sent>>> = Arc::default();
    let mut rng = Rng::new();
    // Round 0 is not killed: it times a whole burst, so that the kills of the next rounds land inside one.
    let mut burst = Duration::from_secs(1);
    for round in 0..=DEPLOY_ROUNDS {
        // Make sure the tenant's sandbox is up, so that the burst starts at once.
        d.run_ok(tenant, "module.exports = () => 1", Value::Null);
        let killed = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..DEPLOY_THREADS)
            .map(|j| {
                let (socket, sent, killed) = (d.socket.clone(), sent.clone(), killed.clone());
                thread::spawn(move || {
                    let mut rng = Rng::new();
                    // 10 PUTs a thread: six tasks deployed once this round, one task deployed four times.
                    let mut plan: Vec<(String, usize)> = (0..6).map(|k| (format!("one-r{round}-{j}-{k}"), 0)).collect();
                    for v in 0..4 {
                        plan.insert(2 * v + 1, (format!("multi-{j}"), v));
                    }
                    let mut answers = BTreeMap::<String, u64>::new();
                    let mut client = Client::connect(&socket);
                    client.set_timeout(Duration::from_secs(30));
                    for (task, v) in plan {
                        let src = source_of(&task, round, v, &mut rng);
                        let index = {
                            let mut s = sent.lock().unwrap();
                            let e = s.entry(task.clone()).or_default();
                            e.sources.push(src.clone());
                            e.sources.len() - 1
                        };
                        let path = format!("/v1/tenants/{tenant}/tasks/{task}");
                        match client.try_request("PUT", &path, &[("Content-Type", "application/javascript")], src.as_bytes()) {
                            Ok(r) => {
                                *answers.entry(r.status.to_string()).or_default() += 1;
                                if r.status == 200 || r.status == 201 {
                                    assert_eq!(r.json()["sha256"], sha256_hex(src.as_bytes()));
                                    sent.lock().unwrap().get_mut(&task).unwrap().acked = Some(index);
                                } else {
                                    panic!("PUT {task}: {} {}", r.status, r.text());
                                }
                            }
                            Err(_) => {
                                assert!(killed.load(Ordering::Relaxed), "PUT {task} got no answer and the daemon was not killed");
                                *answers.entry("no answer (killed)".into()).or_default() += 1;
                                break;
                            }
                        }
                    }
                    answers
                })
            })
            .collect();
        let t0 = Instant::now();
        if round == 0 {
            let mut answers = BTreeMap::<String, u64>::new();
            for t in threads {
                for (k, v) in t.join().expect("deploy thread") {
                    *answers.entry(k).or_default() += v;
                }
            }
            burst = t0.elapsed();
            println!("RELIABILITY deploys: a burst of {} PUTs takes {burst:?} (answers {answers:?})", DEPLOY_THREADS * 10);
            verify_tasks(&d, tenant, &sent.lock().unwrap());
            continue;
        }
        let delay = burst.mul_f64(0.05 + 0.9 * rng.below(1000) as f64 / 1000.0);
        thread::sleep(delay);
        let old = d.pid();
        killed.store(true, Ordering::Relaxed);
        d.kill9();
        let mut answers = BTreeMap::<String, u64>::new();
        for t in threads {
            for (k, v) in t.join().expect("deploy thread") {
                *answers.entry(k).or_default() += v;
            }
        }
        // The dirty state: temporary files, the stale socket, the killed daemon's cgroups.
        let temps = temp_files(&d.state);
        let stale_groups = group_paths(old);
        let existing: Vec<&PathBuf> = stale_groups.iter().filter(|g| g.exists()).collect();
        assert!(d.socket.exists(), "the stale socket file should still be there after kill -9");
        wait_until(Duration::from_secs(10), "the killed daemon's sandboxes to die with it", || cgroup_members(&stale_groups).is_empty());
        println!(
            "RELIABILITY deploys: round {round}: kill -9 after {delay:?}: PUT answers {answers:?}; {} temp file(s) on disk; stale cgroup groups {}/{}",
            temps.len(),
            existing.len(),
            stale_groups.len()
        );

        d.restart();
        for g in &stale_groups {
            assert!(!g.exists(), "{} survived the restart", g.display());
        }
        assert!(temp_files(&d.state).is_empty(), "temporary files left after the restart: {:?}", temp_files(&d.state));
        verify_tasks(&d, tenant, &sent.lock().unwrap());
    }
    d.assert_healthy();
    println!("RELIABILITY deploys: {DEPLOY_ROUNDS} rounds, {} tasks checked after each restart", sent.lock().unwrap().len());
}

fn temp_files(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![state.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if e.file_name().to_string_lossy().starts_with('.') && p != state.join(".lock") {
                // (STATE/.lock is the daemon's lock on its state directory, not a temporary file.)
                out.push(p);
            }
        }
    }
    out
}

/// After a restart: what is served for every task is exactly one of the sources sent for it, at least as new as
/// the last acknowledged one; a task never acknowledged may be absent; it runs; the listing agrees.
fn verify_tasks(d: &Daemon, tenant: &str, sent: &BTreeMap<String, Sent>) {
    let list = d.get(&format!("/v1/tenants/{tenant}/tasks"));
    assert_eq!(list.status, 200);
    let listed: BTreeMap<String, Value> =
        list.json()["tasks"].as_array().unwrap().iter().map(|t| (t["task"].as_str().unwrap().to_string(), t.clone())).collect();
    for name in listed.keys() {
        assert!(sent.contains_key(name), "listed task {name:?} was never deployed (a temporary file?)");
    }
    let mut client = d.client();
    for (task, s) in sent {
        let r = client.request("GET", &format!("/v1/tenants/{tenant}/tasks/{task}"), &[], b"");
        match r.status {
            404 => {
                assert!(s.acked.is_none(), "{task}: acknowledged deploy lost after kill -9 (404)");
                assert!(!listed.contains_key(task), "{task}: listed but 404");
            }
            200 => {
                let body = r.text();
                let Some(i) = s.sources.iter().position(|x| *x == body) else {
                    panic!(
                        "{task}: served a source that was never sent (torn or mixed): {} bytes, starts {:?}",
                        body.len(),
                        &body[..body.len().min(80)]
                    );
                };
                if let Some(a) = s.acked {
                    assert!(i >= a, "{task}: serves version {i}, older than the acknowledged {a}");
                }
                assert_eq!(r.header("etag").map(|e| e.trim_matches('"').to_string()), Some(sha256_hex(body.as_bytes())), "{task}: ETag");
                let l = listed.get(task).unwrap_or_else(|| panic!("{task}: served but not listed"));
                assert_eq!(l["size"], body.len(), "{task}: listed size");
                let run = client.request("POST", &format!("/v1/tenants/{tenant}/tasks/{task}/run"), &[], b"");
                assert_eq!(run.status, 200, "{task}: run: {}", run.text());
                let tag = run.json()["result"]["tag"].as_str().unwrap().to_string();
                assert!(body.contains(&format!("{tag:?}")), "{task}: ran {tag}, which is not the source served");
            }
            other => panic!("{task}: GET answered {other} {}", r.text()),
        }
    }
}

// ---------- 5c. restart over a dirty state; a second daemon on a live socket ----------

#[test]
fn restart_over_dirty_state_sweeps_stale_cgroups_and_serves() {
    need_root!("restart_over_dirty_state_sweeps_stale_cgroups_and_serves");
    let _serial = serial();
    let d = Daemon::start("dirty", &["--pool-size", "2"]);
    assert_eq!(d.put_task("acme", "hello", "module.exports = () => 'hello'").status, 201);
    for t in ["a", "b", "c"] {
        d.run_ok(t, "module.exports = () => 1", Value::Null);
    }
    let old = d.pid();
    let groups = group_paths(old);
    let sandboxes = sandbox_cgroups(&groups);
    let procs = descendants(old).len();
    d.kill9();
    assert!(d.socket.exists(), "kill -9 should leave the socket file");
    let left: Vec<&PathBuf> = groups.iter().filter(|g| g.exists()).collect();
    wait_until(Duration::from_secs(10), "the killed daemon's sandboxes to die with it", || cgroup_members(&groups).is_empty());
    println!(
        "RELIABILITY dirty: kill -9 with {sandboxes} sandbox cgroups and {procs} sandbox processes: {} stale groups left, {} sandbox cgroups in them, every sandbox process died with the daemon",
        left.len(),
        sandbox_cgroups(&groups)
    );
    d.restart();
    for g in &groups {
        assert!(!g.exists(), "the stale group {} survived the restart", g.display());
    }
    d.assert_healthy();
    let r = d.run_task("acme", "hello", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "hello");
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_and_leaves_the_first_alone() {
    need_root!("a_second_daemon_on_a_live_socket_refuses_and_leaves_the_first_alone");
    let _serial = serial();
    let d = Daemon::start("twice", &["--pool-size", "2"]);
    let other_state = d.dir.join("other-state");
    let mut second = Command::new(env!("CARGO_BIN_EXE_taskcell"))
        .args(["serve", "--pool-size", "1", "--socket"])
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(&other_state)
        .arg("--secrets-key")
        .arg(d.dir.join("other-secrets.key"))
        .arg("--rootfs")
        .arg(common::rootfs())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = second.id();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second daemon on a live socket did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut err).unwrap();
    println!("RELIABILITY twice: second daemon on a live socket: {status}: {}", err.trim());
    assert!(!status.success(), "the second daemon exited 0");
    assert!(err.contains("in use"), "no clear message: {err}");
    for g in group_paths(pid) {
        assert!(!g.exists(), "the refused daemon left {}", g.display());
    }
    assert!(d.socket.exists());
    d.assert_healthy();
}

// ---------- 6. jailer failure paths ----------

#[test]
fn missing_rootfs_or_node_stops_the_daemon_at_start_with_a_clear_message() {
    need_root!("missing_rootfs_or_node_stops_the_daemon_at_start_with_a_clear_message");
    let _serial = serial();
    let tmp = TempDir::new("norootfs");
    let dir = tmp.0.clone();
    fs::create_dir_all(dir.join("empty-rootfs/tmp")).unwrap();
    let missing = dir.join("nonexistent");
    let empty = dir.join("empty-rootfs");
    for (what, rootfs, expect) in [("missing", &missing, "missing"), ("without node", &empty, "usr/bin/node")] {
        let mut raw = Raw::start_in(dir.join(what.replace(' ', "-")), &["--rootfs", rootfs.to_str().unwrap(), "--pool-size", "1"]);
        let status = raw.wait_exit(Duration::from_secs(30));
        let log = raw.log_text();
        println!("RELIABILITY rootfs {what}: {status}: {}", log.trim());
        assert!(!status.success(), "rootfs {what}: exited 0");
        assert!(log.contains(rootfs.to_str().unwrap()) && log.contains(expect), "rootfs {what}: unclear message: {log}");
        assert!(!raw.socket.exists(), "rootfs {what}: a socket was left");
    }
}

/// A copy of the rootfs (hard links: ~100 MB otherwise) whose usr/bin/node is replaced by `node`.
fn broken_rootfs(dir: &Path, node: impl FnOnce(&Path)) -> PathBuf {
    let copy = dir.join("rootfs");
    let st = Command::new("cp").arg("-al").arg(common::rootfs()).arg(&copy).status().unwrap();
    assert!(st.success(), "cp -al of the rootfs failed");
    let target = copy.join("usr/bin/node");
    // Unlink first: writing through the hard link would change the real rootfs.
    fs::remove_file(&target).unwrap();
    node(&target);
    assert!(fs::symlink_metadata(common::rootfs().join("usr/bin/node")).unwrap().len() > 1 << 20, "the real rootfs's node was touched");
    copy
}

fn broken_node_case(name: &str, node: impl FnOnce(&Path), expect_in_message: &[&str]) {
    let tmp = TempDir::new(name);
    let dir = tmp.0.clone();
    let rootfs = broken_rootfs(&dir, node);
    let mut d =
        Raw::start_in(dir.join("daemon"), &["--rootfs", rootfs.to_str().unwrap(), "--pool-size", "2", "--queue-timeout-ms", "3000"]);
    d.wait_serving(Duration::from_secs(30));
    let pid = d.pid;
    wait_until(Duration::from_secs(30), "health to report the spawn error", || !d.health()["last_spawn_error"].is_null());
    let h = d.health();
    let why = h["last_spawn_error"].as_str().unwrap().to_string();
    println!("RELIABILITY {name}: health {h}");
    for e in expect_in_message {
        assert!(why.to_lowercase().contains(&e.to_lowercase()), "last_spawn_error does not say {e:?}: {why}");
    }

    // Requests: 503 overloaded with Retry-After, naming the problem; a few, none hanging.
    let mut statuses = Vec::new();
    for i in 0..3 {
        let mut c = d.client();
        c.set_timeout(Duration::from_secs(30));
        let body = json!({"code": "module.exports = () => 1"}).to_string();
        let t0 = Instant::now();
        let r = c.request("POST", &format!("/v1/tenants/t{i}/run"), &[], body.as_bytes());
        let (kind, message) = error_of(&r.body);
        println!("RELIABILITY {name}: request {i}: {} {kind} after {:?}: {message}", r.status, t0.elapsed());
        statuses.push((r.status, kind.clone(), message.clone(), r.header("retry-after").is_some()));
    }
    let mut problems = Vec::new();
    for (status, kind, message, retry) in &statuses {
        if (*status, kind.as_str(), *retry) != (503, "overloaded", true) {
            problems.push(format!("expected 503 overloaded with Retry-After, got {status} {kind} (Retry-After: {retry})"));
        } else if !expect_in_message.iter().all(|e| message.to_lowercase().contains(&e.to_lowercase())) {
            problems.push(format!("the 503's message does not name the problem ({expect_in_message:?}): {message:?}"));
        }
    }

    // No busy loop: CPU time and spawn attempts over 5 s while idle.
    let lines = |d: &Raw| d.log_text().lines().filter(|l| l.contains("could not make a sandbox")).count();
    let (cpu0, tries0) = (cpu_seconds(pid), lines(&d));
    thread::sleep(Duration::from_secs(5));
    let (cpu1, tries1) = (cpu_seconds(pid), lines(&d));
    let groups = group_paths(pid);
    println!(
        "RELIABILITY {name}: idle 5 s: {:.2} s of CPU, {} spawn attempts; {} sandbox cgroups, {} descendant processes",
        cpu1 - cpu0,
        tries1 - tries0,
        sandbox_cgroups(&groups),
        descendants(pid).len()
    );
    assert!(cpu1 - cpu0 < 2.0, "the daemon used {:.2} s of CPU in 5 s: a busy loop", cpu1 - cpu0);
    assert!(tries1 - tries0 <= 20, "{} spawn attempts in 5 s: retrying without backing off", tries1 - tries0);
    assert!(descendants(pid).len() <= 8, "failed sandboxes pile up: {:?}", descendants(pid));
    assert!(sandbox_cgroups(&groups) <= 3 * 8, "failed sandboxes' cgroups pile up: {}", sandbox_cgroups(&groups));
    assert_eq!(d.health()["status"], "ok");

    // Node repaired (the real one linked back in): the daemon recovers by itself, without a restart.
    let target = rootfs.join("usr/bin/node");
    fs::remove_file(&target).unwrap();
    fs::hard_link(common::rootfs().join("usr/bin/node"), &target)
        .or_else(|_| fs::copy(common::rootfs().join("usr/bin/node"), &target).map(|_| ()))
        .unwrap();
    let t0 = Instant::now();
    wait_until(Duration::from_secs(60), "the pool to fill once node works again", || {
        let h = d.health();
        h["pool"]["idle"] == 2 && h["last_spawn_error"].is_null()
    });
    let r = d.client().request("POST", "/v1/tenants/after/run", &[], json!({"code": "module.exports = () => 'ok'"}).to_string().as_bytes());
    println!("RELIABILITY {name}: node repaired: pool full again after {:?}; a request then: {}", t0.elapsed(), r.status);
    assert_eq!(r.status, 200, "after the repair: {}", r.text());
    drop(d);
    drop(tmp);
    assert!(problems.is_empty(), "{name}: {problems:#?}");
}

#[test]
fn node_not_executable_is_a_clear_503_without_a_busy_loop() {
    need_root!("node_not_executable_is_a_clear_503_without_a_busy_loop");
    let _serial = serial();
    broken_node_case(
        "node-not-executable",
        |p| {
            fs::write(p, "this is not a program\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
        },
        &["execve", "permission denied"],
    );
}

#[test]
fn node_exiting_at_once_is_a_clear_503_without_a_busy_loop() {
    need_root!("node_exiting_at_once_is_a_clear_503_without_a_busy_loop");
    let _serial = serial();
    let false_bin = ["/usr/bin/false", "/bin/false"].into_iter().find(|p| Path::new(p).exists()).expect("false(1)");
    broken_node_case(
        "node-exits-at-once",
        |p| {
            fs::copy(false_bin, p).unwrap();
        },
        &["exited during start-up", "status 1"],
    );
}

/// Remount every cgroup filesystem read-only (or read-write again) in the mount namespace of `pid` alone: from
/// then on that process can create no cgroup (mkdir fails with EROFS), as under a host that refuses it.
fn set_cgroups_read_only(pid: u32, read_only: bool) {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("the daemon's mountinfo");
    let mut points = Vec::new();
    for line in mountinfo.lines() {
        // "id parent major:minor root mount-point options ... - fstype source super-options"
        let (left, right) = line.split_once(" - ").expect("mountinfo separator");
        let fields: Vec<&str> = left.split(' ').collect();
        if !matches!(right.split(' ').next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        let mut flags = libc::MS_REMOUNT | libc::MS_BIND;
        for (name, flag) in
            [("nosuid", libc::MS_NOSUID), ("nodev", libc::MS_NODEV), ("noexec", libc::MS_NOEXEC), ("relatime", libc::MS_RELATIME)]
        {
            if fields[5].split(',').any(|o| o == name) {
                flags |= flag;
            }
        }
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        points.push((CString::new(fields[4]).unwrap(), flags));
    }
    assert!(!points.is_empty(), "no cgroup mount in the daemon's namespace");
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt")).expect("the daemon's mount namespace");
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: between fork and exec the closure makes only system calls, on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (point, flags) in &points {
                // EBUSY while a file of that mount is open for writing (the daemon writing a cgroup file at
                // that moment): try again a little later.
                let mut tries = 0;
                while libc::mount(std::ptr::null(), point.as_ptr(), std::ptr::null(), *flags, std::ptr::null()) != 0 {
                    let err = std::io::Error::last_os_error();
                    tries += 1;
                    if err.raw_os_error() != Some(libc::EBUSY) || tries == 500 {
                        return Err(err);
                    }
                    libc::usleep(10_000);
                }
            }
            Ok(())
        });
    }
    let status = cmd.status().expect("remount the daemon's cgroup filesystems");
    assert!(status.success(), "remount the daemon's cgroup filesystems: {status}");
}

#[test]
fn cgroup_creation_refused_is_a_clear_503_without_a_busy_loop() {
    need_root!("cgroup_creation_refused_is_a_clear_503_without_a_busy_loop");
    let _serial = serial();
    let name = "cgroup-refused";
    let tmp = TempDir::new(name);
    let mut d = Raw::start_in_own_mount_ns(tmp.0.join("daemon"), &["--pool-size", "2", "--queue-timeout-ms", "3000"]);
    d.wait_serving(Duration::from_secs(30));
    let pid = d.pid;
    wait_until(Duration::from_secs(60), "the pool to fill", || d.health()["pool"]["idle"] == 2);
    let run = |tenant: &str| {
        let body = json!({"code": "module.exports = (d, ctx) => ctx.tenant"}).to_string();
        d.client().request("POST", &format!("/v1/tenants/{tenant}/run"), &[], body.as_bytes())
    };
    // A tenant served before the refusal keeps its sandbox, and so its service, throughout.
    assert_eq!(run("before").status, 200);

    // From now on the daemon can create no cgroup: new tenants get what the pool still holds, then 503.
    set_cgroups_read_only(pid, true);
    let mut answers = Vec::new();
    for i in 0..5 {
        let t0 = Instant::now();
        let r = run(&format!("new{i}"));
        let (kind, message) = error_of(&r.body);
        println!("RELIABILITY {name}: new tenant {i}: {} {kind} after {:?}: {message}", r.status, t0.elapsed());
        answers.push((r.status, kind, message, r.header("retry-after").is_some()));
    }
    let refused: Vec<_> = answers.iter().filter(|a| a.0 != 200).collect();
    assert!(!refused.is_empty(), "every new tenant was served although no cgroup can be made: {answers:?}");
    for (status, kind, message, retry) in &refused {
        assert_eq!((*status, kind.as_str(), *retry), (503, "overloaded", true), "a refused new tenant: {message}");
        assert!(message.contains("cgroup"), "the 503 does not name the cgroup: {message}");
    }
    let why = d.health()["last_spawn_error"].as_str().unwrap_or_default().to_string();
    println!("RELIABILITY {name}: health last_spawn_error: {why}");
    assert!(why.contains("cgroup") && why.to_lowercase().contains("read-only"), "health does not say why: {why:?}");
    assert_eq!(run("before").status, 200, "the tenant served before the refusal");

    // No busy loop: CPU time and spawn attempts over 5 s while idle.
    let lines = |d: &Raw| d.log_text().lines().filter(|l| l.contains("could not make a sandbox")).count();
    let (cpu0, tries0) = (cpu_seconds(pid), lines(&d));
    thread::sleep(Duration::from_secs(5));
    let (cpu1, tries1) = (cpu_seconds(pid), lines(&d));
    println!("RELIABILITY {name}: idle 5 s: {:.2} s of CPU, {} spawn attempts", cpu1 - cpu0, tries1 - tries0);
    assert!(cpu1 - cpu0 < 2.0, "the daemon used {:.2} s of CPU in 5 s: a busy loop", cpu1 - cpu0);
    assert!(tries1 - tries0 <= 20, "{} spawn attempts in 5 s: retrying without backing off", tries1 - tries0);
    assert_eq!(d.health()["status"], "ok");

    // Allowed again: the daemon recovers by itself.
    set_cgroups_read_only(pid, false);
    let t0 = Instant::now();
    wait_until(Duration::from_secs(60), "the pool to fill once cgroups can be made again", || {
        let h = d.health();
        h["pool"]["idle"] == 2 && h["last_spawn_error"].is_null()
    });
    let r = run("after");
    println!("RELIABILITY {name}: cgroups allowed again: pool full after {:?}; a new tenant then: {}", t0.elapsed(), r.status);
    assert_eq!(r.status, 200, "after the refusal ended: {}", r.text());
    drop(d);
}

#[test]
fn pool_exhausted_is_503_overloaded_with_retry_after() {
    need_root!("pool_exhausted_is_503_overloaded_with_retry_after");
    let _serial = serial();
    let d = Daemon::start("exhaust", &["--max-sandboxes", "2", "--pool-size", "1", "--queue-timeout-ms", "1000", "--timeout-ms", "30000"]);
    let hold = |t: &str| {
        let (socket, t) = (d.socket.clone(), t.to_string());
        thread::spawn(move || {
            let mut c = Client::connect(&socket);
            c.set_timeout(Duration::from_secs(30));
            let body = json!({"code": SLEEPER, "data": {"n": 1, "ms": 4000}}).to_string();
            c.request("POST", &format!("/v1/tenants/{t}/run"), &[], body.as_bytes())
        })
    };
    let a = hold("hold-a");
    wait_until(Duration::from_secs(30), "a's invocation in flight", || d.health()["invocations_in_flight"] == 1);
    let b = hold("hold-b");
    wait_until(Duration::from_secs(30), "b's invocation in flight", || d.health()["invocations_in_flight"] == 2);
    let mut c = d.client();
    c.set_timeout(Duration::from_secs(30));
    let t0 = Instant::now();
    let r = c.request("POST", "/v1/tenants/hold-c/run", &[], json!({"code": "module.exports = () => 3"}).to_string().as_bytes());
    let waited = t0.elapsed();
    println!(
        "RELIABILITY exhausted: third tenant: {} after {waited:?}: {} (Retry-After: {:?})",
        r.status,
        r.text(),
        r.header("retry-after")
    );
    r.assert_error(503, "overloaded");
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!((a.status, b.status), (200, 200), "{} / {}", a.text(), b.text());
    // Once they are idle, the third tenant gets a sandbox (the least recently used idle one is evicted).
    let env = d.run_ok("hold-c", "module.exports = () => 3", Value::Null);
    assert_eq!(env["result"], 3);
    d.assert_healthy();
}
