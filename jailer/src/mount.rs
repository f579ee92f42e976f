//! The mount namespace and the new root.
//!
//! Parent side (this file): [`MountPlan::new`] prepares every path, flag and option string before the fork.
//! Child side (`child/mount.rs`): the plan is carried out in order, assembling the new root on a tmpfs, then
//! `pivot_root` moves into it and detaches the host's tree; nothing there allocates.
//!
//! The new root holds: the rootfs's top-level directories bound read-only (nosuid, nodev; their submounts too),
//! its symlinks, `/proc`
//! of the sandbox's own PID namespace, a size-limited `/tmp` (nosuid, nodev, noexec), a `/dev` of four host device
//! nodes bound in, and any `--bind-ro` paths (read-only with every submount). The tmpfs under it all is made
//! read-only last.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::rootfs::Entry;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("bind target {0} must be an absolute path without '..'")]
    BadTarget(PathBuf),
    #[error("path {0} contains a NUL byte")]
    Nul(PathBuf),
}

/// The step of the child's mount work that failed, reported with its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountStep {
    Private,
    RootTmpfs,
    RootfsDir,
    RootfsSymlink,
    Proc,
    Tmp,
    Dev,
    BindRo,
    RootReadOnly,
    Pivot,
}

impl MountStep {
    const ALL: [MountStep; 10] = [
        MountStep::Private,
        MountStep::RootTmpfs,
        MountStep::RootfsDir,
        MountStep::RootfsSymlink,
        MountStep::Proc,
        MountStep::Tmp,
        MountStep::Dev,
        MountStep::BindRo,
        MountStep::RootReadOnly,
        MountStep::Pivot,
    ];

    pub fn from_code(code: u32) -> Option<MountStep> {
        Self::ALL.get(code as usize).copied()
    }

    pub fn describe(self) -> &'static str {
        match self {
            MountStep::Private => "making / private",
            MountStep::RootTmpfs => "mounting the new root's tmpfs",
            MountStep::RootfsDir => "binding a rootfs directory read-only",
            MountStep::RootfsSymlink => "recreating a rootfs symlink",
            MountStep::Proc => "mounting /proc",
            MountStep::Tmp => "mounting /tmp",
            MountStep::Dev => "populating /dev",
            MountStep::BindRo => "binding a --bind-ro path",
            MountStep::RootReadOnly => "making the new root read-only",
            MountStep::Pivot => "pivot_root into the new root",
        }
    }
}

