//! Sessions end to end: create, get, list, delete, TTL and its extension by
//! activity, the session cap, image and workspace validation, stats.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn ts(v: &Value, key: &str) -> f64 {
    rfc3339(
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {v}")),
    )
}

fn expires_at(d: &Daemon, id: &str) -> f64 {
    let v = d.get_session(id).expect(200, "GET session");
    ts(&v, "expires_at")
}

#[test]
fn create_returns_201_and_a_cold_running_session() {
    let d = Daemon::start(None);
    let before = now_unix();
    let r = d.try_create_session(json!({}));
    let v = r.expect(201, "POST /v1/sessions");
    assert!(
        r.content_type.starts_with("application/json"),
        "content type {:?}",
        r.content_type
    );
    let id = check_session_info(&v);
    assert_eq!(v["image"], default_image(), "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["cwd"], "/workspace", "{v}");
    assert_eq!(v["workspace_id"], Value::Null, "{v}");
    assert_eq!(v["acquire_source"], "cold", "pool is disabled: {v}");
    let created = ts(&v, "created_at");
    assert!(
        created >= before - 2.0 && created <= now_unix() + 2.0,
        "created_at {created} is not now ({before}): {v}"
    );
    // The session is real: its shell answers.
    assert_eq!(d.sh(&id, "echo hello"), "hello\n");
}

#[test]
fn create_accepts_an_explicit_image() {
    let d = Daemon::start(None);
    let v = d.create_session(json!({"image": default_image()}));
    assert_eq!(v["image"], default_image());
    assert_eq!(v["status"], "running");
    if on_docker() {
        // `base` is the native runtime's built-in; docker's images are
        // the engine's.
        d.try_create_session(json!({"image": "base"})).assert_error(
            400,
            "INVALID_IMAGE",
            "image base on docker",
        );
    }
}

#[test]
fn get_returns_the_session() {
    let d = Daemon::start(None);
    let created = d.create_session(json!({}));
    let id = created["id"].as_str().unwrap();
    let got = d.get_session(id).expect(200, "GET session");
    check_session_info(&got);
    for key in [
        "id",
        "image",
        "status",
        "cwd",
        "workspace_id",
        "created_at",
        "acquire_source",
    ] {
        assert_eq!(got[key], created[key], "field {key}: {got} vs {created}");
    }
}

#[test]
fn get_reports_the_shell_cwd() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "cd /tmp");
    let got = d.get_session(&id).expect(200, "GET session");
    assert_eq!(got["cwd"], "/tmp", "{got}");
}

#[test]
fn list_shows_sessions_until_they_are_deleted() {
    let d = Daemon::start(None);
    assert_eq!(
        d.list_sessions(),
        Vec::<Value>::new(),
        "fresh daemon lists sessions"
    );
    let a = d.new_session();
    let b = d.new_session();
    let list = d.list_sessions();
    for s in &list {
        check_session_info(s);
    }
    let mut ids = d.listed_ids();
    ids.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids, want);
    d.delete(&a);
    assert_eq!(d.listed_ids(), vec![b]);
}

#[test]
fn delete_destroys_the_session() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.delete(&id);
    d.get_session(&id)
        .assert_error(404, "SESSION_NOT_FOUND", "GET after DELETE");
    d.exec_with(&id, json!({"cmd": "true"})).assert_error(
        404,
        "SESSION_NOT_FOUND",
        "exec after DELETE",
    );
    d.read_resp(&id, "x")
        .assert_error(404, "SESSION_NOT_FOUND", "fs/read after DELETE");
    d.delete_session(&id)
        .assert_error(404, "SESSION_NOT_FOUND", "second DELETE");
    assert!(
        !d.listed_ids().contains(&id),
        "deleted session still listed"
    );
}

#[test]
fn unknown_session_is_404_on_every_route() {
    let d = Daemon::start(None);
    let id = "no-such-session";
    d.get_session(id)
        .assert_error(404, "SESSION_NOT_FOUND", "GET");
    d.delete_session(id)
        .assert_error(404, "SESSION_NOT_FOUND", "DELETE");
    d.exec_with(id, json!({"cmd": "true"}))
        .assert_error(404, "SESSION_NOT_FOUND", "exec");
    d.get(&format!("/v1/sessions/{id}/stats"))
        .assert_error(404, "SESSION_NOT_FOUND", "stats");
    d.read_resp(id, "x")
        .assert_error(404, "SESSION_NOT_FOUND", "fs/read");
    d.write_with(id, json!({"path": "x", "text": "y"}))
        .assert_error(404, "SESSION_NOT_FOUND", "fs/write");
}

