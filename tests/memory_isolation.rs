//! No sandbox process holds a copy of the daemon's memory: what one tenant sent cannot be read by another's
//! sandbox, or by a pool sandbox made after it.
//!
//! Through the real daemon: tenant A runs a function whose data holds a marker unique to this run (and whose
//! result echoes it); tenant B runs afterwards and the pool refills, so that the daemon makes sandboxes while
//! A's request and result have passed through its memory. Then, as root, the test reads the memory of every
//! process of every sandbox but A's through `/proc/PID/maps` and `/proc/PID/mem` and asserts that the marker is
//! nowhere. As a control that the search can find it, the marker must be found in the daemon's own memory or in
//! A's sandbox. A sandbox's processes are the daemon's descendants that run as its host uid (uid_base + host pid
//! of its first process, see jailer/src/user.rs); a function learns its own from `/proc/self/uid_map`.
//!
//! Root required; see tests/common/mod.rs.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{unique, Daemon, Rng};
use serde_json::{json, Value};
use testkit::procfs::{self, Status};

/// The function both tenants run: it echoes its data and says which host uid its sandbox runs as.
const ECHO: &str = r#"module.exports = (d) => ({
    echo: d,
    uidMap: require('fs').readFileSync('/proc/self/uid_map', 'utf8'),
})"#;

/// The host uid in a sandbox's "1000 HOST 1" uid map, as the function returned it.
fn host_uid(envelope: &Value) -> u32 {
    let map = envelope["result"]["uidMap"].as_str().unwrap_or_else(|| panic!("no uidMap in {envelope}"));
    map.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("uid map {map:?}"))
}

fn real_uid(pid: u32) -> Option<u32> {
    Status::read(pid)?.ids("Uid")?.first().copied()
}

/// Whether `needle` occurs anywhere in the readable memory of `pid`; None if the process is gone.
fn memory_holds(pid: u32, needle: &[u8]) -> Option<bool> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize + needle.len()];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let name = fields.nth(3).unwrap_or("");
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vvar_vclock]" || name == "[vsyscall]" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else { continue };
        let mut at = start;
        while at < end {
            // Each read overlaps the previous one by the needle's length, so that no occurrence is split.
            let len = ((end - at).min(CHUNK + needle.len() as u64)) as usize;
            let n = match mem.read_at(&mut buf[..len], at) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            if buf[..n].windows(needle.len()).any(|w| w == needle) {
                return Some(true);
            }
            if at + n as u64 >= end {
                break;
            }
            at += (n as u64).saturating_sub(needle.len() as u64).max(1);
        }
    }
    Some(false)
}

#[test]
fn no_sandbox_holds_what_another_tenant_sent() {
    need_root!("no_sandbox_holds_what_another_tenant_sent");
    let d = Daemon::start("memory-isolation", &["--pool-size", "2"]);
    let mut rng = Rng::new();
    let marker = format!("taskcell-memory-marker-{:016x}{:016x}", rng.next(), rng.next());

    let (a, b) = (unique("mem-a"), unique("mem-b"));
    let env_a = d.run_ok(&a, ECHO, json!({ "secret": marker }));
    assert_eq!(env_a["result"]["echo"]["secret"], marker.as_str(), "A's result does not echo its data: {env_a}");
    let uid_a = host_uid(&env_a);
    // New sandboxes, made while A's request and result have passed through the daemon: the one B takes is
    // replaced, as was the one A took.
    let env_b = d.run_ok(&b, ECHO, json!({ "n": 1 }));
    let uid_b = host_uid(&env_b);
    assert_ne!(uid_a, uid_b, "A and B were served by the same sandbox");
    d.wait_pool_full(Duration::from_secs(60)).unwrap_or_else(|last| panic!("the pool did not refill: {last}"));

    let daemon = d.pid();
    let mut sandboxes: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for pid in common::descendant_pids(daemon) {
        if let Some(uid) = real_uid(pid) {
            sandboxes.entry(uid).or_default().push(pid);
        }
    }
    assert!(!sandboxes.contains_key(&0), "a descendant of the daemon runs as host root: {sandboxes:?}");
    assert!(sandboxes.contains_key(&uid_a) && sandboxes.contains_key(&uid_b), "A's or B's sandbox is gone: {sandboxes:?}");
    // A's own sandbox, B's and the two of the refilled pool.
    assert!(sandboxes.len() >= 4, "expected at least 4 sandboxes (A, B, a full pool of 2): {sandboxes:?}");

    let needle = marker.as_bytes();
    let in_daemon = memory_holds(daemon, needle).expect("the daemon is running");
    let in_a = sandboxes[&uid_a].iter().any(|p| memory_holds(*p, needle) == Some(true));
    println!("marker found in the daemon's memory: {in_daemon}; in A's sandbox: {in_a}");
    assert!(
        in_daemon || in_a,
        "the control failed: the marker is found neither in the daemon nor in A's sandbox, so its absence elsewhere proves nothing"
    );

    let mut scanned = 0;
    let mut holders = Vec::new();
    for (uid, pids) in sandboxes.iter().filter(|(uid, _)| **uid != uid_a) {
        for pid in pids {
            let cmdline = procfs::cmdline(*pid);
            match memory_holds(*pid, needle) {
                Some(true) => holders.push(format!("pid {pid} (host uid {uid}, {cmdline})")),
                Some(false) => scanned += 1,
                None => {}
            }
        }
    }
    println!("scanned {scanned} processes of {} sandboxes other than A's", sandboxes.len() - 1);
    assert!(holders.is_empty(), "tenant A's data is in the memory of other sandboxes' processes:\n  {}", holders.join("\n  "));
    // Every sandbox has its init and its node.
    assert!(scanned >= 2 * (sandboxes.len() - 1), "too few processes scanned: {scanned} for {sandboxes:?}");
}
