//! The checks made on the seccomp policy (`policies/sandbox.json`) beyond what seccompiler checks.
//!
//! `build.rs` includes this file (`#[path]`) and runs every check before it compiles the policy; the crate
//! includes it too, under `cfg(test)`, so that the checks have tests of their own. Pure functions on the
//! parsed JSON: no file, no seccompiler.
//!
//! The checks: the JSON has no duplicate key (serde_json would keep the last silently); the filters are
//! exactly the ones the jailer installs; every rule names a syscall and carries a comment saying why; a
//! syscall that `refuse` or `enosys` answers with an errno is also listed in `allow` (otherwise the allow
//! filter's kill would win over the errno); a rule naming a syscall of another supported architecture only is
//! dropped, and a name no architecture knows is an error.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Filters in the order they are installed. `allow` goes last because it does not allow
/// seccomp(2) itself: once it is in place, the only syscall left to the jailer is execve.
/// Order changes nothing else: the kernel runs every stacked filter and the strictest action wins.
pub const INSTALL_ORDER: [&str; 3] = ["refuse", "enosys", "allow"];

/// The filter whose listed syscalls are the sandbox's whole syscall surface.
pub const ALLOW_FILTER: &str = "allow";

/// The policy as JSON, refusing a duplicate key anywhere; errors carry serde_json's line and column.
pub fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str::<Strict>(text).map(|s| s.0).map_err(|e| format!("invalid JSON: {e}"))
}

/// A JSON value read like serde_json's own `Value`, except that an object with a key twice is an error.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key \"{key}\"")));
            }
            let Strict(value) = map.next_value()?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

/// The `filter` array of the named filter of the policy.
pub fn rules_of<'a>(policy: &'a Value, filter: &str) -> Result<&'a [Value], String> {
    match policy.get(filter).and_then(|f| f.get("filter")) {
        Some(Value::Array(rules)) => Ok(rules),
        _ => Err(format!("filter \"{filter}\" has no \"filter\" array")),
    }
}

pub fn syscall_of(rule: &Value) -> Result<&str, String> {
    match rule.get("syscall") {
        Some(Value::String(name)) => Ok(name),
        _ => Err("a rule has no \"syscall\" string".to_string()),
    }
}

/// Checks the top-level shape and the comments, and returns every syscall name the policy mentions.
pub fn policy_syscalls(policy: &Value) -> Result<BTreeSet<String>, String> {
    let Value::Object(filters) = policy else {
        return Err("the top level must be an object of named filters".to_string());
    };
    for name in filters.keys() {
        if !INSTALL_ORDER.contains(&name.as_str()) {
            return Err(format!("unknown filter \"{name}\": the jailer installs exactly {INSTALL_ORDER:?} (see jailer/build.rs)"));
        }
    }
    let mut names = BTreeSet::new();
    for filter in INSTALL_ORDER {
        if policy.get(filter).is_none() {
            return Err(format!("filter \"{filter}\" is missing"));
        }
        for rule in rules_of(policy, filter)? {
            let syscall = syscall_of(rule)?;
            match rule.get("comment") {
                Some(Value::String(c)) if !c.trim().is_empty() => {}
                _ => return Err(format!("rule for {syscall} in \"{filter}\" has no comment saying why")),
            }
            names.insert(syscall.to_string());
        }
    }
    Ok(names)
}

/// Removes the rules naming syscalls that this arch lacks (`here` is false) but another supported arch has
/// (`elsewhere`), and returns their names. A name no supported arch knows is a typo: an error.
pub fn drop_foreign_syscalls(
    policy: &mut Value,
    here: impl Fn(&str) -> bool,
    elsewhere: impl Fn(&str) -> bool,
) -> Result<BTreeSet<String>, String> {
    let mut dropped = BTreeSet::new();
    for filter in INSTALL_ORDER {
        let Some(Value::Array(rules)) = policy.get_mut(filter).and_then(|f| f.get_mut("filter")) else {
            return Err(format!("filter \"{filter}\" has no \"filter\" array"));
        };
        let mut kept = Vec::with_capacity(rules.len());
        for rule in rules.drain(..) {
            let name = syscall_of(&rule)?.to_string();
            if here(&name) {
                kept.push(rule);
                continue;
            }
            if !elsewhere(&name) {
                return Err(format!("\"{name}\" in filter \"{filter}\" is not a syscall on any supported arch"));
            }
            dropped.insert(name);
        }
        *rules = kept;
    }
    Ok(dropped)
}

