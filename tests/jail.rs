//! The sandbox's isolation, proven from the inside and checked from the outside, through the real
//! `taskcell jail` binary.
//!
//! The probe (`tests/probe/probe.c`, built static here) tries what an attacker would try from inside a sandbox
//! and prints one line a check. The other tests run Node in the sandbox: that it works, that its limits bite,
//! and that nothing of a sandbox (process, mount, cgroup) outlives it.
//!
//! These tests need root. Without it they print a loud `SKIPPED: needs root`, and fail if `CI` is set: CI runs
//! as root, so there they run every time. They need the rootfs that `make` builds at `target/rootfs`.
//!
//! Tests run in parallel. Each jail runs under a shared lock on a file in the temporary directory; the test that
//! compares the cgroup and mount tables before and after a jail takes it exclusively, so that no other jail of
//! these tests comes and goes meanwhile.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use testkit::cgroup;
use testkit::procfs::{self, Status};

/// Longest a jail may take before the test calls it hung; a guard against hanging forever, not an assertion
/// about speed.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Exit status of a command killed by SIGKILL (the OOM killer's signal) and by SIGSYS (seccomp's).
const KILLED_SIGKILL: i32 = 128 + 9;
const KILLED_SIGSYS: i32 = 128 + 31;

// ---------- preconditions ----------

/// True if the test can run. Without root it says so loudly, and fails under CI, where skipping would hide a
/// regression.
fn have_root(test: &str) -> bool {
    let status = Status::from_file("/proc/self/status").expect("read /proc/self/status");
    let euid = status.ids("Uid").and_then(|ids| ids.get(1).copied()).expect("Uid line in /proc/self/status");
    if euid == 0 {
        return true;
    }
    // Written to stderr directly, not through eprintln!, which the test harness would capture and hide.
    let _ = writeln!(std::io::stderr(), "\n**********\nSKIPPED: needs root: {test}\n**********\n");
    assert!(std::env::var_os("CI").is_none(), "{test} needs root, and CI is set: jail tests must not be skipped in CI");
    false
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rootfs() -> PathBuf {
    let rootfs = repo().join("target/rootfs");
    assert!(rootfs.join("usr/bin/node").exists(), "{} holds no usr/bin/node: run `make` first, it builds the rootfs", rootfs.display());
    rootfs
}

fn host_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").expect("read the hostname").trim().to_string()
}

// ---------- scratch directories ----------

/// A directory of this test's own under the temporary directory, removed when dropped. Mode 0755: the sandbox's
/// unprivileged host uid must reach what is bound from it.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("taskcell-jail-{test}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create a scratch directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod the scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write a scratch file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod a scratch file");
        path
    }

    /// Builds the probe into this directory, as `<dir>/probe`.
    fn build_probe(&self) {
        let source = repo().join("tests/probe/probe.c");
        let out = self.0.join("probe");
        let result = Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&source)
            .output()
            .expect("run cc (gcc and the static glibc are needed to build the probe)");
        assert!(result.status.success(), "building the probe failed:\n{}", String::from_utf8_lossy(&result.stderr));
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).expect("chmod the probe");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A marker unique to this run, to find a sandbox's processes by their argv.
fn marker(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("taskcell-test-marker-{test}-{}-{n}", std::process::id())
}

// ---------- running jails ----------

