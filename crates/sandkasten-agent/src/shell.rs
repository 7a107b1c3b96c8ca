//! The persistent shell: one long-lived bash (or `sh`) per sandbox that
//! runs every exec, so `cd`, `export`, functions, aliases and background
//! jobs persist from one exec to the next.
//!
//! How a command reaches the shell and how its result comes back:
//!
//! - The shell reads its *script* from a pipe on its stdin. For every exec the
//!   agent writes one line ([`Flavor::run_line`]): bash reads the command from
//!   a memfd the agent wrote it to (`sh` gets it single-quoted in the line) and
//!   `eval`s it with stdin `/dev/null`, stdout and stderr on the exec's own
//!   terminal and the status fd closed; then it writes `$?` and the working
//!   directory to the status pipe behind a random nonce of that exec. `eval`
//!   runs in the shell itself, at top level, so state persists and `declare`
//!   stays global; `break`/`continue` cannot escape into a driver loop because
//!   there is none.
//! - An exec's result is its own whatever the command does to the shell: its
//!   redirections wrap the eval, so `exec >/dev/null` or closing fds 0-2 lasts
//!   until the eval returns; a status record counts only with the exec's nonce,
//!   which sits in the line the shell has read whole before the command starts
//!   (never in a variable or still in the pipe), so writing look-alike records
//!   to the status fd does nothing; each exec has a fresh terminal, so a
//!   background job that writes after its exec ended writes to that exec's
//!   retired terminal, which the pump drains and drops until the job closes it,
//!   never into a later exec; the shell's own stdout and stderr (where a DEBUG
//!   trap, `set -x` or job notifications of the driver's steps land) are a
//!   terminal whose output is dropped; a shell that stops itself (`kill -STOP
//!   $$`) is continued by the reaper.
//! - Commands run with job control (`set -m`): every foreground job has its own
//!   process group and owns the shell's controlling terminal, so an interrupt
//!   can target exactly the running job. `trap : INT` keeps a non-interactive
//!   shell alive when its foreground job dies of SIGINT; bash then abandons the
//!   eval (like Ctrl-C at a prompt) and the status step reports 130.
//! - Terminals have no echo and no output processing, so stdout and stderr
//!   interleave in the order written and arrive byte for byte. The exec's
//!   thread reads its own terminal and the status pipe itself (one `poll`,
//!   no other thread in between); a pump thread reads and drops everything
//!   else (the shell's own terminal, retired terminals), so a chatty job
//!   never blocks, and wakes for no exec.
//! - Exit code and cwd come only from the status pipe, never from output. When
//!   status data arrives the exec first drains what is already readable on its
//!   terminal (a read on an empty master flushes the kernel's pending pty
//!   buffer), so no output is lost or attributed to the next exec.
//!
//! Timeouts and cancellation escalate: SIGINT to the foreground process
//! group, then SIGKILL to it, then SIGKILL to the whole session (a loop
//! running in the shell itself), each after [`GRACE`]. Where the pty does
//! not report its foreground group (gVisor: ENOTTY), the groups of the
//! shell's children started since the exec began stand in for it. A dead shell (`exit
//! 3`, `kill -9 $$`, or killed by us) is replaced at once by a fresh one in
//! the last known cwd.
//!
//! Execs run one at a time, in the order [`Shell::enqueue`] was called.

use crate::reaper;
use crate::sys::{
    self, cstring, is_executable, move_above, open_pty_pair, pipe, pollfd, set_nonblocking,
    with_context,
};
use sandkasten_protocol::AgentConfig;
use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time between the steps of an interrupt (SIGINT, SIGKILL of the job,
/// SIGKILL of the shell).
pub const GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the reaper to report a shell we SIGKILLed before
/// giving up on it and starting a new one regardless.
const DEATH_WAIT: Duration = Duration::from_secs(5);
/// Largest single read from the pty master (one `ExecOutput` at most).
const READ_CHUNK: usize = 64 * 1024;
/// Reads of buffered output before a status is delivered; bounds the drain
/// when a background job writes without pause.
const DRAIN_MAX_BYTES: usize = 1024 * 1024;
/// Terminal size reported to programs (rows, columns).
const WINSIZE: (u16, u16) = (50, 200);
/// How often the SIGINT step looks again for jobs to interrupt.
const SIGINT_RETRY: Duration = Duration::from_millis(5);
/// How often a hand-off of the connection that found no thread tries again.
const HAND_OFF_RETRY: Duration = Duration::from_millis(100);
/// Exit code of a timed-out or cancelled exec.
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Why an exec could not run.
#[derive(Debug)]
pub enum ExecError {
    /// The command can never run (it contains a NUL byte).
    InvalidRequest(String),
    /// No shell could be started.
    Spawn(io::Error),
}

/// Result of one exec, as reported in `ExecDone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit_code: i32,
    pub cwd: String,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration_ms: u64,
}

/// A place in the exec queue, taken in arrival order.
pub struct ExecTicket {
    seq: u64,
    cancel: Arc<CancelHandle>,
}

impl ExecTicket {
    /// The handle that [`Shell::cancel`] takes for this exec.
    pub fn cancel_handle(&self) -> Arc<CancelHandle> {
        self.cancel.clone()
    }
}

/// Lets another thread interrupt a queued or running exec.
#[derive(Default)]
pub struct CancelHandle {
    cancelled: AtomicBool,
    /// The running exec's shell, to wake the exec.
    waker: Mutex<Option<Arc<Shared>>>,
}

impl CancelHandle {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn attach(&self, shared: Arc<Shared>) {
        let mut w = lock(&self.waker);
        if self.is_cancelled() {
            shared.wake_exec();
        }
        *w = Some(shared);
    }

    fn detach(&self) {
        *lock(&self.waker) = None;
    }
}

/// The connection an exec came from, whose other frames someone else must
/// read while the exec waits. The exec watches it and hands its reading on
/// only when a frame is there, so an exec alone on its connection wakes no
/// other thread.
pub trait Standby {
    /// The descriptor to watch: readable means frames wait. `None` when
    /// there is nothing to watch (the reading was handed on, or frames are
    /// buffered already: then it is handed on here).
    fn watch(&mut self) -> Option<RawFd>;
    /// Hands the reading on now (before the exec waits for its turn or for
    /// a new shell). Once only; later calls retry a hand-off that failed.
    /// False while the reading is still here (no thread could take it).
    fn hand_off(&mut self) -> bool;
}

struct Queue {
    next: u64,
    waiting: VecDeque<u64>,
}

/// The persistent shell of one agent.
pub struct Shell {
    cfg: AgentConfig,
    queue: Mutex<Queue>,
    turn: Condvar,
    /// The running shell; `None` until started or after a failed restart.
    /// Only the exec at the head of the queue locks it for long.
    instance: Mutex<Option<Instance>>,
    /// Last known working directory of the shell.
    cwd: Mutex<String>,
    /// Variables set after start (`SetEnv`), over `cfg.env`, for shells
    /// started later.
    extra_env: Mutex<Vec<(String, String)>>,
}

impl Shell {
    pub fn new(cfg: AgentConfig) -> Shell {
        let cwd = cfg.workdir.clone();
        Shell {
            cfg,
            queue: Mutex::new(Queue {
                next: 0,
                waiting: VecDeque::new(),
            }),
            turn: Condvar::new(),
            instance: Mutex::new(None),
            extra_env: Mutex::new(Vec::new()),
            cwd: Mutex::new(cwd),
        }
    }

    /// Starts the shell ahead of the first exec.
    pub fn start(&self) -> io::Result<()> {
        let mut slot = lock(&self.instance);
        if slot.is_none() {
            *slot = Some(self.spawn_instance()?);
        }
        Ok(())
    }

    /// The shell's last known working directory.
    pub fn cwd(&self) -> String {
        lock(&self.cwd).clone()
    }

    /// Takes a place in the exec queue. Call it in arrival order; then
    /// pass the ticket to [`Shell::exec`] (on any thread).
    pub fn enqueue(&self) -> ExecTicket {
        let mut q = lock(&self.queue);
        let seq = q.next;
        q.next += 1;
        q.waiting.push_back(seq);
        ExecTicket {
            seq,
            cancel: Arc::new(CancelHandle::default()),
        }
    }

