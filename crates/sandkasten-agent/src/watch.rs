//! Directory watches (protocol 5, `WatchDir`): inotify, never a poll.
//!
//! A watch is one inotify instance, made here by the agent inside the
//! sandbox (so the kernel charges it to the sandbox's user, not to the
//! host's root), with one inotify watch on the directory and, when
//! recursive, one on every directory below it (walked at the start and
//! added as directories are made or moved in; a directory moved away
//! loses its watches). The request's thread waits in `poll(2)` on the
//! instance and on an eventfd that [`Watches::wake_all`] writes when a
//! stream is cancelled, turns each read of the instance into one batch of
//! events (names relative to the watched directory) and sends it under
//! the stream's credits ([`Flow`]). While it waits for a credit, events
//! queue in the kernel, whose queue is bounded
//! (`fs.inotify.max_queued_events`); an overflow ends the watch with
//! `NoSpace`, so nothing is lost silently. The agent keeps at most one
//! batch per watch, runs at most [`MAX_WATCHES`] watches, and a watch
//! covers at most [`MAX_WATCHED_DIRS`] directories.
//!
//! The watched directory is opened with the request's identity (the
//! sandbox user's unless `root`), so a user can only watch a directory
//! they may read; the directories below it are opened by the agent
//! without following symlinks. Events map as E2B's envd (fsnotify) maps
//! them: `IN_CREATE` and `IN_MOVED_TO` are Create, `IN_MODIFY` Write,
//! `IN_DELETE` Remove, `IN_MOVED_FROM` Rename, `IN_ATTRIB` Chmod. The
//! entries of a directory made in a recursive watch are reported as
//! created too (they may predate its watch), at most
//! [`NEW_DIR_ENTRIES`] per batch.

use crate::files::{Files, FsError};
use crate::reads::Flow;
use sandkasten_protocol::{
    ErrorKind, Response, WatchEvent, WatchEventKind, MAX_WATCHED_DIRS, MAX_WATCHES,
};
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// Entries of newly made directories reported in one batch, at most.
pub const NEW_DIR_ENTRIES: usize = 1024;

/// The events a watch asks inotify for.
const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agent's running watches (their wake-up eventfds).
#[derive(Default)]
pub struct Watches {
    active: Mutex<Vec<Arc<OwnedFd>>>,
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The watched directory went away; `WatchEnded` was sent.
    Gone,
    /// Cancelled: nothing more may be sent.
    Cancelled,
}

/// A watch's place among the agent's watches; freed when dropped.
struct Slot<'a> {
    watches: &'a Watches,
    wake: Arc<OwnedFd>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.watches.active).retain(|w| !Arc::ptr_eq(w, &self.wake));
    }
}

