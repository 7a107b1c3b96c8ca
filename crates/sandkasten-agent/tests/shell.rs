//! The persistent shell and exec, end to end against the real agent binary.

mod common;

use common::{children_of, wait_for_file, Agent};
use sandkasten_protocol::{ErrorKind, Request, Response};
use std::time::{Duration, Instant};

#[test]
fn cd_export_function_and_alias_persist() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let sub = agent.work.join("sub");
    std::fs::create_dir(&sub).unwrap();

    let r = c.exec(
        "cd sub && export GREETING=hallo && f() { echo \"fn:$1\"; } && alias hi='echo alias-ok'",
    );
    assert_eq!(r.exit_code, 0, "{}", r.text());
    assert_eq!(r.cwd, sub.to_str().unwrap());

    let r = c.exec("pwd; sh -c 'echo $GREETING'; f x; hi");
    assert_eq!(r.exit_code, 0, "{}", r.text());
    assert_eq!(
        r.text(),
        format!("{}\nhallo\nfn:x\nalias-ok\n", sub.display())
    );
    assert_eq!(r.cwd, sub.to_str().unwrap());

    // declare at top level stays global (the command is not run inside a
    // function), and `break` cannot break out of any driver loop.
    let r = c.exec("declare -A m=([k]=v); break; echo after-break");
    assert!(r.text().ends_with("after-break\n"), "{}", r.text());
    let r = c.exec("echo ${m[k]}; echo $GREETING");
    assert_eq!(r.text(), "v\nhallo\n");

    match c.call(Request::Ping) {
        Response::Pong { cwd, .. } => assert_eq!(cwd, sub.to_str().unwrap()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exit_code_and_quoting_are_exact() {
    let agent = Agent::start();
    let mut c = agent.connect();
    assert_eq!(c.exec("false").exit_code, 1);
    assert_eq!(c.exec("(exit 42)").exit_code, 42);
    let r = c.exec(r#"echo 'single '\'' quote' "double \" quote" $'tab\there'"#);
    assert_eq!(r.text(), "single ' quote double \" quote tab\there\n");
    // A command starting with '-' is a command, not an option of eval.
    assert_eq!(c.exec("--no-such-cmd 2>/dev/null; echo $?").text(), "127\n");
    // A syntax error is the command's failure, not the shell's.
    let r = c.exec("echo (");
    assert_eq!(r.exit_code, 2, "{}", r.text());
    assert_eq!(c.exec("echo still-here").text(), "still-here\n");
}

#[test]
fn heredoc() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let r = c.exec("cat <<'EOF' > notes.txt\nline $HOME\n  two\nEOF\ncat notes.txt");
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.text(), "line $HOME\n  two\n");
    let r = c.exec("x=42\ncat <<EOF\nx is $x\nEOF");
    assert_eq!(r.text(), "x is 42\n");
}

#[test]
fn stdout_and_stderr_interleave_in_order_byte_for_byte() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let r = c.exec("echo a; echo b >&2; echo c");
    assert_eq!(r.text(), "a\nb\nc\n");
    // No echo of the command and no \n -> \r\n translation.
    let r = c.exec(r"printf 'x\r\ny\n\001\377'");
    assert_eq!(r.output, b"x\r\ny\n\x01\xff");
}

#[test]
fn commands_read_dev_null_not_the_command_stream() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let r = c.exec("cat; read x; echo \"rc=$? x=[$x]\"");
    assert_eq!(r.text(), "rc=1 x=[]\n");
    assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
    assert_eq!(c.exec("echo next").text(), "next\n");
}

#[test]
fn timeout_interrupts_the_job_and_keeps_the_shell() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.exec("export KEEP=kept; cd /");
    let r = c.exec_with("echo before; sleep 100; echo not-reached", 300, 1 << 20);
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 124);
    assert_eq!(r.text(), "before\n");
    assert!(r.elapsed < Duration::from_secs(2), "took {:?}", r.elapsed);
    // The same shell: its environment survived.
    let r = c.exec("echo $KEEP; pwd");
    assert_eq!(r.text(), "kept\n/\n");
    assert!(!r.timed_out);
}

#[test]
fn timeout_of_a_loop_in_the_shell_itself_restarts_it_in_the_last_cwd() {
    let agent = Agent::start();
    let mut c = agent.connect();
    std::fs::create_dir(agent.work.join("d")).unwrap();
    c.exec("cd d");
    let r = c.exec_with("while :; do :; done", 300, 1 << 20);
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 124);
    assert!(r.elapsed < Duration::from_secs(4), "took {:?}", r.elapsed);
    let r = c.exec("pwd; echo ok");
    assert_eq!(r.exit_code, 0);
    assert_eq!(
        r.text(),
        format!("{}\nok\n", agent.work.join("d").display())
    );
}

