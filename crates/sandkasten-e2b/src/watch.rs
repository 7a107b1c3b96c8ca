//! File watching as envd serves it, on the agent's inotify watches
//! ([`Engine::watch_dir`]): `WatchDir` (a server stream: a start event,
//! then filesystem events as they come, keepalives when the client asked
//! for them with `Keepalive-Ping-Interval`, ended by the call's deadline
//! with `deadline_exceeded`), and the watchers that the sync SDKs poll:
//! `CreateWatcher` (the watch runs in a task that keeps its events),
//! `GetWatcherEvents` (the events since the last call), `RemoveWatcher`.
//!
//! Bounds: a watcher keeps at most [`MAX_KEPT_EVENTS`] events between two
//! `GetWatcherEvents`; past that it stops, and the next call answers
//! `resource_exhausted` (and forgets it). A sandbox has at most
//! [`MAX_WATCHES`] watchers (ended ones count until removed), and the
//! agent runs at most that many watches of either kind. A watcher ends
//! with its sandbox (the agent's connection closes): it is forgotten, and
//! its id, like an unknown one or another sandbox's, answers `not_found`.

use crate::connect::{self, Code, Framing, RpcError};
use crate::envd::rpc_error;
use crate::pb::{
    Empty, EventType, FilesystemEvent, GetWatcherEventsResponse, WatchDirResponse, WatchEvent,
    WatchRequest, WatcherId,
};
use crate::process::{expire, tick, Timing};
use crate::Shared;
use axum::body::Body;
use axum::response::Response;
use sandkasten_engine::{
    EngineError, FileError, FileUser, Watch, WatchEvent as Event, WatchEventKind,
};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Watchers (and watches) a sandbox has at once.
pub const MAX_WATCHES: usize = sandkasten_engine::MAX_WATCHES;

/// Events a watcher keeps between two `GetWatcherEvents`.
pub const MAX_KEPT_EVENTS: usize = 10_000;

/// Their encoded size: names (up to 4 KiB each) and entries with their
/// metadata are the sandbox's to make long, so a count alone would let
/// its processes fill the daemon's memory behind a watcher nobody reads.
pub const MAX_KEPT_BYTES: usize = 4 << 20;

fn kind(k: WatchEventKind) -> EventType {
    match k {
        WatchEventKind::Create => EventType::Create,
        WatchEventKind::Write => EventType::Write,
        WatchEventKind::Remove => EventType::Remove,
        WatchEventKind::Rename => EventType::Rename,
        WatchEventKind::Chmod => EventType::Chmod,
    }
}

/// The watch's end as a Connect error: a sandbox that went away is
/// `not_found`, like any call to it.
fn watch_error(e: EngineError) -> RpcError {
    match e {
        EngineError::Runtime { .. } => RpcError::new(
            Code::NotFound,
            format!("the watch ended: the sandbox is gone ({e})"),
        ),
        e => rpc_error(e),
    }
}

/// Converts a batch, with each entry's info when asked (and the entry is
/// still there).
async fn convert(
    e2b: &Shared,
    id: &str,
    w: &Watch,
    events: Vec<Event>,
    include_entry: bool,
    user: FileUser,
) -> Vec<FilesystemEvent> {
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let entry = match (include_entry, ev.kind) {
            (true, WatchEventKind::Remove | WatchEventKind::Rename) | (false, _) => None,
            (true, _) => {
                let path = format!("{}/{}", w.path.trim_end_matches('/'), ev.name);
                crate::filesystem::stat_entry(e2b, id, &path, user)
                    .await
                    .ok()
            }
        };
        out.push(FilesystemEvent {
            name: ev.name,
            r#type: kind(ev.kind) as i32,
            entry,
        });
    }
    out
}

fn checked(r: &WatchRequest) -> Result<(), RpcError> {
    if r.path.is_empty() {
        return Err(RpcError::new(Code::InvalidArgument, "path is required"));
    }
    Ok(())
}

