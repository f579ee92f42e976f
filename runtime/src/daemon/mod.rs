//! `taskcell serve`: the daemon.
//!
//! Startup (config, state directory, stale socket and cgroups, jailer, threads) lives here; the event loop
//! lives in `server`. See docs/api.md for the API decisions the spec leaves open.

pub mod api;
pub mod auth;
mod code_cache;
mod cpus;
pub mod egress_policy;
pub mod http;
pub mod log_hub;
mod logs;
mod metrics;
mod pool_policy;
mod replace_file;
pub mod routes;
mod secrets;
mod server;
mod settings;
pub mod shared_store;
mod slab;
mod spawner;
pub mod store;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use jailer::{Jailer, JailerConfig};

use crate::args::{self, ArgError, Flags};

#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    /// The socket's group, as given (a name or a number): looked up when the socket is made.
    pub socket_group: Option<String>,
    /// `--listen-tcp`: the API on TCP too, every request but health with a bearer token.
    pub listen_tcp: Option<std::net::SocketAddr>,
    /// The HS256 key of the TCP listener's tokens (read only with `listen_tcp`).
    pub token_key: PathBuf,
    /// Sent as `X-Taskcell-Node` on every response.
    pub node_name: String,
    pub state_dir: PathBuf,
    /// The pool's least and largest target (see `pool_policy`): `--pool-size` sets both.
    pub pool_min: usize,
    pub pool_max: usize,
    pool_max_given: bool,
    /// How far back demand for sandboxes sizes the pool.
    pub pool_window: Duration,
    /// At the cap, a tenant's sandbox idle this long may give its place to the pool (zero: never).
    pub pool_reclaim_idle: Duration,
    pub rootfs: Option<PathBuf>,
    pub timeout: Duration,
    pub memory: u64,
    pub pids: u64,
    pub tmp_bytes: u64,
    pub cpus: f64,
    pub idle_timeout: Duration,
    pub max_age: Duration,
    pub max_requests: u64,
    pub queue_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_body: usize,
    /// Memory for the V8 code caches of deployed tasks; 0 turns code caches off (none made, none sent).
    pub code_cache_bytes: usize,
    pub spawners: usize,
    pub max_starting: usize,
    /// Sandboxes alive at once (pool and tenants); a new tenant beyond it takes the place of the least
    /// recently used idle one.
    pub max_sandboxes: usize,
    max_sandboxes_given: bool,
    /// CPUs kept from booting and busy sandboxes (see `cpus`); None: a quarter of them, at least one.
    pub reserved_cpus: Option<usize>,
    /// Client connections open at once; past it a new one gets 503 `overloaded` and is closed.
    pub max_connections: usize,
    /// `/v1/logs` subscribers at once; past it 503 `overloaded`.
    pub max_log_subscribers: usize,
    /// The longest `timeout_ms` a task or an ad-hoc run may ask for.
    pub max_timeout: Duration,
    /// Operators' compilers (`NAME.js`), bound read-only into every sandbox at [`COMPILERS_INSIDE`].
    pub compilers_dir: PathBuf,
    /// The models of the compilers found in `compilers_dir` at start (not a setting: read by `serve`).
    pub compilers: Vec<String>,
    /// The operator's npm modules (`taskcell modules add`), bound read-only into every sandbox.
    pub modules: Option<PathBuf>,
    /// The key that seals tenants' secrets at rest (outside the state directory).
    pub secrets_key: PathBuf,
    pub egress: EgressConfig,
    /// `--log-hub-in`: the log hub's input, where this node publishes its log events (see `log_hub`).
    pub log_hub_in: Option<String>,
    /// `--log-hub-out`: the hub's output, where this node's `/v1/logs` hears every other node's events.
    pub log_hub_out: Option<String>,
    /// `--store postgres://...`: the database that is every node's source of truth (see `shared_store`); None:
    /// the state directory alone.
    pub store: Option<String>,
    /// `--store-ca FILE`: the CA that signed the database server's certificate (else the system's roots).
    pub store_ca: Option<PathBuf>,
}