/// Serialises the test that compares the host's tables against every other jail of these tests (they all run
/// in this one process): a lock in memory, so that nothing is left in /tmp.
enum JailLock {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

fn jail_lock(exclusive: bool) -> JailLock {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    // A test that panicked while holding it poisons it; the lock still serialises, so take it anyway.
    if exclusive {
        JailLock::Exclusive(LOCK.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        JailLock::Shared(LOCK.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// `taskcell jail --rootfs <rootfs> ARGS...`, with variables in the caller's environment that must not reach
/// the sandbox.
fn jail(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskcell"));
    cmd.arg("jail").arg("--rootfs").arg(rootfs()).args(args);
    cmd.env("TASKCELL_PROBE_MARKER", "1");
    cmd.env("NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt");
    cmd.stdin(Stdio::null());
    cmd
}

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn describe(&self) -> String {
        format!("status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Kills a child left running when a test fails half-way.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn wait_guarded(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the jail") {
            return status;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the jail did not exit within {HANG_GUARD:?}, killed it");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn run(mut cmd: Command, what: &str) -> Outcome {
    let _lock = jail_lock(false);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Running(Some(cmd.spawn().expect("spawn taskcell jail")));
    let c = child.0.as_mut().expect("child");
    let out = drain(c.stdout.take().expect("stdout"));
    let err = drain(c.stderr.take().expect("stderr"));
    let status = wait_guarded(c, what);
    child.0 = None;
    Outcome { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

/// Runs `node SCRIPT ARGS...` in a jail, the script bound read-only at `/t/script.js`.
fn run_node(test: &str, jail_opts: &[&str], script: &str, args: &[&str]) -> Outcome {
    let dir = Scratch::new(test);
    dir.write("script.js", script);
    let bind = format!("{}:/t", dir.path().display());
    let mut argv: Vec<&str> = jail_opts.to_vec();
    argv.extend(["--bind-ro", &bind, "--", "/usr/bin/node", "/t/script.js"]);
    argv.extend(args);
    run(jail(&argv), test)
}

// ---------- looking at the host ----------

/// Processes (pid, argv) whose argv holds `marker`, this test process aside.
fn processes_with(marker: &str) -> Vec<(u32, Vec<String>)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let pids = procfs::pids();
    assert!(!pids.is_empty(), "list /proc");
    for pid in pids {
        if pid == me {
            continue;
        }
        let Some(argv) = procfs::argv(pid) else {
            continue;
        };
        if argv.iter().any(|a| a == marker) {
            found.push((pid, argv));
        }
    }
    found
}

fn host_uid_gid(pid: u32) -> (u32, u32) {
    let status = Status::read(pid).expect("read a sandboxed process's status");
    let field = |key: &str| -> u32 {
        status.ids(key).and_then(|ids| ids.first().copied()).unwrap_or_else(|| panic!("no {key}: in /proc/{pid}/status"))
    };
    (field("Uid"), field("Gid"))
}

/// The cgroup directories of a process for the controllers that limit a sandbox: memory, pids and cpu on cgroup
/// v1 (also the hybrid layout), the one unified directory on pure cgroup v2.
fn cgroup_dirs(pid: u32) -> Vec<(String, PathBuf)> {
    let dirs = cgroup::limit_dirs(pid);
    assert!(!dirs.is_empty(), "no memory, pids and cpu cgroups of {pid} on v1, nor one on v2: {:?}", cgroup::read(pid));
    dirs
}

/// Every cgroup directory at or below `dir`.
fn cgroup_tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut all = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    todo.push(e.path());
                }
            }
        }
        all.insert(d);
    }
    all
}

fn own_cgroup_trees() -> Vec<BTreeSet<PathBuf>> {
    cgroup_dirs(std::process::id()).iter().map(|(_, d)| cgroup_tree(d)).collect()
}

fn mount_table() -> BTreeSet<String> {
    fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo").lines().map(str::to_string).collect()
}

/// A jail running `probe --hold`, stopped at "holding" until released.
struct Held {
    child: Running,
    stdout_rest: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
    lines: Vec<String>,
    release: PathBuf,
    marker: String,
}

impl Held {
    fn start(dir: &Scratch, marker: &str) -> Held {
        let release = dir.path().join(format!("release-{marker}"));
        let bind = format!("{}:/probe", dir.path().display());
        let inside_release = format!("/probe/release-{marker}");
        let mut cmd = jail(&["--bind-ro", &bind, "--", "/probe/probe", "--hold", marker, &inside_release]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = Running(Some(cmd.spawn().expect("spawn taskcell jail")));
        let c = child.0.as_mut().expect("child");
        let stderr = drain(c.stderr.take().expect("stderr"));
        let stdout = c.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let rest = thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return String::new(),
                    Ok(_) => {
                        let l = line.trim_end().to_string();
                        let done = l == "holding";
                        let _ = tx.send(l);
                        if done {
                            break;
                        }
                    }
                }
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            rest
        });
        let mut lines = Vec::new();
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l == "holding" => break,
                Ok(l) => lines.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_guarded(c, "held jail");
                    child.0 = None;
                    panic!(
                        "the held probe ended before holding: status {status:?}\nstdout: {lines:?}\nstderr: {}",
                        stderr.join().unwrap_or_default()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() > HANG_GUARD => {
                    panic!("the held probe did not get to holding within {HANG_GUARD:?}: {lines:?}")
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        Held { child, stdout_rest: Some(rest), stderr: Some(stderr), lines, release, marker: marker.to_string() }
    }

    /// The host id that the probe read from its own uid_map or gid_map ("uid_map 1000 HOST 1").
    fn mapped(&self, which: &str) -> u32 {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(which))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {which} line from the held probe: {:?}", self.lines))
    }

    /// The sandbox's own processes: the probe and the grandchild it left behind.
    fn inside(&self) -> Vec<u32> {
        processes_with(&self.marker)
            .into_iter()
            .filter(|(_, argv)| argv.first().map(String::as_str) == Some("/probe/probe"))
            .map(|(pid, _)| pid)
            .collect()
    }

    fn release(mut self) -> Outcome {
        fs::write(&self.release, b"go").expect("write the release file");
        let c = self.child.0.as_mut().expect("child");
        let status = wait_guarded(c, "held jail");
        self.child.0 = None;
        Outcome {
            status,
            stdout: self.stdout_rest.take().expect("stdout").join().unwrap_or_default(),
            stderr: self.stderr.take().expect("stderr").join().unwrap_or_default(),
        }
    }
}

fn assert_no_process_left(marker: &str, what: &str) {
    let left = processes_with(marker);
    assert!(left.is_empty(), "{what}: processes outlived the sandbox: {left:?}");
}

// ---------- the probe ----------

/// Runs `cmd` (a `taskcell jail`) the way a careless host would: with supplementary groups (4242, 4243) that
/// the jailer must not pass on, and with a world-writable tmpfs mounted at `<dir>/submount`, inside the
/// directory bound with --bind-ro, which must be read-only inside like the rest. The tmpfs lives in a mount
/// namespace of the jail's own (private propagation): the host's mount table never sees it, and it goes away
/// with the jail's process, whatever becomes of the test.
fn with_submount_and_groups(cmd: &mut Command, dir: &Scratch) {
    let sub = dir.path().join("submount");
    fs::create_dir(&sub).expect("create the submount's mount point");
    let sub = std::ffi::CString::new(sub.as_os_str().as_encoded_bytes()).expect("no NUL in the scratch path");
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: runs in the forked child before exec, calling only system calls (through libc's thin wrappers) on
    // a string prepared before the fork and static literals; the child is single-threaded there.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                sub.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"size=1m,mode=1777".as_ptr().cast(),
            ))?;
            let groups: [libc::gid_t; 2] = [4242, 4243];
            check(libc::syscall(libc::SYS_setgroups, 2, groups.as_ptr()) as libc::c_int)
        });
    }
}