/// `WatchDir`: the stream of one watch.
pub(crate) async fn watch_dir(
    f: Framing,
    e2b: &Arc<Shared>,
    id: &str,
    user: FileUser,
    timing: Timing,
    body: Body,
) -> Response {
    let r = match crate::process::read_one::<WatchRequest>(f, body).await {
        Ok(r) => r,
        Err(e) => return connect::stream_error(f, e),
    };
    if let Err(e) = checked(&r) {
        return connect::stream_error(f, e);
    }
    let watch = match e2b.engine.watch_dir(id, &r.path, r.recursive, user).await {
        Ok(w) => w,
        Err(e) => return connect::stream_error(f, not_a_dir(e, &r.path)),
    };
    let state = Stream {
        e2b: e2b.clone(),
        id: id.to_string(),
        user,
        include_entry: r.include_entry,
        watch: Some(watch),
        pending: VecDeque::from([WatchEvent::Start(Empty {})]),
        keepalive: timing.keepalive_interval(),
        deadline: timing.deadline_sleep(),
        done: false,
    };
    connect::stream(
        f,
        futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        }),
    )
}

/// A watch of a path that is not a directory: `invalid_argument`, as
/// envd answers it.
fn not_a_dir(e: EngineError, path: &str) -> RpcError {
    match e {
        EngineError::File(FileError::InvalidPath(m)) => RpcError::new(
            Code::InvalidArgument,
            format!("{path}: not a directory ({m})"),
        ),
        e => rpc_error(e),
    }
}

struct Stream {
    e2b: Arc<Shared>,
    id: String,
    user: FileUser,
    include_entry: bool,
    /// Taken when the deadline stops it.
    watch: Option<Watch>,
    pending: VecDeque<WatchEvent>,
    keepalive: Option<tokio::time::Interval>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl Stream {
    async fn next(&mut self) -> Option<Result<WatchDirResponse, RpcError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(WatchDirResponse { event: Some(ev) }));
            }
            if self.done {
                return None;
            }
            let watch = self.watch.as_mut()?;
            tokio::select! {
                batch = watch.next() => match batch {
                    Ok(Some(events)) => {
                        if let Some(k) = &mut self.keepalive {
                            k.reset();
                        }
                        let events = convert(
                            &self.e2b, &self.id, watch, events, self.include_entry, self.user,
                        )
                        .await;
                        self.pending.extend(events.into_iter().map(WatchEvent::Filesystem));
                    }
                    // The directory went away: the stream ends cleanly.
                    Ok(None) => self.done = true,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(watch_error(e)));
                    }
                },
                _ = tick(&mut self.keepalive) => {
                    return Some(Ok(WatchDirResponse {
                        event: Some(WatchEvent::Keepalive(Empty {})),
                    }));
                }
                _ = expire(&mut self.deadline) => {
                    self.done = true;
                    // Its place among the sandbox's watches is free when
                    // the client learns that it ended.
                    if let Some(w) = self.watch.take() {
                        w.stop().await;
                    }
                    return Some(Err(RpcError::new(
                        Code::DeadlineExceeded,
                        "the call's deadline passed (the watch's timeout)",
                    )));
                }
            }
        }
    }
}

/// What a watcher collected so far.
#[derive(Default)]
struct Kept {
    events: Vec<FilesystemEvent>,
    /// Their encoded size.
    bytes: usize,
    /// Why it stopped (answered by the next `GetWatcherEvents`, which
    /// then forgets the watcher).
    failed: Option<RpcError>,
}