    /// Interrupts an exec as if it timed out: a queued one returns at once
    /// without running, a running one is interrupted.
    pub fn cancel(&self, handle: &CancelHandle) {
        handle.cancelled.store(true, Ordering::SeqCst);
        if let Some(shared) = lock(&handle.waker).as_ref() {
            shared.wake_exec();
        }
        // Taking the queue lock orders this with a waiter's check of the
        // flag, so the wake-up cannot be lost.
        let _q = lock(&self.queue);
        self.turn.notify_all();
    }

    /// Runs `cmd` in the shell when the ticket's turn comes, passing output
    /// chunks to `out` as they are read. `standby` is the connection the
    /// exec came from: handed on before anything that waits (the exec's
    /// turn, a new shell), and watched while the command runs.
    /// `ended` gets the outcome as soon as it is known, before the exec's
    /// terminal is put away and a dead shell replaced (the next exec waits
    /// for that, not this one's caller); the same outcome is returned.
    #[allow(clippy::too_many_arguments)]
    pub fn exec(
        &self,
        ticket: ExecTicket,
        cmd: &str,
        timeout: Duration,
        max_output: u64,
        out: &mut dyn FnMut(Vec<u8>),
        standby: &mut dyn Standby,
        ended: &mut dyn FnMut(&ExecOutcome),
    ) -> Result<ExecOutcome, ExecError> {
        let _turn = TurnGuard {
            shell: self,
            seq: ticket.seq,
        };
        if cmd.contains('\0') {
            return Err(ExecError::InvalidRequest(
                "the command contains a NUL byte".into(),
            ));
        }
        if !self.wait_turn(ticket.seq, &ticket.cancel, &mut || {
            standby.hand_off();
        }) {
            return Ok(ExecOutcome {
                exit_code: TIMEOUT_EXIT_CODE,
                cwd: self.cwd(),
                timed_out: true,
                truncated: false,
                duration_ms: 0,
            });
        }
        let started = Instant::now();
        let mut slot = lock(&self.instance);
        if slot.as_ref().is_none_or(Instance::exited) {
            let _ = standby.hand_off();
            *slot = None;
            *slot = Some(self.spawn_instance().map_err(ExecError::Spawn)?);
        }
        let inst = slot.as_mut().expect("instance was just ensured");
        // A timeout beyond what Instant can represent means "never".
        let deadline = started
            .checked_add(timeout)
            .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 86_400));
        let cwd_lock = &self.cwd;
        let outcome_of = |run: &Run| {
            let cwd = match &run.cwd {
                Some(c) if !c.is_empty() => {
                    *lock(cwd_lock) = c.clone();
                    c.clone()
                }
                _ => lock(cwd_lock).clone(),
            };
            ExecOutcome {
                exit_code: if run.timed_out {
                    TIMEOUT_EXIT_CODE
                } else {
                    run.exit_code
                },
                cwd,
                timed_out: run.timed_out,
                truncated: run.truncated,
                duration_ms: started.elapsed().as_millis() as u64,
            }
        };
        let mut outcome = None;
        let run = inst.run(
            cmd,
            deadline,
            max_output,
            &ticket.cancel,
            out,
            standby,
            &mut |run| {
                let o = outcome_of(run);
                ended(&o);
                outcome = Some(o);
            },
        );
        let outcome = outcome.unwrap_or_else(|| outcome_of(&run));
        if run.shell_gone {
            // Replace the shell at once so the next exec finds one.
            *slot = None;
            match self.spawn_instance() {
                Ok(i) => *slot = Some(i),
                Err(e) => eprintln!("sandkasten-agent: restarting the shell: {e}"),
            }
        }
        Ok(outcome)
    }

    /// Blocks until `seq` heads the queue (true) or it is cancelled first
    /// (false).
    fn wait_turn(&self, seq: u64, cancel: &CancelHandle, waiting: &mut dyn FnMut()) -> bool {
        let mut first = true;
        let mut q = lock(&self.queue);
        loop {
            if q.waiting.front() == Some(&seq) {
                return true;
            }
            if cancel.is_cancelled() {
                return false;
            }
            if std::mem::take(&mut first) {
                // Outside the queue's lock (it may start a thread); then
                // look again.
                drop(q);
                waiting();
                q = lock(&self.queue);
                continue;
            }
            q = self.turn.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn spawn_instance(&self) -> io::Result<Instance> {
        let cwd = self.cwd();
        let mut dirs = vec![cwd];
        for d in [self.cfg.workdir.as_str(), self.cfg.home.as_str(), "/"] {
            if !d.is_empty() && !dirs.iter().any(|x| x == d) {
                dirs.push(d.to_string());
            }
        }
        if lock(&self.extra_env).is_empty() {
            return Instance::spawn(&self.cfg, &dirs);
        }
        Instance::spawn(&self.config(), &dirs)
    }

    /// The configuration a shell started now gets: `SetEnv`'s variables
    /// over the agent's.
    pub fn config(&self) -> AgentConfig {
        let mut cfg = self.cfg.clone();
        crate::envs::set_all(&mut cfg.env, lock(&self.extra_env).iter().cloned());
        cfg
    }

    /// Adds `env` to the environment of shells started from now on.
    pub fn set_env(&self, env: Vec<(String, String)>) {
        crate::envs::set_all(&mut lock(&self.extra_env), env);
    }
}

/// Leaves the queue when an exec ends, however it ends.
struct TurnGuard<'a> {
    shell: &'a Shell,
    seq: u64,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.shell.queue);
        q.waiting.retain(|s| *s != self.seq);
        self.shell.turn.notify_all();
    }
}

/// What happened to one command in the shell.
struct Run {
    exit_code: i32,
    cwd: Option<String>,
    timed_out: bool,
    truncated: bool,
    /// The shell died or was killed: start a new one.
    shell_gone: bool,
}

impl Run {
    /// An exec that could not start: the reason as its output, code 126
    /// (the shell's code for a command that cannot run).
    fn refused(out: &mut dyn FnMut(Vec<u8>), why: &str) -> Run {
        out(format!("sandkasten-agent: {why}\n").into_bytes());
        Run {
            exit_code: 126,
            cwd: None,
            timed_out: false,
            truncated: false,
            shell_gone: false,
        }
    }
}

/// Which shell language the driver lines are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Bash,
    /// POSIX sh (dash, busybox): no `builtin`, fds only up to 9.
    Sh,
}

impl Flavor {
    fn find() -> (&'static str, Flavor) {
        for p in ["/bin/bash", "/usr/bin/bash"] {
            if is_executable(Path::new(p)) {
                return (p, Flavor::Bash);
            }
        }
        ("/bin/sh", Flavor::Sh)
    }