/// The operator's egress settings (`--egress-*`), checked when given.
#[derive(Clone, Debug)]
pub struct EgressConfig {
    /// Rules every tenant has on top of its own list, and their text as given.
    pub allow: Vec<(String, egress_policy::Rule)>,
    pub allow_private: Vec<egress_policy::Cidr>,
    /// Names fixed to an address (lower case, no trailing dot): never looked up.
    pub resolve: std::collections::HashMap<String, std::net::IpAddr>,
    pub max_conns: usize,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig { allow: Vec::new(), allow_private: Vec::new(), resolve: Default::default(), max_conns: 32 }
    }
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Config {
            socket: PathBuf::from("/run/taskcell/taskcell.sock"),
            socket_group: None,
            listen_tcp: None,
            token_key: PathBuf::from("/etc/taskcell/token.key"),
            node_name: host_name(),
            state_dir: PathBuf::from("/var/lib/taskcell"),
            pool_min: (cores * 2).clamp(2, 16),
            pool_max: 0,
            pool_max_given: false,
            pool_window: Duration::from_secs(300),
            pool_reclaim_idle: Duration::from_secs(30),
            rootfs: None,
            timeout: Duration::from_millis(5000),
            memory: 128 << 20,
            pids: 64,
            tmp_bytes: 16 << 20,
            cpus: 1.0,
            idle_timeout: Duration::from_secs(300),
            max_age: Duration::from_secs(3600),
            max_requests: 1_000_000,
            queue_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
            code_cache_bytes: 64 << 20,
            spawners: cores.clamp(1, 4),
            max_starting: cores.clamp(1, 4) * 2,
            max_sandboxes: default_max_sandboxes(128 << 20),
            max_sandboxes_given: false,
            reserved_cpus: None,
            max_connections: 1024,
            max_log_subscribers: 64,
            max_timeout: Duration::from_millis(30_000),
            compilers_dir: PathBuf::from("/etc/taskcell/compilers"),
            compilers: Vec::new(),
            modules: None,
            secrets_key: PathBuf::from("/etc/taskcell/secrets.key"),
            egress: EgressConfig::default(),
            log_hub_in: None,
            log_hub_out: None,
            store: None,
            store_ca: None,
        }
    }
}

