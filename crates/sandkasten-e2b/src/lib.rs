//! The E2B API, served on the daemon's own port, so that the official
//! `e2b` SDKs work unchanged with `E2B_API_URL` and `E2B_SANDBOX_URL`
//! pointing at the daemon and `E2B_API_KEY` set to its key.
//!
//! Two parts, picked by [`dispatch`] (a middleware in front of the
//! daemon's own routes):
//!
//! - the **control plane** (`control`): `/sandboxes`, `/v2/sandboxes`,
//!   `/templates`, `/snapshots`, authenticated by `X-API-KEY` (or the daemon's bearer
//!   key); each handler calls one engine method;
//! - **envd** (`envd`), the API E2B serves inside each sandbox: requests
//!   that name a sandbox by the `E2b-Sandbox-Id` header or by a host
//!   `49983-{id}.{domain}`, and `/files` URLs signed for one. The Connect
//!   RPC services (`connect`, `pb`, `filesystem`) and `/files`, `/health`
//!   are answered by the daemon through the engine; nothing runs inside
//!   the sandbox for them but our agent.
//!
//! Every sandbox is "secure" as E2B's current API makes them all: envd
//! requests carry the sandbox's access token (`X-Access-Token`, returned
//! at create as `envdAccessToken`, derived from the daemon's secret so it
//! outlives a restart) or the daemon's key.

pub mod connect;
mod control;
mod envd;
mod filesystem;
pub mod pb;
mod process;
mod query;
mod watch;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use sandkasten_engine::Engine;
use std::sync::Arc;
use tower::ServiceExt;

/// The port envd listens on in an E2B sandbox; a host `49983-{id}.…`
/// names the sandbox's envd.
pub const ENVD_PORT: u16 = 49983;

/// The envd version the control plane reports: the SDKs turn features on
/// by it, and every one up to this version is served (0.5.7: `username`
/// optional, octet-stream and gzip uploads, closing stdin; 0.6.2: file
/// metadata in `user.e2b.*` extended attributes; 0.6.3: entry info in
/// watch events; 0.6.4: `allow_network_mounts` on watches, accepted: a
/// sandbox cannot mount a network filesystem).
pub const ENVD_VERSION: &str = "0.6.4";

/// Settings from the daemon.
#[derive(Clone)]
pub struct E2bConfig {
    /// Whether headers carry the daemon's API key (`X-API-KEY`, or
    /// `Authorization: Bearer`).
    pub key_ok: Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>,
    /// A sandbox's envd access token (a MAC of its id under the daemon's
    /// secret).
    pub envd_token: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// Domain of sandbox hosts (`{port}-{id}.` + this), as the ports
    /// proxy's preview hosts.
    pub domain: String,
    /// Largest request body (uploads); larger ones are 413.
    pub max_body_bytes: usize,
    /// Room for request bodies held whole, shared with the rest of the
    /// daemon: envd's uploads and unary calls and the control plane's
    /// JSON claim their size before reading it.
    pub bodies: sandkasten_engine::BodyBudget,
}

impl std::fmt::Debug for E2bConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bConfig")
            .field("domain", &self.domain)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// What envd's handlers use.
pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    pub(crate) cfg: Arc<E2bConfig>,
    /// The watchers of `CreateWatcher`.
    pub(crate) watchers: watch::Watchers,
}

/// The E2B front: the control plane's and envd's routers; cheap to clone.
#[derive(Clone)]
pub struct E2b {
    domain: Arc<str>,
    control: axum::Router,
    envd: axum::Router,
}

/// The sandbox an envd request names (`None`: a signed `/files` URL).
#[derive(Clone)]
struct EnvdTarget(Option<String>);

impl E2b {
    pub fn new(engine: Arc<Engine>, cfg: E2bConfig) -> E2b {
        let cfg = Arc::new(cfg);
        let control = control::router(engine.clone(), cfg.clone());
        let limit = cfg.max_body_bytes;
        let shared = Arc::new(Shared {
            engine,
            cfg: cfg.clone(),
            watchers: watch::Watchers::default(),
        });
        // A router of its own for the body limit (multipart reads it).
        let envd = axum::Router::new()
            .fallback(
                |axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
                 axum::Extension(EnvdTarget(id)): axum::Extension<EnvdTarget>,
                 req: Request| async move { envd::serve(&shared, id, req).await },
            )
            .layer(axum::extract::DefaultBodyLimit::max(limit))
            .with_state(shared);
        E2b {
            domain: cfg.domain.as_str().into(),
            control,
            envd,
        }
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq)]
enum Route {
    /// envd of the sandbox named (by header or host), or of the one whose
    /// signature a `/files` URL carries (`None`).
    Envd(Option<String>),
    Control,
    /// Not E2B's: the daemon's own routes.
    Pass,
}

