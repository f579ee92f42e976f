//! Making a sandbox: the one ordered recipe, and the parent's side of the fork.
//!
//! The parent prepares everything (paths, argv, envp, the mount plan, the cgroup with its limits) and then
//! clones the child into new user, mount, network, PID, IPC and UTS namespaces. The child runs
//! [`child_recipe`], which makes only system calls: no allocation, no lock, no log, so that it is safe to fork
//! from a threaded process. A failure in the child reaches the parent as a fixed-size record (step, errno) over
//! a close-on-exec pipe: end-of-file on that pipe means `execve` succeeded.
//!
//! docs/jailer.md lists the same steps in the same order.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cgroup::{Cgroup, CgroupError, CgroupRoot, Limits};
use crate::mount::{BindRo, MountError, MountPlan, MountStep};
use crate::pid::{self, Status};
use crate::rootfs::{self, RootfsError};
use crate::user::{self, UserError};
use crate::{caps, net, sched, seccomp};

/// How long a child may take from its release to its execve (a few milliseconds normally; seconds on a host
/// under heavy load) before the jailer gives up on it and kills it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Signals queued at once to all of a sandbox's processes (sigqueue, timers; a plain kill() of a blocked
/// real-time signal is not held to it by the kernel, only by the memory cgroup). Node queues next to none.
pub const RLIMIT_SIGPENDING: u64 = 128;
/// Bytes a sandbox may lock in memory (mlock, SHM_LOCK): Node locks nothing; this is the kernel's old default.
pub const RLIMIT_MEMLOCK: u64 = 64 << 10;

/// What every sandbox of one jailer shares.
#[derive(Clone, Debug)]
pub struct JailerConfig {
    pub rootfs: PathBuf,
    pub limits: Limits,
    /// Size of the sandbox's /tmp in bytes.
    pub tmp_bytes: u64,
    /// Host uid (and gid) of a sandbox = uid_base + host pid of its first process.
    pub uid_base: u32,
    pub binds_ro: Vec<(PathBuf, PathBuf)>,
    pub hostname: String,
    /// RLIMIT_NOFILE inside.
    pub max_files: u64,
    /// RLIMIT_FSIZE inside, bytes.
    pub max_file_size: u64,
    /// The sandbox's oom_score_adj: when the host itself runs out of memory, its OOM killer should take
    /// sandboxes before the daemon or anything else of the host's.
    pub oom_score_adj: Option<i32>,
    /// The time slice of the sandbox's processes (see [`crate::sched`]); None keeps the kernel's default.
    pub slice_ns: Option<u64>,
}

impl Default for JailerConfig {
    fn default() -> Self {
        JailerConfig {
            rootfs: rootfs::default_path(),
            limits: Limits::default(),
            tmp_bytes: 16 << 20,
            uid_base: 1_000_000_000,
            binds_ro: Vec::new(),
            hostname: "taskcell".into(),
            max_files: 1024,
            max_file_size: 64 << 20,
            oom_score_adj: Some(800),
            slice_ns: Some(sched::SHORT_SLICE_NS),
        }
    }
}

/// Where the sandbox's fds 0, 1 and 2 come from.
pub enum Stdio {
    /// The caller's own 0, 1 and 2 (`taskcell jail`).
    Inherit,
    /// Given descriptors for stdin, stdout and stderr.
    Fds([OwnedFd; 3]),
}

/// One sandbox to make.
pub struct SandboxSpec {
    /// argv[0] is the path inside the sandbox.
    pub argv: Vec<String>,
    /// Extra environment entries (`KEY=value`) on top of the fixed minimal set.
    pub env: Vec<String>,
    pub stdio: Stdio,
    /// Becomes fd 3 in the sandbox (the daemon's socket).
    pub socket: Option<OwnedFd>,
    /// Overrides the jailer's limits for this sandbox.
    pub limits: Option<Limits>,
}

