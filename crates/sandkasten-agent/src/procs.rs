//! Background processes (protocol 4): started from an argv with env, cwd,
//! root or the sandbox user, pipes or a PTY, stdin open or `/dev/null`;
//! they run beside the persistent shell and outlive the connection that
//! started them.
//!
//! Each process has one pump thread that reads its output (stdout and
//! stderr apart, or the PTY) into its log and learns its exit from the
//! reaper (the hook closes a pipe the pump polls: an event, not a poll
//! loop). The log keeps the output in order up to
//! [`PROC_OUTPUT_KEEP_BYTES`]: beyond it the oldest chunks go, unless an
//! attached stream has not sent them yet; then the pump stops reading
//! until that stream catches up, so the process blocks on its full pipe
//! and an attached client loses nothing. A process has ended when it was
//! reaped and its output is drained: every writer closed it, or, for a
//! child's child that keeps the pipe open, [`LINGER`] after the exit.
//!
//! Attached streams wait on the process's condition variable and send
//! under the credits of their [`Flow`] (the agent's streamed-read credits);
//! cancelling a flow wakes every process ([`Procs::wake_all`]).

use crate::reads::Flow;
use crate::reaper;
use crate::sys::{self, cstring, is_executable, pipe, set_nonblocking};
use sandkasten_protocol::{
    AgentConfig, ErrorKind, ProcEnd, ProcInfo, ProcRef, ProcSpec, ProcStream, PtySize, Response,
    PROC_ENDED_KEPT, PROC_OUTPUT_KEEP_BYTES,
};
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long output is still read after the process exited while a child
/// of it keeps the pipe (or the PTY) open.
const LINGER: Duration = Duration::from_millis(50);
/// Largest single read of a process's output.
const READ_CHUNK: usize = 64 * 1024;
/// Ended processes whose output is still kept for a reattach (the
/// newest); older ones are listed without it.
const ENDED_WITH_OUTPUT: usize = 8;
/// `PATH` where the environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A refused process request: the wire error it answers.
#[derive(Debug)]
pub struct ProcError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProcError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> ProcError {
        ProcError {
            kind,
            message: message.into(),
        }
    }

    pub fn into_response(self) -> Response {
        Response::Error {
            kind: self.kind,
            message: self.message,
        }
    }
}

/// The agent's processes, running and recently ended.
#[derive(Default)]
pub struct Procs {
    table: Arc<Table>,
}

/// Processes in start order.
type Table = Mutex<Vec<Arc<Proc>>>;

/// One background process.
pub struct Proc {
    /// As started; `end` is filled in from `out` when asked.
    info: ProcInfo,
    out: Mutex<Out>,
    changed: Condvar,
    /// Where input goes: the stdin pipe or a PTY master; `None` once closed.
    /// Held by a write for as long as it waits for the process to read.
    stdin: Mutex<Option<OwnedFd>>,
    /// Whether `stdin` is open, for `info` (which never waits for a write:
    /// the table's other users call it under the table's lock).
    stdin_open: AtomicBool,
    /// Readable (end of file) once the process has ended: a write waiting
    /// for it to read gives up then.
    ended_r: OwnedFd,
    /// Readable once stdin is being closed (an eventfd): a write waiting
    /// for the process to read gives up then, so the close need not wait
    /// for the process to read.
    closing: OwnedFd,
    /// Whether it has a PTY, and the PTY master (for resizes) until the
    /// process ends: its terminal is the sandbox's to use again then.
    pty: bool,
    master: Mutex<Option<Arc<OwnedFd>>>,
}

struct Out {
    /// Kept output chunks; `log[0]` has sequence number `base`.
    log: VecDeque<(ProcStream, Vec<u8>)>,
    base: u64,
    bytes: usize,
    /// Attached streams: the sequence number each sends next.
    subs: HashMap<u64, u64>,
    next_sub: u64,
    /// Set once reaped and drained.
    end: Option<ProcEnd>,
}