impl Watches {
    /// Wakes every watch to look at its stream's flow (one was cancelled).
    pub fn wake_all(&self) {
        for w in lock(&self.active).iter() {
            let one: u64 = 1;
            // SAFETY: an 8-byte write to an eventfd we own.
            unsafe { libc::write(w.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn enter(&self) -> Result<Slot<'_>, FsError> {
        let mut active = lock(&self.active);
        if active.len() >= MAX_WATCHES {
            return Err(FsError::new(
                ErrorKind::NoSpace,
                format!("at most {MAX_WATCHES} directory watches run at once in a sandbox"),
            ));
        }
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io_error("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: fd is new and ours.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        active.push(wake.clone());
        Ok(Slot {
            watches: self,
            wake,
        })
    }

    /// Runs one watch of `path` until the directory goes away or the
    /// stream is cancelled: `Watching` first, then event batches through
    /// `send`. An error before `Watching` (the path, a limit) is returned;
    /// one after it (an overflow) too, and the caller sends it as the
    /// stream's end.
    pub fn run(
        &self,
        files: &Files,
        path: &str,
        recursive: bool,
        flow: &Flow,
        send: &mut dyn FnMut(Response),
    ) -> Result<Ended, FsError> {
        let slot = self.enter()?;
        let top = files.open_dir(path)?;
        let mut w = Watch::new(recursive)?;
        w.add_tree(top, String::new(), None)
            .map_err(|e| FsError::new(e.kind, format!("{path}: {}", e.message)))?;
        send(Response::Watching);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: w.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: slot.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_error("poll", e));
            }
            if fds[1].revents != 0 {
                let mut n = 0u64;
                // SAFETY: an 8-byte read from our eventfd (drains it).
                unsafe { libc::read(slot.wake.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            }
            if flow.is_cancelled() {
                return Ok(Ended::Cancelled);
            }
            if fds[0].revents == 0 {
                continue;
            }
            // SAFETY: reading into our buffer from our inotify fd.
            let n = unsafe { libc::read(w.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(io_error("reading inotify events", e));
            }
            let (events, gone) = w.take(&buf[..n as usize], files, path)?;
            if !events.is_empty() {
                // Waits for a credit; the kernel queues what comes meanwhile.
                if !flow.take() {
                    return Ok(Ended::Cancelled);
                }
                send(Response::WatchEvents(events));
            }
            if gone {
                send(Response::WatchEnded);
                return Ok(Ended::Gone);
            }
        }
    }
}

fn io_error(what: &str, e: io::Error) -> FsError {
    FsError::new(ErrorKind::Io, format!("{what}: {e}"))
}

/// One inotify instance and the directories it watches.
struct Watch {
    fd: OwnedFd,
    recursive: bool,
    /// Watch descriptor → the directory's path relative to the top ("" for
    /// the top).
    dirs: HashMap<i32, String>,
}

impl Watch {
    fn new(recursive: bool) -> Result<Watch, FsError> {
        // SAFETY: inotify_init1 returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::ENOMEM) => FsError::new(
                    ErrorKind::NoSpace,
                    format!("no inotify instance for the watch: {e}"),
                ),
                _ => io_error("inotify_init1", e),
            });
        }
        Ok(Watch {
            // SAFETY: fd is new and ours.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            recursive,
            dirs: HashMap::new(),
        })
    }

    /// Watches the directory open as `dir` (at `rel`) and, when recursive,
    /// every directory below it. With `created`, the entries found below
    /// are reported as created (a directory made during the watch).
    fn add_tree(
        &mut self,
        dir: OwnedFd,
        rel: String,
        mut created: Option<&mut Vec<WatchEvent>>,
    ) -> Result<(), FsError> {
        let mut queue = VecDeque::from([(dir, rel)]);
        while let Some((dir, rel)) = queue.pop_front() {
            if self.dirs.len() >= MAX_WATCHED_DIRS {
                return Err(FsError::new(
                    ErrorKind::NoSpace,
                    format!("a watch covers at most {MAX_WATCHED_DIRS} directories"),
                ));
            }
            let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
            let c = CString::new(proc_path.clone()).expect("no NUL");
            // SAFETY: a valid C string and our inotify fd.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
            if wd < 0 {
                let e = io::Error::last_os_error();
                // A directory removed meanwhile is simply not watched.
                if rel.is_empty() || e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(match e.raw_os_error() {
                        Some(libc::ENOSPC) => FsError::new(
                            ErrorKind::NoSpace,
                            format!("the sandbox's inotify watches are used up: {e}"),
                        ),
                        Some(libc::EACCES) => {
                            FsError::new(ErrorKind::PermissionDenied, e.to_string())
                        }
                        _ => io_error("inotify_add_watch", e),
                    });
                }
                continue;
            }
            self.dirs.insert(wd, rel.clone());
            if !self.recursive && created.is_none() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&proc_path) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = join(&rel, &name);
                if let Some(ev) = created.as_deref_mut() {
                    if ev.len() < NEW_DIR_ENTRIES {
                        ev.push(WatchEvent {
                            name: child.clone(),
                            kind: WatchEventKind::Create,
                        });
                    }
                }
                if self.recursive && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Some(fd) = open_subdir(dir.as_raw_fd(), &name) {
                        queue.push_back((fd, child));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops watching `rel` and every directory below it (moved away).
    fn forget_tree(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, d)| *d == rel || d.starts_with(&prefix))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            // SAFETY: removing a watch of our instance.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
    }

    /// The events of one read of the instance, and whether the watched
    /// directory itself went away.
    fn take(
        &mut self,
        mut buf: &[u8],
        files: &Files,
        path: &str,
    ) -> Result<(Vec<WatchEvent>, bool), FsError> {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let mut out = Vec::new();
        let mut gone = false;
        while buf.len() >= HEADER {
            // SAFETY: the kernel wrote whole events; read_unaligned copies
            // the header out of the byte buffer.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
            let len = ev.len as usize;
            let raw = &buf[HEADER..(HEADER + len).min(buf.len())];
            buf = &buf[(HEADER + len).min(buf.len())..];
            let name = raw.split(|b| *b == 0).next().unwrap_or_default();
            let name = String::from_utf8_lossy(name).into_owned();
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                return Err(FsError::new(
                    ErrorKind::NoSpace,
                    format!("{path}: the kernel's event queue overflowed: events were lost"),
                ));
            }
            let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            if ev.mask & libc::IN_IGNORED != 0 {
                self.dirs.remove(&ev.wd);
                gone |= dir.is_empty();
                continue;
            }
            if ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                // A directory below is reported by its parent already.
                gone |= dir.is_empty();
                continue;
            }
            if name.is_empty() {
                continue;
            }
            let rel = join(&dir, &name);
            let is_dir = ev.mask & libc::IN_ISDIR != 0;
            let kind = if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                WatchEventKind::Create
            } else if ev.mask & libc::IN_MODIFY != 0 {
                WatchEventKind::Write
            } else if ev.mask & libc::IN_DELETE != 0 {
                WatchEventKind::Remove
            } else if ev.mask & libc::IN_MOVED_FROM != 0 {
                WatchEventKind::Rename
            } else if ev.mask & libc::IN_ATTRIB != 0 {
                WatchEventKind::Chmod
            } else {
                continue;
            };
            out.push(WatchEvent {
                name: rel.clone(),
                kind,
            });
            if self.recursive && is_dir {
                match kind {
                    WatchEventKind::Create => {
                        let parent = dir_fd(files, path, &dir);
                        if let Some(fd) = parent.and_then(|p| open_subdir(p.as_raw_fd(), &name)) {
                            let mut created = Vec::new();
                            self.add_tree(fd, rel, Some(&mut created))?;
                            out.extend(created);
                        }
                    }
                    WatchEventKind::Rename => self.forget_tree(&rel),
                    _ => {}
                }
            }
        }
        Ok((out, gone))
    }
}

