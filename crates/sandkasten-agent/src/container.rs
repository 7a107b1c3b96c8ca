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
    config: PathBuf,
}

fn parse(args: &[String]) -> Option<Args> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    Some(Args {
        socket: value("--socket")?,
        config: value("--config")?,
    })
}

/// Runs the container mode; returns only on a setup error.
pub fn run(args: &[String]) -> ExitCode {
    let Some(args) = parse(args) else {
        eprintln!("usage: sandkasten-agent container --socket PATH --config PATH");
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
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("reading config {}: {e}", args.config.display()))?;
    let cfg: AgentConfig =
        serde_json::from_str(&text).map_err(|e| format!("invalid config: {e}"))?;
    if let (Some(uid), Some(gid)) = (cfg.uid, cfg.gid) {
        ensure_home(Path::new(&cfg.home), uid, gid);
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
        assert_eq!(p.config, PathBuf::from("/r/c.json"));
        assert!(parse(&a[..3]).is_none());
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
