//! The parts of a cluster that the many-node tests share (issue 15): a PostgreSQL server of the test's own, a
//! `taskcell log-hub`, HAProxy running the shipped `dist/haproxy.cfg`, the token key of the nodes' TCP
//! listeners, and a `/v1/logs` stream read event by event. Each is stopped and its files removed when dropped.
//!
//! Where PostgreSQL or HAProxy is not installed, `start` prints a loud SKIPPED and returns None, and fails
//! under CI (`.ci/run` installs both).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{unique, wait_until, Client, Daemon, HANG};

/// How long a log stream waits for more events before it calls itself quiet.
pub const QUIET: Duration = Duration::from_millis(500);

/// Send `sig` to a child of the test's own and wait for it up to `guard`: its exit status, or None once it
/// has been killed (and reaped) for outliving the guard.
fn signal_and_wait(child: &mut Child, sig: i32, guard: Duration) -> Option<ExitStatus> {
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped, so not reused.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------- PostgreSQL ----------

/// A PostgreSQL server of the test's own. Dropped: stopped (by its pid) and its directory removed.
pub struct Postgres {
    bin: PathBuf,
    pub dir: PathBuf,
    server: Option<Child>,
    /// `-c` settings beyond the defaults (TLS on a TCP port: [`Postgres::start_tls`]).
    settings: Vec<String>,
    /// With TLS: the port on 127.0.0.1.
    pub port: Option<u16>,
}

/// The directory of `initdb` and `postgres` (Debian keeps them under /usr/lib/postgresql/VERSION/bin).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
}

/// Run as the `postgres` user (the server refuses root): setpriv execs in place, so a pid is the server's own.
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
    c
}

