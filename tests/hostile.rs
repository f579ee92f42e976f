//! Hostile tenants, through the real daemon: what tenant code tries from inside its sandbox (ad-hoc runs) to
//! reach the host, the network or other tenants, or to take the daemon down. The daemon must stay healthy and
//! other tenants must keep being served throughout.
//!
//! Hostile code runs only inside the daemon's sandboxes. Root required; see tests/common/mod.rs.

mod common;

use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use common::{unique, wait_until, Daemon};
use serde_json::{json, Value};
use testkit::procfs::{self, Status};

/// A value that exists on the host only: in the daemon's environment and in a file of the test's directory.
const SECRET: &str = "host-secret-5f0c3a9e-do-not-leak";

static SHARED: OnceLock<Daemon> = OnceLock::new();

fn shared() -> &'static Daemon {
    let d = Daemon::shared_with_env(
        &SHARED,
        "hostile",
        &["--pool-size", "3"],
        &[("TASKCELL_TEST_SECRET", SECRET), ("NODE_OPTIONS", "--require /etc/evil.js")],
    );
    let secret = d.dir.join("secret.txt");
    if !secret.exists() {
        std::fs::write(&secret, SECRET).unwrap();
    }
    d
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

// ---------- the host ----------

#[test]
fn host_files_are_out_of_reach() {
    need_root!("host_files_are_out_of_reach");
    let d = shared();
    let secret_path = d.dir.join("secret.txt").display().to_string();
    let code = r#"module.exports = (d) => {
        const fs = require('fs');
        const read = (p) => { try { return 'READ:' + fs.readFileSync(p, 'utf8').slice(0, 200) } catch (e) { return 'ERR:' + e.code } };
        const list = (p) => { try { return fs.readdirSync(p) } catch (e) { return 'ERR:' + e.code } };
        const write = (p) => { try { fs.writeFileSync(p, 'x'); return 'WROTE' } catch (e) { return 'ERR:' + e.code } };
        return {
            shadow: read('/etc/shadow'),
            secret: d.paths.map(read),
            home: list('/home'),
            root: list('/'),
            proc1root: list('/proc/1/root'),
            proc1shadow: read('/proc/1/root/etc/shadow'),
            sys: list('/sys'),
            dev: list('/dev'),
            hostname: require('os').hostname(),
            env: process.env,
            uid: [process.getuid(), process.getgid()],
            writeNode: write('/usr/bin/node'),
            writeRoot: write('/evil'),
            writeEtc: write('/etc/passwd'),
        };
    }"#;
    let paths = vec![
        secret_path.clone(),
        format!("/proc/1/root{secret_path}"),
        format!("/proc/self/root{secret_path}"),
        format!("/../../..{secret_path}"),
        format!("/proc/self/cwd/../../..{secret_path}"),
        "/proc/self/environ".to_string(),
        "/proc/1/environ".to_string(),
        "/etc/evil.js".to_string(),
    ];
    let env = d.run_ok(&unique("files"), code, json!({"paths": paths}));
    let r = &env["result"];
    let text = r.to_string();
    assert!(!text.contains(SECRET), "tenant code saw the host's secret: {r:#}");
    assert!(r["shadow"].as_str().unwrap().starts_with("ERR:"), "/etc/shadow: {}", r["shadow"]);
    assert!(r["proc1shadow"].as_str().unwrap().starts_with("ERR:"), "{}", r["proc1shadow"]);
    for (p, got) in paths.iter().zip(r["secret"].as_array().unwrap()) {
        let got = got.as_str().unwrap();
        if p.contains("environ") {
            // Its own environment may be readable; it must not hold the daemon's (checked with SECRET above).
            continue;
        }
        assert!(got.starts_with("ERR:"), "{p} is readable from a sandbox: {got}");
    }
    assert!(r["home"].is_string() || r["home"].as_array().is_some_and(|a| a.is_empty()), "/home: {}", r["home"]);
    assert!(r["sys"].is_string(), "there is no /sys in a sandbox: {}", r["sys"]);
    let root: Vec<&str> = r["root"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for host_only in ["home", "root", "work", "var", "boot", "sys", "run", "srv", "opt", "mnt", "media"] {
        assert!(!root.contains(&host_only), "/{host_only} is visible in the sandbox: {root:?}");
    }
    assert!(root.contains(&"usr") && root.contains(&"tmp"), "the sandbox's root: {root:?}");
    if let Some(p1) = r["proc1root"].as_array() {
        let p1: Vec<&str> = p1.iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(p1.iter().filter(|n| !root.contains(n)).count(), 0, "/proc/1/root shows more than the sandbox's root: {p1:?}");
    }
    let dev: Vec<&str> = r["dev"].as_array().map(|a| a.iter().map(|v| v.as_str().unwrap()).collect()).unwrap_or_default();
    for needed in ["null", "zero", "random", "urandom"] {
        assert!(dev.contains(&needed), "/dev lacks {needed}: {dev:?}");
    }
    for name in &dev {
        let host_device = [
            "mem", "kmem", "kmsg", "port", "sda", "vda", "xvda", "nvme", "loop", "fuse", "kvm", "mapper", "disk", "tty0", "console", "cpu",
        ]
        .iter()
        .any(|h| name.starts_with(h));
        assert!(!host_device, "/dev/{name} in a sandbox: {dev:?}");
    }
    assert_ne!(r["hostname"].as_str().unwrap(), host_hostname(), "the sandbox has its own UTS namespace");
    let env_keys: Vec<&String> = r["env"].as_object().unwrap().keys().collect();
    for leaked in [
        "TASKCELL_TEST_SECRET",
        "NODE_OPTIONS",
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "RUST_TEST_THREADS",
        "SUDO_USER",
        "SSH_AUTH_SOCK",
        "USER",
        "LD_PRELOAD",
    ] {
        assert!(!env_keys.iter().any(|k| k.as_str() == leaked), "{leaked} leaked into the sandbox's environment: {env_keys:?}");
    }
    assert!(env_keys.len() <= 8, "the sandbox's environment is a fixed minimal set: {env_keys:?}");
    assert_ne!(r["uid"][0], 0, "tenant code does not run as root inside: {}", r["uid"]);
    for w in ["writeNode", "writeRoot", "writeEtc"] {
        assert!(r[w].as_str().unwrap().starts_with("ERR:"), "{w}: the root filesystem is read-only: {}", r[w]);
    }
}

