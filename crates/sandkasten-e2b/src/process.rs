//! `process.Process` on the agent's process model (the engine's process
//! calls): Start and Connect stream a process's events (its pid, its
//! output as stdout, stderr or PTY data, its end), List, Update (PTY
//! size), SendInput, StreamInput (a client stream: a selector, then
//! input), CloseStdin and SendSignal.
//!
//! E2B's semantics kept: the user comes from `Authorization: Basic
//! base64(user:)` (`root`, else the sandbox user); `stdin` defaults to open
//! when absent; a process killed by a signal ends with exit code -1,
//! `exited: false` and Go's status text (`signal: killed`); List shows
//! running processes only; Connect follows a process from now (no replay);
//! when a Start call's deadline (`Connect-Timeout-Ms`) passes, the process
//! is killed and the stream ends with `deadline_exceeded`; with a
//! `Keepalive-Ping-Interval` header (seconds) a keepalive event is sent
//! whenever that long passed without one.

use crate::connect::{self, Code, Framing, RpcError};
use crate::envd::rpc_error;
use crate::pb::{
    DataEvent, Empty, EndEvent, Event, EventResponse, Input, ListResponse, Output, ProcessConfig,
    ProcessEvent, ProcessInfo, ProcessSelector, SelectorRequest, SendInputRequest,
    SendSignalRequest, Signal, StartEvent, StartRequest, StreamInputEvent, StreamInputRequest,
    UpdateRequest,
};
use crate::Shared;
use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use sandkasten_engine::{
    Engine, ProcEnd, ProcEvent, ProcOutput, ProcRef, ProcSpec, ProcStream, PtySize, StartedProcess,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unary,
    ServerStream,
    ClientStream,
}

pub(crate) async fn call(
    e2b: &Shared,
    id: &str,
    method: &str,
    root: bool,
    req: Request,
) -> Response {
    let Some(f) = connect::framing(req.headers()) else {
        return connect::unsupported_media_type();
    };
    let kind = match method {
        "Start" | "Connect" => Kind::ServerStream,
        "StreamInput" => Kind::ClientStream,
        "List" | "Update" | "SendInput" | "SendSignal" | "CloseStdin" => Kind::Unary,
        _ => {
            let mut r = RpcError::new(
                Code::Unimplemented,
                format!("process.Process has no method {method}"),
            )
            .unary_response();
            *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
            return r;
        }
    };
    if f.streaming != (kind != Kind::Unary) {
        return connect::unsupported_media_type();
    }
    let timing = Timing::from_headers(req.headers());
    let body = req.into_body();
    let engine = &e2b.engine;
    match method {
        "Start" => match read_one::<StartRequest>(f, body).await {
            Ok(r) => start(f, engine, id, r, root, timing).await,
            Err(e) => connect::stream_error(f, e),
        },
        "Connect" => match read_one::<SelectorRequest>(f, body).await {
            Ok(r) => attach(f, engine, id, r, timing).await,
            Err(e) => connect::stream_error(f, e),
        },
        "StreamInput" => stream_input(f, engine, id, body).await,
        "List" => connect::serve_unary(f, body, |_: Empty| list(engine, id)).await,
        "Update" => connect::serve_unary(f, body, |r: UpdateRequest| update(engine, id, r)).await,
        "SendInput" => {
            connect::serve_unary(f, body, |r: SendInputRequest| send_input(engine, id, r)).await
        }
        "SendSignal" => {
            connect::serve_unary(f, body, |r: SendSignalRequest| signal(engine, id, r)).await
        }
        _ => connect::serve_unary(f, body, |r: SelectorRequest| close_stdin(engine, id, r)).await,
    }
}

/// The one message of a server-streaming call's request.
pub(crate) async fn read_one<T: connect::Msg>(f: Framing, body: Body) -> Result<T, RpcError> {
    let mut env = connect::Envelopes::new(f.codec, body);
    let first = env.next::<T>().await.unwrap_or_else(|| {
        Err(RpcError::new(
            Code::InvalidArgument,
            "the request has no message",
        ))
    })?;
    match env.next::<T>().await {
        None => Ok(first),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err(RpcError::new(
            Code::InvalidArgument,
            "a server-streaming call takes exactly one message",
        )),
    }
}

fn selector(s: Option<ProcessSelector>) -> Result<ProcRef, RpcError> {
    match s.and_then(|s| s.selector) {
        Some(crate::pb::Selector::Pid(pid)) => Ok(ProcRef::Pid(pid)),
        Some(crate::pb::Selector::Tag(tag)) => Ok(ProcRef::Tag(tag)),
        None => Err(RpcError::new(
            Code::InvalidArgument,
            "process (a pid or a tag) is required",
        )),
    }
}

