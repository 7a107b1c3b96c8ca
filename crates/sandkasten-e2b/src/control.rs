//! E2B's control plane on the daemon's port: sandboxes are our sessions.
//!
//! | E2B | Sandkasten |
//! |---|---|
//! | `POST /sandboxes`, `POST /v2/sandboxes` | create a session (`templateID` → image, `base` → the daemon's `default_image`; `timeout` → `ttl_seconds`; `envVars` → `env`; `metadata`; `allow_internet_access` and `network.allowOut`/`denyOut` → the network policy) |
//! | `GET /sandboxes`, `GET /v2/sandboxes` | list sessions (`metadata`, `state` filters; `limit`, `nextToken` and `x-next-token` paging) |
//! | `GET /sandboxes/{id}` | get a session |
//! | `DELETE /sandboxes/{id}` | destroy it |
//! | `POST /sandboxes/{id}/timeout` | set its TTL |
//! | `POST /sandboxes/{id}/connect`, `/v2/…/connect` | a running session's details (and its TTL) |
//! | `GET /sandboxes/{id}/metrics` | its stats now |
//! | `POST /sandboxes/{id}/pause`, `/resume` | pause and resume the session (every process frozen, memory kept); `connect` resumes a paused one too |
//! | `POST /sandboxes/{id}/fork` | fork the session (`count`; `timeout` → each child's TTL): one result per child |
//! | `POST /sandboxes/{id}/snapshots` | a sandbox snapshot (`name` → its label; filesystem only: `memory: true` is refused) |
//! | `GET /snapshots` | the sandbox snapshots (`sandboxID`, `name` filters; `limit`, `nextToken` and `x-next-token` paging) |
//! | `DELETE /templates/{id}` | delete a sandbox snapshot (a snapshot id is a template for `POST /sandboxes`) |
//! | `GET /templates`, `/v2/templates` | the images |
//!
//! Authentication: `X-API-KEY` with the daemon's key (or its bearer
//! header). Errors are E2B's `{"code": <status>, "message": "…"}`.

use crate::{query, E2bConfig, ENVD_VERSION};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandkasten_engine::{
    CreateSession, Engine, EngineError, NetworkMode, NetworkRequest, OnTimeout,
    SandboxSnapshotInfo, SessionError, SessionInfo,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone)]
struct Ctl {
    engine: Arc<Engine>,
    cfg: Arc<E2bConfig>,
}

pub(crate) fn router(engine: Arc<Engine>, cfg: Arc<E2bConfig>) -> Router {
    let ctl = Ctl { engine, cfg };
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/sandboxes/{id}/snapshots", post(create_snapshot))
        .route("/snapshots", get(list_snapshots))
        .route("/templates", get(templates))
        .route("/v2/templates", get(templates))
        .route("/templates/{id}", axum::routing::delete(delete_template))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            ctl.clone(),
            require_key,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctl)
}

/// Largest control-plane request body (JSON).
const MAX_BODY: usize = 2 << 20;

/// An E2B API error.
#[derive(Debug)]
pub(crate) struct E2bError {
    status: StatusCode,
    message: String,
}

impl E2bError {
    fn new(status: StatusCode, message: impl Into<String>) -> E2bError {
        E2bError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> E2bError {
        E2bError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.status.as_u16(), "message": self.message})),
        )
            .into_response()
    }
}

impl From<EngineError> for E2bError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::InvalidRequest(_)
            | EngineError::Image(_)
            | EngineError::Workspace(_)
            | EngineError::File(_)
            | EngineError::Unsupported { .. } => StatusCode::BAD_REQUEST,
            // An ended sandbox is gone, as E2B reports it.
            EngineError::Session(SessionError::NotFound(_))
            | EngineError::Session(SessionError::NotRunning { .. })
            | EngineError::Session(SessionError::Lost(_)) => StatusCode::NOT_FOUND,
            EngineError::Session(SessionError::CapacityExhausted(_))
            | EngineError::Session(SessionError::RuntimeCapacity(_))
            | EngineError::Session(SessionError::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => {
                tracing::error!("e2b control plane: {e}");
                return E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        };
        E2bError::new(status, e.to_string())
    }
}

type Result<T> = std::result::Result<T, E2bError>;

