//! The HTTP server under abusive clients, against the real binary over
//! loopback (issue 15, points 3 and 7): malformed JSON and invalid UTF-8,
//! huge heads, slow heads and bodies, bodies over the limit (JSON and
//! multipart, announced and chunked), and many idle connections against a
//! daemon with a lowered descriptor limit. The timeouts are the daemon's
//! (docs/api.md, "Connections and limits"); every timing assertion has a
//! lower bound that holds because the daemon's timers never fire early and
//! an upper bound well above the timeout.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The daemon's header and body timeouts.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How far above a timeout a close may come before the test calls it a
/// hang.
const SLACK: Duration = Duration::from_secs(10);

/// A raw request's outcome.
#[derive(Debug)]
enum Raw {
    /// A complete response: status and body.
    Answered(u16, String),
    /// The server closed (or reset) the connection without an answer.
    Closed,
}

/// Reads one response (or the close) from `s`, panicking if neither comes
/// within `within`.
fn read_answer(s: &mut TcpStream, within: Duration) -> Raw {
    match read_response(s, within) {
        Some((head, body)) => Raw::Answered(head[9..12].parse().unwrap(), body),
        None => Raw::Closed,
    }
}

/// Reads one response from `s`: its head (lower case) and body, or `None`
/// when the server closed without one; panics if neither comes within
/// `within`.
fn read_response(s: &mut TcpStream, within: Duration) -> Option<(String, String)> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let body = &got[end + 4..];
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            match len {
                Some(len) if body.len() >= len => {
                    let body = String::from_utf8_lossy(&body[..len]).into();
                    return Some((head, body));
                }
                None if body.ends_with(b"0\r\n\r\n") || head.starts_with("http/1.1 431") => {
                    let body = String::from_utf8_lossy(body).into();
                    return Some((head, body));
                }
                _ => {}
            }
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "no answer and no close within {within:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                )
            }
            Err(_) => break,
        }
    }
    if got.is_empty() {
        None
    } else {
        panic!(
            "the connection closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        )
    }
}

/// Waits until the server closes `s`, returning how long since `since`.
fn wait_closed(s: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server did not close the connection within {within:?}")
            }
            Err(_) => return since.elapsed(),
        }
    }
}

/// What the daemon answers to `head` written at once on a connection of
/// its own. The server may answer before it has read everything: the
/// writer may fail, the answer is what counts.
fn send_head(port: u16, head: String) -> Raw {
    let mut s = connect(port);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
    });
    let answer = read_answer(&mut s, Duration::from_secs(30));
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    answer
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon")
}

/// Sends `head` and then `chunk` repeatedly (as chunks of a chunked body
/// when `chunked`) until `total` bytes or the server stops reading; returns
/// the answer.
fn send_big(port: u16, head: String, chunk: Vec<u8>, total: usize, chunked: bool) -> Raw {
    let mut s = connect(port);
    s.write_all(head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            let piece = &chunk[..chunk.len().min(total - sent)];
            let r = if chunked {
                w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .and_then(|()| w.write_all(piece))
                    .and_then(|()| w.write_all(b"\r\n"))
            } else {
                w.write_all(piece)
            };
            if r.is_err() {
                return;
            }
            sent += piece.len();
        }
        if chunked {
            let _ = w.write_all(b"0\r\n\r\n");
        }
    });
    let answer = read_answer(&mut s, Duration::from_secs(60));
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    answer
}

#[track_caller]
fn assert_error_answer(raw: &Raw, status: u16, code: &str, what: &str) {
    let Raw::Answered(got, body) = raw else {
        panic!("{what}: closed without an answer");
    };
    assert_eq!(*got, status, "{what}: {body:.500}");
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body:.500}"));
    assert_error_body(&v, body, code, what);
}

