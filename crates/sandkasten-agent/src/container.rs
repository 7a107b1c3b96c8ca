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
//! - names the sandbox user (the daemon's `docker.sandbox_uid`, never a
//!   host account's) in the container's `/etc/passwd` and `/etc/group`,
//!   and takes over its home (and with `--own-workdir` the workdir) where
//!   an earlier sandbox uid owns it (images made for uid 1000);
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
        if let Err(e) = ensure_account(Path::new("/etc"), uid, gid, &cfg.home) {
            // A read-only root filesystem: the ids still hold, only their
            // name is missing (`whoami` fails, `id -u` works).
            eprintln!("sandkasten-agent container: naming the sandbox user: {e}");
        }
        ensure_home(Path::new(&cfg.home), uid, gid);
        if args.own_workdir {
            sandkasten_fsops::claim_tree(Path::new(&cfg.workdir), uid, gid)
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
/// A home of an earlier sandbox uid (an image made for uid 1000, a
/// container committed under an earlier `docker.sandbox_uid`) is taken
/// over; a root-owned one (a helper's `/tmp`) stays root's.
fn ensure_home(home: &Path, uid: u32, gid: u32) {
    if home.as_os_str().is_empty() {
        return;
    }
    if let Ok(m) = std::fs::symlink_metadata(home) {
        use std::os::unix::fs::MetadataExt;
        if m.is_dir() && m.uid() != 0 && m.uid() != uid {
            if let Err(e) = sandkasten_fsops::claim_tree(home, uid, gid) {
                eprintln!(
                    "sandkasten-agent container: taking over {}: {e}",
                    home.display()
                );
            }
        }
        return;
    }
    if std::fs::create_dir_all(home).is_ok() {
        let _ = std::os::unix::fs::chown(home, Some(uid), Some(gid));
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755));
    }
}

/// Gives the sandbox user (`uid`:`gid`) a name in the container's
/// `<etc>/passwd` and `<etc>/group` unless an entry has its id already:
/// an image's `sandbox` entry (made for uid 1000) gets the ids, else one
/// is added (home `home`, bash where the image has it). Each file is
/// written beside the old one and renamed over it (a symlink there is
/// replaced, never written through).
fn ensure_account(etc: &Path, uid: u32, gid: u32, home: &str) -> Result<(), String> {
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let passwd = etc.join("passwd");
    let text = read_existing(&passwd)?;
    if let Some(new) = with_id(&text, uid, Some(gid), || {
        format!("sandbox:x:{uid}:{gid}:sandbox:{home}:{shell}")
    }) {
        replace_file(&passwd, &new)?;
    }
    let group = etc.join("group");
    let text = read_existing(&group)?;
    if let Some(new) = with_id(&text, gid, None, || format!("sandbox:x:{gid}:")) {
        replace_file(&group, &new)?;
    }
    Ok(())
}

/// A passwd- or group-style `text` in which `sandbox` has id `id` (field
/// 3; `gid` also sets field 4 of a passwd line), or `None` when an entry
/// has `id` already. An existing `sandbox` line keeps its other fields.
fn with_id(
    text: &str,
    id: u32,
    gid: Option<u32>,
    new_line: impl FnOnce() -> String,
) -> Option<String> {
    let id_text = id.to_string();
    if text.lines().any(|l| l.split(':').nth(2) == Some(&id_text)) {
        return None;
    }
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split(':').map(str::to_string).collect();
            if f.first().map(String::as_str) != Some("sandbox") || f.len() < 3 {
                return l.to_string();
            }
            found = true;
            f[2] = id_text.clone();
            if let (Some(g), Some(slot)) = (gid, f.get_mut(3)) {
                *slot = g.to_string();
            }
            f.join(":")
        })
        .collect();
    if !found {
        out.push(new_line());
    }
    Some(out.join("\n") + "\n")
}

/// The content of `path`, empty when it does not exist.
fn read_existing(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Writes `text` to `path` (mode 0644) through a new file renamed over it.
fn replace_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".sandkasten");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
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
    fn the_sandbox_user_gets_its_ids_in_passwd_and_group() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path();
        // An image made for uid 1000.
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\nsandbox:x:1000:\n").unwrap();
        ensure_account(etc, 90000, 90000, "/home/sandbox").unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("passwd")).unwrap(),
            "root:x:0:0:root:/root:/bin/sh\nsandbox:x:90000:90000:sandbox:/home/sandbox:/bin/bash\n"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("group")).unwrap(),
            "root:x:0:\nsandbox:x:90000:\n"
        );
        let mode = std::fs::metadata(etc.join("passwd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // Done: nothing changes again.
        let before = std::fs::metadata(etc.join("passwd"))
            .unwrap()
            .modified()
            .unwrap();
        ensure_account(etc, 90000, 90000, "/home/sandbox").unwrap();
        let after = std::fs::metadata(etc.join("passwd"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        // An image without the user (and without a group file).
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh").unwrap();
        std::fs::remove_file(etc.join("group")).unwrap();
        ensure_account(etc, 90000, 90000, "/home/sandbox").unwrap();
        let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
        assert!(
            passwd.starts_with(
                "root:x:0:0:root:/root:/bin/sh\nsandbox:x:90000:90000:sandbox:/home/sandbox:/bin/"
            ),
            "{passwd}"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("group")).unwrap(),
            "sandbox:x:90000:\n"
        );
        // A symlink at the file's place is replaced, never written through.
        let outside = d.path().join("outside");
        std::fs::write(&outside, "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::remove_file(etc.join("group")).unwrap();
        std::os::unix::fs::symlink(&outside, etc.join("group")).unwrap();
        ensure_account(etc, 90000, 90000, "/home/sandbox").unwrap();
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            "root:x:0:0::/:/bin/sh\n"
        );
        assert!(!std::fs::symlink_metadata(etc.join("group"))
            .unwrap()
            .is_symlink());
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
