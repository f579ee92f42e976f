//! cgroups: one per sandbox, nested under the cgroup this process is in, on v1 or v2.
//!
//! Layout (`OWN` is this process's own cgroup, per controller on v1):
//! `OWN/taskcell-<pid>/sb-<n>`, one `taskcell-<pid>` group per jailer process so that several daemons (and
//! `taskcell jail` runs) on one host never touch each other's sandboxes, and a stale group left by a process that
//! was killed can be recognised and swept by the next start.
//!
//! cgroup v1 (hybrid hosts) keeps memory, pids and cpu in separate hierarchies; pure v2 keeps them in one tree,
//! where a cgroup with processes cannot also have controllers enabled for its children, so on v2 the jailer moves
//! itself into `OWN/taskcell-supervisor` first (systemd's `Delegate=yes` makes OWN ours to arrange).
//!
//! Parent side, but for one write: the sandbox is in its cgroup before it runs any code of its own. On v2 it is
//! born there (clone3's CLONE_INTO_CGROUP), or the parent writes its pid while the child waits; on v1 the child
//! writes "0" to the `tasks` files the parent opened for it ([`Cgroup::join_files`], `child/cgroup.rs`), which
//! spares the kernel's global threadgroup lock. The child then makes a cgroup namespace rooted there.
//!
//! Files are written directly rather than through cgroups-rs: the jailer needs a handful of files on either
//! version (limits, `cgroup.procs`, `cgroup.kill`, the OOM-kill counters) and exact control of the order.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {value:?} to {path}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("opening {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("creating cgroup {path}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("removing cgroup {path}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("no usable cgroup hierarchy: need v1 memory, pids and cpu controllers or a v2 mount offering them ({0})")]
    NoHierarchy(String),
}

/// The limits of one sandbox.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Memory in bytes; swap is limited to nothing beyond it.
    pub memory: u64,
    /// Maximum number of tasks (processes and threads).
    pub pids: u64,
    /// CPU time per period, in microseconds (`cpu_quota_us` of every `cpu_period_us`); None for no quota.
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    /// Relative CPU weight against other cgroups, in cgroup v2 units (1-10000, default 100; v1 shares are
    /// this × 1024 / 100). None leaves the default.
    pub cpu_weight: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory: 128 << 20, pids: 64, cpu_quota_us: Some(100_000), cpu_period_us: 100_000, cpu_weight: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Layout {
    /// Our own cgroup directory in each of the memory, pids and cpu hierarchies.
    V1 { memory: PathBuf, pids: PathBuf, cpu: PathBuf },
    /// Our own cgroup directory in the unified hierarchy (the supervisor's parent once we moved).
    V2 { own: PathBuf },
}

/// This process's group of sandbox cgroups.
#[derive(Debug)]
pub struct CgroupRoot {
    layout: Layout,
    /// `taskcell-<pid>` in each hierarchy (one on v2).
    groups: Vec<PathBuf>,
}

/// One sandbox's cgroup.
/// How a [`Cgroup::cpu_usage_file`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuUsageUnit {
    /// cgroup v2 `cpu.stat`: a `usage_usec N` line, microseconds.
    CpuStat,
    /// cgroup v1 `cpuacct.usage`: one number, nanoseconds.
    Nanoseconds,
}

#[derive(Debug)]
pub struct Cgroup {
    /// The sandbox's directory in each hierarchy; the first is the memory one.
    dirs: Vec<PathBuf>,
    v2: bool,
}

const SUPERVISOR: &str = "taskcell-supervisor";
/// cpu.weight of the supervisor's leaf on v2, against 100 for the sandboxes' group.
const SUPERVISOR_CPU_WEIGHT: u64 = 1000;

impl CgroupRoot {
    /// Find our own cgroup, create `taskcell-<pid>` under it and enable the controllers the sandboxes need.
    pub fn create() -> Result<CgroupRoot, CgroupError> {
        let layout = detect()?;
        let name = format!("taskcell-{}", std::process::id());
        let groups = match &layout {
            Layout::V1 { memory, pids, cpu } => {
                let mut groups = Vec::new();
                for own in [memory, pids, cpu] {
                    let dir = own.join(&name);
                    mkdir(&dir)?;
                    groups.push(dir);
                }
                groups
            }
            Layout::V2 { own } => {
                enable_v2_controllers(own)?;
                let dir = own.join(&name);
                mkdir(&dir)?;
                write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
                vec![dir]
            }
        };
        Ok(CgroupRoot { layout, groups })
    }

