//! The kit shared by the daemon's integration tests (`tests/`, through `tests/common`) and the benches
//! (`benches/`, crate taskcell-bench): the parts both sides would otherwise write twice.
//!
//! - [`procfs`]: a process as `/proc` shows it: the fields of `stat` and `status`, its command line, its
//!   children and descendants, its open descriptors.
//! - [`cgroup`]: `/proc/PID/cgroup` parsed, and the directories under `/sys/fs/cgroup` it names, on cgroup v1
//!   (also the hybrid layout) and v2.
//! - [`http`]: an HTTP/1.1 client over a Unix stream socket: requests, responses framed by `Content-Length`,
//!   chunked streams, raw bytes, and reads that time out so that a hang is an error, not a stuck run.
//! - [`date`]: a UTC date and time from seconds since the epoch, without a date crate.
//!
//! It only reads and speaks: it starts, signals and cleans up nothing (the test harness and the bench own their
//! processes), with one exception, [`cgroup::remove_empty_tree`], which only removes empty directories. The
//! parsers are pure functions over text, unit-tested here on canned input; the readers around them are thin.
//! It knows nothing of taskcell's own names (`taskcell-<pid>`, `sb-*`): those stay with the harness.

pub mod cgroup;
pub mod date;
pub mod http;
pub mod procfs;
