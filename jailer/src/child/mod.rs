//! The child's side of the fork: everything that runs between `clone` and `execve`.
//!
//! [`clone_child`] is the only way in. In the child it runs [`recipe`], the ordered steps of making a
//! sandbox, and the helpers below, one file per concern (`pid`, `sync`, `fds`, `cgroup`, `user`, `mount`, `net`,
//! `rlimit`, `sched`, `caps`, `seccomp`). The child is a copy of a threaded process: another thread may have
//! held the allocator's or any other lock at the moment of the fork, so nothing here allocates, locks or
//! logs. Only system calls on what the parent prepared ([`ChildPlan`], [`ChildPipes`], the mount plan) and on
//! locals of fixed size. A failure leaves as a [`crate::record`] on the status pipe.
//!
//! Raw `libc` on purpose: a wrapper that may allocate (building a path, collecting a `Vec`) or take a lock
//! cannot run here. Nothing outside the jailer can reach this module. docs/jailer.md lists the same steps in
//! the same order as [`recipe`].

mod caps;
mod cgroup;
mod fds;
mod mount;
mod net;
mod pid;
mod rlimit;
pub(crate) mod sched;
pub(crate) mod seccomp;
mod sync;
mod user;

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::plan::{ChildPipes, ChildPlan};
use crate::record::Step;

pub(crate) use sync::report_failure;

const NAMESPACES: libc::c_int =
    libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// The kernel's `struct clone_args` (clone3), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clone the child into its namespaces; returns its host pid, its pidfd, and whether it was born in its
