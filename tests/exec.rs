//! Exec end to end: the persistent shell, heredocs, output order, exit
//! codes, a dead shell, timeouts, truncation, streaming and ordering.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[test]
fn shell_state_persists_between_execs() {
    let d = Daemon::start(None);
    let id = d.new_session();

    let v = d.exec(&id, "cd /tmp");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["cwd"], "/tmp", "cwd after cd: {v}");
    d.sh(&id, "export FOO=bar");
    d.sh(&id, "f() { echo \"fn:$1\"; }");
    d.sh(&id, "alias hi='echo hi-alias'");
    d.sh(&id, "LOCALVAR=kept");

    let v = d.exec(&id, "pwd; echo $FOO; f x; hi; echo $LOCALVAR");
    assert_eq!(v["output"], "/tmp\nbar\nfn:x\nhi-alias\nkept\n", "{v}");
    assert_eq!(v["cwd"], "/tmp", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
}

/// The shell runs each command through an alias of its own (top level,
/// so `declare` makes a global); a command that turns aliases off or
/// removes them costs nothing: its next exec still runs, and the one after
/// is at top level again.
#[test]
fn a_command_that_removes_every_alias_breaks_no_exec() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(
        &id,
        "declare -A map=([k]=v); shopt -u expand_aliases; unalias -a",
    );
    let v = d.exec(&id, "echo one; echo err >&2; (exit 7)");
    assert_eq!(
        (v["output"].as_str(), v["exit_code"].as_i64()),
        (Some("one\nerr\n"), Some(7)),
        "{v}"
    );
    d.sh(&id, "declare G=global");
    let v = d.exec(&id, "echo \"$G ${map[k]}\"; shopt expand_aliases");
    assert_eq!(v["output"], "global v\nexpand_aliases \ton\n", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
}

/// The exit code survives an `IFS` made of digits (the driver quotes `$?`).
#[test]
fn a_digit_in_ifs_does_not_garble_exit_codes() {
    let d = Daemon::start(None);
    let id = d.new_session();
    for ifs in ["0", "1", "10"] {
        d.sh(&id, &format!("IFS={ifs}"));
        for code in [0, 1, 10, 101] {
            let v = d.exec(&id, &format!("(exit {code})"));
            assert_eq!(v["exit_code"], code, "IFS={ifs}: {v}");
        }
    }
}

/// A command that breaks the shell's driver (its reader function, the
/// array the command arrives in, the alias that runs it) costs at most the
/// next exec: a fresh shell replaces the broken one, and the exec after
/// runs as asked.
#[test]
fn a_broken_driver_is_replaced_after_one_exec() {
    let d = Daemon::start(None);
    let id = d.new_session();
    for breaker in [
        "unset -f __sk_r",
        "alias __sk_r=:",
        "readonly __sk_a",
        "unalias __sk_x; unset -f __sk_x",
    ] {
        d.exec(&id, breaker);
        d.exec(&id, "echo one");
        let v = d.exec(&id, "echo two; (exit 3)");
        assert_eq!(
            (v["output"].as_str(), v["exit_code"].as_i64()),
            (Some("two\n"), Some(3)),
            "after {breaker:?}: {v}"
        );
    }
}

/// A background job that keeps writing to the terminal of the exec that
/// started it never reaches a later exec's output, however the exec's end
/// and the next one's start fall between the agent's reads.
#[test]
fn late_output_of_a_background_job_never_reaches_the_next_exec() {
    let d = Daemon::start(None);
    let id = d.new_session();
    for i in 0..60 {
        d.sh(&id, "(for j in $(seq 1 200); do echo noise; done) &");
        let v = d.exec(&id, &format!("echo check-{i}"));
        assert_eq!(v["output"], format!("check-{i}\n"), "exec {i}: {v}");
    }
}