impl Out {
    fn next_seq(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Drops the oldest chunks beyond the kept size that no attached stream
    /// still has to send; true when the log is within its size.
    fn trim(&mut self) -> bool {
        let oldest_needed = self.subs.values().copied().min().unwrap_or(u64::MAX);
        while self.bytes > PROC_OUTPUT_KEEP_BYTES && self.base < oldest_needed {
            let Some((_, chunk)) = self.log.pop_front() else {
                break;
            };
            self.bytes -= chunk.len();
            self.base += 1;
        }
        self.bytes <= PROC_OUTPUT_KEEP_BYTES
    }
}

/// How an attached stream ended.
pub enum Attached {
    /// The process ended and everything was sent.
    Ended,
    /// The stream was cancelled (its consumer went away).
    Cancelled,
}

impl Procs {
    /// Starts a process under the agent's current configuration.
    pub fn start(&self, spec: ProcSpec, cfg: &AgentConfig) -> Result<Arc<Proc>, ProcError> {
        validate(&spec)?;
        // Listed before its pump can end it (so the prune after its end
        // finds it), and the tag checked in the same hold.
        let mut listed = lock(&self.table);
        if let Some(tag) = &spec.tag {
            if listed
                .iter()
                .any(|p| p.info.tag.as_ref() == Some(tag) && lock(&p.out).end.is_none())
            {
                return Err(ProcError::new(
                    ErrorKind::AlreadyExists,
                    format!("a running process already has the tag {tag:?}"),
                ));
            }
        }
        let table = self.table.clone();
        let proc = spawn(spec, cfg, move || prune(&table))?;
        listed.push(proc.clone());
        Ok(proc)
    }

    /// The process `r` names: by pid, or the newest with that tag.
    pub fn find(&self, r: &ProcRef) -> Result<Arc<Proc>, ProcError> {
        // What a client saw end has been pruned by the time it asks again
        // (the pump's own prune may still be on its way).
        prune(&self.table);
        let table = lock(&self.table);
        let found = match r {
            ProcRef::Pid(pid) => table.iter().rev().find(|p| p.info.pid == *pid),
            ProcRef::Tag(tag) => table
                .iter()
                .rev()
                .find(|p| p.info.tag.as_ref() == Some(tag)),
        };
        found.cloned().ok_or_else(|| {
            ProcError::new(
                ErrorKind::NotFound,
                match r {
                    ProcRef::Pid(pid) => format!("no process with pid {pid}"),
                    ProcRef::Tag(tag) => format!("no process with tag {tag:?}"),
                },
            )
        })
    }

    /// Every process, oldest first.
    pub fn list(&self) -> Vec<ProcInfo> {
        prune(&self.table);
        lock(&self.table).iter().map(|p| p.info()).collect()
    }

    /// Wakes every attached stream, so a cancelled one notices.
    pub fn wake_all(&self) {
        for p in lock(&self.table).iter() {
            let _o = lock(&p.out);
            p.changed.notify_all();
        }
    }
}

/// Forgets the oldest ended processes beyond [`PROC_ENDED_KEPT`], and the
/// output of all but the newest [`ENDED_WITH_OUTPUT`] ended ones that no
/// stream reads, so the agent (PID 1, inside the sandbox's memory limit)
/// holds at most that many ended processes' output.
fn prune(table: &Table) {
    let mut table = lock(table);
    let ended = table.iter().filter(|p| lock(&p.out).end.is_some()).count();
    let mut excess = ended.saturating_sub(PROC_ENDED_KEPT);
    table.retain(|p| {
        if excess > 0 && lock(&p.out).end.is_some() {
            excess -= 1;
            false
        } else {
            true
        }
    });
    let mut newer_ended = 0;
    for p in table.iter().rev() {
        let mut o = lock(&p.out);
        if o.end.is_none() {
            continue;
        }
        newer_ended += 1;
        if newer_ended > ENDED_WITH_OUTPUT && o.subs.is_empty() && !o.log.is_empty() {
            o.base += o.log.len() as u64;
            o.log = VecDeque::new();
            o.bytes = 0;
        }
    }
}

impl Proc {
    /// What the process is, with its end once it has ended.
    pub fn info(&self) -> ProcInfo {
        let mut info = self.info.clone();
        info.end = lock(&self.out).end;
        info.stdin = info.end.is_none() && self.stdin_open.load(Ordering::SeqCst);
        info
    }