impl Postgres {
    /// A fresh, running server, or None (after a loud note) where PostgreSQL is not installed outside CI.
    pub fn start(test: &str) -> Option<Postgres> {
        let Some(bin) = postgres_bin() else {
            eprintln!("\n**********\nSKIPPED: PostgreSQL is not installed (apt-get install postgresql): {test}\n**********\n");
            assert!(std::env::var_os("CI").is_none(), "{test} needs PostgreSQL, and CI is set: .ci/run must install it");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("taskcell-pg-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the server's directory");
        let status = Command::new("chown").arg("postgres:postgres").arg(&dir).status().expect("chown");
        assert!(status.success(), "chown {} to postgres", dir.display());
        let mut pg = Postgres { bin, dir, server: None, settings: vec!["listen_addresses=".into()], port: None };
        pg.init();
        pg.run();
        Some(pg)
    }

    /// As `start`, listening also on 127.0.0.1 with TLS only: a certificate for `localhost` (no IP) signed by a
    /// CA of the test's own (`dir/ca.pem`), and `pg_hba.conf` taking TCP connections over TLS alone.
    pub fn start_tls(test: &str) -> Option<Postgres> {
        let mut pg = Postgres::start(test)?;
        pg.stop();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&pg.dir).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        #[rustfmt::skip]
        openssl(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=taskcell test CA", "-keyout", "ca.key", "-out", "ca.pem"]);
        #[rustfmt::skip]
        openssl(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr"]);
        std::fs::write(pg.dir.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        #[rustfmt::skip]
        openssl(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "server.ext", "-out", "server.pem"]);
        for f in ["server.key", "server.pem"] {
            let status = Command::new("chown").arg("postgres:postgres").arg(pg.dir.join(f)).status().expect("chown");
            assert!(status.success());
        }
        std::fs::set_permissions(pg.dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        // Over TCP, TLS or nothing: a client that does not ask for TLS is turned away.
        std::fs::write(pg.dir.join("data/pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let file = |f: &str| pg.dir.join(f).display().to_string();
        pg.settings = vec![
            "listen_addresses=127.0.0.1".into(),
            format!("port={port}"),
            "ssl=on".into(),
            format!("ssl_cert_file={}", file("server.pem")),
            format!("ssl_key_file={}", file("server.key")),
        ];
        pg.port = Some(port);
        pg.run();
        Some(pg)
    }

    pub fn init(&self) {
        let out = as_postgres(&self.bin.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "--encoding=UTF8", "-D"])
            .arg(self.dir.join("data"))
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stop the server, throw its data away and start an empty one at the same place.
    pub fn recreate(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.dir.join("data")).expect("remove the server's data");
        self.init();
        self.run();
    }

    /// Start the server (again) on the same data, and wait until it takes connections.
    pub fn run(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).expect("the server's log");
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "fsync=off"])
            .args(self.settings.iter().flat_map(|c| ["-c", c.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.server = Some(child);
        let started = Instant::now();
        loop {
            let mut isready = Command::new(self.bin.join("pg_isready"));
            isready.arg("-q").arg("-h").arg(&self.dir);
            if let Some(port) = self.port {
                isready.arg("-p").arg(port.to_string());
            }
            let ready = isready.status().is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "postgres did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the server (a fast shutdown: it disconnects the daemons) and wait for it to be gone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.server.take() else { return };
        // Killed after the guard: it must not outlive the test, and a slow stop is not what is tested here.
        let _ = signal_and_wait(&mut child, libc::SIGINT, Duration::from_secs(20));
    }

    /// Its Unix socket (in its directory; with TLS, the socket's name has the TCP port in it).
    pub fn url(&self) -> String {
        match self.port {
            Some(port) => format!("postgres://postgres@localhost:{port}/postgres?host={}", self.dir.display()),
            None => format!("postgres://postgres@localhost/postgres?host={}", self.dir.display()),
        }
    }

    /// With TLS: its TCP port on `host` (`localhost` matches the certificate, `127.0.0.1` does not), with `query`.
    pub fn tcp_url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port.expect("a server started with start_tls"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// One query through psql on the Unix socket, its rows unaligned (`a|b`).
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.unwrap_or(5432).to_string();
        let out = as_postgres(&self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &port, "-U", "postgres", "-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `pg_dump` of the whole database, as text.
    pub fn dump(&self) -> Vec<u8> {
        let port = self.port.unwrap_or(5432).to_string();
        let out = as_postgres(&self.bin.join("pg_dump"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &port, "-U", "postgres", "postgres"])
            .output()
            .expect("pg_dump");
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------- the log hub ----------

/// A `taskcell log-hub` of the test's own, stopped (and waited for) when dropped.
pub struct Hub {
    child: Option<Child>,
    log: PathBuf,
    pub input: String,
    pub output: String,
}

impl Hub {
    pub fn start(name: &str, input: &str, output: &str) -> Hub {
        let log = std::env::temp_dir().join(format!("taskcell-it-{}-{}.hub.log", std::process::id(), unique(name)));
        let file = std::fs::File::create(&log).expect("create the hub's log");
        let child = Command::new(env!("CARGO_BIN_EXE_taskcell"))
            .args(["log-hub", "--in", input, "--out", output])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start taskcell log-hub");
        let mut hub = Hub { child: Some(child), log, input: String::new(), output: String::new() };
        // The hub says where it bound (port 0 is any free one).
        let mut line = None;
        wait_until(Duration::from_secs(20), "the hub to bind", || {
            if let Some(status) = hub.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the hub exited with {status}: {}", std::fs::read_to_string(&hub.log).unwrap_or_default());
            }
            line =
                std::fs::read_to_string(&hub.log).unwrap().lines().find_map(|l| l.strip_prefix("taskcell log-hub: in ").map(String::from));
            line.is_some()
        });
        let line = line.unwrap();
        let (i, o) = line.split_once(" out ").expect("in ADDR out ADDR");
        (hub.input, hub.output) = (i.to_string(), o.to_string());
        hub
    }

    pub fn signal(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("the hub is running");
        signal_and_wait(&mut child, sig, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("the hub did not stop within 15 s of signal {sig}"))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---------- tokens, TCP, log streams ----------

/// The HS256 key of a node's TCP listener, in a file removed when dropped.
pub struct TokenKey(pub PathBuf);

impl TokenKey {
    pub fn new() -> TokenKey {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("taskcell-it-{}-{}.key", std::process::id(), unique("hub-key")));
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        TokenKey(path)
    }

    pub fn token(&self, tenant: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_taskcell"))
            .args(["token", "--tenant", tenant, "--ttl", "1h", "--key", self.0.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "taskcell token: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for TokenKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The TCP address a daemon logged it listens on (it was given port 0).
pub fn tcp_addr(d: &Daemon) -> std::net::SocketAddr {
    let log = std::fs::read_to_string(&d.log).unwrap();
    let line = log.lines().find_map(|l| l.strip_prefix("taskcell: listening on tcp ")).unwrap_or_else(|| panic!("no tcp line in\n{log}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// A `/v1/logs` stream, read line by line.
pub struct LogStream {
    client: Client,
    partial: Vec<u8>,
}

impl LogStream {
    pub fn open(d: &Daemon, path: &str) -> LogStream {
        LogStream::on(d.client(), path, &[])
    }

    pub fn on(mut client: Client, path: &str, headers: &[(&str, &str)]) -> LogStream {
        client.send("GET", path, headers, b"").unwrap();
        assert_eq!(client.read_stream_head().unwrap().0, 200);
        LogStream { client, partial: Vec::new() }
    }

    /// The next event, or None if none came within `guard`.
    pub fn next(&mut self, guard: Duration) -> Option<Value> {
        loop {
            if let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=i).collect();
                return Some(
                    serde_json::from_slice(&line).unwrap_or_else(|e| panic!("bad line {:?}: {e}", String::from_utf8_lossy(&line))),
                );
            }
            self.client.set_timeout(guard);
            match self.client.read_chunk() {
                Ok(Some(chunk)) => self.partial.extend_from_slice(&chunk),
                Ok(None) => panic!("the log stream ended"),
                Err(e) if e.kind() == ErrorKind::TimedOut => return None,
                Err(e) => panic!("reading the log stream: {e}"),
            }
        }
    }

    /// Every event until the stream is quiet.
    pub fn drain(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.next(QUIET)).collect()
    }

    /// Every event up to the first for which `done` is true (a hang fails the test).
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let e = self.next(HANG).unwrap_or_else(|| panic!("no event {what} in {HANG:?}; saw {seen:?}"));
            let stop = done(&e);
            seen.push(e);
            if stop {
                return seen;
            }
        }
    }
}

// ---------- HAProxy ----------

/// HAProxy in the foreground (`-db`) on the shipped configuration, in front of the given nodes: the client
/// side is a Unix socket (`front`). Killed and reaped when dropped.
pub struct Haproxy {
    child: Child,
    pub front: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    /// Writes the configuration into `dir`, checks it with `haproxy -c`, starts HAProxy and waits for its
    /// socket. None (after a loud note) where HAProxy is not installed outside CI.
    pub fn start(test: &str, dir: &Path, nodes: &[SocketAddr]) -> Option<Haproxy> {
        let Some(bin) = haproxy_binary() else {
            eprintln!("\n**********\nSKIPPED: haproxy is not installed (apt-get install haproxy): {test}\n**********\n");
            assert!(std::env::var_os("CI").is_none(), "{test} needs haproxy, and CI is set: .ci/run must install it");
            return None;
        };
        let front = dir.join("front.sock");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config(&front, nodes)).unwrap();
        let check = Command::new(&bin).args(["-c", "-f"]).arg(&cfg).output().expect("haproxy -c");
        let said = |o: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(check.status.success(), "haproxy -c: {}", said(&check));
        let log = dir.join("haproxy.log");
        let child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start haproxy");
        let proxy = Haproxy { child, front, log };
        wait_until(Duration::from_secs(10), "HAProxy's socket", || proxy.front.exists());
        Some(proxy)
    }

    /// Stops HAProxy and fails the test if it raised an alert (its own messages and its request log went to
    /// its stderr, a file in the test's directory).
    pub fn stop_without_alerts(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let err = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!err.contains("[ALERT]"), "HAProxy alerts:\n{err}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_binary() -> Option<PathBuf> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// dist/haproxy.cfg with the test's front socket and nodes.
fn config(front: &Path, nodes: &[SocketAddr]) -> String {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/haproxy.cfg")).expect("dist/haproxy.cfg");
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("log /dev/log") {
            // No syslog in the test: HAProxy's request log on its stderr instead.
            out.push_str("    log stderr format raw local0\n");
            continue;
        }
        if t.starts_with("bind 127.0.0.1:8080") {
            out.push_str(&format!("    bind unix@{} mode 600\n", front.display()));
            continue;
        }
        if let Some(rest) = t.strip_prefix("server node") {
            let n: usize = rest[..1].parse().unwrap();
            out.push_str(&format!("    server node{n} {}\n", nodes[n - 1]));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