#[test]
fn default_ttl_comes_from_the_config() {
    let d = Daemon::start(Some("session_ttl_seconds: 900\n"));
    let v = d.create_session(json!({}));
    let ttl = ts(&v, "expires_at") - ts(&v, "created_at");
    assert!((ttl - 900.0).abs() <= 1.0, "expires - created = {ttl}: {v}");
}

#[test]
fn env_overrides_the_config_file() {
    let home = DataDir::new();
    let d = Daemon::start_with(
        &home,
        Options {
            config: Some("session_ttl_seconds: 900\n".into()),
            env: vec![("SANDKASTEN_SESSION_TTL_SECONDS".into(), "77".into())],
            ..Options::default()
        },
    );
    let v = d.create_session(json!({}));
    let ttl = ts(&v, "expires_at") - ts(&v, "created_at");
    assert!(
        (ttl - 77.0).abs() <= 1.0,
        "SANDKASTEN_SESSION_TTL_SECONDS=77 over a file saying 900 gave {ttl}: {v}"
    );
}

#[test]
fn ttl_seconds_is_per_session_and_activity_extends_it() {
    let d = Daemon::start(Some("session_ttl_seconds: 1800\n"));
    let v = d.create_session(json!({"ttl_seconds": 600}));
    let id = v["id"].as_str().unwrap().to_string();
    let e0 = ts(&v, "expires_at");
    let ttl = e0 - ts(&v, "created_at");
    assert!((ttl - 600.0).abs() <= 1.0, "expires - created = {ttl}: {v}");

    // The subject is the clock: let time pass between activities so that
    // each extension is visible (timestamps may have whole seconds only).
    let pause = || std::thread::sleep(Duration::from_millis(1500));
    let near_now_plus_ttl = |e: f64, before: f64, after: f64, what: &str| {
        assert!(
            e >= before + 600.0 - 1.0 && e <= after + 600.0 + 1.0,
            "{what}: expires_at {e} is not now + 600 s (now {before}..{after}); the \
             session's own TTL must be used, never the global 1800"
        );
    };

    pause();
    let before = now_unix();
    d.sh(&id, "true");
    let e1 = expires_at(&d, &id);
    near_now_plus_ttl(e1, before, now_unix(), "after exec");
    assert!(
        e1 >= e0 + 1.0,
        "exec did not extend expires_at: {e0} -> {e1}"
    );

    pause();
    let before = now_unix();
    d.write_text(&id, "touch.txt", "x");
    let e2 = expires_at(&d, &id);
    near_now_plus_ttl(e2, before, now_unix(), "after fs/write");
    assert!(
        e2 >= e1 + 1.0,
        "fs/write did not extend expires_at: {e1} -> {e2}"
    );

    pause();
    let before = now_unix();
    d.read(&id, "touch.txt");
    let e3 = expires_at(&d, &id);
    near_now_plus_ttl(e3, before, now_unix(), "after fs/read");
    assert!(
        e3 >= e2 + 1.0,
        "fs/read did not extend expires_at: {e2} -> {e3}"
    );
}

#[test]
fn a_session_with_a_short_ttl_expires_by_itself() {
    let d = Daemon::start(None);
    let v = d.create_session(json!({"ttl_seconds": 2}));
    let id = v["id"].as_str().unwrap().to_string();
    assert!(d.listed_ids().contains(&id), "new session not listed");
    assert!(sandbox_running(&id), "no sandbox of the running session");
    let gone = wait_for(Duration::from_secs(10), || !d.listed_ids().contains(&id));
    assert!(gone, "session with ttl_seconds 2 still listed after 10 s");
    let r = d.get_session(&id);
    assert!(
        r.status == 404 || (r.status == 200 && r.json["status"] != "running"),
        "expired session still answers as running: {} {}",
        r.status,
        r.text
    );
    let r = d.exec_with(&id, json!({"cmd": "true"}));
    assert!(
        r.status == 404 || r.status == 409,
        "exec on an expired session: {} {}",
        r.status,
        r.text
    );
    assert_sandbox_gone(&d.home, &id, "expired session");
}

#[test]
fn unknown_image_is_400_invalid_image() {
    let d = Daemon::start(None);
    d.try_create_session(json!({"image": "no-such-image-e2e"}))
        .assert_error(400, "INVALID_IMAGE", "unknown image");
    assert!(d.listed_ids().is_empty(), "a failed create left a session");
}

#[test]
fn invalid_workspace_ids_are_400_invalid_workspace() {
    let d = Daemon::start(None);
    let too_long = "a".repeat(65);
    for bad in [
        "",
        ".hidden",
        "-dash",
        "a/b",
        "../etc",
        "sp ace",
        "ü",
        too_long.as_str(),
    ] {
        d.try_create_session(json!({"workspace_id": bad}))
            .assert_error(400, "INVALID_WORKSPACE", &format!("workspace_id {bad:?}"));
    }
    assert!(d.listed_ids().is_empty(), "a refused create left a session");
}

