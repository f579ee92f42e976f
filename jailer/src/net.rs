//! The sandbox's network namespace from the parent's side: a listening socket made inside it for the daemon.
//!
//! A sandbox's namespace holds only `lo` (brought up by the child, `child/net.rs`), and stays so: egress goes
//! through the daemon. The daemon still needs an endpoint that tenant code can reach, so the parent makes a
//! TCP listener on 127.0.0.1 inside the sandbox's namespace and keeps it: the sandbox can connect to it (its
//! seccomp policy already allows connect on its own loopback), but never owns, closes or replaces it, and no
//! route, veth or filter is added. The socket belongs to the namespace it was made in, whichever thread later
//! accepts on it.

use std::io;
use std::net::{SocketAddrV4, TcpListener};
use std::os::fd::AsFd;

use nix::sched::{setns, CloneFlags};

use crate::Sandbox;

/// A non-blocking listener on `addr` inside the sandbox's network namespace.
///
/// The network namespace is per thread: a short-lived thread joins the sandbox's namespace (through its
/// pidfd, so that a recycled pid cannot name another process), binds and exits, so that no thread of the
/// daemon is ever left in a sandbox's namespace, whatever fails.
pub fn listen_inside(sandbox: &Sandbox, addr: SocketAddrV4) -> io::Result<TcpListener> {
    let pidfd = sandbox.pidfd().try_clone_to_owned()?;
    let thread = std::thread::Builder::new().name("netns-bind".into()).spawn(move || -> io::Result<TcpListener> {
        setns(pidfd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })?;
    thread.join().unwrap_or_else(|_| Err(io::Error::other("the thread binding inside the sandbox panicked")))
}
