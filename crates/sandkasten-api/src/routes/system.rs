//! `GET /healthz` and `GET /openapi.json`.

use crate::wire::Health;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use std::sync::LazyLock;

/// Liveness: answers once the daemon can create sessions (the router only
/// exists after the engine started). No authentication.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    security(()),
    responses((status = 200, description = "The daemon is ready", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The OpenAPI document, rendered once.
static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| {
    crate::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// This API's OpenAPI 3.1 document, generated from the handlers and wire
/// types.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document (JSON)"))
)]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON.as_str(),
    )
}
