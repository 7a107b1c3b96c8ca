//! The HTTP layer of Sandkasten: the axum router, authentication, the
//! extractors, the one error-to-status table, SSE for streamed exec, and
//! the OpenAPI document generated from the handlers.
//!
//! Handlers only extract, validate, call one engine method and convert the
//! result; there is no business logic, file system access or SQL here. The
//! wire format lives in `wire`; the engine speaks plain Rust types.
//!
//! Layers, outermost first: access log, body limit, then either the public
//! `/healthz` or the bearer-key check in front of every other route and of
//! the 404 fallback (an unauthenticated client learns nothing about which
//! routes exist). `serve` is the connection loop of `conn`: connection
//! limits, slow-client timeouts, graceful shutdown.

mod access_log;
mod auth;
mod backend;
mod bodies;
mod conn;
mod error;
mod extract;
mod mcp;
mod openapi;
mod ports;
mod routes;
mod wire;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use backend::Backend;
use sandkasten_engine::Engine;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Settings of the HTTP layer.
#[derive(Clone)]
pub struct ApiConfig {
    /// The bearer key every route but `/healthz` requires. An empty key
    /// authorizes no request.
    pub api_key: String,
    /// Largest request body accepted (JSON and multipart alike); larger
    /// ones are answered with 413 `PAYLOAD_TOO_LARGE`.
    pub max_body_bytes: usize,
    /// Request bodies held whole in memory at once, all requests together
    /// (see `sandkasten_engine::BodyBudget`).
    pub body_memory_bytes: u64,
    /// Domain of the ports proxy's preview hosts: `{port}-{id}.` + this
    /// (e.g. `localhost:8080`, which browsers resolve to loopback).
    pub preview_domain: String,
    /// Key of the signed port URLs (32 random bytes kept in the data dir,
    /// so URLs outlive a restart). Empty: no signed URL is accepted.
    pub port_url_secret: Vec<u8>,
    /// Cancelled when the daemon stops: ends the MCP sessions and their
    /// open streams, so the graceful shutdown does not wait for MCP
    /// clients to hang up.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("api_key", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_memory_bytes", &self.body_memory_bytes)
            .field("preview_domain", &self.preview_domain)
            .field("port_url_secret", &"<redacted>")
            .finish()
    }
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) max_body_bytes: usize,
    /// Room for request bodies held whole (see `bodies`).
    pub(crate) bodies: sandkasten_engine::BodyBudget,
    pub(crate) ports: Arc<ports::Ports>,
}

/// The API's router, ready for [`serve`]: our routes, the ports proxy and
/// the E2B API (`sandkasten_e2b`).
pub fn router(engine: Engine, config: ApiConfig) -> Router {
    let engine = Arc::new(engine);
    let key = auth::ApiKey::new(&config.api_key);
    let signer = ports::signed::Signer::new(&config.port_url_secret);
    let bodies = body_budget(&config);
    let e2b = sandkasten_e2b::E2b::new(
        engine.clone(),
        sandkasten_e2b::E2bConfig {
            key_ok: Arc::new(move |h| key.verify(h) || key.verify_header(h, "x-api-key")),
            envd_token: Arc::new(move |id| signer.envd_token(id)),
            domain: config.preview_domain.clone(),
            max_body_bytes: config.max_body_bytes,
            bodies: bodies.clone(),
        },
    );
    build_router(engine, config, bodies, Some(e2b))
}

/// How long a request waits for room in the body budget before its 503.
const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The budget of request bodies held at once: at least one whole body.
fn body_budget(config: &ApiConfig) -> sandkasten_engine::BodyBudget {
    let total = config.body_memory_bytes.max(config.max_body_bytes as u64);
    sandkasten_engine::BodyBudget::new(total, BODY_WAIT)
}

/// Serves `router` on `listener` (HTTP/1.1) until `shutdown` is cancelled;
/// then stops accepting connections, closes idle ones and returns once
/// in-flight requests (streams included) have finished.
///
/// Raises the soft open-file limit to the hard one first and bounds the
/// connections by it (see `conn`: half the descriptors for connections,
/// half of those before a connection has sent an authenticated request),
/// with timeouts for slow heads and bodies, idle keep-alives and clients
/// that stop reading.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let nofile = conn::raise_fd_limit();
    let limits = conn::ConnLimits::for_fd_limit(nofile);
    tracing::info!(
        fd_limit = nofile,
        max_connections = limits.max_connections,
        max_unauthenticated = limits.max_unauthenticated,
        "HTTP connection limits"
    );
    conn::serve(listener, router, shutdown, limits).await
}

/// The OpenAPI 3.1 document of this API, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .merge(public_routes())
        .merge(protected_routes())
        .into_openapi();
    mcp::document(&mut doc);
    openapi::add_shared_responses(&mut doc);
    doc
}

/// Routes that need no key.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(routes::system::healthz))
}

/// Routes behind the bearer key. Each `routes!` groups the handlers of one
/// path; the same declaration yields the axum route and its OpenAPI entry,
/// so the two cannot drift apart.
fn protected_routes() -> OpenApiRouter<AppState> {
    buffered_routes().merge(streamed_routes())
}

