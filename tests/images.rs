//! Image import (`sandkasten image import|ls|rm`): a rootfs tarball and a
//! `docker save` archive become images that sessions start from.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A static busybox (Debian's busybox-static) is the smallest real rootfs.
fn busybox() -> &'static Path {
    let p = Path::new("/bin/busybox");
    assert!(
        p.exists(),
        "these tests need a static busybox at /bin/busybox: apt-get install busybox-static"
    );
    p
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

/// A rootfs layer: busybox with a few applets, plus `extra` files.
fn rootfs_tar(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let bb = std::fs::read(busybox()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "tmp/"] {
        b.append(&header(d, 0, 0o755, tar::EntryType::Directory), &[][..])
            .unwrap();
    }
    b.append(
        &header(
            "bin/busybox",
            bb.len() as u64,
            0o755,
            tar::EntryType::Regular,
        ),
        &bb[..],
    )
    .unwrap();
    for applet in ["sh", "echo", "cat", "id", "ls", "true"] {
        let mut h = header(&format!("bin/{applet}"), 0, 0o777, tar::EntryType::Symlink);
        h.set_link_name("busybox").unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }
    for (path, data) in extra {
        b.append(
            &header(path, data.len() as u64, 0o644, tar::EntryType::Regular),
            *data,
        )
        .unwrap();
    }
    b.into_inner().unwrap()
}

fn cli(home: &DataDir, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sandkasten"))
        .args(args)
        .env("SANDKASTEN_DATA_DIR", &home.data)
        .env("SANDKASTEN_API_KEY", &home.key)
        .output()
        .expect("running the sandkasten CLI")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "CLI failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rootfs_tarball_imports_and_runs_and_rm_waits_for_its_sessions() {
    let home = DataDir::new();
    let tar = home.root.join("rootfs.tar");
    std::fs::write(&tar, rootfs_tar(&[("etc/motd", b"hello from the image\n")])).unwrap();
    let out = ok(cli(
        &home,
        &["image", "import", "bb", tar.to_str().unwrap()],
    ));
    assert!(out.contains("bb sha256:"), "{out}");
    let listed = ok(cli(&home, &["image", "ls"]));
    assert!(listed.lines().any(|l| l.starts_with("bb ")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("base ")), "{listed}");

    let d = Daemon::start_in(&home, None);
    let s = d.create_session(json!({ "image": "bb" }));
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["image"], "bb");
    assert_eq!(
        d.sh(&id, "cat /etc/motd; id -u; cd /tmp; echo $0"),
        format!("hello from the image\n{}\nsh\n", sandbox_uid())
    );
    // The shell persists on the image's own sh, files work as the sandbox user.
    assert_eq!(d.sh(&id, "pwd"), "/tmp\n");
    d.post(
        &format!("/v1/sessions/{id}/fs/write"),
        &json!({"path": "x.txt", "text": "data"}),
    )
    .expect(200, "write in an imported image");
    assert_eq!(d.sh(&id, "cat /workspace/x.txt"), "data");

    let refused = cli(&home, &["image", "rm", "bb"]);
    assert!(!refused.status.success(), "rm of an image in use must fail");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&id),
        "{refused:?}"
    );
    d.delete(&id);
    ok(cli(&home, &["image", "rm", "bb"]));
    let listed = ok(cli(&home, &["image", "ls"]));
    assert!(!listed.lines().any(|l| l.starts_with("bb ")), "{listed}");
    assert!(
        std::fs::read_dir(home.data.join("layers"))
            .unwrap()
            .next()
            .is_none(),
        "unused layers are removed"
    );
    d.try_create_session(json!({ "image": "bb" })).assert_error(
        400,
        "INVALID_IMAGE",
        "removed image",
    );
}

