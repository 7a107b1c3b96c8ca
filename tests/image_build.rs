//! `sandkasten image build`: the seed's images built from `images/*.recipe`
//! with debootstrap and Debian's packages, imported into the native image
//! store, and run as sessions.
//!
//! The build cache is one directory of the machine,
//! `/var/cache/sandkasten-tests/image-build` (or
//! `$SANDKASTEN_TEST_IMAGE_CACHE`), outside the checkout because CI runs in
//! a fresh clone each time: a fresh machine builds each recipe once (about
//! a minute for base, half a minute more for python), later runs reuse the
//! tarballs (the key covers the recipes and the builder's version).
//! Concurrent builds of one recipe wait for each other on the entry's lock.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn cache_dir() -> PathBuf {
    std::env::var_os("SANDKASTEN_TEST_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sandkasten-tests/image-build"))
}

fn debootstrap_present() {
    let found = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
        .iter()
        .any(|p| Path::new(p).exists());
    assert!(
        found,
        "these tests build images with debootstrap: apt-get install debootstrap \
         debian-archive-keyring (scripts/test installs them)"
    );
}

/// Runs `sandkasten image build ARGS` on `home`'s data dir with the shared
/// cache; returns (stdout, stderr, how long it took), asserting success.
fn build(home: &DataDir, args: &[&str]) -> (String, String, Duration) {
    debootstrap_present();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["image", "build"])
        .args(args)
        .arg("--cache-dir")
        .arg(cache_dir())
        .env("SANDKASTEN_DATA_DIR", &home.data)
        .env("SANDKASTEN_API_KEY", &home.key)
        .output()
        .expect("running sandkasten image build");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "image build {args:?} failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr, took)
}

fn session(d: &Daemon, image: &str) -> String {
    let s = d.create_session(json!({ "image": image }));
    assert_eq!(s["image"], image);
    s["id"].as_str().unwrap().to_string()
}

#[test]
fn base_builds_once_then_comes_from_the_cache_and_runs_as_the_sandbox_user() {
    let home = DataDir::new();
    let (out, err, _) = build(&home, &["base"]);
    assert!(
        out.starts_with("sandbox-runtime:base sha256:"),
        "stdout: {out}"
    );
    // Stage lines with the elapsed time: built now, or by an earlier run.
    assert!(
        err.contains("s] base: cached (")
            || (err.contains("s] base: debootstrap bookworm")
                && err.contains("s] base: installing packages…")
                && err.contains("s] base: packing…")),
        "stage lines: {err}"
    );
    assert!(
        err.contains("s] importing… into the native image store"),
        "{err}"
    );

    // The second build of the same recipe reuses the cached tarball.
    let (out2, err2, took) = build(&home, &["base"]);
    assert!(err2.contains("s] base: cached ("), "{err2}");
    assert!(!err2.contains("debootstrap"), "{err2}");
    assert!(
        took < Duration::from_secs(30),
        "a cached build took {took:?}"
    );
    assert!(out2.starts_with("sandbox-runtime:base sha256:"), "{out2}");

    let d = Daemon::start_in(&home, None);
    let id = session(&d, "sandbox-runtime:base");
    assert_eq!(
        d.sh(
            &id,
            "id -un; id -u; echo $HOME; echo $0; pwd; grep ^recipe= /etc/sandkasten-image"
        ),
        "sandbox\n1000\n/home/sandbox\nbash\n/workspace\nrecipe=base\n"
    );
    // Debian's own tools and files, not the host's.
    assert_eq!(
        d.sh(
            &id,
            "readlink -f /bin/bash; test -s /etc/ssl/certs/ca-certificates.crt && echo certs; \
             ps -o args= -p 1; grep -c '^sandbox:' /etc/passwd"
        ),
        "/usr/bin/bash\ncerts\nsandkasten-agent init\n1\n"
    );
    // Home and workspace belong to the sandbox user; files work.
    assert_eq!(
        d.sh(
            &id,
            "echo hi > ~/f && cat ~/f && echo w > /workspace/w && stat -c %U /workspace/w"
        ),
        "hi\nsandbox\n"
    );
    d.delete(&id);
}

#[test]
fn python_builds_from_base_and_has_python_pip_venv_git_and_curl() {
    let home = DataDir::new();
    let (out, err, _) = build(&home, &["python"]);
    assert!(
        out.starts_with("sandbox-runtime:python sha256:"),
        "stdout: {out}"
    );
    assert!(
        err.contains("s] python: cached (")
            || (err.contains("s] python: unpacking base…")
                && err.contains("s] python: installing packages… python3")),
        "stage lines: {err}"
    );
    let listed = String::from_utf8_lossy(
        &Command::new(BIN)
            .args(["image", "ls"])
            .env("SANDKASTEN_DATA_DIR", &home.data)
            .output()
            .expect("image ls")
            .stdout,
    )
    .into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("sandbox-runtime:python ")),
        "{listed}"
    );

    let d = Daemon::start_in(&home, None);
    let id = session(&d, "sandbox-runtime:python");
    assert_eq!(d.sh(&id, "python3 -c 'print(1)'"), "1\n");
    assert!(d.sh(&id, "pip --version").starts_with("pip "));
    assert!(d.sh(&id, "git --version").starts_with("git version "));
    assert!(d.sh(&id, "curl --version").starts_with("curl "));
    assert_eq!(
        d.sh(
            &id,
            "python3 -m venv /workspace/venv && /workspace/venv/bin/python -c 'import sys; print(sys.prefix)'"
        ),
        "/workspace/venv\n"
    );
    // pip installs for the sandbox user (no network needed for a local
    // project): the image lets pip into ~/.local despite PEP 668.
    d.sh(
        &id,
        "mkdir -p /tmp/p/hello && echo 'X = 42' > /tmp/p/hello/__init__.py && \
         printf '[project]\\nname = \"hello\"\\nversion = \"1\"\\n' > /tmp/p/pyproject.toml",
    );
    d.sh(&id, "pip install -q --no-index --no-build-isolation /tmp/p");
    let imported = d.sh(
        &id,
        "cd / && python3 -c 'import hello; print(hello.X, hello.__file__)'",
    );
    assert!(
        imported.starts_with("42 /home/sandbox/.local/lib/python3"),
        "{imported}"
    );
    d.delete(&id);
}