#[test]
fn probe_finds_no_way_out() {
    if !have_root("probe_finds_no_way_out") {
        return;
    }
    let dir = Scratch::new("probe");
    dir.build_probe();
    // An abstract socket on the host: a sandbox in its own network namespace must not reach it.
    let abstract_name = marker("abstract");
    let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("abstract address");
    let _listener = UnixListener::bind_addr(&addr).expect("bind a host abstract socket");
    let bind = format!("{}:/probe", dir.path().display());
    let host = host_hostname();
    let mut cmd = jail(&["--bind-ro", &bind, "--", "/probe/probe", &host, &abstract_name]);
    with_submount_and_groups(&mut cmd, &dir);
    let out = run(cmd, "probe");
    println!("{}", out.describe());
    for check in ["bind_ro_submount_readonly", "no_supplementary_groups"] {
        assert!(out.stdout.lines().any(|l| l == format!("ok {check}")), "the probe did not pass {check}:\n{}", out.describe());
    }
    let failed: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.code() == Some(0) && failed.is_empty() && out.stdout.contains("PASSED"),
        "the probe found holes:\n{}\n\nfull output:\n{}",
        failed.join("\n"),
        out.describe()
    );
    assert_no_process_left(&abstract_name, "probe");
}

#[test]
fn forbidden_syscall_is_killed_and_reported_as_seccomp() {
    if !have_root("forbidden_syscall_is_killed_and_reported_as_seccomp") {
        return;
    }
    let dir = Scratch::new("forbidden");
    dir.build_probe();
    let bind = format!("{}:/probe", dir.path().display());
    // syslog(2): no part of Node calls it, so it is not on the allowlist.
    let out = run(jail(&["--bind-ro", &bind, "--", "/probe/probe", "--forbidden"]), "forbidden");
    assert!(out.stdout.contains("calling syscall"), "the probe did not start:\n{}", out.describe());
    assert_eq!(out.code(), Some(KILLED_SIGSYS), "expected a kill by SIGSYS:\n{}", out.describe());
    assert!(out.stderr.to_lowercase().contains("seccomp"), "stderr does not say seccomp killed it:\n{}", out.describe());
}

