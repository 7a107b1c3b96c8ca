//! The ports proxy end to end: a real daemon, a real sandbox, and a server
//! started inside it (`tests/ports/server.c`, built static with gcc when
//! the test starts, so it runs in every image), reached through
//! `/v1/sessions/{id}/ports/{port}/…` and through preview hosts
//! (`{port}-{id}.localhost:{daemon port}`, sent as a `Host` header: no DNS).
//! Every sandbox has network mode `none`: ports are reached through the
//! sandbox's own loopback, not a network.
//!
//! Runs on native and, with `SANDKASTEN_E2E_RUNTIME=docker` or
//! `docker-remote`, on docker (the local engine through the container's
//! network namespace, the remote one through the agent's port pipes).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The server, built once per test process.
fn server_binary() -> &'static [u8] {
    static SERVER: OnceLock<Vec<u8>> = OnceLock::new();
    SERVER.get_or_init(|| static_c_binary("tests/ports/server.c", "the ports suite"))
}

/// A session with the server listening on `port` at `addr` inside (the
/// server detaches once it listens, so the exec returns then).
fn session_with_server(d: &Daemon, servers: &[(u16, &str)]) -> String {
    let id = d.new_session();
    d.write(&id, "/tmp/server", server_binary());
    d.sh(&id, "chmod 755 /tmp/server");
    for (port, addr) in servers {
        d.sh(&id, &format!("/tmp/server {port} {addr}"));
    }
    id
}

fn port_path(id: &str, port: u16, rest: &str) -> String {
    format!("/v1/sessions/{id}/ports/{port}{rest}")
}

/// A client without the API key.
fn anonymous() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap()
}

/// One raw HTTP/1.1 exchange on a new connection: the head and body as
/// text (for preview hosts and upgrades, where the request's exact bytes
/// matter).
fn raw(d: &Daemon, request: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    (head, s)
}

#[test]
fn http_requests_pass_through_and_the_key_stays_outside() {
    let d = Daemon::start(None);
    // Servers on every kind of loopback address: 127.0.0.1, ::1 and the
    // wildcard are all reached. A docker container has no ::1 at all (the
    // engine disables IPv6 in a container it starts on its `none`).
    let id = session_with_server(&d, &[(8000, "127.0.0.1"), (8002, "0.0.0.0")]);
    let mut ports = vec![8000, 8002];
    if on_docker() {
        let v = d.exec(&id, "/tmp/server 8001 ::1");
        assert_eq!(v["exit_code"], 1, "a container without ::1: {v}");
        assert!(
            v["output"]
                .as_str()
                .unwrap()
                .contains("Cannot assign requested address"),
            "{v}"
        );
    } else {
        d.sh(&id, "/tmp/server 8001 ::1");
        ports.push(8001);
    }

    for port in ports {
        let r = d.get(&port_path(&id, port, "/echo?x=1&y=%20z"));
        assert_eq!(r.status, 200, "port {port}: {}", r.text);
        assert!(r.text.starts_with("GET /echo?x=1&y=%20z\n"), "{}", r.text);
        // The key never reaches the sandbox.
        assert!(
            !r.text.to_ascii_lowercase().contains("authorization"),
            "{}",
            r.text
        );
        assert!(!r.text.contains(&d.key), "{}", r.text);
    }

    // Any method, the body as sent, the app's own headers and status.
    let body = random_bytes(100_000);
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let r = d.send(
            d.request(method.clone(), &port_path(&id, 8000, "/echo"))
                .header("X-App", "yes")
                .body(body.clone()),
        );
        assert_eq!(r.status, 200, "{method}");
        assert!(
            r.text.starts_with(&format!("{method} /echo\n")),
            "{:.200}",
            r.text
        );
        assert!(r.text.contains("x-app: yes\n"), "{:.500}", r.text);
    }
    let r = d
        .request(reqwest::Method::POST, &port_path(&id, 8000, "/count"))
        .body(body.clone())
        .send()
        .unwrap();
    let sum: u32 = body.iter().map(|b| *b as u32).sum();
    assert_eq!(r.text().unwrap(), format!("bytes {} sum {sum}", body.len()));
    let r = d.get(&port_path(&id, 8000, "/missing"));
    assert_eq!(
        (r.status, r.text.as_str()),
        (404, "no such path"),
        "the app's own 404"
    );
    // Without a path: the server's root.
    let r = d.get(&port_path(&id, 8000, ""));
    assert_eq!(r.status, 404, "{}", r.text);
}