#[test]
fn background_jobs_persist() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "sleep 60 & echo $! > /tmp/bg.pid");
    let out = d.sh(&id, "jobs -p; kill -0 $(cat /tmp/bg.pid) && echo alive");
    let pid = d.sh(&id, "cat /tmp/bg.pid");
    assert_eq!(out, format!("{pid}alive\n"), "background job lost");
    d.sh(&id, "kill %1");
}

#[test]
fn cwd_reports_directories_with_spaces() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let v = d.exec(&id, "mkdir -p '/workspace/a b/c' && cd '/workspace/a b/c'");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["cwd"], "/workspace/a b/c", "{v}");
    assert_eq!(d.sh(&id, "pwd"), "/workspace/a b/c\n");
}

#[test]
fn heredocs_run_in_the_shell() {
    let d = Daemon::start(None);
    let id = d.new_session();

    let v = d.exec(&id, "cat <<'EOF'\nline $HOME `x`\n  indented\n\nEOF");
    assert_eq!(v["output"], "line $HOME `x`\n  indented\n\n", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");

    let v = d.exec(
        &id,
        "sh -s <<'EOF'\nfor i in 0 1 2 3; do\n    echo $((i * i))\ndone\necho err >&2\nEOF",
    );
    assert_eq!(v["output"], "0\n1\n4\n9\nerr\n", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");

    d.sh(&id, "cat > notes.txt <<EOF\nuser=$(id -u)\nEOF");
    assert_eq!(
        d.read(&id, "notes.txt"),
        format!("user={}\n", sandbox_uid()).into_bytes()
    );

    // A multi-line compound command and what follows it in the same exec.
    let v = d.exec(
        &id,
        "for i in 1 2; do\n  if [ $i = 2 ]; then\n    echo two\n  else\n    echo one\n  fi\ndone\necho end",
    );
    assert_eq!(v["output"], "one\ntwo\nend\n", "{v}");
}

#[test]
fn stdout_and_stderr_interleave_in_order() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let v = d.exec(&id, "echo a; echo b >&2; echo c");
    assert_eq!(v["output"], "a\nb\nc\n", "{v}");
    let v = d.exec(
        &id,
        "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done",
    );
    let want: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(v["output"], want.as_str(), "{v}");
}

#[test]
fn stdin_is_not_the_command_text() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let t = Instant::now();
    let r = d.exec_with(&id, json!({"cmd": "cat", "timeout_ms": 10000}));
    let v = r.expect(200, "exec cat");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "`cat` waited for input: {:?}",
        t.elapsed()
    );
    assert_eq!(v["timed_out"], false, "{v}");
    assert_eq!(v["output"], "", "{v}");

    let v = d.exec(&id, "cat\necho after-cat");
    assert_eq!(
        v["output"], "after-cat\n",
        "cat swallowed the command text: {v}"
    );
    let v = d.exec(&id, "read line\necho \"got:[$line]\"\necho after-read");
    assert_eq!(
        v["output"], "got:[]\nafter-read\n",
        "read swallowed the command text: {v}"
    );
}

#[test]
fn exit_codes_are_reported() {
    let d = Daemon::start(None);
    let id = d.new_session();
    for (cmd, code) in [
        ("true", 0),
        ("false", 1),
        ("(exit 42)", 42),
        ("sh -c 'exit 7'", 7),
        ("no-such-command-e2e", 127),
    ] {
        let v = d.exec(&id, cmd);
        assert_eq!(v["exit_code"], code, "{cmd}: {v}");
    }
    // The shell survived all of them.
    assert_eq!(d.sh(&id, "echo still"), "still\n");
}

#[test]
fn exit_kills_the_shell_and_the_next_exec_gets_a_fresh_one() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "cd /tmp && export GONE=1");
    let v = d.exec(&id, "exit 3");
    assert_eq!(v["exit_code"], 3, "{v}");
    let v = d.exec(&id, "pwd; echo \"[$GONE]\"");
    assert_eq!(
        v["output"], "/tmp\n[]\n",
        "expected a fresh shell in the last cwd: {v}"
    );
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["cwd"], "/tmp", "{v}");
}

