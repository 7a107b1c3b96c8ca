//! The pre-warmed pool end to end: creates served from the pool with and
//! without a workspace, late-bound env and TTL, refill after a burst, dead
//! pooled sandboxes never handed out, idle recycling, drain on SIGTERM, no
//! orphan after SIGKILL and restart, `/v1/pool` and `/metrics`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// A pool of `size` sandboxes of the default image (`base` on native, the
/// suite's image on docker).
fn pool_config(size: usize, extra: &str) -> String {
    format!(
        "pool:\n  enabled: true\n  images:\n    \"{}\": {size}\n{extra}",
        default_image()
    )
}

fn pool_of(d: &Daemon) -> Value {
    d.get("/v1/pool").expect(200, "GET /v1/pool")["images"][default_image()].clone()
}

/// Waits until the pool has `n` idle sandboxes and no fill in flight.
#[track_caller]
fn wait_idle(d: &Daemon, n: u64, within: Duration) {
    let ok = wait_for(within, || {
        let p = pool_of(d);
        p["idle"] == n && p["in_flight"] == 0
    });
    assert!(ok, "pool not at {n} idle within {within:?}: {}", pool_of(d));
}

/// Ids of the pooled sandboxes: sandboxes on the host (native: session
/// dirs; docker: containers of the data dir) that are not sessions.
fn pooled_ids(d: &Daemon) -> BTreeSet<String> {
    let listed: BTreeSet<String> = d.listed_ids().into_iter().collect();
    let mut out = BTreeSet::new();
    for id in host_sandbox_ids(&d.home) {
        if !listed.contains(&id) {
            d.home.remember(&id);
            out.insert(id);
        }
    }
    out
}

#[test]
fn pooled_creates_serve_sessions_with_and_without_a_workspace() {
    let d = Daemon::start(Some(&pool_config(2, "")));
    wait_idle(&d, 2, Duration::from_secs(20));
    let pooled = pooled_ids(&d);

    // Without a workspace: a pooled sandbox becomes the session.
    let s = d.create_session(json!({"ttl_seconds": 120}));
    check_session_info(&s);
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["acquire_source"], "pool", "{s}");
    assert!(
        pooled.contains(&id),
        "session {id} is not one of the pooled sandboxes {pooled:?}"
    );
    let ttl =
        rfc3339(s["expires_at"].as_str().unwrap()) - rfc3339(s["created_at"].as_str().unwrap());
    assert!(
        (ttl - 120.0).abs() < 1.0,
        "the request's TTL was not applied: {s}"
    );
    let v = d.exec(&id, "pwd; echo ok > /workspace/a; cat /workspace/a");
    assert_eq!(v["output"], "/workspace\nok\n", "{v}");
    assert!(!d.listed_ids().is_empty());

    // With a workspace and env: mounted into the running sandbox. On a
    // remote engine (documented) nothing can be mounted into a running
    // container from here: such creates are served cold, as misses.
    let with_ws = if on_remote_engine() { "cold" } else { "pool" };
    let ws = ws_id("pooled-ws");
    let s = d.create_session(json!({
        "workspace_id": ws,
        "env": {"GREETING": "it's \"quoted\" $HOME", "EMPTY": ""}
    }));
    assert_eq!(s["acquire_source"], with_ws, "{s}");
    assert_eq!(s["workspace_id"], ws.as_str(), "{s}");
    let ws_session = s["id"].as_str().unwrap().to_string();
    let v = d.exec(
        &ws_session,
        "pwd; echo \"$GREETING|${EMPTY-unset}|$OLDPWD\"; echo kept > note.txt",
    );
    assert_eq!(
        v["output"], "/workspace\nit's \"quoted\" $HOME||\n",
        "env or cwd not bound: {v}"
    );
    // The env outlives the shell: after `exit`, the next shell has it too
    // (as a cold session's does).
    d.exec(&ws_session, "exit 3");
    assert_eq!(
        d.sh(&ws_session, "echo \"$GREETING\"; pwd"),
        "it's \"quoted\" $HOME\n/workspace\n"
    );
    // The file is in the workspace itself, visible without a session.
    let r = d.get(&format!("/v1/workspaces/{ws}/fs/read?path=note.txt"));
    assert_eq!(
        unb64(
            r.expect(200, "session-less read")["content_base64"]
                .as_str()
                .unwrap()
        ),
        b"kept\n"
    );
    if on_docker() {
        // The volume, without a quota (documented: docker has none).
        let w = d
            .get(&format!("/v1/workspaces/{ws}"))
            .expect(200, "workspace");
        assert_eq!(w["quota_bytes"], Value::Null, "{w}");
        assert_eq!(w["in_use"], true, "{w}");
    } else {
        // The workspace has its quota (a btrfs mount), not the ephemeral dir.
        let v = d.exec(&ws_session, "df --output=fstype /workspace | tail -1");
        assert_eq!(v["output"], "btrfs\n", "{v}");
    }
    d.delete(&ws_session);

    // The workspace comes back in the next pooled session.
    wait_idle(&d, 2, Duration::from_secs(10));
    let s = d.create_session(json!({"workspace_id": ws}));
    assert_eq!(s["acquire_source"], with_ws, "{s}");
    let id2 = s["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.sh(&id2, "cat note.txt; echo ${GREETING-unset}"),
        "kept\nunset\n"
    );

    let p = pool_of(&d);
    let (hits, misses) = if on_remote_engine() { (1, 2) } else { (3, 0) };
    assert_eq!(
        (&p["hits"], &p["misses"]),
        (&json!(hits), &json!(misses)),
        "{p}"
    );
    assert!(p["acquire_wait_p50_ms"].as_f64().unwrap() > 0.0, "{p}");

    // The metrics agree and need the key.
    let text = d.get("/metrics").text;
    let line = format!(
        "sandkasten_pool_hits_total{{image=\"{}\"}} {hits}",
        default_image()
    );
    assert!(text.contains(&line), "{text}");
    let line = format!("sandkasten_session_creates_total{{source=\"pool\"}} {hits}");
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("sandkasten_sessions{state=\"running\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("sandkasten_exec_duration_seconds_count"),
        "{text}"
    );
    let anon = d.send(d.client.get(format!("{}/metrics", d.url)));
    anon.assert_error(401, "UNAUTHORIZED", "/metrics without the key");
}

