//! The one table that turns every failure into a status code, an
//! `error_code` and a JSON body. A 500 hides its detail from the client and
//! logs it instead.

use crate::wire::ErrorBody;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandkasten_engine::EngineError;
use serde_json::{json, Map, Value};

/// Everything a request can fail with.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The engine refused or failed.
    Engine(EngineError),
    /// The request is malformed: bad JSON, wrong types, a bad query, a
    /// missing field, an empty command, a bad multipart body.
    InvalidRequest(String),
    /// A path or upload filename that can never be valid.
    InvalidPath(String),
    /// Missing or wrong API key.
    Unauthorized,
    /// No route has this path.
    RouteNotFound { method: String, path: String },
    /// The path exists, the method does not.
    MethodNotAllowed { method: String, path: String },
    /// The body is larger than the configured limit.
    PayloadTooLarge { limit: usize },
    /// The daemon holds all the request bodies it may (`body_memory_mb`)
    /// and none was done within the wait: 503 `CAPACITY_EXHAUSTED`.
    BodiesFull(sandkasten_engine::BodiesFull),
    /// The server behind a sandbox port broke off the exchange (closed the
    /// connection, or answered something that is not HTTP/1.1): 502
    /// `PORT_UNREACHABLE`.
    Upstream { port: u16, message: String },
    /// The HTTP layer itself failed (spooling an upload, building a
    /// response): a 500 whose detail is logged, never shown.
    Internal(String),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::Engine(e)
    }
}

/// The engine's half of the contract's error table, by domain.
fn engine_status(e: &EngineError) -> (StatusCode, &'static str) {
    use sandkasten_engine::{
        FileError as F, ImageError as I, PortError as P, ProcessError as X, SessionError as S,
        WorkspaceError as W,
    };
    use EngineError as E;
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    const GONE: StatusCode = StatusCode::NOT_FOUND;
    const CONFLICT: StatusCode = StatusCode::CONFLICT;
    const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
    const INTERNAL: (StatusCode, &str) = (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR");
    match e {
        E::InvalidRequest(_) => (BAD, "INVALID_REQUEST"),
        E::Unsupported { .. } => (BAD, "UNSUPPORTED"),
        E::Session(s) => match s {
            S::NotFound(_) => (GONE, "SESSION_NOT_FOUND"),
            S::NotRunning { .. } => (CONFLICT, "SESSION_NOT_RUNNING"),
            S::NotPaused { .. } => (CONFLICT, "SESSION_NOT_PAUSED"),
            S::CapacityExhausted(_) | S::RuntimeCapacity(_) => (UNAVAILABLE, "CAPACITY_EXHAUSTED"),
            S::ShuttingDown => (UNAVAILABLE, "SHUTTING_DOWN"),
            S::AgentLost(_) => INTERNAL,
            S::Lost(_) => (StatusCode::GONE, "SESSION_LOST"),
        },
        E::Workspace(w) => match w {
            W::Disabled => (CONFLICT, "WORKSPACE_DISABLED"),
            W::InvalidId(_) => (BAD, "INVALID_WORKSPACE"),
            W::NotFound(_) => (GONE, "WORKSPACE_NOT_FOUND"),
            W::SnapshotNotFound(_) => (GONE, "SNAPSHOT_NOT_FOUND"),
            W::InUse { .. } => (CONFLICT, "WORKSPACE_IN_USE"),
            W::AlreadyExists(_) => (CONFLICT, "ALREADY_EXISTS"),
        },
        E::File(f) => match f {
            F::NotFound(_) => (GONE, "FILE_NOT_FOUND"),
            F::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            F::AlreadyExists(_) => (CONFLICT, "ALREADY_EXISTS"),
            F::InvalidPath(_) => (BAD, "INVALID_PATH"),
            // RFC 4918's status for a write over a quota; the code of a
            // full host disk, as the client's remedy is the same kind
            // (make room, or retry once there is room).
            F::NoSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "STORAGE_FULL"),
        },
        E::Image(I::Invalid(_)) => (BAD, "INVALID_IMAGE"),
        E::Port(P::NotListening { .. }) => (StatusCode::BAD_GATEWAY, "PORT_NOT_LISTENING"),
        E::Port(P::Unreachable { .. }) => (StatusCode::BAD_GATEWAY, "PORT_UNREACHABLE"),
        E::Process(x) => match x {
            X::NotFound(_) => (GONE, "PROCESS_NOT_FOUND"),
            X::Ended(_) => (CONFLICT, "PROCESS_ENDED"),
            X::StdinClosed(_) => (CONFLICT, "STDIN_CLOSED"),
            X::TagInUse(_) => (CONFLICT, "TAG_IN_USE"),
            X::StartFailed(_) => (BAD, "PROCESS_START_FAILED"),
        },
        E::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "STORAGE_FULL"),
        E::Runtime { .. } | E::Store(_) => INTERNAL,
    }
}