    /// Make the cgroup of one sandbox, limits set, no process in it yet.
    pub fn sandbox(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let dirs: Vec<PathBuf> = self.groups.iter().map(|g| g.join(name)).collect();
        let cgroup = Cgroup { dirs, v2: matches!(self.layout, Layout::V2 { .. }) };
        for dir in &cgroup.dirs {
            mkdir(dir)?;
        }
        if let Err(err) = cgroup.set_limits(limits) {
            let _ = cgroup.remove();
            return Err(err);
        }
        Ok(cgroup)
    }

    /// Remove `taskcell-<pid>` groups under our own cgroup whose process is gone (a daemon killed with -9),
    /// killing whatever is still in them. Returns how many were removed.
    pub fn sweep_stale(&self) -> usize {
        let owns: Vec<&PathBuf> = match &self.layout {
            Layout::V1 { memory, pids, cpu } => vec![memory, pids, cpu],
            Layout::V2 { own } => vec![own],
        };
        let mut removed = 0;
        for own in owns {
            let Ok(entries) = fs::read_dir(own) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix("taskcell-").and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == std::process::id() || process_is_taskcell(pid) {
                    continue;
                }
                if remove_tree(&entry.path(), matches!(self.layout, Layout::V2 { .. })) {
                    removed += 1;
                }
            }
        }
        removed
    }
}

impl CgroupRoot {
    /// Remove this process's groups (and any sandbox cgroup still in them). Returns false if one would not go.
    pub fn remove_groups(&self) -> bool {
        let v2 = matches!(self.layout, Layout::V2 { .. });
        // Every group is tried, even after one fails.
        let mut ok = true;
        for group in &self.groups {
            ok &= remove_tree(group, v2);
        }
        ok
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        self.remove_groups();
    }
}

