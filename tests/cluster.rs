//! Many nodes on existing parts (issue 15), all of them at once on one machine: three real daemons listening on
//! TCP 127.0.0.1 with tokens, behind a real HAProxy running the shipped `dist/haproxy.cfg` (only its listening
//! address, its servers' ports and its syslog line changed for the test), sharing one real PostgreSQL (`--store`,
//! a server of the test's own in a temporary directory) and one `taskcell log-hub`.
//!
//! What is proven: a tenant's requests stay on one node (warm after the first) and tenants spread over the
//! nodes; tokens are checked behind the proxy (401 without, 403 for another tenant); a deploy through one node
//! runs on the others; a secret set through one node is seen by a sandbox on another and its value is not in a
//! dump of the database; one `/v1/logs` stream on one node carries the events of all three; killing a node
//! moves only its tenants (the others keep their node and their warm sandbox) and they are served by the
//! others within a few health intervals; the node restarted serves what was deployed while it was down and
//! gets its own tenants back, and no others; with the database stopped every tenant is still served and
//! deploys are refused with 503.
//!
//! Printed, never asserted (`CLUSTER` lines): the added p50 of the HAProxy hop over TCP against a node's own
//! Unix socket, and the time from a deploy's acknowledgement to its first run on another node (p50, p99).
//!
//! Needs root, `haproxy` and PostgreSQL (Debian packages haproxy and postgresql; .ci/run installs them).
//! Without one the test says so loudly, and fails if `CI` is set.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{tcp_addr, Haproxy, Hub, LogStream, Postgres, TokenKey};
use common::{wait_until, Client, Daemon, Response, TempDir};
use serde_json::{json, Value};

/// Longest a change may take to reach another node before the test calls it lost (a hang detector).
const SYNC_GUARD: Duration = Duration::from_secs(15);

fn post(c: &mut Client, token: &str, path: &str, body: &[u8]) -> Response {
    let auth = format!("Bearer {token}");
    c.request("POST", path, &[("Authorization", &auth), ("Content-Type", "application/json")], body)
}

fn run(c: &mut Client, token: &str, tenant: &str, i: u64) -> Response {
    let body = json!({"code": "module.exports = (d) => d.i", "data": {"i": i}}).to_string();
    post(c, token, &format!("/v1/tenants/{tenant}/run"), body.as_bytes())
}

/// A run whose code logs `message` (one event on the log streams).
fn log_run(c: &mut Client, token: &str, tenant: &str, message: &str) -> Response {
    let code = format!("module.exports = () => {{ console.log({}); return 1 }}", Value::from(message));
    post(c, token, &format!("/v1/tenants/{tenant}/run"), json!({ "code": code }).to_string().as_bytes())
}

fn put_task(c: &mut Client, token: &str, tenant: &str, task: &str, source: &str) -> Response {
    let auth = format!("Bearer {token}");
    c.request(
        "PUT",
        &format!("/v1/tenants/{tenant}/tasks/{task}"),
        &[("Authorization", &auth), ("Content-Type", "application/javascript")],
        source.as_bytes(),
    )
}