    fn ended(&self) -> Result<(), ProcError> {
        match lock(&self.out).end {
            Some(_) => Err(ProcError::new(
                ErrorKind::ProcessEnded,
                format!("process {} has ended", self.info.pid),
            )),
            None => Ok(()),
        }
    }

    /// Sends the process's output (its kept output first when `replay`),
    /// then its end, through `send`, each chunk under a credit of `flow`.
    pub fn attach(&self, replay: bool, flow: &Flow, send: &mut dyn FnMut(Response)) -> Attached {
        send(Response::ProcAttached(self.info()));
        let sub = {
            let mut o = lock(&self.out);
            let id = o.next_sub;
            o.next_sub += 1;
            let from = if replay { o.base } else { o.next_seq() };
            o.subs.insert(id, from);
            id
        };
        let _leave = Leave { proc: self, sub };
        loop {
            let next = {
                let mut o = lock(&self.out);
                loop {
                    if flow.is_cancelled() {
                        return Attached::Cancelled;
                    }
                    let at = o.subs[&sub];
                    if at < o.next_seq() {
                        let chunk = o.log[(at - o.base) as usize].clone();
                        o.subs.insert(sub, at + 1);
                        // The pump may be waiting for this stream.
                        self.changed.notify_all();
                        break Ok(chunk);
                    }
                    if let Some(end) = o.end {
                        break Err(end);
                    }
                    o = self.changed.wait(o).unwrap_or_else(|e| e.into_inner());
                }
            };
            match next {
                Ok((stream, data)) => {
                    if !flow.take() {
                        return Attached::Cancelled;
                    }
                    send(Response::ProcOutput { stream, data });
                }
                Err(end) => {
                    send(Response::ProcEnded(end));
                    return Attached::Ended;
                }
            }
        }
    }

    /// Writes `data` to the process's stdin (or PTY), waiting while it does
    /// not read.
    pub fn input(&self, data: &[u8]) -> Result<(), ProcError> {
        self.ended()?;
        let stdin = lock(&self.stdin);
        let Some(fd) = stdin.as_ref() else {
            return Err(ProcError::new(
                ErrorKind::StdinClosed,
                format!("the stdin of process {} is not open", self.info.pid),
            ));
        };
        let ends = [self.ended_r.as_raw_fd(), self.closing.as_raw_fd()];
        write_all(fd.as_raw_fd(), data, ends).map_err(|e| match e.raw_os_error() {
            Some(libc::EPIPE) | Some(libc::EIO) => ProcError::new(
                ErrorKind::StdinClosed,
                format!("process {} no longer reads its stdin", self.info.pid),
            ),
            Some(libc::ECANCELED) => ProcError::new(
                ErrorKind::StdinClosed,
                format!(
                    "the stdin of process {} was closed while this write waited",
                    self.info.pid
                ),
            ),
            _ => ProcError::new(ErrorKind::Io, format!("writing to stdin: {e}")),
        })
    }