#[test]
fn tmp_is_small_and_noexec() {
    need_root!("tmp_is_small_and_noexec");
    let d = shared();
    let t = unique("fill");
    let code = r#"module.exports = () => {
        const fs = require('fs');
        let n = 0;
        try { for (;;) { fs.writeFileSync('/tmp/fill' + n, Buffer.alloc(1 << 20, 1)); n++ } }
        catch (e) { return {code: e.code, n} }
    }"#;
    let env = d.run_ok(&t, code, Value::Null);
    assert_eq!(env["result"]["code"], "ENOSPC", "filling /tmp ends in ENOSPC: {env}");
    assert!(env["result"]["n"].as_u64().unwrap() <= 64, "/tmp is size-limited: {env}");
    // The sandbox is still fine; /tmp is still full, and can be emptied again.
    let env = d.run_ok(&t, "const fs = require('fs'); module.exports = () => { for (const f of fs.readdirSync('/tmp')) fs.unlinkSync('/tmp/' + f); fs.writeFileSync('/tmp/ok', 'ok'); return fs.readFileSync('/tmp/ok', 'utf8') }", Value::Null);
    assert_eq!((env["result"].clone(), env["cold"].clone()), (json!("ok"), json!(false)));
    // noexec: a file written to /tmp cannot be run.
    let code = r#"module.exports = () => {
        const fs = require('fs'), cp = require('child_process');
        fs.writeFileSync('/tmp/run.js', '#!/usr/bin/node\nconsole.log("ran")\n');
        fs.chmodSync('/tmp/run.js', 0o755);
        fs.copyFileSync('/usr/bin/node', '/tmp/node2');
        fs.chmodSync('/tmp/node2', 0o755);
        const attempt = (f, args) => { try { return 'RAN:' + cp.execFileSync(f, args, {encoding: 'utf8'}) } catch (e) { return 'ERR:' + e.code } };
        const out = [attempt('/tmp/run.js', []), attempt('/tmp/node2', ['-e', 'console.log(1)'])];
        fs.unlinkSync('/tmp/node2');
        return out;
    }"#;
    let r = d.run(&t, code, Value::Null);
    if r.status == 200 {
        for got in r.json()["result"].as_array().unwrap() {
            assert!(got.as_str().unwrap().starts_with("ERR:"), "executed a file from /tmp: {got}");
        }
    } else {
        // Copying node (about 100 MB) may not fit /tmp: then ENOSPC fails the task, which is fine too.
        r.assert_error(500, "task_error");
    }
    d.assert_healthy();
}

