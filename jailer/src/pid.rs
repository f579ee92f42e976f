//! The PID namespace and the process's place in it: the parent's side.
//!
//! The sandbox's first process is PID 1 of a new PID namespace (created by the `clone` in [`crate::child`]):
//! when it dies the kernel kills every other process of the namespace, so killing one pidfd ends the whole
//! sandbox. It forks the command, which is then an ordinary process that its own signals can kill, and execs
//! the init program (`jailer/init/init.c`, reaping orphans and reporting the command's status) from a sealed
//! memfd, so that the process that lives as long as the sandbox holds no copy of the daemon's memory. Here:
//! the init's memfd, signals and exit status through the pidfd, never through a pid that could be reused.
//! The child's half (die with the supervisor, a new session, the exec of the init) is `child/pid.rs`.

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::{fchmod, Mode};

/// Send `sig` to the process behind `pidfd` (a no-op once it has exited).
pub fn signal(pidfd: BorrowedFd<'_>, sig: i32) -> std::io::Result<()> {
    // Raw: nix has no pidfd_send_signal.
    // SAFETY: pidfd_send_signal with a pidfd borrowed for the call, a null siginfo and flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) };
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

/// Reap the process behind `pidfd`. With `block` false, returns `Ok(None)` while it still runs.
///
/// Raw waitid rather than nix's: nix turns a death by a signal its `Signal` enum lacks (a real-time one)
/// into EINVAL after the kernel has reaped the process, and the status would be lost.
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

/// The init program in a sealed memfd, made once per jailer and exec'd by the PID 1 of every sandbox. Sealed
/// against writing, shrinking and growing, so that no holder of the descriptor can change what the next
/// sandbox runs; mode 0111 (execute only): a process that cannot read its program is not dumpable, so that
/// the sandbox's own processes (the same uid) can neither ptrace it nor open its `/proc/1/mem`.
pub struct InitProgram {
    fd: OwnedFd,
}

impl InitProgram {
    pub fn load() -> Result<InitProgram, InitError> {
        let fail = |what| move |source| InitError::Memfd { what, source };
        let fd = memfd(c"taskcell-init").map_err(fail("memfd_create"))?;
        // write_all retries EINTR and short writes.
        let mut file = std::fs::File::from(fd);
        file.write_all(INIT_PROGRAM).map_err(fail("writing a memfd"))?;
        let fd = OwnedFd::from(file);
        fchmod(&fd, Mode::from_bits_truncate(0o111)).map_err(|e| fail("fchmod of a memfd")(e.into()))?;
        // F_SEAL_EXEC (Linux 6.3+, which also fixes the mode's exec bits) is tried first, then the seals every
        // kernel with memfds knows. nix names no F_SEAL_EXEC: its bit, as the kernel defines it.
        const F_SEAL_EXEC: SealFlag = SealFlag::from_bits_retain(0x20);
        let seals = SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        let sealed = match fcntl(&fd, FcntlArg::F_ADD_SEALS(seals | F_SEAL_EXEC)) {
            Err(nix::errno::Errno::EINVAL) => fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)),
            other => other,
        };
        sealed.map_err(|e| fail("sealing a memfd")(e.into()))?;
        // Lifted to 10 and above, as every descriptor the child is given: INIT_FD is never taken.
        let lifted = crate::plan::lift(fd.as_fd()).map_err(fail("fcntl(F_DUPFD_CLOEXEC)"))?;
        Ok(InitProgram { fd: lifted })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A close-on-exec memfd that may be sealed, executable where the kernel asks to be told (Linux 6.3+ warns
/// about, and with `vm.memfd_noexec` = 2 refuses, an executable memfd made without MFD_EXEC).
fn memfd(name: &std::ffi::CStr) -> std::io::Result<OwnedFd> {
    // nix names no MFD_EXEC: its bit, as the kernel defines it. An older kernel refuses it with EINVAL.
    const MFD_EXEC: MFdFlags = MFdFlags::from_bits_retain(0x10);
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    match memfd_create(name, flags | MFD_EXEC) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(name, flags),
        other => other,
    }
    .map_err(std::io::Error::from)
}

/// The wait status the sandbox's init reported for its command, if it did.
pub fn read_reported_status(fd: BorrowedFd<'_>) -> Option<Status> {
    // Non-blocking: the init exited, so the pipe has no writer, but a status it never wrote must not block.
    let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut raw = [0u8; std::mem::size_of::<libc::c_int>()];
    if nix::unistd::read(fd, &mut raw) != Ok(raw.len()) {
        return None;
    }
    let raw = libc::c_int::from_ne_bytes(raw);
    if libc::WIFEXITED(raw) {
        Some(Status::Exited(libc::WEXITSTATUS(raw)))
    } else if libc::WIFSIGNALED(raw) {
        Some(Status::Signaled(libc::WTERMSIG(raw)))
    } else {
        None
    }
}
