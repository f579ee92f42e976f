//! The frame protocol between the taskcell daemon and the Node runtime inside each sandbox
//! (docs/protocol.md): typed frames, an encoder and an incremental decoder that is safe to point at a
//! hostile sandbox. The other implementation of the protocol is `js/bootstrap.js`. This module does no I/O
//! and knows nothing of sandboxes or HTTP.

mod decode;
mod encode;
mod frame;

pub use decode::{DecodeError, Decoder};
pub use encode::{encode, encode_to_vec, EncodeError};
pub use frame::{
    valid_header_name, valid_header_value, CompileMeta, ErrorKind, Frame, FrameType, HttpRequestMeta, LogLevel, RunMeta, SecretValues,
    HEADER_LEN, MAX_FRAME,
};
