//! Test harness: runs the real agent binary in `serve` mode and talks the
//! real protocol to it over its Unix socket.

#![allow(dead_code)] // each test file uses a different part

use sandkasten_protocol::{read_frame, write_frame, AgentConfig, Body, Frame, Request, Response};
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single reply may take before the test fails instead of
/// hanging.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running agent with its own temp dir (socket + workdir).
pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub work: PathBuf,
}

impl Agent {
    /// An agent as the current user, workdir `<tmp>/work`.
    pub fn start() -> Agent {
        Agent::start_as(None, None, |_| {})
    }

    /// An agent whose shell and file operations run as `uid`/`gid`;
    /// `prepare` runs on the temp dir before the agent starts.
    pub fn start_as(uid: Option<u32>, gid: Option<u32>, prepare: impl FnOnce(&Path)) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        prepare(dir.path());
        let sock = dir.path().join("a.sock");
        let cfg = AgentConfig {
            uid,
            gid,
            workdir: work.to_str().unwrap().to_string(),
            env: vec![
                (
                    "PATH".into(),
                    "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
                ),
                ("HOME".into(), work.to_str().unwrap().to_string()),
                ("TERM".into(), "dumb".into()),
            ],
            home: work.to_str().unwrap().to_string(),
            files_root: None,
            nproc_limit: None,
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandkasten-agent"));
        cmd.args(["serve", "--socket"])
            .arg(&sock)
            .stdin(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. The agent dies with the test
        // thread that started it, even if the test process is killed
        // before Drop runs (its shell follows: its script pipe closes).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start the agent");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&cfg).unwrap().as_bytes())
            .unwrap();
        drop(stdin);
        let agent = Agent {
            child,
            dir,
            sock,
            work,
        };
        agent.wait_listening();
        agent
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Serve mode reports no readiness, so wait until the socket accepts a
    /// connection (bounded; fails if the agent exits).
    fn wait_listening(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            assert!(
                Instant::now() < until,
                "the agent never listened on {:?}",
                self.sock
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.sock).expect("connect to the agent");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Client {
            stream,
            next_id: 1,
            stash: VecDeque::new(),
        }
    }

    pub fn work_str(&self) -> String {
        self.work.to_str().unwrap().to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection to the agent.
pub struct Client {
    pub stream: UnixStream,
    next_id: u64,
    /// Frames read while waiting for another request's reply.
    stash: VecDeque<(u64, Response)>,
}

/// Everything an exec sent back.
#[derive(Debug)]
pub struct ExecResult {
    pub output: Vec<u8>,
    pub chunks: usize,
    pub exit_code: i32,
    pub cwd: String,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration_ms: u64,
    /// Wall time from sending the request to receiving ExecDone.
    pub elapsed: Duration,
}

impl ExecResult {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// Everything a streamed read sent back.
#[derive(Debug)]
pub struct ReadResult {
    pub path: String,
    pub data: Vec<u8>,
    /// The size of each chunk, in order.
    pub chunks: Vec<usize>,
    pub truncated: bool,
}

impl Client {
    pub fn send(&mut self, req: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Frame {
            id,
            body: Body::Request(req),
        };
        write_frame(&mut self.stream, &frame).expect("send a request");
        id
    }

    /// The next frame from the agent, as (request id, response).
    pub fn recv(&mut self) -> (u64, Response) {
        if let Some(f) = self.stash.pop_front() {
            return f;
        }
        self.read()
    }

    /// The next frame for request `id`; frames for other requests are
    /// kept for later.
    pub fn recv_for(&mut self, id: u64) -> Response {
        if let Some(i) = self.stash.iter().position(|(got, _)| *got == id) {
            return self.stash.remove(i).unwrap().1;
        }
        loop {
            let (got, resp) = self.read();
            if got == id {
                return resp;
            }
            self.stash.push_back((got, resp));
        }
    }

    /// Where a frame for request `id` waits in the stash, if any.
    pub fn stash_position(&self, id: u64) -> Option<usize> {
        self.stash.iter().position(|(got, _)| *got == id)
    }

    /// Takes the stashed frame at `i`.
    pub fn take_stashed(&mut self, i: usize) -> Response {
        self.stash.remove(i).unwrap().1
    }

    fn read(&mut self) -> (u64, Response) {
        let frame = read_frame(&mut self.stream)
            .expect("read a reply (timed out or broken)")
            .expect("the agent closed the connection");
        match frame.body {
            Body::Response(r) => (frame.id, r),
            Body::Request(r) => panic!("the agent sent a request: {r:?}"),
        }
    }

    /// Sends a request and returns its single reply.
    pub fn call(&mut self, req: Request) -> Response {
        let id = self.send(req);
        self.recv_for(id)
    }

    pub fn exec(&mut self, cmd: &str) -> ExecResult {
        self.exec_with(cmd, 30_000, 1 << 20)
    }

    pub fn exec_with(&mut self, cmd: &str, timeout_ms: u64, max_output_bytes: u64) -> ExecResult {
        let start = Instant::now();
        let id = self.send(Request::Exec {
            cmd: cmd.to_string(),
            timeout_ms,
            max_output_bytes,
        });
        self.collect_exec(id, start)
    }

    /// Reads `path` with `ReadStream` (window 4), acknowledging each chunk
    /// as it arrives; an `Error` reply is `Err`.
    pub fn read_file(
        &mut self,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<ReadResult, Response> {
        let id = self.send(Request::ReadStream {
            path: path.into(),
            max_bytes,
            window: 4,
        });
        self.collect_read(id)
    }

    /// Reads the frames of streamed read `id` until its end, acknowledging
    /// each chunk.
    pub fn collect_read(&mut self, id: u64) -> Result<ReadResult, Response> {
        let (mut data, mut chunks) = (Vec::new(), Vec::new());
        loop {
            match self.recv_for(id) {
                Response::FileChunk { data: d } => {
                    assert!(!d.is_empty(), "an empty chunk");
                    chunks.push(d.len());
                    data.extend_from_slice(&d);
                    self.send(Request::ReadAck {
                        target: id,
                        chunks: 1,
                    });
                }
                Response::FileEnd { path, truncated } => {
                    return Ok(ReadResult {
                        path,
                        data,
                        chunks,
                        truncated,
                    })
                }
                e @ Response::Error { .. } => return Err(e),
                other => panic!("unexpected reply to a read: {other:?}"),
            }
        }
    }

    /// Reads the frames of exec `id` until its ExecDone.
    pub fn collect_exec(&mut self, id: u64, start: Instant) -> ExecResult {
        let mut output = Vec::new();
        let mut chunks = 0;
        loop {
            match self.recv_for(id) {
                Response::ExecOutput { data } => {
                    chunks += 1;
                    output.extend_from_slice(&data);
                }
                Response::ExecDone {
                    exit_code,
                    cwd,
                    timed_out,
                    truncated,
                    duration_ms,
                } => {
                    return ExecResult {
                        output,
                        chunks,
                        exit_code,
                        cwd,
                        timed_out,
                        truncated,
                        duration_ms,
                        elapsed: start.elapsed(),
                    }
                }
                other => panic!("unexpected reply to an exec: {other:?}"),
            }
        }
    }
}

/// Waits (on inotify, not by polling) until `path` exists.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let dir = std::ffi::CString::new(path.parent().unwrap().as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscalls; the fd is wrapped at once.
    let fd = unsafe {
        let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
        assert!(fd >= 0, "inotify_init1");
        OwnedFd::from_raw_fd(fd)
    };
    let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
    // SAFETY: valid fd and C string.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), mask) };
    assert!(wd >= 0, "inotify_add_watch");
    let until = Instant::now() + timeout;
    loop {
        if path.exists() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; then drain the non-blocking fd.
        unsafe {
            libc::poll(&mut p, 1, left.as_millis() as i32);
            let mut buf = [0u8; 4096];
            while libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
    }
}

/// (pid, state) of every child of `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(end) = stat.rfind(')') else { continue };
        let mut f = stat[end + 1..].split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == parent {
            out.push((pid, state));
        }
    }
    out
}

/// The agent runs as root in these tests where uid switching is involved;
/// fail loudly (never skip) when that precondition is missing.
pub fn require_root() {
    // SAFETY: plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test switches to uid 65534 and must run as root (e.g. sudo cargo test -p sandkasten-agent)"
    );
}
