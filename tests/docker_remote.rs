//! `runtime: docker` on a remote engine (`docker.host: tcp://…`), end to
//! end through the daemon. The engine is this host's, reached through a
//! loopback TCP forwarder that can fail like a network
//! (`sandkasten_conformance::TcpForwarder`): the daemon shares nothing with
//! it through the filesystem, which these tests check, and a broken
//! connection must not lose a session. Also `docker.runtime: runsc`
//! (gVisor), whose sandboxes are served the same way.
//!
//! The rest of the API on a remote engine is the black-box suite's
//! `docker-remote` pass (`scripts/test`). Needs a running Docker engine (as
//! root); without one every test fails with what to do, none is skipped.

mod common;

use common::*;
use sandkasten_conformance::{TcpForwarder, ENGINE_SOCKET};
use serde_json::json;
use std::time::{Duration, Instant};

/// The sandbox user's uid (the docker runtime's default `docker.sandbox_uid`).
const U: u32 = sandkasten_docker::DEFAULT_SANDBOX_ID;

fn remote_daemon(fwd: &TcpForwarder, extra: &str) -> Daemon {
    let home = DataDir::new();
    home.holds_docker_objects();
    Daemon::start_in(
        &home,
        Some(&format!(
            "runtime: docker\ndefault_image: \"{}\"\ndocker:\n  host: tcp://127.0.0.1:{}\n{extra}",
            docker_image(),
            fwd.port()
        )),
    )
}

/// The daemon's view of a container: (bind mount sources, env names).
fn container_mounts(id: &str) -> Vec<(String, String)> {
    let (ok, out) = docker_cli(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Type}} {{.Source}} {{.Name}}\n{{end}}",
        &container_name(id),
    ]);
    assert!(ok, "inspecting the container of {id}: {out}");
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[test]
fn a_remote_engine_serves_sessions_without_sharing_the_hosts_files() {
    let fwd = TcpForwarder::start(ENGINE_SOCKET);
    let d = remote_daemon(&fwd, "");
    assert!(
        d.logs().contains("remote=true"),
        "not started as a remote engine"
    );
    let ws = ws_id("remote-ws");
    let s = d.create_session(json!({"workspace_id": ws, "env": {"WHO": "remote"}}));
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.sh(
            &id,
            "id -u; pwd; echo $WHO; stat -c %u /workspace; echo hi > f; cat f"
        ),
        format!("{U}\n/workspace\nremote\n{U}\nhi\n")
    );
    // No host path in the container: only volumes (the workspace, the
    // agent's) and tmpfs.
    let mounts = container_mounts(&id);
    assert!(
        mounts
            .iter()
            .all(|(kind, _)| kind == "volume" || kind == "tmpfs"),
        "a host path is mounted: {mounts:?}"
    );
    assert!(
        mounts.iter().any(|(_, m)| m.contains("sandkasten-agent-")),
        "the agent volume is not mounted: {mounts:?}"
    );
    // Nothing on this host serves it: the run dir only marks the session.
    let run = d.home.data.join("docker").join(&id);
    let entries: Vec<_> = std::fs::read_dir(&run).unwrap().collect();
    assert!(entries.is_empty(), "{entries:?} in {}", run.display());
    // The agent's socket is root's only.
    assert_eq!(
        d.exec(&id, "ls /.sandkasten/run")["exit_code"],
        1,
        "the sandbox user can list the agent's run directory"
    );

    // Workspace access without a session, through a helper container.
    let r = d.post(
        &format!("/v1/workspaces/{ws}/fs/write"),
        &json!({"path": "sub/from-api.txt", "text": "written outside"}),
    );
    r.expect(200, "session-less write");
    assert_eq!(d.sh(&id, "cat sub/from-api.txt"), "written outside");
    let r = d.get(&format!("/v1/workspaces/{ws}/fs/read?path=f"));
    assert_eq!(
        unb64(
            r.expect(200, "session-less read")["content_base64"]
                .as_str()
                .unwrap()
        ),
        b"hi\n"
    );
    let w = d
        .get(&format!("/v1/workspaces/{ws}"))
        .expect(200, "workspace");
    assert_eq!(w["size_bytes"], 3 + 15, "{w}");
    let r = d
        .request(reqwest::Method::GET, &format!("/v1/workspaces/{ws}/export"))
        .send()
        .expect("export request");
    assert_eq!(r.status().as_u16(), 200, "export {ws}");
    let tar = r.bytes().expect("export body").to_vec();
    let mut names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["f", "sub", "sub/from-api.txt"]);
    let (_, helpers) = docker_cli(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=sandkasten.data_dir={}", d.home.data.display()),
        "--filter",
        "label=sandkasten.helper=true",
    ]);
    assert_eq!(helpers, "", "helper containers left");
    d.delete(&id);
    d.del(&format!("/v1/workspaces/{ws}"))
        .expect(200, "workspace delete");
}

