//! Access logging: one debug line per request with method, path, status
//! and latency. Never a body, a header or the query string (the key lives
//! in a header, file paths in the query).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

/// Middleware: logs the request once its response head is ready (for an
/// SSE stream that is when the stream starts, not when it ends). Errors
/// logged while handling the request carry its method and path through the
/// span.
pub(crate) async fn access_log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", %method, %path);
    let start = Instant::now();
    let response = next.run(req).instrument(span).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        "http request"
    );
    response
}
