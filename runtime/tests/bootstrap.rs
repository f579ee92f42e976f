//! runtime/js/bootstrap.js driven as the daemon drives it: a real Node process with one end of a
//! socketpair as fd 3, spoken to with this crate's encoder and decoder. No sandbox here: the jail runs
//! the same file later.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use runtime::{encode_to_vec, CompileMeta, Decoder, ErrorKind, Frame, LogLevel, RunMeta};
use serde_json::{json, Value};

const BOOTSTRAP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/js/bootstrap.js");
const NODE: &str = "/usr/bin/node";

struct Runtime {
    child: Child,
    sock: UnixStream,
    decoder: Decoder,
    /// Frames received but not yet claimed by a test.
    inbox: Vec<Frame>,
    pid: u32,
    node: String,
}

#[derive(Debug)]
struct Answer {
    frame: Frame,
    logs: Vec<(LogLevel, String)>,
}

impl Answer {
    fn result(&self) -> Value {
        match &self.frame {
            Frame::Result { json, .. } => serde_json::from_slice(json).unwrap(),
            other => panic!("expected a Result, got {other:?}"),
        }
    }

    fn error(&self, want: ErrorKind) -> &str {
        match &self.frame {
            Frame::Error { kind, message, .. } if *kind == want => message,
            other => panic!("expected an Error of kind {want:?}, got {other:?}"),
        }
    }
}