/// The environment every sandbox gets; nothing of the caller's environment is passed on.
pub const BASE_ENV: [&str; 4] = ["PATH=/usr/bin", "HOME=/tmp", "LANG=C.UTF-8", "TZ=UTC"];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("rootfs")]
    Rootfs(#[from] RootfsError),
    #[error("mount plan")]
    Mount(#[from] MountError),
    #[error("user namespace")]
    User(#[from] UserError),
    #[error("init program")]
    Init(#[from] pid::InitError),
    #[error("{what}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("argument or environment entry contains a NUL byte")]
    Nul,
    #[error("empty command")]
    NoCommand,
    #[error("sandbox setup failed at step {step}: {}", std::io::Error::from_raw_os_error(*errno))]
    Child { step: Step, errno: i32 },
}

/// The steps of [`child_recipe`], reported with an errno when one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    DeathSignal,
    AwaitParent,
    BecomeUser,
    CgroupNamespace,
    Mount(MountStepCode),
    Hostname,
    Loopback,
    Rlimits,
    NamespaceLimits,
    Descriptors,
    Session,
    Signals,
    DropCapabilities,
    NoNewPrivs,
    Seccomp,
    Init,
    InitExec,
    Exec,
}

/// [`MountStep`] as a plain number for the fixed-size failure record.
pub type MountStepCode = u32;

impl Step {
    fn code(self) -> (u32, u32) {
        let n = match self {
            Step::DeathSignal => 1,
            Step::AwaitParent => 2,
            Step::BecomeUser => 3,
            Step::CgroupNamespace => 4,
            Step::Mount(m) => return (5, m),
            Step::Hostname => 6,
            Step::Loopback => 7,
            Step::Rlimits => 8,
            Step::Descriptors => 9,
            Step::Session => 10,
            Step::Signals => 11,
            Step::DropCapabilities => 12,
            Step::NoNewPrivs => 13,
            Step::Seccomp => 14,
            Step::Exec => 15,
            Step::Init => 16,
            Step::InitExec => 17,
            Step::NamespaceLimits => 18,
        };
        (n, 0)
    }

    fn from_code(code: u32, sub: u32) -> Step {
        const ALL: [Step; 17] = [
            Step::DeathSignal, Step::AwaitParent, Step::BecomeUser, Step::CgroupNamespace, Step::Hostname,
            Step::Loopback, Step::Rlimits, Step::NamespaceLimits, Step::Descriptors, Step::Session, Step::Signals, Step::DropCapabilities,
            Step::NoNewPrivs, Step::Seccomp, Step::Init, Step::InitExec, Step::Exec,
        ];
        if code == 5 {
            return Step::Mount(sub);
        }
        ALL.into_iter().find(|s| s.code().0 == code).unwrap_or(Step::Exec)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Step::DeathSignal => "PR_SET_PDEATHSIG",
            Step::AwaitParent => "waiting for the parent",
            Step::BecomeUser => "setresuid/setresgid to the sandbox user",
            Step::CgroupNamespace => "unshare(CLONE_NEWCGROUP)",
            Step::Mount(code) => MountStep::from_code(*code).map_or("mount", MountStep::describe),
            Step::Hostname => "sethostname",
            Step::Loopback => "bringing lo up",
            Step::Rlimits => "setrlimit",
            Step::NamespaceLimits => "writing the user namespace's limits in /proc/sys/user",
            Step::Descriptors => "arranging descriptors",
            Step::Session => "setsid",
            Step::Signals => "resetting signals",
            Step::DropCapabilities => "dropping capabilities",
            Step::NoNewPrivs => "PR_SET_NO_NEW_PRIVS",
            Step::Seccomp => "installing the seccomp filters",
            Step::Init => "forking the command from the sandbox's init",
            Step::InitExec => "execveat of the sandbox's init program",
            Step::Exec => "execve",
        };
        f.write_str(text)
    }
}

fn mount_step_code(m: MountStep) -> u32 {
    m as u32
}

/// How a sandbox ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: Status,
    /// The cgroup's OOM killer killed a process of the sandbox.
    pub oom_killed: bool,
}

impl Exit {
    pub fn seccomp_killed(&self) -> bool {
        self.status == Status::Signaled(libc::SIGSYS)
    }
}

impl Sandbox {
    /// After a seccomp kill: "syscall NAME (NR)" from the kernel's audit record, when it can be found.
    pub fn seccomp_culprit(&self) -> Option<String> {
        seccomp::killed_for(self.host_uid).map(|(nr, name)| format!("{name} ({nr})"))
    }
}

