//! Background processes end to end: start (JSON and SSE), list, status,
//! reattach with the kept output, stdin (whole and streamed), signals,
//! PTYs and resizes, users, env and cwd, large output, and bad input.
//! Runs on native and, with `SANDKASTEN_E2E_RUNTIME=docker` or
//! `docker-remote`, on docker.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn procs(id: &str) -> String {
    format!("/v1/sessions/{id}/processes")
}

/// Starts a process with its output streamed.
fn start_stream(d: &Daemon, id: &str, body: Value) -> SseStream {
    d.sse(
        d.request(
            reqwest::Method::POST,
            &format!("/v1/sessions/{id}/processes/stream"),
        )
        .json(&body),
    )
    .unwrap_or_else(|r| panic!("processes/stream: {} {}", r.status, r.text))
}

/// Attaches to a process.
fn attach(d: &Daemon, id: &str, proc: &str, query: &str) -> SseStream {
    d.sse(d.request(
        reqwest::Method::GET,
        &format!("/v1/sessions/{id}/processes/{proc}/stream{query}"),
    ))
    .unwrap_or_else(|r| panic!("attach {proc}: {} {}", r.status, r.text))
}

/// What a stream carried: (stdout, stderr, pty) text and the `end` event.
fn collect(mut s: SseStream) -> (String, String, String, Value) {
    let first = s.next_event();
    assert_eq!(
        first.as_ref().map(|e| e.event.as_str()),
        Some("start"),
        "{first:?}"
    );
    let all = collect_rest(s);
    assert!(all.3.is_object(), "the stream ended without an end event");
    all
}

#[test]
fn a_process_streams_stdout_and_stderr_apart_and_reports_its_exit() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let s = start_stream(
        &d,
        &id,
        json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
    );
    let (out, err, pty, end) = collect(s);
    assert_eq!(
        (out.as_str(), err.as_str(), pty.as_str()),
        ("out\n", "err\n", "")
    );
    assert_eq!(end["exit_code"], 3, "{end}");
    assert!(end["signal"].is_null(), "{end}");

    let list = d.get(&procs(&id)).expect(200, "list");
    let p = &list.as_array().unwrap()[0];
    assert_eq!(p["running"], false, "{p}");
    assert_eq!(p["exit_code"], 3, "{p}");
    assert_eq!(p["user"], "sandbox", "{p}");
    let pid = p["pid"].as_u64().unwrap();
    let one = d
        .get(&format!("{}/{pid}", procs(&id)))
        .expect(200, "status");
    assert_eq!(
        one["argv"],
        json!(["sh", "-c", "echo out; echo err >&2; exit 3"])
    );
}

#[test]
fn a_background_process_outlives_its_client_and_replays_its_output() {
    let d = Daemon::start(None);
    let id = d.new_session();
    // It waits for a file, so it is surely running when we attach.
    let v = d
        .post(
            &procs(&id),
            &json!({"cmd": "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two", "tag": "job"}),
        )
        .expect(201, "start");
    assert_eq!(v["running"], true, "{v}");
    assert_eq!(v["tag"], "job", "{v}");
    let pid = v["pid"].as_u64().unwrap();

    // A stream that goes away detaches; the process runs on.
    let mut s = attach(&d, &id, "job", "");
    let first = s.next_event().unwrap();
    assert_eq!(first.event, "start");
    assert_eq!(first.data["pid"], pid);
    let one = s.next_event().unwrap();
    assert_eq!(
        (one.event.as_str(), one.data["data"].as_str()),
        ("stdout", Some("one\n"))
    );
    drop(s);
    let st = d.get(&format!("{}/job", procs(&id))).expect(200, "status");
    assert_eq!(st["running"], true, "{st}");

    d.sh(&id, "touch /tmp/go");
    let (out, _, _, end) = collect(attach(&d, &id, &pid.to_string(), ""));
    assert_eq!(out, "one\ntwo\n", "replayed from the start");
    assert_eq!(end["exit_code"], 0);
    // Without replay, an ended process sends only its end.
    let (out, _, _, end) = collect(attach(&d, &id, "job", "?replay=false"));
    assert_eq!((out.as_str(), end["exit_code"].as_i64()), ("", Some(0)));
}

