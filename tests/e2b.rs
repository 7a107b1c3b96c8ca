//! The E2B API of the real daemon, spoken by hand: what the official SDKs
//! never send (bad input of every kind: unknown methods and codecs,
//! malformed and oversized messages, wrong tokens, another sandbox's
//! token, paths that try to leave the sandbox, tampered and expired file
//! URLs) is answered with the protocol's own codes and harms nothing.
//! Metadata outlives a restart. The SDKs' own flows are in tests/e2b/.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A sandbox made through the E2B control plane: (id, envd access token).
fn e2b_sandbox(d: &Daemon, body: Value) -> (String, String) {
    let r = d.send(ctl(d, reqwest::Method::POST, "/v2/sandboxes").json(&body));
    let v = r.expect(201, "POST /v2/sandboxes");
    let id = v["sandboxID"].as_str().unwrap().to_string();
    d.home.remember(&id);
    (id, v["envdAccessToken"].as_str().unwrap().to_string())
}

/// A control-plane request with the key in `X-API-KEY`.
fn ctl(d: &Daemon, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
    d.client
        .request(method, format!("{}{path}", d.url))
        .header("X-API-KEY", &d.key)
}

/// An envd request for sandbox `id` with `token`.
fn envd(d: &Daemon, id: &str, token: &str, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
    d.send(
        d.client
            .post(format!("{}{path}", d.url))
            .header("E2b-Sandbox-Id", id)
            .header("X-Access-Token", token)
            .header("Content-Type", content_type)
            .header("Connect-Protocol-Version", "1")
            .body(body),
    )
}

fn rpc(d: &Daemon, id: &str, token: &str, method: &str, body: Value) -> Resp {
    envd(
        d,
        id,
        token,
        &format!("/filesystem.Filesystem/{method}"),
        "application/json",
        body.to_string().into_bytes(),
    )
}

#[track_caller]
fn assert_connect_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}: {}", r.text);
    assert_eq!(r.json["code"], code, "{}", r.text);
    assert!(r.json["message"].is_string(), "{}", r.text);
}