/// A running sandbox. Dropping it kills it and removes its cgroup (blocking up to a few milliseconds).
pub struct Sandbox {
    pub pid: i32,
    pub host_uid: u32,
    pidfd: OwnedFd,
    /// Where the sandbox's init writes the command's wait status before it exits.
    exit_report: OwnedFd,
    cgroup: Option<Cgroup>,
    exit: Option<Exit>,
}

impl Sandbox {
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// SIGKILL the sandbox's first process; its PID namespace takes every other process with it.
    pub fn kill(&self) {
        let _ = pid::signal(self.pidfd.as_fd(), libc::SIGKILL);
    }

    /// Reap the sandbox if it has ended (or wait for it with `block`), noting whether the OOM killer struck.
    pub fn try_wait(&mut self, block: bool) -> std::io::Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        let Some(init_status) = pid::wait(self.pidfd.as_fd(), block)? else { return Ok(None) };
        // The command's own status, as the init reported it; the init's, if it was killed first (a timeout,
        // the OOM killer, a shutdown).
        let status = pid::read_reported_status(self.exit_report.as_fd()).unwrap_or(init_status);
        let oom_killed = self.cgroup.as_ref().map(|c| c.oom_kills() > 0).unwrap_or(false);
        let exit = Exit { status, oom_killed };
        self.exit = Some(exit);
        Ok(Some(exit))
    }

    pub fn wait(&mut self) -> std::io::Result<Exit> {
        Ok(self.try_wait(true)?.expect("blocking wait returns a status"))
    }

    /// Change the sandbox's CPU weight (see [`Limits::cpu_weight`]).
    pub fn set_cpu_weight(&self, weight: u64) -> Result<(), CgroupError> {
        self.cgroup.as_ref().map_or(Ok(()), |c| c.set_cpu_weight(weight))
    }

    /// Let every thread of the sandbox run only on `cpus` (see [`crate::sched::set_tree_affinity`]); the number
    /// of threads set.
    pub fn set_affinity(&self, cpus: &crate::sched::CpuSet) -> usize {
        crate::sched::set_tree_affinity(self.pid, cpus)
    }

    /// Memory charged to the sandbox's cgroup, bytes.
    pub fn memory_current(&self) -> u64 {
        self.cgroup.as_ref().map(|c| c.memory_current()).unwrap_or(0)
    }

    /// Kill, reap and remove the cgroup now, reporting a cgroup that would not go.
    pub fn destroy(mut self) -> Result<Exit, CgroupError> {
        self.kill();
        let exit = self.wait().unwrap_or(Exit { status: Status::Signaled(libc::SIGKILL), oom_killed: false });
        if let Some(cg) = self.cgroup.take() {
            cg.remove()?;
        }
        Ok(exit)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
            let _ = self.try_wait(true);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.remove();
        }
    }
}

/// Makes sandboxes. One per process; `make` may be called from several threads.
pub struct Jailer {
    config: JailerConfig,
    cgroups: CgroupRoot,
    /// Every path, flag and option of the sandbox's root, the same for every sandbox: prepared once.
    mounts: MountPlan,
    /// The sandbox's init program, exec'd by the PID 1 of each sandbox.
    init: pid::InitProgram,
    /// The limits each sandbox writes into its user namespace's /proc/sys/user.
    ns_limits: user::NamespaceLimits,
    last_cap: u32,
    counter: AtomicU64,
}

impl Jailer {
    pub fn new(config: JailerConfig) -> Result<Jailer, JailError> {
        let entries = rootfs::entries(&config.rootfs)?;
        let binds: Vec<BindRo> = config.binds_ro.iter().map(|(h, i)| BindRo { host: h.clone(), inside: i.clone() }).collect();
        let mounts = MountPlan::new(&config.rootfs, &entries, config.tmp_bytes, &binds)?;
        let cgroups = CgroupRoot::create()?;
        // Before any sandbox: none may inherit a supplementary group of this process's.
        user::drop_supplementary_groups()?;
        let init = pid::InitProgram::load()?;
        let ns_limits = user::NamespaceLimits::new();
        Ok(Jailer { config, cgroups, mounts, init, ns_limits, last_cap: caps::last_cap(), counter: AtomicU64::new(0) })
    }