#[test]
fn kill_9_of_the_shell_reports_137_and_recovers() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "cd /tmp");
    let v = d.exec(&id, "kill -9 $$");
    assert_eq!(v["exit_code"], 137, "shell killed by SIGKILL: {v}");
    assert_eq!(d.sh(&id, "pwd"), "/tmp\n");
}

#[test]
fn timeout_interrupts_and_keeps_the_shell() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "export KEEP=1; cd /tmp");
    let t = Instant::now();
    let r = d.exec_with(
        &id,
        json!({"cmd": "echo before; sleep 30; echo after", "timeout_ms": 500}),
    );
    let elapsed = t.elapsed();
    let v = r.expect(200, "timed out exec");
    check_exec_result(&v);
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["exit_code"], 124, "{v}");
    assert_eq!(v["output"], "before\n", "output so far: {v}");
    assert!(
        elapsed < Duration::from_secs(5),
        "timeout of 500 ms took {elapsed:?}"
    );
    let v = d.exec(&id, "echo $KEEP; pwd");
    assert_eq!(
        v["output"], "1\n/tmp\n",
        "shell not kept after a timeout: {v}"
    );
    assert_eq!(v["timed_out"], false, "{v}");
}

/// A command line that starts programs one after another spends much of its
/// time between a fork and the program's start, where the forked shell still
/// catches SIGINT (the driver's trap) and loses it at the program's start:
/// the interrupt must still stop the line, not run it on and kill the shell.
#[test]
fn timeout_stops_a_loop_of_short_programs_and_keeps_the_shell() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "export KEEP=1; cd /tmp; rm -f /tmp/finished");
    for round in 0..12 {
        // Also a pipeline, whose later members the shell forks after the
        // first, and a program named like the shell.
        let job = ["/bin/true", "/bin/true | /bin/cat", "bash -c :"][round % 3];
        let t = Instant::now();
        let r = d.exec_with(
            &id,
            json!({
                "cmd": format!("for i in $(seq 100000); do {job}; done; touch /tmp/finished"),
                "timeout_ms": 200
            }),
        );
        let elapsed = t.elapsed();
        let v = r.expect(200, "timed out loop");
        assert_eq!(v["timed_out"], true, "round {round}: {v}");
        assert_eq!(v["exit_code"], 124, "round {round}: {v}");
        let v = d.exec(&id, "echo $KEEP; pwd; test -e /tmp/finished; echo $?");
        assert_eq!(
            v["output"], "1\n/tmp\n1\n",
            "round {round}: the loop ran on or the shell was not kept ({elapsed:?}): {v}"
        );
    }
}

/// A fork of the shell that takes the SIGINT (as the shell's fork does
/// with the driver's trap until it starts its program) and then starts a
/// program: the program gets the SIGINT too, and the line stops there
/// rather than going on after the program's SIGKILL.
#[test]
fn timeout_reaches_a_program_started_after_the_sigint() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "export KEEP=1; rm -f /tmp/finished");
    let r = d.exec_with(
        &id,
        json!({
            "cmd": "( trap : INT; /bin/sleep 5 & wait; exec /bin/sleep 30 ); touch /tmp/finished",
            "timeout_ms": 200
        }),
    );
    let v = r.expect(200, "timed out line");
    assert_eq!(v["timed_out"], true, "{v}");
    let v = d.exec(&id, "echo $KEEP; test -e /tmp/finished; echo $?");
    assert_eq!(
        v["output"], "1\n1\n",
        "the line went on, or the shell was not kept: {v}"
    );
}

/// The interrupt is one Ctrl-C for a running job: a job that cleans up on
/// SIGINT (starting programs of its own meanwhile) gets it once, and its
/// cleanup is not interrupted.
#[test]
fn timeout_lets_a_job_clean_up_after_one_sigint() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let r = d.exec_with(
        &id,
        json!({
            "cmd": "bash -c 'trap \"/bin/sleep 0.1; echo cleaned; exit 3\" INT; echo ready; /bin/sleep 30 & wait'",
            "timeout_ms": 300
        }),
    );
    let v = r.expect(200, "timed out job");
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["output"], "ready\ncleaned\n", "{v}");
    assert_eq!(d.sh(&id, "echo next"), "next\n");
}

