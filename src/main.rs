//! taskcell: run untrusted tenant Node.js functions in pre-warmed Linux sandboxes.
//!
//! `taskcell serve` is the daemon (the `runtime` library's `daemon`); `taskcell jail` runs one command in a one-off sandbox with
//! exactly the isolation tenants get (see `jail`); `deploy`, `call`, `tasks`, `rm`, `logs` and `health` are the
//! command line for people, talking to a running daemon over its socket (see `cli`); `modules` installs the
//! operator's npm modules that `serve --modules` hands to tenant code (see `modules`); `token` makes the bearer
//! tokens of a node's TCP listener (see `token`); `log-hub` is the hub that carries every node's log events to
//! every node's `/v1/logs` (the runtime library's `daemon::log_hub`); `store-import` copies a node's state
//! directory into the shared store (`daemon::shared_store`).

mod cli;
mod jail;
mod modules;
mod token;

// The daemon and what it shares with the other commands live in the runtime library.
use runtime::{args, daemon, signals};

use std::process::ExitCode;

const USAGE: &str = "usage:
  taskcell serve [--config FILE] [--socket PATH] [--state-dir DIR] [--pool-size N] [--rootfs DIR]
                 [--timeout-ms N] [--memory BYTES] [--pids N]
  taskcell jail [--memory BYTES] [--pids N] [--bind-ro HOST:INSIDE]... [--rootfs DIR] -- CMD [ARGS...]
  taskcell modules add|list|remove --dir DIR [NAME@VERSION...]   (taskcell modules --help)
  taskcell token --tenant TENANT|'*' --ttl DURATION [--key FILE]   (a bearer token for serve --listen-tcp)
  taskcell log-hub --in tcp://HOST:PORT --out tcp://HOST:PORT   (live logs across nodes: serve --log-hub-in/-out)
  taskcell store-import --state-dir DIR --store postgres://...   (a node's state into the shared store, once)";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    match argv.next().as_deref() {
        Some("jail") => jail::main(argv.collect()),
        Some("serve") => daemon::main(argv.collect()),
        Some("modules") => modules::main(argv.collect()),
        Some("token") => token::main(argv.collect()),
        Some("log-hub") => daemon::log_hub::hub_main(argv.collect()),
        Some("store-import") => daemon::shared_store::import_main(argv.collect()),
        Some(cmd) if cli::is_command(cmd) => cli::main(cmd, argv.collect()),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}\n\n{}", cli::usage());
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("taskcell: unknown command {other:?}\n{USAGE}\n\n{}", cli::usage());
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}\n\n{}", cli::usage());
            ExitCode::from(2)
        }
    }
}
