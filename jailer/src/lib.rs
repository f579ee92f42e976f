//! The jailer: makes taskcell sandboxes.
//!
//! A sandbox is one process tree in fresh user, mount, network, PID, IPC, UTS and cgroup namespaces, in a
//! cgroup of its own with memory, swap, pids and CPU limits, rooted in a read-only copy of Node's files, with no
//! capabilities and a seccomp allowlist. Each isolation concern has its own module holding its parent-side and
//! child-side halves; [`spawn`] holds the one ordered recipe that calls them.
//!
//! The jailer owns the sandbox's process and cgroup; it knows nothing of tenants, HTTP or frames.

pub mod caps;
pub mod cgroup;
pub mod mount;
pub mod net;
pub mod pid;
pub mod rootfs;
pub mod sched;
pub mod seccomp;
pub mod spawn;
pub mod user;

pub use cgroup::{CgroupError, Limits};
pub use spawn::{Exit, JailError, Jailer, JailerConfig, Sandbox, SandboxSpec, Stdio};
