//! The command line for people, as Auth0's `wt` was for Webtasks: `deploy`, `call`, `tasks`, `rm`, `logs` and
//! `health`, each one request to a running daemon over its socket, or over TCP with `--url` and `--token`.
//!
//! This module owns the commands' arguments, the requests they make and their exit statuses (0 done, 1 the
//! daemon refused or could not be reached, 2 a usage error); the wire is `http`, the human forms are `render`.
//! It talks to the daemon only through the public API (shared/spec/api.md), never through its state directory
//! or its modules, so that it works against any daemon that keeps the contract.

mod http;
mod render;

use std::error::Error as _;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::args::{ArgError, Flags};
use http::{Address, Daemon, HttpError, Request, Whole};
use render::Paint;

/// Where the daemon listens unless `--socket` or `$TASKCELL_SOCKET` says otherwise (the unit's socket).
const DEFAULT_SOCKET: &str = "/run/taskcell/taskcell.sock";

/// One client command: its positional arguments (for the usage text and their count) and what it does.
struct Command {
    name: &'static str,
    args: &'static str,
    min: usize,
    max: usize,
    about: &'static str,
    run: fn(&Options) -> Result<(), CliError>,
}

const COMMANDS: &[Command] = &[
    Command {
        name: "deploy",
        args: "[--model M] [--timeout-ms N] TENANT TASK FILE",
        min: 3,
        max: 3,
        about: "deploy a task's source (FILE - reads stdin) with its model (default taskcell) and time limit",
        run: deploy,
    },
    Command {
        name: "call",
        args: "TENANT TASK [JSON|-]",
        min: 2,
        max: 3,
        about: "run a task with this input (none: null; -: stdin)",
        run: call,
    },
    Command { name: "tasks", args: "TENANT", min: 1, max: 1, about: "list a tenant's tasks", run: tasks },
    Command { name: "rm", args: "TENANT TASK", min: 2, max: 2, about: "remove a task", run: rm },
    Command {
        name: "logs",
        args: "[TENANT]",
        min: 0,
        max: 1,
        about: "follow the log events of every tenant, or of one, until Ctrl-C",
        run: logs,
    },
    Command { name: "health", args: "", min: 0, max: 0, about: "the daemon's state: pool, sandboxes, work in flight, uptime", run: health },
    Command {
        name: "secrets",
        args: "set TENANT NAME [VALUE|-] | list TENANT | rm TENANT NAME",
        min: 2,
        max: 4,
        about: "a tenant's secrets: set one (no VALUE or -: read from stdin, kept out of shell history), list their names, remove one",
        run: secrets,
    },
    Command {
        name: "egress",
        args: "set TENANT [RULE...] | get TENANT",
        min: 2,
        max: usize::MAX,
        about: "replace a tenant's egress allow-list (host:port, *.name:port, IP:port; none: empty), or show it",
        run: egress,
    },
];

const OPTIONS: &str = "    --socket PATH   the daemon's socket (default: $TASKCELL_SOCKET, else /run/taskcell/taskcell.sock)
    --url URL       a node's TCP listener instead, http://HOST:PORT (default: $TASKCELL_URL, if set)
    --token TOKEN   the bearer token for --url (default: $TASKCELL_TOKEN; make one with taskcell token)
    --json          print the daemon's JSON answer exactly as received (logs: its NDJSON lines)";

pub fn is_command(name: &str) -> bool {
    COMMANDS.iter().any(|c| c.name == name)
}

/// The client commands' part of `taskcell help`.
pub fn usage() -> String {
    let mut text = String::from("client commands, to a running daemon over its socket:\n");
    for c in COMMANDS {
        text.push_str(&format!("  {:<36}{}\n", format!("taskcell {} {}", c.name, c.args), c.about));
    }
    text.push_str("  their options:\n");
    text.push_str(OPTIONS);
    text
}

