//! `taskcell modules add|list|remove --dir DIR`: the operator's npm modules, which `taskcell serve --modules
//! DIR` binds read-only into every sandbox and tenant code requires by name or by `NAME@VERSION`
//! (runtime/js/modules.js).
//!
//! The layout is one folder per version, `DIR/NAME@VERSION` (or `DIR/@SCOPE/NAME@VERSION`), holding npm's
//! install of that version: `node_modules/NAME` with its own dependencies beside it, so that they resolve
//! inside that folder and two versions never share one. A version is installed into a temporary folder of DIR
//! (`DIR/.tmp-*`, which readers skip) and renamed into place: it is there whole or not at all.
//!
//! npm runs on the host, as whoever runs this (root, usually), so it runs no package code: `--ignore-scripts`
//! (install scripts are code, and tenants' modules are not trusted on the host), with an environment of its
//! own (a fresh HOME and cache, removed afterwards). This module talks to npm and to DIR only, never to a daemon.

mod spec;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use crate::args::{ArgError, Flags};
use spec::{Spec, SpecError, Version};

const USAGE: &str = "usage:
  taskcell modules add --dir DIR NAME@VERSION...   install these exact versions from the npm registry
  taskcell modules list --dir DIR [--json]         the installed modules: name, version, size
  taskcell modules remove --dir DIR NAME@VERSION   remove one version
DIR is what `taskcell serve --modules DIR` binds into every sandbox; tenant code then requires
'NAME' (the highest version installed) or 'NAME@VERSION'. npm runs with --ignore-scripts.";

/// Variables of the caller's environment that npm gets; nothing else of it reaches npm. The proxy settings
/// and npm's own (`npm_config_registry`, ...) are the operator's way to point it at a mirror or through a proxy.
const PASSED_ENV: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "NODE_EXTRA_CA_CERTS"];

#[derive(Debug, thiserror::Error)]
enum ModulesError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Flag(#[from] ArgError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("npm is not on PATH ({path}); install it (Debian: apt-get install npm)")]
    NpmMissing { path: String },
    #[error("npm could not install {spec} ({status}); its output is above, nothing was installed")]
    NpmFailed { spec: String, status: std::process::ExitStatus },
    #[error("npm installed {found:?} for {spec}, not that version; nothing was installed")]
    WrongVersion { spec: String, found: String },
    #[error("{spec} is not installed in {dir}{installed}")]
    NotInstalled { spec: String, dir: PathBuf, installed: String },
    #[error("cannot {what} {path}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ModulesError + use<> {
    let path = path.to_path_buf();
    move |source| ModulesError::Io { what, path, source }
}

struct Options {
    dir: PathBuf,
    json: bool,
    args: Vec<String>,
}

fn parse(raw: Vec<String>) -> Result<Options, ModulesError> {
    let mut flags = Flags::new(raw);
    let (mut dir, mut json, mut args) = (None, false, Vec::new());
    while let Some((flag, inline)) = flags.next_flag() {
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(flags.value(&flag, inline)?)),
            "--json" if inline.is_none() => json = true,
            f if f.starts_with('-') => return Err(ArgError::Unknown(f.to_string()).into()),
            _ => args.push(flag),
        }
    }
    args.extend(flags.rest());
    let dir = dir.ok_or_else(|| ModulesError::Usage("--dir DIR is required".into()))?;
    Ok(Options { dir, json, args })
}

pub fn main(raw: Vec<String>) -> ExitCode {
    let mut raw = raw.into_iter();
    let command = raw.next();
    let rest: Vec<String> = raw.collect();
    if command.as_deref().is_none_or(|c| c == "-h" || c == "--help") || rest.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return if command.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) };
    }
    let command = command.unwrap_or_default();
    let result = parse(rest).and_then(|o| match command.as_str() {
        "add" => add(&o),
        "list" => list(&o),
        "remove" => remove(&o),
        other => Err(ModulesError::Usage(format!("unknown command {other:?}"))),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (ModulesError::Usage(_) | ModulesError::Flag(_))) => {
            eprintln!("taskcell modules: {e}\n{USAGE}");
            ExitCode::from(2)
        }
        // A spec refused before anything ran is a usage error too.
        Err(e @ ModulesError::Spec(_)) => {
            eprintln!("taskcell modules: {e}; nothing was installed");
            ExitCode::from(2)
        }
        Err(e) => {
            let mut text = format!("taskcell modules: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{text}");
            ExitCode::from(1)
        }
    }
}

