//! `NAME@VERSION` as `taskcell modules` takes it: an npm package name (plain or `@scope/name`) and an exact
//! semantic version, checked before anything runs, and the folder of the modules directory that holds it.
//!
//! The checks are what keeps a spec from being anything but a package: no `..`, no `/` but a scope's, no shell
//! or npm syntax (a range, a tag, a URL, a path, a git spec), so that what reaches npm's argv and the folder's
//! name is a plain name and a plain version. runtime/js/modules.js reads the same layout and orders versions
//! the same way.

use std::cmp::Ordering;
use std::fmt;
use std::path::PathBuf;

/// npm's limit on a package name's length.
const MAX_NAME: usize = 214;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub version: Version,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{spec:?} has no version: give an exact one, such as {example}")]
    NoVersion { spec: String, example: String },
    #[error("{spec:?}: {version:?} is not an exact version (a range or a tag is refused, so that the folder says what it holds); give one such as {name}@1.2.3 (`npm view {name} version` prints the newest)")]
    NotExact { spec: String, name: String, version: String },
    #[error("{spec:?}: {why}")]
    BadName { spec: String, why: &'static str },
}

impl Spec {
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        // A scope's own '@' is at 0; the version's is the last one.
        let at = text.rfind('@').filter(|&i| i > 0);
        let Some(at) = at else {
            check_name(text, text)?;
            return Err(SpecError::NoVersion { spec: text.into(), example: format!("{text}@1.2.3") });
        };
        let (name, version) = (&text[..at], &text[at + 1..]);
        check_name(text, name)?;
        let version =
            Version::parse(version).ok_or_else(|| SpecError::NotExact { spec: text.into(), name: name.into(), version: version.into() })?;
        Ok(Spec { name: name.into(), version })
    }

    /// The version's folder under the modules directory: `NAME@VERSION`, or `@SCOPE/NAME@VERSION`.
    pub fn folder(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version.text)
    }
}

/// npm's rules for a name (validate-npm-package-name), less its legacy exceptions but uppercase: URL-safe
/// characters only, not starting with `.` or `_`, one `@scope/` at most.
fn check_name(spec: &str, name: &str) -> Result<(), SpecError> {
    let bad = |why| Err(SpecError::BadName { spec: spec.into(), why });
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_NAME {
        return bad("the name is longer than npm allows (214)");
    }
    let parts: Vec<&str> = match name.strip_prefix('@') {
        Some(scoped) => match scoped.split_once('/') {
            Some((scope, rest)) => vec![scope, rest],
            None => return bad("a scoped name is @scope/name"),
        },
        None => vec![name],
    };
    for part in parts {
        if part.is_empty() {
            return bad("a part of the name is empty");
        }
        if part.starts_with('.') || part.starts_with('_') {
            return bad("a name may not start with '.' or '_'");
        }
        if !part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')) {
            return bad("a name holds only letters, digits and - . _ ~ (and one @scope/): no paths, URLs or shell characters");
        }
    }
    Ok(())
}

/// An exact semantic version (semver 2.0.0): `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub text: String,
    core: [u64; 3],
    pre: Vec<String>,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let (rest, build) = match text.split_once('+') {
            Some((r, b)) => (r, Some(b)),
            None => (text, None),
        };
        let (core_text, pre_text) = match rest.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let nums: Vec<&str> = core_text.split('.').collect();
        if nums.len() != 3 || !nums.iter().all(|n| numeric(n)) {
            return None;
        }
        let mut core = [0u64; 3];
        for (slot, n) in core.iter_mut().zip(&nums) {
            *slot = n.parse().ok()?;
        }
        let pre: Vec<String> = match pre_text {
            Some(p) => {
                let ids: Vec<&str> = p.split('.').collect();
                if !ids.iter().all(|i| ident(i)) {
                    return None;
                }
                ids.into_iter().map(String::from).collect()
            }
            None => Vec::new(),
        };
        if let Some(b) = build {
            if !b.split('.').all(ident) {
                return None;
            }
        }
        Some(Version { text: text.into(), core, pre })
    }

    pub fn is_release(&self) -> bool {
        self.pre.is_empty()
    }
}

/// Semver precedence (4.17.21 > 4.9.0, 5.0.0-beta.2 < 5.0.0); build metadata only breaks ties.
impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let c = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if c != Ordering::Equal {
                            return c;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap_or_else(|| panic!("{text} should parse"))
    }

    #[test]
    fn exact_specs_parse() {
        let s = Spec::parse("lodash@4.17.21").unwrap();
        assert_eq!((s.name.as_str(), s.version.text.as_str()), ("lodash", "4.17.21"));
        assert_eq!(s.folder(), PathBuf::from("lodash@4.17.21"));
        let s = Spec::parse("@types/node@20.1.0-rc.1+build.5").unwrap();
        assert_eq!(s.name, "@types/node");
        assert_eq!(s.folder(), PathBuf::from("@types/node@20.1.0-rc.1+build.5"));
        assert_eq!(Spec::parse("JSONStream@1.3.5").unwrap().name, "JSONStream");
    }

    #[test]
    fn ranges_tags_and_tricks_are_refused() {
        for bad in [
            "lodash",
            "lodash@",
            "lodash@latest",
            "lodash@^4.17.21",
            "lodash@~4.17",
            "lodash@4",
            "lodash@4.x",
            "lodash@>=4.0.0",
            "lodash@4.17.21 || 5",
            "lodash@v4.17.21",
            "lodash@04.17.21",
            "lodash@4.17.21;rm",
        ] {
            assert!(matches!(Spec::parse(bad), Err(SpecError::NoVersion { .. } | SpecError::NotExact { .. })), "{bad} was taken");
        }
        for bad in [
            "../x@1.0.0",
            "..@1.0.0",
            "a/b@1.0.0",
            "@scope@1.0.0",
            "@/x@1.0.0",
            "@scope/@1.0.0",
            "@a/b/c@1.0.0",
            ".hidden@1.0.0",
            "_x@1.0.0",
            "a;b@1.0.0",
            "$(id)@1.0.0",
            "a b@1.0.0",
            "git+https://x@1.0.0",
            "file:x@1.0.0",
            "@sc/../x@1.0.0",
            "x\n@1.0.0",
        ] {
            assert!(matches!(Spec::parse(bad), Err(SpecError::BadName { .. })), "{bad}: {:?}", Spec::parse(bad));
        }
    }

    #[test]
    fn versions_order_as_semver() {
        assert!(v("4.17.21") > v("4.9.0"));
        assert!(v("10.0.0") > v("9.0.1"));
        assert!(v("5.0.0") > v("5.0.0-beta.2"));
        assert!(v("5.0.0-beta.11") > v("5.0.0-beta.2"));
        assert!(v("5.0.0-beta") > v("5.0.0-2"));
        assert!(v("5.0.0-beta.1") > v("5.0.0-beta"));
        assert!(v("1.0.0") < v("1.0.1"));
    }
}
