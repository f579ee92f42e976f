//! Writing frames. The daemon encodes `Run` and `Compile`; the sandbox-side frames are encodable too so
//! that tests (and tools) can speak for a sandbox. The encoder refuses what the decoder would refuse
//! because of its size, so an oversized frame is caught where it is made, not where it is read.

use serde::Serialize;

use super::frame::HEADER_LEN;
use super::frame::{
    ErrorMetaOut, Frame, FrameType, HttpResponseMetaOut, LogMeta, ReadyMetaOut, RunMetaOut, SecretsMeta, LEN_FIELD, MAX_FRAME,
};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("a {ty} frame would be {len} bytes long, over the limit of {MAX_FRAME}")]
    FrameTooLarge { ty: FrameType, len: usize },
    #[error("serialising the meta of a {ty} frame")]
    Meta {
        ty: FrameType,
        #[source]
        source: serde_json::Error,
    },
}

/// Appends `frame` to `out`. On error `out` is left as it was.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let result = encode_at(frame, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Encodes `frame` into a new buffer.
pub fn encode_to_vec(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode(frame, &mut out)?;
    Ok(out)
}

fn encode_at(frame: &Frame, out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
    let ty = frame.frame_type();
    out.extend_from_slice(&[0; HEADER_LEN]);

    // The meta goes straight into `out`; its length is patched into the header afterwards.
    let meta_start = out.len();
    match frame {
        Frame::Run { meta, source, cache, .. } => write_meta(
            ty,
            out,
            &RunMetaOut {
                tenant: &meta.tenant,
                task: meta.task.as_deref(),
                request_id: &meta.request_id,
                key: &meta.key,
                source_len: source.len(),
                cache_len: cache.len(),
                model: meta.model.as_deref().filter(|m| *m != "taskcell"),
                http: meta.http.as_ref(),
            },
        )?,
        Frame::Compile { meta, .. } => write_meta(ty, out, meta)?,
        Frame::Secrets { secrets } => write_meta(ty, out, &SecretsMeta { secrets: secrets.clone() })?,
        Frame::Ready { pid, node } => write_meta(ty, out, &ReadyMetaOut { pid: *pid, node })?,
        Frame::Error { kind, message, .. } => write_meta(ty, out, &ErrorMetaOut { kind: *kind, message })?,
        Frame::Log { level, .. } => write_meta(ty, out, &LogMeta { level: *level })?,
        Frame::HttpResponse { status, headers, .. } => write_meta(ty, out, &HttpResponseMetaOut { status: *status, headers })?,
        // meta_len 0 stands for `{}`.
        Frame::Result { .. } | Frame::Compiled { .. } => {}
    }
    let meta_len = out.len() - meta_start;

    let body: [&[u8]; 3] = match frame {
        Frame::Run { source, cache, data, .. } => [source, cache, data],
        Frame::Compile { source, .. } => [source, &[], &[]],
        Frame::Result { json, .. } => [json, &[], &[]],
        Frame::Log { message, .. } => [message, &[], &[]],
        Frame::Compiled { cache, .. } => [cache, &[], &[]],
        Frame::HttpResponse { body, .. } => [body, &[], &[]],
        Frame::Ready { .. } | Frame::Error { .. } | Frame::Secrets { .. } => [&[], &[], &[]],
    };
    let len = HEADER_LEN - LEN_FIELD + meta_len + body.iter().map(|b| b.len()).sum::<usize>();
    if len > MAX_FRAME {
        return Err(EncodeError::FrameTooLarge { ty, len });
    }
    for part in body {
        out.extend_from_slice(part);
    }

    // Both fit in u32: len <= MAX_FRAME, and meta_len < len.
    let header = &mut out[start..meta_start];
    header[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    header[4] = ty as u8;
    header[5..9].copy_from_slice(&frame.id().to_be_bytes());
    header[9..13].copy_from_slice(&(meta_len as u32).to_be_bytes());
    Ok(())
}

fn write_meta<T: Serialize>(ty: FrameType, out: &mut Vec<u8>, meta: &T) -> Result<(), EncodeError> {
    serde_json::to_writer(out, meta).map_err(|source| EncodeError::Meta { ty, source })
}
