//! Waiting for a file to appear in a directory: inotify on the directory,
//! awaited through tokio, so the daemon learns the moment the agent's
//! socket is in place instead of polling for it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;

/// An inotify watch for entries created in (or renamed into) one
/// directory. Set it up before whatever creates the entry starts, so no
/// event is missed.
pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    dir: PathBuf,
}

impl DirWatch {
    pub fn new(dir: &Path) -> io::Result<DirWatch> {
        // SAFETY: inotify_init1 takes flags only.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the inotify fd and nothing else closes
        // or replaces it while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(DirWatch {
            fd,
            dir: dir.to_path_buf(),
        })
    }

    /// Resolves once `name` exists in the directory.
    pub async fn appeared(&self, name: &str) -> io::Result<()> {
        let target = self.dir.join(name);
        loop {
            if std::fs::symlink_metadata(&target).is_ok() {
                return Ok(());
            }
            let mut guard = self.fd.readable().await?;
            // Drain every queued event; which one it was does not matter,
            // the existence check above decides.
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reading into our own buffer.
                let n = unsafe {
                    libc::read(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n > 0 {
                    continue;
                }
                if n == 0 {
                    guard.clear_ready();
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    break;
                }
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sees_a_rename_into_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirWatch::new(dir.path()).unwrap();
        let d = dir.path().to_path_buf();
        let writer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            std::fs::write(d.join("x.tmp"), "").unwrap();
            std::fs::rename(d.join("x.tmp"), d.join("x")).unwrap();
        });
        tokio::time::timeout(Duration::from_secs(5), w.appeared("x"))
            .await
            .expect("no event")
            .unwrap();
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn an_existing_entry_resolves_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("y"), "").unwrap();
        let w = DirWatch::new(dir.path()).unwrap();
        w.appeared("y").await.unwrap();
    }
}
