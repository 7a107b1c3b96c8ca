//! The handlers, one module per part of the contract. Each handler extracts,
//! validates, calls one engine method and converts the result.

pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod lifecycle;
pub(crate) mod pool;
pub(crate) mod ports;
pub(crate) mod processes;
pub(crate) mod pty;
pub(crate) mod sessions;
pub(crate) mod system;
pub(crate) mod workspaces;

use crate::error::ApiError;
use axum::http::{Method, Uri};

/// Result of a handler.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Fallback for paths no route has: 404 `NOT_FOUND`.
pub(crate) async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Fallback for a known path with an unknown method: 405
/// `METHOD_NOT_ALLOWED` (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