#[test]
fn env_applies_to_cold_creates_too_and_bad_env_is_a_400() {
    let d = Daemon::start(None);
    let s = d.create_session(json!({"env": {"A_B": "x y", "PATH": "/usr/bin:/bin"}}));
    assert_eq!(s["acquire_source"], "cold", "{s}");
    let id = s["id"].as_str().unwrap();
    assert_eq!(d.sh(id, "echo \"$A_B|$PATH\""), "x y|/usr/bin:/bin\n");
    for bad in [
        json!({"env": {"1X": "v"}}),
        json!({"env": {"A-B": "v"}}),
        json!({"env": {"": "v"}}),
        json!({"env": {"A": "nul\u{0}"}}),
        json!({"env": "A=1"}),
    ] {
        d.try_create_session(bad.clone()).assert_error(
            400,
            "INVALID_REQUEST",
            &format!("env {bad}"),
        );
    }
}

#[test]
fn a_burst_of_20_against_a_pool_of_3_all_succeed_and_the_pool_refills() {
    let d = Daemon::start(Some(&pool_config(3, "")));
    wait_idle(&d, 3, Duration::from_secs(20));
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| s.spawn(|| d.try_create_session(json!({})).expect(201, "burst create")))
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
        assert_eq!(d.sh(id, "echo $((6*7))"), "42\n");
    }
    // Back to target within 5 s, from when the burst ended.
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
fn a_killed_idle_sandbox_is_never_handed_out() {
    let d = Daemon::start(Some(&pool_config(1, "")));
    wait_idle(&d, 1, Duration::from_secs(20));
    let victim = pooled_ids(&d).into_iter().next().unwrap();
    kill_sandbox(&victim);
    // Right away, before or after the daemon noticed: never the dead one.
    let s = d.create_session(json!({}));
    let id = s["id"].as_str().unwrap();
    assert_ne!(id, victim, "the killed pooled sandbox was handed out");
    assert_eq!(d.sh(id, "echo alive"), "alive\n");
    assert!(
        wait_for(Duration::from_secs(10), || pool_of(&d)["discarded"] == 1),
        "the dead sandbox was not counted as discarded: {}",
        pool_of(&d)
    );
    assert_sandbox_gone(&d.home, &victim, "discarded pooled sandbox");
    wait_idle(&d, 1, Duration::from_secs(10));
}

#[test]
fn idle_pooled_sandboxes_are_recycled_after_max_idle_seconds() {
    let d = Daemon::start(Some(&pool_config(1, "  max_idle_seconds: 1\n")));
    wait_idle(&d, 1, Duration::from_secs(20));
    let first = pooled_ids(&d).into_iter().next().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || pool_of(&d)["recycled"]
            .as_u64()
            .unwrap()
            >= 1),
        "not recycled: {}",
        pool_of(&d)
    );
    assert_sandbox_gone(&d.home, &first, "recycled pooled sandbox");
    wait_idle(&d, 1, Duration::from_secs(10));
    assert!(!pooled_ids(&d).contains(&first));
}

