//! Child side of the resource limits that cgroups do not cover (the values are chosen by the parent, in
//! [`crate::plan`]): soft = hard, so that nothing without CAP_SYS_RESOURCE in the host's namespace raises one.

use super::check;
use crate::plan::ChildPlan;

pub(super) fn set_rlimits(plan: &ChildPlan) -> Result<(), i32> {
    for (resource, value) in plan.rlimits {
        let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
        // SAFETY: `lim` is a local rlimit read by the kernel.
        check(unsafe { libc::setrlimit(resource, &lim) })?;
    }
    Ok(())
}