async fn require_key(State(ctl): State<Ctl>, req: Request, next: Next) -> Response {
    if (ctl.cfg.key_ok)(req.headers()) {
        // The body, read whole, holds room in the daemon's body budget
        // until it is answered.
        let announced = axum::body::HttpBody::size_hint(req.body()).exact();
        let _claim = match ctl.cfg.bodies.claim(announced, MAX_BODY as u64).await {
            Ok(c) => c,
            Err(e) => {
                return E2bError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .into_response()
            }
        };
        next.run(req).await
    } else {
        E2bError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid API key (X-API-KEY)",
        )
        .into_response()
    }
}

async fn not_found(req: Request) -> E2bError {
    E2bError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{} {} is not served by Sandkasten's E2B API",
            req.method(),
            req.uri().path()
        ),
    )
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // An object: serde would take an array for a struct too.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(E2bError::bad("the JSON body must be an object"));
    }
    serde_json::from_slice(body).map_err(|e| E2bError::bad(format!("invalid JSON body: {e}")))
}

/// `NewSandbox` (v1) and `NewSandboxV2`: what we act on, and the fields we
/// refuse rather than ignore.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "envVars")]
    env_vars: Option<BTreeMap<String, String>>,
    /// Ignored: every sandbox is secure (as in E2B's current API).
    #[allow(dead_code)]
    secure: Option<bool>,
    allow_internet_access: Option<bool>,
    network: Option<NetworkConfig>,
    #[serde(rename = "autoPause")]
    auto_pause: Option<bool>,
    #[serde(rename = "autoResume")]
    auto_resume: Option<Value>,
    mcp: Option<Value>,
    iam: Option<Value>,
    #[serde(rename = "volumeMounts")]
    volume_mounts: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct NetworkConfig {
    allow_out: Vec<String>,
    deny_out: Vec<String>,
    /// Sandbox ports are always behind the daemon's key or a signed URL.
    #[allow(dead_code)]
    allow_public_traffic: Option<bool>,
    dns_servers: Option<Value>,
    egress_proxy: Option<Value>,
    mask_request_host: Option<Value>,
    https_ports: Option<Value>,
    rules: Option<Value>,
}

/// The CIDRs that mean "all outbound traffic" in E2B's `denyOut`.
const ALL_TRAFFIC: &[&str] = &["0.0.0.0/0", "::/0"];

/// E2B's network fields as our policy. E2B allows what `allowOut` names
/// even where `denyOut` denies it; our policy has no exceptions, so
/// `allowOut` is taken only together with a `denyOut` of all traffic
/// (then it is our allow list) and refused otherwise.
fn network_request(
    allow_internet: Option<bool>,
    net: Option<NetworkConfig>,
) -> Result<Option<NetworkRequest>> {
    let Some(net) = net else {
        return Ok(allow_internet.map(|on| NetworkRequest {
            mode: Some(if on {
                NetworkMode::Full
            } else {
                NetworkMode::None
            }),
            allow_out: vec![],
            deny_out: vec![],
        }));
    };
    for (name, set) in [
        ("dnsServers", &net.dns_servers),
        ("egressProxy", &net.egress_proxy),
        ("maskRequestHost", &net.mask_request_host),
        ("httpsPorts", &net.https_ports),
        ("rules", &net.rules),
    ] {
        if set.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(E2bError::bad(format!(
                "network.{name} is not supported by Sandkasten"
            )));
        }
    }
    if allow_internet == Some(false) && (!net.allow_out.is_empty() || !net.deny_out.is_empty()) {
        return Err(E2bError::bad(
            "allow_internet_access false leaves no outbound traffic to filter: drop network.allowOut/denyOut",
        ));
    }
    let denies_all = net
        .deny_out
        .iter()
        .any(|d| ALL_TRAFFIC.contains(&d.as_str()));
    if !net.allow_out.is_empty() && !denies_all {
        return Err(E2bError::bad(
            "network.allowOut is taken only with a denyOut of all traffic (0.0.0.0/0): Sandkasten's policies allow only what allowOut lists, with no exceptions to denyOut",
        ));
    }
    let mode = match allow_internet {
        Some(false) => NetworkMode::None,
        _ => NetworkMode::Full,
    };
    if denies_all && net.allow_out.is_empty() {
        return Ok(Some(NetworkRequest {
            mode: Some(NetworkMode::None),
            allow_out: vec![],
            deny_out: vec![],
        }));
    }
    Ok(Some(NetworkRequest {
        mode: Some(mode),
        allow_out: net.allow_out,
        deny_out: net
            .deny_out
            .into_iter()
            .filter(|d| !ALL_TRAFFIC.contains(&d.as_str()))
            .collect(),
    }))
}

