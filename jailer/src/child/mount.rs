//! Child side of the mount namespace: carry out the [`MountPlan`] the parent prepared ([`crate::mount`]),
//! then move into the new root and detach the host's tree. Every path and option is a CString of the plan.

use super::{check, errno};
use crate::mount::{MountPlan, MountStep, Op};

/// The kernel's `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Carry out the plan, in order.
pub(super) fn build_root(plan: &MountPlan) -> Result<(), (MountStep, i32)> {
    for (step, op) in &plan.steps {
        run(op).map_err(|e| (*step, e))?;
    }
    Ok(())
}

/// Make the new root `/` and detach the host's tree from this namespace.
pub(super) fn pivot(plan: &MountPlan) -> Result<(), (MountStep, i32)> {
    let fail = |e| (MountStep::Pivot, e);
    // SAFETY: new_root is a NUL-terminated path prepared before the fork.
    check(unsafe { libc::chdir(plan.new_root.as_ptr()) }).map_err(fail)?;
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting "." then detaches it,
    // without needing a directory for it in the (read-only) new root.
    let dot = c".".as_ptr();
    // SAFETY: both arguments are static NUL-terminated strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot, dot) as libc::c_int }).map_err(fail)?;
    // SAFETY: as above.
    check(unsafe { libc::umount2(dot, libc::MNT_DETACH) }).map_err(fail)?;
    // SAFETY: a static NUL-terminated string.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(fail)
}

fn run(op: &Op) -> Result<(), i32> {
    // SAFETY: every pointer below is to a NUL-terminated CString owned by the plan, which outlives the call;
    // null pointers are passed only where the syscall documents them as optional.
    unsafe {
        match op {
            Op::Mkdir(path) => {
                if libc::mkdir(path.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                    return Err(errno());
                }
                Ok(())
            }
            Op::Touch(path) => {
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o444);
                if fd < 0 {
                    return Err(errno());
                }
                libc::close(fd);
                Ok(())
            }
            Op::Symlink { target, link } => check(libc::symlink(target.as_ptr(), link.as_ptr())),
            Op::Mount { source, target, fstype, flags, data } => check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                *flags,
                data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            )),
            Op::SetAttrTree { target, set } => {
                let attr = MountAttr { attr_set: *set, attr_clr: 0, propagation: 0, userns_fd: 0 };
                check(libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    libc::AT_RECURSIVE,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ) as libc::c_int)
            }
        }
    }
}
