//! Seccomp: the syscall filters every sandbox runs under, and the names of syscalls for reporting.
//!
//! The filters come from `policies/sandbox.json`, compiled to BPF by `build.rs` (see it for the checks
//! made at build time); the child hands them to the kernel (`child/seccomp.rs`) as the last step
//! before `execve`, and this module keeps them and the names of syscalls for reporting. Three filters are stacked and the kernel applies the strictest answer of all:
//! - `refuse`: EPERM for mount, namespaces, ptrace, bpf, keyrings, modules, clock setting, memfd,
//!   `clone` with namespace flags, and for the arguments Node never passes: socket families other than
//!   unix/inet/inet6/route netlink and inet protocols other than TCP/UDP, `TCP_ULP`, ioctl requests and
//!   prctl options outside short lists, changes of `RLIMIT_CORE`;
//! - `enosys`: ENOSYS for `clone3` (so that glibc falls back to `clone`, whose flags `refuse` can
//!   read) and `io_uring_*` (so that libuv falls back to its thread pool);
//! - `allow`: kills the process (SIGSYS) on any syscall it does not list. It lists what Node needs
//!   plus everything the two filters above answer, so that their errno is not trumped by the kill.
//!   It does not list seccomp(2), which is why it is installed last.
//!
//! It does not set `no_new_privs` (the caps step does) and owns nothing else of the sandbox.

/// One compiled seccomp filter.
#[derive(Debug)]
pub struct Program {
    name: &'static str,
    filter: &'static [libc::sock_filter],
}

impl Program {
    /// The filter's name in `policies/sandbox.json`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The BPF instructions, as the kernel takes them.
    pub fn filter(&self) -> &'static [libc::sock_filter] {
        self.filter
    }
}

// PROGRAMS, the filter arrays, ALLOWED_SYSCALLS and SYSCALL_NAMES.
include!(concat!(env!("OUT_DIR"), "/seccomp_policy.rs"));

/// The compiled filters in install order.
pub fn programs() -> &'static [Program] {
    &PROGRAMS
}

/// The name of syscall `nr` on this architecture, e.g. to report which call a SIGSYS kill was for
/// (`si_syscall`, or the `syscall` field of the audit record).
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    SYSCALL_NAMES.binary_search_by_key(&nr, |&(n, _)| n).ok().map(|i| SYSCALL_NAMES[i].1)
}

/// (number, name) of every syscall the `allow` filter lists, sorted by number.
/// Parent side, after a sandbox died of SIGSYS: the system call the filter killed it for, as the kernel's
/// audit record of the kill says (`type=1326 ... uid=<host uid> ... syscall=<nr>` in the kernel log).
/// The host uid is unique to one live sandbox, so the record is matched on it. Best effort: None when the
/// kernel log is unreadable, rate-limited, or `kernel.seccomp.actions_logged` omits kill_process.
pub fn killed_for(host_uid: u32) -> Option<(u32, &'static str)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").ok()?;
    let needle = format!(" uid={host_uid} ");
    let mut found = None;
    let mut record = vec![0u8; 8192];
    // Each read returns one record; EAGAIN at the end of the buffer. Bounded in case the log is busy.
    for _ in 0..100_000 {
        let n = match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue, // overwritten while reading
            Err(_) => break,
        };
        let line = String::from_utf8_lossy(&record[..n]);
        if line.contains("type=1326") && line.contains(&needle) {
            let nr = line.split(" syscall=").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<u32>().ok());
            if let Some(nr) = nr {
                found = Some((nr, syscall_name(nr).unwrap_or("unknown")));
            }
        }
    }
    found
}

pub fn allowed_syscalls() -> &'static [(u32, &'static str)] {
    &ALLOWED_SYSCALLS
}

#[cfg(test)]
mod tests {
    //! These tests fork: the filters are only ever installed in a child, never in the test process.
    //! Children use raw syscalls only and leave with `_exit`, since the test harness is threaded.

    use super::*;
    use crate::child::seccomp::install_all;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// The errno of the last failed call (no allocation: safe in a forked child).
    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and belong to nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Forks; the child runs `child` (raw syscalls only) and `_exit`s with its result.
    /// Returns the child's pid.
    fn fork_child(child: impl FnOnce() -> i32) -> libc::pid_t {
        // SAFETY: the child runs only `child`, which makes raw syscalls without allocating or
        // locking, then `_exit`s without running destructors or the harness's code.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", errno());
        if pid == 0 {
            let code = child();
            // SAFETY: leaves the forked child at once, without unwinding into the test harness.
            unsafe { libc::_exit(code) };
        }
        pid
    }

