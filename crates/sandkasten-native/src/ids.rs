//! Host uid/gid ranges of sandboxes: one range of 65536 ids per sandbox,
//! so that the kernel's per-user budgets (inotify instances and watches,
//! message queue bytes, pipe buffers, charged per host uid and, for a user
//! namespace, to its owner's uid) are each sandbox's own.
//!
//! Files every sandbox shares keep one on-disk ownership, the shared range
//! ([`crate::IdRange`], 100000–165535): image layers, workspaces, the
//! scratch subvolumes. A sandbox sees them through idmapped mounts whose
//! user namespace ([`IdmapNs`]) maps the shared range to the sandbox's own,
//! so inside nothing changes and what it writes lands on disk with the
//! shared ids (session-less workspace access, export, snapshots, forks and
//! wakes need no chown).
//!
//! Range `k` (1..=max) starts at `100000 + 65536 * k`; range 0 is the
//! shared one, used by every sandbox where the host cannot idmap
//! ([`Slots::shared`]). A sandbox's range is kept in its session
//! directory (`sessions/<id>/uid-range`) while the directory exists
//! (hibernated sessions keep theirs), so a restarted daemon finds which
//! ranges are taken by reading those files.

use sandkasten_runtime::RuntimeError;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// First host id of the shared range (range 0).
pub const SHARED_BASE: u32 = 100_000;
/// Ids per range.
pub const RANGE_SIZE: u32 = 65_536;
/// Most ranges a daemon hands out: the last one ends below 2^31 (tools
/// that read ids as signed ints stay correct).
pub const MAX_RANGES: u32 = 32_000;
/// Name of the file in a session directory that holds its range.
const RANGE_FILE: &str = "uid-range";

/// First host id of range `k`.
pub fn base(k: u32) -> u32 {
    SHARED_BASE + RANGE_SIZE * k
}

/// The ranges handed out to sandboxes (by sandbox id), and which are free.
pub struct Slots {
    sessions: PathBuf,
    /// 0: every sandbox uses the shared range (no idmapped mounts).
    max: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_id: HashMap<String, u32>,
    /// Released ranges below `next`, reused lowest first.
    free: BTreeSet<u32>,
    /// Lowest range never handed out.
    next: u32,
}

impl State {
    fn take(&mut self, k: u32) {
        if k >= self.next {
            self.free.extend(self.next.max(1)..k);
            self.next = k + 1;
        } else {
            self.free.remove(&k);
        }
    }
}

impl Slots {
    /// Every sandbox in the shared range.
    pub fn shared(sessions: &Path) -> Slots {
        Slots {
            sessions: sessions.to_path_buf(),
            max: 0,
            state: Mutex::new(State::default()),
        }
    }

    /// One range per sandbox, at most `max`; the ranges of the session
    /// directories under `sessions` are taken.
    pub fn per_sandbox(sessions: &Path, max: u32) -> Slots {
        let mut state = State {
            next: 1,
            ..State::default()
        };
        for e in std::fs::read_dir(sessions).into_iter().flatten().flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(k) = read_range(&e.path()) {
                if k >= 1 {
                    state.take(k);
                    state.by_id.insert(id, k);
                }
            }
        }
        Slots {
            sessions: sessions.to_path_buf(),
            max,
            state: Mutex::new(state),
        }
    }

    /// The range of sandbox `id`: the one its session directory names, or
    /// a free one, recorded there (the directory must exist). 0 in shared
    /// mode. `CapacityExhausted` when all `max` ranges are taken.
    pub fn acquire(&self, id: &str) -> Result<u32, RuntimeError> {
        if self.max == 0 {
            return Ok(0);
        }
        let dir = self.sessions.join(id);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = st.by_id.get(id) {
            return Ok(*k);
        }
        if let Some(k) = read_range(&dir) {
            // A directory of an older daemon names range 0: its sandbox
            // stays in the shared range.
            if k >= 1 {
                st.take(k);
            }
            st.by_id.insert(id.to_string(), k);
            return Ok(k);
        }
        let k = match st.free.first().copied() {
            Some(k) => k,
            None if st.next <= self.max => st.next,
            None => {
                return Err(RuntimeError::CapacityExhausted(format!(
                    "all {} host uid ranges for sandboxes are taken (uid_ranges); \
                     destroy a session or raise uid_ranges",
                    self.max
                )))
            }
        };
        let file = dir.join(RANGE_FILE);
        let tmp = dir.join(format!("{RANGE_FILE}.tmp"));
        std::fs::write(&tmp, k.to_string())
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(RuntimeError::io_ctx(format!("writing {}", file.display())))?;
        st.take(k);
        st.by_id.insert(id.to_string(), k);
        Ok(k)
    }

    /// The range sandbox `id` holds (0 when it holds none of its own).
    pub fn of(&self, id: &str) -> u32 {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.by_id.get(id).copied().unwrap_or(0)
    }

    /// Frees sandbox `id`'s range (its session directory is gone).
    pub fn release(&self, id: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = st.by_id.remove(id) {
            if k >= 1 {
                st.free.insert(k);
            }
        }
    }

    /// How many ranges are held.
    pub fn held(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.by_id.values().filter(|k| **k >= 1).count()
    }
}