    /// Closes stdin; on a PTY sends end-of-file (Ctrl-D) instead, since the
    /// terminal stays the process's.
    pub fn close_stdin(&self) -> Result<(), ProcError> {
        self.ended()?;
        if self.pty {
            return self.input(&[0x04]);
        }
        // A write waiting for the process to read holds `stdin`: tell it to
        // give up, then close.
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid buffer to an owned eventfd
        // (non-blocking: a counter at its maximum is still readable).
        unsafe { libc::write(self.closing.as_raw_fd(), (&raw const one).cast(), 8) };
        lock(&self.stdin).take();
        self.stdin_open.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Sends `signal` to the process's group (it leads its own session),
    /// or to it alone when the group is gone.
    pub fn signal(&self, signal: i32) -> Result<(), ProcError> {
        self.ended()?;
        let pid = self.info.pid as libc::pid_t;
        // SAFETY: plain syscalls. The pid is ours until the reaper reports
        // it, which `ended` checked just now.
        let r = unsafe {
            let r = libc::kill(-pid, signal);
            if r < 0 && *libc::__errno_location() == libc::ESRCH {
                libc::kill(pid, signal)
            } else {
                r
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EINVAL) => {
                    ProcError::new(ErrorKind::InvalidRequest, format!("no signal {signal}"))
                }
                Some(libc::ESRCH) => {
                    ProcError::new(ErrorKind::ProcessEnded, format!("process {pid} has ended"))
                }
                _ => ProcError::new(ErrorKind::Io, format!("signalling {pid}: {e}")),
            });
        }
        Ok(())
    }

    /// Sets the PTY's window size.
    pub fn resize(&self, size: PtySize) -> Result<(), ProcError> {
        self.ended()?;
        if !self.pty {
            return Err(ProcError::new(
                ErrorKind::InvalidRequest,
                format!("process {} has no PTY", self.info.pid),
            ));
        }
        let Some(master) = lock(&self.master).clone() else {
            return self.ended();
        };
        check_size(size)?;
        set_winsize(master.as_raw_fd(), size)
            .map_err(|e| ProcError::new(ErrorKind::Io, format!("resizing the PTY: {e}")))
    }
}

/// Removes an attached stream from its process however it ends.
struct Leave<'a> {
    proc: &'a Proc,
    sub: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut o = lock(&self.proc.out);
        o.subs.remove(&self.sub);
        o.trim();
        self.proc.changed.notify_all();
    }
}

fn validate(spec: &ProcSpec) -> Result<(), ProcError> {
    let bad = |m: String| Err(ProcError::new(ErrorKind::InvalidRequest, m));
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return bad("the command (argv) is empty".into());
    }
    let strings = spec
        .argv
        .iter()
        .chain(spec.env.iter().flat_map(|(k, v)| [k, v]))
        .chain(spec.cwd.iter())
        .chain(spec.tag.iter());
    for s in strings {
        if s.contains('\0') {
            return bad(format!("{s:?} contains a NUL byte"));
        }
    }
    for (k, _) in &spec.env {
        if k.is_empty() || k.contains('=') {
            return bad(format!("{k:?} is not a variable name"));
        }
    }
    if let Some(size) = spec.pty {
        check_size(size)?;
    }
    Ok(())
}

fn check_size(size: PtySize) -> Result<(), ProcError> {
    if size.rows == 0 || size.cols == 0 {
        return Err(ProcError::new(
            ErrorKind::InvalidRequest,
            "a PTY needs at least one row and one column",
        ));
    }
    Ok(())
}

/// Everything the forked child needs, made before the fork (the child of
/// a multi-threaded process may not allocate).
struct ChildPlan {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    uid: Option<u32>,
    gid: Option<u32>,
    nproc: Option<u64>,
    /// fds 0, 1, 2 of the child (a PTY's slave three times).
    stdio: [RawFd; 3],
    /// Make fd 0 the controlling terminal.
    tty: bool,
    err_w: RawFd,
}