    pub fn config(&self) -> &JailerConfig {
        &self.config
    }

    /// Remove this jailer's cgroup groups now (dropping the jailer does it too; a daemon whose threads still
    /// hold it calls this on its way out). Every sandbox must have been destroyed first.
    pub fn remove_cgroups(&self) -> bool {
        self.cgroups.remove_groups()
    }

    /// Remove cgroups left by taskcell processes that died without cleaning up.
    pub fn sweep_stale_cgroups(&self) -> usize {
        self.cgroups.sweep_stale()
    }

    /// Make a sandbox and exec `spec.argv` in it. Returns once execve has succeeded, or with the failed step.
    pub fn make(&self, spec: SandboxSpec) -> Result<Sandbox, JailError> {
        // The child copies this thread's credentials: no supplementary group may have come back.
        user::check_no_groups()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let limits = spec.limits.clone().unwrap_or_else(|| self.config.limits.clone());
        // The cgroup exists, limited, before the child does: it joins before running a line of its own code.
        let cgroup = self.cgroups.sandbox(&format!("sb-{n}"), &limits)?;
        let plan = self.prepare(spec)?;
        // The child's ends lifted to 10 and above, as every descriptor it is given: none can sit where the child
        // moves its stdio, socket and init program (0-4).
        let (go_r, go_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let (go_r, status_w, exit_w) = (lift(go_r)?, lift(status_w)?, lift(exit_w)?);
        let pipes = ChildPipes { go: go_r.as_raw_fd(), status: status_w.as_raw_fd(), exit: exit_w.as_raw_fd() };
        let cgroup_dir = cgroup.clone_target();
        let (pid, pidfd, born_in_cgroup) = match clone_child(&plan, &pipes, cgroup_dir.as_ref().map(|d| d.as_fd())) {
            Ok(v) => v,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e);
            }
        };
        drop(cgroup_dir);
        // The child's ends: ours must be closed so that end-of-file means what it should on both sides.
        drop((go_r, status_w, exit_w));
        let mut sandbox = Sandbox { pid, host_uid: 0, pidfd, exit_report: exit_r, cgroup: Some(cgroup), exit: None };
        let outcome = self.finish_parent_side(go_w, status_r, &mut sandbox, born_in_cgroup);
        drop(plan);
        match outcome {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.kill();
                let _ = sandbox.try_wait(true);
                Err(e)
            }
        }
    }

    fn finish_parent_side(&self, go_w: OwnedFd, status_r: OwnedFd, sandbox: &mut Sandbox, born_in_cgroup: bool) -> Result<(), JailError> {
        let host = user::host_id(self.config.uid_base, sandbox.pid)?;
        sandbox.host_uid = host;
        user::write_maps(sandbox.pid, host)?;
        if let Some(adj) = self.config.oom_score_adj {
            let path = format!("/proc/{}/oom_score_adj", sandbox.pid);
            std::fs::write(&path, adj.to_string()).map_err(|source| JailError::Os { what: "writing oom_score_adj", source })?;
        }
        if !born_in_cgroup {
            sandbox.cgroup.as_ref().expect("set above").attach(sandbox.pid)?;
        }
        // Release the child, then learn whether it reached execve.
        write_byte(go_w.as_fd()).map_err(|source| JailError::Os { what: "releasing the sandbox", source })?;
        read_failure(status_r.as_fd(), Instant::now() + SETUP_TIMEOUT).map_err(|source| JailError::Os { what: "reading the sandbox's setup status", source })?
            .map_or(Ok(()), |(step, errno)| Err(JailError::Child { step, errno }))
    }

    fn prepare(&self, spec: SandboxSpec) -> Result<ChildPlan<'_>, JailError> {
        if spec.argv.is_empty() {
            return Err(JailError::NoCommand);
        }
        let cstr = |s: &str| CString::new(s).map_err(|_| JailError::Nul);
        let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
        let mut env: Vec<CString> = BASE_ENV.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?;
        for e in &spec.env {
            env.push(cstr(e)?);
        }
        // Descriptors the child moves to 0-3 are first lifted to 10 and above, so that moving one can never
        // overwrite another still to be moved.
        let stdio = match spec.stdio {
            Stdio::Inherit => None,
            Stdio::Fds([a, b, c]) => Some([lift(a)?, lift(b)?, lift(c)?]),
        };
        let socket = spec.socket.map(lift).transpose()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let rlimits = [
            // 1, not 0: the one value for which the kernel also skips piping the dump to the host's crash
            // handler (core_pattern "|apport", "|systemd-coredump"); no file dump fits in a byte. Hard limit
            // too, which nothing without CAP_SYS_RESOURCE in the host's namespace can raise again.
            (libc::RLIMIT_CORE, 1),
            (libc::RLIMIT_NOFILE, self.config.max_files),
            (libc::RLIMIT_FSIZE, self.config.max_file_size),
            // Counted per user and charged up to the host's root (the namespace's creator) too.
            (libc::RLIMIT_SIGPENDING, RLIMIT_SIGPENDING),
            (libc::RLIMIT_MSGQUEUE, 0),
            (libc::RLIMIT_MEMLOCK, RLIMIT_MEMLOCK),
        ];
        Ok(ChildPlan {
            hostname: self.config.hostname.clone().into_bytes(),
            mounts: &self.mounts,
            rlimits,
            stdio,
            socket,
            last_cap: self.last_cap,
            path: argv[0].clone(),
            _argv: argv,
            _env: env,
            argv_ptrs,
            env_ptrs,
            init: self.init.fd(),
            ns_limits: &self.ns_limits,
            slice_ns: self.config.slice_ns,
        })
    }
}