// ---------- status and output ----------

#[test]
fn exit_status_passes_through() {
    if !have_root("exit_status_passes_through") {
        return;
    }
    let out = run(jail(&["--", "/usr/bin/node", "-e", "process.exit(7)"]), "exit 7");
    assert_eq!(out.code(), Some(7), "{}", out.describe());
}

#[test]
fn killed_command_exits_128_plus_signal() {
    if !have_root("killed_command_exits_128_plus_signal") {
        return;
    }
    let out = run(jail(&["--", "/usr/bin/node", "-e", "process.kill(process.pid, 'SIGKILL')"]), "sigkill");
    // Exit status 0 here means the signal was ignored: the kernel shields the init (pid 1) of a pid namespace
    // from signals it has no handler for, even its own, so a command run as pid 1 cannot die by its own hand.
    assert_eq!(
        out.code(),
        Some(KILLED_SIGKILL),
        "a command that kills itself with SIGKILL must exit 137 (status 0: was it pid 1, which ignores it?):\n{}",
        out.describe()
    );
}

#[test]
fn stdout_and_stderr_pass_through() {
    if !have_root("stdout_and_stderr_pass_through") {
        return;
    }
    let js = "process.stdout.write('to stdout\\n'); process.stderr.write('to stderr\\n')";
    let out = run(jail(&["--", "/usr/bin/node", "-e", js]), "stdio");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("to stdout"), "{}", out.describe());
    assert!(!out.stdout.contains("to stderr"), "{}", out.describe());
    assert!(out.stderr.contains("to stderr"), "{}", out.describe());
}

// ---------- Node inside ----------

const NODE_WORKS: &str = r#"'use strict';
const assert = require('assert');
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');
const zlib = require('zlib');
const cp = require('child_process');
const { Worker } = require('worker_threads');
const { promisify } = require('util');

let failed = 0;
async function step(name, fn) {
  try {
    await fn();
    console.log('ok ' + name);
  } catch (e) {
    failed++;
    console.log('FAIL ' + name + ': ' + ((e && e.stack) || e));
  }
}

function httpRoundTrip(host) {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => res.end('hello ' + req.url));
    server.on('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address();
      http.get({ host, port, path: '/x', agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => {
          server.close();
          body === 'hello /x' ? resolve() : reject(new Error('body: ' + body));
        });
      }).on('error', reject);
    });
  });
}

