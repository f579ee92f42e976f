//! Compiles the seccomp policy (`policies/sandbox.json`, seccompiler's JSON format) into BPF at build
//! time and writes it to `$OUT_DIR/seccomp_policy.rs`, which `src/seccomp.rs` includes: static
//! `libc::sock_filter` arrays in install order, plus syscall number/name tables for reporting.
//!
//! Besides compiling, it checks what seccompiler cannot: every rule carries a comment, the filter
//! names are exactly the ones installed, and every syscall that `refuse` or `enosys` answers with
//! an errno is also listed in `allow` (otherwise the allow filter's kill would win over the errno).
//! One policy serves x86_64 and aarch64: a rule naming a syscall that exists only on the other
//! architecture (`open`, `stat`, `fork`... on aarch64) is dropped; a name unknown everywhere is an
//! error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seccompiler::{sock_filter, BpfMap, TargetArch};

const POLICY: &str = "../policies/sandbox.json";

/// Filters in the order they are installed. `allow` goes last because it does not allow
/// seccomp(2) itself: once it is in place, the only syscall left to the jailer is execve.
/// Order changes nothing else: the kernel runs every stacked filter and the strictest action wins.
const INSTALL_ORDER: [&str; 3] = ["refuse", "enosys", "allow"];

/// The filter whose listed syscalls are the sandbox's whole syscall surface.
const ALLOW_FILTER: &str = "allow";

const SUPPORTED_ARCHES: [(&str, TargetArch); 2] = [
    ("x86_64", TargetArch::x86_64),
    ("aarch64", TargetArch::aarch64),
];

fn main() {
    println!("cargo:rerun-if-changed={POLICY}");
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(message) = run() {
        eprintln!("error: {POLICY}: {message}");
        std::process::exit(1);
    }
    if let Err(message) = compile_init() {
        eprintln!("error: {INIT_SOURCE}: {message}");
        std::process::exit(1);
    }
}

const INIT_SOURCE: &str = "init/init.c";

/// Builds the sandbox's init program (`init/init.c`) into `$OUT_DIR/taskcell-init`, a static executable
/// that `src/pid.rs` embeds: a sandbox's PID 1 execs it so as to hold nothing of the daemon's memory. Static,
/// because the sandbox's root has no C library of the host's to load it with. `$CC`, else `cc`.
fn compile_init() -> Result<(), String> {
    println!("cargo:rerun-if-changed={INIT_SOURCE}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?).join("taskcell-init");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let result = std::process::Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(INIT_SOURCE)
        .output()
        .map_err(|e| format!("cannot run {cc} (a C compiler and the static C library, libc.a, are needed): {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "{cc} -static failed (is the static C library, libc.a, installed?):\n{}",
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let arch_name = std::env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?;
    let arch = SUPPORTED_ARCHES
        .iter()
        .find(|(name, _)| *name == arch_name)
        .map(|(_, arch)| *arch)
        .ok_or_else(|| {
            format!("no seccomp policy for target arch {arch_name} (x86_64, aarch64 only)")
        })?;

    let text = std::fs::read_to_string(POLICY).map_err(|e| format!("cannot read: {e}"))?;
    let mut policy = Parser::new(&text).document()?;
    let names = policy_syscalls(&policy)?;
    // seccompiler's own checks on the policy as written, so that its errors point at the file's
    // lines: x86_64's table holds every name of the supported arches.
    seccompiler::compile_from_json(text.as_bytes(), TargetArch::x86_64)
        .map_err(|e| e.to_string())?;
    let table = SyscallTable::probe(arch, names)?;
    let dropped = drop_foreign_syscalls(&mut policy, &table, arch)?;
    check_policy(&policy)?;

    let mut json = String::new();
    write_json(&policy, &mut json);
    let programs: BpfMap =
        seccompiler::compile_from_json(json.as_bytes(), arch).map_err(|e| e.to_string())?;

    let source = generate(&arch_name, &policy, &programs, &table, &dropped)?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    write_if_changed(&out.join("seccomp_policy.rs"), &source)
}

/// The `filter` array of each named filter of the policy.
fn rules_of<'a>(policy: &'a Json, filter: &str) -> Result<&'a [Json], String> {
    match policy.get(filter).and_then(|f| f.get("filter")) {
        Some(Json::Arr(rules)) => Ok(rules),
        _ => Err(format!("filter \"{filter}\" has no \"filter\" array")),
    }
}

fn syscall_of(rule: &Json) -> Result<&str, String> {
    match rule.get("syscall") {
        Some(Json::Str(name)) => Ok(name),
        _ => Err("a rule has no \"syscall\" string".to_string()),
    }
}

/// Checks the top-level shape and returns every syscall name the policy mentions.
fn policy_syscalls(policy: &Json) -> Result<BTreeSet<String>, String> {
    let Json::Obj(filters) = policy else {
        return Err("the top level must be an object of named filters".to_string());
    };
    for (name, _) in filters {
        if !INSTALL_ORDER.contains(&name.as_str()) {
            return Err(format!(
                "unknown filter \"{name}\": the jailer installs exactly {INSTALL_ORDER:?} (see jailer/build.rs)"
            ));
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
                Some(Json::Str(c)) if !c.trim().is_empty() => {}
                _ => {
                    return Err(format!(
                        "rule for {syscall} in \"{filter}\" has no comment saying why"
                    ))
                }
            }
            names.insert(syscall.to_string());
        }
    }
    Ok(names)
}