#[test]
fn a_job_ignoring_sigint_is_killed() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.exec("export KEEP=1");
    let r = c.exec_with("sh -c 'trap \"\" INT; sleep 100'", 200, 1 << 20);
    assert!(r.timed_out);
    assert!(r.elapsed < Duration::from_secs(3), "took {:?}", r.elapsed);
    assert_eq!(c.exec("echo $KEEP").text(), "1\n");
}

#[test]
fn exit_returns_its_code_and_the_next_exec_gets_a_fresh_shell_in_the_last_cwd() {
    let agent = Agent::start();
    let mut c = agent.connect();
    std::fs::create_dir(agent.work.join("e")).unwrap();
    c.exec("cd e; export GONE=1");
    let r = c.exec("echo bye; exit 3");
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.text(), "bye\n");
    assert_eq!(r.cwd, agent.work.join("e").to_str().unwrap());
    let r = c.exec("pwd; echo \"[$GONE]\"");
    assert_eq!(r.exit_code, 0);
    assert_eq!(
        r.text(),
        format!("{}\n[]\n", agent.work.join("e").display())
    );
}

#[test]
fn kill_9_of_the_shell_returns_137_and_recovers() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.exec("cd /tmp");
    let r = c.exec("kill -9 $$");
    assert_eq!(r.exit_code, 137);
    assert_eq!(r.cwd, "/tmp");
    let r = c.exec("pwd");
    assert_eq!(r.text(), "/tmp\n");
}

#[test]
fn output_beyond_the_cap_is_dropped_and_the_command_completes() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let cap = 1 << 20;
    let r = c.exec_with(
        "head -c 3000000 /dev/zero | tr '\\0' a; echo done > finished",
        60_000,
        cap,
    );
    assert_eq!(r.exit_code, 0);
    assert!(r.truncated);
    assert!(!r.timed_out);
    assert_eq!(r.output.len() as u64, cap);
    assert!(r.output.iter().all(|b| *b == b'a'));
    assert_eq!(c.exec("cat finished").text(), "done\n");
    let r = c.exec("echo small");
    assert!(!r.truncated);
}

#[test]
fn output_streams_while_the_command_runs() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let start = Instant::now();
    let id = c.send(Request::Exec {
        cmd: "for i in 1 2 3; do echo $i; sleep 0.5; done".into(),
        timeout_ms: 30_000,
        max_output_bytes: 1 << 20,
    });
    let (got, first) = c.recv();
    let first_at = start.elapsed();
    assert_eq!(got, id);
    assert!(
        matches!(&first, Response::ExecOutput { data } if data.starts_with(b"1")),
        "{first:?}"
    );
    let rest = c.collect_exec(id, start);
    assert_eq!(rest.exit_code, 0);
    assert!(
        rest.elapsed >= first_at + Duration::from_millis(800),
        "first chunk at {first_at:?}, done at {:?}",
        rest.elapsed
    );
    assert!(rest.chunks >= 2, "output was batched: {rest:?}");
}

#[test]
fn a_background_job_does_not_delay_the_exec_and_persists() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let r = c.exec("sleep 100 &");
    assert_eq!(r.exit_code, 0);
    assert!(r.elapsed < Duration::from_secs(2), "took {:?}", r.elapsed);
    let r = c.exec("jobs");
    assert!(r.text().contains("sleep 100"), "{}", r.text());
    // (bash, with job control, also reports the job's end.)
    let r = c.exec("kill %1; wait %1; echo $?");
    assert!(r.text().ends_with("143\n"), "{}", r.text());
}

#[test]
fn a_chatty_background_job_is_drained_while_idle() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // 2 MB to the terminal, far more than a pty buffers: without reading
    // while no exec runs, the job would block and never write `bgdone`.
    let r = c.exec("(head -c 2000000 /dev/zero | tr '\\0' x; touch bgdone) &");
    assert_eq!(r.exit_code, 0);
    assert!(
        wait_for_file(&agent.work.join("bgdone"), Duration::from_secs(20)),
        "the background job blocked on the terminal"
    );
    let r = c.exec("echo clean");
    assert!(r.text().ends_with("clean\n"));

    // One that never stops does not block later execs either.
    let r = c.exec("yes spam > /dev/tty &");
    assert_eq!(r.exit_code, 0);
    for i in 0..3 {
        let r = c.exec(&format!("echo marker{i}"));
        assert_eq!(r.exit_code, 0);
        assert!(!r.timed_out);
    }
    let r = c.exec("kill -9 %1; wait %1 2>/dev/null; echo stopped");
    assert_eq!(r.exit_code, 0);
    assert!(!r.timed_out);
}