#[test]
fn no_network_but_loopback() {
    need_root!("no_network_but_loopback");
    let d = shared();
    let code = r#"module.exports = async () => {
        const net = require('net'), dgram = require('dgram'), dns = require('dns'), os = require('os'), http = require('http');
        const tcp = await new Promise((res) => {
            const s = net.connect({host: '1.1.1.1', port: 80});
            const t = setTimeout(() => { s.destroy(); res('TIMEOUT') }, 3000);
            s.on('connect', () => { clearTimeout(t); s.destroy(); res('CONNECTED') });
            s.on('error', (e) => { clearTimeout(t); res('ERR:' + e.code) });
        });
        const udp = await new Promise((res) => {
            const s = dgram.createSocket('udp4');
            s.on('error', (e) => res('ERR:' + e.code));
            s.send(Buffer.from('x'), 53, '1.1.1.1', (e) => { s.close(); res(e ? 'ERR:' + e.code : 'SENT') });
        });
        const lookup = await new Promise((res) => dns.lookup('example.com', (e, a) => res(e ? 'ERR:' + e.code : 'RESOLVED:' + a)));
        const loop = await new Promise((res) => {
            const srv = http.createServer((q, s) => s.end('pong')).listen(0, '127.0.0.1', () => {
                http.get({host: '127.0.0.1', port: srv.address().port}, (r) => {
                    let b = ''; r.on('data', (c) => b += c); r.on('end', () => { srv.close(); res(b) });
                }).on('error', (e) => { srv.close(); res('ERR:' + e.code) });
            });
        });
        // Listing interfaces (route netlink, the only netlink the policy allows) shows the namespace's own.
        let ifaces; try { ifaces = Object.keys(os.networkInterfaces()) } catch (e) { ifaces = ['ERR:' + e.code] }
        return {tcp, udp, lookup, loop, ifaces};
    }"#;
    let env = d.run_ok(&unique("net"), code, Value::Null);
    let r = &env["result"];
    assert!(r["tcp"].as_str().unwrap().starts_with("ERR:"), "TCP to 1.1.1.1 fails at once (no route): {r}");
    assert!(r["udp"].as_str().unwrap().starts_with("ERR:"), "UDP to 1.1.1.1 fails: {r}");
    assert!(r["lookup"].as_str().unwrap().starts_with("ERR:"), "no name resolution: {r}");
    assert_eq!(r["loop"], "pong", "loopback works inside the sandbox: {r}");
    let ifaces: Vec<&str> = r["ifaces"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ifaces, ["lo"], "os.networkInterfaces() lists lo and only lo in the sandbox");
}

// ---------- other tenants ----------

const LIST_PROCS: &str = r#"const fs = require('fs');
module.exports = () => fs.readdirSync('/proc').filter((n) => /^[0-9]+$/.test(n)).map((p) => {
    try { return p + ' ' + fs.readFileSync('/proc/' + p + '/cmdline', 'utf8').split('\0').join(' ') } catch (e) { return p + ' ERR:' + e.code }
})"#;

#[test]
fn other_tenants_processes_are_invisible() {
    need_root!("other_tenants_processes_are_invisible");
    let d = shared();
    let (a, b) = (unique("procs-a"), unique("procs-b"));
    let marker = unique("marker-proc");
    let spawn = format!(
        "module.exports = () => {{ const c = require('child_process').spawn('/usr/bin/node', ['-e', 'setInterval(() => {{}}, 1000)', '{marker}'], {{stdio: 'ignore'}}); globalThis.child = c; return c.pid }}"
    );
    d.run_ok(&a, &spawn, Value::Null);
    // The child is visible to its own tenant (so the probe works)...
    wait_until(Duration::from_secs(20), "the child to show in its own sandbox", || {
        d.run_ok(&a, LIST_PROCS, Value::Null)["result"].to_string().contains(&marker)
    });
    // ...and not to another tenant, which sees only its own few processes, none of the host's.
    let seen = d.run_ok(&b, LIST_PROCS, Value::Null);
    let procs: Vec<&str> = seen["result"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!seen["result"].to_string().contains(&marker), "tenant {b} sees {a}'s process: {procs:?}");
    assert!(procs.len() <= 4, "a sandbox sees only its own processes: {procs:?}");
    for p in &procs {
        assert!(!p.contains("taskcell serve") && !p.contains("cargo") && !p.contains("systemd"), "host process visible: {p}");
    }
    d.run_ok(&a, "module.exports = () => globalThis.child.kill('SIGKILL')", Value::Null);
}