/// Removes the rules naming syscalls that exist on another supported arch but not on `arch`, and
/// returns their names. A name no supported arch knows is a typo: an error.
fn drop_foreign_syscalls(
    policy: &mut Json,
    table: &SyscallTable,
    arch: TargetArch,
) -> Result<BTreeSet<String>, String> {
    let mut dropped = BTreeSet::new();
    for filter in INSTALL_ORDER {
        let Some(Json::Arr(rules)) = policy.get_mut(filter).and_then(|f| f.get_mut("filter"))
        else {
            unreachable!("checked by policy_syscalls");
        };
        let mut kept = Vec::with_capacity(rules.len());
        for rule in rules.drain(..) {
            let name = syscall_of(&rule)?.to_string();
            if table.number(&name).is_some() {
                kept.push(rule);
                continue;
            }
            let elsewhere = SUPPORTED_ARCHES
                .iter()
                .filter(|(_, other)| *other != arch)
                .any(|(_, other)| probe_number(&name, *other).ok().flatten().is_some());
            if !elsewhere {
                return Err(format!(
                    "\"{name}\" in filter \"{filter}\" is not a syscall on any supported arch"
                ));
            }
            dropped.insert(name);
        }
        *rules = kept;
    }
    Ok(dropped)
}

/// A syscall answered with an errno by `refuse` or `enosys` must also be listed in `allow`:
/// the kernel applies the strictest action of all filters, and kill beats errno.
fn check_policy(policy: &Json) -> Result<(), String> {
    let allowed = rules_of(policy, ALLOW_FILTER)?
        .iter()
        .map(syscall_of)
        .collect::<Result<BTreeSet<_>, _>>()?;
    for filter in INSTALL_ORDER.iter().filter(|f| **f != ALLOW_FILTER) {
        for rule in rules_of(policy, filter)? {
            let name = syscall_of(rule)?;
            if !allowed.contains(name) {
                return Err(format!(
                    "{name} is answered by filter \"{filter}\" but not listed in \"{ALLOW_FILTER}\": the kill would win"
                ));
            }
        }
    }
    Ok(())
}