fn spawn(
    spec: ProcSpec,
    cfg: &AgentConfig,
    on_end: impl FnOnce() + Send + 'static,
) -> Result<Arc<Proc>, ProcError> {
    // A limit of the sandbox reached (its pids for a fork or a thread,
    // its 64 terminals, its descriptors) is the sandbox's, not the
    // agent's fault: the start is refused as such.
    let io_err = |what: &str, e: io::Error| {
        let kind = match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ENOSPC | libc::EMFILE | libc::ENFILE) => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        };
        let hint = match e.raw_os_error() {
            Some(libc::EAGAIN) => " (the sandbox's process limit, pids_limit, is reached)",
            Some(libc::ENOSPC) => " (the sandbox's terminals are all in use)",
            _ => "",
        };
        ProcError::new(kind, format!("{what}: {e}{hint}"))
    };
    let cwd = spec.cwd.clone().unwrap_or_else(|| cfg.workdir.clone());
    let (uid, gid) = if spec.root {
        (None, None)
    } else {
        (cfg.uid, cfg.gid)
    };
    let env = process_env(&spec, cfg, &cwd);
    let path = resolve(&spec.argv[0], &env, &cwd)?;

    // Output ends (read, write), the input the process gets, and where
    // input goes.
    let mut reads: Vec<(OwnedFd, ProcStream)> = Vec::new();
    let mut child_ends: Vec<OwnedFd> = Vec::new();
    let stdio: [RawFd; 3];
    let stdin_w: Option<OwnedFd>;
    let mut master = None;
    if let Some(size) = spec.pty {
        let (m, s) = sys::open_pty_pair().map_err(|e| io_err("opening a PTY", e))?;
        set_winsize(s.as_raw_fd(), size).map_err(|e| io_err("sizing the PTY", e))?;
        if uid.is_some() || gid.is_some() {
            // So that the process's user owns its terminal, like a login.
            // SAFETY: plain syscall on an owned fd; failure is harmless.
            unsafe {
                libc::fchown(
                    s.as_raw_fd(),
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                )
            };
        }
        let fd = s.as_raw_fd();
        stdio = [fd, fd, fd];
        child_ends.push(s);
        let m = Arc::new(m);
        stdin_w = Some(dup(&m).map_err(|e| io_err("duplicating the PTY", e))?);
        reads.push((
            dup(&m).map_err(|e| io_err("duplicating the PTY", e))?,
            ProcStream::Pty,
        ));
        master = Some(m);
    } else {
        let (out_r, out_w) = pipe().map_err(|e| io_err("making a pipe", e))?;
        let (err_r, err_w) = pipe().map_err(|e| io_err("making a pipe", e))?;
        let (in_r, in_w) = if spec.stdin {
            let (r, w) = pipe().map_err(|e| io_err("making a pipe", e))?;
            (r, Some(w))
        } else {
            let null = File::open("/dev/null").map_err(|e| io_err("opening /dev/null", e))?;
            (OwnedFd::from(null), None)
        };
        stdio = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        child_ends.extend([in_r, out_w, err_w]);
        reads.push((out_r, ProcStream::Stdout));
        reads.push((err_r, ProcStream::Stderr));
        stdin_w = in_w;
    }
    for (fd, _) in &reads {
        set_nonblocking(fd.as_raw_fd()).map_err(|e| io_err("setting up the output", e))?;
    }
    let (err_r, err_w) = pipe().map_err(|e| io_err("making a pipe", e))?;
    let (exit_r, exit_w) = pipe().map_err(|e| io_err("making a pipe", e))?;
    let (ended_r, ended_w) = pipe().map_err(|e| io_err("making a pipe", e))?;
    let closing = sys::eventfd().map_err(|e| io_err("making an eventfd", e))?;
    if let Some(w) = &stdin_w {
        // Writes wait in poll, where the process's end can end them.
        set_nonblocking(w.as_raw_fd()).map_err(|e| io_err("setting up stdin", e))?;
    }
    let cs =
        |s: &str| cstring(s).map_err(|e| ProcError::new(ErrorKind::InvalidRequest, e.to_string()));
    let plan = ChildPlan {
        path: cs(&path)?,
        argv: spec.argv.iter().map(|a| cs(a)).collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|(k, v)| cs(&format!("{k}={v}")))
            .collect::<Result<_, _>>()?,
        cwd: cs(&cwd)?,
        uid,
        gid,
        nproc: cfg.nproc_limit,
        stdio,
        tty: spec.pty.is_some(),
        err_w: err_w.as_raw_fd(),
    };

    let info = ProcInfo {
        pid: 0,
        tag: spec.tag.clone(),
        argv: spec.argv.clone(),
        cwd: cwd.clone(),
        root: spec.root,
        pty: spec.pty,
        stdin: stdin_w.is_some(),
        started_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        end: None,
    };
    let status: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(None));
    let hook_status = status.clone();
    let mut exit_w = Some(exit_w);
    let pid = reaper::spawn_stoppable(
        // SAFETY: the plan's fds are open and its strings outlive the call;
        // the child makes only async-signal-safe calls.
        || unsafe { fork_process(&plan) },
        move |st| {
            *lock(&hook_status) = Some(st);
            // Closing the pipe is the pump's event.
            drop(exit_w.take());
        },
    )
    .map_err(|e| io_err("forking", e))?;
    drop(child_ends);
    drop(err_w);

    // A successful exec closes the error pipe; before it the child writes
    // its errno.
    if let Ok(Some(e)) = sys::child_exec_error(err_r) {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => ErrorKind::NotFound,
            Some(libc::EACCES) | Some(libc::EPERM) => ErrorKind::PermissionDenied,
            // Arguments and environment over the kernel's limit.
            Some(libc::E2BIG) => ErrorKind::InvalidRequest,
            _ => ErrorKind::Io,
        };
        // The child exits 127 at once; the reaper collects it.
        return Err(ProcError::new(
            kind,
            format!("starting {} in {cwd}: {e}", spec.argv[0]),
        ));
    }

    let proc = Arc::new(Proc {
        info: ProcInfo {
            pid: pid as u32,
            ..info
        },
        out: Mutex::new(Out {
            log: VecDeque::new(),
            base: 0,
            bytes: 0,
            subs: HashMap::new(),
            next_sub: 0,
            end: None,
        }),
        changed: Condvar::new(),
        stdin_open: AtomicBool::new(stdin_w.is_some()),
        stdin: Mutex::new(stdin_w),
        ended_r,
        closing,
        pty: master.is_some(),
        master: Mutex::new(master),
    });
    let pumped = proc.clone();
    std::thread::Builder::new()
        .name(format!("proc-{pid}"))
        .spawn(move || {
            pump(&pumped, reads, exit_r);
            // Writes waiting for the process to read give up; its stdin
            // and its terminal go (a sandbox has 64 terminals).
            drop(ended_w);
            lock(&pumped.stdin).take();
            pumped.stdin_open.store(false, Ordering::SeqCst);
            lock(&pumped.master).take();
            let mut o = lock(&pumped.out);
            o.end = Some(pumped_end(&status));
            pumped.changed.notify_all();
            drop(o);
            on_end();
        })
        .map_err(|e| {
            // Without its pump nobody would read its output: end it.
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            io_err("starting the output thread", e)
        })?;
    Ok(proc)
}