#[test]
fn other_tenants_globals_are_unreachable() {
    need_root!("other_tenants_globals_are_unreachable");
    let d = shared();
    let (a, b) = (unique("glob-a"), unique("glob-b"));
    let secret = unique("tenant-secret");
    let poison = format!(
        r#"module.exports = () => {{
            globalThis.secretA = '{secret}';
            Object.prototype.polluted = '{secret}';
            JSON.stringify = () => '"hijacked"';
            Promise.prototype.then = function () {{ return '{secret}' }};
            return 'poisoned';
        }}"#
    );
    // JSON.stringify and Promise.then are replaced for this tenant only; the runtime took its own copies first.
    let env = d.run_ok(&a, &poison, Value::Null);
    assert_eq!(env["result"], "poisoned");
    let env = d.run_ok(&a, "module.exports = () => [globalThis.secretA, ({}).polluted]", Value::Null);
    assert_eq!(env["result"], json!([secret, secret]), "tenant {a} keeps its own globals");
    let probe = r#"module.exports = () => {
        const names = Object.getOwnPropertyNames(globalThis);
        const values = names.map((n) => { try { return String(globalThis[n]) } catch (e) { return '' } });
        return {secret: typeof globalThis.secretA, polluted: ({}).polluted === undefined, json: JSON.stringify({a: 1}), values: values.join('|')};
    }"#;
    let env = d.run_ok(&b, probe, Value::Null);
    let r = &env["result"];
    assert!(!r.to_string().contains(&secret), "tenant {b} reached {a}'s state: {r}");
    assert_eq!(r["secret"], "undefined");
    assert_eq!(r["polluted"], true);
    assert_eq!(r["json"], "{\"a\":1}");
}

#[test]
fn forged_frames_do_not_reach_other_tenants() {
    need_root!("forged_frames_do_not_reach_other_tenants");
    let d = shared();
    let (a, b) = (unique("forge-a"), unique("forge-b"));
    d.run_ok(&a, "module.exports = () => 1", Value::Null);
    d.run_ok(&b, "module.exports = () => 1", Value::Null);
    // B waits in flight while A writes Result and Log frames for every plausible invocation id on fd 3.
    let slow = {
        let b = b.clone();
        thread::spawn(move || {
            shared().run(&b, "module.exports = () => new Promise((r) => setTimeout(() => r('genuine'), 1500))", Value::Null)
        })
    };
    wait_until(Duration::from_secs(20), "B's invocation in flight", || d.health()["invocations_in_flight"].as_u64() >= Some(1));
    // For about a second, so that B's invocation is surely in flight while it happens.
    let forge = r#"module.exports = async () => {
        const fs = require('fs');
        const frame = (type, id, meta, body) => {
            const m = Buffer.from(meta), b = Buffer.from(body), f = Buffer.alloc(13 + m.length + b.length);
            f.writeUInt32BE(9 + m.length + b.length, 0); f[4] = type; f.writeUInt32BE(id, 5); f.writeUInt32BE(m.length, 9);
            m.copy(f, 13); b.copy(f, 13 + m.length); return f;
        };
        const parts = [];
        for (let id = 1; id < 5000; id++) {
            parts.push(frame(19, id, '{"level":"log"}', 'forged-log'));
            parts.push(frame(17, id, '', '"forged"'));
        }
        const all = Buffer.concat(parts);
        for (let round = 0; round < 10; round++) {
            for (let off = 0; off < all.length;) off += fs.writeSync(3, all, off);
            await new Promise((r) => setTimeout(r, 100));
        }
        return 'forger done';
    }"#;
    let r = d.run(&a, forge, Value::Null);
    assert!(r.status < 600, "the forger gets some answer: {}", r.status);
    let rb = slow.join().unwrap();
    assert_eq!(rb.status, 200, "{}", rb.text());
    let env = rb.json();
    assert_eq!(env["result"], "genuine", "another tenant's frames reached this tenant's invocation: {env}");
    assert!(!env.to_string().contains("forged"), "{env}");
    d.assert_healthy();
}

