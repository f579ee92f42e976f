//! Child side of the network namespace (created by the `clone` in [`super::clone_child`]), which holds only
//! the loopback device: bring `lo` up, so that tenant code can run an HTTP server and client on 127.0.0.1
//! and ::1; there is no other device and no route out. The parent has no part in it.

use super::errno;

/// Set IFF_UP on `lo` with the SIOCSIFFLAGS ioctl (netlink would need a parser for nothing more).
pub(super) fn loopback_up() -> Result<(), i32> {
    // SAFETY: a plain socket call; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `req` is a zeroed ifreq with a NUL-terminated name of 2 bytes; the ioctls read and write only it.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        rc
    };
    let err = errno();
    // SAFETY: `fd` is the socket opened above and owned here.
    unsafe { libc::close(fd) };
    if rc < 0 {
        Err(err)
    } else {
        Ok(())
    }
}
