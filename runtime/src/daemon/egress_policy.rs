//! Egress policy, pure: a tenant's allow-list (`api.example.com:443`, `*.slack.com:443`, `10.1.2.3:5432`),
//! and which destination addresses are refused whatever a name resolves to (SSRF).
//!
//! The daemon resolves names itself and connects to the address it checked, so this module decides on two
//! things only: may this tenant reach `host:port` (the list), and may anyone reach this address (the
//! ranges). Every form an attacker uses to spell a refused address is reduced to the address first: IPv4 in
//! inet_aton's loose forms (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`), IPv6 with IPv4 inside it
//! (mapped `::ffff:127.0.0.1`, compatible `::127.0.0.1`, NAT64 `64:ff9b::7f00:1`, 6to4 `2002:7f00:1::`),
//! zone suffixes, brackets, trailing dots and upper case. Owns no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub host: HostPattern,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// A DNS name, lower case, without a trailing dot.
    Name(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself); stored as the suffix
    /// with its leading dot.
    Subdomains(String),
    /// An IP literal.
    Ip(IpAddr),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0:?} has no port: write host:port (e.g. api.example.com:443)")]
    NoPort(String),
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    #[error("{0:?}: not a DNS name, a *.name pattern or an IP address")]
    BadHost(String),
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let t = text.trim();
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or_else(|| RuleError::BadHost(text.into()))?;
            (h, p.strip_prefix(':').ok_or_else(|| RuleError::NoPort(text.into()))?)
        } else {
            t.rsplit_once(':').ok_or_else(|| RuleError::NoPort(text.into()))?
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| RuleError::BadPort(text.into()))?;
        let host = if let Some(suffix) = host.strip_prefix("*.") {
            let name = normalise_name(suffix).ok_or_else(|| RuleError::BadHost(text.into()))?;
            HostPattern::Subdomains(format!(".{name}"))
        } else if let Some(ip) = parse_ip(host) {
            HostPattern::Ip(ip)
        } else {
            HostPattern::Name(normalise_name(host).ok_or_else(|| RuleError::BadHost(text.into()))?)
        };
        Ok(Rule { host, port })
    }

    /// Whether this rule lets a connection to `host:port` through (`host` as the task gave it).
    pub fn allows(&self, host: &Destination, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        match (&self.host, host) {
            (HostPattern::Name(n), Destination::Name(h)) => n == h,
            (HostPattern::Subdomains(s), Destination::Name(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (HostPattern::Ip(a), Destination::Ip(b)) => a == b,
            _ => false,
        }
    }
}

/// What a task asked to connect to, reduced to one spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Name(String),
    Ip(IpAddr),
}

impl Destination {
    /// `None` for something that is neither an address nor a DNS name.
    pub fn parse(host: &str) -> Option<Destination> {
        let h = host.trim();
        let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
        if let Some(ip) = parse_ip(h) {
            return Some(Destination::Ip(ip));
        }
        normalise_name(h).map(Destination::Name)
    }
}

/// A DNS name in lower case without its trailing dot, if it is one (LDH labels of 1-63 bytes, 253 in all;
/// underscores allowed, as in service names). An all-numeric last label is not a name: it would be an
/// address in a form `parse_ip` did not take, and must not be looked up as one.
fn normalise_name(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return None;
    }
    let labels: Vec<&str> = n.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !labels.iter().all(label_ok) {
        return None;
    }
    if labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit() || b == b'x')) {
        return None;
    }
    Some(n)
}

/// An IP address in any spelling the C library or Node would connect to: IPv6 (with an optional `%zone`,
/// which is dropped), or IPv4 in inet_aton's forms.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    if t.contains(':') {
        let addr = t.split_once('%').map_or(t, |(a, _)| a);
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    parse_ipv4_loose(t).map(IpAddr::V4)
}

/// inet_aton: one to four parts, each decimal, octal (leading 0) or hex (0x); the last part fills the bytes
/// the others left (`127.1` is 127.0.0.1, `2130706433` too).
fn parse_ipv4_loose(t: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = t.split('.').collect();
    if parts.is_empty() || parts.len() > 4 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        let n = if digits.is_empty() && radix == 16 { 0 } else { u64::from_str_radix(digits, radix).ok()? };
        nums.push(n);
    }
    let (last, init) = nums.split_last()?;
    if init.iter().any(|n| *n > 255) {
        return None;
    }
    let room = 8 * (4 - init.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    let mut v: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    v |= last;
    Some(Ipv4Addr::from(v as u32))
}

/// A CIDR of `--egress-allow-private` (`10.0.0.0/8`, `fd00::/8`, a bare address for one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (a, p) = text.trim().split_once('/').unwrap_or((text.trim(), ""));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.parse().ok().filter(|n| *n <= max)? };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// Why an address is refused as a destination (unless an operator's CIDR allows it), or None for a public
/// unicast address. IPv6 forms that carry an IPv4 address are judged by it.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        // An IPv6 form of an IPv4 address goes where the IPv4 address does: judged by it.
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "unspecified (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] => "private (10.0.0.0/8)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [169, 254, 169, 254] => "the cloud metadata address (link-local)",
        [169, 254, ..] => "link-local (169.254.0.0/16)",
        [100, b, ..] if (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [198, 18 | 19, ..] => "benchmarking (198.18.0.0/15)",
        [224..=239, ..] => "multicast",
        [255, 255, 255, 255] => "broadcast",
        [240..=255, ..] => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique-local (fc00::/7)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local (fec0::/10)"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast"
    } else if s[0] == 0x100 && s[1..4] == [0, 0, 0] {
        "discard-only (100::/64)"
    } else if s[0] == 0x2001 && s[1] == 0xdb8 {
        "documentation (2001:db8::/32)"
    } else {
        return None;
    })
}

