//! Processes: timed one-shot spawns (plain fork and execve, nothing but syscalls in between), the
//! long-lived children the bench starts (daemons, Node servers, idle Nodes) and their cleanup, and
//! reading `/proc` for a process tree's memory.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testkit::{cgroup, procfs};

/// The whole environment every child gets: Node's start-up triples with this machine's
/// NODE_EXTRA_CA_CERTS, and nothing of the caller's environment should colour a figure.
pub const CLEAN_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// Set by SIGINT/SIGTERM/SIGHUP: stop sampling, clean up, print what was measured.
pub static STOP: AtomicBool = AtomicBool::new(false);

pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only stores
        // to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Finds a program the way a shell with the clean PATH would.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    CLEAN_PATH.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// What the child does between fork and execve, besides wiring stdio.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pre {
    None,
    /// A private mount namespace without /sys/fs/cgroup/unified, so that crun 1.8 sees a plain cgroup v1
    /// host instead of the hybrid layout it refuses.
    HideUnifiedCgroup,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Until the process has exited and been reaped.
    Exit,
    /// Until the first byte arrives on its stdout (then it is drained and reaped, untimed).
    FirstByte,
}

pub struct Spawn {
    argv: Vec<CString>,
    envp: Vec<CString>,
    pub pre: Pre,
}

pub struct Outcome {
    pub micros: u64,
    /// Exit code, or 128 + signal.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Outcome {
    pub fn describe(&self) -> String {
        let err = String::from_utf8_lossy(&self.stderr);
        let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        let line: String = line.chars().take(200).collect();
        if line.is_empty() {
            format!("exit status {}", self.status)
        } else {
            format!("exit status {}: {line}", self.status)
        }
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new("?").expect("no NUL"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads one pipe until EOF into `out`.
fn read_to_end(fd: &OwnedFd, out: &mut Vec<u8>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // SAFETY: buf is a writable buffer of the length passed.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Drains stdout and stderr together (so that neither can fill and stall the child) until both end.
fn drain(out: Option<&OwnedFd>, err: Option<&OwnedFd>, out_buf: &mut Vec<u8>, err_buf: &mut Vec<u8>) {
    match (out, err) {
        (None, None) => {}
        (Some(o), None) => read_to_end(o, out_buf),
        (None, Some(e)) => read_to_end(e, err_buf),
        (Some(o), Some(e)) => {
            let mut open = [true, true];
            let mut buf = [0u8; 16 * 1024];
            while open[0] || open[1] {
                let mut pfds = [
                    libc::pollfd { fd: if open[0] { o.as_raw_fd() } else { -1 }, events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: if open[1] { e.as_raw_fd() } else { -1 }, events: libc::POLLIN, revents: 0 },
                ];
                // SAFETY: pfds is a valid array of two pollfd structs.
                let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
                if r < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                for (i, (fd, dst)) in [(o, &mut *out_buf), (e, &mut *err_buf)].into_iter().enumerate() {
                    if open[i] && pfds[i].revents != 0 {
                        // SAFETY: buf is a writable buffer of the length passed.
                        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                        if n > 0 {
                            dst.extend_from_slice(&buf[..n as usize]);
                        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                            open[i] = false;
                        }
                    }
                }
            }
        }
    }
}

fn reap(pid: libc::pid_t) -> io::Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: st is a valid out-pointer; pid is our own unreaped child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        -1
    })
}

impl Spawn {
    /// `prog` must be a path (resolved beforehand with `which`), as execve does no PATH search.
    pub fn new(prog: &Path, args: &[&str]) -> Spawn {
        let mut argv = vec![cstr(&prog.to_string_lossy())];
        argv.extend(args.iter().map(|a| cstr(a)));
        Spawn { argv, envp: vec![cstr(&format!("PATH={CLEAN_PATH}"))], pre: Pre::None }
    }

    pub fn with_pre(mut self, pre: Pre) -> Spawn {
        self.pre = pre;
        self
    }

