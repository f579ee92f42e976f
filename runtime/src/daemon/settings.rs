//! Every setting of `taskcell serve`, defined once: its flag (and config-file key, the same name without the
//! dashes), the kind of value it takes, its default as a user reads it, and its help text.
//!
//! `Config::set` applies a value by key, `taskcell serve --help` prints this table, and a test checks that
//! docs/api.md's table of settings lists every one with the same default, so that the three cannot drift.

/// One setting.
pub struct Setting {
    /// The flag without its dashes; also the config file's key.
    pub key: &'static str,
    /// What the value is, as `--help` shows it.
    pub value: &'static str,
    /// The default, as a user reads it.
    pub default: &'static str,
    pub help: &'static str,
}

const fn s(key: &'static str, value: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting { key, value, default, help }
}

/// In the order `--help` and docs/api.md list them.
pub const SETTINGS: &[Setting] = &[
    s("config", "FILE", "none", "a JSON object of these settings (keys without the dashes); flags given on the command line win"),
    s("socket", "PATH", "/run/taskcell/taskcell.sock", "the API's Unix socket (mode 0660)"),
    s(
        "socket-group",
        "GROUP",
        "none",
        "the socket's group (a name or a number), so that a proxy's user can be let in; the mode stays 0660",
    ),
    s(
        "listen-tcp",
        "ADDR:PORT",
        "none",
        "also serve the API on this TCP address (port 0: a free one, logged); every request but GET /v1/health needs a bearer token",
    ),
    s(
        "token-key",
        "FILE",
        "/etc/taskcell/token.key",
        "the HS256 key of --listen-tcp's tokens: the file's bytes, at least 32, mode 0600 or 0400; never made by the daemon",
    ),
    s("node-name", "NAME", "the host name", "this node's name, sent as X-Taskcell-Node on every response"),
    s("state-dir", "DIR", "/var/lib/taskcell", "deployed tasks and their code caches"),
    s("rootfs", "DIR", "the rootfs make built", "the sandboxes' read-only root (Node and its libraries)"),
    s("pool-min", "N", "2 x cores, 2 to 16", "the least pre-warmed sandboxes kept waiting for new tenants"),
    s(
        "pool-max",
        "N",
        "half of --max-sandboxes",
        "the most: the pool grows by the new tenants of the busiest 10 s of the window, as memory allows",
    ),
    s("pool-window-ms", "MS", "300000", "how far back demand for sandboxes sizes the pool; quiet that long, it is back at its minimum; kept across restarts in the state directory"),
    s(
        "pool-reclaim-idle-ms",
        "MS",
        "30000",
        "at --max-sandboxes, a tenant's sandbox idle this long gives its place to the pool (least recently used first); 0: never",
    ),
    s("pool-size", "N", "none", "a pool of fixed size: sets both --pool-min and --pool-max"),
    s(
        "max-sandboxes",
        "N",
        "half the RAM at a quarter of --memory each, 8 to 1024",
        "sandboxes alive at once (pool + tenants); a new tenant beyond it replaces the least recently used idle one",
    ),
    s("spawners", "N", "cores, 1 to 4", "threads making sandboxes"),
    s("queue-timeout-ms", "MS", "10000", "how long a request waits for a sandbox before 503 overloaded"),
    s("idle-timeout-ms", "MS", "300000", "a tenant's sandbox idle this long is recycled"),
    s("max-age-ms", "MS", "3600000", "a tenant's sandbox this old is recycled when idle"),
    s("max-requests", "N", "1000000", "a tenant's sandbox that served this many requests is recycled"),
    s("timeout-ms", "MS", "5000", "an invocation's time limit; past it the sandbox is killed (504)"),
    s("max-timeout-ms", "MS", "30000", "the longest time limit a task or run may ask for (timeout_ms); above it 400 bad_request"),
    s(
        "compilers-dir",
        "DIR",
        "/etc/taskcell/compilers",
        "operators' models: each NAME.js in it is the compiler of the model NAME, run inside the sandboxes (read at start)",
    ),
    s("memory", "BYTES", "128M", "a sandbox's memory (cgroup; V8's old space is half of it)"),
    s("pids", "N", "64", "a sandbox's processes and threads"),
    s("cpus", "N", "1.0", "a sandbox's CPU quota, in CPUs"),
    s("tmp-size", "BYTES", "16M", "a sandbox's /tmp (tmpfs)"),
    s(
        "reserved-cpus",
        "N",
        "a quarter of the CPUs, at least 1 (0 with one CPU)",
        "CPUs kept from booting and busy sandboxes, for the event loop and tenants that are not busy",
    ),
    s("max-body", "BYTES", "1M", "a request body's limit (413 past it)"),
    s("code-cache-bytes", "BYTES", "64M", "memory for the V8 code caches of deployed tasks (0: none); one tenant gets at most a quarter"),
    s("max-connections", "N", "1024", "client connections at once; past it a new one gets 503 overloaded and is closed"),
    s("max-log-subscribers", "N", "64", "/v1/logs streams at once; past it 503 overloaded"),
    s(
        "secrets-key",
        "FILE",
        "/etc/taskcell/secrets.key",
        "the 32-byte key that seals tenants' secrets at rest; made (mode 0600) at first start if missing",
    ),
    s("modules", "DIR", "none", "npm modules (made with taskcell modules add) that every sandbox sees read-only at /taskcell/modules"),
    s("drain-timeout-ms", "MS", "10000", "on SIGTERM, how long in-flight invocations may finish"),
    s(
        "egress-allow",
        "RULE",
        "none",
        "an allow-list entry (host:port, *.name:port, IP:port) for every tenant, on top of each tenant's own list; repeatable",
    ),
    s(
        "egress-allow-private",
        "CIDR",
        "none",
        "a loopback, private, link-local or other refused range that egress may reach after all (e.g. 10.0.0.0/8); repeatable",
    ),
    s("egress-resolve", "NAME=IP", "none", "egress resolves NAME to IP without asking DNS, like curl --resolve; repeatable"),
    s("egress-max-conns", "N", "32", "egress connections an invocation may open (and at most 64 open at once a sandbox)"),
    s(
        "log-hub-in",
        "tcp://HOST:PORT",
        "none",
        "the log hub's input (taskcell log-hub --in): this node publishes its log events there, dropping (counted) what the hub cannot take",
    ),
    s(
        "log-hub-out",
        "tcp://HOST:PORT",
        "none",
        "the log hub's output (taskcell log-hub --out): this node's /v1/logs also streams every other node's events from there",
    ),
    s(
        "store",
        "postgres://URL",
        "none",
        "PostgreSQL as every node's source of truth for tasks, secrets (sealed) and egress lists (the state directory stays the local copy); a deploy is answered once committed there, 503 store_unavailable while it cannot be reached; ?sslmode=require for TLS",
    ),
    s("store-ca", "FILE", "system roots", "the CA (PEM) that signed the store's server certificate; the certificate and host name are always verified"),
];