/// The process's environment: the shell's, then the request's; `HOME`,
/// `USER` for its user, `PWD`, and `TERM` for a PTY unless asked.
fn process_env(spec: &ProcSpec, cfg: &AgentConfig, cwd: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::with_capacity(cfg.env.len() + spec.env.len() + 4);
    let own = |k: &str, v: &str| (k.to_string(), v.to_string());
    crate::envs::set_all(
        &mut env,
        cfg.env
            .iter()
            .filter(|(k, _)| !k.is_empty() && !k.contains('='))
            .cloned(),
    );
    let mut fixed = Vec::new();
    if spec.root {
        fixed.extend([
            own("HOME", "/root"),
            own("USER", "root"),
            own("LOGNAME", "root"),
        ]);
    } else if !cfg.env.iter().any(|(k, _)| k == "HOME") {
        fixed.push(own("HOME", &cfg.home));
    }
    if spec.pty.is_some() {
        fixed.push(own("TERM", "xterm-256color"));
    }
    fixed.push(own("PWD", cwd));
    crate::envs::set_all(&mut env, fixed);
    crate::envs::set_all(&mut env, spec.env.iter().cloned());
    env
}

/// The program to exec: `argv0` itself when it has a `/`, else the first
/// executable of that name in `PATH`.
fn resolve(argv0: &str, env: &[(String, String)], cwd: &str) -> Result<String, ProcError> {
    if argv0.contains('/') {
        return Ok(argv0.to_string());
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let base = if dir.starts_with('/') {
            Path::new(dir).to_path_buf()
        } else {
            Path::new(cwd).join(dir)
        };
        let candidate = base.join(argv0);
        if candidate.is_file() && is_executable(&candidate) {
            return Ok(candidate.to_string_lossy().into_owned());
        }
    }
    Err(ProcError::new(
        ErrorKind::NotFound,
        format!("{argv0}: command not found (PATH={path})"),
    ))
}

