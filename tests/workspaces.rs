//! Persistent workspaces through HTTP: the seed's agent pattern, the
//! workspace API, session-less file access and its confinement, restarts,
//! quotas, snapshots, export and import. Where the docker runtime differs
//! (docs/api.md, "Choosing a backend": no quotas, no snapshots, no import,
//! export is a live walk) the test asserts the documented answer.
//!
//! Workspace ids come from [`ws_id`]: docker volume names are shared by
//! every daemon on the engine.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

fn ws_get(d: &Daemon, id: &str) -> Resp {
    d.get(&format!("/v1/workspaces/{id}"))
}

fn ws_read(d: &Daemon, ws: &str, path: &str) -> Resp {
    d.send(
        d.request(
            reqwest::Method::GET,
            &format!("/v1/workspaces/{ws}/fs/read"),
        )
        .query(&[("path", path)]),
    )
}

fn ws_write(d: &Daemon, ws: &str, path: &str, text: &str) -> Resp {
    d.post(
        &format!("/v1/workspaces/{ws}/fs/write"),
        &json!({"path": path, "text": text}),
    )
}

fn listed(d: &Daemon) -> Vec<Value> {
    let v = d.get("/v1/workspaces").expect(200, "list workspaces");
    v["workspaces"].as_array().cloned().unwrap_or_default()
}