impl Config {
    fn set(&mut self, key: &str, value: &str) -> Result<(), ArgError> {
        let flag = format!("--{key}");
        // The table is the list of settings: nothing it does not name is accepted.
        if !settings::SETTINGS.iter().any(|s| s.key == key) || key == "config" {
            return Err(ArgError::Unknown(flag));
        }
        let ms = |v: &str| args::count(&flag, v).map(Duration::from_millis);
        match key {
            "socket" => self.socket = PathBuf::from(value),
            "socket-group" => self.socket_group = Some(value.to_string()),
            "listen-tcp" => {
                self.listen_tcp =
                    Some(value.parse().map_err(|_| ArgError::Invalid { flag, value: value.into(), what: "IP address and port" })?)
            }
            "token-key" => self.token_key = PathBuf::from(value),
            "node-name" => {
                if !valid_node_name(value) {
                    return Err(ArgError::Invalid { flag, value: value.into(), what: "node name (letters, digits, . _ -, at most 253)" });
                }
                self.node_name = value.to_string();
            }
            "state-dir" => self.state_dir = PathBuf::from(value),
            "pool-size" => {
                self.pool_min = args::count(&flag, value)? as usize;
                self.pool_max = self.pool_min;
                self.pool_max_given = true;
            }
            "pool-min" => self.pool_min = args::count(&flag, value)? as usize,
            "pool-max" => {
                self.pool_max = args::count(&flag, value)? as usize;
                self.pool_max_given = true;
            }
            "pool-window-ms" => self.pool_window = ms(value)?,
            "pool-reclaim-idle-ms" => self.pool_reclaim_idle = ms(value)?,
            "rootfs" => self.rootfs = Some(PathBuf::from(value)),
            "timeout-ms" => self.timeout = ms(value)?,
            "max-timeout-ms" => self.max_timeout = ms(value)?,
            "compilers-dir" => self.compilers_dir = PathBuf::from(value),
            "memory" => self.memory = args::bytes(&flag, value)?,
            "max-sandboxes" => {
                self.max_sandboxes = args::count(&flag, value)?.max(1) as usize;
                self.max_sandboxes_given = true;
            }
            "pids" => self.pids = args::count(&flag, value)?,
            "tmp-size" => self.tmp_bytes = args::bytes(&flag, value)?,
            "cpus" => {
                self.cpus = value.parse().ok().filter(|c: &f64| *c > 0.0).ok_or(ArgError::Invalid {
                    flag,
                    value: value.into(),
                    what: "CPU count",
                })?
            }
            "idle-timeout-ms" => self.idle_timeout = ms(value)?,
            "max-age-ms" => self.max_age = ms(value)?,
            "max-requests" => self.max_requests = args::count(&flag, value)?.max(1),
            "queue-timeout-ms" => self.queue_timeout = ms(value)?,
            "drain-timeout-ms" => self.drain_timeout = ms(value)?,
            "max-body" => self.max_body = args::bytes(&flag, value)? as usize,
            // 0 (off) is a valid size here, unlike the limits.
            "code-cache-bytes" => self.code_cache_bytes = if value.trim() == "0" { 0 } else { args::bytes(&flag, value)? as usize },
            "spawners" => self.spawners = args::count(&flag, value)?.max(1) as usize,
            "reserved-cpus" => self.reserved_cpus = Some(args::count(&flag, value)? as usize),
            "max-connections" => self.max_connections = args::count(&flag, value)?.max(1) as usize,
            "max-log-subscribers" => self.max_log_subscribers = args::count(&flag, value)? as usize,
            "modules" => self.modules = Some(PathBuf::from(value)),
            "secrets-key" => self.secrets_key = PathBuf::from(value),
            // The repeatable settings: each use adds one.
            "egress-allow" => {
                let rule = egress_policy::Rule::parse(value).map_err(|_| ArgError::Invalid {
                    flag,
                    value: value.into(),
                    what: "rule (host:port, *.name:port or IP:port)",
                })?;
                self.egress.allow.push((value.trim().to_string(), rule));
            }
            "egress-allow-private" => {
                let cidr = egress_policy::Cidr::parse(value).ok_or(ArgError::Invalid {
                    flag,
                    value: value.into(),
                    what: "CIDR (address/prefix)",
                })?;
                self.egress.allow_private.push(cidr);
            }
            "egress-resolve" => {
                let bad = || ArgError::Invalid { flag: flag.clone(), value: value.into(), what: "NAME=IP" };
                let (name, ip) = value.split_once('=').ok_or_else(bad)?;
                let Some(egress_policy::Destination::Name(name)) = egress_policy::Destination::parse(name) else { return Err(bad()) };
                let ip = egress_policy::parse_ip(ip).ok_or_else(bad)?;
                self.egress.resolve.insert(name, ip);
            }
            "log-hub-in" | "log-hub-out" => {
                if !log_hub::valid_endpoint(value) || value.ends_with(":*") {
                    return Err(ArgError::Invalid { flag, value: value.into(), what: "ZeroMQ address (tcp://HOST:PORT)" });
                }
                *if key == "log-hub-in" { &mut self.log_hub_in } else { &mut self.log_hub_out } = Some(value.to_string());
            }
            "store" => {
                shared_store::parse_url(value).map_err(|_| ArgError::Invalid {
                    flag,
                    value: value.into(),
                    what: "PostgreSQL URL (postgres://...)",
                })?;
                self.store = Some(value.to_string());
            }
            "store-ca" => self.store_ca = Some(PathBuf::from(value)),
            "egress-max-conns" => self.egress.max_conns = args::count(&flag, value)?.max(1) as usize,
            _ => return Err(ArgError::Unknown(flag)),
        }
        Ok(())
    }

