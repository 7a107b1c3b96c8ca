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
//!
//! The last test builds python and node for both runtimes (node adds
//! about a minute cold; the docker builds import the cached tarballs into
//! the engine) and runs the seed's full config, a pool of three python and
//! two node sandboxes, on native and on docker: it needs a running Docker
//! engine and fails without one.

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

/// The seed's pool: three python and two node sandboxes.
const SEED_POOL: [(&str, u64); 2] = [("sandbox-runtime:python", 3), ("sandbox-runtime:node", 2)];

/// The seed's config on `runtime` (`allowed_images` unset).
fn seed_config(runtime: &str) -> String {
    let mut yaml = format!(
        "runtime: {runtime}\ndefault_image: \"sandbox-runtime:python\"\n\
         pool:\n  enabled: true\n  images:\n"
    );
    for (image, n) in SEED_POOL {
        yaml.push_str(&format!("    \"{image}\": {n}\n"));
    }
    yaml
}

/// Runs the docker CLI; `(success, stdout trimmed)`, without panicking
/// (for clean-up).
fn docker_quiet(args: &[&str]) -> (bool, String) {
    match Command::new("docker").args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ),
        Err(_) => (false, String::new()),
    }
}

/// The containers and volumes labelled with a data dir (the docker
/// runtime labels all of its objects so); removed on drop, even after a
/// failure (the harness does that only on the docker pass). Declare it
/// before the daemon, so that the daemon stops first.
struct DockerObjects(std::sync::Arc<DataDir>);

impl DockerObjects {
    fn list(&self, what: &[&str]) -> Vec<String> {
        let mut args = what.to_vec();
        let label = self.0.docker_label();
        args.extend(["--filter", &label]);
        let (ok, out) = docker_cli(&args);
        assert!(ok, "docker {args:?} failed");
        out.lines().map(str::to_string).collect()
    }

    /// Session ids of the data dir's containers, running or not.
    fn containers(&self) -> Vec<String> {
        self.list(&[
            "ps",
            "-a",
            "--format",
            "{{.Label \"sandkasten.session_id\"}}",
        ])
    }

    fn volumes(&self) -> Vec<String> {
        self.list(&["volume", "ls", "--format", "{{.Name}}"])
    }
}

impl Drop for DockerObjects {
    fn drop(&mut self) {
        let label = self.0.docker_label();
        let (_, ids) = docker_quiet(&["ps", "-aq", "--filter", &label]);
        for id in ids.lines() {
            docker_quiet(&["rm", "-f", "-v", id]);
        }
        let (_, vols) = docker_quiet(&["volume", "ls", "-q", "--filter", &label]);
        for v in vols.lines() {
            docker_quiet(&["volume", "rm", "-f", v]);
        }
    }
}

/// Starts the seed's config on `home`, waits until the pool is full,
/// takes a pooled python session (with a workspace) and a pooled node
/// session, computes 42 in each, destroys them and the workspace, and
/// stops the daemon (SIGTERM drains the pool). Returns the ids of every
/// sandbox the daemon ran (sessions and pooled), for the caller's checks.
fn run_the_seed_config(home: &std::sync::Arc<DataDir>, runtime: &str) -> Vec<String> {
    let started = Instant::now();
    let d = Daemon::start_in(home, Some(&seed_config(runtime)));
    let pool = || d.get("/v1/pool").expect(200, "GET /v1/pool")["images"].clone();
    let full = wait_for(Duration::from_secs(120), || {
        let p = pool();
        SEED_POOL
            .iter()
            .all(|(image, n)| p[image]["idle"] == *n && p[image]["in_flight"] == 0)
    });
    assert!(full, "{runtime}: pool not full within 120 s: {}", pool());
    for (image, n) in SEED_POOL {
        assert_eq!(pool()[image]["target"], n, "{runtime}: {}", pool());
    }
    eprintln!("{runtime}: pool full after {:?}", started.elapsed());

    let ws = ws_id("seed");
    let py = d.create_session(json!({"image": "sandbox-runtime:python", "workspace_id": ws}));
    let node = d.create_session(json!({"image": "sandbox-runtime:node"}));
    for (s, image) in [
        (&py, "sandbox-runtime:python"),
        (&node, "sandbox-runtime:node"),
    ] {
        assert_eq!(s["image"], image, "{runtime}: {s}");
        assert_eq!(s["acquire_source"], "pool", "{runtime}: {s}");
    }
    assert_eq!(py["workspace_id"], ws.as_str(), "{runtime}: {py}");
    let (py, node) = (
        py["id"].as_str().unwrap().to_string(),
        node["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        d.sh(&py, "python3 -c 'print(6*7)' | tee answer; pwd"),
        "42\n/workspace\n",
        "{runtime}"
    );
    assert_eq!(
        d.sh(&node, "node -e 'console.log(6*7)'"),
        "42\n",
        "{runtime}"
    );
    let p = pool();
    for (image, _) in SEED_POOL {
        assert_eq!(
            (p[image]["hits"].clone(), p[image]["misses"].clone()),
            (json!(1), json!(0)),
            "{runtime}: {p}"
        );
    }

    // Every sandbox of the daemon so far: the two sessions and the pool
    // (refilling).
    let listed = d.listed_ids();
    assert_eq!(listed.len(), 2, "{runtime}: {listed:?}");
    d.delete(&py);
    d.delete(&node);
    // The workspace outlived its session, with the answer in it.
    let r = d
        .get(&format!("/v1/workspaces/{ws}/fs/read?path=answer"))
        .expect(200, "session-less read");
    assert_eq!(unb64(r["content_base64"].as_str().unwrap()), b"42\n");
    d.del(&format!("/v1/workspaces/{ws}"))
        .expect(200, "delete the workspace");
    assert!(d.listed_ids().is_empty(), "{runtime}");
    // Back at target, then drained by SIGTERM.
    let refilled = wait_for(Duration::from_secs(60), || {
        let p = pool();
        SEED_POOL
            .iter()
            .all(|(image, n)| p[image]["idle"] == *n && p[image]["in_flight"] == 0)
    });
    assert!(refilled, "{runtime}: pool not refilled: {}", pool());
    let mut ids = vec![py, node];
    ids.extend(
        std::fs::read_dir(home.data.join(if runtime == "docker" {
            "docker"
        } else {
            "sessions"
        }))
        .expect("the daemon's sandbox directories")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned()),
    );
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        2 + 5,
        "{runtime}: the two sessions (taken from the pool) and the five idle after the refill: {ids:?}"
    );
    let (status, _) = d.terminate();
    assert!(
        status.success(),
        "{runtime}: SIGTERM exit status {status:?}"
    );
    eprintln!("{runtime}: done after {:?}", started.elapsed());
    ids
}

