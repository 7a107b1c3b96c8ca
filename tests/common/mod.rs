//! Harness of the black-box end-to-end tests: starts the real `sandkasten`
//! binary (`serve`, port 0, a temp data dir), talks HTTP to it with blocking
//! reqwest, and inspects the host (cgroups, /proc, mountinfo) to prove what
//! the sandboxes can and cannot do.
//!
//! Every test owns its daemon and its data dir, so tests run in parallel.
//! Nothing here waits with a fixed sleep for the daemon: start-up waits for
//! the `listening on` line and `/healthz`, shutdown waits for the process.
//!
//! Clean-up never guesses: a [`Daemon`] that is still alive destroys its
//! sessions through the API and is stopped by its own pid; a [`DataDir`]
//! then kills what is left only in cgroups named after a session of that
//! data dir (each pid checked through a pidfd), and deletes its tree only
//! when no mount lies below it.
//!
//! # Runtimes
//!
//! `SANDKASTEN_E2E_RUNTIME` picks the backend of every daemon the harness
//! starts: `native` (the default) or `docker`. With `docker` each config
//! gets `runtime: docker` and `default_image: <the suite's image>` (see
//! [`docker_image`]: bash and busybox from the host, no python3) unless
//! the test names `runtime` itself, a daemon without a config file gets
//! both through `SANDKASTEN_RUNTIME`/`SANDKASTEN_DEFAULT_IMAGE`, and a
//! [`DataDir`] removes the containers and volumes labelled with it. The
//! host views ([`sandbox_pids`], [`sandbox_running`], [`kill_sandbox`],
//! [`assert_sandbox_gone`], [`host_sandbox_ids`], [`workspace_on_host`],
//! [`sandbox_cgroup_value`], ...) look at cgroups and session dirs on
//! native and at containers, run dirs and volumes on docker, so the same
//! assertions run on both. No engine: the docker pass fails, loudly.
//! `scripts/test` runs the suite on native, then the portable binaries
//! (sessions, exec, files, isolation, limits, recovery, api_errors,
//! workspaces, pool, ports, chaos, ...) again on docker, and again with `docker-remote` (the
//! same engine reached over TCP, as a remote engine: [`on_remote_engine`]).
//!
//! Where the backends differ by design (docs/api.md, "Choosing a backend")
//! a test asserts each one's documented behaviour: the `base` image is
//! native's (sessions::create_accepts_an_explicit_image); no user
//! namespace on docker, PID 1 is root with six capabilities
//! (isolation::sandbox_processes_hold_no_host_root_power); no workspace
//! quotas, snapshots, `from_snapshot` or import on docker, export a live
//! walk (the workspaces tests of those, pool's late-bound workspace).
//!
//! Native-only tests are about the native runtime's internals. Each lives
//! in a `mod native_only` (the docker pass filters out `native_only::`),
//! calls [`require_native`] (so it fails, never passes, on docker), and is
//! listed here with where the docker side of its concern is covered:
//!
//! - `network::native_only::a_freed_address_slot_takes_its_established_flows_with_it`:
//!   python3 in the sandbox sends from a fixed UDP source port (busybox's
//!   `nc` in the docker suite image cannot). The datapath and its slot
//!   release (`routed::Network::remove_locked`) are the docker backend's
//!   too; docker's other network tests run the same code.
//! - `workspaces::native_only::a_subvolume_cannot_be_made_inside_a_workspace`:
//!   a btrfs ioctl against the btrfs image behind a native quota
//!   workspace (python3 in the host's /usr). Docker volumes are plain
//!   directories without a quota to escape; the docker side (no mounts,
//!   namespaces or capabilities inside, the seccomp filter) is
//!   isolation::mounts_and_new_namespaces_are_refused and
//!   isolation::sandbox_user_has_no_capabilities_and_a_seccomp_filter on
//!   docker, and crates/sandkasten-docker/tests/docker.rs.
//!
//! Whole binaries the docker pass leaves out: `images` (the native image
//! store: rootfs tarballs and `docker save` archives imported as layers
//! with whiteouts; docker's images are the engine's, covered by
//! docker_pool::image_commands_use_the_configured_runtime and
//! crates/sandkasten-docker/tests/docker.rs images_and_failed_creates),
//! `image_build` (`sandkasten image build` and its cache),
//! `docker_pool` (configures `runtime: docker` itself) and `docker_remote`
//! (configures a `tcp://` engine itself, through a forwarder it can
//! break); all four run in the native pass.

#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sandkasten");

/// How long the daemon may take to print its `listening on` line and to
/// answer `/healthz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop (SIGTERM) may take before the harness kills.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Default timeout of one HTTP request made by the harness.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

pub const MIB: u64 = 1024 * 1024;

/// The uid the suite's images are made for (their `sandbox` user and its
/// home): 1000, as images always were; the docker runtime takes them over
/// for its own sandbox uid.
pub const SANDBOX_UID: u32 = 1000;

/// The uid (and gid) commands run as on the runtime under test: 1000
/// inside the native runtime's user namespace; on docker the daemon's
/// default `docker.sandbox_uid` (a host uid too, never a host account's).
pub fn sandbox_uid() -> u32 {
    if on_docker() {
        sandkasten_docker::DEFAULT_SANDBOX_ID
    } else {
        SANDBOX_UID
    }
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("invalid base64 from the daemon ({e}): {s:.200}"))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fresh pseudo-random number (time, pid and a counter mixed); good
/// enough for markers and keys that must not collide between tests.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    splitmix(nanos ^ ((std::process::id() as u64) << 40) ^ splitmix(n))
}

/// `n` random lowercase hex characters.
pub fn random_hex(n: usize) -> String {
    let mut s = String::with_capacity(n + 16);
    while s.len() < n {
        s.push_str(&format!("{:016x}", random_u64()));
    }
    s.truncate(n);
    s
}

/// `n` pseudo-random bytes (xorshift64*, seeded from [`random_u64`]).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut x = random_u64() | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Seconds since the Unix epoch, as a float.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 timestamp into Unix seconds; panics (naming the
/// value) when it is not one.
pub fn rfc3339(s: &str) -> f64 {
    let bad = || -> ! { panic!("not an RFC 3339 timestamp: {s:?}") };
    let b = s.as_bytes();
    if b.len() < 20 {
        bad();
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        let part = s.get(r).unwrap_or_else(|| bad());
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            bad();
        }
        part.parse().unwrap_or_else(|_| bad())
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' {
        bad();
    }
    if b[16] != b':' {
        bad();
    }
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, sec) = (num(11..13), num(14..16), num(17..19));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        bad();
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            bad();
        }
        frac = format!("0.{digits}").parse().unwrap_or_else(|_| bad());
        rest = &r[digits.len()..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest[1..3].parse().unwrap_or_else(|_| bad());
            let om: i64 = rest[4..6].parse().unwrap_or_else(|_| bad());
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => bad(),
    };
    (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac
}

/// Polls `cond` (every 50 ms) until it holds or `timeout` passes; returns
/// whether it held. For host-side conditions (a process gone, a cgroup
/// removed), never as a stand-in for a daemon event the API offers.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

// ---------------------------------------------------------------------------
// The runtime under test
// ---------------------------------------------------------------------------

/// The backend every daemon of this test process runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Native,
    Docker,
}

/// `SANDKASTEN_E2E_RUNTIME`: `native` (also when unset), `docker`, or
/// `docker-remote` (the docker runtime on the same engine reached as a
/// remote one, see [`on_remote_engine`]); any other value fails the test.
pub fn backend() -> Backend {
    static B: OnceLock<Backend> = OnceLock::new();
    *B.get_or_init(|| match std::env::var("SANDKASTEN_E2E_RUNTIME") {
        Err(std::env::VarError::NotPresent) => Backend::Native,
        Ok(v) if v.is_empty() || v == "native" => Backend::Native,
        Ok(v) if v == "docker" || v == "docker-remote" => Backend::Docker,
        Ok(v) => panic!("SANDKASTEN_E2E_RUNTIME={v:?}: expected native, docker or docker-remote"),
        Err(e) => panic!("SANDKASTEN_E2E_RUNTIME: {e}"),
    })
}

/// With `SANDKASTEN_E2E_RUNTIME=docker-remote` every daemon gets
/// `DOCKER_HOST=tcp://127.0.0.1:<port>`, a loopback forwarder to the local
/// engine in this test process (`sandkasten_conformance::engine_over_tcp`):
/// the daemon then shares nothing with the engine through the filesystem
/// (agent copied in, connections through the exec API, workspace access
/// through helper containers), while the host views still see the engine.
pub fn on_remote_engine() -> bool {
    on_docker() && std::env::var("SANDKASTEN_E2E_RUNTIME").as_deref() == Ok("docker-remote")
}

pub fn on_docker() -> bool {
    backend() == Backend::Docker
}