/// Everything the child reads, prepared by the parent; the child only borrows it.
struct ChildPlan<'a> {
    hostname: Vec<u8>,
    mounts: &'a MountPlan,
    rlimits: [(libc::__rlimit_resource_t, u64); 6],
    stdio: Option<[OwnedFd; 3]>,
    socket: Option<OwnedFd>,
    last_cap: u32,
    path: CString,
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    /// The init program's sealed memfd (lifted to 10 and above), which the child moves to [`pid::INIT_FD`].
    init: BorrowedFd<'a>,
    ns_limits: &'a user::NamespaceLimits,
    slice_ns: Option<u64>,
}

/// The child's ends of the pipes: it reads `go` (the parent's release), writes `status` (a failure) and,
/// as the init, `exit`. It closes its copies of the parent's ends first thing (`close_inherited`), so that the
/// parent's death reads as a hang-up on `go`.
struct ChildPipes {
    go: RawFd,
    status: RawFd,
    /// The init's report of the command's wait status (close-on-exec: the command never holds it).
    exit: RawFd,
}

/// `fd` moved to a close-on-exec descriptor numbered 10 or above: clear of the numbers 0-4 that the child
/// moves descriptors to.
fn lift(fd: OwnedFd) -> Result<OwnedFd, JailError> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one that we then own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(JailError::Os { what: "fcntl(F_DUPFD_CLOEXEC)", source: std::io::Error::last_os_error() });
    }
    // SAFETY: `new` was just returned by fcntl.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(JailError::Os { what: "pipe2", source: std::io::Error::last_os_error() });
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

const NAMESPACES: libc::c_int =
    libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// Clone the child into its namespaces; returns its host pid and pidfd in the parent. The child never returns.
