//! Snapshots of whole sandboxes (a local engine with runc).
//!
//! Sandbox snapshot `<snap>` (taken while the engine has the container
//! paused):
//! ```text
//! image sandkasten-snapshot:<snap>      `docker commit` of the container: its root
//!                                       filesystem changes (never listed as an image)
//! <data_dir>/docker-snapshots/<snap>/   root-only, copied from the frozen container
//!   workspace/                          its `/workspace` (the ephemeral volume)
//!   tmp/                                its `/tmp` (a tmpfs, which a commit does not see)
//! ```
//! Both copies are read through `/proc/<pid>/root` of its PID 1 (proven by
//! pid and start time), so they are what the sandbox saw at that point.
//! They are made in `<snap>.partial` and renamed into place after the
//! commit; the runtime's start removes what a crash left half-made. (A
//! crash after the commit but before the engine recorded the snapshot
//! leaves a snapshot no one lists; nothing removes that yet.)
//!
//! A create from it tags the snapshot's image as the new session's own
//! image ([`crate::hibernated_image`], removed with the session, which a
//! hibernation of it replaces), starts on that tag, fills its new ephemeral
//! volume from `workspace/` before the container starts and its `/tmp`
//! from `tmp/` before anything but the agent runs. The session holds its
//! own tag, so deleting the snapshot only untags the image while sessions
//! started from it run on it, and the last one's destroy removes it.
//!
//! Not here: a session with a persistent workspace (docker workspaces have
//! no snapshots; refused before anything is copied, from the container's
//! `mountinfo`: the `/workspace` mount is not its own volume), a remote engine or another OCI runtime such
//! as gVisor (no host path to the container's files; gVisor's root
//! filesystem changes are also invisible to a commit).

use crate::{api_err, hibernated_image, status_of, volume_root, DockerRuntime};
use bollard::query_parameters::{CommitContainerOptionsBuilder, TagImageOptionsBuilder};
use sandkasten_runtime::{blocking, latebind, RuntimeError, SandboxHandle, SandboxSpec};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image repository sandbox snapshots are committed to (tag: the
/// snapshot id); never listed as an image (the engine lists snapshots).
pub const SNAPSHOT_REPO: &str = "sandkasten-snapshot";

/// The image sandbox snapshot `snap` was committed to.
pub fn snapshot_image(snap: &str) -> String {
    format!("{SNAPSHOT_REPO}:{snap}")
}

/// A snapshot id we can put in a path and a tag (the engine makes them:
/// `ssnap-<hex>`).
fn check_snap(snap: &str) -> Result<(), RuntimeError> {
    let ok = !snap.is_empty()
        && snap.len() <= 100
        && snap
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !snap.starts_with('-');
    match ok {
        true => Ok(()),
        false => Err(RuntimeError::NotFound(format!("sandbox snapshot {snap}"))),
    }
}

/// `cp -a` of directory `src`'s content onto `dst` (created if missing;
/// its own owner and mode become `src`'s). Symlinks are copied as links,
/// never followed.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), RuntimeError> {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--no-target-directory")
        .arg(src)
        .arg(dst)
        .output()
        .map_err(RuntimeError::io_ctx("running cp".to_string()))?;
    if !out.status.success() {
        return Err(RuntimeError::Io {
            context: format!("copying {} to {}", src.display(), dst.display()),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// Whether the `/workspace` a container sees (the topmost mount there in
/// its `mountinfo`) is its own ephemeral volume, not a persistent
/// workspace's (mounted at create or bound late over it).
fn ephemeral_workspace(mountinfo: &str, id: &str) -> bool {
    let own = format!("/{}/_data", crate::volume_name(id));
    let top = mountinfo
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&"/workspace")).then(|| f.get(3).copied())
        })
        .flatten();
    top.is_some_and(|root| root.ends_with(&own))
}

/// Removes what snapshots a daemon ended during left half-made in data
/// dir `data` (`<snap>.partial`; called at start, when none is taken).
pub(crate) fn remove_partial(data: &Path) -> Result<(), RuntimeError> {
    let dir = data.join("docker-snapshots");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(RuntimeError::io_ctx(format!("reading {}", dir.display()))(
                e,
            ))
        }
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".partial") {
            remove_dir(&e.path())?;
        }
    }
    Ok(())
}

/// Removes a snapshot directory (our own copy: it holds no mounts).
fn remove_dir(p: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RuntimeError::io_ctx(format!("removing {}", p.display()))(e))
        }
        _ => Ok(()),
    }
}

impl DockerRuntime {
    /// Where sandbox snapshot `snap`'s copies of `/workspace` and `/tmp` are.
    fn snapshot_dir(&self, snap: &str) -> PathBuf {
        self.cfg.data_dir.join("docker-snapshots").join(snap)
    }

    /// Whether sandbox snapshots work here (see the module docs).
    pub(crate) fn snapshots_supported(&self) -> bool {
        self.transport.can_bind_workspace() && !self.gvisor
    }

