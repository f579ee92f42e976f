//! Reading frames from a byte stream that may come from a hostile sandbox. Nothing here panics on any
//! input, and nothing is allocated on the say-so of the peer: a frame is only buffered once its length
//! has been checked against `MAX_FRAME`, and is refused as soon as its header shows it to be malformed,
//! without waiting for its body.

use bytes::{Buf, Bytes, BytesMut};
use serde::de::{DeserializeOwned, IgnoredAny};

use super::frame::HEADER_LEN;
use super::frame::{
    valid_header_name, valid_header_value, CompileMeta, ErrorMetaIn, Frame, FrameType, HttpResponseMetaIn, LogMeta, NoMeta, ReadyMetaIn,
    RunMeta, RunMetaIn, SecretsMeta, LEN_FIELD, MAX_FRAME, MIN_LEN,
};

/// Why a byte stream is not a valid frame stream. After any of these the stream cannot be resynchronised:
/// drop the peer (for a sandbox: kill it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame length {len} is over the limit of {MAX_FRAME}")]
    FrameTooLarge { len: u32 },
    #[error("frame length {len} is shorter than the {MIN_LEN} bytes of type, id and meta_len")]
    FrameTooShort { len: u32 },
    #[error("unknown frame type {ty}")]
    UnknownType { ty: u8 },
    #[error("a {ty} frame may not carry id {id}")]
    BadId { ty: FrameType, id: u32 },
    #[error("meta length {meta_len} overruns a {ty} frame of length {len}")]
    MetaOverrun { ty: FrameType, meta_len: u32, len: u32 },
    #[error("the meta of a {ty} frame is not a JSON object")]
    MetaNotObject { ty: FrameType },
    #[error("bad meta in a {ty} frame")]
    BadMeta {
        ty: FrameType,
        #[source]
        source: serde_json::Error,
    },
    #[error("sourceLen {source_len} and cacheLen {cache_len} overrun a Run body of {body_len} bytes")]
    SourceOverrun { source_len: u32, cache_len: u32, body_len: usize },
    #[error("a {ty} frame must have an empty body, not {len} bytes")]
    UnexpectedBody { ty: FrameType, len: usize },
    #[error("the body of a Result frame is not UTF-8")]
    ResultNotUtf8 {
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("the body of a Result frame is not JSON text")]
    ResultNotJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("an HttpResponse status of {status} (a final response is 200 to 599)")]
    BadStatus { status: u16 },
    #[error("an HttpResponse with {count} headers (at most {max})")]
    TooManyHeaders { count: usize, max: usize },
    #[error("an HttpResponse header name that is not a token: {name:?}")]
    BadHeaderName { name: String },
    #[error("an HttpResponse header {name} whose value holds a control character (CR, LF, NUL...) or is over 8 KiB")]
    BadHeaderValue { name: String },
    #[error("the stream was already refused by an earlier error")]
    Desynchronised,
}