impl Runtime {
    fn start() -> Self {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(NODE);
        cmd.arg("--max-old-space-size=64")
            .arg(BOOTSTRAP)
            .env_clear()
            .env("PATH", "/usr/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child between fork and exec, where only
        // async-signal-safe calls are allowed: it makes only dup2 and fcntl calls and allocates nothing.
        // `fd` is open in the child because `theirs` lives in the parent until spawn() has returned.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would leave close-on-exec set, so clear the flag instead.
                let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
                if ok < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        ours.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rt = Runtime { child, sock: ours, decoder: Decoder::new(), inbox: Vec::new(), pid: 0, node: String::new() };
        match rt.recv() {
            Frame::Ready { pid, node } => {
                rt.pid = pid;
                rt.node = node;
            }
            other => panic!("expected Ready, got {other:?}"),
        }
        rt
    }

    fn send(&mut self, frame: &Frame) {
        self.sock.write_all(&encode_to_vec(frame).unwrap()).unwrap();
    }

    /// The next frame from the runtime, or None once it has closed its end.
    fn try_recv(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(frame) = self.decoder.next().unwrap() {
                return Some(frame);
            }
            match self.sock.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) if e.kind() == IoErrorKind::Interrupted => {}
                Err(e) if e.kind() == IoErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading from the runtime: {e}"),
            }
        }
    }

    fn recv(&mut self) -> Frame {
        self.try_recv().expect("the runtime closed the socket")
    }

    fn send_run(&mut self, id: u32, key: &str, task: Option<&str>, source: &str, data: &str) {
        let frame = run_frame(id, key, task, source, data);
        self.send(&frame);
    }

    /// The answer to invocation `id`, with the logs it wrote before answering.
    fn answer(&mut self, id: u32) -> Answer {
        loop {
            let terminal = |f: &Frame| f.id() == id && !matches!(f, Frame::Log { .. });
            if let Some(pos) = self.inbox.iter().position(terminal) {
                let frame = self.inbox.remove(pos);
                let logs = self.take_logs(id, pos);
                return Answer { frame, logs };
            }
            let frame = self.recv();
            self.inbox.push(frame);
        }
    }

    /// Removes and returns the logs of `id` among the first `upto` frames of the inbox.
    fn take_logs(&mut self, id: u32, upto: usize) -> Vec<(LogLevel, String)> {
        let mut logs = Vec::new();
        let mut i = 0;
        let mut seen = 0;
        while seen < upto && i < self.inbox.len() {
            seen += 1;
            if let Frame::Log { id: log_id, level, message } = &self.inbox[i] {
                if *log_id == id {
                    logs.push((*level, String::from_utf8(message.to_vec()).unwrap()));
                    self.inbox.remove(i);
                    continue;
                }
            }
            i += 1;
        }
        logs
    }

    /// Waits for `n` more logs of `id`, written after its answer.
    fn late_logs(&mut self, id: u32, n: usize) -> Vec<(LogLevel, String)> {
        loop {
            let count = self.inbox.iter().filter(|f| matches!(f, Frame::Log { id: i, .. } if *i == id)).count();
            if count >= n {
                let len = self.inbox.len();
                return self.take_logs(id, len);
            }
            let frame = self.recv();
            self.inbox.push(frame);
        }
    }

    /// Runs ad-hoc code to completion.
    fn run(&mut self, id: u32, source: &str, data: &str) -> Answer {
        self.send_run(id, &format!("adhoc:{id}"), None, source, data);
        self.answer(id)
    }

    fn compile(&mut self, id: u32, task: &str, source: &str) -> Answer {
        self.compile_asking(id, task, source, false)
    }

    /// A `Compile`, asking for the code cache or not.
    fn compile_asking(&mut self, id: u32, task: &str, source: &str, cache: bool) -> Answer {
        self.send(&Frame::Compile {
            id,
            meta: CompileMeta { tenant: "acme".into(), task: Some(task.into()), cache, ..Default::default() },
            source: Bytes::copy_from_slice(source.as_bytes()),
        });
        self.answer(id)
    }

    /// Closes the daemon's end and returns the exit status and whatever Node wrote to stdout and stderr.
    fn close(mut self) -> (std::process::ExitStatus, String, String) {
        self.sock.shutdown(std::net::Shutdown::Both).unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (self.child.wait().unwrap(), out, err)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_frame(id: u32, key: &str, task: Option<&str>, source: &str, data: &str) -> Frame {
    Frame::Run {
        id,
        meta: RunMeta {
            tenant: "acme".into(),
            task: task.map(Into::into),
            request_id: format!("req-{id}"),
            key: key.into(),
            ..Default::default()
        },
        source: Bytes::copy_from_slice(source.as_bytes()),
        cache: Bytes::new(),
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

#[test]
fn says_ready_with_its_pid_and_node_version() {
    let rt = Runtime::start();
    assert_eq!(rt.pid, rt.child.id());
    assert!(rt.node.starts_with('v'), "{}", rt.node);
}

#[test]
fn runs_ad_hoc_code_and_passes_data_and_ctx() {
    let mut rt = Runtime::start();
    let answer = rt.run(1, "module.exports = (data, ctx) => ({ sum: data.a + data.b, ctx });", r#"{"a":2,"b":3}"#);
    assert_eq!(answer.result(), json!({"sum": 5, "ctx": {"tenant": "acme", "task": null, "requestId": "req-1", "secrets": {}}}));

    // Empty data is null, and undefined becomes null.
    assert_eq!(rt.run(2, "module.exports = (d) => d === null;", "").result(), json!(true));
    assert_eq!(rt.run(3, "module.exports = () => {};", "").result(), Value::Null);
    assert_eq!(rt.run(4, "module.exports = async () => undefined;", "").result(), Value::Null);

    // A named task sees its name, and its stack traces name its file.
    rt.send_run(5, "task:hello:abc", Some("hello"), "module.exports = (d, ctx) => ctx;", "1");
    assert_eq!(rt.answer(5).result(), json!({"tenant": "acme", "task": "hello", "requestId": "req-5", "secrets": {}}));
    rt.send_run(6, "task:oops:def", Some("oops"), "module.exports = () => { null.x; };", "");
    let message = rt.answer(6).error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("TypeError: Cannot read properties of null"), "{message}");
    assert!(message.contains("at module.exports (/tasks/oops.js:1:"), "{message}");
    assert!(!message.contains("bootstrap.js"), "runtime frames leak into: {message}");
}

#[test]
fn awaits_promises_and_honours_callbacks() {
    let mut rt = Runtime::start();
    let source = "module.exports = async (d) => { await new Promise((r) => setTimeout(r, 10)); return d * 2; };";
    assert_eq!(rt.run(1, source, "21").result(), json!(42));

    let source = "module.exports = function (d, ctx, cb) { setTimeout(() => cb(null, 'cb:' + d), 5); };";
    assert_eq!(rt.run(2, source, "7").result(), json!("cb:7"));

    // An arrow returning setTimeout's timer: the timer is not the result, the callback's value is.
    let source = "module.exports = (d, ctx, cb) => setTimeout(() => cb(undefined, [d]), 1);";
    assert_eq!(rt.run(3, source, "1").result(), json!([1]));

    let source = "module.exports = (d, ctx, cb) => cb(new Error('nope'));";
    let message = rt.run(4, source, "").error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("Error: nope\n    at "), "{message}");

    // Only the first settlement counts: a callback called twice, a callback then a promise.
    let source = "module.exports = (d, ctx, cb) => { cb(null, 'first'); cb(null, 'second'); cb(new Error('third')); };";
    assert_eq!(rt.run(5, source, "").result(), json!("first"));
    let source = "module.exports = async (d, ctx, cb) => { cb(null, 'callback'); return 'promise'; };";
    assert_eq!(rt.run(6, source, "").result(), json!("callback"));
    let source = "module.exports = async (d, ctx, cb) => { throw new Error('rejected first'); };";
    assert!(rt.run(7, source, "").error(ErrorKind::TaskError).starts_with("Error: rejected first"));
    // Nothing more was said about any of them.
    assert_eq!(rt.run(8, "module.exports = () => 'next';", "").result(), json!("next"));
    assert!(rt.inbox.is_empty(), "{:?}", rt.inbox);
}

#[test]
fn throws_and_rejections_are_task_errors() {
    let mut rt = Runtime::start();
    let message = rt.run(1, "module.exports = () => { throw new Error('boom'); };", "").error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("Error: boom\n    at module.exports (/adhoc/1.js:1:"), "{message}");

    let message = rt.run(2, "module.exports = async () => { throw new TypeError('bad'); };", "").error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("TypeError: bad"), "{message}");

    assert_eq!(rt.run(3, "module.exports = () => { throw 'plain'; };", "").error(ErrorKind::TaskError), "plain");
    assert_eq!(rt.run(4, "module.exports = () => Promise.reject(404);", "").error(ErrorKind::TaskError), "404");
    let message = rt.run(5, "module.exports = () => { throw { code: 7 }; };", "").error(ErrorKind::TaskError).to_owned();
    assert!(message.contains("code: 7"), "{message}");

    // A huge message is cut to 16 KiB.
    let message = rt.run(6, "module.exports = () => { throw new Error('x'.repeat(100000)); };", "").error(ErrorKind::TaskError).to_owned();
    assert!(message.len() <= 16 * 1024 && message.ends_with("[truncated]"), "{}", message.len());

    let message = rt.run(7, "module.exports = 42;", "").error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("module.exports is not a function (it is number)"), "{message}");
    assert!(rt.run(8, "", "").error(ErrorKind::TaskError).starts_with("module.exports is not a function (it is object)"));
}

