//! The protocol server: ping, connections, malformed frames.

mod common;

use common::Agent;
use sandkasten_protocol::{read_frame, Request, Response, PROTOCOL_VERSION};
use std::io::Write;
use std::time::Instant;

#[test]
fn ping_reports_version_and_cwd() {
    let agent = Agent::start();
    let mut c = agent.connect();
    assert_eq!(
        c.call(Request::Ping),
        Response::Pong {
            protocol_version: PROTOCOL_VERSION,
            cwd: agent.work_str(),
        }
    );
}

#[test]
fn a_malformed_frame_closes_only_its_connection() {
    let agent = Agent::start();
    let mut good = agent.connect();
    let mut bad = agent.connect();
    // A valid length prefix followed by bytes that are no Frame.
    bad.stream
        .write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let eof = read_frame(&mut bad.stream).expect("a clean close");
    assert!(eof.is_none(), "expected EOF, got {eof:?}");
    assert!(matches!(good.call(Request::Ping), Response::Pong { .. }));
    assert_eq!(good.exec("echo alive").text(), "alive\n");
}

#[test]
fn connections_are_served_at_once_and_a_closed_one_cancels_its_exec() {
    let agent = Agent::start();
    let mut a = agent.connect();
    let mut b = agent.connect();
    a.send(Request::Exec {
        cmd: "sleep 100".into(),
        timeout_ms: 600_000,
        max_output_bytes: 1024,
    });
    // Another connection is answered while a's exec runs.
    assert!(matches!(b.call(Request::Ping), Response::Pong { .. }));
    // When a goes away its exec is interrupted, so b's exec (queued behind
    // it) runs well before the 100 s are up.
    drop(a);
    let start = Instant::now();
    let r = b.exec("echo after");
    assert_eq!(r.text(), "after\n");
    assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
}
