//! Replacing a small state file whole: written to a temporary name beside it, then renamed over it, so that
//! a reader (or the next start, after a crash) finds the old file or the new one, never half of one. The
//! secrets, the shared store's applied version and the pool's demand are written this way; the task store
//! has its own steps (unique names, a source renamed last: store.rs).

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Whether the new contents must survive a crash once `replace` has returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The file is fsynced before the rename; the caller syncs the directory (once, after all its renames).
    Synced,
    /// No fsync: a crash may bring back the old contents, which the caller can live with (a hint, or state
    /// that is worked out again).
    Hint,
}

/// What failed: the step, the path it was on and the error.
#[derive(Debug)]
pub struct ReplaceError {
    pub step: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Writes `bytes` to `tmp` (mode 0600, created or truncated, never through a symlink) and renames it to
/// `path`. `tmp` must be in `path`'s directory and belong to this write alone. If a step after its creation
/// fails, `tmp` is removed (what was at that name before this write, such as a symlink, is left alone).
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8], durability: Durability) -> Result<(), ReplaceError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(|source| ReplaceError { step: "creating", path: tmp.to_path_buf(), source })?;
    let fail = |step, at: &Path, source| {
        let _ = std::fs::remove_file(tmp);
        ReplaceError { step, path: at.to_path_buf(), source }
    };
    file.write_all(bytes).map_err(|e| fail("writing", tmp, e))?;
    if durability == Durability::Synced {
        file.sync_all().map_err(|e| fail("syncing", tmp, e))?;
    }
    std::fs::rename(tmp, path).map_err(|e| fail("renaming", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("taskcell-replace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_whole_with_mode_0600_and_leaves_no_temporary_file() {
        let d = dir("whole");
        let (path, tmp) = (d.join("f.json"), d.join("f.json.tmp"));
        std::fs::write(&path, b"old contents, longer than the new").unwrap();
        for durability in [Durability::Synced, Durability::Hint] {
            replace(&path, &tmp, b"new", durability).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"new");
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert!(!tmp.exists());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_at_the_temporary_name_is_not_followed_and_nothing_is_replaced() {
        let d = dir("symlink");
        let (path, tmp, elsewhere) = (d.join("f.json"), d.join("f.json.tmp"), d.join("elsewhere"));
        std::fs::write(&path, b"old").unwrap();
        std::fs::write(&elsewhere, b"not to be touched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
        let e = replace(&path, &tmp, b"new", Durability::Hint).unwrap_err();
        assert_eq!(e.step, "creating");
        assert!(std::fs::symlink_metadata(&tmp).unwrap().file_type().is_symlink(), "not ours to remove");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not to be touched");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