// ---------- taking the daemon down ----------

#[test]
fn garbage_on_the_runtime_socket() {
    need_root!("garbage_on_the_runtime_socket");
    let d = shared();
    for code in [
        "module.exports = () => { require('fs').writeSync(3, Buffer.from('garbage garbage garbage garbage')); return 'wrote' }",
        // A frame header announcing a huge frame.
        "module.exports = () => { require('fs').writeSync(3, Buffer.from([0xff, 0xff, 0xff, 0xff, 17, 0, 0, 0, 1])); return 'wrote' }",
        // A frame of an unexpected type (Run, daemon to sandbox).
        "module.exports = () => { const f = Buffer.alloc(13); f.writeUInt32BE(9, 0); f[4] = 1; f.writeUInt32BE(1, 5); require('fs').writeSync(3, f); return 'wrote' }",
        // Half a frame header, then nothing.
        "module.exports = () => { require('fs').writeSync(3, Buffer.from([0, 0])); return 'wrote' }",
        // Closing the socket.
        "module.exports = () => { require('fs').closeSync(3); return 'closed' }",
        // Flooding stdout and stderr synchronously.
        "module.exports = () => { const fs = require('fs'); const line = Buffer.from('x'.repeat(199) + '\\n'); for (let i = 0; i < 20000; i++) { fs.writeSync(1, line); fs.writeSync(2, line) } return 'flooded' }",
    ] {
        let t = unique("fd3");
        d.run_ok(&t, "globalThis.mark = 1; module.exports = () => 1", Value::Null);
        let r = d.run(&t, code, Value::Null);
        assert!([200, 500, 502, 504].contains(&r.status), "{code}: {} {}", r.status, r.text());
        if r.status != 200 {
            let kind = r.kind();
            assert!(["sandbox_crashed", "timeout", "task_error"].contains(&kind.as_str()), "{code}: {}", r.text());
        }
        d.assert_healthy();
        // The tenant is served again (by the same sandbox if it survived, else by a fresh one).
        let env = d.run_ok(&t, "module.exports = () => 'again'", Value::Null);
        assert_eq!(env["result"], "again", "{code}");
    }
}

#[test]
fn kill_all_from_inside() {
    need_root!("kill_all_from_inside");
    let d = shared();
    let (a, b) = (unique("killer"), unique("bystander"));
    d.run_ok(&b, "globalThis.kept = 'still here'; module.exports = () => 1", Value::Null);
    d.run_ok(&a, "module.exports = () => 1", Value::Null);
    let codes = [
        // Everything it may signal: in its own PID namespace, its own processes only.
        r#"module.exports = async () => {
            const c = require('child_process').spawn('/usr/bin/node', ['-e', 'setInterval(() => {}, 1000)'], {stdio: 'ignore'});
            await new Promise((r) => c.once('spawn', r));
            const exited = new Promise((r) => c.once('exit', (code, sig) => r(sig)));
            try { process.kill(-1, 'SIGKILL') } catch (e) { return 'ERR:' + e.code }
            return 'child ' + await exited;
        }"#,
        "module.exports = () => { try { process.kill(-1, 'SIGKILL') } catch (e) { return 'ERR:' + e.code } return 'sent' }",
        "module.exports = () => { try { process.kill(1, 'SIGKILL') } catch (e) { return 'ERR:' + e.code } return 'sent to 1' }",
        "module.exports = () => { try { process.kill(-1, 'SIGSTOP') } catch (e) { return 'ERR:' + e.code } return 'stopped all' }",
        "module.exports = () => { process.kill(process.pid, 'SIGKILL'); for (;;) {} }",
    ];
    for code in codes {
        let r = d.run(&a, code, Value::Null);
        assert!([200, 502, 504].contains(&r.status), "{code}: {} {}", r.status, r.text());
        if r.status == 200 {
            eprintln!("{code}\n  -> {}", r.json()["result"]);
        }
        d.assert_healthy();
        let env = d.run_ok(&b, "module.exports = () => globalThis.kept", Value::Null);
        assert_eq!(
            (env["result"].clone(), env["cold"].clone()),
            (json!("still here"), json!(false)),
            "another tenant's sandbox was touched"
        );
        d.run_ok(&a, "module.exports = () => 'back'", Value::Null);
    }
}

