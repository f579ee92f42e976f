//! The event loop's sources as a type: what a mio token names, encoded and decoded in one place.
//!
//! Fixed sources have fixed tokens; connections and sandboxes live in generational slabs, and their tokens
//! carry the slot's generation, so that an event for a closed connection or a dead sandbox can never reach
//! the new owner of its slot (the slab refuses a stale key).

use mio::Token;

use super::front::Transport;
use crate::daemon::slab::Key;

/// Which of a sandbox's descriptors an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxFd {
    /// The frame socket.
    Socket,
    /// The pidfd: it is readable once the sandbox's first process has exited.
    Pid,
    /// Its stdout and stderr pipe.
    Output,
    /// One of the egress proxy's listeners inside its network namespace.
    Egress(Via),
}

/// Which of a sandbox's egress listeners (see `jailer::net`): the same tunnels behind both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// 127.0.0.1:3128, for tenant code that speaks CONNECT itself.
    Tcp,
    /// The abstract Unix socket the bootstrap uses, by the index of its name (exact, padded: see
    /// `crate::egress_socket_names`).
    Unix(u8),
}

/// Which end of an egress tunnel an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The connection the sandbox made to its egress listener.
    Inner,
    /// The daemon's connection to the destination.
    Outer,
}

/// One source of events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A front listener: the Unix socket, or the TCP port of `--listen-tcp`.
    Listener(Transport),
    Waker,
    Signals,
    Conn(Key),
    Sandbox(Key, SandboxFd),
    Tunnel(Key, End),
}

const CONN_KIND: usize = 1 << 60;
const SB_KIND: usize = 2 << 60;
const TUNNEL_KIND: usize = 3 << 60;
const GEN_MASK: usize = 0xff_ffff;

impl Source {
    /// Layout for slab members: kind in the top bits, then 24 bits of generation, the slot index, and (for a
    /// sandbox) three bits naming the descriptor.
    pub fn token(self) -> Token {
        match self {
            Source::Listener(Transport::Unix) => Token(0),
            Source::Listener(Transport::Tcp) => Token(3),
            Source::Waker => super::WAKER_TOKEN,
            Source::Signals => Token(2),
            Source::Conn(k) => Token(CONN_KIND | (k.gen as usize & GEN_MASK) << 32 | k.index as usize),
            Source::Sandbox(k, fd) => {
                let sub = match fd {
                    SandboxFd::Socket => 0,
                    SandboxFd::Pid => 1,
                    SandboxFd::Output => 2,
                    SandboxFd::Egress(Via::Tcp) => 3,
                    SandboxFd::Egress(Via::Unix(i)) => 4 + (i as usize & 1),
                };
                Token(SB_KIND | (k.gen as usize & GEN_MASK) << 32 | (k.index as usize) << 3 | sub)
            }
            Source::Tunnel(k, end) => {
                let sub = match end {
                    End::Inner => 0,
                    End::Outer => 1,
                };
                Token(TUNNEL_KIND | (k.gen as usize & GEN_MASK) << 32 | (k.index as usize) << 1 | sub)
            }
        }
    }

    /// The source a token names; None for one this loop never made. The generation is the low 24 bits of
    /// the slot's: the slab compares it (see `Slab::find`).
    pub fn of(t: Token) -> Option<Source> {
        let gen = ((t.0 >> 32) & GEN_MASK) as u32;
        let low = (t.0 & 0xffff_ffff) as u32;
        Some(match (t.0, t.0 & (0xf << 60)) {
            (0, _) => Source::Listener(Transport::Unix),
            (1, _) => Source::Waker,
            (2, _) => Source::Signals,
            (3, _) => Source::Listener(Transport::Tcp),
            (_, CONN_KIND) => Source::Conn(Key { index: low, gen }),
            (_, SB_KIND) => {
                let fd = match low & 7 {
                    0 => SandboxFd::Socket,
                    1 => SandboxFd::Pid,
                    2 => SandboxFd::Output,
                    3 => SandboxFd::Egress(Via::Tcp),
                    4 => SandboxFd::Egress(Via::Unix(0)),
                    5 => SandboxFd::Egress(Via::Unix(1)),
                    _ => return None,
                };
                Source::Sandbox(Key { index: low >> 3, gen }, fd)
            }
            (_, TUNNEL_KIND) => {
                let end = if low & 1 == 0 { End::Inner } else { End::Outer };
                Source::Tunnel(Key { index: low >> 1, gen }, end)
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_survives_the_round_trip() {
        let keys = [Key { index: 0, gen: 0 }, Key { index: 7, gen: 3 }, Key { index: u32::MAX >> 3, gen: 0xff_ffff }];
        let mut all = vec![Source::Listener(Transport::Unix), Source::Listener(Transport::Tcp), Source::Waker, Source::Signals];
        for k in keys {
            all.push(Source::Conn(k));
            for fd in [
                SandboxFd::Socket,
                SandboxFd::Pid,
                SandboxFd::Output,
                SandboxFd::Egress(Via::Tcp),
                SandboxFd::Egress(Via::Unix(0)),
                SandboxFd::Egress(Via::Unix(1)),
            ] {
                all.push(Source::Sandbox(k, fd));
            }
            for end in [End::Inner, End::Outer] {
                all.push(Source::Tunnel(Key { index: k.index >> 1, gen: k.gen }, end));
            }
        }
        for s in &all {
            assert_eq!(Source::of(s.token()), Some(*s), "{s:?}");
        }
        let tokens: std::collections::HashSet<usize> = all.iter().map(|s| s.token().0).collect();
        assert_eq!(tokens.len(), all.len(), "two sources share a token");
        assert_eq!(Source::of(Token(4 << 60)), None);
    }
}
