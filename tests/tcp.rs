//! The API over TCP (`--listen-tcp` on 127.0.0.1 with `--token-key`), the node's name on every response
//! (`--node-name`) and the socket's group (`--socket-group`): a real daemon, a real socket and a real TCP port,
//! with tokens made by `taskcell token` and, for the ones a node must refuse, forged here.
//!
//! Root required; see tests/common/mod.rs. The key lives in a temporary directory of the test's own, removed
//! at its end.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Client, Daemon, Response, TempDir};
use serde_json::json;

const NODE: &str = "node-7.test";

fn write_key(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The TCP address the daemon logged it listens on (it was given port 0).
fn tcp_addr(d: &Daemon) -> SocketAddr {
    let log = std::fs::read_to_string(&d.log).unwrap();
    let line = log.lines().find_map(|l| l.strip_prefix("taskcell: listening on tcp ")).unwrap_or_else(|| panic!("no tcp line in\n{log}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

fn taskcell(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_taskcell")).args(args).envs(env.iter().copied()).output().expect("run taskcell")
}

/// `taskcell token`: the operator's way to make one.
fn token(key: &Path, tenant: &str) -> String {
    let out = taskcell(&["token", "--tenant", tenant, "--ttl", "1h", "--key", key.to_str().unwrap()], &[]);
    assert!(out.status.success(), "taskcell token: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    ten: &'a str,
    exp: u64,
}

fn forge(alg: jsonwebtoken::Algorithm, key: &[u8], ten: &str, exp: u64) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(key).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &Claims { ten, exp }, &key).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn tcp(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    Client::connect_tcp(addr).request(method, path, &headers, body)
}

fn assert_node(r: &Response) {
    assert_eq!(r.header("x-taskcell-node"), Some(NODE), "no X-Taskcell-Node: {}", r.describe());
}

#[test]
fn tenant_tokens_over_tcp() {
    need_root!("tenant_tokens_over_tcp");
    let tmp = TempDir::new("tcp-tokens");
    let key = tmp.0.join("token.key");
    let key_bytes = b"a key for tests, 32 bytes or more";
    write_key(&key, key_bytes, 0o600);
    let d = Daemon::start(
        "tcp",
        &["--listen-tcp", "127.0.0.1:0", "--token-key", key.to_str().unwrap(), "--node-name", NODE, "--socket-group", "daemon"],
    );
    let addr = tcp_addr(&d);
    assert!(addr.ip().is_loopback());
    let acme = token(&key, "acme");
    let star = token(&key, "*");

    // Health needs no token (load balancers' checks); everything else does.
    let r = tcp(addr, "GET", "/v1/health", None, b"");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_node(&r);
    for (method, path) in [("GET", "/v1/tenants/acme/tasks"), ("GET", "/metrics"), ("GET", "/v1/logs"), ("GET", "/nowhere")] {
        let r = tcp(addr, method, path, None, b"");
        r.assert_error(401, "unauthorized");
        assert_node(&r);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }

    // Tokens a node must refuse: 401 each, and the body of a refused request is never read.
    let exp = now() + 3600;
    let refused = [
        ("expired", forge(jsonwebtoken::Algorithm::HS256, key_bytes, "acme", now() - 120)),
        ("another key", forge(jsonwebtoken::Algorithm::HS256, b"another key, also 32 bytes long!!", "acme", exp)),
        ("HS512", forge(jsonwebtoken::Algorithm::HS512, key_bytes, "acme", exp)),
        ("alg none", {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(format!(r#"{{"ten":"acme","exp":{exp}}}"#)))
        }),
        ("malformed", "not-a-token".to_string()),
        ("bad ten", forge(jsonwebtoken::Algorithm::HS256, key_bytes, "../etc", exp)),
    ];
    for (what, t) in &refused {
        let r = tcp(addr, "GET", "/v1/tenants/acme/tasks", Some(t), b"");
        assert_eq!(r.status, 401, "{what}: {}", r.describe());
        r.assert_error(401, "unauthorized");
    }
    let mut c = Client::connect_tcp(addr);
    c.send_raw(b"PUT /v1/tenants/acme/tasks/big HTTP/1.1\r\nContent-Length: 100000\r\n\r\nmodule").unwrap();
    let r = c.read_response().unwrap();
    r.assert_error(401, "unauthorized");
    assert!(r.closes(), "a refused request's connection is closed: {}", r.describe());

    // A tenant's token reaches its tenant: deploy, run, ad-hoc run, list, and its log events.
    let source = "module.exports = (d) => { console.log('acme ran'); return d * 2; }";
    let r = tcp(addr, "PUT", "/v1/tenants/acme/tasks/double", Some(&acme), source.as_bytes());
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_node(&r);
    let r = tcp(addr, "POST", "/v1/tenants/acme/tasks/double/run", Some(&acme), b"21");
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!(42)), "{}", r.describe());
    let body = json!({"code": "module.exports = () => 'adhoc'"}).to_string();
    let r = tcp(addr, "POST", "/v1/tenants/acme/run", Some(&acme), body.as_bytes());
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!("adhoc")), "{}", r.describe());
    assert_eq!(tcp(addr, "GET", "/v1/tenants/acme/tasks", Some(&acme), b"").json()["tasks"][0]["task"], "double");

    // ... and nothing else: other tenants' paths, their logs and /metrics are 403; an unknown path is 404.
    for (method, path) in [
        ("GET", "/v1/tenants/other/tasks"),
        ("POST", "/v1/tenants/other/run"),
        ("PUT", "/v1/tenants/other/secrets/KEY"),
        ("GET", "/v1/tenants/other/egress"),
        ("GET", "/v1/logs?tenant=other"),
        ("GET", "/metrics"),
    ] {
        let r = tcp(addr, method, path, Some(&acme), b"");
        r.assert_error(403, "forbidden");
        assert_node(&r);
    }
    let r = tcp(addr, "GET", "/nowhere", Some(&acme), b"");
    r.assert_error(404, "not_found");
    assert_node(&r);

    // A tenant's token on /v1/logs follows that tenant's events only, without asking for them.
    let mut sub = Client::connect_tcp(addr);
    sub.send("GET", "/v1/logs", &[("Authorization", &format!("Bearer {acme}"))], b"").unwrap();
    let (status, headers) = sub.read_stream_head().unwrap();
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("x-taskcell-node") && v == NODE), "{headers:?}");
    let r = tcp(
        addr,
        "POST",
        "/v1/tenants/other/run",
        Some(&star),
        json!({"code": "module.exports = () => console.log('other ran')"}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(tcp(addr, "POST", "/v1/tenants/acme/tasks/double/run", Some(&acme), b"1").status, 200);
    loop {
        let chunk = String::from_utf8(sub.read_chunk().unwrap().expect("the stream goes on")).unwrap();
        assert!(!chunk.contains("other ran"), "tenant acme's token saw another tenant's event: {chunk}");
        if chunk.contains("acme ran") {
            break;
        }
    }
    drop(sub);

    // `*` reaches everything, /metrics included.
    assert_eq!(tcp(addr, "GET", "/metrics", Some(&star), b"").status, 200);
    assert_eq!(tcp(addr, "GET", "/v1/tenants/acme/tasks", Some(&star), b"").status, 200);

    // The Unix socket stays governed by its mode and group: no token needed, any Authorization ignored.
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (1, 0o660), "the socket's group is daemon (gid 1), its mode 0660");
    let r = d.request("GET", "/v1/tenants/acme/tasks", &[("Authorization", "Bearer garbage")], b"");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_node(&r);
    let r = d.get("/nowhere");
    r.assert_error(404, "not_found");
    assert_node(&r);

    // The command line over TCP: --url with --token (or TASKCELL_TOKEN); without one, the node's 401.
    let url = format!("http://{addr}");
    let out = taskcell(&["tasks", "--url", &url, "--token", &acme, "acme"], &[]);
    assert!(out.status.success(), "taskcell tasks --url: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("double"));
    let out = taskcell(&["call", "--url", &url, "acme", "double", "5"], &[("TASKCELL_TOKEN", &acme)]);
    assert!(out.status.success(), "taskcell call --url: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10");
    let out = taskcell(&["tasks", "--url", &url, "other"], &[("TASKCELL_TOKEN", &acme)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = taskcell(&["health", "--url", &url], &[("TASKCELL_TOKEN", "")]);
    assert!(out.status.success(), "health needs no token: {}", String::from_utf8_lossy(&out.stderr));
    let out = taskcell(&["tasks", "--url", &url, "acme"], &[("TASKCELL_TOKEN", "")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(d);
}

/// A node refuses to start on a key or a group it cannot use, before it makes anything.
#[test]
fn bad_keys_and_groups_stop_the_daemon_at_start() {
    need_root!("bad_keys_and_groups_stop_the_daemon_at_start");
    let tmp = TempDir::new("tcp-refusals");
    let key = tmp.0.join("token.key");
    let (socket, state) = (tmp.0.join("s.sock"), tmp.0.join("state"));
    let secrets_key = tmp.0.join("secrets.key");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--socket", socket.to_str().unwrap(), "--state-dir", state.to_str().unwrap()];
        args.extend(["--secrets-key", secrets_key.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = taskcell(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "serve {extra:?} should refuse to start");
        assert!(!socket.exists() && !state.exists(), "serve {extra:?} made something before refusing");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let k = key.to_str().unwrap();
    write_key(&key, &[7u8; 31], 0o600);
    assert!(serve(&["--listen-tcp", "127.0.0.1:0", "--token-key", k]).contains("at least 32"));
    write_key(&key, &[7u8; 32], 0o644);
    assert!(serve(&["--listen-tcp", "127.0.0.1:0", "--token-key", k]).contains("readable or writable by others"));
    let missing = tmp.0.join("none").display().to_string();
    assert!(serve(&["--listen-tcp", "127.0.0.1:0", "--token-key", &missing]).contains("opening the token key"));
    assert!(serve(&["--socket-group", "no-such-group-taskcell"]).contains("no such group"));
}