fn node_of(r: &Response) -> String {
    r.header("x-taskcell-node").unwrap_or("?").to_string()
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[test]
fn three_nodes_behind_haproxy_share_one_database_and_one_log_stream() {
    need_root!("three_nodes_behind_haproxy_share_one_database_and_one_log_stream");
    let test = "three_nodes_behind_haproxy_share_one_database_and_one_log_stream";
    let dir = TempDir::new("cluster");
    // Fixed ports (free ones, found by binding 0 and letting go), so that a node restarted keeps its address
    // in HAProxy's list.
    let ports: Vec<u16> = {
        let held: Vec<std::net::TcpListener> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        held.iter().map(|l| l.local_addr().unwrap().port()).collect()
    };
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let Some(mut pg) = Postgres::start("cluster") else { return };
    let hub = Hub::start("cluster-hub", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0");
    let key = TokenKey::new();
    // Every node of a cluster shares the secrets key: sealed once, opened on any node.
    let secrets_key = dir.0.join("secrets.key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&secrets_key).unwrap();
        std::io::Write::write_all(&mut f, &[9u8; 32]).unwrap();
    }
    let (key_arg, secrets_arg, store) = (key.0.display().to_string(), secrets_key.display().to_string(), pg.url());
    let nodes: Vec<Daemon> = (1..=3)
        .map(|n| {
            let (name, listen) = (format!("node{n}"), addrs[n - 1].to_string());
            #[rustfmt::skip]
            let flags = [
                "--listen-tcp", &listen, "--token-key", &key_arg, "--node-name", &name, "--store", &store,
                "--secrets-key", &secrets_arg, "--log-hub-in", &hub.input, "--log-hub-out", &hub.output,
            ];
            Daemon::start(&format!("cluster-{name}"), &flags)
        })
        .collect();
    for (d, a) in nodes.iter().zip(&addrs) {
        assert_eq!(tcp_addr(d), *a);
        assert_eq!(d.health()["store"]["connected"], true, "{}", d.health());
    }
    // HAProxy after the nodes: a backend with no server up at its start is an alert.
    let Some(proxy) = Haproxy::start(test, &dir.0, &addrs) else { return };
    let all = key.token("*");
    let front = proxy.front.clone();
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

    // One live-log stream, on node3 over TCP with the operator's token: probes from each node until each
    // has come through (zmq connects and subscribes in the background).
    let bearer = format!("Bearer {all}");
    let mut stream = LogStream::on(Client::connect_tcp(addrs[2]), "/v1/logs", &[("Authorization", &bearer)]);
    for (n, d) in nodes.iter().enumerate() {
        let name = format!("node{}", n + 1);
        let mut through = false;
        for k in 0..120 {
            assert_eq!(d.run("log-probe", &format!("module.exports = () => console.log('probe-{k}')"), Value::Null).status, 200);
            through = stream.drain().iter().any(|e| e["node"] == name.as_str() && e["tenant"] == "log-probe");
            if through {
                break;
            }
        }
        assert!(through, "120 probes from {name} did not reach node3's stream");
    }

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
    let on = |node: &str| tenants.iter().find(|t| home[*t] == node).cloned();

    // The stream on node3 carries the events of every node's tenants, each once, with its node.
    let marked: Vec<(String, String)> = (1..=3).filter_map(|n| Some((on(&format!("node{n}"))?, format!("node{n}")))).collect();
    let mut c = Client::connect(&front);
    for (t, _) in &marked {
        let r = log_run(&mut c, &all, t, &format!("mark-{t}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut left: Vec<&(String, String)> = marked.iter().collect();
    let mut seen = stream.until("a mark from every node", |e| {
        left.retain(|(t, n)| !(e["message"] == format!("mark-{t}").as_str() && e["node"] == n.as_str() && e["tenant"] == t.as_str()));
        left.is_empty()
    });
    seen.extend(stream.drain());
    for (t, n) in &marked {
        let count = seen.iter().filter(|e| e["message"] == format!("mark-{t}").as_str()).count();
        assert_eq!(count, 1, "tenant {t}'s event from {n}, once on node3's stream: {seen:?}");
    }
    eprintln!("CLUSTER one /v1/logs stream on node3 saw the events of {} nodes", marked.len());

    // Tokens are still the nodes' to check behind the proxy.
    let mut c = Client::connect(&front);
    let r = c.request("POST", "/v1/tenants/t1/run", &[("Content-Type", "application/json")], b"{\"code\":\"module.exports=()=>1\"}");
    assert_eq!((r.status, r.json()["error"]["kind"].clone()), (401, json!("unauthorized")), "{}", r.text());
    let other = key.token("t2");
    let r = run(&mut Client::connect(&front), &other, "t1", 1);
    assert_eq!((r.status, r.json()["error"]["kind"].clone()), (403, json!("forbidden")), "{}", r.text());

    // The HAProxy hop over TCP against a node's own Unix socket, one keep-alive connection each.
    let first = on("node1").expect("a tenant on node1");
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
    let (d, v) = (percentile(&d_times, 0.5), percentile(&v_times, 0.5));
    eprintln!("CLUSTER warm run p50: node's Unix socket {d:?}, through HAProxy over TCP {v:?}: the hop adds {:?}", v.saturating_sub(d));

    // A deploy through HAProxy (to the tenant's node, node1) runs on the other two: from its acknowledgement
    // to the first run there that answers with the new version (each other node polled on a keep-alive
    // connection of its own, as fast as it answers).
    let mut others: Vec<Client> = nodes[1..].iter().map(|d| Client::connect(&d.socket)).collect();
    let mut lags = Vec::new();
    for version in 0..100u64 {
        let r = put_task(&mut via, &all, &first, "deployed", &format!("module.exports = () => ({version})\n"));
        assert_eq!((r.status, node_of(&r)), (if version == 0 { 201 } else { 200 }, "node1".to_string()), "{}", r.text());
        let acked = Instant::now();
        let c = &mut others[version as usize % 2];
        loop {
            let r = post(c, &all, &format!("/v1/tenants/{first}/tasks/deployed/run"), b"{}");
            if r.status == 200 && r.json()["result"] == json!(version) {
                break;
            }
            assert!(r.status == 200 || r.status == 404, "{}", r.text());
            assert!(acked.elapsed() < SYNC_GUARD, "version {version} did not reach another node in {SYNC_GUARD:?}");
        }
        lags.push(acked.elapsed());
    }
    let over = lags.iter().filter(|l| **l > Duration::from_secs(1)).count();
    eprintln!(
        "CLUSTER deploy acknowledged -> first run on another node: p50 {:?}, p99 {:?}, max {:?} ({} deploys, {over} over 1 s)",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        percentile(&lags, 1.0),
        lags.len()
    );

    // A secret set through one node is seen by a sandbox on another, and the database holds it sealed only.
    let value = "s3cret-only-in-sandboxes-cluster-51d7";
    let auth = format!("Bearer {all}");
    let r = via.request("PUT", &format!("/v1/tenants/{first}/secrets/API_KEY"), &[("Authorization", &auth)], value.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let read = json!({"code": "module.exports = (d, ctx) => ctx.secrets.API_KEY || null"}).to_string();
    wait_until(SYNC_GUARD, "node3's sandbox sees the secret set through node1", || {
        let r = post(&mut others[1], &all, &format!("/v1/tenants/{first}/run"), read.as_bytes());
        r.status == 200 && r.json()["result"] == value
    });
    let dump = pg.dump();
    let hex: String = value.bytes().map(|c| format!("{c:02x}")).collect();
    let contains = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"taskcell_secrets"), "the dump has the sealed secrets");
    assert!(!contains(value.as_bytes()) && !contains(hex.as_bytes()), "a secret's value is in pg_dump's output");
    drop(others);

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
    // While node2 is down, its tenants deploy (through whichever node serves them now).
    for t in &victims {
        let r = put_task(&mut c, &all, t, "while-down", &format!("module.exports = () => 'deployed while node2 was down for {t}'\n"));
        assert_eq!(r.status, 201, "{}", r.text());
        assert_ne!(node_of(&r), "node2");
    }
    // node2 back (a restart over its state dir, which also sweeps what the kill left): caught up from the
    // database before it answers; once HAProxy has seen it healthy, its tenants come back to it, and only
    // they, and it runs what they deployed while it was down.
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
    for t in &victims {
        let r = post(&mut c, &all, &format!("/v1/tenants/{t}/tasks/while-down/run"), b"{}");
        assert_eq!((r.status, node_of(&r)), (200, "node2".to_string()), "{}", r.text());
        assert_eq!(r.json()["result"], json!(format!("deployed while node2 was down for {t}")));
    }

    // The database stops: every tenant is still served, on its node and warm; deploys are refused with 503.
    pg.stop();
    for d in &nodes {
        wait_until(SYNC_GUARD, "each node's health to say the store is gone", || d.health()["store"]["connected"] == false);
    }
    let mut c = Client::connect(&front);
    for (t, n) in &home {
        let r = run(&mut c, &all, t, 7);
        assert_eq!(
            (r.status, &node_of(&r), r.json()["result"].clone()),
            (200, n, json!(7)),
            "tenant {t} without the database: {}",
            r.text()
        );
    }
    let r = put_task(&mut c, &all, &first, "deployed", "module.exports = () => 'refused'\n");
    let e = r.assert_error(503, "store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"), "{e}");
    let r = post(&mut c, &all, &format!("/v1/tenants/{first}/tasks/deployed/run"), b"{}");
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!(99)), "a refused deploy changes nothing: {}", r.text());
    for d in &nodes {
        d.assert_running("with the database stopped");
    }

    drop((c, via, direct, stream));
    proxy.stop_without_alerts();
    drop(nodes);
    drop((hub, pg, key));
}