fn timeout_seconds(t: i64) -> Result<u64> {
    u64::try_from(t)
        .ok()
        .filter(|t| *t >= 1)
        .ok_or_else(|| E2bError::bad(format!("timeout must be at least 1 second, got {t}")))
}

async fn create(State(ctl): State<Ctl>, body: Bytes) -> Result<Response> {
    let req: NewSandbox = parse(&body)?;
    // A paused Sandkasten session resumes on any call: autoResume may be
    // asked for, not turned off.
    let resume_off = match &req.auto_resume {
        Some(Value::Bool(b)) => !b,
        Some(Value::Object(o)) => o.get("enabled") == Some(&Value::Bool(false)),
        _ => false,
    };
    if resume_off {
        return Err(E2bError::bad(
            "autoResume cannot be turned off: a paused Sandkasten sandbox resumes on any call",
        ));
    }
    // autoPause: the timeout pauses instead of killing.
    let on_timeout = (req.auto_pause == Some(true)).then_some(OnTimeout::Pause);
    for (name, v) in [("mcp", &req.mcp), ("iam", &req.iam)] {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(E2bError::bad(format!(
                "{name} is not supported by Sandkasten"
            )));
        }
    }
    if req.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(E2bError::bad(
            "volumeMounts are not supported: use Sandkasten's workspaces (POST /v1/sessions with workspace_id)",
        ));
    }
    let template = req.template_id.unwrap_or_else(|| "base".into());
    if template.is_empty() {
        return Err(E2bError::bad(
            "templateID must not be empty (leave it out for base)",
        ));
    }
    let image = if template == "base" {
        None
    } else {
        Some(template.clone())
    };
    let create = CreateSession {
        image,
        ttl_seconds: req.timeout.map(timeout_seconds).transpose()?,
        env: req.env_vars.unwrap_or_default().into_iter().collect(),
        network: network_request(req.allow_internet_access, req.network)?,
        metadata: req.metadata.unwrap_or_default(),
        on_timeout,
        ..Default::default()
    };
    let info = ctl.engine.create_session(create).await?;
    Ok((StatusCode::CREATED, Json(sandbox(&ctl, &info, &template))).into_response())
}

/// `Sandbox`: what create and connect answer.
fn sandbox(ctl: &Ctl, s: &SessionInfo, template: &str) -> Value {
    json!({
        "templateID": template,
        "sandboxID": s.id,
        "alias": template,
        "clientID": "sandkasten",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": (ctl.cfg.envd_token)(&s.id),
        "domain": ctl.cfg.domain,
    })
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `ListedSandbox`, and with `detail` the fields of `SandboxDetail`.
fn listed(ctl: &Ctl, s: &SessionInfo, detail: bool) -> Value {
    let limits = &ctl.engine.config().limits;
    let mut v = json!({
        "templateID": s.image,
        "alias": s.image,
        "sandboxID": s.id,
        "clientID": "sandkasten",
        "startedAt": rfc3339(s.created_at),
        "endAt": rfc3339(s.expires_at),
        "cpuCount": limits.cpu.ceil().max(1.0) as u64,
        "memoryMB": limits.memory_mb,
        "diskSizeMB": s.disk_limit_mb.unwrap_or(0),
        "state": if paused(s) { "paused" } else { "running" },
        "envdVersion": ENVD_VERSION,
        "metadata": s.metadata,
    });
    if detail {
        v["envdAccessToken"] = json!((ctl.cfg.envd_token)(&s.id));
        v["domain"] = json!(ctl.cfg.domain);
        v["allowInternetAccess"] = json!(s.network.is_full());
    }
    v
}

/// Paused for E2B: paused (memory kept) or hibernated (filesystem only).
fn paused(s: &SessionInfo) -> bool {
    matches!(
        s.status,
        sandkasten_engine::SessionState::Paused | sandkasten_engine::SessionState::Hibernated
    )
}

/// A running, paused or hibernated session or 404 (an ended one is gone
/// for E2B).
async fn running(ctl: &Ctl, id: &str) -> Result<SessionInfo> {
    let s = ctl.engine.get_session(id).await?;
    if s.status != sandkasten_engine::SessionState::Running && !paused(&s) {
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found (it is {})", s.status.as_str()),
        ));
    }
    Ok(s)
}