#[test]
fn results_must_be_json_and_at_most_one_mib() {
    let mut rt = Runtime::start();
    let message = rt.run(1, "module.exports = () => 10n;", "").error(ErrorKind::TaskError).to_owned();
    assert_eq!(message, "result is not JSON-serialisable: Do not know how to serialize a BigInt");
    let message = rt.run(2, "module.exports = () => { const a = {}; a.self = a; return a; };", "").error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("result is not JSON-serialisable: Converting circular structure to JSON"), "{message}");
    let message = rt.run(3, "module.exports = () => () => 1;", "").error(ErrorKind::TaskError).to_owned();
    assert_eq!(message, "result is not JSON-serialisable: a function");
    let message = rt.run(4, "module.exports = async () => Symbol('s');", "").error(ErrorKind::TaskError).to_owned();
    assert_eq!(message, "result is not JSON-serialisable: a symbol");

    // 1 MiB of JSON exactly is fine; two bytes more is not.
    let at_limit = rt.run(5, "module.exports = () => 'x'.repeat(1024 * 1024 - 2);", "");
    assert_eq!(at_limit.result().as_str().unwrap().len(), 1024 * 1024 - 2);
    let message = rt.run(6, "module.exports = () => 'x'.repeat(1024 * 1024);", "").error(ErrorKind::TaskError).to_owned();
    assert_eq!(message, "result too large (1048578 bytes, limit 1048576)");
}