#[test]
fn cancel_interrupts_a_running_exec() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.exec("export KEEP=2");
    let start = Instant::now();
    let id = c.send(Request::Exec {
        cmd: "sleep 100".into(),
        timeout_ms: 60_000,
        max_output_bytes: 1 << 20,
    });
    let cancel = c.send(Request::CancelExec { target: id });
    assert_eq!(c.recv_for(cancel), Response::Ok);
    let r = c.collect_exec(id, start);
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 124);
    assert!(r.elapsed < Duration::from_secs(2), "took {:?}", r.elapsed);
    assert_eq!(c.exec("echo $KEEP").text(), "2\n");
}

#[test]
fn cancelling_a_queued_exec_returns_at_once_without_running_it() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let start = Instant::now();
    let running = c.send(Request::Exec {
        cmd: "sleep 100".into(),
        timeout_ms: u64::MAX,
        max_output_bytes: 1 << 20,
    });
    let queued = c.send(Request::Exec {
        cmd: "touch ran".into(),
        timeout_ms: 30_000,
        max_output_bytes: 1 << 20,
    });
    let cancel = c.send(Request::CancelExec { target: queued });
    assert_eq!(c.recv_for(cancel), Response::Ok);
    // Answered while the first exec still runs.
    let done = match c.recv_for(queued) {
        Response::ExecDone {
            exit_code,
            timed_out,
            ..
        } => Some((exit_code, timed_out)),
        other => panic!("{other:?}"),
    };
    assert_eq!(done, Some((124, true)));
    let cancel = c.send(Request::CancelExec { target: running });
    assert_eq!(c.recv_for(cancel), Response::Ok);
    let r = c.collect_exec(running, start);
    assert!(r.timed_out);
    assert!(r.elapsed < Duration::from_secs(3), "took {:?}", r.elapsed);
    assert!(!agent.work.join("ran").exists(), "the cancelled exec ran");
}

#[test]
fn execs_run_one_at_a_time_in_arrival_order() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let start = Instant::now();
    let ids: Vec<u64> = [
        "sleep 0.3; echo 1 >> order",
        "echo 2 >> order",
        "echo 3 >> order",
    ]
    .iter()
    .map(|cmd| {
        c.send(Request::Exec {
            cmd: cmd.to_string(),
            timeout_ms: 30_000,
            max_output_bytes: 1 << 20,
        })
    })
    .collect();
    for id in ids {
        let r = c.collect_exec(id, start);
        assert_eq!(r.exit_code, 0);
    }
    assert_eq!(c.exec("cat order").text(), "1\n2\n3\n");
}

#[test]
fn a_command_with_nul_is_invalid() {
    let agent = Agent::start();
    let mut c = agent.connect();
    match c.call(Request::Exec {
        cmd: "echo a\0b".into(),
        timeout_ms: 1000,
        max_output_bytes: 1024,
    }) {
        Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::InvalidRequest),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.exec("echo fine").text(), "fine\n");
}

#[test]
fn no_output_is_lost_or_misattributed_across_quick_execs() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // More than one read of the terminal per exec, so the output still
    // buffered when the status arrives must be drained into this exec.
    for i in 0..100 {
        let r = c.exec(&format!(
            "head -c 30000 /dev/zero | tr '\\0' x; printf 'n{i}\\n'; printf 'e{i}\\n' >&2"
        ));
        let expected = format!("{}n{i}\ne{i}\n", "x".repeat(30000));
        assert!(
            r.text() == expected,
            "exec {i}: got {} bytes ending {:?}",
            r.output.len(),
            &r.text()[r.text().len().saturating_sub(20)..]
        );
    }
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // The subshell exits at once, orphaning its `sleep 0.1`, which the agent
    // inherits and must reap when it exits.
    let r = c.exec("(sleep 0.1 &) ; sleep 0.3");
    assert_eq!(r.exit_code, 0);
    let zombies: Vec<_> = children_of(agent.pid())
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies under the agent: {zombies:?}");
    // The orphan really was the agent's child (the test would be vacuous
    // otherwise): a longer one shows up under the agent while it runs.
    c.exec("(sleep 5 &)");
    let kids = children_of(agent.pid());
    assert!(
        kids.len() >= 2,
        "the orphan was not reparented to the agent: {kids:?}"
    );
}

#[test]
fn neither_the_shell_nor_commands_inherit_agent_fds() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // The command sees only stdin/stdout/stderr (and ls's own dir fd).
    let r = c.exec("ls /proc/self/fd | sort -n | tr '\\n' ' '");
    assert_eq!(r.text(), "0 1 2 3 ");
    let r = c.exec("ls -l /proc/$$/fd/");
    assert_eq!(r.exit_code, 0, "{}", r.text());
    assert!(r.text().contains("/dev/pts/"), "{}", r.text());
    assert!(!r.text().contains("socket:"), "{}", r.text());
    // The shell holds the command text (saved by bash while the command
    // runs), not its setup, which it closed after reading it.
    assert_eq!(
        r.text().matches("memfd:sandkasten-command").count(),
        1,
        "{}",
        r.text()
    );
}
