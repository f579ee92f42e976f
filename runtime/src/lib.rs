//! The taskcell runtime: the daemon (`taskcell serve`) and the sandbox runtime it drives.
//!
//! | module | owns |
//! | --- | --- |
//! | [`protocol`] | the frame protocol between the daemon and the Node runtime in each sandbox (docs/protocol.md): typed frames, an encoder, an incremental decoder safe to point at a hostile sandbox; re-exported at the crate root |
//! | [`BOOTSTRAP_JS`] | the other implementation of the protocol, `js/bootstrap.js`, which runs in every sandbox |
//! | [`daemon`] | `taskcell serve`: configuration, the event loop (`daemon::server`), the HTTP front (`daemon::http`, `daemon::api`, `daemon::routes`), the task store, the sandbox spawners |
//! | [`args`], [`signals`] | command-line values and signals as descriptors, shared with the binary's other commands |
//!
//! Sandboxes themselves are the `jailer` crate's: this crate asks it for them and knows how to talk to what
//! runs inside; the jailer knows nothing of HTTP, tenants or pools. The `taskcell` binary is a thin `main`
//! over this crate (and its client commands).

pub mod args;
pub mod daemon;
pub mod protocol;
pub mod signals;

pub use protocol::{
    encode, encode_to_vec, CompileMeta, DecodeError, Decoder, EncodeError, ErrorKind, Frame, FrameType, HttpRequestMeta, LogLevel, RunMeta,
    SecretValues, HEADER_LEN, MAX_FRAME,
};

/// The runtime's JavaScript, to be installed in the rootfs as `/taskcell/bootstrap.js`.
pub const BOOTSTRAP_JS: &str = include_str!("../js/bootstrap.js");

/// Where the bootstrap lives inside the sandbox.
pub const BOOTSTRAP_PATH: &str = "/taskcell/bootstrap.js";
/// Where `serve --modules DIR` binds DIR in a sandbox; runtime/js/modules.js reads it from there.
pub const MODULES_PATH: &str = "/taskcell/modules";

/// The egress proxy's port on 127.0.0.1 inside every sandbox (docs/protocol.md, "Egress"): the daemon's
/// listener, made in the sandbox's network namespace; bootstrap.js has the same number.
pub const EGRESS_PORT: u16 = 3128;

/// The same proxy's Unix stream socket, an abstract name in the sandbox's network namespace: the one the
/// bootstrap uses (bootstrap.js has the same name), because Node reads a Unix socket for a third less CPU than
/// TCP over loopback, and a download's rate is Node's. Node 20's libuv connects to an abstract name with the
/// whole of `sun_path` (the name padded with NULs to 107 bytes), so that is the name the daemon binds.
pub const EGRESS_SOCKET: &str = "taskcell-egress";

/// `EGRESS_SOCKET` as bound: padded with NULs to the whole of `sun_path` after its leading NUL.
pub fn egress_socket_name() -> [u8; 107] {
    let mut name = [0u8; 107];
    name[..EGRESS_SOCKET.len()].copy_from_slice(EGRESS_SOCKET.as_bytes());
    name
}

/// Largest result the runtime sends, in bytes of JSON text (the API's default result limit). Larger
/// results become a `task_error` inside the sandbox.
pub const RESULT_LIMIT: usize = 1024 * 1024;

/// An error and its sources on one line: "cgroup: writing \"5\" to /x: Permission denied".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