#[test]
fn module_scope_persists_per_key_and_globals_are_shared() {
    let mut rt = Runtime::start();
    let counter =
        "let n = 0; module.exports = () => { globalThis.shared = (globalThis.shared || 0) + 1; return [++n, globalThis.shared]; };";
    rt.send_run(1, "adhoc:counter", None, counter, "");
    assert_eq!(rt.answer(1).result(), json!([1, 1]));
    // Once compiled, the daemon sends the key alone.
    rt.send_run(2, "adhoc:counter", None, "", "");
    assert_eq!(rt.answer(2).result(), json!([2, 2]));
    // A source sent again for a compiled key does not reset its module.
    rt.send_run(3, "adhoc:counter", None, counter, "");
    assert_eq!(rt.answer(3).result(), json!([3, 3]));

    // The same code under another key is another module, over the same global object.
    rt.send_run(4, "task:count:abc", Some("count"), counter, "");
    assert_eq!(rt.answer(4).result(), json!([1, 4]));
    rt.send_run(5, "adhoc:other", None, "module.exports = () => globalThis.shared;", "");
    assert_eq!(rt.answer(5).result(), json!(4));

    // A module body that throws is run again next time, as Node re-runs a failed require.
    let flaky = "globalThis.tries = (globalThis.tries || 0) + 1; if (globalThis.tries < 2) throw new Error('init'); module.exports = () => globalThis.tries;";
    rt.send_run(6, "adhoc:flaky", None, flaky, "");
    assert!(rt.answer(6).error(ErrorKind::TaskError).starts_with("Error: init"));
    rt.send_run(7, "adhoc:flaky", None, "", "");
    assert_eq!(rt.answer(7).result(), json!(2));
}

#[test]
fn compile_errors_name_line_and_column() {
    let mut rt = Runtime::start();
    let answer = rt.compile(1, "broken", "let a = 1;\nfunction f() {\n  return 1 +;\n}\n");
    assert_eq!(answer.error(ErrorKind::CompileError), "SyntaxError: Unexpected token ';' at line 3, column 13");
    let answer = rt.compile(2, "broken", "module.exports = () => {\n\tfoo(}\n");
    assert_eq!(answer.error(ErrorKind::CompileError), "SyntaxError: Unexpected token '}' at line 2, column 6");
    let answer = rt.compile(3, "dup", "const a = 1;\nconst a = 2;");
    assert_eq!(answer.error(ErrorKind::CompileError), "SyntaxError: Identifier 'a' has already been declared at line 2, column 7");
    let answer = rt.compile(4, "unicode", "const s = '\u{e9}\u{1F600}'; let = ;");
    assert_eq!(answer.error(ErrorKind::CompileError), "SyntaxError: Unexpected token ';' at line 1, column 24");

    // Compiling runs nothing: this would log and throw if it ran.
    let answer = rt.compile(5, "fine", "console.log('ran'); throw new Error('ran'); module.exports = () => 1;");
    assert!(matches!(&answer.frame, Frame::Compiled { id: 5, cache } if cache.is_empty()), "{answer:?}");
    assert!(answer.logs.is_empty());
    // A top-level return is allowed, as in a CommonJS module.
    assert!(matches!(rt.compile(6, "ret", "return;").frame, Frame::Compiled { .. }));

    // Ad-hoc code that does not compile fails its Run with compile_error, and so do the Runs of its key
    // that the daemon sent on without the source before hearing of the failure.
    rt.send_run(7, "adhoc:bad", None, "module.exports = (d) => {", "");
    rt.send_run(8, "adhoc:bad", None, "", "");
    let message = rt.answer(7).error(ErrorKind::CompileError).to_owned();
    assert!(message.starts_with("SyntaxError: Unexpected end of input at line 1"), "{message}");
    assert_eq!(rt.answer(8).error(ErrorKind::CompileError), message);
}