(async () => {
  await step('http_127.0.0.1', () => httpRoundTrip('127.0.0.1'));
  await step('http_localhost', () => httpRoundTrip('localhost'));
  await step('fs_tmp', async () => {
    fs.writeFileSync('/tmp/a.txt', 'data');
    assert.strictEqual(fs.readFileSync('/tmp/a.txt', 'utf8'), 'data');
    await fs.promises.mkdir('/tmp/d/e', { recursive: true });
    await fs.promises.writeFile('/tmp/d/e/b.txt', 'more');
    assert.strictEqual(await fs.promises.readFile('/tmp/d/e/b.txt', 'utf8'), 'more');
    assert.deepStrictEqual(fs.readdirSync('/tmp/d/e'), ['b.txt']);
    fs.renameSync('/tmp/a.txt', '/tmp/c.txt');
    fs.statSync('/tmp/c.txt');
    fs.rmSync('/tmp/d', { recursive: true });
    fs.unlinkSync('/tmp/c.txt');
  });
  await step('crypto', async () => {
    const h = crypto.createHash('sha256').update('abc').digest('hex');
    assert.strictEqual(h, 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    assert.strictEqual(crypto.randomBytes(32).length, 32);
    const { publicKey, privateKey } = await promisify(crypto.generateKeyPair)('ed25519');
    const sig = crypto.sign(null, Buffer.from('msg'), privateKey);
    assert.ok(crypto.verify(null, Buffer.from('msg'), publicKey, sig));
    const key = await promisify(crypto.pbkdf2)('pw', 'salt', 1000, 32, 'sha256');
    assert.strictEqual(key.length, 32);
    const cipher = crypto.createCipheriv('aes-256-gcm', key, Buffer.alloc(12));
    assert.ok(Buffer.concat([cipher.update('x'), cipher.final()]).length === 1);
  });
  await step('zlib', async () => {
    const data = Buffer.from('taskcell '.repeat(1000));
    assert.ok(zlib.gunzipSync(zlib.gzipSync(data)).equals(data));
    const deflated = await promisify(zlib.deflate)(data);
    assert.ok((await promisify(zlib.inflate)(deflated)).equals(data));
    assert.ok(zlib.brotliDecompressSync(zlib.brotliCompressSync(data)).equals(data));
  });
  await step('timers', () => new Promise((resolve) => setTimeout(resolve, 5)));
  await step('child_process', async () => {
    const out = cp.execFileSync(process.execPath, ['-e', 'process.stdout.write(String(6 * 7))']).toString();
    assert.strictEqual(out, '42');
    const code = await new Promise((resolve, reject) => {
      const c = cp.spawn(process.execPath, ['-e', 'process.exit(3)'], { stdio: 'ignore' });
      c.on('error', reject);
      c.on('exit', resolve);
    });
    assert.strictEqual(code, 3);
  });
  await step('worker_threads', () => new Promise((resolve, reject) => {
    const w = new Worker("require('worker_threads').parentPort.postMessage(6 * 7)", { eval: true });
    w.on('message', (m) => (m === 42 ? resolve() : reject(new Error('message ' + m))));
    w.on('error', reject);
  }));
  console.log(failed ? failed + ' failed' : 'all ok');
  process.exitCode = failed ? 1 : 0;
})();
"#;

#[test]
fn node_works_inside() {
    if !have_root("node_works_inside") {
        return;
    }
    let out = run_node("node-works", &[], NODE_WORKS, &[]);
    assert!(out.code() == Some(0) && out.stdout.contains("all ok"), "Node does not work in the jail:\n{}", out.describe());
}

/// Node's test load (`tests/node/load.js`: HTTP on 127.0.0.1 and ::1, a Unix socket, dgram, dns.lookup,
/// os.networkInterfaces, fs with watch and copyFile, crypto with scrypt and key generation, zlib and brotli,
/// child processes, a worker, process.title, timers) passes under the seccomp policy as narrowed by argument
/// (socket protocols, ioctl requests, prctl options, TCP_ULP, RLIMIT_CORE): what it refuses, Node does not need.
#[test]
fn node_test_load_passes_under_the_policy() {
    if !have_root("node_test_load_passes_under_the_policy") {
        return;
    }
    let script = fs::read_to_string(repo().join("tests/node/load.js")).expect("read tests/node/load.js");
    let out = run_node("node-load", &[], &script, &[]);
    assert!(out.code() == Some(0) && out.stdout.lines().any(|l| l == "OK"), "Node's test load failed in the jail:\n{}", out.describe());
}

/// Node's fs.watch works within the user namespace's inotify limits, and a watch beyond them fails with an
/// error (ENOSPC) instead of taking from the host's root, whom the kernel charges too.
#[test]
fn node_fs_watch_works_within_the_inotify_limits() {
    if !have_root("node_fs_watch_works_within_the_inotify_limits") {
        return;
    }
    let js = r#"
const fs = require('fs');
const w = fs.watch('/tmp', (event, name) => {
  if (name !== 'x') return;
  console.log('event ' + event);
  w.close();
  fs.mkdirSync('/tmp/many');
  const watchers = [];
  try {
    for (let i = 0; i < 5000; i++) {
      fs.writeFileSync('/tmp/many/' + i, '');
      watchers.push(fs.watch('/tmp/many/' + i));
    }
    console.log('no limit after 5000 watches');
  } catch (e) {
    console.log('watch ' + watchers.length + ' failed: ' + e.code);
  }
  for (const v of watchers) v.close();
});
setTimeout(() => fs.writeFileSync('/tmp/x', '1'), 10);
"#;
    let out = run_node("fs-watch", &[], js, &[]);
    assert!(out.code() == Some(0) && out.stdout.contains("event "), "fs.watch does not work:\n{}", out.describe());
    assert!(out.stdout.contains("failed: ENOSPC"), "no inotify watch limit:\n{}", out.describe());
}

#[test]
fn tmp_is_size_limited() {
    if !have_root("tmp_is_size_limited") {
        return;
    }
    let js = r#"
try {
  require('fs').writeFileSync('/tmp/big', Buffer.alloc(20 << 20, 1));
  console.log('wrote 20 MiB');
} catch (e) {
  console.log('write failed: ' + e.code);
}
"#;
    let out = run_node("tmp-size", &[], js, &[]);
    assert!(out.stdout.contains("write failed: ENOSPC"), "{}", out.describe());
}

// ---------- limits ----------

#[test]
fn memory_limit_kills_allocating_node() {
    if !have_root("memory_limit_kills_allocating_node") {
        return;
    }
    // Buffers live outside V8's heap, and filling them touches every page: only the cgroup can stop this.
    let js = r#"
const keep = [];
for (let i = 0; i < 2048; i++) keep.push(Buffer.alloc(1 << 20, 1));
console.log('survived 2 GiB');
"#;
    let mark = marker("memory");
    let out = run_node("memory", &["--memory", "67108864"], js, &[&mark]);
    assert!(!out.stdout.contains("survived"), "the memory limit did not stop Node:\n{}", out.describe());
    assert_eq!(out.code(), Some(KILLED_SIGKILL), "expected the OOM killer's SIGKILL:\n{}", out.describe());
    assert_no_process_left(&mark, "memory");
}

#[test]
fn pids_limit_stops_spawn_loop() {
    if !have_root("pids_limit_stops_spawn_loop") {
        return;
    }
    // The children are left running on purpose: the sandbox must take them down when it ends.
    let js = r#"
const { spawn } = require('child_process');
const marker = process.argv[2];
const kids = [];
function next(i) {
  if (i >= 200) {
    console.log('not limited after ' + i + ' children');
    process.exit(1);
  }
  const c = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 5000)', marker], { stdio: 'ignore' });
  c.on('error', (e) => {
    if (e.code === 'EAGAIN') {
      console.log('pids limited after ' + i + ' children');
      process.exit(0);
    }
    console.log('spawn failed: ' + e.code);
    process.exit(2);
  });
  c.on('spawn', () => {
    kids.push(c);
    next(i + 1);
  });
}
next(0);
"#;
    let mark = marker("pids");
    let out = run_node("pids", &["--pids", "16"], js, &[&mark]);
    assert!(
        out.code() == Some(0) && out.stdout.contains("pids limited"),
        "the pids limit did not stop the spawn loop:\n{}",
        out.describe()
    );
    assert_no_process_left(&mark, "pids");
}

