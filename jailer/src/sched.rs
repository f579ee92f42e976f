//! CPU scheduling: the time slice a sandbox's processes run for before the scheduler may switch.
//!
//! Since Linux 6.12 the fair scheduler (EEVDF) takes a per-task slice from `sched_setattr` (`sched_runtime`
//! with SCHED_OTHER), inherited across fork and exec. The default slice (0.7 ms × (1 + log2 CPUs)) is the time
//! a task that just woke may wait behind one that is spinning: on a loaded host, every hop of a request (the
//! daemon's loop, the tenant's sandbox, the daemon again, the client) can wait that long behind another tenant's
//! busy loop. With short slices for sandboxes and for the daemon's loop, a busy sandbox yields the CPU within
//! a fraction of a millisecond to whatever wakes up. Older kernels ignore the field: the call still succeeds.

/// The slice taskcell gives its sandboxes and its event loop: the kernel's minimum (0.1 ms).
pub const SHORT_SLICE_NS: u64 = 100_000;

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Give the calling thread (and whatever it forks or execs from now on) a time slice of `slice_ns`, keeping
/// its policy and nice value. Async-signal-safe: raw syscalls on a local struct, usable in a cloned child.
pub fn set_slice(slice_ns: u64) -> Result<(), i32> {
    let mut attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, ..SchedAttr::default() };
    // SAFETY: sched_getattr fills at most `size` bytes of the local struct, for the calling thread (pid 0).
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, attr.size, 0) };
    if rc < 0 {
        return Err(crate::pid::errno());
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
        return Err(crate::pid::errno());
    }
    Ok(())
}

/// The calling thread's time slice in nanoseconds, as the kernel reports it (0 before Linux 6.12).
pub fn slice() -> Result<u64, i32> {
    let mut attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, ..SchedAttr::default() };
    // SAFETY: as in set_slice.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, attr.size, 0) };
    if rc < 0 {
        return Err(crate::pid::errno());
    }
    Ok(attr.runtime)
}
