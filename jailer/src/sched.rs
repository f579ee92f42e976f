//! CPU scheduling: the time slice a sandbox's processes run for before the scheduler may switch, and the
//! CPUs they may run on.
//!
//! Since Linux 6.12 the fair scheduler (EEVDF) takes a per-task slice from `sched_setattr` (`sched_runtime`
//! with SCHED_OTHER), inherited across fork and exec. The default slice (0.7 ms × (1 + log2 CPUs)) is the time
//! a task that just woke may wait behind one that is spinning: on a loaded host, every hop of a request (the
//! daemon's loop, the tenant's sandbox, the daemon again, the client) can wait that long behind another tenant's
//! busy loop. With short slices for sandboxes and for the daemon's loop, a busy sandbox yields the CPU within
//! a fraction of a millisecond to whatever wakes up. Older kernels ignore the field: the call still succeeds.

use nix::sched::{sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The slice taskcell gives its sandboxes and its event loop: the kernel's minimum (0.1 ms).
pub const SHORT_SLICE_NS: u64 = 100_000;

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER1). nix has no sched_getattr/sched_setattr.
#[repr(C)]
#[derive(Default)]
pub(crate) struct SchedAttr {
    pub(crate) size: u32,
    pub(crate) policy: u32,
    pub(crate) flags: u64,
    pub(crate) nice: i32,
    pub(crate) priority: u32,
    pub(crate) runtime: u64,
    pub(crate) deadline: u64,
    pub(crate) period: u64,
    pub(crate) util_min: u32,
    pub(crate) util_max: u32,
}

/// Give the calling thread (and whatever it forks or execs from now on) a time slice of `slice_ns`, keeping
/// its policy and nice value. Async-signal-safe (raw syscalls on a local struct): the sandbox's child sets
/// its slice with the same code between clone and execve (`child/sched.rs`).
pub fn set_slice(slice_ns: u64) -> Result<(), i32> {
    crate::child::sched::set_slice(slice_ns)
}

/// The calling thread's time slice in nanoseconds, as the kernel reports it (0 before Linux 6.12).
pub fn slice() -> Result<u64, i32> {
    let mut attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, ..SchedAttr::default() };
    // SAFETY: sched_getattr fills at most `size` bytes of the local struct, for the calling thread (pid 0).
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, attr.size, 0) };
    if rc < 0 {
        return Err(nix::errno::Errno::last_raw());
    }
    Ok(attr.runtime)
}

/// A set of CPUs, as `sched_setaffinity` takes it.
#[derive(Clone, Copy)]
pub struct CpuSet(nix::sched::CpuSet);

impl CpuSet {
    /// The CPUs the calling thread may run on (the host's, or what systemd's `CPUAffinity=` or a cpuset left).
    pub fn of_current_thread() -> std::io::Result<CpuSet> {
        Ok(CpuSet(sched_getaffinity(Pid::from_raw(0))?))
    }

    pub fn from_cpus(cpus: &[usize]) -> CpuSet {
        let mut set = nix::sched::CpuSet::new();
        for &cpu in cpus {
            // A CPU beyond the set's size (CPU_SETSIZE) is left out, as before.
            let _ = set.set(cpu);
        }
        CpuSet(set)
    }

    /// The CPUs in the set, in ascending order.
    pub fn cpus(&self) -> Vec<usize> {
        (0..nix::sched::CpuSet::count()).filter(|&c| self.0.is_set(c).unwrap_or(false)).collect()
    }

    /// The set in the kernel's list format ("0-3,6"), as in /proc/PID/status's Cpus_allowed_list.
    pub fn list(&self) -> String {
        let cpus = self.cpus();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < cpus.len() {
            let mut j = i;
            while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
                j += 1;
            }
            parts.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
            i = j + 1;
        }
        parts.join(",")
    }
}

impl std::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuSet({})", self.list())
    }
}

/// Let thread `tid` (0: the calling thread) run only on `set`.
pub fn set_affinity(tid: i32, set: &CpuSet) -> Result<(), i32> {
    sched_setaffinity(Pid::from_raw(tid), &set.0).map_err(|e| e as i32)
}

/// The processes of the tree under `pid` (it first), through /proc/PID/task/TID/children.
pub fn tree_processes(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) || seen.len() > 100_000 {
            continue;
        }
        out.push(p);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Let every thread of process `pid` run only on `set`; the number of threads set. One pass: for a process
/// that is not starting threads (an idle sandbox's), which is what makes it cheap.
pub fn set_process_affinity(pid: i32, set: &CpuSet) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str().and_then(|t| t.parse::<i32>().ok()))
        .filter(|&tid| set_affinity(tid, set).is_ok())
        .count()
}

/// Let every thread of every process in the tree under `pid` (a sandbox's init and its descendants) run only
/// on `set`. Threads and processes started meanwhile inherit the mask of the one that started them: a second
/// pass catches those started from a thread the first pass had not reached yet. Returns the number of threads
/// set in the last pass.
pub fn set_tree_affinity(pid: i32, set: &CpuSet) -> usize {
    let mut count = 0;
    for _pass in 0..2 {
        count = tree_processes(pid).into_iter().map(|p| set_process_affinity(p, set)).sum();
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_set_lists_like_the_kernel() {
        assert_eq!(CpuSet::from_cpus(&[0, 1, 2, 3, 6, 8, 9]).list(), "0-3,6,8-9");
        assert_eq!(CpuSet::from_cpus(&[5]).list(), "5");
        assert_eq!(CpuSet::from_cpus(&[]).list(), "");
        assert_eq!(CpuSet::from_cpus(&[1, 0]).cpus(), vec![0, 1]);
    }

    #[test]
    fn own_affinity_is_not_empty() {
        assert!(!CpuSet::of_current_thread().expect("sched_getaffinity").cpus().is_empty());
    }
}