#[test]
fn logs_carry_the_id_of_the_invocation_that_wrote_them() {
    let mut rt = Runtime::start();
    let source = "console.log('module body'); module.exports = (d) => new Promise((resolve) => {
        console.log('start %d', d);
        setTimeout(() => { console.warn('timer', d); Promise.resolve().then(() => { console.error({ d }); resolve(d); }); }, d);
    });";
    // Two invocations in flight at once, answered by id: the shorter one first. One write, so that both
    // timers start together however slow the machine.
    let mut both = encode_to_vec(&run_frame(1, "adhoc:logs", None, source, "100")).unwrap();
    runtime::encode(&run_frame(2, "adhoc:logs", None, "", "5"), &mut both).unwrap();
    rt.sock.write_all(&both).unwrap();
    let second = rt.recv_terminal();
    assert_eq!(second.id(), 2);
    let first = rt.answer(1);
    assert_eq!(first.result(), json!(100));
    assert_eq!(
        first.logs,
        vec![
            (LogLevel::Log, "module body".to_owned()),
            (LogLevel::Log, "start 100".to_owned()),
            (LogLevel::Warn, "timer 100".to_owned()),
            (LogLevel::Error, "{ d: 100 }".to_owned()),
        ]
    );
    let second_logs = rt.take_logs(2, rt.inbox.len());
    assert_eq!(
        second_logs,
        vec![(LogLevel::Log, "start 5".to_owned()), (LogLevel::Warn, "timer 5".to_owned()), (LogLevel::Error, "{ d: 5 }".to_owned()),]
    );

    // Every level, and the other console methods.
    let source = "module.exports = () => { console.info('i'); console.debug('d'); console.group('g'); console.log('in'); console.groupEnd(); console.assert(false, 'a'); console.count(); console.dir({ x: [1] }); };";
    let answer = rt.run(3, source, "");
    assert_eq!(
        answer.logs,
        vec![
            (LogLevel::Info, "i".to_owned()),
            (LogLevel::Debug, "d".to_owned()),
            (LogLevel::Log, "g".to_owned()),
            (LogLevel::Log, "  in".to_owned()),
            (LogLevel::Warn, "Assertion failed: a".to_owned()),
            (LogLevel::Log, "default: 1".to_owned()),
            (LogLevel::Log, "{ x: [ 1 ] }".to_owned()),
        ]
    );

    // console.trace shows the tenant's frames only.
    let answer = rt.run(5, "module.exports = () => { console.trace('here %d', 1); };", "");
    let [(level, trace)] = &answer.logs[..] else { panic!("{:?}", answer.logs) };
    assert_eq!(*level, LogLevel::Error);
    assert!(trace.starts_with("Trace: here 1\n    at module.exports (/adhoc/5.js:1:"), "{trace}");
    assert_eq!(trace.lines().count(), 2, "{trace}");

    // A timer that outlives its invocation still logs under its id.
    let answer = rt.run(4, "module.exports = () => { setTimeout(() => console.log('late'), 20); return 'done'; };", "");
    assert_eq!(answer.result(), json!("done"));
    assert_eq!(rt.late_logs(4, 1), vec![(LogLevel::Log, "late".to_owned())]);
}

