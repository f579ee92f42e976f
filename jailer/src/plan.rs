//! What the child of the fork reads: the plan the parent prepares for each sandbox, and the child's ends of
//! the pipes.
//!
//! Parent side, before the fork, and free to allocate: every C string (argv, the fixed minimal envp), the
//! rlimits, the stdio, socket and cgroup descriptors lifted to 10 and above (so that moving them to 0-4 in the child
//! can never overwrite one another), and references to what is prepared once per jailer (the mount plan, the
//! init program, the namespace limits). The child ([`crate::child`]) only borrows it, and allocates nothing.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg};

use crate::mount::MountPlan;
use crate::spawn::{JailError, JailerConfig, SandboxSpec, Stdio, BASE_ENV, RLIMIT_MEMLOCK, RLIMIT_SIGPENDING};
use crate::user::NamespaceLimits;

/// Everything the child reads, prepared by the parent; the child only borrows it.
pub(crate) struct ChildPlan<'a> {
    pub(crate) hostname: Vec<u8>,
    pub(crate) mounts: &'a MountPlan,
    pub(crate) rlimits: [(libc::__rlimit_resource_t, u64); 6],
    pub(crate) stdio: Option<[OwnedFd; 3]>,
    pub(crate) socket: Option<OwnedFd>,
    pub(crate) last_cap: u32,
    pub(crate) path: CString,
    _argv: Vec<CString>,
    _env: Vec<CString>,
    pub(crate) argv_ptrs: Vec<*const libc::c_char>,
    pub(crate) env_ptrs: Vec<*const libc::c_char>,
    /// The init program's sealed memfd (lifted to 10 and above), which the child moves to [`crate::pid::INIT_FD`].
    pub(crate) init: BorrowedFd<'a>,
    pub(crate) ns_limits: &'a NamespaceLimits,
    pub(crate) slice_ns: Option<u64>,
    /// On cgroup v1, the sandbox cgroup's `tasks` file in each hierarchy, which the child writes "0" to
    /// (see [`crate::cgroup::Cgroup::join_files`]) and closes at once; empty when it is placed otherwise.
    pub(crate) cgroup_tasks: Vec<OwnedFd>,
}

/// What a [`ChildPlan`] borrows from its jailer: prepared once, the same for every sandbox.
pub(crate) struct Shared<'a> {
    pub(crate) config: &'a JailerConfig,
    pub(crate) mounts: &'a MountPlan,
    pub(crate) init: BorrowedFd<'a>,
    pub(crate) ns_limits: &'a NamespaceLimits,
    pub(crate) last_cap: u32,
}

impl<'a> ChildPlan<'a> {
    pub(crate) fn new(shared: Shared<'a>, spec: SandboxSpec, cgroup_tasks: Vec<OwnedFd>) -> Result<ChildPlan<'a>, JailError> {
        if spec.argv.is_empty() {
            return Err(JailError::NoCommand);
        }
        let config = shared.config;
        let cstr = |s: &str| CString::new(s).map_err(|_| JailError::Nul);
        let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
        let mut env: Vec<CString> = BASE_ENV.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?;
        for e in &spec.env {
            env.push(cstr(e)?);
        }
        // Descriptors the child moves to 0-3 are first lifted to 10 and above, so that moving one can never
        // overwrite another still to be moved.
        let lift_owned = |fd: OwnedFd| lift(fd.as_fd()).map_err(|source| JailError::Os { what: "fcntl(F_DUPFD_CLOEXEC)", source });
        let stdio = match spec.stdio {
            Stdio::Inherit => None,
            Stdio::Fds([a, b, c]) => Some([lift_owned(a)?, lift_owned(b)?, lift_owned(c)?]),
        };
        let socket = spec.socket.map(lift_owned).transpose()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let rlimits = [
            // 1, not 0: the one value for which the kernel also skips piping the dump to the host's crash
            // handler (core_pattern "|apport", "|systemd-coredump"); no file dump fits in a byte. Hard limit
            // too, which nothing without CAP_SYS_RESOURCE in the host's namespace can raise again.
            (libc::RLIMIT_CORE, 1),
            (libc::RLIMIT_NOFILE, config.max_files),
            (libc::RLIMIT_FSIZE, config.max_file_size),
            // Counted per user and charged up to the host's root (the namespace's creator) too.
            (libc::RLIMIT_SIGPENDING, RLIMIT_SIGPENDING),
            (libc::RLIMIT_MSGQUEUE, 0),
            (libc::RLIMIT_MEMLOCK, RLIMIT_MEMLOCK),
        ];
        Ok(ChildPlan {
            hostname: config.hostname.clone().into_bytes(),
            mounts: shared.mounts,
            rlimits,
            stdio,
            socket,
            last_cap: shared.last_cap,
            path: argv[0].clone(),
            _argv: argv,
            _env: env,
            argv_ptrs,
            env_ptrs,
            init: shared.init,
            ns_limits: shared.ns_limits,
            slice_ns: config.slice_ns,
            cgroup_tasks,
        })
    }
}

/// The child's ends of the pipes: it reads `go` (the parent's release), writes `status` (a failure) and,
/// as the init, `exit`. It closes its copies of the parent's ends first thing (`close_inherited`), so that the
/// parent's death reads as a hang-up on `go`.
pub(crate) struct ChildPipes {
    pub(crate) go: RawFd,
    pub(crate) status: RawFd,
    /// The init's report of the command's wait status (close-on-exec: the command never holds it).
    pub(crate) exit: RawFd,
}

/// A copy of `fd` at a close-on-exec descriptor numbered 10 or above: clear of the numbers 0-4 that the child
/// moves descriptors to. Dropping the original (the caller's `OwnedFd`) closes it.
pub(crate) fn lift(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let new = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // nix 0.30 returns the new descriptor as a bare number.
    // SAFETY: `new` was just returned by F_DUPFD_CLOEXEC, a descriptor nobody else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new) })
}