#[test]
fn errors_are_the_apis_and_come_at_once() {
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);

    // Nothing listens: 502 at once.
    let started = Instant::now();
    let r = d.get(&port_path(&id, 8001, "/"));
    r.assert_error(502, "PORT_NOT_LISTENING", "a closed port");
    assert_eq!(r.json["details"]["port"], 8001);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    for bad in ["0", "65536", "99999", "http", "-1", "80a"] {
        d.get(&format!("/v1/sessions/{id}/ports/{bad}/"))
            .assert_error(400, "INVALID_REQUEST", &format!("port {bad}"));
        d.post(&format!("/v1/sessions/{id}/ports/{bad}/url"), &json!({}))
            .assert_error(400, "INVALID_REQUEST", &format!("url of port {bad}"));
    }
    d.get(&port_path("no-such-session", 8000, "/echo"))
        .assert_error(404, "SESSION_NOT_FOUND", "unknown session");
    d.post(&port_path("no-such-session", 8000, "/url"), &json!({}))
        .assert_error(404, "SESSION_NOT_FOUND", "url of an unknown session");
    d.post(&port_path(&id, 8000, "/url"), &json!({"ttl_seconds": 0}))
        .assert_error(400, "INVALID_REQUEST", "ttl 0");

    // Without the key: 401, whatever the session or port (nothing probed).
    for path in [
        port_path(&id, 8000, "/echo"),
        port_path("no-such-session", 8000, "/"),
        format!("/v1/sessions/{id}/ports/http/"),
    ] {
        let r = anonymous().get(format!("{}{path}", d.url)).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error_code"], "UNAUTHORIZED");
    }
    let r = anonymous()
        .get(format!("{}/echo", d.url))
        .header("Host", format!("8000-{id}.localhost:{}", d.port))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "a preview host without access");

    // The session is gone: 404.
    d.delete(&id);
    d.get(&port_path(&id, 8000, "/echo")).assert_error(
        404,
        "SESSION_NOT_FOUND",
        "a destroyed session",
    );
}