fn pty_size(p: Option<crate::pb::Pty>) -> Result<Option<PtySize>, RpcError> {
    let Some(size) = p.map(|p| p.size.unwrap_or_default()) else {
        return Ok(None);
    };
    let dim = |n: u32, what: &str| {
        u16::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
            RpcError::new(
                Code::InvalidArgument,
                format!("pty {what} must be 1 to 65535, got {n}"),
            )
        })
    };
    Ok(Some(PtySize {
        rows: dim(size.rows, "rows")?,
        cols: dim(size.cols, "cols")?,
    }))
}

/// The deadline and keepalive period a streaming call asked for.
#[derive(Clone, Copy, Default)]
pub(crate) struct Timing {
    pub(crate) deadline: Option<Duration>,
    pub(crate) keepalive: Option<Duration>,
}

impl Timing {
    /// The keepalive ticks (the first one period from now).
    pub(crate) fn keepalive_interval(&self) -> Option<tokio::time::Interval> {
        self.keepalive.map(|p| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        })
    }

    /// The call's deadline from now.
    pub(crate) fn deadline_sleep(&self) -> Option<Pin<Box<tokio::time::Sleep>>> {
        self.deadline.map(|d| Box::pin(tokio::time::sleep(d)))
    }

    pub(crate) fn from_headers(h: &HeaderMap) -> Timing {
        let num = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Timing {
            deadline: num("connect-timeout-ms")
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            keepalive: num("keepalive-ping-interval")
                .filter(|s| (1..=3600).contains(s))
                .map(Duration::from_secs),
        }
    }
}

async fn start(
    f: Framing,
    engine: &Arc<Engine>,
    id: &str,
    r: StartRequest,
    root: bool,
    timing: Timing,
) -> Response {
    let spec = match spec(r, root) {
        Ok(s) => s,
        Err(e) => return connect::stream_error(f, e),
    };
    match engine.start_process(id, spec, true).await {
        Ok(StartedProcess::Attached(out)) => events(f, engine, id, out, timing, true),
        Ok(StartedProcess::Detached(info)) => {
            tracing::error!(pid = info.pid, "envd: an attached start came back detached");
            connect::stream_error(f, RpcError::new(Code::Internal, "internal error"))
        }
        Err(e) => connect::stream_error(f, rpc_error(e)),
    }
}

fn spec(r: StartRequest, root: bool) -> Result<ProcSpec, RpcError> {
    let ProcessConfig {
        cmd,
        args,
        envs,
        cwd,
    } = r
        .process
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process is required"))?;
    if cmd.is_empty() {
        return Err(RpcError::new(Code::InvalidArgument, "process.cmd is empty"));
    }
    let mut argv = Vec::with_capacity(1 + args.len());
    argv.push(cmd);
    argv.extend(args);
    Ok(ProcSpec {
        argv,
        env: envs.into_iter().collect(),
        cwd: cwd.filter(|c| !c.is_empty()),
        root,
        pty: pty_size(r.pty)?,
        stdin: r.stdin.unwrap_or(true),
        tag: r.tag,
    })
}

async fn attach(
    f: Framing,
    engine: &Arc<Engine>,
    id: &str,
    r: SelectorRequest,
    timing: Timing,
) -> Response {
    let proc = match selector(r.process) {
        Ok(p) => p,
        Err(e) => return connect::stream_error(f, e),
    };
    match engine.attach_process(id, proc, false).await {
        Ok(out) => events(f, engine, id, out, timing, false),
        Err(e) => connect::stream_error(f, rpc_error(e)),
    }
}

fn response(event: Event) -> EventResponse {
    EventResponse {
        event: Some(ProcessEvent { event: Some(event) }),
    }
}

/// Go's name of a signal (`ProcessState.String()`: `signal: killed`).
fn signal_name(n: i32) -> String {
    match n {
        1 => "hangup".into(),
        2 => "interrupt".into(),
        3 => "quit".into(),
        6 => "aborted".into(),
        9 => "killed".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        14 => "alarm clock".into(),
        15 => "terminated".into(),
        n => format!("signal {n}"),
    }
}

pub(crate) fn end_event(end: ProcEnd) -> EndEvent {
    match end.signal {
        Some(sig) => EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(sig)),
            error: None,
        },
        None => EndEvent {
            exit_code: end.exit_code,
            exited: true,
            status: format!("exit status {}", end.exit_code),
            error: None,
        },
    }
}

/// Events a Start's guard holds for a slow client.
const GUARD_BUFFER: usize = 16;