#[test]
fn stdin_takes_whole_bodies_and_streams_and_then_closes() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.post(
        &procs(&id),
        &json!({"argv": ["cat"], "stdin": true, "tag": "cat"}),
    )
    .expect(201, "start cat");
    let stdin = format!("{}/cat/stdin", procs(&id));
    let r = d.send(d.request(reqwest::Method::POST, &stdin).body("hello\n"));
    r.expect(200, "stdin");
    // A streamed body: chunks as they come.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"wor".to_vec()), Ok(b"ld".to_vec())];
    let body = reqwest::blocking::Body::new(ChunkReader::new(chunks));
    let r = d.send(
        d.request(reqwest::Method::POST, &format!("{stdin}?close=true"))
            .body(body),
    );
    r.expect(200, "streamed stdin, then close");
    let (out, _, _, end) = collect(attach(&d, &id, "cat", ""));
    assert_eq!(out, "hello\nworld");
    assert_eq!(end["exit_code"], 0);
    let late = d.send(d.request(reqwest::Method::POST, &stdin).body("late"));
    late.assert_error(409, "PROCESS_ENDED", "stdin to an ended process");

    // A process started without stdin has none.
    d.post(
        &procs(&id),
        &json!({"argv": ["sleep", "30"], "tag": "nostdin"}),
    )
    .expect(201, "start");
    let r = d.send(
        d.request(
            reqwest::Method::POST,
            &format!("{}/nostdin/stdin", procs(&id)),
        )
        .body("x"),
    );
    r.assert_error(409, "STDIN_CLOSED", "stdin that was never open");
}

#[test]
fn signals_reach_the_process_group_and_its_end_says_which() {
    let d = Daemon::start(None);
    let id = d.new_session();
    // `sh` waits for its child: the group's TERM ends both.
    let v = d
        .post(&procs(&id), &json!({"cmd": "sleep 100; echo never"}))
        .expect(201, "start");
    let pid = v["pid"].as_u64().unwrap().to_string();
    let signal = format!("{}/{pid}/signal", procs(&id));
    d.post(&signal, &json!({"signal": "TERM"}))
        .expect(200, "signal");
    let (out, _, _, end) = collect(attach(&d, &id, &pid, ""));
    assert_eq!(out, "");
    assert_eq!(
        (end["exit_code"].as_i64(), end["signal"].as_i64()),
        (Some(143), Some(15)),
        "{end}"
    );
    assert!(
        !d.sh(&id, "ps -eo comm 2>/dev/null || ls /proc")
            .contains("sleep"),
        "the group's sleep survived"
    );
    d.post(&signal, &json!({"signal": 9})).assert_error(
        409,
        "PROCESS_ENDED",
        "a signal to an ended process",
    );
    d.post(
        &format!("{}/99999/signal", procs(&id)),
        &json!({"signal": "KILL"}),
    )
    .assert_error(404, "PROCESS_NOT_FOUND", "a signal to no process");
    d.post(&signal, &json!({"signal": "NOPE"})).assert_error(
        400,
        "INVALID_REQUEST",
        "an unknown signal",
    );
}