#[test]
fn malformed_json_and_invalid_utf8_are_400_never_500() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let post = |path: &str, body: Vec<u8>| {
        d.send(
            d.request(reqwest::Method::POST, path)
                .header("Content-Type", "application/json")
                .body(body),
        )
    };
    let deep_array = "[".repeat(100_000).into_bytes();
    let deep_object = "{\"a\":".repeat(100_000).into_bytes();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("bytes that are not UTF-8", b"\xff\xfe\xfd".to_vec()),
        (
            "a string with invalid UTF-8",
            b"{\"image\": \"\xff\"}".to_vec(),
        ),
        (
            "a truncated UTF-8 sequence",
            b"{\"env\": {\"A\": \"\xc3\"}}".to_vec(),
        ),
        (
            "a lone surrogate escape",
            b"{\"image\": \"\\ud800\"}".to_vec(),
        ),
        ("a NUL byte", b"{\"image\": \0}".to_vec()),
        ("trailing garbage", b"{} {}".to_vec()),
        (
            "a number out of range",
            b"{\"ttl_seconds\": 1e400}".to_vec(),
        ),
        ("a negative ttl", b"{\"ttl_seconds\": -1}".to_vec()),
        ("deeply nested arrays", deep_array),
        ("deeply nested objects", deep_object),
    ];
    for (what, body) in &bodies {
        post("/v1/sessions", body.clone()).assert_error(400, "INVALID_REQUEST", what);
        post(&format!("/v1/sessions/{id}/exec"), body.clone()).assert_error(
            400,
            "INVALID_REQUEST",
            &format!("exec: {what}"),
        );
    }
    post(
        &format!("/v1/sessions/{id}/exec"),
        b"{\"cmd\": \"echo \xff\"}".to_vec(),
    )
    .assert_error(400, "INVALID_REQUEST", "a command with invalid UTF-8");
    // Invalid UTF-8 percent-encoded in a path segment and in the query
    // (the query decoder substitutes U+FFFD: then it is a missing file).
    d.get("/v1/sessions/%ff%fe")
        .assert_client_error("a session id that is not UTF-8");
    d.get(&format!("/v1/sessions/{id}/fs/read?path=%ff%fe"))
        .assert_client_error("a path that is not UTF-8");
    // Bytes outside ASCII in the key's header: just a wrong key.
    let r = d.send(
        reqwest::blocking::Client::new()
            .get(format!("{}/v1/sessions", d.url))
            .header(
                "Authorization",
                reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
            ),
    );
    r.assert_error(401, "UNAUTHORIZED", "a key that is not UTF-8");
    // None of it touched the session or created another.
    assert_eq!(d.listed_ids(), vec![id.clone()]);
    assert_eq!(d.sh(&id, "echo ok"), "ok\n");
}

