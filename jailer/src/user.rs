//! The user namespace and the sandbox's identity.
//!
//! Each sandbox has a user namespace of its own in which it is uid and gid 1000, mapped to one unprivileged host
//! uid and gid of its own: `uid_base + the host pid of the sandbox's first process`. Host pids are unique among
//! live processes, so two live sandboxes (of this daemon or of any other taskcell on the host) never share a
//! host uid, and no shared allocator is needed. Parent side: deny setgroups, then write the maps. Child side:
//! take on the mapped ids.

use std::path::PathBuf;

/// The uid and gid the sandbox sees.
pub const INSIDE_ID: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("writing {path}")]
    WriteMap { path: PathBuf, source: std::io::Error },
    #[error("host uid {base} + pid {pid} overflows")]
    Range { base: u32, pid: i32 },
}

/// The host uid (and gid) for the sandbox whose first process has host pid `pid`.
pub fn host_id(uid_base: u32, pid: i32) -> Result<u32, UserError> {
    uid_base.checked_add(pid as u32).ok_or(UserError::Range { base: uid_base, pid })
}

/// Parent side: deny setgroups (required before an unprivileged gid map, and it keeps the sandbox from dropping
/// supplementary groups to get around a group-deny permission), then map INSIDE_ID to `host`.
pub fn write_maps(pid: i32, host: u32) -> Result<(), UserError> {
    let line = format!("{INSIDE_ID} {host} 1\n");
    for (file, text) in [("setgroups", "deny"), ("uid_map", line.as_str()), ("gid_map", line.as_str())] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text).map_err(|source| UserError::WriteMap { path, source })?;
    }
    Ok(())
}

/// Child side: become INSIDE_ID. The first process of a user namespace keeps its capabilities across this
/// change (the namespace's root uid is unmapped, so the kernel's "root lost" rule does not apply), which the
/// mount steps that follow need; they are dropped explicitly later.
///
/// Raw system calls, not the libc functions: glibc's setresuid/setresgid broadcast the change to every thread
/// it knows of, and in a child forked from a threaded process those threads do not exist, so the wrapper
/// would wait for them forever.
pub fn become_sandbox_user() -> Result<(), i32> {
    let id = INSIDE_ID as libc::c_long;
    // SAFETY: the raw setresgid syscall takes integers only and affects only this (single-threaded) process.
    crate::pid::check(unsafe { libc::syscall(libc::SYS_setresgid, id, id, id) } as libc::c_int)?;
    // SAFETY: as above.
    crate::pid::check(unsafe { libc::syscall(libc::SYS_setresuid, id, id, id) } as libc::c_int)
}
