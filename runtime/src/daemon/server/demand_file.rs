//! The pool's demand across restarts: the file in the state directory that holds the window's counts
//! (`pool_policy::Demand::export`) and when they were saved, so that a daemon that starts again can age them by
//! its downtime (`Demand::import`). Reading it never stops a start: every failure is a [`DemandFileError`]
//! for the caller to report. The sizing that uses it is in `pool`.

use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::daemon::replace_file::{self, Durability};

/// Where the window's demand is kept across restarts, in the state directory.
pub(super) const NAME: &str = "pool-demand.json";
/// The longest demand file read back.
const LIMIT: u64 = 4 << 20;
/// The newest seconds of demand written out (about 20 bytes each, so a file stays well under the limit even
/// with a window of days; the default window of 5 minutes holds at most 300).
pub(super) const MAX_ENTRIES: usize = 100_000;
/// A file saved further ahead of this clock than this is not believed (a clock set back, or a forged time
/// that would make old demand look fresh for a whole window).
const CLOCK_SLACK_S: u64 = 60;

/// The demand file: the window's counts as ages in seconds when it was written, and when that was.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SavedDemand {
    pub(super) saved_unix_s: u64,
    /// (age in seconds, tenants that needed a sandbox in that second)
    pub(super) seconds: Vec<(u64, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum DemandFileError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is over {LIMIT} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a demand file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path} was saved at {saved} s, ahead of this clock's {now} s")]
    FromTheFuture { path: PathBuf, saved: u64, now: u64 },
    #[error("saving the pool's demand: {step} {path}: {source}")]
    Write { step: &'static str, path: PathBuf, source: io::Error },
}

/// Seconds since 1970 by the wall clock (0 for a clock before it, which makes every saved file look
/// too new and be ignored): what ages saved demand across a restart, when no monotonic clock survives.
pub(super) fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The demand file, if there is one. Opened without following a symlink and without blocking (a FIFO put there
/// must not hold up the start), and read up to the limit.
pub(super) fn read(path: &Path) -> Result<Option<SavedDemand>, DemandFileError> {
    let failed = |source| DemandFileError::Read { path: path.to_path_buf(), source };
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    if !file.metadata().map_err(failed)?.is_file() {
        return Err(DemandFileError::NotAFile { path: path.to_path_buf() });
    }
    let mut text = Vec::new();
    file.take(LIMIT + 1).read_to_end(&mut text).map_err(failed)?;
    if text.len() as u64 > LIMIT {
        return Err(DemandFileError::TooLarge { path: path.to_path_buf() });
    }
    let saved: SavedDemand = serde_json::from_slice(&text).map_err(|source| DemandFileError::Parse { path: path.to_path_buf(), source })?;
    let now = unix_now_s();
    if saved.saved_unix_s > now + CLOCK_SLACK_S {
        return Err(DemandFileError::FromTheFuture { path: path.to_path_buf(), saved: saved.saved_unix_s, now });
    }
    Ok(Some(saved))
}

/// Replaces the demand file by rename (no half-written file is ever read), without fsync: demand is a hint,
/// and a crash that loses the last seconds only makes the next start's pool smaller. It is written on the
/// loop thread: a few KB at the default window (at most `MAX_ENTRIES` entries), once in 10 s at most.
pub(super) fn write(path: &Path, saved: &SavedDemand) -> Result<(), DemandFileError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec(saved).expect("demand serialises");
    replace_file::replace(path, &tmp, &text, Durability::Hint).map_err(|e| DemandFileError::Write {
        step: e.step,
        path: e.path,
        source: e.source,
    })
}