/// The control plane's path prefixes.
const CONTROL_PREFIXES: &[&str] = &[
    "/sandboxes",
    "/v2/sandboxes",
    "/templates",
    "/v2/templates",
    "/snapshots",
];

fn route(req: &Request, domain: &str) -> Route {
    let headers = req.headers();
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        return Route::Envd(Some(id.to_string()));
    }
    if let Some(host) = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        match sandbox_host(host, domain) {
            Some((port, id)) if port == ENVD_PORT.to_string() => return Route::Envd(Some(id)),
            // Another port's preview host is the app's, whatever the path
            // (its `/health`, `/files`, `/sandboxes` included): the ports
            // proxy serves it.
            Some(_) => return Route::Pass,
            None => {}
        }
    }
    let path = req.uri().path();
    if path == "/files" && req.uri().query().is_some_and(|q| q.contains("signature=")) {
        return Route::Envd(None);
    }
    if path == "/health" {
        return Route::Envd(None);
    }
    if CONTROL_PREFIXES
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
    {
        return Route::Control;
    }
    Route::Pass
}

/// The port (as written: digits) and sandbox of a host
/// `{port}-{id}.{domain}` (envd's when the port is 49983).
fn sandbox_host(host: &str, domain: &str) -> Option<(String, String)> {
    let host = host.to_ascii_lowercase();
    let label = host
        .strip_suffix(&domain.to_ascii_lowercase())?
        .strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    (!port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && !id.is_empty()
        && !id.contains('.'))
    .then(|| (port.to_string(), id.to_string()))
}

/// The middleware: E2B's requests are answered here, everything else goes
/// on to the daemon's routes (and the ports proxy, which serves hosts
/// `{port}-{id}.{domain}` of other ports).
pub async fn dispatch(State(e2b): State<E2b>, mut req: Request, next: Next) -> Response {
    let router = match route(&req, &e2b.domain) {
        Route::Pass => return next.run(req).await,
        Route::Control => e2b.control,
        Route::Envd(id) => {
            req.extensions_mut().insert(EnvdTarget(id));
            e2b.envd
        }
    };
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(path: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn requests_are_routed_by_header_host_and_path() {
        let d = "localhost:8080";
        let envd = |id: &str| Route::Envd(Some(id.to_string()));
        assert_eq!(
            route(
                &req("/filesystem.Filesystem/Stat", &[("E2b-Sandbox-Id", "abc")]),
                d
            ),
            envd("abc")
        );
        assert_eq!(
            route(&req("/files", &[("Host", "49983-abc.localhost:8080")]), d),
            envd("abc")
        );
        // Other ports are the ports proxy's, whatever the path.
        for path in [
            "/",
            "/health",
            "/files?path=a&signature=v1_x",
            "/sandboxes",
            "/v2/templates",
        ] {
            assert_eq!(
                route(&req(path, &[("Host", "8000-abc.localhost:8080")]), d),
                Route::Pass,
                "{path}"
            );
        }
        assert_eq!(
            route(&req("/files?path=a&signature=v1_x", &[]), d),
            Route::Envd(None)
        );
        assert_eq!(route(&req("/files?path=a", &[]), d), Route::Pass);
        assert_eq!(route(&req("/v2/sandboxes", &[]), d), Route::Control);
        assert_eq!(route(&req("/sandboxes/x/timeout", &[]), d), Route::Control);
        assert_eq!(route(&req("/templates", &[]), d), Route::Control);
        assert_eq!(route(&req("/snapshots", &[]), d), Route::Control);
        assert_eq!(route(&req("/v1/snapshots", &[]), d), Route::Pass);
        assert_eq!(route(&req("/sandboxesx", &[]), d), Route::Pass);
        assert_eq!(route(&req("/v1/sessions", &[]), d), Route::Pass);
    }
}