fn command_usage(c: &Command) -> String {
    format!(
        "usage: taskcell {} [--socket PATH | --url URL --token TOKEN] [--json] {}\n  {}\n  options:\n{OPTIONS}",
        c.name, c.args, c.about
    )
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("help asked for")]
    Help,
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Flag(#[from] ArgError),
    #[error("the input {from} is not valid JSON")]
    InputNotJson { from: &'static str, source: serde_json::Error },
    #[error("cannot read {path}")]
    Read { path: String, source: io::Error },
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The daemon's error envelope.
    #[error("{kind}: {message}")]
    Server { kind: String, message: String },
    #[error("the daemon answered {status} with a body that is not the API's JSON: {body}")]
    Unexpected { status: u16, body: String },
    #[error("the daemon closed the log stream")]
    StreamCut,
    #[error("writing the output")]
    Output(#[source] io::Error),
}

struct Options {
    daemon: Daemon,
    json: bool,
    args: Vec<String>,
    /// `deploy --model M --timeout-ms N`: the task's settings (the daemon checks them).
    model: Option<String>,
    timeout_ms: Option<String>,
}

fn parse(c: &Command, raw: Vec<String>) -> Result<Options, CliError> {
    let mut flags = Flags::new(raw);
    let (mut socket, mut json, mut args) = (None, false, Vec::new());
    let (mut model, mut timeout_ms, mut url, mut token) = (None, None, None, None);
    while let Some((flag, inline)) = flags.next_flag() {
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(flags.value(&flag, inline)?)),
            "--url" => url = Some(flags.value(&flag, inline)?),
            "--token" => token = Some(flags.value(&flag, inline)?),
            "--model" if c.name == "deploy" => model = Some(flags.value(&flag, inline)?),
            "--timeout-ms" if c.name == "deploy" => timeout_ms = Some(flags.value(&flag, inline)?),
            "--json" if inline.is_none() => json = true,
            "-h" | "--help" => return Err(CliError::Help),
            // `-` (stdin) and JSON such as `-1` are arguments; only `--name` is a flag.
            f if f.starts_with("--") => return Err(ArgError::Unknown(f.to_string()).into()),
            _ => args.push(flag),
        }
    }
    args.extend(flags.rest());
    if args.len() < c.min || args.len() > c.max {
        let want = if c.args.is_empty() { "no arguments".to_string() } else { format!("arguments {}", c.args) };
        let given = if args.is_empty() { "none".to_string() } else { format!("{args:?}") };
        return Err(CliError::Usage(format!("expects {want}; given {given}")));
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let address = match (socket, url) {
        (Some(_), Some(_)) => return Err(CliError::Usage("--socket and --url name two daemons: give one".into())),
        (Some(path), None) => Address::Socket(path),
        (None, Some(url)) => Address::from_url(&url).map_err(|why| CliError::Usage(format!("--url {url:?}: {why}")))?,
        (None, None) => match (env("TASKCELL_URL"), env("TASKCELL_SOCKET")) {
            (Some(url), _) => Address::from_url(&url).map_err(|why| CliError::Usage(format!("TASKCELL_URL {url:?}: {why}")))?,
            (None, socket) => Address::Socket(PathBuf::from(socket.as_deref().unwrap_or(DEFAULT_SOCKET))),
        },
    };
    let token = token.or_else(|| env("TASKCELL_TOKEN"));
    if token.as_deref().is_some_and(|t| t.bytes().any(|b| b <= b' ' || b == 0x7f)) {
        return Err(CliError::Usage("the token holds a space or control character: it is not a token".into()));
    }
    Ok(Options { daemon: Daemon { address, token }, json, args, model, timeout_ms })
}

pub fn main(name: &str, raw: Vec<String>) -> ExitCode {
    let c = COMMANDS.iter().find(|c| c.name == name).expect("main dispatches only the commands of the table");
    match parse(c, raw).and_then(|opts| (c.run)(&opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(c, e),
    }
}

fn report(c: &Command, e: CliError) -> ExitCode {
    match &e {
        CliError::Help => {
            println!("{}", command_usage(c));
            return ExitCode::SUCCESS;
        }
        // The reader went away (`taskcell logs | head`): nothing left to say, and no one to say it to.
        CliError::Output(io) if io.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
        CliError::Usage(_) | CliError::Flag(_) => {
            note(&format!("taskcell {}: {e}\n{}", c.name, command_usage(c)));
            return ExitCode::from(2);
        }
        _ => {}
    }
    let mut text = format!("taskcell: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    if let CliError::Http(HttpError::Connect { source, daemon: Address::Tcp(_) }) = &e {
        if source.kind() == io::ErrorKind::ConnectionRefused {
            text.push_str("\n(is `taskcell serve --listen-tcp` running there? --url or TASKCELL_URL names another node)");
        }
    } else if let CliError::Http(HttpError::Connect { source, .. }) = &e {
        text.push_str(match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                "\n(is `taskcell serve` running there? --socket PATH or TASKCELL_SOCKET names another socket)"
            }
            io::ErrorKind::PermissionDenied => "\n(the socket is mode 0660: run as its owner or a member of its group)",
            _ => "",
        });
    }
    if let CliError::Server { kind, .. } = &e {
        if kind == "unauthorized" {
            text.push_str(
                "\n(a node's TCP listener needs a valid token in --token or TASKCELL_TOKEN; an operator makes one with taskcell token)",
            );
        }
    }
    if let CliError::InputNotJson { from: "argument", .. } = &e {
        text.push_str("\n(quote JSON for the shell: taskcell call acme greet '{\"name\": \"Ada\"}'; strings too: '\"Ada\"')");
    }
    note(&text);
    ExitCode::from(if matches!(e, CliError::InputNotJson { .. }) { 2 } else { 1 })
}