#[test]
fn preview_hosts_route_by_their_host_name() {
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1"), (9000, "127.0.0.1")]);
    for port in [8000u16, 9000] {
        let host = format!("{port}-{id}.localhost:{}", d.port);
        let r = d.send(
            d.request(reqwest::Method::GET, "/echo?a=b")
                .header("Host", &host),
        );
        assert_eq!(r.status, 200, "{host}: {}", r.text);
        assert!(r.text.starts_with("GET /echo?a=b\n"), "{}", r.text);
        assert!(r.text.contains(&format!("host: {host}\n")), "{}", r.text);
    }
    // The API's own paths are the app's on a preview host.
    let r = d.send(
        d.request(reqwest::Method::GET, "/v1/sessions")
            .header("Host", format!("8000-{id}.localhost:{}", d.port)),
    );
    assert_eq!((r.status, r.text.as_str()), (404, "no such path"));
    // Another domain is the API.
    let r = d.send(
        d.request(reqwest::Method::GET, "/v1/sessions")
            .header("Host", format!("8000-{id}.localhost:1")),
    );
    assert_eq!(r.status, 200);

    // A configured domain.
    let d2 = Daemon::start(Some("network:\n  preview_domain: sandboxes.test\n"));
    let id2 = session_with_server(&d2, &[(8000, "127.0.0.1")]);
    let r = d2.send(
        d2.request(reqwest::Method::GET, "/echo")
            .header("Host", format!("8000-{id2}.sandboxes.test")),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let url = d2
        .post(&port_path(&id2, 8000, "/url"), &json!({}))
        .expect(200, "url");
    assert!(
        url["url"].as_str().unwrap().starts_with(&format!(
            "http://8000-{id2}.sandboxes.test/?sandkasten_token="
        )),
        "{url}"
    );
}

/// Sends one masked WebSocket frame.
fn ws_send(s: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mut f = vec![0x80 | opcode];
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

/// Reads one unmasked frame: (opcode, payload).
fn ws_recv(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 127 {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 15, p)
}

#[test]
fn websocket_upgrades_are_spliced_both_ways() {
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    for (target, host, auth) in [
        (
            port_path(&id, 8000, "/ws"),
            format!("127.0.0.1:{}", d.port),
            true,
        ),
        (
            "/ws".to_string(),
            format!("8000-{id}.localhost:{}", d.port),
            true,
        ),
    ] {
        let auth = if auth {
            format!("Authorization: Bearer {}\r\n", d.key)
        } else {
            String::new()
        };
        let (head, mut s) = raw(
            &d,
            &format!(
                "GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
            ),
        );
        assert!(head.starts_with("HTTP/1.1 101"), "{target}: {head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("upgrade: websocket"), "{head}");
        // RFC 6455's example key and its answer.
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        for msg in [b"hello".to_vec(), random_bytes(70_000), b"x".repeat(300)] {
            ws_send(&mut s, 2, &msg);
            let (op, got) = ws_recv(&mut s);
            assert_eq!((op, got.len()), (2, msg.len()));
            assert!(got == msg, "{target}: echo differs");
        }
        ws_send(&mut s, 1, "text frame".as_bytes());
        assert_eq!(ws_recv(&mut s), (1, b"text frame".to_vec()));
        ws_send(&mut s, 8, &[3, 232]);
        assert_eq!(ws_recv(&mut s).0, 8, "close echoed");
    }
}

#[test]
fn server_sent_events_arrive_as_they_are_sent() {
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);
    let started = Instant::now();
    let r = d
        .request(reqwest::Method::GET, &port_path(&id, 8000, "/sse"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut lines = BufReader::new(r).lines();
    let mut arrivals = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        if let Some(data) = line.strip_prefix("data: ") {
            arrivals.push((data.to_string(), started.elapsed()));
        }
    }
    let data: Vec<&str> = arrivals.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(data, ["0", "1", "2"]);
    // The server sends them 300 ms apart: each arrives when sent, not all
    // at the end.
    let gap1 = arrivals[1].1 - arrivals[0].1;
    let gap2 = arrivals[2].1 - arrivals[1].1;
    assert!(
        gap1 >= Duration::from_millis(200) && gap2 >= Duration::from_millis(200),
        "{arrivals:?}"
    );
}

#[test]
fn a_slow_server_is_waited_for_without_holding_up_others() {
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);
    let started = Instant::now();
    let slow = {
        let (client, url, key) = (
            d.client.clone(),
            format!("{}{}", d.url, port_path(&id, 8000, "/slow")),
            d.key.clone(),
        );
        std::thread::spawn(move || {
            let r = client.get(url).bearer_auth(key).send().unwrap();
            (r.status().as_u16(), r.text().unwrap(), Instant::now())
        })
    };
    // Meanwhile other requests to the same port are served at once.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(d.get(&port_path(&id, 8000, "/echo")).status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let (status, text, done) = slow.join().unwrap();
    assert_eq!((status, text.as_str()), (200, "slow"));
    assert!(done - started >= Duration::from_secs(3));
}

/// A body of `len` bytes of the pattern i % 251, produced as it is read.
struct Pattern {
    pos: u64,
    len: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for b in &mut buf[..n] {
            *b = (self.pos % 251) as u8;
            self.pos += 1;
        }
        Ok(n)
    }
}

fn pattern_sum(len: u64) -> u32 {
    let (full, rest) = (len / 251, len % 251);
    let per: u64 = (0..251).sum();
    (full.wrapping_mul(per) + (0..rest).sum::<u64>()) as u32
}

#[test]
fn a_gigabyte_streams_both_ways_through_bounded_daemon_memory() {
    const GIB: u64 = 1024 * 1024 * 1024;
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);
    let before = proc_status_field(d.pid(), "VmRSS").expect("VmRSS of the daemon");
    let kib = |v: &str| {
        v.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = kib(&before);

    // Upload: the server counts and sums what arrives.
    let r = d
        .request(reqwest::Method::POST, &port_path(&id, 8000, "/count"))
        .timeout(Duration::from_secs(600))
        .body(reqwest::blocking::Body::sized(
            Pattern { pos: 0, len: GIB },
            GIB,
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().unwrap(),
        format!("bytes {GIB} sum {}", pattern_sum(GIB))
    );

    // Download: read and checked as it comes.
    let mut r = d
        .request(
            reqwest::Method::GET,
            &port_path(&id, 8000, &format!("/bytes/{GIB}")),
        )
        .timeout(Duration::from_secs(600))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut buf = vec![0u8; 1 << 20];
    let (mut got, mut wrong) = (0u64, 0u64);
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            if *b != (got % 251) as u8 {
                wrong += 1;
            }
            got += 1;
        }
    }
    assert_eq!((got, wrong), (GIB, 0));

    let peak = kib(&proc_status_field(d.pid(), "VmHWM").unwrap());
    assert!(
        peak < before + 100 * 1024,
        "the daemon's peak RSS {peak} kB grew by more than 100 MiB from {before} kB: it held the body"
    );
}

