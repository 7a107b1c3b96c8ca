//! The docker runtime's sandbox user is never a host account (issue 15,
//! point 7: "on docker the sandbox user is host uid 1000, a real host user,
//! whose own inotify budget the sandbox exhausts").
//!
//! A container has no user namespace: the uid its commands run as is that
//! uid on the host, and the kernel keeps per-user budgets by it. These
//! tests run a local Docker engine whatever `SANDKASTEN_E2E_RUNTIME` says
//! (each daemon names `runtime: docker`): the uid commands run as has no
//! host account; a sandbox that spends its whole inotify budget leaves the
//! host's first regular uid (1000, the old sandbox uid) untouched; an id of
//! a host account is refused at start; and a workspace, home or image of
//! the old uid 1000 is taken over on first use, never through a symlink.
//!
//! `tests/sandbox_user/inotify.c` (built with gcc, uploaded, also run on
//! the host) holds a uid's inotify instances until the kernel refuses one.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The sandbox user of containers made before `docker.sandbox_uid`, the
/// first regular account on most hosts (here, `cloudsdk`'s).
const OLD_UID: u32 = 1000;

/// A docker daemon on a fresh data dir (its containers and volumes go with
/// it), with `extra` config.
fn daemon(extra: &str) -> (std::sync::Arc<DataDir>, Daemon) {
    let home = DataDir::new();
    home.holds_docker_objects();
    let yaml = format!(
        "runtime: docker\ndefault_image: \"{}\"\n{extra}",
        docker_image()
    );
    let d = Daemon::start_in(&home, Some(&yaml));
    (home, d)
}

/// The host account of `uid`, as `getent` (NSS) finds it.
fn host_account(uid: u32) -> Option<String> {
    let out = Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .expect("getent (libc-bin)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The inotify helper, built once per test process.
fn inotify_binary() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| static_c_binary("tests/sandbox_user/inotify.c", "the sandbox user tests"))
}

/// The helper as a host file any uid may run (in a 0755 directory).
fn host_helper() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("inotify");
    std::fs::write(&bin, inotify_binary()).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// `inotify try` on the host as `uid`:`uid` (no supplementary groups:
/// std drops them with root's): "ok" or the errno's name.
fn try_inotify_as(bin: &Path, uid: u32) -> String {
    let out = Command::new(bin)
        .arg("try")
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The uid commands of session `id` run as (`id -u`, checked against
/// `id -g`: one number is both).
fn sandbox_uid(d: &Daemon, id: &str) -> u32 {
    let ids = d.sh(id, "id -u; id -g");
    let (u, g) = ids.trim().split_once('\n').unwrap();
    assert_eq!(u, g, "uid and gid: {ids}");
    u.parse().unwrap()
}

/// Commands run as a uid no host account has (1000 is `cloudsdk` here),
/// as the host sees their processes too; the image's `sandbox` entry and
/// its home (made for uid 1000) are the user's.
#[test]
fn the_sandbox_user_is_no_host_account() {
    let (_home, d) = daemon("");
    let id = d.new_session();
    let uid = sandbox_uid(&d, &id);
    assert_ne!(uid, OLD_UID);
    assert_eq!(
        host_account(uid),
        None,
        "the sandbox user {uid} is a host account"
    );
    // The host's view of the sandbox's processes: root (the agent) and
    // the sandbox user only.
    d.sh(&id, "sleep 300 > /dev/null 2>&1 &");
    let container = container_field(&id, "{{.Id}}").expect("the session's container");
    let mut uids: Vec<u32> = pids_whose_cgroups(|cg| cg.contains(&container))
        .into_iter()
        .filter_map(|p| proc_status_field(p, "Uid"))
        .filter_map(|f| f.split_whitespace().next()?.parse().ok())
        .collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids, [0, uid], "host uids of the sandbox's processes");
    // Named, with its home (the image's, made for uid 1000) its own.
    assert_eq!(
        d.sh(
            &id,
            "whoami; stat -c %u $HOME; touch ~/mine && stat -c %u ~/mine"
        ),
        format!("sandbox\n{uid}\n{uid}\n")
    );
    assert_eq!(
        d.sh(&id, "stat -c %u /workspace; touch /workspace/w && echo ok"),
        format!("{uid}\nok\n")
    );
}

/// The finding: a sandbox that spends its uid's whole inotify budget spent
/// host uid 1000's (the sandbox user was uid 1000). Now the spent budget
/// is the sandbox uid's own: a process of host uid 1000 still gets an
/// instance, one of the sandbox uid does not (the kernel's count is real,
/// not a check of names).
#[test]
fn a_sandbox_spending_its_inotify_budget_leaves_host_users_alone() {
    let (_home, d) = daemon("");
    let id = d.new_session();
    let uid = sandbox_uid(&d, &id);
    d.write(&id, "/tmp/inotify", inotify_binary());
    // The helper holds every instance it gets until the session ends; the
    // fifo's first line says how many (read once it is written).
    let held = d.sh(
        &id,
        "chmod 755 /tmp/inotify; mkfifo /tmp/held; /tmp/inotify hold > /tmp/held & \
         read -r line < /tmp/held; echo \"$line\"",
    );
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let parts: Vec<&str> = held.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"held"), "{held}");
    let n: usize = parts[1].parse().unwrap();
    assert!(
        n >= 1 && n <= max && parts[2] == "EMFILE",
        "the helper stopped at the uid's budget ({max}): {held}"
    );
    // Spent, inside.
    assert_eq!(d.sh(&id, "/tmp/inotify try"), "EMFILE\n");
    let (_dir, bin) = host_helper();
    // The host's uid 1000 (the old sandbox uid) is untouched.
    assert_eq!(
        try_inotify_as(&bin, OLD_UID),
        "ok",
        "host uid {OLD_UID} shares the sandbox's inotify budget"
    );
    // The sandbox uid's budget is the one spent, also from the host.
    assert_eq!(try_inotify_as(&bin, uid), "EMFILE");
    d.delete(&id);
    // Given back with the session.
    assert_eq!(try_inotify_as(&bin, uid), "ok");
}