async fn get_one(State(ctl): State<Ctl>, Path(id): Path<String>) -> Result<Json<Value>> {
    let s = running(&ctl, &id).await?;
    Ok(Json(listed(&ctl, &s, true)))
}

async fn kill(State(ctl): State<Ctl>, Path(id): Path<String>) -> Result<StatusCode> {
    running(&ctl, &id).await?;
    ctl.engine.destroy_session(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Timeout {
    timeout: Option<i64>,
}

async fn set_timeout(
    State(ctl): State<Ctl>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode> {
    let t: Timeout = parse(&body)?;
    let t = t
        .timeout
        .ok_or_else(|| E2bError::bad("timeout is required"))?;
    running(&ctl, &id).await?;
    ctl.engine.set_ttl(&id, timeout_seconds(t)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn connect(
    State(ctl): State<Ctl>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let t: Timeout = parse(&body)?;
    let mut s = running(&ctl, &id).await?;
    if paused(&s) {
        // E2B's connect resumes a paused sandbox.
        s = ctl.engine.resume_session(&id).await?;
    }
    if let Some(t) = t.timeout {
        s = ctl.engine.set_ttl(&id, timeout_seconds(t)?).await?;
    }
    let template = s.image.clone();
    Ok(Json(sandbox(&ctl, &s, &template)))
}

/// `POST /sandboxes/{id}/pause`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PauseRequest {
    /// Keep the memory (E2B's `full` mode, the default); `false` is a
    /// filesystem-only pause.
    memory: Option<bool>,
}

/// Pauses a running sandbox: its memory kept (E2B's pause: ours), or with
/// `memory: false` its filesystem only (our hibernate); 409 when it is
/// paused already.
async fn pause(State(ctl): State<Ctl>, Path(id): Path<String>, body: Bytes) -> Result<StatusCode> {
    let req: PauseRequest = parse(&body)?;
    let s = running(&ctl, &id).await?;
    if paused(&s) {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    if req.memory == Some(false) {
        ctl.engine.hibernate_session(&id).await?;
    } else {
        ctl.engine.pause_session(&id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes a paused sandbox (`timeout` sets its TTL); 409 when it is not
/// paused.
async fn resume(
    State(ctl): State<Ctl>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let t: Timeout = parse(&body)?;
    let s = running(&ctl, &id).await?;
    if !paused(&s) {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is not paused"),
        ));
    }
    let mut s = ctl.engine.resume_session(&id).await?;
    if let Some(t) = t.timeout {
        s = ctl.engine.set_ttl(&id, timeout_seconds(t)?).await?;
    }
    let template = s.image.clone();
    Ok((StatusCode::CREATED, Json(sandbox(&ctl, &s, &template))))
}

/// `POST /sandboxes/{id}/fork`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ForkRequest {
    timeout: Option<i64>,
    count: Option<i64>,
}

/// Forks a sandbox: `count` (default 1) new sandboxes on copies of its
/// filesystem state, each with `timeout` as its TTL (default: the
/// source's). Ours is all or nothing, so every result is a sandbox; the
/// source keeps running (a paused one stays paused).
async fn fork(
    State(ctl): State<Ctl>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let req: ForkRequest = parse(&body)?;
    let count = req.count.unwrap_or(1);
    let count = u64::try_from(count)
        .map_err(|_| E2bError::bad(format!("count must be at least 1, got {count}")))?;
    let ttl = req.timeout.map(timeout_seconds).transpose()?;
    running(&ctl, &id).await?;
    let children = ctl.engine.fork_session(&id, count).await?;
    let mut out = Vec::with_capacity(children.len());
    for mut child in children {
        if let Some(ttl) = ttl {
            child = ctl.engine.set_ttl(&child.id, ttl).await?;
        }
        let template = child.image.clone();
        out.push(json!({"sandbox": sandbox(&ctl, &child, &template)}));
    }
    Ok((StatusCode::CREATED, Json(Value::Array(out))))
}

/// `POST /sandboxes/{id}/snapshots`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SnapshotRequest {
    name: Option<String>,
    /// `false` or absent: filesystem only, what ours keep.
    memory: Option<bool>,
}

/// `SnapshotInfo`: the id (a template for `POST /sandboxes`) and its name.
fn snapshot_info(s: &SandboxSnapshotInfo) -> Value {
    json!({"snapshotID": s.id, "names": s.label.iter().collect::<Vec<_>>()})
}

/// Snapshots a sandbox's filesystem state (frozen while taken; it keeps
/// running). A memory snapshot is refused: sandboxes started from ours
/// boot fresh on that state.
async fn create_snapshot(
    State(ctl): State<Ctl>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let req: SnapshotRequest = parse(&body)?;
    if req.memory == Some(true) {
        return Err(E2bError::bad(
            "Sandkasten's snapshots keep the filesystem, not the memory: use mode \"filesystem\"",
        ));
    }
    running(&ctl, &id).await?;
    let snap = ctl
        .engine
        .snapshot_session(&id, req.name.filter(|n| !n.is_empty()))
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_info(&snap))))
}

/// The sandbox snapshots, oldest first, filtered by `sandboxID` and
/// `name` (a name or an id), a page of `limit` (1 to 100) after `nextToken`.
async fn list_snapshots(State(ctl): State<Ctl>, RawQuery(q): RawQuery) -> Result<Response> {
    let (mut session, mut name, mut limit, mut token) = (None, None, 100usize, None);
    for (k, v) in query::pairs(q.as_deref()) {
        match k.as_str() {
            "sandboxID" => session = Some(v),
            "name" => name = Some(v),
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| E2bError::bad(format!("limit must be 1 to 100, got {v:?}")))?
            }
            "nextToken" => token = Some(v).filter(|t| !t.is_empty()),
            _ => {}
        }
    }
    let mut snaps: Vec<SandboxSnapshotInfo> = ctl
        .engine
        .list_sandbox_snapshots()
        .await?
        .into_iter()
        .filter(|s| session.as_ref().is_none_or(|id| &s.session_id == id))
        // `name` matches a snapshot's name or its id.
        .filter(|s| {
            name.as_ref()
                .is_none_or(|n| s.label.as_ref() == Some(n) || &s.id == n)
        })
        .collect();
    let next = page(&mut snaps, token.as_deref(), limit, |s| &s.id)?;
    let body = snaps.iter().map(snapshot_info).collect::<Vec<_>>();
    Ok(with_next_token(Json(body).into_response(), next))
}