fn session_on(d: &Daemon, ws: &str) -> String {
    d.create_session(json!({"workspace_id": ws}))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Asserts the docker runtime's answer to a feature it does not have:
/// 400 `UNSUPPORTED` saying so.
#[track_caller]
fn assert_unsupported_on_docker(r: &Resp, what: &str) {
    r.assert_error(400, "UNSUPPORTED", what);
    assert_eq!(r.json["details"]["runtime"], "docker", "{what}");
    let msg = r.json["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("not supported by the docker runtime"),
        "{what}: message {msg:?}"
    );
}

#[test]
fn the_seeds_agent_pattern_works() {
    let d = Daemon::start(None);
    let workspace_id = ws_id("user123-coding");
    // First session
    let s1 = d.create_session(json!({"workspace_id": workspace_id}));
    assert_eq!(s1["workspace_id"], workspace_id.as_str());
    let id1 = s1["id"].as_str().unwrap().to_string();
    d.write_text(&id1, "project.py", "print('hello')");
    d.delete(&id1);
    // Later session - files still there!
    let s2 = d.create_session(json!({"workspace_id": workspace_id}));
    let id2 = s2["id"].as_str().unwrap().to_string();
    assert_eq!(d.read(&id2, "project.py"), b"print('hello')");
    assert_eq!(d.sh(&id2, "cat project.py"), "print('hello')");
    d.delete(&id2);
    // An ephemeral session does not see it and leaves nothing behind.
    let e = d.new_session();
    assert_eq!(d.sh(&e, "ls -A /workspace | wc -l"), "0\n");
    d.delete(&e);
}

#[test]
fn list_get_and_delete_follow_the_contract() {
    let d = Daemon::start(None);
    let ws = ws_id("ws-a");
    let id = session_on(&d, &ws);
    d.write(&id, "data.bin", &[7u8; 1000]);
    let all = listed(&d);
    let w = all
        .iter()
        .find(|w| w["id"] == ws.as_str())
        .unwrap_or_else(|| panic!("{ws} not listed: {all:?}"));
    assert_eq!(w["in_use"], true, "{w}");
    assert!(w["size_bytes"].as_u64().unwrap() >= 1000, "{w}");
    assert!(w["created_at"].as_str().is_some(), "{w}");
    assert!(w["last_used_at"].as_str().is_some(), "{w}");
    assert!(w["labels"].is_object(), "{w}");
    assert!(workspace_on_host(&d.home, &ws), "no storage of {ws}");

    d.del(&format!("/v1/workspaces/{ws}")).assert_error(
        409,
        "WORKSPACE_IN_USE",
        "delete while mounted",
    );
    assert_eq!(
        d.read(&id, "data.bin"),
        vec![7u8; 1000],
        "a refused delete must not touch the files"
    );
    d.delete(&id);
    let w = ws_get(&d, &ws).expect(200, "get workspace");
    assert_eq!(w["in_use"], false, "{w}");
    let v = d
        .del(&format!("/v1/workspaces/{ws}"))
        .expect(200, "delete unused workspace");
    assert_eq!(v["ok"], true);
    ws_get(&d, &ws).assert_error(404, "WORKSPACE_NOT_FOUND", "deleted workspace");
    d.del(&format!("/v1/workspaces/{ws}"))
        .assert_error(404, "WORKSPACE_NOT_FOUND", "delete twice");
    assert!(
        !workspace_on_host(&d.home, &ws),
        "files of a deleted workspace remain (native: its directory; docker: its volume)"
    );
    // A new session with the same id starts empty.
    let id = session_on(&d, &ws);
    assert_eq!(d.sh(&id, "ls -A /workspace | wc -l"), "0\n");
    d.delete(&id);
}

#[test]
fn explicit_create_with_labels_and_conflicts() {
    let d = Daemon::start(None);
    let made = ws_id("made");
    let r = d.post(
        "/v1/workspaces",
        &json!({"id": made, "labels": {"team": "x"}}),
    );
    let w = r.expect(201, "create workspace");
    assert_eq!(w["id"], made.as_str());
    assert_eq!(w["labels"]["team"], "x");
    assert_eq!(w["in_use"], false);
    d.post("/v1/workspaces", &json!({"id": made})).assert_error(
        409,
        "ALREADY_EXISTS",
        "duplicate create",
    );
    d.post("/v1/workspaces", &json!({"id": ".bad"}))
        .assert_error(400, "INVALID_WORKSPACE", "bad id");
    ws_get(&d, &ws_id("nope")).assert_error(404, "WORKSPACE_NOT_FOUND", "unknown workspace");
    // A session mounts the explicitly created workspace.
    let id = session_on(&d, &made);
    assert_eq!(
        d.sh(&id, "stat -c %u /workspace"),
        format!("{}\n", sandbox_uid())
    );
    d.delete(&id);
}

#[test]
fn two_sessions_share_one_workspace_live() {
    let d = Daemon::start(None);
    let ws = ws_id("shared");
    let a = session_on(&d, &ws);
    let b = session_on(&d, &ws);
    d.sh(&a, "echo from-a > note.txt");
    assert_eq!(d.sh(&b, "cat note.txt"), "from-a\n");
    d.delete(&a);
    d.del(&format!("/v1/workspaces/{ws}")).assert_error(
        409,
        "WORKSPACE_IN_USE",
        "still mounted by b",
    );
    d.delete(&b);
}

#[test]
fn session_less_files_round_trip_and_belong_to_the_sandbox_user() {
    let d = Daemon::start(None);
    let ws = ws_id("files");
    d.post("/v1/workspaces", &json!({"id": ws}))
        .expect(201, "create");
    ws_write(&d, &ws, "dir/sub/a.txt", "hello").expect(200, "session-less write");
    let v = ws_read(&d, &ws, "dir/sub/a.txt").expect(200, "session-less read");
    assert_eq!(unb64(v["content_base64"].as_str().unwrap()), b"hello");
    // The same file through both spellings of its path.
    let v = ws_read(&d, &ws, "/workspace/dir/sub/a.txt").expect(200, "read /workspace path");
    assert_eq!(unb64(v["content_base64"].as_str().unwrap()), b"hello");
    let listing = d
        .send(
            d.request(reqwest::Method::GET, &format!("/v1/workspaces/{ws}/fs"))
                .query(&[("path", "dir/sub")]),
        )
        .expect(200, "list");
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a.txt"]);
    ws_read(&d, &ws, "missing.txt").assert_error(404, "FILE_NOT_FOUND", "missing file");
    // A session sees it, owned by the sandbox user.
    let id = session_on(&d, &ws);
    assert_eq!(
        d.sh(&id, "cat dir/sub/a.txt; stat -c %u dir/sub/a.txt"),
        format!("hello{}\n", sandbox_uid())
    );
    d.delete(&id);
}

#[test]
fn session_less_access_never_leaves_the_workspace() {
    let d = Daemon::start(None);
    let marker = HostMarker::in_temp_dir();
    let outside_dir = marker.path.parent().unwrap().to_path_buf();
    let ws = ws_id("jail");
    let id = session_on(&d, &ws);
    // Plant symlinks from inside the sandbox pointing at host paths.
    d.sh(
        &id,
        &format!(
            "ln -s / root; ln -s {m} direct; ln -s ../../../../../../../../.. up; ln -s {o} outdir; ln -s /proc/self/root magic",
            m = marker.path.display(),
            o = outside_dir.display()
        ),
    );
    d.delete(&id);
    let marker_rel = marker.path.strip_prefix("/").unwrap().display().to_string();
    for path in [
        "direct".to_string(),
        format!("root/{marker_rel}"),
        format!("up/{marker_rel}"),
        format!("../../../../{marker_rel}"),
        format!("/{marker_rel}"),
        format!(
            "outdir/{}",
            marker.path.file_name().unwrap().to_string_lossy()
        ),
        format!("magic/{marker_rel}"),
        "root/etc/shadow".to_string(),
    ] {
        let r = ws_read(&d, &ws, &path);
        assert!(
            !r.text.contains(&marker.content) && !r.text.contains("root:"),
            "session-less read of {path} leaked host content: {} {}",
            r.status,
            r.text
        );
        assert!(
            r.status >= 400 && r.status < 500,
            "read of {path}: {} {}",
            r.status,
            r.text
        );
    }
    // Writes through the symlinks land inside the workspace or fail.
    for path in [
        "outdir/planted.txt",
        "up/tmp/planted.txt",
        "root/tmp/planted-root.txt",
    ] {
        let r = ws_write(&d, &ws, path, "x");
        assert!(r.status < 500, "write of {path}: {} {}", r.status, r.text);
    }
    assert!(
        !outside_dir.join("planted.txt").exists(),
        "a session-less write escaped the workspace"
    );
    assert!(
        !std::path::Path::new("/tmp/planted.txt").exists(),
        "a session-less write escaped to /tmp"
    );
    assert!(
        !std::path::Path::new("/tmp/planted-root.txt").exists(),
        "a session-less write escaped to /tmp"
    );
}

#[test]
fn workspaces_survive_a_daemon_sigkill() {
    let home = DataDir::new();
    let d = Daemon::start_in(&home, None);
    let ws = ws_id("durable");
    let id = session_on(&d, &ws);
    d.sh(&id, "echo kept > k.txt");
    d.kill_9();
    drop(d);
    let d = Daemon::start_in(&home, None);
    let w = ws_get(&d, &ws).expect(200, "workspace after restart");
    assert_eq!(
        w["in_use"], true,
        "the reattached session still mounts it: {w}"
    );
    assert_eq!(d.sh(&id, "cat k.txt"), "kept\n");
    d.delete(&id);
    let id = session_on(&d, &ws);
    assert_eq!(d.sh(&id, "cat k.txt"), "kept\n");
    d.delete(&id);
}

#[test]
fn disabled_workspaces_answer_409() {
    let d = Daemon::start(Some("workspace:\n  enabled: false\n"));
    d.try_create_session(json!({"workspace_id": "x"}))
        .assert_error(409, "WORKSPACE_DISABLED", "create with id");
    d.get("/v1/workspaces")
        .assert_error(409, "WORKSPACE_DISABLED", "list");
    d.del("/v1/workspaces/x")
        .assert_error(409, "WORKSPACE_DISABLED", "delete");
    // Ephemeral sessions still work.
    let id = d.new_session();
    assert_eq!(d.sh(&id, "pwd"), "/workspace\n");
    d.delete(&id);
}

#[test]
fn persist_by_default_keeps_a_workspace_named_after_the_session() {
    let d = Daemon::start(Some(
        "workspace:\n  enabled: true\n  persist_by_default: true\n",
    ));
    let s = d.create_session(json!({}));
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["workspace_id"], id.as_str());
    d.sh(&id, "echo x > f");
    d.delete(&id);
    let w = ws_get(&d, &id).expect(200, "the session's workspace is kept");
    assert_eq!(w["in_use"], false);
    let r = ws_read(&d, &id, "f").expect(200, "its file");
    assert_eq!(unb64(r["content_base64"].as_str().unwrap()), b"x\n");
}