    fn wait(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waits for our own child into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// The sandbox's state before the filters: no_new_privs set, and no core dump on SIGSYS (RLIMIT_CORE 1, as
    /// in a sandbox: the one value for which the kernel also skips a `core_pattern` pipe to a crash handler).
    fn sandbox_prelude() -> Result<(), i32> {
        let no_core = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
        // SAFETY: `no_core` is a local rlimit read by the kernel.
        if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
            return Err(errno());
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(errno());
        }
        install_all()
    }

    /// What a probe saw: the raw return value and errno.
    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    #[repr(C)]
    struct Seen {
        rc: i64,
        errno: i64,
    }

    const PROBES: [&str; 23] = [
        "mount",
        "unshare(CLONE_NEWUSER)",
        "clone3",
        "io_uring_setup",
        "socket(AF_NETLINK, NETLINK_AUDIT)",
        "socket(AF_INET)",
        "clone(CLONE_NEWNET)",
        "clone(SIGCHLD)",
        "socketpair(AF_NETLINK)",
        "ioctl(TIOCSTI)",
        "memfd_create",
        "personality",
        "socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE)",
        "socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_MPTCP)",
        "socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP)",
        "setsockopt(SOL_TCP, TCP_ULP)",
        "ioctl(FIOASYNC)",
        "ioctl(FIONBIO)",
        "prctl(PR_GET_DUMPABLE)",
        "prctl(PR_SET_NAME)",
        "setrlimit(RLIMIT_CORE)",
        "prlimit64(RLIMIT_CORE, new limit)",
        "prlimit64(RLIMIT_CORE, NULL, old limit)",
    ];

