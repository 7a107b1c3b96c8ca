//! The pre-warmed pool on `runtime: docker`, end to end through the daemon:
//! pooled creates with and without a workspace (the workspace volume is
//! mounted into the running container), env, `acquire_source`, a burst
//! against a small pool and its refill, SIGTERM draining the pool, and
//! SIGKILL + restart leaving no orphan container. Also `sandkasten image`
//! on the docker runtime.
//!
//! Needs a running Docker engine (as root); without one every test fails
//! with what to do, none is skipped.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A data dir whose docker objects (containers, volumes: all labelled
/// with the data dir) are removed when the test ends, even after a
/// failure. Declare it before the daemons, so that they stop first.
struct DockerHome(Arc<DataDir>);

impl DockerHome {
    fn new() -> DockerHome {
        docker_image();
        let home = DataDir::new();
        home.holds_docker_objects();
        DockerHome(home)
    }

    fn label(&self) -> String {
        format!("label=sandkasten.data_dir={}", self.0.data.display())
    }

    /// Session ids of this data dir's containers (running or not).
    fn containers(&self) -> BTreeSet<String> {
        let (ok, out) = docker_cli(&[
            "ps",
            "-a",
            "--filter",
            &self.label(),
            "--format",
            "{{.Label \"sandkasten.session_id\"}}",
        ]);
        assert!(ok, "docker ps failed");
        out.lines().map(str::to_string).collect()
    }

    /// Names of this data dir's volumes.
    fn volumes(&self) -> BTreeSet<String> {
        let (ok, out) = docker_cli(&[
            "volume",
            "ls",
            "--filter",
            &self.label(),
            "--format",
            "{{.Name}}",
        ]);
        assert!(ok, "docker volume ls failed");
        out.lines().map(str::to_string).collect()
    }
}

fn config(pool: usize, extra: &str) -> String {
    format!(
        "runtime: docker\ndefault_image: \"{img}\"\ndefaults:\n  tmp_size_mb: 64\n\
         pool:\n  enabled: true\n  images:\n    \"{img}\": {pool}\n{extra}",
        img = docker_image()
    )
}

fn pool_of(d: &Daemon) -> Value {
    d.get("/v1/pool").expect(200, "GET /v1/pool")["images"][docker_image()].clone()
}

/// Waits until the pool has `n` idle containers and no fill in flight.
#[track_caller]
fn wait_idle(d: &Daemon, n: u64, within: Duration) {
    let ok = wait_for(within, || {
        let p = pool_of(d);
        p["idle"] == n && p["in_flight"] == 0
    });
    assert!(ok, "pool not at {n} idle within {within:?}: {}", pool_of(d));
}

/// The pooled containers: this data dir's containers that are not
/// sessions.
fn pooled_ids(h: &DockerHome, d: &Daemon) -> BTreeSet<String> {
    let listed: BTreeSet<String> = d.listed_ids().into_iter().collect();
    h.containers()
        .into_iter()
        .filter(|id| !listed.contains(id))
        .collect()
}

fn read_ws(d: &Daemon, ws: &str, path: &str) -> Resp {
    d.get(&format!("/v1/workspaces/{ws}/fs/read?path={path}"))
}

