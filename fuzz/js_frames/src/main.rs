//! A structure-aware black-box fuzzer for the Node half of the frame protocol, `runtime/js/bootstrap.js`.
//!
//! libFuzzer cannot instrument JavaScript, so this is a plain program: each case is a fresh
//! `env -i PATH=/usr/bin node --max-old-space-size=64 runtime/js/bootstrap.js` with one end of a
//! socketpair as fd 3 (as runtime/tests/bootstrap.rs starts it), sent a stream of frames made from valid
//! frames and the frames_rust corpus and then mutated (length fields, types, ids, meta_len, metas of
//! every JSON shape, truncated bodies, huge lengths, random bytes, writes cut into pieces), followed by
//! the end of the stream. What the process does is checked against a model of docs/protocol.md:
//!
//! - it never dies of a signal, never hangs (each case has a deadline), never writes to stdout or stderr,
//!   and exits 0 (the daemon closed its end) or 70 (a malformed frame from the daemon);
//! - it says `Ready` first and once; everything it writes decodes with `runtime::Decoder` and is a type
//!   a sandbox may send;
//! - a stream whose frames the model accepts ends in exit 0 with exactly one answer (`Result`, `Error` or
//!   `Compiled`) per `Run`/`Compile`, carrying its id;
//! - a stream with a complete frame the model refuses (length out of range, meta_len past the frame, a type
//!   other than Run/Compile, id 0, a meta that is not JSON or not an object, a Run whose `sourceLen` is
//!   not an integer within the body or whose `key` is not a string) ends in exit 70, with no answer to
//!   that frame or any later one, after an `error` Log with id 0 (counted, not enforced: see below);
//! - where the model cannot tell what JSON.parse makes of a meta that serde_json refuses (numbers out of
//!   range, lone surrogates, invalid UTF-8 read lossily), either outcome is allowed; they are counted.
//!
//! Run sources come only from a fixed pool of tasks that always settle, and every prefix of each of them
//! (a mutated `sourceLen` cuts the source) either fails to compile or settles too: the fuzzer runs tenant
//! code on the host without a sandbox, so it never runs fuzzed bytes as code. Compile sources may be
//! anything: they are only compiled.
//!
//! Usage (from fuzz/): cargo run --release --bin js_frames -- [--iterations N] [--seconds S] [--seed X]
//!   [--corpus DIR]... [--artifacts DIR] [--bootstrap FILE] [--jobs J] [--send-before-ready]
//!   (by default nothing is sent before the runtime's Ready, as the daemon's spawner does)
//!   cargo run --release --bin js_frames -- --replay FILE      (re-run one saved case, verbosely)
//!   cargo run --release --bin js_frames -- --write-seeds DIR  (write frames_rust seed inputs)

use std::collections::HashMap;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runtime::{encode_to_vec, CompileMeta, Decoder, ErrorKind, Frame, LogLevel, RunMeta, MAX_FRAME};
use serde::Deserialize;
use serde_json::{json, Value};

const NODE: &str = "/usr/bin/node";
const RUN: u8 = 1;
const COMPILE: u8 = 2;
/// How long one case may take from spawn to exit.
const DEADLINE: Duration = Duration::from_secs(20);

// ---- randomness ----------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// Up to `max` random bytes.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---- cases ---------------------------------------------------------------------------------------

/// Tasks that always settle, and whose every prefix fails to compile, fails to load, is not a function,
/// or settles. No callback-style task: a prefix such as `(d, c, cb) => cb` would never answer.
const SOURCES: &[&str] = &[
    "module.exports = (d) => d;",
    "module.exports = async (d) => [d];",
    "module.exports = (d) => { console.log('got', d); return 1; };",
    "module.exports = () => { throw new Error('boom'); };",
    "module.exports = () => 1n;",
    "",
    "module.exports = (d) => Promise.reject(new Error('no'));",
    "module.exports = 5;",
    "module.exports = (d, ctx) => ctx;",
    "throw new Error('load');",
    "module.exports = () => { console.error('x'.repeat(80000)); return 0; };",
    "module.exports = () => { console.warn('w\\u00e9\\ud83d\\ude00'); return '\\u00e9'; };",
    "module.exports = () => 'r'.repeat(1100000);",
    "module.exports = () => undefined;",
    // Tenant code that makes the runtime's own steps throw.
    "Object.defineProperty(module, 'exports', { get() { throw new Error('getter'); } });",
    "module.exports = () => { const p = Promise.resolve(1); Object.defineProperty(p, 'constructor', { get() { throw new Error('ctor'); } }); return p; };",
    "module.exports = () => { throw new Error('\\ud800 lone'); };",
];

/// Sources for Compile frames (compiled, never run).
const COMPILE_SOURCES: &[&str] = &[
    "module.exports = (d) => d;",
    "let x = ;",
    "function (",
    "}}}}",
    "await 1;",
    "return 1;",
    "import x from 'y';",
    "'\\u{110000}'",
    "/(/",
    "\u{feff}module.exports = 1;",
    "#!/usr/bin/env node\nmodule.exports = 1;",
    "a\u{2028}b",
];

