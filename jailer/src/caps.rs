//! Capabilities.
//!
//! The sandbox's first process holds every capability of its new user namespace until the child drops them
//! (`child/caps.rs`), just before the seccomp filter and execve: the bounding set (so nothing can regain a
//! capability through a file), the ambient set, and the effective, permitted and inheritable sets. The parent's
//! part, here, is to learn before the fork how many capabilities this kernel has.

/// Parent side: the highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
}