#[test]
fn a_pty_process_is_a_terminal_that_can_be_resized() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let mut s = start_stream(
        &d,
        &id,
        json!({"argv": ["sh", "-c", "stty size; read x; stty size; echo got:$x; [ -t 1 ] && echo tty"],
               "pty": {"rows": 24, "cols": 80}, "tag": "term"}),
    );
    let start = s.next_event().unwrap();
    assert_eq!(start.data["pty"], json!({"rows": 24, "cols": 80}));
    let mut seen = String::new();
    while !seen.contains("24 80") {
        let e = s.next_event().expect("the stream ended early");
        assert_eq!(e.event, "pty", "{e:?}");
        seen.push_str(e.data["data"].as_str().unwrap());
    }
    d.post(
        &format!("{}/term/resize", procs(&id)),
        &json!({"rows": 30, "cols": 100}),
    )
    .expect(200, "resize");
    let stdin = format!("{}/term/stdin", procs(&id));
    d.send(d.request(reqwest::Method::POST, &stdin).body("hi\n"))
        .expect(200, "input");
    let (_, _, rest, end) = collect_rest(s);
    seen.push_str(&rest);
    // The terminal echoes the input and writes \r\n.
    assert!(seen.contains("hi\r\n"), "no echo: {seen:?}");
    assert!(seen.contains("30 100\r\n"), "not resized: {seen:?}");
    assert!(seen.contains("got:hi\r\ntty\r\n"), "{seen:?}");
    assert_eq!(end["exit_code"], 0);

    // Resizing what has no PTY is refused.
    d.post(
        &procs(&id),
        &json!({"argv": ["sleep", "30"], "tag": "plain"}),
    )
    .expect(201, "start");
    d.post(
        &format!("{}/plain/resize", procs(&id)),
        &json!({"rows": 30, "cols": 100}),
    )
    .assert_error(400, "INVALID_REQUEST", "resize without a PTY");
}

/// The rest of a stream whose `start` was read already.
fn collect_rest(mut s: SseStream) -> (String, String, String, Value) {
    let (mut out, mut err, mut pty, mut end) =
        (String::new(), String::new(), String::new(), Value::Null);
    while let Some(e) = s.next_event() {
        let data = e.data["data"].as_str().unwrap_or_default();
        match e.event.as_str() {
            "stdout" => out.push_str(data),
            "stderr" => err.push_str(data),
            "pty" => pty.push_str(data),
            "end" => end = e.data.clone(),
            other => panic!("unexpected event {other}: {:?}", e.raw),
        }
    }
    (out, err, pty, end)
}

#[test]
fn processes_run_as_the_sandbox_user_or_root_with_their_env_and_cwd() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "mkdir -p /tmp/here");
    let (out, ..) = collect(start_stream(
        &d,
        &id,
        json!({"cmd": "id -u; pwd; echo $FOO", "env": {"FOO": "bar"}, "cwd": "/tmp/here"}),
    ));
    assert_eq!(out, format!("{}\n/tmp/here\nbar\n", sandbox_uid()));
    let (out, ..) = collect(start_stream(
        &d,
        &id,
        json!({"argv": ["id", "-u"], "user": "root"}),
    ));
    assert_eq!(out, "0\n");
    // The default cwd is the workspace.
    let (out, ..) = collect(start_stream(&d, &id, json!({"argv": ["pwd"]})));
    assert_eq!(out, "/workspace\n");
}

#[test]
fn large_output_arrives_whole_through_a_stream() {
    let d = Daemon::start(None);
    let id = d.new_session();
    // 6.9 MB: more than the kept output, so the stream must keep pace.
    let s = d
        .sse(
            d.request(
                reqwest::Method::POST,
                &format!("/v1/sessions/{id}/processes/stream?encoding=base64"),
            )
            .json(&json!({"argv": ["seq", "1", "1000000"]})),
        )
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text));
    let mut bytes = Vec::new();
    let mut end = Value::Null;
    for e in s.rest() {
        match e.event.as_str() {
            "stdout" => bytes.extend(unb64(e.data["data_base64"].as_str().unwrap())),
            "end" => end = e.data,
            _ => {}
        }
    }
    assert_eq!(end["exit_code"], 0);
    let expected: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(bytes.len(), expected.len());
    assert!(bytes == expected.as_bytes(), "the output differs");
}

