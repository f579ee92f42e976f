//! Threads that make sandboxes off the event loop and wait for their Node runtime to say it is ready.
//!
//! Booting Node takes over 100 ms; the loop never waits for it. A job goes in over a channel; a booted sandbox
//! (or the reason it could not be made) comes back over another, with a `mio::Waker` poke. The threads live as
//! long as the daemon: each sandbox's PR_SET_PDEATHSIG is tied to the thread that cloned it.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Decoder, Frame};
use jailer::{Jailer, SandboxSpec, Stdio};

/// A sandbox whose runtime has sent `Ready`.
pub struct Spawned {
    pub sandbox: jailer::Sandbox,
    pub socket: UnixStream,
    /// Read end of the pipe on the sandbox's stdout and stderr.
    pub output: OwnedFd,
    /// The egress proxy's listeners, made inside the sandbox's network namespace (non-blocking).
    pub egress: jailer::net::Endpoints,
    /// Its processes once ready (init and Node), found here, off the event loop, so that giving it every CPU
    /// when a tenant takes it is one pass over their threads.
    pub processes: Vec<i32>,
}

pub type Outcome = Result<Spawned, String>;

pub struct Spawner {
    jobs: Option<Sender<()>>,
    pub results: Receiver<Outcome>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    urgent: Arc<AtomicBool>,
}

/// How Node is started in every sandbox.
#[derive(Clone)]
pub struct NodeCommand {
    pub argv: Vec<String>,
    pub ready_timeout: Duration,
}

impl Spawner {
    /// `cpus`: every CPU and the batch CPUs (see `cpus`). A boot is batch work, confined to the batch CPUs at
    /// a low priority, unless [`Spawner::set_urgent`] says tenants are waiting for one: then it may use every
    /// CPU at the normal priority (the sandboxes inherit both from the thread that clones them).
    pub fn start(
        jailer: Arc<Jailer>,
        node: NodeCommand,
        threads: usize,
        waker: Arc<mio::Waker>,
        cpus: Option<(jailer::sched::CpuSet, jailer::sched::CpuSet)>,
    ) -> Spawner {
        let (jobs, job_rx) = mpsc::channel::<()>();
        let (result_tx, results) = mpsc::channel::<Outcome>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let stopping = Arc::new(AtomicBool::new(false));
        let urgent = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (jailer, node, job_rx, result_tx, waker) = (jailer.clone(), node.clone(), job_rx.clone(), result_tx.clone(), waker.clone());
            let (stopping, urgent) = (stopping.clone(), urgent.clone());
            let handle = std::thread::Builder::new()
                .name(format!("spawner-{i}"))
                .spawn(move || {
                    let mut placement = Placement { cpus, urgent: None };
                    loop {
                        let Ok(()) = job_rx.lock().expect("spawner queue lock").recv() else { return };
                        if stopping.load(Ordering::Relaxed) {
                            return;
                        }
                        placement.apply(urgent.load(Ordering::Relaxed));
                        if result_tx.send(spawn_one(&jailer, &node)).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                })
                .expect("spawning a spawner thread");
            handles.push(handle);
        }
        Spawner { jobs: Some(jobs), results, threads: handles, stopping, urgent }
    }

    /// Tenants are waiting for a sandbox (true) or not: the next boots use every CPU, or the batch ones.
    pub fn set_urgent(&self, urgent: bool) {
        self.urgent.store(urgent, Ordering::Relaxed);
    }

    /// Ask for one more sandbox.
    pub fn request(&self) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(());
        }
    }

    /// Skip the queued requests, let the sandboxes being booted finish, and hand them back so that they can be
    /// destroyed properly (their death signal would kill them at exit, but leave their cgroups behind).
    pub fn stop(&mut self) -> Vec<Spawned> {
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.results.try_iter().filter_map(Result::ok).collect()
    }
}

/// A spawner thread's CPUs and priority, changed only when the urgency changes.
struct Placement {
    cpus: Option<(jailer::sched::CpuSet, jailer::sched::CpuSet)>,
    urgent: Option<bool>,
}

impl Placement {
    fn apply(&mut self, urgent: bool) {
        if self.urgent == Some(urgent) {
            return;
        }
        self.urgent = Some(urgent);
        // Making a sandbox (clone, mounts) yields to the event loop on a busy machine, unless a tenant waits
        // for it: a refill must not slow the tenant whose request emptied the pool slot.
        // SAFETY: setpriority on this thread's own id, with integers only.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, if urgent { 0 } else { 10 }) };
        if let Some((all, batch)) = &self.cpus {
            let set = if urgent { all } else { batch };
            if let Err(e) = jailer::sched::set_affinity(0, set) {
                eprintln!("taskcell: confining a spawner thread to CPUs {}: errno {e}", set.list());
            }
        }
    }
}

