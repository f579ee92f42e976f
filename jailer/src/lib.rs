//! The jailer: makes taskcell sandboxes.
//!
//! A sandbox is one process tree in fresh user, mount, network, PID, IPC, UTS and cgroup namespaces, in a
//! cgroup of its own with memory, swap, pids and CPU limits, rooted in a read-only copy of Node's files, with no
//! capabilities and a seccomp allowlist.
//!
//! The layout follows the fork. The parent's side, which may allocate: [`spawn`] (the [`Jailer`] and the
//! order of the parent's steps), [`sandbox`] (a running [`Sandbox`]), `plan` (what the child will read), and
//! one module per isolation concern holding its parent half (`user`, `mount`, `net`, `pid`, `cgroup`, `caps`,
//! `seccomp`, `rootfs`, `sched`). The child's side, between `clone` and `execve`, only system calls:
//! `child/`, with the one ordered recipe in `child/mod.rs` and one file per concern; crate-private, so that
//! nothing outside the jailer can call it. Between them, `record`: the fixed-size failure record the child
//! sends.
//!
//! The jailer owns the sandbox's process and cgroup; it knows nothing of tenants, HTTP or frames.

pub mod caps;
pub mod cgroup;
mod child;
pub mod mount;
pub mod net;
pub mod pid;
mod plan;
mod record;
pub mod rootfs;
pub mod sandbox;
pub mod sched;
pub mod seccomp;
pub mod spawn;
pub mod user;

#[cfg(test)]
#[path = "../policy_check.rs"]
mod policy_check;

pub use cgroup::{CgroupError, CpuUsageUnit, Limits};
pub use sandbox::{Exit, Sandbox};
pub use spawn::{JailError, Jailer, JailerConfig, SandboxSpec, Stdio};