/// Reads the process's output into its log until it has ended.
fn pump(proc: &Proc, mut reads: Vec<(OwnedFd, ProcStream)>, exit_r: OwnedFd) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut exited_at: Option<Instant> = None;
    loop {
        {
            // Backpressure: wait while an attached stream lags too far.
            let mut o = lock(&proc.out);
            while !o.trim() {
                o = proc.changed.wait(o).unwrap_or_else(|e| e.into_inner());
            }
        }
        let timeout = match exited_at {
            None => -1,
            Some(t) => {
                let left = LINGER.saturating_sub(t.elapsed());
                if reads.is_empty() || left.is_zero() {
                    break;
                }
                left.as_millis().max(1) as i32
            }
        };
        let mut fds: Vec<libc::pollfd> = reads
            .iter()
            .map(|(fd, _)| sys::pollfd(fd.as_raw_fd()))
            .collect();
        if exited_at.is_none() {
            fds.push(sys::pollfd(exit_r.as_raw_fd()));
        }
        // SAFETY: a valid array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if exited_at.is_none() && fds.last().is_some_and(|p| p.revents != 0) {
            // The reaper closed the pipe: the process was reaped.
            exited_at = Some(Instant::now());
        }
        let mut closed = Vec::new();
        for (i, (fd, stream)) in reads.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            // SAFETY: reads into a valid buffer from an owned fd.
            let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let errno = io::Error::last_os_error().raw_os_error();
            if r > 0 {
                let chunk = buf[..r as usize].to_vec();
                let mut o = lock(&proc.out);
                o.bytes += chunk.len();
                o.log.push_back((*stream, chunk));
                proc.changed.notify_all();
            } else if r == 0 || !matches!(errno, Some(libc::EAGAIN | libc::EINTR)) {
                // End of file, or EIO: a PTY whose every slave closed.
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            reads.remove(i);
        }
        if reads.is_empty() && exited_at.is_none() {
            // Output closed, process still running: wait for its exit only.
            let mut one = [sys::pollfd(exit_r.as_raw_fd())];
            // SAFETY: a valid pollfd.
            while unsafe { libc::poll(one.as_mut_ptr(), 1, -1) } < 0 {}
            exited_at = Some(Instant::now());
        }
    }
}

/// How the reaped process ended.
fn pumped_end(status: &Mutex<Option<i32>>) -> ProcEnd {
    let st = lock(status).unwrap_or(0);
    ProcEnd {
        exit_code: reaper::exit_code(st),
        signal: libc::WIFSIGNALED(st).then(|| libc::WTERMSIG(st)),
    }
}

/// A close-on-exec duplicate of `fd`.
fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