#[test]
fn log_flood_keeps_the_daemon_responsive() {
    need_root!("log_flood_keeps_the_daemon_responsive");
    let d = shared();
    let (a, b) = (unique("flood"), unique("calm"));
    d.run_ok(&b, "module.exports = () => 1", Value::Null);
    // A log subscriber that never reads.
    let mut lazy = d.client();
    lazy.send("GET", "/v1/logs", &[], b"").unwrap();
    let flood = {
        let a = a.clone();
        thread::spawn(move || {
            let code = "module.exports = () => { for (let i = 0; i < 100000; i++) console.log('flood line ' + i + ' ' + 'f'.repeat(80)); return 'flooded' }";
            shared().run(&a, code, Value::Null)
        })
    };
    for i in 0..10 {
        let env = d.run_ok(&b, "module.exports = (d) => d", json!(i));
        assert_eq!(env["result"], i);
    }
    let r = flood.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let env = r.json();
    assert_eq!(env["result"], "flooded");
    let logs = env["logs"].as_array().unwrap();
    let total: usize = logs.iter().map(|l| l["message"].as_str().unwrap().len()).sum();
    assert!(total <= 65 * 1024, "logs are capped: {total} bytes");
    assert!(logs.last().unwrap()["message"].as_str().unwrap().contains("truncated"));
    // Console output written after the invocation answered (a timer) does not break anything either.
    d.run_ok(&a, "module.exports = () => { const t = setInterval(() => console.log('late ' + 'l'.repeat(1000)), 1); setTimeout(() => clearInterval(t), 1500); return 'ok' }", Value::Null);
    for _ in 0..5 {
        d.run_ok(&b, "module.exports = () => 1", Value::Null);
    }
    drop(lazy);
    d.assert_healthy();
}

#[test]
fn tight_loop_does_not_starve_other_tenants() {
    need_root!("tight_loop_does_not_starve_other_tenants");
    let d = shared();
    let (a, b) = (unique("spin"), unique("neighbour"));
    d.run_ok(&b, "module.exports = () => 1", Value::Null);
    let spin = {
        let a = a.clone();
        thread::spawn(move || shared().run(&a, "module.exports = () => { for (;;) {} }", Value::Null))
    };
    wait_until(Duration::from_secs(20), "the spinning invocation", || d.health()["invocations_in_flight"].as_u64() >= Some(1));
    for i in 0..5 {
        let env = d.run_ok(&b, "module.exports = (d) => d + 1", json!(i));
        assert_eq!(env["result"], i + 1);
    }
    spin.join().unwrap().assert_error(504, "timeout");
    d.assert_healthy();
}

#[test]
fn fork_bomb_is_contained() {
    need_root!("fork_bomb_is_contained");
    let d = Daemon::start("forkbomb", &["--pids", "32", "--timeout-ms", "4000"]);
    let (a, b) = (unique("bomber"), unique("victim"));
    d.run_ok(&b, "globalThis.kept = 1; module.exports = () => 1", Value::Null);
    d.run_ok(&a, "module.exports = () => 1", Value::Null);
    let bomb = r#"module.exports = () => {
        const cp = require('child_process');
        const src = "const cp = require('child_process'); const me = process.argv[1]; for (;;) { try { cp.spawn(process.execPath, ['-e', me, me], {stdio: 'ignore'}).on('error', () => {}) } catch (e) {} }";
        let made = 0, failed = 0;
        for (let i = 0; i < 200; i++) {
            try { cp.spawn(process.execPath, ['-e', src, src], {stdio: 'ignore'}).on('error', () => {}); made++ } catch (e) { failed++ }
        }
        return new Promise(() => {});
    }"#;
    let bomber = {
        let socket = d.socket.clone();
        let a = a.clone();
        thread::spawn(move || {
            let body = json!({"code": bomb}).to_string();
            common::Client::connect(&socket).request("POST", &format!("/v1/tenants/{a}/run"), &[], body.as_bytes())
        })
    };
    wait_until(Duration::from_secs(20), "the bomb in flight", || d.health()["invocations_in_flight"].as_u64() >= Some(1));
    for _ in 0..3 {
        let env = d.run_ok(&b, "module.exports = () => globalThis.kept", Value::Null);
        assert_eq!(env["result"], 1, "the other tenant is served while the bomb goes off");
    }
    let r = bomber.join().unwrap();
    assert!([500, 502, 504, 507].contains(&r.status), "the bomb's answer: {} {}", r.status, r.text());
    d.assert_healthy();
    let env = d.run_ok(&a, "module.exports = () => 'recovered'", Value::Null);
    assert_eq!(env["result"], "recovered");
    let env = d.run_ok(&b, "module.exports = () => globalThis.kept", Value::Null);
    assert_eq!((env["result"].clone(), env["cold"].clone()), (json!(1), json!(false)));
    // The limit holds inside: a tenant cannot make more than --pids processes and threads.
    let code = r#"module.exports = async () => {
        const cp = require('child_process');
        const kids = [];
        let err = null;
        for (let i = 0; i < 64 && !err; i++) {
            const c = cp.spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], {stdio: 'ignore'});
            await new Promise((res) => { c.once('spawn', res); c.once('error', (e) => { err = e.code; res() }) });
            if (!err) kids.push(c);
        }
        for (const k of kids) k.kill('SIGKILL');
        return {spawned: kids.length, err};
    }"#;
    let r = d.run(&unique("counted"), code, Value::Null);
    if r.status == 200 {
        let v = r.json();
        assert!(v["result"]["spawned"].as_u64().unwrap() < 32, "more processes than --pids 32: {v}");
        assert!(v["result"]["err"].is_string(), "{v}");
    } else {
        assert!([502, 504, 507].contains(&r.status), "{} {}", r.status, r.text());
    }
    d.assert_healthy();
}