#[test]
fn idle_workspaces_are_deleted_by_the_cleanup_policy_but_never_mounted_ones() {
    // 0.00003 days = 2.6 s.
    let d = Daemon::start(Some(
        "workspace:\n  enabled: true\n  max_idle_days: 0.00003\n",
    ));
    let (idle, busy) = (ws_id("idle-a"), ws_id("busy-b"));
    let a = session_on(&d, &idle);
    let b = session_on(&d, &busy);
    d.sh(&a, "echo x > f");
    d.delete(&a);
    assert!(
        wait_for(std::time::Duration::from_secs(15), || ws_get(&d, &idle)
            .status
            == 404),
        "an idle workspace was not deleted: {}",
        ws_get(&d, &idle).text
    );
    assert!(!workspace_on_host(&d.home, &idle), "its files remain");
    assert!(
        d.logs().contains("deleted by the cleanup policy"),
        "the deletion is not logged"
    );
    // Mounted for longer than the idle limit: kept.
    assert_eq!(
        ws_get(&d, &busy).expect(200, "mounted workspace")["in_use"],
        true
    );
    assert_eq!(d.sh(&b, "echo still here"), "still here\n");
    d.delete(&b);
}

#[test]
fn the_total_size_limit_deletes_least_recently_used_workspaces() {
    // 0.000005 GB = 5000 bytes.
    let d = Daemon::start(Some(
        "workspace:\n  enabled: true\n  max_total_gb: 0.000005\n",
    ));
    let (mounted_ws, lru1, lru2) = (ws_id("lru-0-mounted"), ws_id("lru-1"), ws_id("lru-2"));
    let mounted = session_on(&d, &mounted_ws);
    d.sh(&mounted, "head -c 3000 /dev/zero > f");
    for name in [&lru1, &lru2] {
        let id = session_on(&d, name);
        d.sh(&id, "head -c 1500 /dev/zero > f");
        d.delete(&id);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // 6000 bytes > 5000: the least recently used unmounted one goes.
    assert!(
        wait_for(std::time::Duration::from_secs(15), || ws_get(&d, &lru1)
            .status
            == 404),
        "the least recently used workspace was kept: {:?}",
        listed(&d)
    );
    ws_get(&d, &lru2).expect(200, "the most recent one stays");
    ws_get(&d, &mounted_ws).expect(200, "a mounted one is never deleted");
    d.delete(&mounted);
}

/// Native: kernel-enforced quotas. Docker: volumes have no size limit
/// (documented): no quota, a quota on create is refused, and so is
/// `workspace.quota_mb` > 0 at start.
#[test]
fn quotas_are_enforced_by_the_kernel_and_harm_nothing_else() {
    let d = Daemon::start(None);
    if on_docker() {
        return docker_has_no_workspace_quotas(&d);
    }
    let (dflt, small) = (ws_id("dflt"), ws_id("small"));
    // The default quota comes from workspace.quota_mb (10240 MiB).
    let id = session_on(&d, &dflt);
    assert_eq!(
        ws_get(&d, &dflt).expect(200, "get")["quota_bytes"],
        10240u64 * 1024 * 1024
    );
    d.delete(&id);
    // A per-workspace quota at creation.
    let w = d
        .post("/v1/workspaces", &json!({"id": small, "quota_mb": 128}))
        .expect(201, "create with quota");
    assert_eq!(w["quota_bytes"], 128u64 * 1024 * 1024);
    d.post(
        "/v1/workspaces",
        &json!({"id": ws_id("tiny"), "quota_mb": 1}),
    )
    .assert_error(400, "INVALID_REQUEST", "a quota below 128 MiB");
    let s = session_on(&d, &small);
    let other = session_on(&d, &dflt);
    let v = d.exec(&s, "head -c 200M /dev/zero > big; echo rc=$?");
    let out = v["output"].as_str().unwrap();
    assert!(
        out.contains("No space left on device") && out.contains("rc=1"),
        "writing past the quota: {v}"
    );
    // Through the API too the full quota is the client's 507, not a 500.
    d.post(
        &format!("/v1/sessions/{s}/fs/write"),
        &json!({"path": "more", "text": "x".repeat(8 << 20)}),
    )
    .assert_error(507, "STORAGE_FULL", "an API write past the quota");
    d.post(&format!("/v1/workspaces/{small}/snapshots"), &json!({}))
        .assert_error(507, "STORAGE_FULL", "a snapshot of a full workspace");
    // The filesystem stays usable once space is freed, and nothing else is harmed.
    assert_eq!(
        d.sh(
            &s,
            "rm big; sync -f .; head -c 10M /dev/zero > ok && echo fine"
        ),
        "fine\n"
    );
    assert_eq!(
        d.sh(&other, "head -c 50M /dev/zero > f && echo fine"),
        "fine\n"
    );
    let size: u64 = d
        .sh(&s, "df -B1 --output=size /workspace | tail -1 | tr -d ' '")
        .trim()
        .parse()
        .unwrap();
    assert!(
        size <= 128 * 1024 * 1024,
        "the filesystem is bigger than the quota: {size}"
    );
    d.delete(&s);
    d.delete(&other);
    // Session-less access sees the same filesystem.
    let v = ws_read(&d, &small, "ok").expect(200, "read a file of an image workspace");
    assert_eq!(
        unb64(v["content_base64"].as_str().unwrap()).len(),
        10 * 1024 * 1024
    );
}

fn docker_has_no_workspace_quotas(d: &Daemon) {
    let ws = ws_id("dflt");
    let id = session_on(d, &ws);
    assert_eq!(
        ws_get(d, &ws).expect(200, "get")["quota_bytes"],
        Value::Null
    );
    // No limit: more than a native default-sized test quota fits.
    assert_eq!(
        d.sh(
            &id,
            "head -c 209715200 /dev/zero > big && echo fine; rm big"
        ),
        "fine\n"
    );
    d.delete(&id);
    for body in [
        json!({"id": ws_id("small"), "quota_mb": 128}),
        json!({"id": ws_id("small"), "quota_bytes": 128u64 * 1024 * 1024}),
    ] {
        let r = d.post("/v1/workspaces", &body);
        assert_unsupported_on_docker(&r, &format!("create {body}"));
        ws_get(d, body["id"].as_str().unwrap()).assert_error(
            404,
            "WORKSPACE_NOT_FOUND",
            "a refused create left a workspace",
        );
    }
    let r = serve_expecting_refusal("workspace:\n  quota_mb: 1024\n");
    assert!(
        !r.status.success() && r.output.contains("workspace.quota_mb"),
        "workspace.quota_mb > 0 on docker: {r:?}"
    );
}

mod native_only {
    use super::*;

    /// An import whose client goes away stops at its next read of the
    /// archive and leaves the workspace as it was (it ran to its end for
    /// nobody, holding the workspace, and a SIGTERM waited for it).
    #[test]
    fn an_import_whose_client_goes_away_stops_and_changes_nothing() {
        require_native("docker has no import");
        // Without quotas a workspace is a directory, and an import's
        // extraction a directory beside it that the test can see.
        let d = Daemon::start(Some("workspace:\n  quota_mb: 0\n"));
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..30_000 {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(1);
            b.append_data(&mut h, format!("d{}/f{i}", i % 100), &b"x"[..])
                .unwrap();
        }
        let archive = b.into_inner().unwrap();
        // The reference: the same import, to its end.
        let reference = ws_id("imp-ref");
        d.post("/v1/workspaces", &json!({"id": reference}))
            .expect(201, "create");
        let t = Instant::now();
        import(&d, &reference, archive.clone()).expect(200, "import");
        let whole = t.elapsed();

        let ws = ws_id("imp-gone");
        d.post("/v1/workspaces", &json!({"id": ws}))
            .expect(201, "create");
        ws_write(&d, &ws, "keep.txt", "kept").expect(200, "write");
        let port: u16 = d.url.rsplit(':').next().unwrap().parse().unwrap();
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let head = format!(
            "PUT /v1/workspaces/{ws}/import HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/x-tar\r\n\
             Content-Length: {}\r\n\r\n",
            d.key,
            archive.len()
        );
        std::io::Write::write_all(&mut conn, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut conn, &archive).unwrap();
        let dir = d.home.data.join("workspaces");
        let extracting = || {
            std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".import-{ws}-"))
            })
        };
        let t = Instant::now();
        while !extracting() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the import never began"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(conn);
        let t = Instant::now();
        while extracting() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the import never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let stopped = t.elapsed();
        assert!(
            stopped < whole / 2,
            "the import went on for its client that left: {stopped:?} (a whole one: {whole:?})"
        );
        let r = ws_read(&d, &ws, "keep.txt");
        assert_eq!(r.status, 200, "{}", r.text);
        let r = ws_read(&d, &ws, "d0/f0");
        assert_eq!(
            r.status, 404,
            "the abandoned import changed the workspace: {}",
            r.text
        );
    }

    #[test]
    fn a_subvolume_cannot_be_made_inside_a_workspace() {
        require_native("btrfs subvolume ioctls on a quota workspace's btrfs image");
        let d = Daemon::start(None);
        let id = session_on(&d, &ws_id("nosub"));
        // BTRFS_IOC_SUBVOL_CREATE_V2 = 0x50009418 on /workspace.
        let v = d.exec(
            &id,
            "python3 -c \"import fcntl,os,struct\nfd=os.open('/workspace',os.O_RDONLY)\nbuf=bytearray(4096); buf[56:59]=b'sub'\ntry:\n  fcntl.ioctl(fd,0x50009418,buf); print('created')\nexcept OSError as e: print('refused', e.errno)\"",
        );
        assert_eq!(v["output"], "refused 1\n", "{v}");
        d.delete(&id);
    }

    /// Found by the session 13 attack: 1000 links to a 48 MB file were
    /// exported as 1001 copies (50 GB). A file with several names is
    /// exported once, its other names as hard links, and an import makes
    /// them links again.
    #[test]
    fn hard_links_are_exported_once_and_imported_as_links() {
        require_native("workspace import");
        let d = Daemon::start(None);
        let (src, dst) = (ws_id("links-src"), ws_id("links-dst"));
        let s = session_on(&d, &src);
        d.sh(
            &s,
            "head -c 1048576 /dev/urandom > a && for i in $(seq 50); do ln a l$i; done",
        );
        let sum = d.sh(&s, "sha256sum < a");
        d.delete(&s);
        let tar_bytes = export_bytes(&d, &src);
        assert!(
            tar_bytes.len() < 2 << 20,
            "{} bytes of export for one 1 MiB file with 51 names",
            tar_bytes.len()
        );
        d.post("/v1/workspaces", &json!({"id": dst}))
            .expect(201, "create target");
        import(&d, &dst, tar_bytes).expect(200, "import");
        let t = session_on(&d, &dst);
        assert_eq!(d.sh(&t, "sha256sum < l50"), sum);
        assert_eq!(d.sh(&t, "stat -c %h a"), "51\n");
        d.delete(&t);
    }

    /// Found by the session 13 attack: a snapshot or an export of a
    /// workspace full to its quota was a 500. A full disk is 507
    /// `STORAGE_FULL` (or, where the step needs no room, it works).
    #[test]
    fn a_workspace_full_to_its_quota_is_507_not_500() {
        require_native("workspace snapshots");
        let d = Daemon::start(None);
        let ws = ws_id("full");
        d.post("/v1/workspaces", &json!({"id": ws, "quota_mb": 128}))
            .expect(201, "create");
        let s = session_on(&d, &ws);
        d.sh(
            &s,
            "dd if=/dev/urandom of=/workspace/fill bs=1M 2>/dev/null; \
             for i in $(seq 2000); do echo x > /workspace/f$i 2>/dev/null || break; done; true",
        );
        d.delete(&s);
        let snap = d.post(&format!("/v1/workspaces/{ws}/snapshots"), &json!({}));
        assert!(
            snap.status == 201 || (snap.status == 507 && snap.text.contains("STORAGE_FULL")),
            "snapshot of a full workspace: {} {}",
            snap.status,
            snap.text
        );
        let export =
            d.send(d.request(reqwest::Method::GET, &format!("/v1/workspaces/{ws}/export")));
        assert!(
            export.status == 200 || export.status == 507,
            "export of a full workspace: {} {}",
            export.status,
            export.text.chars().take(300).collect::<String>()
        );
    }

    /// Found by the session 13 attack: archives whose entries cannot be
    /// made (a name over 255 bytes, a path over PATH_MAX, a hard link to
    /// itself) were 500s. They are bad archives: 400, the old content kept.
    #[test]
    fn archives_whose_entries_cannot_be_made_are_400() {
        require_native("workspace import");
        let d = Daemon::start(None);
        let ws = ws_id("imp-unmakeable");
        d.post("/v1/workspaces", &json!({"id": ws, "quota_mb": 128}))
            .expect(201, "create");
        ws_write(&d, &ws, "keep.txt", "kept").expect(200, "old content");
        let file = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(1);
            b.append_data(&mut h, path, &b"x"[..]).unwrap();
        };
        let long_name = {
            let mut b = tar::Builder::new(Vec::new());
            file(&mut b, &"n".repeat(300));
            b.into_inner().unwrap()
        };
        let long_path = {
            let mut b = tar::Builder::new(Vec::new());
            file(&mut b, &vec!["d".repeat(200); 30].join("/"));
            b.into_inner().unwrap()
        };
        let self_link = {
            let mut b = tar::Builder::new(Vec::new());
            file(&mut b, "a");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "a", "a").unwrap();
            b.into_inner().unwrap()
        };
        for (what, tar_bytes) in [
            ("a name over 255 bytes", long_name),
            ("a path over PATH_MAX", long_path),
            ("a hard link to itself", self_link),
        ] {
            import(&d, &ws, tar_bytes).assert_error(400, "INVALID_REQUEST", what);
            let v = ws_read(&d, &ws, "keep.txt").expect(200, what);
            let kept = unb64(v["content_base64"].as_str().unwrap());
            assert_eq!(kept, b"kept", "{what}: the old content: {v}");
        }
    }

    /// Found by the session 13 attack: an import checked every parent of
    /// every entry by its path, quadratic in the depth: 12 000 files 1900
    /// levels deep took over 14 minutes of a core (and 1200 files 250 deep
    /// a minute), while the workspace was held. Each parent is checked
    /// once now: 3000 files 1000 levels deep import in seconds, and land.
    #[test]
    fn a_deep_archive_imports_in_linear_time() {
        require_native("workspace import");
        let d = Daemon::start(None);
        let ws = ws_id("imp-deep");
        d.post("/v1/workspaces", &json!({"id": ws, "quota_mb": 256}))
            .expect(201, "create");
        let deep = vec!["a"; 1000].join("/");
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..3000 {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(1);
            b.append_data(&mut h, format!("{deep}/f{i}"), &b"x"[..])
                .unwrap();
        }
        let t = std::time::Instant::now();
        import(&d, &ws, b.into_inner().unwrap()).expect(200, "import");
        eprintln!("3000 files 1000 levels deep imported in {:?}", t.elapsed());
        // A bound far above linear time, far below the quadratic walk's.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "{:?}",
            t.elapsed()
        );
        let s = session_on(&d, &ws);
        assert_eq!(d.sh(&s, &format!("ls /workspace/{deep} | wc -l")), "3000\n");
        d.delete(&s);
    }
}