#[test]
fn max_sessions_caps_creates_with_503() {
    let d = Daemon::start(Some("max_sessions: 2\n"));
    let a = d.new_session();
    let _b = d.new_session();
    d.try_create_session(json!({})).assert_error(
        503,
        "CAPACITY_EXHAUSTED",
        "third session with max_sessions 2",
    );
    assert_eq!(d.listed_ids().len(), 2);
    d.delete(&a);
    d.new_session();
}

#[test]
fn stats_report_usage_and_the_configured_limit() {
    let d = Daemon::start(Some("defaults:\n  mem_limit_mb: 128\n"));
    let id = d.new_session();
    // The agent starts its shell right after it listens, so a create can
    // answer before the shell exists: run something first.
    d.sh(&id, "true");
    let s0 = d.stats(&id);
    for key in ["memory_bytes", "memory_limit", "cpu_usage_usec", "pids"] {
        assert!(
            s0[key].is_u64(),
            "stats.{key} is not a non-negative integer: {s0}"
        );
    }
    assert_eq!(s0["memory_limit"], 128 * MIB, "{s0}");
    assert!(s0["memory_bytes"].as_u64().unwrap() > 0, "{s0}");
    assert!(
        s0["pids"].as_u64().unwrap() >= 2,
        "agent and shell are at least 2 pids: {s0}"
    );

    d.sh(
        &id,
        "i=0; while [ $i -lt 300000 ]; do i=$((i + 1)); done; echo $i",
    );
    d.sh(&id, "for i in 1 2 3 4; do sleep 30 & done");
    let s1 = d.stats(&id);
    let cpu0 = s0["cpu_usage_usec"].as_u64().unwrap();
    let cpu1 = s1["cpu_usage_usec"].as_u64().unwrap();
    assert!(
        cpu1 >= cpu0 + 100_000,
        "a CPU-bound exec did not show in cpu_usage_usec: {cpu0} -> {cpu1}"
    );
    // pids counts threads, and the agent answers an exec just before that
    // exec's thread exits: either reading may include one exiting thread.
    assert!(
        s1["pids"].as_u64().unwrap() + 1 >= s0["pids"].as_u64().unwrap() + 4,
        "four background sleeps did not show in pids: {s0} -> {s1}"
    );
}

/// On docker the runtime and the image come from `SANDKASTEN_RUNTIME` and
/// `SANDKASTEN_DEFAULT_IMAGE` (the harness sets them); the rest is embedded.
#[test]
fn serve_without_a_config_file_uses_embedded_defaults() {
    let home = DataDir::new();
    let d = Daemon::start_with(
        &home,
        Options {
            config: None,
            ..Options::default()
        },
    );
    let v = d.create_session(json!({}));
    assert_eq!(v["image"], default_image());
    let ttl = ts(&v, "expires_at") - ts(&v, "created_at");
    assert!((ttl - 1800.0).abs() <= 1.0, "default TTL is {ttl}: {v}");
    let id = v["id"].as_str().unwrap();
    assert_eq!(d.sh(id, "echo ok"), "ok\n");
}

mod native_only {
    use super::*;

    /// The daemon makes the cgroup attach fast (`cgroup_favordynmods`,
    /// default true) and says so at start; a sandbox is then in its
    /// cgroups from its first instruction (the launcher's thread joined
    /// them before the clone), with its limits.
    #[test]
    fn the_cgroup_attach_is_fast_and_a_sandbox_is_born_in_its_cgroups() {
        require_native("the docker engine attaches containers itself");
        let d = Daemon::start(None);
        let logs = d.logs();
        assert!(
            logs.contains("cgroup attach: fast path (favordynmods"),
            "{logs}"
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mountinfo
                .lines()
                .any(|l| l.contains(" cgroup") && l.contains("favordynmods")),
            "no cgroup mount with favordynmods:\n{mountinfo}"
        );
        let id = d.create_session(json!({}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        // PID 1 and the shell's processes: in the session's groups only.
        let init = sandbox_init_pid(&id).expect("the sandbox's init");
        let cgroup = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
        let ours: Vec<&str> = cgroup
            .lines()
            .filter(|l| {
                ["memory", "pids", "cpu,", "freezer"]
                    .iter()
                    .any(|c| l.contains(&format!(":{c}")))
            })
            .collect();
        assert!(!ours.is_empty(), "{cgroup}");
        for line in ours {
            assert!(line.ends_with(&format!("/sandkasten/{id}")), "{cgroup}");
        }
        assert_eq!(d.sh(&id, "echo born"), "born\n");
        d.delete(&id);
    }
}
