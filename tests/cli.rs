//! The command line for people (`taskcell deploy`, `call`, `tasks`, `rm`, `logs`, `health`): the built binary,
//! run as a user would run it, against a real daemon over its real socket. Output is read from pipes, so these
//! tests see the human form without colour (stdout and stderr are not terminals).
//!
//! Most tests share one daemon, each with tenants of its own; the one that stops its daemon starts its own.
//! Root required for those; see tests/common/mod.rs. Every `taskcell` child is waited for, or killed by its pid.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use common::{unique, Daemon, TempDir, HANG};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

static SHARED: OnceLock<Daemon> = OnceLock::new();

fn shared() -> &'static Daemon {
    Daemon::shared(&SHARED, "cli", &[])
}

/// What a finished `taskcell` printed and how it exited.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "taskcell failed\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskcell"));
    // The test's own environment must not choose the socket or the colours.
    cmd.env_remove("TASKCELL_SOCKET").env_remove("NO_COLOR");
    cmd
}

/// Run `taskcell ARGS` to its end with this stdin; a run that outlives `HANG` is killed and fails the test.
fn run_with(mut cmd: Command, stdin: &[u8]) -> Out {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start taskcell");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // The child may exit without reading all of it (a usage error): a broken pipe here is fine.
    let writer = thread::spawn(move || drop(input.write_all(&data)));
    let read = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).expect("taskcell's output is UTF-8");
            s
        })
    };
    let (out, err) = (read(Box::new(child.stdout.take().unwrap())), read(Box::new(child.stderr.take().unwrap())));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taskcell {:?} did not finish within {HANG:?}", cmd.get_args().collect::<Vec<_>>());
        }
        thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    Out { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// `taskcell CMD --socket SOCKET ARGS...` with this stdin.
fn tc_in(socket: &Path, args: &[&str], stdin: &[u8]) -> Out {
    let mut cmd = binary();
    cmd.arg(args[0]).arg("--socket").arg(socket).args(&args[1..]);
    run_with(cmd, stdin)
}

fn tc(d: &Daemon, args: &[&str]) -> Out {
    tc_in(&d.socket, args, b"")
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

const GREET: &str = r#"module.exports = (data) => {
    console.log("greeting", data && data.name);
    return { zeta: 1, hello: data === null ? null : data.name, alpha: [1, 2] };
};"#;

/// Deploy `source` as TENANT/TASK through the daemon's API (not the CLI), for tests about other commands.
fn put(d: &Daemon, tenant: &str, task: &str, source: &str) {
    let r = d.put_task(tenant, task, source);
    assert!(r.status == 201 || r.status == 200, "deploy {tenant}/{task}: {}", r.text());
}

// ---------- deploy ----------

#[test]
fn deploy_from_a_file_and_from_stdin() {
    need_root!("deploy_from_a_file_and_from_stdin");
    let d = shared();
    let t = unique("dep");
    let file = d.dir.join(format!("{t}.js"));
    std::fs::write(&file, GREET).unwrap();

    let out = tc(d, &["deploy", &t, "greet", file.to_str().unwrap()]);
    out.ok();
    let sha = sha256_hex(GREET.as_bytes());
    assert_eq!(out.stdout, format!("deployed {t}/greet (sha256 {}…, {} bytes, created)\n", &sha[..12], GREET.len()));

    let again = "module.exports = () => 'from stdin';";
    let out = tc_in(&d.socket, &["deploy", &t, "greet", "-"], again.as_bytes());
    out.ok();
    let sha = sha256_hex(again.as_bytes());
    assert_eq!(out.stdout, format!("deployed {t}/greet (sha256 {}…, {} bytes, replaced)\n", &sha[..12], again.len()));
    assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks/greet")).text(), again, "stdin's bytes are the stored source");

    // A missing file is the client's error, before anything is sent.
    let out = tc(d, &["deploy", &t, "other", d.dir.join("no-such.js").to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("cannot read") && out.stderr.contains("no-such.js"), "{}", out.stderr);
    assert_eq!(d.get(&format!("/v1/tenants/{t}/tasks/other")).status, 404);

    // A source that does not compile: the daemon's compile_error, exit 1.
    let out = tc_in(&d.socket, &["deploy", &t, "broken", "-"], b"module.exports = ( => 1");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.starts_with("taskcell: compile_error: "), "{}", out.stderr);
}

// ---------- call ----------

#[test]
fn call_prints_the_result_and_the_logs() {
    need_root!("call_prints_the_result_and_the_logs");
    let d = shared();
    let t = unique("call");
    put(d, &t, "greet", GREET);

    let out = tc(d, &["call", &t, "greet", r#"{"name": "Ada"}"#]);
    out.ok();
    assert_eq!(out.json(), json!({"zeta": 1, "hello": "Ada", "alpha": [1, 2]}));
    // Pretty-printed, in the order the task gave its keys.
    assert_eq!(out.stdout, "{\n  \"zeta\": 1,\n  \"hello\": \"Ada\",\n  \"alpha\": [\n    1,\n    2\n  ]\n}\n");
    assert_eq!(out.stderr, "[log] greeting Ada\n", "logs on stderr, no colour and no timing line off a terminal");

    // No input is null.
    let out = tc(d, &["call", &t, "greet"]);
    out.ok();
    assert_eq!(out.json()["hello"], Value::Null);
    assert_eq!(out.stderr, "[log] greeting null\n");

    // `-` reads the input from stdin; any JSON value will do.
    let out = tc_in(&d.socket, &["call", &t, "greet", "-"], br#"{"name": "Grace"}"#);
    out.ok();
    assert_eq!(out.json()["hello"], "Grace");
    let out = tc(d, &["call", &t, "greet", "-1"]);
    out.ok();
}

#[test]
fn call_of_a_task_that_throws_exits_1_with_task_error() {
    need_root!("call_of_a_task_that_throws_exits_1_with_task_error");
    let d = shared();
    let t = unique("throw");
    put(d, &t, "bad", "module.exports = () => { console.warn('about to fail'); throw new Error('boom'); };");
    let out = tc(d, &["call", &t, "bad"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines[0], "[warn] about to fail", "the task's logs come first: {}", out.stderr);
    assert!(lines[1].starts_with("taskcell: task_error: ") && lines[1].contains("boom"), "{}", out.stderr);
}

// ---------- --json ----------

#[test]
fn json_prints_the_servers_answers() {
    need_root!("json_prints_the_servers_answers");
    let d = shared();
    let t = unique("json");
    put(d, &t, "greet", GREET);

    let out = tc(d, &["call", "--json", &t, "greet", r#"{"name": "Ada"}"#]);
    out.ok();
    let env = out.json();
    assert_eq!(env["result"]["hello"], "Ada");
    assert_eq!(env["logs"], json!([{"level": "log", "message": "greeting Ada"}]));
    assert!(env["cold"].is_boolean() && env["duration_us"].is_u64(), "{env}");
    assert_eq!(out.stderr, "", "the logs are in the envelope, not repeated on stderr");

    let out = tc(d, &["tasks", &t, "--json"]);
    out.ok();
    assert_eq!(out.stdout, d.get(&format!("/v1/tenants/{t}/tasks")).text(), "byte for byte what the daemon sent");

    let out = tc(d, &["deploy", "--json", &t, "other", "-"]);
    out.ok();
    assert_eq!(out.json()["task"], "other");

    let out = tc(d, &["health", "--json"]);
    out.ok();
    assert_eq!(out.json()["status"], "ok");

    // An error: the envelope on stdout for the script, the kind on stderr, exit 1.
    put(d, &t, "bad", "module.exports = () => { throw new Error('boom'); };");
    let out = tc(d, &["call", "--json", &t, "bad"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.json()["error"]["kind"], "task_error");
    assert!(out.stderr.starts_with("taskcell: task_error: "), "{}", out.stderr);
}

// ---------- tasks and rm ----------

#[test]
fn tasks_lists_a_tenants_tasks() {
    need_root!("tasks_lists_a_tenants_tasks");
    let d = shared();
    let t = unique("list");
    let out = tc(d, &["tasks", &t]);
    out.ok();
    assert_eq!(out.stdout, format!("no tasks deployed for {t}\n"));

    put(d, &t, "alpha", "module.exports = () => 1;");
    put(d, &t, "beta-2", GREET);
    let out = tc(d, &["tasks", &t]);
    out.ok();
    let lines: Vec<Vec<&str>> = out.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["TASK", "MODEL", "TIMEOUT", "SIZE", "SHA256", "UPDATED"], "{}", out.stdout);
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    for (task, source) in [("alpha", "module.exports = () => 1;"), ("beta-2", GREET)] {
        let row = lines.iter().find(|l| l[0] == task).unwrap_or_else(|| panic!("no row for {task}: {}", out.stdout));
        let size = format!("{}", source.len());
        assert_eq!(&row[1..4], ["taskcell", "5000", "ms"], "the defaults: {}", out.stdout);
        assert_eq!(&row[4..6], [size.as_str(), "B"], "{}", out.stdout);
        assert_eq!(row[6], format!("{}…", &sha256_hex(source.as_bytes())[..12]));
        assert!(row[7].starts_with("20") && row[7].ends_with('Z'), "updated is the daemon's RFC 3339 time: {}", out.stdout);
    }
}

#[test]
fn deploy_takes_a_model_and_a_time_limit_and_call_is_unchanged() {
    need_root!("deploy_takes_a_model_and_a_time_limit_and_call_is_unchanged");
    let d = shared();
    let t = unique("model");
    let dir = d.dir.join(format!("{t}-src"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hello.js");
    std::fs::write(&file, "module.exports = function (ctx, cb) { cb(null, 'Hello, ' + ctx.data.name); };").unwrap();
    let out = tc(d, &["deploy", "--model", "webtask", "--timeout-ms", "1500", &t, "hello", file.to_str().unwrap()]);
    out.ok();
    let out = tc(d, &["call", &t, "hello", r#"{"name": "Ada"}"#]);
    out.ok();
    assert!(out.stdout.contains("Hello, Ada"), "{}", out.stdout);
    let out = tc(d, &["tasks", &t]);
    out.ok();
    let row: Vec<&str> = out.stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["hello", "webtask", "1500", "ms"], "{}", out.stdout);
    let out = tc(d, &["deploy", "--model", "nosuch", &t, "other", file.to_str().unwrap()]);
    assert!(out.code != Some(0) && out.stderr.contains("unknown model"), "{}", out.stderr);
    let out = tc(d, &["call", "--model", "webtask", &t, "hello"]);
    assert!(out.code != Some(0), "--model is deploy's only: {}", out.stderr);
}

#[test]
fn rm_then_call_is_not_found() {
    need_root!("rm_then_call_is_not_found");
    let d = shared();
    let t = unique("rm");
    put(d, &t, "greet", GREET);
    let out = tc(d, &["rm", &t, "greet"]);
    out.ok();
    assert_eq!(out.stdout, format!("removed {t}/greet\n"));

    let out = tc(d, &["call", &t, "greet"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.starts_with("taskcell: not_found: "), "{}", out.stderr);
    let out = tc(d, &["rm", &t, "greet"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.starts_with("taskcell: not_found: "), "{}", out.stderr);

    // Names go as given; the daemon refuses the bad ones and says why.
    let out = tc(d, &["rm", &t, "Not..Valid"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.starts_with("taskcell: bad_request: ") && out.stderr.contains("Not..Valid"), "{}", out.stderr);
}

// ---------- logs ----------

/// A `taskcell logs` running in the background, its stdout lines arriving on a channel; killed (by its pid)
/// and reaped when dropped, whatever happened.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(socket: &Path, args: &[&str]) -> Follower {
        let mut cmd = binary();
        cmd.arg("logs").arg("--socket").arg(socket).args(args);
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start taskcell logs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// Make events with `emit` (every 250 ms, since the subscription may not be in place yet) until a line
    /// containing `needle` arrives; that line.
    fn wait_for(&mut self, needle: &str, mut emit: impl FnMut()) -> String {
        let start = Instant::now();
        loop {
            emit();
            let until = Instant::now() + Duration::from_millis(250);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match self.lines.recv_timeout(left) {
                    Ok(line) if line.contains(needle) => return line,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let status = self.child.wait().unwrap();
                        let mut err = String::new();
                        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                        panic!("taskcell logs ended ({status}) before {needle:?} arrived: {err}");
                    }
                }
            }
            assert!(start.elapsed() < HANG, "no log line with {needle:?} within {HANG:?}");
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_of_a_tenant_prints_readable_lines() {
    need_root!("logs_of_a_tenant_prints_readable_lines");
    let d = shared();
    let (t, other) = (unique("logs"), unique("logs-other"));
    put(d, &t, "greet", GREET);
    put(d, &other, "greet", GREET);
    let mut f = Follower::start(&d.socket, &[&t]);
    let mut n = 0;
    let line = f.wait_for("greeting Ada-", || {
        n += 1;
        // The other tenant's events must not reach this stream; this tenant's must.
        tc(d, &["call", &other, "greet", r#"{"name": "Bob"}"#]).ok();
        tc(d, &["call", &t, "greet", &format!(r#"{{"name": "Ada-{n}"}}"#)]).ok();
    });
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert!(fields[0].starts_with("20") && fields[0].ends_with('Z'), "TIME first: {line}");
    assert_eq!(&fields[1..3], [format!("{t}/greet").as_str(), "log"], "{line}");
    assert!(fields[3].trim_start().starts_with("greeting Ada-"), "{line}");
    assert!(!line.contains('\x1b'), "no colour codes off a terminal: {line:?}");
    assert!(!line.contains("Bob"));

    // Ad-hoc code shows `-` as its task.
    let line = f.wait_for("ad hoc", || {
        d.run_ok(&t, "module.exports = () => { console.error('ad hoc'); return 1; }", Value::Null);
    });
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[1..3], [format!("{t}/-").as_str(), "error"], "{line}");

    // --json: the NDJSON lines as they arrive.
    let mut j = Follower::start(&d.socket, &["--json", &t]);
    let line = j.wait_for("as json", || {
        d.run_ok(&t, "module.exports = () => { console.info('as json'); return 1; }", Value::Null);
    });
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (event["tenant"].as_str(), event["level"].as_str(), event["message"].as_str()),
        (Some(t.as_str()), Some("info"), Some("as json"))
    );
}

#[test]
fn logs_end_when_the_daemon_closes_the_stream() {
    need_root!("logs_end_when_the_daemon_closes_the_stream");
    let d = Daemon::start("cli-logs-end", &[]);
    let t = unique("end");
    let mut f = Follower::start(&d.socket, &[&t]);
    f.wait_for("ready", || {
        d.run_ok(&t, "module.exports = () => { console.log('ready'); return 1; }", Value::Null);
    });
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    // The follower notices and exits by itself.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = f.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < HANG, "taskcell logs still running {HANG:?} after the daemon stopped");
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    f.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("the daemon") && err.contains("log stream"), "says why it stopped ({status}): {err}");
}

// ---------- health ----------

#[test]
fn health_is_a_short_summary() {
    need_root!("health_is_a_short_summary");
    let d = shared();
    let out = tc(d, &["health"]);
    out.ok();
    let keys: Vec<&str> = out.stdout.lines().map(|l| l.split("  ").next().unwrap().trim()).collect();
    assert_eq!(keys[..5], ["status", "pool", "sandboxes", "in flight", "uptime"], "{}", out.stdout);
    assert!(out.stdout.starts_with("status      ok\n"), "{}", out.stdout);
    assert!(out.stdout.lines().nth(1).unwrap().contains(" idle of "), "{}", out.stdout);
}

// ---------- the socket ----------

#[test]
fn taskcell_socket_is_honoured_and_socket_wins() {
    need_root!("taskcell_socket_is_honoured_and_socket_wins");
    let d = shared();
    let mut cmd = binary();
    cmd.arg("health").env("TASKCELL_SOCKET", &d.socket);
    let out = run_with(cmd, b"");
    out.ok();
    assert!(out.stdout.starts_with("status      ok"), "{}", out.stdout);

    let mut cmd = binary();
    cmd.arg("health").arg("--socket").arg(&d.socket).env("TASKCELL_SOCKET", d.dir.join("elsewhere.sock"));
    run_with(cmd, b"").ok();

    let mut cmd = binary();
    let elsewhere = d.dir.join("elsewhere.sock");
    cmd.arg("health").env("TASKCELL_SOCKET", &elsewhere);
    let out = run_with(cmd, b"");
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains(&elsewhere.display().to_string()), "{}", out.stderr);
}

#[test]
fn a_wrong_socket_says_which_and_why() {
    // No daemon needed: nothing listens there.
    let dir = TempDir::new("cli-nosock");
    let socket = dir.0.join("nothing.sock");
    let out = tc_in(&socket, &["health"], b"");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.starts_with(&format!("taskcell: cannot reach the daemon at {}: ", socket.display())), "{}", out.stderr);
    assert!(out.stderr.contains("No such file or directory"), "{}", out.stderr);

    // A socket nobody accepts on any more: refused, and said so.
    drop(UnixListener::bind(&socket).unwrap());
    let out = tc_in(&socket, &["tasks", "acme"], b"");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&socket.display().to_string()) && out.stderr.contains("refused"), "{}", out.stderr);
}

#[test]
fn bad_json_input_is_refused_before_anything_is_sent() {
    // A listener that only counts connections stands in for the daemon: none may arrive.
    let dir = TempDir::new("cli-badjson");
    let socket = dir.0.join("count.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    for (args, stdin) in [
        (&["call", "acme", "greet", "{name: 1}"][..], &b""[..]),
        (&["call", "acme", "greet", "Ada"], b""),
        (&["call", "acme", "greet", "-"], b"{\"a\": 1} trailing"),
    ] {
        let out = tc_in(&socket, args, stdin);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("taskcell: the input ") && out.stderr.contains("is not valid JSON"), "{}", out.stderr);
    }
    assert!(listener.accept().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "a request was sent");
}

#[test]
fn usage_errors_exit_2_and_help_lists_every_command() {
    let out = run_with(
        {
            let mut c = binary();
            c.arg("help");
            c
        },
        b"",
    );
    out.ok();
    for cmd in ["serve", "jail", "deploy", "call", "tasks", "rm", "logs", "health"] {
        assert!(out.stdout.contains(&format!("taskcell {cmd} ")), "help lists {cmd}: {}", out.stdout);
    }
    assert!(out.stdout.contains("--socket PATH") && out.stdout.contains("--json") && out.stdout.contains("TASKCELL_SOCKET"));

    let dir = TempDir::new("cli-usage");
    let socket = dir.0.join("none.sock");
    for args in [
        &["call", "acme"][..],
        &["rm", "acme", "a", "b"],
        &["tasks", "--frobnicate", "acme"],
        &["health", "extra"],
        &["rm", "acme", "has space"],
    ] {
        let out = tc_in(&socket, args, b"");
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("usage: taskcell {} ", args[0])), "{args:?}: {}", out.stderr);
    }
    let out = tc_in(&socket, &["deploy", "--help"], b"");
    out.ok();
    assert!(out.stdout.starts_with("usage: taskcell deploy "), "{}", out.stdout);
}