// ---------- what outlives a sandbox ----------

#[test]
fn nothing_left_after_exit() {
    if !have_root("nothing_left_after_exit") {
        return;
    }
    let dir = Scratch::new("leftovers");
    dir.build_probe();
    let mark = marker("leftovers");
    let _exclusive = jail_lock(true);
    let own = cgroup_dirs(std::process::id());
    let cgroups_before = own_cgroup_trees();
    let mounts_before = mount_table();

    let held = Held::start(&dir, &mark);
    let inside = held.inside();
    assert!(inside.len() >= 2, "expected the probe and its lingering grandchild, found {:?}", processes_with(&mark));
    let mut sandbox_cgroups = BTreeSet::new();
    for pid in &inside {
        let (uid, gid) = host_uid_gid(*pid);
        assert!(uid != 0 && gid != 0, "sandboxed pid {pid} runs as host uid {uid} gid {gid}");
        for ((ctrl, dir), (_, own_dir)) in cgroup_dirs(*pid).into_iter().zip(&own) {
            assert!(
                dir.starts_with(own_dir) && dir != *own_dir,
                "pid {pid}'s {ctrl} cgroup {} is not nested under the caller's {}",
                dir.display(),
                own_dir.display()
            );
            assert!(dir.is_dir(), "{} does not exist", dir.display());
            sandbox_cgroups.insert(dir);
        }
    }

    let out = held.release();
    assert_eq!(out.code(), Some(0), "the held probe failed:\n{}", out.describe());
    assert_no_process_left(&mark, "held probe");
    let left: Vec<_> = sandbox_cgroups.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "the sandbox's cgroups outlived it: {left:?}");
    for (before, after) in cgroups_before.iter().zip(own_cgroup_trees()) {
        // A new directory holding processes belongs to someone else's live sandbox; an empty one was leaked.
        let leaked: Vec<_> = after
            .difference(before)
            .filter(|d| fs::read_to_string(d.join("cgroup.procs")).map(|p| p.trim().is_empty()).unwrap_or(false))
            .collect();
        assert!(leaked.is_empty(), "cgroups left behind: {leaked:?}");
    }
    let mounts_after = mount_table();
    let new_mounts: Vec<_> = mounts_after.difference(&mounts_before).collect();
    assert!(new_mounts.is_empty(), "mounts left behind in the caller's namespace: {new_mounts:?}");
}

