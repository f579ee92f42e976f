//! A process as `/proc` shows it. Every reader returns `None` (or an empty value) for a process that is gone:
//! the processes looked at here come and go while they are read, and a vanished one is not an error.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

/// The fields of `/proc/PID/stat` that the tests and benches read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The command (`comm`), without its parentheses; it may hold spaces and parentheses of its own.
    pub comm: String,
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: u32,
    /// CPU time in user and kernel mode, in clock ticks (see [`clock_ticks`]).
    pub utime: u64,
    pub stime: u64,
    pub nice: i64,
    pub threads: u64,
    /// Clock ticks after boot when the process started: with the pid, it names a process even after the pid is
    /// reused.
    pub starttime: u64,
}

impl Stat {
    /// Parse the text of a `stat` file. The command is in parentheses and may hold spaces and `)`, so the fixed
    /// fields are counted from the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        // Fields 3 onwards of proc(5), numbered from 0 here: 0 state, 1 ppid, 11 utime, 12 stime, 16 nice,
        // 17 num_threads, 19 starttime.
        let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
        let num = |i: usize| f.get(i)?.parse::<u64>().ok();
        Some(Stat {
            comm,
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            utime: num(11)?,
            stime: num(12)?,
            nice: f.get(16)?.parse().ok()?,
            threads: num(17)?,
            starttime: num(19)?,
        })
    }

    /// A zombie or a dead process: it has exited and only waits to be reaped.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// `/proc/PID/stat`.