/// Deletes a sandbox snapshot (E2B deletes snapshots as templates); the
/// images themselves are managed with `sandkasten image`.
async fn delete_template(State(ctl): State<Ctl>, Path(id): Path<String>) -> Result<StatusCode> {
    if !sandkasten_engine::is_sandbox_snapshot(&id) {
        // `base` is the default image's template, whatever its name.
        let images = ctl.engine.list_images().await?;
        if id != "base" && !images.iter().any(|i| i.name == id) {
            return Err(E2bError::new(
                StatusCode::NOT_FOUND,
                format!("template {id} not found"),
            ));
        }
        return Err(E2bError::bad(format!(
            "{id} is an image, not a snapshot: images are managed with `sandkasten image`"
        )));
    }
    match ctl.engine.delete_sandbox_snapshot(&id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(EngineError::Workspace(sandkasten_engine::WorkspaceError::SnapshotNotFound(_))) => Err(
            E2bError::new(StatusCode::NOT_FOUND, format!("snapshot {id} not found")),
        ),
        Err(e) => Err(e.into()),
    }
}

/// A list's filters and page.
#[derive(Debug, PartialEq)]
struct ListQuery {
    metadata: Vec<(String, String)>,
    /// `None`: every state.
    states: Option<Vec<String>>,
    limit: usize,
    next_token: Option<String>,
    /// `order=desc`: newest first (default: oldest first).
    newest_first: bool,
    /// `template`: sessions of this image only.
    template: Option<String>,
    /// `startedAfter`: sessions created at or after this time only.
    started_after: Option<time::OffsetDateTime>,
}

