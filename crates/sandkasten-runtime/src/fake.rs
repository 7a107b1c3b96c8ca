//! An in-memory [`Runtime`] for tests without root: no processes, no
//! namespaces, no cgroups, no Docker. Each fake sandbox is a few tokio
//! tasks: an agent that speaks the real wire protocol
//! ([`sandkasten_protocol`] frames over a [`tokio::io::duplex`] pipe,
//! wrapped with [`AgentClient::from_halves`], so the daemon side is the real
//! client) and a shell task that runs execs one at a time, in the order
//! their requests arrived.
//!
//! The shell is a tiny interpreter, not bash. A command is lines separated
//! by newlines or `;`, each a chain of simple commands joined by `&&`;
//! words may be single- or double-quoted, `$NAME`/`${NAME}` expand, and
//! `> PATH` redirects a command's output into a file. Builtins: `echo
//! [-n] ARGS`, `true`, `false`, `exit [N]`, `cd [DIR]`, `pwd`, `export
//! K=V…`, `unset K…`, `printenv [K…]`, `sleep SECS`, `cat PATH…`; anything
//! else answers exit code 127. A `sleep` that runs into the exec's timeout,
//! or is cancelled (`CancelExec`, or the connection that started it
//! closes), ends the exec with `timed_out` and exit code
//! [`TIMEOUT_EXIT_CODE`] (124, as the real agent); the shell survives it.
//! `exit N` ends the exec with N and starts a fresh shell: the environment
//! goes back to the sandbox's (plus what `SetEnv` added), the cwd stays.
//! Output beyond `max_output_bytes` is dropped and `truncated` set.
//!
//! Files are read as the real agent streams them (`ReadStream`): chunks of
//! [`FAKE_READ_CHUNK`] bytes under the request's window, one more per
//! `ReadAck`, ended early by `CancelRead` or the connection closing
//! ([`FakeRuntime::cancelled_reads`] counts those). A fake agent can speak
//! protocol 1 ([`FakeRuntime::set_agent_protocol`]): it then answers
//! `ReadFile` whole and, like a real old agent, closes the connection on a
//! request it cannot know.
//!
//! Files live in memory: a sandbox has its own root tree and a
//! `/workspace` tree, either private or a persistent workspace shared with
//! [`Runtime::workspace_file`] and with every sandbox that mounts it
//! ([`Runtime::bind_workspace`] swaps it in). Workspaces have optional
//! quotas; snapshots need one (`Unsupported` without, like the native
//! backend). Exports use a simple documented format of this module (see
//! [`FakeRuntime`]), which its import reads back.
//!
//! Test hooks on [`FakeRuntime`]: live sandboxes, [`FakeRuntime::kill`] (a
//! sandbox dies behind the engine's back), injected create and bind
//! failures, the specs created, the workspaces bound, the commands run.
//! Sandboxes outlive the daemon: their tasks run on the tokio runtime the
//! fake was built on, so a second engine can [`Runtime::attach`] to them.

use crate::{
    AgentClient, DirEntry, ExportStream, FileOp, FileReply, FileStat, FileStream, FileType,
    ImageInfo, Runtime, RuntimeError, Sandbox, SandboxHandle, SandboxSpec, SandboxStats,
    WorkspaceMount, SANDBOX_UID,
};
use async_trait::async_trait;
use sandkasten_protocol::{self as proto, Body, ErrorKind, Frame, Request, Response};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Exit code of a timed-out or cancelled exec (as the real agent's).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Size of the chunks of the fake agent's streamed reads: small, so that
/// the engine's tests read files of several chunks.
pub const FAKE_READ_CHUNK: usize = 4096;

/// First line of an export of this runtime.
const EXPORT_MAGIC: &[u8] = b"sandkasten-fake-export 1\n";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Files

type FileResult<T> = Result<T, (ErrorKind, String)>;

fn fail<T>(kind: ErrorKind, message: impl Into<String>) -> FileResult<T> {
    Err((kind, message.into()))
}

#[derive(Debug, Clone)]
enum Node {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        data: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
}

/// A directory tree in memory. Keys are paths relative to its root,
/// components joined by `/`; `""` is the root (always a directory).
#[derive(Debug, Clone)]
struct Tree {
    nodes: BTreeMap<String, Node>,
    /// Bytes of file content the tree may hold.
    quota: Option<u64>,
}

/// The components of an absolute path: `.` dropped, `..` resolved without
/// ever leaving the root (like `RESOLVE_IN_ROOT`).
fn components(path: &str) -> FileResult<Vec<String>> {
    if path.contains('\0') {
        return fail(ErrorKind::InvalidRequest, "path contains a NUL byte");
    }
    if !path.starts_with('/') {
        return fail(
            ErrorKind::InvalidPath,
            format!("{path}: path must be absolute"),
        );
    }
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// The keys of every proper ancestor of `key`, outermost first (root
/// excluded).
fn ancestors(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = key[at..].find('/') {
        out.push(key[..at + i].to_string());
        at += i + 1;
    }
    out
}

fn child_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}/")
    }
}