    fn argv(self) -> &'static [&'static str] {
        match self {
            Flavor::Bash => &["bash", "--noprofile", "--norc", "-m", "-s"],
            Flavor::Sh => &["sh", "-s"],
        }
    }

    /// The fd (in the shell) of the status pipe.
    fn status_fd(self) -> RawFd {
        match self {
            Flavor::Bash => 98,
            Flavor::Sh => 9,
        }
    }

    /// The fd (in the shell) of the command text: a read-only memfd the
    /// agent writes each exec's command into and rewinds (the shell's fd
    /// shares the agent's read-only file description), which bash reads
    /// with one buffered `mapfile` (its script input is a pipe, which it
    /// reads byte by byte, a syscall each). `sh` has no `mapfile`: its
    /// command comes quoted in the run line.
    fn text_fd(self) -> Option<RawFd> {
        match self {
            Flavor::Bash => Some(97),
            Flavor::Sh => None,
        }
    }

    /// The fd (in the shell) the setup is read from at its start (bash):
    /// a read-only memfd, sourced through `/proc/self/fd` (one buffered
    /// read: the script pipe costs a syscall per byte, 746 of them) and
    /// closed right after.
    fn setup_fd(self) -> Option<RawFd> {
        match self {
            Flavor::Bash => Some(96),
            Flavor::Sh => None,
        }
    }

    /// The first line the shell runs: job control, aliases, an INT trap
    /// that keeps the shell alive, `__sk_s CODE TOKEN`, the status step of
    /// every exec (it writes the token, the code and the working directory
    /// to the status fd; if that fd is gone it exits with the code, which
    /// reports it as well), and in bash `__sk_r`, which reads the command
    /// text into `__sk_a` (`mapfile -d ''` reads a regular file buffered;
    /// bash before 4.4 has no `-d` and falls back to `read -d ''`).
    /// Functions, so that the line the shell reads byte by byte for each
    /// exec stays short; and in bash the alias `__sk_x`, the exec's whole
    /// step before its status (read the text, `eval` the command with its
    /// redirections). An alias, not a function: the command must run at
    /// top level (`declare` in a function makes a local, `return` ends it).
    /// A command that turns aliases off or removes `__sk_x` gets the
    /// function of that name at its next exec, which runs that one command
    /// inside a function and restores the alias. They run outside the eval's redirections, where
    /// stderr is the shell's own terminal: a user's `set -x` traces them
    /// there, never into an exec's output.
    fn setup(self) -> &'static str {
        match self {
            Flavor::Bash => concat!(
                r#"set -m; shopt -s expand_aliases; trap : INT; "#,
                r#"__sk_s() { \builtin printf "$2"'\0%s\0%s\0' "$1" "${PWD-}" >&98 "#,
                r#"|| \builtin exit "$1"; \builtin unset __sk_a; }; "#,
                r#"if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 404)); then "#,
                r#"__sk_r() { \builtin mapfile -d '' -u 97 __sk_a; }; "#,
                r#"else __sk_r() { __sk_a=(); IFS= \builtin read -r -d '' -u 97 '__sk_a[0]'; "#,
                r#"IFS= \builtin read -r -d '' -u 97 '__sk_a[1]'; }; fi; "#,
                r#"\builtin alias __sk_x='__sk_r;\builtin eval -- "${__sk_a[0]}" </dev/null "#,
                r#">"${__sk_a[1]}" 2>&1 98>&- 97<&-'; "#,
                r#"__sk_x() { \builtin shopt -s expand_aliases; "#,
                r#"\builtin alias __sk_x='__sk_r;\builtin eval -- "${__sk_a[0]}" </dev/null "#,
                r#">"${__sk_a[1]}" 2>&1 98>&- 97<&-'; __sk_r; "#,
                r#"\builtin eval -- "${__sk_a[0]}" </dev/null >"${__sk_a[1]}" 2>&1 98>&- 97<&-; }"#,
                "\n"
            ),
            Flavor::Sh => concat!(
                r#"set -m; trap : INT; "#,
                r#"__sk_s() { printf "$2"'\0%s\0%s\0' "$1" "${PWD-}" >&9 "#,
                r#"|| exit "$1"; unset __sk_c; }"#,
                "\n"
            ),
        }
    }

    /// The script line of an exec: it runs the command and reports.
    ///
    /// bash reads the command and the terminal's path from the text fd (the
    /// alias `__sk_x`: the agent wrote them there), `sh` takes the command
    /// single-quoted (always one complete token) from this line; it is `eval`ed
    /// at top level with stdin `/dev/null`, stdout and stderr on this exec's
    /// own terminal (`tty`) and the status and text fds closed (so no program
    /// inherits them): whatever the command does to these fds
    /// (`exec >/dev/null`, closing them) is undone when the eval returns.
    /// Then `__sk_s` writes `token` (random, this exec's), `$?` and the cwd
    /// to the status fd.
    ///
    /// bash reads this whole line before running any of it, and the agent
    /// writes nothing more while the command runs, so the command cannot
    /// learn the token from the shell's input, and records without it are
    /// ignored. If bash abandons the line (its foreground job died of
    /// SIGINT), the agent sends a [`Flavor::status_line`] with a second
    /// token. A command that redefines `__sk_s` gets no status: its exec
    /// times out and the shell is replaced. One that breaks the reading of
    /// the text (`__sk_r`, `__sk_a`, the alias and its function) leaves the
    /// memfd unread, which the agent sees after the next status: that shell
    /// is replaced too.
    fn run_line(self, cmd: &str, token: &str, tty: &str) -> String {
        match self {
            // The command and the terminal's path are in the text
            // (`__sk_a[0]`, `__sk_a[1]`); the alias `__sk_x` runs them
            // (bash's eval takes options: `--` before the command).
            Flavor::Bash => format!("__sk_x;__sk_s \"$?\" {token}\n"),
            // dash's eval would run `--` as a command.
            Flavor::Sh => {
                let quoted = format!("'{}'", cmd.replace('\'', r"'\''"));
                format!(
                    r#"{{ __sk_c={quoted}; }} 2>/dev/null; eval "$__sk_c" </dev/null >{tty} 2>&1 9>&-; __sk_s "$?" {token}"#
                ) + "\n"
            }
        }
    }

    /// The status line sent after an interrupt, for the case that bash
    /// abandoned the run line (its foreground job died of SIGINT: `$?` is
    /// 130).
    fn status_line(self, token: &str) -> String {
        format!("__sk_s \"$?\" {token}\n")
    }
}

/// State shared between an instance, its pump thread, its reaper hook and
/// the cancel handle of its running exec.
struct Shared {
    /// Raw wait status once the shell has been reaped.
    exit: Mutex<Option<i32>>,
    /// The terminals the pump reads besides the shell's own.
    ttys: Mutex<Ttys>,
    stop: AtomicBool,
    /// Wakes the pump.
    wake_w: OwnedFd,
    /// Wakes the running exec (an eventfd): a cancel, the shell's death.
    exec_wake: OwnedFd,
}

/// Terminal masters besides the shell's own, for the pump.
#[derive(Default)]
struct Ttys {
    /// Terminals of finished execs that processes (background jobs) still
    /// hold: read and dropped until the last holder closes its end.
    retired: Vec<Arc<OwnedFd>>,
    /// The last exec's terminal, which nobody else held when it ended: the
    /// next exec reuses it (opening a pty costs more than the rest of an
    /// exec's own work). Closed by the pump at `spare_until`, so an idle
    /// sandbox holds one pty, not two.
    spare: Option<ExecTty>,
    /// Only ever moved later while set: the pump, sleeping until an
    /// earlier time, looks again then.
    spare_until: Option<Instant>,
}

impl Shared {
    fn wake(&self) {
        let b = 1u8;
        // SAFETY: writes one byte from a valid buffer to an owned fd. The
        // pipe is non-blocking; a full pipe already guarantees a wake-up.
        unsafe { libc::write(self.wake_w.as_raw_fd(), (&raw const b).cast(), 1) };
    }

