//! `taskcell token --tenant T --ttl D [--key FILE]`: a bearer token for a node's TCP listener, printed on stdout.
//!
//! For operators, on a host that holds the nodes' token key (`serve --token-key`, the same file on every node):
//! the token is made here, with the daemon's own claims and signing (`daemon::auth`), and checked there.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::{ArgError, Flags};
use runtime::daemon::auth;

const USAGE: &str = "usage: taskcell token --tenant TENANT|'*' --ttl DURATION [--key FILE]
  prints a bearer token (JWT, HS256) for a node's --listen-tcp: TENANT's paths and logs only, or everything for *.
  DURATION: seconds, or a number with s, m, h or d (3600s, 1h, 7d). FILE: the nodes' --token-key
  (default /etc/taskcell/token.key; make one with: head -c 32 /dev/urandom > token.key && chmod 600 token.key)";

/// The longest a token may live: a stolen one cannot be revoked short of changing the key.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

struct Options {
    tenant: String,
    ttl: Duration,
    key: PathBuf,
}

fn parse(raw: Vec<String>) -> Result<Option<Options>, String> {
    let mut flags = Flags::new(raw);
    let (mut tenant, mut ttl, mut key) = (None, None, PathBuf::from("/etc/taskcell/token.key"));
    while let Some((flag, inline)) = flags.next_flag() {
        match flag.as_str() {
            "--tenant" => tenant = Some(flags.value(&flag, inline).map_err(|e| e.to_string())?),
            "--ttl" => ttl = Some(duration(&flags.value(&flag, inline).map_err(|e| e.to_string())?)?),
            "--key" => key = PathBuf::from(flags.value(&flag, inline).map_err(|e| e.to_string())?),
            "-h" | "--help" => return Ok(None),
            other => return Err(ArgError::Unknown(other.to_string()).to_string()),
        }
    }
    let tenant = tenant.ok_or("--tenant is required")?;
    let ttl = ttl.ok_or("--ttl is required")?;
    Ok(Some(Options { tenant, ttl, key }))
}

/// `90`, `90s`, `15m`, `1h`, `7d`: at least a second, at most [`MAX_TTL`].
fn duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--ttl {text:?}: a number of seconds, or with s, m, h or d (3600s, 1h, 7d)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("--ttl {text:?}: a number of seconds, or with s, m, h or d"))?;
    let ttl = Duration::from_secs(n.saturating_mul(scale));
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!("--ttl {text:?}: between 1 s and 366 days"));
    }
    Ok(ttl)
}

pub fn main(raw: Vec<String>) -> ExitCode {
    let o = match parse(raw) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("taskcell token: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let made = auth::read_key(&o.key)
        .map_err(|e| runtime::error_chain(&e))
        .and_then(|key| auth::issue(&key, &o.tenant, o.ttl).map_err(|e| runtime::error_chain(&e)));
    match made {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("taskcell token: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("3600s"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "0", "0s", "1w", "h", "-1s", "1.5h", "400d", "99999999999999999999d"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