/// One piece of a case's stream.
#[derive(Clone, Debug)]
enum Piece {
    Frame {
        ty: u8,
        id: u32,
        meta: Vec<u8>,
        body: Vec<u8>,
        /// Overrides of the header fields the encoder would compute.
        len: Option<u32>,
        meta_len: Option<u32>,
        /// For Run frames built here: where the source ends in `body` (what `sourceLen` says is in the meta).
        source_end: Option<usize>,
    },
    Raw(Vec<u8>),
}

impl Piece {
    fn bytes(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Frame { ty, id, meta, body, len, meta_len, .. } => {
                let real_len = (9 + meta.len() + body.len()) as u32;
                out.extend_from_slice(&len.unwrap_or(real_len).to_be_bytes());
                out.push(*ty);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&meta_len.unwrap_or(meta.len() as u32).to_be_bytes());
                out.extend_from_slice(meta);
                out.extend_from_slice(body);
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    stream: Vec<u8>,
    /// Sizes of the writes the stream is cut into (the last one takes the rest); with a short pause after
    /// each, so that Node reads them as separate chunks.
    writes: Vec<usize>,
    /// Whether to wait for Ready before sending (the daemon does).
    wait_ready: bool,
}

fn run_meta(tenant: Value, task: Option<Value>, request_id: Value, key: Option<Value>, source_len: Option<Value>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("tenant".into(), tenant);
    if let Some(t) = task {
        m.insert("task".into(), t);
    }
    m.insert("requestId".into(), request_id);
    if let Some(k) = key {
        m.insert("key".into(), k);
    }
    if let Some(s) = source_len {
        m.insert("sourceLen".into(), s);
    }
    Value::Object(m)
}

/// A deeply nested JSON array, as text.
fn deep_array(depth: usize) -> String {
    let mut s = "[".repeat(depth);
    s.push_str(&"]".repeat(depth));
    s
}

fn odd_value(rng: &mut Rng) -> String {
    let choices: &[&str] = &[
        "null",
        "true",
        "-1",
        "1.5",
        "\"3\"",
        "1e300",
        "1e400",
        "-0",
        "3.0",
        "1E1",
        "[]",
        "{}",
        "\"\"",
        "\"\\ud800\"",
        "9007199254740993",
        "4294967296",
        "[0]",
        "{\"valueOf\":1}",
        "{\"toString\":1}",
        "[{\"toString\":1}]",
        "\"__proto__\"",
    ];
    match rng.below(12) {
        0 => deep_array(1 + rng.below(200_000)),
        1 => format!("\"{}\"", "k".repeat(rng.below(100_000))),
        2 => format!("{}", rng.next() as u32),
        _ => rng.pick(choices).to_string(),
    }
}

/// A valid Run frame with a pool source (sometimes with mutated meta fields).
fn gen_run(rng: &mut Rng, keys: &mut Vec<String>) -> Piece {
    let source = rng.pick(SOURCES).as_bytes().to_vec();
    let data: Vec<u8> = match rng.below(10) {
        0 => Vec::new(),
        1 => rng.bytes(64),
        2 => format!("\"{}\"", "d".repeat(rng.below(2_000_000))).into_bytes(),
        3 => deep_array(1 + rng.below(50_000)).into_bytes(),
        4 => b"{\"then\":1,\"__proto__\":{\"x\":1}}".to_vec(),
        5 => b"\xef\xbb\xbf1".to_vec(),
        _ => json!({"n": rng.next() % 1000, "s": "\u{e9}\u{1F600}"}).to_string().into_bytes(),
    };
    let key = if !keys.is_empty() && rng.chance(3) {
        rng.pick(keys).clone()
    } else {
        let k = match rng.below(6) {
            0 => "__proto__".to_string(),
            1 => "constructor".to_string(),
            2 => format!("task:t{}:{:x}", rng.below(4), rng.next()),
            _ => format!("adhoc:{:x}", rng.next()),
        };
        keys.push(k.clone());
        k
    };
    let mut body = source.clone();
    body.extend_from_slice(&data);
    let mut source_len = Value::from(source.len());
    let mut source_end = source.len();
    if rng.chance(6) {
        // Cut the source short (a prefix of a pool source is safe to run); the rest reads as data.
        source_end = rng.below(source.len() + 1);
        source_len = Value::from(source_end);
    }
    let task = match rng.below(5) {
        0 => None,
        1 => Some(Value::Null),
        2 => Some(Value::from(format!("t{}", rng.below(4)))),
        3 => Some(Value::from("../../etc/passwd")),
        _ => Some(Value::from("")),
    };
    let mut meta =
        run_meta(Value::from("acme"), task, Value::from(format!("r{}", rng.below(100))), Some(Value::from(key)), Some(source_len));
    if rng.chance(4) {
        // One field of an odd shape (or missing).
        let field = *rng.pick(&["tenant", "task", "requestId", "key", "sourceLen", "extra", "__proto__"]);
        let text = odd_value(rng);
        let mut m = meta.as_object().cloned().unwrap_or_default();
        if rng.chance(4) {
            m.remove(field);
        } else if let Ok(v) = serde_json::from_str::<Value>(&text) {
            m.insert(field.into(), v);
        } else {
            // Not representable as a Value (1e400, lone surrogate): splice it in as text.
            m.remove(field);
            let mut s = Value::Object(m).to_string();
            s.pop();
            if s.len() > 1 {
                s.push(',');
            }
            s.push_str(&format!("\"{field}\":{text}}}"));
            return Piece::Frame {
                ty: RUN,
                id: gen_id(rng),
                meta: s.into_bytes(),
                body,
                len: None,
                meta_len: None,
                source_end: Some(source_end),
            };
        }
        meta = Value::Object(m);
    }
    Piece::Frame {
        ty: RUN,
        id: gen_id(rng),
        meta: meta.to_string().into_bytes(),
        body,
        len: None,
        meta_len: None,
        source_end: Some(source_end),
    }
}

fn gen_id(rng: &mut Rng) -> u32 {
    match rng.below(8) {
        0 => u32::MAX,
        1 => 0x8000_0000,
        2 => 0,
        _ => 1 + rng.below(50) as u32,
    }
}

fn gen_compile(rng: &mut Rng) -> Piece {
    let source: Vec<u8> = match rng.below(6) {
        0 => rng.bytes(200),
        1 => deep_array(1 + rng.below(100_000)).into_bytes(),
        2 => "(".repeat(1 + rng.below(50_000)).into_bytes(),
        _ => rng.pick(COMPILE_SOURCES).as_bytes().to_vec(),
    };
    let meta = match rng.below(6) {
        0 => Vec::new(),
        1 => b"{\"tenant\":\"acme\",\"task\":null}".to_vec(),
        2 => format!("{{\"tenant\":\"acme\",\"task\":{}}}", odd_value(rng)).into_bytes(),
        _ => b"{\"tenant\":\"acme\",\"task\":\"t1\"}".to_vec(),
    };
    Piece::Frame { ty: COMPILE, id: gen_id(rng), meta, body: source, len: None, meta_len: None, source_end: None }
}

/// Frames of the frames_rust corpus (the fuzz input without its chunk-size prefix), split on their
/// length fields while those make sense.
fn corpus_pieces(files: &[Vec<u8>], rng: &mut Rng) -> Vec<Piece> {
    if files.is_empty() {
        return Vec::new();
    }
    let data = rng.pick(files);
    let Some((&first, rest)) = data.split_first() else { return Vec::new() };
    let n = usize::from(first % 16).min(rest.len());
    let mut stream = &rest[n..];
    let mut out = Vec::new();
    while stream.len() >= 13 {
        let len = u32::from_be_bytes(stream[0..4].try_into().unwrap()) as usize;
        if len < 9 || 4 + len > stream.len() {
            break;
        }
        let ty = stream[4];
        let id = u32::from_be_bytes(stream[5..9].try_into().unwrap());
        let meta_len = u32::from_be_bytes(stream[9..13].try_into().unwrap()) as usize;
        if 13 + meta_len > 4 + len {
            break;
        }
        let meta = stream[13..13 + meta_len].to_vec();
        let mut body = stream[13 + meta_len..4 + len].to_vec();
        let mut meta = meta;
        let mut source_end = None;
        if ty == RUN {
            // Never run fuzzed bytes as code: the source becomes a pool source, sourceLen follows.
            let source = rng.pick(SOURCES).as_bytes();
            let old: Option<usize> =
                serde_json::from_slice::<Value>(&meta).ok().and_then(|m| m.get("sourceLen").and_then(Value::as_u64)).map(|n| n as usize);
            let data = match old {
                Some(o) if o <= body.len() => body[o..].to_vec(),
                _ => body.clone(),
            };
            body = source.to_vec();
            body.extend_from_slice(&data);
            let mut m = serde_json::from_slice::<Value>(&meta).ok().filter(Value::is_object).unwrap_or_else(|| json!({}));
            m["sourceLen"] = Value::from(source.len());
            if m.get("key").is_none_or(|k| !k.is_string()) {
                m["key"] = Value::from(format!("adhoc:c{}", rng.below(8)));
            }
            meta = m.to_string().into_bytes();
            source_end = Some(source.len());
        }
        out.push(Piece::Frame { ty, id, meta, body, len: None, meta_len: None, source_end });
        stream = &stream[4 + len..];
    }
    if !stream.is_empty() && rng.chance(2) {
        out.push(Piece::Raw(stream.to_vec()));
    }
    out
}

fn mutate(pieces: &mut Vec<Piece>, rng: &mut Rng, keys: &mut Vec<String>) {
    if pieces.is_empty() {
        pieces.push(gen_run(rng, keys));
    }
    let at = rng.below(pieces.len());
    let choice = rng.below(14);
    let piece = &mut pieces[at];
    if let Piece::Frame { ty, id, meta, body, len, meta_len, source_end } = piece {
        let real = (9 + meta.len() + body.len()) as u32;
        let r = rng.next();
        match choice {
            0 => {
                *len = Some(*rng.pick(&[
                    0,
                    1,
                    8,
                    9,
                    real.wrapping_sub(1),
                    real + 1,
                    MAX_FRAME as u32,
                    MAX_FRAME as u32 + 1,
                    u32::MAX,
                    0x8000_0000,
                    r as u32,
                ]))
            }
            1 => *ty = *rng.pick(&[0, 1, 2, 3, 16, 17, 18, 19, 20, 255, r as u8]),
            2 => *id = *rng.pick(&[0, 1, u32::MAX, r as u32]),
            3 => *meta_len = Some(*rng.pick(&[0, 1, meta.len() as u32 + 1, real - 9, real - 8, u32::MAX, r as u32])),
            4 => {
                // Whole-meta replacements.
                let text: Vec<u8> = match rng.below(12) {
                    0 => b"[]".to_vec(),
                    1 => b"null".to_vec(),
                    2 => b"1".to_vec(),
                    3 => b"\"x\"".to_vec(),
                    4 => b"{".to_vec(),
                    5 => b"{\"sourceLen\":0,\"key\":\"k\xff\"}".to_vec(),
                    6 => b"\xef\xbb\xbf{\"sourceLen\":0,\"key\":\"k\"}".to_vec(),
                    7 => b" \t\r\n{\"sourceLen\":0,\"key\":\"k\"} ".to_vec(),
                    8 => deep_array(1 + rng.below(100_000)).into_bytes(),
                    9 => format!("{{\"a\":{}}}", deep_array(1 + rng.below(100_000))).into_bytes(),
                    10 => rng.bytes(40),
                    _ => b"{\"sourceLen\":0,\"key\":\"k\",\"sourceLen\":1}".to_vec(),
                };
                *meta = text;
                if *ty == RUN {
                    // The pool source may now be read as data or not at all; keep the body's source safe.
                    *source_end = Some(0);
                }
            }
            5 => {
                // Flip bytes in the meta.
                for _ in 0..1 + rng.below(3) {
                    if !meta.is_empty() {
                        let i = rng.below(meta.len());
                        meta[i] = rng.next() as u8;
                    }
                }
            }
            6 => {
                // Flip bytes in the body, past the source of a Run.
                let from = source_end.unwrap_or(0);
                for _ in 0..1 + rng.below(3) {
                    if body.len() > from {
                        let i = from + rng.below(body.len() - from);
                        body[i] = rng.next() as u8;
                    }
                }
            }
            7 => {
                // Truncate the body (the length field keeps the real length unless changed elsewhere).
                let keep = rng.below(body.len() + 1);
                let real_len = real;
                body.truncate(keep.max(source_end.unwrap_or(0)));
                *len = Some(real_len);
            }
            8 => {
                // A huge length, actually sent.
                let target = MAX_FRAME - 9 - meta.len() + rng.below(3);
                let from = source_end.unwrap_or(0).min(body.len());
                body.resize(target.max(from), b' ');
            }
            _ => {}
        }
    }
    match choice {
        9 => pieces.insert(rng.below(pieces.len() + 1), Piece::Raw(rng.bytes(32))),
        10 => {
            let p = pieces[rng.below(pieces.len())].clone();
            pieces.insert(rng.below(pieces.len() + 1), p);
        }
        11 => {
            pieces.remove(at);
        }
        12 => pieces.push(if rng.chance(2) { gen_run(rng, keys) } else { gen_compile(rng) }),
        13 => {
            // A header cut off part way.
            let mut b = Vec::new();
            pieces[at].bytes(&mut b);
            b.truncate(rng.below(13.min(b.len()) + 1));
            pieces[at] = Piece::Raw(b);
        }
        _ => {}
    }
}

fn gen_case(rng: &mut Rng, corpus: &[Vec<u8>]) -> Case {
    let mut keys = Vec::new();
    let mut pieces = Vec::new();
    if rng.chance(3) {
        pieces.extend(corpus_pieces(corpus, rng));
    }
    for _ in 0..rng.below(5) {
        pieces.push(if rng.chance(3) { gen_compile(rng) } else { gen_run(rng, &mut keys) });
    }
    // A third of the cases stay valid (a baseline the model must accept), the rest are mutated.
    if !rng.chance(3) {
        for _ in 0..1 + rng.below(4) {
            mutate(&mut pieces, rng, &mut keys);
        }
    }
    let mut stream = Vec::new();
    for p in &pieces {
        p.bytes(&mut stream);
    }
    if rng.chance(10) {
        stream.truncate(rng.below(stream.len() + 1));
    }
    if rng.chance(20) {
        stream = rng.bytes(64);
    }
    let mut writes = Vec::new();
    if rng.chance(3) && !stream.is_empty() {
        let mut left = stream.len();
        while left > 0 && writes.len() < 40 {
            let n = 1 + match rng.below(3) {
                0 => rng.below(4),
                1 => rng.below(32),
                _ => rng.below(left),
            };
            let n = n.min(left);
            writes.push(n);
            left -= n;
        }
    }
    Case { stream, writes, wait_ready: true }
}

// ---- the model ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// bootstrap.js must answer it.
    Accept,
    /// bootstrap.js must exit 70 on it.
    Reject,
    /// serde_json could not read the meta the way JSON.parse may: either outcome is allowed.
    Unknown,
}

