//! Router tests: the whole HTTP stack (auth, extractors, fallbacks, limits,
//! handlers, SSE, OpenAPI) over a scripted fake backend, driven with
//! `oneshot`. The real engine is exercised by the black-box tests in the
//! workspace's `tests/`.

use super::*;
use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use sandkasten_engine::{
    AcquireSource, CreateSession, CreateWorkspace, DirEntry, EngineError, ExecEvent, ExecRequest,
    ExecResult, ExecStream, FileError, FileReader, FileStat, FileType, Holder, ImageError,
    SessionError, SessionInfo, SessionState, SessionStats, WorkspaceError, WorkspaceInfo,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use time::macros::datetime;
use tokio::sync::mpsc;
use tower::ServiceExt;

const KEY: &str = "sk-test-key";
const LIMIT: usize = 4096;

/// A backend whose answers depend on the session id and command:
/// session `missing` is not found, `broken` fails internally, anything else
/// exists. Workspace `missing` is not found, `busy` is mounted, `taken`
/// exists already; with `workspaces_disabled` every workspace method
/// refuses. It records what it was asked.
#[derive(Default)]
struct Fake {
    created: Mutex<Vec<CreateSession>>,
    workspaces_created: Mutex<Vec<CreateWorkspace>>,
    /// Session-less writes: (workspace id, path, data).
    workspace_writes: Mutex<Vec<(String, String, Vec<u8>)>>,
    workspaces_disabled: AtomicBool,
    execs: Mutex<Vec<ExecRequest>>,
    writes: Mutex<Vec<(String, String, Vec<u8>)>>,
    reads: Mutex<Vec<(String, Option<u64>)>>,
    calls: Mutex<Vec<String>>,
    /// The sender of a `hold` stream, kept so the test can watch it.
    held: Mutex<Option<mpsc::Sender<ExecEvent>>>,
}

fn check(id: &str) -> Result<(), EngineError> {
    match id {
        "missing" => Err(SessionError::NotFound(id.into()).into()),
        "broken" => Err(SessionError::AgentLost("disk on fire at /var/secret".into()).into()),
        "ended" => Err(SessionError::NotRunning {
            id: id.into(),
            state: SessionState::Expired,
        }
        .into()),
        _ => Ok(()),
    }
}

fn info(id: &str) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        image: "base".into(),
        status: SessionState::Running,
        cwd: "/workspace".into(),
        workspace_id: None,
        created_at: datetime!(2026-02-08 10:00:00 UTC),
        expires_at: datetime!(2026-02-08 10:30:00 UTC),
        acquire_source: AcquireSource::Cold,
        disk_limit_mb: None,
        network: sandkasten_engine::NetworkPolicy::none(),
        metadata: Default::default(),
        ttl_seconds: 1800,
        on_timeout: sandkasten_engine::OnTimeout::Destroy,
        idle_timeout_seconds: None,
    }
}

fn workspace_info(id: &str) -> WorkspaceInfo {
    WorkspaceInfo {
        id: id.into(),
        created_at: datetime!(2026-02-08 10:00:00.5 UTC),
        last_used_at: Some(datetime!(2026-02-08 11:00:00 +01:00)),
        size_bytes: 1234,
        quota_bytes: None,
        in_use: id == "busy",
        labels: BTreeMap::new(),
    }
}

impl Fake {
    fn check_workspace(&self, id: &str) -> Result<(), EngineError> {
        if self.workspaces_disabled.load(Ordering::Relaxed) {
            return Err(WorkspaceError::Disabled.into());
        }
        match id {
            "missing" => Err(WorkspaceError::NotFound(id.into()).into()),
            _ => Ok(()),
        }
    }
}

/// A workspace path as the engine names it: `a`, `/a` and `/workspace/a`
/// are all `/workspace/a`.
fn in_workspace(path: &str) -> String {
    let inside = path
        .strip_prefix("/workspace")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .unwrap_or(path);
    format!("/workspace/{}", inside.trim_start_matches('/'))
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/workspace/{path}")
    }
}

#[async_trait]
impl Backend for Fake {
    async fn create_session(&self, req: CreateSession) -> Result<SessionInfo, EngineError> {
        if req.image.as_deref() == Some("nope") {
            return Err(ImageError::Invalid("unknown image nope".into()).into());
        }
        let mut s = info("new");
        s.workspace_id = req.workspace_id.clone();
        self.created.lock().unwrap().push(req);
        Ok(s)
    }
    async fn list_sessions(&self) -> Vec<SessionInfo> {
        vec![info("a"), info("b")]
    }
    async fn get_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        check(id)?;
        Ok(info(id))
    }
    async fn destroy_session(&self, id: &str) -> Result<(), EngineError> {
        check(id)?;
        self.calls.lock().unwrap().push(format!("destroy {id}"));
        Ok(())
    }
    async fn network_events(
        &self,
        id: &str,
    ) -> Result<Vec<sandkasten_engine::NetworkDenial>, EngineError> {
        check(id)?;
        Ok(vec![sandkasten_engine::NetworkDenial {
            at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            destination: "evil.example".into(),
            name: Some("evil.example".into()),
            reason: "not in allow_out".into(),
        }])
    }
    async fn set_network(
        &self,
        id: &str,
        req: sandkasten_engine::NetworkRequest,
    ) -> Result<SessionInfo, EngineError> {
        check(id)?;
        let cap = sandkasten_engine::NetworkConfig {
            allow_full: true,
            ..Default::default()
        };
        let mut s = info(id);
        s.network = cap.resolve(req)?;
        Ok(s)
    }
    async fn session_stats(&self, id: &str) -> Result<SessionStats, EngineError> {
        check(id)?;
        Ok(SessionStats {
            memory_bytes: 1024,
            memory_limit: 4096,
            cpu_usage_usec: 77,
            pids: 3,
        })
    }
    async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, EngineError> {
        check(id)?;
        self.execs.lock().unwrap().push(req);
        Ok(ExecResult {
            exit_code: 0,
            cwd: "/tmp".into(),
            output: "42\n".into(),
            truncated: false,
            duration_ms: 3,
            timed_out: false,
        })
    }
    async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError> {
        check(id)?;
        let (tx, rx) = mpsc::channel(8);
        let chunk = |s: &str| ExecEvent::Chunk {
            data: s.into(),
            timestamp_ms: 1_707_390_000_000,
        };
        let done = ExecEvent::Done {
            exit_code: 0,
            cwd: "/workspace".into(),
            duration_ms: 912,
            timed_out: false,
            truncated: false,
        };
        let script = match req.cmd.as_str() {
            "hold" => {
                *self.held.lock().unwrap() = Some(tx);
                return Ok(rx);
            }
            "fail" => vec![
                chunk("partial"),
                ExecEvent::Error {
                    message: "agent went away".into(),
                },
            ],
            "vanish" => vec![chunk("1\n")],
            _ => vec![chunk("1\n"), chunk("2\n\"quoted\"\r\n"), done],
        };
        for event in script {
            tx.send(event).await.unwrap();
        }
        Ok(rx)
    }
    async fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        check(id)?;
        self.reads.lock().unwrap().push((path.into(), max_bytes));
        if path == "gone" {
            return Err(FileError::NotFound(path.into()).into());
        }
        Ok(FileReader::from_bytes(
            absolute(path),
            vec![0, 1, 2, 255],
            max_bytes.is_some(),
        ))
    }
    async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<String, EngineError> {
        check(id)?;
        self.writes
            .lock()
            .unwrap()
            .push((id.into(), path.into(), data));
        Ok(absolute(path))
    }
    async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError> {
        check(id)?;
        self.calls.lock().unwrap().push(format!("list {path}"));
        Ok(vec![DirEntry {
            name: "a.txt".into(),
            file_type: FileType::File,
            size: 5,
            mode: 0o644,
            mtime: 1_700_000_000,
        }])
    }
    async fn stat(&self, id: &str, path: &str) -> Result<FileStat, EngineError> {
        check(id)?;
        Ok(FileStat {
            path: absolute(path),
            file_type: FileType::Symlink,
            size: 3,
            mode: 0o777,
            uid: 1000,
            gid: 1000,
            mtime: 1_700_000_001,
            link_target: Some("/etc".into()),
        })
    }
    async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<String, EngineError> {
        check(id)?;
        self.calls
            .lock()
            .unwrap()
            .push(format!("mkdir {path} {parents}"));
        Ok(absolute(path))
    }
    async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), EngineError> {
        check(id)?;
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove {path} {recursive}"));
        Ok(())
    }
    async fn rename(&self, id: &str, from: &str, to: &str) -> Result<String, EngineError> {
        check(id)?;
        self.calls
            .lock()
            .unwrap()
            .push(format!("rename {from} {to}"));
        Ok(absolute(to))
    }
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, EngineError> {
        self.check_workspace("")?;
        Ok(vec![workspace_info("a"), workspace_info("busy")])
    }
    async fn create_workspace(&self, req: CreateWorkspace) -> Result<WorkspaceInfo, EngineError> {
        self.check_workspace(&req.id)?;
        if req.id == "taken" {
            return Err(WorkspaceError::AlreadyExists(req.id.clone()).into());
        }
        let info = WorkspaceInfo {
            last_used_at: None,
            size_bytes: 0,
            quota_bytes: req.quota_bytes,
            labels: req.labels.clone(),
            ..workspace_info(&req.id)
        };
        self.workspaces_created.lock().unwrap().push(req);
        Ok(info)
    }
    async fn get_workspace(&self, id: &str) -> Result<WorkspaceInfo, EngineError> {
        self.check_workspace(id)?;
        Ok(workspace_info(id))
    }
    async fn delete_workspace(&self, id: &str) -> Result<(), EngineError> {
        self.check_workspace(id)?;
        if id == "busy" {
            return Err(WorkspaceError::InUse {
                id: id.into(),
                holder: Holder::Session("s1".into()),
            }
            .into());
        }
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete workspace {id}"));
        Ok(())
    }
    async fn workspace_list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError> {
        self.check_workspace(id)?;
        self.calls
            .lock()
            .unwrap()
            .push(format!("list workspace {id} {path}"));
        Ok(vec![DirEntry {
            name: "notes".into(),
            file_type: FileType::Dir,
            size: 4096,
            mode: 0o755,
            mtime: 1_700_000_002,
        }])
    }
    async fn workspace_read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        self.check_workspace(id)?;
        self.calls
            .lock()
            .unwrap()
            .push(format!("read workspace {id} {path} {max_bytes:?}"));
        if path == "gone" {
            return Err(FileError::NotFound(path.into()).into());
        }
        Ok(FileReader::from_bytes(
            in_workspace(path),
            b"ws\xff".to_vec(),
            max_bytes.is_some(),
        ))
    }
    async fn workspace_write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        self.check_workspace(id)?;
        self.workspace_writes
            .lock()
            .unwrap()
            .push((id.into(), path.into(), data));
        Ok(in_workspace(path))
    }

    fn pool_stats(&self) -> sandkasten_engine::PoolStats {
        self.metrics().pool
    }

    fn metrics(&self) -> sandkasten_engine::MetricsSnapshot {
        let mut images = std::collections::BTreeMap::new();
        images.insert(
            "base".to_string(),
            sandkasten_engine::ImagePoolStats {
                target: 3,
                idle: 2,
                in_flight: 1,
                hits: 7,
                misses: 1,
                discarded: 1,
                recycled: 0,
                refill_failures: 2,
                last_error: Some("image \"x\" broke".into()),
                acquire_wait_p50_ms: Some(1.5),
                acquire_wait_p95_ms: Some(2.5),
            },
        );
        sandkasten_engine::MetricsSnapshot {
            pool: sandkasten_engine::PoolStats { images },
            sessions: vec![("creating", 0), ("running", 4), ("destroying", 0)],
            sessions_ended: vec![("destroyed", 3), ("expired", 1), ("lost", 0), ("failed", 0)],
            creates: vec![("pool", 7), ("cold", 1)],
            exec_duration: sandkasten_engine::HistogramSnapshot {
                buckets: vec![(0.001, 5), (0.01, 9)],
                count: 10,
                sum_seconds: 0.25,
            },
            pool_acquire: sandkasten_engine::HistogramSnapshot::default(),
            network_denials: 2,
            cold_create_phases: vec![("runtime: launcher: \"x\"".into(), 0.5, 2)],
            pool_create_phases: vec![("pool: take".into(), 0.25, 5)],
        }
    }
}

