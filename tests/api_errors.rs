//! The API's edges end to end: authentication, the JSON error shape for
//! unknown routes, wrong methods, bad and oversized bodies, and a config
//! that `serve` must refuse at start.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

#[test]
fn missing_key_is_401_unauthorized() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let anon = reqwest::blocking::Client::new();
    let send = |rb: reqwest::blocking::RequestBuilder, what: &str| {
        let r = d.send(rb);
        r.assert_error(401, "UNAUTHORIZED", what);
        assert!(
            r.content_type.starts_with("application/json"),
            "{what}: content type {:?}",
            r.content_type
        );
    };
    send(
        anon.get(format!("{}/v1/sessions", d.url)),
        "GET /v1/sessions",
    );
    send(
        anon.post(format!("{}/v1/sessions", d.url)).json(&json!({})),
        "POST /v1/sessions",
    );
    send(
        anon.post(format!("{}/v1/sessions/{id}/exec", d.url))
            .json(&json!({"cmd": "touch /tmp/anon"})),
        "exec",
    );
    send(anon.delete(format!("{}/v1/sessions/{id}", d.url)), "DELETE");
    send(
        anon.get(format!("{}/v1/no-such-route", d.url)),
        "unknown route without key",
    );
    // Nothing of the above happened.
    assert_eq!(d.listed_ids(), vec![id.clone()]);
    assert_eq!(d.exec(&id, "test -e /tmp/anon")["exit_code"], 1);
}

#[test]
fn wrong_key_is_401_unauthorized() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let wrong = format!("{}x", d.key);
    let prefix = d.key[..d.key.len() - 1].to_string();
    for key in [wrong.as_str(), prefix.as_str(), "", "Bearer"] {
        let r = d.send(
            d.client
                .get(format!("{}/v1/sessions/{id}", d.url))
                .bearer_auth(key),
        );
        r.assert_error(401, "UNAUTHORIZED", &format!("key {key:?}"));
    }
    // Not Bearer: the key as Basic auth or as a bare header value.
    let r = d.send(
        d.client
            .get(format!("{}/v1/sessions", d.url))
            .basic_auth(&d.key, Some("")),
    );
    r.assert_error(401, "UNAUTHORIZED", "basic auth");
    let r = d.send(
        d.client
            .get(format!("{}/v1/sessions", d.url))
            .header("Authorization", d.key.clone()),
    );
    r.assert_error(401, "UNAUTHORIZED", "key without Bearer");
}

#[test]
fn the_key_is_never_accepted_in_the_url() {
    let d = Daemon::start(None);
    for q in ["api_key", "key", "token", "access_token"] {
        let r = d.send(
            d.client
                .get(format!("{}/v1/sessions", d.url))
                .query(&[(q, d.key.as_str())]),
        );
        r.assert_error(401, "UNAUTHORIZED", &format!("?{q}=KEY"));
    }
}

#[test]
fn healthz_needs_no_key() {
    let d = Daemon::start(None);
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/healthz", d.url))
        .send()
        .expect("GET /healthz");
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().expect("healthz body is JSON");
    assert_eq!(v, json!({"status": "ok"}));
}

#[test]
fn unknown_route_is_404_json() {
    let d = Daemon::start(None);
    for path in ["/v1/nope", "/v2/sessions", "/", "/v1/sessions/x/y/z"] {
        d.get(path)
            .assert_error(404, "NOT_FOUND", &format!("GET {path}"));
    }
}

#[test]
fn wrong_method_is_405_json() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let cases = [
        (reqwest::Method::PUT, "/v1/sessions".to_string()),
        (reqwest::Method::PATCH, format!("/v1/sessions/{id}")),
        (reqwest::Method::GET, format!("/v1/sessions/{id}/exec")),
        (
            reqwest::Method::DELETE,
            format!("/v1/sessions/{id}/fs/read"),
        ),
        (reqwest::Method::POST, "/healthz".to_string()),
    ];
    for (method, path) in cases {
        let r = d.send(d.request(method.clone(), &path));
        r.assert_error(405, "METHOD_NOT_ALLOWED", &format!("{method} {path}"));
    }
}

#[test]
fn bad_json_is_400_invalid_request() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let raw = |path: &str, body: &str| {
        d.send(
            d.request(reqwest::Method::POST, path)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
    };
    raw("/v1/sessions", "{\"image\":").assert_error(400, "INVALID_REQUEST", "truncated JSON");
    raw("/v1/sessions", "not json at all").assert_error(400, "INVALID_REQUEST", "not JSON");
    raw("/v1/sessions", "{\"ttl_seconds\": \"soon\"}").assert_error(
        400,
        "INVALID_REQUEST",
        "ttl_seconds of the wrong type",
    );
    let exec = format!("/v1/sessions/{id}/exec");
    raw(&exec, "{\"cmd\": 5}").assert_error(400, "INVALID_REQUEST", "cmd of the wrong type");
    raw(&exec, "{\"timeout_ms\": 5}").assert_error(400, "INVALID_REQUEST", "missing cmd");
    raw(&exec, "[]").assert_error(400, "INVALID_REQUEST", "array body");
    raw(
        &format!("/v1/sessions/{id}/fs/write"),
        "{\"path\": 1, \"text\": \"x\"}",
    )
    .assert_error(400, "INVALID_REQUEST", "path of the wrong type");
    d.send(d.request(reqwest::Method::GET, &format!("/v1/sessions/{id}/fs/read")))
        .assert_error(400, "INVALID_REQUEST", "fs/read without path");
    assert_eq!(d.listed_ids(), vec![id], "a bad request created a session");
}