/// An incremental frame decoder: `feed` it bytes as they arrive, then call `next` until it returns
/// `Ok(None)`. Used that way, it holds at most one partial frame (at most `4 + MAX_FRAME` bytes) plus what
/// the last `feed` added.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    failed: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// How many bytes are buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error every later call
    /// returns `Desynchronised`.
    #[allow(clippy::should_implement_trait)] // fallible, so not an Iterator
    pub fn next(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Desynchronised);
        }
        let result = self.decode_one();
        if result.is_err() {
            self.failed = true;
            self.buf = BytesMut::new();
        }
        result
    }

    fn decode_one(&mut self) -> Result<Option<Frame>, DecodeError> {
        // Check each header field as soon as it has arrived, so that garbage is refused at once
        // instead of after waiting for (and buffering) a body that is never coming.
        let Some(len) = be_u32(&self.buf, 0) else {
            return Ok(None);
        };
        if len as usize > MAX_FRAME {
            return Err(DecodeError::FrameTooLarge { len });
        }
        if (len as usize) < MIN_LEN {
            return Err(DecodeError::FrameTooShort { len });
        }
        let Some(&ty_byte) = self.buf.get(LEN_FIELD) else {
            return Ok(None);
        };
        let ty = FrameType::from_u8(ty_byte).ok_or(DecodeError::UnknownType { ty: ty_byte })?;
        let Some(id) = be_u32(&self.buf, 5) else {
            return Ok(None);
        };
        if !ty.id_ok(id) {
            return Err(DecodeError::BadId { ty, id });
        }
        let Some(meta_len) = be_u32(&self.buf, 9) else {
            return Ok(None);
        };
        if meta_len as usize > len as usize - MIN_LEN {
            return Err(DecodeError::MetaOverrun { ty, meta_len, len });
        }
        if self.buf.len() < LEN_FIELD + len as usize {
            return Ok(None);
        }

        let mut frame = self.buf.split_to(LEN_FIELD + len as usize).freeze();
        frame.advance(HEADER_LEN);
        let meta = frame.split_to(meta_len as usize);
        parse(ty, id, &meta, frame).map(Some)
    }
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn parse(ty: FrameType, id: u32, meta: &[u8], body: Bytes) -> Result<Frame, DecodeError> {
    let empty_body = |body: &Bytes| {
        if body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::UnexpectedBody { ty, len: body.len() })
        }
    };
    Ok(match ty {
        FrameType::Run => {
            let m: RunMetaIn = parse_meta(ty, meta)?;
            if m.source_len as u64 + m.cache_len as u64 > body.len() as u64 {
                return Err(DecodeError::SourceOverrun { source_len: m.source_len, cache_len: m.cache_len, body_len: body.len() });
            }
            let mut data = body;
            let source = data.split_to(m.source_len as usize);
            let cache = data.split_to(m.cache_len as usize);
            let meta = RunMeta { tenant: m.tenant, task: m.task, request_id: m.request_id, key: m.key, model: m.model, http: m.http };
            Frame::Run { id, meta, source, cache, data }
        }
        FrameType::Compile => {
            let meta: CompileMeta = parse_meta(ty, meta)?;
            Frame::Compile { id, meta, source: body }
        }
        FrameType::Secrets => {
            let m: SecretsMeta = parse_meta(ty, meta)?;
            empty_body(&body)?;
            Frame::Secrets { secrets: m.secrets }
        }
        FrameType::Ready => {
            let m: ReadyMetaIn = parse_meta(ty, meta)?;
            empty_body(&body)?;
            Frame::Ready { pid: m.pid, node: m.node }
        }
        FrameType::Result => {
            let _: NoMeta = parse_meta(ty, meta)?;
            // The daemon embeds the result in its response verbatim, so it must be JSON text here.
            let text = std::str::from_utf8(&body).map_err(|source| DecodeError::ResultNotUtf8 { source })?;
            serde_json::from_str::<IgnoredAny>(text).map_err(|source| DecodeError::ResultNotJson { source })?;
            Frame::Result { id, json: body }
        }
        FrameType::Error => {
            let m: ErrorMetaIn = parse_meta(ty, meta)?;
            empty_body(&body)?;
            Frame::Error { id, kind: m.kind, message: m.message }
        }
        FrameType::Log => {
            let m: LogMeta = parse_meta(ty, meta)?;
            Frame::Log { id, level: m.level, message: body }
        }
        FrameType::Compiled => {
            let _: NoMeta = parse_meta(ty, meta)?;
            Frame::Compiled { id, cache: body }
        }
        FrameType::HttpResponse => {
            let m: HttpResponseMetaIn = parse_meta(ty, meta)?;
            // These go into the daemon's response head: nothing may split it, whatever the sandbox sent.
            if !(200..=599).contains(&m.status) {
                return Err(DecodeError::BadStatus { status: m.status });
            }
            if m.headers.len() > super::frame::MAX_RESPONSE_HEADERS {
                return Err(DecodeError::TooManyHeaders { count: m.headers.len(), max: super::frame::MAX_RESPONSE_HEADERS });
            }
            for (name, value) in &m.headers {
                if !valid_header_name(name) {
                    return Err(DecodeError::BadHeaderName { name: name.chars().take(64).collect() });
                }
                if !valid_header_value(value) {
                    return Err(DecodeError::BadHeaderValue { name: name.clone() });
                }
            }
            Frame::HttpResponse { id, status: m.status, headers: m.headers, body }
        }
    })
}

/// Parses a meta, which must be a JSON object; an empty meta stands for `{}`.
fn parse_meta<T: DeserializeOwned>(ty: FrameType, meta: &[u8]) -> Result<T, DecodeError> {
    let meta: &[u8] = if meta.is_empty() { b"{}" } else { meta };
    // serde would also accept an array for a struct; the protocol says object.
    let first = meta.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(DecodeError::MetaNotObject { ty });
    }
    serde_json::from_slice(meta).map_err(|source| DecodeError::BadMeta { ty, source })
}