/// The IPv4 address inside an IPv6 one, for the forms that route to it: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`, deprecated but still parsed), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`), 6to4
/// (`2002:AABB:CCDD::/48`) and Teredo's obfuscated client (`2001:0::/32`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1) {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(v4(!s[6], !s[7]));
    }
    None
}

/// The whole check on an address: None when it may be reached, else why not.
pub fn check_address(ip: IpAddr, allowed_private: &[Cidr]) -> Option<&'static str> {
    let reason = refused_range(ip)?;
    let v4 = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    let allowed = allowed_private.iter().any(|c| c.contains(ip) || v4.is_some_and(|a| c.contains(a)));
    if allowed {
        None
    } else {
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        parse_ip(s).unwrap_or_else(|| panic!("{s} is an address"))
    }

    #[test]
    fn rules_parse_and_match_as_the_spec_says() {
        let r = Rule::parse("API.Example.com.:443").unwrap();
        assert_eq!(r, Rule { host: HostPattern::Name("api.example.com".into()), port: 443 });
        let d = |h: &str| Destination::parse(h).unwrap();
        assert!(r.allows(&d("api.example.com"), 443));
        assert!(r.allows(&d("API.EXAMPLE.COM."), 443));
        assert!(!r.allows(&d("api.example.com"), 80));
        assert!(!r.allows(&d("evil-api.example.com"), 443));
        let w = Rule::parse("*.slack.com:443").unwrap();
        assert!(w.allows(&d("hooks.slack.com"), 443));
        assert!(w.allows(&d("a.b.slack.com"), 443));
        assert!(!w.allows(&d("slack.com"), 443), "*. matches subdomains, not the name itself");
        assert!(!w.allows(&d("evilslack.com"), 443));
        assert!(!w.allows(&d("slack.com.evil.net"), 443));
        let v6 = Rule::parse("[2606:4700::1111]:853").unwrap();
        assert!(v6.allows(&d("[2606:4700:0:0::1111]"), 853));
        let v4 = Rule::parse("10.1.2.3:5432").unwrap();
        assert!(v4.allows(&d("10.1.2.3"), 5432));
        assert!(v4.allows(&d("167838211"), 5432), "the same address in another spelling");
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:65536",
            "example.com:+1",
            "exa mple.com:1",
            "*.:443",
            "[::1:443",
            "-x.com:1",
            "a..b:1",
            "1.2.3.999:80",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_spelling_of_loopback_and_metadata_is_refused() {
        let refused = [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "0177.0.0.1",
            "017700000001",
            "127.255.255.254",
            "0.0.0.0",
            "0",
            "::",
            "::1",
            "0:0:0:0:0:0:0:1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "fe80::1%lo",
            "fe80::1",
            "169.254.169.254",
            "0xa9fea9fe",
            "::ffff:169.254.169.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "fec0::1",
            "2001:db8::1",
        ];
        for a in refused {
            assert!(refused_range(ip(a)).is_some(), "{a} must be refused");
            assert!(check_address(ip(a), &[]).is_some(), "{a}");
        }
        for a in
            ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1", "100.128.0.1", "::ffff:8.8.8.8", "64:ff9b::808:808", "1.1.1.1"]
        {
            assert_eq!(refused_range(ip(a)), None, "{a} is public");
        }
    }

    #[test]
    fn the_operator_can_allow_a_private_range_in_both_spellings() {
        let allowed = [Cidr::parse("127.0.0.0/8").unwrap(), Cidr::parse("fd00::/8").unwrap()];
        assert_eq!(check_address(ip("127.0.0.1"), &allowed), None);
        assert_eq!(check_address(ip("::ffff:127.0.0.1"), &allowed), None, "the mapped form of an allowed address");
        assert_eq!(check_address(ip("fd00::5"), &allowed), None);
        assert!(check_address(ip("10.0.0.1"), &allowed).is_some());
        assert!(check_address(ip("::1"), &allowed).is_some(), "IPv6 loopback is not 127/8");
        assert_eq!(Cidr::parse("10.1.2.3").map(|c| c.prefix), Some(32));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0.0/8").unwrap().contains(ip("10.255.0.1")));
        assert!(!Cidr::parse("10.0.0.0/9").unwrap().contains(ip("10.128.0.1")));
    }

    #[test]
    fn names_that_are_addresses_in_disguise_are_not_names() {
        assert_eq!(Destination::parse("2130706433"), Some(Destination::Ip(ip("127.0.0.1"))));
        assert_eq!(Destination::parse("0x7f.0x0.0x0.0x1"), Some(Destination::Ip(ip("127.0.0.1"))));
        assert_eq!(Destination::parse("1.2.3.0x100"), None, "neither an address nor a name");
        assert_eq!(Destination::parse("example.com"), Some(Destination::Name("example.com".into())));
        assert_eq!(Destination::parse("a_b.example.com"), Some(Destination::Name("a_b.example.com".into())));
        assert_eq!(Destination::parse("ex ample.com"), None);
        assert_eq!(Destination::parse(""), None);
    }
}