/// cgroup. The child never returns: it runs [`recipe`] and execs, or reports the failed step and exits.
/// With `cgroup_dir` (cgroup v2), clone3's CLONE_INTO_CGROUP places it there at birth: no migration,
/// whose cost (a wait for an RCU grace period under the cgroup threadgroup lock) is the largest single item
/// of making a sandbox. Without it, or if the kernel refuses, a plain clone and the parent's attach.
/// Raw syscalls: nix has no clone3, and its `clone` wants a separate stack (CLONE_VM-style), not fork semantics.
pub(crate) fn clone_child(
    plan: &ChildPlan,
    pipes: &ChildPipes,
    cgroup_dir: Option<BorrowedFd<'_>>,
) -> std::io::Result<(i32, OwnedFd, bool)> {
    let mut pidfd: RawFd = -1;
    let mut rc = -1;
    let mut in_cgroup = false;
    if let Some(dir) = cgroup_dir {
        let args = CloneArgs {
            flags: (NAMESPACES | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM and with a null stack behaves like fork (the child runs on a copy of
        // this thread's stack, only `recipe`, and never returns); `args` and the pidfd local outlive it.
        rc = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
        in_cgroup = rc >= 0;
    }
    if rc < 0 {
        let flags = (NAMESPACES | libc::CLONE_PIDFD) as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
        // SAFETY: raw clone without CLONE_VM behaves like fork: the child gets a copy of this thread's stack and
        // the process's memory, and runs only `recipe`, which makes system calls and never returns. The
        // pidfd pointer is to a local that the kernel fills in the parent.
        rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, &mut pidfd as *mut RawFd, 0usize, 0usize) };
    }
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if rc == 0 {
        let (step, errno) = match recipe(plan, pipes) {
            Err(failure) => failure,
            Ok(never) => match never {},
        };
        report_failure(pipes.status, step, errno);
        // SAFETY: _exit ends the child without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(127) };
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor owned by us in `pidfd`.
    Ok((rc as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }, in_cgroup))
}

enum Never {}

/// The child's side of making a sandbox, in order. Each line is one step; only system calls happen here.
fn recipe(plan: &ChildPlan, pipes: &ChildPipes) -> Result<Never, (Step, i32)> {
    // Die with the supervising thread: a sandbox never outlives the process that is accountable for it.
    pid::die_with_parent().map_err(|e| (Step::DeathSignal, e))?;
    // Let go of every descriptor of the supervisor's that the sandbox does not need (its listening socket,
    // its state-directory lock, other sandboxes' pipes): a dying child must not hold them even for a moment.
    fds::close_inherited(plan, pipes).map_err(|e| (Step::Descriptors, e))?;
    // Wait for the parent to write our uid/gid maps (and, on v2 without clone3, move us into our cgroup);
    // EOF: the parent is gone.
    sync::await_parent(pipes).map_err(|e| (Step::AwaitParent, e))?;
    // On cgroup v1, move into our cgroup ourselves, through the `tasks` files the parent opened, before any step
    // that makes something the cgroup should be charged for: a thread moving itself spares the kernel's global
    // lock and RCU grace period that moving another process costs (see `Cgroup::join_files`). Those descriptors
    // are closed here.
    cgroup::join(plan).map_err(|e| (Step::JoinCgroup, e))?;
    // Take on the mapped uid/gid 1000 before creating any file (unmapped ids cannot own files).
    user::become_sandbox_user().map_err(|e| (Step::BecomeUser, e))?;
    // Changing uid cleared the death signal: set it again, then make sure the parent did not die meanwhile.
    pid::die_with_parent().and_then(|()| sync::parent_alive(pipes)).map_err(|e| (Step::DeathSignal, e))?;
    // A cgroup namespace rooted at our own cgroup, now that we are in it: the sandbox sees only "/".
    // SAFETY: unshare takes a flag word.
    check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) }).map_err(|e| (Step::CgroupNamespace, e))?;
    // Assemble the new root (tmpfs, rootfs binds, /proc, /tmp, /dev, --bind-ro) while the host's paths are visible.
    mount::build_root(plan.mounts).map_err(|(m, e)| (Step::mount(m), e))?;
    // Enter it and detach the host's tree: from here on no host path can be named.
    mount::pivot(plan.mounts).map_err(|(m, e)| (Step::mount(m), e))?;
    // Our own hostname, in our own UTS namespace.
    // SAFETY: the hostname bytes were prepared by the parent and outlive the call.
    check(unsafe { libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) }).map_err(|e| (Step::Hostname, e))?;
    // Loopback up: the namespace's only device, so that Node can serve and connect on 127.0.0.1.
    net::loopback_up().map_err(|e| (Step::Loopback, e))?;
    // Resource limits that cgroups do not cover: no core dumps, open files, file size, and what the kernel
    // counts per user (queued signals, message queues, locked memory), which our host uid shares with root.
    rlimit::set_rlimits(plan).map_err(|e| (Step::Rlimits, e))?;
    // The same for the user namespace's own counts (inotify, fanotify, namespaces), while we still hold
    // CAP_SYS_RESOURCE in it and after the last namespace of ours (the cgroup one) was made.
    user::apply_namespace_limits(plan.ns_limits).map_err(|e| (Step::NamespaceLimits, e))?;
    // A short time slice, inherited by every process and thread of the sandbox, so that a busy sandbox gives
    // way quickly to whatever wakes up (best effort: a kernel without per-task slices ignores it).
    if let Some(ns) = plan.slice_ns {
        let _ = sched::set_slice(ns);
    }
    // Stdio and the daemon's socket to 0-3, everything else closed.
    fds::arrange_fds(plan, pipes.status, pipes.exit).map_err(|e| (Step::Descriptors, e))?;
    // A session of our own: no controlling terminal of the host's.
    pid::new_session().map_err(|e| (Step::Session, e))?;
    // Default signal dispositions and an empty mask, whatever the supervisor had.
    pid::reset_signals().map_err(|e| (Step::Signals, e))?;
    // No capability left in any set, so none survives execve.
    caps::drop_all(plan.last_cap).map_err(|e| (Step::DropCapabilities, e))?;
    // No privilege gain through execve, ever; required for the filter.
    caps::no_new_privs().map_err(|e| (Step::NoNewPrivs, e))?;
    // The seccomp filters, last, so that the steps above may use syscalls the sandbox may not.
    seccomp::install_all().map_err(|e| (Step::Seccomp, e))?;
    // PID 1 stays behind as the sandbox's init, under every restriction above: it reaps orphans, lets the
    // command die of its own signals like any process (PID 1 would ignore them), and reports its status.
    let command = pid::fork().map_err(|e| (Step::Init, e))?;
    if command != 0 {
        // PID 1 becomes the init program, so that what lives as long as the sandbox holds no copy of the
        // daemon's memory (other tenants' requests, results, sources). Returns only on failure.
        return Err((Step::InitExec, pid::exec_init(command, pipes.exit, pipes.status)));
    }
    // The command dies with its init (the namespace would take it anyway; this says so to the process).
    pid::die_with_parent().map_err(|e| (Step::DeathSignal, e))?;
    // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays owned by the plan.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv_ptrs.as_ptr(), plan.env_ptrs.as_ptr()) };
    Err((Step::Exec, errno()))
}

/// A libc return code as `Err(errno)` when negative. No allocation.
pub(crate) fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// The calling thread's errno. No allocation.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