// ---------- add ----------

fn add(o: &Options) -> Result<(), ModulesError> {
    if o.args.is_empty() {
        return Err(ModulesError::Usage("add needs at least one NAME@VERSION".into()));
    }
    // Every spec is checked before npm runs for any of them.
    let specs = o.args.iter().map(|a| Spec::parse(a)).collect::<Result<Vec<_>, _>>()?;
    let path = std::env::var("PATH").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let npm = find_on_path("npm", &path).ok_or_else(|| ModulesError::NpmMissing { path: path.clone() })?;
    fs::create_dir_all(&o.dir).map_err(io_err("create", &o.dir))?;
    // Sandboxes read the tree as an unprivileged user: nothing of it may be private to root.
    // SAFETY: umask only sets this process's file mode mask (inherited by npm).
    unsafe { libc::umask(0o022) };
    sweep_stale(&o.dir);
    for spec in &specs {
        let target = o.dir.join(spec.folder());
        if target.exists() {
            println!("{spec}: already installed");
            continue;
        }
        install(o, &npm, &path, spec, &target)?;
        println!("{spec}: installed ({})", human_size(tree_size(&target)));
    }
    Ok(())
}

fn find_on_path(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A temporary folder of DIR, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: &Path, what: &str) -> Result<Scratch, ModulesError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = dir.join(format!(".tmp-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir(&path).map_err(io_err("create", &path))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `.tmp-*` folders of an earlier `modules` command that died (its pid is gone).
fn sweep_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-") else { continue };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn install(o: &Options, npm: &Path, path: &str, spec: &Spec, target: &Path) -> Result<(), ModulesError> {
    let scratch = Scratch::new(&o.dir, "add")?;
    let (home, cache, prefix) = (scratch.0.join("home"), scratch.0.join("cache"), scratch.0.join("version"));
    for d in [&home, &prefix] {
        fs::create_dir(d).map_err(io_err("create", d))?;
    }
    let mut cmd = Command::new(npm);
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("npm_config_cache", &cache)
        .env("npm_config_update_notifier", "false")
        // The host's CA store (/etc/ssl/certs, where an operator adds a proxy's CA), not only Node's own list.
        .env("NODE_OPTIONS", "--use-openssl-ca");
    for (k, v) in std::env::vars_os() {
        let key = k.to_string_lossy();
        let npm_setting =
            (key.starts_with("npm_config_") || key.starts_with("NPM_CONFIG_")) && !key.eq_ignore_ascii_case("npm_config_cache");
        if PASSED_ENV.contains(&key.as_ref()) || npm_setting {
            cmd.env(&k, v);
        }
    }
    let status = cmd
        .args(["install", "--prefix"])
        .arg(&prefix)
        .args(["--ignore-scripts", "--no-audit", "--no-fund", "--save-exact", "--omit=dev", "--no-update-notifier"])
        .arg(spec.to_string())
        .current_dir(&scratch.0)
        .stdin(Stdio::null())
        .status()
        .map_err(io_err("run", npm))?;
    if !status.success() {
        return Err(ModulesError::NpmFailed { spec: spec.to_string(), status });
    }
    // npm was asked for exactly this version; make sure that is what the folder holds.
    let manifest = prefix.join("node_modules").join(&spec.name).join("package.json");
    let text = fs::read_to_string(&manifest).map_err(io_err("read", &manifest))?;
    let found =
        serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["version"].as_str().map(String::from)).unwrap_or_default();
    if found != spec.version.text {
        return Err(ModulesError::WrongVersion { spec: spec.to_string(), found });
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    match fs::rename(&prefix, target) {
        Ok(()) => Ok(()),
        // Another `modules add` of the same version finished first: that one is whole too.
        Err(_) if target.exists() => Ok(()),
        Err(e) => Err(io_err("rename into place", target)(e)),
    }
}

// ---------- list ----------

struct Installed {
    spec: Spec,
    path: PathBuf,
}

/// Every version folder of DIR, by name and then highest version first.
fn installed(dir: &Path) -> Result<Vec<Installed>, ModulesError> {
    let mut found = Vec::new();
    let mut add_folder = |scope: &str, parent: &Path, name: &str| {
        if name.starts_with('.') {
            return;
        }
        if let Ok(spec) = Spec::parse(&format!("{scope}{name}")) {
            found.push(Installed { spec, path: parent.join(name) });
        }
    };
    for e in fs::read_dir(dir).map_err(io_err("read", dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with('@') && !name[1..].contains('@') {
            let Ok(scoped) = fs::read_dir(e.path()) else { continue };
            for s in scoped.flatten() {
                if s.file_type().is_ok_and(|t| t.is_dir()) {
                    add_folder(&format!("{name}/"), &e.path(), &s.file_name().to_string_lossy());
                }
            }
        } else {
            add_folder("", dir, &name);
        }
    }
    found.sort_by(|a, b| a.spec.name.cmp(&b.spec.name).then_with(|| b.spec.version.cmp(&a.spec.version)));
    Ok(found)
}

/// The version `require(NAME)` gives: the highest release, else the highest prerelease (as modules.js).
fn default_of<'a>(versions: impl Iterator<Item = &'a Version> + Clone) -> Option<&'a Version> {
    versions.clone().filter(|v| v.is_release()).max().or_else(|| versions.max())
}