// ---------- the commands ----------

fn deploy(o: &Options) -> Result<(), CliError> {
    let (tenant, task) = (segment("TENANT", &o.args[0])?, segment("TASK", &o.args[1])?);
    let source = read_input(&o.args[2])?;
    let mut target = format!("/v1/tenants/{tenant}/tasks/{task}");
    let mut settings = Vec::new();
    if let Some(model) = &o.model {
        settings.push(format!("model={}", segment("--model", model)?));
    }
    if let Some(ms) = &o.timeout_ms {
        settings.push(format!("timeout_ms={}", segment("--timeout-ms", ms)?));
    }
    if !settings.is_empty() {
        target = format!("{target}?{}", settings.join("&"));
    }
    let r = exchange(o, &Request { method: "PUT", target: &target, content_type: Some("application/javascript"), body: &source })?;
    if !o.json {
        let v = json_body(&r)?;
        let how = if r.status == 201 { "created" } else { "replaced" };
        let size = v["size"].as_u64().unwrap_or(source.len() as u64);
        let sha = render::short_sha(v["sha256"].as_str().unwrap_or("?"));
        out(&format!("deployed {tenant}/{task} (sha256 {sha}, {size} byte{}, {how})", if size == 1 { "" } else { "s" }))?;
    }
    Ok(())
}

/// The run envelope; `result` kept as the daemon sent it, so that its keys stay in the task's order.
#[derive(Deserialize)]
struct Envelope {
    result: Box<RawValue>,
    #[serde(default)]
    logs: Vec<Value>,
    #[serde(default)]
    cold: bool,
    #[serde(default)]
    duration_us: u64,
}

fn call(o: &Options) -> Result<(), CliError> {
    let (tenant, task) = (segment("TENANT", &o.args[0])?, segment("TASK", &o.args[1])?);
    let (input, from) = match o.args.get(2).map(String::as_str) {
        None => (Vec::new(), "argument"),
        Some("-") => (read_input("-")?, "on stdin"),
        Some(arg) => (arg.as_bytes().to_vec(), "argument"),
    };
    // Checked here so that a shell-mangled argument is caught before anything runs; sent as given, so that big
    // numbers and key order reach the task untouched. Blank input is the API's null, as no input is.
    if !input.trim_ascii().is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(&input).map_err(|source| CliError::InputNotJson { from, source })?;
    }
    let target = format!("/v1/tenants/{tenant}/tasks/{task}/run");
    let r = exchange(o, &Request { method: "POST", target: &target, content_type: Some("application/json"), body: &input })?;
    if o.json {
        return Ok(());
    }
    let env: Envelope = serde_json::from_slice(&r.body).map_err(|_| unexpected(&r))?;
    let paint = Paint::for_stream(io::stderr().is_terminal());
    for entry in &env.logs {
        note(&render::envelope_log(paint, entry));
    }
    out(&render::pretty_json(env.result.get()))?;
    if io::stderr().is_terminal() {
        note(&paint.dim(&render::run_summary(env.cold, env.duration_us)));
    }
    Ok(())
}

