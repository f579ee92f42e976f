//! Child side of the descriptors: let go of what the supervisor held, then put stdio, the daemon's socket and
//! the init program where the sandbox expects them (0-4), and close the rest.

use std::os::fd::{AsRawFd, RawFd};

use super::check;
use crate::pid::INIT_FD;
use crate::plan::{ChildPipes, ChildPlan};

/// Close every descriptor but the pipes, the ones the sandbox will be given (stdio, socket, the init) and the
/// cgroup `tasks` files that the next steps write and close (v1 has three hierarchies: memory, pids, cpu).
pub(super) fn close_inherited(plan: &ChildPlan, pipes: &ChildPipes) -> Result<(), i32> {
    let mut keep = [-1 as RawFd; 11];
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
    for (slot, fd) in keep[8..].iter_mut().zip(&plan.cgroup_tasks) {
        *slot = fd.as_raw_fd();
    }
    keep.sort_unstable();
    let mut from: RawFd = 0;
    for fd in keep {
        if fd < from {
            continue;
        }
        if fd > from {
            // SAFETY: closes a range of inherited descriptors, none of which this process uses.
            check(unsafe { libc::close_range(from as u32, (fd - 1) as u32, 0) })?;
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    check(unsafe { libc::close_range(from as u32, u32::MAX, 0) })
}

/// Stdio to 0-2, the socket to 3, the init program to [`INIT_FD`]; everything else closed but the status and
/// exit pipes.
pub(super) fn arrange_fds(plan: &ChildPlan, status_fd: RawFd, exit_fd: RawFd) -> Result<(), i32> {
    if let Some(stdio) = &plan.stdio {
        for (target, fd) in stdio.iter().enumerate() {
            // SAFETY: dup2 between descriptors this process holds; targets 0-2 are ours to replace.
            check(unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) })?;
        }
    }
    let mut keep_from = 3;
    if let Some(sock) = &plan.socket {
        // SAFETY: as above; fd 3 is ours to replace (every source was lifted to 10 or above).
        check(unsafe { libc::dup2(sock.as_raw_fd(), 3) })?;
        keep_from = 4;
    }
    // The init program where PID 1's execveat (the only one the policy allows) expects it; close-on-exec, so
    // that the command never holds it. Nothing else is at INIT_FD: every source was lifted to 10 or above.
    // SAFETY: dup3 between descriptors this process holds.
    check(unsafe { libc::dup3(plan.init.as_raw_fd(), INIT_FD, libc::O_CLOEXEC) })?;
    // Close everything from keep_from up, except INIT_FD and the status and exit pipes, all close-on-exec: the
    // command's copies close exactly when its execve succeeds; the init keeps the exit pipe.
    let mut keep = [status_fd, exit_fd, INIT_FD];
    keep.sort_unstable();
    let mut from = keep_from;
    for fd in keep {
        if fd > from {
            // SAFETY: closes a range of descriptors none of which is used afterwards.
            check(unsafe { libc::close_range(from as u32, (fd - 1) as u32, 0) })?;
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    check(unsafe { libc::close_range(from as u32, u32::MAX, 0) })
}