/// A process's event stream as it goes: Start, Data…, End.
struct Follow {
    pid: u32,
    out: Source,
    started: bool,
    done: bool,
    keepalive: Option<tokio::time::Interval>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Where a stream's events come from: the process's output, or the
/// guard of a Start with a deadline (which reads it).
enum Source {
    Direct(ProcOutput),
    Guarded(mpsc::Receiver<Result<ProcEvent, String>>),
}

impl Source {
    async fn next(&mut self) -> Result<ProcEvent, String> {
        match self {
            Source::Direct(out) => out.next().await.map_err(|e| e.to_string()),
            Source::Guarded(rx) => rx
                .recv()
                .await
                .unwrap_or_else(|| Err("the process stream has ended".into())),
        }
    }
}

/// A Start's process until its end or its deadline, whether or not the
/// client still reads (it may have gone at its own deadline already):
/// reads the process's events (`events`), hands them on while `tx` is
/// read, and calls `kill` when the deadline passes first. It ends with
/// the process: once the end is read, nothing is signalled (a pid is
/// reused).
async fn guard<S, K>(
    mut events: S,
    deadline: Duration,
    tx: mpsc::Sender<Result<ProcEvent, String>>,
    kill: K,
) where
    S: futures::Stream<Item = Result<ProcEvent, String>> + Unpin,
    K: std::future::Future<Output = ()>,
{
    let expiry = tokio::time::sleep(deadline);
    tokio::pin!(expiry);
    let mut tx = Some(tx);
    loop {
        tokio::select! {
            ev = events.next() => {
                let ended = matches!(ev, Some(Ok(ProcEvent::End(_))));
                let lost = matches!(ev, None | Some(Err(_)));
                if let (Some(ev), Some(t)) = (ev, &tx) {
                    tokio::select! {
                        sent = t.send(ev) => if sent.is_err() { tx = None },
                        () = &mut expiry => return kill.await,
                    }
                }
                if ended {
                    return;
                }
                if lost {
                    // The process's stream broke (not its end): the
                    // deadline still holds for it.
                    expiry.as_mut().await;
                    return kill.await;
                }
            }
            () = &mut expiry => return kill.await,
        }
    }
}

pub(crate) async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(crate) async fn expire(d: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match d {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Follow {
    async fn next(&mut self) -> Option<Result<EventResponse, RpcError>> {
        if self.done {
            return None;
        }
        let pid = self.pid;
        if !self.started {
            self.started = true;
            return Some(Ok(response(Event::Start(StartEvent { pid }))));
        }
        tokio::select! {
            ev = self.out.next() => match ev {
                Ok(ProcEvent::Output { stream, data }) => {
                    if let Some(k) = &mut self.keepalive {
                        k.reset();
                    }
                    let output = match stream {
                        ProcStream::Stdout => Output::Stdout(data),
                        ProcStream::Stderr => Output::Stderr(data),
                        ProcStream::Pty => Output::Pty(data),
                    };
                    Some(Ok(response(Event::Data(DataEvent { output: Some(output) }))))
                }
                Ok(ProcEvent::End(end)) => {
                    self.done = true;
                    Some(Ok(response(Event::End(end_event(end)))))
                }
                Err(e) => {
                    self.done = true;
                    Some(Err(RpcError::new(
                        Code::Unavailable,
                        format!("the process stream of the sandbox broke: {e}"),
                    )))
                }
            },
            _ = tick(&mut self.keepalive) => Some(Ok(response(Event::Keepalive(Empty {})))),
            _ = expire(&mut self.deadline) => {
                self.done = true;
                Some(Err(RpcError::new(
                    Code::DeadlineExceeded,
                    "the call's deadline passed (the command's timeout)",
                )))
            }
        }
    }
}

fn events(
    f: Framing,
    engine: &Arc<Engine>,
    id: &str,
    out: ProcOutput,
    timing: Timing,
    kill_at_deadline: bool,
) -> Response {
    let pid = out.info.pid;
    let out = match timing.deadline {
        Some(d) if kill_at_deadline => {
            let (tx, rx) = mpsc::channel(GUARD_BUFFER);
            let (engine, id) = (engine.clone(), id.to_string());
            let kill = async move {
                if let Err(e) = engine.signal_process(&id, ProcRef::Pid(pid), 9).await {
                    tracing::debug!(pid, "envd: killing a process at its deadline: {e}");
                }
            };
            let events = Box::pin(futures::stream::unfold(out, |mut out| async move {
                let ev = out.next().await.map_err(|e| e.to_string());
                Some((ev, out))
            }));
            tokio::spawn(guard(events, d, tx, kill));
            Source::Guarded(rx)
        }
        _ => Source::Direct(out),
    };
    let follow = Follow {
        pid,
        out,
        started: false,
        done: false,
        keepalive: timing.keepalive_interval(),
        deadline: timing.deadline_sleep(),
    };
    connect::stream(
        f,
        futures::stream::unfold(follow, |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        }),
    )
}

async fn list(engine: &Arc<Engine>, id: &str) -> Result<ListResponse, RpcError> {
    let procs = engine.list_processes(id).await.map_err(rpc_error)?;
    Ok(ListResponse {
        processes: procs
            .into_iter()
            .filter(|p| p.end.is_none())
            .map(|p| {
                let mut argv = p.argv.into_iter();
                ProcessInfo {
                    config: Some(ProcessConfig {
                        cmd: argv.next().unwrap_or_default(),
                        args: argv.collect(),
                        envs: Default::default(),
                        cwd: Some(p.cwd),
                    }),
                    pid: p.pid,
                    tag: p.tag,
                }
            })
            .collect(),
    })
}

async fn update(engine: &Arc<Engine>, id: &str, r: UpdateRequest) -> Result<Empty, RpcError> {
    let proc = selector(r.process)?;
    if let Some(size) = pty_size(r.pty)? {
        engine
            .resize_process(id, proc, size)
            .await
            .map_err(rpc_error)?;
    }
    Ok(Empty {})
}

fn input_bytes(i: Option<crate::pb::ProcessInput>) -> Result<Vec<u8>, RpcError> {
    match i.and_then(|i| i.input) {
        Some(Input::Stdin(d)) | Some(Input::Pty(d)) => Ok(d),
        None => Err(RpcError::new(
            Code::InvalidArgument,
            "input (stdin or pty bytes) is required",
        )),
    }
}

async fn send_input(
    engine: &Arc<Engine>,
    id: &str,
    r: SendInputRequest,
) -> Result<Empty, RpcError> {
    let proc = selector(r.process)?;
    let data = input_bytes(r.input)?;
    engine
        .process_input(id, proc, data)
        .await
        .map_err(rpc_error)?;
    Ok(Empty {})
}

async fn signal(engine: &Arc<Engine>, id: &str, r: SendSignalRequest) -> Result<Empty, RpcError> {
    let proc = selector(r.process)?;
    let sig = match Signal::try_from(r.signal) {
        Ok(Signal::Sigkill) => 9,
        Ok(Signal::Sigterm) => 15,
        _ => {
            return Err(RpcError::new(
                Code::InvalidArgument,
                format!(
                    "signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL, got {}",
                    r.signal
                ),
            ))
        }
    };
    engine
        .signal_process(id, proc, sig)
        .await
        .map_err(rpc_error)?;
    Ok(Empty {})
}

async fn close_stdin(
    engine: &Arc<Engine>,
    id: &str,
    r: SelectorRequest,
) -> Result<Empty, RpcError> {
    let proc = selector(r.process)?;
    engine
        .close_process_stdin(id, proc)
        .await
        .map_err(rpc_error)?;
    Ok(Empty {})
}

/// StreamInput: a start naming the process, then its input in order;
/// answered once the body ended (or at the first failure).
async fn stream_input(f: Framing, engine: &Arc<Engine>, id: &str, body: Body) -> Response {
    let result = async {
        let mut env = connect::Envelopes::new(f.codec, body);
        let mut proc: Option<ProcRef> = None;
        while let Some(msg) = env.next::<StreamInputRequest>().await {
            match msg?.event {
                Some(StreamInputEvent::Start(s)) => proc = Some(selector(s.process)?),
                Some(StreamInputEvent::Data(d)) => {
                    let Some(p) = proc.clone() else {
                        return Err(RpcError::new(
                            Code::InvalidArgument,
                            "input came before the start naming the process",
                        ));
                    };
                    let data = input_bytes(d.input)?;
                    engine.process_input(id, p, data).await.map_err(rpc_error)?;
                }
                Some(StreamInputEvent::Keepalive(_)) | None => {}
            }
        }
        Ok(Empty {})
    }
    .await;
    connect::stream(f, futures::stream::iter([result]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::Codec;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The guard of a Start with a deadline whose client left: done
    /// when the process ends, never signalling it at the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_guard_ends_with_its_process_though_the_client_left() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx); // the client left
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let events = Box::pin(futures::stream::unfold(ev_rx, |mut r| async move {
            let ev = r.recv().await?;
            Some((ev, r))
        }));
        let killed = Arc::new(AtomicBool::new(false));
        let k = killed.clone();
        let kill = async move { k.store(true, Ordering::SeqCst) };
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(guard(events, Duration::from_secs(3600), tx, kill));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out = ProcEvent::Output {
            stream: ProcStream::Stdout,
            data: b"x".to_vec(),
        };
        ev_tx.send(Ok(out)).unwrap();
        ev_tx
            .send(Ok(ProcEvent::End(ProcEnd {
                exit_code: 0,
                signal: None,
            })))
            .unwrap();
        task.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3600));
        assert!(!killed.load(Ordering::SeqCst));
        // Without an end, the deadline kills.
        let (tx, _rx) = mpsc::channel(1);
        let killed = Arc::new(AtomicBool::new(false));
        let k = killed.clone();
        let kill = async move { k.store(true, Ordering::SeqCst) };
        guard(futures::stream::pending(), Duration::from_secs(5), tx, kill).await;
        assert!(killed.load(Ordering::SeqCst));
    }

    /// A stream that breaks (not the process's end) leaves the deadline
    /// in force: the process is killed at it, not forgotten.
    #[tokio::test(start_paused = true)]
    async fn a_broken_stream_still_meets_the_deadline() {
        let (tx, _rx) = mpsc::channel(1);
        let killed = Arc::new(AtomicBool::new(false));
        let k = killed.clone();
        let kill = async move { k.store(true, Ordering::SeqCst) };
        let broken = futures::stream::iter([Err::<ProcEvent, String>("connection lost".into())]);
        let started = tokio::time::Instant::now();
        guard(Box::pin(broken), Duration::from_secs(5), tx, kill).await;
        assert!(killed.load(Ordering::SeqCst));
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[test]
    fn process_events_follow_the_protobuf_json_mapping() {
        let data = response(Event::Data(DataEvent {
            output: Some(Output::Stdout(b"hi\n".to_vec())),
        }));
        let v: serde_json::Value =
            serde_json::from_slice(&connect::encode(Codec::Json, &data)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": {"data": {"stdout": "aGkK"}}})
        );
        let end = response(Event::End(end_event(ProcEnd {
            exit_code: 137,
            signal: Some(9),
        })));
        let v: serde_json::Value =
            serde_json::from_slice(&connect::encode(Codec::Json, &end)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": {"end": {"exitCode": -1, "exited": false, "status": "signal: killed"}}})
        );
        for codec in [Codec::Json, Codec::Proto] {
            let back: EventResponse =
                connect::decode(codec, &connect::encode(codec, &end)).unwrap();
            assert_eq!(back, end);
        }
        let keep = response(Event::Keepalive(Empty {}));
        let back: EventResponse =
            connect::decode(Codec::Proto, &connect::encode(Codec::Proto, &keep)).unwrap();
        assert_eq!(back, keep);
    }

    #[test]
    fn requests_decode_as_the_sdks_send_them() {
        let r: StartRequest = connect::decode(
            Codec::Json,
            br#"{"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"A": "1"}}, "stdin": false, "pty": {"size": {"cols": 80, "rows": 24}}}"#,
        )
        .unwrap();
        let s = spec(r, false).unwrap();
        assert_eq!(s.argv, ["/bin/bash", "-l", "-c", "echo hi"]);
        assert_eq!(s.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(s.pty, Some(PtySize { rows: 24, cols: 80 }));
        assert!(!s.stdin);
        let r: StartRequest =
            connect::decode(Codec::Json, br#"{"process": {"cmd": "true"}}"#).unwrap();
        assert!(spec(r, true).unwrap().stdin, "stdin defaults to open");
        assert!(spec(StartRequest::default(), false).is_err());
        let r: SendInputRequest = connect::decode(
            Codec::Json,
            br#"{"process": {"pid": 7}, "input": {"stdin": "aGk="}}"#,
        )
        .unwrap();
        assert_eq!(selector(r.process.clone()).unwrap(), ProcRef::Pid(7));
        assert_eq!(input_bytes(r.input).unwrap(), b"hi");
        let r: SendSignalRequest = connect::decode(
            Codec::Json,
            br#"{"process": {"tag": "srv"}, "signal": "SIGNAL_SIGKILL"}"#,
        )
        .unwrap();
        assert_eq!(selector(r.process).unwrap(), ProcRef::Tag("srv".into()));
        assert_eq!(r.signal, 9);
        let r: StreamInputRequest =
            connect::decode(Codec::Json, br#"{"start": {"process": {"pid": 3}}}"#).unwrap();
        assert!(matches!(r.event, Some(StreamInputEvent::Start(_))));
        assert!(selector(None).is_err());
        assert!(pty_size(Some(crate::pb::Pty { size: None })).is_err());
    }
}