/// `taskcell serve --help`.
pub fn help() -> String {
    let mut out = String::from(
        "usage: taskcell serve [FLAGS]\n\nThe daemon, in the foreground, logging to stderr. Every flag is also a key of --config FILE.\n\n",
    );
    let width = SETTINGS.iter().map(|s| s.key.len() + s.value.len() + 4).max().unwrap_or(0);
    for s in SETTINGS {
        let flag = format!("--{} {}", s.key, s.value);
        out.push_str(&format!("  {flag:<width$} {} (default: {})\n", s.help, s.default));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::Config;

    /// A value of the right kind for each setting, to prove `Config::set` knows every key.
    fn example(value: &str) -> &'static str {
        match value {
            "BYTES" => "64M",
            "MS" | "N" => "3",
            "PATH" | "DIR" | "FILE" => "/tmp/x",
            "RULE" => "api.example.com:443",
            "CIDR" => "10.0.0.0/8",
            "NAME=IP" => "api.test=127.0.0.1",
            "GROUP" => "daemon",
            "ADDR:PORT" => "127.0.0.1:0",
            "NAME" => "node-1.example",
            "tcp://HOST:PORT" => "tcp://127.0.0.1:5555",
            "postgres://URL" => "postgres://taskcell@127.0.0.1:5432/taskcell",
            other => panic!("no example for {other}"),
        }
    }

    #[test]
    fn config_accepts_every_setting_and_nothing_else() {
        for s in SETTINGS.iter().filter(|s| s.key != "config") {
            let mut c = Config::default();
            c.set(s.key, example(s.value)).unwrap_or_else(|e| panic!("--{}: {e}", s.key));
        }
        assert!(Config::default().set("no-such-flag", "1").is_err());
        // The repeatable ones add up, and refuse what they cannot use.
        let mut c = Config::default();
        c.set("egress-allow", "a.test:443").unwrap();
        c.set("egress-allow", "*.b.test:80").unwrap();
        assert_eq!(c.egress.allow.len(), 2);
        assert!(c.set("egress-allow", "a.test").is_err());
        c.set("egress-resolve", "API.test.=127.0.0.1").unwrap();
        assert_eq!(c.egress.resolve.get("api.test"), Some(&"127.0.0.1".parse().unwrap()));
        assert!(c.set("egress-resolve", "x.test=not-an-ip").is_err());
        assert!(c.set("egress-allow-private", "10.0.0.0/33").is_err());
        // A node's name goes into a header as it is: nothing that could break one.
        assert!(c.set("node-name", "a b").is_err() && c.set("node-name", "x\r\nY: z").is_err() && c.set("node-name", "").is_err());
        assert!(c.set("listen-tcp", "localhost:80").is_err() && c.set("listen-tcp", "127.0.0.1").is_err());
        c.set("listen-tcp", "[::1]:8080").unwrap();
        assert!(c.set("store", "host=/tmp user=x").is_err() && c.set("store", "http://x").is_err());
        assert!(c.set("log-hub-in", "127.0.0.1:5555").is_err() && c.set("log-hub-out", "tcp://127.0.0.1").is_err());
        let keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "a key is listed twice");
    }

    #[test]
    fn docs_list_every_setting_with_its_default() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).expect("docs/api.md");
        for s in SETTINGS {
            let row = docs
                .lines()
                .find(|l| l.starts_with('|') && l.contains(&format!("`--{}`", s.key)))
                .unwrap_or_else(|| panic!("docs/api.md has no row for --{}", s.key));
            assert!(row.contains(s.default), "docs/api.md's row for --{} does not give the default {:?}: {row}", s.key, s.default);
        }
    }

    #[test]
    fn help_lists_every_setting() {
        let text = help();
        for s in SETTINGS {
            assert!(text.contains(&format!("--{} ", s.key)), "--help misses --{}", s.key);
        }
    }
}