fn read_range(session_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(session_dir.join(RANGE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// The idmapping's user namespace
// ---------------------------------------------------------------------------

fn os(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A user namespace that maps the shared range to one sandbox's range
/// (and host root to itself: the overlay's own work, done with the
/// mounter's credentials, stays root's), held by an fd; the idmapping of
/// that sandbox's mounts of shared files.
///
/// A user namespace needs a process to be made: a child cloned into it
/// (sharing memory and fds, on a stack of its own) waits on a pipe while
/// the maps are written and the namespace is opened, then exits. Dropping
/// the value reaps it (the namespace lives on in the fd until then).
///
/// The child shares the daemon's descriptor table, so the pipe's write end
/// is its own too: a daemon killed before closing it would leave the
/// child waiting forever, and with it every descriptor of the daemon
/// (loop devices, workspace mounts, the store and its locks). The child
/// therefore dies with the thread that made it (`PR_SET_PDEATHSIG`).
pub struct IdmapNs {
    ns: OwnedFd,
    child: libc::pid_t,
    /// The pipe's read end the child waits on (shared fd table).
    hold: Option<OwnedFd>,
    /// The child's stack: freed only after the child is reaped.
    _stack: Vec<u8>,
}

/// The child: dies with its parent thread, then waits for the end of the
/// pipe. `arg` packs the read end (low 32 bits) and the parent's pid.
/// Raw syscalls only: the child shares the parent's memory and stack
/// guard, not its thread.
extern "C" fn wait_for_eof(arg: *mut libc::c_void) -> libc::c_int {
    let fd = (arg as usize & 0xffff_ffff) as RawFd;
    let parent = (arg as usize >> 32) as libc::pid_t;
    // SAFETY: prctl and getppid take no pointers; the read goes into a
    // byte on this stack. The parent closes the write end (or dies, and
    // this child with it), so the read returns.
    unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as libc::c_ulong,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        // The parent died before the signal was asked for.
        if libc::syscall(libc::SYS_getppid) as libc::pid_t != parent {
            return 0;
        }
        let mut b = 0u8;
        // Full-width arguments: a variadic call leaves the upper half of a
        // narrower one undefined.
        libc::syscall(
            libc::SYS_read,
            fd as libc::c_ulong,
            (&mut b as *mut u8).cast::<libc::c_void>(),
            1usize,
        );
    }
    0
}

/// A child cloned into a new user namespace, its maps not yet written.
struct Pending {
    child: libc::pid_t,
    rd: OwnedFd,
    wr: OwnedFd,
    stack: Vec<u8>,
}

impl Pending {
    fn clone() -> io::Result<Pending> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(os("pipe2"));
        }
        // SAFETY: pipe2 returned two fresh fds we now own.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut stack = vec![0u8; 16 * 1024];
        let arg = (rd.as_raw_fd() as u32 as usize) | ((std::process::id() as usize) << 32);
        // SAFETY: the stack pointer is the (16-byte aligned) top of a
        // buffer that outlives the child (kept in the value, freed after
        // the child is reaped). With CLONE_VM the child shares memory and
        // runs only `wait_for_eof` (raw syscalls), which touches nothing
        // but its own stack; CLONE_FILES shares the fd table, so closing
        // the write end here ends its read.
        let child = unsafe {
            let top = stack.as_mut_ptr().add(stack.len());
            let top = (top as usize & !15) as *mut libc::c_void;
            libc::clone(
                wait_for_eof,
                top,
                libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_NEWUSER | libc::SIGCHLD,
                arg as *mut libc::c_void,
            )
        };
        if child < 0 {
            return Err(os("clone of a user namespace for idmapped mounts"));
        }
        Ok(Pending {
            child,
            rd,
            wr,
            stack,
        })
    }
}

impl IdmapNs {
    /// The namespace of range `k` (`k >= 1`).
    pub fn new(k: u32) -> io::Result<IdmapNs> {
        let Pending {
            child,
            rd,
            wr,
            stack,
        } = Pending::clone()?;
        let made = (|| {
            let map = format!("0 0 1\n{SHARED_BASE} {} {RANGE_SIZE}\n", base(k));
            for file in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{child}/{file}"), &map)
                    .map_err(|e| io::Error::new(e.kind(), format!("writing {file}: {e}")))?;
            }
            std::fs::File::open(format!("/proc/{child}/ns/user")).map(OwnedFd::from)
        })();
        drop(wr);
        match made {
            Ok(ns) => Ok(IdmapNs {
                ns,
                child,
                hold: Some(rd),
                _stack: stack,
            }),
            Err(e) => {
                reap(child);
                Err(e)
            }
        }
    }

    /// A path that opens the namespace from another process (the
    /// launcher): this process's fd, valid while the value lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.ns.as_raw_fd()
        ))
    }

    /// Makes the detached mount `mount` (an `open_tree` clone or an
    /// `fsmount`) idmapped through this namespace.
    pub fn apply(&self, mount: &OwnedFd) -> io::Result<()> {
        sandkasten_runtime::latebind::idmap(mount, &self.ns)
    }
}

