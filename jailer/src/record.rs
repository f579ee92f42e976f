//! The one message the child sends the parent: a fixed-size failure record (step, errno).
//!
//! The child writes it, with a single `write` of [`LEN`] bytes from its stack, to the close-on-exec `status`
//! pipe when a step of its recipe fails ([`crate::child`]); the parent reads it ([`crate::spawn`]) and turns
//! it into `JailError::Child`. End-of-file without a record means that both `execve`s succeeded. Owns the
//! numbering of the steps on the wire and nothing else; no allocation, so that the child may encode.

use crate::mount::MountStep;

/// Bytes of one record: the step's code, its sub-code (the mount step) and the errno, each a native `u32`.
/// At most PIPE_BUF, so that a write of it is never split.
pub(crate) const LEN: usize = 12;

/// The steps of the child's recipe ([`crate::child`]), reported with an errno when one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    DeathSignal,
    AwaitParent,
    JoinCgroup,
    BecomeUser,
    CgroupNamespace,
    Mount(MountStepCode),
    Hostname,
    Loopback,
    Rlimits,
    NamespaceLimits,
    Descriptors,
    Session,
    Signals,
    DropCapabilities,
    NoNewPrivs,
    Seccomp,
    Init,
    InitExec,
    Exec,
}

/// [`MountStep`] as a plain number for the fixed-size failure record.
pub type MountStepCode = u32;

impl Step {
    /// The mount step `m` as a recipe step.
    pub(crate) fn mount(m: MountStep) -> Step {
        Step::Mount(m as MountStepCode)
    }

    fn code(self) -> (u32, u32) {
        let n = match self {
            Step::DeathSignal => 1,
            Step::AwaitParent => 2,
            Step::BecomeUser => 3,
            Step::CgroupNamespace => 4,
            Step::Mount(m) => return (5, m),
            Step::Hostname => 6,
            Step::Loopback => 7,
            Step::Rlimits => 8,
            Step::Descriptors => 9,
            Step::Session => 10,
            Step::Signals => 11,
            Step::DropCapabilities => 12,
            Step::NoNewPrivs => 13,
            Step::Seccomp => 14,
            Step::Exec => 15,
            Step::Init => 16,
            Step::InitExec => 17,
            Step::NamespaceLimits => 18,
            Step::JoinCgroup => 19,
        };
        (n, 0)
    }

    fn from_code(code: u32, sub: u32) -> Step {
        const ALL: [Step; 18] = [
            Step::DeathSignal,
            Step::AwaitParent,
            Step::JoinCgroup,
            Step::BecomeUser,
            Step::CgroupNamespace,
            Step::Hostname,
            Step::Loopback,
            Step::Rlimits,
            Step::NamespaceLimits,
            Step::Descriptors,
            Step::Session,
            Step::Signals,
            Step::DropCapabilities,
            Step::NoNewPrivs,
            Step::Seccomp,
            Step::Init,
            Step::InitExec,
            Step::Exec,
        ];
        if code == 5 {
            return Step::Mount(sub);
        }
        ALL.into_iter().find(|s| s.code().0 == code).unwrap_or(Step::Exec)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Step::DeathSignal => "PR_SET_PDEATHSIG",
            Step::AwaitParent => "waiting for the parent",
            Step::JoinCgroup => "joining the sandbox's cgroup",
            Step::BecomeUser => "setresuid/setresgid to the sandbox user",
            Step::CgroupNamespace => "unshare(CLONE_NEWCGROUP)",
            Step::Mount(code) => MountStep::from_code(*code).map_or("mount", MountStep::describe),
            Step::Hostname => "sethostname",
            Step::Loopback => "bringing lo up",
            Step::Rlimits => "setrlimit",
            Step::NamespaceLimits => "writing the user namespace's limits in /proc/sys/user",
            Step::Descriptors => "arranging descriptors",
            Step::Session => "setsid",
            Step::Signals => "resetting signals",
            Step::DropCapabilities => "dropping capabilities",
            Step::NoNewPrivs => "PR_SET_NO_NEW_PRIVS",
            Step::Seccomp => "installing the seccomp filters",
            Step::Init => "forking the command from the sandbox's init",
            Step::InitExec => "execveat of the sandbox's init program",
            Step::Exec => "execve",
        };
        f.write_str(text)
    }
}

/// The record for `step` failing with `errno`, on the child's stack.
pub(crate) fn encode(step: Step, errno: i32) -> [u8; LEN] {
    let (code, sub) = step.code();
    let mut record = [0u8; LEN];
    record[0..4].copy_from_slice(&code.to_ne_bytes());
    record[4..8].copy_from_slice(&sub.to_ne_bytes());
    record[8..12].copy_from_slice(&errno.to_ne_bytes());
    record
}

/// The step and errno of a whole record (an unknown code reads as `Exec`).
pub(crate) fn decode(record: &[u8; LEN]) -> (Step, i32) {
    let word = |i: usize| u32::from_ne_bytes(record[i..i + 4].try_into().expect("4 bytes"));
    (Step::from_code(word(0), word(4)), word(8) as i32)
}
