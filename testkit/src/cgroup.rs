//! `/proc/PID/cgroup` and the directories under `/sys/fs/cgroup` it names.
//!
//! A line is `ID:CONTROLLERS:PATH`. cgroup v1 has one line a hierarchy (`4:memory:/a`, `1:cpu,cpuacct:/a`,
//! `9:name=systemd:/`); v2 has the one line `0::/PATH`. A hybrid host has both, its v2 tree mounted at
//! `/sys/fs/cgroup/unified`; a pure v2 host mounts it at `/sys/fs/cgroup` itself.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the hierarchies are mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The controllers that limit a sandbox, in the jailer's order.
pub const LIMITS: [&str; 3] = ["memory", "pids", "cpu"];

/// One line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u32,
    /// The controllers of a v1 hierarchy (`["cpu", "cpuacct"]`, `["name=systemd"]`); empty for v2.
    pub controllers: Vec<String>,
    /// The process's cgroup in that hierarchy, from its root (`/a/b`).
    pub path: String,
}

impl Entry {
    pub fn is_unified(&self) -> bool {
        self.controllers.is_empty()
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    fn rel(&self) -> &str {
        self.path.trim_start_matches('/')
    }

    /// The directories under `root` where this cgroup may be, whether they exist or not: for v2 in the hybrid
    /// `unified` mount, then at the root; for v1 in the mount named after the whole controller list
    /// (`cpu,cpuacct`; `systemd` for `name=systemd`), then in one named after each controller.
    pub fn candidates(&self, root: &Path) -> Vec<PathBuf> {
        if self.is_unified() {
            return vec![root.join("unified").join(self.rel()), root.join(self.rel())];
        }
        let joined = self.controllers.join(",");
        let name = joined.strip_prefix("name=").unwrap_or(&joined);
        let mut out = vec![root.join(name).join(self.rel())];
        out.extend(name.split(',').map(|c| root.join(c).join(self.rel())));
        out
    }
}

/// Parse the text of `/proc/PID/cgroup`; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some(Entry { id: id.parse().ok()?, controllers, path: path.to_string() })
        })
        .collect()
}

/// `/proc/PID/cgroup`, parsed (empty for a process that is gone).
pub fn read(pid: u32) -> Vec<Entry> {
    parse(&fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default())
}

/// Every existing directory that `pid`'s cgroups may be in, in every hierarchy, sorted: where a process makes
/// cgroups of its own below its cgroup. On the hybrid layout one hierarchy can show under several names
/// (`cpu` and `cpu,cpuacct`); all are listed.
pub fn hierarchy_dirs(pid: u32) -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut out: Vec<PathBuf> = read(pid).iter().flat_map(|e| e.candidates(root)).filter(|d| d.is_dir()).collect();
    out.sort();
    out.dedup();
    out
}

/// The directories that hold the limits of a process with these cgroup entries, as the jailer picks them: on
/// cgroup v1 (also hybrid) the memory, pids and cpu directories when all three exist, labelled with their
/// controller and in the order of the entries; otherwise the v2 directory (labelled `unified`) that is a cgroup.
/// `exists` says whether a path exists (`Path::exists`, or a set of paths in a unit test).
pub fn limit_dirs_in(entries: &[Entry], root: &Path, exists: impl Fn(&Path) -> bool) -> Vec<(String, PathBuf)> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for e in entries {
        for c in e.controllers.iter().filter(|c| LIMITS.contains(&c.as_str())) {
            let dir = root.join(c).join(e.rel());
            if exists(&dir) {
                v1.push((c.clone(), dir));
            }
        }
        if e.is_unified() {
            for dir in [root.join(e.rel()), root.join("unified").join(e.rel())] {
                if exists(&dir.join("cgroup.controllers")) {
                    v2.push(("unified".to_string(), dir));
                }
            }
        }
    }
    if v1.len() == LIMITS.len() {
        v1
    } else {
        v2
    }
}

/// [`limit_dirs_in`] for a live process under `/sys/fs/cgroup`.
pub fn limit_dirs(pid: u32) -> Vec<(String, PathBuf)> {
    limit_dirs_in(&read(pid), Path::new(ROOT), Path::exists)
}

/// rmdir a cgroup tree, leaves first. Only empty groups can go; nothing is killed.
pub fn remove_empty_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_empty_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const HYBRID: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/15f0\n2:cpu,cpuacct:/job\n0::/\n";
    const V2: &str = "0::/user.slice/user-0.slice/session-3.scope\n";

    fn set(paths: &[&str]) -> HashSet<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn parses_a_hybrid_file() {
        let e = parse(HYBRID);
        assert_eq!(e.len(), 5);
        assert_eq!(e[0], Entry { id: 9, controllers: vec!["name=systemd".into()], path: "/".into() });
        assert_eq!(e[3], Entry { id: 2, controllers: vec!["cpu".into(), "cpuacct".into()], path: "/job".into() });
        assert!(e[3].has("cpuacct") && !e[3].has("cpu,cpuacct"));
        assert!(e[4].is_unified() && e[4].path == "/");
        // A path may hold colons: only the first two separate fields.
        assert_eq!(parse("3:memory:/a:b\n")[0].path, "/a:b");
        assert!(parse("junk\n\n").is_empty());
    }

    #[test]
    fn candidates_of_each_form() {
        let root = Path::new("/cg");
        let e = parse(HYBRID);
        let s = |v: Vec<PathBuf>| v.into_iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        assert_eq!(s(e[0].candidates(root)), ["/cg/systemd/", "/cg/systemd/"]);
        assert_eq!(s(e[3].candidates(root)), ["/cg/cpu,cpuacct/job", "/cg/cpu/job", "/cg/cpuacct/job"]);
        assert_eq!(s(e[4].candidates(root)), ["/cg/unified/", "/cg/"]);
        let v2 = parse(V2);
        assert_eq!(
            s(v2[0].candidates(root)),
            ["/cg/unified/user.slice/user-0.slice/session-3.scope", "/cg/user.slice/user-0.slice/session-3.scope"]
        );
    }

    #[test]
    fn limit_dirs_on_v1_hybrid() {
        let root = Path::new("/cg");
        let have = set(&["/cg/pids", "/cg/memory/process_api/15f0", "/cg/cpu/job", "/cg/unified/cgroup.controllers"]);
        let dirs = limit_dirs_in(&parse(HYBRID), root, |p| have.contains(p));
        let want: Vec<(String, PathBuf)> = vec![
            ("pids".into(), "/cg/pids".into()),
            ("memory".into(), "/cg/memory/process_api/15f0".into()),
            ("cpu".into(), "/cg/cpu/job".into()),
        ];
        assert_eq!(dirs, want);
        // Without all three v1 controllers, the unified hierarchy of the hybrid layout holds the limits.
        let have = set(&["/cg/pids", "/cg/memory/process_api/15f0", "/cg/unified/cgroup.controllers"]);
        assert_eq!(limit_dirs_in(&parse(HYBRID), root, |p| have.contains(p)), [("unified".to_string(), PathBuf::from("/cg/unified/"))]);
    }

    #[test]
    fn limit_dirs_on_v2() {
        let root = Path::new("/cg");
        let have = set(&["/cg/user.slice/user-0.slice/session-3.scope/cgroup.controllers"]);
        assert_eq!(
            limit_dirs_in(&parse(V2), root, |p| have.contains(p)),
            [("unified".to_string(), PathBuf::from("/cg/user.slice/user-0.slice/session-3.scope"))]
        );
        assert!(limit_dirs_in(&parse(V2), root, |_| false).is_empty());
    }
}