/// Native: snapshots of a quota workspace, restored when unmounted.
/// Docker: no snapshots (documented): creating one, restoring one and
/// creating a workspace from one are refused.
#[test]
fn snapshot_modify_restore_round_trip() {
    let d = Daemon::start(None);
    let ws = ws_id("snappy");
    let id = session_on(&d, &ws);
    d.sh(&id, "echo v1 > doc.txt; mkdir -p sub; echo keep > sub/a");
    if on_docker() {
        let r = d.post(
            &format!("/v1/workspaces/{ws}/snapshots"),
            &json!({"label": "before"}),
        );
        assert_unsupported_on_docker(&r, "snapshot on docker");
        let list = d
            .get(&format!("/v1/workspaces/{ws}/snapshots"))
            .expect(200, "list snapshots");
        assert_eq!(list["snapshots"], json!([]), "{list}");
        d.delete(&id);
        d.post(
            &format!("/v1/workspaces/{ws}/snapshots/snap-0000000000000000/restore"),
            &json!({}),
        )
        .assert_error(404, "SNAPSHOT_NOT_FOUND", "restore on docker");
        assert_eq!(
            unb64(
                ws_read(&d, &ws, "doc.txt").expect(200, "read")["content_base64"]
                    .as_str()
                    .unwrap()
            ),
            b"v1\n"
        );
        return;
    }
    // Taken while the session is running (and writing in the background).
    d.sh(&id, "(for i in $(seq 200); do echo $i >> bg.log; done) &");
    let snap = d
        .post(
            &format!("/v1/workspaces/{ws}/snapshots"),
            &json!({"label": "before"}),
        )
        .expect(201, "snapshot while mounted");
    let snap_id = snap["id"].as_str().unwrap().to_string();
    assert_eq!(snap["workspace_id"], ws.as_str());
    assert_eq!(snap["label"], "before");
    d.sh(&id, "echo v2 > doc.txt; rm -r sub; echo new > extra");
    d.post(
        &format!("/v1/workspaces/{ws}/snapshots/{snap_id}/restore"),
        &json!({}),
    )
    .assert_error(409, "WORKSPACE_IN_USE", "restore while mounted");
    d.delete(&id);
    let list = d
        .get(&format!("/v1/workspaces/{ws}/snapshots"))
        .expect(200, "list snapshots");
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    d.post(
        &format!("/v1/workspaces/{ws}/snapshots/{snap_id}/restore"),
        &json!({}),
    )
    .expect(200, "restore when unmounted");
    let id = session_on(&d, &ws);
    assert_eq!(
        d.sh(&id, "cat doc.txt sub/a; ls extra 2>/dev/null | wc -l"),
        "v1\nkeep\n0\n"
    );
    // The restored content is writable again and owned by the sandbox user.
    assert_eq!(
        d.sh(&id, "echo v3 > doc.txt && stat -c %u doc.txt"),
        format!("{}\n", sandbox_uid())
    );
    d.delete(&id);
    d.del(&format!("/v1/workspaces/{ws}/snapshots/{snap_id}"))
        .expect(200, "delete snapshot");
    d.del(&format!("/v1/workspaces/{ws}/snapshots/{snap_id}"))
        .assert_error(404, "SNAPSHOT_NOT_FOUND", "deleted snapshot");
    d.post(
        &format!("/v1/workspaces/{ws}/snapshots/snap-00000000/restore"),
        &json!({}),
    )
    .assert_error(404, "SNAPSHOT_NOT_FOUND", "unknown snapshot");
    // Deleting the workspace takes its snapshots along.
    d.post(&format!("/v1/workspaces/{ws}/snapshots"), &json!({}))
        .expect(201, "another snapshot");
    d.del(&format!("/v1/workspaces/{ws}"))
        .expect(200, "delete workspace with snapshots");
    d.get(&format!("/v1/workspaces/{ws}/snapshots"))
        .assert_error(404, "WORKSPACE_NOT_FOUND", "gone");
}