impl Cgroup {
    fn set_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        if self.v2 {
            let dir = &self.dirs[0];
            write(&dir.join("memory.max"), &limits.memory.to_string())?;
            write_if_exists(&dir.join("memory.swap.max"), "0")?;
            // One OOM kill takes the whole sandbox, as a timeout does.
            write_if_exists(&dir.join("memory.oom.group"), "1")?;
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            let quota = limits.cpu_quota_us.map_or("max".to_string(), |q| q.to_string());
            write(&dir.join("cpu.max"), &format!("{quota} {}", limits.cpu_period_us))?;
            if let Some(weight) = limits.cpu_weight {
                self.set_cpu_weight(weight)?;
            }
        } else {
            let (memory, pids, cpu) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
            write(&memory.join("memory.limit_in_bytes"), &limits.memory.to_string())?;
            // memsw is memory plus swap: equal to the memory limit means no swap at all. Without swap
            // accounting the file is absent; then keep the kernel from choosing to swap this group.
            if memory.join("memory.memsw.limit_in_bytes").exists() {
                write(&memory.join("memory.memsw.limit_in_bytes"), &limits.memory.to_string())?;
            } else {
                write_if_exists(&memory.join("memory.swappiness"), "0")?;
            }
            write(&pids.join("pids.max"), &limits.pids.to_string())?;
            write(&cpu.join("cpu.cfs_period_us"), &limits.cpu_period_us.to_string())?;
            let quota = limits.cpu_quota_us.map_or("-1".to_string(), |q| q.to_string());
            write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
            if let Some(weight) = limits.cpu_weight {
                self.set_cpu_weight(weight)?;
            }
        }
        Ok(())
    }

    /// Set the CPU weight (v2 units: 1-10000, 100 the default; v1 cpu.shares = weight × 1024 / 100).
    pub fn set_cpu_weight(&self, weight: u64) -> Result<(), CgroupError> {
        let weight = weight.clamp(1, 10_000);
        if self.v2 {
            write(&self.dirs[0].join("cpu.weight"), &weight.to_string())
        } else {
            write(&self.dirs[2].join("cpu.shares"), &(weight * 1024 / 100).max(2).to_string())
        }
    }

    /// On v2, a descriptor of the cgroup's directory for clone3's CLONE_INTO_CGROUP; None on v1.
    pub fn clone_target(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        if !self.v2 {
            return None;
        }
        fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(&self.dirs[0]).ok().map(std::os::fd::OwnedFd::from)
    }

    /// On v1, the `tasks` file of the sandbox's directory in each hierarchy, opened for writing (close-on-exec,
    /// lifted to 10 and above), for the child to join by writing "0" to each (`child/cgroup.rs`); empty on v2.
    ///
    /// Why the child and `tasks`: writing a pid to `cgroup.procs` moves a whole thread group, for which the
    /// kernel write-locks the global cgroup threadgroup rwsem, which waits for an RCU grace period (5-15 ms
    /// here) while holding cgroup_mutex, so that concurrent spawns (and every cgroup mkdir and rmdir) queue
    /// behind it. A thread moving itself through `tasks` cannot exit or exec meanwhile, and the kernel skips
    /// that lock (`cgroup_procs_write_start`: pid 0, one thread); the child is single-threaded, so its thread
    /// is the whole process. The kernel checks the opener's credentials (ours, root), not the writer's.
    pub fn join_files(&self) -> Result<Vec<std::os::fd::OwnedFd>, CgroupError> {
        use std::os::fd::AsFd;
        if self.v2 {
            return Ok(Vec::new());
        }
        let mut files = Vec::new();
        for dir in &self.dirs {
            let path = dir.join("tasks");
            let file = fs::OpenOptions::new().write(true).open(&path).map_err(|source| CgroupError::Open { path: path.clone(), source })?;
            files.push(crate::plan::lift(file.as_fd()).map_err(|source| CgroupError::Open { path, source })?);
        }
        Ok(files)
    }

    /// Move `pid` (and so everything it will start) into this cgroup.
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        let text = fs::read_to_string(self.dirs[0].join(file)).unwrap_or_default();
        text.lines().filter_map(|l| l.strip_prefix(key)?.trim().parse().ok()).next().unwrap_or(0)
    }

    /// Memory charged to this cgroup now, in bytes.
    pub fn memory_current(&self) -> u64 {
        let file = if self.v2 { "memory.current" } else { "memory.usage_in_bytes" };
        fs::read_to_string(self.dirs[0].join(file)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// The cgroup's CPU time counter, opened once to be read again and again: `cpu.stat` (its `usage_usec`
    /// line) on v2, `cpuacct.usage` (nanoseconds) on v1 where cpuacct shares the cpu hierarchy. None on a v1
    /// host whose cpuacct is mounted elsewhere (the caller falls back to /proc's clock ticks).
    pub fn cpu_usage_file(&self) -> Option<(fs::File, CpuUsageUnit)> {
        if self.v2 {
            fs::File::open(self.dirs[0].join("cpu.stat")).ok().map(|f| (f, CpuUsageUnit::CpuStat))
        } else {
            fs::File::open(self.dirs[2].join("cpuacct.usage")).ok().map(|f| (f, CpuUsageUnit::Nanoseconds))
        }
    }

    /// Kill every process in the cgroup and remove it, waiting (up to 2 s) for the last ones to be gone.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in &self.dirs {
            remove_dir_waiting(dir, self.v2, deadline)?;
        }
        Ok(())
    }
}

fn remove_dir_waiting(dir: &Path, v2: bool, deadline: Instant) -> Result<(), CgroupError> {
    let mut pause = Duration::from_micros(200);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_members(dir, v2);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => return Err(CgroupError::Remove { path: dir.to_path_buf(), source }),
        }
    }
}

/// SIGKILL everything in `dir`: `cgroup.kill` on v2, the pids listed in `cgroup.procs` on v1 (the sandbox's
/// PID namespace normally dies with its first process; this is the backstop).
fn kill_members(dir: &Path, v2: bool) {
    if v2 && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // The pid was read from the cgroup this process made for a sandbox.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Depth-first removal of a stale group and its sandboxes.
fn remove_tree(dir: &Path, v2: bool) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path(), v2);
            }
        }
    }
    remove_dir_waiting(dir, v2, Instant::now() + Duration::from_secs(2)).is_ok()
}

fn process_is_taskcell(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == "taskcell").unwrap_or(false)
}

