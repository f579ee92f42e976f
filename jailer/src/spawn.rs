//! Making a sandbox: the parent's side of the fork.
//!
//! The parent prepares everything (the cgroup with its limits, then the [`crate::plan`]: paths, argv, envp,
//! descriptors) and clones the child ([`crate::child`]) into new user, mount, network, PID, IPC and UTS
//! namespaces. The child runs the one ordered recipe, which makes only system calls, while the parent writes
//! its maps, moves it into its cgroup (unless it was born there, or joins it itself on v1), releases it and
//! reads its status pipe: a fixed-size failure record ([`crate::record`]) or end-of-file, which means
//! `execve` succeeded.
//!
//! docs/jailer.md lists the same steps in the same order.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::cgroup::{CgroupError, CgroupRoot, Limits};
use crate::mount::{BindRo, MountError, MountPlan};
use crate::plan::{lift, ChildPipes, ChildPlan, Shared};
use crate::rootfs::{self, RootfsError};
use crate::sandbox::Sandbox;
use crate::user::{self, UserError};
use crate::{caps, child, pid, record, sched};

pub use crate::record::{MountStepCode, Step};

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
        // The cgroup exists, limited, before the child does: it is in it before it runs a line of the sandbox's.
        let cgroup = self.cgroups.sandbox(&format!("sb-{n}"), &limits)?;
        let shared = Shared {
            config: &self.config,
            mounts: &self.mounts,
            init: self.init.fd(),
            ns_limits: &self.ns_limits,
            last_cap: self.last_cap,
        };
        // On v1 the child joins the cgroup itself (see `Cgroup::join_files`); on v2 it is born there.
        let cgroup_tasks = match cgroup.join_files() {
            Ok(files) => files,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e.into());
            }
        };
        let plan = ChildPlan::new(shared, spec, cgroup_tasks)?;
        // The child's ends lifted to 10 and above, as every descriptor it is given: none can sit where the child
        // moves its stdio, socket and init program (0-4).
        let (go_r, go_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let lift_owned = |fd: OwnedFd| lift(fd.as_fd()).map_err(|source| JailError::Os { what: "fcntl(F_DUPFD_CLOEXEC)", source });
        let (go_r, status_w, exit_w) = (lift_owned(go_r)?, lift_owned(status_w)?, lift_owned(exit_w)?);
        let pipes = ChildPipes { go: go_r.as_raw_fd(), status: status_w.as_raw_fd(), exit: exit_w.as_raw_fd() };
        let cgroup_dir = cgroup.clone_target();
        let (pid, pidfd, born_in_cgroup) = match child::clone_child(&plan, &pipes, cgroup_dir.as_ref().map(|d| d.as_fd())) {
            Ok(v) => v,
            Err(source) => {
                let _ = cgroup.remove();
                return Err(JailError::Os { what: "clone", source });
            }
        };
        drop(cgroup_dir);
        // The child's ends: ours must be closed so that end-of-file means what it should on both sides.
        drop((go_r, status_w, exit_w));
        let mut sandbox = Sandbox { pid, host_uid: 0, pidfd, exit_report: exit_r, cgroup: Some(cgroup), exit: None };
        let placed = born_in_cgroup || !plan.cgroup_tasks.is_empty();
        let outcome = self.finish_parent_side(go_w, status_r, &mut sandbox, placed);
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

    /// `placed`: the child was born in its cgroup or joins it itself; otherwise the parent moves it there.
    fn finish_parent_side(&self, go_w: OwnedFd, status_r: OwnedFd, sandbox: &mut Sandbox, placed: bool) -> Result<(), JailError> {
        let host = user::host_id(self.config.uid_base, sandbox.pid)?;
        sandbox.host_uid = host;
        user::write_maps(sandbox.pid, host)?;
        if let Some(adj) = self.config.oom_score_adj {
            let path = format!("/proc/{}/oom_score_adj", sandbox.pid);
            std::fs::write(&path, adj.to_string()).map_err(|source| JailError::Os { what: "writing oom_score_adj", source })?;
        }
        if !placed {
            sandbox.cgroup.as_ref().expect("set above").attach(sandbox.pid)?;
        }
        // Release the child, then learn whether it reached execve.
        write_byte(go_w.as_fd()).map_err(|source| JailError::Os { what: "releasing the sandbox", source })?;
        read_failure(status_r.as_fd(), Instant::now() + SETUP_TIMEOUT)
            .map_err(|source| JailError::Os { what: "reading the sandbox's setup status", source })?
            .map_or(Ok(()), |(step, errno)| Err(JailError::Child { step, errno }))
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| JailError::Os { what: "pipe2", source: e.into() })
}

fn write_byte(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    match nix::unistd::write(fd, &[1u8]) {
        Ok(1) => Ok(()),
        Ok(_) => Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
        Err(e) => Err(e.into()),
    }
}

/// Read the child's failure record; `None` on end-of-file (execve succeeded and closed the pipe). A child
/// that has done neither by `deadline` (a setup step stuck in the kernel) is an error, not a thread blocked
/// for good: the caller kills it.
fn read_failure(fd: BorrowedFd<'_>, deadline: Instant) -> std::io::Result<Option<(Step, i32)>> {
    let mut record = [0u8; record::LEN];
    let mut got = 0;
    while got < record.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(millis).expect("0..=i32::MAX milliseconds");
        let ready = match nix::poll::poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], timeout) {
            Ok(ready) => ready,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if ready == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the sandbox did not finish its setup in time"));
        }
        let n = match nix::unistd::read(fd, &mut record[got..]) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        got += n;
    }
    if got < record.len() {
        return Ok(None);
    }
    Ok(Some(record::decode(&record)))
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
        child::report_failure(w.as_raw_fd(), Step::Hostname, libc::EPERM);
        drop(w);
        let got = read_failure(r.as_fd(), Instant::now() + Duration::from_secs(5)).expect("read");
        assert!(matches!(got, Some((Step::Hostname, e)) if e == libc::EPERM), "{got:?}");
    }
}