/// An id a host account has is refused at start, naming the key; so are
/// root and nobody (by the config check).
#[test]
fn a_host_accounts_id_is_refused_at_start() {
    let daemon_account = host_account(1).expect("uid 1 (daemon) on every Debian host");
    let name = daemon_account.split(':').next().unwrap().to_string();
    let r = serve_expecting_refusal("runtime: docker\ndocker:\n  sandbox_uid: 1\n");
    assert!(!r.status.success(), "serve accepted a host account's uid");
    assert!(
        r.output
            .contains("docker.sandbox_uid: 1 is the uid of host user")
            && r.output.contains(&format!("{name:?}")),
        "{}",
        r.output
    );
    for id in [0, 65534] {
        let r =
            serve_expecting_refusal(&format!("runtime: docker\ndocker:\n  sandbox_uid: {id}\n"));
        assert!(!r.status.success(), "serve accepted uid {id}");
        assert!(r.output.contains("docker.sandbox_uid"), "{}", r.output);
    }
}

/// The host mount point of workspace `ws`'s volume.
fn volume_dir(ws: &str) -> PathBuf {
    let (ok, out) = docker_cli(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        &format!("sandkasten-ws-{ws}"),
    ]);
    assert!(ok, "{out}");
    PathBuf::from(out.trim())
}

