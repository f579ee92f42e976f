//! The user namespace and the sandbox's identity.
//!
//! Each sandbox has a user namespace of its own in which it is uid and gid 1000, mapped to one unprivileged host
//! uid and gid of its own: `uid_base + the host pid of the sandbox's first process`. Host pids are unique among
//! live processes, so two live sandboxes (of this daemon or of any other taskcell on the host) never share a
//! host uid, and no shared allocator is needed. Parent side (this file): drop the supervisor's supplementary
//! groups, deny setgroups, write the maps, and prepare the namespace's limits. Child side (`child/user.rs`):
//! take on the mapped ids, and write those limits, capping what the namespace may count against the host's root.
//!
//! The sandbox's user namespace is created by root, so what the kernel counts per user in it (inotify
//! instances and watches, fanotify groups and marks, namespaces; and, through rlimits set in `spawn`, queued
//! signals, message queues, locked memory) is charged to the host's root as well, up the chain of namespaces:
//! without a limit of its own, one tenant could use up root's share for the host and every other sandbox.

use std::ffi::CString;
use std::path::PathBuf;

/// The uid and gid the sandbox sees.
pub const INSIDE_ID: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("writing {path}")]
    WriteMap { path: PathBuf, source: std::io::Error },
    #[error("host uid {base} + pid {pid} overflows")]
    Range { base: u32, pid: i32 },
    #[error("dropping the supplementary groups")]
    DropGroups { source: std::io::Error },
    #[error("this thread still has {count} supplementary groups, which the sandbox would inherit")]
    GroupsLeft { count: i32 },
}

/// Per-user-namespace limits the child writes into `/proc/sys/user/` of its own namespace (the file names the
/// namespace of whoever opens it; the child holds CAP_SYS_RESOURCE there until it drops its capabilities).
/// Node's `fs.watch` takes one inotify instance per event loop (the main thread, each worker that watches) and
/// one watch per file or directory watched. Nothing in a sandbox needs fanotify, and no new namespace of any
/// kind may be made (the seccomp filter refuses the calls too; this holds even if a way around it were found).
/// Files this kernel does not have (max_time_namespaces before 5.6, fanotify before 5.13) are skipped.
pub const NAMESPACE_LIMITS: [(&str, u32); 12] = [
    ("max_inotify_instances", 4),
    ("max_inotify_watches", 1024),
    ("max_fanotify_groups", 0),
    ("max_fanotify_marks", 0),
    ("max_user_namespaces", 0),
    ("max_mnt_namespaces", 0),
    ("max_pid_namespaces", 0),
    ("max_net_namespaces", 0),
    ("max_ipc_namespaces", 0),
    ("max_uts_namespaces", 0),
    ("max_cgroup_namespaces", 0),
    ("max_time_namespaces", 0),
];

/// [`NAMESPACE_LIMITS`] as the paths and values the child writes, prepared before the fork.
pub struct NamespaceLimits {
    pub(crate) files: Vec<(CString, CString)>,
}

impl NamespaceLimits {
    pub fn new() -> NamespaceLimits {
        let files = NAMESPACE_LIMITS
            .iter()
            .map(|(name, value)| {
                let path = CString::new(format!("/proc/sys/user/{name}")).expect("no NUL in a static name");
                (path, CString::new(value.to_string()).expect("digits"))
            })
            .collect();
        NamespaceLimits { files }
    }
}

impl Default for NamespaceLimits {
    fn default() -> Self {
        NamespaceLimits::new()
    }
}

/// Parent side, once per process: no supplementary group of the supervisor's may reach a sandbox. Its first
/// process would inherit them and, unmapped in its user namespace (they show as 65534), they would still grant
/// their access to host files. Inside the namespace nothing can drop them (setgroups is denied there before the
/// gid map is written), so it is done here, for the whole process: glibc's setgroups changes the credentials of
/// every thread. The supervisor, root, keeps its own access through its capabilities.
pub fn drop_supplementary_groups() -> Result<(), UserError> {
    nix::unistd::setgroups(&[]).map_err(|e| UserError::DropGroups { source: e.into() })?;
    check_no_groups()
}

/// Parent side, before each clone: the calling thread, whose credentials the child copies, has no
/// supplementary group, whatever part of the process may have changed since [`drop_supplementary_groups`].
pub fn check_no_groups() -> Result<(), UserError> {
    // A failure to tell counts as -1, as getgroups(2) itself would return.
    let count = nix::unistd::getgroups().map_or(-1, |groups| groups.len() as i32);
    if count != 0 {
        return Err(UserError::GroupsLeft { count });
    }
    Ok(())
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