#[test]
fn bad_process_requests_are_clear_errors() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let p = procs(&id);
    d.post(&p, &json!({}))
        .assert_error(400, "INVALID_REQUEST", "neither cmd nor argv");
    d.post(&p, &json!({"cmd": "x", "argv": ["y"]}))
        .assert_error(400, "INVALID_REQUEST", "both");
    d.post(&p, &json!({"argv": ["no-such-program-here"]}))
        .assert_error(400, "PROCESS_START_FAILED", "a missing program");
    d.post(&p, &json!({"argv": ["true"], "cwd": "/no/such/dir"}))
        .assert_error(400, "PROCESS_START_FAILED", "a missing cwd");
    d.post(&p, &json!({"argv": ["true"], "tag": "12"}))
        .assert_error(400, "INVALID_REQUEST", "a numeric tag");
    d.post(
        &p,
        &json!({"argv": ["true"], "pty": {"rows": 0, "cols": 1}}),
    )
    .assert_error(400, "INVALID_REQUEST", "a zero PTY");
    d.post(&p, &json!({"argv": ["sleep", "30"], "tag": "dup"}))
        .expect(201, "first");
    d.post(&p, &json!({"argv": ["sleep", "30"], "tag": "dup"}))
        .assert_error(409, "TAG_IN_USE", "a second running process with the tag");
    d.get(&format!("{p}/nosuch"))
        .assert_error(404, "PROCESS_NOT_FOUND", "unknown tag");
    d.get(&format!("{p}/a%2Fb"))
        .assert_error(400, "INVALID_REQUEST", "a bad ref");
    d.get("/v1/sessions/nosuchsession/processes").assert_error(
        404,
        "SESSION_NOT_FOUND",
        "unknown session",
    );
    // The session still works.
    assert_eq!(d.sh(&id, "echo ok"), "ok\n");
    // Not a leak: the agent waits for the killed group.
    wait_for(Duration::from_secs(5), || {
        d.post(&format!("{p}/dup/signal"), &json!({"signal": "KILL"}))
            .status
            == 200
    });
}

/// A reader that yields its chunks one read at a time (a streamed body).
struct ChunkReader {
    chunks: std::collections::VecDeque<Result<Vec<u8>, std::io::Error>>,
}

impl ChunkReader {
    fn new(chunks: Vec<Result<Vec<u8>, std::io::Error>>) -> Self {
        ChunkReader {
            chunks: chunks.into(),
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.chunks.pop_front() {
            None => Ok(0),
            Some(Err(e)) => Err(e),
            Some(Ok(c)) => {
                let n = c.len().min(buf.len());
                buf[..n].copy_from_slice(&c[..n]);
                if n < c.len() {
                    self.chunks.push_front(Ok(c[n..].to_vec()));
                }
                Ok(n)
            }
        }
    }
}

/// The CLI against this daemon (`SANDKASTEN_LISTEN`, `SANDKASTEN_API_KEY`).
fn cli(d: &Daemon, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .args(args)
        .env("SANDKASTEN_LISTEN", format!("127.0.0.1:{}", d.port))
        .env("SANDKASTEN_API_KEY", &d.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_runs_a_process_and_passes_its_exit_code_through() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let (code, out, err) = cli(
        &d,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
        "",
    );
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let (code, out, _) = cli(&d, &["exec", &id, "--root", "--", "id", "-u"], "");
    assert_eq!((code, out.as_str()), (0, "0\n"));
    let (code, _, err) = cli(&d, &["exec", &id, "--", "no-such-program-here"], "");
    assert_eq!(code, 1);
    assert!(err.contains("no-such-program-here"), "{err}");
}

#[test]
fn the_cli_shell_is_a_terminal_over_a_websocket() {
    let d = Daemon::start(None);
    let id = d.new_session();
    // Not a terminal here: input is piped, output collected.
    let (code, out, err) = cli(
        &d,
        &[
            "shell",
            &id,
            "--cmd",
            "read x; echo got-$x; [ -t 0 ] && echo tty; exit 5",
        ],
        "hello\n",
    );
    assert_eq!(code, 5, "stdout {out:?} stderr {err:?}");
    assert!(out.contains("got-hello\r\ntty\r\n"), "{out:?}");
}

/// A WebSocket request to `url` carrying the daemon's key.
fn with_key(d: &Daemon, url: &str) -> tungstenite::handshake::client::Request {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", d.key).parse().unwrap(),
    );
    req
}

#[test]
fn a_pty_websocket_carries_bytes_both_ways_and_resizes() {
    use tungstenite::Message;
    let d = Daemon::start(None);
    let id = d.new_session();
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/pty?rows=20&cols=70&cmd=read%20a%3B%20stty%20size%3B%20exit%203",
        d.port
    );
    // Without the key: refused before any upgrade.
    let refused = tungstenite::connect(url.as_str());
    assert!(
        matches!(&refused, Err(tungstenite::Error::Http(r)) if r.status() == 401),
        "{refused:?}"
    );
    let req = with_key(&d, &url);
    let (mut ws, _) = tungstenite::connect(req).unwrap();
    ws.send(Message::Text(
        r#"{"type":"resize","rows":33,"cols":101}"#.into(),
    ))
    .unwrap();
    ws.send(Message::Binary(b"go\n".to_vec().into())).unwrap();
    let mut seen = Vec::new();
    let exit = loop {
        match ws.read().unwrap() {
            Message::Binary(b) => seen.extend_from_slice(&b),
            Message::Text(t) => break serde_json::from_str::<Value>(&t).unwrap(),
            Message::Close(_) => panic!("closed without an exit message"),
            _ => {}
        }
    };
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("33 101\r\n"), "{seen:?}");
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exit_code"], 3);

    // Not a WebSocket request: a clear error.
    d.get(&format!("/v1/sessions/{id}/pty"))
        .assert_error(400, "INVALID_REQUEST", "a plain GET");
}

