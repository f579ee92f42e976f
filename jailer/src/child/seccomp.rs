//! Child side of seccomp: hand the filters compiled at build time ([`crate::seccomp::programs`]) to the
//! kernel, as the last step before the fork of the command and `execve`.

/// Install every program with `seccomp(SECCOMP_SET_MODE_FILTER, 0, &sock_fprog)`, in order.
///
/// Only raw syscalls, no allocation, no locks. Requires `no_new_privs` already set (otherwise the
/// kernel refuses with EACCES, as it would to anyone without CAP_SYS_ADMIN). Returns `Err(errno)` on
/// failure; the filters installed before the failure stay in place, so the caller must not exec.
/// Once it returns `Ok`, the process may make only the syscalls of the `allow` filter: `execve`,
/// `write` and `exit_group` among them, enough to exec or to report a failure and exit.
pub(crate) fn install_all() -> Result<(), i32> {
    for program in crate::seccomp::programs() {
        let filter = program.filter();
        let fprog = libc::sock_fprog {
            // seccompiler rejects programs of BPF_MAXINSNS (4096) instructions or more: no truncation.
            len: filter.len() as libc::c_ushort,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: `fprog` points at a static array of `len` instructions; the kernel copies the
        // program during the call and never writes through the pointer.
        let rc = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0 as libc::c_uint, &fprog as *const libc::sock_fprog)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
        }
    }
    Ok(())
}
