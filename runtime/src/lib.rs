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
/// bootstrap uses where its Node can (bootstrap.js has the same name), because Node reads a Unix socket for a
/// third less CPU than TCP over loopback, and a download's rate is Node's. Node reaches abstract names from
/// libuv 1.46 on (Node 20.4); libuv 1.46 and 1.47 connect with the whole of `sun_path` (the name padded with
/// NULs), 1.48 and later with the name's own length: the daemon binds both forms ([`egress_socket_names`]).
/// An older Node tunnels through `EGRESS_PORT`.
pub const EGRESS_SOCKET: &str = "taskcell-egress";

/// `EGRESS_SOCKET` as bound: exactly, and padded with NULs to the whole of `sun_path` after its leading NUL.
pub fn egress_socket_names() -> (Vec<u8>, [u8; 107]) {
    let mut padded = [0u8; 107];
    padded[..EGRESS_SOCKET.len()].copy_from_slice(EGRESS_SOCKET.as_bytes());
    (EGRESS_SOCKET.as_bytes().to_vec(), padded)
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