#[test]
fn the_seeds_full_config_runs_on_both_backends() {
    let (up, version) = docker_cli(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        up,
        "this test imports the images into Docker and runs the seed's config on it: \
         no Docker engine answers (apt-get install docker.io; dockerd &): {version}"
    );
    let started = Instant::now();
    // Native: built (or taken from the shared cache) and imported into
    // the data dir's image store.
    let native = DataDir::new();
    for name in ["python", "node"] {
        let (out, _, took) = build(&native, &[name]);
        assert!(
            out.starts_with(&format!("sandbox-runtime:{name} sha256:")),
            "{out}"
        );
        eprintln!("native build of {name}: {took:?}");
    }
    // Docker: the same cached tarballs, imported into the engine.
    let docker_home = DataDir::new();
    let objects = DockerObjects(docker_home.clone());
    for name in ["python", "node"] {
        let image = format!("sandbox-runtime:{name}");
        let (_, before) = docker_quiet(&["image", "inspect", "--format", "{{.Id}}", &image]);
        let (out, err, took) = build(&docker_home, &[name, "--runtime", "docker"]);
        assert!(out.starts_with(&format!("{image} sha256:")), "{out}");
        assert!(
            err.contains("s] importing… into the Docker engine"),
            "{err}"
        );
        assert!(
            err.contains(&format!("s] {name}: cached (")),
            "not from the cache: {err}"
        );
        let (ok, after) = docker_cli(&["image", "inspect", "--format", "{{.Id}}", &image]);
        assert!(ok, "{image} is not in the engine");
        // A re-import leaves the previous image untagged: remove it
        // unless a container still uses it (the layers are shared).
        if !before.is_empty() && before != after {
            docker_quiet(&["rmi", &before]);
        }
        eprintln!("docker build of {name}: {took:?}");
    }
    eprintln!("builds: {:?}", started.elapsed());

    let ids = run_the_seed_config(&native, "native");
    for id in &ids {
        assert_sandbox_gone(
            &native,
            id,
            "native, after the sessions' deletes and SIGTERM",
        );
    }
    let left: Vec<_> = std::fs::read_dir(native.data.join("sessions"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "native session dirs left: {left:?}");

    let ids = run_the_seed_config(&docker_home, "docker");
    assert_eq!(
        objects.containers(),
        Vec::<String>::new(),
        "docker: containers left"
    );
    assert_eq!(
        objects.volumes(),
        Vec::<String>::new(),
        "docker: volumes left"
    );
    for id in &ids {
        let (exists, _) = docker_quiet(&[
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("sandkasten-{id}"),
        ]);
        assert!(!exists, "docker: container of {id} left");
        assert!(
            !docker_home.data.join("docker").join(id).exists(),
            "docker: run dir of {id} left"
        );
        let mounts = mountinfo_lines_containing(id);
        assert!(
            mounts.is_empty(),
            "docker: host mounts of {id} left: {mounts:?}"
        );
    }
    eprintln!("total: {:?}", started.elapsed());
}
