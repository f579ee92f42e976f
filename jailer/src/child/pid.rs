//! Child side of the PID namespace: die with the supervisor, a session and signals of our own, and, as PID 1
//! once the command is forked, the exec of the init program (`jailer/init/init.c`) from the sealed memfd
//! the parent made ([`crate::pid::InitProgram`]).

use std::os::fd::RawFd;

use super::{check, errno};
use crate::pid::INIT_FD;

/// SIGKILL us when the thread that cloned us exits, so that no sandbox outlives its supervisor.
pub(super) fn die_with_parent() -> Result<(), i32> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes an integer signal number and touches no memory.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) })
}

/// A new session, so that the sandbox has no controlling terminal of the host's.
pub(super) fn new_session() -> Result<(), i32> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })
}

/// An empty signal mask and default dispositions for the signals a supervisor may have changed (Rust ignores
/// SIGPIPE; the daemon blocks SIGTERM and SIGINT for its signalfd). Ignored dispositions and masks survive
/// execve, handlers do not.
pub(super) fn reset_signals() -> Result<(), i32> {
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

/// Fork (a raw clone with SIGCHLD), returning 0 in the child and its pid in the parent.
pub(super) fn fork() -> Result<i32, i32> {
    // SAFETY: a raw clone without CLONE_VM behaves like fork; both sides continue with copies of this stack.
    let rc = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc as i32)
    }
}

/// PID 1 of the sandbox once it has forked `command`: close every descriptor but the exit report, the status
/// pipe (close-on-exec: its closing tells the parent the exec succeeded) and INIT_FD, and exec the init
/// program there as `taskcell-init COMMAND REPORT_FD`, with an empty environment. PID 1 thereby drops its copy
/// of the daemon's memory. Returns only on failure, with the errno. No allocation: the numbers are written
/// into buffers on this stack.
pub(super) fn exec_init(command: i32, report: RawFd, status: RawFd) -> i32 {
    let mut keep = [report, status, INIT_FD];
    keep.sort_unstable();
    let mut from = 0;
    for fd in keep {
        if fd > from {
            // SAFETY: closes descriptors that neither the init nor the exec uses.
            unsafe { libc::close_range(from as u32, (fd - 1) as u32, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::close_range(from as u32, u32::MAX, 0) };
    // The report must survive the exec (the pipe was made close-on-exec for the command's sake).
    // SAFETY: F_SETFD with 0 on a descriptor this process holds.
    if unsafe { libc::fcntl(report, libc::F_SETFD, 0) } < 0 {
        return errno();
    }
    let mut pid_text = [0u8; 24];
    let mut fd_text = [0u8; 24];
    decimal(command as u64, &mut pid_text);
    decimal(report as u64, &mut fd_text);
    let argv = [c"taskcell-init".as_ptr(), pid_text.as_ptr().cast(), fd_text.as_ptr().cast(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated strings on this stack or static;
    // AT_EMPTY_PATH with "" execs the descriptor itself.
    unsafe { libc::syscall(libc::SYS_execveat, INIT_FD, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH) };
    errno()
}

/// `n` in decimal, NUL-terminated, into `out` (24 bytes hold any u64).
fn decimal(mut n: u64, out: &mut [u8; 24]) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[i] = digits[len - 1 - i];
    }
    out[len] = 0;
}