/// Decide between v1 and v2 from the mounts and our own entries in /proc/self/cgroup.
fn detect() -> Result<Layout, CgroupError> {
    let mounts = read(Path::new("/proc/self/mounts"))?;
    let own = read(Path::new("/proc/self/cgroup"))?;
    layout_of(&mounts, &own, |mount| fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default())
}

/// The layout from the text of /proc/self/mounts and /proc/self/cgroup; `controllers` reads the
/// `cgroup.controllers` of a cgroup2 mount (empty when unreadable). Pure, for tests: v1 when memory, pids and
/// cpu each have a v1 hierarchy we are in, else v2 when its root offers all three.
fn layout_of(mounts: &str, own: &str, controllers: impl Fn(&Path) -> String) -> Result<Layout, CgroupError> {
    let mut v1: [Option<PathBuf>; 3] = [None, None, None];
    let mut v2_mount = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 4 {
            continue;
        }
        let (mount_point, fstype, options) = (fields[1], fields[2], fields[3]);
        if fstype == "cgroup2" {
            v2_mount = Some(PathBuf::from(mount_point));
        } else if fstype == "cgroup" {
            for (i, ctrl) in ["memory", "pids", "cpu"].iter().enumerate() {
                if options.split(',').any(|o| o == *ctrl) {
                    let path = own_path(own, |controllers| controllers.split(',').any(|c| c == *ctrl));
                    if let Some(path) = path {
                        v1[i] = Some(PathBuf::from(mount_point).join(path.trim_start_matches('/')));
                    }
                }
            }
        }
    }
    if let [Some(memory), Some(pids), Some(cpu)] = v1 {
        return Ok(Layout::V1 { memory, pids, cpu });
    }
    if let Some(mount) = v2_mount {
        let available = controllers(&mount);
        let has = |c: &str| available.split_whitespace().any(|a| a == c);
        if has("memory") && has("pids") && has("cpu") {
            let path = own_path(own, |controllers| controllers.is_empty()).unwrap_or_default();
            let mut dir = mount.join(path.trim_start_matches('/'));
            if dir.file_name().map(|n| n == SUPERVISOR).unwrap_or(false) {
                dir.pop();
            }
            return Ok(Layout::V2 { own: dir });
        }
        return Err(CgroupError::NoHierarchy(format!("cgroup2 at {} offers only [{}]", mount.display(), available.trim())));
    }
    Err(CgroupError::NoHierarchy("no cgroup mounts".into()))
}

/// Our path in the hierarchy whose controller list (second field of /proc/self/cgroup) satisfies `want`.
fn own_path(own: &str, want: impl Fn(&str) -> bool) -> Option<String> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        want(controllers).then(|| path.to_string())
    })
}

/// On v2, controllers can be enabled for children only in a cgroup without processes: if ours has some (us),
/// move this process into a leaf of its own first.
fn enable_v2_controllers(own: &Path) -> Result<(), CgroupError> {
    let control = own.join("cgroup.subtree_control");
    match fs::write(&control, "+memory +pids +cpu") {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let leaf = own.join(SUPERVISOR);
            mkdir(&leaf)?;
            write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            write(&control, "+memory +pids +cpu")?;
            // The supervisor's threads run for microseconds at a time, and every request waits on them: ten
            // times the weight of the sandboxes' group lets them preempt a busy sandbox as soon as they wake
            // (what nice -10 does for the event loop on v1, where it sits beside the sandboxes' group).
            let _ = fs::write(leaf.join("cpu.weight"), SUPERVISOR_CPU_WEIGHT.to_string());
            Ok(())
        }
        Err(source) => Err(CgroupError::Write { path: control, value: "+memory +pids +cpu".into(), source }),
    }
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create { path: path.to_path_buf(), source }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write { path: path.to_path_buf(), value: value.into(), source })
}

