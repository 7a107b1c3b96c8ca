//! Image workspaces kept mounted between sessions, so that binding one into
//! a pooled sandbox is a mount clone and not a loop attach plus a btrfs
//! mount (and its unmount with a transaction commit when the session
//! ends).
//!
//! - **What is kept.** For each of the last [`KEEP_MAX`] image workspaces
//!   bound into a sandbox: its loop device (an open fd pins it) and a
//!   detached mount of its content subvolume (`fsmount`, never attached to
//!   any mount tree: the host never sees it, and nothing has to be
//!   unmounted, closing the fd is enough).
//! - **Binding.** A sandbox gets a clone of the kept mount (`open_tree`
//!   with `OPEN_TREE_CLONE` of the detached mount, Linux 6.15+), or, where
//!   the kernel refuses to clone a detached mount, a new `fsmount` of the
//!   kept device, which finds the filesystem's superblock alive and only
//!   looks up the subvolume.
//! - **Release.** Whatever needs the image unmounted (deleting the
//!   workspace, restoring a snapshot, importing: they swap or delete
//!   subvolumes and then wait for the loop device to detach) first drops
//!   every kept entry of that image ([`Kept::release`]; clones share one
//!   image). Nothing kept survives the daemon: its fds close with it, and
//!   the loop device detaches as before once no sandbox mounts it.
//! - **Durability** is the filesystem's own: a session's end no longer
//!   unmounts (which committed a btrfs transaction); btrfs commits every
//!   30 s and at the last unmount.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use crate::wsimage;

/// Image workspaces kept mounted at most (each holds a loop device and a
/// mounted btrfs); the least recently bound goes first.
pub(crate) const KEEP_MAX: usize = 16;

const OPEN_TREE_CLONE: libc::c_uint = 1;

/// One kept workspace.
struct Entry {
    /// The workspace's id.
    id: String,
    /// Its image's inode (a workspace and its clones share one image).
    ino: u64,
    /// Its content subvolume in the image.
    subvol: String,
    device: wsimage::Attached,
    mount: OwnedFd,
}

/// The kept workspaces, most recently bound last.
#[derive(Default)]
pub(crate) struct Kept {
    entries: Mutex<VecDeque<Entry>>,
}

impl Kept {
    /// A new detached mount of workspace `id` if it is kept (as image
    /// inode `ino` with content subvolume `subvol`); `None` when it is not
    /// (or no longer matches: it is dropped then).
    pub(crate) fn mount(&self, id: &str, ino: u64, subvol: &str) -> Option<io::Result<OwnedFd>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let pos = entries.iter().position(|e| e.id == id)?;
        let entry = entries.remove(pos)?;
        if entry.ino != ino || entry.subvol != subvol {
            drop(entries);
            drop(entry);
            return None;
        }
        let m = clone_mount(&entry.mount)
            .or_else(|_| wsimage::mount_detached(&entry.device.device, Some(&entry.subvol)));
        entries.push_back(entry);
        Some(m)
    }

    /// Keeps workspace `id` mounted: `mount` (a detached mount of its
    /// content subvolume `subvol`) on `device`, of image inode `ino`.
    pub(crate) fn keep(
        &self,
        id: &str,
        ino: u64,
        subvol: &str,
        device: wsimage::Attached,
        mount: OwnedFd,
    ) {
        let evicted: Vec<Entry> = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let mut out: Vec<Entry> = Vec::new();
            if let Some(pos) = entries.iter().position(|e| e.id == id) {
                out.extend(entries.remove(pos));
            }
            entries.push_back(Entry {
                id: id.to_string(),
                ino,
                subvol: subvol.to_string(),
                device,
                mount,
            });
            while entries.len() > KEEP_MAX {
                out.extend(entries.pop_front());
            }
            out
        };
        // Closed outside the lock: the last close of a mount may unmount.
        drop(evicted);
    }

    /// Drops every kept mount of the image of inode `ino` (the workspace
    /// and its clones), so that the image can detach.
    pub(crate) fn release(&self, ino: u64) {
        let dropped: Vec<Entry> = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let (gone, keep): (Vec<Entry>, Vec<Entry>) =
                entries.drain(..).partition(|e| e.ino == ino);
            entries.extend(keep);
            gone
        };
        drop(dropped);
    }
}

/// A detached copy of the detached mount `m` (`open_tree(OPEN_TREE_CLONE)`
/// with an empty path): same filesystem, same subvolume, same flags.
fn clone_mount(m: &OwnedFd) -> io::Result<OwnedFd> {
    let empty = c"";
    // SAFETY: open_tree on an fd we own with an empty path; returns a new
    // fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            m.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
