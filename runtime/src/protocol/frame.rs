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
    Ready = 16,
    Result = 17,
    Error = 18,
    Log = 19,
    Compiled = 20,
}

impl FrameType {
    /// The frame type for a type byte, or `None` for a byte the protocol does not define.
    pub fn from_u8(ty: u8) -> Option<Self> {
        Some(match ty {
            1 => Self::Run,
            2 => Self::Compile,
            16 => Self::Ready,
            17 => Self::Result,
            18 => Self::Error,
            19 => Self::Log,
            20 => Self::Compiled,
            _ => return None,
        })
    }

    /// The name docs/protocol.md uses for this type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "Run",
            Self::Compile => "Compile",
            Self::Ready => "Ready",
            Self::Result => "Result",
            Self::Error => "Error",
            Self::Log => "Log",
            Self::Compiled => "Compiled",
        }
    }

    /// Whether a sandbox may send this type. The decoder reads both directions; the daemon must treat a
    /// `Run` or `Compile` from a sandbox as the protocol error it is.
    pub fn sent_by_sandbox(self) -> bool {
        !matches!(self, Self::Run | Self::Compile)
    }

    /// Which ids a frame of this type may carry: Ready is never tied to an invocation, Log may or may
    /// not be, everything else answers or starts one and so needs a non-zero id.
    pub(crate) fn id_ok(self, id: u32) -> bool {
        match self {
            Self::Ready => id == 0,
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
    Run {
        id: u32,
        meta: RunMeta,
        source: Bytes,
        cache: Bytes,
        data: Bytes,
    },
    /// Syntax-check a task's source without keeping or running it.
    Compile {
        id: u32,
        meta: CompileMeta,
        source: Bytes,
    },
    /// The runtime has loaded and waits for work (always id 0).
    Ready { pid: u32, node: String },
    /// An invocation's result. The decoder guarantees that `json` is UTF-8 JSON text.
    Result { id: u32, json: Bytes },
    /// An invocation or compile check failed.
    Error {
        id: u32,
        kind: ErrorKind,
        message: String,
    },
    /// A `console.*` call; id 0 when no invocation wrote it. `message` is meant to be UTF-8 but comes
    /// from tenant code: convert it lossily.
    Log {
        id: u32,
        level: LogLevel,
        message: Bytes,
    },
    /// The answer to a `Compile` whose source compiled; `cache` is the V8 code cache it was asked for (empty
    /// when not asked, or when V8 made none).
    Compiled { id: u32, cache: Bytes },
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Run { .. } => FrameType::Run,
            Self::Compile { .. } => FrameType::Compile,
            Self::Ready { .. } => FrameType::Ready,
            Self::Result { .. } => FrameType::Result,
            Self::Error { .. } => FrameType::Error,
            Self::Log { .. } => FrameType::Log,
            Self::Compiled { .. } => FrameType::Compiled,
        }
    }

    /// The invocation id the frame belongs to (0 for `Ready` and for logs outside any invocation).
    pub fn id(&self) -> u32 {
        match self {
            Self::Ready { .. } => 0,
            Self::Run { id, .. }
            | Self::Compile { id, .. }
            | Self::Result { id, .. }
            | Self::Error { id, .. }
            | Self::Log { id, .. }
            | Self::Compiled { id, .. } => *id,
        }
    }
}

/// The meta of a `Run` frame, apart from `sourceLen`, which the encoder derives from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMeta {
    pub tenant: String,
    /// `None` for ad-hoc code.
    pub task: Option<String>,
    pub request_id: String,
    /// `task:<name>:<sha256>` or `adhoc:<sha256>`: the name of the compiled code inside the sandbox.
    pub key: String,
}

/// The meta of a `Compile` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileMeta {
    pub tenant: String,
    #[serde(default)]
    pub task: Option<String>,
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
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskError => "task_error",
            Self::CompileError => "compile_error",
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

/// The meta of frames that carry none (`Result`, `Compiled`): any object, contents ignored.
#[derive(Deserialize)]
pub(crate) struct NoMeta {}
