//! Many nodes behind HAProxy (issue 15), on one machine: three real daemons listening on TCP 127.0.0.1 with
//! tokens, and a real HAProxy running the shipped `dist/haproxy.cfg` (only its listening address, its
//! servers' ports and its syslog line changed for the test). What is proven: a tenant's requests stay on one
//! node (warm after the first), tenants spread over the nodes, killing a node moves only its tenants (the
//! others keep their node and their warm sandbox) and they are served by the others within a few health
//! intervals, a node that comes back gets its own tenants back and no others, tokens are checked behind the proxy (401 without, 403 for another tenant). The added p50 of
//! the HAProxy hop over TCP against a node's own Unix socket is printed (`CLUSTER` lines), never asserted.
//!
//! Needs root and `haproxy` (Debian package haproxy; .ci/run installs it). Without it the test says so
//! loudly, and fails if `CI` is set. PostgreSQL and the log hub parts of issue 15 are not here yet.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, Client, Daemon, Response, TempDir};
use serde_json::json;

/// HAProxy in the foreground (`-db`), killed and reaped when dropped.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy_binary() -> Option<PathBuf> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// The TCP address a daemon logged it listens on (it was given port 0).
fn tcp_addr(d: &Daemon) -> SocketAddr {
    let log = std::fs::read_to_string(&d.log).unwrap();
    let line = log.lines().find_map(|l| l.strip_prefix("taskcell: listening on tcp ")).unwrap_or_else(|| panic!("no tcp line in\n{log}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
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

fn token(key: &Path, tenant: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_taskcell"))
        .args(["token", "--tenant", tenant, "--ttl", "1h", "--key", key.to_str().unwrap()])
        .output()
        .expect("taskcell token");
    assert!(out.status.success(), "taskcell token: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn run(c: &mut Client, token: &str, tenant: &str, i: u64) -> Response {
    let body = json!({"code": "module.exports = (d) => d.i", "data": {"i": i}}).to_string();
    let auth = format!("Bearer {token}");
    c.request(
        "POST",
        &format!("/v1/tenants/{tenant}/run"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn node_of(r: &Response) -> String {
    r.header("x-taskcell-node").unwrap_or("?").to_string()
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn tenants_stay_on_their_node_and_only_a_dead_nodes_tenants_move() {
    need_root!("tenants_stay_on_their_node_and_only_a_dead_nodes_tenants_move");
    let Some(haproxy) = haproxy_binary() else {
        eprintln!("\n**********\nSKIPPED: haproxy is not installed (apt-get install haproxy)\n**********\n");
        assert!(std::env::var_os("CI").is_none(), "haproxy is missing and CI is set: .ci/run must install it");
        return;
    };
    let dir = TempDir::new("cluster");
    let key = dir.0.join("token.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_arg = key.to_str().unwrap().to_string();
    // Fixed ports (free ones, found by binding 0 and letting go), so that a node restarted keeps its address
    // in HAProxy's list.
    let ports: Vec<u16> = {
        let held: Vec<std::net::TcpListener> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        held.iter().map(|l| l.local_addr().unwrap().port()).collect()
    };
    let nodes: Vec<Daemon> = (1..=3)
        .map(|n| {
            let (name, listen) = (format!("node{n}"), format!("127.0.0.1:{}", ports[n - 1]));
            Daemon::start(&format!("cluster-{name}"), &["--listen-tcp", &listen, "--token-key", &key_arg, "--node-name", &name])
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(tcp_addr).collect();
    let front = dir.0.join("front.sock");
    let cfg = dir.0.join("haproxy.cfg");
    std::fs::write(&cfg, config(&front, &addrs)).unwrap();
    let check = Command::new(&haproxy).args(["-c", "-f"]).arg(&cfg).output().expect("haproxy -c");
    assert!(check.status.success(), "haproxy -c: {}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    let mut proxy = Haproxy(
        Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("haproxy.log")).unwrap())
            .spawn()
            .expect("start haproxy"),
    );
    wait_until(Duration::from_secs(10), "HAProxy's socket", || front.exists());
    let all = token(&key, "*");
    // HAProxy marks its servers up after its first checks.
    wait_until(Duration::from_secs(15), "every node up behind HAProxy", || {
        let mut seen = std::collections::HashSet::new();
        for i in 0..30 {
            let Ok(mut c) = Client::try_connect(&front) else { return false };
            let r = run(&mut c, &all, &format!("probe-{i}"), i);
            if r.status != 200 {
                return false;
            }
            seen.insert(node_of(&r));
        }
        seen.len() == 3
    });

    // Each tenant's three requests land on one node: cold, then warm there.
    let tenants: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
    let mut home: HashMap<String, String> = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        let mut nodes_seen = Vec::new();
        // One keep-alive connection, as a product's backend holds them: a request that closed its connection
        // a moment ago may still count as in flight on its node, and bounded load then skips the node.
        let mut c = Client::connect(&front);
        for k in 0..3 {
            let r = run(&mut c, &all, t, (i * 10 + k) as u64);
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["result"], json!(i * 10 + k));
            assert_eq!(r.json()["cold"], json!(k == 0), "tenant {t}, request {k} on {}: {}", node_of(&r), r.text());
            nodes_seen.push(node_of(&r));
        }
        assert!(nodes_seen.iter().all(|n| *n == nodes_seen[0]), "tenant {t} moved between nodes: {nodes_seen:?}");
        home.insert(t.clone(), nodes_seen[0].clone());
    }
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for n in home.values() {
        *per_node.entry(n.as_str()).or_default() += 1;
    }
    eprintln!("CLUSTER tenants per node: {per_node:?}");
    assert!(per_node.len() >= 2, "30 tenants all on one node: {per_node:?}");

    // Tokens are still the nodes' to check behind the proxy.
    let mut c = Client::connect(&front);
    let r = c.request("POST", "/v1/tenants/t1/run", &[("Content-Type", "application/json")], b"{\"code\":\"module.exports=()=>1\"}");
    assert_eq!((r.status, r.json()["error"]["kind"].clone()), (401, json!("unauthorized")), "{}", r.text());
    let other = token(&key, "t2");
    let r = run(&mut Client::connect(&front), &other, "t1", 1);
    assert_eq!((r.status, r.json()["error"]["kind"].clone()), (403, json!("forbidden")), "{}", r.text());

    // The HAProxy hop over TCP against a node's own Unix socket, one keep-alive connection each.
    let first = tenants.iter().find(|t| home[*t] == "node1").expect("a tenant on node1").clone();
    let (mut direct, mut via) = (Client::connect(&nodes[0].socket), Client::connect(&front));
    let (mut d_times, mut v_times) = (Vec::new(), Vec::new());
    for i in 0..300u64 {
        let t0 = Instant::now();
        assert_eq!(run(&mut direct, &all, &first, i).status, 200);
        d_times.push(t0.elapsed());
        let t0 = Instant::now();
        assert_eq!(run(&mut via, &all, &first, i).status, 200);
        v_times.push(t0.elapsed());
    }
    let (d, v) = (p50(d_times), p50(v_times));
    eprintln!("CLUSTER warm run p50: node's Unix socket {d:?}, through HAProxy over TCP {v:?}: the hop adds {:?}", v.saturating_sub(d));

    // node2 dies: its tenants are served by the others; everyone else keeps node and warm sandbox.
    let victims: Vec<&String> = tenants.iter().filter(|t| home[*t] == "node2").collect();
    nodes[1].kill9();
    let killed = Instant::now();
    wait_until(Duration::from_secs(20), "node2's tenants served by the others", || {
        victims.iter().all(|t| {
            let Ok(mut c) = Client::try_connect(&front) else { return false };
            let r = run(&mut c, &all, t, 1);
            r.status == 200 && node_of(&r) != "node2"
        })
    });
    eprintln!("CLUSTER node2 killed: its {} tenants served elsewhere after {:?}", victims.len(), killed.elapsed());
    let mut c = Client::connect(&front);
    for (t, n) in &home {
        if n == "node2" {
            continue;
        }
        let r = run(&mut c, &all, t, 5);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(&node_of(&r), n, "tenant {t} moved although its node is alive");
        assert_eq!(r.json()["cold"], json!(false), "tenant {t} lost its warm sandbox");
    }
    // node2 back (a restart over its state dir, which also sweeps what the kill left): once HAProxy has seen
    // it healthy, its tenants come back to it, and only they.
    nodes[1].restart();
    wait_until(Duration::from_secs(20), "node2's tenants back on node2", || {
        victims.iter().all(|t| {
            let Ok(mut c) = Client::try_connect(&front) else { return false };
            let r = run(&mut c, &all, t, 1);
            r.status == 200 && node_of(&r) == "node2"
        })
    });
    let mut c = Client::connect(&front);
    for (t, n) in &home {
        let r = run(&mut c, &all, t, 6);
        assert_eq!((r.status, &node_of(&r)), (200, n), "tenant {t} after node2 came back: {}", r.text());
    }
    drop(proxy.0.kill());
    // HAProxy's own messages and its request log went to this file (its stderr).
    let err = std::fs::read_to_string(dir.0.join("haproxy.log")).unwrap_or_default();
    let _ = proxy.0.wait();
    assert!(!err.contains("[ALERT]"), "HAProxy alerts:\n{err}");
    drop(nodes);
}