    fn snapshots_unsupported(&self) -> RuntimeError {
        RuntimeError::Unsupported(
            "snapshots of a whole sandbox (they need a local engine with runc whose \
             processes the daemon sees; not a remote engine, not gVisor)"
                .into(),
            "docker",
        )
    }

    /// The root of the frozen or running container behind `handle` as a
    /// host path (`/proc/<pid>/root`), once its PID 1 is proven.
    fn container_root(&self, handle: &SandboxHandle) -> Result<PathBuf, RuntimeError> {
        latebind::open_verified(handle.pid, handle.start_time)
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
        Ok(PathBuf::from(format!("/proc/{}/root", handle.pid)))
    }

    /// See the module docs; the caller has the container paused.
    pub(crate) async fn take_snapshot(
        &self,
        handle: &SandboxHandle,
        snap: &str,
    ) -> Result<(), RuntimeError> {
        if !self.snapshots_supported() {
            return Err(self.snapshots_unsupported());
        }
        check_snap(snap)?;
        let root = self.container_root(handle)?;
        let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", handle.pid))
            .map_err(|_| RuntimeError::Gone(handle.id.clone()))?;
        if !ephemeral_workspace(&mountinfo, &handle.id) {
            // Before copying it in vain: the engine's snapshot of the
            // workspace would refuse anyway.
            return Err(RuntimeError::Unsupported(
                "snapshots of a sandbox with a persistent workspace (docker workspaces have \
                 no snapshots)"
                    .into(),
                "docker",
            ));
        }
        let dir = self.snapshot_dir(snap);
        let partial = dir.with_file_name(format!("{snap}.partial"));
        let (d, p) = (dir.clone(), partial.clone());
        blocking("copying a sandbox's /workspace and /tmp", move || {
            let parent = d.parent().expect("a snapshot dir has a parent");
            crate::hostfs::private_dir(parent).map_err(RuntimeError::io_ctx(format!(
                "creating {}",
                parent.display()
            )))?;
            remove_dir(&p)?;
            crate::hostfs::private_dir(&p)
                .map_err(RuntimeError::io_ctx(format!("creating {}", p.display())))?;
            copy_tree(&root.join("workspace"), &p.join("workspace"))?;
            copy_tree(&root.join("tmp"), &p.join("tmp"))
        })
        .await
        .inspect_err(|_| self.forget_partial(&partial))?;
        let name = crate::container_name(&handle.id);
        // The engine paused it: a commit's own pause would find it paused.
        let opts = CommitContainerOptionsBuilder::default()
            .container(&name)
            .repo(SNAPSHOT_REPO)
            .tag(snap)
            .pause(false)
            .build();
        if let Err(e) = self
            .docker
            .commit_container(opts, bollard::models::ContainerConfig::default())
            .await
        {
            self.forget_partial(&partial);
            return Err(match status_of(&e) {
                Some(404) => RuntimeError::Gone(handle.id.clone()),
                _ => api_err(format!("committing container {name}"))(e),
            });
        }
        let what = format!("renaming {}", partial.display());
        blocking("completing a sandbox snapshot", move || {
            std::fs::rename(&partial, &dir).map_err(RuntimeError::io_ctx(what))
        })
        .await
    }