/// Fails a test that is about the native runtime's internals when the
/// suite runs on docker (such tests live in `mod native_only`, which the
/// docker pass leaves out; see the list at the top of this file).
#[track_caller]
pub fn require_native(why: &str) {
    assert!(
        !on_docker(),
        "native-only test ({why}); the docker pass filters out `native_only::` tests"
    );
}

/// The image a session gets without naming one: the native runtime's
/// built-in `base`, or the suite's docker image.
pub fn default_image() -> &'static str {
    match backend() {
        Backend::Native => "base",
        Backend::Docker => docker_image(),
    }
}

/// A workspace id unique to this call (`<base>-<8 hex>`). Docker volume
/// names are the engine's, shared by every daemon on the host (other test
/// processes, other runs, leftovers of a killed run), so a test that
/// creates a workspace takes its id from here, on either runtime.
pub fn ws_id(base: &str) -> String {
    format!("{base}-{}", random_hex(8))
}

/// Runs the docker CLI; `(success, stdout trimmed)`. Panics (saying what
/// to install) when there is no docker CLI.
pub fn docker_cli(args: &[&str]) -> (bool, String) {
    try_docker_cli(args).unwrap_or_else(|e| {
        panic!(
            "the docker tests need the docker CLI and a running engine \
             (apt-get install docker.io; dockerd &): {e}"
        )
    })
}

/// [`docker_cli`] for clean-up paths, which must not panic.
fn try_docker_cli(args: &[&str]) -> std::io::Result<(bool, String)> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Busybox applets the suite's image links besides bash (coreutils and
/// the few other tools the tests use; `busybox --list` minus what the
/// image has for real).
fn busybox_applets(busybox: &Path) -> Vec<String> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("{} --list: {e}", busybox.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "bash" && *a != "busybox")
        .map(str::to_string)
        .collect()
}

/// Where a host library goes in the image's merged /usr (`/lib/x` and
/// `/lib64/x` live under `usr/`, reached through the `lib`, `lib64`
/// symlinks).
fn usr_path(host: &str) -> String {
    let rel = host.trim_start_matches('/');
    if rel.starts_with("usr/") {
        rel.to_string()
    } else {
        format!("usr/{rel}")
    }
}

/// Bumped when the recipe below changes what the image contains.
const DOCKER_IMAGE_RECIPE: &str = "sandkasten-e2e-suite-1";

/// `sandkasten-e2e:suite-<hash>`, the image of the docker pass: the host's
/// bash (with its libraries) as `/usr/bin/bash`, the host's static busybox
/// with every applet linked in `/usr/bin` (coreutils, grep, find, od,
/// sha256sum, ip, mount, unshare, nc, ...), a merged /usr (`bin`, `sbin`,
/// `lib`, `lib64` are symlinks), `/etc/passwd` with the sandbox user
/// (uid 1000, home `/home/sandbox`) and nothing else: no python3, so the
/// tests' commands stick to bash and those tools. Built with `docker
/// import` once per content hash of its inputs (under a lock, so parallel
/// test processes import it once) and reused by later runs.
pub fn docker_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (up, version) = docker_cli(&["version", "--format", "{{.Server.Version}}"]);
        assert!(
            up && !version.is_empty(),
            "SANDKASTEN_E2E_RUNTIME=docker: no Docker engine answers (apt-get install docker.io; \
             dockerd &); the docker pass fails without one, it never skips"
        );
        let (busybox, bash) = (Path::new("/bin/busybox"), Path::new("/bin/bash"));
        assert!(
            busybox.exists() && bash.exists(),
            "the docker pass's image is built from the host's /bin/busybox and /bin/bash: \
             apt-get install busybox-static bash"
        );
        let mut files: Vec<(String, PathBuf)> = vec![
            ("usr/bin/busybox".into(), busybox.into()),
            ("usr/bin/bash".into(), bash.into()),
        ];
        let ldd = Command::new("ldd")
            .arg(bash)
            .output()
            .expect("ldd /bin/bash");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = line
                .split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(p) = path {
                files.push((usr_path(p), PathBuf::from(p)));
            }
        }
        let applets = busybox_applets(busybox);
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        };
        feed(DOCKER_IMAGE_RECIPE.as_bytes());
        for (name, p) in &files {
            feed(name.as_bytes());
            feed(&fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())));
        }
        feed(applets.join(" ").as_bytes());
        let name = format!("sandkasten-e2e:suite-{:012x}", hash & 0xffff_ffff_ffff);
        if docker_cli(&["image", "inspect", &name]).0 {
            return name;
        }
        // One importer at a time across the test processes; the others
        // find the image once they get the lock.
        let lock = File::create("/tmp/sandkasten-e2e-docker-image.lock").expect("image lock file");
        // SAFETY: flock on an fd we own; released when `lock` is dropped.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        if docker_cli(&["image", "inspect", &name]).0 {
            return name;
        }
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("rootfs.tar");
        suite_rootfs_tar(&tarball, &files, &applets);
        let (ok, out) = docker_cli(&["import", tarball.to_str().unwrap(), &name]);
        assert!(ok, "docker import of the suite's image failed: {out}");
        name
    })
}

/// A static binary built with gcc from the C file `src` (relative to the
/// repository root), for a test to upload into sandboxes (static: it runs
/// in every image). `what` names the suite in the message when gcc is
/// missing.
pub fn static_c_binary(src: &str, what: &str) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(src);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bin");
    let run = Command::new("gcc")
        .args([
            "-static",
            "-Os",
            "-s",
            "-Wall",
            "-Werror",
            "-Wno-unused-parameter",
        ])
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{what} builds {} with gcc (apt-get install gcc libc6-dev): {e}",
                src.display()
            )
        });
    assert!(
        run.status.success(),
        "gcc {}: {}",
        src.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    fs::read(&out).unwrap()
}

/// A GNU tar header of `kind` with `mode`, owner and group `uid`, `size`
/// and mtime 0.
pub fn tar_header(kind: tar::EntryType, mode: u32, uid: u64, size: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(size as u64);
    h.set_mtime(0);
    h
}

/// Writes the root filesystem of the suite's image to `out`: `files`
/// (path in the image, host file), `applets` linked to busybox in
/// `/usr/bin`, the merged-/usr links, `/etc/passwd` with the sandbox user.
pub fn suite_rootfs_tar(out: &Path, files: &[(String, PathBuf)], applets: &[String]) {
    let mut b = tar::Builder::new(File::create(out).unwrap());
    let header = tar_header;
    let mut dirs: BTreeSet<String> = [
        "etc",
        "home",
        "workspace",
        "proc",
        "sys",
        "dev",
        "run",
        "var",
        "opt",
        "srv",
        "mnt",
        "usr/bin",
        "usr/lib",
        "usr/lib64",
        "usr/sbin",
    ]
    .map(String::from)
    .into();
    for (name, _) in files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.display().to_string());
            p = d.parent();
        }
    }
    // Parents first: "usr" sorts before "usr/bin".
    for d in &dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, 0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (d, mode, uid) in [
        ("tmp", 0o1777, 0),
        ("var/tmp", 0o1777, 0),
        ("root", 0o700, 0),
        ("home/sandbox", 0o755, SANDBOX_UID as u64),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, uid, 0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, link, target).unwrap();
    }
    let mut file = |path: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode, 0, data.len());
        b.append_data(&mut h, path, data).unwrap();
    };
    for (name, p) in files {
        file(name, 0o755, &fs::read(p).unwrap());
    }
    file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash\n",
    );
    file("etc/group", 0o644, b"root:x:0:\nsandbox:x:1000:\n");
    for a in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, format!("usr/bin/{a}"), "busybox")
            .unwrap();
    }
    b.finish().unwrap();
}

/// The YAML a daemon gets on the runtime under test: on docker, `runtime:
/// docker` and `default_image: <the suite's image>` ahead of the test's
/// own keys, unless the test names `runtime` itself (then it is left as
/// it is).
fn yaml_for_backend(yaml: &str) -> String {
    let names_runtime = yaml.lines().any(|l| l.starts_with("runtime:"));
    if !on_docker() || names_runtime {
        return yaml.to_string();
    }
    let mut out = String::from("runtime: docker\n");
    if !yaml.lines().any(|l| l.starts_with("default_image:")) {
        out.push_str(&format!("default_image: \"{}\"\n", docker_image()));
    }
    out.push_str(yaml);
    out
}

// ---------------------------------------------------------------------------
// Host views of a sandbox, on either runtime
// ---------------------------------------------------------------------------

/// `sandkasten-<id>`, the docker runtime's container of session `id`.
pub fn container_name(id: &str) -> String {
    format!("sandkasten-{id}")
}

/// Full ids of containers seen so far, by session id: a removed container
/// can no longer be inspected, but its processes must still be looked for.
fn container_ids() -> &'static Mutex<std::collections::HashMap<String, String>> {
    static IDS: OnceLock<Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    IDS.get_or_init(Default::default)
}

/// A field of `docker inspect` of session `id`'s container (`None` when
/// there is no such container).
pub fn container_field(id: &str, template: &str) -> Option<String> {
    let (ok, out) = docker_cli(&["inspect", "--format", template, &container_name(id)]);
    ok.then_some(out)
}