    /// Runs in the filtered child: one raw syscall per probe, each chosen to be harmless had the
    /// filter failed (a missing mount point, an invalid descriptor, an immediate `_exit`, the core limit
    /// set to the value it has...). The sockets are of protocols built into the kernel: no module is loaded.
    fn probe_all() -> [Seen; PROBES.len()] {
        let mut seen = [Seen::default(); PROBES.len()];
        let record = |rc: libc::c_long| Seen { rc, errno: if rc < 0 { i64::from(errno()) } else { 0 } };
        // SAFETY: raw syscalls with constant arguments, NUL-terminated literals, null pointers the kernel
        // rejects, or pointers to locals of the right type (`pair`, `one`, `old`, `on`) that outlive the calls.
        unsafe {
            seen[0] = record(libc::syscall(
                libc::SYS_mount,
                c"none".as_ptr(),
                c"/nonexistent/taskcell-seccomp-test".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null::<libc::c_void>(),
            ));
            seen[1] = record(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER));
            seen[2] = record(libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0));
            seen[3] = record(libc::syscall(libc::SYS_io_uring_setup, 0, std::ptr::null::<libc::c_void>()));
            // Route netlink is allowed (os.networkInterfaces()); every other protocol is refused.
            let netlink = libc::syscall(libc::SYS_socket, libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT);
            seen[4] = record(netlink);
            let inet = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
            seen[5] = record(inet);
            for fd in [netlink, inet] {
                if fd >= 0 {
                    libc::close(fd as i32);
                }
            }
            let flags = (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_ulong;
            let rc = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
            if rc == 0 {
                libc::_exit(0);
            }
            seen[6] = record(rc);
            let rc = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
            if rc == 0 {
                libc::_exit(0);
            }
            seen[7] = record(rc);
            for pid in [seen[6].rc, seen[7].rc] {
                if pid > 0 {
                    libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
                }
            }
            let mut pair = [-1; 2];
            seen[8] = record(libc::syscall(libc::SYS_socketpair, libc::AF_NETLINK, libc::SOCK_RAW, 0, pair.as_mut_ptr()));
            seen[9] = record(libc::syscall(libc::SYS_ioctl, -1, libc::TIOCSTI, c"x".as_ptr()));
            seen[10] = record(libc::syscall(libc::SYS_memfd_create, c"probe".as_ptr(), 0));
            seen[11] = record(libc::syscall(libc::SYS_personality, 0xffff_ffff_u32));
            let stream = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            let dgram = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            let sockets = [
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
                libc::syscall(libc::SYS_socket, libc::AF_INET6, stream, libc::IPPROTO_MPTCP),
                libc::syscall(libc::SYS_socket, libc::AF_INET6, dgram, libc::IPPROTO_UDP),
            ];
            for (i, fd) in sockets.into_iter().enumerate() {
                seen[12 + i] = record(fd);
                if fd >= 0 {
                    libc::close(fd as i32);
                }
            }
            let on: libc::c_int = 1;
            seen[15] = record(libc::syscall(
                libc::SYS_setsockopt,
                -1,
                libc::SOL_TCP,
                libc::TCP_ULP,
                &on as *const libc::c_int,
                std::mem::size_of::<libc::c_int>(),
            ));
            seen[16] = record(libc::syscall(libc::SYS_ioctl, -1, libc::FIOASYNC, &on as *const libc::c_int));
            seen[17] = record(libc::syscall(libc::SYS_ioctl, -1, libc::FIONBIO, &on as *const libc::c_int));
            seen[18] = record(libc::syscall(libc::SYS_prctl, libc::PR_GET_DUMPABLE, 0, 0, 0, 0));
            seen[19] = record(libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, c"probe".as_ptr(), 0, 0, 0));
            let one = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
            let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            seen[20] = record(libc::syscall(libc::SYS_setrlimit, libc::RLIMIT_CORE, &one as *const libc::rlimit));
            seen[21] = record(libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_CORE,
                &one as *const libc::rlimit,
                std::ptr::null_mut::<libc::rlimit>(),
            ));
            seen[22] = record(libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_CORE,
                std::ptr::null::<libc::rlimit>(),
                &mut old as *mut libc::rlimit,
            ));
        }
        seen
    }

    #[test]
    fn refuses_and_enosys_answer_with_their_errno() {
        let (read_end, write_end) = pipe();
        let pid = fork_child(|| {
            if let Err(e) = sandbox_prelude() {
                return 100 + e.min(100);
            }
            let seen = probe_all();
            let size = std::mem::size_of_val(&seen);
            // SAFETY: writes the bytes of a local array of plain-data records.
            let n = unsafe { libc::write(write_end.as_raw_fd(), seen.as_ptr().cast(), size) };
            if n == size as isize {
                0
            } else {
                99
            }
        });
        drop(write_end);
        let mut seen = [Seen::default(); PROBES.len()];
        let size = std::mem::size_of_val(&seen);
        // SAFETY: reads at most `size` bytes into a local array of plain-data records.
        let n = unsafe { libc::read(read_end.as_raw_fd(), seen.as_mut_ptr().cast(), size) };
        let status = wait(pid);
        assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "child failed (100 + errno: install_all)");
        assert_eq!(n, size as isize);

        let report: Vec<String> = PROBES.iter().zip(&seen).map(|(p, s)| format!("{p}: {s:?}")).collect();
        let refused = |s: Seen, errno: i32| s.rc == -1 && s.errno == i64::from(errno);
        for (i, expected) in [
            (0, libc::EPERM),
            (1, libc::EPERM),
            (2, libc::ENOSYS),
            (3, libc::ENOSYS),
            (4, libc::EPERM),
            (6, libc::EPERM),
            (8, libc::EPERM),
            (9, libc::EPERM),
            (10, libc::EPERM),
            (11, libc::EPERM),
            (12, libc::EPERM),
            (13, libc::EPERM),
            (15, libc::EPERM),
            (16, libc::EPERM),
            // The filter let it through: the kernel's own answer for a bad descriptor.
            (17, libc::EBADF),
            (18, libc::EPERM),
            (20, libc::EPERM),
            (21, libc::EPERM),
        ] {
            assert!(refused(seen[i], expected), "{} should fail with errno {expected}:\n{report:#?}", PROBES[i]);
        }
        for i in [5, 14, 19, 22] {
            assert!(seen[i].rc >= 0, "{} should work:\n{report:#?}", PROBES[i]);
        }
        assert!(seen[7].rc > 0, "clone without namespace flags should work:\n{report:#?}");
    }

    /// Forks a filtered child that makes `syscall(nr)` and returns its wait status.
    fn status_after_syscall(nr: libc::c_long) -> i32 {
        wait(fork_child(|| {
            if let Err(e) = sandbox_prelude() {
                return 100 + e.min(100);
            }
            // SAFETY: a raw syscall with no pointer arguments (syslog's SIZE_BUFFER action, 10, and
            // zeroes): harmless should the filter let it through.
            unsafe { libc::syscall(nr, 10, 0, 0) };
            0
        }))
    }

    #[test]
    fn unlisted_syscall_kills_with_sigsys() {
        assert!(!allowed_syscalls().iter().any(|&(_, name)| name == "syslog"));
        let status = status_after_syscall(libc::SYS_syslog);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "syslog should be killed by SIGSYS, got status {status:#x}"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_syscalls_are_killed() {
        // The x32 ABI shares x86_64's audit arch with numbers offset by 0x40000000: no rule matches
        // them, so even getpid through x32 must be killed rather than let through.
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        let status = status_after_syscall(X32_SYSCALL_BIT | libc::SYS_getpid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "x32 getpid should be killed by SIGSYS, got status {status:#x}"
        );
    }

    const NODE_SCRIPT: &str = r#"
'use strict';
const assert = require('assert');
const http = require('http'), fs = require('fs'), os = require('os'), path = require('path');
const crypto = require('crypto'), zlib = require('zlib'), cp = require('child_process');
const { Worker } = require('worker_threads');
(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'taskcell-seccomp-'));
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, 'x'.repeat(1 << 16));
  assert.strictEqual((await fs.promises.readFile(file)).length, 1 << 16);
  fs.readdirSync(dir); fs.statSync(file); fs.rmSync(dir, { recursive: true });
  crypto.createHash('sha256').update('x').digest('hex');
  crypto.randomBytes(32); crypto.pbkdf2Sync('p', 's', 1000, 32, 'sha256');
  await new Promise((ok, ko) => crypto.generateKeyPair('ec', { namedCurve: 'P-256' }, (e) => e ? ko(e) : ok()));
  await crypto.webcrypto.subtle.digest('SHA-256', new Uint8Array(8));
  const big = Buffer.alloc(1 << 20, 'a');
  assert(zlib.gunzipSync(zlib.gzipSync(big)).equals(big));
  assert(zlib.brotliDecompressSync(zlib.brotliCompressSync(big)).equals(big));
  Buffer.alloc(100 << 20).fill(1);
  const body = await new Promise((ok, ko) => {
    const srv = http.createServer((q, r) => r.end('pong')).listen(0, '127.0.0.1', () => {
      http.get({ host: '127.0.0.1', port: srv.address().port }, (res) => {
        let b = ''; res.on('data', (d) => b += d); res.on('end', () => srv.close(() => ok(b)));
      }).on('error', ko);
    });
  });
  assert.strictEqual(body, 'pong');
  assert.strictEqual(cp.execFileSync(process.execPath, ['-e', 'process.stdout.write("child")']).toString(), 'child');
  const fromWorker = await new Promise((ok, ko) => {
    new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true }).on('message', ok).on('error', ko);
  });
  assert.strictEqual(fromWorker, 42);
  assert.ok(Object.keys(os.networkInterfaces()).includes('lo'), 'route netlink works: interfaces are listed');
  process.stdout.write('node-under-seccomp-ok');
})().catch((e) => { console.error(e); process.exit(1); });
"#;

    #[test]
    fn node_runs_under_the_filters() {
        // Everything the child needs is prepared before the fork.
        let path = CString::new("/usr/bin/node").unwrap();
        let script = CString::new(NODE_SCRIPT).unwrap();
        let argv_owned = [path.clone(), CString::new("-e").unwrap(), script];
        let argv: Vec<*const libc::c_char> = argv_owned.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect();
        let env_owned = [CString::new("PATH=/usr/bin").unwrap()];
        let envp: Vec<*const libc::c_char> = env_owned.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect();
        let (read_end, write_end) = pipe();

        let pid = fork_child(|| {
            // SAFETY: dup2 onto this child's stdout; the pipe's write end stays open until exec.
            if unsafe { libc::dup2(write_end.as_raw_fd(), 1) } != 1 {
                return 98;
            }
            if let Err(e) = sandbox_prelude() {
                return 100 + e.min(100);
            }
            // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays
            // that live in this (forked) address space until execve replaces it.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            97
        });
        drop(write_end);
        let mut output = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a local buffer of the given size.
            let n = unsafe { libc::read(read_end.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            output.extend_from_slice(&buf[..n as usize]);
        }
        let status = wait(pid);
        let output = String::from_utf8_lossy(&output);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "node under the filters: status {status:#x} (signal {}), stdout {output:?}",
            if libc::WIFSIGNALED(status) { libc::WTERMSIG(status) } else { 0 }
        );
        assert_eq!(output, "node-under-seccomp-ok");
    }

    #[test]
    fn programs_are_in_install_order_and_fit_the_kernel() {
        let names: Vec<&str> = programs().iter().map(Program::name).collect();
        assert_eq!(names, ["refuse", "enosys", "allow"]);
        for program in programs() {
            assert!(!program.filter().is_empty() && program.filter().len() <= 4096, "{}", program.name());
        }
    }

    #[test]
    fn syscall_tables_are_sorted_and_agree_with_libc() {
        assert!(SYSCALL_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(allowed_syscalls().windows(2).all(|w| w[0].0 < w[1].0));
        for &(nr, name) in allowed_syscalls() {
            assert_eq!(syscall_name(nr), Some(name));
        }
        assert_eq!(syscall_name(libc::SYS_execve as u32), Some("execve"));
        assert_eq!(syscall_name(libc::SYS_clone3 as u32), Some("clone3"));
        assert_eq!(syscall_name(libc::SYS_syslog as u32), Some("syslog"));
        assert_eq!(syscall_name(100_000), None);
        for needed in ["execve", "clone", "exit_group", "mount", "clone3", "io_uring_setup"] {
            assert!(allowed_syscalls().iter().any(|&(_, n)| n == needed), "{needed} not in allow");
        }
    }
}
