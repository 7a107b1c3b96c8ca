//! A cap on live MCP sessions: [`CappedSessions`] wraps rmcp's session
//! manager and counts the sessions it holds, from `create_session` to
//! `close_session` (a client's DELETE, or rmcp's worker ending after the
//! idle keep-alive, a failed handshake or the daemon's shutdown: each ends
//! in `close_session`). Past the cap it creates none; [`refuse_when_full`]
//! answers such an `initialize` 503 before rmcp sees it, so the refusal has
//! the JSON-RPC shape and rmcp logs no error for it. Sessions already open
//! and stateless requests are not affected.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::common::server_side_http::{ServerSseMessage, SessionId};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The session header of the streamable HTTP transport.
const SESSION_HEADER: &str = "mcp-session-id";

/// A server error of JSON-RPC's implementation-defined range.
const SERVER_ERROR: i64 = -32000;

/// rmcp's session manager, holding at most `max` sessions.
pub(crate) struct CappedSessions<M = LocalSessionManager> {
    inner: M,
    max: usize,
    count: Mutex<Count>,
}

#[derive(Default)]
struct Count {
    /// Sessions created and not yet closed.
    live: HashSet<SessionId>,
    /// Creations under way (their places taken).
    creating: usize,
}

impl Count {
    fn taken(&self) -> usize {
        self.live.len() + self.creating
    }
}

impl<M: Default> CappedSessions<M> {
    pub(crate) fn new(max: usize) -> Self {
        CappedSessions {
            inner: M::default(),
            max,
            count: Mutex::default(),
        }
    }
}

impl<M> CappedSessions<M> {
    fn count(&self) -> std::sync::MutexGuard<'_, Count> {
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether no further session may be created now.
    pub(crate) fn is_full(&self) -> bool {
        self.count().taken() >= self.max
    }
}

/// A session manager's error, or the cap reached.
#[derive(Debug)]
pub(crate) enum CappedError<E> {
    Full(usize),
    Inner(E),
}

impl<E: std::fmt::Display> std::fmt::Display for CappedError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CappedError::Full(max) => write!(f, "{max} MCP sessions are open, the most allowed"),
            CappedError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CappedError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CappedError::Full(_) => None,
            CappedError::Inner(e) => Some(e),
        }
    }
}

impl<M: SessionManager> SessionManager for CappedSessions<M> {
    type Error = CappedError<M::Error>;
    type Transport = M::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        {
            let mut count = self.count();
            if count.taken() >= self.max {
                return Err(CappedError::Full(self.max));
            }
            count.creating += 1;
        }
        let created = self.inner.create_session().await;
        let mut count = self.count();
        count.creating -= 1;
        let (id, transport) = created.map_err(CappedError::Inner)?;
        count.live.insert(id.clone());
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner
            .initialize_session(id, message)
            .await
            .map_err(CappedError::Inner)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await.map_err(CappedError::Inner)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        // The inner manager forgets the session whether or not its worker
        // ends cleanly; so does the count.
        self.count().live.remove(id);
        self.inner
            .close_session(id)
            .await
            .map_err(CappedError::Inner)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner
            .create_stream(id, message)
            .await
            .map_err(CappedError::Inner)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner
            .accept_message(id, message)
            .await
            .map_err(CappedError::Inner)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner
            .create_standalone_stream(id)
            .await
            .map_err(CappedError::Inner)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner
            .resume(id, last_event_id)
            .await
            .map_err(CappedError::Inner)
    }
}

/// The parts of a JSON-RPC message this layer looks at.
#[derive(serde::Deserialize)]
struct Peek {
    method: Option<String>,
    #[serde(default)]
    id: serde_json::Value,
}

/// Middleware on the MCP service: an `initialize` (a POST without a
/// session) while the cap is reached is answered 503 with a JSON-RPC error
/// (`data.error_code` `CAPACITY_EXHAUSTED`) and creates nothing. The body
/// has been read whole (within the limit) by `protocol_errors` already.
pub(crate) async fn refuse_when_full(
    State(sessions): State<Arc<CappedSessions>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST || req.headers().contains_key(SESSION_HEADER) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let id = match serde_json::from_slice::<Peek>(&bytes) {
        Ok(Peek {
            method: Some(method),
            id,
        }) if method == "initialize" => id,
        _ => {
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    };
    if sessions.is_full() {
        return full(&sessions, id);
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    // Another initialize took the last place in between: rmcp answers the
    // session manager's refusal 500.
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR && sessions.is_full() {
        return full(&sessions, id);
    }
    response
}

fn full(sessions: &CappedSessions, id: serde_json::Value) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": SERVER_ERROR,
            "message": format!(
                "{} MCP sessions are open, the most the daemon keeps; end one (DELETE /mcp \
                 with its Mcp-Session-Id) or wait for an idle one to expire",
                sessions.max
            ),
            "data": { "error_code": "CAPACITY_EXHAUSTED", "max_mcp_sessions": sessions.max },
        },
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_session_frees_its_place() {
        let sessions = CappedSessions::<LocalSessionManager>::new(2);
        let (a, _ta) = sessions.create_session().await.expect("first");
        let (_b, _tb) = sessions.create_session().await.expect("second");
        assert!(sessions.is_full());
        assert!(matches!(
            sessions.create_session().await,
            Err(CappedError::Full(2))
        ));
        sessions.close_session(&a).await.expect("close");
        // Closed twice (a DELETE, then the worker's end): counted once.
        sessions.close_session(&a).await.expect("close again");
        assert!(!sessions.is_full());
        let (_c, _tc) = sessions.create_session().await.expect("third");
        assert!(sessions.is_full());
    }
}