/// The full id of session `id`'s container (remembered once seen).
fn container_full_id(id: &str) -> Option<String> {
    if let Some(c) = container_ids().lock().unwrap().get(id) {
        return Some(c.clone());
    }
    let full = container_field(id, "{{.Id}}").filter(|s| s.len() >= 32)?;
    container_ids()
        .lock()
        .unwrap()
        .insert(id.to_string(), full.clone());
    Some(full)
}

/// Host pids of session `id`'s sandbox: on native those in its cgroups,
/// on docker those in its container's cgroups.
pub fn sandbox_pids(id: &str) -> Vec<i32> {
    match backend() {
        Backend::Native => pids_in_session_cgroups(id),
        Backend::Docker => {
            let Some(full) = container_full_id(id) else {
                return Vec::new();
            };
            pids_whose_cgroups(|text| text.contains(&full))
        }
    }
}

/// The host pid of the sandbox's PID 1 (docker: the container's, from
/// the engine; native: the pid-namespace init in its cgroup).
pub fn sandbox_init_pid(id: &str) -> Option<i32> {
    match backend() {
        Backend::Native => pids_in_session_cgroups(id)
            .into_iter()
            .find(|&p| innermost_pid(p) == Some(1)),
        Backend::Docker => container_field(id, "{{.State.Pid}}")
            .and_then(|p| p.parse().ok())
            .filter(|&p| p > 0),
    }
}

/// True while session `id`'s sandbox runs (native: processes in its
/// cgroups; docker: its container is running).
pub fn sandbox_running(id: &str) -> bool {
    match backend() {
        Backend::Native => !pids_in_session_cgroups(id).is_empty(),
        Backend::Docker => container_field(id, "{{.State.Running}}").as_deref() == Some("true"),
    }
}

/// The sandbox's directory on the host: `<data_dir>/sessions/<id>`
/// (native) or the run directory `<data_dir>/docker/<id>` (docker).
pub fn sandbox_dir(home: &DataDir, id: &str) -> PathBuf {
    match backend() {
        Backend::Native => home.session_dir(id),
        Backend::Docker => home.data.join("docker").join(id),
    }
}

/// Session ids of the sandboxes on the host (sessions and pooled ones):
/// native: `<data_dir>/sessions/*`; docker: containers labelled with the
/// data dir.
pub fn host_sandbox_ids(home: &DataDir) -> BTreeSet<String> {
    match backend() {
        Backend::Native => match fs::read_dir(home.data.join("sessions")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => BTreeSet::new(),
        },
        Backend::Docker => {
            let (ok, out) = docker_cli(&[
                "ps",
                "-a",
                "--filter",
                &home.docker_label(),
                "--format",
                "{{.Label \"sandkasten.session_id\"}}",
            ]);
            assert!(ok, "docker ps failed");
            out.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        }
    }
}

/// True when a docker volume of this name exists.
pub fn docker_volume_exists(name: &str) -> bool {
    docker_cli(&["volume", "inspect", name]).0
}

/// True while workspace `ws` has storage on the host: its directory (or
/// image) under `<data_dir>/workspaces` on native, its volume
/// `sandkasten-ws-<ws>` on docker.
pub fn workspace_on_host(home: &DataDir, ws: &str) -> bool {
    match backend() {
        Backend::Native => fs::read_dir(home.data.join("workspaces"))
            .map(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n == ws || n.strip_prefix(ws).is_some_and(|r| r.starts_with('.'))
                })
            })
            .unwrap_or(false),
        Backend::Docker => docker_volume_exists(&format!("sandkasten-ws-{ws}")),
    }
}

/// The warnings and errors of every daemon run on `home` (for a failure
/// message), each prefixed with its log's name.
pub fn daemon_warnings(home: &DataDir) -> String {
    let mut logs: Vec<PathBuf> = fs::read_dir(&home.root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".stderr.log"))
        .collect();
    logs.sort();
    let mut out = String::new();
    for p in logs {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for l in fs::read_to_string(&p).unwrap_or_default().lines() {
            if l.contains(" WARN ") || l.contains(" ERROR ") {
                out.push_str(&format!("{name}: {l}\n"));
            }
        }
    }
    out
}

/// The host's attached loop devices: name (`loopN`) and backing file.
pub fn loop_devices() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) {
            out.push((name, backing.trim().to_string()));
        }
    }
    out
}

/// Who still mounts native image workspace `ws` (for a failure message):
/// its loop device and every host process whose mount table lists it,
/// with its command and cgroup. A detached mount held by a descriptor
/// shows no mount table line; "no process mounts it" then.
pub fn workspace_holders(home: &DataDir, ws: &str) -> String {
    let img = home.data.join("workspaces").join(format!("{ws}.img"));
    let img = fs::canonicalize(&img).unwrap_or(img);
    let mut out = Vec::new();
    for (name, backing) in loop_devices() {
        if Path::new(&backing) != img {
            continue;
        }
        let dev = fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap_or_default();
        let dev = dev.trim().to_string();
        // A btrfs filesystem lists its devices while it is mounted (a
        // detached mount included).
        let mounted = fs::read_dir("/sys/fs/btrfs")
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| f.path().join("devices").join(&name).exists());
        out.push(format!(
            "{name} ({dev}) is attached; its btrfs is {}",
            if mounted { "mounted" } else { "not mounted" }
        ));
        let dev_path = PathBuf::from(format!("/dev/{name}"));
        for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = p.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let opened = fs::read_dir(p.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|f| fs::read_link(f.path()).is_ok_and(|t| t == dev_path))
                .count();
            if opened > 0 {
                let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
                out.push(format!(
                    "pid {pid} ({}) has {opened} descriptor(s) of it",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
            }
            let mounts = fs::read_to_string(p.path().join("mountinfo")).unwrap_or_default();
            let lines: Vec<&str> = mounts
                .lines()
                .filter(|l| l.split(' ').nth(2) == Some(dev.as_str()))
                .collect();
            if lines.is_empty() {
                continue;
            }
            let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            let cgroup = fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
            out.push(format!(
                "pid {pid} ({}) in {:?} mounts it: {lines:?}",
                comm.trim(),
                cgroup.lines().next().unwrap_or("")
            ));
        }
    }
    if out.is_empty() {
        return format!("no loop device backs {}", img.display());
    }
    if out.len() == 1 {
        out.push("no process mounts it or has it open".into());
    }
    out.push(keep_logs(home));
    out.join("\n")
}

/// Copies the daemons' logs of `home` to a directory that outlives the
/// test (for a failure message); says where.
pub fn keep_logs(home: &DataDir) -> String {
    let to = std::env::temp_dir().join(format!(
        "sandkasten-failed-{}-{}",
        std::process::id(),
        home.root.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = fs::create_dir_all(&to);
    for e in fs::read_dir(&home.root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".log") {
            let _ = fs::copy(e.path(), to.join(e.file_name()));
        }
    }
    format!("the daemons' logs are kept in {}", to.display())
}

/// The state, kernel wait channel and command of every process whose
/// command line names sandkasten (for a report of a stall).
pub fn sandkasten_processes() -> String {
    let mut out = Vec::new();
    for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("sandkasten") {
            continue;
        }
        let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
            .unwrap_or_default();
        let wchan = fs::read_to_string(p.path().join("wchan")).unwrap_or_default();
        out.push(format!("{pid} {state} {wchan} {cmd}"));
        // Where each thread waits in the kernel.
        for t in fs::read_dir(p.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stack = fs::read_to_string(t.path().join("stack")).unwrap_or_default();
            let top: Vec<&str> = stack
                .lines()
                .take(6)
                .map(|l| l.split_whitespace().nth(1).unwrap_or(l))
                .collect();
            if !top.is_empty() {
                out.push(format!(
                    "  thread {}: {}",
                    t.file_name().to_string_lossy(),
                    top.join(" < ")
                ));
            }
        }
    }
    out.join("\n")
}

/// What of session `id`'s sandbox is still on the host; empty when it is
/// destroyed completely. Native: processes, cgroups, the session dir,
/// host mounts naming it. Docker: processes, the container, the run dir,
/// the ephemeral volume (unless it became a workspace, see
/// `workspace.persist_by_default`), host mounts naming it.
pub fn sandbox_leftovers(home: &DataDir, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let pids = sandbox_pids(id);
    if !pids.is_empty() {
        left.push(format!("processes {pids:?}"));
    }
    match backend() {
        Backend::Native => {
            let cg = existing_cgroup_dirs(id);
            if !cg.is_empty() {
                left.push(format!("cgroups {cg:?}"));
            }
        }
        Backend::Docker => {
            if let Some(state) = container_field(id, "{{.State.Status}}") {
                left.push(format!("container {} ({state})", container_name(id)));
            }
            let vol = format!("sandkasten-ws-{id}");
            if !home.data.join("docker-kept").join(id).exists() && docker_volume_exists(&vol) {
                left.push(format!("volume {vol}"));
            }
            let img = format!("sandkasten-hibernated:{id}");
            if docker_cli(&["image", "inspect", &img]).0 {
                left.push(format!("image {img}"));
            }
        }
    }
    let dir = sandbox_dir(home, id);
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    let mounts = mountinfo_lines_containing(id);
    if !mounts.is_empty() {
        left.push(format!("host mounts {mounts:?}"));
    }
    left
}

