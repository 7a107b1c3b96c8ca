//! The mount namespace every sandbox's own is copied from: an empty
//! read-only root (built by `sandkasten-agent base-ns`). Launchers join a
//! copy of it and `chroot` into their assembled rootfs instead of calling
//! `pivot_root`, whose cost grows with every thread on the host. The
//! daemon holds it by a descriptor for its whole life; launchers open it
//! through `/proc/<daemon>/fd/<n>`, so no other child inherits it.

use sandkasten_runtime::RuntimeError;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub(crate) struct BaseNs {
    fd: OwnedFd,
}

impl BaseNs {
    /// Starts the helper, holds its mount namespace, lets it exit.
    pub(crate) fn start(agent: &Path) -> Result<BaseNs, RuntimeError> {
        let failed = |why: String| {
            RuntimeError::HostNotReady(format!(
                "building the sandboxes' base mount namespace: {why}"
            ))
        };
        let mut child = Command::new(agent)
            .arg0("sandkasten-agent")
            .arg("base-ns")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("starting {}: {e}", agent.display())))?;
        let mut line = String::new();
        let out = child.stdout.take().expect("piped stdout");
        let _ = BufReader::new(out).read_line(&mut line);
        let fd = if line == "ok\n" {
            std::fs::File::open(format!("/proc/{}/ns/mnt", child.id()))
                .map(OwnedFd::from)
                .map_err(|e| failed(format!("opening its namespace: {e}")))
        } else {
            Err(failed(String::new()))
        };
        // Closing stdin ends the helper.
        drop(child.stdin.take());
        let done = child.wait_with_output();
        match (fd, done) {
            (Ok(fd), _) => Ok(BaseNs { fd }),
            (Err(RuntimeError::HostNotReady(msg)), Ok(out)) if line != "ok\n" => {
                Err(RuntimeError::HostNotReady(format!(
                    "{msg}{}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Where a launcher opens it.
    pub(crate) fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }
}