/// Expiry (Unix seconds) of a signed URL's token.
fn token_of(url: &Value) -> String {
    url["token"].as_str().unwrap().to_string()
}

#[test]
fn our_cookie_never_reaches_the_app_however_access_was_given() {
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);
    let token = token_of(
        &d.post(&port_path(&id, 8000, "/url"), &json!({}))
            .expect(200, "url"),
    );
    let host = format!("8000-{id}.localhost:{}", d.port);
    let ours = format!("sandkasten_port_token={token}");
    let c = anonymous();
    // What the app sees of a request with `cookie`.
    let seen = |what: &str, r: reqwest::blocking::RequestBuilder, cookie: &str| {
        let r = r.header("Cookie", cookie).send().unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let text = r.text().unwrap();
        assert!(
            !text.contains(&token),
            "{what}: our cookie reached the app: {text}"
        );
        text
    };
    let by_path = |q: &str| {
        c.get(format!(
            "{}{}",
            d.url,
            port_path(&id, 8000, &format!("/echo{q}"))
        ))
    };
    let by_host = |q: &str| c.get(format!("{}/echo{q}", d.url)).header("Host", &host);
    let query = format!("?sandkasten_token={token}");
    // The app's cookies as a browser may send them, ours among them: the
    // app gets its own, each byte for byte.
    let sent = format!("a=1;b=\"x y\" ; {ours}; c=%20=");
    for (what, r) in [
        // A browser that opens the signed URL a second time sends the
        // query and the cookie the first visit set.
        ("token in the query, path form", by_path(&query)),
        ("token in the query, preview host", by_host(&query)),
        (
            "the key",
            by_path("").header("Authorization", format!("Bearer {}", d.key)),
        ),
        ("the cookie alone", by_host("")),
    ] {
        let text = seen(what, r, &sent);
        assert!(
            text.contains("cookie: a=1; b=\"x y\"; c=%20=\n"),
            "{what}: the app's own cookies: {text}"
        );
    }
    // A Cookie header without ours passes exactly as sent; ours alone
    // leaves none.
    let text = seen("without ours", by_host(&query), "a=1;b=2 ;c");
    assert!(text.contains("cookie: a=1;b=2 ;c\n"), "{text}");
    let text = seen("ours alone", by_host(&query), &ours);
    assert!(!text.to_ascii_lowercase().contains("cookie:"), "{text}");
}