fn write_if_exists(path: &Path, value: &str) -> Result<(), CgroupError> {
    match fs::write(path, value) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other.map_err(|source| CgroupError::Write { path: path.to_path_buf(), value: value.into(), source }),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_picks_the_controller_line() {
        let own = "9:name=systemd:/\n8:pids:/a\n4:memory:/process_api/x\n1:cpu,cpuacct:/c\n0::/u\n";
        assert_eq!(own_path(own, |c| c.split(',').any(|x| x == "memory")).as_deref(), Some("/process_api/x"));
        assert_eq!(own_path(own, |c| c.split(',').any(|x| x == "cpu")).as_deref(), Some("/c"));
        assert_eq!(own_path(own, |c| c.is_empty()).as_deref(), Some("/u"));
    }

    const HYBRID_MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,nodev,noexec,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
";
    const HYBRID_OWN: &str = "12:pids:/user.slice/u\n11:cpuset:/\n4:memory:/user.slice/m\n3:cpu,cpuacct:/user.slice/c\n1:name=systemd:/user.slice/s\n0::/user.slice/v2\n";
    const V2_MOUNTS: &str =
        "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0\n";
    const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

    fn layout(mounts: &str, own: &str, controllers: &str) -> Result<Layout, CgroupError> {
        layout_of(mounts, own, |mount| {
            assert!(mount.is_absolute(), "asks a mount point: {mount:?}");
            controllers.to_string()
        })
    }

    #[test]
    fn a_hybrid_host_uses_its_v1_hierarchies() {
        let got = layout(HYBRID_MOUNTS, HYBRID_OWN, ALL).expect("v1");
        assert_eq!(
            got,
            Layout::V1 {
                memory: "/sys/fs/cgroup/memory/user.slice/m".into(),
                pids: "/sys/fs/cgroup/pids/user.slice/u".into(),
                // cpu,cpuacct holds cpu; cpuset is another controller.
                cpu: "/sys/fs/cgroup/cpu,cpuacct/user.slice/c".into(),
            }
        );
    }

    #[test]
    fn a_pure_v2_host_uses_the_unified_tree() {
        let own = "0::/system.slice/taskcell.service\n";
        assert_eq!(layout(V2_MOUNTS, own, ALL).expect("v2"), Layout::V2 { own: "/sys/fs/cgroup/system.slice/taskcell.service".into() });
        // After the jailer moved itself into its supervisor leaf, OWN is still the service's group.
        let moved = "0::/system.slice/taskcell.service/taskcell-supervisor\n";
        assert_eq!(layout(V2_MOUNTS, moved, ALL).expect("v2"), Layout::V2 { own: "/sys/fs/cgroup/system.slice/taskcell.service".into() });
        assert_eq!(layout(V2_MOUNTS, "0::/\n", ALL).expect("root"), Layout::V2 { own: "/sys/fs/cgroup".into() });
    }

    #[test]
    fn v2_without_a_needed_controller_is_refused_saying_what_it_offers() {
        let err = layout(V2_MOUNTS, "0::/a\n", "cpuset io memory\n").expect_err("no pids, no cpu");
        let text = err.to_string();
        assert!(text.contains("cgroup2 at /sys/fs/cgroup offers only [cpuset io memory]"), "{text}");
        // An unreadable cgroup.controllers reads as empty.
        assert!(matches!(layout(V2_MOUNTS, "0::/a\n", ""), Err(CgroupError::NoHierarchy(_))));
    }

    #[test]
    fn partial_v1_falls_back_to_v2_and_odd_inputs_do_not_panic() {
        // memory and pids in v1 but cpu only in v2: the unified tree, where all three are.
        let no_cpu: String = HYBRID_MOUNTS.lines().filter(|l| !l.contains("cpuacct")).map(|l| format!("{l}\n")).collect();
        let got = layout(&no_cpu, HYBRID_OWN, ALL).expect("v2");
        assert_eq!(got, Layout::V2 { own: "/sys/fs/cgroup/unified/user.slice/v2".into() });
        // A v1 hierarchy we have no line for in /proc/self/cgroup does not count.
        let own_without_pids: String = HYBRID_OWN.lines().filter(|l| !l.contains("pids")).map(|l| format!("{l}\n")).collect();
        assert!(matches!(layout(&no_cpu, &own_without_pids, ""), Err(CgroupError::NoHierarchy(_))));
        for (mounts, own) in [("", ""), ("\n\n", "garbage"), ("cgroup /x", "4:memory"), ("a b c\n", "::\n")] {
            let err = layout(mounts, own, ALL).expect_err("no hierarchy");
            assert!(err.to_string().contains("no cgroup mounts"), "{mounts:?}: {err}");
        }
        // No v2 line for us: the mount's root.
        assert_eq!(layout(V2_MOUNTS, "4:memory:/m\n", ALL).expect("v2"), Layout::V2 { own: "/sys/fs/cgroup".into() });
    }
}