/// Protobuf of a message whose field 1 is the string `s`.
fn proto_string_field(s: &str) -> Vec<u8> {
    let mut out = vec![0x0a, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

#[test]
fn control_plane_maps_sandboxes_onto_sessions_and_keeps_metadata_across_a_restart() {
    let d = Daemon::start(None);
    // No key, a wrong key: 401 in E2B's shape.
    let r = d.send(d.client.get(format!("{}/v2/sandboxes", d.url)));
    assert_eq!(
        (r.status, &r.json["code"]),
        (401, &json!(401)),
        "{}",
        r.text
    );
    let r = d.send(
        d.client
            .get(format!("{}/sandboxes", d.url))
            .header("X-API-KEY", "sk-wrong-key"),
    );
    assert_eq!(r.status, 401, "{}", r.text);
    // Bad bodies and fields we refuse: 400 with a message.
    for body in [
        json!({"templateID": "no-such-image"}),
        json!({"templateID": "base", "timeout": 0}),
        json!({"templateID": "base", "autoPause": true}),
        json!({"templateID": "base", "envVars": {"1BAD": "x"}}),
        json!({"templateID": "base", "network": {"allowOut": ["example.com"]}}),
        json!({"templateID": "base", "volumeMounts": [{"name": "v", "path": "/data"}]}),
    ] {
        let r = d.send(ctl(&d, reqwest::Method::POST, "/v2/sandboxes").json(&body));
        assert_eq!(
            (r.status, &r.json["code"]),
            (400, &json!(400)),
            "{body}: {}",
            r.text
        );
    }
    let r = d.send(
        ctl(&d, reqwest::Method::POST, "/sandboxes")
            .header("Content-Type", "application/json")
            .body("{not json"),
    );
    assert_eq!(r.status, 400, "{}", r.text);

    let (id, token) = e2b_sandbox(
        &d,
        json!({"templateID": "base", "timeout": 600, "metadata": {"owner": "t1", "run": "7"},
               "envVars": {"GREETING": "hallo"}, "secure": true}),
    );
    assert_eq!(token.len(), 64, "{token}");
    let own = d.get_session(&id).expect(200, "our GET");
    assert_eq!(own["metadata"], json!({"owner": "t1", "run": "7"}));
    assert_eq!(d.sh(&id, "echo $GREETING").trim(), "hallo");
    // Pause is refused clearly; unknown routes are E2B 404s.
    let r = d.send(ctl(
        &d,
        reqwest::Method::POST,
        &format!("/sandboxes/{id}/pause"),
    ));
    assert_eq!(r.status, 501, "{}", r.text);
    assert!(r.json["message"].as_str().unwrap().contains("pausing"));
    let r = d.send(ctl(
        &d,
        reqwest::Method::GET,
        &format!("/sandboxes/{id}/nothing"),
    ));
    assert_eq!(
        (r.status, &r.json["code"]),
        (404, &json!(404)),
        "{}",
        r.text
    );

    // A restart keeps the metadata, the token, and the timeout.
    let r = d.send(
        ctl(
            &d,
            reqwest::Method::POST,
            &format!("/sandboxes/{id}/timeout"),
        )
        .json(&json!({"timeout": 1234})),
    );
    assert_eq!(r.status, 204, "{}", r.text);
    let home = d.home.clone();
    let (status, _) = d.terminate();
    assert!(status.success());
    let d = Daemon::start_in(&home, None);
    let r = d.send(ctl(&d, reqwest::Method::GET, &format!("/sandboxes/{id}")));
    let v = r.expect(200, "GET /sandboxes/{id} after a restart");
    assert_eq!(v["metadata"], json!({"owner": "t1", "run": "7"}));
    assert_eq!(v["envdAccessToken"], token);
    let end = rfc3339(v["endAt"].as_str().unwrap());
    let left = end - now_unix();
    assert!((1200.0..=1240.0).contains(&left), "endAt {left} s away");
    assert_eq!(
        d.get_session(&id).expect(200, "our GET")["metadata"]["owner"],
        "t1"
    );
    // The list filters by metadata and pages.
    let (id2, _) = e2b_sandbox(
        &d,
        json!({"templateID": "base", "metadata": {"owner": "t2"}}),
    );
    let list = |q: &str| d.send(ctl(&d, reqwest::Method::GET, &format!("/v2/sandboxes?{q}")));
    let r = list("metadata=owner%3Dt2");
    let v = r.expect(200, "list by metadata");
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["sandboxID"], id2.as_str());
    let r = list("limit=1");
    assert_eq!(r.json.as_array().unwrap().len(), 1, "{}", r.text);
    let first = r.json[0]["sandboxID"].as_str().unwrap().to_string();
    let r2 = d.send(ctl(
        &d,
        reqwest::Method::GET,
        &format!("/v2/sandboxes?limit=1&nextToken={first}"),
    ));
    let second = r2.json[0]["sandboxID"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert_eq!(list("state=paused").json, json!([]));
    assert_eq!(list("limit=1000").status, 400);
    // Kill: 204, then 404.
    for status in [204, 404] {
        let r = d.send(ctl(
            &d,
            reqwest::Method::DELETE,
            &format!("/sandboxes/{id2}"),
        ));
        assert_eq!(r.status, status, "{}", r.text);
    }
}

#[test]
fn envd_rpc_bad_input_gets_connect_codes() {
    let d = Daemon::start(None);
    let (id, token) = e2b_sandbox(&d, json!({"templateID": "base"}));
    let (other, other_token) = e2b_sandbox(&d, json!({"templateID": "base"}));

    // Both codecs answer.
    let r = rpc(&d, &id, &token, "Stat", json!({"path": "/etc/hostname"}));
    let v = r.expect(200, "Stat over JSON");
    assert_eq!(v["entry"]["type"], "FILE_TYPE_FILE", "{v}");
    assert_eq!(v["entry"]["path"], "/etc/hostname");
    let r = envd(
        &d,
        &id,
        &token,
        "/filesystem.Filesystem/Stat",
        "application/proto",
        proto_string_field("/etc/hostname"),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.content_type, "application/proto");
    assert!(r.text.contains("/etc/hostname"));

    // Access: no token, a wrong one, another sandbox's.
    for t in ["", "0000", other_token.as_str()] {
        let r = rpc(&d, &id, t, "Stat", json!({"path": "/"}));
        assert_connect_error(&r, 401, "unauthenticated");
    }
    let r = rpc(&d, "no-such-sandbox", &token, "Stat", json!({"path": "/"}));
    assert_connect_error(&r, 401, "unauthenticated");
    // With the daemon's key, an unknown sandbox is not_found.
    let r = d.send(
        d.client
            .post(format!("{}/filesystem.Filesystem/Stat", d.url))
            .header("E2b-Sandbox-Id", "nope")
            .header("X-API-KEY", &d.key)
            .header("Content-Type", "application/json")
            .body("{}"),
    );
    assert_connect_error(&r, 404, "not_found");

    // Unknown methods and services, codecs, framings.
    let r = rpc(&d, &id, &token, "Chmod", json!({}));
    assert_connect_error(&r, 404, "unimplemented");
    let r = envd(
        &d,
        &id,
        &token,
        "/nope.Nope/Call",
        "application/json",
        b"{}".to_vec(),
    );
    assert_connect_error(&r, 404, "unimplemented");
    for ct in ["application/grpc", "text/plain", "application/connect+json"] {
        let r = envd(
            &d,
            &id,
            &token,
            "/filesystem.Filesystem/Stat",
            ct,
            b"{}".to_vec(),
        );
        assert_eq!(r.status, 415, "{ct}: {}", r.text);
    }
    let r = d.send(
        d.client
            .get(format!("{}/filesystem.Filesystem/Stat", d.url))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token),
    );
    assert_connect_error(&r, 501, "unimplemented");

    // Malformed and oversized messages.
    for body in [
        &b"{"[..],
        br#"{"path": 7}"#,
        br#"{"depth": -1}"#,
        b"\xff\xfe",
    ] {
        let r = envd(
            &d,
            &id,
            &token,
            "/filesystem.Filesystem/ListDir",
            "application/json",
            body.to_vec(),
        );
        assert_connect_error(&r, 400, "invalid_argument");
    }
    let r = envd(
        &d,
        &id,
        &token,
        "/filesystem.Filesystem/Stat",
        "application/proto",
        vec![0x0a, 0x7f, b'x'],
    );
    assert_connect_error(&r, 400, "invalid_argument");
    let huge = format!(r#"{{"path": "{}"}}"#, "a".repeat(5 * 1024 * 1024));
    let r = envd(
        &d,
        &id,
        &token,
        "/filesystem.Filesystem/Stat",
        "application/json",
        huge.into_bytes(),
    );
    assert_connect_error(&r, 429, "resource_exhausted");

    // File errors are the protocol's codes.
    let r = rpc(&d, &id, &token, "Stat", json!({"path": "/nope"}));
    assert_connect_error(&r, 404, "not_found");
    let r = rpc(&d, &id, &token, "MakeDir", json!({"path": "/workspace"}));
    assert_connect_error(&r, 409, "already_exists");
    let r = rpc(&d, &id, &token, "ListDir", json!({"path": "/etc/hostname"}));
    assert_connect_error(&r, 400, "invalid_argument");
    let r = rpc(&d, &id, &token, "Stat", json!({"path": ""}));
    assert_connect_error(&r, 400, "invalid_argument");
    let r = rpc(&d, &id, &token, "CreateWatcher", json!({"path": "/"}));
    assert_connect_error(&r, 501, "unimplemented");
    // A streaming method answers 200 and an end-of-stream error.
    let r = envd(
        &d,
        &id,
        &token,
        "/filesystem.Filesystem/WatchDir",
        "application/connect+json",
        [&[0u8, 0, 0, 0, 12][..], br#"{"path":"/"}"#].concat(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text.as_bytes()[0], 2, "end-of-stream flag: {:?}", r.text);
    let end: Value = serde_json::from_str(&r.text[5..]).unwrap();
    assert_eq!(end["error"]["code"], "unimplemented", "{end}");

    // Paths that climb out stay inside the sandbox.
    let marker = format!("e2b-escape-{}", random_hex(8));
    let r = rpc(
        &d,
        &id,
        &token,
        "MakeDir",
        json!({"path": format!("/../../../../tmp/{marker}")}),
    );
    r.expect(200, "MakeDir with ..");
    let r = rpc(
        &d,
        &id,
        &token,
        "Move",
        json!({"source": format!("/tmp/{marker}"), "destination": format!("/../../tmp/{marker}-moved")}),
    );
    let v = r.expect(200, "Move with ..");
    assert_eq!(v["entry"]["type"], "FILE_TYPE_DIRECTORY", "{v}");
    assert!(!std::path::Path::new(&format!("/tmp/{marker}")).exists());
    assert!(!std::path::Path::new(&format!("/tmp/{marker}-moved")).exists());
    assert_eq!(
        d.sh(&id, &format!("ls -d /tmp/{marker}-moved")).trim(),
        format!("/tmp/{marker}-moved")
    );
    // Nothing of it in the other sandbox.
    let r = rpc(
        &d,
        &other,
        &other_token,
        "Stat",
        json!({"path": format!("/tmp/{marker}-moved")}),
    );
    assert_connect_error(&r, 404, "not_found");
    // The daemon is alive and well.
    assert_eq!(d.get("/healthz").status, 200);
}

#[test]
fn envd_files_checks_access_and_signatures() {
    let d = Daemon::start(None);
    let (id, token) = e2b_sandbox(&d, json!({"templateID": "base"}));
    let files = |q: &str| format!("{}/files?{q}", d.url);
    // Upload: octet-stream, then multipart with the path in the filename.
    let r = d.send(
        d.client
            .post(files("path=/workspace/o.bin"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token)
            .header("Content-Type", "application/octet-stream")
            .body(vec![0u8, 1, 2, 255]),
    );
    let v = r.expect(200, "octet-stream upload");
    assert_eq!(
        v,
        json!([{"name": "o.bin", "type": "file", "path": "/workspace/o.bin"}])
    );
    let form = Form::new()
        .part(
            "file",
            Part::bytes(b"one".to_vec()).file_name("/workspace/m1.txt"),
        )
        .part(
            "file",
            Part::bytes(b"two".to_vec()).file_name("/workspace/sub/m2.txt"),
        );
    let r = d.send(
        d.client
            .post(files(""))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token)
            .multipart(form),
    );
    assert_eq!(r.expect(200, "multipart").as_array().unwrap().len(), 2);
    assert_eq!(d.read(&id, "/workspace/sub/m2.txt"), b"two");

    // Download, with the token, or with a signature alone (no header).
    let r = d.send(
        d.client
            .get(files("path=/workspace/o.bin"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token),
    );
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/octet-stream")
    );
    let sign = |path: &str, op: &str, exp: Option<i64>| {
        let raw = match exp {
            Some(e) => format!("{path}:{op}::{token}:{e}"),
            None => format!("{path}:{op}::{token}"),
        };
        format!(
            "v1_{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(raw))
        )
    };
    let enc = |s: &str| {
        s.replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D")
    };
    let sig = sign("/workspace/m1.txt", "read", None);
    let r = d.send(d.client.get(files(&format!(
        "path=%2Fworkspace%2Fm1.txt&signature={}",
        enc(&sig)
    ))));
    assert_eq!((r.status, r.text.as_str()), (200, "one"));
    // A signature for another path, operation or expiry opens nothing.
    let later = now_unix() as i64 + 600;
    for (q, why) in [
        (
            format!("path=%2Fworkspace%2Fo.bin&signature={}", enc(&sig)),
            "other path",
        ),
        (
            format!(
                "path=%2Fworkspace%2Fm1.txt&signature={}",
                enc(&sign("/workspace/m1.txt", "write", None))
            ),
            "write signature",
        ),
        (
            format!(
                "path=%2Fworkspace%2Fm1.txt&signature={}&signature_expiration={later}",
                enc(&sig)
            ),
            "expiry added",
        ),
        (
            format!(
                "path=%2Fworkspace%2Fm1.txt&signature={}&signature_expiration=1000",
                enc(&sign("/workspace/m1.txt", "read", Some(1000)))
            ),
            "expired",
        ),
        (
            "path=%2Fworkspace%2Fm1.txt&signature=v1_AAAA".to_string(),
            "garbage",
        ),
    ] {
        let r = d.send(d.client.get(files(&q)));
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        assert_eq!(r.json["code"], 401, "{why}: {}", r.text);
    }
    let r = d.send(d.client.get(files(&format!(
        "path=%2Fworkspace%2Fm1.txt&signature={}&signature_expiration={later}",
        enc(&sign("/workspace/m1.txt", "read", Some(later)))
    ))));
    assert_eq!((r.status, r.text.as_str()), (200, "one"));
    let r = d.send(
        d.client
            .post(files(&format!(
                "path=%2Fworkspace%2Fs.txt&signature={}",
                enc(&sign("/workspace/s.txt", "write", None))
            )))
            .header("Content-Type", "application/octet-stream")
            .body("signed"),
    );
    r.expect(200, "signed upload");
    assert_eq!(d.read(&id, "/workspace/s.txt"), b"signed");

    // Bad requests: no token, no path, a missing file, a directory, root.
    let r = d.send(
        d.client
            .get(files("path=/workspace/o.bin"))
            .header("E2b-Sandbox-Id", &id),
    );
    assert_eq!(r.status, 401, "{}", r.text);
    for (q, status) in [
        ("", 400),
        ("path=/nope", 404),
        ("path=/workspace", 400),
        ("path=/etc/hostname&username=root", 400),
    ] {
        let r = d.send(
            d.client
                .get(files(q))
                .header("E2b-Sandbox-Id", &id)
                .header("X-Access-Token", &token),
        );
        assert_eq!(r.status, status, "{q}: {}", r.text);
        assert_eq!(r.json["code"], status, "{q}: {}", r.text);
    }
    let r = d.send(
        d.client
            .post(files("path=/workspace/z"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token)
            .header("Content-Encoding", "gzip")
            .body("x"),
    );
    assert_eq!(r.status, 415, "{}", r.text);
    // /health: 204 for a running sandbox, 502 for an unknown one.
    let r = d.send(
        d.client
            .get(format!("{}/health", d.url))
            .header("E2b-Sandbox-Id", &id),
    );
    assert_eq!(r.status, 204);
    let r = d.send(
        d.client
            .get(format!("{}/health", d.url))
            .header("E2b-Sandbox-Id", "gone"),
    );
    assert_eq!(r.status, 502);
    // The host form reaches envd too.
    let r = d.send(
        d.client
            .get(format!("{}/files?path=%2Fworkspace%2Fm1.txt", d.url))
            .header("Host", format!("49983-{id}.localhost:{}", d.port))
            .header("X-Access-Token", &token),
    );
    assert_eq!((r.status, r.text.as_str()), (200, "one"));
}