    /// A config file is a JSON object whose keys are the long flags without dashes, e.g.
    /// `{"socket": "/run/x.sock", "pool-size": 4, "timeout-ms": 2000}`; flags given later override it.
    fn load_file(&mut self, path: &str) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        let obj = value.as_object().ok_or_else(|| format!("{path}: expected a JSON object"))?;
        for (k, v) in obj {
            // A repeatable setting takes an array: each element once.
            let values = match v {
                serde_json::Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            for v in values {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                self.set(k, &text).map_err(|e| format!("{path}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// A node's name as a header carries it: `[A-Za-z0-9._-]{1,253}` (every host name fits).
fn valid_node_name(name: &str) -> bool {
    (1..=253).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The host name (of this UTS namespace), the default node name; `taskcell` if it cannot be a header's.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if valid_node_name(name) {
        name.to_string()
    } else {
        "taskcell".to_string()
    }
}

/// Where the compilers directory appears inside a sandbox (runtime/js/bootstrap.js reads `NAME.js` there).
pub const COMPILERS_INSIDE: &str = "/compilers";

/// The built-in models; every other model is an operator's compiler.
pub const BUILTIN_MODELS: &[&str] = &["taskcell", "webtask", "openwhisk"];

/// The models the compilers in `dir` define: each `NAME.js` (a regular file, NAME a valid name, not a built-in
/// model's), sorted. A directory that does not exist defines none.
fn compiler_models(dir: &std::path::Path) -> Result<Vec<String>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading the compilers directory {}: {e}", dir.display())),
    };
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(model) = name.to_str().and_then(|n| n.strip_suffix(".js")) else { continue };
        if !store::valid_name(model) || !entry.path().is_file() {
            continue;
        }
        if BUILTIN_MODELS.contains(&model) {
            eprintln!("taskcell: ignoring {}: {model} is a built-in model", entry.path().display());
            continue;
        }
        models.push(model.to_string());
    }
    models.sort();
    Ok(models)
}

/// Half the machine's memory, at a quarter of the memory limit a sandbox (an idle one costs about 13 MiB of
/// PSS; the limit is a ceiling, rarely reached by all at once), between 8 and 1024. The host's OOM killer
/// takes sandboxes first (their oom_score_adj is raised) if tenants do all reach their limits.
fn default_max_sandboxes(memory_limit: u64) -> usize {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()))
        .map_or(8 << 30, |kb| kb << 10);
    ((total / 2 / (memory_limit / 4).max(1)) as usize).clamp(8, 1024)
}

fn parse(raw: Vec<String>) -> Result<Config, String> {
    let mut config = Config::default();
    let mut flags = Flags::new(raw);
    let mut overrides = Vec::new();
    while let Some((flag, inline)) = flags.next_flag() {
        let value = flags.value(&flag, inline).map_err(|e| e.to_string())?;
        if flag == "--config" {
            config.load_file(&value)?;
        } else if let Some(key) = flag.strip_prefix("--") {
            overrides.push((key.to_string(), value));
        } else {
            return Err(format!("unexpected argument {flag:?}"));
        }
    }
    for (k, v) in overrides {
        config.set(&k, &v).map_err(|e| e.to_string())?;
    }
    if !config.max_sandboxes_given {
        config.max_sandboxes = default_max_sandboxes(config.memory);
    }
    if !config.pool_max_given {
        // Half the sandboxes the host holds may wait for new tenants (memory permitting: see pool_policy).
        config.pool_max = config.max_sandboxes / 2;
    }
    config.pool_max = config.pool_max.max(config.pool_min);
    config.max_sandboxes = config.max_sandboxes.max(config.pool_max + 1);
    Ok(config)
}