#[test]
fn only_the_newest_ended_processes_keep_their_output() {
    let d = Daemon::start(None);
    let id = d.new_session();
    for i in 0..10 {
        let (out, _, _, end) = collect(start_stream(
            &d,
            &id,
            json!({"argv": ["echo", format!("n{i}")], "tag": format!("p{i}")}),
        ));
        assert_eq!(
            (out, end["exit_code"].as_i64()),
            (format!("n{i}\n"), Some(0))
        );
    }
    // The oldest two are listed and reattach to their end alone; the
    // newest eight still replay.
    let (out, _, _, end) = collect(attach(&d, &id, "p1", ""));
    assert_eq!((out.as_str(), end["exit_code"].as_i64()), ("", Some(0)));
    let (out, ..) = collect(attach(&d, &id, "p2", ""));
    assert_eq!(out, "n2\n");
    assert_eq!(
        d.get(&procs(&id))
            .expect(200, "list")
            .as_array()
            .unwrap()
            .len(),
        10
    );
}

/// A paste of 1 MiB into a terminal that echoes it: input and output
/// flow at once (the input waits for the terminal, which waits for its
/// output to be taken), and the paste comes back.
#[test]
fn a_large_paste_into_a_terminal_flows_both_ways() {
    use tungstenite::Message;
    let d = Daemon::start(None);
    let id = d.new_session();
    // 1024 lines of 1000 bytes: echoed, then written again by `head`
    // (about 2 MB back; what matters is that all of it flows and the
    // process ends).
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/pty?cmd=head%20-n%201024%3B%20exit%205",
        d.port
    );
    let req = with_key(&d, &url);
    let (mut ws, _) = tungstenite::connect(req).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        // A stuck terminal fails the test instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    let mut line = vec![b'x'; 999];
    line.push(b'\n');
    for _ in 0..16 {
        ws.send(Message::Binary(line.repeat(64).into())).unwrap();
    }
    let mut seen = 0usize;
    let exit = loop {
        match ws.read() {
            Ok(Message::Binary(b)) => seen += b.len(),
            Ok(Message::Text(t)) => break serde_json::from_str::<Value>(&t).unwrap(),
            Ok(Message::Close(_)) => panic!("closed without an exit message after {seen} bytes"),
            Ok(_) => {}
            Err(e) => panic!("the terminal stopped after {seen} bytes: {e}"),
        }
    };
    assert_eq!(exit["exit_code"], 5, "{exit}");
    assert!(
        seen >= 1024 * 1000,
        "{seen} bytes of the paste and its echo came back"
    );
}