    /// Removes a half-made snapshot directory (in the background).
    fn forget_partial(&self, partial: &Path) {
        let p = partial.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = remove_dir(&p) {
                tracing::warn!("removing a half-made sandbox snapshot: {e}");
            }
        });
    }

    /// Removes sandbox snapshot `snap`'s image tag and directory; a missing
    /// one is fine.
    pub(crate) async fn remove_snapshot(&self, snap: &str) -> Result<(), RuntimeError> {
        if check_snap(snap).is_err() {
            return Ok(());
        }
        crate::remove_image(&self.docker, &snapshot_image(snap)).await?;
        let dir = self.snapshot_dir(snap);
        let partial = dir.with_file_name(format!("{snap}.partial"));
        blocking("removing a sandbox snapshot", move || {
            remove_dir(&dir)?;
            remove_dir(&partial)
        })
        .await
    }

    /// The image a create from snapshot `snap` starts on: the snapshot's,
    /// tagged as session `id`'s own.
    pub(crate) async fn image_from_snapshot(
        &self,
        id: &str,
        snap: &str,
    ) -> Result<String, RuntimeError> {
        if !self.snapshots_supported() {
            return Err(self.snapshots_unsupported());
        }
        check_snap(snap)?;
        let own = hibernated_image(id);
        let (repo, tag) = own.split_once(':').expect("repo:tag");
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        match self
            .docker
            .tag_image(&snapshot_image(snap), Some(opts))
            .await
        {
            Ok(()) => Ok(own),
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::NotFound(format!("sandbox snapshot {snap}")))
            }
            Err(e) => Err(api_err(format!("tagging {}", snapshot_image(snap)))(e)),
        }
    }

    /// Fills session `spec`'s new ephemeral volume with snapshot `snap`'s
    /// `/workspace` (before its container starts).
    pub(crate) async fn fill_workspace(
        &self,
        spec: &SandboxSpec,
        snap: &str,
    ) -> Result<(), RuntimeError> {
        let root = volume_root(&self.docker, &spec.id)
            .await?
            .ok_or_else(|| RuntimeError::Gone(spec.id.clone()))?;
        self.fill_from(snap, "workspace", root.clone()).await?;
        // The copy keeps owners: a snapshot taken under an earlier sandbox
        // uid is taken over as an old volume would be.
        let what = format!("volume of session {}", spec.id);
        crate::local::claim_volume(&root, &what, self.cfg.sandbox_user).await
    }

    /// Fills the `/tmp` of the container behind `handle` (just started:
    /// only its agent runs) with snapshot `snap`'s.
    pub(crate) async fn fill_tmp(
        &self,
        handle: &SandboxHandle,
        snap: &str,
    ) -> Result<(), RuntimeError> {
        let dst = self.container_root(handle)?.join("tmp");
        self.fill_from(snap, "tmp", dst.clone()).await?;
        // Files of an earlier sandbox uid (the owner of the snapshot's
        // workspace root names it) become the user's; /tmp stays root's.
        let user = self.cfg.sandbox_user;
        let ws = self.snapshot_dir(snap).join("workspace");
        blocking("taking over a restored /tmp", move || {
            let io = |e| RuntimeError::io("taking over a restored /tmp", e);
            let old = std::fs::symlink_metadata(&ws).map_err(io)?;
            let from = (old.uid(), old.gid());
            if from.0 == 0 || from == (user.uid, user.gid) {
                return Ok(());
            }
            let tmp = sandkasten_hostfs::open_dir_nofollow(&dst).map_err(io)?;
            let dev = std::fs::symlink_metadata(&dst).map_err(io)?.dev();
            sandkasten_hostfs::take_over_below(tmp.as_fd(), dev, from, (user.uid, user.gid))
                .map(drop)
                .map_err(io)
        })
        .await
    }

    /// Copies snapshot `snap`'s copy `part` onto `dst`.
    async fn fill_from(&self, snap: &str, part: &str, dst: PathBuf) -> Result<(), RuntimeError> {
        let src = self.snapshot_dir(snap).join(part);
        blocking("filling a sandbox from a sandbox snapshot", move || {
            if !src.is_dir() {
                return Err(RuntimeError::NotFound(format!(
                    "sandbox snapshot {}",
                    src.display()
                )));
            }
            copy_tree(&src, &dst)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_stay_inside_their_directory() {
        check_snap("ssnap-0123456789abcdef01234567").unwrap();
        for bad in ["", "../x", "a/b", "-rf", "A", "a b", "a:b"] {
            assert!(check_snap(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_sessions_own_volume_is_an_ephemeral_workspace() {
        let eph = "600 590 8:1 /var/lib/docker/volumes/sandkasten-ws-abc/_data /workspace rw,relatime - ext4 /dev/sda1 rw\n";
        assert!(ephemeral_workspace(eph, "abc"));
        assert!(!ephemeral_workspace(eph, "ab"));
        let cold =
            "600 590 8:1 /volumes/sandkasten-ws-proj/_data /workspace rw - ext4 /dev/sda1 rw\n";
        assert!(!ephemeral_workspace(cold, "abc"));
        // Bound late over the ephemeral one: the topmost counts.
        let late = format!("{eph}700 600 8:1 /var/lib/docker/volumes/sandkasten-ws-proj/_data /workspace rw,nosuid - ext4 /dev/sda1 rw\n");
        assert!(!ephemeral_workspace(&late, "abc"));
        assert!(!ephemeral_workspace("", "abc"));
    }

    #[test]
    fn half_made_snapshots_are_removed_at_start() {
        let d = tempfile::tempdir().unwrap();
        remove_partial(d.path()).unwrap();
        let snaps = d.path().join("docker-snapshots");
        std::fs::create_dir_all(snaps.join("ssnap-a/tmp")).unwrap();
        std::fs::create_dir_all(snaps.join("ssnap-b.partial/workspace")).unwrap();
        remove_partial(d.path()).unwrap();
        assert!(snaps.join("ssnap-a/tmp").is_dir());
        assert!(!snaps.join("ssnap-b.partial").exists());
    }

    #[test]
    fn copies_keep_links_as_links() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", src.join("l")).unwrap();
        let dst = d.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("sub/f")).unwrap(), "x");
        assert!(std::fs::symlink_metadata(dst.join("l"))
            .unwrap()
            .is_symlink());
        // Onto an existing directory: its content.
        let dst2 = d.path().join("dst2");
        std::fs::create_dir(&dst2).unwrap();
        copy_tree(&src, &dst2).unwrap();
        assert!(dst2.join("sub/f").exists());
    }
}
