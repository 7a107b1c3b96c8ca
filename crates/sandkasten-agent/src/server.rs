//! Serves the daemon over the agent socket.
//!
//! Connections are accepted forever (the daemon reconnects after its own
//! restart, and may hold several at once). Each connection has a reader thread;
//! every request is handled on its own thread, so a file read never waits
//! behind a long exec, and replies go back on the connection the request came
//! from through that connection's writer lock. Exec requests take their place
//! in the shell's queue on the reader thread, so execs run in arrival order;
//! the reader then runs the exec itself, watching the connection while the
//! command runs, and hands the reading to another thread only when a frame
//! comes in behind the exec (or before anything the exec waits for: its turn,
//! a new shell), so that an exec alone on its connection wakes no other
//! thread, from its frame to its answer. A malformed frame closes its connection only; the
//! execs and reads that connection started are then cancelled, since nobody can
//! receive their results.
//!
//! Streamed reads (`ReadStream`) register their flow on the reader thread
//! too, so the `ReadAck` and `CancelRead` frames behind them (answered by
//! nobody: they are handled right there) always find it; a read's chunks
//! are bounded per read by its window and across reads by one [`Budget`]
//! (see `reads.rs`).
//!
//! A request wrapped in `AsRoot` is unwrapped here too and handled with
//! the file operations of the sandbox's root; only file operations may be
//! wrapped. Watches (`WatchDir`) take a flow like reads (`watch.rs`).
//!
//! A connection whose first frame is `OpenPort` becomes a byte pipe to a
//! TCP port inside the sandbox (`ports.rs`) and serves no more frames.

