//! The frames of docs/protocol.md as Rust types: what each frame carries, the layout constants, and the
//! JSON shapes of the metas on the wire. Encoding lives in `encode.rs`, decoding in `decode.rs`; this
//! module owns no I/O.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The largest value of a frame's `len` field: an 8 MiB body plus room for the meta.
pub const MAX_FRAME: usize = 8 * 1024 * 1024 + 4 * 1024;

/// Bytes from the start of a frame to its meta: len (4), type (1), id (4), meta_len (4).
pub const HEADER_LEN: usize = 13;

/// The part of the header that `len` counts (everything after the len field): type, id, meta_len.
pub(crate) const LEN_FIELD: usize = 4;
pub(crate) const MIN_LEN: usize = HEADER_LEN - LEN_FIELD;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Run = 1,
    Compile = 2,
    Secrets = 3,
    Ready = 16,
    Result = 17,
    Error = 18,
    Log = 19,
    Compiled = 20,
    HttpResponse = 21,
}

impl FrameType {
    /// The frame type for a type byte, or `None` for a byte the protocol does not define.
    pub fn from_u8(ty: u8) -> Option<Self> {
        Some(match ty {
            1 => Self::Run,
            2 => Self::Compile,
            3 => Self::Secrets,
            16 => Self::Ready,
            17 => Self::Result,
            18 => Self::Error,
            19 => Self::Log,
            20 => Self::Compiled,
            21 => Self::HttpResponse,
            _ => return None,
        })
    }

    /// The name docs/protocol.md uses for this type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "Run",
            Self::Compile => "Compile",
            Self::Secrets => "Secrets",
            Self::Ready => "Ready",
            Self::Result => "Result",
            Self::Error => "Error",
            Self::Log => "Log",
            Self::Compiled => "Compiled",
            Self::HttpResponse => "HttpResponse",
        }
    }

    /// Whether a sandbox may send this type. The decoder reads both directions; the daemon must treat a
    /// `Run` or `Compile` from a sandbox as the protocol error it is.
    pub fn sent_by_sandbox(self) -> bool {
        !matches!(self, Self::Run | Self::Compile | Self::Secrets)
    }

    /// Which ids a frame of this type may carry: Ready is never tied to an invocation, Log may or may
    /// not be, everything else answers or starts one and so needs a non-zero id.
    pub(crate) fn id_ok(self, id: u32) -> bool {
        match self {
            Self::Ready | Self::Secrets => id == 0,
            Self::Log => true,
            _ => id != 0,
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One message between the daemon and a sandbox.
///
/// `Run` and `Compile` go from the daemon to the sandbox, the others from the sandbox to the daemon.
/// Body slices are `Bytes` views into the decoder's buffer, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Run an invocation. `source` is empty when the sandbox already has `meta.key` compiled; `cache` is a V8
    /// code cache for the source (made by a `Compile` of the same tenant's), or empty.
    Run { id: u32, meta: RunMeta, source: Bytes, cache: Bytes, data: Bytes },
    /// Syntax-check a task's source without keeping or running it.
    Compile { id: u32, meta: CompileMeta, source: Bytes },
    /// The tenant's secrets from now on (always id 0): sent before the first invocation that should see a
    /// changed set, not with every one.
    Secrets { secrets: SecretValues },
    /// The runtime has loaded and waits for work (always id 0).
    Ready { pid: u32, node: String },
    /// An invocation's result. The decoder guarantees that `json` is UTF-8 JSON text.
    Result { id: u32, json: Bytes },
    /// An invocation or compile check failed.
    Error { id: u32, kind: ErrorKind, message: String },
    /// A `console.*` call; id 0 when no invocation wrote it. `message` is meant to be UTF-8 but comes
    /// from tenant code: convert it lossily.
    Log { id: u32, level: LogLevel, message: Bytes },
    /// The answer to a `Compile` whose source compiled; `cache` is the V8 code cache it was asked for (empty
    /// when not asked, or when V8 made none).
    Compiled { id: u32, cache: Bytes },
    /// The answer of a Run that came with `meta.http` and was answered through Node-like `req`/`res` (a
    /// `webtask (ctx, req, res)`): the HTTP response as the task made it. The decoder guarantees a status
    /// of 200..=599 and header names and values that are safe to write into an HTTP/1.1 head
    /// ([`valid_header_name`], [`valid_header_value`]); dropping hop-by-hop headers is the daemon's job.
    HttpResponse { id: u32, status: u16, headers: Vec<(String, String)>, body: Bytes },
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Run { .. } => FrameType::Run,
            Self::Compile { .. } => FrameType::Compile,
            Self::Secrets { .. } => FrameType::Secrets,
            Self::Ready { .. } => FrameType::Ready,
            Self::Result { .. } => FrameType::Result,
            Self::Error { .. } => FrameType::Error,
            Self::Log { .. } => FrameType::Log,
            Self::Compiled { .. } => FrameType::Compiled,
            Self::HttpResponse { .. } => FrameType::HttpResponse,
        }
    }

    /// The invocation id the frame belongs to (0 for `Ready` and for logs outside any invocation).
    pub fn id(&self) -> u32 {
        match self {
            Self::Ready { .. } | Self::Secrets { .. } => 0,
            Self::Run { id, .. }
            | Self::Compile { id, .. }
            | Self::Result { id, .. }
            | Self::Error { id, .. }
            | Self::Log { id, .. }
            | Self::Compiled { id, .. }
            | Self::HttpResponse { id, .. } => *id,
        }
    }
}