/// Asserts that session `id`'s sandbox is destroyed completely, waiting up
/// to 10 s (destroys may run in the background).
#[track_caller]
pub fn assert_sandbox_gone(home: &DataDir, id: &str, what: &str) {
    wait_for(Duration::from_secs(10), || {
        sandbox_leftovers(home, id).is_empty()
    });
    let left = sandbox_leftovers(home, id);
    assert!(
        left.is_empty(),
        "{what}: sandbox {id} left behind: {left:?}"
    );
}

/// The cgroup directories of session `id`'s sandbox that exist now:
/// native as [`existing_cgroup_dirs`]; docker those of its container,
/// from its PID 1's `/proc/PID/cgroup` (empty once the container is gone).
pub fn sandbox_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    if !on_docker() {
        return existing_cgroup_dirs(id);
    }
    let Some(pid) = sandbox_init_pid(id) else {
        return Vec::new();
    };
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let root = Path::new("/sys/fs/cgroup").join(ctrls.trim_start_matches("name="));
        let dir = root.join(path.trim_start_matches('/'));
        if path.len() > 1 && dir.is_dir() {
            out.push(dir);
        }
    }
    out
}

/// Reads a cgroup limit of session `id`'s sandbox from the host: native
/// as [`cgroup_value`]; docker from the container's cgroup, found through
/// its PID 1 (`/proc/PID/cgroup`): the v1 file in `v1_controller`'s
/// hierarchy, else the v2 file.
pub fn sandbox_cgroup_value(id: &str, v1_controller: &str, v1_file: &str, v2_file: &str) -> String {
    if !on_docker() {
        return cgroup_value(id, v1_controller, v1_file, v2_file);
    }
    let pid = sandbox_init_pid(id).unwrap_or_else(|| panic!("no running container of {id}"));
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut tried = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let file = if ctrls.split(',').any(|c| c == v1_controller) {
            Path::new("/sys/fs/cgroup")
                .join(ctrls)
                .join(path.trim_start_matches('/'))
                .join(v1_file)
        } else if ctrls.is_empty() {
            Path::new("/sys/fs/cgroup")
                .join(path.trim_start_matches('/'))
                .join(v2_file)
        } else {
            continue;
        };
        if let Ok(v) = fs::read_to_string(&file) {
            return v.trim().to_string();
        }
        tried.push(file);
    }
    panic!(
        "no cgroup file of container {} found; tried {tried:?}",
        container_name(id)
    )
}

// ---------------------------------------------------------------------------
// HTTP responses
// ---------------------------------------------------------------------------

/// One HTTP response, body kept as text and (when it parses) as JSON.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub text: String,
    /// `Value::Null` when the body is not JSON.
    pub json: Value,
    pub content_type: String,
}

impl Resp {
    pub fn from_reqwest(r: reqwest::blocking::Response) -> Resp {
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r.text().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            text,
            json,
            content_type,
        }
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16, what: &str) -> Value {
        assert_eq!(
            self.status, status,
            "{what}: expected HTTP {status}, got {} with body {:.2000}",
            self.status, self.text
        );
        self.json.clone()
    }

    pub fn error_code(&self) -> &str {
        self.json
            .get("error_code")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Asserts an error response of the contract's shape:
    /// `{"error_code": CODE, "message": "...", "details": {...}}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            self.status, status,
            "{what}: expected HTTP {status} {code}, got {} with body {:.2000}",
            self.status, self.text
        );
        assert_error_body(&self.json, &self.text, code, what);
    }

    /// Asserts a 4xx (not a 2xx, not a 5xx) with a JSON error body.
    #[track_caller]
    pub fn assert_client_error(&self, what: &str) {
        assert!(
            (400..500).contains(&self.status),
            "{what}: expected a 4xx error, got {} with body {:.2000}",
            self.status,
            self.text
        );
        assert!(
            self.json
                .get("error_code")
                .and_then(Value::as_str)
                .is_some(),
            "{what}: a {} without a JSON error_code: {:.2000}",
            self.status,
            self.text
        );
    }
}

/// Asserts that `json` is the contract's error object with `code`.
#[track_caller]
pub fn assert_error_body(json: &Value, text: &str, code: &str, what: &str) {
    assert_eq!(
        json.get("error_code").and_then(Value::as_str),
        Some(code),
        "{what}: error_code; body: {text:.2000}"
    );
    assert!(
        json.get("message").and_then(Value::as_str).is_some(),
        "{what}: error without a string `message`: {text:.2000}"
    );
    assert!(
        json.get("details").is_some_and(Value::is_object),
        "{what}: error without an object `details`: {text:.2000}"
    );
}

/// Asserts the shape of a `SessionInfo` and returns its id.
#[track_caller]
pub fn check_session_info(v: &Value) -> String {
    let s = |k: &str| -> String {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("SessionInfo.{k} is not a string: {v}"))
            .to_string()
    };
    let id = s("id");
    assert!(!id.is_empty(), "empty session id: {v}");
    s("image");
    s("status");
    let cwd = s("cwd");
    assert!(cwd.starts_with('/'), "cwd is not absolute: {v}");
    let ws = v
        .get("workspace_id")
        .unwrap_or_else(|| panic!("SessionInfo has no workspace_id key: {v}"));
    assert!(
        ws.is_null() || ws.is_string(),
        "workspace_id neither null nor string: {v}"
    );
    rfc3339(&s("created_at"));
    rfc3339(&s("expires_at"));
    let src = s("acquire_source");
    assert!(
        src == "pool" || src == "cold",
        "acquire_source is {src:?}: {v}"
    );
    let disk = v
        .get("disk_limit_mb")
        .unwrap_or_else(|| panic!("SessionInfo has no disk_limit_mb key: {v}"));
    assert!(
        disk.is_null() || disk.as_u64().is_some_and(|mb| mb >= 1),
        "disk_limit_mb neither null nor a positive integer: {v}"
    );
    let mode = v["network"]["mode"].as_str().unwrap_or_default();
    assert!(
        (mode == "none" || mode == "full")
            && v["network"]["allow_out"].is_array()
            && v["network"]["deny_out"].is_array(),
        "SessionInfo.network is not a policy: {v}"
    );
    id
}

// ---------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------

/// One SSE event and when the client received it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub raw: String,
    /// `raw` parsed as JSON, `Value::Null` when it is not JSON.
    pub data: Value,
    pub at: Instant,
}

/// An open `text/event-stream` response read incrementally.
pub struct SseStream {
    reader: BufReader<reqwest::blocking::Response>,
    pub status: u16,
    pub content_type: String,
    /// Comment lines (`: keep-alive`) seen so far.
    pub comments: usize,
    pub opened_at: Instant,
}

impl SseStream {
    /// The next event, or `None` at the end of the stream.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let mut event = String::new();
        let mut data: Vec<String> = Vec::new();
        let mut any = false;
        loop {
            let mut line = String::new();
            let n = match self.reader.read_line(&mut line) {
                Ok(n) => n,
                Err(e) => panic!("reading the event stream failed: {e}"),
            };
            if n == 0 {
                return any.then(|| make_event(event, data));
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if any {
                    return Some(make_event(event, data));
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => {
                    event = value.to_string();
                    any = true;
                }
                "data" => {
                    data.push(value.to_string());
                    any = true;
                }
                _ => {}
            }
        }
    }

    /// Reads every remaining event.
    pub fn rest(mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event() {
            out.push(e);
        }
        out
    }
}

fn make_event(event: String, data: Vec<String>) -> SseEvent {
    let raw = data.join("\n");
    let parsed = serde_json::from_str(&raw).unwrap_or(Value::Null);
    SseEvent {
        event: if event.is_empty() {
            "message".into()
        } else {
            event
        },
        raw,
        data: parsed,
        at: Instant::now(),
    }
}

// ---------------------------------------------------------------------------
// Data dir
// ---------------------------------------------------------------------------

/// A temp directory holding one test's daemon state (`data/`, given as
/// `SANDKASTEN_DATA_DIR`), its config files and logs. Shared (`Arc`) by the
/// daemons of a restart test. On drop it kills processes left in the cgroups
/// of its sessions, removes those cgroups, and deletes the tree only when no
/// mount lies below it.
pub struct DataDir {
    pub root: PathBuf,
    /// `SANDKASTEN_DATA_DIR`.
    pub data: PathBuf,
    /// API key every daemon on this data dir gets (unless told otherwise).
    pub key: String,
    session_ids: Mutex<BTreeSet<String>>,
    next_file: AtomicUsize,
    /// Set by a test that runs docker daemons itself (whatever the pass):
    /// its containers and volumes are removed with the data dir.
    docker_objects: std::sync::atomic::AtomicBool,
}