/// A write to a process's stdin that waits for it to read holds up no
/// other call of the session's processes; a signal ends the process, and
/// with it the write.
#[test]
fn a_waiting_stdin_write_holds_up_no_other_process_call() {
    let d = Daemon::start(None);
    let id = d.new_session();
    for (tag, pty) in [
        ("pipe", Value::Null),
        ("term", json!({"rows": 24, "cols": 80})),
    ] {
        d.post(
            &procs(&id),
            &json!({"argv": ["sleep", "600"], "stdin": true, "tag": tag, "pty": pty}),
        )
        .expect(201, "start a process that never reads");
        let stdin = format!("{}/{tag}/stdin", procs(&id));
        let writer = {
            let rb = d
                .request(reqwest::Method::POST, &stdin)
                .body(vec![b'x'; 4 << 20])
                .timeout(Duration::from_secs(60));
            std::thread::spawn(move || rb.send().map(|r| r.status().as_u16()))
        };
        // The write waits (the process never reads): other calls answer.
        std::thread::sleep(Duration::from_millis(500));
        assert!(!writer.is_finished(), "{tag}: the write did not wait");
        let t = std::time::Instant::now();
        d.get(&procs(&id))
            .expect(200, "list beside a waiting write");
        d.get(&format!("{}/{tag}", procs(&id)))
            .expect(200, "get beside a waiting write");
        d.post(
            &format!("{}/{tag}/signal", procs(&id)),
            &json!({"signal": 9}),
        )
        .expect(200, "signal beside a waiting write");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{tag}: {:?}",
            t.elapsed()
        );
        // The end ends the write, and the process shows as ended.
        let status = writer.join().unwrap().expect("the write answered");
        assert_eq!(status, 409, "{tag}: the write to an ended process");
        assert!(
            wait_for(Duration::from_secs(10), || {
                d.get(&format!("{}/{tag}", procs(&id))).expect(200, "get")["running"] == false
            }),
            "{tag}: the process never showed as ended"
        );
    }
}

/// Closing a process's stdin while a write to it waits for the process to
/// read does not wait too: the write gives up (409 `STDIN_CLOSED`), the
/// close answers at once, and the process runs on with its stdin closed.
#[test]
fn closing_stdin_ends_a_waiting_write_and_does_not_wait_for_it() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.post(
        &procs(&id),
        &json!({"argv": ["sleep", "600"], "stdin": true, "tag": "w"}),
    )
    .expect(201, "start a process that never reads");
    let stdin = format!("{}/w/stdin", procs(&id));
    let writer = {
        let rb = d
            .request(reqwest::Method::POST, &stdin)
            .body(vec![b'x'; 4 << 20])
            .timeout(Duration::from_secs(60));
        std::thread::spawn(move || {
            rb.send()
                .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!writer.is_finished(), "the write did not wait");
    let t = std::time::Instant::now();
    let closed = d.send(
        d.request(reqwest::Method::DELETE, &stdin)
            .timeout(Duration::from_secs(20)),
    );
    assert_eq!(
        closed.status, 200,
        "close beside a waiting write: {}",
        closed.text
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the close took {:?}",
        t.elapsed()
    );
    let (status, body) = writer.join().unwrap().expect("the write answered");
    assert_eq!(status, 409, "the waiting write: {body}");
    assert!(body.contains("STDIN_CLOSED"), "{body}");
    let info = d.get(&format!("{}/w", procs(&id))).expect(200, "get");
    assert_eq!(info["running"], true, "{info}");
    assert_eq!(info["stdin"], false, "{info}");
    d.post(&format!("{}/w/signal", procs(&id)), &json!({"signal": 9}))
        .expect(200, "end it");
}

/// An ended process gives its terminal back: 70 terminal processes one
/// after the other (a sandbox has 64 terminals) leave the shell its own.
#[test]
fn ended_terminal_processes_give_their_terminals_back() {
    let d = Daemon::start(None);
    let id = d.new_session();
    for i in 0..70 {
        let v = d
            .post(
                &procs(&id),
                &json!({"argv": ["true"], "pty": {"rows": 24, "cols": 80}}),
            )
            .expect(201, &format!("terminal process {i}"));
        let pid = v["pid"].as_u64().unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || {
                d.get(&format!("{}/{pid}", procs(&id))).expect(200, "get")["running"] == false
            }),
            "terminal process {i} did not end: {}",
            d.get(&format!("{}/{pid}", procs(&id))).text
        );
    }
    assert_eq!(d.sh(&id, "echo ok"), "ok\n");
}