#[test]
fn concurrent_jails_get_distinct_host_ids() {
    if !have_root("concurrent_jails_get_distinct_host_ids") {
        return;
    }
    let dir = Scratch::new("concurrent");
    dir.build_probe();
    let _lock = jail_lock(false);
    let (m1, m2) = (marker("concurrent"), marker("concurrent"));
    let a = Held::start(&dir, &m1);
    let b = Held::start(&dir, &m2);
    let (ua, ub) = (a.mapped("uid_map"), b.mapped("uid_map"));
    let (ga, gb) = (a.mapped("gid_map"), b.mapped("gid_map"));
    for (held, uid, gid) in [(&a, ua, ga), (&b, ub, gb)] {
        assert!(uid != 0 && gid != 0, "a sandbox maps to host uid {uid} gid {gid}");
        for pid in held.inside() {
            assert_eq!(host_uid_gid(pid), (uid, gid), "pid {pid} runs as another host id than its uid_map says");
        }
    }
    assert_ne!(ua, ub, "two live sandboxes share host uid {ua}");
    assert_ne!(ga, gb, "two live sandboxes share host gid {ga}");
    let (oa, ob) = (a.release(), b.release());
    assert_eq!(oa.code(), Some(0), "{}", oa.describe());
    assert_eq!(ob.code(), Some(0), "{}", ob.describe());
    assert_no_process_left(&m1, "first concurrent jail");
    assert_no_process_left(&m2, "second concurrent jail");
}

/// The scheduler's slice of a process in nanoseconds, from /proc/PID/sched; None when the kernel does not show
/// one (before Linux 6.12, or without CONFIG_SCHED_DEBUG).
fn sched_slice(pid: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/sched")).ok()?;
    text.lines().find(|l| l.starts_with("se.slice")).and_then(|l| l.rsplit(':').next()).and_then(|v| v.trim().parse().ok())
}

#[test]
fn sandbox_processes_run_with_a_short_time_slice() {
    if !have_root("sandbox_processes_run_with_a_short_time_slice") {
        return;
    }
    let Some(host_slice) = sched_slice("self") else {
        let _ = writeln!(
            std::io::stderr(),
            "\n**********\nNOT CHECKED: this kernel shows no se.slice in /proc/PID/sched (before Linux 6.12): the \
             sandbox's short slice cannot be seen here\n**********\n"
        );
        return;
    };
    let dir = Scratch::new("slice");
    dir.build_probe();
    let mark = marker("slice");
    let held = Held::start(&dir, &mark);
    let inside = held.inside();
    assert!(!inside.is_empty(), "no sandboxed process found");
    for pid in &inside {
        // Every process of the sandbox (the probe and what it forked) inherits the slice set before exec.
        assert_eq!(
            sched_slice(&pid.to_string()),
            Some(jailer::sched::SHORT_SLICE_NS),
            "pid {pid} in the sandbox (the host's own slice is {host_slice} ns)"
        );
    }
    let out = held.release();
    assert_eq!(out.code(), Some(0), "the held probe failed:\n{}", out.describe());
}