    fn wake_exec(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid buffer to an owned eventfd
        // (non-blocking: a counter at its maximum is a pending wake-up).
        unsafe { libc::write(self.exec_wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn retire(&self, tty: Arc<OwnedFd>) {
        lock(&self.ttys).retired.push(tty);
        self.wake();
    }
}

/// How long a finished exec's free terminal is kept for the next exec.
const SPARE_KEEP: Duration = Duration::from_secs(2);

/// The terminal of one exec: its stdout and stderr. The agent holds the
/// slave side while the exec runs, so the master never reports a hang-up
/// before the shell has opened it by `path`.
struct ExecTty {
    master: Arc<OwnedFd>,
    slave: OwnedFd,
    path: String,
}

/// One running shell process and its pump thread.
struct Instance {
    pid: libc::pid_t,
    /// The shell's controlling terminal (its own stdout and stderr, and the
    /// terminal job control runs on); what reaches it is dropped.
    master: Arc<OwnedFd>,
    /// Owner given to each exec's terminal (the sandbox user).
    owner: (Option<u32>, Option<u32>),
    cmd_w: File,
    /// The command text (bash: [`Flavor::text_fd`]): written at offset 0
    /// for each exec through the first, and rewound through the second,
    /// whose file description the shell's fd shares.
    text: Option<(File, OwnedFd)>,
    flavor: Flavor,
    /// The shell's status pipe, read by the running exec.
    status_r: OwnedFd,
    /// EOF seen on the status pipe (every writer gone).
    status_open: bool,
    /// The read buffer of execs.
    buf: Vec<u8>,
    shared: Arc<Shared>,
    pump: Option<JoinHandle<()>>,
}

/// Everything the forked child needs, prepared before the fork because the
/// child of a multi-threaded process may not allocate.
struct ChildPlan {
    path: CString,
    argv: Vec<CString>,
    /// Working directories to try in order, each with its environment
    /// (which differs only in `PWD`).
    dirs: Vec<(CString, Vec<CString>)>,
    uid: Option<u32>,
    gid: Option<u32>,
    nproc: Option<u64>,
    slave: RawFd,
    cmd_r: RawFd,
    status_w: RawFd,
    status_fd: RawFd,
    /// The read-only command text and the fd the shell has it as.
    text: Option<(RawFd, RawFd)>,
    /// The read-only setup and the fd the shell has it as.
    setup: Option<(RawFd, RawFd)>,
    err_w: RawFd,
}

impl Instance {
    fn spawn(cfg: &AgentConfig, dirs: &[String]) -> io::Result<Instance> {
        let (path, flavor) = Flavor::find();
        let (master, slave) = open_pty()?;
        let (cmd_r, cmd_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (wake_r, wake_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&master, &status_r, &wake_r, &wake_w] {
            set_nonblocking(fd.as_raw_fd())?;
        }
        // The child's ends are moved above every fd the child dup2()s onto,
        // so no dup2 clobbers a source it still needs.
        // The originals are closed right away: a lingering write end of the
        // error pipe would keep the read below from ever seeing EOF.
        let slave = move_above(slave, 100)?;
        let cmd_r = move_above(cmd_r, 100)?;
        let status_w = move_above(status_w, 100)?;
        let err_w = move_above(err_w, 100)?;
        let text = match flavor.text_fd() {
            Some(fd) => {
                let (rw, ro) = command_text()?;
                Some((rw, move_above(ro, 100)?, fd))
            }
            None => None,
        };
        // Where /proc is mounted (it is in every sandbox; checked anyway),
        // bash sources its setup from a file.
        let setup = match flavor.setup_fd() {
            Some(fd) if Path::new("/proc/self/fd").is_dir() => {
                let (rw, ro) = command_text()?;
                File::from(rw).write_all(flavor.setup().as_bytes())?;
                Some((move_above(ro, 100)?, fd))
            }
            _ => None,
        };
        if cfg.uid.is_some() || cfg.gid.is_some() {
            // So that the sandbox user owns its terminal, like a login.
            let uid = cfg.uid.unwrap_or(u32::MAX);
            let gid = cfg.gid.unwrap_or(u32::MAX);
            // SAFETY: plain syscall on an owned fd; failure is harmless.
            unsafe { libc::fchown(slave.as_raw_fd(), uid, gid) };
        }

        let plan = ChildPlan {
            path: cstring(path)?,
            argv: flavor
                .argv()
                .iter()
                .map(|a| cstring(a))
                .collect::<io::Result<_>>()?,
            dirs: dirs
                .iter()
                .map(|d| Ok((cstring(d)?, shell_env(cfg, d)?)))
                .collect::<io::Result<_>>()?,
            uid: cfg.uid,
            gid: cfg.gid,
            nproc: cfg.nproc_limit,
            slave: slave.as_raw_fd(),
            cmd_r: cmd_r.as_raw_fd(),
            status_w: status_w.as_raw_fd(),
            status_fd: flavor.status_fd(),
            text: text.as_ref().map(|(_, ro, fd)| (ro.as_raw_fd(), *fd)),
            setup: setup.as_ref().map(|(ro, fd)| (ro.as_raw_fd(), *fd)),
            err_w: err_w.as_raw_fd(),
        };

        let shared = Arc::new(Shared {
            exit: Mutex::new(None),
            ttys: Mutex::new(Ttys::default()),
            stop: AtomicBool::new(false),
            wake_w,
            exec_wake: sys::eventfd()?,
        });
        let hook = shared.clone();
        let pid = reaper::spawn(
            // SAFETY: the plan's fds are open and its strings outlive the
            // call; the child only makes async-signal-safe calls.
            || unsafe { fork_shell(&plan) },
            move |status| {
                *lock(&hook.exit) = Some(status);
                hook.wake_exec();
            },
        )?;
        drop((slave, cmd_r, status_w, err_w));
        // The shell has its own copy of the setup now.
        let setup_line = match setup {
            Some((_, fd)) => format!(". /proc/self/fd/{fd}; exec {fd}<&-\n"),
            None => flavor.setup().to_string(),
        };
        let text = text.map(|(rw, ro, _)| (File::from(rw), ro));

        // The error pipe is closed by a successful exec; before that the
        // child writes its errno on failure.
        if let Some(e) = sys::child_exec_error(err_r)? {
            return Err(io::Error::new(e.kind(), format!("starting {path}: {e}")));
        }

        let master = Arc::new(master);
        let pump = {
            let (master, shared) = (master.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("shell-pump-{pid}"))
                .spawn(move || pump(&master, &wake_r, &shared))?
        };
        let mut inst = Instance {
            pid,
            master,
            owner: (cfg.uid, cfg.gid),
            cmd_w: File::from(cmd_w),
            text,
            flavor,
            status_r,
            status_open: true,
            buf: vec![0u8; READ_CHUNK],
            shared,
            pump: Some(pump),
        };
        // The shell reads this before any command; a failure shows up as
        // the shell's death.
        let _ = inst.cmd_w.write_all(setup_line.as_bytes());
        Ok(inst)
    }

    fn exited(&self) -> bool {
        lock(&self.shared.exit).is_some()
    }

    /// Runs one command to completion (or interruption).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        cmd: &str,
        deadline: Instant,
        max_output: u64,
        cancel: &CancelHandle,
        out: &mut dyn FnMut(Vec<u8>),
        standby: &mut dyn Standby,
        ended: &mut dyn FnMut(&Run),
    ) -> Run {
        let tty = match self.exec_tty() {
            Ok(t) => t,
            // Without a terminal of its own the exec cannot be told apart
            // from what others write: refuse to run it.
            Err(e) => {
                return Run::refused(out, &format!("cannot open a terminal for the exec: {e}"))
            }
        };
        let mut text_len = 0;
        if let Some((text, shared)) = &self.text {
            // The shell is between commands: nothing reads the text now
            // (and no program of it has the fd: the eval closes it).
            // The command and this exec's terminal, each NUL-terminated
            // (`mapfile -d ''` reads them into `__sk_a`).
            let text_bytes = [cmd.as_bytes(), b"\0", tty.path.as_bytes(), b"\0"].concat();
            text_len = text_bytes.len() as u64;
            if let Err(e) = text
                .write_all_at(&text_bytes, 0)
                .and_then(|()| text.set_len(text_bytes.len() as u64))
                .and_then(|()| rewind(shared))
            {
                self.release_tty(tty);
                return Run::refused(out, &format!("cannot pass the command to the shell: {e}"));
            }
        }
        let (token, report) = (nonce(), nonce());
        // A wake-up left over from an earlier exec (a cancel that came
        // after its end) would only cost one more look; cleared anyway.
        drain_eventfd(&self.shared.exec_wake);
        cancel.attach(self.shared.clone());
        // For the fallback of `signal_foreground` (kernels without a pty
        // foreground group): jobs started from here on are this exec's.
        let exec_start = boot_ticks();
        // EPIPE means the shell is gone; its death arrives from the reaper.
        let _ = self
            .cmd_w
            .write_all(self.flavor.run_line(cmd, &token, &tty.path).as_bytes());
        let mut watch = standby.watch();
        // A frame came in but no thread could take the reading (a sandbox
        // at its pids limit): tried again at this time (no event tells
        // when a thread can be started again).
        let mut hand_off_again: Option<Instant> = None;
        if watch.is_none() && !standby.hand_off() {
            // Frames were buffered already and no thread took them.
            hand_off_again = Some(Instant::now() + HAND_OFF_RETRY);
        }
        let mut status = StatusParser::new(&token, &report);
        // The status line goes out only after an interrupt, never while
        // the command runs: see `Flavor::run_line`.
        let mut report_sent = false;
        let mut run = Run {
            exit_code: 0,
            cwd: None,
            timed_out: false,
            truncated: false,
            shell_gone: false,
        };
        let mut forwarded: u64 = 0;
        let mut forward = |data: &[u8], run: &mut Run| {
            let room = max_output.saturating_sub(forwarded) as usize;
            let data = if data.len() > room {
                run.truncated = true;
                &data[..room]
            } else {
                data
            };
            if !data.is_empty() {
                forwarded += data.len() as u64;
                out(data.to_vec());
            }
        };
        let mut tty_open = true;
        let mut buf = std::mem::take(&mut self.buf);
        // 0 while running; then the number of escalation steps taken.
        let mut step = 0u8;
        let mut next_step_at = deadline;
        // From the SIGINT step until the next: the jobs interrupted so far.
        // Every job that appears meanwhile is interrupted too (the step may
        // find a builtin running, or the shell between two programs).
        let mut interrupt: Option<Interrupt> = None;
        loop {
            // Looked at before every wait: the shell may have died before
            // this exec began (the reaper's wake-up was cleared above).
            let died = *lock(&self.shared.exit);
            if let Some(st) = died {
                // What it wrote before it died is the exec's.
                if tty_open {
                    drain_tty(&tty.master, &mut buf, &mut |d| forward(d, &mut run));
                }
                run.exit_code = reaper::exit_code(st);
                run.shell_gone = true;
                break;
            }
            if step == 0 && cancel.is_cancelled() {
                next_step_at = Instant::now();
            }
            if let Some(i) = &mut interrupt {
                let now = Instant::now();
                if now < next_step_at && now >= i.next {
                    self.interrupt_jobs(i, exec_start);
                }
            }
            // Checked before reading, so a command that never stops
            // writing still times out.
            if Instant::now() >= next_step_at {
                step += 1;
                next_step_at = Instant::now() + GRACE;
                match step {
                    1 => {
                        run.timed_out = true;
                        let mut i = Interrupt::new();
                        self.interrupt_jobs(&mut i, exec_start);
                        interrupt = Some(i);
                        // bash abandons the rest of the run line when its
                        // foreground job dies of SIGINT, so the status line
                        // must be there to report 130.
                        if !report_sent {
                            report_sent = true;
                            let line = self.flavor.status_line(&report);
                            let _ = self.cmd_w.write_all(line.as_bytes());
                        }
                    }
                    2 => {
                        interrupt = None;
                        self.signal_foreground(libc::SIGKILL, exec_start);
                    }
                    3 => {
                        self.kill_session();
                        next_step_at = Instant::now() + DEATH_WAIT;
                    }
                    _ => {
                        eprintln!(
                            "sandkasten-agent: shell {} did not die after SIGKILL; abandoning it",
                            self.pid
                        );
                        run.shell_gone = true;
                        break;
                    }
                }
            }
            if hand_off_again.is_some_and(|t| Instant::now() >= t) {
                hand_off_again = (!standby.hand_off()).then(|| Instant::now() + HAND_OFF_RETRY);
            }
            let mut wait = next_step_at.saturating_duration_since(Instant::now());
            if let Some(i) = &interrupt {
                wait = wait.min(i.next.saturating_duration_since(Instant::now()));
            }
            if let Some(t) = hand_off_again {
                wait = wait.min(t.saturating_duration_since(Instant::now()));
            }
            let on = |open: bool, fd: RawFd| if open { fd } else { -1 };
            let mut fds = [
                pollfd(self.shared.exec_wake.as_raw_fd()),
                pollfd(on(self.status_open, self.status_r.as_raw_fd())),
                pollfd(on(tty_open, tty.master.as_raw_fd())),
                pollfd(watch.unwrap_or(-1)),
            ];
            // Rounded up: a wait cut short would spin until the deadline.
            let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: a valid array of pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("sandkasten-agent: exec: poll: {e}");
                    run.shell_gone = true;
                    break;
                }
                continue;
            }
            if fds[0].revents != 0 {
                drain_eventfd(&self.shared.exec_wake);
            }
            if fds[3].revents != 0 {
                // A frame behind this exec (a cancel, a ping): someone else
                // reads the connection from now on.
                watch = None;
                if !standby.hand_off() {
                    hand_off_again = Some(Instant::now() + HAND_OFF_RETRY);
                }
            }
            if tty_open && fds[2].revents != 0 {
                match read_tty(&tty.master, &mut buf) {
                    TtyRead::Data(n) => forward(&buf[..n], &mut run),
                    TtyRead::Empty => {}
                    TtyRead::Closed => tty_open = false,
                }
            }
            if self.status_open && fds[1].revents != 0 {
                // Output written before the status goes to the exec first.
                if tty_open {
                    tty_open = drain_tty(&tty.master, &mut buf, &mut |d| forward(d, &mut run));
                }
                // SAFETY: reads into a valid buffer from an owned fd.
                let n = unsafe {
                    libc::read(
                        self.status_r.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n == 0 {
                    self.status_open = false;
                } else if n > 0 {
                    status.push(&buf[..n as usize]);
                    if let Some((code, cwd)) = status.record() {
                        run.exit_code = code;
                        run.cwd = Some(cwd);
                        // bash read the whole text (cmd, terminal) unless a
                        // command broke the driver (`unset -f __sk_r`,
                        // `readonly __sk_a`, an alias over `__sk_r`): then
                        // this command did not run as asked, and no later
                        // one would; a fresh shell replaces this one.
                        if !self.text_consumed(text_len) {
                            eprintln!(
                                "sandkasten-agent: the shell did not read the command (its driver was changed); replacing it"
                            );
                            run.shell_gone = true;
                        }
                        break;
                    }
                }
            }
        }
        self.buf = buf;
        if step >= 3 {
            // We killed the shell; a status that slipped in before its
            // death does not make it usable.
            run.shell_gone = true;
        }
        // The outcome goes out now; the clean-up below delays only the
        // next exec.
        ended(&run);
        cancel.detach();
        self.release_tty(tty);
        run
    }

    /// Whether the shell read the command text to its end (it shares the
    /// file description of the agent's read-only fd, so its offset is the
    /// shell's). True without a text (sh).
    fn text_consumed(&self, len: u64) -> bool {
        match &self.text {
            Some((_, shared)) => {
                // SAFETY: plain syscall on an owned fd.
                let at = unsafe { libc::lseek(shared.as_raw_fd(), 0, libc::SEEK_CUR) };
                at == len as libc::off_t
            }
            None => true,
        }
    }

    /// A fresh terminal for one exec, owned by the sandbox user and set up
    /// like the shell's own (no echo, no output processing).
    fn exec_tty(&self) -> io::Result<ExecTty> {
        let spare = lock(&self.shared.ttys).spare.take();
        if let Some(t) = spare {
            // What a background job of the last exec wrote before it ended
            // (nobody held the terminal when it was kept, so nothing came
            // after) is nobody's: dropped. SAFETY: plain call on an owned fd.
            let flushed = unsafe { libc::tcflush(t.master.as_raw_fd(), libc::TCIFLUSH) } == 0;
            // Whatever the last exec set (`stty`), this one starts clean.
            if flushed && configure_tty(&t.slave).is_ok() {
                return Ok(t);
            }
        }
        let (master, slave) = open_pty()?;
        set_nonblocking(master.as_raw_fd())?;
        let path = pty_path(&master)?;
        if self.owner.0.is_some() || self.owner.1.is_some() {
            let uid = self.owner.0.unwrap_or(u32::MAX);
            let gid = self.owner.1.unwrap_or(u32::MAX);
            // SAFETY: plain syscall on an owned fd.
            if unsafe { libc::fchown(slave.as_raw_fd(), uid, gid) } < 0 {
                return Err(with_context(
                    io::Error::last_os_error(),
                    "chown of the exec's terminal",
                ));
            }
        }
        Ok(ExecTty {
            master: Arc::new(master),
            slave,
            path,
        })
    }

    /// Ends an exec's hold on its terminal: closed if nobody else has it
    /// open, else read and dropped by the pump until the last holder (a
    /// background job) closes it, so late output never reaches a later
    /// exec and a chatty job never blocks.
    fn release_tty(&self, tty: ExecTty) {
        let ExecTty {
            master,
            slave,
            path,
        } = tty;
        drop(slave);
        let mut p = pollfd(master.as_raw_fd());
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n == 1 && p.revents & libc::POLLHUP != 0 {
            // Nobody holds it: keep it for the next exec (with our own
            // slave end again, so it does not report a hang-up).
            if let Ok(slave) = open_slave(&master) {
                let mut t = lock(&self.shared.ttys);
                t.spare = Some(ExecTty {
                    master,
                    slave,
                    path,
                });
                // A pump with a deadline wakes then and sees the later one;
                // only one without must be told.
                let asleep = t.spare_until.is_none();
                t.spare_until = Some(Instant::now() + SPARE_KEEP);
                drop(t);
                if asleep {
                    self.shared.wake();
                }
            }
            return;
        }
        self.shared.retire(master);
    }

    /// Signals the foreground process group of the terminal unless it is
    /// the shell's own (a builtin loop must not take the shell down here).
    ///
    /// Where the terminal cannot tell its foreground group (gVisor answers
    /// ENOTTY), the process groups of the shell's children started since
    /// `exec_start` (clock ticks since boot) are signalled instead: the
    /// exec's own jobs (a job it sent to the background included), never
    /// the shell's group nor jobs of earlier execs.
    /// True when some job got the signal.
    fn signal_foreground(&self, sig: libc::c_int, exec_start: Option<u64>) -> bool {
        let mut sent = false;
        for g in self.foreground_jobs(exec_start) {
            // SAFETY: signalling a process group id.
            sent |= unsafe { libc::kill(-g, sig) } == 0;
        }
        sent
    }

    /// The process groups [`Self::signal_foreground`] signals.
    fn foreground_jobs(&self, exec_start: Option<u64>) -> Vec<i32> {
        // SAFETY: a plain syscall on an owned fd.
        let pgrp = unsafe { libc::tcgetpgrp(self.master.as_raw_fd()) };
        let groups = if pgrp > 0 {
            vec![pgrp]
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTTY) {
            exec_start
                // The shell leads its own session and process group.
                .map(|t| job_groups_since(self.pid, self.pid, t))
                .unwrap_or_default()
        } else {
            vec![]
        };
        groups.into_iter().filter(|g| *g != self.pid).collect()
    }

    /// One round of the SIGINT step: SIGINTs the foreground jobs not
    /// interrupted yet (their whole process group, as Ctrl-C would), a
    /// process the shell forked into an interrupted job after its SIGINT
    /// (a pipeline being set up), and again a member of an interrupted job
    /// that was the shell's fork at its SIGINT and has started a program
    /// since: the fork still has the shell's handler for SIGINT (the
    /// driver's trap) until it starts its program, so the handler took the
    /// signal and the program ran as if none came. Processes that members
    /// start are never signalled one by one (a job's cleanup on SIGINT may
    /// start some).
    fn interrupt_jobs(&self, i: &mut Interrupt, exec_start: Option<u64>) {
        i.next = Instant::now() + SIGINT_RETRY;
        let groups = self.foreground_jobs(exec_start);
        // Read before any signal: a process seen as the shell's fork may
        // start its program before or after the signal, one seen as a
        // program has had it.
        let kids = children(self.pid);
        for &g in &groups {
            if i.groups.contains(&g) {
                continue;
            }
            // SAFETY: signalling a process group id.
            unsafe { libc::kill(-g, libc::SIGINT) };
            i.groups.push(g);
            for k in kids.iter().filter(|k| k.pgrp == g) {
                i.members.push((k.pid, k.forked));
            }
        }
        for k in kids.iter().filter(|k| i.groups.contains(&k.pgrp)) {
            let resend = match i.members.iter_mut().find(|(pid, _)| *pid == k.pid) {
                None => {
                    i.members.push((k.pid, k.forked));
                    true
                }
                Some((_, forked)) if *forked && !k.forked => {
                    *forked = false;
                    true
                }
                Some(_) => false,
            };
            if resend {
                // SAFETY: signalling a pid read just now as the shell's
                // child (the shell may have reaped it since: a pid is
                // reused only after the whole pid space wrapped).
                unsafe { libc::kill(k.pid, libc::SIGINT) };
            }
        }
    }

    /// SIGKILLs the shell and every process in its session.
    fn kill_session(&self) {
        if self.exited() {
            return;
        }
        // SAFETY: plain syscalls. The shell is not reaped yet (its hook has
        // not run), so its pid and session id cannot have been reused.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::kill(-self.pid, libc::SIGKILL);
        }
        // Processes may fork while we look; a few rounds catch stragglers.
        for _ in 0..4 {
            let members = session_members(self.pid);
            if members.is_empty() {
                break;
            }
            for pid in members {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.exited() {
            self.kill_session();
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
        if let Some(p) = self.pump.take() {
            let _ = p.join();
        }
    }
}

/// The jobs an interrupt has sent SIGINT to, and their members.
struct Interrupt {
    /// The process groups signalled.
    groups: Vec<i32>,
    /// The shell's children in those groups, and whether each was still
    /// the shell's fork (no program started) when last signalled.
    members: Vec<(i32, bool)>,
    /// When the next round is due (no event tells when the shell starts
    /// a job, or a job its program).
    next: Instant,
}

impl Interrupt {
    fn new() -> Interrupt {
        Interrupt {
            groups: Vec::new(),
            members: Vec::new(),
            next: Instant::now(),
        }
    }
}

/// The kernel's task flag of a process that has not started a program
/// since its fork (`PF_FORKNOEXEC`, shown in `/proc/PID/stat` to anyone).
const PF_FORKNOEXEC: u64 = 0x40;

/// A child of the shell.
struct Child {
    pid: i32,
    pgrp: i32,
    /// Still the shell's fork: no program started.
    forked: bool,
    /// Clock ticks since boot.
    start: u64,
}

/// The fields of `/proc/PID/stat` an interrupt uses.
struct Stat {
    ppid: i32,
    pgrp: i32,
    flags: u64,
    /// Clock ticks since boot.
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp …`; the name may hold `)` and spaces.
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field n of the file is f[n - 3]: ppid 4, pgrp 5, flags 9,
    // starttime 22.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: num(1)? as i32,
        pgrp: num(2)? as i32,
        flags: num(6)?,
        start: num(19)?,
    })
}

/// The shell's children (from its threads' `children` files, else a
/// walk of `/proc`).
fn children(shell: i32) -> Vec<Child> {
    let child = |pid: i32| {
        stat(pid).filter(|s| s.ppid == shell).map(|s| Child {
            pid,
            pgrp: s.pgrp,
            forked: s.flags & PF_FORKNOEXEC != 0,
            start: s.start,
        })
    };
    // Each thread's children: the shell has one thread.
    let listed: Option<Vec<i32>> = std::fs::read_dir(format!("/proc/{shell}/task"))
        .ok()
        .and_then(|tasks| {
            let mut pids = Vec::new();
            for t in tasks.flatten() {
                let list = std::fs::read_to_string(t.path().join("children")).ok()?;
                pids.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
            Some(pids)
        });
    match listed {
        Some(pids) => pids.into_iter().filter_map(child).collect(),
        None => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter_map(child)
            .collect(),
    }
}

/// The pump: reads and drops the shell's own terminal (where the driver's
/// steps and job notifications land) and the retired terminals of earlier
/// execs, and closes the spare terminal when its time is up, until told to
/// stop. The running exec reads its own terminal and the status pipe.
fn pump(master: &OwnedFd, wake_r: &OwnedFd, shared: &Shared) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut master_open = true;
    loop {
        // The only deadline: closing a spare terminal nobody used.
        let (retired, spare_until) = {
            let t = lock(&shared.ttys);
            (t.retired.clone(), t.spare_until)
        };
        let mut fds = vec![
            pollfd(wake_r.as_raw_fd()),
            pollfd(if master_open { master.as_raw_fd() } else { -1 }),
        ];
        fds.extend(retired.iter().map(|r| pollfd(r.as_raw_fd())));
        let timeout = match spare_until {
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as i32,
            None => -1,
        };
        // SAFETY: valid array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("sandkasten-agent: shell pump: poll: {e}");
            return;
        }
        {
            let mut t = lock(&shared.ttys);
            if t.spare_until.is_some_and(|u| Instant::now() >= u) {
                t.spare = None;
                t.spare_until = None;
            }
        }
        if fds[0].revents != 0 {
            drain_pipe(wake_r.as_raw_fd());
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if master_open && fds[1].revents != 0 {
            master_open = read_tty(master, &mut buf) != TtyRead::Closed;
        }
        for (r, p) in retired.iter().zip(&fds[2..]) {
            if p.revents != 0 && read_tty(r, &mut buf) == TtyRead::Closed {
                lock(&shared.ttys).retired.retain(|x| !Arc::ptr_eq(x, r));
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum TtyRead {
    /// This many bytes are at the start of the buffer.
    Data(usize),
    Empty,
    Closed,
}

/// One read from a terminal master.
fn read_tty(master: &OwnedFd, buf: &mut [u8]) -> TtyRead {
    // SAFETY: reads into a valid buffer from an owned fd.
    let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        return TtyRead::Data(n as usize);
    }
    if n == 0 {
        return TtyRead::Closed;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => TtyRead::Empty,
        // EIO: no process has the terminal open any more.
        _ => TtyRead::Closed,
    }
}

/// Passes what is readable now to `to` (bounded: a job may write without
/// pause); false if the master is closed.
fn drain_tty(master: &OwnedFd, buf: &mut [u8], to: &mut dyn FnMut(&[u8])) -> bool {
    let mut taken = 0;
    while taken < DRAIN_MAX_BYTES {
        match read_tty(master, buf) {
            TtyRead::Data(n) => {
                to(&buf[..n]);
                taken += n;
            }
            TtyRead::Empty => return true,
            TtyRead::Closed => return false,
        }
    }
    true
}

/// Clears an eventfd's count (non-blocking: nothing to clear is fine).
fn drain_eventfd(fd: &OwnedFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a valid u64 from an owned eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
}

/// Finds the running exec's record in the status stream: one of its two
/// tokens (the run line's, or the status line's after an interrupt), a
/// NUL, the exit code, a NUL, the working directory, a NUL. Anything else
/// on the stream (a command writing to the status fd, a late record of an
/// earlier exec) is ignored.
struct StatusParser {
    keys: [Vec<u8>; 2],
    buf: Vec<u8>,
}

/// Most bytes of unrelated status data kept while looking for a record.
const STATUS_BUF_MAX: usize = 64 * 1024;

impl StatusParser {
    fn new(token: &str, report: &str) -> StatusParser {
        let key = |s: &str| {
            let mut k = s.as_bytes().to_vec();
            k.push(0);
            k
        };
        StatusParser {
            keys: [key(token), key(report)],
            buf: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn record(&mut self) -> Option<(i32, String)> {
        let found = self
            .keys
            .iter()
            .filter_map(|k| find(&self.buf, k).map(|at| (at, k.len())))
            .min();
        let Some((at, len)) = found else {
            // Keep only what could be the start of a record.
            if self.buf.len() > STATUS_BUF_MAX {
                let keep = self.keys[0].len().max(self.keys[1].len());
                self.buf.drain(..self.buf.len() - keep);
            }
            return None;
        };
        let rest = &self.buf[at + len..];
        let first = rest.iter().position(|b| *b == 0)?;
        let second = first + 1 + rest[first + 1..].iter().position(|b| *b == 0)?;
        let code = std::str::from_utf8(&rest[..first])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        let cwd = String::from_utf8_lossy(&rest[first + 1..second]).into_owned();
        self.buf.clear();
        Some((code, cwd))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A fresh random token (hex) for one exec's status record.
fn nonce() -> String {
    let mut b = [0u8; 8];
    // SAFETY: fills a valid buffer; getrandom(2) without flags blocks only
    // before the pool is initialised, long past at this point.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Never expected; a weaker token still beats none.
        let t = Instant::now();
        let x = format!("{t:?}{:?}", std::thread::current().id());
        for (i, c) in x.bytes().enumerate() {
            b[i % 8] ^= c;
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The path of a pty's slave side, `/dev/pts/N`.
fn pty_path(master: &OwnedFd) -> io::Result<String> {
    let mut n: libc::c_uint = 0;
    // SAFETY: valid out pointer for TIOCGPTN on an owned master.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN as _, &mut n) } < 0 {
        return Err(with_context(io::Error::last_os_error(), "TIOCGPTN"));
    }
    Ok(format!("/dev/pts/{n}"))
}

/// The child side of the fork: becomes the shell or reports errno on
/// `plan.err_w` and exits 127.
///
/// # Safety
/// Must be called in a process that may fork; the plan's fds must be open.
unsafe fn fork_shell(plan: &ChildPlan) -> io::Result<libc::pid_t> {
    let argv = sys::c_ptrs(&plan.argv);
    let envps: Vec<Vec<*const libc::c_char>> =
        plan.dirs.iter().map(|(_, env)| sys::c_ptrs(env)).collect();

    // SAFETY: fork is async-signal-safe; the child below only makes
    // async-signal-safe calls on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        return if pid < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        };
    }
    // SAFETY: we are the child; see above.
    unsafe {
        let fail = || -> ! {
            let e = *libc::__errno_location();
            libc::write(plan.err_w, (&raw const e).cast(), 4);
            libc::_exit(127)
        };
        sys::reset_signals();
        if libc::setsid() < 0 {
            fail();
        }
        if libc::ioctl(plan.slave, libc::TIOCSCTTY as _, 0) < 0 {
            fail();
        }
        if libc::dup2(plan.cmd_r, 0) < 0
            || libc::dup2(plan.slave, 1) < 0
            || libc::dup2(plan.slave, 2) < 0
            || libc::dup2(plan.status_w, plan.status_fd) < 0
        {
            fail();
        }
        for (from, fd) in [plan.text, plan.setup].into_iter().flatten() {
            if libc::dup2(from, fd) < 0 {
                fail();
            }
        }
        // Nothing of the agent's stays open (see `sys::become_user`).
        let text_fd = plan.text.map_or(-1, |(_, fd)| fd);
        let setup_fd = plan.setup.map_or(-1, |(_, fd)| fd);
        sys::close_fds_except(&[plan.status_fd, setup_fd, text_fd, plan.err_w]);
        if !sys::become_user(plan.uid, plan.gid, plan.nproc) {
            fail();
        }
        // The first directory the user may enter wins; its env has PWD set
        // to it, so bash keeps a logical path (one through a symlink).
        let mut chosen = None;
        for (i, (dir, _)) in plan.dirs.iter().enumerate() {
            if libc::chdir(dir.as_ptr()) == 0 {
                chosen = Some(i);
                break;
            }
        }
        let Some(i) = chosen else { fail() };
        libc::execve(plan.path.as_ptr(), argv.as_ptr(), envps[i].as_ptr());
        fail()
    }
}

/// Clock ticks since boot (the unit of a process's start time in
/// `/proc/<pid>/stat`).
fn boot_ticks() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; sysconf without pointers.
    let (r, hz) = unsafe {
        (
            libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    (r == 0 && hz > 0)
        .then(|| ts.tv_sec as u64 * hz as u64 + ts.tv_nsec as u64 * hz as u64 / 1_000_000_000)
}

/// Process groups (other than `own`, the shell's) of `shell`'s children
/// that started at or after `since` (clock ticks since boot), from `/proc`.
fn job_groups_since(shell: i32, own: i32, since: u64) -> Vec<i32> {
    let mut out = Vec::new();
    for k in children(shell) {
        if k.pgrp != own && k.start >= since && !out.contains(&k.pgrp) {
            out.push(k.pgrp);
        }
    }
    out
}

/// The shell's environment: exactly `cfg.env`, plus `HOME` when missing,
/// plus `PWD` (the directory the shell starts in).
fn shell_env(cfg: &AgentConfig, dir: &str) -> io::Result<Vec<CString>> {
    let mut env = Vec::with_capacity(cfg.env.len() + 2);
    for (k, v) in &cfg.env {
        if k.is_empty() || k.contains('=') || k == "PWD" {
            continue;
        }
        env.push(cstring(&format!("{k}={v}"))?);
    }
    if !cfg.env.iter().any(|(k, _)| k == "HOME") {
        env.push(cstring(&format!("HOME={}", cfg.home))?);
    }
    env.push(cstring(&format!("PWD={dir}"))?);
    Ok(env)
}

/// Pids whose session id is `sid` (from `/proc`).
fn session_members(sid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| proc_session(*pid) == Some(sid))
        .collect()
}

/// Session id of a process: field 6 of `/proc/PID/stat`.
fn proc_session(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after it start behind the last ')'.
    let end = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[end + 1..]).ok()?;
    // state, ppid, pgrp, session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Opens a pty pair, both ends close-on-exec, configured for byte-exact
/// output: no echo, no output processing (so no `\n` -> `\r\n`).
/// The command text file: a memfd only the agent may write (mode 0444,
/// owned by the agent's user), and a read-only fd of it for the shell
/// (whose offset the agent rewinds before each exec).
fn command_text() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: memfd_create with a valid name; the fd is wrapped at once.
    let rw = unsafe {
        let fd = libc::memfd_create(c"sandkasten-command".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return Err(with_context(io::Error::last_os_error(), "memfd_create"));
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: plain syscall on an owned fd.
    if unsafe { libc::fchmod(rw.as_raw_fd(), 0o444) } < 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            "fchmod of the command text",
        ));
    }
    let ro = File::open(format!("/proc/self/fd/{}", rw.as_raw_fd()))
        .map_err(|e| with_context(e, "reopening the command text read-only"))?;
    Ok((rw, OwnedFd::from(ro)))
}

/// Sets an fd's offset back to 0.
fn rewind(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on an owned fd.
    if unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (master, slave) = open_pty_pair()?;
    configure_tty(&slave)?;
    Ok((master, slave))
}

/// A new slave fd of a pty master (TIOCGPTPEER), close-on-exec.
fn open_slave(master: &OwnedFd) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: plain ioctl on an owned master; the fd is wrapped at once.
    let s = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER as _, flags) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

/// Sets a terminal up for byte-exact output: no echo, no output
/// processing (so no `\n` -> `\r\n`), no flow control, our window size.
/// The settings are computed once from a fresh terminal and then set
/// whole, so whatever a reused terminal was changed to is undone.
fn configure_tty(slave: &OwnedFd) -> io::Result<()> {
    static SETTINGS: std::sync::OnceLock<libc::termios> = std::sync::OnceLock::new();
    let s = slave.as_raw_fd();
    // SAFETY: plain tcgetattr/tcsetattr/ioctl on an owned fd with valid
    // pointers; termios is plain data.
    unsafe {
        let t = match SETTINGS.get() {
            Some(t) => *t,
            None => {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(s, &mut t) < 0 {
                    return Err(io::Error::last_os_error());
                }
                t.c_lflag &= !(libc::ECHO
                    | libc::ECHOE
                    | libc::ECHOK
                    | libc::ECHONL
                    | libc::ECHOCTL
                    | libc::ECHOKE
                    | libc::ECHOPRT);
                t.c_oflag &= !libc::OPOST;
                t.c_iflag &= !(libc::IXON | libc::IXOFF);
                *SETTINGS.get_or_init(|| t)
            }
        };
        if libc::tcsetattr(s, libc::TCSANOW, &t) < 0 {
            return Err(io::Error::last_os_error());
        }
        let ws = libc::winsize {
            ws_row: WINSIZE.0,
            ws_col: WINSIZE.1,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(s, libc::TIOCSWINSZ as _, &ws);
    }
    Ok(())
}

fn drain_pipe(fd: RawFd) {
    let mut b = [0u8; 64];
    // SAFETY: reads into a valid buffer from a non-blocking fd.
    while unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) } > 0 {}
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's parent and group, and whether it has started a program
    /// since its fork, as the interrupt reads them.
    #[test]
    fn the_interrupt_tells_a_fork_from_a_program() {
        let me = std::process::id() as i32;
        // SAFETY: getpgrp has no preconditions.
        let own = unsafe { libc::getpgrp() };
        let (r, w) = pipe().unwrap();
        // A fork that waits before it starts its program.
        // SAFETY: the child only calls async-signal-safe functions
        // (read, execv, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut b = 0u8;
            unsafe {
                libc::read(r.as_raw_fd(), (&raw mut b).cast(), 1);
                let sleep = c"/bin/sleep";
                let argv = [sleep.as_ptr(), c"5".as_ptr(), std::ptr::null()];
                libc::execv(sleep.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
        }
        let find = || children(me).into_iter().find(|k| k.pid == pid);
        let k = find().expect("the fork is a child");
        assert_eq!((k.pgrp, k.forked), (own, true));
        let st = stat(pid).unwrap();
        assert_eq!(st.ppid, me);
        // SAFETY: writes one byte from a valid buffer to an owned fd.
        assert_eq!(
            unsafe { libc::write(w.as_raw_fd(), [1u8].as_ptr().cast(), 1) },
            1
        );
        let t = Instant::now();
        while find().is_some_and(|k| k.forked) {
            assert!(t.elapsed() < Duration::from_secs(5), "never started sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            std::fs::read(format!("/proc/{pid}/comm")).unwrap(),
            b"sleep\n"
        );
        // SAFETY: our own child, not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert!(stat(pid).is_none());
    }

    /// The fallback that finds an exec's jobs without the terminal: only
    /// children in their own process group started since the given tick.
    #[test]
    fn job_groups_are_the_childrens_own_groups_started_since() {
        use std::os::unix::process::CommandExt;
        let me = std::process::id() as i32;
        let spawn_in_own_group = || {
            std::process::Command::new("sleep")
                .arg("5")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut old = spawn_in_own_group();
        // Start times are in clock ticks (10 ms at 100 Hz).
        std::thread::sleep(Duration::from_millis(50));
        let since = boot_ticks().unwrap();
        let mut new = spawn_in_own_group();
        let mut same_group = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        // SAFETY: getpgrp has no preconditions.
        let own = unsafe { libc::getpgrp() };
        let groups = job_groups_since(me, own, since);
        for c in [&mut old, &mut new, &mut same_group] {
            let _ = c.kill();
            let _ = c.wait();
        }
        // (Other tests of this process start children of their own too.)
        assert!(groups.contains(&(new.id() as i32)), "{groups:?}");
        assert!(!groups.contains(&(old.id() as i32)), "{groups:?}");
        assert!(!groups.contains(&own), "{groups:?}");
    }

    #[test]
    fn status_records_parse_across_chunk_boundaries() {
        let mut p = StatusParser::new("e1", "n1");
        p.push(b"e");
        assert_eq!(p.record(), None);
        p.push(b"1\x000\0/work");
        assert_eq!(p.record(), None);
        p.push(b"space\0");
        assert_eq!(p.record(), Some((0, "/workspace".into())));
        // The status line's record (the run line was abandoned).
        let mut p = StatusParser::new("e2", "n2");
        p.push(b"130\0/a\nb\0n");
        assert_eq!(p.record(), None);
        p.push(b"2\x00130\0/a\nb\0");
        assert_eq!(p.record(), Some((130, "/a\nb".into())));
    }

    /// A record without the exec's tokens (a command writing to the status
    /// fd, an earlier exec's token) is not a status.
    #[test]
    fn records_without_the_token_are_ignored() {
        let mut p = StatusParser::new("xyz", "abc");
        p.push(b"0\0/fake\0");
        p.push(b"abd\x000\0/fake\0xy\0");
        p.push(b"ab");
        assert_eq!(p.record(), None);
        p.push(b"c\x007\0/real\0");
        assert_eq!(p.record(), Some((7, "/real".into())));
        // Junk without end is bounded.
        let mut p = StatusParser::new("xyz", "abc");
        for _ in 0..100 {
            p.push(&[b'x'; 4096]);
            assert_eq!(p.record(), None);
        }
        assert!(p.buf.len() <= STATUS_BUF_MAX + 4096);
    }

    #[test]
    fn driver_lines_are_one_line_each_and_sh_quotes_single_quotes() {
        // bash: the command is not in the line at all (it is in the text).
        let l = Flavor::Bash.run_line("echo 'a'\necho b", "e", "/dev/pts/3");
        assert_eq!(l, "__sk_x;__sk_s \"$?\" e\n");
        assert_eq!(l.matches('\n').count(), 1);
        let l = Flavor::Sh.run_line("echo 'a'", "e", "/dev/pts/3");
        assert!(l.starts_with(r"{ __sk_c='echo '\''a'\'''; "), "{l}");
        assert_eq!(l.matches('\n').count(), 1);
        assert_eq!(Flavor::Sh.status_line("r"), "__sk_s \"$?\" r\n");
        for f in [Flavor::Bash, Flavor::Sh] {
            assert!(f.setup().contains("__sk_s()"));
            assert_eq!(f.setup().matches('\n').count(), 1);
        }
    }

    #[test]
    fn env_adds_home_and_pwd_only() {
        let cfg = AgentConfig {
            uid: None,
            gid: None,
            workdir: "/w".into(),
            env: vec![("PATH".into(), "/bin".into()), ("PWD".into(), "/x".into())],
            home: "/root".into(),
            files_root: None,
            nproc_limit: None,
        };
        let env: Vec<String> = shell_env(&cfg, "/w")
            .unwrap()
            .into_iter()
            .map(|c| c.into_string().unwrap())
            .collect();
        assert_eq!(env, ["PATH=/bin", "HOME=/root", "PWD=/w"]);
    }
}
