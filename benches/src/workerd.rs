//! The workerd baseline of group 4: Cloudflare's workerd (V8 isolates, no process per tenant) with one
//! worker per tenant behind one router worker on a Unix socket. The bench installs it from npm into
//! `<out>/workerd` (kept between runs, like the no-op fixture) and writes its config into the run's
//! temp dir; when it cannot be installed or run, its rows say why and the others run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::Conn;
use crate::procs::{self, Child};
use crate::{Ctx, TASK_JS};

const ROUTER_JS: &str = include_str!("../js/workerd_router.js");
const TENANT_JS: &str = include_str!("../js/workerd_tenant.js");
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The platform package npm picks for this machine, which holds the real binary (the `workerd` package's
/// own bin is a Node shim that would add a Node start to every launch).
fn platform_binary(dir: &Path) -> Result<PathBuf, String> {
    let pkg = match std::env::consts::ARCH {
        "x86_64" => "workerd-linux-64",
        "aarch64" => "workerd-linux-arm64",
        other => return Err(format!("no workerd build for {other}")),
    };
    Ok(dir.join("node_modules/@cloudflare").join(pkg).join("bin/workerd"))
}

/// The workerd binary, installed with `npm install` if it is not there yet.
pub fn install(ctx: &Ctx) -> Result<PathBuf, String> {
    let dir = ctx.out.join("workerd");
    let bin = platform_binary(&dir)?;
    if bin.is_file() {
        return Ok(bin);
    }
    let npm = procs::which("npm").ok_or("npm not installed")?;
    let mut cmd = Command::new(npm);
    cmd.arg("install").arg("--prefix").arg(&dir).args(["workerd", "--no-audit", "--no-fund", "--cache"]).arg(dir.join(".npm-cache"));
    // npm trusts only Node's bundled CAs; behind a TLS-inspecting proxy (as here) it needs the CA that
    // NODE_EXTRA_CA_CERTS names, which the clean environment drops (it is usually unset for the bench
    // anyway): the system's bundle, where such a CA is installed, as npm's own flag.
    let ca = std::env::var_os("NODE_EXTRA_CA_CERTS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(SYSTEM_CAS));
    if ca.is_file() {
        cmd.arg("--cafile").arg(ca);
    }
    let log = ctx.tmp.join("npm-workerd.log");
    let logf = fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
    let mut child = Child::spawn(cmd, "npm-install-workerd").map_err(|e| format!("spawning npm: {e}"))?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.exited() {
            break st;
        }
        if procs::stopping() || t0.elapsed() > NPM_TIMEOUT {
            child.stop(Duration::from_secs(5));
            return Err(format!("npm install workerd did not finish within {} s", NPM_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() || !bin.is_file() {
        let err = fs::read_to_string(&log).unwrap_or_default();
        let line = err.lines().find(|l| l.contains("npm error")).unwrap_or("no error output").trim().to_string();
        return Err(format!("npm install workerd failed ({status}): {}", line.chars().take(160).collect::<String>()));
    }
    Ok(bin)
}

/// workerd's config: the router on the socket, with a service binding to each tenant's worker.
fn config(socket: &Path, tenants: &[String]) -> String {
    let compat = "compatibilityDate = \"2024-09-23\"";
    let bindings: Vec<String> = tenants.iter().map(|t| format!("(name = \"{t}\", service = \"{t}\")")).collect();
    let mut services = vec![format!(
        "(name = \"router\", worker = (modules = [(name = \"router.js\", esModule = embed \"router.js\")], {compat}, bindings = [{}]))",
        bindings.join(", ")
    )];
    for t in tenants {
        services.push(format!(
            "(name = \"{t}\", worker = (modules = [(name = \"tenant.js\", esModule = embed \"tenant.js\"), (name = \"task.js\", commonJsModule = embed \"task.js\")], {compat}))"
        ));
    }
    format!(
        "using Workerd = import \"/workerd/workerd.capnp\";\nconst config :Workerd.Config = (\n  services = [\n    {}\n  ],\n  sockets = [(name = \"http\", address = \"unix:{}\", http = (), service = \"router\")],\n);\n",
        services.join(",\n    "),
        socket.display()
    )
}

/// A running workerd with one worker per tenant.
pub struct Workerd {
    /// Held for its Drop, which stops the server.
    _child: Child,
    pub socket: PathBuf,
}

impl Workerd {
    pub fn start(ctx: &Ctx, bin: &Path, tenants: &[String]) -> Result<Workerd, String> {
        let dir = ctx.tmp.join("workerd");
        let socket = ctx.tmp.join("workerd.sock");
        let files = [("router.js", ROUTER_JS), ("tenant.js", TENANT_JS), ("task.js", TASK_JS)];
        fs::create_dir_all(&dir)
            .and_then(|_| files.iter().try_for_each(|(name, src)| fs::write(dir.join(name), src)))
            .and_then(|_| fs::write(dir.join("config.capnp"), config(&socket, tenants)))
            .map_err(|e| format!("writing workerd's config in {}: {e}", dir.display()))?;
        let log = ctx.tmp.join("workerd.log");
        let logf = fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(dir.join("config.capnp")).current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
        let mut child = Child::spawn(cmd, "workerd").map_err(|e| format!("spawning workerd: {e}"))?;
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.exited() {
                let err = fs::read_to_string(&log).unwrap_or_default();
                let line = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no log output").trim().to_string();
                return Err(format!("workerd exited at start ({st}): {}", line.chars().take(160).collect::<String>()));
            }
            if socket.exists() && Conn::open(&socket).is_ok() {
                return Ok(Workerd { _child: child, socket });
            }
            // A hundred workers to load at start: give it time.
            if t0.elapsed() > Duration::from_secs(60) || procs::stopping() {
                child.stop(Duration::from_secs(5));
                return Err("workerd not listening after 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