#[test]
fn a_broken_engine_connection_is_reconnected_and_the_shell_keeps_its_state() {
    let fwd = TcpForwarder::start(ENGINE_SOCKET);
    let d = remote_daemon(&fwd, "");
    let id = d.new_session();
    d.sh(&id, "cd /tmp; export KEPT=yes; sleep 300 &");

    // The network fails for a while: every connection breaks, new ones
    // are refused.
    fwd.set_down(true);
    fwd.cut();
    assert!(
        wait_for(Duration::from_secs(10), || d
            .logs()
            .contains("reconnecting to the sandbox")),
        "the daemon did not notice the broken connection"
    );
    // An exec during the outage waits for the reconnection.
    let exec = std::thread::scope(|scope| {
        let h = scope.spawn(|| {
            let started = Instant::now();
            (
                d.sh(&id, "pwd; echo $KEPT; jobs | wc -l"),
                started.elapsed(),
            )
        });
        std::thread::sleep(Duration::from_millis(1000));
        fwd.set_down(false);
        h.join().unwrap()
    });
    assert_eq!(exec.0, "/tmp\nyes\n1\n");
    assert!(
        exec.1 >= Duration::from_millis(900),
        "the exec did not wait for the outage to end: {:?}",
        exec.1
    );
    assert!(
        wait_for(Duration::from_secs(10), || d
            .logs()
            .contains("reconnected to the running sandbox")),
        "no reconnection logged"
    );
    let s = d.get(&format!("/v1/sessions/{id}")).expect(200, "session");
    assert_eq!(s["status"], "running", "{s}");

    // A container that is really gone is still noticed: the session is
    // lost, not kept waiting.
    let (ok, out) = docker_cli(&["kill", &container_name(&id)]);
    assert!(ok, "{out}");
    assert!(
        wait_for(Duration::from_secs(15), || d
            .get(&format!("/v1/sessions/{id}"))
            .status
            == 404),
        "the session of a killed container is still listed"
    );
    assert!(d.logs().contains("the sandbox is gone"));
}

/// `docker.runtime: runsc` (gVisor, registered by `scripts/test`): its
/// sandboxes keep their own file view, so they are served like a remote
/// engine's; the agent's file operations walk paths in user space there
/// (no `openat2`), with the same confinement.
#[test]
fn gvisor_sandboxes_serve_exec_files_and_workspaces() {
    let (ok, runtimes) = docker_cli(&["info", "--format", "{{json .Runtimes}}"]);
    assert!(
        ok && runtimes.contains("\"runsc\""),
        "the engine has no runsc runtime: apt-get install runsc and register it in \
         /etc/docker/daemon.json (scripts/test does both): {runtimes}"
    );
    let home = DataDir::new();
    home.holds_docker_objects();
    let d = Daemon::start_in(
        &home,
        Some(&format!(
            "runtime: docker\ndefault_image: \"{}\"\ndocker:\n  runtime: runsc\n",
            docker_image()
        )),
    );
    assert!(
        d.logs().contains("remote=true"),
        "not served as a remote engine"
    );
    let ws = ws_id("gvisor-ws");
    let s = d.create_session(json!({"workspace_id": ws}));
    let id = s["id"].as_str().unwrap().to_string();
    let (ok, rt) = docker_cli(&[
        "inspect",
        "--format",
        "{{.HostConfig.Runtime}}",
        &container_name(&id),
    ]);
    assert!(ok && rt == "runsc", "the container's runtime is {rt:?}");
    // gVisor's own kernel answers, not the host's.
    let host = std::fs::read_to_string("/proc/version").unwrap();
    let inside = d.sh(&id, "cat /proc/version");
    assert_ne!(inside.trim(), host.trim(), "the host kernel answers inside");
    assert_eq!(
        d.sh(&id, "id -u; pwd; echo hi > f; cat f"),
        format!("{U}\n/workspace\nhi\n")
    );

    // File operations through the agent, with the user's identity.
    let r = d.post(
        &format!("/v1/sessions/{id}/fs/write"),
        &json!({"path": "/workspace/sub/g.txt", "text": "via the agent"}),
    );
    r.expect(200, "fs/write under gVisor");
    assert_eq!(
        d.sh(&id, "stat -c '%u %s' sub/g.txt; cat sub/g.txt"),
        format!("{U} 13\nvia the agent")
    );
    let r = d.get(&format!("/v1/sessions/{id}/fs/read?path=/workspace/f"));
    assert_eq!(
        unb64(
            r.expect(200, "fs/read under gVisor")["content_base64"]
                .as_str()
                .unwrap()
        ),
        b"hi\n"
    );
    // Still confined: a magic link is refused, a root-only file unreadable.
    let r = d.get(&format!(
        "/v1/sessions/{id}/fs/read?path=/proc/self/root/etc/passwd"
    ));
    assert_eq!(r.status, 400, "{}", r.text);
    d.sh(&id, "ln -s /proc/1/root/.sandkasten/run escape");
    let r = d.get(&format!("/v1/sessions/{id}/fs?path=/workspace/escape"));
    assert!(r.status >= 400, "listed the agent's run dir: {}", r.text);

    // The workspace without a session.
    let r = d.get(&format!("/v1/workspaces/{ws}/fs/read?path=sub/g.txt"));
    assert_eq!(
        unb64(
            r.expect(200, "session-less read")["content_base64"]
                .as_str()
                .unwrap()
        ),
        b"via the agent"
    );
    d.delete(&id);
    d.del(&format!("/v1/workspaces/{ws}"))
        .expect(200, "workspace delete");
}

