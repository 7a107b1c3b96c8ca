//! Persistent workspaces through HTTP: the seed's agent pattern, the
//! workspace API, session-less file access and its confinement, restarts.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

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

#[test]
fn the_seeds_agent_pattern_works_verbatim() {
    let d = Daemon::start(None);
    let workspace_id = "user123-coding";
    // First session
    let s1 = d.create_session(json!({"workspace_id": workspace_id}));
    assert_eq!(s1["workspace_id"], workspace_id);
    let id1 = s1["id"].as_str().unwrap().to_string();
    d.write_text(&id1, "project.py", "print('hello')");
    d.delete(&id1);
    // Later session - files still there!
    let s2 = d.create_session(json!({"workspace_id": workspace_id}));
    let id2 = s2["id"].as_str().unwrap().to_string();
    assert_eq!(d.read(&id2, "project.py"), b"print('hello')");
    assert_eq!(d.sh(&id2, "python3 project.py"), "hello\n");
    d.delete(&id2);
    // An ephemeral session does not see it and leaves nothing behind.
    let e = d.new_session();
    assert_eq!(d.sh(&e, "ls -A /workspace | wc -l"), "0\n");
    d.delete(&e);
}

#[test]
fn list_get_and_delete_follow_the_contract() {
    let d = Daemon::start(None);
    let id = d.create_session(json!({"workspace_id": "ws-a"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.write(&id, "data.bin", &[7u8; 1000]);
    let all = listed(&d);
    let w = all
        .iter()
        .find(|w| w["id"] == "ws-a")
        .unwrap_or_else(|| panic!("ws-a not listed: {all:?}"));
    assert_eq!(w["in_use"], true, "{w}");
    assert!(w["size_bytes"].as_u64().unwrap() >= 1000, "{w}");
    assert!(w["created_at"].as_str().is_some(), "{w}");
    assert!(w["last_used_at"].as_str().is_some(), "{w}");
    assert!(w["labels"].is_object(), "{w}");

    d.del("/v1/workspaces/ws-a")
        .assert_error(409, "WORKSPACE_IN_USE", "delete while mounted");
    assert_eq!(
        d.read(&id, "data.bin"),
        vec![7u8; 1000],
        "a refused delete must not touch the files"
    );
    d.delete(&id);
    let w = ws_get(&d, "ws-a").expect(200, "get workspace");
    assert_eq!(w["in_use"], false, "{w}");
    let v = d
        .del("/v1/workspaces/ws-a")
        .expect(200, "delete unused workspace");
    assert_eq!(v["ok"], true);
    ws_get(&d, "ws-a").assert_error(404, "WORKSPACE_NOT_FOUND", "deleted workspace");
    d.del("/v1/workspaces/ws-a")
        .assert_error(404, "WORKSPACE_NOT_FOUND", "delete twice");
    assert!(
        !d.home.data.join("workspaces/ws-a").exists(),
        "files of a deleted workspace remain"
    );
    // A new session with the same id starts empty.
    let id = d.create_session(json!({"workspace_id": "ws-a"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(d.sh(&id, "ls -A /workspace | wc -l"), "0\n");
    d.delete(&id);
}

#[test]
fn explicit_create_with_labels_and_conflicts() {
    let d = Daemon::start(None);
    let r = d.post(
        "/v1/workspaces",
        &json!({"id": "made", "labels": {"team": "x"}}),
    );
    let w = r.expect(201, "create workspace");
    assert_eq!(w["id"], "made");
    assert_eq!(w["labels"]["team"], "x");
    assert_eq!(w["in_use"], false);
    d.post("/v1/workspaces", &json!({"id": "made"}))
        .assert_error(409, "ALREADY_EXISTS", "duplicate create");
    d.post("/v1/workspaces", &json!({"id": ".bad"}))
        .assert_error(400, "INVALID_WORKSPACE", "bad id");
    ws_get(&d, "nope").assert_error(404, "WORKSPACE_NOT_FOUND", "unknown workspace");
    // A session mounts the explicitly created workspace.
    let id = d.create_session(json!({"workspace_id": "made"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(d.sh(&id, "stat -c %u /workspace"), "1000\n");
    d.delete(&id);
}

#[test]
fn two_sessions_share_one_workspace_live() {
    let d = Daemon::start(None);
    let a = d.create_session(json!({"workspace_id": "shared"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = d.create_session(json!({"workspace_id": "shared"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sh(&a, "echo from-a > note.txt");
    assert_eq!(d.sh(&b, "cat note.txt"), "from-a\n");
    d.delete(&a);
    d.del("/v1/workspaces/shared")
        .assert_error(409, "WORKSPACE_IN_USE", "still mounted by b");
    d.delete(&b);
}

#[test]
fn session_less_files_round_trip_and_belong_to_the_sandbox_user() {
    let d = Daemon::start(None);
    d.post("/v1/workspaces", &json!({"id": "files"}))
        .expect(201, "create");
    ws_write(&d, "files", "dir/sub/a.txt", "hello").expect(200, "session-less write");
    let v = ws_read(&d, "files", "dir/sub/a.txt").expect(200, "session-less read");
    assert_eq!(unb64(v["content_base64"].as_str().unwrap()), b"hello");
    // The same file through both spellings of its path.
    let v = ws_read(&d, "files", "/workspace/dir/sub/a.txt").expect(200, "read /workspace path");
    assert_eq!(unb64(v["content_base64"].as_str().unwrap()), b"hello");
    let listing = d
        .send(
            d.request(reqwest::Method::GET, "/v1/workspaces/files/fs")
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
    ws_read(&d, "files", "missing.txt").assert_error(404, "FILE_NOT_FOUND", "missing file");
    // A session sees it, owned by uid 1000 inside.
    let id = d.create_session(json!({"workspace_id": "files"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.sh(&id, "cat dir/sub/a.txt; stat -c %u dir/sub/a.txt"),
        "hello1000\n"
    );
    d.delete(&id);
}

#[test]
fn session_less_access_never_leaves_the_workspace() {
    let d = Daemon::start(None);
    let marker = HostMarker::in_temp_dir();
    let outside_dir = marker.path.parent().unwrap().to_path_buf();
    let id = d.create_session(json!({"workspace_id": "jail"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
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
        let r = ws_read(&d, "jail", &path);
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
        let r = ws_write(&d, "jail", path, "x");
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
    let id = d.create_session(json!({"workspace_id": "durable"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sh(&id, "echo kept > k.txt");
    d.kill_9();
    drop(d);
    let d = Daemon::start_in(&home, None);
    let w = ws_get(&d, "durable").expect(200, "workspace after restart");
    assert_eq!(
        w["in_use"], true,
        "the reattached session still mounts it: {w}"
    );
    assert_eq!(d.sh(&id, "cat k.txt"), "kept\n");
    d.delete(&id);
    let id = d.create_session(json!({"workspace_id": "durable"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
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
}

#[test]
fn idle_workspaces_are_deleted_by_the_cleanup_policy_but_never_mounted_ones() {
    // 0.00003 days = 2.6 s.
    let d = Daemon::start(Some(
        "workspace:\n  enabled: true\n  max_idle_days: 0.00003\n",
    ));
    let a = d.create_session(json!({"workspace_id": "idle-a"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = d.create_session(json!({"workspace_id": "busy-b"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sh(&a, "echo x > f");
    d.delete(&a);
    assert!(
        wait_for(std::time::Duration::from_secs(15), || ws_get(&d, "idle-a")
            .status
            == 404),
        "an idle workspace was not deleted: {}",
        ws_get(&d, "idle-a").text
    );
    assert!(
        !d.home.data.join("workspaces/idle-a").exists(),
        "its files remain"
    );
    assert!(
        d.logs().contains("deleted by the cleanup policy"),
        "the deletion is not logged"
    );
    // Mounted for longer than the idle limit: kept.
    assert_eq!(
        ws_get(&d, "busy-b").expect(200, "mounted workspace")["in_use"],
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
    let mounted = d.create_session(json!({"workspace_id": "lru-0-mounted"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sh(&mounted, "head -c 3000 /dev/zero > f");
    for name in ["lru-1", "lru-2"] {
        let id = d.create_session(json!({"workspace_id": name}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        d.sh(&id, "head -c 1500 /dev/zero > f");
        d.delete(&id);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // 6000 bytes > 5000: the least recently used unmounted one goes.
    assert!(
        wait_for(std::time::Duration::from_secs(15), || ws_get(&d, "lru-1")
            .status
            == 404),
        "the least recently used workspace was kept: {:?}",
        listed(&d)
    );
    ws_get(&d, "lru-2").expect(200, "the most recent one stays");
    ws_get(&d, "lru-0-mounted").expect(200, "a mounted one is never deleted");
    d.delete(&mounted);
}

#[test]
fn quotas_are_enforced_by_the_kernel_and_harm_nothing_else() {
    let d = Daemon::start(None);
    // The default quota comes from workspace.quota_mb (10240 MiB).
    let id = d.create_session(json!({"workspace_id": "dflt"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ws_get(&d, "dflt").expect(200, "get")["quota_bytes"],
        10240u64 * 1024 * 1024
    );
    d.delete(&id);
    // A per-workspace quota at creation.
    let w = d
        .post("/v1/workspaces", &json!({"id": "small", "quota_mb": 128}))
        .expect(201, "create with quota");
    assert_eq!(w["quota_bytes"], 128u64 * 1024 * 1024);
    d.post("/v1/workspaces", &json!({"id": "tiny", "quota_mb": 1}))
        .assert_error(400, "INVALID_REQUEST", "a quota below 128 MiB");
    let s = d.create_session(json!({"workspace_id": "small"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = d.create_session(json!({"workspace_id": "dflt"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = d.exec(&s, "head -c 200M /dev/zero > big; echo rc=$?");
    let out = v["output"].as_str().unwrap();
    assert!(
        out.contains("No space left on device") && out.contains("rc=1"),
        "writing past the quota: {v}"
    );
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
    let v = ws_read(&d, "small", "ok").expect(200, "read a file of an image workspace");
    assert_eq!(
        unb64(v["content_base64"].as_str().unwrap()).len(),
        10 * 1024 * 1024
    );
}

#[test]
fn a_subvolume_cannot_be_made_inside_a_workspace() {
    let d = Daemon::start(None);
    let id = d.create_session(json!({"workspace_id": "nosub"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    // BTRFS_IOC_SUBVOL_CREATE_V2 = 0x50009418 on /workspace.
    let v = d.exec(
        &id,
        "python3 -c \"import fcntl,os,struct\nfd=os.open('/workspace',os.O_RDONLY)\nbuf=bytearray(4096); buf[56:59]=b'sub'\ntry:\n  fcntl.ioctl(fd,0x50009418,buf); print('created')\nexcept OSError as e: print('refused', e.errno)\"",
    );
    assert_eq!(v["output"], "refused 1\n", "{v}");
    d.delete(&id);
}

#[test]
fn snapshot_modify_restore_round_trip() {
    let d = Daemon::start(None);
    let id = d.create_session(json!({"workspace_id": "snappy"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sh(&id, "echo v1 > doc.txt; mkdir -p sub; echo keep > sub/a");
    // Taken while the session is running (and writing in the background).
    d.sh(&id, "(for i in $(seq 200); do echo $i >> bg.log; done) &");
    let snap = d
        .post(
            "/v1/workspaces/snappy/snapshots",
            &json!({"label": "before"}),
        )
        .expect(201, "snapshot while mounted");
    let snap_id = snap["id"].as_str().unwrap().to_string();
    assert_eq!(snap["workspace_id"], "snappy");
    assert_eq!(snap["label"], "before");
    d.sh(&id, "echo v2 > doc.txt; rm -r sub; echo new > extra");
    d.post(
        &format!("/v1/workspaces/snappy/snapshots/{snap_id}/restore"),
        &json!({}),
    )
    .assert_error(409, "WORKSPACE_IN_USE", "restore while mounted");
    d.delete(&id);
    let list = d
        .get("/v1/workspaces/snappy/snapshots")
        .expect(200, "list snapshots");
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    d.post(
        &format!("/v1/workspaces/snappy/snapshots/{snap_id}/restore"),
        &json!({}),
    )
    .expect(200, "restore when unmounted");
    let id = d.create_session(json!({"workspace_id": "snappy"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.sh(&id, "cat doc.txt sub/a; ls extra 2>/dev/null | wc -l"),
        "v1\nkeep\n0\n"
    );
    // The restored content is writable again and owned by the sandbox user.
    assert_eq!(
        d.sh(&id, "echo v3 > doc.txt && stat -c %u doc.txt"),
        "1000\n"
    );
    d.delete(&id);
    d.del(&format!("/v1/workspaces/snappy/snapshots/{snap_id}"))
        .expect(200, "delete snapshot");
    d.del(&format!("/v1/workspaces/snappy/snapshots/{snap_id}"))
        .assert_error(404, "SNAPSHOT_NOT_FOUND", "deleted snapshot");
    d.post(
        "/v1/workspaces/snappy/snapshots/snap-00000000/restore",
        &json!({}),
    )
    .assert_error(404, "SNAPSHOT_NOT_FOUND", "unknown snapshot");
    // Deleting the workspace takes its snapshots along.
    d.post("/v1/workspaces/snappy/snapshots", &json!({}))
        .expect(201, "another snapshot");
    d.del("/v1/workspaces/snappy")
        .expect(200, "delete workspace with snapshots");
    d.get("/v1/workspaces/snappy/snapshots")
        .assert_error(404, "WORKSPACE_NOT_FOUND", "gone");
}

#[test]
fn snapshots_need_a_workspace_with_a_quota() {
    let d = Daemon::start(Some("workspace:\n  enabled: true\n  quota_mb: 0\n"));
    let id = d.create_session(json!({"workspace_id": "plain"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.get("/v1/workspaces/plain").expect(200, "get")["quota_bytes"],
        Value::Null
    );
    d.post("/v1/workspaces/plain/snapshots", &json!({}))
        .assert_error(400, "INVALID_REQUEST", "snapshot of a directory workspace");
    d.delete(&id);
}

// --- export, import, from_snapshot -----------------------------------------

/// Every entry below /workspace (not the root): path, type, mode, owner,
/// mtime, and the symlink target or the content's sha256.
const LISTING: &str = r#"cd /workspace && python3 -c "
import os, hashlib
out = []
for root, dirs, files in os.walk('.'):
    for n in dirs + files:
        p = os.path.join(root, n)
        st = os.lstat(p)
        if os.path.islink(p):
            what = 'l ' + os.readlink(p)
        elif os.path.isdir(p):
            what = 'd'
        else:
            what = 'f ' + hashlib.sha256(open(p, 'rb').read()).hexdigest()
        out.append('%s %o %d:%d %d %s' % (p, st.st_mode & 0o7777, st.st_uid, st.st_gid, int(st.st_mtime), what))
print('\n'.join(sorted(out)))
""#;

/// A tree with a binary file, modes, a subdir and a symlink.
const TREE: &str = "python3 -c \"open('bin.dat','wb').write(bytes(range(256))*64)\"; \
    mkdir -p sub/deep; printf '#!/bin/sh\\necho hi\\n' > sub/deep/run.sh; chmod 750 sub/deep/run.sh; \
    echo secret > sub/private; chmod 600 sub/private; chmod 700 sub/deep; \
    ln -s sub/deep/run.sh link; touch -d '2020-01-02 03:04:05' sub/private";

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

fn session_on(d: &Daemon, ws: &str) -> String {
    d.create_session(json!({"workspace_id": ws}))["id"]
        .as_str()
        .unwrap()
        .to_string()
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

#[test]
fn export_then_import_into_another_workspace_is_exact() {
    let d = Daemon::start(None);
    let s = session_on(&d, "exp-src");
    d.sh(&s, TREE);
    let before = d.sh(&s, LISTING);
    assert!(before.contains("./link 777 1000:1000"), "{before}");
    // Exported while mounted.
    let tar_bytes = export_bytes(&d, "exp-src");
    d.delete(&s);
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.uid().unwrap(), 1000, "owner in the sandbox's view");
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

    d.post("/v1/workspaces", &json!({"id": "exp-dst"}))
        .expect(201, "create target");
    ws_write(&d, "exp-dst", "old.txt", "replaced").expect(200, "old content");
    import(&d, "exp-dst", tar_bytes.clone()).expect(200, "import");
    let t = session_on(&d, "exp-dst");
    assert_eq!(d.sh(&t, LISTING), before, "imported tree differs");
    // Import while mounted is refused and changes nothing.
    import(
        &d,
        "exp-dst",
        raw_tar(&[("x", tar::EntryType::Regular, b"x", "")]),
    )
    .assert_error(409, "WORKSPACE_IN_USE", "import while mounted");
    assert_eq!(d.sh(&t, LISTING), before);
    d.delete(&t);
    import(&d, "no-such-ws", tar_bytes).assert_error(
        404,
        "WORKSPACE_NOT_FOUND",
        "import does not create",
    );
    d.get("/v1/workspaces/no-such-ws/export").assert_error(
        404,
        "WORKSPACE_NOT_FOUND",
        "export of an unknown workspace",
    );
}

#[test]
fn export_is_point_in_time_while_a_session_writes() {
    let d = Daemon::start(None);
    let s = session_on(&d, "exp-live");
    d.sh(
        &s,
        "(for i in $(seq 1 3000); do echo $i > f_$i; done; touch done) >/dev/null 2>&1 &",
    );
    std::thread::sleep(std::time::Duration::from_millis(150));
    let tar_bytes = export_bytes(&d, "exp-live");
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut seen = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut data = String::new();
        std::io::Read::read_to_string(&mut e, &mut data).unwrap();
        if let Some(n) = name.strip_prefix("f_") {
            seen.insert(n.parse::<u32>().unwrap(), data);
        }
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

#[test]
fn import_never_writes_outside_the_workspace() {
    let d = Daemon::start(None);
    d.post("/v1/workspaces", &json!({"id": "imp-evil"}))
        .expect(201, "create");
    ws_write(&d, "imp-evil", "keep.txt", "kept").expect(200, "old content");
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
        import(&d, "imp-evil", tar_bytes).assert_error(400, "INVALID_REQUEST", what);
    }
    assert!(!Path::new(&abs).exists());
    assert!(!Path::new(&dir).join("evil").exists());
    assert!(!Path::new(&dir).join("sub").exists());
    assert_eq!(
        std::fs::read_to_string(&outside.path).unwrap(),
        outside.content
    );
    // The old content is intact after every refusal.
    let v = ws_read(&d, "imp-evil", "keep.txt").expect(200, "old file");
    assert_eq!(unb64(v["content_base64"].as_str().unwrap()), b"kept");
    import(&d, "imp-evil", b"not a tar at all, just text".repeat(40)).assert_error(
        400,
        "INVALID_REQUEST",
        "garbage",
    );
    // A symlink pointing outside is stored as it is (it resolves inside
    // the sandbox), and files belong to the sandbox user.
    import(
        &d,
        "imp-evil",
        raw_tar(&[
            ("l", tar::EntryType::Symlink, b"", "/etc/passwd"),
            ("f", tar::EntryType::Regular, b"data", ""),
        ]),
    )
    .expect(200, "harmless archive");
    let s = session_on(&d, "imp-evil");
    assert_eq!(
        d.sh(
            &s,
            "readlink l; stat -c %u f; ls keep.txt 2>&1 | wc -l; cat f"
        ),
        "/etc/passwd\n1000\n1\ndata"
    );
    d.delete(&s);
}

#[test]
fn a_workspace_from_a_snapshot_equals_the_snapshot() {
    let d = Daemon::start(None);
    let s = session_on(&d, "fs-src");
    d.sh(&s, TREE);
    let at_snapshot = d.sh(&s, LISTING);
    let snap = d
        .post("/v1/workspaces/fs-src/snapshots", &json!({}))
        .expect(201, "snapshot")["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sh(&s, "echo changed > bin.dat; rm -r sub");
    let w = d
        .post(
            "/v1/workspaces",
            &json!({"id": "fs-dst", "from_snapshot": {"workspace_id": "fs-src", "snapshot_id": snap}}),
        )
        .expect(201, "create from snapshot (source mounted)");
    let src = d.get("/v1/workspaces/fs-src").expect(200, "source");
    assert_eq!(w["quota_bytes"], src["quota_bytes"], "the source's quota");
    d.delete(&s);
    let t = session_on(&d, "fs-dst");
    assert_eq!(d.sh(&t, LISTING), at_snapshot);
    d.delete(&t);
    d.post(
        "/v1/workspaces",
        &json!({"id": "fs-x", "from_snapshot": {"workspace_id": "fs-src", "snapshot_id": "snap-0000000000000000"}}),
    )
    .assert_error(404, "SNAPSHOT_NOT_FOUND", "unknown snapshot");
    d.get("/v1/workspaces/fs-x")
        .assert_error(404, "WORKSPACE_NOT_FOUND", "nothing created");
}

#[test]
fn directory_workspaces_export_and_import_too() {
    let d = Daemon::start(Some("workspace:\n  enabled: true\n  quota_mb: 0\n"));
    let s = session_on(&d, "plain-src");
    d.sh(&s, TREE);
    let before = d.sh(&s, LISTING);
    d.delete(&s);
    let tar_bytes = export_bytes(&d, "plain-src");
    d.post("/v1/workspaces", &json!({"id": "plain-dst"}))
        .expect(201, "create target");
    import(&d, "plain-dst", tar_bytes).expect(200, "import");
    let t = session_on(&d, "plain-dst");
    assert_eq!(d.sh(&t, LISTING), before);
    d.delete(&t);
}

#[test]
fn an_import_over_the_quota_is_refused_and_keeps_the_old_content() {
    let d = Daemon::start(None);
    d.post(
        "/v1/workspaces",
        &json!({"id": "imp-full", "quota_mb": 128}),
    )
    .expect(201, "create with quota");
    let s = session_on(&d, "imp-full");
    d.sh(&s, "head -c 80M /dev/urandom > old.bin; sync -f .");
    let sum = d.sh(&s, "md5sum old.bin");
    d.delete(&s);
    // 60 MiB more does not fit next to the 80 MiB kept until the swap.
    let mut b = tar::Builder::new(Vec::new());
    let data = random_bytes(60 * 1024 * 1024);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "new.bin", &data[..]).unwrap();
    let r = import(&d, "imp-full", b.into_inner().unwrap());
    r.assert_error(400, "INVALID_REQUEST", "import over the quota");
    assert!(r.text.contains("quota"), "{}", r.text);
    let s = session_on(&d, "imp-full");
    assert_eq!(d.sh(&s, "md5sum old.bin; ls"), format!("{sum}old.bin\n"));
    d.delete(&s);
}

#[test]
fn an_abandoned_export_releases_the_workspace() {
    let d = Daemon::start(None);
    let s = session_on(&d, "exp-gone");
    d.sh(&s, "head -c 50M /dev/urandom > big.bin");
    d.delete(&s);
    let mut r = d
        .request(reqwest::Method::GET, "/v1/workspaces/exp-gone/export")
        .send()
        .expect("export request");
    let mut first = [0u8; 1024];
    std::io::Read::read_exact(&mut r, &mut first).unwrap();
    drop(r);
    // The export stops, its temporary snapshot goes, and the workspace
    // can be deleted.
    assert!(
        wait_for(std::time::Duration::from_secs(10), || {
            d.del("/v1/workspaces/exp-gone").status == 200
        }),
        "workspace still held after the client went away"
    );
    assert!(
        !d.logs().contains("temporary snapshot"),
        "the temporary snapshot was not deleted: {}",
        d.logs()
    );
}