fn set_winsize(fd: RawFd, size: PtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: plain ioctl with a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ as _, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `data` to the non-blocking `fd`, waiting in poll(2) while
/// it is full. Gives up with `EPIPE` once `ends[0]` (the process's end) is
/// readable, with `ECANCELED` once `ends[1]` (a close of stdin) is, with
/// `EIO` when the fd hangs up (a PTY whose every slave closed).
fn write_all(fd: RawFd, mut data: &[u8], ends: [RawFd; 2]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writes from a valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut p = [sys::pollfd(fd), sys::pollfd(ends[0]), sys::pollfd(ends[1])];
                p[0].events = libc::POLLOUT;
                // SAFETY: a valid array of pollfds.
                if unsafe { libc::poll(p.as_mut_ptr(), 3, -1) } < 0 {
                    continue;
                }
                if p[1].revents != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EPIPE));
                }
                if p[2].revents != 0 {
                    return Err(io::Error::from_raw_os_error(libc::ECANCELED));
                }
                if p[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// The child side of the fork: becomes the process or reports errno on
/// `plan.err_w` and exits 127.
///
/// # Safety
/// Must be called in a process that may fork; the plan's fds must be open.
unsafe fn fork_process(plan: &ChildPlan) -> io::Result<libc::pid_t> {
    let argv = sys::c_ptrs(&plan.argv);
    let envp = sys::c_ptrs(&plan.env);
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
        if plan.tty && libc::ioctl(plan.stdio[0], libc::TIOCSCTTY as _, 0) < 0 {
            fail();
        }
        // The sources are all above 2 (the agent's own 0-2 are open), so
        // no dup2 clobbers one still needed.
        for (target, src) in plan.stdio.iter().enumerate() {
            if libc::dup2(*src, target as i32) < 0 {
                fail();
            }
        }
        // Nothing of the agent's stays open (see `sys::become_user`).
        sys::close_fds_except(&[plan.err_w]);
        if !sys::become_user(plan.uid, plan.gid, plan.nproc) {
            fail();
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            fail();
        }
        libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> ProcSpec {
        ProcSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            root: false,
            pty: None,
            stdin: false,
            tag: None,
        }
    }

    #[test]
    fn bad_specs_are_refused_before_anything_starts() {
        assert!(validate(&spec(&[])).is_err());
        assert!(validate(&spec(&[""])).is_err());
        assert!(validate(&spec(&["a\0b"])).is_err());
        let mut s = spec(&["true"]);
        s.env = vec![("A=B".into(), "x".into())];
        assert!(validate(&s).is_err());
        let mut s = spec(&["true"]);
        s.pty = Some(PtySize { rows: 0, cols: 80 });
        assert!(validate(&s).is_err());
        assert!(validate(&spec(&["true"])).is_ok());
    }

    #[test]
    fn the_log_keeps_what_an_attached_stream_has_not_sent() {
        let mut o = Out {
            log: VecDeque::new(),
            base: 0,
            bytes: 0,
            subs: HashMap::new(),
            next_sub: 0,
            end: None,
        };
        let chunk = vec![0u8; PROC_OUTPUT_KEEP_BYTES / 2];
        for _ in 0..4 {
            o.bytes += chunk.len();
            o.log.push_back((ProcStream::Stdout, chunk.clone()));
        }
        o.subs.insert(0, 1);
        // Chunk 0 may go, chunk 1 is still needed: over the size.
        assert!(!o.trim());
        assert_eq!(o.base, 1);
        o.subs.insert(0, 4);
        assert!(o.trim());
        assert_eq!(o.base, 2);
        assert_eq!(o.bytes, PROC_OUTPUT_KEEP_BYTES);
    }

    #[test]
    fn programs_are_found_in_path_and_names_with_a_slash_are_kept() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin:/usr/bin".to_string())];
        let sh = resolve("sh", &env, "/").unwrap();
        assert!(sh.ends_with("/sh"), "{sh}");
        assert_eq!(resolve("./x", &env, "/").unwrap(), "./x");
        let e = resolve("no-such-program-xyz", &env, "/").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }
}
