//! Holds a request's claim on the daemon's body budget
//! (`sandkasten_engine::BodyBudget`) while its handler runs: on every
//! route that reads its body whole (JSON, multipart uploads), and on MCP
//! (`mcp::protocol_errors`, whose answer may be a stream that outlives
//! the handler: the claim lives as long as the answer's body there).
//! Routes that stream their body (process stdin, workspace import, the
//! ports proxy, the PTY WebSocket) are outside this layer.

use crate::error::ApiError;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as _, Frame, SizeHint};
use sandkasten_engine::BodyClaim;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The size a request's body announces: its `Content-Length` (0 for none),
/// or `None` when it is chunked.
pub(crate) fn announced(req: &Request) -> Option<u64> {
    req.body().size_hint().exact()
}

/// Claims room for the body (waiting for it, at most the budget's wait),
/// runs the handler and gives the room back once it has answered; 503
/// `CAPACITY_EXHAUSTED` without reading the body when no room came. A
/// chunked body claims the whole body limit until it is read, here, then
/// only its size: the handler gets it whole, with its length.
pub(crate) async fn hold(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.max_body_bytes;
    let announced = announced(&req);
    let mut claim = match state.bodies.claim(announced, limit as u64).await {
        Ok(c) => c,
        Err(e) => return ApiError::BodiesFull(e).into_response(),
    };
    let req = match announced {
        Some(_) => req,
        None => match read_whole(req, limit).await {
            Ok((req, len)) => {
                claim.shrink_to(len);
                req
            }
            Err(e) => return e.into_response(),
        },
    };
    let response = next.run(req).await;
    drop(claim);
    response
}

/// Reads a chunked body whole (at most `limit` bytes) and gives the
/// request back with it, as if its length had been announced.
pub(crate) async fn read_whole(req: Request, limit: usize) -> Result<(Request, u64), ApiError> {
    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| read_error(&e, limit))?;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, bytes.len().into());
    let len = bytes.len() as u64;
    Ok((Request::from_parts(parts, Body::from(bytes)), len))
}

/// A body that could not be read: over the limit (413), or the client's
/// failure (400: it paused too long, broke off).
fn read_error(e: &axum::Error, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ApiError::PayloadTooLarge { limit };
        }
        source = s.source();
    }
    ApiError::InvalidRequest(format!("could not read the request body: {e}"))
}

/// A response body that holds its request's claim until it ends (or is
/// dropped): for answers that stream on after the handler has returned.
pub(crate) struct Holding {
    inner: Body,
    _claim: BodyClaim,
}

impl Holding {
    pub(crate) fn wrap(response: Response, claim: BodyClaim) -> Response {
        response.map(|inner| {
            Body::new(Holding {
                inner,
                _claim: claim,
            })
        })
    }
}

impl hyper::body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