fn app() -> (Router, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let config = ApiConfig {
        api_key: KEY.into(),
        max_body_bytes: LIMIT,
        body_memory_bytes: 4 * LIMIT as u64,
        preview_domain: "localhost:8080".into(),
        port_url_secret: vec![7; 32],
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let bodies = crate::body_budget(&config);
    let router = build_router(fake.clone(), config, bodies, None);
    (router, fake)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    /// Asserts a contract error: status, code, JSON content type, and the
    /// body's three keys.
    fn assert_error(&self, status: u16, code: &str) -> Value {
        let v = self.json();
        assert_eq!(self.status.as_u16(), status, "{v}");
        assert_eq!(v["error_code"], code, "{v}");
        assert!(v["message"].is_string(), "{v}");
        assert!(v["details"].is_object(), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/json");
        v
    }
}

async fn send(router: &Router, req: Request<Body>) -> Reply {
    let response = router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn request(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
}

async fn get(router: &Router, uri: &str) -> Reply {
    send(
        router,
        request(Method::GET, uri).body(Body::empty()).unwrap(),
    )
    .await
}

async fn post_json(router: &Router, uri: &str, body: Value) -> Reply {
    json_request(router, Method::POST, uri, body).await
}

async fn put_json(router: &Router, uri: &str, body: Value) -> Reply {
    json_request(router, Method::PUT, uri, body).await
}

async fn json_request(router: &Router, method: Method, uri: &str, body: Value) -> Reply {
    let req = request(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(router, req).await
}

// ------------------------------------------------------------ auth, routing

#[tokio::test]
async fn healthz_needs_no_key() {
    let (router, _) = app();
    let req = Request::get("/healthz").body(Body::empty()).unwrap();
    let r = send(&router, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn every_other_route_needs_the_key() {
    let (router, fake) = app();
    for (method, uri) in [
        (Method::GET, "/v1/sessions"),
        (Method::POST, "/v1/sessions"),
        (Method::GET, "/v1/sessions/s1"),
        (Method::DELETE, "/v1/sessions/s1"),
        (Method::POST, "/v1/sessions/s1/exec"),
        (Method::POST, "/v1/sessions/s1/fs/upload"),
        (Method::GET, "/v1/workspaces"),
        (Method::POST, "/v1/workspaces"),
        (Method::GET, "/v1/workspaces/w1"),
        (Method::DELETE, "/v1/workspaces/w1"),
        (Method::GET, "/v1/workspaces/w1/fs"),
        (Method::GET, "/v1/workspaces/w1/fs/read?path=a"),
        (Method::POST, "/v1/workspaces/w1/fs/write"),
        (Method::POST, "/v1/workspaces/w1/fs/upload"),
        (Method::GET, "/openapi.json"),
        (Method::GET, "/no/such/route"),
    ] {
        let no_key = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let r = send(&router, no_key).await;
        r.assert_error(401, "UNAUTHORIZED");
        assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");

        for auth in [
            "Bearer wrong",
            "Bearer sk-test-ke",
            "Bearer sk-test-key2",
            "Basic c2stdGVzdC1rZXk=",
            KEY,
        ] {
            let wrong = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(header::AUTHORIZATION, auth)
                .body(Body::empty())
                .unwrap();
            send(&router, wrong).await.assert_error(401, "UNAUTHORIZED");
        }
    }
    assert!(fake.created.lock().unwrap().is_empty());
    assert!(fake.workspaces_created.lock().unwrap().is_empty());
    assert!(fake.workspace_writes.lock().unwrap().is_empty());
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_key_is_not_accepted_in_the_url() {
    let (router, _) = app();
    for uri in [
        format!("/v1/sessions?api_key={KEY}"),
        format!("/v1/sessions?key={KEY}"),
        format!("/v1/sessions?access_token={KEY}"),
    ] {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        send(&router, req).await.assert_error(401, "UNAUTHORIZED");
    }
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let (router, _) = app();
    for uri in [
        "/nope",
        "/v1/session",
        "/v1/sessions/s1/fs/nope",
        "/v1/workspaces/w1/fs/list",
        "/v1/workspaces/w1/nope",
        "/healthz/x",
    ] {
        let v = get(&router, uri).await.assert_error(404, "NOT_FOUND");
        assert!(v["message"].as_str().unwrap().contains(uri), "{v}");
    }
}

#[tokio::test]
async fn wrong_methods_are_json_405() {
    let (router, _) = app();
    for (method, uri) in [
        (Method::PUT, "/v1/sessions"),
        (Method::POST, "/v1/sessions/s1"),
        (Method::GET, "/v1/sessions/s1/exec"),
        (Method::GET, "/v1/sessions/s1/fs/write"),
        (Method::DELETE, "/openapi.json"),
        (Method::PUT, "/v1/workspaces"),
        (Method::POST, "/v1/workspaces/w1"),
        (Method::POST, "/v1/workspaces/w1/fs"),
        (Method::POST, "/v1/workspaces/w1/fs/read"),
        (Method::GET, "/v1/workspaces/w1/fs/write"),
        (Method::GET, "/v1/workspaces/w1/fs/upload"),
    ] {
        let r = send(&router, request(method, uri).body(Body::empty()).unwrap()).await;
        r.assert_error(405, "METHOD_NOT_ALLOWED");
        assert!(r.headers.contains_key(header::ALLOW), "{uri}");
    }
    // /healthz is public, so its 405 needs no key either.
    let req = Request::post("/healthz").body(Body::empty()).unwrap();
    let r = send(&router, req).await;
    r.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.headers[header::ALLOW], "GET,HEAD");
    // Without the key a wrong method is 401, and says nothing of the
    // methods the path takes (session 15's attack: `allow: POST`).
    for (method, uri) in [
        (Method::DELETE, "/v1/sessions/s1/exec"),
        (Method::PUT, "/v1/sessions"),
        (Method::GET, "/v1/sessions/s1/fs/write"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let r = send(&router, req).await;
        r.assert_error(401, "UNAUTHORIZED");
        assert!(
            !r.headers.contains_key(header::ALLOW),
            "{uri}: {:?}",
            r.headers
        );
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_json_413() {
    let (router, fake) = app();
    let big = "x".repeat(LIMIT + 1);
    let r = post_json(
        &router,
        "/v1/sessions/s1/fs/write",
        json!({"path": "a", "text": big}),
    )
    .await;
    let v = r.assert_error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(v["details"]["max_bytes"], LIMIT);

    // The same without a Content-Length (a chunked body).
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(
        json!({"cmd": big}).to_string(),
    ))]);
    let req = request(Method::POST, "/v1/sessions/s1/exec")
        .body(Body::from_stream(stream))
        .unwrap();
    send(&router, req)
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");

    // Multipart uploads are read with the same limit.
    let form = multipart(&[Part::file("file", "big.bin", big.as_bytes())]);
    upload(&router, "s1", form.clone())
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");
    // So are the session-less workspace writes.
    upload_to(&router, "/v1/workspaces/w1/fs/upload", form)
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");
    post_json(
        &router,
        "/v1/workspaces/w1/fs/write",
        json!({"path": "a", "text": big}),
    )
    .await
    .assert_error(413, "PAYLOAD_TOO_LARGE");
    assert!(fake.writes.lock().unwrap().is_empty());
    assert!(fake.workspace_writes.lock().unwrap().is_empty());
    assert!(fake.execs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bodies_up_to_the_limit_pass() {
    let (router, fake) = app();
    let overhead = json!({"path": "a", "text": ""}).to_string().len();
    let text = "y".repeat(LIMIT - overhead);
    let r = post_json(
        &router,
        "/v1/sessions/s1/fs/write",
        json!({"path": "a", "text": text}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(fake.writes.lock().unwrap()[0].2.len(), text.len());
}

// ------------------------------------------------------------ sessions

#[tokio::test]
async fn create_returns_201_and_session_info() {
    let (router, fake) = app();
    let r = post_json(
        &router,
        "/v1/sessions",
        json!({"image": "base", "ttl_seconds": 600, "workspace_id": "user123-project456",
               "disk_limit_mb": 300, "future_field": {"x": 1}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.json(),
        json!({"id": "new", "image": "base", "status": "running", "cwd": "/workspace",
               "workspace_id": "user123-project456",
               "created_at": "2026-02-08T10:00:00Z", "expires_at": "2026-02-08T10:30:00Z",
               "acquire_source": "cold", "disk_limit_mb": null,
               "network": {"mode": "none", "allow_out": [], "deny_out": []},
               "metadata": {}, "on_timeout": "destroy", "idle_timeout_seconds": null})
    );
    let created = fake.created.lock().unwrap();
    assert_eq!(created[0].disk_limit_mb, Some(300));
    assert_eq!(created[0].image.as_deref(), Some("base"));
    assert_eq!(created[0].ttl_seconds, Some(600));
    assert_eq!(
        created[0].workspace_id.as_deref(),
        Some("user123-project456")
    );
}

#[tokio::test]
async fn create_passes_env_and_refuses_a_malformed_one() {
    let (router, fake) = app();
    let r = post_json(
        &router,
        "/v1/sessions",
        json!({"env": {"B": "2", "A": "it's"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        fake.created.lock().unwrap()[0].env,
        vec![("A".into(), "it's".into()), ("B".into(), "2".into())]
    );
    for bad in [json!({"env": ["A=1"]}), json!({"env": {"A": 1}})] {
        post_json(&router, "/v1/sessions", bad)
            .await
            .assert_error(400, "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn create_passes_the_network_policy_and_the_v1_mode() {
    let (router, fake) = app();
    let r = post_json(
        &router,
        "/v1/sessions",
        json!({"network": {"mode": "full", "allow_out": ["pypi.org", "203.0.113.0/24"]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = post_json(&router, "/v1/sessions", json!({"network_mode": "full"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    {
        let created = fake.created.lock().unwrap();
        let n = created[0].network.as_ref().unwrap();
        assert_eq!(n.mode, Some(sandkasten_engine::NetworkMode::Full));
        assert_eq!(n.allow_out, vec!["pypi.org", "203.0.113.0/24"]);
        assert!(n.deny_out.is_empty());
        assert_eq!(
            created[1].network_mode,
            Some(sandkasten_engine::NetworkMode::Full)
        );
    }
    for bad in [
        json!({"network": {"mode": "open"}}),
        json!({"network": {"allow_out": "pypi.org"}}),
        json!({"network_mode": "bridge"}),
    ] {
        post_json(&router, "/v1/sessions", bad)
            .await
            .assert_error(400, "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn put_network_answers_the_policy_in_force_or_400_naming_the_entry() {
    let (router, _) = app();
    let r = put_json(
        &router,
        "/v1/sessions/s1/network",
        json!({"mode": "full", "allow_out": ["*.GitHub.com", "2001:db8::/32"], "deny_out": ["203.0.113.9"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["network"],
        json!({"mode": "full", "allow_out": ["*.github.com", "2001:db8::/32"], "deny_out": ["203.0.113.9"]})
    );
    for (body, names) in [
        (
            json!({"mode": "full", "allow_out": ["a.*.example.com"]}),
            "a.*.example.com",
        ),
        (
            json!({"mode": "full", "allow_out": ["10.0.0.0/8"]}),
            "10.0.0.0/8",
        ),
        (
            json!({"mode": "full", "allow_out": ["169.254.169.254"]}),
            "169.254.169.254",
        ),
        (
            json!({"mode": "full", "deny_out": ["203.0.113.1/24"]}),
            "203.0.113.1/24",
        ),
    ] {
        let r = put_json(&router, "/v1/sessions/s1/network", body).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert!(
            r.json()["message"].as_str().unwrap().contains(names),
            "{}",
            r.json()
        );
    }
    put_json(
        &router,
        "/v1/sessions/missing/network",
        json!({"mode": "none"}),
    )
    .await
    .assert_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test]
async fn pool_reports_every_figure_per_image() {
    let (router, _) = app();
    let r = get(&router, "/v1/pool").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"images": {"base": {
            "target": 3, "idle": 2, "in_flight": 1, "hits": 7, "misses": 1,
            "discarded": 1, "recycled": 0, "refill_failures": 2,
            "last_error": "image \"x\" broke",
            "acquire_wait_p50_ms": 1.5, "acquire_wait_p95_ms": 2.5}}})
    );
}

#[tokio::test]
async fn network_events_list_the_refusals_with_their_time() {
    let (router, _) = app();
    let r = get(&router, "/v1/sessions/s1/network/events").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"events": [{
            "time": "2023-11-14T22:13:20.123Z",
            "destination": "evil.example",
            "name": "evil.example",
            "reason": "not in allow_out"
        }]})
    );
    let r = get(&router, "/v1/sessions/missing/network/events").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (router, _) = app();
    let r = get(&router, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for line in [
        "# TYPE sandkasten_pool_idle gauge",
        "sandkasten_pool_idle{image=\"base\"} 2",
        "sandkasten_pool_hits_total{image=\"base\"} 7",
        "sandkasten_pool_refill_failures_total{image=\"base\"} 2",
        "sandkasten_sessions{state=\"running\"} 4",
        "sandkasten_sessions_ended_total{state=\"expired\"} 1",
        "sandkasten_session_creates_total{source=\"pool\"} 7",
        "# TYPE sandkasten_exec_duration_seconds histogram",
        "sandkasten_exec_duration_seconds_bucket{le=\"0.01\"} 9",
        "sandkasten_exec_duration_seconds_bucket{le=\"+Inf\"} 10",
        "sandkasten_exec_duration_seconds_count 10",
        "sandkasten_pool_acquire_seconds_count 0",
        "# TYPE sandkasten_network_denials_total counter",
        "sandkasten_network_denials_total 2",
        "# TYPE sandkasten_cold_create_phase_seconds summary",
        "sandkasten_cold_create_phase_seconds_sum{phase=\"runtime: launcher: \\\"x\\\"\"} 0.5",
        "sandkasten_cold_create_phase_seconds_count{phase=\"runtime: launcher: \\\"x\\\"\"} 2",
        "# TYPE sandkasten_pool_create_phase_seconds summary",
        "sandkasten_pool_create_phase_seconds_sum{phase=\"pool: take\"} 0.25",
        "sandkasten_pool_create_phase_seconds_count{phase=\"pool: take\"} 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Every sample line is `name{labels} value` or `name value`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = l.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }
}

#[tokio::test]
async fn create_accepts_curl_style_and_empty_bodies() {
    let (router, fake) = app();
    // `curl -d '{...}'` labels JSON as a form.
    let req = request(Method::POST, "/v1/sessions")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(r#"{"image":"base"}"#))
        .unwrap();
    assert_eq!(send(&router, req).await.status, StatusCode::CREATED);
    // `curl -X POST` with no body at all.
    let req = request(Method::POST, "/v1/sessions")
        .body(Body::empty())
        .unwrap();
    let r = send(&router, req).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["workspace_id"], Value::Null);
    let created = fake.created.lock().unwrap();
    assert_eq!(created.len(), 2);
    assert_eq!(created[1].image, None);
    assert_eq!(created[1].ttl_seconds, None);
}

#[tokio::test]
async fn malformed_requests_are_json_400() {
    let (router, fake) = app();
    for body in [
        r#"{"image": 5}"#,
        r#"{"ttl_seconds": -1}"#,
        r#"{"ttl_seconds": "600"}"#,
        r#"{"image": "base""#,
        r#"["base"]"#,
        "not json",
    ] {
        let req = request(Method::POST, "/v1/sessions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        send(&router, req)
            .await
            .assert_error(400, "INVALID_REQUEST");
    }
    assert!(fake.created.lock().unwrap().is_empty());
}

#[tokio::test]
async fn engine_errors_reach_the_client_through_the_table() {
    let (router, _) = app();
    post_json(&router, "/v1/sessions", json!({"image": "nope"}))
        .await
        .assert_error(400, "INVALID_IMAGE");
    let v = get(&router, "/v1/sessions/missing")
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    assert_eq!(v["message"], "session missing not found");
    post_json(&router, "/v1/sessions/ended/exec", json!({"cmd": "ls"}))
        .await
        .assert_error(409, "SESSION_NOT_RUNNING");
    let r = get(&router, "/v1/sessions/broken").await;
    let v = r.assert_error(500, "INTERNAL_ERROR");
    assert_eq!(v["message"], "internal error");
    assert!(!r.text().contains("secret"), "{}", r.text());
}

#[tokio::test]
async fn list_get_delete_and_stats() {
    let (router, fake) = app();
    let r = get(&router, "/v1/sessions").await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 2, "a bare array: {list}");
    assert_eq!(list[1]["id"], "b");

    let r = get(&router, "/v1/sessions/s1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["id"], "s1");

    let r = send(
        &router,
        request(Method::DELETE, "/v1/sessions/s1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"ok": true}));
    assert_eq!(fake.calls.lock().unwrap().as_slice(), ["destroy s1"]);
    let r = send(
        &router,
        request(Method::DELETE, "/v1/sessions/missing")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    r.assert_error(404, "SESSION_NOT_FOUND");

    let r = get(&router, "/v1/sessions/s1/stats").await;
    assert_eq!(
        r.json(),
        json!({"memory_bytes": 1024, "memory_limit": 4096, "cpu_usage_usec": 77, "pids": 3})
    );
}

// ------------------------------------------------------------ exec

#[tokio::test]
async fn exec_returns_the_result() {
    let (router, fake) = app();
    let r = post_json(
        &router,
        "/v1/sessions/s1/exec",
        json!({"cmd": "python3 -c 'print(42)'", "timeout_ms": 30000, "raw_output": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"exit_code": 0, "cwd": "/tmp", "output": "42\n", "truncated": false,
               "duration_ms": 3, "timed_out": false})
    );
    let execs = fake.execs.lock().unwrap();
    assert_eq!(execs[0].cmd, "python3 -c 'print(42)'");
    assert_eq!(execs[0].timeout_ms, Some(30000));
    assert!(execs[0].raw_output);
}

#[tokio::test]
async fn exec_defaults_and_rejects_bad_commands() {
    let (router, fake) = app();
    let r = post_json(&router, "/v1/sessions/s1/exec", json!({"cmd": "ls"})).await;
    assert_eq!(r.status, StatusCode::OK);
    {
        let execs = fake.execs.lock().unwrap();
        assert_eq!(execs[0].timeout_ms, None);
        assert!(!execs[0].raw_output);
    }
    for body in [
        json!({"cmd": ""}),
        json!({}),
        json!({"cmd": null}),
        json!({"cmd": ["ls"]}),
        json!({"cmd": "ls", "timeout_ms": "fast"}),
        json!({"cmd": "ls", "raw_output": "yes"}),
    ] {
        for uri in ["/v1/sessions/s1/exec", "/v1/sessions/s1/exec/stream"] {
            post_json(&router, uri, body.clone())
                .await
                .assert_error(400, "INVALID_REQUEST");
        }
    }
    assert_eq!(fake.execs.lock().unwrap().len(), 1);
}

/// Splits an SSE body into (event, data) pairs and comments.
fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.into();
                } else if let Some(v) = line.strip_prefix(": ") {
                    event = format!(":{v}");
                } else {
                    panic!("unexpected SSE line {line:?} in {body:?}");
                }
            }
            (event, data)
        })
        .collect()
}

#[tokio::test]
async fn exec_stream_sends_chunks_then_done() {
    let (router, _) = app();
    let r = post_json(
        &router,
        "/v1/sessions/s1/exec/stream",
        json!({"cmd": "echo"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-cache");
    let body = r.text();
    assert!(
        body.starts_with("event: chunk\ndata: {"),
        "the SDK parses `event: ` and `data: ` lines: {body:?}"
    );
    let events = sse_events(&body);
    assert_eq!(events.len(), 3, "{body:?}");
    assert_eq!(events[0].0, "chunk");
    assert_eq!(
        serde_json::from_str::<Value>(&events[0].1).unwrap(),
        json!({"chunk": "1\n", "timestamp": 1_707_390_000_000_i64})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&events[1].1).unwrap()["chunk"],
        "2\n\"quoted\"\r\n"
    );
    assert_eq!(events[2].0, "done");
    assert_eq!(
        serde_json::from_str::<Value>(&events[2].1).unwrap(),
        json!({"exit_code": 0, "cwd": "/workspace", "duration_ms": 912,
               "timed_out": false, "truncated": false})
    );
}

#[tokio::test]
async fn exec_stream_ends_with_an_error_event() {
    let (router, _) = app();
    let r = post_json(
        &router,
        "/v1/sessions/s1/exec/stream",
        json!({"cmd": "fail"}),
    )
    .await;
    let events = sse_events(&r.text());
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, "error");
    assert_eq!(
        serde_json::from_str::<Value>(&events[1].1).unwrap(),
        json!({"error": "agent went away"})
    );

    // An engine stream that closes without a result still ends cleanly.
    let r = post_json(
        &router,
        "/v1/sessions/s1/exec/stream",
        json!({"cmd": "vanish"}),
    )
    .await;
    let events = sse_events(&r.text());
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, "error");
}

#[tokio::test]
async fn exec_stream_errors_before_start_are_plain_json() {
    let (router, _) = app();
    post_json(
        &router,
        "/v1/sessions/missing/exec/stream",
        json!({"cmd": "ls"}),
    )
    .await
    .assert_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test(start_paused = true)]
async fn exec_stream_keeps_a_silent_stream_alive_and_cancels_on_disconnect() {
    let (router, fake) = app();
    let req = request(Method::POST, "/v1/sessions/s1/exec/stream")
        .body(Body::from(r#"{"cmd": "hold"}"#))
        .unwrap();
    let response = router.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let sender = fake.held.lock().unwrap().take().unwrap();

    // Silence: a keep-alive comment arrives within 15 s (time is paused and
    // advances only while everything waits).
    let started = tokio::time::Instant::now();
    let frame = body.frame().await.unwrap().unwrap();
    let waited = started.elapsed();
    assert_eq!(frame.data_ref().unwrap().as_ref(), b": keep-alive\n\n");
    assert!(waited <= Duration::from_secs(15), "{waited:?}");

    // Output is sent as produced.
    sender
        .send(ExecEvent::Chunk {
            data: "tick".into(),
            timestamp_ms: 1,
        })
        .await
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(text.starts_with("event: chunk\n"), "{text:?}");

    // The client goes away: the engine's receiver is dropped.
    assert!(!sender.is_closed());
    drop(body);
    tokio::time::timeout(Duration::from_secs(1), sender.closed())
        .await
        .expect("dropping the response drops the exec stream");
}

// ------------------------------------------------------------ files

#[tokio::test]
async fn write_takes_text_or_base64() {
    let (router, fake) = app();
    for (body, path, data) in [
        (
            json!({"path": "hello.py", "text": "print(1)"}),
            "hello.py",
            b"print(1)".to_vec(),
        ),
        (
            json!({"path": "/tmp/data.bin", "content_base64": "AAEC/w=="}),
            "/tmp/data.bin",
            vec![0, 1, 2, 255],
        ),
        (json!({"path": "empty", "text": ""}), "empty", vec![]),
        (
            json!({"path": "empty64", "content_base64": ""}),
            "empty64",
            vec![],
        ),
        (
            json!({"path": "n", "text": "x", "content_base64": null}),
            "n",
            b"x".to_vec(),
        ),
    ] {
        let r = post_json(&router, "/v1/sessions/s1/fs/write", body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{body}: {}", r.text());
        assert_eq!(r.json(), json!({"ok": true}));
        let writes = fake.writes.lock().unwrap();
        let last = writes.last().unwrap();
        assert_eq!((last.1.as_str(), &last.2), (path, &data), "{body}");
    }
}

#[tokio::test]
async fn write_rejects_bad_requests() {
    let (router, fake) = app();
    for (body, code) in [
        (json!({"path": "a"}), "INVALID_REQUEST"),
        (
            json!({"path": "a", "text": "x", "content_base64": "eA=="}),
            "INVALID_REQUEST",
        ),
        (
            json!({"path": "a", "content_base64": "not base64!"}),
            "INVALID_REQUEST",
        ),
        (json!({"path": "a", "text": 5}), "INVALID_REQUEST"),
        (json!({"text": "x"}), "INVALID_REQUEST"),
        (json!({"path": "", "text": "x"}), "INVALID_PATH"),
        (json!({"path": "a\u{0}b", "text": "x"}), "INVALID_PATH"),
    ] {
        // The session-less workspace write shares the validation.
        for uri in ["/v1/sessions/s1/fs/write", "/v1/workspaces/w1/fs/write"] {
            post_json(&router, uri, body.clone())
                .await
                .assert_error(400, code);
        }
    }
    assert!(fake.writes.lock().unwrap().is_empty());
    assert!(fake.workspace_writes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn read_returns_base64() {
    let (router, fake) = app();
    let r = get(&router, "/v1/sessions/s1/fs/read?path=hello.py").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"path": "/workspace/hello.py", "content_base64": "AAEC/w==", "truncated": false})
    );
    get(
        &router,
        "/v1/sessions/s1/fs/read?path=%2Ftmp%2Fa%20b&max_bytes=2",
    )
    .await;
    get(&router, "/v1/sessions/s1/fs/read?path=c&max_bytes=0").await;
    assert_eq!(
        fake.reads.lock().unwrap().as_slice(),
        [
            ("hello.py".to_owned(), None),
            ("/tmp/a b".to_owned(), Some(2)),
            ("c".to_owned(), None),
        ]
    );
    get(&router, "/v1/sessions/s1/fs/read?path=gone")
        .await
        .assert_error(404, "FILE_NOT_FOUND");
    for uri in [
        "/v1/sessions/s1/fs/read",
        "/v1/sessions/s1/fs/read?path=a&max_bytes=-1",
        "/v1/sessions/s1/fs/read?path=a&max_bytes=lots",
    ] {
        get(&router, uri).await.assert_error(400, "INVALID_REQUEST");
    }
    get(&router, "/v1/sessions/s1/fs/read?path=")
        .await
        .assert_error(400, "INVALID_PATH");
}

/// One part of a multipart form.
struct Part<'a> {
    name: &'a str,
    filename: Option<&'a str>,
    data: &'a [u8],
}

impl<'a> Part<'a> {
    fn file(name: &'a str, filename: &'a str, data: &'a [u8]) -> Self {
        Part {
            name,
            filename: Some(filename),
            data,
        }
    }
    fn text(name: &'a str, data: &'a str) -> Self {
        Part {
            name,
            filename: None,
            data: data.as_bytes(),
        }
    }
}

const BOUNDARY: &str = "----sandkasten-test-boundary";

fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match p.filename {
            Some(f) => format!(
                "Content-Disposition: form-data; name=\"{}\"; filename=\"{f}\"\r\n\
                 Content-Type: application/octet-stream\r\n",
                p.name
            ),
            None => format!("Content-Disposition: form-data; name=\"{}\"\r\n", p.name),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(p.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload(router: &Router, id: &str, form: Vec<u8>) -> Reply {
    upload_to(router, &format!("/v1/sessions/{id}/fs/upload"), form).await
}

async fn upload_to(router: &Router, uri: &str, form: Vec<u8>) -> Reply {
    let req = request(Method::POST, uri)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(form))
        .unwrap();
    send(router, req).await
}

#[tokio::test]
async fn upload_writes_each_file_into_the_directory() {
    let (router, fake) = app();
    let binary = [0u8, 13, 10, 255, 0];
    // Files first, directory after them.
    let form = multipart(&[
        Part::file("file", "a.txt", b"alpha"),
        Part::file("files", "b.bin", &binary),
        Part::text("other", "ignored"),
        Part::text("path", "/workspace/data/"),
    ]);
    let r = upload(&router, "s1", form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ok": true, "paths": ["/workspace/data/a.txt", "/workspace/data/b.bin"]})
    );
    {
        let writes = fake.writes.lock().unwrap();
        assert_eq!(writes[0].1, "/workspace/data/a.txt");
        assert_eq!(writes[0].2, b"alpha");
        assert_eq!(writes[1].2, binary);
    }

    // No directory: /workspace. An empty file is fine.
    let r = upload(&router, "s1", multipart(&[Part::file("file", "e", b"")])).await;
    assert_eq!(r.json(), json!({"ok": true, "paths": ["/workspace/e"]}));
    // An empty directory part also means /workspace.
    let form = multipart(&[Part::text("path", ""), Part::file("file", "f", b"1")]);
    let r = upload(&router, "s1", form).await;
    assert_eq!(r.json()["paths"], json!(["/workspace/f"]));
}

#[tokio::test]
async fn upload_rejects_bad_filenames_and_forms() {
    let (router, fake) = app();
    // The session-less workspace upload shares the validation.
    for uri in ["/v1/sessions/s1/fs/upload", "/v1/workspaces/w1/fs/upload"] {
        for name in ["../evil", "a/b", "..", ".", "/etc/passwd"] {
            let form = multipart(&[
                Part::file("file", "ok.txt", b"1"),
                Part::file("file", name, b"x"),
            ]);
            upload_to(&router, uri, form)
                .await
                .assert_error(400, "INVALID_PATH");
        }
        // Nothing is written when any filename is bad.
        assert!(fake.writes.lock().unwrap().is_empty());
        assert!(fake.workspace_writes.lock().unwrap().is_empty());

        let no_file = multipart(&[Part::text("path", "/workspace")]);
        upload_to(&router, uri, no_file)
            .await
            .assert_error(400, "INVALID_REQUEST");
        let no_filename = multipart(&[Part::text("file", "content")]);
        upload_to(&router, uri, no_filename)
            .await
            .assert_error(400, "INVALID_REQUEST");
        let two_dirs = multipart(&[
            Part::text("path", "/a"),
            Part::text("path", "/b"),
            Part::file("file", "x", b"1"),
        ]);
        upload_to(&router, uri, two_dirs)
            .await
            .assert_error(400, "INVALID_REQUEST");
        // Not multipart at all.
        post_json(&router, uri, json!({"file": "x"}))
            .await
            .assert_error(400, "INVALID_REQUEST");
    }
    // A missing session.
    upload(
        &router,
        "missing",
        multipart(&[Part::file("file", "x", b"1")]),
    )
    .await
    .assert_error(404, "SESSION_NOT_FOUND");
    assert!(fake.writes.lock().unwrap().is_empty());
    assert!(fake.workspace_writes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn list_stat_mkdir_remove() {
    let (router, fake) = app();
    let r = get(&router, "/v1/sessions/s1/fs/list?path=src").await;
    assert_eq!(
        r.json(),
        json!({"path": "src", "entries": [
            {"name": "a.txt", "type": "file", "size": 5, "mode": 0o644, "mtime": 1_700_000_000}
        ]})
    );
    let r = get(&router, "/v1/sessions/s1/fs/list").await;
    assert_eq!(r.json()["path"], "/workspace");

    let r = get(&router, "/v1/sessions/s1/fs/stat?path=link").await;
    assert_eq!(
        r.json(),
        json!({"path": "/workspace/link", "type": "symlink", "size": 3, "mode": 0o777,
               "uid": 1000, "gid": 1000, "mtime": 1_700_000_001, "link_target": "/etc"})
    );
    get(&router, "/v1/sessions/s1/fs/stat")
        .await
        .assert_error(400, "INVALID_REQUEST");

    let r = post_json(&router, "/v1/sessions/s1/fs/mkdir", json!({"path": "a/b"})).await;
    assert_eq!(r.json(), json!({"ok": true, "path": "/workspace/a/b"}));
    post_json(
        &router,
        "/v1/sessions/s1/fs/mkdir",
        json!({"path": "c", "parents": false}),
    )
    .await;

    let r = post_json(&router, "/v1/sessions/s1/fs/remove", json!({"path": "a"})).await;
    assert_eq!(r.json(), json!({"ok": true}));
    post_json(
        &router,
        "/v1/sessions/s1/fs/remove",
        json!({"path": "c", "recursive": true}),
    )
    .await;
    post_json(
        &router,
        "/v1/sessions/s1/fs/remove",
        json!({"path": "c", "recursive": 1}),
    )
    .await
    .assert_error(400, "INVALID_REQUEST");
    let r = post_json(
        &router,
        "/v1/sessions/s1/fs/move",
        json!({"from": "x", "to": "d/y"}),
    )
    .await;
    assert_eq!(r.json(), json!({"ok": true, "path": "/workspace/d/y"}));
    post_json(&router, "/v1/sessions/s1/fs/move", json!({"from": "x"}))
        .await
        .assert_error(400, "INVALID_REQUEST");

    assert_eq!(
        fake.calls.lock().unwrap().as_slice(),
        [
            "list src",
            "list /workspace",
            "mkdir a/b true",
            "mkdir c false",
            "remove a false",
            "remove c true",
            "rename x d/y",
        ]
    );
}

// ------------------------------------------------------------ workspaces

async fn delete(router: &Router, uri: &str) -> Reply {
    send(
        router,
        request(Method::DELETE, uri).body(Body::empty()).unwrap(),
    )
    .await
}

/// `{"id": "w", "labels": labels}`.
fn with_labels<const N: usize>(labels: [(String, String); N]) -> Value {
    json!({"id": "w", "labels": BTreeMap::from(labels)})
}

#[tokio::test]
async fn list_workspaces_wraps_them_in_an_object() {
    let (router, _) = app();
    let r = get(&router, "/v1/workspaces").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"workspaces": [
            {"id": "a", "created_at": "2026-02-08T10:00:00.5Z",
             "last_used_at": "2026-02-08T10:00:00Z", "size_bytes": 1234,
             "quota_bytes": null, "in_use": false, "labels": {}},
            {"id": "busy", "created_at": "2026-02-08T10:00:00.5Z",
             "last_used_at": "2026-02-08T10:00:00Z", "size_bytes": 1234,
             "quota_bytes": null, "in_use": true, "labels": {}},
        ]})
    );
}

#[tokio::test]
async fn create_workspace_returns_201_and_the_workspace() {
    let (router, fake) = app();
    let r = post_json(
        &router,
        "/v1/workspaces",
        json!({"id": "ws-1", "quota_mb": 2, "labels": {"team": "ml", "app.io/tier": "dev"},
               "future_field": 1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"id": "ws-1", "created_at": "2026-02-08T10:00:00.5Z", "last_used_at": null,
               "size_bytes": 0, "quota_bytes": 2 * 1024 * 1024, "in_use": false,
               "labels": {"app.io/tier": "dev", "team": "ml"}})
    );
    // `curl -d` labels JSON as a form; quota in bytes, no labels.
    let req = request(Method::POST, "/v1/workspaces")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(r#"{"id":"ws-2","quota_bytes":1000}"#))
        .unwrap();
    let r = send(&router, req).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["quota_bytes"], 1000);
    assert_eq!(r.json()["labels"], json!({}));
    // Neither quota, labels null.
    let r = post_json(
        &router,
        "/v1/workspaces",
        json!({"id": "ws-3", "quota_bytes": null, "labels": null}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let created = fake.workspaces_created.lock().unwrap();
    let seen: Vec<_> = created
        .iter()
        .map(|c| (c.id.as_str(), c.quota_bytes, c.labels.len()))
        .collect();
    assert_eq!(
        seen,
        [
            ("ws-1", Some(2 * 1024 * 1024), 2),
            ("ws-2", Some(1000), 0),
            ("ws-3", None, 0),
        ]
    );
    assert_eq!(created[0].labels["app.io/tier"], "dev");
}

#[tokio::test]
async fn create_workspace_rejects_bad_ids_quotas_and_labels() {
    let (router, fake) = app();
    let too_many: [(String, String); 65] =
        std::array::from_fn(|i| (format!("k{i}"), String::new()));
    for (body, code) in [
        (json!({}), "INVALID_REQUEST"),
        (json!({"id": null}), "INVALID_REQUEST"),
        (json!({"id": 5}), "INVALID_REQUEST"),
        (json!({"id": ""}), "INVALID_WORKSPACE"),
        (json!({"id": ".hidden"}), "INVALID_WORKSPACE"),
        (json!({"id": "-x"}), "INVALID_WORKSPACE"),
        (json!({"id": "a/b"}), "INVALID_WORKSPACE"),
        (json!({"id": "../etc"}), "INVALID_WORKSPACE"),
        (json!({"id": "a b"}), "INVALID_WORKSPACE"),
        (json!({"id": "x".repeat(65)}), "INVALID_WORKSPACE"),
        (
            json!({"id": "w", "quota_bytes": 1, "quota_mb": 1}),
            "INVALID_REQUEST",
        ),
        (json!({"id": "w", "quota_bytes": 0}), "INVALID_REQUEST"),
        (json!({"id": "w", "quota_mb": 0}), "INVALID_REQUEST"),
        (json!({"id": "w", "quota_bytes": -1}), "INVALID_REQUEST"),
        (json!({"id": "w", "quota_mb": 1.5}), "INVALID_REQUEST"),
        (json!({"id": "w", "quota_mb": "1"}), "INVALID_REQUEST"),
        // 2^44 MiB is 2^64 bytes: one more than u64 holds.
        (
            json!({"id": "w", "quota_mb": 1_u64 << 44}),
            "INVALID_REQUEST",
        ),
        (json!({"id": "w", "labels": ["a"]}), "INVALID_REQUEST"),
        (json!({"id": "w", "labels": {"a": 1}}), "INVALID_REQUEST"),
        (with_labels(too_many), "INVALID_REQUEST"),
        (
            with_labels([(String::new(), "v".into())]),
            "INVALID_REQUEST",
        ),
        (
            with_labels([("k".repeat(64), "v".into())]),
            "INVALID_REQUEST",
        ),
        (with_labels([("a b".into(), "v".into())]), "INVALID_REQUEST"),
        (
            with_labels([("k".into(), "v".repeat(257))]),
            "INVALID_REQUEST",
        ),
    ] {
        post_json(&router, "/v1/workspaces", body.clone())
            .await
            .assert_error(400, code);
    }
    assert!(fake.workspaces_created.lock().unwrap().is_empty());

    // The limits themselves pass; values count characters, not bytes.
    let most: [(String, String); 64] = std::array::from_fn(|i| (format!("k{i}"), "v".into()));
    let r = post_json(&router, "/v1/workspaces", with_labels(most)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = post_json(
        &router,
        "/v1/workspaces",
        json!({"id": "x".repeat(64), "labels": {"k".repeat(63): "ü".repeat(256)}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(fake.workspaces_created.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn get_and_delete_a_workspace() {
    let (router, fake) = app();
    let r = get(&router, "/v1/workspaces/ws-1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"id": "ws-1", "created_at": "2026-02-08T10:00:00.5Z",
               "last_used_at": "2026-02-08T10:00:00Z", "size_bytes": 1234,
               "quota_bytes": null, "in_use": false, "labels": {}})
    );
    let r = delete(&router, "/v1/workspaces/ws-1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"ok": true}));
    assert_eq!(
        fake.calls.lock().unwrap().as_slice(),
        ["delete workspace ws-1"]
    );
}

#[tokio::test]
async fn workspace_errors_reach_the_client_through_the_table() {
    let (router, fake) = app();
    let v = get(&router, "/v1/workspaces/missing")
        .await
        .assert_error(404, "WORKSPACE_NOT_FOUND");
    assert_eq!(v["message"], "workspace missing not found");
    assert_eq!(v["details"], json!({"workspace_id": "missing"}));
    delete(&router, "/v1/workspaces/missing")
        .await
        .assert_error(404, "WORKSPACE_NOT_FOUND");
    let v = delete(&router, "/v1/workspaces/busy")
        .await
        .assert_error(409, "WORKSPACE_IN_USE");
    assert_eq!(
        v["details"],
        json!({"workspace_id": "busy", "session_id": "s1"})
    );
    post_json(&router, "/v1/workspaces", json!({"id": "taken"}))
        .await
        .assert_error(409, "ALREADY_EXISTS");

    // The session-less file routes name the workspace, not a session.
    get(&router, "/v1/workspaces/missing/fs")
        .await
        .assert_error(404, "WORKSPACE_NOT_FOUND");
    get(&router, "/v1/workspaces/missing/fs/read?path=a")
        .await
        .assert_error(404, "WORKSPACE_NOT_FOUND");
    post_json(
        &router,
        "/v1/workspaces/missing/fs/write",
        json!({"path": "a", "text": "x"}),
    )
    .await
    .assert_error(404, "WORKSPACE_NOT_FOUND");
    let form = multipart(&[Part::file("file", "a", b"1")]);
    upload_to(&router, "/v1/workspaces/missing/fs/upload", form)
        .await
        .assert_error(404, "WORKSPACE_NOT_FOUND");
    get(&router, "/v1/workspaces/w1/fs/read?path=gone")
        .await
        .assert_error(404, "FILE_NOT_FOUND");
    assert!(fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .all(|c| !c.contains("missing")));
}

#[tokio::test]
async fn every_workspace_route_passes_workspace_disabled_through() {
    let (router, fake) = app();
    fake.workspaces_disabled.store(true, Ordering::Relaxed);
    let form = || multipart(&[Part::file("file", "a", b"1")]);
    let replies = [
        get(&router, "/v1/workspaces").await,
        post_json(&router, "/v1/workspaces", json!({"id": "w1"})).await,
        get(&router, "/v1/workspaces/w1").await,
        delete(&router, "/v1/workspaces/w1").await,
        get(&router, "/v1/workspaces/w1/fs").await,
        get(&router, "/v1/workspaces/w1/fs/read?path=a").await,
        post_json(
            &router,
            "/v1/workspaces/w1/fs/write",
            json!({"path": "a", "text": "x"}),
        )
        .await,
        upload_to(&router, "/v1/workspaces/w1/fs/upload", form()).await,
    ];
    for r in replies {
        r.assert_error(409, "WORKSPACE_DISABLED");
    }
    assert!(fake.workspaces_created.lock().unwrap().is_empty());
    assert!(fake.workspace_writes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bad_workspace_ids_in_the_path_are_400() {
    let (router, fake) = app();
    let too_long = "x".repeat(65);
    // Percent-decoding must not smuggle a `/` into the id.
    for id in [
        ".hidden",
        "..",
        "-x",
        "a%2Fb",
        "..%2F..%2Fetc",
        "a%20b",
        "%C3%BC",
        "a%00",
        &too_long,
    ] {
        let base = format!("/v1/workspaces/{id}");
        let replies = [
            get(&router, &base).await,
            delete(&router, &base).await,
            get(&router, &format!("{base}/fs")).await,
            get(&router, &format!("{base}/fs/read?path=a")).await,
            post_json(
                &router,
                &format!("{base}/fs/write"),
                json!({"path": "a", "text": "x"}),
            )
            .await,
            upload_to(
                &router,
                &format!("{base}/fs/upload"),
                multipart(&[Part::file("file", "a", b"1")]),
            )
            .await,
        ];
        for r in replies {
            let v = r.assert_error(400, "INVALID_WORKSPACE");
            assert!(
                v["message"].as_str().unwrap().contains("workspace id"),
                "{v}"
            );
        }
    }
    assert!(fake.calls.lock().unwrap().is_empty());
    assert!(fake.workspace_writes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn workspace_files_without_a_session() {
    let (router, fake) = app();
    // Write: text and base64, into the workspace, not a session.
    for (body, path, data) in [
        (
            json!({"path": "notes/a.md", "text": "hi"}),
            "notes/a.md",
            b"hi".to_vec(),
        ),
        (
            json!({"path": "/workspace/b.bin", "content_base64": "AAEC/w"}),
            "/workspace/b.bin",
            vec![0, 1, 2, 255],
        ),
        (json!({"path": "empty", "text": ""}), "empty", vec![]),
    ] {
        let r = post_json(&router, "/v1/workspaces/w1/fs/write", body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{body}: {}", r.text());
        assert_eq!(r.json(), json!({"ok": true}));
        let writes = fake.workspace_writes.lock().unwrap();
        let last = writes.last().unwrap();
        assert_eq!(
            (last.0.as_str(), last.1.as_str(), &last.2),
            ("w1", path, &data),
            "{body}"
        );
    }

    // Read: the session route's shape.
    let r = get(
        &router,
        "/v1/workspaces/w1/fs/read?path=notes%2Fa.md&max_bytes=2",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"path": "/workspace/notes/a.md", "content_base64": "d3P/", "truncated": true})
    );
    let r = get(&router, "/v1/workspaces/w1/fs/read?path=x&max_bytes=0").await;
    assert_eq!(r.json()["truncated"], false);
    get(&router, "/v1/workspaces/w1/fs/read")
        .await
        .assert_error(400, "INVALID_REQUEST");
    get(&router, "/v1/workspaces/w1/fs/read?path=a&max_bytes=-1")
        .await
        .assert_error(400, "INVALID_REQUEST");
    get(&router, "/v1/workspaces/w1/fs/read?path=")
        .await
        .assert_error(400, "INVALID_PATH");

    // List: the workspace root by default, else the directory as asked.
    let r = get(&router, "/v1/workspaces/w1/fs").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"path": "/workspace", "entries": [
            {"name": "notes", "type": "dir", "size": 4096, "mode": 0o755, "mtime": 1_700_000_002}
        ]})
    );
    let r = get(&router, "/v1/workspaces/w1/fs?path=notes").await;
    assert_eq!(r.json()["path"], "notes");
    get(&router, "/v1/workspaces/w1/fs?path=")
        .await
        .assert_error(400, "INVALID_PATH");

    assert_eq!(
        fake.calls.lock().unwrap().as_slice(),
        [
            "read workspace w1 notes/a.md Some(2)",
            "read workspace w1 x None",
            "list workspace w1 /workspace",
            "list workspace w1 notes",
        ]
    );
    assert!(fake.writes.lock().unwrap().is_empty());
    assert!(fake.reads.lock().unwrap().is_empty());
}

#[tokio::test]
async fn workspace_upload_writes_each_file_into_the_directory() {
    let (router, fake) = app();
    let binary = [0u8, 13, 10, 255, 0];
    let form = multipart(&[
        Part::file("file", "a.txt", b"alpha"),
        Part::file("files", "b.bin", &binary),
        Part::text("path", "data/"),
    ]);
    let r = upload_to(&router, "/v1/workspaces/w1/fs/upload", form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ok": true, "paths": ["/workspace/data/a.txt", "/workspace/data/b.bin"]})
    );
    // No directory: the workspace root.
    let form = multipart(&[Part::file("file", "e", b"")]);
    let r = upload_to(&router, "/v1/workspaces/w1/fs/upload", form).await;
    assert_eq!(r.json(), json!({"ok": true, "paths": ["/workspace/e"]}));

    let writes = fake.workspace_writes.lock().unwrap();
    let seen: Vec<_> = writes
        .iter()
        .map(|(id, path, data)| (id.as_str(), path.as_str(), data.as_slice()))
        .collect();
    assert_eq!(
        seen,
        [
            ("w1", "data/a.txt", b"alpha".as_slice()),
            ("w1", "data/b.bin", binary.as_slice()),
            ("w1", "/workspace/e", b"".as_slice()),
        ]
    );
    assert!(fake.writes.lock().unwrap().is_empty());
}

// ------------------------------------------------------------ OpenAPI

/// Every route of the contract and of the documented extensions.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/openapi.json"),
    ("get", "/v1/pool"),
    ("get", "/metrics"),
    ("post", "/v1/sessions"),
    ("get", "/v1/sessions"),
    ("get", "/v1/sessions/{id}"),
    ("delete", "/v1/sessions/{id}"),
    ("get", "/v1/sessions/{id}/stats"),
    ("post", "/v1/sessions/{id}/pause"),
    ("post", "/v1/sessions/{id}/resume"),
    ("post", "/v1/sessions/{id}/hibernate"),
    ("post", "/v1/sessions/{id}/snapshots"),
    ("post", "/v1/sessions/{id}/fork"),
    ("get", "/v1/snapshots"),
    ("get", "/v1/snapshots/{snap}"),
    ("delete", "/v1/snapshots/{snap}"),
    ("post", "/v1/sessions/{id}/exec"),
    ("post", "/v1/sessions/{id}/exec/stream"),
    ("post", "/v1/sessions/{id}/processes"),
    ("get", "/v1/sessions/{id}/processes"),
    ("post", "/v1/sessions/{id}/processes/stream"),
    ("get", "/v1/sessions/{id}/processes/{proc}"),
    ("get", "/v1/sessions/{id}/processes/{proc}/stream"),
    ("post", "/v1/sessions/{id}/processes/{proc}/stdin"),
    ("delete", "/v1/sessions/{id}/processes/{proc}/stdin"),
    ("post", "/v1/sessions/{id}/processes/{proc}/signal"),
    ("post", "/v1/sessions/{id}/processes/{proc}/resize"),
    ("get", "/v1/sessions/{id}/pty"),
    ("post", "/v1/sessions/{id}/fs/write"),
    ("get", "/v1/sessions/{id}/fs/read"),
    ("post", "/v1/sessions/{id}/fs/upload"),
    ("get", "/v1/sessions/{id}/fs/list"),
    ("get", "/v1/sessions/{id}/fs/stat"),
    ("post", "/v1/sessions/{id}/fs/mkdir"),
    ("post", "/v1/sessions/{id}/fs/remove"),
    ("post", "/v1/sessions/{id}/fs/move"),
    ("get", "/v1/workspaces"),
    ("post", "/v1/workspaces"),
    ("get", "/v1/workspaces/{id}"),
    ("delete", "/v1/workspaces/{id}"),
    ("get", "/v1/workspaces/{id}/fs"),
    ("get", "/v1/workspaces/{id}/fs/read"),
    ("post", "/v1/workspaces/{id}/fs/write"),
    ("post", "/v1/workspaces/{id}/fs/upload"),
    ("post", "/v1/workspaces/{id}/snapshots"),
    ("get", "/v1/workspaces/{id}/snapshots"),
    ("delete", "/v1/workspaces/{id}/snapshots/{snap}"),
    ("post", "/v1/workspaces/{id}/snapshots/{snap}/restore"),
    ("get", "/v1/workspaces/{id}/export"),
    ("put", "/v1/workspaces/{id}/import"),
    ("post", "/v1/sessions/{id}/ports/{port}/url"),
    ("get", "/v1/sessions/{id}/ports/{port}/{path}"),
    ("put", "/v1/sessions/{id}/network"),
    ("get", "/v1/sessions/{id}/network/events"),
    ("post", "/mcp"),
    ("get", "/mcp"),
    ("delete", "/mcp"),
];

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.insert((method.clone(), path.clone()));
        }
    }
    found
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let (router, _) = app();
    let r = get(&router, "/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented_routes(&doc), expected);

    // Authentication is documented: required globally, waived for /healthz.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([{}]));
    assert!(doc["paths"]["/v1/sessions"]["post"]["responses"]["401"].is_object());
    for schema in [
        "SessionInfo",
        "ExecResult",
        "ErrorBody",
        "ExecDoneEvent",
        "FileStat",
        "WorkspaceInfo",
        "WorkspaceList",
        "CreateWorkspaceRequest",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let (router, _) = app();
    let doc = serde_json::to_value(openapi()).unwrap();
    for (method, path) in documented_routes(&doc) {
        let uri = path.replace("{id}", "missing");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = send(
            &router,
            request(method.clone(), &uri).body(Body::empty()).unwrap(),
        )
        .await;
        assert!(
            r.status != StatusCode::NOT_FOUND || r.json()["error_code"] != "NOT_FOUND",
            "{method} {uri} is documented but not routed"
        );
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
    }
}

/// What the extractors answer for themselves is declared on every route
/// (scripts/fuzz-api checks every answer against the document): 400 where
/// a route has parameters or a body, 413 where it has a body.
#[test]
fn openapi_declares_what_the_extractors_answer() {
    let doc = serde_json::to_value(openapi()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            let params = op["parameters"].as_array().is_some_and(|p| !p.is_empty());
            let body = op.get("requestBody").is_some();
            if params || body {
                assert!(responses["400"].is_object(), "{method} {path}: no 400");
            }
            if body {
                assert!(responses["413"].is_object(), "{method} {path}: no 413");
            }
            if path != "/healthz" {
                assert!(responses["401"].is_object(), "{method} {path}: no 401");
            }
        }
    }
    let responses = &doc["components"]["responses"];
    assert!(responses["BadRequest"]["content"]["application/json"].is_object());
    assert!(responses["PayloadTooLarge"]["content"]["application/json"].is_object());
}

/// The document describes what the routes really send and take: one SSE
/// event per item of the exec stream, tar archives as binary strings, and
/// the id rules as patterns (so a fuzzer's ids reach the engine).
#[test]
fn openapi_schemas_match_the_wire() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let paths = &doc["paths"];
    let sse = &paths["/v1/sessions/{id}/exec/stream"]["post"]["responses"]["200"]["content"]
        ["text/event-stream"]["schema"];
    let event = &doc["components"]["schemas"]["ExecStreamEvent"];
    assert_eq!(sse["$ref"], "#/components/schemas/ExecStreamEvent", "{sse}");
    let names: Vec<&Value> = event["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["properties"]["event"]["enum"][0])
        .collect();
    assert_eq!(names, [&json!("chunk"), &json!("done"), &json!("error")]);
    for e in event["oneOf"].as_array().unwrap() {
        assert_eq!(e["properties"]["data"]["type"], "string", "{e}");
        assert_eq!(e["required"], json!(["event", "data"]), "{e}");
    }

    let tar = &doc["components"]["schemas"]["TarArchive"];
    assert_eq!(
        (&tar["type"], &tar["format"]),
        (&json!("string"), &json!("binary"))
    );
    let import = &paths["/v1/workspaces/{id}/import"]["put"]["requestBody"]["content"];
    for media_type in ["application/x-tar", "application/octet-stream"] {
        assert_eq!(
            import[media_type]["schema"]["$ref"], "#/components/schemas/TarArchive",
            "{import}"
        );
    }
    let export = &paths["/v1/workspaces/{id}/export"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        export["application/x-tar"]["schema"]["$ref"],
        "#/components/schemas/TarArchive"
    );

    // Every workspace and snapshot id in a path carries its pattern.
    let mut seen = 0;
    for (path, item) in paths.as_object().unwrap() {
        for op in item.as_object().unwrap().values() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let pattern = &p["schema"]["pattern"];
                match (path.starts_with("/v1/workspaces/"), p["name"].as_str()) {
                    (true, Some("id")) => {
                        assert_eq!(pattern, "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", "{path}");
                        seen += 1;
                    }
                    (true, Some("snap")) => {
                        assert_eq!(pattern, "^snap-[0-9A-Fa-f]{1,59}$", "{path}")
                    }
                    _ => {}
                }
            }
        }
    }
    let workspace_ops: usize = paths
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/v1/workspaces/{id}"))
        .map(|(_, item)| item.as_object().unwrap().len())
        .sum();
    assert_eq!(seen, workspace_ops);
    assert!(seen >= 12, "{seen}");
}

/// A path segment that is not UTF-8 once percent-decoded is the contract's
/// JSON 400, on every route (the snapshot routes answered axum's plain
/// text until the fuzz step found them).
#[tokio::test]
async fn undecodable_path_segments_are_json_400() {
    let (router, _) = app();
    for (method, uri) in [
        (Method::GET, "/v1/sessions/%FF"),
        (Method::GET, "/v1/workspaces/%FF"),
        (Method::DELETE, "/v1/workspaces/w1/snapshots/%FF"),
        (Method::POST, "/v1/workspaces/w1/snapshots/%C3/restore"),
    ] {
        let r = send(
            &router,
            request(method.clone(), uri).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(
            r.headers[header::CONTENT_TYPE],
            "application/json",
            "{method} {uri}"
        );
        r.assert_error(400, "INVALID_REQUEST");
    }
}

// ------------------------------------------------------------ export, import

#[tokio::test]
async fn import_bodies_over_the_limit_are_413_and_ids_are_checked() {
    let (router, _) = app();
    // A chunked body: the limit is counted while spooling.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..3)
        .map(|_| Ok(Bytes::from(vec![0u8; LIMIT / 2])))
        .collect();
    let req = request(Method::PUT, "/v1/workspaces/w1/import")
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let v = send(&router, req)
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(v["details"]["max_bytes"], LIMIT);
    let req = request(Method::PUT, "/v1/workspaces/.bad/import")
        .body(Body::from("x"))
        .unwrap();
    send(&router, req)
        .await
        .assert_error(400, "INVALID_WORKSPACE");
    get(&router, "/v1/workspaces/.bad/export")
        .await
        .assert_error(400, "INVALID_WORKSPACE");
    // No spooled upload is left behind.
    let left = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("import-w1-{}-", std::process::id()))
        })
        .count();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn from_snapshot_is_validated() {
    let (router, _) = app();
    for (body, code) in [
        (
            json!({"id": "w", "from_snapshot": {"workspace_id": ".x", "snapshot_id": "snap-00"}}),
            "INVALID_WORKSPACE",
        ),
        (
            json!({"id": "w", "from_snapshot": {"workspace_id": "src", "snapshot_id": "../x"}}),
            "INVALID_REQUEST",
        ),
        (
            json!({"id": "w", "from_snapshot": "snap-00"}),
            "INVALID_REQUEST",
        ),
    ] {
        post_json(&router, "/v1/workspaces", body.clone())
            .await
            .assert_error(400, code);
    }
}

// ------------------------------------------------------------------ MCP

/// A stateless MCP request of the 2026-07-28 revision (no session).
async fn mcp(router: &Router, method: &str, params: Value, key: bool) -> Reply {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::HOST, "127.0.0.1")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        req = req.header("mcp-name", name);
    }
    if key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {KEY}"));
    }
    send(router, req.body(Body::from(body.to_string())).unwrap()).await
}

#[tokio::test]
async fn an_mcp_session_ends_with_200_on_delete() {
    let (router, _) = app();
    // A client of a revision with a handshake gets a session...
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let r = send(
        &router,
        Request::builder()
            .method(Method::POST)
            .uri("/mcp")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sid = r.headers["mcp-session-id"].to_str().unwrap().to_string();
    // ...and ends it with DELETE: 200, as the reference servers answer
    // (Python's `mcp` 1.x client logs anything but 200 or 204 as a failure).
    let r = send(
        &router,
        Request::builder()
            .method(Method::DELETE)
            .uri("/mcp")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn mcp_needs_the_key() {
    let (router, _) = app();
    let r = mcp(&router, "tools/list", json!({}), false).await;
    r.assert_error(401, "UNAUTHORIZED");
}

#[tokio::test]
async fn mcp_lists_tools_with_object_input_and_output_schemas() {
    let (router, _) = app();
    let r = mcp(&router, "tools/list", json!({}), true).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let tools = v["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 23, "{v}");
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{t}");
    }
    let run = tools.iter().find(|t| t["name"] == "run_command").unwrap();
    assert_eq!(run["inputSchema"]["required"], json!(["session_id", "cmd"]));
}

#[tokio::test]
async fn mcp_tool_failures_are_tool_results_and_unknown_tools_protocol_errors() {
    let (router, _) = app();
    let call = |name: &str, args: Value| json!({"name": name, "arguments": args});
    // A wrong argument type: a tool error naming the argument.
    let r = mcp(
        &router,
        "tools/call",
        call("run_command", json!({"session_id": "a", "cmd": 5})),
        true,
    )
    .await;
    let v = r.json();
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert_eq!(
        v["result"]["structuredContent"]["error_code"],
        "INVALID_REQUEST"
    );
    // The engine's error, through the one table.
    let r = mcp(
        &router,
        "tools/call",
        call("destroy_sandbox", json!({"session_id": "missing"})),
        true,
    )
    .await;
    let v = r.json();
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert_eq!(
        v["result"]["structuredContent"]["error_code"],
        "SESSION_NOT_FOUND"
    );
    // A result: the HTTP API's JSON as structured content.
    let r = mcp(
        &router,
        "tools/call",
        call("list_sandboxes", json!({})),
        true,
    )
    .await;
    let v = r.json();
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert_eq!(v["result"]["structuredContent"]["sandboxes"][1]["id"], "b");
    // An unknown tool is not a tool result.
    let r = mcp(&router, "tools/call", call("no_such_tool", json!({})), true).await;
    assert_eq!(r.json()["error"]["code"], -32602, "{}", r.text());
}

#[tokio::test]
async fn mcp_malformed_bodies_are_json_rpc_errors() {
    let (router, _) = app();
    for (body, code) in [
        ("{not json", -32700),
        ("", -32700),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"x"}"#,
            -32600,
        ),
    ] {
        let req = request(Method::POST, "/mcp")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::HOST, "127.0.0.1")
            .body(Body::from(body))
            .unwrap();
        let r = send(&router, req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], code, "{body}: {}", r.text());
        assert_eq!(r.json()["id"], Value::Null);
    }
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#,
        "a".repeat(LIMIT)
    );
    let req = request(Method::POST, "/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::HOST, "127.0.0.1")
        .body(Body::from(big))
        .unwrap();
    let r = send(&router, req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32600);
}
