//! Child side of the scheduler: the sandbox's short time slice (see [`crate::sched`] for why), set with
//! raw syscalls on a local struct. Also what the daemon's loop calls, through [`crate::sched::set_slice`].

use super::errno;
use crate::sched::SchedAttr;

/// Give the calling thread (and whatever it forks or execs from now on) a time slice of `slice_ns`, keeping
/// its policy and nice value. Async-signal-safe. nix has no sched_getattr/sched_setattr.
pub(crate) fn set_slice(slice_ns: u64) -> Result<(), i32> {
    let mut attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, ..SchedAttr::default() };
    // SAFETY: sched_getattr fills at most `size` bytes of the local struct, for the calling thread (pid 0).
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, attr.size, 0) };
    if rc < 0 {
        return Err(errno());
    }
    if attr.policy != libc::SCHED_OTHER as u32 && attr.policy != libc::SCHED_BATCH as u32 {
        return Ok(()); // real-time or idle policies have no slice to shorten
    }
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.flags = 0;
    attr.runtime = slice_ns;
    // SAFETY: sched_setattr reads the local struct, for the calling thread; flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc < 0 {
        return Err(errno());
    }
    Ok(())
}
