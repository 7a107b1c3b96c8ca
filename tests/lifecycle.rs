//! Pause and resume end to end: every process frozen and going on where it
//! was, the shell's state intact, the TTL stopped while paused (the paused
//! limit instead), any call resuming a paused session, a daemon SIGKILL and
//! restart while paused, destroy while paused, and the clear errors. Runs
//! on native and, with `SANDKASTEN_E2E_RUNTIME=docker` or
//! `docker-remote`, on docker.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// A session with a background job that counts into /tmp/count every
/// 50 ms, and a shell variable; waits until it has counted.
fn counting_session(d: &Daemon) -> String {
    let id = d.new_session();
    d.sh(&id, "export KEPT=yes; cd /tmp");
    d.sh(
        &id,
        "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done) >/dev/null 2>&1 &",
    );
    assert!(
        wait_for(Duration::from_secs(10), || count(d, &id) > 3),
        "the counter does not count"
    );
    id
}

fn count(d: &Daemon, id: &str) -> u64 {
    d.sh(id, "cat /tmp/count 2>/dev/null || echo 0")
        .trim()
        .parse()
        .unwrap_or(0)
}

fn post(d: &Daemon, id: &str, what: &str) -> Resp {
    d.post(&format!("/v1/sessions/{id}/{what}"), &Value::Null)
}

fn status(d: &Daemon, id: &str) -> String {
    d.get_session(id).expect(200, "get")["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_paused_session_stops_and_goes_on_where_it_was() {
    let d = Daemon::start(None);
    let id = counting_session(&d);
    let before = count(&d, &id);
    let v = post(&d, &id, "pause").expect(200, "pause");
    assert_eq!(v["status"], "paused", "{v}");
    // Frozen: a second of wall time counts nothing (20 steps if it ran).
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(status(&d, &id), "paused", "a GET resumed the session");
    let v = post(&d, &id, "resume").expect(200, "resume");
    assert_eq!(v["status"], "running", "{v}");
    let after = count(&d, &id);
    assert!(
        after <= before + 3,
        "the counter ran while paused: {before} then {after}"
    );
    // Everything goes on: the job counts, the shell kept its state.
    assert!(
        wait_for(Duration::from_secs(10), || count(&d, &id) > after + 3),
        "the job stopped counting after the resume"
    );
    let v = d.exec(&id, "echo $KEPT");
    assert_eq!(v["output"], "yes\n", "{v}");
    assert_eq!(v["cwd"], "/tmp", "{v}");
}

#[test]
fn any_call_resumes_and_the_ttl_stops_while_paused() {
    let d = Daemon::start(Some("session_ttl_seconds: 3\npaused_ttl_seconds: 600\n"));
    let id = d.new_session();
    d.sh(&id, "echo hi > /tmp/f");
    post(&d, &id, "pause").expect(200, "pause");
    let paused = d.get_session(&id).expect(200, "get");
    assert_eq!(paused["status"], "paused");
    // Past the session's TTL: a paused session does not expire by it.
    std::thread::sleep(Duration::from_millis(4000));
    assert_eq!(status(&d, &id), "paused", "the TTL ran while paused");
    // An exec resumes it first.
    assert_eq!(d.sh(&id, "cat /tmp/f"), "hi\n");
    assert_eq!(status(&d, &id), "running");
    // A file read too.
    post(&d, &id, "pause").expect(200, "pause");
    assert_eq!(d.read(&id, "/tmp/f"), b"hi\n");
    assert_eq!(status(&d, &id), "running");
}

#[test]
fn a_paused_session_expires_by_its_own_limit() {
    let d = Daemon::start(Some("paused_ttl_seconds: 1\n"));
    let id = d.new_session();
    post(&d, &id, "pause").expect(200, "pause");
    // Ended sessions are gone from the API (404).
    assert!(
        wait_for(Duration::from_secs(10), || d.get_session(&id).status == 404),
        "the paused session outlived paused_ttl_seconds"
    );
    assert_sandbox_gone(&d.home, &id, "a paused session that expired");
}

#[test]
fn pause_and_resume_refuse_the_wrong_state() {
    let d = Daemon::start(None);
    let id = d.new_session();
    post(&d, &id, "resume").assert_error(409, "SESSION_NOT_PAUSED", "resume of a running session");
    post(&d, &id, "pause").expect(200, "pause");
    post(&d, &id, "pause").assert_error(409, "SESSION_NOT_RUNNING", "pause of a paused session");
    assert_eq!(
        status(&d, &id),
        "paused",
        "a refused pause changed the state"
    );
    post(&d, "nosuchsession", "pause").assert_error(404, "SESSION_NOT_FOUND", "unknown session");
    // Destroying a paused session leaves nothing.
    d.delete(&id);
    assert_sandbox_gone(&d.home, &id, "destroy while paused");
}

#[test]
fn a_pause_survives_a_daemon_sigkill_and_restart() {
    let d1 = Daemon::start(None);
    let id = counting_session(&d1);
    post(&d1, &id, "pause").expect(200, "pause");
    let home = d1.home.clone();
    d1.kill_9();
    let d2 = Daemon::start_in(&home, None);
    assert_eq!(status(&d2, &id), "paused", "the restart lost the pause");
    post(&d2, &id, "resume").expect(200, "resume after the restart");
    let n = count(&d2, &id);
    assert!(
        wait_for(Duration::from_secs(10), || count(&d2, &id) > n + 3),
        "the job did not go on after the restart"
    );
    assert_eq!(d2.sh(&id, "echo $KEPT"), "yes\n");
    d2.delete(&id);
    assert_sandbox_gone(&home, &id, "destroy after a paused restart");
}
