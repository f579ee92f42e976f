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
    Symlink {
        target: CString,
        link: CString,
    },
    Mount {
        source: CString,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// mount_setattr(AT_RECURSIVE): these attributes set on the mount at `target` and on every mount below it.
    SetAttrTree {
        target: CString,
        set: u64,
    },
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
        steps.push((
            MountStep::Private,
            Op::Mount { source: c("none")?, target: c("/")?, fstype: None, flags: libc::MS_REC | libc::MS_PRIVATE, data: None },
        ));
        steps.push((
            MountStep::RootTmpfs,
            Op::Mount {
                source: c("tmpfs")?,
                target: cpath(&root)?,
                fstype: Some(c("tmpfs")?),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(c("size=1m,nr_inodes=4096,mode=0755")?),
            },
        ));
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
        steps.push((
            MountStep::Proc,
            Op::Mount {
                source: c("proc")?,
                target: proc_dir,
                fstype: Some(c("proc")?),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            },
        ));
        let tmp_dir = cpath(&at("tmp"))?;
        steps.push((MountStep::Tmp, Op::Mkdir(tmp_dir.clone())));
        steps.push((
            MountStep::Tmp,
            Op::Mount {
                source: c("tmpfs")?,
                target: tmp_dir,
                fstype: Some(c("tmpfs")?),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: Some(CString::new(format!("size={tmp_bytes},nr_inodes=16384,mode=1777")).expect("no NUL")),
            },
        ));
        steps.push((MountStep::Dev, Op::Mkdir(cpath(&at("dev"))?)));
        for dev in DEVICES {
            let target = cpath(&at(&format!("dev/{dev}")))?;
            steps.push((MountStep::Dev, Op::Touch(target.clone())));
            steps.push((MountStep::Dev, bind(cpath(&PathBuf::from(format!("/dev/{dev}")))?, target, 0)));
        }
        for (name, target) in
            [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]
        {
            steps.push((MountStep::Dev, Op::Symlink { target: c(target)?, link: cpath(&at(&format!("dev/{name}")))? }));
        }
        for b in binds {
            let inside = &b.inside;
            if !inside.is_absolute()
                || inside.components().any(|c| matches!(c, std::path::Component::ParentDir))
                || inside == Path::new("/")
            {
                return Err(MountError::BadTarget(inside.clone()));
            }
            let is_dir = std::fs::metadata(&b.host).map_err(|source| MountError::Open { path: b.host.clone(), source })?.is_dir();
            let target = at(&inside.to_string_lossy());
            // Parents first, as mkdir -p would.
            let mut parents: Vec<PathBuf> =
                target.ancestors().skip(1).take_while(|p| *p != root.as_path()).map(Path::to_path_buf).collect();
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
        steps.push((
            MountStep::RootReadOnly,
            Op::Mount {
                source: c("tmpfs")?,
                target: cpath(&root)?,
                fstype: None,
                flags: libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                data: None,
            },
        ));
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

#[cfg(test)]
mod tests {
    //! The plan is pure data: these read what [`MountPlan::new`] prepares, without mounting anything. Bind
    //! sources are paths that exist on any host (this crate's directory, `/dev/null`).

    use super::*;

    fn s(c: &CString) -> &str {
        c.to_str().expect("UTF-8")
    }

    /// One line per step: its kind and what it names, flags in hex.
    fn describe(plan: &MountPlan) -> Vec<(MountStep, String)> {
        let opt = |o: &Option<CString>| o.as_ref().map_or("-".to_string(), |c| s(c).to_string());
        plan.steps
            .iter()
            .map(|(step, op)| {
                let text = match op {
                    Op::Mkdir(p) => format!("mkdir {}", s(p)),
                    Op::Touch(p) => format!("touch {}", s(p)),
                    Op::Symlink { target, link } => format!("symlink {} -> {}", s(link), s(target)),
                    Op::Mount { source, target, fstype, flags, data } => {
                        format!("mount {} {} {} {flags:#x} {}", s(source), s(target), opt(fstype), opt(data))
                    }
                    Op::SetAttrTree { target, set } => format!("setattr {} {set:#x}", s(target)),
                };
                (*step, text)
            })
            .collect()
    }

    fn entries() -> Vec<Entry> {
        vec![Entry::Dir("etc".into()), Entry::Symlink { name: "lib".into(), target: "usr/lib".into() }, Entry::Dir("usr".into())]
    }

    const READ_ONLY: u64 = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

    #[test]
    fn the_root_is_built_in_order_on_a_tmpfs_over_the_rootfs_tmp() {
        let plan = MountPlan::new(Path::new("/r"), &entries(), 4096, &[]).expect("plan");
        assert_eq!(s(&plan.new_root), "/r/tmp");
        let steps = describe(&plan);
        let bind_rec = libc::MS_BIND | libc::MS_REC;
        let no_exec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let mut want: Vec<(MountStep, String)> = vec![
            (MountStep::Private, format!("mount none / - {:#x} -", libc::MS_REC | libc::MS_PRIVATE)),
            (
                MountStep::RootTmpfs,
                format!("mount tmpfs /r/tmp tmpfs {:#x} size=1m,nr_inodes=4096,mode=0755", libc::MS_NOSUID | libc::MS_NODEV),
            ),
            (MountStep::RootfsDir, "mkdir /r/tmp/etc".into()),
            (MountStep::RootfsDir, format!("mount /r/etc /r/tmp/etc - {bind_rec:#x} -")),
            (MountStep::RootfsDir, format!("setattr /r/tmp/etc {READ_ONLY:#x}")),
            (MountStep::RootfsSymlink, "symlink /r/tmp/lib -> usr/lib".into()),
            (MountStep::RootfsDir, "mkdir /r/tmp/usr".into()),
            (MountStep::RootfsDir, format!("mount /r/usr /r/tmp/usr - {bind_rec:#x} -")),
            (MountStep::RootfsDir, format!("setattr /r/tmp/usr {READ_ONLY:#x}")),
            (MountStep::Proc, "mkdir /r/tmp/proc".into()),
            (MountStep::Proc, format!("mount proc /r/tmp/proc proc {no_exec:#x} -")),
            (MountStep::Tmp, "mkdir /r/tmp/tmp".into()),
            (MountStep::Tmp, format!("mount tmpfs /r/tmp/tmp tmpfs {no_exec:#x} size=4096,nr_inodes=16384,mode=1777")),
            (MountStep::Dev, "mkdir /r/tmp/dev".into()),
        ];
        for dev in DEVICES {
            want.push((MountStep::Dev, format!("touch /r/tmp/dev/{dev}")));
            want.push((MountStep::Dev, format!("mount /dev/{dev} /r/tmp/dev/{dev} - {:#x} -", libc::MS_BIND)));
        }
        for (name, target) in
            [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]
        {
            want.push((MountStep::Dev, format!("symlink /r/tmp/dev/{name} -> {target}")));
        }
        let last = libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        want.push((MountStep::RootReadOnly, format!("mount tmpfs /r/tmp - {last:#x} -")));
        assert_eq!(steps, want);
    }

    #[test]
    fn binds_come_after_dev_with_parents_first_and_read_only_to_the_bottom() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let binds = [
            BindRo { host: dir.clone(), inside: "/opt/data/src".into() },
            BindRo { host: "/dev/null".into(), inside: "/etc/blank".into() },
        ];
        let plan = MountPlan::new(Path::new("/r"), &entries(), 4096, &binds).expect("plan");
        let steps = describe(&plan);
        let binds: Vec<&str> = steps.iter().filter(|(m, _)| *m == MountStep::BindRo).map(|(_, t)| t.as_str()).collect();
        let host = dir.display();
        let bind_rec = libc::MS_BIND | libc::MS_REC;
        assert_eq!(
            binds,
            [
                "mkdir /r/tmp/opt".to_string(),
                "mkdir /r/tmp/opt/data".into(),
                "mkdir /r/tmp/opt/data/src".into(),
                format!("mount {host} /r/tmp/opt/data/src - {bind_rec:#x} -"),
                format!("setattr /r/tmp/opt/data/src {READ_ONLY:#x}"),
                "mkdir /r/tmp/etc".into(),
                "touch /r/tmp/etc/blank".into(),
                format!("mount /dev/null /r/tmp/etc/blank - {bind_rec:#x} -"),
                format!("setattr /r/tmp/etc/blank {READ_ONLY:#x}"),
            ]
        );
        // After /dev's links, before the root goes read-only.
        let first_bind = steps.iter().position(|(m, _)| *m == MountStep::BindRo).expect("binds");
        assert_eq!(steps[first_bind - 1], (MountStep::Dev, "symlink /r/tmp/dev/stderr -> /proc/self/fd/2".into()));
        assert_eq!(steps.last().map(|(m, _)| *m), Some(MountStep::RootReadOnly));
    }

    #[test]
    fn bad_binds_are_refused() {
        let plan = |host: &str, inside: &str| {
            MountPlan::new(Path::new("/r"), &[], 4096, &[BindRo { host: host.into(), inside: inside.into() }]).err()
        };
        for inside in ["relative/path", "/a/../b", "/", ""] {
            assert!(matches!(plan("/dev/null", inside), Some(MountError::BadTarget(p)) if p == Path::new(inside)), "{inside}");
        }
        assert!(
            matches!(plan("/nonexistent/taskcell-test", "/x"), Some(MountError::Open { path, .. }) if path == Path::new("/nonexistent/taskcell-test"))
        );
        let nul = MountPlan::new(Path::new("/r"), &[Entry::Dir("e\0vil".into())], 4096, &[]).err();
        assert!(matches!(nul, Some(MountError::Nul(_))), "{nul:?}");
    }

    #[test]
    fn mount_steps_round_trip_through_their_codes() {
        for (code, step) in MountStep::ALL.iter().enumerate() {
            assert_eq!(MountStep::from_code(code as u32), Some(*step));
        }
        assert_eq!(MountStep::from_code(MountStep::ALL.len() as u32), None);
    }
}