#[test]
fn timeout_escalates_to_sigkill_when_sigint_is_ignored() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let t = Instant::now();
    let r = d.exec_with(
        &id,
        json!({"cmd": "bash -c 'trap \"\" INT; sleep 30'", "timeout_ms": 500}),
    );
    let elapsed = t.elapsed();
    let v = r.expect(200, "exec ignoring SIGINT");
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["exit_code"], 124, "{v}");
    assert!(
        elapsed < Duration::from_secs(10),
        "SIGINT-immune command took {elapsed:?} to be stopped"
    );
    assert_eq!(d.sh(&id, "echo next"), "next\n");
}

#[test]
fn timeout_is_capped_by_max_exec_timeout_ms() {
    let d = Daemon::start(Some("defaults:\n  max_exec_timeout_ms: 1000\n"));
    let id = d.new_session();
    let t = Instant::now();
    let r = d.exec_with(&id, json!({"cmd": "sleep 20", "timeout_ms": 60000}));
    let elapsed = t.elapsed();
    let v = r.expect(200, "exec over the cap");
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["exit_code"], 124, "{v}");
    assert!(
        elapsed < Duration::from_secs(6),
        "max_exec_timeout_ms 1000 did not cap a 60 s timeout: {elapsed:?}"
    );
}

#[test]
fn duration_ms_measures_the_command() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let v = d.exec(&id, "sleep 0.3");
    let ms = v["duration_ms"].as_u64().unwrap();
    assert!((300..3000).contains(&ms), "duration_ms {ms} for sleep 0.3");
}

#[test]
fn large_output_is_truncated_and_the_command_completes() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let r = d.exec_with(
        &id,
        json!({
            "cmd": "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo done > /workspace/after-output",
            "timeout_ms": 60000
        }),
    );
    let v = r.expect(200, "3 MB of output");
    assert_eq!(v["truncated"], true, "truncated flag");
    assert_eq!(v["exit_code"], 0, "exit_code");
    assert_eq!(v["timed_out"], false, "timed_out");
    let out = v["output"].as_str().unwrap();
    assert!(
        out.len() as u64 >= MIB && out.len() < 3_000_000,
        "output length {} not between the 1 MiB minimum cap and 3 MB",
        out.len()
    );
    assert!(
        out.starts_with("xxxxxxxx"),
        "output starts {:?}",
        &out[..20.min(out.len())]
    );
    assert_eq!(
        d.read(&id, "/workspace/after-output"),
        b"done\n",
        "the command did not run to completion after truncation"
    );
    assert_eq!(d.sh(&id, "echo small"), "small\n");
}

#[test]
fn output_below_the_cap_is_complete() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let v = d.exec(&id, "head -c 500000 /dev/zero | tr '\\0' y");
    assert_eq!(v["truncated"], false);
    assert_eq!(v["output"].as_str().unwrap().len(), 500_000);
}

#[test]
fn terminal_noise_is_removed_unless_raw_output() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let cmd = "printf '\\033[31mred\\033[0m\\n'";
    let v = d.exec(&id, cmd);
    assert_eq!(v["output"], "red\n", "ANSI colour codes not removed: {v}");
    let v = d
        .exec_with(&id, json!({"cmd": cmd, "raw_output": true}))
        .expect(200, "raw_output exec");
    let out = v["output"].as_str().unwrap();
    assert!(
        out.contains("\u{1b}[31mred\u{1b}[0m"),
        "raw_output lost the escape codes: {out:?}"
    );
}