#[derive(Debug)]
struct Expect {
    /// Complete frames, in order, with their id and verdict (up to and including the first Reject).
    frames: Vec<(u32, Verdict, String)>,
    /// Whether the stream reaches a Reject.
    rejected: bool,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn model(stream: &[u8]) -> Expect {
    let stream = stream.to_vec();
    std::thread::Builder::new().stack_size(1 << 30).spawn(move || model_on(&stream)).expect("model thread").join().expect("model")
}

fn model_on(stream: &[u8]) -> Expect {
    let mut frames = Vec::new();
    let mut at = 0;
    while stream.len() - at >= 4 {
        let len = be_u32(stream, at) as usize;
        if !(9..=MAX_FRAME).contains(&len) {
            frames.push((0, Verdict::Reject, format!("frame length {len}")));
            return Expect { frames, rejected: true };
        }
        if stream.len() - at < 4 + len {
            break;
        }
        let frame = &stream[at..at + 4 + len];
        at += 4 + len;
        let (verdict, why) = judge(frame);
        let id = be_u32(frame, 5);
        frames.push((id, verdict, why));
        if verdict == Verdict::Reject {
            return Expect { frames, rejected: true };
        }
    }
    Expect { frames, rejected: false }
}

/// What docs/protocol.md (and bootstrap.js's `onFrame`, `run`) make of one complete frame.
fn judge(frame: &[u8]) -> (Verdict, String) {
    let ty = frame[4];
    let id = be_u32(frame, 5);
    let meta_len = be_u32(frame, 9) as usize;
    if 13 + meta_len > frame.len() {
        return (Verdict::Reject, format!("meta_len {meta_len} overruns"));
    }
    if ty != RUN && ty != COMPILE {
        return (Verdict::Reject, format!("type {ty}"));
    }
    if id == 0 {
        return (Verdict::Reject, "id 0".into());
    }
    let meta_bytes = &frame[13..13 + meta_len];
    let body_len = frame.len() - 13 - meta_len;
    let meta: Value = if meta_len == 0 {
        json!({})
    } else {
        // JSON.parse(buffer.toString('utf8')): invalid UTF-8 becomes U+FFFD, which JSON.parse accepts
        // inside strings (and refuses elsewhere, as serde_json does).
        let text = String::from_utf8_lossy(meta_bytes);
        let mut de = serde_json::Deserializer::from_str(&text);
        // JSON.parse has no depth limit; nesting here is bounded by the 8 MiB frame and the model runs
        // on a thread with a stack big enough for it.
        de.disable_recursion_limit();
        match Value::deserialize(&mut de).and_then(|v| de.end().map(|()| v)) {
            Ok(v) => v,
            Err(e) => {
                // Text serde_json refuses but V8 reads: 1e400 (Infinity), lone surrogates.
                let msg = e.to_string();
                let v8_reads_it = ["number out of range", "surrogate", "unicode code point", "hex escape"].iter().any(|m| msg.contains(m));
                return if v8_reads_it {
                    (Verdict::Unknown, format!("serde_json: {e}"))
                } else {
                    (Verdict::Reject, format!("meta is not JSON: {e}"))
                };
            }
        }
    };
    // `meta === null || typeof meta !== 'object'`: arrays pass.
    if !(meta.is_object() || meta.is_array()) {
        return (Verdict::Reject, "meta is not an object".into());
    }
    if ty == COMPILE {
        return (Verdict::Accept, "Compile".into());
    }
    let source_len = meta.get("sourceLen");
    let integer_in_body = match source_len {
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f.fract() == 0.0 && f >= 0.0 && f <= body_len as f64),
        _ => false,
    };
    if !integer_in_body {
        let shown: String = format!("{source_len:?}").chars().take(80).collect();
        return (Verdict::Reject, format!("sourceLen {shown} of a body of {body_len}"));
    }
    if !meta.get("key").is_some_and(Value::is_string) {
        return (Verdict::Reject, "no key".into());
    }
    (Verdict::Accept, "Run".into())
}