fn tasks(o: &Options) -> Result<(), CliError> {
    let tenant = segment("TENANT", &o.args[0])?;
    let target = format!("/v1/tenants/{tenant}/tasks");
    let r = exchange(o, &Request { method: "GET", target: &target, content_type: None, body: b"" })?;
    if !o.json {
        out(&render::tasks(tenant, &json_body(&r)?))?;
    }
    Ok(())
}

fn rm(o: &Options) -> Result<(), CliError> {
    let (tenant, task) = (segment("TENANT", &o.args[0])?, segment("TASK", &o.args[1])?);
    let target = format!("/v1/tenants/{tenant}/tasks/{task}");
    exchange(o, &Request { method: "DELETE", target: &target, content_type: None, body: b"" })?;
    if !o.json {
        out(&format!("removed {tenant}/{task}"))?;
    }
    Ok(())
}

fn egress(o: &Options) -> Result<(), CliError> {
    let tenant = segment("TENANT", &o.args[1])?;
    let target = format!("/v1/tenants/{tenant}/egress");
    let r = match o.args[0].as_str() {
        "set" => {
            let body = serde_json::json!({ "allow": &o.args[2..] }).to_string();
            exchange(o, &Request { method: "PUT", target: &target, content_type: Some("application/json"), body: body.as_bytes() })?
        }
        "get" if o.args.len() == 2 => exchange(o, &Request { method: "GET", target: &target, content_type: None, body: b"" })?,
        _ => return Err(CliError::Usage("usage: taskcell egress set TENANT [RULE...] | taskcell egress get TENANT".into())),
    };
    if !o.json {
        let v = json_body(&r)?;
        let list = |key: &str| {
            v[key].as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>()).unwrap_or_default()
        };
        let own = list("allow");
        let mut text = if own.is_empty() {
            format!("{tenant}: no egress allowed of its own")
        } else {
            format!("{tenant} may connect to:\n  {}", own.join("\n  "))
        };
        let operator = list("operator");
        if !operator.is_empty() {
            text.push_str(&format!("\nand, for every tenant (--egress-allow):\n  {}", operator.join("\n  ")));
        }
        out(&text)?;
    }
    Ok(())
}

fn health(o: &Options) -> Result<(), CliError> {
    let r = exchange(o, &Request { method: "GET", target: "/v1/health", content_type: None, body: b"" })?;
    if !o.json {
        out(&render::health(&json_body(&r)?))?;
    }
    Ok(())
}

fn secrets(o: &Options) -> Result<(), CliError> {
    let usage = || CliError::Usage("expects set TENANT NAME [VALUE|-], list TENANT or rm TENANT NAME".to_string());
    let tenant = segment("TENANT", &o.args[1])?;
    match (o.args[0].as_str(), o.args.len()) {
        ("set", 3 | 4) => {
            let name = segment("NAME", &o.args[2])?;
            let mut value = match o.args.get(3).map(String::as_str) {
                None | Some("-") => read_input("-")?,
                Some(v) => v.as_bytes().to_vec(),
            };
            // `echo value | taskcell secrets set ...` ends in a newline that is not part of the value.
            if o.args.get(3).is_none_or(|v| v == "-") && value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            let target = format!("/v1/tenants/{tenant}/secrets/{name}");
            let r =
                exchange(o, &Request { method: "PUT", target: &target, content_type: Some("text/plain; charset=utf-8"), body: &value })?;
            if !o.json {
                out(&format!("{} secret {name} of {tenant}", if r.status == 201 { "set" } else { "replaced" }))?;
            }
            Ok(())
        }
        ("list", 2) => {
            let target = format!("/v1/tenants/{tenant}/secrets");
            let r = exchange(o, &Request { method: "GET", target: &target, content_type: None, body: b"" })?;
            if !o.json {
                let v = json_body(&r)?;
                let list = v["secrets"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    out(&format!("{tenant} has no secrets"))?;
                }
                for s in list {
                    out(&format!("{:<40} {}", s["secret"].as_str().unwrap_or("?"), s["updated"].as_str().unwrap_or("")))?;
                }
            }
            Ok(())
        }
        ("rm", 3) => {
            let name = segment("NAME", &o.args[2])?;
            let target = format!("/v1/tenants/{tenant}/secrets/{name}");
            exchange(o, &Request { method: "DELETE", target: &target, content_type: None, body: b"" })?;
            if !o.json {
                out(&format!("removed secret {name} of {tenant}"))?;
            }
            Ok(())
        }
        _ => Err(usage()),
    }
}