#[test]
fn non_utf8_output_gives_a_valid_response() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let v = d.exec(&id, "printf 'a\\377\\376b\\n'");
    let out = v["output"].as_str().unwrap();
    assert!(out.starts_with('a') && out.ends_with("b\n"), "{out:?}");
    assert_eq!(v["exit_code"], 0);
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn stream_delivers_output_live() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let start_ms = unix_ms();
    let st = d.open_stream(
        &id,
        json!({"cmd": "for i in 1 2 3 4; do echo $i; sleep 0.5; done"}),
    );
    assert!(
        st.content_type.starts_with("text/event-stream"),
        "content type {:?}",
        st.content_type
    );
    let events = st.rest();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(
        !names.contains(&"error"),
        "error event in the stream: {events:?}"
    );
    let done: Vec<_> = events.iter().filter(|e| e.event == "done").collect();
    assert_eq!(done.len(), 1, "exactly one done event: {names:?}");
    let done = done[0];
    assert_eq!(
        events.last().unwrap().event,
        "done",
        "done is not the last event: {names:?}"
    );
    let chunks: Vec<_> = events.iter().filter(|e| e.event == "chunk").collect();
    assert!(
        chunks.len() >= 2,
        "output was not sent in pieces: {events:?}"
    );
    let text: String = chunks
        .iter()
        .map(|c| {
            c.data["chunk"]
                .as_str()
                .unwrap_or_else(|| panic!("chunk event without chunk: {}", c.raw))
        })
        .collect();
    assert_eq!(text, "1\n2\n3\n4\n");

    let lead = done.at.duration_since(chunks[0].at);
    assert!(
        lead >= Duration::from_secs(1),
        "first chunk arrived only {lead:?} before done: output is not streamed"
    );

    let mut last_ts = 0;
    for c in &chunks {
        let t = c.data["timestamp"]
            .as_i64()
            .unwrap_or_else(|| panic!("chunk without integer timestamp: {}", c.raw));
        assert!(
            t >= start_ms - 1000 && t <= unix_ms() + 1000,
            "chunk timestamp {t} is not Unix ms around now ({start_ms})"
        );
        assert!(t >= last_ts, "timestamps go backwards");
        last_ts = t;
    }
    let first_ts = chunks[0].data["timestamp"].as_i64().unwrap();
    assert!(
        last_ts - first_ts >= 1000,
        "chunk timestamps span only {} ms",
        last_ts - first_ts
    );

    assert_eq!(done.data["exit_code"], 0, "{}", done.raw);
    assert_eq!(done.data["cwd"], "/workspace", "{}", done.raw);
    assert_eq!(done.data["timed_out"], false, "{}", done.raw);
    let ms = done.data["duration_ms"].as_u64().unwrap_or(0);
    assert!(ms >= 1500, "duration_ms {ms}: {}", done.raw);
}

#[test]
fn stream_done_reports_exit_code_cwd_and_timeout() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let events = d
        .open_stream(&id, json!({"cmd": "cd /tmp; echo x; false"}))
        .rest();
    let done = events.last().expect("no events");
    assert_eq!(done.event, "done", "{events:?}");
    assert_eq!(done.data["exit_code"], 1, "{}", done.raw);
    assert_eq!(done.data["cwd"], "/tmp", "{}", done.raw);

    let t = Instant::now();
    let events = d
        .open_stream(&id, json!({"cmd": "echo y; sleep 30", "timeout_ms": 500}))
        .rest();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let done = events.last().expect("no events");
    assert_eq!(done.event, "done", "{events:?}");
    assert_eq!(done.data["timed_out"], true, "{}", done.raw);
    assert_eq!(done.data["exit_code"], 124, "{}", done.raw);
    // The shell keeps the cd of the previous streamed exec.
    assert_eq!(d.sh(&id, "pwd"), "/tmp\n");
}

