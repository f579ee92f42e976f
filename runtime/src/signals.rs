//! Signals as a descriptor: the given signals are blocked in this thread (and every thread it starts later)
//! and read from a signalfd instead, so that `jail`'s poll and the daemon's event loop see them as events.

use std::os::fd::{FromRawFd, OwnedFd};

/// Block `signals` and return a close-on-exec, non-blocking signalfd for them. Call before starting threads.
pub fn block(signals: &[i32]) -> std::io::Result<OwnedFd> {
    // SAFETY: `set` is a local sigset_t initialised before use; signalfd returns a new descriptor we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in signals {
            libc::sigaddset(&mut set, *sig);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