impl DataDir {
    pub fn new() -> Arc<DataDir> {
        let tmp = tempfile::Builder::new()
            .prefix("sandkasten-e2e-")
            .tempdir()
            .expect("creating a temp dir for the daemon");
        let root = tmp.keep();
        let data = root.join("data");
        fs::create_dir(&data).expect("creating the data dir");
        // Like /var/lib/sandkasten: traversable, the daemon decides the
        // modes of what it creates below.
        for p in [&root, &data] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod data dir");
        }
        Arc::new(DataDir {
            root,
            data,
            key: format!("sk-e2e-{}", random_hex(32)),
            session_ids: Mutex::new(BTreeSet::new()),
            next_file: AtomicUsize::new(1),
            docker_objects: Default::default(),
        })
    }

    fn next_n(&self) -> usize {
        self.next_file.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a session id so that clean-up also covers it.
    pub fn remember(&self, id: &str) {
        self.session_ids.lock().unwrap().insert(id.to_string());
    }

    /// `<data_dir>/sessions/<id>`.
    pub fn session_dir(&self, id: &str) -> PathBuf {
        self.data.join("sessions").join(id)
    }

    /// Writes a config file below the root and returns its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.root.join(format!("config-{}.yaml", self.next_n()));
        fs::write(&path, yaml).expect("writing config file");
        path
    }

    fn known_session_ids(&self) -> BTreeSet<String> {
        let mut ids = self.session_ids.lock().unwrap().clone();
        if let Ok(rd) = fs::read_dir(self.data.join("sessions")) {
            for e in rd.flatten() {
                if let Some(name) = e.file_name().to_str() {
                    ids.insert(name.to_string());
                }
            }
        }
        ids
    }

    /// `label=sandkasten.data_dir=<data dir>`: a docker filter for the
    /// containers and volumes of this data dir's daemons.
    pub fn docker_label(&self) -> String {
        format!("label=sandkasten.data_dir={}", self.data.display())
    }

    /// Removes the containers and volumes of this data dir's daemons (the
    /// docker runtime labels all of them with the data dir).
    /// Marks this data dir as used by docker daemons: its labelled
    /// containers and volumes are removed when it is dropped.
    pub fn holds_docker_objects(&self) {
        self.docker_objects
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn remove_docker_objects(&self) {
        let label = self.docker_label();
        let run = |args: &[&str]| match try_docker_cli(args) {
            Ok((true, out)) => out,
            Ok((false, out)) => {
                eprintln!("e2e clean-up: docker {args:?} failed: {out}");
                String::new()
            }
            Err(e) => {
                eprintln!("e2e clean-up: docker {args:?}: {e}");
                String::new()
            }
        };
        for c in run(&["ps", "-aq", "--filter", &label]).lines() {
            run(&["rm", "-f", "-v", c]);
        }
        for v in run(&["volume", "ls", "-q", "--filter", &label]).lines() {
            run(&["volume", "rm", "-f", v]);
        }
        // What sessions and snapshots this daemon left committed: its
        // hibernated sessions' and its sandbox snapshots' image tags
        // (commits carry their container's labels; a tag removal leaves
        // an image another tag still holds).
        for repo in ["sandkasten-hibernated", "sandkasten-snapshot"] {
            let filter = format!("reference={repo}:*");
            let fmt = "{{.Repository}}:{{.Tag}}";
            let args = [
                "images", "--filter", &label, "--filter", &filter, "--format", fmt,
            ];
            for img in run(&args).lines() {
                run(&["rmi", img]);
            }
        }
        // The sandbox network a daemon that did not stop gracefully left.
        for n in run(&["network", "ls", "-q", "--filter", &label]).lines() {
            run(&["network", "rm", n]);
        }
    }

    /// Removes the nftables table and DOCKER-USER rules a daemon of this
    /// data dir left (one SIGKILLed and not started again keeps them), for
    /// each data dir below the root, under its tag's claim
    /// (`Network::remove_leftovers`: a tag a running daemon holds is left
    /// alone).
    fn remove_network_rules(&self) {
        for dir in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            if let Err(e) = sandkasten_netguard::routed::Network::remove_leftovers(&dir.path()) {
                eprintln!(
                    "e2e clean-up: the network rules of {}: {e}",
                    dir.path().display()
                );
            }
        }
    }

    fn mounts_below_root(&self) -> Vec<String> {
        let prefix = self.root.to_string_lossy().to_string();
        mount_points()
            .into_iter()
            .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
            .collect()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // Not `on_docker()`: that panics on a bad SANDKASTEN_E2E_RUNTIME,
        // and a panic while unwinding aborts.
        let runtime = std::env::var("SANDKASTEN_E2E_RUNTIME");
        if matches!(runtime.as_deref(), Ok("docker") | Ok("docker-remote"))
            || self
                .docker_objects
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.remove_docker_objects();
        }
        let ids = self.known_session_ids();
        for id in &ids {
            for pid in pids_in_session_cgroups(id) {
                kill_if_in_session(pid, id, libc::SIGKILL);
            }
        }
        for id in &ids {
            if !wait_for(Duration::from_secs(10), || {
                pids_in_session_cgroups(id).is_empty()
            }) {
                eprintln!(
                    "e2e clean-up: processes of session {id} survive SIGKILL: {:?}",
                    pids_in_session_cgroups(id)
                );
            }
            // A killed task can keep its cgroup busy for a moment after it
            // left /proc/*/cgroup (until its parent reaps it): retry.
            let removed = wait_for(Duration::from_secs(10), || {
                for dir in existing_cgroup_dirs(id) {
                    remove_cgroup_tree(&dir);
                }
                existing_cgroup_dirs(id).is_empty()
            });
            if !removed {
                eprintln!(
                    "e2e clean-up: cannot remove the cgroups of session {id}: {:?}",
                    existing_cgroup_dirs(id)
                );
            }
        }
        self.remove_network_rules();
        // Mounts of a sandbox live in its own mount namespace and vanish
        // with its last process; give the kernel a moment to tear them down.
        if !wait_for(Duration::from_secs(5), || {
            self.mounts_below_root().is_empty()
        }) {
            eprintln!(
                "e2e clean-up: leaving {} in place, mounts below it: {:?}",
                self.root.display(),
                self.mounts_below_root()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("e2e clean-up: removing {}: {e}", self.root.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Host inspection
// ---------------------------------------------------------------------------

/// Kills the sandbox of `id` from the host and waits until it is dead.
/// Native: SIGKILL to the pid-namespace init found in the session's cgroup
/// (checked through a pidfd before signalling). Docker: `docker kill` of
/// its container (SIGKILL to its PID 1).
pub fn kill_sandbox(id: &str) {
    if on_docker() {
        container_full_id(id);
        let (ok, out) = docker_cli(&["kill", "--signal", "KILL", &container_name(id)]);
        assert!(ok, "docker kill of session {id}'s container failed: {out}");
        assert!(
            wait_for(Duration::from_secs(10), || !sandbox_running(id)
                && sandbox_pids(id).is_empty()),
            "the container of session {id} survives docker kill: pids {:?}",
            sandbox_pids(id)
        );
        return;
    }
    let pids = pids_in_session_cgroups(id);
    let init: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| innermost_pid(p) == Some(1))
        .collect();
    assert_eq!(
        init.len(),
        1,
        "expected one sandbox init (pid 1 in its namespace) in session {id}'s cgroup; \
         pids {pids:?}, inits {init:?}"
    );
    assert!(
        kill_if_in_session(init[0], id, libc::SIGKILL),
        "could not SIGKILL sandbox init {} of session {id}",
        init[0]
    );
    assert!(
        wait_for(Duration::from_secs(10), || pids_in_session_cgroups(id)
            .is_empty()),
        "processes of session {id} survive the death of its init: {:?}",
        pids_in_session_cgroups(id)
    );
}

/// Where the cgroups of a session may be: cgroup v1 (memory, pids, cpu,
/// cpuacct, freezer hierarchies) and cgroup v2.
pub fn cgroup_dir_candidates(id: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["memory", "pids", "cpu", "cpuacct", "cpu,cpuacct", "freezer"]
        .iter()
        .map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("sandkasten")
                .join(id)
        })
        .collect();
    v.push(Path::new("/sys/fs/cgroup/sandkasten").join(id));
    v.push(Path::new("/sys/fs/cgroup/unified/sandkasten").join(id));
    v
}

/// The cgroup directories of a session that exist now.
pub fn existing_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    cgroup_dir_candidates(id)
        .into_iter()
        .filter(|p| p.is_dir())
        .collect()
}

/// True when `cgroup_file_text` (a `/proc/PID/cgroup`) places the process
/// in a cgroup whose path has `id` as a component.
fn cgroup_text_names(cgroup_file_text: &str, id: &str) -> bool {
    cgroup_file_text.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        path.split('/').any(|c| c == id)
    })
}