impl Tree {
    fn new(quota: Option<u64>) -> Tree {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            String::new(),
            Node::Dir {
                mode: 0o755,
                mtime: unix_now(),
            },
        );
        Tree { nodes, quota }
    }

    fn used(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                Node::Dir { .. } => 0,
            })
            .sum()
    }

    fn is_dir(&self, key: &str) -> bool {
        matches!(self.nodes.get(key), Some(Node::Dir { .. }))
    }

    /// Every ancestor of `key` exists and is a directory.
    fn check_parents(&self, key: &str, shown: &str) -> FileResult<()> {
        for a in ancestors(key) {
            match self.nodes.get(&a) {
                None => {
                    return fail(
                        ErrorKind::NotFound,
                        format!("{shown}: No such file or directory"),
                    )
                }
                Some(Node::File { .. }) => {
                    return fail(
                        ErrorKind::NotADirectory,
                        format!("{shown}: Not a directory"),
                    )
                }
                Some(Node::Dir { .. }) => {}
            }
        }
        Ok(())
    }

    /// Creates the missing ancestors of `key`.
    fn make_parents(&mut self, key: &str, shown: &str) -> FileResult<()> {
        for a in ancestors(key) {
            match self.nodes.get(&a) {
                Some(Node::Dir { .. }) => {}
                Some(Node::File { .. }) => {
                    return fail(
                        ErrorKind::NotADirectory,
                        format!("{shown}: Not a directory"),
                    )
                }
                None => {
                    self.nodes.insert(
                        a,
                        Node::Dir {
                            mode: 0o755,
                            mtime: unix_now(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn children(&self, key: &str) -> impl Iterator<Item = (&str, &Node)> {
        let prefix = child_prefix(key);
        let skip = prefix.len();
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter_map(move |(k, n)| {
                let name = &k[skip..];
                (!name.is_empty() && !name.contains('/')).then_some((name, n))
            })
    }

    fn get(&self, key: &str, shown: &str) -> FileResult<&Node> {
        self.check_parents(key, shown)?;
        match self.nodes.get(key) {
            Some(n) => Ok(n),
            None => fail(
                ErrorKind::NotFound,
                format!("{shown}: No such file or directory"),
            ),
        }
    }

    fn read(&self, key: &str, shown: &str, max: Option<u64>) -> FileResult<(Vec<u8>, bool)> {
        match self.get(key, shown)? {
            Node::Dir { .. } => fail(ErrorKind::IsADirectory, format!("{shown}: Is a directory")),
            Node::File { data, .. } => {
                let max = max.unwrap_or(u64::MAX).min(data.len() as u64) as usize;
                Ok((data[..max].to_vec(), max < data.len()))
            }
        }
    }

    fn write(
        &mut self,
        key: &str,
        shown: &str,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> FileResult<()> {
        if key.is_empty() || self.is_dir(key) {
            return fail(ErrorKind::IsADirectory, format!("{shown}: Is a directory"));
        }
        let old = match self.nodes.get(key) {
            Some(Node::File { data, mode, .. }) => Some((data.len() as u64, *mode)),
            _ => None,
        };
        if let Some(quota) = self.quota {
            let after = self.used() - old.map_or(0, |o| o.0) + data.len() as u64;
            if after > quota {
                return fail(
                    ErrorKind::NoSpace,
                    format!("{shown}: No space left on device"),
                );
            }
        }
        self.make_parents(key, shown)?;
        let mode = old.map(|o| o.1).or(mode).unwrap_or(0o644);
        self.nodes.insert(
            key.to_string(),
            Node::File {
                data,
                mode,
                mtime: unix_now(),
            },
        );
        Ok(())
    }

    fn entry(name: &str, n: &Node) -> (String, FileType, u64, u32, i64) {
        match n {
            Node::Dir { mode, mtime } => (name.to_string(), FileType::Dir, 0, *mode, *mtime),
            Node::File { data, mode, mtime } => (
                name.to_string(),
                FileType::File,
                data.len() as u64,
                *mode,
                *mtime,
            ),
        }
    }

    fn list(&self, key: &str, shown: &str) -> FileResult<Vec<DirEntry>> {
        match self.get(key, shown)? {
            Node::File { .. } => fail(
                ErrorKind::NotADirectory,
                format!("{shown}: Not a directory"),
            ),
            Node::Dir { .. } => Ok(self
                .children(key)
                .map(|(name, n)| {
                    let (name, file_type, size, mode, mtime) = Self::entry(name, n);
                    DirEntry {
                        name,
                        file_type,
                        size,
                        mode,
                        mtime,
                    }
                })
                .collect()),
        }
    }

    fn stat(&self, key: &str, shown: &str) -> FileResult<FileStat> {
        let (_, file_type, size, mode, mtime) = Self::entry("", self.get(key, shown)?);
        Ok(FileStat {
            path: shown.to_string(),
            file_type,
            size,
            mode,
            uid: SANDBOX_UID,
            gid: SANDBOX_UID,
            mtime,
            link_target: None,
        })
    }

    fn mkdir(&mut self, key: &str, shown: &str, parents: bool) -> FileResult<()> {
        match self.nodes.get(key) {
            Some(Node::Dir { .. }) if parents => return Ok(()),
            Some(_) => return fail(ErrorKind::AlreadyExists, format!("{shown}: File exists")),
            None => {}
        }
        if parents {
            self.make_parents(key, shown)?;
        } else {
            self.check_parents(key, shown)?;
        }
        self.nodes.insert(
            key.to_string(),
            Node::Dir {
                mode: 0o755,
                mtime: unix_now(),
            },
        );
        Ok(())
    }

    fn remove(&mut self, key: &str, shown: &str, recursive: bool) -> FileResult<()> {
        if key.is_empty() {
            return fail(
                ErrorKind::InvalidPath,
                format!("{shown}: cannot remove the root"),
            );
        }
        if let Node::Dir { .. } = self.get(key, shown)? {
            if self.children(key).next().is_some() && !recursive {
                return fail(
                    ErrorKind::DirectoryNotEmpty,
                    format!("{shown}: Directory not empty"),
                );
            }
        }
        let prefix = format!("{key}/");
        self.nodes
            .retain(|k, _| k != key && !k.starts_with(&prefix));
        Ok(())
    }
}

/// Where a path resolves: a tree and the key in it.
type Resolved = (Arc<Mutex<Tree>>, String);

/// Serves one file request of the wire protocol on whatever `resolve`
/// maps paths to (a sandbox's view, or a workspace root).
fn file_request(resolve: &dyn Fn(&str) -> FileResult<Resolved>, req: Request) -> Response {
    let result = match req {
        Request::ReadFile { path, max_bytes } => resolve(&path)
            .and_then(|(t, k)| lock(&t).read(&k, &path, max_bytes))
            .map(|(data, truncated)| Response::FileData {
                path,
                data,
                truncated,
            }),
        Request::WriteFile { path, data, mode } => resolve(&path)
            .and_then(|(t, k)| lock(&t).write(&k, &path, data, mode))
            .map(|()| Response::Ok),
        Request::ListDir { path } => resolve(&path)
            .and_then(|(t, k)| lock(&t).list(&k, &path))
            .map(Response::Entries),
        Request::Stat { path } => resolve(&path)
            .and_then(|(t, k)| lock(&t).stat(&k, &path))
            .map(Response::Stat),
        Request::Mkdir { path, parents } => resolve(&path)
            .and_then(|(t, k)| lock(&t).mkdir(&k, &path, parents))
            .map(|()| Response::Ok),
        Request::Remove { path, recursive } => resolve(&path)
            .and_then(|(t, k)| lock(&t).remove(&k, &path, recursive))
            .map(|()| Response::Ok),
        other => fail(
            ErrorKind::InvalidRequest,
            format!("not a file operation: {other:?}"),
        ),
    };
    result.unwrap_or_else(|(kind, message)| Response::Error { kind, message })
}

// ---------------------------------------------------------------------------
// Sandboxes

/// One exec waiting for the shell.
struct ExecJob {
    conn: u64,
    id: u64,
    cmd: String,
    timeout_ms: u64,
    max_output: u64,
    out: mpsc::UnboundedSender<Vec<u8>>,
    cancel: watch::Receiver<bool>,
}

struct Shell {
    cwd: String,
    env: BTreeMap<String, String>,
    /// The environment a fresh shell starts with (after `exit`).
    base_env: BTreeMap<String, String>,
}

/// The credits of a sandbox's streamed reads by (connection, request id).
type ReadCredits = HashMap<(u64, u64), Arc<tokio::sync::Semaphore>>;

/// Counters that outlive a sandbox.
#[derive(Default)]
struct Tally {
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    /// Streamed reads that ended early, as a watch so tests can await it.
    reads_cancelled: watch::Sender<u64>,
}

struct FakeSandbox {
    handle: SandboxHandle,
    memory_limit: u64,
    root: Arc<Mutex<Tree>>,
    /// What `/workspace` is: a persistent workspace's id (None: private)
    /// and its tree.
    workspace: Mutex<(Option<String>, Arc<Mutex<Tree>>)>,
    shell: Mutex<Shell>,
    /// True once the sandbox died (killed or destroyed).
    dead: watch::Sender<bool>,
    execs: mpsc::UnboundedSender<ExecJob>,
    /// Cancel switches of queued and running execs, by (connection, id).
    cancels: Mutex<HashMap<(u64, u64), watch::Sender<bool>>>,
    /// Credits of streamed reads in progress, by (connection, id); closed
    /// to cancel.
    reads: Arc<Mutex<ReadCredits>>,
    /// The protocol version the agent speaks.
    protocol: u32,
    next_conn: AtomicU64,
    /// Commands in the order the shell started them.
    commands: Mutex<Vec<String>>,
    tally: Arc<Tally>,
}

/// Resolves once the flag is true (never, if its sender is gone).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn reply(out: &mpsc::UnboundedSender<Vec<u8>>, id: u64, resp: Response) {
    if let Ok(bytes) = proto::encode(&Frame {
        id,
        body: Body::Response(resp),
    }) {
        let _ = out.send(bytes);
    }
}

async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Option<Frame> {
    let mut prefix = [0u8; 4];
    rd.read_exact(&mut prefix).await.ok()?;
    let n = proto::frame_len(prefix).ok()?;
    let mut payload = vec![0u8; n];
    rd.read_exact(&mut payload).await.ok()?;
    proto::decode(&payload).ok()
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    mut dead: watch::Receiver<bool>,
) {
    loop {
        // A dead sandbox sends nothing more, whatever was queued.
        tokio::select! {
            biased;
            _ = until_true(&mut dead) => return,
            bytes = out.recv() => {
                let Some(bytes) = bytes else { return };
                if *dead.borrow() {
                    return;
                }
                if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

impl FakeSandbox {
    fn alive(&self) -> bool {
        !*self.dead.borrow()
    }

    fn workspace_id(&self) -> Option<String> {
        lock(&self.workspace).0.clone()
    }

    /// A path of the sandbox's file system: `/workspace/…` in the
    /// workspace tree, the rest in the root tree.
    fn resolve(&self, path: &str) -> FileResult<Resolved> {
        let comps = components(path)?;
        if comps.first().map(String::as_str) == Some("workspace") {
            Ok((lock(&self.workspace).1.clone(), comps[1..].join("/")))
        } else {
            Ok((self.root.clone(), comps.join("/")))
        }
    }

    /// Handles one request of connection `conn`.
    fn request(&self, conn: u64, id: u64, req: Request, out: &mpsc::UnboundedSender<Vec<u8>>) {
        match req {
            Request::Ping => reply(
                out,
                id,
                Response::Pong {
                    protocol_version: self.protocol,
                    cwd: lock(&self.shell).cwd.clone(),
                },
            ),
            Request::Exec {
                cmd,
                timeout_ms,
                max_output_bytes,
            } => {
                if cmd.contains('\0') {
                    return reply(
                        out,
                        id,
                        Response::Error {
                            kind: ErrorKind::InvalidRequest,
                            message: "the command contains a NUL byte".into(),
                        },
                    );
                }
                // Queue place and cancel switch are taken here, before the
                // next frame is read: arrival order.
                let (switch, cancel) = watch::channel(false);
                lock(&self.cancels).insert((conn, id), switch);
                let _ = self.execs.send(ExecJob {
                    conn,
                    id,
                    cmd,
                    timeout_ms,
                    max_output: max_output_bytes,
                    out: out.clone(),
                    cancel,
                });
            }
            Request::CancelExec { target } => {
                {
                    let cancels = lock(&self.cancels);
                    let switch = cancels.get(&(conn, target)).or_else(|| {
                        cancels
                            .iter()
                            .find(|((_, i), _)| *i == target)
                            .map(|(_, s)| s)
                    });
                    if let Some(s) = switch {
                        s.send_replace(true);
                    }
                }
                reply(out, id, Response::Ok);
            }
            Request::SetEnv { env } => {
                lock(&self.shell).base_env.extend(env);
                reply(out, id, Response::Ok);
            }
            Request::ReadStream {
                path,
                max_bytes,
                window,
            } => {
                let content = self
                    .resolve(&path)
                    .and_then(|(t, k)| lock(&t).read(&k, &path, max_bytes));
                let (data, truncated) = match content {
                    Ok(c) => c,
                    Err((kind, message)) => {
                        return reply(out, id, Response::Error { kind, message })
                    }
                };
                let credits = Arc::new(tokio::sync::Semaphore::new(
                    window.clamp(1, proto::MAX_READ_WINDOW) as usize,
                ));
                lock(&self.reads).insert((conn, id), credits.clone());
                let (out, dead, tally) = (out.clone(), self.dead.subscribe(), self.tally.clone());
                let reads = self.reads.clone();
                tokio::spawn(async move {
                    let ended = stream_read(&data, &credits, &out, id, dead).await;
                    lock(&reads).remove(&(conn, id));
                    if ended {
                        reply(&out, id, Response::FileEnd { path, truncated });
                    } else {
                        tally.reads_cancelled.send_modify(|n| *n += 1);
                    }
                });
            }
            Request::ReadAck { target, chunks } => {
                if let Some(c) = lock(&self.reads).get(&(conn, target)) {
                    c.add_permits(chunks as usize);
                }
            }
            Request::CancelRead { target } => {
                if let Some(c) = lock(&self.reads).remove(&(conn, target)) {
                    c.close();
                }
            }
            Request::ReadFile { .. } if self.protocol >= proto::STREAMED_READS_SINCE => reply(
                out,
                id,
                Response::Error {
                    kind: ErrorKind::InvalidRequest,
                    message: "ReadFile is not served by protocol 2".into(),
                },
            ),
            file => reply(out, id, file_request(&|p| self.resolve(p), file)),
        }
    }

    /// Whether an agent of this sandbox's protocol could decode `req`.
    fn knows(&self, req: &Request) -> bool {
        self.protocol >= proto::STREAMED_READS_SINCE
            || !matches!(
                req,
                Request::ReadStream { .. } | Request::ReadAck { .. } | Request::CancelRead { .. }
            )
    }

    /// Interrupts every exec and read of connection `conn` (it closed).
    fn cancel_connection(&self, conn: u64) {
        for ((c, _), s) in lock(&self.cancels).iter() {
            if *c == conn {
                s.send_replace(true);
            }
        }
        lock(&self.reads).retain(|(c, _), credits| {
            if *c == conn {
                credits.close();
            }
            *c != conn
        });
    }
}

/// Sends `data` in chunks, one per credit; `false` if the read was
/// cancelled (its credits closed) or the sandbox died first.
async fn stream_read(
    data: &[u8],
    credits: &tokio::sync::Semaphore,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    id: u64,
    mut dead: watch::Receiver<bool>,
) -> bool {
    for chunk in data.chunks(FAKE_READ_CHUNK) {
        let credit = tokio::select! {
            c = credits.acquire() => c,
            _ = until_true(&mut dead) => return false,
        };
        match credit {
            Ok(c) => c.forget(),
            Err(_) => return false,
        }
        reply(
            out,
            id,
            Response::FileChunk {
                data: chunk.to_vec(),
            },
        );
    }
    !credits.is_closed()
}

/// Serves one agent connection until the daemon hangs up or the sandbox
/// dies.
async fn serve_connection<R: AsyncRead + Unpin>(
    sb: Arc<FakeSandbox>,
    conn: u64,
    mut rd: R,
    out: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut dead = sb.dead.subscribe();
    loop {
        let frame = tokio::select! {
            biased;
            _ = until_true(&mut dead) => None,
            f = read_frame(&mut rd) => f,
        };
        let Some(frame) = frame else { break };
        let Body::Request(req) = frame.body else {
            break;
        };
        if !sb.knows(&req) {
            // What an old agent does with a frame it cannot decode.
            break;
        }
        sb.request(conn, frame.id, req, &out);
    }
    sb.cancel_connection(conn);
}

/// Runs a sandbox's execs one at a time until it dies.
async fn run_shell(sb: Arc<FakeSandbox>, mut jobs: mpsc::UnboundedReceiver<ExecJob>) {
    let mut dead = sb.dead.subscribe();
    loop {
        let job = tokio::select! {
            j = jobs.recv() => j,
            _ = until_true(&mut dead) => None,
        };
        let Some(job) = job else { return };
        let key = (job.conn, job.id);
        let done = Run::new(&sb, &job).exec(&job.cmd, &mut dead).await;
        lock(&sb.cancels).remove(&key);
        match done {
            Some(resp) if sb.alive() => reply(&job.out, job.id, resp),
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------
// The shell

/// Part of a word: literal text or a variable to expand.
#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Var(String),
}

type Word = Vec<Piece>;

#[derive(Debug)]
enum Tok {
    Word(Word),
    And,
    Sep,
    Gt,
}

fn push_lit(word: &mut Option<Word>, c: char) {
    let w = word.get_or_insert_with(Vec::new);
    match w.last_mut() {
        Some(Piece::Lit(s)) => s.push(c),
        _ => w.push(Piece::Lit(c.to_string())),
    }
}

/// Reads a variable name at `chars[i]` (just after `$`); returns it and
/// the index after it.
fn var_name(chars: &[char], mut i: usize) -> Option<(String, usize)> {
    if chars.get(i) == Some(&'{') {
        let end = chars[i..].iter().position(|c| *c == '}')? + i;
        return Some((chars[i + 1..end].iter().collect(), end + 1));
    }
    let start = i;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
        i += 1;
    }
    (i > start).then(|| (chars[start..i].iter().collect(), i))
}

fn tokenize(cmd: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = cmd.chars().collect();
    let mut toks = Vec::new();
    let mut word: Option<Word> = None;
    let flush = |word: &mut Option<Word>, toks: &mut Vec<Tok>| {
        if let Some(w) = word.take() {
            toks.push(Tok::Word(w));
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            ' ' | '\t' => flush(&mut word, &mut toks),
            '\n' | ';' => {
                flush(&mut word, &mut toks);
                toks.push(Tok::Sep);
            }
            '&' => {
                flush(&mut word, &mut toks);
                if chars.get(i) == Some(&'&') {
                    i += 1;
                    toks.push(Tok::And);
                } else {
                    // No background jobs here: `a & b` runs a, then b.
                    toks.push(Tok::Sep);
                }
            }
            '>' => {
                flush(&mut word, &mut toks);
                toks.push(Tok::Gt);
            }
            '#' if word.is_none() => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\'' => {
                word.get_or_insert_with(Vec::new);
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated single quote".into()),
                        Some('\'') => break,
                        Some(c) => push_lit(&mut word, *c),
                    }
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                word.get_or_insert_with(Vec::new);
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated double quote".into()),
                        Some('"') => break,
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\' | '$')) => {
                            push_lit(&mut word, chars[i + 1]);
                            i += 1;
                        }
                        Some('$') => match var_name(&chars, i + 1) {
                            Some((name, next)) => {
                                word.get_or_insert_with(Vec::new).push(Piece::Var(name));
                                i = next - 1;
                            }
                            None => push_lit(&mut word, '$'),
                        },
                        Some(c) => push_lit(&mut word, *c),
                    }
                    i += 1;
                }
                i += 1;
            }
            '\\' => {
                if let Some(&next) = chars.get(i) {
                    i += 1;
                    if next != '\n' {
                        push_lit(&mut word, next);
                    }
                }
            }
            '$' => match var_name(&chars, i) {
                Some((name, next)) => {
                    word.get_or_insert_with(Vec::new).push(Piece::Var(name));
                    i = next;
                }
                None => push_lit(&mut word, '$'),
            },
            c => push_lit(&mut word, c),
        }
    }
    flush(&mut word, &mut toks);
    Ok(toks)
}

/// A simple command: its words and where its output goes.
#[derive(Debug, Default)]
struct Simple {
    words: Vec<Word>,
    redirect: Option<Word>,
}

/// Lines of `&&` chains.
fn parse(cmd: &str) -> Result<Vec<Vec<Simple>>, String> {
    let mut lines = Vec::new();
    let mut line: Vec<Simple> = Vec::new();
    let mut cur = Simple::default();
    let mut want_target = false;
    let end_line = |cur: &mut Simple,
                    line: &mut Vec<Simple>,
                    lines: &mut Vec<Vec<Simple>>,
                    want_target: bool|
     -> Result<(), String> {
        if want_target {
            return Err("syntax error: `>` without a file".into());
        }
        if cur.words.is_empty() && cur.redirect.is_none() {
            if !line.is_empty() {
                return Err("syntax error: `&&` without a command after it".into());
            }
        } else {
            line.push(std::mem::take(cur));
        }
        if !line.is_empty() {
            lines.push(std::mem::take(line));
        }
        Ok(())
    };
    for tok in tokenize(cmd)? {
        match tok {
            Tok::Word(w) if want_target => {
                cur.redirect = Some(w);
                want_target = false;
            }
            Tok::Word(w) => cur.words.push(w),
            Tok::Gt if want_target => return Err("syntax error near `>`".into()),
            Tok::Gt => want_target = true,
            Tok::And => {
                if want_target || cur.words.is_empty() {
                    return Err("syntax error near `&&`".into());
                }
                line.push(std::mem::take(&mut cur));
            }
            Tok::Sep => end_line(&mut cur, &mut line, &mut lines, want_target)?,
        }
    }
    end_line(&mut cur, &mut line, &mut lines, want_target)?;
    Ok(lines)
}

fn expand(word: &Word, env: &BTreeMap<String, String>) -> String {
    word.iter()
        .map(|p| match p {
            Piece::Lit(s) => s.clone(),
            Piece::Var(v) => env.get(v).cloned().unwrap_or_default(),
        })
        .collect()
}

fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How a command (or the rest of an exec) ended.
enum Flow {
    Status(i32),
    /// `exit N`: the shell ends.
    Exit(i32),
    /// The timeout or a cancel interrupted it.
    Interrupted {
        cancelled: bool,
    },
    /// The sandbox died.
    Died,
}

/// One exec in progress.
struct Run<'a> {
    sb: &'a FakeSandbox,
    out: &'a mpsc::UnboundedSender<Vec<u8>>,
    id: u64,
    max: u64,
    sent: u64,
    truncated: bool,
    started: Instant,
    deadline: Instant,
    cancel: watch::Receiver<bool>,
}

impl<'a> Run<'a> {
    fn new(sb: &'a FakeSandbox, job: &'a ExecJob) -> Run<'a> {
        let started = Instant::now();
        Run {
            sb,
            out: &job.out,
            id: job.id,
            max: job.max_output,
            sent: 0,
            truncated: false,
            started,
            deadline: started
                .checked_add(Duration::from_millis(job.timeout_ms))
                .unwrap_or(started + Duration::from_secs(100 * 365 * 86_400)),
            cancel: job.cancel.clone(),
        }
    }

    /// Sends output, up to the exec's cap.
    fn emit(&mut self, data: &[u8]) {
        let room = self.max.saturating_sub(self.sent);
        let n = (data.len() as u64).min(room) as usize;
        if n < data.len() {
            self.truncated = true;
        }
        if n > 0 {
            self.sent += n as u64;
            reply(
                self.out,
                self.id,
                Response::ExecOutput {
                    data: data[..n].to_vec(),
                },
            );
        }
    }

    fn cwd(&self) -> String {
        lock(&self.sb.shell).cwd.clone()
    }

    fn absolute(&self, p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{p}", self.cwd())
        }
    }

    /// Runs the whole command; `None` when the sandbox died meanwhile.
    async fn exec(mut self, cmd: &str, dead: &mut watch::Receiver<bool>) -> Option<Response> {
        let flow = if *self.cancel.borrow() {
            // Cancelled while it waited for its turn: it never runs.
            Flow::Interrupted { cancelled: true }
        } else {
            lock(&self.sb.commands).push(cmd.to_string());
            self.script(cmd, dead).await
        };
        let (exit_code, timed_out) = match flow {
            Flow::Died => return None,
            Flow::Status(c) => (c, false),
            Flow::Exit(c) => {
                let mut sh = lock(&self.sb.shell);
                sh.env = sh.base_env.clone();
                (c, false)
            }
            Flow::Interrupted { cancelled } => {
                let tally = &self.sb.tally;
                if cancelled {
                    tally.cancelled.fetch_add(1, Ordering::SeqCst);
                } else {
                    tally.timed_out.fetch_add(1, Ordering::SeqCst);
                }
                (TIMEOUT_EXIT_CODE, true)
            }
        };
        Some(Response::ExecDone {
            exit_code,
            cwd: self.cwd(),
            timed_out,
            truncated: self.truncated,
            duration_ms: self.started.elapsed().as_millis() as u64,
        })
    }

    async fn script(&mut self, cmd: &str, dead: &mut watch::Receiver<bool>) -> Flow {
        let lines = match parse(cmd) {
            Ok(l) => l,
            Err(e) => {
                self.emit(format!("fake-shell: {e}\n").as_bytes());
                return Flow::Status(2);
            }
        };
        let mut status = 0;
        for line in lines {
            for (i, simple) in line.iter().enumerate() {
                if i > 0 && status != 0 {
                    break;
                }
                match self.simple(simple, dead).await {
                    Flow::Status(s) => status = s,
                    other => return other,
                }
            }
        }
        Flow::Status(status)
    }

    async fn simple(&mut self, s: &Simple, dead: &mut watch::Receiver<bool>) -> Flow {
        let (argv, target) = {
            let sh = lock(&self.sb.shell);
            (
                s.words
                    .iter()
                    .map(|w| expand(w, &sh.env))
                    .collect::<Vec<_>>(),
                s.redirect.as_ref().map(|w| expand(w, &sh.env)),
            )
        };
        let (flow, output) = self.command(argv, dead).await;
        match target {
            None => self.emit(&output),
            Some(t) => {
                let path = self.absolute(&t);
                let written = self
                    .sb
                    .resolve(&path)
                    .and_then(|(tree, key)| lock(&tree).write(&key, &path, output, None));
                if let Err((_, m)) = written {
                    self.emit(format!("fake-shell: {m}\n").as_bytes());
                    if let Flow::Status(_) = flow {
                        return Flow::Status(1);
                    }
                }
            }
        }
        flow
    }

    /// One builtin: how it ended and what it printed.
    async fn command(
        &mut self,
        argv: Vec<String>,
        dead: &mut watch::Receiver<bool>,
    ) -> (Flow, Vec<u8>) {
        let Some((name, args)) = argv.split_first() else {
            return (Flow::Status(0), Vec::new());
        };
        let ok = |out: String| (Flow::Status(0), out.into_bytes());
        let err = |code: i32, out: String| (Flow::Status(code), out.into_bytes());
        match name.as_str() {
            "true" => ok(String::new()),
            "false" => err(1, String::new()),
            "echo" => {
                let (newline, args) = match args.first().map(String::as_str) {
                    Some("-n") => (false, &args[1..]),
                    _ => (true, args),
                };
                let mut s = args.join(" ");
                if newline {
                    s.push('\n');
                }
                ok(s)
            }
            "pwd" => ok(format!("{}\n", self.cwd())),
            "exit" => match args.first().map(|a| a.parse::<i32>()) {
                None => (Flow::Exit(0), Vec::new()),
                Some(Ok(n)) => (Flow::Exit(n & 0xff), Vec::new()),
                Some(Err(_)) => (
                    Flow::Exit(2),
                    format!("fake-shell: exit: {}: numeric argument required\n", args[0])
                        .into_bytes(),
                ),
            },
            "cd" => {
                let target = match args.first() {
                    Some(a) => a.clone(),
                    None => lock(&self.sb.shell)
                        .env
                        .get("HOME")
                        .cloned()
                        .unwrap_or_else(|| "/home/sandbox".into()),
                };
                let path = self.absolute(&target);
                let is_dir = self
                    .sb
                    .resolve(&path)
                    .map(|(tree, key)| lock(&tree).is_dir(&key))
                    .unwrap_or(false);
                if !is_dir {
                    return err(
                        1,
                        format!("fake-shell: cd: {target}: No such file or directory\n"),
                    );
                }
                let clean = format!("/{}", components(&path).unwrap_or_default().join("/"));
                let mut sh = lock(&self.sb.shell);
                let old = std::mem::replace(&mut sh.cwd, clean.clone());
                sh.env.insert("OLDPWD".into(), old);
                sh.env.insert("PWD".into(), clean);
                ok(String::new())
            }
            "export" => {
                let mut sh = lock(&self.sb.shell);
                for a in args {
                    let (k, v) = a.split_once('=').unwrap_or((a, ""));
                    if !valid_name(k) {
                        return err(
                            1,
                            format!("fake-shell: export: `{a}': not a valid identifier\n"),
                        );
                    }
                    if a.contains('=') {
                        sh.env.insert(k.to_string(), v.to_string());
                    }
                }
                ok(String::new())
            }
            "unset" => {
                let mut sh = lock(&self.sb.shell);
                for a in args {
                    sh.env.remove(a);
                }
                ok(String::new())
            }
            "printenv" => {
                let sh = lock(&self.sb.shell);
                if args.is_empty() {
                    return ok(sh.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect());
                }
                let mut out = String::new();
                let mut code = 0;
                for a in args {
                    match sh.env.get(a) {
                        Some(v) => out.push_str(&format!("{v}\n")),
                        None => code = 1,
                    }
                }
                err(code, out)
            }
            "cat" => {
                let mut out = Vec::new();
                let mut code = 0;
                for a in args {
                    let path = self.absolute(a);
                    match self
                        .sb
                        .resolve(&path)
                        .and_then(|(tree, key)| lock(&tree).read(&key, a, None))
                    {
                        Ok((data, _)) => out.extend_from_slice(&data),
                        Err((_, m)) => {
                            out.extend_from_slice(format!("cat: {m}\n").as_bytes());
                            code = 1;
                        }
                    }
                }
                (Flow::Status(code), out)
            }
            "sleep" => {
                let Some(secs) = args
                    .first()
                    .and_then(|a| a.parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                else {
                    return err(1, "sleep: invalid time interval\n".into());
                };
                (
                    self.sleep(Duration::from_secs_f64(secs), dead).await,
                    Vec::new(),
                )
            }
            other => err(127, format!("fake-shell: {other}: command not found\n")),
        }
    }

    /// Sleeps unless the timeout, a cancel or the sandbox's death comes
    /// first.
    async fn sleep(&mut self, d: Duration, dead: &mut watch::Receiver<bool>) -> Flow {
        let until = Instant::now() + d;
        let end = until.min(self.deadline);
        // Death first: a sandbox that died answers nothing, even if its
        // connection's closing cancelled the exec at the same moment.
        tokio::select! {
            biased;
            _ = until_true(dead) => Flow::Died,
            _ = until_true(&mut self.cancel) => Flow::Interrupted { cancelled: true },
            _ = tokio::time::sleep_until(end) => {
                if end < until {
                    Flow::Interrupted { cancelled: false }
                } else {
                    Flow::Status(0)
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The runtime

/// What a create asked for (for assertions).
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedSandbox {
    pub id: String,
    pub image: String,
    pub workspace: WorkspaceMount,
    pub env: Vec<(String, String)>,
}

struct Workspace {
    tree: Arc<Mutex<Tree>>,
    snapshots: BTreeMap<String, Tree>,
}

struct State {
    sandboxes: HashMap<String, Arc<FakeSandbox>>,
    images: BTreeMap<String, ImageInfo>,
    workspaces: HashMap<String, Workspace>,
    fail_creates: usize,
    fail_binds: usize,
    attach_gone: bool,
    created: Vec<CreatedSandbox>,
    bound: Vec<(String, String)>,
    destroyed: Vec<String>,
    attached: usize,
    next_pid: i32,
    /// Protocol of the agents of new sandboxes.
    agent_protocol: u32,
    /// Whether disk limits are enforced (default: yes).
    disk_limits: bool,
    /// Each sandbox's current disk limit (MiB).
    disk_limit: HashMap<String, Option<u64>>,
    /// While set, [`Runtime::check_room`] answers `StorageFull`.
    storage_full: Option<String>,
}

/// The in-memory runtime (see the module doc).
///
/// Export format (read back by its import): the line
/// `sandkasten-fake-export 1\n`, then per entry in path order either
/// `D <path length>\n<path>` (a directory) or
/// `F <path length> <size>\n<path><content>` (a file); paths are relative
/// to the workspace root.
pub struct FakeRuntime {
    /// Where sandbox tasks run: the runtime the fake was built on, so they
    /// outlive an engine started on another one (a daemon restart).
    rt: Handle,
    state: Mutex<State>,
    tally: Arc<Tally>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// A runtime with the builtin image `base` and nothing else. Must be
    /// called inside a tokio runtime, which then runs the sandboxes.
    pub fn new() -> FakeRuntime {
        let mut images = BTreeMap::new();
        images.insert(
            "base".to_string(),
            ImageInfo {
                name: "base".into(),
                digest: "builtin".into(),
                size_bytes: 0,
                builtin: true,
            },
        );
        FakeRuntime {
            rt: Handle::try_current().expect("FakeRuntime::new needs a tokio runtime"),
            state: Mutex::new(State {
                sandboxes: HashMap::new(),
                images,
                workspaces: HashMap::new(),
                fail_creates: 0,
                fail_binds: 0,
                attach_gone: false,
                created: Vec::new(),
                bound: Vec::new(),
                destroyed: Vec::new(),
                attached: 0,
                next_pid: 1000,
                agent_protocol: proto::PROTOCOL_VERSION,
                disk_limits: true,
                disk_limit: HashMap::new(),
                storage_full: None,
            }),
            tally: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Sandboxes that run (created or attached, not killed or destroyed).
    pub fn live_count(&self) -> usize {
        self.state()
            .sandboxes
            .values()
            .filter(|s| s.alive())
            .count()
    }

    /// Ids of the sandboxes that run.
    pub fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .state()
            .sandboxes
            .iter()
            .filter(|(_, s)| s.alive())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The sandbox dies behind the engine's back: its agent connections
    /// close and [`Runtime::attach`] answers `Gone`; it stays listed until
    /// destroyed. False when no such sandbox runs.
    pub fn kill(&self, id: &str) -> bool {
        let sb = self.state().sandboxes.get(id).cloned();
        match sb {
            Some(sb) if sb.alive() => {
                sb.dead.send_replace(true);
                true
            }
            _ => false,
        }
    }

    /// The next `n` creates fail with [`RuntimeError::StartFailed`].
    pub fn fail_next_creates(&self, n: usize) {
        self.state().fail_creates = n;
    }

    /// The next `n` calls of [`Runtime::bind_workspace`] fail.
    pub fn fail_next_binds(&self, n: usize) {
        self.state().fail_binds = n;
    }

    /// While set, [`Runtime::attach`] answers `Gone` (the sandbox cannot be
    /// proven ours).
    pub fn set_attach_gone(&self, gone: bool) {
        self.state().attach_gone = gone;
    }

    /// Whether the fake enforces disk limits (it only records them).
    pub fn set_disk_limits_enforced(&self, enforced: bool) {
        self.state().disk_limits = enforced;
    }

    /// Sandbox `id`'s disk limit (MiB): as created, or as last set.
    pub fn disk_limit(&self, id: &str) -> Option<u64> {
        self.state().disk_limit.get(id).copied().flatten()
    }

    /// While `Some`, every create's room check answers `StorageFull` with
    /// this message (the host's disk is full); `None`: room again.
    pub fn set_storage_full(&self, message: Option<&str>) {
        self.state().storage_full = message.map(str::to_string);
    }

    /// Successful attaches so far.
    pub fn attach_count(&self) -> usize {
        self.state().attached
    }

    /// Every successful create, in order.
    pub fn created(&self) -> Vec<CreatedSandbox> {
        self.state().created.clone()
    }

    /// (sandbox id, workspace id) of every successful late binding.
    pub fn bound(&self) -> Vec<(String, String)> {
        self.state().bound.clone()
    }

    /// Ids of sandboxes destroyed (those that existed), in order.
    pub fn destroyed(&self) -> Vec<String> {
        self.state().destroyed.clone()
    }

    /// The commands sandbox `id` ran, in the order its shell started them.
    pub fn commands(&self, id: &str) -> Vec<String> {
        self.state()
            .sandboxes
            .get(id)
            .map(|s| lock(&s.commands).clone())
            .unwrap_or_default()
    }

    /// The workspace sandbox `id` has at `/workspace` (None: private).
    pub fn mounted_workspace(&self, id: &str) -> Option<String> {
        self.state()
            .sandboxes
            .get(id)
            .and_then(|s| s.workspace_id())
    }

    /// Execs interrupted by a cancel (a `CancelExec` or their connection
    /// closing), across all sandboxes.
    pub fn cancelled_execs(&self) -> u64 {
        self.tally.cancelled.load(Ordering::SeqCst)
    }

    /// Streamed reads that ended before their end was sent (cancelled, or
    /// their connection closed).
    pub fn cancelled_reads(&self) -> u64 {
        *self.tally.reads_cancelled.borrow()
    }

    /// Resolves once `n` streamed reads have been cancelled.
    pub async fn cancelled_reads_reach(&self, n: u64) {
        let mut rx = self.tally.reads_cancelled.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// The protocol version the agents of sandboxes created from now on
    /// speak (default: the current one); 1 is an agent from before
    /// streamed reads.
    pub fn set_agent_protocol(&self, version: u32) {
        self.state().agent_protocol = version;
    }

    /// Execs that ran into their timeout, across all sandboxes.
    pub fn timed_out_execs(&self) -> u64 {
        self.tally.timed_out.load(Ordering::SeqCst)
    }

    /// Adds an image as if imported.
    pub fn add_image(&self, name: &str) {
        self.state().images.insert(
            name.to_string(),
            ImageInfo {
                name: name.into(),
                digest: format!("sha256:fake-{name}"),
                size_bytes: 1,
                builtin: false,
            },
        );
    }

    /// Whether workspace `id` exists.
    pub fn has_workspace(&self, id: &str) -> bool {
        self.state().workspaces.contains_key(id)
    }

    /// The files of workspace `id` (path relative to its root → content).
    pub fn workspace_files(&self, id: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let tree = self.state().workspaces.get(id)?.tree.clone();
        let files = lock(&tree)
            .nodes
            .iter()
            .filter_map(|(k, n)| match n {
                Node::File { data, .. } => Some((k.clone(), data.clone())),
                Node::Dir { .. } => None,
            })
            .collect();
        Some(files)
    }

    /// A new agent connection to `sb`.
    fn connect(&self, sb: &Arc<FakeSandbox>) -> AgentClient {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let conn = sb.next_conn.fetch_add(1, Ordering::SeqCst);
        let (rd, wr) = tokio::io::split(theirs);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        self.rt.spawn(write_frames(wr, out_rx, sb.dead.subscribe()));
        self.rt
            .spawn(serve_connection(sb.clone(), conn, rd, out_tx));
        let (crd, cwr) = tokio::io::split(ours);
        AgentClient::from_halves(crd, cwr)
    }

    fn mounted(state: &State, ws: &str) -> bool {
        state
            .sandboxes
            .values()
            .any(|s| s.alive() && s.workspace_id().as_deref() == Some(ws))
    }

    fn workspace_tree(&self, id: &str) -> Result<Arc<Mutex<Tree>>, RuntimeError> {
        self.state()
            .workspaces
            .get(id)
            .map(|w| w.tree.clone())
            .ok_or_else(|| RuntimeError::NotFound(format!("workspace {id}")))
    }
}

fn root_tree(id: &str) -> Tree {
    let mut t = Tree::new(None);
    for d in ["home/sandbox", "tmp", "usr/bin", "workspace"] {
        let _ = t.mkdir(d, d, true);
    }
    let _ = t.write(
        "etc/hostname",
        "/etc/hostname",
        format!("{id}\n").into_bytes(),
        None,
    );
    t
}

/// Serializes a tree in the export format (see [`FakeRuntime`]).
fn write_export(nodes: &BTreeMap<String, Node>, out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(EXPORT_MAGIC)?;
    for (k, n) in nodes.iter().filter(|(k, _)| !k.is_empty()) {
        match n {
            Node::Dir { .. } => write!(out, "D {}\n{k}", k.len())?,
            Node::File { data, .. } => {
                write!(out, "F {} {}\n{k}", k.len(), data.len())?;
                out.write_all(data)?;
            }
        }
    }
    Ok(())
}

/// Parses the export format into a tree with `quota`.
fn read_export(bytes: &[u8], quota: Option<u64>) -> Result<Tree, String> {
    let mut rest = bytes
        .strip_prefix(EXPORT_MAGIC)
        .ok_or("not an export of the fake runtime")?;
    let mut tree = Tree::new(quota);
    while !rest.is_empty() {
        let nl = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("truncated header")?;
        let header = std::str::from_utf8(&rest[..nl]).map_err(|_| "bad header")?;
        rest = &rest[nl + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        let num = |i: usize| -> Result<usize, String> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("bad header {header:?}"))
        };
        let path_len = num(1)?;
        let size = if fields[0] == "F" { num(2)? } else { 0 };
        if rest.len() < path_len + size {
            return Err("truncated entry".into());
        }
        let path = std::str::from_utf8(&rest[..path_len]).map_err(|_| "bad path")?;
        let data = rest[path_len..path_len + size].to_vec();
        rest = &rest[path_len + size..];
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("path {path:?} leaves the workspace"));
        }
        let shown = format!("/{path}");
        let r = match fields[0] {
            "D" => tree.mkdir(path, &shown, true),
            "F" => tree.write(path, &shown, data, None),
            other => return Err(format!("unknown entry type {other:?}")),
        };
        r.map_err(|(_, m)| m)?;
    }
    Ok(tree)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let sb = {
            let mut st = self.state();
            if st.fail_creates > 0 {
                st.fail_creates -= 1;
                return Err(RuntimeError::StartFailed("injected create failure".into()));
            }
            if !st.images.contains_key(&spec.image) {
                return Err(RuntimeError::ImageNotFound(spec.image));
            }
            if st.sandboxes.contains_key(&spec.id) {
                return Err(RuntimeError::StartFailed(format!(
                    "sandbox {} exists already",
                    spec.id
                )));
            }
            let workspace = match &spec.workspace {
                WorkspaceMount::Ephemeral => (None, Arc::new(Mutex::new(Tree::new(None)))),
                WorkspaceMount::Persistent(ws) => {
                    let w = st
                        .workspaces
                        .entry(ws.clone())
                        .or_insert_with(|| Workspace {
                            tree: Arc::new(Mutex::new(Tree::new(None))),
                            snapshots: BTreeMap::new(),
                        });
                    (Some(ws.clone()), w.tree.clone())
                }
            };
            let env: BTreeMap<String, String> =
                crate::shell_env(&[], &spec.env).into_iter().collect();
            st.next_pid += 1;
            let pid = st.next_pid;
            let (execs, jobs) = mpsc::unbounded_channel();
            let sb = Arc::new(FakeSandbox {
                handle: SandboxHandle {
                    id: spec.id.clone(),
                    pid,
                    start_time: pid as u64 * 7,
                },
                memory_limit: spec.limits.memory_mb * 1024 * 1024,
                root: Arc::new(Mutex::new(root_tree(&spec.id))),
                workspace: Mutex::new(workspace),
                shell: Mutex::new(Shell {
                    cwd: "/workspace".into(),
                    env: env.clone(),
                    base_env: env,
                }),
                dead: watch::Sender::new(false),
                execs,
                cancels: Mutex::new(HashMap::new()),
                reads: Arc::default(),
                protocol: st.agent_protocol,
                next_conn: AtomicU64::new(1),
                commands: Mutex::new(Vec::new()),
                tally: self.tally.clone(),
            });
            st.sandboxes.insert(spec.id.clone(), sb.clone());
            let limit = spec.limits.disk_mb.filter(|_| st.disk_limits);
            st.disk_limit.insert(spec.id.clone(), limit);
            st.created.push(CreatedSandbox {
                id: spec.id.clone(),
                image: spec.image.clone(),
                workspace: spec.workspace.clone(),
                env: spec.env.clone(),
            });
            self.rt.spawn(run_shell(sb.clone(), jobs));
            sb
        };
        Ok(Sandbox {
            handle: sb.handle.clone(),
            agent: self.connect(&sb),
            phases_us: Vec::new(),
        })
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Sandbox, RuntimeError> {
        let sb = {
            let mut st = self.state();
            let sb = st
                .sandboxes
                .get(&handle.id)
                .filter(|s| s.alive() && !st.attach_gone)
                .filter(|s| handle.pid == 0 || s.handle == *handle)
                .cloned()
                .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
            st.attached += 1;
            sb
        };
        Ok(Sandbox {
            handle: sb.handle.clone(),
            agent: self.connect(&sb),
            phases_us: Vec::new(),
        })
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let mut st = self.state();
        if let Some(sb) = st.sandboxes.remove(&handle.id) {
            sb.dead.send_replace(true);
            st.destroyed.push(handle.id.clone());
        }
        Ok(())
    }

    async fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError> {
        let st = self.state();
        let sb = st
            .sandboxes
            .get(&handle.id)
            .filter(|s| s.alive())
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
        let commands = lock(&sb.commands).len() as u64;
        Ok(SandboxStats {
            memory_bytes: 8 * 1024 * 1024,
            memory_limit: sb.memory_limit,
            cpu_usage_usec: commands * 1000,
            pids: 2,
        })
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        Ok(self.state().images.values().cloned().collect())
    }

    async fn import_image(&self, name: &str, archive: PathBuf) -> Result<ImageInfo, RuntimeError> {
        if self.state().images.get(name).is_some_and(|i| i.builtin) {
            return Err(RuntimeError::ImageBuiltin(name.into()));
        }
        let bytes = crate::blocking("reading an image archive", move || {
            std::fs::read(&archive).map_err(RuntimeError::io_ctx("reading the image archive"))
        })
        .await?;
        if bytes.is_empty() {
            return Err(RuntimeError::InvalidImage("the archive is empty".into()));
        }
        let info = ImageInfo {
            name: name.into(),
            digest: format!("sha256:{:016x}", fnv(&bytes)),
            size_bytes: bytes.len() as u64,
            builtin: false,
        };
        self.state().images.insert(name.into(), info.clone());
        Ok(info)
    }

    async fn remove_image(&self, name: &str) -> Result<(), RuntimeError> {
        let mut st = self.state();
        match st.images.get(name) {
            None => Err(RuntimeError::ImageNotFound(name.into())),
            Some(i) if i.builtin => Err(RuntimeError::ImageBuiltin(name.into())),
            Some(_) => {
                st.images.remove(name);
                Ok(())
            }
        }
    }

    async fn list_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.state().sandboxes.keys().cloned().collect())
    }

    async fn ensure_workspace(
        &self,
        id: &str,
        quota_bytes: Option<u64>,
    ) -> Result<(), RuntimeError> {
        self.state()
            .workspaces
            .entry(id.to_string())
            .or_insert_with(|| Workspace {
                tree: Arc::new(Mutex::new(Tree::new(quota_bytes))),
                snapshots: BTreeMap::new(),
            });
        Ok(())
    }

    async fn delete_workspace(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.state();
        if Self::mounted(&st, id) {
            return Err(RuntimeError::Busy(format!("workspace {id} is mounted")));
        }
        st.workspaces.remove(id);
        Ok(())
    }

    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        let tree = self.state().workspaces.get(id).map(|w| w.tree.clone());
        Ok(tree.map(|t| lock(&t).used()))
    }

    async fn snapshot_workspace(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let mut st = self.state();
        let w = st
            .workspaces
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("workspace {id}")))?;
        let copy = lock(&w.tree).clone();
        if copy.quota.is_none() {
            return Err(RuntimeError::Unsupported(
                "snapshots of a workspace without a quota".into(),
                "fake",
            ));
        }
        w.snapshots.insert(snap.to_string(), copy);
        Ok(())
    }

    async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let mut st = self.state();
        let w = st
            .workspaces
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("workspace {id}")))?;
        w.snapshots
            .remove(snap)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(format!("snapshot {snap}")))
    }

    async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let st = self.state();
        if Self::mounted(&st, id) {
            return Err(RuntimeError::Busy(format!("workspace {id} is mounted")));
        }
        let w = st
            .workspaces
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("workspace {id}")))?;
        let copy = w
            .snapshots
            .get(snap)
            .ok_or_else(|| RuntimeError::NotFound(format!("snapshot {snap}")))?
            .nodes
            .clone();
        lock(&w.tree).nodes = copy;
        Ok(())
    }

    async fn workspace_file(&self, id: &str, op: FileOp) -> Result<FileReply, RuntimeError> {
        let tree = self.workspace_tree(id)?;
        let resolve = |p: &str| components(p).map(|c| (tree.clone(), c.join("/")));
        FileReply::from_response(file_request(&resolve, op.into_request()))
    }

    async fn workspace_read(
        &self,
        id: &str,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError> {
        let tree = self.workspace_tree(id)?;
        let key = components(&path)
            .map(|c| c.join("/"))
            .map_err(|(kind, message)| RuntimeError::File {
                kind: kind.into(),
                message,
            })?;
        let (data, truncated) =
            lock(&tree)
                .read(&key, &path, max_bytes)
                .map_err(|(kind, message)| RuntimeError::File {
                    kind: kind.into(),
                    message,
                })?;
        let (tx, stream) = FileStream::channel(path);
        tokio::spawn(async move {
            for chunk in data.chunks(FAKE_READ_CHUNK) {
                if !tx.send(chunk.to_vec()).await {
                    return;
                }
            }
            tx.end(truncated).await;
        });
        Ok(stream)
    }

    async fn export_workspace(&self, id: &str) -> Result<ExportStream, RuntimeError> {
        let tree = self.workspace_tree(id)?;
        let nodes = lock(&tree).nodes.clone();
        crate::export_blocking(move |out| {
            write_export(&nodes, out).map_err(RuntimeError::io_ctx("writing the export"))
        })
        .await
    }

    async fn import_workspace(
        &self,
        id: &str,
        archive: PathBuf,
        abandoned: crate::Abandoned,
    ) -> Result<(), RuntimeError> {
        let tree = self.workspace_tree(id)?;
        let bytes = crate::blocking("reading a workspace archive", move || {
            std::fs::read(&archive).map_err(RuntimeError::io_ctx("reading the archive"))
        })
        .await?;
        if abandoned.is_cancelled() {
            return Err(crate::abandoned_error("importing into a workspace"));
        }
        if Self::mounted(&self.state(), id) {
            return Err(RuntimeError::Busy(format!("workspace {id} is mounted")));
        }
        let mut t = lock(&tree);
        let fresh = read_export(&bytes, t.quota).map_err(RuntimeError::InvalidArchive)?;
        t.nodes = fresh.nodes;
        Ok(())
    }

    async fn copy_snapshot(&self, src: &str, snap: &str, dst: &str) -> Result<(), RuntimeError> {
        let st = self.state();
        let nodes = st
            .workspaces
            .get(src)
            .ok_or_else(|| RuntimeError::NotFound(format!("workspace {src}")))?
            .snapshots
            .get(snap)
            .ok_or_else(|| RuntimeError::NotFound(format!("snapshot {snap}")))?
            .nodes
            .clone();
        let dst = st
            .workspaces
            .get(dst)
            .ok_or_else(|| RuntimeError::NotFound(format!("workspace {dst}")))?;
        lock(&dst.tree).nodes = nodes;
        Ok(())
    }

    fn can_bind_workspace(&self) -> bool {
        true
    }

    fn disk_limit_enforced(&self) -> bool {
        self.state().disk_limits
    }

    async fn set_disk_limit(&self, handle: &SandboxHandle, mb: u64) -> Result<(), RuntimeError> {
        let mut st = self.state();
        if !st.disk_limits {
            return Err(RuntimeError::Unsupported(
                "changing a sandbox's disk limit".into(),
                "fake",
            ));
        }
        if !st.sandboxes.get(&handle.id).is_some_and(|s| s.alive()) {
            return Err(RuntimeError::Gone(handle.id.clone()));
        }
        st.disk_limit.insert(handle.id.clone(), Some(mb));
        Ok(())
    }

    async fn check_room(&self) -> Result<(), RuntimeError> {
        match &self.state().storage_full {
            Some(m) => Err(RuntimeError::StorageFull(m.clone())),
            None => Ok(()),
        }
    }

    async fn bind_workspace(&self, handle: &SandboxHandle, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.state();
        if st.fail_binds > 0 {
            st.fail_binds -= 1;
            return Err(RuntimeError::Backend {
                context: "binding a workspace".into(),
                message: "injected bind failure".into(),
            });
        }
        let sb = st
            .sandboxes
            .get(&handle.id)
            .filter(|s| s.alive())
            .cloned()
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
        let tree = st
            .workspaces
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("workspace {id}")))?
            .tree
            .clone();
        *lock(&sb.workspace) = (Some(id.to_string()), tree);
        st.bound.push((handle.id.clone(), id.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExecReply, Limits, NetworkMode};

    fn spec(id: &str, workspace: WorkspaceMount) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            image: "base".into(),
            limits: Limits {
                memory_mb: 64,
                cpu: 1.0,
                pids: 16,
                disk_mb: None,
            },
            network: NetworkMode::None,
            readonly_rootfs: false,
            workspace,
            env: vec![("GREETING".into(), "it's me".into())],
            wake: false,
            from_snapshot: None,
        }
    }

    async fn run(agent: &AgentClient, cmd: &str, timeout_ms: u64) -> (String, crate::ExecDone) {
        let mut h = agent.exec(cmd.into(), timeout_ms, 1 << 20).unwrap();
        let mut out = Vec::new();
        loop {
            match h.next().await.expect("connection closed") {
                ExecReply::Output(d) => out.extend(d),
                ExecReply::Done(d) => return (String::from_utf8(out).unwrap(), d),
                ExecReply::Refused(m) => panic!("refused: {m}"),
            }
        }
    }

    #[tokio::test]
    async fn the_shell_keeps_state_and_the_files_are_shared_with_execs() {
        let rt = FakeRuntime::new();
        let sb = rt
            .create(spec("s1", WorkspaceMount::Ephemeral))
            .await
            .unwrap();
        let a = &sb.agent;
        assert_eq!(a.ping().await.unwrap(), "/workspace");
        let (out, d) = run(
            a,
            "cd /tmp && export X='a b'\nprintenv X GREETING; pwd",
            1000,
        )
        .await;
        assert_eq!(out, "a b\nit's me\n/tmp\n");
        assert_eq!((d.exit_code, d.cwd.as_str()), (0, "/tmp"));
        let (out, d) = run(a, "nope && echo never", 1000).await;
        assert_eq!(d.exit_code, 127);
        assert!(out.contains("command not found"), "{out}");
        a.write_file("/workspace/f".into(), b"hi".to_vec(), None)
            .await
            .unwrap();
        let (out, _) = run(a, "cat /workspace/f && echo $X > /tmp/g && cat g", 1000).await;
        assert_eq!(out, "hia b\n");
        let (_, d) = run(a, "export Y=1\nexit 3", 1000).await;
        assert_eq!(d.exit_code, 3);
        let (out, _) = run(a, "printenv Y; pwd", 1000).await;
        assert_eq!(
            out, "/tmp\n",
            "a fresh shell keeps the cwd, not the variables"
        );
        let e = a.read_file("/nope".into(), None).await.unwrap_err();
        assert!(matches!(
            e,
            RuntimeError::File {
                kind: crate::FileErrorKind::NotFound,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn reads_stream_in_chunks_and_a_dropped_read_is_cancelled() {
        let rt = FakeRuntime::new();
        let sb = rt
            .create(spec("s1", WorkspaceMount::Ephemeral))
            .await
            .unwrap();
        let a = &sb.agent;
        let data: Vec<u8> = (0..=255u8).cycle().take(10 * FAKE_READ_CHUNK + 1).collect();
        a.write_file("/workspace/f".into(), data.clone(), None)
            .await
            .unwrap();
        let mut s = a.read_file("/workspace/f".into(), None).await.unwrap();
        let mut sizes = Vec::new();
        let mut back = Vec::new();
        while let Some(c) = s.next().await {
            let c = c.unwrap();
            sizes.push(c.len());
            back.extend_from_slice(&c);
        }
        assert!(back == data && !s.truncated());
        assert_eq!(sizes.len(), 11);
        let d = a.read_file("/workspace/f".into(), Some(5)).await.unwrap();
        let d = d.read_all().await.unwrap();
        assert_eq!((d.data.len(), d.truncated), (5, true));

        // Dropped after one chunk: the agent is told, and the connection
        // serves on.
        let mut s = a.read_file("/workspace/f".into(), None).await.unwrap();
        s.next().await.unwrap().unwrap();
        drop(s);
        assert_eq!(a.ping().await.unwrap(), "/workspace");
        tokio::time::timeout(Duration::from_secs(10), rt.cancelled_reads_reach(1))
            .await
            .expect("the dropped read was never cancelled");
        assert_eq!(rt.cancelled_reads(), 1);
    }

    #[tokio::test]
    async fn an_agent_of_protocol_1_is_read_whole_and_keeps_its_connection() {
        let rt = FakeRuntime::new();
        rt.set_agent_protocol(1);
        let sb = rt
            .create(spec("s1", WorkspaceMount::Ephemeral))
            .await
            .unwrap();
        let a = &sb.agent;
        a.write_file("/workspace/f".into(), b"old agent".to_vec(), None)
            .await
            .unwrap();
        let d = a.read_file("/workspace/f".into(), None).await.unwrap();
        let d = d.read_all().await.unwrap();
        assert_eq!(
            (d.path.as_str(), &d.data[..]),
            ("/workspace/f", &b"old agent"[..])
        );
        let e = a
            .read_file("/workspace/nope".into(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::File { .. }), "{e:?}");
        // The agent was never sent what it cannot decode: still connected.
        assert!(a.is_connected());
        assert_eq!(a.ping().await.unwrap(), "/workspace");
    }

    #[tokio::test]
    async fn timeouts_cancels_and_death() {
        let rt = FakeRuntime::new();
        let sb = rt
            .create(spec("s1", WorkspaceMount::Ephemeral))
            .await
            .unwrap();
        let a = &sb.agent;
        let (_, d) = run(a, "sleep 10", 50).await;
        assert!(d.timed_out);
        assert_eq!(d.exit_code, TIMEOUT_EXIT_CODE);
        let h = a.exec("sleep 10".into(), 60_000, 1024).unwrap();
        a.cancel(h.id).await.unwrap();
        assert!(h.finish().await.unwrap().timed_out);
        assert_eq!(rt.cancelled_execs(), 1);
        let (_, d) = run(a, "echo abcdef", 1000).await;
        assert!(!d.truncated);
        let mut h = a.exec("echo abcdef".into(), 1000, 3).unwrap();
        assert_eq!(h.next().await, Some(ExecReply::Output(b"abc".to_vec())));
        assert!(h.finish().await.unwrap().truncated);

        assert!(rt.kill("s1"));
        tokio::time::timeout(Duration::from_secs(5), a.closed())
            .await
            .expect("the connection did not close");
        assert!(matches!(
            rt.attach(&sb.handle).await,
            Err(RuntimeError::Gone(_))
        ));
        assert_eq!(rt.live_count(), 0);
        rt.destroy(&sb.handle).await.unwrap();
        assert_eq!(rt.destroyed(), vec!["s1".to_string()]);
    }

    #[tokio::test]
    async fn workspaces_are_shared_exported_and_imported() {
        let rt = FakeRuntime::new();
        rt.ensure_workspace("w", None).await.unwrap();
        let sb = rt
            .create(spec("s1", WorkspaceMount::Ephemeral))
            .await
            .unwrap();
        rt.bind_workspace(&sb.handle, "w").await.unwrap();
        run(&sb.agent, "echo x > /workspace/f", 1000).await;
        let data = rt
            .workspace_read("w", "/f".into(), None)
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap();
        assert_eq!(data.data, b"x\n");
        assert!(matches!(
            rt.delete_workspace("w").await,
            Err(RuntimeError::Busy(_))
        ));
        assert!(matches!(
            rt.snapshot_workspace("w", "s").await,
            Err(RuntimeError::Unsupported(..))
        ));
        let mut rx = rt.export_workspace("w").await.unwrap();
        let mut bytes = Vec::new();
        while let Some(c) = rx.recv().await {
            bytes.extend(c.unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a");
        std::fs::write(&archive, &bytes).unwrap();
        rt.ensure_workspace("w2", None).await.unwrap();
        rt.import_workspace("w2", archive.clone(), Default::default())
            .await
            .unwrap();
        assert_eq!(rt.workspace_files("w2"), rt.workspace_files("w"));
        std::fs::write(&archive, b"junk").unwrap();
        assert!(matches!(
            rt.import_workspace("w2", archive, Default::default()).await,
            Err(RuntimeError::InvalidArchive(_))
        ));
    }
}
