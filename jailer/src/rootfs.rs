//! The sandbox's root filesystem, as built by `rootfs/build.sh` (see rootfs/README.md).
//!
//! Parent side only: find the rootfs and list what the child will put into its new root. The rootfs directory
//! is never written to: the child mounts a small tmpfs over the rootfs's empty `tmp/` as its new root and
//! bind-mounts the rootfs's top-level directories read-only into it, which leaves room to create mount points
//! for `--bind-ro` targets.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs {path} is missing or unreadable (run `make` to build it)")]
    Missing { path: PathBuf, source: std::io::Error },
    #[error("rootfs has no empty directory {path} to assemble the sandbox's root on (run `make` to rebuild it)")]
    NoStaging { path: PathBuf },
    #[error("rootfs {path} has no usr/bin/node (run `make` to build it)")]
    NoNode { path: PathBuf },
}

/// One top-level entry of the rootfs, reproduced in the new root.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A directory bind-mounted read-only (usr, etc, taskcell).
    Dir(String),
    /// A symbolic link recreated as it is (merged-/usr layouts: lib -> usr/lib).
    Symlink { name: String, target: PathBuf },
}

/// Names the jailer mounts itself and never takes from the rootfs.
pub const OWN_MOUNTS: [&str; 3] = ["proc", "dev", "tmp"];

/// The top-level entries of `rootfs` to reproduce.
pub fn entries(rootfs: &Path) -> Result<Vec<Entry>, RootfsError> {
    let missing = |source| RootfsError::Missing { path: rootfs.to_path_buf(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(rootfs).map_err(missing)? {
        let entry = entry.map_err(missing)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if OWN_MOUNTS.contains(&name.as_str()) {
            continue;
        }
        let kind = entry.file_type().map_err(missing)?;
        if kind.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(missing)?;
            out.push(Entry::Symlink { name, target });
        } else if kind.is_dir() {
            out.push(Entry::Dir(name));
        }
    }
    if !rootfs.join("tmp").is_dir() {
        return Err(RootfsError::NoStaging { path: rootfs.join("tmp") });
    }
    if !rootfs.join("usr/bin/node").exists() {
        return Err(RootfsError::NoNode { path: rootfs.to_path_buf() });
    }
    out.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    Ok(out)
}

fn name_of(e: &Entry) -> &str {
    match e {
        Entry::Dir(n) => n,
        Entry::Symlink { name, .. } => name,
    }
}

/// The default rootfs: `target/rootfs` beside the running binary (`target/release/taskcell`), else
/// `/usr/lib/taskcell/rootfs` (where `make install` puts it).
pub fn default_path() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let candidate = dir.join("rootfs");
            if candidate.join("usr/bin/node").exists() {
                return candidate;
            }
            if dir.file_name().map(|n| n == "target").unwrap_or(false) {
                break;
            }
        }
    }
    PathBuf::from("/usr/lib/taskcell/rootfs")
}