fn generate(
    arch_name: &str,
    policy: &Json,
    programs: &BpfMap,
    table: &SyscallTable,
    dropped: &BTreeSet<String>,
) -> Result<String, String> {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "// Generated by jailer/build.rs from policies/sandbox.json for {arch_name}. Do not edit."
    );
    if !dropped.is_empty() {
        let list: Vec<&str> = dropped.iter().map(String::as_str).collect();
        let _ = writeln!(
            w,
            "// Rules dropped (no such syscall on {arch_name}): {}.",
            list.join(", ")
        );
    }
    for name in INSTALL_ORDER {
        let program = programs
            .get(name)
            .ok_or_else(|| format!("seccompiler returned no \"{name}\""))?;
        let _ = writeln!(
            w,
            "\nstatic {}: [libc::sock_filter; {}] = [",
            name.to_uppercase(),
            program.len()
        );
        for sock_filter { code, jt, jf, k } in program {
            let _ = writeln!(
                w,
                "    libc::sock_filter {{ code: {code:#06x}, jt: {jt}, jf: {jf}, k: {k:#010x} }},"
            );
        }
        let _ = writeln!(w, "];");
    }
    let _ = writeln!(
        w,
        "\n/// The filters in install order.\nstatic PROGRAMS: [Program; {}] = [",
        INSTALL_ORDER.len()
    );
    for name in INSTALL_ORDER {
        let _ = writeln!(
            w,
            "    Program {{ name: {name:?}, filter: &{} }},",
            name.to_uppercase()
        );
    }
    let _ = writeln!(w, "];");

    let mut allowed = BTreeMap::new();
    for rule in rules_of(policy, ALLOW_FILTER)? {
        let name = syscall_of(rule)?;
        let nr = table
            .number(name)
            .ok_or_else(|| format!("no number for {name}"))?;
        allowed.insert(nr, name.to_string());
    }
    write_table(
        w,
        "ALLOWED_SYSCALLS",
        "every syscall the allow filter lists",
        &allowed,
    );
    write_table(
        w,
        "SYSCALL_NAMES",
        "every syscall seccompiler knows on this arch",
        &table.by_number,
    );
    Ok(s)
}

fn write_table(w: &mut String, name: &str, doc: &str, rows: &BTreeMap<u32, String>) {
    let _ = writeln!(w, "\n/// (number, name) of {doc}, sorted by number.");
    let _ = writeln!(w, "static {name}: [(u32, &str); {}] = [", rows.len());
    for (nr, syscall) in rows {
        let _ = writeln!(w, "    ({nr}, {syscall:?}),");
    }
    let _ = writeln!(w, "];");
}

/// Rewrites the file only when its content changes, so that an unchanged policy does not force
/// the crate to recompile.
fn write_if_changed(path: &Path, content: &str) -> Result<(), String> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    std::fs::write(path, content).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Syscall numbers of one arch, as seccompiler knows them. seccompiler keeps its name table
/// private, so each name is compiled into a one-rule filter and its number read back by running
/// that filter over every number: the numbers are seccompiler's own, never a second copy.
struct SyscallTable {
    by_name: BTreeMap<String, u32>,
    by_number: BTreeMap<u32, String>,
}

impl SyscallTable {
    fn probe(arch: TargetArch, extra: BTreeSet<String>) -> Result<Self, String> {
        let mut table = SyscallTable {
            by_name: BTreeMap::new(),
            by_number: BTreeMap::new(),
        };
        let candidates = CANDIDATE_NAMES.iter().map(|n| n.to_string()).chain(extra);
        for name in candidates.collect::<BTreeSet<_>>() {
            if let Some(nr) = probe_number(&name, arch)? {
                table.by_name.insert(name.clone(), nr);
                table.by_number.entry(nr).or_insert(name);
            }
        }
        Ok(table)
    }

    fn number(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }
}

/// The number of syscall `name` on `arch`, or None if seccompiler does not know it there.
fn probe_number(name: &str, arch: TargetArch) -> Result<Option<u32>, String> {
    const MARK: u32 = SECCOMP_RET_ERRNO | 4095;
    let mut quoted = String::new();
    write_json_string(name, &mut quoted);
    let json = format!(
        r#"{{"probe":{{"mismatch_action":"allow","match_action":{{"errno":4095}},"filter":[{{"syscall":{quoted}}}]}}}}"#
    );
    let Ok(map) = seccompiler::compile_from_json(json.as_bytes(), arch) else {
        return Ok(None);
    };
    let program = &map["probe"];
    let audit_arch = audit_arch(arch);
    for nr in 0..MAX_SYSCALL_NR {
        if run_bpf(program, audit_arch, nr)? == MARK {
            return Ok(Some(nr));
        }
    }
    Err(format!("cannot find the number of {name}"))
}

const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const MAX_SYSCALL_NR: u32 = 2048;