#[test]
fn pooled_creates_with_and_without_a_workspace_on_docker() {
    let h = DockerHome::new();
    let d = Daemon::start_in(&h.0, Some(&config(2, "")));
    wait_idle(&d, 2, Duration::from_secs(30));
    let pooled = pooled_ids(&h, &d);
    assert_eq!(pooled.len(), 2, "{pooled:?}");

    // Without a workspace: a pooled container becomes the session.
    let s = d.create_session(json!({"ttl_seconds": 120}));
    let plain = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["acquire_source"], "pool", "{s}");
    assert!(pooled.contains(&plain), "{plain} is not pooled: {pooled:?}");
    assert_eq!(d.sh(&plain, "pwd; echo ok > a; cat a"), "/workspace\nok\n");

    // With a workspace and env: the volume is mounted into the running
    // container.
    let s = d.create_session(json!({
        "workspace_id": "dws",
        "env": {"GREETING": "it's \"quoted\" $HOME", "EMPTY": ""}
    }));
    assert_eq!(s["acquire_source"], "pool", "{s}");
    assert_eq!(s["workspace_id"], "dws", "{s}");
    let ws_session = s["id"].as_str().unwrap().to_string();
    assert!(pooled.contains(&ws_session));
    let v = d.exec(
        &ws_session,
        "pwd; echo \"$GREETING|${EMPTY-unset}\"; echo x > f; ls",
    );
    assert_eq!(
        v["output"], "/workspace\nit's \"quoted\" $HOME|\nf\n",
        "env, cwd or mount not bound: {v}"
    );
    // The env outlives the shell.
    d.exec(&ws_session, "exit 3");
    assert_eq!(
        d.sh(&ws_session, "echo \"$GREETING\"; pwd"),
        "it's \"quoted\" $HOME\n/workspace\n"
    );
    // The file is in the workspace volume, visible without a session.
    let r = read_ws(&d, "dws", "f").expect(200, "session-less read");
    assert_eq!(unb64(r["content_base64"].as_str().unwrap()), b"x\n");
    // The container's workspace label stays empty (fixed at create); the
    // daemon knows the workspace is in use all the same.
    let (_, label) = docker_cli(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"sandkasten.workspace_id\"}}",
        &format!("sandkasten-{ws_session}"),
    ]);
    assert_eq!(label, "");
    let w = d.get("/v1/workspaces/dws").expect(200, "GET workspace");
    assert_eq!(w["in_use"], true, "{w}");
    d.del("/v1/workspaces/dws")
        .assert_error(409, "WORKSPACE_IN_USE", "delete while late-bound");
    assert!(h.volumes().contains("sandkasten-ws-dws"));

    // Destroyed: its container and ephemeral volume go, the workspace
    // stays with f.
    d.delete(&ws_session);
    assert!(!h.containers().contains(&ws_session));
    let vols = h.volumes();
    assert!(
        !vols.contains(&format!("sandkasten-ws-{ws_session}")),
        "{vols:?}"
    );
    assert!(vols.contains("sandkasten-ws-dws"), "{vols:?}");
    let r = read_ws(&d, "dws", "f").expect(200, "read after destroy");
    assert_eq!(unb64(r["content_base64"].as_str().unwrap()), b"x\n");

    // The workspace comes back in the next pooled session.
    wait_idle(&d, 2, Duration::from_secs(20));
    let s = d.create_session(json!({"workspace_id": "dws"}));
    assert_eq!(s["acquire_source"], "pool", "{s}");
    let again = s["id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&again, "cat f; echo ${GREETING-unset}"), "x\nunset\n");
    d.delete(&again);
    d.del("/v1/workspaces/dws").expect(200, "delete when free");
    assert!(!h.volumes().contains("sandkasten-ws-dws"));

    let p = pool_of(&d);
    assert_eq!(
        (p["hits"].clone(), p["misses"].clone()),
        (json!(3), json!(0)),
        "{p}"
    );
    let text = d.get("/metrics").text;
    assert!(
        text.contains("sandkasten_session_creates_total{source=\"pool\"} 3"),
        "{text}"
    );
}

