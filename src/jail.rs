//! `taskcell jail`: one command in a one-off sandbox with exactly the isolation that tenants get.
//!
//! Stdio passes through; the exit status is the command's (128 + signal when killed). SIGINT, SIGTERM and
//! SIGHUP sent to taskcell kill the sandbox and are answered the same way, so that its cgroup is always removed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use jailer::{Jailer, JailerConfig, SandboxSpec, Stdio};

use crate::args::{self, ArgError, Flags};

struct Options {
    config: JailerConfig,
    argv: Vec<String>,
}

fn parse(raw: Vec<String>) -> Result<Options, ArgError> {
    let mut config = JailerConfig::default();
    let mut flags = Flags::new(raw);
    while let Some((flag, inline)) = flags.next_flag() {
        match flag.as_str() {
            "--memory" => config.limits.memory = args::bytes(&flag, &flags.value(&flag, inline)?)?,
            "--pids" => config.limits.pids = args::count(&flag, &flags.value(&flag, inline)?)?,
            "--bind-ro" => config.binds_ro.push(args::bind(&flag, &flags.value(&flag, inline)?)?),
            "--rootfs" => config.rootfs = PathBuf::from(flags.value(&flag, inline)?),
            "--tmp-size" => config.tmp_bytes = args::bytes(&flag, &flags.value(&flag, inline)?)?,
            "--cpus" => {
                let v = flags.value(&flag, inline)?;
                let cpus: f64 = v.parse().ok().filter(|c: &f64| *c > 0.0).ok_or(ArgError::Invalid {
                    flag: flag.clone(),
                    value: v,
                    what: "CPU count",
                })?;
                config.limits.cpu_quota_us = Some((cpus * config.limits.cpu_period_us as f64) as u64);
            }
            _ if !flag.starts_with('-') => {
                // No `--`: the command starts here.
                let mut argv = vec![flag];
                argv.extend(flags.rest());
                return Ok(Options { config, argv });
            }
            _ => return Err(ArgError::Unknown(flag)),
        }
    }
    Ok(Options { config, argv: flags.rest() })
}

pub fn main(raw: Vec<String>) -> ExitCode {
    let mut opts = match parse(raw) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("taskcell jail: {e}");
            return ExitCode::from(2);
        }
    };
    if opts.argv.is_empty() {
        eprintln!("taskcell jail: no command given (taskcell jail [FLAGS] -- CMD [ARGS...])");
        return ExitCode::from(2);
    }
    // A bare name is looked up where the rootfs keeps programs, as a shell would with PATH=/usr/bin.
    if !opts.argv[0].contains('/') {
        opts.argv[0] = format!("/usr/bin/{}", opts.argv[0]);
    }
    match run(opts) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(msg) => {
            eprintln!("taskcell jail: {msg}");
            ExitCode::from(125)
        }
    }
}

fn run(opts: Options) -> Result<i32, String> {
    let memory = opts.config.limits.memory;
    let signals = crate::signals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]).map_err(|e| format!("signalfd: {e}"))?;
    let jailer = Jailer::new(opts.config).map_err(|e| error_chain(&e))?;
    let spec = SandboxSpec { argv: opts.argv.clone(), env: Vec::new(), stdio: Stdio::Inherit, socket: None, limits: None };
    let mut sandbox = match jailer.make(spec) {
        Ok(s) => s,
        // The shell's conventions: 127 for a command not found, 126 for one that cannot be executed.
        Err(e @ jailer::JailError::Child { step: jailer::spawn::Step::Exec, errno }) => {
            eprintln!("taskcell jail: {}: {}", opts.argv[0], error_chain(&e));
            return Ok(if errno == libc::ENOENT { 127 } else { 126 });
        }
        Err(e) => return Err(format!("{}: {}", opts.argv[0], error_chain(&e))),
    };
    let mut forwarded = None;
    loop {
        let mut fds = [
            libc::pollfd { fd: sandbox.pidfd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: signals.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll reads and writes the two-element local array.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        if fds[1].revents & libc::POLLIN != 0 {
            forwarded = Some(read_signal(&signals));
            sandbox.kill();
        }
        if fds[0].revents & libc::POLLIN != 0 {
            break;
        }
    }
    let exit = sandbox.wait().map_err(|e| format!("waiting for the sandbox: {e}"))?;
    let culprit = if exit.seccomp_killed() { sandbox.seccomp_culprit() } else { None };
    drop(sandbox);
    drop(jailer);
    if let Some(sig) = forwarded {
        return Ok(128 + sig);
    }
    if exit.seccomp_killed() {
        let culprit = culprit.map_or("a system call".to_string(), |c| format!("the system call {c}"));
        eprintln!(
            "taskcell jail: {} was killed by seccomp (SIGSYS): it made {culprit}, which policies/sandbox.json does not allow",
            opts.argv[0]
        );
    } else if exit.oom_killed {
        eprintln!("taskcell jail: {} was killed by the sandbox's memory limit ({memory} bytes)", opts.argv[0]);
    }
    Ok(exit.status.code())
}

fn read_signal(fd: &OwnedFd) -> i32 {
    // SAFETY: reads one signalfd_siginfo into a local of exactly that size.
    unsafe {
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let n =
            libc::read(fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), std::mem::size_of::<libc::signalfd_siginfo>());
        if n > 0 {
            info.ssi_signo as i32
        } else {
            libc::SIGTERM
        }
    }
}

pub use runtime::error_chain;