#[test]
fn docker_save_archive_applies_layers_and_whiteouts() {
    let home = DataDir::new();
    // Layer 1: the rootfs plus two files; layer 2 deletes one (whiteout)
    // and replaces the other.
    let l1 = rootfs_tar(&[("etc/gone.txt", b"old\n"), ("etc/kept.txt", b"v1\n")]);
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header("etc/.wh.gone.txt", 0, 0o644, tar::EntryType::Regular),
        &[][..],
    )
    .unwrap();
    b.append(
        &header("etc/kept.txt", 3, 0o644, tar::EntryType::Regular),
        &b"v2\n"[..],
    )
    .unwrap();
    let l2 = b.into_inner().unwrap();
    let manifest = json!([{ "Config": "c.json", "RepoTags": ["x:latest"], "Layers": ["l1/layer.tar", "l2/layer.tar"] }]);
    let mut save = tar::Builder::new(Vec::new());
    let m = serde_json::to_vec(&manifest).unwrap();
    for (path, data) in [
        ("manifest.json", &m[..]),
        ("c.json", &b"{}"[..]),
        ("l1/layer.tar", &l1[..]),
        ("l2/layer.tar", &l2[..]),
    ] {
        save.append(
            &header(path, data.len() as u64, 0o644, tar::EntryType::Regular),
            data,
        )
        .unwrap();
    }
    let path = home.root.join("save.tar");
    std::fs::write(&path, save.into_inner().unwrap()).unwrap();
    ok(cli(
        &home,
        &["image", "import", "saved:v1", path.to_str().unwrap()],
    ));

    let d = Daemon::start_in(&home, None);
    let id = d.create_session(json!({ "image": "saved:v1" }))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.sh(
            &id,
            "cat /etc/kept.txt; ls /etc/gone.txt 2>&1 >/dev/null | wc -l"
        ),
        "v2\n1\n"
    );
    assert_eq!(
        d.sh(&id, "ls /etc/gone.txt >/dev/null 2>&1; echo $?"),
        "1\n"
    );
    d.delete(&id);
}

#[test]
fn bad_archives_and_names_are_refused() {
    let home = DataDir::new();
    let junk = home.root.join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all, not even close").unwrap();
    let out = cli(&home, &["image", "import", "junk", junk.to_str().unwrap()]);
    assert!(!out.status.success(), "junk imported: {out:?}");
    let tar = home.root.join("rootfs.tar");
    std::fs::write(&tar, rootfs_tar(&[])).unwrap();
    for bad in ["Bad", "../x", "base", ""] {
        let out = cli(&home, &["image", "import", bad, tar.to_str().unwrap()]);
        assert!(!out.status.success(), "image name {bad:?} accepted");
    }
    let out = cli(&home, &["image", "rm", "base"]);
    assert!(!out.status.success(), "the built-in image was removed");
}

#[test]
fn an_imported_image_can_be_pooled_and_is_not_removed_under_its_pool() {
    let home = DataDir::new();
    let tar = home.root.join("rootfs.tar");
    std::fs::write(&tar, rootfs_tar(&[("etc/motd", b"pooled image\n")])).unwrap();
    ok(cli(
        &home,
        &["image", "import", "bb", tar.to_str().unwrap()],
    ));
    let d = Daemon::start_in(
        &home,
        Some("pool:\n  enabled: true\n  images:\n    bb: 1\n"),
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            d.get("/v1/pool").json["images"]["bb"]["idle"] == 1
        }),
        "the pool of bb did not fill: {}",
        d.get("/v1/pool").text
    );
    let s = d.create_session(json!({ "image": "bb", "workspace_id": "bb-ws" }));
    assert_eq!(s["acquire_source"], "pool", "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.sh(&id, "cat /etc/motd; pwd"),
        "pooled image\n/workspace\n"
    );
    d.delete(&id);
    assert!(
        wait_for(Duration::from_secs(10), || {
            d.get("/v1/pool").json["images"]["bb"]["idle"] == 1
        }),
        "the pool of bb did not refill"
    );
    let refused = cli(&home, &["image", "rm", "bb"]);
    assert!(!refused.status.success(), "rm of a pooled image must fail");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("pool"),
        "{refused:?}"
    );
    // SIGTERM drains the pool; then the image can go.
    let (status, _) = d.terminate();
    assert!(status.success());
    ok(cli(&home, &["image", "rm", "bb"]));
}