#[test]
fn a_burst_of_20_against_a_pool_of_3_on_docker_all_succeed_and_the_pool_refills() {
    let h = DockerHome::new();
    let d = Daemon::start_in(&h.0, Some(&config(3, "")));
    wait_idle(&d, 3, Duration::from_secs(30));
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let d = &d;
                s.spawn(move || {
                    let body = if i % 2 == 0 {
                        json!({})
                    } else {
                        json!({"workspace_id": format!("burst-{i}")})
                    };
                    d.try_create_session(body).expect(201, "burst create")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pooled = results
        .iter()
        .filter(|s| s["acquire_source"] == "pool")
        .count();
    let ids: BTreeSet<&str> = results.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 20, "duplicate session ids");
    assert!(
        pooled >= 3,
        "only {pooled} of 20 creates came from a pool of 3"
    );
    assert!(pooled < 20, "a pool of 3 cannot have served all 20 creates");
    for s in &results {
        let id = s["id"].as_str().unwrap();
        assert_eq!(
            d.sh(id, "echo $((6*7)) > answer; pwd; cat answer"),
            "/workspace\n42\n"
        );
        // A workspace session wrote into its own workspace.
        if let Some(ws) = s["workspace_id"].as_str() {
            let r = read_ws(&d, ws, "answer").expect(200, "session-less read");
            assert_eq!(unb64(r["content_base64"].as_str().unwrap()), b"42\n");
        }
    }
    // Back to target within 5 s of the burst's end.
    wait_idle(&d, 3, Duration::from_secs(5));
    let p = pool_of(&d);
    assert_eq!(
        p["hits"].as_u64().unwrap() + p["misses"].as_u64().unwrap(),
        20,
        "{p}"
    );
    assert_eq!(p["hits"].as_u64().unwrap(), pooled as u64, "{p}");
}

#[test]
fn sigterm_drains_the_docker_pool_and_leaves_sessions_running() {
    let h = DockerHome::new();
    let d1 = Daemon::start_in(&h.0, Some(&config(2, "")));
    wait_idle(&d1, 2, Duration::from_secs(30));
    let session = d1.create_session(json!({"workspace_id": "drain"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d1.sh(&session, "echo mine > f");
    wait_idle(&d1, 2, Duration::from_secs(20));
    let pooled = pooled_ids(&h, &d1);
    assert_eq!(pooled.len(), 2);
    let (status, took) = d1.terminate();
    assert!(status.success(), "SIGTERM exit status {status:?}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    let left = h.containers();
    assert_eq!(
        left,
        BTreeSet::from([session.clone()]),
        "after SIGTERM only the session's container may remain"
    );
    for id in &pooled {
        assert!(
            !h.volumes().contains(&format!("sandkasten-ws-{id}")),
            "the ephemeral volume of pooled {id} survived the drain"
        );
    }
    // The session runs on under the next daemon, workspace mounted.
    let d2 = Daemon::start_in(&h.0, Some(&config(2, "")));
    assert_eq!(d2.sh(&session, "cat f"), "mine\n");
}

#[test]
fn sigkill_and_restart_leave_no_orphan_container() {
    let h = DockerHome::new();
    let d1 = Daemon::start_in(&h.0, Some(&config(2, "")));
    wait_idle(&d1, 2, Duration::from_secs(30));
    let session = d1.create_session(json!({"workspace_id": "kept"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d1.sh(&session, "echo mine > f");
    wait_idle(&d1, 2, Duration::from_secs(20));
    let old_pool = pooled_ids(&h, &d1);
    assert_eq!(old_pool.len(), 2);
    d1.kill_9();

    // A new config: a pool of 1.
    let d2 = Daemon::start_in(&h.0, Some(&config(1, "")));
    let now = h.containers();
    assert!(
        now.is_disjoint(&old_pool),
        "pooled containers of the killed daemon survived: {:?}",
        now.intersection(&old_pool).collect::<Vec<_>>()
    );
    for id in &old_pool {
        assert!(!h.volumes().contains(&format!("sandkasten-ws-{id}")));
    }
    wait_idle(&d2, 1, Duration::from_secs(30));
    assert_eq!(pool_of(&d2)["target"], 1);
    let pooled = pooled_ids(&h, &d2);
    assert_eq!(pooled.len(), 1, "{pooled:?}");
    assert_eq!(
        h.containers(),
        pooled
            .iter()
            .cloned()
            .chain([session.clone()])
            .collect::<BTreeSet<_>>(),
        "containers other than the session and the pool"
    );
    // The session came through with its late-bound workspace, still
    // known to be in use.
    assert_eq!(d2.sh(&session, "cat f"), "mine\n");
    d2.del("/v1/workspaces/kept")
        .assert_error(409, "WORKSPACE_IN_USE", "delete after restart");
}

#[test]
fn image_commands_use_the_configured_runtime() {
    let h = DockerHome::new();
    let cfg = h.0.write_config("runtime: docker\n");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("image")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .env("SANDKASTEN_DATA_DIR", &h.0.data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The docker engine's images, not the native store's (`base`).
    let (ok, out, err) = cli(&["ls"]);
    assert!(ok, "image ls: {err}");
    assert!(out.contains(docker_image()), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("base ")), "{out}");
    // Import into and removal from the engine.
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("rootfs.tar");
    suite_rootfs_tar(
        &tarball,
        &[("usr/bin/busybox".into(), "/bin/busybox".into())],
        &[],
    );
    let name = format!("sandkasten-e2e:cli-{}", random_hex(8));
    let (ok, out, err) = cli(&["import", &name, tarball.to_str().unwrap()]);
    assert!(ok, "image import: {err}");
    assert!(out.starts_with(&name), "{out}");
    assert!(
        docker_cli(&["image", "inspect", &name]).0,
        "not in the engine"
    );
    let (ok, _, err) = cli(&["rm", &name]);
    assert!(ok, "image rm: {err}");
    assert!(
        !docker_cli(&["image", "inspect", &name]).0,
        "still in the engine"
    );
}

#[test]
fn persist_by_default_keeps_the_workspace_named_after_a_pooled_session() {
    // The workspace is named after the session, whose id is its pooled
    // container's: the container's own volume becomes the workspace.
    let h = DockerHome::new();
    let d = Daemon::start_in(
        &h.0,
        Some(&config(1, "workspace:\n  persist_by_default: true\n")),
    );
    wait_idle(&d, 1, Duration::from_secs(30));
    let s = d.create_session(json!({}));
    assert_eq!(s["acquire_source"], "pool", "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["workspace_id"], id.as_str(), "{s}");
    assert_eq!(d.sh(&id, "echo kept > k; pwd"), "/workspace\n");
    d.delete(&id);
    assert!(!h.containers().contains(&id));
    let r = read_ws(&d, &id, "k").expect(200, "the workspace after its session");
    assert_eq!(unb64(r["content_base64"].as_str().unwrap()), b"kept\n");
    d.del(&format!("/v1/workspaces/{id}"))
        .expect(200, "delete the workspace");
    assert!(!h.volumes().contains(&format!("sandkasten-ws-{id}")));
}
