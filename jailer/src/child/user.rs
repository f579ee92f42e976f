//! Child side of the user namespace: take on the mapped ids the parent wrote (`crate::user::write_maps`),
//! and cap what the namespace may count against the host's root ([`crate::user::NamespaceLimits`]).

use super::{check, errno};
use crate::user::{NamespaceLimits, INSIDE_ID};

/// Become INSIDE_ID. The first process of a user namespace keeps its capabilities across this change (the
/// namespace's root uid is unmapped, so the kernel's "root lost" rule does not apply), which the mount steps
/// that follow need; they are dropped explicitly later.
///
/// Raw system calls, not the libc functions: glibc's setresuid/setresgid broadcast the change to every thread
/// it knows of, and in a child forked from a threaded process those threads do not exist, so the wrapper
/// would wait for them forever.
pub(super) fn become_sandbox_user() -> Result<(), i32> {
    let id = INSIDE_ID as libc::c_long;
    // SAFETY: the raw setresgid syscall takes integers only and affects only this (single-threaded) process.
    check(unsafe { libc::syscall(libc::SYS_setresgid, id, id, id) } as libc::c_int)?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresuid, id, id, id) } as libc::c_int)
}

/// After the last namespace of the sandbox is made (the cgroup namespace) and before the capabilities are
/// dropped: write each limit into `/proc/sys/user/` (whose files are those of the opener's namespace).
/// Files this kernel does not have are skipped.
pub(super) fn apply_namespace_limits(limits: &NamespaceLimits) -> Result<(), i32> {
    for (path, value) in &limits.files {
        // SAFETY: opens a NUL-terminated path prepared before the fork.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            if errno() == libc::ENOENT {
                continue;
            }
            return Err(errno());
        }
        let bytes = value.as_bytes();
        // SAFETY: writes the value's bytes, owned by the plan, to the descriptor just opened.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        let err = errno();
        // SAFETY: closes the descriptor opened above, which nothing else uses.
        unsafe { libc::close(fd) };
        if n != bytes.len() as isize {
            return Err(if n < 0 { err } else { libc::EIO });
        }
    }
    Ok(())
}