#[test]
fn snapshots_need_a_workspace_with_a_quota() {
    let d = Daemon::start(Some("workspace:\n  enabled: true\n  quota_mb: 0\n"));
    let ws = ws_id("plain");
    let id = session_on(&d, &ws);
    assert_eq!(
        ws_get(&d, &ws).expect(200, "get")["quota_bytes"],
        Value::Null
    );
    d.post(&format!("/v1/workspaces/{ws}/snapshots"), &json!({}))
        .assert_error(400, "UNSUPPORTED", "snapshot of a directory workspace");
    d.delete(&id);
}

// --- export, import, from_snapshot -----------------------------------------

/// Every entry below /workspace (not the root), sorted: path, mode, owner,
/// mtime, and the symlink target or the content's sha256 (bash and
/// coreutils or busybox only, as [`tar_listing`] prints an archive).
const LISTING: &str = r#"cd /workspace && find . -mindepth 1 | while IFS= read -r p; do
  if [ -L "$p" ]; then what="l $(readlink "$p")"
  elif [ -d "$p" ]; then what=d
  else what="f $(sha256sum < "$p" | cut -d' ' -f1)"; fi
  echo "$p $(stat -c '%a %u:%g %Y' "$p") $what"
done | LC_ALL=C sort"#;

/// A tree with a binary file, modes, a subdir and a symlink.
const TREE: &str = "head -c 16384 /dev/urandom > bin.dat; \
    mkdir -p sub/deep; printf '#!/bin/sh\\necho hi\\n' > sub/deep/run.sh; chmod 750 sub/deep/run.sh; \
    echo secret > sub/private; chmod 600 sub/private; chmod 700 sub/deep; \
    ln -s sub/deep/run.sh link; touch -d '2020-01-02 03:04:05' sub/private";

