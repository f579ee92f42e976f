//! The sandbox's network namespace from the parent's side: listening sockets made inside it for the daemon.
//!
//! A sandbox's namespace holds only `lo` (brought up by the child, `child/net.rs`), and stays so: egress goes
//! through the daemon. The daemon still needs an endpoint that tenant code can reach, so the parent makes
//! listeners inside the sandbox's namespace and keeps them: a TCP one on 127.0.0.1, and a Unix stream one
//! with an abstract name (the abstract namespace belongs to the network namespace, so only this sandbox can
//! reach it, and it needs no file in the sandbox's root). The sandbox can connect to them (its seccomp policy
//! already allows connect on its own loopback and Unix sockets), but never owns, closes or replaces them, and
//! no route, veth or filter is added. A socket belongs to the namespace it was made in, whichever thread
//! later accepts on it.

use std::io;
use std::net::{SocketAddrV4, TcpListener};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use nix::sched::{setns, CloneFlags};

use crate::Sandbox;

/// The daemon's endpoints inside one sandbox, all non-blocking: the TCP one, and one Unix one per name.
pub struct Endpoints {
    pub tcp: TcpListener,
    pub unix: Vec<UnixListener>,
}

/// Listeners on `addr` and on each abstract Unix name of `names` inside the sandbox's network namespace.
///
/// The network namespace is per thread: a short-lived thread joins the sandbox's namespace (through its
/// pidfd, so that a recycled pid cannot name another process), binds and exits, so that no thread of the
/// daemon is ever left in a sandbox's namespace, whatever fails.
pub fn listen_inside(sandbox: &Sandbox, addr: SocketAddrV4, names: &[&[u8]]) -> io::Result<Endpoints> {
    let pidfd = sandbox.pidfd().try_clone_to_owned()?;
    let names: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    let thread = std::thread::Builder::new().name("netns-bind".into()).spawn(move || -> io::Result<Endpoints> {
        setns(pidfd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let tcp = TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        let mut unix = Vec::with_capacity(names.len());
        for name in &names {
            let l = UnixListener::bind_addr(&SocketAddr::from_abstract_name(name)?)?;
            l.set_nonblocking(true)?;
            unix.push(l);
        }
        Ok(Endpoints { tcp, unix })
    })?;
    thread.join().unwrap_or_else(|_| Err(io::Error::other("the thread binding inside the sandbox panicked")))
}