/// A syscall answered with an errno by `refuse` or `enosys` must also be listed in `allow`:
/// the kernel applies the strictest action of all filters, and kill beats errno.
pub fn check_policy(policy: &Value) -> Result<(), String> {
    let allowed = rules_of(policy, ALLOW_FILTER)?.iter().map(syscall_of).collect::<Result<BTreeSet<_>, _>>()?;
    for filter in INSTALL_ORDER.iter().filter(|f| **f != ALLOW_FILTER) {
        for rule in rules_of(policy, filter)? {
            let name = syscall_of(rule)?;
            if !allowed.contains(name) {
                return Err(format!("{name} is answered by filter \"{filter}\" but not listed in \"{ALLOW_FILTER}\": the kill would win"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy of the three filters with the given rules (`(syscall, comment)`).
    fn policy(refuse: &[(&str, &str)], enosys: &[(&str, &str)], allow: &[(&str, &str)]) -> String {
        let rules = |rules: &[(&str, &str)]| {
            let items: Vec<String> = rules.iter().map(|(s, c)| format!(r#"{{"syscall": "{s}", "comment": "{c}"}}"#)).collect();
            items.join(", ")
        };
        format!(
            r#"{{"refuse": {{"filter": [{}]}}, "enosys": {{"filter": [{}]}}, "allow": {{"filter": [{}]}}}}"#,
            rules(refuse),
            rules(enosys),
            rules(allow)
        )
    }

    #[test]
    fn the_real_policy_passes_every_check() {
        let policy = parse(include_str!("../policies/sandbox.json")).expect("parses");
        let names = policy_syscalls(&policy).expect("shape and comments");
        assert!(names.contains("execve") && names.contains("mount"), "{names:?}");
        check_policy(&policy).expect("every errno rule is also allowed");
    }

    #[test]
    fn a_duplicate_key_is_refused_with_its_place() {
        let err = parse("{\"allow\": {},\n \"allow\": {}}").expect_err("duplicate");
        assert!(err.contains("duplicate key \"allow\"") && err.contains("line 2"), "{err}");
        let err = parse(r#"{"allow": {"filter": [{"syscall": "read", "syscall": "write"}]}}"#).expect_err("nested");
        assert!(err.contains("duplicate key \"syscall\""), "{err}");
        assert!(parse("{\"a\": 1,}").is_err(), "trailing comma");
    }

    #[test]
    fn numbers_and_strings_survive_a_round_trip() {
        let text = r#"{"a": [0, 18446744073709551615, -1, "é\n", true, null]}"#;
        let value = parse(text).expect("parses");
        let again: Value = serde_json::from_str(&serde_json::to_string(&value).expect("writes")).expect("reads");
        assert_eq!(value, again);
        assert_eq!(value["a"][1].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn every_rule_needs_a_comment() {
        let p = parse(&policy(&[("mount", "no mounts")], &[], &[("mount", " ")])).unwrap();
        let err = policy_syscalls(&p).expect_err("blank comment");
        assert!(err.contains("rule for mount in \"allow\" has no comment"), "{err}");
        let p = parse(r#"{"refuse": {"filter": [{"syscall": "mount"}]}, "enosys": {"filter": []}, "allow": {"filter": []}}"#).unwrap();
        assert!(policy_syscalls(&p).expect_err("no comment").contains("rule for mount in \"refuse\""));
    }

    #[test]
    fn the_filters_are_exactly_the_installed_ones() {
        let p = parse(r#"{"refuse": {"filter": []}, "enosys": {"filter": []}, "allow": {"filter": []}, "extra": {}}"#).unwrap();
        assert!(policy_syscalls(&p).expect_err("extra").contains("unknown filter \"extra\""));
        let p = parse(r#"{"refuse": {"filter": []}, "allow": {"filter": []}}"#).unwrap();
        assert!(policy_syscalls(&p).expect_err("missing").contains("filter \"enosys\" is missing"));
        let p = parse(r#"{"refuse": {"filter": []}, "enosys": {}, "allow": {"filter": []}}"#).unwrap();
        assert!(policy_syscalls(&p).expect_err("no array").contains("filter \"enosys\" has no \"filter\" array"));
        assert!(policy_syscalls(&parse("[]").unwrap()).expect_err("not an object").contains("top level"));
        let p = parse(r#"{"refuse": {"filter": [{"comment": "x"}]}, "enosys": {"filter": []}, "allow": {"filter": []}}"#).unwrap();
        assert!(policy_syscalls(&p).expect_err("no name").contains("no \"syscall\" string"));
        let p = parse(&policy(&[("mount", "a")], &[("clone3", "b")], &[("read", "c")])).unwrap();
        let names: Vec<String> = policy_syscalls(&p).unwrap().into_iter().collect();
        assert_eq!(names, ["clone3", "mount", "read"]);
    }

    #[test]
    fn an_errno_rule_must_be_allowed_too() {
        let p = parse(&policy(&[("mount", "a")], &[("clone3", "b")], &[("mount", "c"), ("clone3", "d")])).unwrap();
        check_policy(&p).expect("both allowed");
        let p = parse(&policy(&[("mount", "a")], &[("clone3", "b")], &[("mount", "c")])).unwrap();
        let err = check_policy(&p).expect_err("clone3 not allowed");
        assert!(err.contains("clone3 is answered by filter \"enosys\" but not listed in \"allow\""), "{err}");
    }

    #[test]
    fn foreign_syscalls_are_dropped_and_unknown_ones_refused() {
        let here = |n: &str| ["read", "openat"].contains(&n);
        let elsewhere = |n: &str| ["open", "read", "openat"].contains(&n);
        let mut p = parse(&policy(&[], &[], &[("read", "a"), ("open", "b"), ("openat", "c")])).unwrap();
        let dropped = drop_foreign_syscalls(&mut p, here, elsewhere).expect("open exists elsewhere");
        assert_eq!(dropped.into_iter().collect::<Vec<_>>(), ["open"]);
        let kept: Vec<&str> = rules_of(&p, "allow").unwrap().iter().map(|r| syscall_of(r).unwrap()).collect();
        assert_eq!(kept, ["read", "openat"], "order kept");
        let mut p = parse(&policy(&[("reaad", "typo")], &[], &[("reaad", "typo")])).unwrap();
        let err = drop_foreign_syscalls(&mut p, here, elsewhere).expect_err("typo");
        assert!(err.contains("\"reaad\" in filter \"refuse\" is not a syscall on any supported arch"), "{err}");
    }
}