// ---- running a case ------------------------------------------------------------------------------

#[derive(Debug)]
struct Outcome {
    status: Option<std::process::ExitStatus>,
    hung: bool,
    frames: Vec<Frame>,
    decode_error: Option<String>,
    /// Bytes of a frame cut off by the process's exit (a write still pending when it called exit).
    truncated_at_exit: usize,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn spawn_and_run(bootstrap: &Path, case: &Case) -> Outcome {
    let start = Instant::now();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(NODE);
    cmd.arg("--max-old-space-size=64")
        .arg(bootstrap)
        .env_clear()
        .env("PATH", "/usr/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child between fork and exec and makes only the
    // async-signal-safe calls fcntl and dup2, allocating nothing. `fd` is open in the child because
    // `theirs` lives in the parent until spawn() has returned.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn node");
    drop(theirs);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });

    let mut writer_sock = ours.try_clone().expect("dup socket");
    let stream = case.stream.clone();
    let writes = case.writes.clone();
    // As the daemon does (spawner.rs), nothing is sent before the runtime's Ready, unless asked to.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let wait_ready = case.wait_ready;
    let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            if wait_ready {
                let _ = ready_rx.recv_timeout(DEADLINE);
            }
            let mut at = 0;
            for n in writes {
                let end = (at + n).min(stream.len());
                if writer_sock.write_all(&stream[at..end]).is_err() {
                    return;
                }
                at = end;
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = writer_sock.write_all(&stream[at..]);
            written.store(true, Ordering::SeqCst);
        })
    };

    // The end of the stream (the daemon closing its end) comes once every answer the model is sure of has
    // arrived, or after a quiet spell: a runtime that is closed on exits 0 at once, dropping answers still
    // being written, which the daemon would not want anyway.
    let expect = model(&case.stream);
    let sure_answers = expect.frames.iter().filter(|f| f.1 == Verdict::Accept).count();
    let quiet_for = if expect.rejected || expect.frames.iter().any(|f| f.1 == Verdict::Unknown) {
        Duration::from_millis(1000)
    } else {
        Duration::from_millis(500)
    };
    let mut shut = false;
    let mut last_activity = Instant::now();
    let mut reader = ours;
    reader.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    let mut decode_error = None;
    let mut buf = vec![0u8; 1 << 16];
    let mut hung = false;
    loop {
        if start.elapsed() > DEADLINE {
            hung = true;
            break;
        }
        if !shut && written.load(Ordering::SeqCst) {
            let answers =
                frames.iter().filter(|f| matches!(f, Frame::Result { .. } | Frame::Error { .. } | Frame::Compiled { .. })).count();
            let all_in = answers >= sure_answers && !expect.rejected && quiet_for < Duration::from_millis(1000);
            if all_in || last_activity.elapsed() >= quiet_for {
                let _ = reader.shutdown(std::net::Shutdown::Write);
                shut = true;
            }
        }
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                last_activity = Instant::now();
                if decode_error.is_none() {
                    decoder.feed(&buf[..n]);
                    loop {
                        match decoder.next() {
                            Ok(Some(f)) => {
                                frames.push(f);
                                let _ = ready_tx.send(());
                            }
                            Ok(None) => break,
                            Err(e) => {
                                decode_error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut | IoErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    drop(ready_tx);
    let truncated_at_exit = decoder.buffered();
    while !hung {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > DEADLINE => hung = true,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for node: {e}"),
        }
    }
    if hung {
        let _ = child.kill();
    }
    // Reaps it (or returns the status try_wait already reaped).
    let status = child.wait().ok();
    let _ = writer.join();
    Outcome {
        status,
        hung,
        frames,
        decode_error,
        truncated_at_exit,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

#[derive(Default)]
struct Stats {
    cases: AtomicU64,
    accepted_streams: AtomicU64,
    rejected_streams: AtomicU64,
    answers: AtomicU64,
    unknown_frames: AtomicU64,
    unknown_accepted: AtomicU64,
    exit70_without_log: AtomicU64,
    truncated_at_exit: AtomicU64,
    /// Rust decoder refuses a Run/Compile (as the daemon's encoder never sends) that bootstrap.js answers.
    js_more_lenient: AtomicU64,
    failures: AtomicU64,
    max_ms: AtomicU64,
}

/// Checks an outcome against the model; returns the failures found.
fn check(case: &Case, out: &Outcome, stats: &Stats) -> Vec<String> {
    let mut bad = Vec::new();
    let expect = model(&case.stream);
    if out.hung {
        bad.push(format!("hang: no exit within {DEADLINE:?}"));
        return bad;
    }
    let status = out.status.expect("an exit status");
    if let Some(sig) = status.signal() {
        bad.push(format!("killed by signal {sig}"));
    }
    let code = status.code();
    if !matches!(code, Some(0) | Some(70)) {
        bad.push(format!("exit status {status:?}, expected 0 or 70"));
    }
    if out.truncated_at_exit > 0 {
        stats.truncated_at_exit.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(e) = &out.decode_error {
        bad.push(format!("wrote a stream runtime::Decoder refuses: {e}"));
    }
    if !out.stdout.is_empty() || !out.stderr.is_empty() {
        bad.push(format!("wrote to stdout {:?} / stderr {:?}", trim(&out.stdout), trim(&out.stderr)));
    }
    match out.frames.first() {
        Some(Frame::Ready { .. }) => {}
        other => bad.push(format!("first frame is not Ready: {other:?}")),
    }
    let mut answers: HashMap<u32, usize> = HashMap::new();
    for (i, f) in out.frames.iter().enumerate() {
        if !f.frame_type().sent_by_sandbox() {
            bad.push(format!("sent a {} frame", f.frame_type()));
        }
        if i > 0 && matches!(f, Frame::Ready { .. }) {
            bad.push("a second Ready".into());
        }
        if matches!(f, Frame::Result { .. } | Frame::Error { .. } | Frame::Compiled { .. }) {
            *answers.entry(f.id()).or_default() += 1;
            stats.answers.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Answerable frames per id: before the cut, certainly (Accept) and possibly (Unknown).
    let mut must: HashMap<u32, usize> = HashMap::new();
    let mut may: HashMap<u32, usize> = HashMap::new();
    for (id, verdict, _) in &expect.frames {
        match verdict {
            Verdict::Accept => {
                *must.entry(*id).or_default() += 1;
                *may.entry(*id).or_default() += 1;
            }
            Verdict::Unknown => {
                stats.unknown_frames.fetch_add(1, Ordering::Relaxed);
                *may.entry(*id).or_default() += 1;
            }
            Verdict::Reject => {}
        }
    }
    let any_unknown = expect.frames.iter().any(|f| f.1 == Verdict::Unknown);
    for (id, n) in &answers {
        let limit = may.get(id).copied().unwrap_or(0);
        if *n > limit {
            bad.push(format!("{n} answers for id {id}, at most {limit} frames could be answered"));
        }
    }
    match code {
        Some(0) => {
            stats.accepted_streams.fetch_add(1, Ordering::Relaxed);
            if expect.rejected {
                let why = &expect.frames.last().unwrap().2;
                bad.push(format!("exit 0 on a stream with a malformed frame ({why})"));
            }
            for (id, n) in &must {
                let got = answers.get(id).copied().unwrap_or(0);
                if got < *n {
                    bad.push(format!("{got} answers for id {id}, {n} frames needed one"));
                }
            }
            if any_unknown {
                stats.unknown_accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(70) => {
            stats.rejected_streams.fetch_add(1, Ordering::Relaxed);
            if !expect.rejected && !any_unknown {
                bad.push(format!("exit 70 on a stream the model accepts: {:?}", expect.frames));
            }
            let said_why = out.frames.iter().any(|f| {
                matches!(f, Frame::Log { id: 0, level: LogLevel::Error, message } if String::from_utf8_lossy(message).contains("protocol error"))
            });
            if !said_why {
                stats.exit70_without_log.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {}
    }
    // Leniency beyond the Rust decoder: frames the daemon's encoder could never produce but that
    // bootstrap.js answers (counted, not a failure: the daemon is the trusted side).
    if code == Some(0) {
        let mut d = Decoder::new();
        d.feed(&case.stream);
        let mut strict_ok = true;
        loop {
            match d.next() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    strict_ok = false;
                    break;
                }
            }
        }
        if !strict_ok {
            stats.js_more_lenient.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats.max_ms.fetch_max(out.elapsed.as_millis() as u64, Ordering::Relaxed);
    bad
}

fn trim(s: &str) -> String {
    s.chars().take(400).collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn save(dir: &Path, case: &Case, failures: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("artifacts dir");
    let kind: String = failures[0].split(|c: char| !c.is_ascii_alphanumeric()).take(3).collect::<Vec<_>>().join("_");
    let path = dir.join(format!("{kind}-{:016x}.bin", fnv(&case.stream)));
    std::fs::write(&path, &case.stream).expect("write artifact");
    let mut meta = case.writes.iter().map(|n| format!("{n}\n")).collect::<String>();
    meta.push_str("# failures:\n");
    for f in failures {
        meta.push_str(&format!("# {}\n", trim(f)));
    }
    std::fs::write(path.with_extension("writes"), meta).expect("write artifact writes");
    path
}

fn load_case(path: &Path) -> Case {
    let stream = std::fs::read(path).expect("read case");
    let writes = std::fs::read_to_string(path.with_extension("writes"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    Case { stream, writes, wait_ready: true }
}

fn read_corpus(dirs: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                if b.len() <= 1 << 20 {
                    files.push(b);
                }
            }
        }
    }
    files
}

// ---- seeds for frames_rust ---------------------------------------------------------------------

fn sample_frames() -> Vec<Frame> {
    let run = |id, task: Option<&str>, key: &str, source: &'static [u8], data: &'static [u8]| Frame::Run {
        id,
        meta: RunMeta { tenant: "acme".into(), task: task.map(Into::into), request_id: format!("req-{id}"), key: key.into() },
        source: Bytes::from_static(source),
        cache: Bytes::new(),
        data: Bytes::from_static(data),
    };
    vec![
        run(1, Some("hello"), "task:hello:abc", b"module.exports = (d) => d;", br#"{"x":[1,2,"\u00e9"]}"#),
        run(u32::MAX, None, "adhoc:0123", b"", b""),
        Frame::Compile {
            id: 7,
            meta: CompileMeta { tenant: "acme".into(), task: Some("t".into()), cache: true },
            source: Bytes::from_static(b"let x = ;"),
        },
        Frame::Compile { id: 8, meta: CompileMeta { tenant: "acme".into(), task: None, cache: false }, source: Bytes::new() },
        Frame::Ready { pid: 4242, node: "v20.20.2".into() },
        Frame::Result { id: 3, json: Bytes::from_static(b"{\"ok\":true}") },
        Frame::Result { id: 3, json: Bytes::from_static(b"null") },
        Frame::Error { id: 4, kind: ErrorKind::TaskError, message: "Error: boom\n    at x".into() },
        Frame::Error { id: 5, kind: ErrorKind::CompileError, message: "SyntaxError at line 1, column 9".into() },
        Frame::Log { id: 0, level: LogLevel::Log, message: Bytes::from_static(b"outside") },
        Frame::Log { id: 9, level: LogLevel::Info, message: Bytes::new() },
        Frame::Log { id: 9, level: LogLevel::Warn, message: Bytes::from_static(b"w") },
        Frame::Log { id: 9, level: LogLevel::Error, message: Bytes::from_static(b"\xff not utf-8") },
        Frame::Log { id: 9, level: LogLevel::Debug, message: Bytes::from_static(b"d") },
        Frame::Compiled { id: 6, cache: Bytes::new() },
    ]
}

fn write_seeds(dir: &Path) {
    std::fs::create_dir_all(dir).expect("seed dir");
    let frames = sample_frames();
    let mut all = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let bytes = encode_to_vec(f).unwrap();
        all.extend_from_slice(&bytes);
        // Prefix 0: fed in one piece. Then the same with chunk sizes 1, 2, 5.
        let mut one = vec![0u8];
        one.extend_from_slice(&bytes);
        std::fs::write(dir.join(format!("seed-{i:02}")), &one).unwrap();
    }
    let mut whole = vec![3u8, 0, 1, 4];
    whole.extend_from_slice(&all);
    std::fs::write(dir.join("seed-all"), &whole).unwrap();
    // A header error and a body error after a good frame.
    let mut bad = vec![0u8];
    bad.extend_from_slice(&encode_to_vec(&frames[15 - 1]).unwrap());
    bad.extend_from_slice(&[0, 0, 0, 9, 99, 0, 0, 0, 1, 0, 0, 0, 0]);
    std::fs::write(dir.join("seed-bad-type"), &bad).unwrap();
    println!("wrote {} seeds to {}", frames.len() + 2, dir.display());
}

// ---- main ----------------------------------------------------------------------------------------

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut iterations: u64 = 200;
    let mut seconds: Option<u64> = None;
    let mut seed: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut corpus_dirs = vec![manifest.join("../corpus/frames_rust")];
    let mut artifacts = manifest.join("../artifacts/js_frames");
    let mut bootstrap = manifest.join("../../runtime/js/bootstrap.js");
    let mut jobs = 1usize;
    let mut replay = None;
    let mut send_before_ready = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--iterations" => iterations = val().parse().expect("--iterations N"),
            "--seconds" => seconds = Some(val().parse().expect("--seconds S")),
            "--seed" => seed = val().parse().expect("--seed X"),
            "--corpus" => corpus_dirs.push(PathBuf::from(val())),
            "--artifacts" => artifacts = PathBuf::from(val()),
            "--bootstrap" => bootstrap = PathBuf::from(val()),
            "--jobs" => jobs = val().parse().expect("--jobs J"),
            "--replay" => replay = Some(PathBuf::from(val())),
            "--send-before-ready" => send_before_ready = true,
            "--write-seeds" => return write_seeds(Path::new(&val())),
            "-h" | "--help" => {
                println!("js_frames [--iterations N] [--seconds S] [--seed X] [--corpus DIR]... [--artifacts DIR] [--bootstrap FILE] [--jobs J] [--send-before-ready] | --replay FILE [--send-before-ready] | --write-seeds DIR");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let bootstrap = bootstrap.canonicalize().expect("bootstrap.js");
    let stats = Stats::default();
    if let Some(path) = replay {
        let mut case = load_case(&path);
        case.wait_ready = !send_before_ready;
        let expect = model(&case.stream);
        println!("model: rejected {}, frames:", expect.rejected);
        for (id, v, why) in &expect.frames {
            println!("  id {id}: {v:?} ({})", trim(why));
        }
        let out = spawn_and_run(&bootstrap, &case);
        println!("status {:?} hung {} in {:?}", out.status, out.hung, out.elapsed);
        for f in &out.frames {
            let s = format!("{f:?}");
            println!("  {}", s.chars().take(300).collect::<String>());
        }
        let bad = check(&case, &out, &stats);
        for b in &bad {
            println!("FAIL: {b}");
        }
        std::process::exit(if bad.is_empty() { 0 } else { 1 });
    }

    let corpus = Arc::new(read_corpus(&corpus_dirs));
    println!("js_frames: seed {seed}, {} corpus inputs, bootstrap {}", corpus.len(), bootstrap.display());
    let stats = Arc::new(stats);
    let started = Instant::now();
    let next_case = Arc::new(AtomicU64::new(0));
    let found = Arc::new(Mutex::new(Vec::<PathBuf>::new()));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|w| {
            let (corpus, stats, next_case, found, bootstrap, artifacts) =
                (corpus.clone(), stats.clone(), next_case.clone(), found.clone(), bootstrap.clone(), artifacts.clone());
            std::thread::spawn(move || loop {
                let n = next_case.fetch_add(1, Ordering::Relaxed);
                let out_of_time = seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s));
                if (seconds.is_none() && n >= iterations) || out_of_time {
                    return;
                }
                let mut rng = Rng(seed ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (w as u64));
                let mut case = gen_case(&mut rng, &corpus);
                case.wait_ready = !send_before_ready;
                let out = spawn_and_run(&bootstrap, &case);
                let bad = check(&case, &out, &stats);
                let done = stats.cases.fetch_add(1, Ordering::Relaxed) + 1;
                if !bad.is_empty() {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let path = save(&artifacts, &case, &bad);
                    eprintln!("case {n}: FAIL {} -> {}", trim(&bad.join("; ")), path.display());
                    found.lock().unwrap().push(path);
                }
                if done % 500 == 0 {
                    println!("  {done} cases in {:.0?}", started.elapsed());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let s = &*stats;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "js_frames: {} cases in {:.1?}: {} streams ended in exit 0, {} in exit 70; {} answers; {} frames the model could not judge ({} cases of them accepted); \
         {} exits 70 without the protocol-error Log; {} exits with a frame half written; {} accepted streams runtime::Decoder would refuse; slowest case {} ms; {} failures",
        g(&s.cases), started.elapsed(), g(&s.accepted_streams), g(&s.rejected_streams), g(&s.answers), g(&s.unknown_frames), g(&s.unknown_accepted),
        g(&s.exit70_without_log), g(&s.truncated_at_exit), g(&s.js_more_lenient), g(&s.max_ms), g(&s.failures)
    );
    let found = found.lock().unwrap();
    if !found.is_empty() {
        println!("failing cases saved:");
        for p in found.iter() {
            println!("  {}", p.display());
        }
        std::process::exit(1);
    }
}