#[test]
fn huge_heads_are_431_or_a_closed_connection() {
    let d = Daemon::start(None);
    let cases: Vec<(&str, String)> = vec![
        (
            "one header of 1 MiB",
            format!(
                "GET /v1/sessions HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            ),
        ),
        (
            "10 000 headers",
            format!(
                "GET /v1/sessions HTTP/1.1\r\nhost: t\r\n{}\r\n",
                (0..10_000)
                    .map(|i| format!("x-h{i}: v\r\n"))
                    .collect::<String>()
            ),
        ),
        (
            "a request line of 200 KiB",
            format!(
                "GET /v1/sessions?x={} HTTP/1.1\r\nhost: t\r\n\r\n",
                "a".repeat(200 << 10)
            ),
        ),
        (
            "a head that never ends, 4 MiB of header lines",
            format!(
                "GET /v1/sessions HTTP/1.1\r\n{}",
                "x-more: aaaaaaaaaaaaaaaa\r\n".repeat(4 << 20 >> 5)
            ),
        ),
    ];
    for (what, head) in cases {
        match send_head(d.port, head) {
            Raw::Answered(status, body) => {
                assert!(
                    status == 431 || status == 414,
                    "{what}: answered {status}: {body:.300}"
                )
            }
            Raw::Closed => {}
        }
    }
    // The daemon is fine.
    d.get("/healthz").expect(200, "healthz after huge heads");
    d.list_sessions();
}

#[test]
fn heads_are_held_to_64_kib_however_they_arrive() {
    let d = Daemon::start(None);
    // A head of exactly `len` bytes (the blank line that ends it included),
    // written at once: it may reach the daemon in a single read.
    let head = |len: usize| {
        let (start, end) = ("GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: ", "\r\n\r\n");
        format!("{start}{}{end}", "a".repeat(len - start.len() - end.len()))
    };
    for (len, want) in [
        (64 << 10, 200),
        ((64 << 10) + 1, 431),
        (70_000, 431),
        (114_000, 431),
        (1 << 20, 431),
    ] {
        let head = head(len);
        assert_eq!(head.len(), len);
        match send_head(d.port, head) {
            Raw::Answered(status, body) => {
                assert_eq!(status, want, "a head of {len} bytes: {body:.300}")
            }
            Raw::Closed => panic!("a head of {len} bytes: closed without an answer"),
        }
    }
}

#[test]
fn a_slow_or_silent_head_is_closed_within_the_header_timeout() {
    let d = Daemon::start(None);
    let port = d.port;
    // Silent: connects and sends nothing.
    let silent = std::thread::spawn(move || {
        let start = Instant::now();
        let mut s = connect(port);
        wait_closed(&mut s, start, HEADER_TIMEOUT + SLACK)
    });
    // Slowloris: a header line every 500 ms, never the end of the head.
    let start = Instant::now();
    let mut s = connect(port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    let trickle = std::thread::spawn(move || {
        let mut lines = 0;
        while !stop_writer.load(Ordering::Relaxed) && w.write_all(b"x-slow: 1\r\n").is_ok() {
            lines += 1;
            // The client's pace, not a wait for the server.
            std::thread::sleep(Duration::from_millis(500));
        }
        lines
    });
    let slow = wait_closed(&mut s, start, HEADER_TIMEOUT + SLACK);
    stop.store(true, Ordering::Relaxed);
    let lines = trickle.join().unwrap();
    let silent = silent.join().unwrap();
    for (what, took) in [("silent", silent), ("slowloris", slow)] {
        assert!(
            took >= HEADER_TIMEOUT && took <= HEADER_TIMEOUT + SLACK,
            "{what}: closed after {took:?}"
        );
    }
    assert!(lines >= 10, "the slow client sent only {lines} lines");
    // A prompt client is served meanwhile and after.
    d.get("/healthz").expect(200, "healthz");
}

#[test]
fn a_stalled_body_is_answered_400_and_its_connection_closed() {
    let d = Daemon::start(None);
    let mut s = connect(d.port);
    s.write_all(
        format!(
            "POST /v1/sessions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"image\":",
            d.key
        )
        .as_bytes(),
    )
    .unwrap();
    let start = Instant::now();
    let answer = read_answer(&mut s, BODY_TIMEOUT + SLACK);
    let took = start.elapsed();
    assert_error_answer(&answer, 400, "INVALID_REQUEST", "stalled body");
    let Raw::Answered(_, body) = &answer else {
        unreachable!()
    };
    assert!(body.contains("no body data"), "{body}");
    assert!(
        took >= BODY_TIMEOUT && took <= BODY_TIMEOUT + SLACK,
        "answered after {took:?}"
    );
    wait_closed(&mut s, start, SLACK);
    assert!(
        d.list_sessions().is_empty(),
        "a stalled create made a session"
    );
}

/// An answer given before the request's body has been read to its end
/// (an error part way through a streamed body, a refusal before it) ends
/// the connection and says so (`connection: close`): the rest of the body
/// would otherwise be read as the next request, and a client that reuses
/// the connection loses its next request. A request read whole keeps its
/// connection.
#[test]
fn an_answer_before_the_body_is_read_closes_the_connection_and_says_so() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let started = d
        .post(
            &format!("/v1/sessions/{id}/processes"),
            &serde_json::json!({"argv": ["true"], "stdin": true}),
        )
        .expect(201, "start a process that ends at once");
    let pid = started["pid"].as_u64().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            d.get(&format!("/v1/sessions/{id}/processes/{pid}"))
                .expect(200, "get")["running"]
                == false
        }),
        "the process did not end"
    );
    let total = 8 << 20;
    let chunk = vec![b'x'; 64 << 10];
    let cases = [
        (
            "stdin of an ended process",
            format!("/v1/sessions/{id}/processes/{pid}/stdin"),
            d.key.clone(),
            409,
        ),
        (
            "stdin of no such process",
            format!("/v1/sessions/{id}/processes/99999/stdin"),
            d.key.clone(),
            404,
        ),
        (
            "a wrong key",
            format!("/v1/sessions/{id}/processes/{pid}/stdin"),
            "not-the-key".to_string(),
            401,
        ),
    ];
    for (what, path, key, status) in cases {
        let mut s = connect(d.port);
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\n\
                 content-type: application/octet-stream\r\ncontent-length: {total}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        s.write_all(&chunk).unwrap();
        let (head, body) =
            read_response(&mut s, Duration::from_secs(30)).expect("an answer, not a close");
        assert_eq!(&head[9..12], status.to_string(), "{what}: {head}\n{body}");
        assert!(
            head.lines().any(|l| l == "connection: close"),
            "{what}: the answer does not say the connection ends: {head}"
        );
        wait_closed(&mut s, Instant::now(), SLACK);
    }
    // A request whose body is read whole keeps its connection: two on one.
    let mut s = connect(d.port);
    for i in 0..2 {
        let body = r#"{"cmd": "echo kept"}"#;
        s.write_all(
            format!(
                "POST /v1/sessions/{id}/exec HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                d.key,
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        let (head, body) =
            read_response(&mut s, Duration::from_secs(30)).expect("an answer, not a close");
        assert!(head.starts_with("http/1.1 200"), "exec {i}: {head}\n{body}");
        assert!(body.contains("kept"), "exec {i}: {body}");
        assert!(!head.contains("connection: close"), "exec {i}: {head}");
    }
}

#[test]
fn bodies_over_the_limit_are_413() {
    let d = Daemon::start(Some("max_body_mb: 1\n"));
    let id = d.new_session();
    let limit = 1 << 20;
    let chunk = vec![b'A'; 64 << 10];
    let head = |path: &str, content_type: &str, framing: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\
             content-type: {content_type}\r\n{framing}\r\n\r\n",
            d.key
        )
    };
    let write = format!("/v1/sessions/{id}/fs/write");
    let upload = format!("/v1/sessions/{id}/fs/upload");
    let json = "application/json";
    let form = "multipart/form-data; boundary=XyZ";
    // The multipart part's head goes first, as the first chunk.
    let part_head =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n";
    let json_head = b"{\"path\": \"big.bin\", \"content_base64\": \"";
    let with_prefix = |prefix: &[u8]| {
        let mut c = prefix.to_vec();
        c.extend_from_slice(&chunk[prefix.len()..]);
        c
    };
    let total = 2 * limit;
    let cases = [
        (
            "JSON, announced",
            head(&write, json, &format!("content-length: {total}")),
            with_prefix(json_head),
            false,
        ),
        (
            "JSON, chunked",
            head(&write, json, "transfer-encoding: chunked"),
            with_prefix(json_head),
            true,
        ),
        (
            "multipart, announced",
            head(&upload, form, &format!("content-length: {total}")),
            with_prefix(part_head),
            false,
        ),
        (
            "multipart, chunked",
            head(&upload, form, "transfer-encoding: chunked"),
            with_prefix(part_head),
            true,
        ),
    ];
    for (what, head, first, chunked) in cases {
        // Every chunk after the first is plain payload.
        let answer = send_big_with_first(d.port, head, first, chunk.clone(), total, chunked);
        assert_error_answer(&answer, 413, "PAYLOAD_TOO_LARGE", what);
    }
    // Nothing was written, the session and the daemon are fine, and a body
    // under the limit passes.
    d.read_resp(&id, "big.bin")
        .assert_error(404, "FILE_NOT_FOUND", "file of a refused body");
    d.write(&id, "small.bin", &vec![7u8; limit / 2]);
    assert_eq!(d.sh(&id, "wc -c < small.bin"), format!("{}\n", limit / 2));
}