/// An fd of the watched directory at `rel` below the top `path`: the top
/// opened again (no fd of a watched directory is kept open: it would hold
/// back the kernel's `IN_DELETE_SELF` until closed), then each name below
/// it without following symlinks.
fn dir_fd(files: &Files, path: &str, rel: &str) -> Option<OwnedFd> {
    let mut cur = files.open_dir(path).ok()?;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        cur = open_subdir(cur.as_raw_fd(), comp)?;
    }
    Some(cur)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Opens directory entry `name` of `dir`, never following a symlink.
fn open_subdir(dir: RawFd, name: &str) -> Option<OwnedFd> {
    if name.contains('/') || name == ".." || name == "." {
        return None;
    }
    let c = CString::new(name).ok()?;
    // SAFETY: openat with a valid dir fd and C string.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: fd is new and ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A watch of `dir` on a thread of its own: its replies, and how to
    /// stop it.
    /// A running test watch: its agent's watches, flow, replies, thread.
    type Running = (
        Arc<Watches>,
        Arc<Flow>,
        mpsc::Receiver<Response>,
        std::thread::JoinHandle<Result<Ended, FsError>>,
    );

    fn start(dir: &std::path::Path, recursive: bool) -> Running {
        start_with(dir, recursive, 16)
    }

    fn start_with(dir: &std::path::Path, recursive: bool, window: u32) -> Running {
        let watches = Arc::new(Watches::default());
        let flow = Arc::new(Flow::new(window));
        let (tx, rx) = mpsc::channel();
        let (w, f, path) = (watches.clone(), flow.clone(), dir.display().to_string());
        let t = std::thread::spawn(move || {
            let files = Files::new(None, None, std::path::Path::new("/"));
            w.run(&files, &path, recursive, &f, &mut |r| {
                let _ = tx.send(r);
            })
        });
        assert_eq!(rx.recv().unwrap(), Response::Watching);
        (watches, flow, rx, t)
    }

    /// Events until every wanted one came (each batch acknowledged).
    fn until(
        rx: &mpsc::Receiver<Response>,
        flow: &Flow,
        wanted: &[(&str, WatchEventKind)],
    ) -> Vec<(String, WatchEventKind)> {
        let mut seen = Vec::new();
        while !wanted
            .iter()
            .all(|(n, k)| seen.iter().any(|(sn, sk)| sn == n && sk == k))
        {
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(Response::WatchEvents(evs)) => {
                    flow.grant(1);
                    seen.extend(evs.into_iter().map(|e| (e.name, e.kind)));
                }
                other => panic!("{other:?} after {seen:?}"),
            }
        }
        seen
    }

    #[test]
    fn a_recursive_watch_follows_new_directories_and_ends_with_its_top() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir(&top).unwrap();
        let (_w, flow, rx, t) = start(&top, true);
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::write(top.join("a/b/f"), "x").unwrap();
        until(
            &rx,
            &flow,
            &[
                ("a", WatchEventKind::Create),
                ("a/b/f", WatchEventKind::Create),
            ],
        );
        std::fs::write(top.join("a/b/f"), "more").unwrap();
        std::fs::rename(top.join("a/b/f"), top.join("g")).unwrap();
        std::fs::remove_file(top.join("g")).unwrap();
        let seen = until(
            &rx,
            &flow,
            &[
                ("a/b/f", WatchEventKind::Write),
                ("a/b/f", WatchEventKind::Rename),
                ("g", WatchEventKind::Create),
                ("g", WatchEventKind::Remove),
            ],
        );
        let at = |n: &str, k| seen.iter().position(|(sn, sk)| sn == n && *sk == k);
        assert!(at("g", WatchEventKind::Create) < at("g", WatchEventKind::Remove));
        std::fs::remove_dir_all(&top).unwrap();
        loop {
            match rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap() {
                Response::WatchEvents(_) => flow.grant(1),
                Response::WatchEnded => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(t.join().unwrap().unwrap(), Ended::Gone);
    }

    #[test]
    fn a_client_that_does_not_read_gets_an_overflow_not_a_silent_loss() {
        let tmp = tempfile::tempdir().unwrap();
        // One credit, not granted again while the files are made: the
        // watch sends one batch (one read of its buffer), then the kernel's
        // queue (at most fs.inotify.max_queued_events) takes the rest, and
        // overflows.
        let (_w, flow, rx, t) = start_with(tmp.path(), false, 1);
        let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for i in 0..queue + 8192 {
            std::fs::File::create(tmp.path().join(i.to_string())).unwrap();
        }
        // The client reads again: the batches that were queued, then the
        // overflow ends the watch (its thread ends, and with it the
        // channel).
        while let Ok(r) = rx.recv() {
            assert!(matches!(r, Response::WatchEvents(_)), "{r:?}");
            flow.grant(1);
        }
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSpace, "{}", e.message);
        assert!(e.message.contains("overflowed"), "{}", e.message);
    }

    #[test]
    fn a_cancelled_watch_ends_and_frees_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let (watches, flow, _rx, t) = start(tmp.path(), false);
        flow.cancel();
        watches.wake_all();
        assert_eq!(t.join().unwrap().unwrap(), Ended::Cancelled);
        assert!(lock(&watches.active).is_empty());
    }

    #[test]
    fn watches_are_limited_and_bad_paths_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let files = Files::new(None, None, std::path::Path::new("/"));
        let flow = Flow::new(1);
        let watches = Watches::default();
        let mut never = |_: Response| panic!("nothing is sent");
        let path = tmp.path().join("nope").display().to_string();
        let e = watches
            .run(&files, &path, false, &flow, &mut never)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        std::fs::write(tmp.path().join("f"), "").unwrap();
        let path = tmp.path().join("f").display().to_string();
        let e = watches
            .run(&files, &path, false, &flow, &mut never)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotADirectory);
        let e = watches
            .run(&files, "relative", false, &flow, &mut never)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath);
        let held: Vec<_> = (0..MAX_WATCHES).map(|_| watches.enter().unwrap()).collect();
        let e = watches
            .run(
                &files,
                &tmp.path().display().to_string(),
                false,
                &flow,
                &mut never,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSpace);
        drop(held);
        assert!(lock(&watches.active).is_empty());
    }
}