#[test]
fn a_log_flood_is_cut_at_70_kib_per_invocation() {
    let mut rt = Runtime::start();
    let source = "module.exports = () => { for (let i = 0; i < 10000; i++) console.log('x'.repeat(99)); return 'survived'; };";
    let answer = rt.run(1, source, "");
    assert_eq!(answer.result(), json!("survived"));
    let (last, rest) = answer.logs.split_last().unwrap();
    assert_eq!(last, &(LogLevel::Warn, "[logs truncated]".to_owned()));
    assert_eq!(rest.iter().map(|(_, m)| m.len()).sum::<usize>(), 70 * 1024);
    // The budget is per invocation.
    let answer = rt.run(2, "module.exports = () => console.log('again');", "");
    assert_eq!(answer.logs, vec![(LogLevel::Log, "again".to_owned())]);
}

#[test]
fn stray_exceptions_and_rejections_do_not_kill_the_runtime() {
    let mut rt = Runtime::start();
    // An exception thrown from a timer fails the invocation it belongs to.
    let source = "module.exports = () => new Promise(() => { setTimeout(() => { throw new Error('from a timer'); }, 1); });";
    let message = rt.run(1, source, "").error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("Uncaught exception: Error: from a timer"), "{message}");

    // A rejection nobody handles, during the invocation.
    let source = "module.exports = () => new Promise(() => { setTimeout(() => { Promise.reject(new Error('unhandled')); }, 1); });";
    let message = rt.run(2, source, "").error(ErrorKind::TaskError).to_owned();
    assert!(message.starts_with("Unhandled rejection: Error: unhandled"), "{message}");

    // After the invocation has answered, they are logged under its id.
    let source = "module.exports = () => { setTimeout(() => { throw new Error('too late'); }, 5); Promise.reject(new Error('ignored')); return 1; };";
    assert_eq!(rt.run(3, source, "").result(), json!(1));
    let logs = rt.late_logs(3, 2);
    assert!(logs.iter().all(|(level, _)| *level == LogLevel::Error));
    assert!(logs[0].1.starts_with("Unhandled rejection: Error: ignored"), "{logs:?}");
    assert!(logs[1].1.starts_with("Uncaught exception: Error: too late"), "{logs:?}");

    assert_eq!(rt.run(4, "module.exports = () => 'alive';", "").result(), json!("alive"));
}

