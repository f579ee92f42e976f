//! A running sandbox, as the parent holds it: its pidfd, the pipe its init reports on, its cgroup. Signals,
//! reaping and the cgroup's counters go through these, never through a pid that could be reused.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::cgroup::{Cgroup, CgroupError, CpuUsageUnit};
use crate::pid::{self, Status};
use crate::seccomp;

/// How a sandbox ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: Status,
    /// The cgroup's OOM killer killed a process of the sandbox.
    pub oom_killed: bool,
}

impl Exit {
    pub fn seccomp_killed(&self) -> bool {
        self.status == Status::Signaled(libc::SIGSYS)
    }
}

impl Sandbox {
    /// After a seccomp kill: "syscall NAME (NR)" from the kernel's audit record, when it can be found.
    pub fn seccomp_culprit(&self) -> Option<String> {
        seccomp::killed_for(self.host_uid).map(|(nr, name)| format!("{name} ({nr})"))
    }
}

/// A running sandbox. Dropping it kills it and removes its cgroup (blocking up to a few milliseconds).
pub struct Sandbox {
    pub pid: i32,
    pub host_uid: u32,
    pub(crate) pidfd: OwnedFd,
    /// Where the sandbox's init writes the command's wait status before it exits.
    pub(crate) exit_report: OwnedFd,
    pub(crate) cgroup: Option<Cgroup>,
    pub(crate) exit: Option<Exit>,
}

impl Sandbox {
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// SIGKILL the sandbox's first process; its PID namespace takes every other process with it.
    pub fn kill(&self) {
        let _ = pid::signal(self.pidfd.as_fd(), libc::SIGKILL);
    }

    /// Reap the sandbox if it has ended (or wait for it with `block`), noting whether the OOM killer struck.
    pub fn try_wait(&mut self, block: bool) -> std::io::Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        let Some(init_status) = pid::wait(self.pidfd.as_fd(), block)? else { return Ok(None) };
        // The command's own status, as the init reported it; the init's, if it was killed first (a timeout,
        // the OOM killer, a shutdown).
        let status = pid::read_reported_status(self.exit_report.as_fd()).unwrap_or(init_status);
        let oom_killed = self.cgroup.as_ref().map(|c| c.oom_kills() > 0).unwrap_or(false);
        let exit = Exit { status, oom_killed };
        self.exit = Some(exit);
        Ok(Some(exit))
    }

    pub fn wait(&mut self) -> std::io::Result<Exit> {
        Ok(self.try_wait(true)?.expect("blocking wait returns a status"))
    }

    /// Change the sandbox's CPU weight (see [`Limits::cpu_weight`]).
    pub fn set_cpu_weight(&self, weight: u64) -> Result<(), CgroupError> {
        self.cgroup.as_ref().map_or(Ok(()), |c| c.set_cpu_weight(weight))
    }

    /// Let every thread of the sandbox run only on `cpus` (see [`crate::sched::set_tree_affinity`]); the number
    /// of threads set.
    pub fn set_affinity(&self, cpus: &crate::sched::CpuSet) -> usize {
        crate::sched::set_tree_affinity(self.pid, cpus)
    }

    /// Memory charged to the sandbox's cgroup, bytes.
    pub fn memory_current(&self) -> u64 {
        self.cgroup.as_ref().map(|c| c.memory_current()).unwrap_or(0)
    }

    /// The file that counts the CPU time of every process of the sandbox (see [`Cgroup::cpu_usage_file`]).
    pub fn cpu_usage_file(&self) -> Option<(std::fs::File, CpuUsageUnit)> {
        self.cgroup.as_ref().and_then(|c| c.cpu_usage_file())
    }

    /// Kill, reap and remove the cgroup now, reporting a cgroup that would not go.
    pub fn destroy(mut self) -> Result<Exit, CgroupError> {
        self.kill();
        let exit = self.wait().unwrap_or(Exit { status: Status::Signaled(libc::SIGKILL), oom_killed: false });
        if let Some(cg) = self.cgroup.take() {
            cg.remove()?;
        }
        Ok(exit)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
            let _ = self.try_wait(true);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.remove();
        }
    }
}
