//! Extractors whose rejections are [`ApiError`]s, so that a malformed body,
//! query or path answers with the contract's JSON error instead of axum's
//! plain text.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A JSON request body.
///
/// Unlike `axum::Json` it does not insist on a JSON `Content-Type`: the
/// curl examples existing clients follow send `-d '{...}'`, which curl
/// labels `application/x-www-form-urlencoded`. The body must be a JSON
/// object; an empty body counts as `{}`, so a create with every field
/// omitted works without one.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e.status(), e.body_text(), state.max_body_bytes))?;
        parse_json_object(&bytes).map(ApiJson)
    }
}

/// Parses a request body that must be a JSON object (empty means `{}`).
pub(crate) fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| invalid_json(&e));
    }
    // serde would also accept an array for a struct (fields by position);
    // the contract only speaks of objects.
    if trimmed[0] != b'{' {
        return Err(ApiError::InvalidRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(trimmed).map_err(|e| invalid_json(&e))
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => "malformed JSON body",
        Category::Data => "invalid request body",
    };
    ApiError::InvalidRequest(format!("{what}: {e}"))
}

/// Turns a failure to read the body into 413 or 400.
pub(crate) fn body_error(status: StatusCode, text: String, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::InvalidRequest(format!("could not read the request body: {text}"))
    }
}

/// A query string.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::InvalidRequest(e.body_text()))
    }
}

/// Path parameters.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::InvalidRequest(e.body_text()))
    }
}

/// The `{id}` of a workspace route, checked against the contract's id rule
/// before the engine sees it: percent-decoding could otherwise smuggle a
/// `/` or `..` into a name the engine turns into a directory.
#[derive(Debug)]
pub(crate) struct WorkspaceId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for WorkspaceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiPath(id) = ApiPath::<String>::from_request_parts(parts, state).await?;
        check_workspace_id(&id)?;
        Ok(WorkspaceId(id))
    }
}

/// The contract's workspace id rule (the engine's one check), answered
/// before a request reaches the engine.
pub(crate) fn check_workspace_id(id: &str) -> Result<(), ApiError> {
    sandkasten_engine::check_workspace_id(id).map_err(|e| ApiError::Engine(e.into()))
}

/// A `multipart/form-data` body, read with the same size limit as JSON.
pub(crate) struct ApiMultipart(pub Multipart);

impl FromRequest<AppState> for ApiMultipart {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Multipart::from_request(req, state)
            .await
            .map(ApiMultipart)
            .map_err(|e| {
                ApiError::InvalidRequest(format!(
                    "expected a multipart/form-data body: {}",
                    e.body_text()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Req {
        a: Option<u32>,
    }

    fn code(r: Result<Req, ApiError>) -> &'static str {
        r.unwrap_err().status_and_code().1
    }

    #[test]
    fn json_bodies() {
        assert_eq!(parse_json_object::<Req>(b"").unwrap(), Req { a: None });
        assert_eq!(parse_json_object::<Req>(b" \n").unwrap(), Req { a: None });
        assert_eq!(
            parse_json_object::<Req>(br#" {"a": 1, "unknown": [1]} "#).unwrap(),
            Req { a: Some(1) }
        );
        assert_eq!(code(parse_json_object(br#"{"a": "x"}"#)), "INVALID_REQUEST");
        assert_eq!(code(parse_json_object(br#"{"a": 1"#)), "INVALID_REQUEST");
        assert_eq!(code(parse_json_object(b"[1]")), "INVALID_REQUEST");
        assert_eq!(code(parse_json_object(b"null")), "INVALID_REQUEST");
    }

    #[test]
    fn workspace_ids_follow_the_contract() {
        let longest = "a".repeat(64);
        for ok in ["a", "user123-project456", "A.b_c-d", "0", "a..b", &longest] {
            assert!(check_workspace_id(ok).is_ok(), "{ok}");
        }
        let too_long = "a".repeat(65);
        for bad in [
            "", ".a", "-a", "..", "a/b", "../etc", "a b", "a\0", "ü", "a:b", &too_long,
        ] {
            let e = check_workspace_id(bad).unwrap_err();
            assert_eq!(e.status_and_code().1, "INVALID_WORKSPACE", "{bad:?}");
        }
    }

    #[test]
    fn body_errors() {
        assert_eq!(
            body_error(StatusCode::PAYLOAD_TOO_LARGE, String::new(), 5)
                .status_and_code()
                .1,
            "PAYLOAD_TOO_LARGE"
        );
        assert_eq!(
            body_error(StatusCode::BAD_REQUEST, String::new(), 5)
                .status_and_code()
                .1,
            "INVALID_REQUEST"
        );
    }
}