fn logs(o: &Options) -> Result<(), CliError> {
    let tenant = o.args.first().map(|t| segment("TENANT", t)).transpose()?;
    let target = match tenant {
        Some(t) => format!("/v1/logs?tenant={t}"),
        None => "/v1/logs".to_string(),
    };
    let mut r = http::send(&o.daemon, &Request { method: "GET", target: &target, content_type: None, body: b"" })?;
    if r.status != 200 {
        // An error (503 when the daemon has too many subscribers) comes with a body of known length.
        return answer(o, &r.whole()?);
    }
    if !o.json && io::stderr().is_terminal() {
        note(&format!("following the logs of {} (Ctrl-C stops)", tenant.unwrap_or("every tenant")));
    }
    let paint = Paint::for_stream(io::stdout().is_terminal());
    let mut stdout = io::stdout().lock();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let piece = match r.next_piece() {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(HttpError::Truncated { .. }) => {
                if !pending.is_empty() {
                    event(&mut stdout, paint, &pending)?;
                }
                return Err(CliError::StreamCut);
            }
            Err(e) => return Err(e.into()),
        };
        if o.json {
            stdout.write_all(&piece).map_err(CliError::Output)?;
        } else {
            pending.extend_from_slice(&piece);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                event(&mut stdout, paint, &line[..nl])?;
            }
        }
        stdout.flush().map_err(CliError::Output)?;
    }
    if !pending.is_empty() {
        event(&mut stdout, paint, &pending)?;
    }
    note("taskcell: the daemon ended the log stream");
    Ok(())
}

/// One NDJSON line of the log stream, readable; `{"dropped": N}` becomes a warning on stderr.
fn event(stdout: &mut impl Write, paint: Paint, line: &[u8]) -> Result<(), CliError> {
    let text = match serde_json::from_slice::<Value>(line) {
        Ok(v) if v.get("dropped").is_some() && v.get("message").is_none() => {
            let warn = Paint::for_stream(io::stderr().is_terminal());
            note(&warn.warning(&format!(
                "{} taskcell: {} log events dropped: this stream fell behind",
                v["time"].as_str().unwrap_or("-"),
                v["dropped"]
            )));
            return Ok(());
        }
        Ok(v) => render::stream_event(paint, &v),
        Err(_) => String::from_utf8_lossy(line).into_owned(),
    };
    writeln!(stdout, "{text}").map_err(CliError::Output)
}

// ---------- shared steps ----------

/// Send a request and read the whole answer; print it as received with `--json`; an error status becomes
/// `CliError::Server` (its logs printed first, as the task wrote them before it failed).
fn exchange(o: &Options, req: &Request) -> Result<Whole, CliError> {
    let r = http::send(&o.daemon, req)?.whole()?;
    answer(o, &r)?;
    Ok(r)
}

fn answer(o: &Options, r: &Whole) -> Result<(), CliError> {
    if o.json {
        let mut stdout = io::stdout().lock();
        stdout.write_all(&r.body).map_err(CliError::Output)?;
        // For a person at a terminal only: scripts get the body byte for byte.
        if stdout.is_terminal() && !r.body.is_empty() && !r.body.ends_with(b"\n") {
            stdout.write_all(b"\n").map_err(CliError::Output)?;
        }
        stdout.flush().map_err(CliError::Output)?;
    }
    if (200..300).contains(&r.status) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|_| unexpected(r))?;
    let (Some(kind), Some(message)) = (v["error"]["kind"].as_str(), v["error"]["message"].as_str()) else {
        return Err(unexpected(r));
    };
    if !o.json {
        let paint = Paint::for_stream(io::stderr().is_terminal());
        for entry in v["logs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            note(&render::envelope_log(paint, entry));
        }
    }
    Err(CliError::Server { kind: kind.to_string(), message: message.to_string() })
}