fn list(o: &Options) -> Result<(), ModulesError> {
    if !o.args.is_empty() {
        return Err(ModulesError::Usage("list takes no arguments".into()));
    }
    let all = installed(&o.dir)?;
    let is_default =
        |i: &Installed| default_of(all.iter().filter(|j| j.spec.name == i.spec.name).map(|j| &j.spec.version)) == Some(&i.spec.version);
    if o.json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|i| serde_json::json!({"name": i.spec.name, "version": i.spec.version.text, "bytes": tree_size(&i.path), "default": is_default(i)}))
            .collect();
        println!("{}", serde_json::json!({ "modules": rows }));
        return Ok(());
    }
    if all.is_empty() {
        println!("no modules in {}", o.dir.display());
        return Ok(());
    }
    let width = all.iter().map(|i| i.spec.name.len()).max().unwrap_or(0).max(4);
    let vwidth = all.iter().map(|i| i.spec.version.text.len()).max().unwrap_or(0).max(7);
    println!("{:<width$}  {:<vwidth$}  {:>9}", "NAME", "VERSION", "SIZE");
    for i in &all {
        let mark = if is_default(i) { "  *" } else { "" };
        println!("{:<width$}  {:<vwidth$}  {:>9}{mark}", i.spec.name, i.spec.version.text, human_size(tree_size(&i.path)));
    }
    println!("(* is what require('NAME') gives; require('NAME@VERSION') gives that version)");
    Ok(())
}

/// Bytes of the regular files below `path`, symlinks not followed.
fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = fs::read_dir(&p) else { continue };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

// ---------- remove ----------

fn remove(o: &Options) -> Result<(), ModulesError> {
    let [arg] = o.args.as_slice() else {
        return Err(ModulesError::Usage("remove takes one NAME@VERSION".into()));
    };
    let spec = Spec::parse(arg)?;
    let target = o.dir.join(spec.folder());
    if !target.is_dir() {
        let others: Vec<String> =
            installed(&o.dir).unwrap_or_default().into_iter().filter(|i| i.spec.name == spec.name).map(|i| i.spec.version.text).collect();
        let installed = if others.is_empty() {
            format!(" (no version of {} is)", spec.name)
        } else {
            format!(" (installed versions of {}: {})", spec.name, others.join(", "))
        };
        return Err(ModulesError::NotInstalled { spec: spec.to_string(), dir: o.dir.clone(), installed });
    }
    // Out of readers' sight in one rename, then deleted: a sandbox never sees half a version.
    let scratch = Scratch::new(&o.dir, "remove")?;
    let doomed = scratch.0.join("version");
    fs::rename(&target, &doomed).map_err(io_err("move away", &target))?;
    drop(scratch);
    if spec.name.starts_with('@') {
        if let Some(scope) = target.parent() {
            let _ = fs::remove_dir(scope); // only when it is empty
        }
    }
    println!("{spec}: removed");
    Ok(())
}