    /// Forks, execs and times the child. stdin and any uncaptured stream are /dev/null.
    /// `capture` keeps stdout and stderr (for probes and for results).
    pub fn run(&self, until: Until, capture: bool) -> io::Result<Outcome> {
        // Everything the child touches is prepared here, before the clock starts and before fork.
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let devnull = fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
        let out = if capture || until == Until::FirstByte { Some(pipe()?) } else { None };
        let err = if capture { Some(pipe()?) } else { None };
        let null_fd = devnull.as_raw_fd();
        let out_w = out.as_ref().map(|p| p.1.as_raw_fd()).unwrap_or(null_fd);
        let err_w = err.as_ref().map(|p| p.1.as_raw_fd()).unwrap_or(null_fd);
        let pre = self.pre;
        let slash: &CStr = c"/";
        let unified: &CStr = c"/sys/fs/cgroup/unified";

        let t0 = Instant::now();
        // SAFETY: the child runs only async-signal-safe syscalls on data prepared above (dup2, unshare,
        // mount, umount2, execve, _exit) and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see the fork above: syscalls only, then execve or _exit.
            unsafe {
                if libc::dup2(null_fd, 0) < 0 || libc::dup2(out_w, 1) < 0 || libc::dup2(err_w, 2) < 0 {
                    libc::_exit(125);
                }
                if pre == Pre::HideUnifiedCgroup {
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            slash.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                    {
                        libc::_exit(126);
                    }
                    libc::umount2(unified.as_ptr(), libc::MNT_DETACH);
                }
                libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        // Parent: drop the write ends so that EOF means the child (and anything it left) is done.
        let out_r = out.map(|(r, _w)| r);
        let err_r = err.map(|(r, _w)| r);
        drop(devnull);
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut micros = None;
        if until == Until::FirstByte {
            let fd = out_r.as_ref().expect("pipe for first byte");
            let mut b = [0u8; 1];
            loop {
                // SAFETY: b is a valid one-byte buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
                if n == 1 {
                    micros = Some(t0.elapsed().as_micros() as u64);
                    stdout.push(b[0]);
                    break;
                }
                if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
        }
        drain(out_r.as_ref(), err_r.as_ref(), &mut stdout, &mut stderr);
        let status = reap(pid)?;
        let micros = match (until, micros) {
            (Until::Exit, _) => t0.elapsed().as_micros() as u64,
            (Until::FirstByte, Some(m)) => m,
            (Until::FirstByte, None) => {
                return Ok(Outcome { micros: 0, status: if status == 0 { -2 } else { status }, stdout, stderr });
            }
        };
        Ok(Outcome { micros, status, stdout, stderr })
    }
}

// ---------------------------------------------------------------------------------------------
// Long-lived children and cleanup.

static LIVE: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());
static TMPDIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub fn register_tmpdir(p: &Path) {
    TMPDIRS.lock().unwrap_or_else(|e| e.into_inner()).push(p.to_path_buf());
}

/// A child that runs in the background while rows are measured: own process group (so a ^C at the
/// terminal reaches only the bench, which then stops it in order), SIGTERM if the bench dies.
pub struct Child {
    pub inner: std::process::Child,
    pub name: String,
    done: bool,
}

impl Child {
    pub fn spawn(mut cmd: Command, name: &str) -> io::Result<Child> {
        cmd.env_clear().env("PATH", CLEAN_PATH).process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let inner = cmd.spawn()?;
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(inner.id() as libc::pid_t);
        Ok(Child { inner, name: name.to_string(), done: false })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.inner.id() as libc::pid_t
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.inner.try_wait().ok().flatten()
    }

    /// SIGTERM, then wait up to `grace`; SIGKILL only if it is still there. Says how it went.
    pub fn stop(&mut self, grace: Duration) -> String {
        if self.done {
            return "already stopped".into();
        }
        self.done = true;
        let pid = self.pid();
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
        if let Some(st) = self.exited() {
            return format!("had already exited ({st})");
        }
        let t0 = Instant::now();
        // SAFETY: pid is our own unreaped child, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while t0.elapsed() < grace {
            if let Some(st) = self.exited() {
                return format!("exited {:?} after SIGTERM ({st})", t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.inner.kill();
        let _ = self.inner.wait();
        format!("did not exit within {grace:?} of SIGTERM; killed")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

/// Last resort (panic hook): SIGTERM whatever is still registered, wait briefly, remove temp dirs.
pub fn emergency_cleanup() {
    let pids: Vec<_> = LIVE.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    for pid in &pids {
        // SAFETY: these are our own unreaped children.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let t0 = Instant::now();
    for pid in &pids {
        let mut st = 0;
        loop {
            // SAFETY: st is a valid out-pointer.
            let r = unsafe { libc::waitpid(*pid, &mut st, libc::WNOHANG) };
            if r != 0 || t0.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    remove_tmpdirs();
}

pub fn remove_tmpdirs() {
    let dirs: Vec<_> = TMPDIRS.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    for d in dirs {
        let _ = fs::remove_dir_all(&d);
    }
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// The children of `pid` (see `testkit::procfs::children`).
fn children(pid: i32) -> Vec<i32> {
    procfs::children(pid as u32).into_iter().map(|c| c as i32).collect()
}

pub fn pid_ns(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// A sandbox as seen from outside: the topmost process of a descendant tree that is in a PID
/// namespace other than the daemon's, and every process below it.
pub struct Sandbox {
    pub root: i32,
    pub pids: Vec<i32>,
}

/// The sandboxes below `daemon`, found through the process tree.
pub fn sandboxes(daemon: i32) -> Vec<Sandbox> {
    let Some(host_ns) = pid_ns(daemon) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut stack = vec![daemon];
    while let Some(p) = stack.pop() {
        for c in children(p) {
            if pid_ns(c).is_some_and(|ns| ns != host_ns) {
                let mut pids = vec![c];
                let mut i = 0;
                while i < pids.len() {
                    let kids = children(pids[i]);
                    pids.extend(kids);
                    i += 1;
                }
                out.push(Sandbox { root: c, pids });
            } else {
                stack.push(c);
            }
        }
    }
    out.sort_by_key(|s| s.root);
    out
}

/// (Rss, Pss) in KiB from /proc/PID/smaps_rollup.
pub fn rss_pss(pid: i32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field =
        |name: &str| s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok());
    Some((field("Rss:")?, field("Pss:")?))
}

/// What the memory cgroup of `pid` charges, in KiB (cgroup v1 memory.usage_in_bytes or v2
/// memory.current), and the cgroup's path.
pub fn cgroup_memory(pid: i32) -> Option<(u64, String)> {
    let root = Path::new(cgroup::ROOT);
    for e in cgroup::read(pid as u32) {
        let rel = e.path.trim_start_matches('/');
        let candidates: Vec<PathBuf> = if e.has("memory") {
            vec![root.join("memory").join(rel).join("memory.usage_in_bytes")]
        } else if e.is_unified() {
            vec![root.join(rel).join("memory.current"), root.join("unified").join(rel).join("memory.current")]
        } else {
            continue;
        };
        for c in candidates {
            if let Some(v) = fs::read_to_string(&c).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                return Some((v / 1024, e.path));
            }
        }
    }
    None
}

/// The cgroup directories `pid` is in, in every mounted hierarchy.
pub fn cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    cgroup::hierarchy_dirs(pid as u32).into_iter().filter(|d| d.join("cgroup.procs").exists()).collect()
}