/// An archive's entries as [`LISTING`] prints a tree.
fn tar_listing(tar_bytes: &[u8]) -> String {
    let mut lines = Vec::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let path = e.path().unwrap().to_string_lossy().to_string();
        let what = match h.entry_type() {
            tar::EntryType::Symlink => {
                format!("l {}", e.link_name().unwrap().unwrap().display())
            }
            tar::EntryType::Directory => "d".to_string(),
            _ => {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                format!("f {:x}", Sha256::digest(&data))
            }
        };
        lines.push(format!(
            "./{} {:o} {}:{} {} {what}",
            path.trim_end_matches('/'),
            h.mode().unwrap() & 0o7777,
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap()
        ));
    }
    lines.sort();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn export_bytes(d: &Daemon, ws: &str) -> Vec<u8> {
    let r = d
        .request(reqwest::Method::GET, &format!("/v1/workspaces/{ws}/export"))
        .send()
        .expect("export request");
    assert_eq!(r.status().as_u16(), 200, "export {ws}");
    assert_eq!(
        r.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/x-tar")
    );
    r.bytes().expect("export body").to_vec()
}

fn import(d: &Daemon, ws: &str, tar: Vec<u8>) -> Resp {
    d.send(
        d.request(reqwest::Method::PUT, &format!("/v1/workspaces/{ws}/import"))
            .header("content-type", "application/x-tar")
            .body(tar),
    )
}

/// The code of a refused import: a bad archive on native; on docker, which
/// has no import, `UNSUPPORTED` for every archive.
fn import_refusal() -> &'static str {
    if on_docker() {
        "UNSUPPORTED"
    } else {
        "INVALID_REQUEST"
    }
}

/// A tar whose entries carry exactly these (possibly hostile) names.
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Export (while mounted) is exact on both runtimes; import into another
/// workspace reproduces the tree on native and is refused on docker
/// (documented: not yet).
#[test]
fn export_then_import_into_another_workspace_is_exact() {
    let d = Daemon::start(None);
    let (src, dst) = (ws_id("exp-src"), ws_id("exp-dst"));
    let s = session_on(&d, &src);
    d.sh(&s, TREE);
    let before = d.sh(&s, LISTING);
    let u = sandbox_uid();
    assert!(before.contains(&format!("./link 777 {u}:{u}")), "{before}");
    // Exported while mounted.
    let tar_bytes = export_bytes(&d, &src);
    d.delete(&s);
    assert_eq!(
        tar_listing(&tar_bytes),
        before,
        "the export differs from the tree"
    );
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(
            h.uid().unwrap(),
            u64::from(sandbox_uid()),
            "owner in the sandbox's view"
        );
        if h.entry_type() == tar::EntryType::Symlink {
            assert_eq!(
                e.link_name().unwrap().unwrap().to_str(),
                Some("sub/deep/run.sh")
            );
        }
        names.push(e.path().unwrap().to_string_lossy().to_string());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "bin.dat",
            "link",
            "sub",
            "sub/deep",
            "sub/deep/run.sh",
            "sub/private"
        ]
    );

    d.post("/v1/workspaces", &json!({"id": dst}))
        .expect(201, "create target");
    ws_write(&d, &dst, "old.txt", "replaced").expect(200, "old content");
    if on_docker() {
        assert_unsupported_on_docker(&import(&d, &dst, tar_bytes.clone()), "import");
        let v = ws_read(&d, &dst, "old.txt").expect(200, "old content after a refused import");
        assert_eq!(unb64(v["content_base64"].as_str().unwrap()), b"replaced");
    } else {
        import(&d, &dst, tar_bytes.clone()).expect(200, "import");
        let t = session_on(&d, &dst);
        assert_eq!(d.sh(&t, LISTING), before, "imported tree differs");
        // Import while mounted is refused and changes nothing.
        import(
            &d,
            &dst,
            raw_tar(&[("x", tar::EntryType::Regular, b"x", "")]),
        )
        .assert_error(409, "WORKSPACE_IN_USE", "import while mounted");
        assert_eq!(d.sh(&t, LISTING), before);
        d.delete(&t);
    }
    import(&d, &ws_id("no-such-ws"), tar_bytes).assert_error(
        404,
        "WORKSPACE_NOT_FOUND",
        "import does not create",
    );
    d.get(&format!("/v1/workspaces/{}/export", ws_id("no-such-ws")))
        .assert_error(404, "WORKSPACE_NOT_FOUND", "export of an unknown workspace");
}