#[test]
fn sigterm_drains_the_pool_and_leaves_sessions_running() {
    let d1 = Daemon::start(Some(&pool_config(2, "")));
    wait_idle(&d1, 2, Duration::from_secs(20));
    let session = d1.create_session(json!({}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_idle(&d1, 2, Duration::from_secs(10));
    let pooled = pooled_ids(&d1);
    assert_eq!(pooled.len(), 2);
    let home = d1.home.clone();
    let (status, took) = d1.terminate();
    assert!(status.success(), "SIGTERM exit status {status:?}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    for id in &pooled {
        assert_sandbox_gone(&home, id, "pooled sandbox after SIGTERM");
    }
    assert!(
        sandbox_running(&session),
        "SIGTERM destroyed the running session"
    );
    let d2 = Daemon::start_in(&home, Some(&pool_config(2, "")));
    assert_eq!(d2.sh(&session, "echo still"), "still\n");
}

#[test]
fn sigkill_and_restart_leave_no_orphan_and_resize_the_pool() {
    let d1 = Daemon::start(Some(&pool_config(2, "")));
    wait_idle(&d1, 2, Duration::from_secs(20));
    let session = d1.create_session(json!({"workspace_id": ws_id("kept")}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d1.sh(&session, "echo mine > f");
    wait_idle(&d1, 2, Duration::from_secs(10));
    let old_pool = pooled_ids(&d1);
    let home = d1.home.clone();
    d1.kill_9();

    // A new config: a pool of 1.
    let d2 = Daemon::start_in(&home, Some(&pool_config(1, "")));
    for id in &old_pool {
        assert_sandbox_gone(&home, id, "pooled sandbox of the killed daemon");
    }
    wait_idle(&d2, 1, Duration::from_secs(20));
    assert_eq!(pool_of(&d2)["target"], 1);
    let now = pooled_ids(&d2);
    assert_eq!(
        now.len(),
        1,
        "exactly one pooled sandbox after the resize: {now:?}"
    );
    assert!(now.is_disjoint(&old_pool));
    // The session came through and kept its workspace.
    assert_eq!(d2.sh(&session, "cat f"), "mine\n");
}

/// Native keeps an image workspace mounted (detached, never on the host)
/// between the pooled sessions that use it; whatever needs it unmounted
/// still works at once after the session ends.
mod native_only {
    use super::*;

    /// Loop devices of the data dir's workspaces.
    fn loop_devices_of(d: &Daemon) -> Vec<String> {
        let root = d.home.root.to_string_lossy().to_string();
        let root = format!("{}/", root.trim_end_matches('/'));
        let mut out = Vec::new();
        for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let backing =
                std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
            if name.starts_with("loop")
                && backing.starts_with(&root)
                && backing.contains("/workspaces/")
            {
                out.push(format!("/dev/{name} ({})", backing.trim()));
            }
        }
        out
    }

    fn pooled_on(d: &Daemon, ws: &str) -> String {
        wait_idle(d, 1, Duration::from_secs(20));
        let s = d.create_session(json!({"workspace_id": ws}));
        assert_eq!(s["acquire_source"], "pool", "{s}");
        s["id"].as_str().unwrap().to_string()
    }

    #[test]
    fn a_kept_workspace_is_restored_imported_and_deleted_after_its_session() {
        let d = Daemon::start(Some(&pool_config(1, "")));
        let ws = ws_id("kept");
        let id = pooled_on(&d, &ws);
        assert_eq!(
            d.sh(&id, "echo v1 > doc.txt; df --output=fstype . | tail -1"),
            "btrfs\n"
        );
        let snap = d
            .post(&format!("/v1/workspaces/{ws}/snapshots"), &json!({}))
            .expect(201, "snapshot");
        let snap_id = snap["id"].as_str().unwrap().to_string();
        d.delete(&id);
        // Kept between sessions, but never as a mount the host sees.
        assert_eq!(loop_devices_of(&d).len(), 1, "{:?}", loop_devices_of(&d));
        let root = d.home.root.to_string_lossy().to_string();
        assert_eq!(mountinfo_lines_containing(&root), Vec::<String>::new());

        // The next session gets the same content through the kept mount.
        let id = pooled_on(&d, &ws);
        assert_eq!(
            d.sh(&id, "cat doc.txt; echo v2 > doc.txt; cat doc.txt"),
            "v1\nv2\n"
        );
        d.post(
            &format!("/v1/workspaces/{ws}/snapshots/{snap_id}/restore"),
            &json!({}),
        )
        .assert_error(409, "WORKSPACE_IN_USE", "restore while a session mounts it");
        d.delete(&id);

        // A restore swaps the content subvolume: the kept mount of the old
        // one is dropped first, and the next session sees the restored one.
        d.post(
            &format!("/v1/workspaces/{ws}/snapshots/{snap_id}/restore"),
            &json!({}),
        )
        .expect(200, "restore right after the session");
        let id = pooled_on(&d, &ws);
        assert_eq!(d.sh(&id, "cat doc.txt"), "v1\n");
        d.delete(&id);

        // So does an import.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h, "doc.txt", &b"v3\n"[..]).unwrap();
        d.send(
            d.request(reqwest::Method::PUT, &format!("/v1/workspaces/{ws}/import"))
                .header("content-type", "application/x-tar")
                .body(b.into_inner().unwrap()),
        )
        .expect(200, "import right after the session");
        let id = pooled_on(&d, &ws);
        assert_eq!(d.sh(&id, "cat doc.txt"), "v3\n");
        d.delete(&id);

        // And the delete: nothing of the workspace stays attached.
        d.del(&format!("/v1/workspaces/{ws}"))
            .expect(200, "delete right after the session");
        let gone = wait_for(Duration::from_secs(5), || loop_devices_of(&d).is_empty());
        assert!(gone, "loop devices left: {:?}", loop_devices_of(&d));
        assert_eq!(mountinfo_lines_containing(&root), Vec::<String>::new());
    }
}