/// The kernel's `struct clone_args` (clone3), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clone the child into its namespaces; returns its host pid, its pidfd, and whether it was born in its
/// cgroup. With `cgroup_dir` (cgroup v2), clone3's CLONE_INTO_CGROUP places it there at birth: no migration,
/// whose cost (a wait for an RCU grace period under the cgroup threadgroup lock) is the largest single item
/// of making a sandbox. Without it, or if the kernel refuses, a plain clone and the parent's attach.
fn clone_child(plan: &ChildPlan, pipes: &ChildPipes, cgroup_dir: Option<BorrowedFd<'_>>) -> Result<(i32, OwnedFd, bool), JailError> {
    let mut pidfd: RawFd = -1;
    let mut rc = -1;
    let mut in_cgroup = false;
    if let Some(dir) = cgroup_dir {
        let args = CloneArgs {
            flags: (NAMESPACES | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM and with a null stack behaves like fork (the child runs on a copy of
        // this thread's stack, only `child_recipe`, and never returns); `args` and the pidfd local outlive it.
        rc = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
        in_cgroup = rc >= 0;
    }
    if rc < 0 {
        let flags = (NAMESPACES | libc::CLONE_PIDFD) as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
        // SAFETY: raw clone without CLONE_VM behaves like fork: the child gets a copy of this thread's stack and
        // the process's memory, and runs only `child_recipe`, which makes system calls and never returns. The
        // pidfd pointer is to a local that the kernel fills in the parent.
        rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, &mut pidfd as *mut RawFd, 0usize, 0usize) };
    }
    if rc < 0 {
        return Err(JailError::Os { what: "clone", source: std::io::Error::last_os_error() });
    }
    if rc == 0 {
        let (step, errno) = match child_recipe(plan, pipes) {
            Err(failure) => failure,
            Ok(never) => match never {},
        };
        report_failure(pipes.status, step, errno);
        // SAFETY: _exit ends the child without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(127) };
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor owned by us in `pidfd`.
    Ok((rc as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }, in_cgroup))
}

enum Never {}

/// The child's side of making a sandbox, in order. Each line is one step; only system calls happen here.
fn child_recipe(plan: &ChildPlan, pipes: &ChildPipes) -> Result<Never, (Step, i32)> {
    // Die with the supervising thread: a sandbox never outlives the process that is accountable for it.
    pid::die_with_parent().map_err(|e| (Step::DeathSignal, e))?;
    // Let go of every descriptor of the supervisor's that the sandbox does not need (its listening socket,
    // its state-directory lock, other sandboxes' pipes): a dying child must not hold them even for a moment.
    close_inherited(plan, pipes).map_err(|e| (Step::Descriptors, e))?;
    // Wait for the parent to write our uid/gid maps and move us into our cgroup (EOF: the parent is gone).
    await_parent(pipes).map_err(|e| (Step::AwaitParent, e))?;
    // Take on the mapped uid/gid 1000 before creating any file (unmapped ids cannot own files).
    user::become_sandbox_user().map_err(|e| (Step::BecomeUser, e))?;
    // Changing uid cleared the death signal: set it again, then make sure the parent did not die meanwhile.
    pid::die_with_parent().and_then(|()| parent_alive(pipes)).map_err(|e| (Step::DeathSignal, e))?;
    // A cgroup namespace rooted at our own cgroup, now that we are in it: the sandbox sees only "/".
    // SAFETY: unshare takes a flag word.
    pid::check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) }).map_err(|e| (Step::CgroupNamespace, e))?;
    // Assemble the new root (tmpfs, rootfs binds, /proc, /tmp, /dev, --bind-ro) while the host's paths are visible.
    plan.mounts.build_root().map_err(|(m, e)| (Step::Mount(mount_step_code(m)), e))?;
    // Enter it and detach the host's tree: from here on no host path can be named.
    plan.mounts.pivot().map_err(|(m, e)| (Step::Mount(mount_step_code(m)), e))?;
    // Our own hostname, in our own UTS namespace.
    // SAFETY: the hostname bytes were prepared by the parent and outlive the call.
    pid::check(unsafe { libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) }).map_err(|e| (Step::Hostname, e))?;
    // Loopback up: the namespace's only device, so that Node can serve and connect on 127.0.0.1.
    net::loopback_up().map_err(|e| (Step::Loopback, e))?;
    // Resource limits that cgroups do not cover: no core dumps, open files, file size, and what the kernel
    // counts per user (queued signals, message queues, locked memory), which our host uid shares with root.
    set_rlimits(plan).map_err(|e| (Step::Rlimits, e))?;
    // The same for the user namespace's own counts (inotify, fanotify, namespaces), while we still hold
    // CAP_SYS_RESOURCE in it and after the last namespace of ours (the cgroup one) was made.
    plan.ns_limits.apply().map_err(|e| (Step::NamespaceLimits, e))?;
    // A short time slice, inherited by every process and thread of the sandbox, so that a busy sandbox gives
    // way quickly to whatever wakes up (best effort: a kernel without per-task slices ignores it).
    if let Some(ns) = plan.slice_ns {
        let _ = sched::set_slice(ns);
    }
    // Stdio and the daemon's socket to 0-3, everything else closed.
    arrange_fds(plan, pipes.status, pipes.exit).map_err(|e| (Step::Descriptors, e))?;
    // A session of our own: no controlling terminal of the host's.
    pid::new_session().map_err(|e| (Step::Session, e))?;
    // Default signal dispositions and an empty mask, whatever the supervisor had.
    pid::reset_signals().map_err(|e| (Step::Signals, e))?;
    // No capability left in any set, so none survives execve.
    caps::drop_all(plan.last_cap).map_err(|e| (Step::DropCapabilities, e))?;
    // No privilege gain through execve, ever; required for the filter.
    caps::no_new_privs().map_err(|e| (Step::NoNewPrivs, e))?;
    // The seccomp filters, last, so that the steps above may use syscalls the sandbox may not.
    seccomp::install_all().map_err(|e| (Step::Seccomp, e))?;
    // PID 1 stays behind as the sandbox's init, under every restriction above: it reaps orphans, lets the
    // command die of its own signals like any process (PID 1 would ignore them), and reports its status.
    let command = pid::fork().map_err(|e| (Step::Init, e))?;
    if command != 0 {
        // PID 1 becomes the init program, so that what lives as long as the sandbox holds no copy of the
        // daemon's memory (other tenants' requests, results, sources). Returns only on failure.
        return Err((Step::InitExec, pid::exec_init(command, pipes.exit, pipes.status)));
    }
    // The command dies with its init (the namespace would take it anyway; this says so to the process).
    pid::die_with_parent().map_err(|e| (Step::DeathSignal, e))?;
    // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays owned by the plan.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv_ptrs.as_ptr(), plan.env_ptrs.as_ptr()) };
    Err((Step::Exec, pid::errno()))
}

