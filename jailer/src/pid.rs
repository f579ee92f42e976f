//! The PID namespace and the process's place in it.
//!
//! The sandbox's first process is PID 1 of a new PID namespace (created by the `clone` in [`crate::spawn`]): when
//! it dies the kernel kills every other process of the namespace, so killing one pidfd ends the whole sandbox.
//! Child side: die with the supervisor thread, and start a new session. Parent side: signals and exit status
//! through the pidfd, never through a pid that could be reused.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Child side: SIGKILL us when the thread that cloned us exits, so that no sandbox outlives its supervisor.
pub fn die_with_parent() -> Result<(), i32> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes an integer signal number and touches no memory.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) })
}

/// Child side: a new session, so that the sandbox has no controlling terminal of the host's.
pub fn new_session() -> Result<(), i32> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })
}

/// Child side: an empty signal mask and default dispositions for the signals a supervisor may have changed
/// (Rust ignores SIGPIPE; the daemon blocks SIGTERM and SIGINT for its signalfd). Ignored dispositions and
/// masks survive execve, handlers do not.
pub fn reset_signals() -> Result<(), i32> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before sigprocmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()))?;
    }
    for sig in [libc::SIGPIPE, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal.
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(errno());
        }
    }
    Ok(())
}

/// Parent side: send `sig` to the process behind `pidfd` (a no-op once it has exited).
pub fn signal(pidfd: BorrowedFd<'_>, sig: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd, a null siginfo and flags 0.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// How a process ended, as `waitid` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signaled(i32),
}

impl Status {
    /// The shell's convention: the exit code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Status::Exited(c) => c,
            Status::Signaled(s) => 128 + s,
        }
    }
}

/// Parent side: reap the process behind `pidfd`. With `block` false, returns `Ok(None)` while it still runs.
pub fn wait(pidfd: BorrowedFd<'_>, block: bool) -> std::io::Result<Option<Status>> {
    loop {
        // SAFETY: `info` is a local siginfo_t the kernel fills; P_PIDFD takes the descriptor as the id.
        let (rc, info) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
            let rc = libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, flags);
            (rc, info)
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid filled `info` for a child state change (si_pid 0 means none yet, with WNOHANG).
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match code {
            libc::CLD_EXITED => Status::Exited(status),
            _ => Status::Signaled(status),
        }));
    }
}

pub(crate) fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