#[test]
fn built_in_modules_can_be_required_and_imported() {
    let mut rt = Runtime::start();
    let source = "const crypto = require('crypto'); module.exports = () => crypto.createHash('sha256').update('abc').digest('hex');";
    assert_eq!(rt.run(1, source, "").result(), json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    let source = "module.exports = async () => (await import('node:path')).sep;";
    assert_eq!(rt.run(2, source, "").result(), json!("/"));
    let source = "module.exports = () => [typeof require('fs').readFileSync, __filename, __dirname, typeof module.exports];";
    assert_eq!(rt.run(3, source, "").result(), json!(["function", "/adhoc/3.js", "/adhoc", "function"]));
}

#[test]
fn tenant_code_cannot_reach_the_socket_or_break_the_framing() {
    let mut rt = Runtime::start();
    // Replacing the globals the runtime uses changes nothing for the frames.
    let source = "module.exports = () => { JSON.stringify = () => 'forged'; Buffer.from = () => Buffer.alloc(3); \
                  Promise.prototype.then = function () {}; return Object.keys(globalThis).filter((k) => /sock|frame|send/i.test(k)); };";
    assert_eq!(rt.run(1, source, "").result(), json!([]));
    assert_eq!(rt.run(2, "module.exports = async () => ({ still: 'framed' });", "").result(), json!({"still": "framed"}));
}

#[test]
fn big_frames_and_bursts_of_frames_are_read_whole() {
    let mut rt = Runtime::start();
    // A Run of about 2 MiB (source and data) arrives in many pieces.
    let source = format!("const pad = '{}'; module.exports = (d) => [pad.length, d.length];", "p".repeat(1 << 20));
    let data = serde_json::to_string(&"d".repeat(1 << 20)).unwrap();
    rt.send_run(1, "adhoc:big", None, &source, &data);
    assert_eq!(rt.answer(1).result(), json!([1 << 20, 1 << 20]));

    // Many small frames in one write.
    let mut burst = Vec::new();
    for id in 10..60 {
        let source = if id == 10 { "module.exports = (d) => d + 1;" } else { "" };
        runtime::encode(&run_frame(id, "adhoc:inc", None, source, &id.to_string()), &mut burst).unwrap();
    }
    rt.sock.write_all(&burst).unwrap();
    for id in 10..60 {
        assert_eq!(rt.answer(id).result(), json!(id + 1));
    }
}

#[test]
fn exits_quietly_when_the_daemon_goes_away() {
    let mut rt = Runtime::start();
    assert_eq!(rt.run(1, "module.exports = () => { console.log('to the daemon only'); return 1; };", "").result(), json!(1));
    let (status, stdout, stderr) = rt.close();
    assert!(status.success(), "{status:?}");
    assert_eq!(stdout, "");
    assert_eq!(stderr, "");
}

#[test]
fn tenant_code_may_exit_the_process() {
    let mut rt = Runtime::start();
    rt.send_run(1, "adhoc:exit", None, "module.exports = () => process.exit(3);", "");
    assert!(rt.try_recv().is_none());
    assert_eq!(rt.child.wait().unwrap().code(), Some(3));
}

#[test]
fn garbage_from_the_daemon_stops_the_runtime() {
    let mut rt = Runtime::start();
    rt.sock.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    // It says why (under id 0) and exits.
    match rt.recv() {
        Frame::Log { id: 0, level: LogLevel::Error, message } => {
            assert!(String::from_utf8_lossy(&message).contains("protocol error"), "{message:?}")
        }
        other => panic!("expected a Log, got {other:?}"),
    }
    assert!(rt.try_recv().is_none());
    assert_eq!(rt.child.wait().unwrap().code(), Some(70));
}

impl Runtime {
    /// The next Result, Error or Compiled frame, leaving logs in the inbox.
    fn recv_terminal(&mut self) -> Frame {
        loop {
            match self.recv() {
                log @ Frame::Log { .. } => self.inbox.push(log),
                frame => return frame,
            }
        }
    }
}

#[test]
fn a_compile_hands_back_a_code_cache_that_runs_accept() {
    let mut rt = Runtime::start();
    // Big enough for V8 to find a cache worth making.
    let mut source = String::from("const T = {};\n");
    for i in 0..300 {
        source.push_str(&format!("T.f{i} = function (a) {{ return [a, {i}].map((v) => v * 2).reduce((s, v) => s + v, 0) }};\n"));
    }
    source.push_str("module.exports = (d) => T.f7(d.n) + T.f299(1);\n");
    let answer = rt.compile_asking(1, "big", &source, true);
    let Frame::Compiled { cache, .. } = &answer.frame else { panic!("{answer:?}") };
    assert!(!cache.is_empty(), "no code cache made");
    let cache = cache.clone();
    // A Run that carries the cache: same answer as without one ([n, 7] doubled and summed, plus [1, 299]).
    let mut frame = run_frame(2, "task:big:1", Some("big"), &source, r#"{"n":5}"#);
    if let Frame::Run { cache: c, .. } = &mut frame {
        *c = cache.clone();
    }
    rt.send(&frame);
    assert_eq!(rt.answer(2).result(), 24 + 600);
    // A cache that does not fit the source is ignored by V8, never trusted: the source compiles as usual.
    let mut frame = run_frame(3, "task:other:1", Some("other"), "module.exports = () => 'fine'", "");
    if let Frame::Run { cache: c, .. } = &mut frame {
        *c = cache;
    }
    rt.send(&frame);
    assert_eq!(rt.answer(3).result(), "fine");
    // Garbage where a cache should be: the same.
    let mut frame = run_frame(4, "task:junk:1", Some("junk"), "module.exports = () => 'still fine'", "");
    if let Frame::Run { cache: c, .. } = &mut frame {
        *c = Bytes::from_static(b"\x00not a code cache at all\xff");
    }
    rt.send(&frame);
    assert_eq!(rt.answer(4).result(), "still fine");
}