/// The parent holds its end of `go` until it has read our status: a hang-up on ours means it died.
fn parent_alive(pipes: &ChildPipes) -> Result<(), i32> {
    let mut fd = libc::pollfd { fd: pipes.go, events: libc::POLLIN, revents: 0 };
    // SAFETY: polls one local pollfd without waiting.
    unsafe { libc::poll(&mut fd, 1, 0) };
    if fd.revents & libc::POLLHUP != 0 {
        return Err(libc::EPIPE);
    }
    Ok(())
}

fn await_parent(pipes: &ChildPipes) -> Result<(), i32> {
    let go = pipes.go;
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let n = unsafe { libc::read(go, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            return Ok(());
        }
        if n == 0 {
            return Err(libc::EPIPE);
        }
        if pid::errno() != libc::EINTR {
            return Err(pid::errno());
        }
    }
}

fn set_rlimits(plan: &ChildPlan) -> Result<(), i32> {
    for (resource, value) in plan.rlimits {
        let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
        // SAFETY: `lim` is a local rlimit read by the kernel.
        pid::check(unsafe { libc::setrlimit(resource, &lim) })?;
    }
    Ok(())
}

fn arrange_fds(plan: &ChildPlan, status_fd: RawFd, exit_fd: RawFd) -> Result<(), i32> {
    if let Some(stdio) = &plan.stdio {
        for (target, fd) in stdio.iter().enumerate() {
            // SAFETY: dup2 between descriptors this process holds; targets 0-2 are ours to replace.
            pid::check(unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) })?;
        }
    }
    let mut keep_from = 3;
    if let Some(sock) = &plan.socket {
        // SAFETY: as above; fd 3 is ours to replace (every source was lifted to 10 or above).
        pid::check(unsafe { libc::dup2(sock.as_raw_fd(), 3) })?;
        keep_from = 4;
    }
    // The init program where PID 1's execveat (the only one the policy allows) expects it; close-on-exec, so
    // that the command never holds it. Nothing else is at INIT_FD: every source was lifted to 10 or above.
    // SAFETY: dup3 between descriptors this process holds.
    pid::check(unsafe { libc::dup3(plan.init.as_raw_fd(), pid::INIT_FD, libc::O_CLOEXEC) })?;
    // Close everything from keep_from up, except INIT_FD and the status and exit pipes, all close-on-exec: the
    // command's copies close exactly when its execve succeeds; the init keeps the exit pipe.
    let mut keep = [status_fd, exit_fd, pid::INIT_FD];
    keep.sort_unstable();
    let mut from = keep_from;
    for fd in keep {
        if fd > from {
            // SAFETY: closes a range of descriptors none of which is used afterwards.
            pid::check(unsafe { libc::close_range(from as u32, (fd - 1) as u32, 0) })?;
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    pid::check(unsafe { libc::close_range(from as u32, u32::MAX, 0) })
}

/// Close every descriptor but the pipes and the ones the sandbox will be given (stdio, socket, the init).
fn close_inherited(plan: &ChildPlan, pipes: &ChildPipes) -> Result<(), i32> {
    let mut keep = [-1 as RawFd; 8];
    keep[0] = pipes.go;
    keep[1] = pipes.status;
    keep[2] = pipes.exit;
    if let Some(stdio) = &plan.stdio {
        for (i, fd) in stdio.iter().enumerate() {
            keep[3 + i] = fd.as_raw_fd();
        }
    } else {
        keep[3..6].copy_from_slice(&[0, 1, 2]);
    }
    if let Some(sock) = &plan.socket {
        keep[6] = sock.as_raw_fd();
    }
    keep[7] = plan.init.as_raw_fd();
    keep.sort_unstable();
    let mut from: RawFd = 0;
    for fd in keep {
        if fd < from {
            continue;
        }
        if fd > from {
            // SAFETY: closes a range of inherited descriptors, none of which this process uses.
            pid::check(unsafe { libc::close_range(from as u32, (fd - 1) as u32, 0) })?;
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    pid::check(unsafe { libc::close_range(from as u32, u32::MAX, 0) })
}

fn report_failure(fd: RawFd, step: Step, errno: i32) {
    let (code, sub) = step.code();
    let mut record = [0u8; 12];
    record[0..4].copy_from_slice(&code.to_ne_bytes());
    record[4..8].copy_from_slice(&sub.to_ne_bytes());
    record[8..12].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 12 bytes from a local array; a short write is impossible on a pipe for <= PIPE_BUF bytes.
    unsafe { libc::write(fd, record.as_ptr().cast(), record.len()) };
}

fn write_byte(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: writes one byte from a static.
    let n = unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Read the child's failure record; `None` on end-of-file (execve succeeded and closed the pipe). A child
/// that has done neither by `deadline` (a setup step stuck in the kernel) is an error, not a thread blocked
/// for good: the caller kills it.
fn read_failure(fd: BorrowedFd<'_>, deadline: Instant) -> std::io::Result<Option<(Step, i32)>> {
    let mut record = [0u8; 12];
    let mut got = 0;
    while got < record.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one local pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ready == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the sandbox did not finish its setup in time"));
        }
        // SAFETY: reads into the unfilled tail of a local array.
        let n = unsafe { libc::read(fd.as_raw_fd(), record[got..].as_mut_ptr().cast(), record.len() - got) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    if got < record.len() {
        return Ok(None);
    }
    let word = |i: usize| u32::from_ne_bytes(record[i..i + 4].try_into().expect("4 bytes"));
    Ok(Some((Step::from_code(word(0), word(4)), word(8) as i32)))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_neither_execs_nor_fails_times_out() {
        let (r, w) = pipe().expect("pipe");
        let err = read_failure(r.as_fd(), Instant::now() + Duration::from_millis(100)).expect_err("no record, no end-of-file");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // End-of-file (the child's execve closed its end): success.
        drop(w);
        assert!(read_failure(r.as_fd(), Instant::now() + Duration::from_secs(5)).expect("end-of-file").is_none());
    }

    #[test]
    fn a_failure_record_is_read_whole() {
        let (r, w) = pipe().expect("pipe");
        report_failure(w.as_raw_fd(), Step::Hostname, libc::EPERM);
        drop(w);
        let got = read_failure(r.as_fd(), Instant::now() + Duration::from_secs(5)).expect("read");
        assert!(matches!(got, Some((Step::Hostname, e)) if e == libc::EPERM), "{got:?}");
    }
}
