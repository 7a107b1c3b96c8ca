//! `sandkasten mcp`: a stdio MCP server for clients that only start local
//! programs, as a bridge to the running daemon's `/mcp` (streamable HTTP).
//!
//! Each JSON-RPC line from stdin is POSTed to `/mcp` with the API key, the
//! session id the daemon gave at `initialize` and the negotiated protocol
//! version; every JSON-RPC message of the answer (a JSON body, or the
//! events of an SSE body: progress notifications, then the response) is
//! written to stdout as one line. Requests run concurrently, so a
//! `notifications/cancelled` reaches the daemon while the request it
//! cancels is still running; `initialize` and notifications are sent in
//! order. When stdin closes, requests still running are dropped (the
//! daemon then cancels them) and the session is ended with `DELETE`.

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// What every POST carries besides the message.
struct Link {
    url: String,
    key: String,
    http: reqwest::Client,
    /// The session id and protocol version from `initialize`.
    session: Mutex<(Option<String>, Option<String>)>,
    out: mpsc::UnboundedSender<String>,
}

/// Runs the bridge until stdin closes.
pub async fn run(base: String, key: String, http: reqwest::Client) -> Result<()> {
    let (out, mut lines_out) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines_out.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let link = Arc::new(Link {
        url: format!("{}/mcp", base.trim_end_matches('/')),
        key,
        http,
        session: Mutex::new((None, None)),
        out,
    });
    let mut running = JoinSet::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await.context("reading stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let message: Option<Value> = serde_json::from_str(&line).ok();
        let is_request = message
            .as_ref()
            .is_some_and(|m| m.get("method").is_some() && m.get("id").is_some());
        let is_initialize = message
            .as_ref()
            .is_some_and(|m| m.get("method").and_then(Value::as_str) == Some("initialize"));
        if is_request && !is_initialize {
            let link = link.clone();
            running.spawn(async move { link.post(line, message).await });
        } else {
            // `initialize` gives the session id the next messages need;
            // notifications and responses keep their order.
            link.post(line, message).await;
        }
        // Reap finished requests as we go.
        while running.try_join_next().is_some() {}
    }
    running.shutdown().await;
    link.end_session().await;
    drop(link);
    let _ = writer.await;
    Ok(())
}

impl Link {
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let session = self.session.lock().expect("session lock").clone();
        if let Some(id) = session.0.and_then(|s| HeaderValue::from_str(&s).ok()) {
            h.insert(SESSION_HEADER, id);
        }
        if let Some(v) = session.1.and_then(|s| HeaderValue::from_str(&s).ok()) {
            h.insert(VERSION_HEADER, v);
        }
        h
    }

    /// Sends one message and writes every message of the answer; a failure
    /// of the exchange becomes a JSON-RPC error for a request.
    async fn post(&self, line: String, message: Option<Value>) {
        let id = message
            .as_ref()
            .filter(|m| m.get("method").is_some())
            .and_then(|m| m.get("id").cloned());
        if let Err(e) = self.exchange(line).await {
            if let Some(id) = id {
                self.emit(json!({
                    "jsonrpc": "2.0", "id": id,
                    "error": {"code": -32603, "message": format!("sandkasten mcp: {e:#}")},
                }));
            } else {
                eprintln!("sandkasten mcp: {e:#}");
            }
        }
    }

    async fn exchange(&self, line: String) -> Result<()> {
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(&self.key)
            .headers(self.headers())
            .body(line)
            .send()
            .await
            .with_context(|| format!("reaching the daemon at {}", self.url))?;
        if let Some(id) = resp.headers().get(SESSION_HEADER) {
            if let Ok(id) = id.to_str() {
                self.session.lock().expect("session lock").0 = Some(id.to_string());
            }
        }
        let status = resp.status();
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            let mut body = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut data = String::new();
            while let Some(chunk) = body.next().await {
                buf.extend_from_slice(&chunk.context("reading the daemon's stream")?);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let raw: Vec<u8> = buf.drain(..=nl).collect();
                    let text = String::from_utf8_lossy(&raw);
                    let text = text.trim_end_matches(['\n', '\r']);
                    if text.is_empty() {
                        if !data.is_empty() {
                            self.emit_text(std::mem::take(&mut data));
                        }
                    } else if let Some(d) = text.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
            }
            if !data.is_empty() {
                self.emit_text(data);
            }
            return Ok(());
        }
        let body = resp.text().await.context("reading the daemon's answer")?;
        if body.trim().is_empty() {
            if status.is_success() {
                return Ok(()); // 202 Accepted: a notification or response
            }
            anyhow::bail!("the daemon answered {status}");
        }
        match serde_json::from_str::<Value>(&body) {
            Ok(v) if v.get("jsonrpc").is_some() || v.is_array() => {
                self.emit_text(body.trim().to_string());
                Ok(())
            }
            _ if status == reqwest::StatusCode::UNAUTHORIZED => {
                anyhow::bail!("the daemon refused the API key (401)")
            }
            _ => anyhow::bail!("the daemon answered {status}: {}", body.trim()),
        }
    }

    fn emit(&self, v: Value) {
        let _ = self.out.send(v.to_string());
    }

    /// Writes one message; notes the protocol version of an `initialize`
    /// result for the next requests' header.
    fn emit_text(&self, text: String) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if let Some(version) = v
                .get("result")
                .and_then(|r| r.get("protocolVersion"))
                .and_then(Value::as_str)
            {
                self.session.lock().expect("session lock").1 = Some(version.to_string());
            }
        }
        let _ = self.out.send(text);
    }

    async fn end_session(&self) {
        let has_session = self.session.lock().expect("session lock").0.is_some();
        if has_session {
            let _ = self
                .http
                .delete(&self.url)
                .bearer_auth(&self.key)
                .headers(self.headers())
                .send()
                .await;
        }
    }
}