pub fn stat(pid: u32) -> Option<Stat> {
    Stat::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/PID/task/TID/stat`: one thread's (its own nice value, for one).
pub fn task_stat(pid: u32, tid: u32) -> Option<Stat> {
    Stat::parse(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

/// The start time of a live process, to tell it from a later one with the same pid; `None` for one that is
/// gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).filter(|s| !s.is_dead()).map(|s| s.starttime)
}

/// Clock ticks per second, the unit of the times in `stat`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    hz.max(1) as u64
}

/// User and system CPU time of a process (all its threads), in seconds; 0 for one that is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat(pid).map_or(0.0, |s| (s.utime + s.stime) as f64 / clock_ticks() as f64)
}

/// The lines of `/proc/PID/status`, `Key:\tvalue`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    fields: Vec<(String, String)>,
}

impl Status {
    pub fn parse(text: &str) -> Status {
        let fields = text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
        Status { fields }
    }

    /// A status file by path (`/proc/self/status`, a thread's `/proc/PID/task/TID/status`).
    pub fn from_file(path: impl AsRef<Path>) -> Option<Status> {
        Some(Status::parse(&fs::read_to_string(path).ok()?))
    }

    /// `/proc/PID/status`.
    pub fn read(pid: u32) -> Option<Status> {
        Status::from_file(format!("/proc/{pid}/status"))
    }

    /// The value of `key` (no colon), trimmed.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A size field (`VmRSS:  1234 kB`) in KiB.
    pub fn kib(&self, key: &str) -> Option<u64> {
        self.get(key)?.strip_suffix("kB")?.trim().parse().ok()
    }

    /// The ids of `Uid` or `Gid`: real, effective, saved, filesystem.
    pub fn ids(&self, key: &str) -> Option<Vec<u32>> {
        self.get(key)?.split_whitespace().map(|v| v.parse().ok()).collect()
    }

    /// The resident set, KiB.
    pub fn vm_rss_kib(&self) -> Option<u64> {
        self.kib("VmRSS")
    }

    pub fn threads(&self) -> Option<u64> {
        self.get("Threads")?.parse().ok()
    }
}

/// The resident set of a process, KiB (0 if it is gone, or a kernel thread without one).
pub fn rss_kib(pid: u32) -> u64 {
    Status::read(pid).and_then(|s| s.vm_rss_kib()).unwrap_or(0)
}

/// The arguments of a process, split at their NULs (empty for a zombie or a kernel thread).
pub fn argv(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// The command line of a process as one string, arguments joined by spaces ("" if it is gone).
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string()).unwrap_or_default()
}

/// Every process id in `/proc`.
pub fn pids() -> Vec<u32> {
    fs::read_dir("/proc").map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default()
}

/// The children of `pid`, sorted, from every thread's `/proc/PID/task/TID/children`; on a kernel without
/// those files, from the parent field of every process. Empty for a process that is gone.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    let mut found_file = false;
    for t in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(t.path().join("children")) {
            found_file = true;
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    if !found_file {
        out = pids().into_iter().filter(|p| stat(*p).is_some_and(|s| s.ppid == pid)).collect();
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every live descendant of `pid`, walking down from it (bounded at 100 000, against a runaway fork bomb).
pub fn descendant_pids(pid: u32) -> Vec<u32> {
    let mut seen = HashSet::new();
    let mut todo = vec![pid];
    let mut out = Vec::new();
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if out.len() < 100_000 && seen.insert(c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// Every live descendant of `root` with its start time, from one pass over the parent field of every process:
/// the pairs still name the same processes later, when some pids may have been reused.
pub fn descendants_with_start(root: u32) -> HashSet<(u32, u64)> {
    let stats: Vec<(u32, Stat)> = pids().into_iter().filter_map(|p| Some((p, stat(p)?))).collect();
    let mut found: HashSet<u32> = HashSet::from([root]);
    loop {
        let before = found.len();
        for (pid, st) in &stats {
            if found.contains(&st.ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&root);
    stats.into_iter().filter(|(p, _)| found.contains(p)).map(|(p, st)| (p, st.starttime)).collect()
}

/// How many descriptors a process holds open (0 if it is gone).
pub fn fd_count(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// What each open descriptor of a process points at (`socket:[123]`, a path, ...), sorted.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| fs::read_link(e.path()).ok()).map(|p| p.display().to_string()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_command() {
        // A command named "a) (b c)" (comm may hold anything but NUL): only the last ')' ends it.
        let line = "4242 (a) (b c)) S 17 4242 4242 0 -1 4194560 120 0 0 0 31 7 0 0 30 10 3 0 987654 12345678 400 \
                    18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 2 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = Stat::parse(line).expect("parses");
        assert_eq!(s, Stat { comm: "a) (b c)".into(), state: 'S', ppid: 17, utime: 31, stime: 7, nice: 10, threads: 3, starttime: 987654 });
        assert!(!s.is_dead());
    }

    #[test]
    fn stat_of_a_zombie_and_negative_nice() {
        let line = "7 (node) Z 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 -10 1 0 55 0 0 0";
        let s = Stat::parse(line).expect("parses");
        assert_eq!((s.state, s.nice, s.starttime), ('Z', -10, 55));
        assert!(s.is_dead());
    }

    #[test]
    fn stat_cut_short_is_none() {
        assert_eq!(Stat::parse("7 (node) S 1 7 7 0"), None);
        assert_eq!(Stat::parse("7 (node"), None);
        assert_eq!(Stat::parse(""), None);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tnode\nState:\tS (sleeping)\nUid:\t1000\t1001\t1002\t1003\nGid:\t0\t0\t0\t0\n\
                    VmRSS:\t   45612 kB\nThreads:\t7\nCpus_allowed_list:\t0-3,8\n";
        let s = Status::parse(text);
        assert_eq!(s.get("Name"), Some("node"));
        assert_eq!(s.get("State"), Some("S (sleeping)"));
        assert_eq!(s.vm_rss_kib(), Some(45612));
        assert_eq!(s.threads(), Some(7));
        assert_eq!(s.ids("Uid"), Some(vec![1000, 1001, 1002, 1003]));
        assert_eq!(s.ids("Gid").map(|g| g[0]), Some(0));
        assert_eq!(s.get("Cpus_allowed_list"), Some("0-3,8"));
        assert_eq!(s.get("VmSwap"), None);
        // A kernel thread has no VmRSS line.
        assert_eq!(Status::parse("Name:\tkthreadd\nThreads:\t1\n").vm_rss_kib(), None);
    }

    #[test]
    fn this_process_as_proc_shows_it() {
        let me = std::process::id();
        let s = stat(me).expect("our own stat");
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(s.threads >= 1);
        assert_eq!(start_time(me), Some(s.starttime));
        assert!(rss_kib(me) > 0);
        assert!(fd_count(me) >= 3);
        assert!(argv(me).is_some_and(|a| !a.is_empty()));
        assert!(pids().contains(&me));
        let parent = std::os::unix::process::parent_id();
        assert!(children(parent).contains(&me));
        assert!(descendant_pids(parent).contains(&me));
        assert!(descendants_with_start(parent).contains(&(me, s.starttime)));
    }
}
