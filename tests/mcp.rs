//! MCP at `/mcp` against a real daemon, for what the official clients of
//! scripts/mcp-clients do not reach: the cap on live sessions and the
//! size of what an `initialize` logs.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// `MAX_SESSIONS` of crates/sandkasten-api/src/mcp.rs.
const MAX_MCP_SESSIONS: usize = 1000;

struct Answer {
    status: u16,
    session: Option<String>,
    json: Value,
}

fn mcp(d: &Daemon, method: reqwest::Method, session: Option<&str>, body: Option<&Value>) -> Answer {
    let mut rb = d
        .client
        .request(method, format!("{}/mcp", d.url))
        .bearer_auth(&d.key)
        .header("Accept", "application/json, text/event-stream");
    if let Some(s) = session {
        rb = rb
            .header("Mcp-Session-Id", s)
            .header("MCP-Protocol-Version", "2025-06-18");
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let r = rb.send().expect("a response from /mcp");
    let status = r.status().as_u16();
    let session = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = r.text().unwrap_or_default();
    // A JSON body, or an SSE stream whose last `data:` is the answer.
    let json = serde_json::from_str(&text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .next_back()
            .unwrap_or(Value::Null)
    });
    Answer {
        status,
        session,
        json,
    }
}

fn initialize(name: &str, version: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": name, "version": version },
        },
    })
}

fn open_session(d: &Daemon) -> Answer {
    mcp(
        d,
        reqwest::Method::POST,
        None,
        Some(&initialize("test", "1")),
    )
}

fn tools_list(d: &Daemon, session: &str) -> Answer {
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    mcp(d, reqwest::Method::POST, Some(session), Some(&body))
}

#[test]
fn mcp_sessions_are_capped_and_an_ended_one_frees_its_place() {
    let d = Daemon::start(None);
    let mut sessions = Vec::new();
    for i in 0..MAX_MCP_SESSIONS {
        let a = open_session(&d);
        assert_eq!(a.status, 200, "initialize {i}: {}", a.json);
        sessions.push(a.session.expect("an Mcp-Session-Id"));
    }
    let first = &sessions[0];
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let a = mcp(&d, reqwest::Method::POST, Some(first), Some(&initialized));
    assert_eq!(a.status, 202, "notifications/initialized: {}", a.json);

    // One more: refused with the protocol's error shape, no session made.
    for _ in 0..3 {
        let a = open_session(&d);
        assert_eq!(a.status, 503, "initialize past the cap: {}", a.json);
        assert!(a.session.is_none(), "no session past the cap");
        assert_eq!(a.json["jsonrpc"], "2.0", "{}", a.json);
        assert_eq!(a.json["id"], 1, "{}", a.json);
        assert_eq!(a.json["error"]["data"]["error_code"], "CAPACITY_EXHAUSTED");
        assert_eq!(
            a.json["error"]["data"]["max_mcp_sessions"],
            MAX_MCP_SESSIONS
        );
    }
    // The sessions already open go on.
    let a = tools_list(&d, first);
    assert_eq!(a.status, 200, "tools/list on an open session: {}", a.json);
    assert!(
        a.json["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{}",
        a.json
    );
    // Stateless requests (2026-07-28) need no session and are not refused.
    let stateless = d.send(
        d.request(reqwest::Method::POST, "/mcp")
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/list")
            .json(&json!({
                "jsonrpc": "2.0", "id": 3, "method": "tools/list",
                "params": {"_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
                    "io.modelcontextprotocol/clientCapabilities": {},
                }},
            })),
    );
    assert_eq!(stateless.status, 200, "stateless: {}", stateless.text);

    // A session ended by its client frees its place.
    let last = sessions.pop().expect("a session");
    let a = mcp(&d, reqwest::Method::DELETE, Some(&last), None);
    assert_eq!(a.status, 200, "DELETE: {}", a.json);
    let a = open_session(&d);
    assert_eq!(a.status, 200, "initialize after a DELETE: {}", a.json);
    assert!(a.session.is_some());
    assert_eq!(open_session(&d).status, 503, "full again");
    assert!(d.is_running());
}

#[test]
fn mcp_initialize_logs_a_bounded_client_name() {
    let d = Daemon::start(None);
    let before = d.logs().len();
    let name = format!("claude-{}", "n".repeat(2 * 1024 * 1024));
    let version = "v".repeat(1024 * 1024);
    let a = mcp(
        &d,
        reqwest::Method::POST,
        None,
        Some(&initialize(&name, &version)),
    );
    assert_eq!(a.status, 200, "initialize: {}", a.json);
    // The session works (its handshake is not cut).
    let session = a.session.expect("an Mcp-Session-Id");
    assert_eq!(tools_list(&d, &session).status, 200);

    let logged = wait_for(Duration::from_secs(10), || {
        d.logs().contains("MCP session initialized")
    });
    let logs = d.logs();
    let grown = logs.len() - before;
    assert!(
        logged,
        "no 'MCP session initialized' line; the log grew by {grown} bytes"
    );
    assert!(
        grown < 16 * 1024,
        "3 MB of clientInfo grew the log by {grown} bytes"
    );
    let line = logs
        .lines()
        .find(|l| l.contains("MCP session initialized"))
        .expect("the line");
    let cut = format!("claude-{}…", "n".repeat(64 - "claude-".len()));
    assert!(line.contains(&cut), "the name cut to 64 characters: {line}");
    assert!(line.len() < 1024, "a bounded line: {} bytes", line.len());
}