fn list_query(q: Option<&str>) -> Result<ListQuery> {
    let mut out = ListQuery {
        metadata: vec![],
        states: None,
        limit: 100,
        next_token: None,
        newest_first: false,
        template: None,
        started_after: None,
    };
    for (k, v) in query::pairs(q) {
        match k.as_str() {
            // `k=v&k2=v2`, its keys and values escaped once more.
            "metadata" => out.metadata.extend(
                query::pairs(Some(&v))
                    .into_iter()
                    .map(|(k, v)| (query::percent_decode(&k), query::percent_decode(&v))),
            ),
            "state" => out
                .states
                .get_or_insert_with(Vec::new)
                .extend(v.split(',').map(str::to_string)),
            "limit" => {
                out.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| E2bError::bad(format!("limit must be 1 to 100, got {v:?}")))?
            }
            "nextToken" => out.next_token = Some(v).filter(|t| !t.is_empty()),
            "template" => out.template = Some(v).filter(|t| !t.is_empty()),
            "startedAfter" => {
                let t =
                    time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            E2bError::bad(format!("startedAfter {v:?} is not RFC 3339: {e}"))
                        })?;
                out.started_after = Some(t);
            }
            "order" => {
                out.newest_first = match v.as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => {
                        return Err(E2bError::bad(format!(
                            "order must be asc or desc, got {v:?}"
                        )))
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(states) = &out.states {
        if let Some(bad) = states.iter().find(|s| *s != "running" && *s != "paused") {
            return Err(E2bError::bad(format!(
                "state must be running or paused, got {bad:?}"
            )));
        }
    }
    Ok(out)
}

async fn list(State(ctl): State<Ctl>, RawQuery(q): RawQuery) -> Result<Response> {
    let q = list_query(q.as_deref())?;
    let mut sessions: Vec<SessionInfo> = ctl
        .engine
        .list_sessions()
        .await
        .into_iter()
        .filter(|s| {
            let state = match s.status {
                sandkasten_engine::SessionState::Running => "running",
                _ if paused(s) => "paused",
                _ => return false,
            };
            q.states
                .as_ref()
                .is_none_or(|st| st.iter().any(|s| s == state))
        })
        .filter(|s| q.metadata.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        .filter(|s| {
            // `base` is the SDKs' default template: the default image.
            let default = &ctl.engine.config().default_image;
            q.template
                .as_ref()
                .is_none_or(|t| &s.image == t || (t == "base" && &s.image == default))
        })
        .filter(|s| q.started_after.is_none_or(|t| s.created_at >= t))
        .collect();
    sessions.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    if q.newest_first {
        sessions.reverse();
    }
    let next = page(&mut sessions, q.next_token.as_deref(), q.limit, |s| &s.id)?;
    let body: Vec<Value> = sessions.iter().map(|s| listed(&ctl, s, false)).collect();
    Ok(with_next_token(Json(body).into_response(), next))
}

/// Cuts `items` to the page after `token` (the last id of the page
/// before; an unknown one is 400) of at most `limit`; the next page's
/// token when there is more.
fn page<T>(
    items: &mut Vec<T>,
    token: Option<&str>,
    limit: usize,
    id: impl Fn(&T) -> &String,
) -> Result<Option<String>> {
    if let Some(token) = token {
        match items.iter().position(|s| id(s) == token) {
            Some(i) => {
                items.drain(..=i);
            }
            None => return Err(E2bError::bad(format!("unknown nextToken {token:?}"))),
        }
    }
    let more = items.len() > limit;
    items.truncate(limit);
    Ok(items.last().filter(|_| more).map(|s| id(s).clone()))
}

/// `resp` with the next page's token in `x-next-token`, if any.
fn with_next_token(mut resp: Response, next: Option<String>) -> Response {
    if let Some(v) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", v);
    }
    resp
}

async fn metrics(State(ctl): State<Ctl>, Path(id): Path<String>) -> Result<Json<Value>> {
    let s = running(&ctl, &id).await?;
    let stats = ctl.engine.session_stats(&id).await?;
    let now = time::OffsetDateTime::now_utc();
    let cpus = ctl.engine.config().limits.cpu.max(0.01);
    let elapsed_us = ((now - s.created_at).whole_microseconds().max(1)) as f64;
    let pct = (stats.cpu_usage_usec as f64 / (elapsed_us * cpus) * 100.0).min(100.0);
    Ok(Json(json!([{
        "timestamp": rfc3339(now),
        "timestampUnix": now.unix_timestamp(),
        "cpuCount": cpus.ceil() as u64,
        "cpuUsedPct": pct,
        "memUsed": stats.memory_bytes,
        "memTotal": stats.memory_limit,
        "memCache": 0,
        "diskUsed": 0,
        "diskTotal": s.disk_limit_mb.unwrap_or(0) * 1024 * 1024,
    }])))
}

async fn templates(State(ctl): State<Ctl>) -> Result<Json<Value>> {
    let limits = &ctl.engine.config().limits;
    let images = ctl.engine.list_images().await?;
    Ok(Json(Value::Array(
        images
            .into_iter()
            .map(|i| {
                json!({
                    "templateID": i.name,
                    "buildID": i.digest,
                    "aliases": [i.name],
                    "names": [i.name],
                    "public": false,
                    "cpuCount": limits.cpu.ceil().max(1.0) as u64,
                    "memoryMB": limits.memory_mb,
                    "diskSizeMB": limits.disk_mb.unwrap_or(0),
                    "envdVersion": ENVD_VERSION,
                    "buildStatus": "ready",
                })
            })
            .collect(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_decode_metadata_states_and_pages() {
        // As the Python SDK sends `{"user": "a b", "k&": "=v"}`.
        let q = list_query(Some(
            "metadata=user%3Da%252520b%26k%252526%3D%25253Dv&state=running%2Cpaused&limit=2&nextToken=abc",
        ))
        .unwrap();
        assert_eq!(
            q.metadata,
            vec![
                ("user".to_string(), "a b".to_string()),
                ("k&".to_string(), "=v".to_string())
            ]
        );
        assert_eq!(
            q.states,
            Some(vec!["running".to_string(), "paused".to_string()])
        );
        assert_eq!((q.limit, q.next_token.as_deref()), (2, Some("abc")));
        assert!(list_query(Some("limit=0")).is_err());
        assert!(list_query(Some("limit=x")).is_err());
        assert!(list_query(Some("state=gone")).is_err());
        assert!(list_query(Some("order=desc")).unwrap().newest_first);
        assert!(!list_query(Some("order=asc")).unwrap().newest_first);
        assert!(list_query(Some("order=sideways")).is_err());
        let q = list_query(Some(
            "template=base&startedAfter=2026-12-06T10%3A00%3A00%2B00%3A00",
        ))
        .unwrap();
        assert_eq!(q.template.as_deref(), Some("base"));
        assert_eq!(q.started_after.unwrap().unix_timestamp(), 1796551200);
        assert!(list_query(Some("startedAfter=yesterday")).is_err());
        assert_eq!(list_query(None).unwrap().limit, 100);
    }

    #[test]
    fn network_fields_map_onto_a_policy_or_are_refused() {
        let net = |allow: &[&str], deny: &[&str]| NetworkConfig {
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let r = network_request(None, Some(net(&["pypi.org"], &["0.0.0.0/0"])))
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(
            (r.mode, r.allow_out, r.deny_out),
            (
                Some(NetworkMode::Full),
                vec!["pypi.org".to_string()],
                vec![]
            )
        );
        let r = network_request(Some(true), Some(net(&[], &["10.0.0.0/8"])))
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(r.deny_out, vec!["10.0.0.0/8".to_string()]);
        let r = network_request(None, Some(net(&[], &["0.0.0.0/0"])))
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(r.mode, Some(NetworkMode::None));
        assert!(network_request(None, Some(net(&["a.com"], &[]))).is_err());
        assert!(network_request(Some(false), Some(net(&[], &["1.2.3.4"]))).is_err());
        let r = network_request(Some(false), None).ok().flatten().unwrap();
        assert_eq!(r.mode, Some(NetworkMode::None));
        assert!(network_request(None, None).ok().flatten().is_none());
        let mut with_rules = net(&[], &[]);
        with_rules.rules = Some(json!([]));
        assert!(network_request(None, Some(with_rules)).is_err());
    }
}