/// Native: the export of a quota workspace is point-in-time while a
/// session writes. Docker: a live walk (documented): not one moment, but
/// every entry is whole as read (a file caught between its creation and
/// its write is empty, never torn).
#[test]
fn export_while_a_session_writes() {
    let d = Daemon::start(None);
    let ws = ws_id("exp-live");
    let s = session_on(&d, &ws);
    d.sh(
        &s,
        "(for i in $(seq 1 3000); do echo $i > f_$i; done; touch done) >/dev/null 2>&1 &",
    );
    std::thread::sleep(std::time::Duration::from_millis(150));
    let tar_bytes = export_bytes(&d, &ws);
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut seen = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        if let Some(n) = name.strip_prefix("f_") {
            seen.insert(n.parse::<u32>().unwrap(), data);
        }
    }
    if on_docker() {
        assert!(!seen.is_empty(), "the export saw none of the files");
        for (n, data) in &seen {
            assert!(
                data.is_empty() || data == &format!("{n}\n"),
                "file f_{n} torn in a live export: {data:?}"
            );
        }
        d.delete(&s);
        return;
    }
    // The snapshot moment: files 1..=k exist, nothing after k; files
    // 1..e complete, and the few written while the snapshot was being
    // taken (e..=k, after btrfs flushed the data) without their data yet.
    let k = seen.keys().max().copied().unwrap_or(0);
    assert_eq!(
        seen.len() as u32,
        k,
        "gaps in the export: {:?}",
        seen.keys()
    );
    let empty: Vec<u32> = seen
        .iter()
        .filter(|(_, d)| d.is_empty())
        .map(|(n, _)| *n)
        .collect();
    let e = empty.first().copied().unwrap_or(k + 1);
    assert_eq!(
        empty,
        (e..=k).collect::<Vec<_>>(),
        "empty files inside the export"
    );
    assert!(e > 1 || k == 0, "no complete file at all (k={k})");
    for (n, data) in seen.range(..e) {
        assert_eq!(data, &format!("{n}\n"), "file f_{n}");
    }
    d.delete(&s);
}

/// No archive writes outside the workspace (native: refused as invalid;
/// docker: every import is unsupported, documented) and a refusal keeps the
/// old content.
#[test]
fn import_never_writes_outside_the_workspace() {
    let d = Daemon::start(None);
    let ws = ws_id("imp-evil");
    d.post("/v1/workspaces", &json!({"id": ws}))
        .expect(201, "create");
    ws_write(&d, &ws, "keep.txt", "kept").expect(200, "old content");
    let outside = HostMarker::in_temp_dir();
    let dir = outside.path.parent().unwrap().to_string_lossy().to_string();
    let abs = format!("{dir}/abs-{}", random_hex(6));
    for (what, tar_bytes) in [
        (
            "..",
            raw_tar(&[("../evil", tar::EntryType::Regular, b"x", "")]),
        ),
        (
            "nested ..",
            raw_tar(&[("a/../../evil", tar::EntryType::Regular, b"x", "")]),
        ),
        (
            "absolute",
            raw_tar(&[(&abs, tar::EntryType::Regular, b"x", "")]),
        ),
        (
            "below a symlink",
            raw_tar(&[
                ("l", tar::EntryType::Symlink, b"", &dir),
                ("l/evil", tar::EntryType::Regular, b"x", ""),
            ]),
        ),
        (
            "directory below a symlink",
            raw_tar(&[
                ("l", tar::EntryType::Symlink, b"", &dir),
                ("l/sub/", tar::EntryType::Directory, b"", ""),
            ]),
        ),
    ] {
        import(&d, &ws, tar_bytes).assert_error(400, import_refusal(), what);
    }
    assert!(!Path::new(&abs).exists());
    assert!(!Path::new(&dir).join("evil").exists());
    assert!(!Path::new(&dir).join("sub").exists());
    assert_eq!(
        std::fs::read_to_string(&outside.path).unwrap(),
        outside.content
    );
    // The old content is intact after every refusal.
    let v = ws_read(&d, &ws, "keep.txt").expect(200, "old file");
    assert_eq!(unb64(v["content_base64"].as_str().unwrap()), b"kept");
    import(&d, &ws, b"not a tar at all, just text".repeat(40)).assert_error(
        400,
        import_refusal(),
        "garbage",
    );
    // A symlink pointing outside is stored as it is (it resolves inside
    // the sandbox), and files belong to the sandbox user.
    let harmless = raw_tar(&[
        ("l", tar::EntryType::Symlink, b"", "/etc/passwd"),
        ("f", tar::EntryType::Regular, b"data", ""),
    ]);
    if on_docker() {
        assert_unsupported_on_docker(&import(&d, &ws, harmless), "import on docker");
        return;
    }
    import(&d, &ws, harmless).expect(200, "harmless archive");
    let s = session_on(&d, &ws);
    assert_eq!(
        d.sh(
            &s,
            "readlink l; stat -c %u f; ls keep.txt 2>&1 | wc -l; cat f"
        ),
        format!("/etc/passwd\n{}\n1\ndata", sandbox_uid())
    );
    d.delete(&s);
}

