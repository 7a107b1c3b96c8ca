//! Recovery end to end: a daemon killed with SIGKILL (or stopped with
//! SIGTERM) and started again on the same data dir finds its sessions with
//! their shell state; a sandbox that died meanwhile is cleaned up.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// Sets up shell state and a file that must survive a daemon restart.
fn prepare(d: &Daemon) -> String {
    let id = d.new_session();
    d.sh(&id, "export FOO=bar; cd /tmp; f() { echo fn; }");
    d.write(&id, "/workspace/state.bin", &[0, 1, 2, 255]);
    id
}

/// Asserts that `id` is listed as running and its shell state is intact.
#[track_caller]
fn assert_intact(d: &Daemon, id: &str) {
    let list = d.list_sessions();
    let s = list
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("session {id} not listed after restart: {list:?}"));
    check_session_info(s);
    assert_eq!(s["status"], "running", "{s}");
    let v = d.exec(id, "echo $FOO; pwd; f");
    assert_eq!(
        v["output"], "bar\n/tmp\nfn\n",
        "shell state lost across the restart: {v}"
    );
    assert_eq!(v["cwd"], "/tmp", "{v}");
    assert_eq!(d.read(id, "/workspace/state.bin"), [0, 1, 2, 255]);
}

#[test]
fn sigkill_and_restart_keep_shell_state_and_files() {
    let d1 = Daemon::start(None);
    let id = prepare(&d1);
    let home = d1.home.clone();
    d1.kill_9();
    assert!(
        sandbox_running(&id),
        "the sandbox of session {id} died with the daemon (SIGKILL)"
    );

    let d2 = Daemon::start_in(&home, None);
    assert_intact(&d2, &id);
    // And it keeps working as a normal session: new state, files, destroy.
    d2.sh(&id, "cd /workspace");
    d2.write_text(&id, "after.txt", "after restart");
    assert_eq!(d2.sh(&id, "cat after.txt"), "after restart");
    d2.delete(&id);
    assert_sandbox_gone(&home, &id, "destroy after a restart");
}

#[test]
fn sigkill_twice_in_a_row_still_recovers() {
    let d1 = Daemon::start(None);
    let id = prepare(&d1);
    let home = d1.home.clone();
    d1.kill_9();
    let d2 = Daemon::start_in(&home, None);
    assert_eq!(d2.sh(&id, "echo $FOO"), "bar\n");
    d2.kill_9();
    let d3 = Daemon::start_in(&home, None);
    assert_intact(&d3, &id);
}

#[test]
fn a_sandbox_that_died_while_the_daemon_was_down_is_cleaned_up() {
    let d1 = Daemon::start(None);
    let dead = d1.new_session();
    let alive = prepare(&d1);
    let home = d1.home.clone();
    assert!(sandbox_running(&dead), "no sandbox of session {dead}");
    d1.kill_9();
    kill_sandbox(&dead);

    let d2 = Daemon::start_in(&home, None);
    let r = d2.get_session(&dead);
    assert!(
        r.status == 404 || (r.status == 200 && r.json["status"] != "running"),
        "session whose sandbox died is still reported running: {} {}",
        r.status,
        r.text
    );
    let listed = d2.list_sessions();
    assert!(
        !listed
            .iter()
            .any(|s| s["id"] == dead.as_str() && s["status"] == "running"),
        "dead session listed as running: {listed:?}"
    );
    let r = d2.exec_with(&dead, json!({"cmd": "true"}));
    assert!(
        r.status == 404 || r.status == 409,
        "exec on a dead session: {} {}",
        r.status,
        r.text
    );
    assert_sandbox_gone(&home, &dead, "the dead session after the restart");

    // The other session came through untouched.
    assert_intact(&d2, &alive);
}

#[test]
fn sigterm_exits_0_and_sessions_survive_into_the_next_start() {
    let d1 = Daemon::start(None);
    let id = prepare(&d1);
    let home = d1.home.clone();
    let (status, took) = d1.terminate();
    assert!(status.success(), "SIGTERM exit status {status:?}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    assert!(
        sandbox_running(&id),
        "SIGTERM destroyed running session {id}; it must be left for the next start"
    );
    let d2 = Daemon::start_in(&home, None);
    assert_intact(&d2, &id);
}

#[test]
fn sigterm_lets_an_inflight_exec_finish() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let mut st = d.open_stream(&id, json!({"cmd": "echo start; sleep 1; echo end"}));
    let first = st.next_event().expect("no first event");
    assert_eq!(first.data["chunk"], "start\n", "{}", first.raw);
    let stopper = std::thread::scope(|s| {
        let h = s.spawn(|| d.terminate());
        let rest = st.rest();
        let done = rest.last().cloned();
        let text: String = rest
            .iter()
            .filter(|e| e.event == "chunk")
            .filter_map(|e| e.data["chunk"].as_str())
            .collect();
        assert_eq!(
            text, "end\n",
            "in-flight exec cut short by SIGTERM: {rest:?}"
        );
        let done = done.expect("stream ended without done");
        assert_eq!(done.event, "done", "{}", done.raw);
        assert_eq!(done.data["exit_code"], 0, "{}", done.raw);
        h.join().unwrap()
    });
    assert!(stopper.0.success(), "exit status {:?}", stopper.0);
}

#[test]
fn a_sandbox_that_dies_while_the_daemon_runs_is_marked_lost_at_once() {
    let d = Daemon::start(None);
    let dead = d.new_session();
    let other = d.new_session();
    kill_sandbox(&dead);
    // Event-driven: the agent connection closes, the daemon cleans up.
    assert!(
        wait_for(Duration::from_secs(10), || d.get_session(&dead).status
            == 404),
        "a session whose sandbox died is still listed: {}",
        d.get_session(&dead).text
    );
    assert_sandbox_gone(&d.home, &dead, "the sandbox that died");
    d.exec_with(&dead, json!({"cmd": "true"})).assert_error(
        404,
        "SESSION_NOT_FOUND",
        "exec on a lost session",
    );
    assert_eq!(
        d.sh(&other, "echo fine"),
        "fine\n",
        "other sessions are unaffected"
    );
}