/// [`send_big`] whose first chunk is `first` (a body's opening).
fn send_big_with_first(
    port: u16,
    head: String,
    first: Vec<u8>,
    chunk: Vec<u8>,
    total: usize,
    chunked: bool,
) -> Raw {
    let mut opening = head.into_bytes();
    if chunked {
        opening.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
        opening.extend_from_slice(&first);
        opening.extend_from_slice(b"\r\n");
    } else {
        opening.extend_from_slice(&first);
    }
    send_big(
        port,
        String::from_utf8(opening).expect("ASCII opening"),
        chunk,
        total - first.len(),
        chunked,
    )
}

// ---------------------------------------------------------------------------
// Many idle connections against a daemon with few descriptors
// ---------------------------------------------------------------------------

/// A daemon started with a lowered open-file limit (soft and hard), which
/// it cannot raise: its connection budget is half of it, half of that for
/// connections not yet authenticated.
struct LimitedDaemon {
    child: Child,
    port: u16,
    key: String,
    stderr: PathBuf,
    _home: Arc<DataDir>,
}

impl LimitedDaemon {
    fn start(nofile: u64) -> LimitedDaemon {
        let home = DataDir::new();
        let stderr = home.root.join("daemon.stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(home.write_config("pool:\n  enabled: false\n"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SANDKASTEN_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SANDKASTEN_LISTEN", "127.0.0.1:0")
            .env("SANDKASTEN_DATA_DIR", &home.data)
            .env("SANDKASTEN_API_KEY", &home.key)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        // SAFETY: between fork and exec only setrlimit, a plain system call
        // (async-signal-safe), runs; nothing allocates or locks.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    nofile,
                    nofile,
                )
                .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().expect("starting the daemon");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the daemon's stdout");
        let Some(url) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no `listening on` line: {line:?}; log: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        LimitedDaemon {
            child,
            port,
            key: home.key.clone(),
            stderr,
            _home: home,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }
}

impl Drop for LimitedDaemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid; it is not reaped yet,
        // so the pid cannot have been recycled.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if started.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