/// A tenant's secrets by name. Its `Debug` shows the names only: a value must never reach a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(pub std::collections::BTreeMap<String, String>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The meta of a `Run` frame, apart from `sourceLen`, which the encoder derives from the source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunMeta {
    pub tenant: String,
    /// `None` for ad-hoc code.
    pub task: Option<String>,
    pub request_id: String,
    /// `task:<name>:<sha256>` or `adhoc:<sha256>` (with `@<model>` after `task:<name>` or `adhoc` for a
    /// model other than `taskcell`): the name of the compiled code inside the sandbox.
    pub key: String,
    /// The programming model that turns the source into the function called (`taskcell`, `webtask`,
    /// `openwhisk` or an operator's compiler); `None` is `taskcell`.
    pub model: Option<String>,
    /// Set for a request to the HTTP endpoint: then the Run's data is the request's body as it came.
    pub http: Option<HttpRequestMeta>,
}

/// The HTTP request a Run on the HTTP endpoint hands to the task (hop-by-hop headers already dropped).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HttpRequestMeta {
    pub method: String,
    /// `/{rest}` with the query string, as the client sent them.
    pub url: String,
    /// In the order they came, names as sent.
    pub headers: Vec<(String, String)>,
}

/// An HTTP header name as RFC 9110 allows it (a token), at most 256 bytes.
pub fn valid_header_name(name: &str) -> bool {
    const SPECIALS: &[u8] = b"!#$%&'*+-.^_`|~";
    !name.is_empty() && name.len() <= 256 && name.bytes().all(|b| b.is_ascii_alphanumeric() || SPECIALS.contains(&b))
}

/// An HTTP header value that cannot split or end a head: no control character but HTAB (so no CR, LF or
/// NUL), at most 8 KiB.
pub fn valid_header_value(value: &str) -> bool {
    value.len() <= 8 << 10 && value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// At most this many headers in an `HttpResponse`.
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// The meta of a `Compile` frame.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CompileMeta {
    pub tenant: String,
    #[serde(default)]
    pub task: Option<String>,
    /// The model whose compiler checks the source; `None` is `taskcell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Ask for the V8 code cache of the compiled source in the `Compiled` answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
}

/// The `kind` of an `Error` frame, spelt as the API's error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    TaskError,
    CompileError,
    /// The Run cannot be served as asked (a `webtask (ctx, req, res)` outside the HTTP endpoint, an
    /// `openwhisk` action given input that is not an object, a JSON body that does not parse): a 400.
    BadRequest,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskError => "task_error",
            Self::CompileError => "compile_error",
            Self::BadRequest => "bad_request",
        }
    }
}

/// The `level` of a `Log` frame: the `console` method that wrote it (`trace` and `assert` report as
/// `error`, `dir`, `table`, `count`, `time*` and `group*` as `log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Log,
    Info,
    Warn,
    Error,
    Debug,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Debug => "debug",
        }
    }
}

// The metas as they are spelt on the wire. Unknown fields are ignored so that either side can add an
// optional field without breaking the other.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunMetaOut<'a> {
    pub tenant: &'a str,
    pub task: Option<&'a str>,
    pub request_id: &'a str,
    pub key: &'a str,
    pub source_len: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<&'a HttpRequestMeta>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunMetaIn {
    pub tenant: String,
    #[serde(default)]
    pub task: Option<String>,
    pub request_id: String,
    pub key: String,
    pub source_len: u32,
    #[serde(default)]
    pub cache_len: u32,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub http: Option<HttpRequestMeta>,
}

#[derive(Serialize)]
pub(crate) struct HttpResponseMetaOut<'a> {
    pub status: u16,
    pub headers: &'a [(String, String)],
}

#[derive(Deserialize)]
pub(crate) struct HttpResponseMetaIn {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

#[derive(Serialize)]
pub(crate) struct ReadyMetaOut<'a> {
    pub pid: u32,
    pub node: &'a str,
}

#[derive(Deserialize)]
pub(crate) struct ReadyMetaIn {
    pub pid: u32,
    pub node: String,
}

#[derive(Serialize)]
pub(crate) struct ErrorMetaOut<'a> {
    pub kind: ErrorKind,
    pub message: &'a str,
}

#[derive(Deserialize)]
pub(crate) struct ErrorMetaIn {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct LogMeta {
    pub level: LogLevel,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SecretsMeta {
    pub secrets: SecretValues,
}

/// The meta of frames that carry none (`Result`, `Compiled`): any object, contents ignored.
#[derive(Deserialize)]
pub(crate) struct NoMeta {}
