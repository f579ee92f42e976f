//! Sustained sandbox creation, as the daemon's spawner threads do it: one `Jailer`, THREADS threads each making
//! a sandbox, (with --egress) making the egress listener inside it, and waiting for its command to exit, COUNT
//! sandboxes in all. Prints sandboxes/s and the median of each phase. Root, and the rootfs of `make`.
//!
//! `cargo run --release -p jailer --example boot_rate -- [--threads K] [--count N] [--egress] [-- CMD ARGS...]`
//! (default command: `/usr/bin/node -e 0`). A measuring tool, not a test.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jailer::{Jailer, JailerConfig, SandboxSpec, Stdio};

#[derive(Default)]
struct Phases {
    make: Vec<Duration>,
    egress: Vec<Duration>,
    run: Vec<Duration>,
    teardown: Vec<Duration>,
    total: Vec<Duration>,
}

fn median(v: &mut [Duration]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut threads, mut count, mut egress) = (2usize, 100usize, false);
    let mut argv: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).expect("--threads K"),
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--egress" => egress = true,
            "--" => argv = args.by_ref().collect(),
            other => panic!("unknown argument {other}"),
        }
    }
    if argv.is_empty() {
        argv = vec!["/usr/bin/node".into(), "-e".into(), "0".into()];
    }
    let jailer = Arc::new(Jailer::new(JailerConfig::default()).expect("jailer"));
    let next = Arc::new(AtomicUsize::new(0));
    let phases = Arc::new(Mutex::new(Phases::default()));
    let failures = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (jailer, next, phases, failures, argv) = (jailer.clone(), next.clone(), phases.clone(), failures.clone(), argv.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let null = || OwnedFd::from(File::options().read(true).write(true).open("/dev/null").expect("/dev/null"));
                    let spec = SandboxSpec {
                        argv: argv.clone(),
                        env: Vec::new(),
                        stdio: Stdio::Fds([null(), null(), null()]),
                        socket: None,
                        limits: None,
                    };
                    let start = Instant::now();
                    let mut sandbox = match jailer.make(spec) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("make: {e:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let made = Instant::now();
                    let listener =
                        egress.then(|| jailer::net::listen_inside(&sandbox, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8119), &[b"boot-rate"]));
                    let listened = Instant::now();
                    let exit = sandbox.wait();
                    let exited = Instant::now();
                    drop(listener);
                    if !matches!(exit, Ok(e) if e.status == jailer::pid::Status::Exited(0)) {
                        eprintln!("exit: {exit:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let destroyed = sandbox.destroy();
                    let done = Instant::now();
                    if let Err(e) = destroyed {
                        eprintln!("destroy: {e:?}");
                    }
                    let mut p = phases.lock().expect("phases");
                    p.make.push(made - start);
                    p.egress.push(listened - made);
                    p.run.push(exited - listened);
                    p.teardown.push(done - exited);
                    p.total.push(done - start);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut p = phases.lock().expect("phases");
    let n = p.total.len();
    println!(
        "{n} sandboxes, {threads} threads, {:.1} sandboxes/s; medians ms: make {:.2} egress {:.2} run {:.2} teardown {:.2} total {:.2}; failures {}",
        n as f64 / elapsed,
        median(&mut p.make),
        median(&mut p.egress),
        median(&mut p.run),
        median(&mut p.teardown),
        median(&mut p.total),
        failures.load(Ordering::Relaxed)
    );
}
