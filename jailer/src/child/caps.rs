//! Child side of the capabilities: the sandbox's first process holds every capability of its new user
//! namespace until these drop them, just before the seccomp filter and execve. Clear the bounding set (so
//! nothing can regain a capability through a file), the ambient set, and the effective, permitted and
//! inheritable sets. Raw prctl/capset rather than the `caps` crate, whose calls allocate.

use super::{check, errno};

/// Drop every capability, `last_cap` being the highest one this kernel knows (read by the parent before the
/// fork, [`crate::caps::last_cap`]).
pub(super) fn drop_all(last_cap: u32) -> Result<(), i32> {
    for cap in 0..=last_cap {
        // SAFETY: PR_CAPBSET_DROP takes an integer capability number.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 && errno() != libc::EINVAL {
            return Err(errno());
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer.
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) })?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset reads one header and, for version 3, two data structs; both live on this stack frame.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int })
}

/// no_new_privs, so that no execve can gain privileges (setuid bits, file capabilities); the kernel also
/// requires it for an unprivileged seccomp filter.
pub(super) fn no_new_privs() -> Result<(), i32> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}
