//! `/v1/sessions/{id}/ports/{port}`: signed URLs of a sandbox port, and the
//! OpenAPI entry of the proxy itself (served by `crate::ports` in front of
//! the router, which also takes signed tokens instead of the key).

use super::ApiResult;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::ports::{now_unix, signed};
use crate::wire::{rfc3339, ErrorBody, PortUrl, PortUrlRequest};
use crate::AppState;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Json;

/// Lifetime of a signed URL whose request names none: one hour.
const DEFAULT_TTL_SECONDS: u64 = 3600;

/// The port number of a path, 1-65535, or 400.
pub(crate) fn parse_port(port: &str) -> Result<u16, ApiError> {
    // Digits as written, no sign or leading zero: one spelling per port
    // (so one preview host, one signed URL).
    let canonical = port.bytes().all(|b| b.is_ascii_digit()) && !port.starts_with('0');
    let parsed = canonical.then(|| port.parse::<u16>().ok()).flatten();
    parsed.ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "invalid port {port:?}: use a number from 1 to 65535"
        ))
    })
}

/// A signed, expiring URL that opens one port of one session without the
/// API key (for sharing, or a browser). A browser that opens it keeps a
/// cookie for that port until the URL expires.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/ports/{port}/url",
    tag = "ports",
    params(
        ("id" = String, Path, description = "Session id"),
        ("port" = String, Path, description = "TCP port inside the sandbox, 1-65535"),
    ),
    request_body(content = Option<PortUrlRequest>, description = "All fields optional; an empty body is `{}`"),
    responses(
        (status = 200, description = "The signed URL", body = PortUrl),
        (status = 400, description = "INVALID_REQUEST: a bad port or ttl_seconds", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn port_url(
    State(state): State<AppState>,
    ApiPath((id, port)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<PortUrlRequest>,
) -> ApiResult<Json<PortUrl>> {
    Ok(Json(
        signed_url(&state, &id, parse_port(&port)?, req.ttl_seconds).await?,
    ))
}

/// Signs a URL of `port` of session `id` for `ttl_seconds` (default one
/// hour); shared by the route above and the MCP tool `get_port_url`.
pub(crate) async fn signed_url(
    state: &AppState,
    id: &str,
    port: u16,
    ttl_seconds: Option<u64>,
) -> ApiResult<PortUrl> {
    let ttl = ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if ttl == 0 || ttl > signed::MAX_TTL_SECONDS {
        return Err(ApiError::InvalidRequest(format!(
            "ttl_seconds must be from 1 to {}",
            signed::MAX_TTL_SECONDS
        )));
    }
    state.backend.get_session(id).await?;
    let expiry = now_unix() + ttl;
    let token = state.ports.signer.sign(id, port, expiry);
    let query = format!("?{}={token}", signed::QUERY_PARAM);
    let expires_at = time::OffsetDateTime::from_unix_timestamp(expiry as i64)
        .map_err(|e| ApiError::Internal(format!("expiry {expiry}: {e}")))?;
    Ok(PortUrl {
        url: format!("http://{port}-{id}.{}/{query}", state.ports.preview_domain),
        path: format!("/v1/sessions/{id}/ports/{port}/{query}"),
        token,
        expires_at: rfc3339(expires_at),
    })
}

/// Any method and path on a TCP port inside the sandbox, forwarded to the
/// server listening there (HTTP/1.1; bodies streamed, server-sent events,
/// WebSocket upgrades). Also at `http://{port}-{id}.{preview_domain}/…`.
/// Access by the API key, a `sandkasten_token` query parameter from a
/// signed URL, or the cookie that sets. The answer is the server's own,
/// whatever its status and type.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/ports/{port}/{path}",
    tag = "ports",
    params(
        ("id" = String, Path, description = "Session id"),
        ("port" = String, Path, description = "TCP port inside the sandbox, 1-65535"),
        ("path" = String, Path, description = "Path on the server inside (any depth)"),
    ),
    responses(
        (status = 200, description = "The server's own answer (any status and content type)", content_type = "*/*"),
        (status = 400, description = "INVALID_REQUEST: a bad port", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
        (status = 502, description = "PORT_NOT_LISTENING: nothing listens on the port; PORT_UNREACHABLE: the port did not answer or broke off", body = ErrorBody),
    )
)]
pub(crate) async fn proxy(State(state): State<AppState>, req: Request) -> Response {
    // Never reached through the router in a running daemon: the ports
    // middleware answers these paths first. Declared for the document.
    crate::ports::serve(&state.ports, req).await
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn a_port_has_one_spelling() {
        assert_eq!(parse_port("8000").ok(), Some(8000));
        assert_eq!(parse_port("65535").ok(), Some(65535));
        for bad in ["0", "08000", "+8000", "-1", "65536", "", " 80", "8e3"] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
    }
}