/// Host pids whose `/proc/PID/cgroup` names the session.
pub fn pids_in_session_cgroups(id: &str) -> Vec<i32> {
    pids_whose_cgroups(|text| cgroup_text_names(text, id))
}

/// Host pids whose `/proc/PID/cgroup` text satisfies `matches`, sorted.
pub fn pids_whose_cgroups(matches: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            if matches(&text) {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Sends `sig` to `pid` only if, checked through a pidfd (so the pid cannot
/// be recycled in between), that process is in a cgroup of session `id`.
pub fn kill_if_in_session(pid: i32, id: &str, sig: i32) -> bool {
    // SAFETY: plain syscalls on integers; the fd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return false;
        }
        let ours = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| cgroup_text_names(&t, id))
            .unwrap_or(false);
        let sent = ours
            && libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0;
        libc::close(fd);
        sent
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Pids listed in a cgroup directory's `cgroup.procs`.
pub fn cgroup_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A field of `/proc/PID/status` (e.g. `Uid`, `NSpid`), without its name.
pub fn proc_status_field(pid: i32, field: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// The pid of `pid` in its innermost pid namespace.
pub fn innermost_pid(pid: i32) -> Option<i32> {
    proc_status_field(pid, "NSpid")?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The tag of a daemon's sandbox network (its nftables table is
/// `sandkasten_<tag>`, its links `skn<tag>…`), from its log; `None` when
/// it runs without one.
pub fn net_tag(d: &Daemon) -> Option<String> {
    let logs = d.logs();
    logs.match_indices("sandkasten_")
        .map(|(i, _)| &logs[i + 11..(i + 16).min(logs.len())])
        .find(|t| {
            let b = t.as_bytes();
            b.len() == 5
                && b[..4].iter().all(u8::is_ascii_hexdigit)
                && !b[4].is_ascii_alphanumeric()
        })
        .map(|t| t[..4].to_string())
}

/// Host network links whose names start with `prefix`.
pub fn links_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("listing links needs the ip command (apt-get install iproute2)");
    assert!(out.status.success(), "ip -o link show failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Mount points of the host mount namespace (`/proc/self/mountinfo`).
pub fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .collect()
}

/// Lines of the host's `/proc/self/mountinfo` that contain `needle`.
pub fn mountinfo_lines_containing(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Reads a cgroup limit of a session from the host: the v1 file
/// `/sys/fs/cgroup/<v1_controller>/sandkasten/<id>/<v1_file>` or the v2
/// file `/sys/fs/cgroup/sandkasten/<id>/<v2_file>`, whichever exists.
pub fn cgroup_value(id: &str, v1_controller: &str, v1_file: &str, v2_file: &str) -> String {
    let candidates = [
        Path::new("/sys/fs/cgroup")
            .join(v1_controller)
            .join("sandkasten")
            .join(id)
            .join(v1_file),
        Path::new("/sys/fs/cgroup/sandkasten")
            .join(id)
            .join(v2_file),
    ];
    for c in &candidates {
        if let Ok(v) = fs::read_to_string(c) {
            return v.trim().to_string();
        }
    }
    panic!(
        "no cgroup file of session {id} found; looked at {candidates:?} (the daemon must name \
         its cgroups sandkasten/<session id>)"
    )
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// How to start a daemon; [`Options::default`] is what [`Daemon::start`]
/// uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// YAML written to a file and passed as `--config FILE`; `None` starts
    /// without `--config` (embedded defaults).
    pub config: Option<String>,
    /// Adds `pool: {enabled: false}` to the config unless it names `pool`,
    /// so that no idle sandboxes compete for the test machine's two cores
    /// and `acquire_source` is `cold`.
    pub disable_pool: bool,
    /// `SANDKASTEN_API_KEY`; `None` uses the data dir's key (see
    /// [`Daemon::start_without_key`] for none at all).
    pub api_key: Option<String>,
    /// Extra environment (applied last).
    pub env: Vec<(String, String)>,
    /// The daemon's open-file limit (soft and hard, so it cannot raise
    /// it); `None` leaves the test's.
    pub nofile: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Some(String::new()),
            disable_pool: true,
            api_key: None,
            env: Vec::new(),
            nofile: None,
        }
    }
}

/// A running `sandkasten serve` on a free port.
pub struct Daemon {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    /// The API key requests are sent with.
    pub key: String,
    /// `SANDKASTEN_DATA_DIR`.
    pub data_dir: PathBuf,
    /// The shared temp dir (pass to [`Daemon::start_in`] to restart).
    pub home: Arc<DataDir>,
    pub client: reqwest::blocking::Client,
    pid: i32,
    child: Mutex<Option<Child>>,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    created: Mutex<Vec<String>>,
}

impl Daemon {
    /// Starts a daemon on a fresh data dir. `config` is YAML (merged with
    /// the pool being disabled, see [`Options::disable_pool`]).
    pub fn start(config: Option<&str>) -> Daemon {
        Daemon::start_in(&DataDir::new(), config)
    }

    /// Starts a daemon on an existing data dir (restart tests).
    pub fn start_in(home: &Arc<DataDir>, config: Option<&str>) -> Daemon {
        Daemon::start_with(
            home,
            Options {
                config: Some(config.unwrap_or("").to_string()),
                ..Options::default()
            },
        )
    }

    /// Starts a daemon with full control over its options.
    pub fn start_with(home: &Arc<DataDir>, opts: Options) -> Daemon {
        let n = home.next_n();
        let stderr_path = home.root.join(format!("daemon-{n}.stderr.log"));
        let stdout_path = home.root.join(format!("daemon-{n}.stdout.log"));
        let key = opts.api_key.clone().unwrap_or_else(|| home.key.clone());
        let mut cmd = base_command(home, &opts, &stderr_path);
        cmd.env("SANDKASTEN_API_KEY", &key);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let (child, url) = spawn_and_wait_listening(cmd, &stderr_path, &stdout_path);
        Daemon::finish_start(home, child, url, key, stderr_path, stdout_path)
    }

    /// Spawns `serve` on `home` as [`Daemon::start_with`] does, without
    /// waiting for it to listen (its stdout is dropped): for a test that
    /// kills a daemon in the middle of its start.
    pub fn spawn_unwaited(home: &Arc<DataDir>, opts: &Options) -> Child {
        let n = home.next_n();
        let stderr_path = home.root.join(format!("daemon-{n}.stderr.log"));
        let mut cmd = base_command(home, opts, &stderr_path);
        cmd.env(
            "SANDKASTEN_API_KEY",
            opts.api_key.as_deref().unwrap_or(&home.key),
        );
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null());
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"))
    }

    /// Starts a daemon with no `SANDKASTEN_API_KEY` at all (the daemon must
    /// generate one); the returned daemon's `key` is empty until the test
    /// sets it with [`Daemon::with_key`].
    pub fn start_without_key(home: &Arc<DataDir>) -> Daemon {
        let n = home.next_n();
        let stderr_path = home.root.join(format!("daemon-{n}.stderr.log"));
        let stdout_path = home.root.join(format!("daemon-{n}.stdout.log"));
        let cmd = base_command(home, &Options::default(), &stderr_path);
        let (child, url) = spawn_and_wait_listening(cmd, &stderr_path, &stdout_path);
        Daemon::finish_start(home, child, url, String::new(), stderr_path, stdout_path)
    }

    fn finish_start(
        home: &Arc<DataDir>,
        child: Child,
        url: String,
        key: String,
        stderr_path: PathBuf,
        stdout_path: PathBuf,
    ) -> Daemon {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in the listening address {url:?}"));
        let client = reqwest::blocking::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .expect("building the HTTP client");
        let d = Daemon {
            url,
            port,
            key,
            data_dir: home.data.clone(),
            home: home.clone(),
            client,
            pid: child.id() as i32,
            child: Mutex::new(Some(child)),
            stderr_path,
            stdout_path,
            created: Mutex::new(Vec::new()),
        };
        d.wait_healthy();
        d
    }

    /// Same daemon, requests sent with another key.
    pub fn with_key(mut self, key: &str) -> Daemon {
        self.key = key.to_string();
        self
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last: String;
        loop {
            match self
                .client
                .get(format!("{}/healthz", self.url))
                .timeout(Duration::from_secs(5))
                .send()
            {
                Ok(r) if r.status().as_u16() == 200 => return,
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if !self.is_running() || Instant::now() >= deadline {
                panic!(
                    "daemon at {} never answered /healthz with 200 (last: {last})",
                    self.url
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Host pid of the daemon.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// True while the daemon process has not exited.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap();
        match guard.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The daemon's stderr (its logs) so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The daemon's stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    fn logs_for_failure(&self) -> String {
        format!(
            "--- daemon stdout ({}) ---\n{}\n--- daemon stderr, last 200 lines ({}) ---\n{}",
            self.stdout_path.display(),
            tail(&self.stdout(), 50),
            self.stderr_path.display(),
            tail(&self.logs(), 200)
        )
    }

    /// SIGKILLs the daemon (its own pid only) and reaps it. Sandboxes are
    /// left as they are.
    pub fn kill_9(&self) {
        let mut guard = self.child.lock().unwrap();
        if let Some(mut c) = guard.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the daemon and waits for it to exit (at most
    /// [`STOP_TIMEOUT`], then SIGKILL and panic). Returns its exit status and
    /// how long the stop took.
    pub fn terminate(&self) -> (ExitStatus, Duration) {
        let mut guard = self.child.lock().unwrap();
        let Some(mut c) = guard.take() else {
            panic!("terminate: the daemon was already stopped");
        };
        let started = Instant::now();
        // SAFETY: signalling our own child by its pid; it is not reaped yet,
        // so the pid cannot have been recycled.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return (status, started.elapsed());
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = c.kill();
                let _ = c.wait();
                drop(guard);
                panic!("daemon did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // --- raw requests -----------------------------------------------------

    /// A request to `path` (starting with `/`) with the API key.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.url));
        if self.key.is_empty() {
            rb
        } else {
            rb.bearer_auth(&self.key)
        }
    }

    /// Sends a request; panics only when no HTTP response came at all.
    #[track_caller]
    pub fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Resp {
        match rb.send() {
            Ok(r) => Resp::from_reqwest(r),
            // The daemon's logs are printed when the panic drops it.
            Err(e) => panic!("HTTP request to the daemon failed: {e}"),
        }
    }

    #[track_caller]
    pub fn get(&self, path: &str) -> Resp {
        self.send(self.request(reqwest::Method::GET, path))
    }

    #[track_caller]
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.request(reqwest::Method::POST, path).json(body))
    }

    #[track_caller]
    pub fn del(&self, path: &str) -> Resp {
        self.send(self.request(reqwest::Method::DELETE, path))
    }

    // --- sessions ---------------------------------------------------------

    /// `POST /v1/sessions`, whatever the answer; remembers created ids.
    #[track_caller]
    pub fn try_create_session(&self, body: Value) -> Resp {
        let r = self.post("/v1/sessions", &body);
        if r.status == 201 {
            if let Some(id) = r.json.get("id").and_then(Value::as_str) {
                self.created.lock().unwrap().push(id.to_string());
                self.home.remember(id);
            }
        }
        r
    }

    /// Creates a session (asserting 201) and returns its `SessionInfo`.
    #[track_caller]
    pub fn create_session(&self, body: Value) -> Value {
        let r = self.try_create_session(body);
        let v = r.expect(201, "POST /v1/sessions");
        check_session_info(&v);
        v
    }

    /// Creates a default session and returns its id.
    #[track_caller]
    pub fn new_session(&self) -> String {
        let v = self.create_session(json!({}));
        v["id"].as_str().unwrap().to_string()
    }

    #[track_caller]
    pub fn get_session(&self, id: &str) -> Resp {
        self.get(&format!("/v1/sessions/{id}"))
    }

    /// `GET /v1/sessions` (asserting 200 and an array).
    #[track_caller]
    pub fn list_sessions(&self) -> Vec<Value> {
        let v = self.get("/v1/sessions").expect(200, "GET /v1/sessions");
        v.as_array()
            .unwrap_or_else(|| panic!("GET /v1/sessions is not an array: {v}"))
            .clone()
    }

    /// Ids in `GET /v1/sessions`.
    #[track_caller]
    pub fn listed_ids(&self) -> Vec<String> {
        self.list_sessions()
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect()
    }

    #[track_caller]
    pub fn delete_session(&self, id: &str) -> Resp {
        self.del(&format!("/v1/sessions/{id}"))
    }

    /// Destroys a session, asserting `200 {"ok": true}`.
    #[track_caller]
    pub fn delete(&self, id: &str) {
        let v = self
            .delete_session(id)
            .expect(200, &format!("DELETE /v1/sessions/{id}"));
        assert_eq!(v, json!({"ok": true}), "DELETE body");
    }

    /// `GET /v1/sessions/{id}/stats` (asserting 200).
    #[track_caller]
    pub fn stats(&self, id: &str) -> Value {
        self.get(&format!("/v1/sessions/{id}/stats"))
            .expect(200, "GET stats")
    }

    // --- exec -------------------------------------------------------------

    /// `POST /v1/sessions/{id}/exec` with a full request body.
    #[track_caller]
    pub fn exec_with(&self, id: &str, body: Value) -> Resp {
        self.post(&format!("/v1/sessions/{id}/exec"), &body)
    }

    /// Runs `cmd` (asserting HTTP 200) and returns the `ExecResult`.
    #[track_caller]
    pub fn exec(&self, id: &str, cmd: &str) -> Value {
        let r = self.exec_with(id, json!({ "cmd": cmd }));
        let v = r.expect(200, &format!("exec {cmd:?}"));
        check_exec_result(&v);
        v
    }

    /// Runs `cmd`, asserts exit code 0 and returns its output.
    #[track_caller]
    pub fn sh(&self, id: &str, cmd: &str) -> String {
        let v = self.exec(id, cmd);
        assert_eq!(v["exit_code"], 0, "command {cmd:?} failed: {v}");
        v["output"].as_str().unwrap().to_string()
    }

    /// Opens `POST /v1/sessions/{id}/exec/stream` (asserting 200).
    #[track_caller]
    pub fn open_stream(&self, id: &str, body: Value) -> SseStream {
        let rb = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/sessions/{id}/exec/stream"),
            )
            .json(&body);
        self.sse(rb).unwrap_or_else(|r| {
            panic!(
                "exec/stream: expected 200, got {}: {:.2000}",
                r.status, r.text
            )
        })
    }

    /// Any request answered with an event stream (`Err` with the response
    /// when it answers otherwise).
    pub fn sse(&self, rb: reqwest::blocking::RequestBuilder) -> Result<SseStream, Resp> {
        let opened_at = Instant::now();
        let r = rb
            .send()
            .unwrap_or_else(|e| panic!("event stream request failed: {e}"));
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != 200 || !content_type.starts_with("text/event-stream") {
            return Err(Resp::from_reqwest(r));
        }
        Ok(SseStream {
            reader: BufReader::new(r),
            status,
            content_type,
            comments: 0,
            opened_at,
        })
    }

    // --- files ------------------------------------------------------------

    /// `POST /v1/sessions/{id}/fs/write` with a full request body.
    #[track_caller]
    pub fn write_with(&self, id: &str, body: Value) -> Resp {
        self.post(&format!("/v1/sessions/{id}/fs/write"), &body)
    }

    /// Writes bytes (base64), asserting `200 {"ok": true}`.
    #[track_caller]
    pub fn write(&self, id: &str, path: &str, data: &[u8]) {
        let r = self.write_with(id, json!({"path": path, "content_base64": b64(data)}));
        let v = r.expect(200, &format!("fs/write {path}"));
        assert_eq!(v["ok"], true, "fs/write {path}: {v}");
    }

    /// Writes text, asserting `200 {"ok": true}`.
    #[track_caller]
    pub fn write_text(&self, id: &str, path: &str, text: &str) {
        let r = self.write_with(id, json!({"path": path, "text": text}));
        let v = r.expect(200, &format!("fs/write {path}"));
        assert_eq!(v["ok"], true, "fs/write {path}: {v}");
    }

    /// `GET /v1/sessions/{id}/fs/read?path=...`, whatever the answer.
    #[track_caller]
    pub fn read_resp(&self, id: &str, path: &str) -> Resp {
        self.send(
            self.request(reqwest::Method::GET, &format!("/v1/sessions/{id}/fs/read"))
                .query(&[("path", path)]),
        )
    }

    /// Reads a whole file (asserting 200, `truncated: false`).
    #[track_caller]
    pub fn read(&self, id: &str, path: &str) -> Vec<u8> {
        let v = self
            .read_resp(id, path)
            .expect(200, &format!("fs/read {path}"));
        assert_eq!(v["truncated"], false, "fs/read {path}: {v:.300}");
        unb64(
            v["content_base64"]
                .as_str()
                .unwrap_or_else(|| panic!("fs/read {path}: no content_base64: {v:.300}")),
        )
    }

    // --- host views of a session -------------------------------------------

    /// `<data_dir>/sessions/<id>`.
    pub fn session_dir(&self, id: &str) -> PathBuf {
        self.home.session_dir(id)
    }
}

/// Asserts the types of an `ExecResult`.
#[track_caller]
pub fn check_exec_result(v: &Value) {
    assert!(
        v["exit_code"].is_i64(),
        "exit_code not an integer: {v:.500}"
    );
    assert!(v["cwd"].is_string(), "cwd not a string: {v:.500}");
    assert!(v["output"].is_string(), "output not a string: {v:.500}");
    assert!(
        v["truncated"].is_boolean(),
        "truncated not a bool: {v:.500}"
    );
    assert!(v["duration_ms"].is_u64(), "duration_ms not a u64: {v:.500}");
    assert!(
        v["timed_out"].is_boolean(),
        "timed_out not a bool: {v:.500}"
    );
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            // Destroy every session of this data dir through the API, so no
            // sandbox outlives the test, then stop the daemon gracefully.
            let mut ids: BTreeSet<String> = self.created.lock().unwrap().iter().cloned().collect();
            if let Ok(r) = self
                .request(reqwest::Method::GET, "/v1/sessions")
                .timeout(Duration::from_secs(10))
                .send()
            {
                if let Ok(Value::Array(list)) = r.json::<Value>() {
                    ids.extend(
                        list.iter()
                            .filter_map(|s| s["id"].as_str().map(str::to_string)),
                    );
                }
            }
            for id in &ids {
                let _ = self
                    .request(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"))
                    .timeout(Duration::from_secs(15))
                    .send();
            }
            let mut guard = self.child.lock().unwrap();
            if let Some(mut c) = guard.take() {
                // SAFETY: our own, not yet reaped child.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
                let started = Instant::now();
                loop {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    if started.elapsed() > STOP_TIMEOUT {
                        eprintln!("e2e clean-up: daemon ignored SIGTERM, killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_for_failure());
        }
    }
}

/// Size (MiB) of each test daemon's scratch filesystem (`disk:
/// scratch_size_mb`, unless the test's config names `disk:`).
pub const TEST_SCRATCH_MB: u64 = 1024;

fn base_command(home: &DataDir, opts: &Options, stderr_path: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    if let Some(yaml) = &opts.config {
        let mut yaml = yaml_for_backend(yaml);
        let names_pool = yaml.lines().any(|l| l.starts_with("pool:"));
        if opts.disable_pool && !names_pool {
            if !yaml.is_empty() && !yaml.ends_with('\n') {
                yaml.push('\n');
            }
            yaml.push_str("pool:\n  enabled: false\n");
        }
        // A small scratch filesystem (sandboxes' own writes) per daemon:
        // the default takes up to 16 GiB, too much for a suite
        // that runs daemons side by side.
        if !yaml.lines().any(|l| l.starts_with("disk:")) {
            if !yaml.is_empty() && !yaml.ends_with('\n') {
                yaml.push('\n');
            }
            yaml.push_str(&format!("disk:\n  scratch_size_mb: {TEST_SCRATCH_MB}\n"));
        }
        let file = home.write_config(&yaml);
        cmd.arg("--config").arg(file);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SANDKASTEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SANDKASTEN_LISTEN", "127.0.0.1:0")
        .env("SANDKASTEN_DATA_DIR", &home.data);
    if opts.config.is_none() && on_docker() {
        // No config file: the runtime under test comes from the environment.
        cmd.env("SANDKASTEN_RUNTIME", "docker")
            .env("SANDKASTEN_DEFAULT_IMAGE", docker_image());
    }
    cmd.env_remove("DOCKER_HOST");
    if on_remote_engine() {
        cmd.env(
            "DOCKER_HOST",
            format!(
                "tcp://127.0.0.1:{}",
                sandkasten_conformance::engine_over_tcp()
            ),
        );
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // Logs go to a file: plain text reads better there than colour codes.
    cmd.env("NO_COLOR", "1");
    if let Some(nofile) = opts.nofile {
        // SAFETY: between fork and exec only setrlimit, a plain system
        // call (async-signal-safe), runs; nothing allocates or locks.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let log = File::create(stderr_path).expect("creating the daemon's log file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    cmd
}

/// Spawns the daemon and waits for its `listening on http://...` line.
/// Every stdout line is copied to `stdout_path`.
fn spawn_and_wait_listening(
    mut cmd: Command,
    stderr_path: &Path,
    stdout_path: &Path,
) -> (Child, String) {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out_path = stdout_path.to_path_buf();
    std::thread::spawn(move || {
        let mut out = File::create(out_path).ok();
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(f) = out.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if !sent && line.starts_with("listening on ") {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    let failure = |child: &mut Child, why: String| -> ! {
        let _ = child.kill();
        let status = child.wait().ok();
        panic!(
            "{why} (exit status: {status:?})\n--- stdout ---\n{}\n--- stderr, last 200 lines ---\n{}",
            fs::read_to_string(stdout_path).unwrap_or_default(),
            tail(&fs::read_to_string(stderr_path).unwrap_or_default(), 200)
        );
    };
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => {
            let url = line["listening on ".len()..].trim().to_string();
            if !url.starts_with("http://127.0.0.1:") {
                failure(&mut child, format!("unexpected listening line {line:?}"));
            }
            (child, url)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => failure(
            &mut child,
            format!("the daemon printed no `listening on` line within {START_TIMEOUT:?}"),
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => failure(
            &mut child,
            "the daemon closed stdout without printing `listening on`".to_string(),
        ),
    }
}

/// The outcome of a `serve` that was expected to refuse its config.
#[derive(Debug)]
pub struct RefusedStart {
    pub status: ExitStatus,
    /// stdout and stderr together.
    pub output: String,
}

/// Runs `sandkasten serve --config FILE` with `yaml` and expects it to exit
/// on its own (within [`START_TIMEOUT`]). Panics if it starts listening.
pub fn serve_expecting_refusal(yaml: &str) -> RefusedStart {
    let home = DataDir::new();
    let n = home.next_n();
    let stderr_path = home.root.join(format!("daemon-{n}.stderr.log"));
    let opts = Options {
        config: Some(yaml.to_string()),
        disable_pool: false,
        ..Options::default()
    };
    let mut cmd = base_command(&home, &opts, &stderr_path);
    cmd.env("SANDKASTEN_API_KEY", &home.key);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let collected = Arc::new(Mutex::new(String::new()));
    let sink = collected.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        let out = collected.lock().unwrap().clone();
        if out.contains("listening on ") || started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon did not refuse this config:\n{yaml}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let output = format!(
        "{}{}",
        collected.lock().unwrap(),
        fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    RefusedStart { status, output }
}

// ---------------------------------------------------------------------------
// Raw HTTP (for a body the daemon must refuse before reading it all)
// ---------------------------------------------------------------------------

/// Sends `POST path` with `Content-Length: content_length` over a raw TCP
/// connection, writing `chunk` repeatedly in a second thread while reading
/// the response, so that a server that answers before reading the whole
/// body (and then closes) is still heard. Returns `(status, body)`.
pub fn raw_post_oversized(
    port: u16,
    path: &str,
    key: &str,
    prefix: &[u8],
    chunk: &[u8],
    content_length: u64,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("sending the head");
    let mut writer = stream.try_clone().unwrap();
    let prefix = prefix.to_vec();
    let chunk = chunk.to_vec();
    let write_thread = std::thread::spawn(move || {
        let mut sent: u64 = 0;
        let mut buf = prefix;
        while sent < content_length {
            let n = (buf.len() as u64).min(content_length - sent) as usize;
            if writer.write_all(&buf[..n]).is_err() {
                return sent;
            }
            sent += n as u64;
            buf.clone_from(&chunk);
        }
        sent
    });
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; 65536];
    let complete = |got: &[u8]| -> bool {
        let Some(end) = find(got, b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let body = &got[end + 4..];
        if let Some(cl) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            return body.len() >= cl;
        }
        if head.contains("transfer-encoding: chunked") {
            return find(body, b"0\r\n\r\n").is_some();
        }
        false
    };
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if complete(&got) {
                    break;
                }
            }
            Err(e) => {
                if find(&got, b"\r\n\r\n").is_some() {
                    break;
                }
                panic!("reading the response to an oversized body failed: {e}");
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = write_thread.join();
    let end = find(&got, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no HTTP response to an oversized body: {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let mut body = got[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, String::from_utf8_lossy(&body).to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]).to_string();
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

// ---------------------------------------------------------------------------
// Host files that a sandbox must never see
// ---------------------------------------------------------------------------

/// A file with random content on the host, removed on drop.
pub struct HostMarker {
    pub path: PathBuf,
    pub content: String,
    _dir: Option<tempfile::TempDir>,
}

impl HostMarker {
    /// A marker in a fresh host temp dir.
    pub fn in_temp_dir() -> HostMarker {
        let dir = tempfile::Builder::new()
            .prefix("sandkasten-e2e-host-")
            .tempdir()
            .expect("host temp dir");
        let content = format!("host-secret-{}", random_hex(24));
        let path = dir.path().join(format!("marker-{}", random_hex(8)));
        fs::write(&path, &content).expect("writing host marker");
        HostMarker {
            path,
            content,
            _dir: Some(dir),
        }
    }

    /// A marker file directly in `dir` (e.g. `/root`).
    pub fn in_dir(dir: &Path) -> HostMarker {
        let content = format!("host-secret-{}", random_hex(24));
        let path = dir.join(format!(".sandkasten-e2e-marker-{}", random_hex(8)));
        fs::write(&path, &content)
            .unwrap_or_else(|e| panic!("writing host marker {}: {e}", path.display()));
        HostMarker {
            path,
            content,
            _dir: None,
        }
    }

    pub fn file_name(&self) -> String {
        self.path.file_name().unwrap().to_string_lossy().to_string()
    }

    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().to_string()
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        if self._dir.is_none() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
