//! Child side of the cgroup on v1: join the sandbox's cgroup by writing "0" to the `tasks` file of each
//! hierarchy, which the parent opened ([`crate::cgroup::Cgroup::join_files`]), then close those descriptors:
//! opened by root, they could move any task, and no one after this step may hold them. On v2 the child is
//! born in its cgroup (clone3's CLONE_INTO_CGROUP) or the parent moves it, and there is nothing to do here.

use std::os::fd::AsRawFd;

use super::errno;
use crate::plan::ChildPlan;

/// Write "0" (this thread, the only one) to every `tasks` descriptor of the plan, then close them all, also
/// on failure. Returns the first errno.
pub(super) fn join(plan: &ChildPlan) -> Result<(), i32> {
    let mut result = Ok(());
    for fd in &plan.cgroup_tasks {
        if result.is_ok() {
            // SAFETY: writes one static byte to a descriptor of the plan.
            let n = unsafe { libc::write(fd.as_raw_fd(), c"0".as_ptr().cast(), 1) };
            if n != 1 {
                result = Err(if n < 0 { errno() } else { libc::EIO });
            }
        }
    }
    for fd in &plan.cgroup_tasks {
        // SAFETY: the plan's copies in the parent stay open and owned there; this closes the child's copy,
        // which nothing in the child uses again (close_inherited and arrange_fds never keep it).
        unsafe { libc::close(fd.as_raw_fd()) };
    }
    result
}
