//! `sandkasten-agent`: the in-sandbox agent. Statically linked, it runs as
//! PID 1 of every sandbox.
//!
//! Modes:
//! - `sandkasten-agent base-ns`: build the mount namespace that sandboxes'
//!   namespaces are copied from (an empty read-only root), print `ok` and
//!   wait for stdin to close. See `init/basens.rs`.
//! - `sandkasten-agent spawner`: for each request on the socket at stdin,
//!   fork a launcher (shown as `sandkasten-agent init`): it reads a
//!   [`LaunchSpec`] (JSON) on stdin, builds the sandbox (namespaces,
//!   mounts, cgroups, seccomp), prints a [`LaunchReport`] on stdout, and its
//!   child serves the daemon as the sandbox's PID 1. See `spawner.rs` and
//!   `init/`.
//! - `sandkasten-agent container --socket PATH --config PATH`: PID 1 of a
//!   container of the docker runtime; the engine built the sandbox, this
//!   mode adds seccomp and serves. See `container.rs`. On a remote engine
//!   `--config-env NAME --own-workdir` instead (no host file can be shared).
//! - `sandkasten-agent relay --socket PATH`: started by the daemon through
//!   the engine's exec API on a remote engine; copies stdin and stdout to
//!   and from the agent's socket. See `relay.rs`.
//! - `sandkasten-agent publish TMP NAME`: renames TMP to NAME (how the
//!   agent is put into a remote engine's agent volume, atomically).
//! - `sandkasten-agent serve --socket PATH`: serve on a Unix socket without
//!   any sandboxing, with an [`AgentConfig`] (JSON) on stdin. Only for tests
//!   of the shell and file logic.
//!
//! [`LaunchSpec`]: sandkasten_protocol::LaunchSpec
//! [`LaunchReport`]: sandkasten_protocol::LaunchReport
//! [`AgentConfig`]: sandkasten_protocol::AgentConfig

mod container;
mod envs;
mod files;
mod init;
mod ports;
mod procs;
mod reads;
mod reaper;
mod relay;
mod server;
mod shell;
mod spawner;
mod sys;
mod watch;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

fn main() -> ExitCode {
    // One malloc arena for all threads: a few threads, little allocation,
    // and every extra arena costs each of thousands of idle sandboxes its
    // own dirty pages and page tables.
    // SAFETY: mallopt before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("base-ns") => init::run_base_ns(),
        Some("spawner") => spawner::run(),
        Some("container") => container::run(&args),
        Some("relay") => relay::run(&args),
        // `publish TMP NAME`: rename(2), atomic. A helper container of a
        // remote engine puts the agent into the shared agent volume this
        // way, so a half-written binary is never under its final name.
        Some("publish") => match (args.get(2), args.get(3)) {
            (Some(from), Some(to)) => match std::fs::rename(from, to) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sandkasten-agent publish: {from} -> {to}: {e}");
                    ExitCode::from(1)
                }
            },
            _ => {
                eprintln!("usage: sandkasten-agent publish TMP NAME");
                ExitCode::from(2)
            }
        },
        Some("serve") => {
            let Some(path) = args
                .iter()
                .position(|a| a == "--socket")
                .and_then(|i| args.get(i + 1))
            else {
                eprintln!("usage: sandkasten-agent serve --socket PATH < config.json");
                return ExitCode::from(2);
            };
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("sandkasten-agent: reading config from stdin: {e}");
                return ExitCode::from(2);
            }
            let cfg = match serde_json::from_str(&input) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sandkasten-agent: invalid config: {e}");
                    return ExitCode::from(2);
                }
            };
            let _ = std::fs::remove_file(path);
            let listener = match UnixListener::bind(path) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("sandkasten-agent: bind {path}: {e}");
                    return ExitCode::from(1);
                }
            };
            server::serve(listener, cfg)
        }
        Some("version") | Some("--version") => {
            println!("sandkasten-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: sandkasten-agent base-ns | spawner | container --socket PATH --config PATH | relay --socket PATH | serve --socket PATH | version");
            ExitCode::from(2)
        }
    }
}