impl Drop for IdmapNs {
    /// Reaps the helper: at once when it has exited, else on the blocking
    /// pool (its exit waits for the scheduler; a create need not), or here
    /// without a runtime. Its stack goes only after it is reaped.
    fn drop(&mut self) {
        let child = self.child;
        let mut status = 0;
        // SAFETY: a non-blocking wait for our own child.
        if unsafe { libc::waitpid(child, &mut status, libc::__WALL | libc::WNOHANG) } == child {
            return;
        }
        let (hold, stack) = (self.hold.take(), std::mem::take(&mut self._stack));
        let later = move || {
            reap(child);
            drop(hold);
            drop(stack);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(later)),
            Err(_) => later(),
        }
    }
}

fn reap(child: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(child, &mut status, libc::__WALL) } < 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// Whether this host can give sandboxes ranges of their own: the kernel
/// makes an idmapped clone of `dir` (on the data dir's filesystem) through
/// a namespace of range 1. Err: why not.
pub fn idmap_support(dir: &Path) -> Result<(), String> {
    let ns = IdmapNs::new(1).map_err(|e| e.to_string())?;
    let clone = sandkasten_runtime::latebind::clone_dir(dir)
        .map_err(|e| format!("a clone of {}: {e}", dir.display()))?;
    ns.apply(&clone)
        .map_err(|e| format!("an idmapped mount of {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_lowest_free_first_and_kept_in_the_session_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let sessions = tmp.path();
        for id in ["a", "b", "c"] {
            std::fs::create_dir(sessions.join(id)).unwrap();
        }
        let slots = Slots::per_sandbox(sessions, 2);
        assert_eq!(slots.acquire("a").unwrap(), 1);
        assert_eq!(slots.acquire("b").unwrap(), 2);
        assert_eq!(slots.acquire("a").unwrap(), 1, "a sandbox keeps its range");
        let full = slots.acquire("c").unwrap_err();
        assert!(
            matches!(&full, RuntimeError::CapacityExhausted(m) if m.contains("uid_ranges")),
            "{full:?}"
        );
        // A restart finds the ranges in the session directories.
        let again = Slots::per_sandbox(sessions, 2);
        assert_eq!(again.of("a"), 1);
        assert_eq!(again.of("b"), 2);
        assert!(again.acquire("c").is_err());
        again.release("a");
        std::fs::remove_dir_all(sessions.join("a")).unwrap();
        assert_eq!(again.acquire("c").unwrap(), 1, "a released range is reused");
        assert_eq!(again.held(), 2);
        assert_eq!(base(1), 165_536);
    }

    #[test]
    fn a_gap_left_by_a_restart_is_handed_out() {
        let tmp = tempfile::tempdir().unwrap();
        let sessions = tmp.path();
        for id in ["x", "y"] {
            std::fs::create_dir(sessions.join(id)).unwrap();
        }
        std::fs::write(sessions.join("x").join(RANGE_FILE), "3").unwrap();
        let slots = Slots::per_sandbox(sessions, 8);
        assert_eq!(slots.acquire("y").unwrap(), 1);
        assert_eq!(slots.of("x"), 3);
    }

    /// Run as a process of its own by the test below: clones the helper
    /// child, says its pid, and waits to be killed with the write end open
    /// (a daemon killed in the middle of `IdmapNs::new`).
    #[test]
    #[ignore = "a helper process of the_helper_child_dies_with_a_daemon_killed_mid_way"]
    fn helper_process_killed_mid_way() {
        let p = Pending::clone().unwrap();
        println!("helper-child {}", p.child);
        std::thread::sleep(std::time::Duration::from_secs(60));
        drop(p);
    }

    #[test]
    fn the_helper_child_dies_with_a_daemon_killed_mid_way() {
        use std::io::BufRead;
        let mut maker = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "ids::tests::helper_process_killed_mid_way",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(maker.stdout.take().unwrap()).lines();
        let child: libc::pid_t = lines
            .find_map(|l| l.ok()?.split("helper-child ").nth(1)?.trim().parse().ok())
            .expect("the maker names its helper child");
        // SAFETY: pidfd_open of the helper (alive: its maker waits).
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) } as RawFd;
        assert!(pidfd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        maker.kill().unwrap();
        maker.wait().unwrap();
        // The helper ends with its maker: its pidfd becomes readable.
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll of one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        if n != 1 {
            // SAFETY: SIGKILL through the pidfd of the helper this test made.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<u8>(),
                    0,
                )
            };
        }
        assert_eq!(n, 1, "the helper child outlived the process that made it");
    }

    #[test]
    fn shared_mode_hands_out_the_shared_range() {
        let tmp = tempfile::tempdir().unwrap();
        let slots = Slots::shared(tmp.path());
        assert_eq!(slots.acquire("any").unwrap(), 0);
        assert_eq!(slots.held(), 0);
    }
}