fn audit_arch(arch: TargetArch) -> u32 {
    const AUDIT_ARCH_64BIT_LE: u32 = 0x8000_0000 | 0x4000_0000;
    match arch {
        TargetArch::x86_64 => 62 | AUDIT_ARCH_64BIT_LE,
        TargetArch::aarch64 => 183 | AUDIT_ARCH_64BIT_LE,
        TargetArch::riscv64 => 243 | AUDIT_ARCH_64BIT_LE,
    }
}

/// Runs a classic BPF seccomp program on `seccomp_data { nr, arch, args: 0 }`: just the
/// instructions seccompiler emits.
fn run_bpf(program: &[sock_filter], arch: u32, nr: u32) -> Result<u32, String> {
    let (mut acc, mut pc) = (0u32, 0usize);
    while let Some(insn) = program.get(pc) {
        pc += 1;
        let k = insn.k;
        let jump = |cond: bool| {
            if cond {
                usize::from(insn.jt)
            } else {
                usize::from(insn.jf)
            }
        };
        match insn.code {
            0x20 => {
                acc = match k {
                    0 => nr,
                    4 => arch,
                    _ => 0,
                }
            } // BPF_LD | BPF_W | BPF_ABS
            0x54 => acc &= k,                 // BPF_ALU | BPF_AND | BPF_K
            0x05 => pc += k as usize,         // BPF_JMP | BPF_JA
            0x15 => pc += jump(acc == k),     // BPF_JMP | BPF_JEQ | BPF_K
            0x25 => pc += jump(acc > k),      // BPF_JMP | BPF_JGT | BPF_K
            0x35 => pc += jump(acc >= k),     // BPF_JMP | BPF_JGE | BPF_K
            0x45 => pc += jump(acc & k != 0), // BPF_JMP | BPF_JSET | BPF_K
            0x06 => return Ok(k),             // BPF_RET | BPF_K
            code => {
                return Err(format!(
                    "unexpected BPF instruction {code:#x} from seccompiler"
                ))
            }
        }
    }
    Err("BPF program fell off its end".to_string())
}

