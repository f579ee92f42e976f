//! The PID namespace and the process's place in it.
//!
//! The sandbox's first process is PID 1 of a new PID namespace (created by the `clone` in [`crate::spawn`]): when
//! it dies the kernel kills every other process of the namespace, so killing one pidfd ends the whole sandbox.
//! It forks the command, which is then an ordinary process that its own signals can kill, and execs the init
//! program (`jailer/init/init.c`, reaping orphans and reporting the command's status) from a sealed memfd, so
//! that the process that lives as long as the sandbox holds no copy of the daemon's memory. Child side: die
//! with the supervisor thread, start a new session, exec the init. Parent side: the init's memfd, signals and
//! exit status through the pidfd, never through a pid that could be reused.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// The descriptor number at which a sandbox's PID 1 finds the init program to exec: the one `execveat` that the
/// seccomp policy allows (`policies/sandbox.json`, filter `refuse`, names this number). Above the command's 0-3,
/// and below 10, where every descriptor the child is given is first lifted, so that nothing else is ever here.
pub const INIT_FD: RawFd = 4;

/// The init program, built from `jailer/init/init.c` by `jailer/build.rs`: a static executable that reaps the
/// sandbox's processes and reports the command's status, and nothing else.
static INIT_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/taskcell-init"));

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{what} for the sandbox's init program")]
    Memfd { what: &'static str, source: std::io::Error },
}

/// Parent side: the init program in a sealed memfd, made once per jailer and exec'd by the PID 1 of every
/// sandbox. Sealed against writing, shrinking and growing, so that no holder of the descriptor can change what
/// the next sandbox runs; mode 0111 (execute only): a process that cannot read its program is not dumpable, so
/// that the sandbox's own processes (the same uid) can neither ptrace it nor open its `/proc/1/mem`.
pub struct InitProgram {
    fd: OwnedFd,
}

impl InitProgram {
    pub fn load() -> Result<InitProgram, InitError> {
        let fail = |what| move |source| InitError::Memfd { what, source };
        let fd = memfd(c"taskcell-init").map_err(fail("memfd_create"))?;
        let mut written = 0;
        while written < INIT_PROGRAM.len() {
            let rest = &INIT_PROGRAM[written..];
            // SAFETY: writes from a static byte slice to a descriptor we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(fail("writing a memfd")(err));
            }
            written += n as usize;
        }
        // SAFETY: fchmod of a descriptor we own.
        if unsafe { libc::fchmod(fd.as_raw_fd(), 0o111) } < 0 {
            return Err(fail("fchmod of a memfd")(std::io::Error::last_os_error()));
        }
        const F_SEAL_EXEC: libc::c_int = 0x20;
        let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: F_ADD_SEALS takes an integer; F_SEAL_EXEC (Linux 6.3+, which also fixes the mode's exec bits)
        // is tried first, then the seals every kernel with memfds knows.
        let rc = unsafe {
            let rc = libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals | F_SEAL_EXEC);
            if rc < 0 && errno() == libc::EINVAL {
                libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals)
            } else {
                rc
            }
        };
        if rc < 0 {
            return Err(fail("sealing a memfd")(std::io::Error::last_os_error()));
        }
        // Lifted to 10 and above, as every descriptor the child is given: INIT_FD is never taken.
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one that we then own.
        let lifted = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if lifted < 0 {
            return Err(fail("fcntl(F_DUPFD_CLOEXEC)")(std::io::Error::last_os_error()));
        }
        // SAFETY: `lifted` was just returned by fcntl and is owned by nobody else.
        Ok(InitProgram { fd: unsafe { OwnedFd::from_raw_fd(lifted) } })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A close-on-exec memfd that may be sealed, executable where the kernel asks to be told (Linux 6.3+ warns
/// about, and with `vm.memfd_noexec` = 2 refuses, an executable memfd made without MFD_EXEC).
fn memfd(name: &std::ffi::CStr) -> std::io::Result<OwnedFd> {
    const MFD_EXEC: libc::c_uint = 0x10;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; an older kernel refuses MFD_EXEC with EINVAL.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if fd < 0 && errno() == libc::EINVAL {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Child side, PID 1 of the sandbox once it has forked `command`: close every descriptor but the exit report,
/// the status pipe (close-on-exec: its closing tells the parent the exec succeeded) and INIT_FD, and exec the
/// init program there as `taskcell-init COMMAND REPORT_FD`, with an empty environment. PID 1 thereby drops its
/// copy of the daemon's memory. Returns only on failure, with the errno. No allocation: the numbers are
/// written into buffers on this stack.
pub fn exec_init(command: i32, report: RawFd, status: RawFd) -> i32 {
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
