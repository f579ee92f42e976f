//! The frame protocol between the taskcell daemon and the Node runtime inside each sandbox
//! (docs/protocol.md): typed frames, an encoder and an incremental decoder that is safe to point at a
//! hostile sandbox. The other implementation of the protocol is `js/bootstrap.js`, shipped here as
//! [`BOOTSTRAP_JS`]. This crate does no I/O and knows nothing of sandboxes or HTTP.

mod decode;
mod encode;
mod frame;

pub use decode::{DecodeError, Decoder};
pub use encode::{encode, encode_to_vec, EncodeError};
pub use frame::{
    CompileMeta, ErrorKind, Frame, FrameType, LogLevel, RunMeta, HEADER_LEN, MAX_FRAME,
};

/// The runtime's JavaScript, to be installed in the rootfs as `/taskcell/bootstrap.js`.
pub const BOOTSTRAP_JS: &str = include_str!("../js/bootstrap.js");

/// Where the bootstrap lives inside the sandbox.
pub const BOOTSTRAP_PATH: &str = "/taskcell/bootstrap.js";

/// Largest result the runtime sends, in bytes of JSON text (the API's default result limit). Larger
/// results become a `task_error` inside the sandbox.
pub const RESULT_LIMIT: usize = 1024 * 1024;