#[test]
fn idle_connections_leave_room_for_authenticated_requests() {
    let nofile = 256;
    let d = LimitedDaemon::start(nofile);
    let client = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Served: the serve loop has logged its limits.
    let r = client
        .get(format!("http://127.0.0.1:{}/healthz", d.port))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let logs = d.logs();
    assert!(
        logs.contains("max_connections=128") && logs.contains("max_unauthenticated=64"),
        "the daemon's budget does not follow its descriptor limit: {logs}"
    );
    // Far more idle connections than the daemon has descriptors.
    let mut idle: Vec<TcpStream> = (0..3 * nofile).map(|_| connect(d.port)).collect();
    // And an attacker that keeps opening more while we work: as many as
    // the kernel's accept queue holds on top of the idle ones (beyond it,
    // SYNs are dropped and any client waits a second for its retransmit,
    // whatever the daemon does).
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let flood = 2000.min(somaxconn.saturating_sub(idle.len() + 100));
    assert!(
        flood >= 1000,
        "net.core.somaxconn is {somaxconn}: too small for this test"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (started, under_way) = std::sync::mpsc::channel();
    let attacker = {
        let stop = stop.clone();
        let port = d.port;
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for i in 0..flood {
                held.push(connect(port));
                if i == 200 {
                    started.send(()).unwrap();
                }
            }
            // Hold them until told (unpark; park may also wake spuriously).
            while !stop.load(Ordering::Relaxed) {
                std::thread::park();
            }
            held.len()
        })
    };
    under_way.recv().expect("the attacker stopped");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let start = Instant::now();
        let r = client
            .get(format!("http://127.0.0.1:{}/v1/sessions", d.port))
            .bearer_auth(&d.key)
            .send()
            .expect("an authenticated request under a connection flood");
        assert_eq!(r.status().as_u16(), 200);
        slowest = slowest.max(start.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    attacker.thread().unpark();
    let opened = attacker.join().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "the slowest authenticated request took {slowest:?} (attacker opened {opened})"
    );
    // The daemon closed the oldest idle connections: at most its
    // unauthenticated budget of the first ones can still be open.
    let start = Instant::now();
    let mut closed = 0;
    for s in &mut idle[..2 * nofile as usize] {
        s.set_read_timeout(Some(SLACK)).unwrap();
        let mut buf = [0u8; 16];
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
        assert!(start.elapsed() < SLACK, "reading closed connections hangs");
    }
    assert_eq!(
        closed,
        2 * nofile as usize,
        "of the oldest idle connections"
    );
    idle.clear();
    assert!(
        d.open_fds() < nofile as usize,
        "the daemon holds {} descriptors of {nofile}",
        d.open_fds()
    );
    let r = client
        .get(format!("http://127.0.0.1:{}/healthz", d.port))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn a_chunked_multipart_upload_keeps_its_connection() {
    // A multipart parser stops at the closing boundary; the chunked
    // body's last chunk comes after it. An upload that left it unread
    // ended its connection (`Connection: close`): each upload of an SDK
    // that streams its form cost a reconnect.
    let d = Daemon::start(None);
    let id = d.new_session();
    // Our upload names the file by the part's filename, in /workspace;
    // E2B's by its path parameter (the daemon routes by the header).
    let form = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"up.txt\"\r\n\
                Content-Type: application/octet-stream\r\n\r\nhello\r\n--XyZ--\r\n";
    let routes = [
        (
            "ours",
            format!("/v1/sessions/{id}/fs/upload"),
            String::new(),
        ),
        (
            "e2b",
            "/files?path=/workspace/up.txt".to_string(),
            format!("e2b-sandbox-id: {id}\r\n"),
        ),
    ];
    for (what, path, route) in routes {
        let mut s = connect(d.port);
        for i in 0..3 {
            // The form in two chunks, then the last (empty) chunk.
            let (a, b) = form.split_at(40);
            s.write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\
                     {route}content-type: multipart/form-data; boundary=XyZ\r\n\
                     transfer-encoding: chunked\r\n\r\n\
                     {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    d.key,
                    a.len(),
                    b.len()
                )
                .as_bytes(),
            )
            .unwrap();
            let (head, body) =
                read_response(&mut s, Duration::from_secs(30)).expect("an answer, not a close");
            assert!(
                head.starts_with("http/1.1 200"),
                "{what} {i}: {head}\n{body}"
            );
            assert!(
                !head.lines().any(|l| l == "connection: close"),
                "{what} {i}: the upload ended its connection: {head}"
            );
        }
        assert_eq!(d.read(&id, "/workspace/up.txt"), b"hello", "{what}");
    }
}