impl ApiError {
    /// Status and `error_code`: the contract's error table.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ApiError::InvalidPath(_) => (StatusCode::BAD_REQUEST, "INVALID_PATH"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::RouteNotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
            }
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
            }
            ApiError::BodiesFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "CAPACITY_EXHAUSTED"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
            ApiError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "PORT_UNREACHABLE"),
            ApiError::Engine(e) => engine_status(e),
        }
    }

    /// The message for the client. Never the detail of a 500.
    pub(crate) fn message(&self) -> String {
        match self {
            ApiError::InvalidRequest(m) | ApiError::InvalidPath(m) => m.clone(),
            ApiError::Unauthorized => "missing or invalid API key".into(),
            ApiError::RouteNotFound { method, path } => format!("no route for {method} {path}"),
            ApiError::MethodNotAllowed { method, path } => {
                format!("method {method} is not allowed on {path}")
            }
            ApiError::PayloadTooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            ApiError::BodiesFull(e) => e.to_string(),
            ApiError::Internal(_) => "internal error".into(),
            ApiError::Upstream { port, message } => {
                format!("the server on port {port} inside the sandbox: {message}")
            }
            ApiError::Engine(_) if self.is_internal() => "internal error".into(),
            ApiError::Engine(e) => e.to_string(),
        }
    }

    /// Structured context that is safe to show.
    pub(crate) fn details(&self) -> Map<String, Value> {
        use sandkasten_engine::{Holder, PortError as P, SessionError as S, WorkspaceError as W};
        use EngineError as E;
        let v = match self {
            ApiError::PayloadTooLarge { limit } => json!({ "max_bytes": limit }),
            ApiError::BodiesFull(e) => json!({ "body_memory_bytes": e.total }),
            ApiError::Engine(E::Session(S::NotFound(id) | S::Lost(id))) => {
                json!({ "session_id": id })
            }
            ApiError::Engine(E::Session(
                S::NotRunning { id, state } | S::NotPaused { id, state },
            )) => {
                json!({ "session_id": id, "state": state.as_str() })
            }
            ApiError::Engine(E::Session(S::CapacityExhausted(max))) => {
                json!({ "max_sessions": max })
            }
            ApiError::Engine(E::Workspace(W::NotFound(id))) => json!({ "workspace_id": id }),
            ApiError::Engine(E::Workspace(W::InUse { id, holder })) => match holder {
                Holder::Session(session) => json!({ "workspace_id": id, "session_id": session }),
                other => json!({ "workspace_id": id, "reason": other.to_string() }),
            },
            ApiError::Engine(E::Unsupported { what, runtime }) => {
                json!({ "what": what, "runtime": runtime })
            }
            ApiError::Engine(E::Port(
                P::NotListening { session, port } | P::Unreachable { session, port, .. },
            )) => json!({ "session_id": session, "port": port }),
            ApiError::Upstream { port, .. } => json!({ "port": port }),
            _ => return Map::new(),
        };
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn is_internal(&self) -> bool {
        self.status_and_code().0 == StatusCode::INTERNAL_SERVER_ERROR
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_code) = self.status_and_code();
        match &self {
            ApiError::Engine(e) if self.is_internal() => {
                tracing::error!(error = %error_chain(e), "request failed with an internal error");
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed with an internal error");
            }
            _ => {}
        }
        let body = ErrorBody {
            error_code,
            message: self.message(),
            details: self.details(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::BodiesFull(_) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// An error with its sources, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // `#[error("... {source}")]` already prints the first source; do not
        // repeat it.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use sandkasten_runtime::RuntimeError;
    use sandkasten_store::StoreError;

    async fn render(e: ApiError) -> (StatusCode, Value) {
        let response = e.into_response();
        let status = response.status();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json",
            "every error is JSON"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn every_engine_error_maps_to_the_contract_table() {
        use sandkasten_engine::{
            FileError as F, Holder, ImageError as I, SessionError as S, SessionState,
            WorkspaceError as W,
        };
        use EngineError as E;
        let cases: Vec<(EngineError, u16, &str)> = vec![
            (E::InvalidRequest("x".into()), 400, "INVALID_REQUEST"),
            (
                E::Unsupported {
                    what: "workspace import".into(),
                    runtime: "docker",
                },
                400,
                "UNSUPPORTED",
            ),
            (I::Invalid("x".into()).into(), 400, "INVALID_IMAGE"),
            (W::InvalidId("x y".into()).into(), 400, "INVALID_WORKSPACE"),
            (F::InvalidPath("x".into()).into(), 400, "INVALID_PATH"),
            (S::NotFound("abc".into()).into(), 404, "SESSION_NOT_FOUND"),
            (F::NotFound("f".into()).into(), 404, "FILE_NOT_FOUND"),
            (
                S::NotRunning {
                    id: "s".into(),
                    state: SessionState::Expired,
                }
                .into(),
                409,
                "SESSION_NOT_RUNNING",
            ),
            (W::Disabled.into(), 409, "WORKSPACE_DISABLED"),
            (W::NotFound("w".into()).into(), 404, "WORKSPACE_NOT_FOUND"),
            (
                W::SnapshotNotFound("s".into()).into(),
                404,
                "SNAPSHOT_NOT_FOUND",
            ),
            (
                W::InUse {
                    id: "w".into(),
                    holder: Holder::Session("s".into()),
                }
                .into(),
                409,
                "WORKSPACE_IN_USE",
            ),
            (
                W::InUse {
                    id: "w".into(),
                    holder: Holder::Changing,
                }
                .into(),
                409,
                "WORKSPACE_IN_USE",
            ),
            (W::AlreadyExists("w".into()).into(), 409, "ALREADY_EXISTS"),
            (F::AlreadyExists("f".into()).into(), 409, "ALREADY_EXISTS"),
            (
                F::PermissionDenied("f".into()).into(),
                403,
                "PERMISSION_DENIED",
            ),
            (S::Lost("s".into()).into(), 410, "SESSION_LOST"),
            (S::CapacityExhausted(4).into(), 503, "CAPACITY_EXHAUSTED"),
            (
                S::RuntimeCapacity("all 8 host uid ranges are taken".into()).into(),
                503,
                "CAPACITY_EXHAUSTED",
            ),
            (S::ShuttingDown.into(), 503, "SHUTTING_DOWN"),
            (
                E::StorageFull("the data dir has 3 MiB free".into()),
                507,
                "STORAGE_FULL",
            ),
            (
                F::NoSpace("/workspace/f: Disk quota exceeded".into()).into(),
                507,
                "STORAGE_FULL",
            ),
            (
                E::Runtime {
                    context: "while mounting the workspace",
                    source: RuntimeError::Busy("secret detail".into()),
                },
                500,
                "INTERNAL_ERROR",
            ),
            (
                E::Store(StoreError::TooNew { found: 9, known: 1 }),
                500,
                "INTERNAL_ERROR",
            ),
            (
                S::AgentLost("secret detail".into()).into(),
                500,
                "INTERNAL_ERROR",
            ),
        ];
        for (e, status, code) in cases {
            let shown = e.to_string();
            let (s, body) = render(ApiError::Engine(e)).await;
            assert_eq!(s.as_u16(), status, "{shown}");
            assert_eq!(body["error_code"], code, "{shown}");
            assert!(body["details"].is_object(), "{shown}");
            let message = body["message"].as_str().unwrap();
            if status == 500 {
                assert_eq!(message, "internal error");
                assert!(!body.to_string().contains(&shown));
            } else {
                assert_eq!(message, shown);
            }
        }
    }

    #[tokio::test]
    async fn the_message_of_a_client_error_is_the_engine_message() {
        let (_, body) = render(ApiError::Engine(
            sandkasten_engine::SessionError::NotFound("abc".into()).into(),
        ))
        .await;
        assert_eq!(
            body,
            json!({"error_code": "SESSION_NOT_FOUND", "message": "session abc not found",
                   "details": {"session_id": "abc"}})
        );
    }

    #[tokio::test]
    async fn api_errors_have_their_codes() {
        let (s, body) = render(ApiError::Unauthorized).await;
        assert_eq!(
            (s.as_u16(), &body["error_code"]),
            (401, &json!("UNAUTHORIZED"))
        );
        let (s, body) = render(ApiError::PayloadTooLarge { limit: 10 }).await;
        assert_eq!(s.as_u16(), 413);
        assert_eq!(body["error_code"], "PAYLOAD_TOO_LARGE");
        assert_eq!(body["details"]["max_bytes"], 10);
        let full = ApiError::BodiesFull(sandkasten_engine::BodiesFull {
            total: 1 << 20,
            wait: std::time::Duration::from_secs(30),
        });
        let response = full.into_response();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let full = ApiError::BodiesFull(sandkasten_engine::BodiesFull {
            total: 1 << 20,
            wait: std::time::Duration::from_secs(30),
        });
        let (_, body) = render(full).await;
        assert_eq!(body["error_code"], "CAPACITY_EXHAUSTED");
        assert_eq!(body["details"]["body_memory_bytes"], 1 << 20);
        assert!(
            body["message"].as_str().unwrap().contains("retry"),
            "{body}"
        );
        let (s, body) = render(ApiError::InvalidPath("bad".into())).await;
        assert_eq!(
            (s.as_u16(), &body["error_code"]),
            (400, &json!("INVALID_PATH"))
        );
        let (s, body) = render(ApiError::Internal("secret spool path".into())).await;
        assert_eq!(
            (s.as_u16(), &body["error_code"], &body["message"]),
            (500, &json!("INTERNAL_ERROR"), &json!("internal error"))
        );
        let (_, body) = render(ApiError::Engine(EngineError::Unsupported {
            what: "workspace import".into(),
            runtime: "docker",
        }))
        .await;
        assert_eq!(
            body["details"],
            json!({"what": "workspace import", "runtime": "docker"})
        );
        let (_, body) = render(ApiError::Engine(
            sandkasten_engine::WorkspaceError::InUse {
                id: "w".into(),
                holder: sandkasten_engine::Holder::Changing,
            }
            .into(),
        ))
        .await;
        assert_eq!(
            body["details"],
            json!({"workspace_id": "w", "reason": "being deleted, restored or imported"}),
            "no made-up session id"
        );
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
