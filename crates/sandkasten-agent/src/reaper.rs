//! The zombie reaper: the one place in the agent that waits for children.
//!
//! The agent is PID 1 of its sandbox, so every orphan in the sandbox is
//! reparented to it and must be reaped here or it stays a zombie forever.
//! One thread owns `waitpid(-1, ..)`; nobody else may wait for a child
//! (never call `std::process::Child::wait`, and never spawn with
//! `std::process::Command`: its error path waits for the child itself and
//! would race with this thread).
//!
//! Children whose exit someone cares about (the persistent shell) are
//! started through [`spawn`], which runs the fork and registers the exit
//! hook under the same lock the reaper takes to look hooks up. A child that
//! exits at once is therefore still found: the reaper blocks on that lock
//! until the hook is registered. Statuses of everything else (orphans) are
//! dropped.
//!
//! When there are no children at all (`ECHILD`), the thread sleeps on a
//! condition variable that [`spawn`] signals, so it never polls.

use std::collections::HashMap;
use std::io;
use std::sync::{Condvar, Mutex, OnceLock};

/// Called on the reaper thread with the raw wait status of a watched child.
/// It must not block and must not call back into this module.
pub type ExitHook = Box<dyn FnOnce(i32) + Send>;

struct State {
    /// Bumped on every spawn, so the reaper can tell whether a child may
    /// have appeared since it last saw `ECHILD`.
    spawned: u64,
    hooks: HashMap<libc::pid_t, Watched>,
}

struct Watched {
    on_exit: ExitHook,
    /// Continued at once when it stops (the shell); a background process
    /// may be stopped on purpose and stays stopped.
    keep_running: bool,
}

struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(run)
            .expect("cannot start the reaper thread");
        Reaper {
            state: Mutex::new(State {
                spawned: 0,
                hooks: HashMap::new(),
            }),
            spawned: Condvar::new(),
        }
    })
}

/// Starts the reaper thread (idempotent).
pub fn start() {
    reaper();
}

/// Starts a child with `fork` (which must return the child's pid) and calls
/// `on_exit` with its raw wait status once it has been reaped.
/// A child that stops is continued at once (the shell: a stopped shell
/// would hang every exec after it).
pub fn spawn(
    fork: impl FnOnce() -> io::Result<libc::pid_t>,
    on_exit: impl FnOnce(i32) + Send + 'static,
) -> io::Result<libc::pid_t> {
    watch(fork, Box::new(on_exit), true)
}

/// As [`spawn`], but a child that stops stays stopped (a background
/// process, which `SIGSTOP` may stop on purpose).
pub fn spawn_stoppable(
    fork: impl FnOnce() -> io::Result<libc::pid_t>,
    on_exit: impl FnOnce(i32) + Send + 'static,
) -> io::Result<libc::pid_t> {
    watch(fork, Box::new(on_exit), false)
}

fn watch(
    fork: impl FnOnce() -> io::Result<libc::pid_t>,
    on_exit: ExitHook,
    keep_running: bool,
) -> io::Result<libc::pid_t> {
    let r = reaper();
    let mut state = r.state.lock().unwrap_or_else(|e| e.into_inner());
    let pid = fork()?;
    state.hooks.insert(
        pid,
        Watched {
            on_exit,
            keep_running,
        },
    );
    state.spawned = state.spawned.wrapping_add(1);
    r.spawned.notify_all();
    Ok(pid)
}

/// The exit code a shell would report for a raw wait status:
/// the exit status, or 128 + N for death by signal N.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        // Stopped: not an end (the reaper continues a stopped shell).
        255
    }
}

fn run() {
    let r = reaper();
    loop {
        let seen = r.state.lock().unwrap_or_else(|e| e.into_inner()).spawned;
        let mut status = 0;
        // SAFETY: plain syscall with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WUNTRACED) };
        if pid > 0 && libc::WIFSTOPPED(status) {
            // A watched child (the shell) that stops (`kill -STOP $$`)
            // would hang every exec after it: it is continued at once.
            // Stopped orphans are left alone.
            let keep_running = r
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hooks
                .get(&pid)
                .is_some_and(|w| w.keep_running);
            if keep_running {
                // SAFETY: plain syscall; the child is not reaped, so the pid
                // is still ours.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            continue;
        }
        if pid > 0 {
            let hook = r
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hooks
                .remove(&pid);
            if let Some(w) = hook {
                (w.on_exit)(status);
            }
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => {}
            _ => eprintln!("sandkasten-agent: reaper: waitpid: {err}"),
        }
        // No children: sleep until a spawn happens. A spawn between reading
        // `seen` and here has already bumped the counter, so it is not lost.
        let mut state = r.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.spawned == seen {
            state = r.spawned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}
