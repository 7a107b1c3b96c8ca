//! Bearer-key authentication: `Authorization: Bearer <key>` on every route
//! but `/healthz`, compared in constant time. The key is never logged and
//! never read from the URL.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The configured key, kept only as its SHA-256 digest: comparing digests of
/// equal length leaks neither the key's bytes nor its length through timing.
#[derive(Clone)]
pub(crate) struct ApiKey {
    /// `None` when the configured key is empty: then no request is
    /// authorized, rather than every request with an empty token.
    digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    pub(crate) fn new(key: &str) -> ApiKey {
        ApiKey {
            digest: (!key.is_empty()).then(|| Sha256::digest(key.as_bytes()).into()),
        }
    }

    /// Whether the request's `Authorization` header carries this key.
    pub(crate) fn verify(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.digest else {
            return false;
        };
        let Some(token) = bearer_token(headers) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token).into();
        presented.ct_eq(expected).into()
    }
}

impl ApiKey {
    /// Whether header `name` (e.g. E2B's `X-API-KEY`) is this key.
    pub(crate) fn verify_header(&self, headers: &HeaderMap, name: &str) -> bool {
        let Some(expected) = &self.digest else {
            return false;
        };
        let Some(token) = headers.get(name).map(|v| v.as_bytes().trim_ascii()) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token).into();
        !token.is_empty() && bool::from(presented.ct_eq(expected))
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme is matched
/// case-insensitively (RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Middleware: 401 `UNAUTHORIZED` unless the request carries the key.
pub(crate) async fn require_api_key(
    State(key): State<Arc<ApiKey>>,
    req: Request,
    next: Next,
) -> Response {
    if key.verify(req.headers()) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// The `Allow` header an app behind the ports proxy sent (or none): the
/// router adds its own to answers that come through a route's fallback,
/// so [`allow_only_where_due`] puts the app's back.
#[derive(Clone)]
pub(crate) struct AppAllow(pub(crate) Option<axum::http::HeaderValue>);

/// Outermost, around the whole router: `Allow` only on a 405 (where it is
/// due) and on an app's own answers through the ports proxy. The router
/// adds the methods of the matched path to every answer of its fallback,
/// so a 401 told a client without the key which methods a path takes,
/// and a proxied answer carried the daemon's methods (session 15's
/// attack).
pub(crate) async fn allow_only_where_due(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Some(AppAllow(app)) = resp.extensions_mut().remove::<AppAllow>() {
        // The router adds `Allow` only where there is none: the app's own
        // lines are as it sent them.
        if app.is_none() {
            resp.headers_mut().remove(header::ALLOW);
        }
    } else if resp.status() != axum::http::StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().remove(header::ALLOW);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn accepts_only_the_bearer_key() {
        let key = ApiKey::new("sk-test");
        assert!(key.verify(&headers(Some("Bearer sk-test"))));
        assert!(key.verify(&headers(Some("bearer sk-test"))));
        assert!(key.verify(&headers(Some("Bearer  sk-test "))));
        assert!(!key.verify(&headers(None)));
        assert!(!key.verify(&headers(Some("Bearer sk-tes"))));
        assert!(!key.verify(&headers(Some("Bearer sk-test2"))));
        assert!(!key.verify(&headers(Some("Basic sk-test"))));
        assert!(!key.verify(&headers(Some("sk-test"))));
        assert!(!key.verify(&headers(Some("Bearer"))));
        assert!(!key.verify(&headers(Some("Bearer "))));
    }

    #[test]
    fn an_empty_key_authorizes_nothing() {
        let key = ApiKey::new("");
        assert!(!key.verify(&headers(Some("Bearer "))));
        assert!(!key.verify(&headers(Some("Bearer x"))));
        assert!(!key.verify(&headers(None)));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        assert_eq!(
            format!("{:?}", ApiKey::new("sk-test")),
            "ApiKey(<redacted>)"
        );
    }
}