struct Watcher {
    sandbox: String,
    kept: Arc<Mutex<Kept>>,
    /// Tells the task to stop its watch.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// The daemon's watchers, by id.
pub(crate) struct Watchers {
    map: Arc<Mutex<HashMap<String, Watcher>>>,
    next: AtomicU64,
    /// Part of every id, so that ids of an earlier daemon run do not name
    /// this run's watchers.
    epoch: u64,
}

impl Default for Watchers {
    fn default() -> Watchers {
        Watchers {
            map: Arc::default(),
            next: AtomicU64::new(1),
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default(),
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for w in lock(&self.map).values() {
            w.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unknown(id: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("watcher {id:?} not found"))
}

/// `CreateWatcher`.
pub(crate) async fn create(
    e2b: &Arc<Shared>,
    id: &str,
    user: FileUser,
    r: WatchRequest,
) -> Result<WatcherId, RpcError> {
    checked(&r)?;
    let watchers = &e2b.watchers;
    if lock(&watchers.map)
        .values()
        .filter(|w| w.sandbox == id)
        .count()
        >= MAX_WATCHES
    {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("a sandbox has at most {MAX_WATCHES} watchers: remove one first"),
        ));
    }
    let mut watch = e2b
        .engine
        .watch_dir(id, &r.path, r.recursive, user)
        .await
        .map_err(|e| not_a_dir(e, &r.path))?;
    let wid = format!(
        "{:x}-{}",
        watchers.epoch,
        watchers.next.fetch_add(1, Ordering::Relaxed)
    );
    let kept = Arc::new(Mutex::new(Kept::default()));
    let (task_kept, map, task_id) = (kept.clone(), watchers.map.clone(), wid.clone());
    let (shared, sandbox, include) = (e2b.clone(), id.to_string(), r.include_entry);
    // Registered before the task runs, so its end always finds the entry.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let mut guard = lock(&watchers.map);
    let task = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                n = watch.next() => n,
                _ = &mut stopped => {
                    watch.stop().await;
                    return;
                }
            };
            match next {
                Ok(Some(events)) => {
                    let events = convert(&shared, &sandbox, &watch, events, include, user).await;
                    let bytes: usize = events.iter().map(prost::Message::encoded_len).sum();
                    let mut k = lock(&task_kept);
                    if k.events.len() + events.len() > MAX_KEPT_EVENTS
                        || k.bytes + bytes > MAX_KEPT_BYTES
                    {
                        k.failed = Some(RpcError::new(
                            Code::ResourceExhausted,
                            format!(
                                "more than {MAX_KEPT_EVENTS} events or {} MiB of them since \
                                 the last GetWatcherEvents: the watcher stopped",
                                MAX_KEPT_BYTES >> 20
                            ),
                        ));
                        return;
                    }
                    k.bytes += bytes;
                    k.events.extend(events);
                }
                // The directory went away: the events stay readable.
                Ok(None) => return,
                Err(EngineError::Runtime { .. }) => {
                    // The sandbox is gone: so is its watcher.
                    lock(&map).remove(&task_id);
                    return;
                }
                Err(e) => {
                    lock(&task_kept).failed = Some(rpc_error(e));
                    return;
                }
            }
        }
    });
    guard.insert(
        wid.clone(),
        Watcher {
            sandbox: id.to_string(),
            kept,
            stop: Some(stop),
            task,
        },
    );
    drop(guard);
    Ok(WatcherId { watcher_id: wid })
}

/// `GetWatcherEvents`.
pub(crate) fn events(
    e2b: &Shared,
    id: &str,
    r: WatcherId,
) -> Result<GetWatcherEventsResponse, RpcError> {
    let mut map = lock(&e2b.watchers.map);
    let w = map
        .get(&r.watcher_id)
        .filter(|w| w.sandbox == id)
        .ok_or_else(|| unknown(&r.watcher_id))?;
    let mut kept = lock(&w.kept);
    if let Some(e) = kept.failed.take() {
        drop(kept);
        map.remove(&r.watcher_id);
        return Err(e);
    }
    kept.bytes = 0;
    Ok(GetWatcherEventsResponse {
        events: std::mem::take(&mut kept.events),
    })
}

/// `RemoveWatcher`: answers once the agent has stopped the watch, so the
/// sandbox's place for it is free at once.
pub(crate) async fn remove(e2b: &Shared, id: &str, r: WatcherId) -> Result<Empty, RpcError> {
    let w = {
        let mut map = lock(&e2b.watchers.map);
        if map.get(&r.watcher_id).is_none_or(|w| w.sandbox != id) {
            return Err(unknown(&r.watcher_id));
        }
        map.remove(&r.watcher_id)
    };
    if let Some(mut w) = w {
        if let Some(stop) = w.stop.take() {
            let _ = stop.send(());
        }
        let _ = w.task.await;
    }
    Ok(Empty {})
}
