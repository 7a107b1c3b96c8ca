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
    /// A workspace id outside the contract's rule.
    InvalidWorkspace(String),
    /// Missing or wrong API key.
    Unauthorized,
    /// No route has this path.
    RouteNotFound { method: String, path: String },
    /// The path exists, the method does not.
    MethodNotAllowed { method: String, path: String },
    /// The body is larger than the configured limit.
    PayloadTooLarge { limit: usize },
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::Engine(e)
    }
}

impl ApiError {
    /// Status and `error_code`: the contract's error table.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        use EngineError as E;
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ApiError::InvalidPath(_) => (StatusCode::BAD_REQUEST, "INVALID_PATH"),
            ApiError::InvalidWorkspace(_) => (StatusCode::BAD_REQUEST, "INVALID_WORKSPACE"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::RouteNotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
            }
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
            }
            ApiError::Engine(e) => match e {
                E::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
                E::InvalidImage(_) => (StatusCode::BAD_REQUEST, "INVALID_IMAGE"),
                E::InvalidWorkspace(_) => (StatusCode::BAD_REQUEST, "INVALID_WORKSPACE"),
                E::InvalidPath(_) => (StatusCode::BAD_REQUEST, "INVALID_PATH"),
                E::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
                E::SessionNotFound(_) => (StatusCode::NOT_FOUND, "SESSION_NOT_FOUND"),
                E::FileNotFound(_) => (StatusCode::NOT_FOUND, "FILE_NOT_FOUND"),
                E::ImageNotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
                E::SessionNotRunning { .. } => (StatusCode::CONFLICT, "SESSION_NOT_RUNNING"),
                E::WorkspaceDisabled => (StatusCode::CONFLICT, "WORKSPACE_DISABLED"),
                E::WorkspaceNotFound(_) => (StatusCode::NOT_FOUND, "WORKSPACE_NOT_FOUND"),
                E::SnapshotNotFound(_) => (StatusCode::NOT_FOUND, "SNAPSHOT_NOT_FOUND"),
                E::WorkspaceInUse { .. } => (StatusCode::CONFLICT, "WORKSPACE_IN_USE"),
                E::ImageInUse { .. } => (StatusCode::CONFLICT, "IMAGE_IN_USE"),
                E::AlreadyExists(_) => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
                E::CapacityExhausted(_) => (StatusCode::SERVICE_UNAVAILABLE, "CAPACITY_EXHAUSTED"),
                E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN"),
                E::Runtime { .. } | E::Store(_) | E::Internal(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR")
                }
            },
        }
    }

    /// The message for the client. Never the detail of a 500.
    fn message(&self) -> String {
        match self {
            ApiError::InvalidRequest(m)
            | ApiError::InvalidPath(m)
            | ApiError::InvalidWorkspace(m) => m.clone(),
            ApiError::Unauthorized => "missing or invalid API key".into(),
            ApiError::RouteNotFound { method, path } => format!("no route for {method} {path}"),
            ApiError::MethodNotAllowed { method, path } => {
                format!("method {method} is not allowed on {path}")
            }
            ApiError::PayloadTooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            ApiError::Engine(_) if self.is_internal() => "internal error".into(),
            ApiError::Engine(e) => e.to_string(),
        }
    }

    /// Structured context that is safe to show.
    fn details(&self) -> Map<String, Value> {
        use EngineError as E;
        let v = match self {
            ApiError::PayloadTooLarge { limit } => json!({ "max_bytes": limit }),
            ApiError::Engine(E::SessionNotFound(id)) => json!({ "session_id": id }),
            ApiError::Engine(E::SessionNotRunning { id, state }) => {
                json!({ "session_id": id, "state": state })
            }
            ApiError::Engine(E::ImageInUse { image, session }) => {
                json!({ "image": image, "session_id": session })
            }
            ApiError::Engine(E::CapacityExhausted(max)) => json!({ "max_sessions": max }),
            ApiError::Engine(E::WorkspaceNotFound(id)) => json!({ "workspace_id": id }),
            ApiError::Engine(E::WorkspaceInUse { id, session }) => {
                json!({ "workspace_id": id, "session_id": session })
            }
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
        if let ApiError::Engine(e) = &self {
            if self.is_internal() {
                tracing::error!(error = %error_chain(e), "request failed with an internal error");
            }
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
        let cases: Vec<(EngineError, u16, &str)> = vec![
            (
                EngineError::InvalidRequest("x".into()),
                400,
                "INVALID_REQUEST",
            ),
            (EngineError::InvalidImage("x".into()), 400, "INVALID_IMAGE"),
            (
                EngineError::InvalidWorkspace("x".into()),
                400,
                "INVALID_WORKSPACE",
            ),
            (EngineError::InvalidPath("x".into()), 400, "INVALID_PATH"),
            (
                EngineError::SessionNotFound("abc".into()),
                404,
                "SESSION_NOT_FOUND",
            ),
            (EngineError::FileNotFound("f".into()), 404, "FILE_NOT_FOUND"),
            (EngineError::ImageNotFound("i".into()), 404, "NOT_FOUND"),
            (
                EngineError::SessionNotRunning {
                    id: "s".into(),
                    state: "expired",
                },
                409,
                "SESSION_NOT_RUNNING",
            ),
            (EngineError::WorkspaceDisabled, 409, "WORKSPACE_DISABLED"),
            (
                EngineError::WorkspaceNotFound("w".into()),
                404,
                "WORKSPACE_NOT_FOUND",
            ),
            (
                EngineError::WorkspaceInUse {
                    id: "w".into(),
                    session: "s".into(),
                },
                409,
                "WORKSPACE_IN_USE",
            ),
            (
                EngineError::ImageInUse {
                    image: "i".into(),
                    session: "s".into(),
                },
                409,
                "IMAGE_IN_USE",
            ),
            (
                EngineError::AlreadyExists("f".into()),
                409,
                "ALREADY_EXISTS",
            ),
            (
                EngineError::PermissionDenied("f".into()),
                403,
                "PERMISSION_DENIED",
            ),
            (EngineError::CapacityExhausted(4), 503, "CAPACITY_EXHAUSTED"),
            (EngineError::ShuttingDown, 503, "SHUTTING_DOWN"),
            (
                EngineError::Runtime {
                    context: "while mounting the workspace",
                    source: RuntimeError::Other("secret detail".into()),
                },
                500,
                "INTERNAL_ERROR",
            ),
            (
                EngineError::Store(StoreError::TooNew { found: 9, known: 1 }),
                500,
                "INTERNAL_ERROR",
            ),
            (
                EngineError::Internal("secret detail".into()),
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
        let (_, body) = render(ApiError::Engine(EngineError::SessionNotFound("abc".into()))).await;
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
        let (s, body) = render(ApiError::InvalidPath("bad".into())).await;
        assert_eq!(
            (s.as_u16(), &body["error_code"]),
            (400, &json!("INVALID_PATH"))
        );
        let (s, body) = render(ApiError::InvalidWorkspace("bad id".into())).await;
        assert_eq!(
            (s.as_u16(), &body["error_code"], &body["message"]),
            (400, &json!("INVALID_WORKSPACE"), &json!("bad id"))
        );
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