#[test]
fn stream_client_disconnect_interrupts_the_command() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let mut st = d.open_stream(
        &id,
        json!({"cmd": "echo started; sleep 30; touch /tmp/finished", "timeout_ms": 60000}),
    );
    let first = st.next_event().expect("stream ended without events");
    assert_eq!(first.event, "chunk", "{first:?}");
    assert_eq!(first.data["chunk"], "started\n", "{}", first.raw);
    drop(st);

    // Execs of one session run one at a time: this one can only start once
    // the abandoned command has been interrupted.
    let t = Instant::now();
    let v = d
        .exec_with(&id, json!({"cmd": "echo next", "timeout_ms": 20000}))
        .expect(200, "exec after disconnect");
    assert_eq!(v["output"], "next\n", "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the disconnected command kept running: the next exec waited {:?}",
        t.elapsed()
    );
    let out = d.exec(&id, "cat /proc/[0-9]*/comm 2>/dev/null | grep -cx sleep");
    assert_eq!(out["output"], "0\n", "sleep still running: {out}");
    let v = d.exec(&id, "test -e /tmp/finished");
    assert_eq!(
        v["exit_code"], 1,
        "the interrupted command ran to its end: {v}"
    );
}

#[test]
fn a_plain_exec_whose_client_goes_away_is_interrupted() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let port: u16 = d.url.rsplit(':').next().unwrap().parse().unwrap();
    let body =
        json!({"cmd": "touch /tmp/started; sleep 30; touch /tmp/finished", "timeout_ms": 60000})
            .to_string();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /v1/sessions/{id}/exec HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        d.key,
        body.len()
    );
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    // The command runs once its first file exists (file reads do not wait
    // for the exec queue).
    let t = Instant::now();
    while d.read_resp(&id, "/tmp/started").status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the command never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stream);
    // The next exec waits for the abandoned one: it answers at once only
    // if that was interrupted.
    let t = Instant::now();
    let v = d
        .exec_with(&id, json!({"cmd": "echo next", "timeout_ms": 20000}))
        .expect(200, "exec after the client went away");
    assert_eq!(v["output"], "next\n", "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the abandoned command kept running: the next exec waited {:?}",
        t.elapsed()
    );
    let v = d.exec(&id, "cat /proc/[0-9]*/comm 2>/dev/null | grep -cx sleep");
    assert_eq!(v["output"], "0\n", "sleep still running: {v}");
    let v = d.exec(&id, "test -e /tmp/finished");
    assert_eq!(
        v["exit_code"], 1,
        "the abandoned command ran to its end: {v}"
    );
}

#[test]
fn execs_in_different_sessions_run_in_parallel() {
    let d = Daemon::start(None);
    let a = d.new_session();
    let b = d.new_session();
    d.sh(&a, "true");
    d.sh(&b, "true");
    let t = Instant::now();
    let (va, vb) = std::thread::scope(|s| {
        let ha = s.spawn(|| d.exec(&a, "sleep 1; echo a"));
        let hb = s.spawn(|| d.exec(&b, "sleep 1; echo b"));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let elapsed = t.elapsed();
    assert_eq!(va["output"], "a\n");
    assert_eq!(vb["output"], "b\n");
    assert!(
        elapsed < Duration::from_millis(1800),
        "two 1 s execs in two sessions took {elapsed:?}: not parallel"
    );
}

#[test]
fn execs_in_one_session_run_one_at_a_time_in_order() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let mut st = d.open_stream(
        &id,
        json!({"cmd": "echo go; sleep 1.5; echo one >> /tmp/order"}),
    );
    let first = st.next_event().expect("no first event");
    assert_eq!(first.data["chunk"], "go\n", "{}", first.raw);
    let (second, third, rest) = std::thread::scope(|s| {
        let h2 = s.spawn(|| d.exec(&id, "echo two >> /tmp/order; cat /tmp/order"));
        // Arrival order is the subject: give the second request a head start.
        std::thread::sleep(Duration::from_millis(300));
        let h3 = s.spawn(|| d.exec(&id, "echo three >> /tmp/order; cat /tmp/order"));
        let rest = st.rest();
        (h2.join().unwrap(), h3.join().unwrap(), rest)
    });
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(
        second["output"], "one\ntwo\n",
        "second exec overlapped the first: {second}"
    );
    assert_eq!(
        third["output"], "one\ntwo\nthree\n",
        "third exec ran out of order: {third}"
    );
}
