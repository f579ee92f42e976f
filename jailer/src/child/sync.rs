//! Child side of the pipes to the parent: wait for its release on `go`, notice its death, and report a
//! failed step on `status` (the record of [`crate::record`]).

use std::os::fd::RawFd;

use super::errno;
use crate::plan::ChildPipes;
use crate::record::{self, Step};

/// Block until the parent writes its one byte on `go` (our maps and cgroup are in place); end-of-file means
/// that the parent died first.
pub(super) fn await_parent(pipes: &ChildPipes) -> Result<(), i32> {
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
        if errno() != libc::EINTR {
            return Err(errno());
        }
    }
}

/// The parent holds its end of `go` until it has read our status: a hang-up on ours means it died.
pub(super) fn parent_alive(pipes: &ChildPipes) -> Result<(), i32> {
    let mut fd = libc::pollfd { fd: pipes.go, events: libc::POLLIN, revents: 0 };
    // SAFETY: polls one local pollfd without waiting.
    unsafe { libc::poll(&mut fd, 1, 0) };
    if fd.revents & libc::POLLHUP != 0 {
        return Err(libc::EPIPE);
    }
    Ok(())
}

/// Write the failure record for `step` and `errno` to the status pipe `fd`, in one write from the stack.
pub(crate) fn report_failure(fd: RawFd, step: Step, errno: i32) {
    let record = record::encode(step, errno);
    // SAFETY: writes 12 bytes from a local array; a short write is impossible on a pipe for <= PIPE_BUF bytes.
    unsafe { libc::write(fd, record.as_ptr().cast(), record.len()) };
}