/// One step of building the root, for the child to carry out ([`crate::child`]).
pub(crate) enum Op {
    /// mkdir (mode 0755), ignoring EEXIST.
    Mkdir(CString),
    /// An empty file as a mount point.
    Touch(CString),
    Symlink { target: CString, link: CString },
    Mount { source: CString, target: CString, fstype: Option<CString>, flags: libc::c_ulong, data: Option<CString> },
    /// mount_setattr(AT_RECURSIVE): these attributes set on the mount at `target` and on every mount below it.
    SetAttrTree { target: CString, set: u64 },
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Everything the child needs to build its root, prepared by the parent.
///
/// The new root is assembled on a tmpfs mounted over the rootfs's own empty `/tmp` directory: a mount point
/// that hides none of the paths bound from (the rootfs's directories, the `--bind-ro` sources). Sources are
/// named by path, not by descriptors opened before the fork: those would refer to mounts of the host's
/// namespace, which the kernel refuses to bind from inside a new one.
pub struct MountPlan {
    pub(crate) new_root: CString,
    pub(crate) steps: Vec<(MountStep, Op)>,
}

pub struct BindRo {
    pub host: PathBuf,
    pub inside: PathBuf,
}

const DEVICES: [&str; 4] = ["null", "zero", "random", "urandom"];

impl MountPlan {
    pub fn new(rootfs: &Path, entries: &[Entry], tmp_bytes: u64, binds: &[BindRo]) -> Result<MountPlan, MountError> {
        let root = rootfs.join("tmp");
        let at = |inside: &str| root.join(inside.trim_start_matches('/'));
        let mut steps = Vec::new();
        // No mount event of ours may reach the host, and none of the host's may reach us.
        steps.push((MountStep::Private, Op::Mount { source: c("none")?, target: c("/")?, fstype: None, flags: libc::MS_REC | libc::MS_PRIVATE, data: None }));
        steps.push((MountStep::RootTmpfs, Op::Mount {
            source: c("tmpfs")?,
            target: cpath(&root)?,
            fstype: Some(c("tmpfs")?),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(c("size=1m,nr_inodes=4096,mode=0755")?),
        }));
        for entry in entries {
            match entry {
                Entry::Dir(name) => {
                    let src = rootfs.join(name);
                    let target = cpath(&at(name))?;
                    steps.push((MountStep::RootfsDir, Op::Mkdir(target.clone())));
                    steps.push((MountStep::RootfsDir, bind(cpath(&src)?, target.clone(), libc::MS_REC)));
                    steps.push((MountStep::RootfsDir, read_only_tree(target)));
                }
                Entry::Symlink { name, target } => {
                    steps.push((MountStep::RootfsSymlink, Op::Symlink { target: cpath(target)?, link: cpath(&at(name))? }));
                }
            }
        }
        let proc_dir = cpath(&at("proc"))?;
        steps.push((MountStep::Proc, Op::Mkdir(proc_dir.clone())));
        steps.push((MountStep::Proc, Op::Mount {
            source: c("proc")?,
            target: proc_dir,
            fstype: Some(c("proc")?),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        }));
        let tmp_dir = cpath(&at("tmp"))?;
        steps.push((MountStep::Tmp, Op::Mkdir(tmp_dir.clone())));
        steps.push((MountStep::Tmp, Op::Mount {
            source: c("tmpfs")?,
            target: tmp_dir,
            fstype: Some(c("tmpfs")?),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: Some(CString::new(format!("size={tmp_bytes},nr_inodes=16384,mode=1777")).expect("no NUL")),
        }));
        steps.push((MountStep::Dev, Op::Mkdir(cpath(&at("dev"))?)));
        for dev in DEVICES {
            let target = cpath(&at(&format!("dev/{dev}")))?;
            steps.push((MountStep::Dev, Op::Touch(target.clone())));
            steps.push((MountStep::Dev, bind(cpath(&PathBuf::from(format!("/dev/{dev}")))?, target, 0)));
        }
        for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
            steps.push((MountStep::Dev, Op::Symlink { target: c(target)?, link: cpath(&at(&format!("dev/{name}")))? }));
        }
        for b in binds {
            let inside = &b.inside;
            if !inside.is_absolute() || inside.components().any(|c| matches!(c, std::path::Component::ParentDir)) || inside == Path::new("/") {
                return Err(MountError::BadTarget(inside.clone()));
            }
            let is_dir = std::fs::metadata(&b.host).map_err(|source| MountError::Open { path: b.host.clone(), source })?.is_dir();
            let target = at(&inside.to_string_lossy());
            // Parents first, as mkdir -p would.
            let mut parents: Vec<PathBuf> = target.ancestors().skip(1).take_while(|p| *p != root.as_path()).map(Path::to_path_buf).collect();
            parents.reverse();
            for p in parents {
                steps.push((MountStep::BindRo, Op::Mkdir(cpath(&p)?)));
            }
            let ctarget = cpath(&target)?;
            steps.push((MountStep::BindRo, if is_dir { Op::Mkdir(ctarget.clone()) } else { Op::Touch(ctarget.clone()) }));
            steps.push((MountStep::BindRo, bind(cpath(&b.host)?, ctarget.clone(), libc::MS_REC)));
            steps.push((MountStep::BindRo, read_only_tree(ctarget)));
        }
        // Last: the tmpfs holding the mount points becomes read-only too.
        steps.push((MountStep::RootReadOnly, Op::Mount {
            source: c("tmpfs")?,
            target: cpath(&root)?,
            fstype: None,
            flags: libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data: None,
        }));
        Ok(MountPlan { new_root: cpath(&root)?, steps })
    }
}

fn bind(source: CString, target: CString, extra: libc::c_ulong) -> Op {
    Op::Mount { source, target, fstype: None, flags: libc::MS_BIND | extra, data: None }
}

/// Read-only, nosuid and nodev for the mount at `target` and every mount below it (Linux 5.12+). A bind remount
/// (MS_REMOUNT | MS_BIND | MS_RDONLY) would change the top mount alone, leaving a submount of a recursive
/// bind (a tmpfs or bind mounted inside a `--bind-ro` directory on the host) writable. Only sets flags: those
/// the kernel locks on mounts from the host's namespace (noexec, nosuid...) are never cleared.
fn read_only_tree(target: CString) -> Op {
    Op::SetAttrTree { target, set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV }
}

fn c(s: &str) -> Result<CString, MountError> {
    CString::new(s).map_err(|_| MountError::Nul(PathBuf::from(s)))
}

fn cpath(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| MountError::Nul(p.to_path_buf()))
}