/// The CPUs each thread of the daemon's descendant processes whose command line holds `marker` may run on.
fn allowed_cpus_of(daemon: u32, marker: &str) -> Vec<String> {
    let mut lists = Vec::new();
    for pid in common::descendant_pids(daemon) {
        if !procfs::cmdline(pid).contains(marker) {
            continue;
        }
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let status = Status::from_file(task.path().join("status")).unwrap_or_default();
            if let Some(list) = status.get("Cpus_allowed_list") {
                lists.push(list.to_string());
            }
        }
    }
    lists
}

/// The daemon's CPU classes from health; None (said loudly) on a one-CPU host, the only one without them.
fn cpu_classes(d: &Daemon) -> Option<Value> {
    let cpus = d.health()["cpus"].clone();
    if cpus.is_null() {
        assert_eq!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), 1, "no CPU classes on a multi-CPU host");
        eprintln!("\n**********\nNOT CHECKED: one CPU, so no CPU is kept from busy sandboxes\n**********\n");
        return None;
    }
    Some(cpus)
}

#[test]
fn a_busy_tenant_runs_off_the_reserved_cpus_until_idle() {
    need_root!("a_busy_tenant_runs_off_the_reserved_cpus_until_idle");
    let d = shared();
    let Some(cpus) = cpu_classes(d) else { return };
    let (all, batch) = (cpus["all"].as_str().unwrap().to_string(), cpus["batch"].as_str().unwrap().to_string());
    assert_ne!(all, batch);
    let (busy, quiet) = (unique("busy"), unique("quiet"));
    let (busy_mark, quiet_mark) = (format!("tc-busy-{busy}"), format!("tc-quiet-{quiet}"));
    // The tenants name their own process (process.title rewrites its command line) so that the host can find it.
    let env = d.run_ok(&quiet, &format!("module.exports = () => {{ process.title = '{quiet_mark}'; return 1 }}"), Value::Null);
    assert_eq!(env["result"], 1);
    // A first invocation in a fresh sandbox (compiling, faulting pages in) may itself use half a CPU over a
    // window, and then the tenant is back on every CPU once quiet for a while: wait for that, rather than
    // assert an instant.
    let quiet_on_all = || {
        let lists = allowed_cpus_of(d.pid(), &quiet_mark);
        !lists.is_empty() && lists.iter().all(|l| *l == all)
    };
    wait_until(Duration::from_secs(15), "the quiet tenant on every CPU", quiet_on_all);
    let spin = {
        let code = format!("module.exports = () => {{ process.title = '{busy_mark}'; const end = Date.now() + 4000; while (Date.now() < end) {{}} return 'done' }}");
        let busy = busy.clone();
        thread::spawn(move || shared().run(&busy, &code, Value::Null))
    };
    // While its invocation runs, every thread of the busy tenant's Node is confined to the batch CPUs...
    wait_until(Duration::from_secs(10), "the busy tenant on the batch CPUs", || {
        let lists = allowed_cpus_of(d.pid(), &busy_mark);
        !lists.is_empty() && lists.iter().all(|l| *l == batch)
    });
    // ...while the quiet tenant is served meanwhile and keeps (or, after a slow invocation on a loaded host,
    // gets back) every CPU, with the busy one still on the batch CPUs.
    assert_eq!(d.run_ok(&quiet, "module.exports = () => 2", Value::Null)["result"], 2);
    wait_until(Duration::from_secs(5), "the quiet tenant on every CPU while the busy one spins", quiet_on_all);
    let lists = allowed_cpus_of(d.pid(), &busy_mark);
    assert!(spin.is_finished() || lists.iter().all(|l| *l == batch), "the busy tenant left the batch CPUs while spinning: {lists:?}");
    let r = spin.join().unwrap();
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!("done")), "{}", r.text());
    // Idle again: every CPU back.
    wait_until(Duration::from_secs(10), "the busy tenant back on every CPU", || {
        let lists = allowed_cpus_of(d.pid(), &busy_mark);
        !lists.is_empty() && lists.iter().all(|l| *l == all)
    });
    let metrics = d.request("GET", "/metrics", &[], b"").text();
    assert!(metrics.contains("taskcell_sandbox_cpu_moves_total{to=\"batch\"}"), "{metrics}");
    d.assert_healthy();
}