fn spawn_one(jailer: &Jailer, node: &NodeCommand) -> Outcome {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let (out_r, out_w) = jailer::spawn::pipe().map_err(|e| crate::error_chain(&e))?;
    let devnull = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let out_w2 = out_w.try_clone().map_err(|e| format!("dup: {e}"))?;
    let spec = SandboxSpec {
        argv: node.argv.clone(),
        env: Vec::new(),
        stdio: Stdio::Fds([OwnedFd::from(devnull), out_w, out_w2]),
        socket: Some(OwnedFd::from(theirs)),
        limits: None,
    };
    let mut sandbox = jailer.make(spec).map_err(|e| crate::error_chain(&e))?;
    // Before the runtime is ready, so that the endpoint exists before any tenant code can look for it.
    let egress_addr = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, crate::EGRESS_PORT);
    let (exact, padded) = crate::egress_socket_names();
    let egress = match jailer::net::listen_inside(&sandbox, egress_addr, &[&exact, &padded]) {
        Ok(l) => l,
        Err(e) => {
            // A sandbox whose command died at once has no namespace left to enter: say how it died, as
            // await_ready would, rather than that the listener could not be made. ESRCH comes as soon as the
            // process has left its namespaces, which can be before it can be waited for: its death gets a
            // moment (1 s) to arrive. A sandbox still alive after it keeps the listener's error.
            let gone = e.raw_os_error() == Some(libc::ESRCH) || sandbox.try_wait(false).ok().flatten().is_some();
            let death =
                if gone { await_ready(&mut sandbox, &ours, &out_r, node.ready_timeout.min(Duration::from_secs(1))).err() } else { None };
            let why = death.filter(|_| sandbox.try_wait(false).ok().flatten().is_some());
            sandbox.kill();
            return Err(why.unwrap_or_else(|| format!("making the egress listener inside the sandbox: {e}")));
        }
    };
    match await_ready(&mut sandbox, &ours, &out_r, node.ready_timeout) {
        Ok(()) => {
            let processes = jailer::sched::tree_processes(sandbox.pid);
            Ok(Spawned { sandbox, socket: ours, output: out_r, egress, processes })
        }
        Err(msg) => {
            sandbox.kill();
            Err(msg)
        }
    }
}

/// Block (on this spawner thread) until the runtime's `Ready` frame, its death, or the timeout.
fn await_ready(sandbox: &mut jailer::Sandbox, socket: &UnixStream, output: &OwnedFd, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the sandbox's runtime did not become ready within {} ms", timeout.as_millis()));
        }
        let mut fds = [
            libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: sandbox.pidfd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll reads and writes the two-element local array.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis().min(i32::MAX as u128) as i32) };
        if fds[0].revents != 0 {
            let n = (&*socket).read(&mut buf).map_err(|e| format!("reading from the sandbox: {e}"))?;
            if n > 0 {
                decoder.feed(&buf[..n]);
                match decoder.next() {
                    Ok(Some(Frame::Ready { .. })) => {
                        socket.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
                        return Ok(());
                    }
                    Ok(Some(_)) => return Err("the sandbox's runtime sent a frame before Ready".into()),
                    Ok(None) => continue,
                    Err(e) => return Err(format!("the sandbox's runtime sent garbage: {e}")),
                }
            }
        }
        if fds[1].revents != 0 || fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            let exit = sandbox.wait().map_err(|e| format!("waiting: {e}"))?;
            let tail = read_tail(output);
            let how = match exit.status {
                jailer::pid::Status::Exited(c) => format!("with status {c}"),
                jailer::pid::Status::Signaled(s) => format!("killed by signal {s}"),
            };
            let said = if tail.trim().is_empty() { String::from(" (it printed nothing)") } else { format!(": {}", tail.trim()) };
            return Err(format!("the sandbox's /usr/bin/node exited during start-up, {how}{said}"));
        }
    }
}

fn read_tail(fd: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // SAFETY: F_SETFL only changes the file status flags of a pipe we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    loop {
        // SAFETY: a non-blocking read into a local buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > 64 << 10 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    let start = text.len().saturating_sub(2000);
    text[text.floor_char_boundary(start)..].to_string()
}
