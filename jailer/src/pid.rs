//! The PID namespace and the process's place in it.
//!
//! The sandbox's first process is PID 1 of a new PID namespace (created by the `clone` in [`crate::spawn`]): when
//! it dies the kernel kills every other process of the namespace, so killing one pidfd ends the whole sandbox.
//! It stays behind as a minimal init (reaping orphans, reporting the command's status) and forks the command,
//! which is then an ordinary process that its own signals can kill. Child side: die with the supervisor
//! thread, start a new session, the init. Parent side: signals and exit status through the pidfd, never
//! through a pid that could be reused.

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

/// Child side: fork (a raw clone with SIGCHLD), returning 0 in the child and its pid in the parent.
pub fn fork() -> Result<i32, i32> {
    // SAFETY: a raw clone without CLONE_VM behaves like fork; both sides continue with copies of this stack.
    let rc = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc as i32)
    }
}

/// Where this process's argv and environment strings live (from /proc/self/stat), so that the sandbox's
/// init, a copy of this process, can blank them: /proc/1/cmdline is readable inside the sandbox and must not
/// show the daemon's command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArgsArea {
    start: usize,
    end: usize,
}

impl ArgsArea {
    pub fn of_self() -> ArgsArea {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name in parentheses (which may hold spaces): arg_start is field 48,
        // env_end field 51 (1-based), that is the 46th and 49th after the ")".
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<usize> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
        match (fields.get(45), fields.get(48)) {
            (Some(&start), Some(&end)) if start > 0 && end > start && end - start < (1 << 20) => ArgsArea { start, end },
            _ => ArgsArea::default(),
        }
    }
}

/// Child side, PID 1 of the sandbox: reap every child until `command` exits, write its wait status to
/// `report`, and exit (which ends the PID namespace and everything left in it). Never returns.
pub fn run_init(command: i32, report: i32, status_pipe: i32, args: ArgsArea) -> ! {
    // SAFETY: blanks this process's own argv/environment strings, a range of its own writable memory found
    // from /proc/self/stat before the fork; then closes descriptors the init does not use (the command keeps
    // its own copies); then only wait4, write and _exit, on locals.
    unsafe {
        if args.end > args.start {
            std::ptr::write_bytes(args.start as *mut u8, 0, args.end - args.start);
            let name = b"taskcell-init";
            if args.end - args.start > name.len() {
                std::ptr::copy_nonoverlapping(name.as_ptr(), args.start as *mut u8, name.len());
            }
        }
        libc::close_range(0, (report - 1).max(0) as u32, 0);
        libc::close_range((report + 1) as u32, u32::MAX, 0);
        let _ = status_pipe; // closed above: the command's copy alone tells the parent whether exec worked
        loop {
            let mut status: libc::c_int = 0;
            let pid = libc::wait4(-1, &mut status, libc::__WALL, std::ptr::null_mut());
            if pid == command {
                libc::write(report, (&status as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>());
                libc::_exit(0);
            }
            if pid < 0 && errno() != libc::EINTR {
                libc::_exit(0);
            }
        }
    }
}

/// Parent side: the wait status the sandbox's init reported for its command, if it did.
pub fn read_reported_status(fd: BorrowedFd<'_>) -> Option<Status> {
    let mut raw: libc::c_int = 0;
    // SAFETY: a non-blocking read of at most 4 bytes into a local; the init exited, so the pipe has no writer.
    let n = unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::read(fd.as_raw_fd(), (&mut raw as *mut libc::c_int).cast(), std::mem::size_of::<libc::c_int>())
    };
    if n != std::mem::size_of::<libc::c_int>() as isize {
        return None;
    }
    if libc::WIFEXITED(raw) {
        Some(Status::Exited(libc::WEXITSTATUS(raw)))
    } else if libc::WIFSIGNALED(raw) {
        Some(Status::Signaled(libc::WTERMSIG(raw)))
    } else {
        None
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
