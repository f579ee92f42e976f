//! Which CPUs busy sandboxes may use.
//!
//! The kernel cannot preempt a process while it is in the kernel on most distribution kernels
//! (`PREEMPT_NONE`/`VOLUNTARY`): a sandbox booting (exec, namespaces, page faults of Node's binary), dying with
//! 128 MiB to unmap, or forking in a loop holds its CPU for milliseconds, whatever its weight, slice or idle
//! class. The quiet tenants' latency then depends on not sharing a CPU with that work at all. So the daemon
//! keeps a few CPUs for interactive work: sandboxes booting in the pool (unless tenants are waiting for one:
//! then boots are the interactive work) and a tenant's sandbox once it has used the CPU for most of
//! [`BUSY_WINDOW`] while an invocation runs, run only on the others (the batch CPUs); a tenant's sandbox that
//! is not busy, the event loop and the clients may run anywhere. Busy means CPU used, read from the sandbox's
//! cgroup, not time waited: an invocation that waits on a slow API, a queue or a lock is not busy. A busy
//! sandbox gets every CPU back once it is idle again and its tenant has not been busy for [`BUSY_MEMORY`]
//! (checked every housekeeping tick); a tenant busy that recently gets its next sandbox on the batch CPUs
//! (one whose sandboxes die of their memory limit in a loop counts as busy too).
//!
//! Work a task leaves running after its invocation has answered (a timer loop spinning in the background)
//! is caught by the same counter, sampled every housekeeping tick: more than half a CPU over the tick makes
//! the sandbox busy too.
//!
//! The affinity is set from outside, thread by thread, and the sandbox cannot widen it: its seccomp policy
//! refuses `sched_setaffinity`.

use std::time::Duration;

use jailer::sched::CpuSet;

/// An invocation still running after this long has its sandbox's CPU time sampled over the next window of
/// the same length, and again until it ends: a window with at least [`BUSY_CPU`] used makes the sandbox busy
/// (to the batch CPUs). A spinning task is caught after about 20 ms; a task waiting is never.
pub const BUSY_WINDOW: Duration = Duration::from_millis(10);
/// CPU time within one [`BUSY_WINDOW`] that makes a sandbox busy: more than half a CPU.
pub const BUSY_CPU: Duration = Duration::from_millis(5);
/// How long a tenant counts as busy after it last was: its sandbox stays on the batch CPUs between busy
/// invocations, and a new sandbox (after a memory kill or a timeout) starts there, instead of spending its
/// first busy window of kernel-heavy work on the reserved CPUs every time.
pub const BUSY_MEMORY: Duration = Duration::from_secs(2);

/// The CPU time of a sandbox, read again and again through a descriptor kept open: its cgroup's counter
/// (nanosecond resolution, every process of the sandbox), or else /proc/PID/stat of its Node (clock ticks,
/// 10 ms here: too coarse to tell a 10 ms burst of work from none, hence the cgroup first).
#[derive(Debug)]
pub struct CpuTime {
    file: std::fs::File,
    unit: Unit,
}

#[derive(Clone, Copy, Debug)]
enum Unit {
    Cgroup(jailer::CpuUsageUnit),
    /// /proc/PID/stat's utime and stime, with the clock ticks a second.
    Ticks(u64),
}

impl CpuTime {
    /// The sandbox's cgroup counter if it has one, else its Node's /proc/PID/stat.
    pub fn of_sandbox(sandbox: &jailer::Sandbox, node_pid: Option<i32>) -> Option<CpuTime> {
        if let Some((file, unit)) = sandbox.cpu_usage_file() {
            let t = CpuTime { file, unit: Unit::Cgroup(unit) };
            if t.total().is_some() {
                return Some(t);
            }
        }
        CpuTime::of_process(node_pid?)
    }

