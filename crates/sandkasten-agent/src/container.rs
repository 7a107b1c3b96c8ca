//! `sandkasten-agent container`: PID 1 of a container started by the
//! docker runtime.
//!
//! The container engine has already built the sandbox (namespaces, mounts,
//! cgroups, the capability bounding set, no-new-privileges); this mode only
//! adds what the engine does not do, then serves the daemon:
//!
//! - reads its [`AgentConfig`] (JSON) from a file in the per-session run
//!   directory that the daemon bind-mounts into the container (mode 0700,
//!   owned by root, so the sandbox user can neither read it nor reach the
//!   socket next to it);
//! - installs the same seccomp filter as the native sandbox init (stacked
//!   on the engine's own profile);
//! - binds the agent socket under a temporary name, and renames it into
//!   place only once it listens: the daemon waits for that rename (an
//!   inotify event on the host side of the directory), so a socket it sees
//!   always accepts;
//! - serves (`server::serve`), whose reaper thread reaps every zombie
//!   orphaned into the container, as a PID 1 must.
//!
//! [`AgentConfig`]: sandkasten_protocol::AgentConfig

use sandkasten_protocol::AgentConfig;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of the container mode.
struct Args {
    socket: PathBuf,
    config: ConfigSource,
    /// Give the workdir's root to the sandbox user when root owns it (a
    /// fresh volume on a remote engine, which the daemon cannot reach).
    own_workdir: bool,
}

/// Where the config comes from.
#[derive(Debug, PartialEq)]
enum ConfigSource {
    /// A file in the run directory (a local engine).
    File(PathBuf),
    /// An environment variable of PID 1 (a remote engine: no file can be
    /// placed before start). Only root in the container can read it.
    Env(String),
}

fn parse(args: &[String]) -> Option<Args> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let config = match (value("--config"), value("--config-env")) {
        (Some(p), None) => ConfigSource::File(PathBuf::from(p)),
        (None, Some(v)) => ConfigSource::Env(v.clone()),
        _ => return None,
    };
    Some(Args {
        socket: PathBuf::from(value("--socket")?),
        config,
        own_workdir: args.iter().any(|a| a == "--own-workdir"),
    })
}

/// Runs the container mode; returns only on a setup error.
pub fn run(args: &[String]) -> ExitCode {
    let Some(args) = parse(args) else {
        eprintln!(
            "usage: sandkasten-agent container --socket PATH (--config PATH | --config-env NAME) \
             [--own-workdir]"
        );
        return ExitCode::from(2);
    };
    match setup(&args) {
        Ok((listener, cfg)) => crate::server::serve(listener, cfg),
        Err(e) => {
            eprintln!("sandkasten-agent container: {e}");
            ExitCode::from(1)
        }
    }
}

fn setup(args: &Args) -> Result<(UnixListener, AgentConfig), String> {
    let text = match &args.config {
        ConfigSource::File(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("reading config {}: {e}", p.display()))?,
        ConfigSource::Env(name) => {
            let v = std::env::var(name).map_err(|e| format!("config variable {name}: {e}"))?;
            // Nothing started from here on inherits it, and /proc/1/environ
            // (the original bytes, readable where the runtime does not guard
            // it, as gVisor) no longer shows it.
            scrub_environ(name);
            std::env::remove_var(name);
            v
        }
    };
    let cfg: AgentConfig =
        serde_json::from_str(&text).map_err(|e| format!("invalid config: {e}"))?;
    if let (Some(uid), Some(gid)) = (cfg.uid, cfg.gid) {
        ensure_home(Path::new(&cfg.home), uid, gid);
        if args.own_workdir {
            sandkasten_fsops::own_root_owned_dir(Path::new(&cfg.workdir), uid, gid)
                .map_err(|e| format!("giving {} to the sandbox user: {e}", cfg.workdir))?;
        }
    }
    crate::init::seccomp::install()?;
    let listener = bind_atomically(&args.socket)?;
    Ok((listener, cfg))
}

/// Creates the sandbox user's home directory when the image lacks it
/// (best effort: a read-only root filesystem keeps it missing, and the
/// shell then starts without one, as it would for a user without a home).
fn ensure_home(home: &Path, uid: u32, gid: u32) {
    if home.as_os_str().is_empty() || home.exists() {
        return;
    }
    if std::fs::create_dir_all(home).is_ok() {
        let _ = std::os::unix::fs::chown(home, Some(uid), Some(gid));
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755));
    }
}

/// Overwrites the value of `name` in the process's original environment
/// block with spaces (what /proc/<pid>/environ reads).
fn scrub_environ(name: &str) {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    let prefix = format!("{name}=");
    // SAFETY: single-threaded at this point; walks the NULL-terminated
    // environ array and writes only within each entry's own bytes.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = *p;
            let bytes = std::ffi::CStr::from_ptr(entry).to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                let value = entry.add(prefix.len());
                std::ptr::write_bytes(value, b' ', bytes.len() - prefix.len());
            }
            p = p.add(1);
        }
    }
}

/// Binds `path.tmp`, makes it 0600, and renames it to `path` once it
/// listens (`UnixListener::bind` has called `listen` when it returns).
fn bind_atomically(path: &Path) -> Result<UnixListener, String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| format!("binding {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming the socket into place: {e}"))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_paths() {
        let a: Vec<String> = [
            "container",
            "--socket",
            "/r/a.sock",
            "--config",
            "/r/c.json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = parse(&a).unwrap();
        assert_eq!(p.socket, PathBuf::from("/r/a.sock"));
        assert_eq!(p.config, ConfigSource::File(PathBuf::from("/r/c.json")));
        assert!(!p.own_workdir);
        assert!(parse(&a[..3]).is_none());
        let b: Vec<String> = [
            "container",
            "--socket",
            "/r/a.sock",
            "--config-env",
            "CFG",
            "--own-workdir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = parse(&b).unwrap();
        assert_eq!(p.config, ConfigSource::Env("CFG".into()));
        assert!(p.own_workdir);
        let both = [&a[..], &b[3..5]].concat();
        assert!(parse(&both).is_none(), "one config source only");
    }

    #[test]
    fn socket_appears_only_listening() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let _l = bind_atomically(&sock).unwrap();
        assert!(!dir.path().join("agent.sock.tmp").exists());
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::os::unix::net::UnixStream::connect(&sock).unwrap();
    }
}