#[test]
fn signed_urls_open_one_port_until_they_expire_and_survive_a_restart() {
    let home = DataDir::new();
    let d = Daemon::start_in(&home, None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1"), (8001, "127.0.0.1")]);
    let short = d
        .post(&port_path(&id, 8000, "/url"), &json!({"ttl_seconds": 3}))
        .expect(200, "url");
    let long = d
        .post(&port_path(&id, 8000, "/url"), &json!({"ttl_seconds": 600}))
        .expect(200, "url");
    let expiry = rfc3339(short["expires_at"].as_str().unwrap());
    assert!(
        expiry > now_unix() + 1.0 && expiry < now_unix() + 5.0,
        "{short}"
    );
    assert!(short["url"].as_str().unwrap().starts_with(&format!(
        "http://8000-{id}.localhost:{}/?sandkasten_token=",
        d.port
    )));
    let path = short["path"].as_str().unwrap();
    assert!(
        path.starts_with(&port_path(&id, 8000, "/?sandkasten_token=")),
        "{short}"
    );

    // The path form, without the key: served, the token taken out of the
    // query, and a cookie for this port's path set.
    let token = token_of(&short);
    let c = anonymous();
    let r = c
        .get(format!(
            "{}{}",
            d.url,
            port_path(&id, 8000, &format!("/echo?a=1&sandkasten_token={token}"))
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!("sandkasten_port_token={token};")),
        "{cookie}"
    );
    assert!(
        cookie.contains(&format!("Path=/v1/sessions/{id}/ports/8000/")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let text = r.text().unwrap();
    assert!(text.starts_with("GET /echo?a=1\n"), "{text}");
    assert!(
        !text.contains(&token),
        "the token reached the sandbox: {text}"
    );

    // The preview host: the cookie is the host's own (Path=/).
    let host = format!("8000-{id}.localhost:{}", d.port);
    let r = c
        .get(format!("{}/echo?sandkasten_token={token}", d.url))
        .header("Host", &host)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Path=/;"));
    // The cookie alone opens it; the app's own cookies pass, ours does not.
    let r = c
        .get(format!("{}/echo", d.url))
        .header("Host", &host)
        .header("Cookie", format!("app=1; sandkasten_port_token={token}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    assert!(text.contains("cookie: app=1\n"), "{text}");
    assert!(!text.contains(&token), "{text}");

    // Only that port, only that session.
    let r = c
        .get(format!(
            "{}{}",
            d.url,
            port_path(&id, 8001, &format!("/echo?sandkasten_token={token}"))
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "another port");
    let other = d.new_session();
    let r = c
        .get(format!(
            "{}{}",
            d.url,
            port_path(&other, 8000, &format!("/?sandkasten_token={token}"))
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "another session");
    let forged = token.replacen(
        &token[..token.find('.').unwrap()],
        &format!("{}", now_unix() as u64 + 9999),
        1,
    );
    let r = c
        .get(format!(
            "{}{}",
            d.url,
            port_path(&id, 8000, &format!("/?sandkasten_token={forged}"))
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "an extended expiry");

    // After its expiry: refused, by query and by cookie. (Time passing has
    // no event to wait on: sleep until just past the expiry.)
    let wait = expiry - now_unix() + 0.5;
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let r = c
        .get(format!(
            "{}{}",
            d.url,
            port_path(&id, 8000, &format!("/echo?sandkasten_token={token}"))
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "an expired token");
    let r = c
        .get(format!("{}/echo", d.url))
        .header("Host", &host)
        .header("Cookie", format!("sandkasten_port_token={token}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "an expired cookie");

    // A restart keeps the secret: the long URL still opens.
    d.kill_9();
    let d2 = Daemon::start_in(&home, None);
    let long_token = token_of(&long);
    let r = anonymous()
        .get(format!(
            "{}{}",
            d2.url,
            port_path(&id, 8000, &format!("/echo?sandkasten_token={long_token}"))
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "a URL signed before the restart");
}

/// What a server inside must not get and what it must not do to a
/// client (session 15's attack): the key under E2B's header name never
/// reaches it; a response framed both by length and by chunks arrives
/// whole (the length was kept and cut it); CONNECT is refused, not
/// forwarded.
#[test]
fn the_proxy_keeps_the_key_and_the_framing_and_refuses_connect() {
    let d = Daemon::start(None);
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);
    let r = d.send(
        d.request(reqwest::Method::GET, &port_path(&id, 8000, "/echo"))
            .header("X-API-KEY", &d.key)
            .header("X-App", "kept"),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("x-app: kept\n"), "{}", r.text);
    assert!(
        !r.text.contains(&d.key),
        "the key reached the sandbox: {}",
        r.text
    );
    // The app's answer to a POST carries no `Allow` of the daemon's.
    let r = d
        .request(reqwest::Method::POST, &port_path(&id, 8000, "/echo"))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("allow").is_none(),
        "an Allow the app never sent: {:?}",
        r.headers()
    );
    let r = d.get(&port_path(&id, 8000, "/clte"));
    assert_eq!(
        (r.status, r.text.as_str()),
        (200, "AAAAABBBBBCCCCCDDDDDEEEEEFFFFF"),
        "a chunked body with a length"
    );
    let (head, _s) = raw(
        &d,
        &format!(
            "CONNECT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            port_path(&id, 8000, ""),
            d.key
        ),
    );
    assert!(head.starts_with("HTTP/1.1 400"), "CONNECT: {head}");
}

/// Upgraded connections have a budget of their own (session 15's attack:
/// under a 128-descriptor limit, 52 WebSockets opened with one signed URL
/// took the descriptors every other client needed: `/healthz` and
/// authenticated calls timed out until they closed). With 256
/// descriptors the serve loop keeps 128 connections, and the proxy 32
/// upgraded ones: the next is 503, and the API answers meanwhile.
#[test]
fn upgraded_connections_have_a_budget_and_leave_room_for_the_api() {
    let home = DataDir::new();
    let d = Daemon::start_with(
        &home,
        Options {
            nofile: Some(256),
            ..Options::default()
        },
    );
    let id = session_with_server(&d, &[(8000, "127.0.0.1")]);
    let upgrade = |i: usize| {
        raw(
            &d,
            &format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSB{i:03}==\r\n\r\n",
                port_path(&id, 8000, "/ws"),
                d.key
            ),
        )
    };
    let mut open = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let (head, s) = upgrade(i);
        if head.starts_with("HTTP/1.1 101") {
            open.push(s);
        } else {
            refused = Some((i, head));
            break;
        }
    }
    let (at, head) = refused.expect("40 upgrades through a 256-descriptor daemon");
    assert_eq!(at, 32, "the budget: {head}");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // The API and the proxy's plain requests answer meanwhile.
    d.get("/healthz").expect(200, "healthz beside the upgrades");
    assert_eq!(d.sh(&id, "echo ok"), "ok\n");
    let r = d.get(&port_path(&id, 8000, "/echo"));
    assert_eq!(r.status, 200, "{}", r.text);
    // One closed gives its place back.
    drop(open.pop());
    assert!(
        wait_for(Duration::from_secs(10), || upgrade(99)
            .0
            .starts_with("HTTP/1.1 101")),
        "a closed upgrade did not give its place back"
    );
}