    pub fn of_process(pid: i32) -> Option<CpuTime> {
        let file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
        // SAFETY: sysconf with a constant name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let t = CpuTime { file, unit: Unit::Ticks(hz) };
        t.total().map(|_| t)
    }

    /// Whether the counter only moves by clock ticks (10 ms here): a single tick can land in any short window
    /// of a process that barely ran, so one busy window is not evidence enough.
    pub fn coarse(&self) -> bool {
        matches!(self.unit, Unit::Ticks(_))
    }

    /// CPU time used so far (user and system, every thread).
    pub fn total(&self) -> Option<Duration> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 1024];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        match self.unit {
            Unit::Cgroup(jailer::CpuUsageUnit::Nanoseconds) => Some(Duration::from_nanos(text.trim().parse().ok()?)),
            Unit::Cgroup(jailer::CpuUsageUnit::CpuStat) => {
                let usec = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
                Some(Duration::from_micros(usec))
            }
            Unit::Ticks(hz) => {
                // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
                let mut fields = text[text.rfind(')')? + 2..].split(' ');
                let utime: u64 = fields.nth(11)?.parse().ok()?;
                let stime: u64 = fields.next()?.parse().ok()?;
                Some(Duration::from_millis((utime + stime) * 1000 / hz))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CpuClasses {
    /// Every CPU the daemon may use: where a sandbox that is not busy runs.
    pub all: CpuSet,
    /// Where sandboxes boot and busy ones run: all but the reserved CPUs.
    pub batch: CpuSet,
    pub reserved: CpuSet,
}

impl CpuClasses {
    /// Split the daemon's own CPUs: `reserved` of them (None: a quarter, at least one) kept from batch work.
    /// None when that leaves no CPU for either side (one CPU, or `reserved` 0).
    pub fn new(reserved: Option<usize>) -> Option<CpuClasses> {
        let all = CpuSet::of_current_thread().ok()?;
        let cpus = all.cpus();
        let n = cpus.len();
        let keep = reserved.unwrap_or(n.div_ceil(4)).min(n.saturating_sub(1));
        if keep == 0 {
            return None;
        }
        Some(CpuClasses { all, reserved: CpuSet::from_cpus(&cpus[..keep]), batch: CpuSet::from_cpus(&cpus[keep..]) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_a_spinning_process_grows() {
        // A process of its own: this one's CPU time also counts the other tests' threads.
        let mut child = std::process::Command::new("/bin/sh").args(["-c", "while :; do :; done"]).spawn().expect("sh");
        let pid = child.id() as i32;
        let t = CpuTime::of_process(pid).expect("the child's /proc/PID/stat");
        let first = t.total().unwrap();
        let mut used = Duration::ZERO;
        let start = std::time::Instant::now();
        while used < Duration::from_millis(100) && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
            used = t.total().unwrap() - first;
        }
        // SAFETY: kill with a signal number on a child we started and have not reaped.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(50));
        let stopped = t.total().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let after_stop = t.total().unwrap() - stopped;
        let _ = child.kill();
        let _ = child.wait();
        assert!(used >= Duration::from_millis(100), "a spinning process read as {used:?}");
        assert!(after_stop < Duration::from_millis(20), "a stopped process used {after_stop:?}");
    }

    #[test]
    fn reserve_a_quarter_and_keep_batch_cpus() {
        let Some(c) = CpuClasses::new(None) else {
            assert_eq!(CpuSet::of_current_thread().unwrap().cpus().len(), 1, "only a one-CPU machine has no classes");
            return;
        };
        let n = c.all.cpus().len();
        assert_eq!(c.reserved.cpus().len(), n.div_ceil(4).min(n - 1));
        assert_eq!(c.reserved.cpus().len() + c.batch.cpus().len(), n);
        assert!(CpuClasses::new(Some(0)).is_none());
        assert_eq!(CpuClasses::new(Some(1000)).map(|c| c.batch.cpus().len()), Some(1), "at least one batch CPU");
    }
}