/// A JSON value. Objects keep their key order so that the policy is compiled as written.
/// (serde_json is not a build-dependency of this crate; this small reader is all the build needs.)
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Obj(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn write_json(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Num(n) => out.push_str(n),
        Json::Str(s) => write_json_string(s, out),
        Json::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Json::Obj(members) => {
            out.push('{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Reads one JSON document (RFC 8259), rejecting duplicate keys; errors carry line and column.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text, pos: 0 }
    }

    fn document(&mut self) -> Result<Json, String> {
        let value = self.value()?;
        self.skip_ws();
        if self.pos != self.text.len() {
            return Err(self.error("trailing characters after the JSON document"));
        }
        Ok(value)
    }

    fn error(&self, what: &str) -> String {
        let before = &self.text[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("invalid JSON at line {line}, column {column}: {what}")
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", byte as char)))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn object(&mut self) -> Result<Json, String> {
        self.pos += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Obj(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key_pos = self.pos;
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                self.pos = key_pos;
                return Err(self.error(&format!("duplicate key \"{key}\"")));
            }
            self.expect(b':')?;
            let value = self.value()?;
            members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Obj(members));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self) -> Result<Json, String> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Arr(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Arr(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits = |p: &mut Self| {
            let from = p.pos;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.pos += 1;
            }
            p.pos > from
        };
        if !digits(self) {
            return Err(self.error("expected digits"));
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !digits(self) {
                return Err(self.error("expected digits after '.'"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(self.error("expected exponent digits"));
            }
        }
        Ok(Json::Num(self.text[start..self.pos].to_string()))
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(c) = rest.chars().next() else {
                return Err(self.error("unterminated string"));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                '\\' => {
                    self.pos += 1;
                    let escape = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                c if u32::from(c) < 0x20 => return Err(self.error("control character in string")),
                c => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    /// The code point after `\u`, joining a UTF-16 surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let high = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&high) {
            if !self.text[self.pos..].starts_with("\\u") {
                return Err(self.error("unpaired surrogate"));
            }
            self.pos += 2;
            let low = self.hex4()?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(self.error("unpaired surrogate"));
            }
            0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        } else {
            high
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("short \\u escape"))?;
        let value =
            u32::from_str_radix(digits, 16).map_err(|_| self.error("invalid \\u escape"))?;
        self.pos += 4;
        Ok(value)
    }
}

/// Every syscall name in seccompiler 0.5's tables (its x86_64 table, a superset of aarch64's),
/// used to build the number-to-name table for reporting. The numbers are probed from
/// seccompiler itself, and names the policy uses are always probed too.
#[rustfmt::skip]
const CANDIDATE_NAMES: &[&str] = &[
    "_sysctl", "accept", "accept4", "access", "acct", "add_key", "adjtimex", "afs_syscall",
    "alarm", "arch_prctl", "bind", "bpf", "brk", "cachestat", "capget", "capset", "chdir", "chmod",
    "chown", "chroot", "clock_adjtime", "clock_getres", "clock_gettime", "clock_nanosleep",
    "clock_settime", "clone", "clone3", "close", "close_range", "connect", "copy_file_range",
    "creat", "create_module", "delete_module", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fallocate", "fanotify_init", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl", "fdatasync",
    "fgetxattr", "finit_module", "flistxattr", "flock", "fork", "fremovexattr", "fsconfig",
    "fsetxattr", "fsmount", "fsopen", "fspick", "fstat", "fstatfs", "fsync", "ftruncate", "futex",
    "futex_requeue", "futex_wait", "futex_waitv", "futex_wake", "futimesat", "get_kernel_syms",
    "get_mempolicy", "get_robust_list", "get_thread_area", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "geteuid", "getgid", "getgroups", "getitimer", "getpeername",
    "getpgid", "getpgrp", "getpid", "getpmsg", "getppid", "getpriority", "getrandom", "getresgid",
    "getresuid", "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid",
    "gettimeofday", "getuid", "getxattr", "init_module", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_setup", "io_submit", "io_uring_enter", "io_uring_register",
    "io_uring_setup", "ioctl", "ioperm", "iopl", "ioprio_get", "ioprio_set", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lgetxattr", "link", "linkat",
    "listen", "listmount", "listxattr", "llistxattr", "lookup_dcookie", "lremovexattr", "lseek",
    "lsetxattr", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "lstat", "madvise",
    "map_shadow_stack", "mbind", "membarrier", "memfd_create", "memfd_secret", "migrate_pages",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "modify_ldt", "mount", "mount_setattr", "move_mount", "move_pages", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink",
    "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall",
    "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "nfsservctl", "open",
    "open_by_handle_at", "open_tree", "openat", "openat2", "pause", "perf_event_open",
    "personality", "pidfd_getfd", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pivot_root",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_madvise", "process_mrelease", "process_vm_readv",
    "process_vm_writev", "pselect6", "ptrace", "putpmsg", "pwrite64", "pwritev", "pwritev2",
    "query_module", "quotactl", "quotactl_fd", "read", "readahead", "readlink", "readlinkat",
    "readv", "reboot", "recvfrom", "recvmmsg", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "request_key", "restart_syscall", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "security", "select",
    "semctl", "semget", "semop", "semtimedop", "sendfile", "sendmmsg", "sendmsg", "sendto",
    "set_mempolicy", "set_mempolicy_home_node", "set_robust_list", "set_thread_area",
    "set_tid_address", "setdomainname", "setfsgid", "setfsuid", "setgid", "setgroups",
    "sethostname", "setitimer", "setns", "setpgid", "setpriority", "setregid", "setresgid",
    "setresuid", "setreuid", "setrlimit", "setsid", "setsockopt", "settimeofday", "setuid",
    "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "socket", "socketpair", "splice", "stat", "statfs", "statmount", "statx",
    "swapoff", "swapon", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysfs",
    "sysinfo", "syslog", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_settime", "timerfd_create", "timerfd_gettime",
    "timerfd_settime", "times", "tkill", "truncate", "tuxcall", "umask", "umount2", "uname",
    "unlink", "unlinkat", "unshare", "uretprobe", "uselib", "userfaultfd", "ustat", "utime",
    "utimensat", "utimes", "vfork", "vhangup", "vmsplice", "vserver", "wait4", "waitid", "write",
    "writev",
];