#[test]
fn oversized_body_is_413() {
    let d = Daemon::start(None);
    let id = d.new_session();
    // 1 GiB announced and streamed: far over any sane JSON body limit.
    let (status, body) = raw_post_oversized(
        d.port,
        &format!("/v1/sessions/{id}/fs/write"),
        &d.key,
        b"{\"path\": \"big.bin\", \"content_base64\": \"",
        &[b'A'; 1 << 20],
        1 << 30,
    );
    assert_eq!(status, 413, "oversized body answered {status}: {body:.500}");
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("413 body is not JSON ({e}): {body:.500}"));
    assert_error_body(&v, &body, "PAYLOAD_TOO_LARGE", "oversized body");
    // The daemon is fine afterwards and wrote nothing.
    d.read_resp(&id, "big.bin")
        .assert_error(404, "FILE_NOT_FOUND", "file of a refused body");
    assert_eq!(d.sh(&id, "echo ok"), "ok\n");
}

#[test]
fn unknown_config_keys_stop_serve() {
    for (yaml, key) in [
        ("bogus_key_e2e: 1\n", "bogus_key_e2e"),
        ("defaults:\n  mem_limt_mb: 64\n", "mem_limt_mb"),
        ("pool:\n  enabled: false\n  sizes: {}\n", "sizes"),
    ] {
        let r = serve_expecting_refusal(yaml);
        assert!(!r.status.success(), "serve accepted {yaml:?}");
        assert!(
            r.output.contains(key),
            "serve refused {yaml:?} without naming {key}: {}",
            r.output
        );
    }
}

#[test]
fn invalid_config_values_stop_serve() {
    for (yaml, key) in [
        ("defaults:\n  mem_limit_mb: -1\n", "mem_limit_mb"),
        ("defaults:\n  network_mode: bogus\n", "network_mode"),
        ("defaults:\n  pids_limit: lots\n", "pids_limit"),
        ("session_ttl_seconds: -5\n", "session_ttl_seconds"),
        ("runtime: nonesuch\n", "runtime"),
    ] {
        let r = serve_expecting_refusal(yaml);
        assert!(!r.status.success(), "serve accepted {yaml:?}");
        assert!(
            r.output.contains(key),
            "serve refused {yaml:?} without naming {key}: {}",
            r.output
        );
    }
}

#[test]
fn the_api_key_never_appears_in_logs() {
    let home = DataDir::new();
    let d = Daemon::start_with(
        &home,
        Options {
            env: vec![("RUST_LOG".into(), "debug".into())],
            ..Options::default()
        },
    );
    let id = d.new_session();
    d.sh(&id, "true");
    let wrong = format!("sk-wrong-{}", random_hex(24));
    let r = d.send(
        d.client
            .get(format!("{}/v1/sessions", d.url))
            .bearer_auth(&wrong),
    );
    r.assert_error(401, "UNAUTHORIZED", "wrong key");
    d.delete(&id);
    let (status, _) = d.terminate();
    assert!(status.success());
    let logs = format!("{}{}", d.logs(), d.stdout());
    assert!(!logs.is_empty(), "no logs at RUST_LOG=debug");
    assert!(!logs.contains(&d.key), "the API key appears in the logs");
    assert!(
        !logs.contains(&wrong),
        "a presented wrong key appears in the logs"
    );
}

/// Paths below `dir` mentioned in `text`.
fn paths_below(text: &str, dir: &str) -> Vec<PathBuf> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
        .filter(|w| w.starts_with(dir))
        .map(|w| PathBuf::from(w.trim_end_matches([',', '.', ';', ':', ')'])))
        .collect()
}

#[test]
fn without_a_key_one_is_generated_stored_0600_and_kept() {
    let home = DataDir::new();
    let d = Daemon::start_without_key(&home);
    let printed = format!("{}\n{}", d.stdout(), d.logs());
    let data = home.data.to_string_lossy().to_string();
    let file = paths_below(&printed, &data)
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("the daemon did not print where it stored the generated key: {printed}")
        });
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
    let key = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(key.len() >= 16, "weak generated key {key:?}");

    let anon = d.get("/v1/sessions");
    anon.assert_error(
        401,
        "UNAUTHORIZED",
        "no key sent to a daemon with a generated key",
    );
    assert!(
        !d.logs().contains(&key) && !d.stdout().contains(&key),
        "the generated key was printed"
    );
    let d = d.with_key(&key);
    d.list_sessions();
    let (status, _) = d.terminate();
    assert!(status.success());

    // The next start on the same data dir keeps the key.
    let d2 = Daemon::start_without_key(&home).with_key(&key);
    assert!(d2.list_sessions().is_empty());
    assert!(
        !d2.logs().contains(&key) && !d2.stdout().contains(&key),
        "the generated key was printed"
    );
}

#[test]
fn openapi_document_is_served_behind_the_key() {
    let d = Daemon::start(None);
    let v = d.get("/openapi.json").expect(200, "GET /openapi.json");
    assert!(v["openapi"].is_string(), "no openapi version: {v:.300}");
    let paths = v["paths"]
        .as_object()
        .expect("no paths in the OpenAPI document");
    for p in [
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/exec",
        "/v1/sessions/{id}/exec/stream",
        "/v1/sessions/{id}/fs/write",
        "/v1/sessions/{id}/fs/read",
        "/v1/sessions/{id}/fs/upload",
        "/healthz",
    ] {
        assert!(paths.contains_key(p), "OpenAPI document lacks {p}");
    }
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/openapi.json", d.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "/openapi.json without a key");
}