fn json_body(r: &Whole) -> Result<Value, CliError> {
    serde_json::from_slice(&r.body).map_err(|_| unexpected(r))
}

fn unexpected(r: &Whole) -> CliError {
    let text = String::from_utf8_lossy(&r.body);
    let mut body: String = text.trim().chars().take(200).collect();
    if text.trim().chars().count() > 200 {
        body.push('…');
    }
    CliError::Unexpected { status: r.status, body }
}

/// A path segment, sent as given: the daemon judges names. Only what cannot be written into a request line at
/// all (spaces, control characters) is refused here.
fn segment<'a>(what: &str, value: &'a str) -> Result<&'a str, CliError> {
    if value.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(CliError::Usage(format!("{what} {value:?} holds a space or control character, which a request path cannot carry")));
    }
    Ok(value)
}

/// A file's bytes, or stdin's for `-`.
fn read_input(path: &str) -> Result<Vec<u8>, CliError> {
    if path == "-" {
        let mut buf = Vec::new();
        io::stdin().lock().read_to_end(&mut buf).map_err(|source| CliError::Read { path: "stdin".into(), source })?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(|source| CliError::Read { path: path.into(), source })
}

fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}").and_then(|()| stdout.flush()).map_err(CliError::Output)
}

/// A line on stderr; if stderr is gone there is nowhere to say so.
fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &str) -> &'static Command {
        COMMANDS.iter().find(|c| c.name == name).unwrap()
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_arguments() {
        let o = parse(cmd("call"), args(&["--socket=/s", "acme", "--json", "greet", "-1"])).unwrap();
        assert_eq!((o.daemon.address, o.json, o.args), (Address::Socket("/s".into()), true, args(&["acme", "greet", "-1"])));
        let o = parse(cmd("tasks"), args(&["--url", "http://127.0.0.1:7", "--token=t.k.n", "acme"])).unwrap();
        assert_eq!((o.daemon.address, o.daemon.token.as_deref()), (Address::Tcp("127.0.0.1:7".into()), Some("t.k.n")));
        assert!(matches!(parse(cmd("tasks"), args(&["--url", "http://x:1", "--socket", "/s", "acme"])), Err(CliError::Usage(_))));
        assert!(matches!(parse(cmd("tasks"), args(&["--url", "https://x:1", "acme"])), Err(CliError::Usage(_))));
        assert!(matches!(parse(cmd("tasks"), args(&["--token", "a b", "acme"])), Err(CliError::Usage(_))));
        let o = parse(cmd("call"), args(&["acme", "greet", "{\"a\":\"b=c\"}"])).unwrap();
        assert_eq!(o.args[2], "{\"a\":\"b=c\"}");
        let o = parse(cmd("deploy"), args(&["--socket", "/s", "--", "acme", "greet", "--weird"])).unwrap();
        assert_eq!(o.args, args(&["acme", "greet", "--weird"]));
        assert!(matches!(parse(cmd("rm"), args(&["acme"])), Err(CliError::Usage(_))));
        assert!(matches!(parse(cmd("health"), args(&["x"])), Err(CliError::Usage(_))));
        assert!(matches!(parse(cmd("tasks"), args(&["--nope", "acme"])), Err(CliError::Flag(ArgError::Unknown(_)))));
        assert!(matches!(parse(cmd("tasks"), args(&["--socket"])), Err(CliError::Flag(ArgError::Missing { .. }))));
        assert!(matches!(parse(cmd("logs"), args(&["-h"])), Err(CliError::Help)));
    }

    #[test]
    fn segments_go_as_given_unless_unsendable() {
        assert_eq!(segment("TASK", "Not-Valid..").unwrap(), "Not-Valid..");
        assert!(segment("TASK", "a b").is_err());
        assert!(segment("TASK", "a\r\nX: y").is_err());
    }

    #[test]
    fn usage_lists_every_command() {
        let u = usage();
        for c in COMMANDS {
            assert!(u.contains(&format!("taskcell {} {}", c.name, c.args)), "{u}");
        }
    }
}
