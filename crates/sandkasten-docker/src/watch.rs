//! Waiting for a file to appear in a directory: inotify on the directory,
//! awaited through tokio, so the daemon learns the moment the agent's
//! socket is in place instead of polling for it.

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use std::io;
use std::os::fd::OwnedFd;
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
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        inotify::add_watch(
            &fd,
            dir,
            WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::ONLYDIR,
        )?;
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
                match rustix::io::read(self.fd.get_ref(), &mut buf) {
                    Ok(0) => {
                        guard.clear_ready();
                        break;
                    }
                    Ok(_) => continue,
                    Err(rustix::io::Errno::AGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
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