pub fn main(raw: Vec<String>) -> ExitCode {
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", settings::help());
        return ExitCode::SUCCESS;
    }
    let config = match parse(raw) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("taskcell serve: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskcell serve: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--store`: the database's two clients, the follower caught up if the database answers now (so that a node
/// started after a deploy serves it from its first request), or not (it serves its local copy meanwhile).
fn shared_parts(url: &str, ca: Option<&Path>, store: &Arc<store::Store>, state_dir: &Path) -> Result<server::SharedParts, String> {
    let db = shared_store::Database::new(url, ca).map_err(|e| format!("--store: {}", crate::error_chain(&e)))?;
    if let Some(warning) = db.cleartext_risk() {
        eprintln!("taskcell: store: warning: {warning}");
    }
    let mut follower = shared_store::Follower::new(db.clone(), store.clone(), state_dir);
    let from = follower.version;
    let client = match follower.connect() {
        Ok(mut client) => match follower.check_database(&mut client).and_then(|()| follower.catch_up(&mut client, &mut |_| {})) {
            Ok(n) => {
                eprintln!("taskcell: store: PostgreSQL, {n} change(s) applied after version {from}, now at {}", follower.version);
                Some(client)
            }
            Err(e) => {
                eprintln!("taskcell: store: catching up: {} (serving the local copy meanwhile)", crate::error_chain(&e));
                None
            }
        },
        Err(e) => {
            eprintln!("taskcell: store: {} (serving the local copy; deploys refused until it is back)", crate::error_chain(&e));
            None
        }
    };
    Ok(server::SharedParts { writer: shared_store::Writer::new(db), follower, client })
}

/// Raise the soft limit on open files to the hard one: every connection and sandbox holds descriptors.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit read and write a local rlimit.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    // Before anything is made: a bad --modules stops the daemon here, with nothing created.
    let modules = match &config.modules {
        Some(dir) => Some(modules_dir(dir, config.rootfs.clone().unwrap_or_else(|| JailerConfig::default().rootfs).as_path())?),
        None => None,
    };
    // So are a group that does not exist and a token key that will not do.
    let socket_group = config.socket_group.as_deref().map(group_id).transpose()?;
    let verifier = match config.listen_tcp {
        Some(_) => Some(auth::Verifier::new(&auth::read_key(&config.token_key).map_err(|e| crate::error_chain(&e))?)),
        None => None,
    };
    raise_nofile();
    // Signals first, before any thread exists, so that every thread inherits the mask.
    let signals = crate::signals::block(&[libc::SIGINT, libc::SIGTERM]).map_err(|e| format!("signalfd: {e}"))?;
    // One daemon per state directory: a second one would sweep the first's temporary files mid-deploy.
    let _state_lock = lock_state_dir(&config.state_dir)?;
    let store = Arc::new(store::Store::open(&config.state_dir).map_err(|e| crate::error_chain(&e))?);
    // `--store`: caught up before anything reads the state directory (the secrets just below), so that a node
    // started after a change elsewhere serves it from its first request.
    let shared = match &config.store {
        Some(url) => Some(shared_parts(url, config.store_ca.as_deref(), &store, &config.state_dir)?),
        None => None,
    };
    // Tenants' secrets are opened into this process's memory: no core file of it, and no /proc/PID/mem
    // for anyone but root.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes integers and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let key = secrets::Key::load_or_create(&config.secrets_key).map_err(|e| {
        let why = crate::error_chain(&e);
        eprintln!("taskcell: secrets are unavailable: {why}");
        why
    });
    let secrets = secrets::Secrets::open(&config.state_dir, key);
    let mut jconfig = JailerConfig::default();
    if let Some(r) = &config.rootfs {
        jconfig.rootfs = r.clone();
    }
    // Operators' models, read once here: the event loop only ever looks the names up.
    let mut config = config;
    config.compilers = compiler_models(&config.compilers_dir)?;
    if config.compilers_dir.is_dir() {
        let dir = std::fs::canonicalize(&config.compilers_dir).map_err(|e| format!("{}: {e}", config.compilers_dir.display()))?;
        jconfig.binds_ro.push((dir, PathBuf::from(COMPILERS_INSIDE)));
        eprintln!(
            "taskcell: models from {}: {}",
            config.compilers_dir.display(),
            if config.compilers.is_empty() { "none".to_string() } else { config.compilers.join(", ") }
        );
    }
    jconfig.limits.memory = config.memory;
    jconfig.limits.pids = config.pids;
    jconfig.limits.cpu_quota_us = Some((config.cpus * jconfig.limits.cpu_period_us as f64) as u64);
    jconfig.tmp_bytes = config.tmp_bytes;
    if let Some(dir) = modules {
        jconfig.binds_ro.push((dir, PathBuf::from(crate::MODULES_PATH)));
    }
    // Sandboxes boot at a low CPU weight, so that refilling the pool yields to tenants' invocations; a
    // sandbox gets the normal weight when it is given to a tenant.
    jconfig.limits.cpu_weight = Some(server::BOOT_CPU_WEIGHT);
    let jailer = Jailer::new(jconfig).map_err(|e| format!("cannot make sandboxes: {}", crate::error_chain(&e)))?;
    let swept = jailer.sweep_stale_cgroups();
    if swept > 0 {
        eprintln!("taskcell: removed {swept} stale cgroup group(s) left by an earlier run");
    }
    let jailer = Arc::new(jailer);
    let listener = bind_socket(&config.socket, socket_group)?;
    let tcp = match (config.listen_tcp, verifier) {
        (Some(addr), Some(verifier)) => {
            let l = mio::net::TcpListener::bind(addr).map_err(|e| format!("--listen-tcp: binding {addr}: {e}"))?;
            let bound = l.local_addr().map_err(|e| format!("--listen-tcp {addr}: {e}"))?;
            eprintln!("taskcell: listening on tcp {bound} (bearer tokens under {})", config.token_key.display());
            Some((l, verifier))
        }
        _ => None,
    };
    let poll = mio::Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), server::WAKER_TOKEN).map_err(|e| format!("waker: {e}"))?);
    // V8's old space well below the cgroup limit, so that most overruns end as a clean heap failure.
    let heap_mib = (config.memory >> 20) / 2;
    let node = spawner::NodeCommand {
        argv: vec!["/usr/bin/node".into(), format!("--max-old-space-size={}", heap_mib.max(16)), crate::BOOTSTRAP_PATH.into()],
        ready_timeout: Duration::from_secs(20),
    };
    let cpus = cpus::CpuClasses::new(config.reserved_cpus);
    let spawner = spawner::Spawner::start(jailer.clone(), node, config.spawners, waker.clone(), cpus.map(|c| (c.all, c.batch)));
    let socket_path = config.socket.clone();
    let parts = server::Parts { poll, waker, listener, tcp, signals, spawner, store, secrets, cpus, shared };
    let mut server = server::Server::new(config.clone(), parts).map_err(|e| format!("event loop: {e}"))?;
    eprintln!(
        "taskcell: serving on {} as node {} (pool {} to {}, timeout {} ms, memory {} bytes, pids {}, {})",
        socket_path.display(),
        config.node_name,
        config.pool_min,
        config.pool_max,
        config.timeout.as_millis(),
        config.memory,
        config.pids,
        cpus.map_or("no CPU reserved".to_string(), |c| format!("CPUs {} kept from busy sandboxes", c.reserved.list()))
    );
    notify_ready();
    let result = server.run().map_err(|e| format!("event loop: {e}"));
    drop(server);
    // The spawner threads still hold the jailer, so its Drop would never run: remove the groups here.
    if !jailer.remove_cgroups() {
        eprintln!("taskcell: some cgroups could not be removed; the next start sweeps them");
    }
    let _ = std::fs::remove_file(&socket_path);
    eprintln!("taskcell: stopped");
    result
}

