//! A network namespace of the test binary's own, holding only `lo` (up): the egress tests run their servers
//! and their daemons in it, so that a wrong implementation cannot send a single packet off the machine, not
//! even to the metadata address (there is no route but 127.0.0.0/8 and ::1).
//!
//! A network namespace is a property of a thread: [`enter`] moves the calling thread into the namespace (made
//! once, on a thread of its own, kept by a descriptor), and whatever that thread starts afterwards, threads
//! and processes (the daemon, a Node server), is born in it. Each test calls it first; libtest runs each test
//! on a thread of its own. The namespace goes when the test binary exits and its daemons are gone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

/// The namespace's descriptor: opened from /proc/thread-self/ns/net of the thread that made it.
fn namespace() -> &'static File {
    static NS: OnceLock<File> = OnceLock::new();
    NS.get_or_init(|| {
        std::thread::spawn(|| {
            // SAFETY: unshare with a constant flag, on this short-lived thread only.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            loopback_up();
            File::open("/proc/thread-self/ns/net").expect("open the new network namespace")
        })
        .join()
        .expect("making the test's network namespace")
    })
}

/// Move the calling thread into the test's network namespace (idempotent).
pub fn enter() {
    let ns = namespace();
    // SAFETY: setns with a descriptor of a network namespace that stays open for the process's life.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into the test's network namespace: {}", std::io::Error::last_os_error());
    assert_eq!(devices("/proc/thread-self/net/dev"), vec!["lo".to_string()], "the test's namespace holds only lo");
}

/// The inode of the network namespace of process `pid`.
pub fn of_process(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("a process's network namespace").ino()
}

/// The inode of the test's namespace.
pub fn inode() -> u64 {
    namespace().metadata().expect("fstat of the namespace").ino()
}

/// Device names in a /proc/.../net/dev table.
fn devices(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read net/dev");
    text.lines().skip(2).filter_map(|l| l.split(':').next()).map(|n| n.trim().to_string()).collect()
}

/// Set IFF_UP on `lo` (SIOCSIFFLAGS), as the jailer does in a sandbox.
fn loopback_up() {
    // SAFETY: a socket call, an ioctl pair on a zeroed ifreq naming "lo", and the close of that socket.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "a socket in the new namespace: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, 0, "bringing lo up in the test's namespace: {err}");
    }
}