/// Makes `dir` what the daemon before `docker.sandbox_uid` left: the tree
/// uid 1000's, plus a symlink to `outside` (a host directory of uid 1000,
/// as a host user's home is) that a takeover must not follow.
fn as_old_uid(dir: &Path, outside: &Path) {
    std::fs::create_dir_all(dir.join("old/deeper")).unwrap();
    std::fs::write(dir.join("old/deeper/notes.txt"), "old\n").unwrap();
    std::fs::set_permissions(dir.join("old"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let _ = std::fs::remove_file(dir.join("home-link"));
    std::os::unix::fs::symlink(outside, dir.join("home-link")).unwrap();
    let st = Command::new("chown")
        .args(["-hR", "1000:1000"])
        .arg(dir)
        .arg(outside)
        .status()
        .unwrap();
    assert!(st.success());
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// A workspace of the old uid 1000 is taken over on its first use, by a
/// session-less call and by a session's mount alike (the daemon on a local
/// engine); a symlink in it to a host directory of uid 1000 is changed
/// itself, never its target.
#[test]
fn a_workspace_of_the_old_uid_is_taken_over_on_first_use() {
    let (_home, d) = daemon("");
    takes_over_an_old_workspace(&d);
}

/// The same through a remote engine (this host's, over a loopback TCP
/// forwarder): the agent of a helper (session-less) or of the session's
/// container (`--own-workdir`) takes the volume over inside the container.
#[test]
fn a_workspace_of_the_old_uid_is_taken_over_on_a_remote_engine_too() {
    let fwd = sandkasten_conformance::TcpForwarder::start(sandkasten_conformance::ENGINE_SOCKET);
    let (_home, d) = daemon(&format!(
        "docker:\n  host: tcp://127.0.0.1:{}\n",
        fwd.port()
    ));
    assert!(d.logs().contains("remote=true"), "not a remote engine");
    takes_over_an_old_workspace(&d);
}

fn takes_over_an_old_workspace(d: &Daemon) {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("host-file"), "host\n").unwrap();
    let ws = ws_id("olduid");
    d.post("/v1/workspaces", &json!({"id": ws}))
        .expect(201, "creating a workspace");
    let dir = volume_dir(&ws);

    // Session-less first.
    as_old_uid(&dir, outside.path());
    let r = d.post(
        &format!("/v1/workspaces/{ws}/fs/write"),
        &json!({"path": "old/deeper/new.txt", "content_base64": b64(b"new\n")}),
    );
    r.expect(200, "a session-less write into a tree of uid 1000");
    let uid = owner(&dir.join("old/deeper/new.txt")).0;
    assert_ne!(uid, OLD_UID);
    for p in ["", "old", "old/deeper", "old/deeper/notes.txt", "home-link"] {
        assert_eq!(owner(&dir.join(p)), (uid, uid), "{p:?}");
    }
    assert_eq!(
        owner(outside.path()),
        (OLD_UID, OLD_UID),
        "a symlink's target"
    );
    assert_eq!(owner(&outside.path().join("host-file")), (OLD_UID, OLD_UID));

    // Then a session mounting it.
    as_old_uid(&dir, outside.path());
    let s = d.create_session(json!({"workspace_id": ws}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.sh(
            &s,
            "stat -c %u /workspace /workspace/old/deeper/notes.txt; \
             echo more >> /workspace/old/deeper/notes.txt && cat /workspace/old/deeper/notes.txt"
        ),
        format!("{uid}\n{uid}\nold\nmore\n")
    );
    assert_eq!(
        owner(outside.path()),
        (OLD_UID, OLD_UID),
        "a symlink's target"
    );
    assert_eq!(owner(&outside.path().join("host-file")), (OLD_UID, OLD_UID));
}

/// A sandbox snapshot taken under the old uid (its copies of `/workspace`
/// and `/tmp` are uid 1000's): a session from it gets both as the sandbox
/// user's, `/tmp` itself staying root's.
#[test]
fn a_sandbox_snapshot_of_the_old_uid_is_taken_over_when_a_session_starts_from_it() {
    let (home, d) = daemon("");
    let id = d.new_session();
    d.sh(
        &id,
        "mkdir -p /workspace/w && echo ws > /workspace/w/f; echo t > /tmp/t",
    );
    let snap = d
        .post(&format!("/v1/sessions/{id}/snapshots"), &json!({}))
        .expect(201, "a sandbox snapshot")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // As the daemon before docker.sandbox_uid left it.
    let dir = home.data.join("docker-snapshots").join(&snap);
    for part in ["workspace", "tmp"] {
        let st = Command::new("chown")
            .args(["-hR", "1000:1000"])
            .arg(dir.join(part))
            .status()
            .unwrap();
        assert!(st.success());
    }
    // The copy of /tmp keeps root as its root's owner, as a live /tmp is.
    let st = Command::new("chown")
        .args(["0:0"])
        .arg(dir.join("tmp"))
        .status()
        .unwrap();
    assert!(st.success());
    let s = d.create_session(json!({"from_snapshot": snap}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uid = sandbox_uid(&d, &s);
    assert_eq!(
        d.sh(
            &s,
            "stat -c %u /workspace /workspace/w /workspace/w/f /tmp/t /tmp; \
             echo more >> /workspace/w/f && echo more >> /tmp/t && cat /workspace/w/f /tmp/t"
        ),
        format!("{uid}\n{uid}\n{uid}\n{uid}\n0\nws\nmore\nt\nmore\n")
    );
}