/// The `--modules` directory as the jailer binds it: absolute, a directory, and a rootfs that has the mount point
/// (one built before modules existed has none: the bind would fail in every sandbox, later and less clearly).
fn modules_dir(dir: &std::path::Path, rootfs: &std::path::Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(dir).map_err(|e| format!("--modules {}: {e}", dir.display()))?;
    if !real.is_dir() {
        return Err(format!("--modules {}: not a directory", dir.display()));
    }
    let mount_point = rootfs.join(crate::MODULES_PATH.trim_start_matches('/'));
    if !mount_point.is_dir() {
        return Err(format!("--modules: the rootfs {} has no {} (rebuild it: make rootfs)", rootfs.display(), crate::MODULES_PATH));
    }
    Ok(real)
}

/// An exclusive lock on `STATE/.lock`, held for the daemon's life (released by the kernel at any exit).
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // A daemon killed with -9 may leave a sandbox it was making alive for a moment, holding a copy of the
    // lock's descriptor until its death signal lands: wait a little before calling the directory taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{} is in use by another taskcell daemon", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bind the front socket (mode 0660, and this group if given), replacing a stale socket file but never a live
/// daemon's.
fn bind_socket(path: &std::path::Path, group: Option<u32>) -> Result<mio::net::UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!("{} is in use by a running daemon", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
    }
    let listener = mio::net::UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| format!("--socket-group: chgrp {gid} {}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(listener)
}

/// `--socket-group`: a group's id, from its name (through NSS, as `chgrp` does) or as a number.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| format!("--socket-group {group:?}: not a group name"))?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: a zeroed `group` is a valid value of that plain C struct (null pointers, zero id).
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is to a live local; `buf.len()` is the size of the buffer that `grp`'s strings are
        // written into, and `found` is either left null or set to `&mut grp`.
        let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
        match rc {
            0 if found.is_null() => return Err(format!("--socket-group {group}: no such group")),
            0 => return Ok(grp.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            errno => return Err(format!("--socket-group {group}: {}", std::io::Error::from_raw_os_error(errno))),
        }
    }
}

/// READY=1 to systemd's NOTIFY_SOCKET, if there is one.
fn notify_ready() {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let msg = format!("READY=1\nMAINPID={}\nSTATUS=serving\n", std::process::id());
    let sent = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = sent {
        eprintln!("taskcell: notifying systemd: {e}");
    }
}