/// Native: a workspace made from a snapshot equals it. Docker: no
/// snapshots to make one from (documented).
#[test]
fn a_workspace_from_a_snapshot_equals_the_snapshot() {
    let d = Daemon::start(None);
    let (src, dst) = (ws_id("fs-src"), ws_id("fs-dst"));
    let s = session_on(&d, &src);
    d.sh(&s, TREE);
    let at_snapshot = d.sh(&s, LISTING);
    let r = d.post(&format!("/v1/workspaces/{src}/snapshots"), &json!({}));
    if on_docker() {
        assert_unsupported_on_docker(&r, "snapshot on docker");
        d.post(
            "/v1/workspaces",
            &json!({"id": dst, "from_snapshot": {"workspace_id": src, "snapshot_id": "snap-0000000000000000"}}),
        )
        .assert_error(404, "SNAPSHOT_NOT_FOUND", "from_snapshot on docker");
        ws_get(&d, &dst).assert_error(404, "WORKSPACE_NOT_FOUND", "nothing created");
        d.delete(&s);
        return;
    }
    let snap = r.expect(201, "snapshot")["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sh(&s, "echo changed > bin.dat; rm -r sub");
    let w = d
        .post(
            "/v1/workspaces",
            &json!({"id": dst, "from_snapshot": {"workspace_id": src, "snapshot_id": snap}}),
        )
        .expect(201, "create from snapshot (source mounted)");
    let src_info = d
        .get(&format!("/v1/workspaces/{src}"))
        .expect(200, "source");
    assert_eq!(
        w["quota_bytes"], src_info["quota_bytes"],
        "the source's quota"
    );
    d.delete(&s);
    let t = session_on(&d, &dst);
    assert_eq!(d.sh(&t, LISTING), at_snapshot);
    d.delete(&t);
    let x = ws_id("fs-x");
    d.post(
        "/v1/workspaces",
        &json!({"id": x, "from_snapshot": {"workspace_id": src, "snapshot_id": "snap-0000000000000000"}}),
    )
    .assert_error(404, "SNAPSHOT_NOT_FOUND", "unknown snapshot");
    ws_get(&d, &x).assert_error(404, "WORKSPACE_NOT_FOUND", "nothing created");
}

#[test]
fn directory_workspaces_export_and_import_too() {
    let d = Daemon::start(Some("workspace:\n  enabled: true\n  quota_mb: 0\n"));
    let (src, dst) = (ws_id("plain-src"), ws_id("plain-dst"));
    let s = session_on(&d, &src);
    d.sh(&s, TREE);
    let before = d.sh(&s, LISTING);
    d.delete(&s);
    let tar_bytes = export_bytes(&d, &src);
    assert_eq!(
        tar_listing(&tar_bytes),
        before,
        "the export differs from the tree"
    );
    d.post("/v1/workspaces", &json!({"id": dst}))
        .expect(201, "create target");
    if on_docker() {
        assert_unsupported_on_docker(&import(&d, &dst, tar_bytes), "import on docker");
        return;
    }
    import(&d, &dst, tar_bytes).expect(200, "import");
    let t = session_on(&d, &dst);
    assert_eq!(d.sh(&t, LISTING), before);
    d.delete(&t);
}

/// Native: an import over the quota is refused and keeps the old content.
/// Docker: neither quotas nor import (documented).
#[test]
fn an_import_over_the_quota_is_refused_and_keeps_the_old_content() {
    let d = Daemon::start(None);
    let ws = ws_id("imp-full");
    let r = d.post("/v1/workspaces", &json!({"id": ws, "quota_mb": 128}));
    if on_docker() {
        assert_unsupported_on_docker(&r, "a quota on docker");
        d.post("/v1/workspaces", &json!({"id": ws}))
            .expect(201, "create without a quota");
        let tar_bytes = raw_tar(&[("new.bin", tar::EntryType::Regular, b"new", "")]);
        assert_unsupported_on_docker(&import(&d, &ws, tar_bytes), "import on docker");
        return;
    }
    r.expect(201, "create with quota");
    let s = session_on(&d, &ws);
    d.sh(&s, "head -c 83886080 /dev/urandom > old.bin; sync -f .");
    let sum = d.sh(&s, "md5sum old.bin");
    d.delete(&s);
    // 60 MiB more does not fit next to the 80 MiB kept until the swap.
    let mut b = tar::Builder::new(Vec::new());
    let data = random_bytes(60 * 1024 * 1024);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "new.bin", &data[..]).unwrap();
    let r = import(&d, &ws, b.into_inner().unwrap());
    r.assert_error(400, "INVALID_REQUEST", "import over the quota");
    assert!(r.text.contains("quota"), "{}", r.text);
    let s = session_on(&d, &ws);
    assert_eq!(d.sh(&s, "md5sum old.bin; ls"), format!("{sum}old.bin\n"));
    d.delete(&s);
}

#[test]
fn an_abandoned_export_releases_the_workspace() {
    let d = Daemon::start(None);
    let ws = ws_id("exp-gone");
    let s = session_on(&d, &ws);
    d.sh(&s, "head -c 52428800 /dev/urandom > big.bin");
    d.delete(&s);
    let mut r = d
        .request(reqwest::Method::GET, &format!("/v1/workspaces/{ws}/export"))
        .send()
        .expect("export request");
    let mut first = [0u8; 1024];
    r.read_exact(&mut first).unwrap();
    drop(r);
    // The export stops, its temporary snapshot goes, and the workspace
    // can be deleted.
    assert!(
        wait_for(std::time::Duration::from_secs(10), || {
            d.del(&format!("/v1/workspaces/{ws}")).status == 200
        }),
        "workspace still held after the client went away"
    );
    assert!(
        !d.logs().contains("temporary snapshot"),
        "the temporary snapshot was not deleted: {}",
        d.logs()
    );
    assert!(!workspace_on_host(&d.home, &ws), "its storage remains");
}