/// Routes that stream their request body (or have none to hold): outside
/// the body budget.
fn streamed_routes() -> OpenApiRouter<AppState> {
    use routes::{ports, processes, pty, workspaces};
    OpenApiRouter::new()
        .routes(routes!(processes::write_stdin, processes::close_stdin))
        .routes(routes!(pty::pty))
        .routes(routes!(workspaces::import_workspace))
        .routes(routes!(ports::proxy))
}

/// Routes that read their request body whole: each request holds a claim
/// on the body budget while it is served (`bodies::hold`).
fn buffered_routes() -> OpenApiRouter<AppState> {
    use routes::{exec, files, lifecycle, pool, ports, processes, sessions, system, workspaces};
    OpenApiRouter::new()
        .routes(routes!(system::openapi_json))
        .routes(routes!(pool::pool))
        .routes(routes!(pool::metrics))
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::destroy_session))
        .routes(routes!(sessions::session_stats))
        .routes(routes!(sessions::set_network))
        .routes(routes!(lifecycle::pause_session))
        .routes(routes!(lifecycle::resume_session))
        .routes(routes!(lifecycle::hibernate_session))
        .routes(routes!(lifecycle::snapshot_session))
        .routes(routes!(lifecycle::list_sandbox_snapshots))
        .routes(routes!(
            lifecycle::get_sandbox_snapshot,
            lifecycle::delete_sandbox_snapshot
        ))
        .routes(routes!(lifecycle::fork_session))
        .routes(routes!(sessions::network_events))
        .routes(routes!(exec::exec))
        .routes(routes!(exec::exec_stream))
        .routes(routes!(processes::start_process, processes::list_processes))
        .routes(routes!(processes::start_process_stream))
        .routes(routes!(processes::get_process))
        .routes(routes!(processes::process_stream))
        .routes(routes!(processes::signal_process))
        .routes(routes!(processes::resize_process))
        .routes(routes!(files::write_file))
        .routes(routes!(files::read_file))
        .routes(routes!(files::upload))
        .routes(routes!(files::list_dir))
        .routes(routes!(files::stat))
        .routes(routes!(files::mkdir))
        .routes(routes!(files::remove))
        .routes(routes!(files::move_path))
        .routes(routes!(
            workspaces::list_workspaces,
            workspaces::create_workspace
        ))
        .routes(routes!(
            workspaces::get_workspace,
            workspaces::delete_workspace
        ))
        .routes(routes!(workspaces::workspace_list_dir))
        .routes(routes!(workspaces::workspace_read_file))
        .routes(routes!(workspaces::workspace_write_file))
        .routes(routes!(workspaces::workspace_upload))
        .routes(routes!(
            workspaces::create_snapshot,
            workspaces::list_snapshots
        ))
        .routes(routes!(workspaces::delete_snapshot))
        .routes(routes!(workspaces::restore_snapshot))
        .routes(routes!(workspaces::export_workspace))
        .routes(routes!(ports::port_url))
}

/// The router over any backend (the engine, or a fake in tests).
pub(crate) fn build_router(
    backend: Arc<dyn Backend>,
    config: ApiConfig,
    bodies: sandkasten_engine::BodyBudget,
    e2b: Option<sandkasten_e2b::E2b>,
) -> Router {
    let key = Arc::new(auth::ApiKey::new(&config.api_key));
    let ports = Arc::new(ports::Ports {
        backend: backend.clone(),
        key: key.clone(),
        signer: ports::signed::Signer::new(&config.port_url_secret),
        preview_domain: config.preview_domain.clone(),
        upgrades: Arc::new(tokio::sync::Semaphore::new(ports::upgrade_budget(
            conn::raise_fd_limit(),
        ))),
    });
    let state = AppState {
        backend,
        max_body_bytes: config.max_body_bytes,
        bodies,
        ports: ports.clone(),
    };
    let (public, _) = public_routes().split_for_parts();
    let (buffered, _) = buffered_routes()
        .route_layer(middleware::from_fn_with_state(state.clone(), bodies::hold))
        .split_for_parts();
    let (streamed, _) = streamed_routes().split_for_parts();
    let mcp = Router::new()
        .fallback_service(mcp::service(state.clone(), config.shutdown.child_token()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            mcp::protocol_errors,
        ));
    let protected = buffered
        .merge(streamed)
        .nest_service(mcp::PATH, mcp)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::route_not_found)
        // Behind the key check: the connection has sent an authenticated
        // request (it leaves the serve loop's unauthenticated budget).
        .layer(middleware::from_fn(conn::note_authenticated))
        .layer(middleware::from_fn_with_state(key, auth::require_api_key));
    let router = public
        .method_not_allowed_fallback(routes::method_not_allowed)
        .merge(protected)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        // Sandbox ports (by path or preview host) are forwarded before the
        // router, with their own access check (key or signed token).
        .layer(middleware::from_fn_with_state(ports, ports::dispatch));
    // The E2B API (its control plane, and envd by header or by a host of
    // port 49983) before the ports proxy, with its own access checks.
    let router = match e2b {
        Some(e2b) => router.layer(middleware::from_fn_with_state(
            e2b,
            sandkasten_e2b::dispatch,
        )),
        None => router,
    };
    let router = router
        .layer(middleware::from_fn(access_log::access_log))
        .with_state(state);
    // Around the router as a whole (a `Router::layer` wraps each route,
    // inside the method router that adds `Allow`).
    Router::new()
        .fallback_service(router)
        .layer(middleware::from_fn(auth::allow_only_where_due))
}

#[cfg(test)]
mod tests;
