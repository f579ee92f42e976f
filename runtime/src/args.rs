//! Command-line flags shared by `serve` and `jail`: sizes, counts and paths with clear errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error("{flag} needs a value")]
    Missing { flag: String },
    #[error("{flag}: {value:?} is not a valid {what}")]
    Invalid { flag: String, value: String, what: &'static str },
    #[error("unknown flag {0}")]
    Unknown(String),
}

/// Walks `--flag value` and `--flag=value` pairs.
pub struct Flags {
    args: std::vec::IntoIter<String>,
}

impl Flags {
    pub fn new(args: Vec<String>) -> Flags {
        Flags { args: args.into_iter() }
    }

    /// The next flag and its inline value (`--a=b`), or None at the end or at `--`.
    pub fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.args.next()?;
        if arg == "--" {
            return None;
        }
        match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => Some((f.to_string(), Some(v.to_string()))),
            _ => Some((arg, None)),
        }
    }

    pub fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, ArgError> {
        inline.or_else(|| self.args.next()).ok_or_else(|| ArgError::Missing { flag: flag.into() })
    }

    pub fn rest(self) -> Vec<String> {
        self.args.collect()
    }
}

/// A small command's `--name VALUE` options, each a string (the last one given wins): their values by name,
/// or, after printing the usage (`-h`, `--help`: exit 0) or what is wrong with it (exit 2), the exit code.
pub fn named_values(command: &str, raw: Vec<String>, names: &[&str], usage: &str) -> Result<Vec<Option<String>>, std::process::ExitCode> {
    use std::process::ExitCode;
    let mut flags = Flags::new(raw);
    let mut values = vec![None; names.len()];
    while let Some((flag, inline)) = flags.next_flag() {
        if flag == "-h" || flag == "--help" {
            println!("{usage}");
            return Err(ExitCode::SUCCESS);
        }
        let Some(i) = names.iter().position(|n| *n == flag) else {
            eprintln!("{command}: unknown flag {flag}\n{usage}");
            return Err(ExitCode::from(2));
        };
        match flags.value(&flag, inline) {
            Ok(v) => values[i] = Some(v),
            Err(e) => {
                eprintln!("{command}: {e}\n{usage}");
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(values)
}

/// A byte count: plain digits or with a K, M or G suffix (powers of 1024).
pub fn bytes(flag: &str, value: &str) -> Result<u64, ArgError> {
    let invalid = || ArgError::Invalid { flag: flag.into(), value: value.into(), what: "byte count" };
    let v = value.trim();
    let (digits, shift) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 10),
        Some((i, 'm' | 'M')) => (&v[..i], 20),
        Some((i, 'g' | 'G')) => (&v[..i], 30),
        _ => (v, 0),
    };
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    n.checked_mul(1 << shift).filter(|n| *n > 0).ok_or_else(invalid)
}

pub fn count(flag: &str, value: &str) -> Result<u64, ArgError> {
    value.trim().parse().map_err(|_| ArgError::Invalid { flag: flag.into(), value: value.into(), what: "number" })
}

/// `HOST:INSIDE`.
pub fn bind(flag: &str, value: &str) -> Result<(PathBuf, PathBuf), ArgError> {
    match value.split_once(':') {
        Some((h, i)) if !h.is_empty() && i.starts_with('/') => Ok((PathBuf::from(h), PathBuf::from(i))),
        _ => Err(ArgError::Invalid { flag: flag.into(), value: value.into(), what: "HOST:/INSIDE pair" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(bytes("--memory", "67108864").unwrap(), 64 << 20);
        assert_eq!(bytes("--memory", "64M").unwrap(), 64 << 20);
        assert_eq!(bytes("--memory", "1g").unwrap(), 1 << 30);
        assert!(bytes("--memory", "0").is_err());
        assert!(bytes("--memory", "lots").is_err());
        assert!(bytes("--memory", "99999999999G").is_err());
    }

    #[test]
    fn binds() {
        assert_eq!(bind("--bind-ro", "/a:/b").unwrap(), (PathBuf::from("/a"), PathBuf::from("/b")));
        assert!(bind("--bind-ro", "/a").is_err());
        assert!(bind("--bind-ro", "/a:b").is_err());
    }

    #[test]
    fn flags_stop_at_double_dash() {
        let mut f = Flags::new(vec!["--pids".into(), "3".into(), "--memory=5".into(), "--".into(), "x".into()]);
        assert_eq!(f.next_flag(), Some(("--pids".into(), None)));
        assert_eq!(f.value("--pids", None).unwrap(), "3");
        assert_eq!(f.next_flag(), Some(("--memory".into(), Some("5".into()))));
        assert_eq!(f.next_flag(), None);
        assert_eq!(f.rest(), vec!["x".to_string()]);
    }
}