/// Sandbox networks are enforced in this host's kernel, on the bridge the
/// containers' traffic passes: a remote engine's containers are not there,
/// and gVisor's keep their own network stack (Debian's runsc runs with
/// `--network=none` here). Where the operator allows `full`, a create or a
/// change asking for it is 400 `UNSUPPORTED` saying what and why, and
/// creates nothing; `none` works as before. A daemon whose default is
/// `full` there does not start.
#[test]
fn full_network_is_unsupported_on_a_remote_engine_and_under_gvisor() {
    let fwd = TcpForwarder::start(ENGINE_SOCKET);
    let remote = remote_daemon(&fwd, "network:\n  allow_full: true\n");
    let home = DataDir::new();
    home.holds_docker_objects();
    let gvisor = Daemon::start_in(
        &home,
        Some(&format!(
            "runtime: docker\ndefault_image: \"{}\"\ndocker:\n  runtime: runsc\nnetwork:\n  allow_full: true\n",
            docker_image()
        )),
    );
    for (d, why) in [(&remote, "remote engine"), (&gvisor, "runsc")] {
        for network in [
            json!({"mode": "full"}),
            json!({"mode": "full", "allow_out": ["203.0.113.7"]}),
        ] {
            let r = d.try_create_session(json!({ "network": network }));
            r.assert_error(400, "UNSUPPORTED", why);
            let msg = r.json["message"].as_str().unwrap();
            assert!(msg.contains(why) && msg.contains("network"), "{msg}");
        }
        assert!(d.listed_ids().is_empty(), "a refused create left a session");
        let id = d.create_session(json!({"network": {"mode": "none"}}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        d.send(
            d.request(reqwest::Method::PUT, &format!("/v1/sessions/{id}/network"))
                .json(&json!({"mode": "full"})),
        )
        .assert_error(400, "UNSUPPORTED", why);
        assert_eq!(
            d.get_session(&id).expect(200, "GET")["network"]["mode"],
            "none"
        );
    }
    // A default of `full` that the engine cannot give stops the start.
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg({
            let p = home.root.join("full-default.yaml");
            std::fs::write(
                &p,
                format!(
                    "runtime: docker\ndata_dir: {}\nlisten: 127.0.0.1:0\ndefault_image: \"{}\"\n\
                     docker:\n  host: tcp://127.0.0.1:{}\ndefaults:\n  network_mode: full\n",
                    home.root.join("full-default").display(),
                    docker_image(),
                    fwd.port()
                ),
            )
            .unwrap();
            p
        })
        .env("SANDKASTEN_API_KEY", "k-0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("defaults.network_mode")
            && err.contains("remote engine"),
        "{err}"
    );
}