/// Busy means CPU used, not time waited: a tenant whose invocation waits 1.5 s (on a timer, as on a slow API)
/// keeps every CPU for the whole wait.
#[test]
fn a_tenant_that_waits_is_not_busy() {
    need_root!("a_tenant_that_waits_is_not_busy");
    let d = shared();
    let Some(cpus) = cpu_classes(d) else { return };
    let all = cpus["all"].as_str().unwrap().to_string();
    let tenant = unique("waiter");
    let mark = format!("tc-waiter-{tenant}");
    let env = d.run_ok(&tenant, &format!("module.exports = () => {{ process.title = '{mark}'; return 1 }}"), Value::Null);
    assert_eq!(env["result"], 1);
    let on_all = || {
        let lists = allowed_cpus_of(d.pid(), &mark);
        !lists.is_empty() && lists.iter().all(|l| *l == all)
    };
    wait_until(Duration::from_secs(15), "the tenant on every CPU", on_all);
    let wait = {
        let tenant = tenant.clone();
        thread::spawn(move || {
            shared().run(&tenant, "module.exports = () => new Promise((r) => setTimeout(() => r('waited'), 1500))", Value::Null)
        })
    };
    let mut samples = 0;
    while !wait.is_finished() {
        let lists = allowed_cpus_of(d.pid(), &mark);
        assert!(lists.iter().all(|l| *l == all), "a waiting tenant was moved off the reserved CPUs: {lists:?}");
        samples += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let r = wait.join().unwrap();
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!("waited")), "{}", r.text());
    assert!(samples >= 5, "the wait was sampled {samples} times only");
}

#[test]
fn work_left_running_after_answering_is_moved_off_the_reserved_cpus() {
    need_root!("work_left_running_after_answering_is_moved_off_the_reserved_cpus");
    let d = shared();
    let Some(cpus) = cpu_classes(d) else { return };
    let batch = cpus["batch"].as_str().unwrap().to_string();
    let sneaky = unique("sneaky");
    let mark = format!("tc-sneaky-{sneaky}");
    // Answers at once, then spins in the background forever (20 ms slices between turns of the event loop):
    // no invocation is ever in flight for long, but the sandbox burns a CPU.
    let code = format!(
        "module.exports = () => {{ process.title = '{mark}'; const spin = () => {{ const end = Date.now() + 20; while (Date.now() < end) {{}} setImmediate(spin) }}; setImmediate(spin); return 'started' }}"
    );
    let env = d.run_ok(&sneaky, &code, Value::Null);
    assert_eq!(env["result"], "started");
    wait_until(Duration::from_secs(10), "the background spinner on the batch CPUs", || {
        let lists = allowed_cpus_of(d.pid(), &mark);
        !lists.is_empty() && lists.iter().all(|l| *l == batch)
    });
    // End it: the sandbox still answers between its spins; killing itself ends the sandbox.
    let r = d.run(&sneaky, "module.exports = () => process.kill(process.pid, 'SIGKILL')", Value::Null);
    assert_eq!(r.status, 502, "{}", r.text());
    d.assert_healthy();
}
