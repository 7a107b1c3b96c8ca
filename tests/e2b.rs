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

/// A POST whose body is written by a thread of its own while the answer
/// is read: the daemon answers an oversized message before reading all of
/// it (and may close the connection while the client still writes).
fn post_while_reading(
    d: &Daemon,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body);
    });
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let (status, body) = loop {
        let n = s.read(&mut buf).expect("reading the answer");
        assert!(n > 0, "closed without an answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("a content-length");
        if got.len() >= end + 4 + len {
            let status = text[9..12].parse().unwrap();
            break (status, text[end + 4..end + 4 + len].to_string());
        }
    };
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    (status, body)
}

/// Protobuf of a message whose field 1 is the string `s`.
/// `field` of each entry of a `ListDir` answer.
fn entry_fields<'a>(v: &'a Value, field: &str) -> Vec<&'a str> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap())
        .collect()
}

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
        json!({"templateID": "base", "autoResume": {"enabled": false}}),
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

    // autoPause: the timeout pauses instead of killing.
    let (ap, _) = e2b_sandbox(
        &d,
        json!({"templateID": "base", "autoPause": true, "autoResume": {"enabled": true}, "secure": true}),
    );
    assert_eq!(
        d.get_session(&ap).expect(200, "our GET")["on_timeout"],
        "pause"
    );
    d.delete(&ap);

    let (id, token) = e2b_sandbox(
        &d,
        json!({"templateID": "base", "timeout": 600, "metadata": {"owner": "t1", "run": "7"},
               "envVars": {"GREETING": "hallo"}, "secure": true}),
    );
    assert_eq!(token.len(), 64, "{token}");
    let own = d.get_session(&id).expect(200, "our GET");
    assert_eq!(own["metadata"], json!({"owner": "t1", "run": "7"}));
    assert_eq!(d.sh(&id, "echo $GREETING").trim(), "hallo");
    // Pause is ours: a second is a conflict, a filesystem-only one is
    // refused clearly, resume answers the sandbox; unknown routes are E2B
    // 404s.
    let pause = |body: &str| {
        d.send(
            ctl(&d, reqwest::Method::POST, &format!("/sandboxes/{id}/pause"))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };
    // A filesystem-only pause is our hibernate; connect wakes it.
    d.sh(&id, "echo kept > /tmp/kept");
    let r = pause(r#"{"memory": false}"#);
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        d.get_session(&id).expect(200, "our GET")["status"],
        "hibernated"
    );
    assert_eq!(pause("{}").status, 409, "pause of a hibernated sandbox");
    let r = d.send(
        ctl(
            &d,
            reqwest::Method::POST,
            &format!("/sandboxes/{id}/connect"),
        )
        .json(&json!({"timeout": 600})),
    );
    assert_eq!(r.status / 100, 2, "{}", r.text);
    assert_eq!(d.sh(&id, "cat /tmp/kept"), "kept\n");
    assert_eq!(pause("{}").status, 204);
    assert_eq!(
        d.get_session(&id).expect(200, "our GET")["status"],
        "paused"
    );
    assert_eq!(pause("{}").status, 409);
    let r = d.send(ctl(
        &d,
        reqwest::Method::POST,
        &format!("/sandboxes/{id}/resume"),
    ));
    assert_eq!(
        (r.status, &r.json["sandboxID"]),
        (201, &json!(id)),
        "{}",
        r.text
    );
    let r = d.send(ctl(
        &d,
        reqwest::Method::POST,
        &format!("/sandboxes/{id}/resume"),
    ));
    assert_eq!(r.status, 409, "{}", r.text);
    // envd resumes a paused sandbox, and wakes a hibernated one, for a
    // call (E2B's autoResume, always on).
    for body in ["{}", r#"{"memory": false}"#] {
        assert_eq!(pause(body).status, 204, "pause {body}");
        let r = rpc(&d, &id, &token, "Stat", json!({"path": "/tmp"}));
        assert_eq!(r.status, 200, "Stat after pause {body}: {}", r.text);
        assert_eq!(
            d.get_session(&id).expect(200, "our GET")["status"],
            "running"
        );
    }
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
    let ids = |r: Resp| -> Vec<String> {
        r.json
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sandboxID"].as_str().unwrap().to_string())
            .collect()
    };
    let asc = ids(list(""));
    let mut desc = ids(list("order=desc"));
    desc.reverse();
    assert_eq!((asc.len(), &asc), (2, &desc));
    assert_eq!(ids(list("template=base")).len(), 2);
    assert!(ids(list("template=python")).is_empty());
    assert!(ids(list("startedAfter=2100-01-01T00%3A00%3A00Z")).is_empty());
    assert_eq!(list("order=up").status, 400);
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
    let (status, body) = post_while_reading(
        &d,
        "/filesystem.Filesystem/Stat",
        &[
            ("E2b-Sandbox-Id", &id),
            ("X-Access-Token", &token),
            ("Content-Type", "application/json"),
        ],
        huge.into_bytes(),
    );
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "resource_exhausted", "{v}");

    // File errors are the protocol's codes.
    let r = rpc(&d, &id, &token, "Stat", json!({"path": "/nope"}));
    assert_connect_error(&r, 404, "not_found");
    let r = rpc(&d, &id, &token, "MakeDir", json!({"path": "/workspace"}));
    assert_connect_error(&r, 409, "already_exists");
    let r = rpc(&d, &id, &token, "ListDir", json!({"path": "/etc/hostname"}));
    assert_connect_error(&r, 400, "invalid_argument");
    let r = rpc(&d, &id, &token, "Stat", json!({"path": ""}));
    assert_connect_error(&r, 400, "invalid_argument");
    // A streaming method answers 200 and an end-of-stream error.
    let r = envd(
        &d,
        &id,
        &token,
        "/filesystem.Filesystem/WatchDir",
        "application/connect+json",
        [&[0u8, 0, 0, 0, 16][..], br#"{"path":"/nope"}"#].concat(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text.as_bytes()[0], 2, "end-of-stream flag: {:?}", r.text);
    let end: Value = serde_json::from_str(&r.text[5..]).unwrap();
    assert_eq!(end["error"]["code"], "not_found", "{end}");

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
    // The root lists, however it is written.
    for root in ["/", "//"] {
        let v = rpc(
            &d,
            &id,
            &token,
            "ListDir",
            json!({"path": root, "depth": 1}),
        )
        .expect(200, "ListDir of the root");
        let paths = entry_fields(&v, "path");
        assert!(paths.contains(&"/workspace"), "{root:?}: {v}");
        assert!(paths.contains(&"/etc"), "{root:?}: {v}");
    }
    // A name that is not UTF-8 is listed (lossily), not hidden.
    d.sh(
        &id,
        r#"mkdir -p /tmp/nu && touch /tmp/nu/visible "/tmp/nu/$(printf 'x\377y')""#,
    );
    let v = rpc(&d, &id, &token, "ListDir", json!({"path": "/tmp/nu"}))
        .expect(200, "ListDir with a name that is not UTF-8");
    let names = entry_fields(&v, "name");
    assert_eq!(names, ["visible", "x\u{FFFD}y"], "{v}");
    assert_eq!(v["entries"][1]["type"], "FILE_TYPE_FILE", "{v}");
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
    // Metadata (envd 0.6.2): the file's user.e2b.* extended attributes
    // (tests/e2b/test_envd_06.py reads them inside), keys lower-cased;
    // Stat shows them, a symlink is marked as one.
    let r = d.send(
        d.client
            .post(files("path=/workspace/meta.txt"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token)
            .header("Content-Type", "application/octet-stream")
            .header("X-Metadata-Owner", "agent 7")
            .body("m"),
    );
    let v = r.expect(200, "upload with metadata");
    assert_eq!(v[0]["metadata"], json!({"owner": "agent 7"}), "{v}");
    d.sh(&id, "ln -s meta.txt /workspace/meta.lnk");
    let v = rpc(
        &d,
        &id,
        &token,
        "Stat",
        json!({"path": "/workspace/meta.txt"}),
    )
    .expect(200, "Stat with metadata");
    assert_eq!(v["entry"]["metadata"], json!({"owner": "agent 7"}), "{v}");
    let v = rpc(
        &d,
        &id,
        &token,
        "Stat",
        json!({"path": "/workspace/meta.lnk"}),
    )
    .expect(200, "Stat of a symlink");
    assert_eq!(
        (
            &v["entry"]["type"],
            &v["entry"]["isSymlink"],
            &v["entry"]["metadata"]
        ),
        (&json!("FILE_TYPE_SYMLINK"), &json!(true), &Value::Null),
        "{v}"
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
    // A URL signed for the default user is that user's: an Authorization
    // header naming root (which the signature does not cover) is ignored.
    let r = d.send(
        d.client
            .post(files("path=/root/s&username=root"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token)
            .header("Content-Type", "application/octet-stream")
            .body("secret"),
    );
    r.expect(200, "upload as root");
    let root = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("root:")
    );
    let r = d.send(
        d.client
            .get(files(&format!(
                "path=%2Froot%2Fs&signature={}",
                enc(&sign("/root/s", "read", None))
            )))
            .header("Authorization", &root),
    );
    assert_eq!(r.status, 403, "signed read as root: {}", r.text);
    let r = d.send(
        d.client
            .post(files(&format!(
                "path=%2Froot%2Fw&signature={}",
                enc(&sign("/root/w", "write", None))
            )))
            .header("Authorization", &root)
            .header("Content-Type", "application/octet-stream")
            .body("pwned"),
    );
    assert_eq!(r.status, 403, "signed write as root: {}", r.text);

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
        ("path=/etc/hostname&username=mallory", 400),
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
    // `username=root` writes where only root may; the user may not.
    for (user, status) in [("user", 403), ("root", 200)] {
        let r = d.send(
            d.client
                .post(files(&format!("path=/by-root.txt&username={user}")))
                .header("E2b-Sandbox-Id", &id)
                .header("X-Access-Token", &token)
                .header("Content-Type", "application/octet-stream")
                .body("root's"),
        );
        assert_eq!(r.status, status, "{user}: {}", r.text);
    }
    assert_eq!(
        d.sh(&id, "stat -c %u /by-root.txt; cat /by-root.txt"),
        "0\nroot's"
    );
    // Encodings: gzip is taken (the SDKs' `gzip=True`), a body that is no
    // gzip is 400, another encoding 415; nothing is written by either.
    for (encoding, status) in [("gzip", 400), ("br", 415)] {
        let r = d.send(
            d.client
                .post(files("path=/workspace/z"))
                .header("E2b-Sandbox-Id", &id)
                .header("X-Access-Token", &token)
                .header("Content-Encoding", encoding)
                .body("x"),
        );
        assert_eq!(r.status, status, "{encoding}: {}", r.text);
    }
    // A gzip bomb is cut at the body limit, not inflated into memory.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![0u8; 200 << 20]).unwrap();
    let r = d.send(
        d.client
            .post(files("path=/workspace/z"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token)
            .header("Content-Encoding", "gzip")
            .body(bomb.finish().unwrap()),
    );
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(d.sh(&id, "ls /workspace/z 2>&1 >/dev/null | wc -l"), "1\n");
    // Metadata headers: a key too long, a value not printable ASCII, too
    // much in all: 400, nothing written.
    let long_key = format!("X-Metadata-{}", "k".repeat(247));
    let many: Vec<(String, String)> = (0..20)
        .map(|i| (format!("X-Metadata-key{i}"), "v".repeat(250)))
        .collect();
    let bad: Vec<Vec<(String, String)>> = vec![
        vec![(long_key, "v".into())],
        vec![("X-Metadata-k".into(), "tab\there".into())],
        many,
    ];
    for headers in bad {
        let mut rb = d
            .client
            .post(files("path=/workspace/z"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", &token)
            .header("Content-Type", "application/octet-stream");
        for (k, v) in &headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let r = d.send(rb.body("x"));
        assert_eq!(r.status, 400, "{}: {}", headers[0].0, r.text);
    }
    assert_eq!(d.sh(&id, "ls /workspace/z 2>&1 >/dev/null | wc -l"), "1\n");
    // /health: 204 for a running sandbox, 502 for an unknown one (with
    // the key), 401 without access.
    let health = |sandbox: &str, token: Option<&str>| {
        let mut rb = d
            .client
            .get(format!("{}/health", d.url))
            .header("E2b-Sandbox-Id", sandbox);
        rb = match token {
            Some(t) => rb.header("X-Access-Token", t),
            None => rb.header("X-API-KEY", &d.key),
        };
        d.send(rb).status
    };
    assert_eq!(health(&id, Some(&token)), 204);
    assert_eq!(health("gone", None), 502);
    assert_eq!(health(&id, Some("wrong")), 401);
    // The host form reaches envd too.
    let r = d.send(
        d.client
            .get(format!("{}/files?path=%2Fworkspace%2Fm1.txt", d.url))
            .header("Host", format!("49983-{id}.localhost:{}", d.port))
            .header("X-Access-Token", &token),
    );
    assert_eq!((r.status, r.text.as_str()), (200, "one"));
}

/// The envelopes of a streaming answer: (flags, payload).
fn envelopes(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        out.push((rest[0], rest[5..5 + len].to_vec()));
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes after the envelopes");
    out
}

fn envelope(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A streaming call's raw answer.
fn stream_call(
    d: &Daemon,
    id: &str,
    token: &str,
    method: &str,
    ct: &str,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let r = d
        .client
        .post(format!("{}/process.Process/{method}", d.url))
        .header("E2b-Sandbox-Id", id)
        .header("X-Access-Token", token)
        .header("Content-Type", ct)
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.bytes().unwrap().to_vec())
}

/// The end-of-stream message of a streaming answer.
#[track_caller]
fn end_of_stream(body: &[u8]) -> Value {
    let envs = envelopes(body);
    let (flags, last) = envs.last().expect("no envelope");
    assert_eq!(*flags, 2, "the last envelope ends the stream");
    serde_json::from_slice(last).unwrap()
}

fn proc_rpc(d: &Daemon, id: &str, token: &str, method: &str, body: Value) -> Resp {
    envd(
        d,
        id,
        token,
        &format!("/process.Process/{method}"),
        "application/json",
        body.to_string().into_bytes(),
    )
}

#[test]
fn envd_process_bad_input_gets_connect_codes_and_nothing_leaks_between_sandboxes() {
    let d = Daemon::start(None);
    let (a, ta) = e2b_sandbox(&d, json!({"templateID": "base"}));
    let (b, tb) = e2b_sandbox(&d, json!({"templateID": "base"}));

    // A start over binary protobuf: StartRequest{process{cmd, args}}.
    let mut config = proto_string_field("/bin/echo");
    config.extend([0x12, 2, b'h', b'i']);
    let mut start = vec![0x0a, config.len() as u8];
    start.extend(config);
    let (status, ct, body) = stream_call(
        &d,
        &a,
        &ta,
        "Start",
        "application/connect+proto",
        envelope(0, &start),
    );
    assert_eq!((status, ct.as_str()), (200, "application/connect+proto"));
    assert!(body.windows(3).any(|w| w == b"hi\n"), "{body:?}");
    assert_eq!(end_of_stream(&body), json!({}));

    // A long process in b, its pid (the stream is left after its first
    // event: the process runs on).
    let start_in_b = |body: &'static [u8]| {
        let mut r = d
            .client
            .post(format!("{}/process.Process/Start", d.url))
            .header("E2b-Sandbox-Id", &b)
            .header("X-Access-Token", &tb)
            .header("Content-Type", "application/connect+json")
            .body(envelope(0, body))
            .send()
            .unwrap();
        let mut head = [0u8; 5];
        std::io::Read::read_exact(&mut r, &mut head).unwrap();
        let mut first = vec![0u8; u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize];
        std::io::Read::read_exact(&mut r, &mut first).unwrap();
        drop(r);
        let first: Value = serde_json::from_slice(&first).unwrap();
        first["event"]["start"]["pid"]
            .as_u64()
            .expect("a start event")
    };
    let mut pid = start_in_b(br#"{"process": {"cmd": "sleep", "args": ["600"]}, "tag": "long"}"#);
    // The deadline of a start ends its stream: Connect-Timeout-Ms.
    let r = d
        .client
        .post(format!("{}/process.Process/Start", d.url))
        .header("E2b-Sandbox-Id", &a)
        .header("X-Access-Token", &ta)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Timeout-Ms", "300")
        .body(envelope(
            0,
            br#"{"process": {"cmd": "sleep", "args": ["600"]}}"#,
        ))
        .send()
        .unwrap();
    let end = end_of_stream(&r.bytes().unwrap());
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");

    // Each sandbox has its own pid namespace, so a pid of b's may be one of
    // a's too (the CI met it on docker): the pid sent to a is one of b's
    // that a does not have.
    let pids_of_a = || -> Vec<u64> {
        let listed = proc_rpc(&d, &a, &ta, "List", json!({})).expect(200, "List in a");
        listed["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect()
    };
    for _ in 0..10 {
        if !pids_of_a().contains(&pid) {
            break;
        }
        pid = start_in_b(br#"{"process": {"cmd": "sleep", "args": ["600"]}}"#);
    }
    assert!(!pids_of_a().contains(&pid), "no pid of b's that a lacks");
    // Signals and input to pids a does not have, or that ended: not_found;
    // b's process is untouched.
    for p in [pid, 1, 999_999] {
        let r = proc_rpc(
            &d,
            &a,
            &ta,
            "SendSignal",
            json!({"process": {"pid": p}, "signal": "SIGNAL_SIGKILL"}),
        );
        assert_connect_error(&r, 404, "not_found");
        let r = proc_rpc(
            &d,
            &a,
            &ta,
            "SendInput",
            json!({"process": {"pid": p}, "input": {"stdin": "eA=="}}),
        );
        assert_connect_error(&r, 404, "not_found");
    }
    let r = proc_rpc(
        &d,
        &a,
        &ta,
        "SendSignal",
        json!({"process": {"tag": "long"}, "signal": "SIGNAL_SIGTERM"}),
    );
    assert_connect_error(&r, 404, "not_found");
    let listed = proc_rpc(&d, &b, &tb, "List", json!({})).expect(200, "List in b");
    assert!(
        listed["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid),
        "{listed}"
    );
    // Stdin to a finished process (the echo above): not_found.
    let (_, _, body) = stream_call(
        &d,
        &a,
        &ta,
        "Start",
        "application/connect+json",
        envelope(0, br#"{"process": {"cmd": "true"}, "stdin": true}"#),
    );
    let first: Value = serde_json::from_slice(&envelopes(&body)[0].1).unwrap();
    let done = first["event"]["start"]["pid"].as_u64().unwrap();
    let r = proc_rpc(
        &d,
        &a,
        &ta,
        "SendInput",
        json!({"process": {"pid": done}, "input": {"stdin": "eA=="}}),
    );
    assert_connect_error(&r, 404, "not_found");
    // Bad arguments.
    for (method, body) in [
        ("SendSignal", json!({"process": {"pid": pid}})),
        ("SendSignal", json!({"signal": "SIGNAL_SIGKILL"})),
        ("SendInput", json!({"process": {"pid": pid}})),
        (
            "Update",
            json!({"process": {"pid": pid}, "pty": {"size": {"cols": 0, "rows": 5}}}),
        ),
        ("CloseStdin", json!({"process": {"pid": "x"}})),
    ] {
        let r = proc_rpc(&d, &b, &tb, method, body.clone());
        assert_connect_error(&r, 400, "invalid_argument");
    }
    let r = proc_rpc(&d, &a, &ta, "Kill", json!({}));
    assert_connect_error(&r, 404, "unimplemented");
    // Framings: a unary call with a streaming type and the reverse.
    let r = envd(
        &d,
        &a,
        &ta,
        "/process.Process/List",
        "application/connect+json",
        vec![],
    );
    assert_eq!(r.status, 415);
    let r = envd(
        &d,
        &a,
        &ta,
        "/process.Process/Start",
        "application/json",
        b"{}".to_vec(),
    );
    assert_eq!(r.status, 415);
    // Streams with malformed frames end with the protocol's codes.
    for (method, body, code) in [
        ("Start", vec![0, 0, 0], "invalid_argument"),
        ("Start", envelope(0, b"{"), "invalid_argument"),
        (
            "Start",
            envelope(0, br#"{"process": {"cmd": ""}}"#),
            "invalid_argument",
        ),
        ("Start", envelope(1, b"{}"), "unimplemented"),
        // Tags as our own API takes them: not all digits (a pid), not
        // other characters, not over 64.
        (
            "Start",
            envelope(0, br#"{"process": {"cmd": "true"}, "tag": "4242"}"#),
            "invalid_argument",
        ),
        (
            "Start",
            envelope(0, br#"{"process": {"cmd": "true"}, "tag": "../x y"}"#),
            "invalid_argument",
        ),
        (
            "Start",
            envelope(
                0,
                format!(
                    r#"{{"process": {{"cmd": "true"}}, "tag": "{}"}}"#,
                    "t".repeat(65)
                )
                .as_bytes(),
            ),
            "invalid_argument",
        ),
        (
            "Start",
            [envelope(0, b"{}"), envelope(0, b"{}")].concat(),
            "invalid_argument",
        ),
        ("Connect", vec![], "invalid_argument"),
        (
            "Connect",
            envelope(0, br#"{"process": {"pid": 999999}}"#),
            "not_found",
        ),
        (
            "StreamInput",
            envelope(0, br#"{"data": {"input": {"stdin": "eA=="}}}"#),
            "invalid_argument",
        ),
        (
            "StreamInput",
            [&[0u8, 0xff, 0xff, 0xff, 0xff][..]].concat(),
            "resource_exhausted",
        ),
        ("StreamInput", envelope(0x40, b"{}"), "invalid_argument"),
    ] {
        let (status, _, out) = stream_call(&d, &a, &ta, method, "application/connect+json", body);
        assert_eq!(status, 200, "{method}");
        let end = end_of_stream(&out);
        assert_eq!(end["error"]["code"], code, "{method}: {end}");
    }
    // Users: Basic auth names one; root runs as root, others are refused,
    // file RPCs refuse root.
    let basic = |user: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
        )
    };
    let r = d.send(
        d.client
            .post(format!("{}/process.Process/List", d.url))
            .header("E2b-Sandbox-Id", &a)
            .header("X-Access-Token", &ta)
            .header("Authorization", basic("mallory"))
            .header("Content-Type", "application/json")
            .body("{}"),
    );
    assert_connect_error(&r, 400, "invalid_argument");
    let r = d.send(
        d.client
            .post(format!("{}/filesystem.Filesystem/Stat", d.url))
            .header("E2b-Sandbox-Id", &a)
            .header("X-Access-Token", &ta)
            .header("Authorization", basic("root"))
            .header("Content-Type", "application/json")
            .body(r#"{"path": "/"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // File operations as root do what only root may: make a directory in
    // the root-owned `/`, which the sandbox user may not.
    let as_user = |u: &str, method: &str, body: &str| {
        d.send(
            d.client
                .post(format!("{}/filesystem.Filesystem/{method}", d.url))
                .header("E2b-Sandbox-Id", &a)
                .header("X-Access-Token", &ta)
                .header("Authorization", basic(u))
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
    };
    let r = as_user("user", "MakeDir", r#"{"path": "/made-by-root"}"#);
    assert_connect_error(&r, 403, "permission_denied");
    let r = as_user("root", "MakeDir", r#"{"path": "/made-by-root"}"#);
    assert_eq!(r.json["entry"]["owner"], "root", "{}", r.text);
    let r = as_user("user", "Remove", r#"{"path": "/made-by-root"}"#);
    assert_connect_error(&r, 403, "permission_denied");
    let r = as_user("root", "Remove", r#"{"path": "/made-by-root"}"#);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = d
        .client
        .post(format!("{}/process.Process/Start", d.url))
        .header("E2b-Sandbox-Id", &a)
        .header("X-Access-Token", &ta)
        .header("Authorization", basic("root"))
        .header("Content-Type", "application/connect+json")
        .body(envelope(
            0,
            br#"{"process": {"cmd": "id", "args": ["-u"]}}"#,
        ))
        .send()
        .unwrap();
    let body = r.bytes().unwrap();
    let out: Vec<Value> = envelopes(&body)
        .iter()
        .filter(|(f, _)| *f == 0)
        .map(|(_, m)| serde_json::from_slice(m).unwrap())
        .collect();
    let stdout = out
        .iter()
        .find_map(|e| e["event"]["data"]["stdout"].as_str())
        .expect("stdout");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(stdout)
            .unwrap(),
        b"0\n"
    );
    // b's process still runs; the daemon is well.
    let r = proc_rpc(
        &d,
        &b,
        &tb,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
    );
    r.expect(200, "b kills its own process");
    assert_eq!(d.get("/healthz").status, 200);
}

/// Reads one envelope of a streaming answer as it comes: (flags, payload).
fn next_envelope(r: &mut reqwest::blocking::Response) -> (u8, Value) {
    use std::io::Read;
    let mut head = [0u8; 5];
    r.read_exact(&mut head).unwrap();
    let mut data = vec![0u8; u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize];
    r.read_exact(&mut data).unwrap();
    (head[0], serde_json::from_slice(&data).unwrap())
}

/// The end-of-stream message of a streaming answer, read on to its end.
fn stream_end(r: &mut reqwest::blocking::Response) -> Value {
    loop {
        let (flags, v) = next_envelope(r);
        if flags == 2 {
            return v;
        }
    }
}

/// A WatchDir call (JSON), its answer left open to read as it streams.
fn watch_stream(
    d: &Daemon,
    id: &str,
    token: &str,
    req: Value,
    headers: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let mut rb = d
        .client
        .post(format!("{}/filesystem.Filesystem/WatchDir", d.url))
        .header("E2b-Sandbox-Id", id)
        .header("X-Access-Token", token)
        .header("Content-Type", "application/connect+json");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb
        .body(envelope(0, req.to_string().as_bytes()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

#[test]
fn envd_watchers_bad_input_limits_and_sandbox_end() {
    let d = Daemon::start(None);
    let (a, ta) = e2b_sandbox(&d, json!({"templateID": "base"}));
    let (b, tb) = e2b_sandbox(&d, json!({"templateID": "base"}));
    d.sh(&a, "mkdir -p /workspace/w && echo f > /workspace/file");

    // Bad paths: missing, a file, empty, not a string; the protocol's codes.
    for (path, status, code) in [
        (json!("/workspace/nope"), 404, "not_found"),
        (json!("/workspace/file"), 400, "invalid_argument"),
        (json!(""), 400, "invalid_argument"),
        (json!(5), 400, "invalid_argument"),
    ] {
        let r = rpc(&d, &a, &ta, "CreateWatcher", json!({ "path": path }));
        assert_connect_error(&r, status, code);
    }
    // Unknown watcher ids, and one of another sandbox: not_found.
    for m in ["GetWatcherEvents", "RemoveWatcher"] {
        let r = rpc(&d, &a, &ta, m, json!({"watcherId": "no-such-watcher"}));
        assert_connect_error(&r, 404, "not_found");
    }
    let r = rpc(
        &d,
        &a,
        &ta,
        "CreateWatcher",
        json!({"path": "/workspace/w", "recursive": true}),
    );
    let wid = r.expect(200, "CreateWatcher")["watcherId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = rpc(&d, &b, &tb, "GetWatcherEvents", json!({"watcherId": wid}));
    assert_connect_error(&r, 404, "not_found");
    let r = rpc(&d, &b, &tb, "RemoveWatcher", json!({"watcherId": wid}));
    assert_connect_error(&r, 404, "not_found");
    // The watcher sees what the shell does, names relative to the top. A
    // directory made in a recursive watch is watched once its creation is
    // reported (a file made and removed in it before that is not seen:
    // inotify's own race, envd's too), so the file comes after.
    let mut names = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let poll_until = |names: &mut Vec<String>, want: &str| {
        while !names.iter().any(|n| n == want) {
            assert!(std::time::Instant::now() < deadline, "{names:?}");
            let r = rpc(&d, &a, &ta, "GetWatcherEvents", json!({"watcherId": wid}));
            let v = r.expect(200, "GetWatcherEvents");
            for e in v["events"].as_array().cloned().unwrap_or_default() {
                names.push(format!(
                    "{} {}",
                    e["name"].as_str().unwrap(),
                    e["type"].as_str().unwrap()
                ));
            }
            // The sync SDKs poll a watcher, as envd defines it.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    d.sh(&a, "mkdir /workspace/w/s");
    poll_until(&mut names, "s EVENT_TYPE_CREATE");
    d.sh(&a, "echo x > /workspace/w/s/f && rm /workspace/w/s/f");
    poll_until(&mut names, "s/f EVENT_TYPE_REMOVE");
    assert!(
        names.contains(&"s EVENT_TYPE_CREATE".to_string()),
        "{names:?}"
    );
    let r = rpc(&d, &a, &ta, "RemoveWatcher", json!({"watcherId": wid}));
    r.expect(200, "RemoveWatcher");
    let r = rpc(&d, &a, &ta, "GetWatcherEvents", json!({"watcherId": wid}));
    assert_connect_error(&r, 404, "not_found");

    // A watcher nobody reads keeps a bounded amount: with entries asked
    // for, events in a deep directory are about 4 KB each (its path, the
    // sandbox's to make long), and 1500 of them (far under the 10 000
    // events) stop it at its byte budget instead of filling the daemon's
    // memory.
    let n250 = "n".repeat(250);
    let deep = format!("/workspace/long/{}", vec![n250.as_str(); 13].join("/"));
    d.sh(&a, &format!("mkdir -p {deep}"));
    let r = rpc(
        &d,
        &a,
        &ta,
        "CreateWatcher",
        json!({"path": deep, "includeEntry": true}),
    );
    let wid = r.expect(200, "CreateWatcher")["watcherId"]
        .as_str()
        .unwrap()
        .to_string();
    // A second watch of the directory tells when the events have come
    // through (a remote engine's relay on a loaded machine took over 30 s
    // once). The watcher may still lag behind it (it stats every entry):
    // then its events are read out before it reached its budget, and the
    // next round of 1500 fills it again.
    let mut probe = watch_stream(
        &d,
        &a,
        &ta,
        json!({"path": deep, "includeEntry": true}),
        &[],
    );
    assert_eq!(next_envelope(&mut probe), (0, json!({"start": {}})));
    let mut stopped = false;
    for round in 0..5 {
        let name = format!("{}{round}-", &n250[..240]);
        let done = format!("zz-done{round}");
        d.sh(
            &a,
            &format!("cd {deep} && for i in $(seq 1500); do touch {name}$i; done; touch {done}"),
        );
        loop {
            let (_, v) = next_envelope(&mut probe);
            if v["filesystem"]["name"] == done.as_str() {
                break;
            }
            assert!(v.get("filesystem").is_some(), "the probe ended: {v}");
        }
        let r = rpc(&d, &a, &ta, "GetWatcherEvents", json!({"watcherId": wid}));
        if r.status == 429 && r.json["code"] == "resource_exhausted" {
            stopped = true;
            break;
        }
        r.expect(200, "GetWatcherEvents of a watcher under its budget");
    }
    drop(probe);
    assert!(stopped, "the watcher kept over its byte budget");

    // A path that climbs out watches the sandbox's own directory.
    let marker = format!("e2b-watch-{}", random_hex(8));
    d.sh(&a, &format!("mkdir /tmp/{marker}"));
    let mut s = watch_stream(
        &d,
        &a,
        &ta,
        json!({"path": format!("/../../../tmp/{marker}")}),
        &[],
    );
    assert_eq!(next_envelope(&mut s), (0, json!({"start": {}})));
    d.sh(&a, &format!("touch /tmp/{marker}/inside"));
    assert_eq!(
        next_envelope(&mut s),
        (
            0,
            json!({"filesystem": {"name": "inside", "type": "EVENT_TYPE_CREATE"}})
        )
    );
    assert!(!std::path::Path::new(&format!("/tmp/{marker}")).exists());
    // The directory removed: the stream ends cleanly.
    d.sh(&a, &format!("rm -r /tmp/{marker}"));
    let rest = stream_end(&mut s);
    assert_eq!(rest, json!({}));

    // The deadline ends a stream; keepalives come when asked for.
    let mut s = watch_stream(
        &d,
        &a,
        &ta,
        json!({"path": "/workspace/w"}),
        &[
            ("Connect-Timeout-Ms", "2500"),
            ("Keepalive-Ping-Interval", "1"),
        ],
    );
    assert_eq!(next_envelope(&mut s), (0, json!({"start": {}})));
    assert_eq!(next_envelope(&mut s), (0, json!({"keepalive": {}})));
    let end = stream_end(&mut s);
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");

    // At most 16 watchers per sandbox; the other sandbox is not affected.
    let mut ids = Vec::new();
    for _ in 0..16 {
        let r = rpc(&d, &a, &ta, "CreateWatcher", json!({"path": "/workspace"}));
        ids.push(
            r.expect(200, "CreateWatcher")["watcherId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let r = rpc(&d, &a, &ta, "CreateWatcher", json!({"path": "/workspace"}));
    assert_connect_error(&r, 429, "resource_exhausted");
    // Watch streams share the agent's limit of 16 watches.
    let mut s = watch_stream(&d, &a, &ta, json!({"path": "/workspace"}), &[]);
    let (flags, end) = next_envelope(&mut s);
    assert_eq!(flags, 2);
    assert_eq!(end["error"]["code"], "resource_exhausted", "{end}");
    let r = rpc(&d, &b, &tb, "CreateWatcher", json!({"path": "/workspace"}));
    r.expect(200, "CreateWatcher in the other sandbox");
    rpc(&d, &a, &ta, "RemoveWatcher", json!({"watcherId": ids[0]})).expect(200, "RemoveWatcher");
    let r = rpc(&d, &a, &ta, "CreateWatcher", json!({"path": "/workspace"}));
    r.expect(200, "CreateWatcher after a removal");

    // Watches end with their sandbox: the stream with an error, the
    // watchers' ids are not_found.
    let mut s = watch_stream(&d, &b, &tb, json!({"path": "/workspace"}), &[]);
    assert_eq!(next_envelope(&mut s), (0, json!({"start": {}})));
    d.delete(&a);
    let r = rpc(
        &d,
        &a,
        &ta,
        "GetWatcherEvents",
        json!({"watcherId": ids[1]}),
    );
    assert_connect_error(&r, 404, "not_found");
    d.delete(&b);
    let end = stream_end(&mut s);
    assert_eq!(end["error"]["code"], "not_found", "{end}");
    assert_eq!(d.get("/healthz").status, 200);
}

#[test]
fn fork_and_snapshots_bad_input_and_paging() {
    let d = Daemon::start(None);
    let (id, _) = e2b_sandbox(&d, json!({"templateID": "base"}));
    let post = |path: &str, body: Value| d.send(ctl(&d, reqwest::Method::POST, path).json(&body));
    // Bad counts, a bad timeout, a memory snapshot: 400, the source as it was.
    for (path, body) in [
        (format!("/sandboxes/{id}/fork"), json!({"count": 0})),
        (format!("/sandboxes/{id}/fork"), json!({"count": -1})),
        (format!("/sandboxes/{id}/fork"), json!({"count": 1000})),
        (format!("/sandboxes/{id}/fork"), json!({"timeout": 0})),
        (format!("/sandboxes/{id}/fork"), json!({"count": "two"})),
        (
            format!("/sandboxes/{id}/snapshots"),
            json!({"memory": true}),
        ),
        (format!("/sandboxes/{id}/snapshots"), json!({"name": 7})),
    ] {
        let r = post(&path, body.clone());
        assert_eq!(
            (r.status, &r.json["code"]),
            (400, &json!(400)),
            "{path} {body}: {}",
            r.text
        );
    }
    assert_eq!(d.get_session(&id).expect(200, "GET")["status"], "running");
    // Unknown sandboxes: 404.
    for path in ["/sandboxes/nope/fork", "/sandboxes/nope/snapshots"] {
        let r = post(path, json!({}));
        assert_eq!(r.status, 404, "{path}: {}", r.text);
    }
    // Deleting an image through E2B is refused; an unknown snapshot is 404.
    let r = d.send(ctl(&d, reqwest::Method::DELETE, "/templates/base"));
    assert_eq!(r.status, 400, "{}", r.text);
    let r = d.send(ctl(&d, reqwest::Method::DELETE, "/templates/ssnap-nope"));
    assert_eq!(r.status, 404, "{}", r.text);
    for q in ["limit=0", "limit=101", "limit=x", "nextToken=ssnap-nope"] {
        let r = d.send(ctl(&d, reqwest::Method::GET, &format!("/snapshots?{q}")));
        assert_eq!(r.status, 400, "{q}: {}", r.text);
    }
    if on_remote_engine() {
        // A remote engine cannot copy a sandbox's state: a clear 400.
        let r = post(&format!("/sandboxes/{id}/snapshots"), json!({}));
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.text.contains("not supported"), "{}", r.text);
        d.delete(&id);
        return;
    }
    // Three snapshots, listed by source and name, two to a page.
    let mut snaps = vec![];
    for name in ["one", "two", "three"] {
        let r = post(&format!("/sandboxes/{id}/snapshots"), json!({"name": name}));
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json["names"], json!([name]));
        snaps.push(r.json["snapshotID"].as_str().unwrap().to_string());
    }
    // A page and its next page's token.
    let list = |q: &str| {
        let r = ctl(&d, reqwest::Method::GET, &format!("/snapshots?{q}"))
            .send()
            .expect("GET /snapshots");
        assert_eq!(r.status(), 200, "{q}");
        let token = r
            .headers()
            .get("x-next-token")
            .map(|t| t.to_str().unwrap().to_string());
        (r.json::<Value>().expect("JSON"), token)
    };
    let (first, token) = list(&format!("sandboxID={id}&limit=2"));
    let ids: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshotID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [snaps[0].as_str(), snaps[1].as_str()]);
    let token = token.expect("x-next-token");
    let (second, more) = list(&format!("sandboxID={id}&limit=2&nextToken={token}"));
    assert_eq!(
        second,
        json!([{"snapshotID": snaps[2], "names": ["three"]}])
    );
    assert_eq!(more, None);
    assert_eq!(
        list("name=two").0,
        json!([{"snapshotID": snaps[1], "names": ["two"]}])
    );
    assert_eq!(
        list(&format!("name={}", snaps[0]))
            .0
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(list("sandboxID=other").0, json!([]));
    // Each is an image for our API too, until deleted.
    for s in &snaps {
        let r = d.send(ctl(&d, reqwest::Method::DELETE, &format!("/templates/{s}")));
        assert_eq!(r.status, 204, "{}", r.text);
        d.get(&format!("/v1/snapshots/{s}"))
            .expect(404, "deleted snapshot");
    }
    assert_eq!(list(&format!("sandboxID={id}")).0, json!([]));
    // A fork with a timeout: the child's TTL is it.
    let r = post(
        &format!("/sandboxes/{id}/fork"),
        json!({"count": 1, "timeout": 77}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let child = r.json[0]["sandbox"]["sandboxID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(child, id);
    let expires = d.get_session(&child).expect(200, "child")["expires_at"].clone();
    let left = rfc3339(expires.as_str().unwrap()) - now_unix();
    assert!((60.0..=78.0).contains(&left), "{expires}: {left} s left");
    d.delete(&child);
    d.delete(&id);
}