use crate::files::{Files, FsError};
use crate::procs::{Attached, Procs};
use crate::reads::{self, Budget, Ended, Flow, READ_BUFFERS};
use crate::reaper;
use crate::shell::{CancelHandle, ExecError, ExecTicket, Shell, Standby};
use crate::watch::{self, Watches};
use sandkasten_protocol::{
    read_frame, write_frame, AgentConfig, Body, CodecError, ErrorKind, Frame, Request, Response,
    PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Serves requests on `listener` forever.
/// The descriptor table's size at start (the shell's move above 100, and
/// room for processes and connections before it has to grow again).
const FD_TABLE_MIN: i32 = 255;

pub fn serve(listener: UnixListener, cfg: AgentConfig) -> ExitCode {
    // Before the first thread: the shell's descriptors sit above 100.
    crate::sys::grow_fd_table(FD_TABLE_MIN);
    harden_process();
    reaper::start();
    let agent = Arc::new(Agent {
        files: Files::new(
            cfg.uid,
            cfg.gid,
            std::path::Path::new(cfg.files_root.as_deref().unwrap_or("/")),
        ),
        root_files: Files::new(
            None,
            None,
            std::path::Path::new(cfg.files_root.as_deref().unwrap_or("/")),
        ),
        watches: Watches::default(),
        shell: Shell::new(cfg),
        procs: Procs::default(),
        execs: Mutex::new(HashMap::new()),
        reads: Mutex::new(HashMap::new()),
        budget: Budget::new(READ_BUFFERS),
    });
    if let Err(e) = agent.shell.start() {
        // Not fatal: every exec tries again and reports the error.
        eprintln!("sandkasten-agent: starting the shell: {e}");
    }
    let mut next_conn: u64 = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                next_conn += 1;
                let (agent, conn) = (agent.clone(), next_conn);
                run_detached("conn", move || serve_connection(&agent, stream, conn));
            }
            Err(e) => {
                eprintln!("sandkasten-agent: accept: {e}");
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    // Out of a resource that frees up later; no event tells
                    // when, so back off briefly instead of spinning.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

struct Agent {
    shell: Shell,
    /// File operations as the sandbox user.
    files: Files,
    /// File operations as the agent (the sandbox's root): `AsRoot`.
    root_files: Files,
    procs: Procs,
    watches: Watches,
    /// Running and queued execs by (connection, request id), for CancelExec.
    execs: Mutex<HashMap<(u64, u64), Arc<CancelHandle>>>,
    /// Streamed reads in progress by (connection, request id), for ReadAck
    /// and CancelRead.
    reads: Mutex<HashMap<(u64, u64), Arc<Flow>>>,
    /// Chunk buffers of all streamed reads together.
    budget: Budget,
}

/// What the reader thread set up for a request before handing it on.
enum Prepared {
    None,
    /// An exec's place in the shell's queue.
    Exec(ExecTicket),
    /// A streamed read's flow control.
    Read(Arc<Flow>),
}

pub(crate) type Writer = Arc<Mutex<UnixStream>>;

/// A connection's reading side: whichever thread reads its frames holds
/// it (see [`read_frames`]).
struct Reading {
    agent: Arc<Agent>,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    writer: Writer,
    conn: u64,
}

fn serve_connection(agent: &Arc<Agent>, stream: UnixStream, conn: u64) {
    let clone = |what: &str| {
        stream
            .try_clone()
            .map_err(|e| eprintln!("sandkasten-agent: connection {conn}: {what}: {e}"))
    };
    let (Ok(w), Ok(r)) = (clone("writer"), clone("reader")) else {
        return;
    };
    read_frames(Reading {
        agent: agent.clone(),
        stream,
        reader: BufReader::new(r),
        writer: Arc::new(Mutex::new(w)),
        conn,
    });
}

/// Reads a connection's frames and hands each request on. An exec runs on
/// this very thread, which hands the reading to another when a frame comes
/// in behind it: the exec wakes no other thread, and the frames behind it
/// (a `CancelExec`) are still read. Where no thread can
/// take the reading, this one goes on with it after the exec (a loop, not
/// a recursion).
fn read_frames(mut r: Reading) {
    while let Some(back) = serve_frames(r) {
        r = back;
    }
}

/// [`read_frames`] until the connection ends (`None`) or an exec that
/// could not hand the reading on gives it back.
fn serve_frames(r: Reading) -> Option<Reading> {
    let Reading {
        agent,
        stream,
        mut reader,
        writer,
        conn,
    } = r;
    let agent = &agent;
    loop {
        let frame = match read_frame(&mut reader) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                eprintln!("sandkasten-agent: connection {conn}: {e}; closing it");
                break;
            }
        };
        let Frame {
            id,
            body: Body::Request(req),
        } = frame
        else {
            eprintln!(
                "sandkasten-agent: connection {conn}: a response frame from the daemon; closing it"
            );
            break;
        };
        let (req, root) = match req {
            Request::AsRoot(inner) => (*inner, true),
            req => (req, false),
        };
        // Queue place and cancel registration happen here, before the next
        // frame is read: arrival order, and a CancelExec right behind its
        // Exec finds it; the same for a read's flow and its ReadAck.
        let prepared = match &req {
            _ if root && !is_file_op(&req) => Prepared::None,
            Request::Exec { .. } => {
                let t = agent.shell.enqueue();
                lock(&agent.execs).insert((conn, id), t.cancel_handle());
                Prepared::Exec(t)
            }
            // Reads and attached process streams: flow control.
            Request::ReadStream { window, .. }
            | Request::ProcStart {
                attach: true,
                window,
                ..
            }
            | Request::ProcAttach { window, .. }
            | Request::WatchDir { window, .. } => {
                let flow = Arc::new(Flow::new(*window));
                lock(&agent.reads).insert((conn, id), flow.clone());
                Prepared::Read(flow)
            }
            Request::ReadAck { target, chunks } => {
                if let Some(flow) = lock(&agent.reads).get(&(conn, *target)) {
                    flow.grant(*chunks);
                }
                continue;
            }
            Request::CancelRead { target } => {
                if let Some(flow) = lock(&agent.reads).get(&(conn, *target)) {
                    flow.cancel();
                    agent.procs.wake_all();
                    agent.watches.wake_all();
                }
                continue;
            }
            Request::OpenPort { port } => {
                // The connection is the pipe's from here on: no other
                // request of it runs (a daemon sends OpenPort first).
                let port = *port;
                let buffered = reader.buffer().to_vec();
                drop(reader);
                crate::ports::serve_pipe(stream, &writer, id, port, buffered);
                return None;
            }
            _ => Prepared::None,
        };
        let is_read = matches!(prepared, Prepared::Read(_));
        if matches!(prepared, Prepared::Exec(_)) {
            // The exec runs here; the reading goes on on another thread
            // from the moment the command is on its way to the shell.
            let rest = Reading {
                agent: agent.clone(),
                stream,
                reader,
                writer: writer.clone(),
                conn,
            };
            let mut handoff = Handoff::new(rest);
            handle(agent, conn, id, req, root, prepared, &writer, &mut handoff);
            return handoff.reading.take();
        }
        let (a, w) = (agent.clone(), writer.clone());
        let job = move || handle(&a, conn, id, req, root, prepared, &w, &mut Handoff::none());
        if !is_read {
            run_detached("request", job);
        } else if let Err(e) = try_detached("read", job) {
            // Inline, a read would wait on this thread for the ReadAck
            // only this thread can read: the connection would hang.
            lock(&agent.reads).remove(&(conn, id));
            send(
                &writer,
                id,
                Response::Error {
                    kind: ErrorKind::Io,
                    message: format!("cannot start a thread for the read ({e}); try again"),
                },
            );
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let orphaned: Vec<Arc<CancelHandle>> = lock(&agent.execs)
        .iter()
        .filter(|((c, _), _)| *c == conn)
        .map(|(_, h)| h.clone())
        .collect();
    for h in orphaned {
        agent.shell.cancel(&h);
    }
    for ((c, _), flow) in lock(&agent.reads).iter() {
        if *c == conn {
            flow.cancel();
        }
    }
    agent.procs.wake_all();
    agent.watches.wake_all();
    None
}

/// The requests `AsRoot` may wrap.
fn is_file_op(req: &Request) -> bool {
    matches!(
        req,
        Request::WriteFile { .. }
            | Request::ListDir { .. }
            | Request::Stat { .. }
            | Request::Mkdir { .. }
            | Request::Remove { .. }
            | Request::Rename { .. }
            | Request::ReadStream { .. }
            | Request::StatMeta { .. }
            | Request::WriteMeta { .. }
    )
}

/// The reading of a connection, handed to another thread at most once (by
/// the exec that took its reader thread, when a frame comes in behind it). What no thread could take stays
/// here: the next `fire` tries again, and after the exec the thread that
/// ran it goes on reading.
struct Handoff {
    reading: Option<Reading>,
}

impl Handoff {
    fn new(reading: Reading) -> Handoff {
        Handoff {
            reading: Some(reading),
        }
    }

    fn none() -> Handoff {
        Handoff { reading: None }
    }

    fn fire(&mut self) {
        let Some(r) = self.reading.take() else {
            return;
        };
        let slot = Arc::new(Mutex::new(Some(r)));
        let taken = slot.clone();
        let job: Job = Box::new(move || {
            if let Some(r) = lock(&taken).take() {
                read_frames(r);
            }
        });
        if let Err((_, e)) = WORKERS.submit("conn", job) {
            eprintln!("sandkasten-agent: cannot start a conn thread ({e}); reading after the exec");
            self.reading = lock(&slot).take();
        }
    }
}

impl Standby for Handoff {
    fn watch(&mut self) -> Option<RawFd> {
        let r = self.reading.as_ref()?;
        if !r.reader.buffer().is_empty() {
            // A frame is here already: no readiness would tell of it.
            self.fire();
            return None;
        }
        Some(r.stream.as_raw_fd())
    }

    fn hand_off(&mut self) -> bool {
        self.fire();
        self.reading.is_none()
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    agent: &Agent,
    conn: u64,
    id: u64,
    req: Request,
    root: bool,
    prepared: Prepared,
    writer: &Writer,
    handoff: &mut Handoff,
) {
    let reply = |body: Response| send(writer, id, body);
    if root && !is_file_op(&req) {
        return reply(Response::Error {
            kind: ErrorKind::InvalidRequest,
            message: "only file operations run as root (AsRoot)".into(),
        });
    }
    let files = if root {
        &agent.root_files
    } else {
        &agent.files
    };
    let response = match req {
        Request::Ping => Response::Pong {
            protocol_version: PROTOCOL_VERSION,
            cwd: agent.shell.cwd(),
        },
        Request::Exec {
            cmd,
            timeout_ms,
            max_output_bytes,
        } => {
            let Prepared::Exec(ticket) = prepared else {
                unreachable!("execs are enqueued by the reader")
            };
            let done = |o: &crate::shell::ExecOutcome| Response::ExecDone {
                exit_code: o.exit_code,
                cwd: o.cwd.clone(),
                timed_out: o.timed_out,
                truncated: o.truncated,
                duration_ms: o.duration_ms,
            };
            // The answer goes out as soon as the outcome is known.
            let mut answered = false;
            let result = agent.shell.exec(
                ticket,
                &cmd,
                Duration::from_millis(timeout_ms),
                max_output_bytes,
                &mut |data| reply(Response::ExecOutput { data }),
                handoff,
                &mut |o| {
                    reply(done(o));
                    answered = true;
                },
            );
            lock(&agent.execs).remove(&(conn, id));
            match result {
                Ok(_) if answered => return,
                Ok(o) => done(&o),
                Err(ExecError::InvalidRequest(message)) => Response::Error {
                    kind: ErrorKind::InvalidRequest,
                    message,
                },
                Err(ExecError::Spawn(e)) => Response::Error {
                    kind: ErrorKind::Io,
                    message: format!("cannot start the shell: {e}"),
                },
            }
        }
        Request::CancelExec { target } => {
            // The target's id is one this connection chose; an exec that
            // has finished (or never was) is simply not there any more.
            let handle = {
                let execs = lock(&agent.execs);
                execs.get(&(conn, target)).cloned().or_else(|| {
                    execs
                        .iter()
                        .find(|((_, i), _)| *i == target)
                        .map(|(_, h)| h.clone())
                })
            };
            if let Some(h) = handle {
                agent.shell.cancel(&h);
            }
            Response::Ok
        }
        Request::ReadStream {
            path, max_bytes, ..
        } => {
            let Prepared::Read(flow) = prepared else {
                unreachable!("reads are registered by the reader")
            };
            let ended = read_stream(agent, files, &path, max_bytes, &flow, &mut |data| {
                reply(Response::FileChunk { data })
            });
            lock(&agent.reads).remove(&(conn, id));
            match ended {
                Ok(Ended::Done { truncated }) => Response::FileEnd { path, truncated },
                // The consumer is gone: nothing more for this read.
                Ok(Ended::Cancelled) => return,
                Err(e) => error(e),
            }
        }
        // Handled by the reader thread; never handed on.
        Request::ReadAck { .. } | Request::CancelRead { .. } | Request::OpenPort { .. } => return,
        // One frame would hold the whole file: refused since protocol 2.
        Request::ReadFile { .. } => Response::Error {
            kind: ErrorKind::InvalidRequest,
            message: format!(
                "ReadFile is not served by protocol {PROTOCOL_VERSION}: files are read with ReadStream"
            ),
        },
        Request::WriteFile { path, data, mode } => ok_or_error(files.write_file(&path, &data, mode)),
        Request::ListDir { path } => match files.list_dir(&path) {
            Ok(entries) => Response::Entries(entries),
            Err(e) => error(e),
        },
        Request::Stat { path } => match files.stat(&path) {
            Ok(st) => Response::Stat(st),
            Err(e) => error(e),
        },
        Request::Mkdir { path, parents } => ok_or_error(files.mkdir(&path, parents)),
        Request::Remove { path, recursive } => ok_or_error(files.remove(&path, recursive)),
        Request::Rename { from, to } => ok_or_error(files.rename(&from, &to)),
        Request::StatMeta { path, prefix } => match files.stat_meta(&path, &prefix) {
            Ok((stat, meta)) => Response::StatMeta { stat, meta },
            Err(e) => error(e),
        },
        Request::WriteMeta { path, prefix, meta } => {
            ok_or_error(files.write_meta(&path, &prefix, &meta))
        }
        Request::WatchDir {
            path,
            recursive,
            root,
            window: _,
        } => {
            let Prepared::Read(flow) = prepared else {
                unreachable!("watches are registered by the reader")
            };
            let files = if root { &agent.root_files } else { &agent.files };
            let ended = agent
                .watches
                .run(files, &path, recursive, &flow, &mut |r| reply(r));
            lock(&agent.reads).remove(&(conn, id));
            match ended {
                Ok(watch::Ended::Gone) => return,
                // Stopped by the daemon (its place is free again): told
                // so, in case it waits for that.
                Ok(watch::Ended::Cancelled) => Response::WatchEnded,
                Err(e) => error(e),
            }
        }
        // Unwrapped by the reader; a nested one is refused above.
        Request::AsRoot(_) => Response::Error {
            kind: ErrorKind::InvalidRequest,
            message: "AsRoot inside AsRoot".into(),
        },
        Request::SetEnv { env } => {
            agent.shell.set_env(env);
            Response::Ok
        }
        Request::ProcStart {
            spec,
            attach,
            window: _,
        } => {
            let started = agent.procs.start(spec, &agent.shell.config());
            match (started, prepared) {
                (Ok(p), Prepared::Read(flow)) if attach => {
                    // From its first byte: the pump may have read some already.
                    let ended = p.attach(true, &flow, &mut |r| reply(r));
                    lock(&agent.reads).remove(&(conn, id));
                    return finish_stream(ended);
                }
                (Ok(p), _) => Response::ProcStarted(p.info()),
                (Err(e), _) => {
                    lock(&agent.reads).remove(&(conn, id));
                    e.into_response()
                }
            }
        }
        Request::ProcAttach { proc, replay, .. } => {
            let Prepared::Read(flow) = prepared else {
                unreachable!("attached streams are registered by the reader")
            };
            let found = agent.procs.find(&proc);
            let response = match found {
                Ok(p) => {
                    let ended = p.attach(replay, &flow, &mut |r| reply(r));
                    lock(&agent.reads).remove(&(conn, id));
                    return finish_stream(ended);
                }
                Err(e) => e.into_response(),
            };
            lock(&agent.reads).remove(&(conn, id));
            response
        }
        Request::ProcList => Response::Procs(agent.procs.list()),
        Request::ProcInput { proc, data } => {
            proc_ok(agent.procs.find(&proc).and_then(|p| p.input(&data)))
        }
        Request::ProcCloseStdin { proc } => {
            proc_ok(agent.procs.find(&proc).and_then(|p| p.close_stdin()))
        }
        Request::ProcSignal { proc, signal } => {
            proc_ok(agent.procs.find(&proc).and_then(|p| p.signal(signal)))
        }
        Request::ProcResize { proc, size } => {
            proc_ok(agent.procs.find(&proc).and_then(|p| p.resize(size)))
        }
    };
    reply(response);
}

/// Streams one file under its flow and the agent's budget.
fn read_stream(
    agent: &Agent,
    files: &Files,
    path: &str,
    max_bytes: Option<u64>,
    flow: &Flow,
    send: &mut dyn FnMut(Vec<u8>),
) -> Result<Ended, FsError> {
    let mut file = files.open_read(path)?;
    reads::stream(&mut file, max_bytes, flow, &agent.budget, send)
        .map_err(|e| FsError::from_io(e, path))
}

/// An attached stream sent its end itself; a cancelled one sends nothing.
fn finish_stream(_ended: Attached) {}

fn proc_ok(r: Result<(), crate::procs::ProcError>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => e.into_response(),
    }
}

fn ok_or_error(r: Result<(), FsError>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => error(e),
    }
}

fn error(e: FsError) -> Response {
    Response::Error {
        kind: e.kind,
        message: e.message,
    }
}

/// Writes one reply frame. A connection that is gone is not an error here:
/// its reader notices and cleans up.
pub(crate) fn send(writer: &Writer, id: u64, body: Response) {
    let frame = Frame {
        id,
        body: Body::Response(body),
    };
    let mut w = lock(writer);
    if let Err(CodecError::TooLarge(n)) = write_frame(&mut *w, &frame) {
        let frame = Frame {
            id,
            body: Body::Response(Response::Error {
                kind: ErrorKind::Io,
                message: format!("the reply ({n} bytes) exceeds the frame limit"),
            }),
        };
        let _ = write_frame(&mut *w, &frame);
    }
}

/// Runs `job` on a worker thread, or on this one if no thread can be
/// created (a sandbox at its pids limit still gets answers).
fn run_detached(name: &'static str, job: impl FnOnce() + Send + 'static) {
    if let Err((job, e)) = WORKERS.submit(name, Box::new(job)) {
        eprintln!("sandkasten-agent: cannot start a {name} thread ({e}); running inline");
        job();
    }
}

/// Runs `job` on a worker thread; if there is none and none can be
/// created, `job` is dropped and the error returned.
fn try_detached(name: &'static str, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
    WORKERS.submit(name, Box::new(job)).map_err(|(_, e)| e)
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads that run requests (each may block for as long as its exec or
/// read lasts, so there is no upper bound on how many run at once). A
/// thread that has finished waits [`WORKER_IDLE`] for the next job before
/// it exits, and at most [`WORKERS_IDLE_MAX`] wait: a steady stream of
/// requests does not pay for creating a thread each (a clone, a stack
/// mapping and its teardown: tens of microseconds), and an idle sandbox
/// keeps no extra threads.
static WORKERS: Workers = Workers {
    state: Mutex::new(WorkerState {
        jobs: std::collections::VecDeque::new(),
        idle: 0,
    }),
    ready: std::sync::Condvar::new(),
};

const WORKER_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
const WORKERS_IDLE_MAX: usize = 4;

struct Workers {
    state: Mutex<WorkerState>,
    ready: std::sync::Condvar,
}

struct WorkerState {
    jobs: std::collections::VecDeque<Job>,
    /// Threads waiting for a job (not counting jobs queued for them).
    idle: usize,
}

impl Workers {
    /// Hands `job` to a waiting thread, else starts one for it. On an
    /// error the job comes back with it.
    fn submit(&'static self, name: &'static str, job: Job) -> Result<(), (Job, io::Error)> {
        let mut st = lock(&self.state);
        if st.idle > 0 {
            st.idle -= 1;
            st.jobs.push_back(job);
            drop(st);
            self.ready.notify_one();
            return Ok(());
        }
        drop(st);
        let slot = Arc::new(Mutex::new(Some(job)));
        let taken = slot.clone();
        let started = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let first = lock(&taken).take();
                if let Some(job) = first {
                    job();
                }
                self.serve();
            });
        match started {
            Ok(_) => Ok(()),
            Err(e) => match lock(&slot).take() {
                Some(job) => Err((job, e)),
                None => Ok(()),
            },
        }
    }

    /// A worker's life after its first job: wait for more, run them, exit
    /// when enough others wait or none came for a while.
    fn serve(&self) {
        loop {
            let mut st = lock(&self.state);
            if st.idle >= WORKERS_IDLE_MAX {
                return;
            }
            st.idle += 1;
            let deadline = std::time::Instant::now() + WORKER_IDLE;
            let job = loop {
                if let Some(job) = st.jobs.pop_front() {
                    // `submit` counted this thread out of `idle` already.
                    break job;
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    st.idle -= 1;
                    return;
                }
                st = self
                    .ready
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            };
            drop(st);
            job();
        }
    }
}

/// Process-wide settings of the agent before it serves.
fn harden_process() {
    // SAFETY: plain prctl/signal calls.
    unsafe {
        // Nobody in the sandbox may ptrace the agent or read its memory.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // PID 1 reaps orphans anyway; outside a pid namespace (serve mode)
        // this makes the agent reap its shell's orphans too.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        // An ignored SIGCHLD (inherited through exec) would make the kernel
        // auto-reap children and hide the shell's exit status.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    if let Err(e) = cloexec_inherited_fds() {
        eprintln!("sandkasten-agent: marking inherited fds close-on-exec: {e}");
    }
}

/// Marks every fd above stderr close-on-exec, so nothing the agent was
/// started with leaks into the shell. (Everything the agent opens itself is
/// close-on-exec already.)
fn cloexec_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on an fd number; a stale one (the read_dir's own)
        // just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
