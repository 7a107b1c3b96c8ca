//! Test harness of the docker runtime: the real engine (never mocked; a
//! missing engine fails the tests with what to do), the real static agent
//! built from this tree, and a small test image (busybox + bash from the
//! host) imported through the runtime itself and cached by content.

#![allow(dead_code)] // each test target uses a different part

use sandkasten_docker::{DockerConfig, DockerRuntime};
use sandkasten_runtime::{
    AgentClient, ExecReply, Limits, NetworkMode, Runtime, SandboxSpec, WorkspaceMount,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// How long any single exec in a test may take before it fails instead
/// of hanging.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// A docker runtime with its own data dir under /tmp (`dockerrt-*`).
pub struct Harness {
    pub rt: DockerRuntime,
    pub image: String,
    dir: Option<tempfile::TempDir>,
}

impl Harness {
    pub async fn new() -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("dockerrt-")
            .tempdir_in("/tmp")
            .unwrap();
        let rt = Self::runtime_at(dir.path()).await;
        let image = test_image(&rt).await;
        Harness {
            rt,
            image,
            dir: Some(dir),
        }
    }

    /// Another runtime on the same data dir (a daemon restart).
    pub async fn restart(&self) -> DockerRuntime {
        Self::runtime_at(self.data_dir()).await
    }

    async fn runtime_at(data_dir: &Path) -> DockerRuntime {
        let agent = data_dir.join("bin").join("sandkasten-agent-test");
        if !agent.exists() {
            std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
            // A private copy: a concurrent rebuild of the shared one must
            // not change what this test's containers run.
            std::fs::copy(agent_binary(), &agent).unwrap();
        }
        let cfg = DockerConfig {
            data_dir: data_dir.to_path_buf(),
            agent_binary: agent,
            host: None,
            oci_runtime: None,
            tmp_size_mb: 64,
            min_free_mb: 16,
            network: None,
            sandbox_user: Default::default(),
        };
        match DockerRuntime::new(cfg).await {
            Ok(rt) => rt,
            Err(e) => panic!(
                "the docker runtime tests need a running Docker engine as root \
                 (apt-get install docker.io; dockerd &): {e}"
            ),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// A spec for this harness's image with small limits.
    pub fn spec(&self, workspace: WorkspaceMount) -> SandboxSpec {
        SandboxSpec {
            id: unique("s"),
            image: self.image.clone(),
            limits: Limits {
                memory_mb: 256,
                cpu: 1.0,
                pids: 64,
                disk_mb: Some(1024),
            },
            network: NetworkMode::None,
            readonly_rootfs: false,
            workspace,
            env: vec![("SANDKASTEN_TEST".into(), "yes".into())],
            wake: false,
            from_snapshot: None,
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        // A failed test leaves its containers and volumes (all labelled
        // with this data dir): remove them on a thread of its own, since
        // this may run inside an async test.
        let label = format!("sandkasten.data_dir={}", dir.path().display());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(remove_labelled(&label));
        });
        let _ = cleanup.join();
        // Never delete a tree with a mount below it.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let p = dir.path().display().to_string();
        if mounts.lines().any(|l| l.contains(&p)) {
            eprintln!("leaving {p}: something is mounted below it");
            let _ = dir.keep();
        }
    }
}

/// Removes every container and volume carrying `label` (key=value).
async fn remove_labelled(label: &str) {
    use bollard::query_parameters::{
        ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    };
    let Ok(docker) = bollard::Docker::connect_with_local_defaults() else {
        return;
    };
    let Ok(docker) = docker.negotiate_version().await else {
        return;
    };
    let filters = std::collections::HashMap::from([("label", vec![label.to_string()])]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for c in docker.list_containers(Some(opts)).await.unwrap_or_default() {
        if let Some(id) = c.id {
            let rm = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(rm)).await;
        }
    }
    let opts = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    if let Ok(v) = docker.list_volumes(Some(opts)).await {
        for v in v.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }
}

/// A fresh id with a prefix (32 chars at most, like the engine's).
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{:x}{:x}{n}", std::process::id(), t & 0xffff_ffff)
}

/// Output, exit code and cwd of one exec.
pub struct Ran {
    pub output: String,
    pub exit_code: i32,
    pub cwd: String,
}

/// Runs `cmd` through the agent (the exec path the daemon uses).
pub async fn run(agent: &AgentClient, cmd: &str) -> Ran {
    let mut h = agent.exec(cmd.to_string(), 30_000, 1 << 20).unwrap();
    let mut out = Vec::new();
    let done = tokio::time::timeout(EXEC_TIMEOUT, async {
        while let Some(r) = h.next().await {
            match r {
                ExecReply::Output(data) => out.extend_from_slice(&data),
                ExecReply::Done(d) => return Some((d.exit_code, d.cwd)),
                ExecReply::Refused(m) => panic!("{cmd:?} refused: {m}"),
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("exec {cmd:?} did not finish"));
    let (exit_code, cwd) = done.unwrap_or_else(|| panic!("agent closed during {cmd:?}"));
    Ran {
        output: String::from_utf8_lossy(&out).into_owned(),
        exit_code,
        cwd,
    }
}

/// Runs `cmd`, asserts exit 0, returns its output.
pub async fn ok(agent: &AgentClient, cmd: &str) -> String {
    let r = run(agent, cmd).await;
    assert_eq!(r.exit_code, 0, "{cmd:?} failed: {}", r.output);
    r.output
}

/// The static agent, built from this tree exactly as the daemon's build
/// script builds it (same target dir, so the two share the work).
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .canonicalize()
                .unwrap();
            let vv = Command::new("rustc").arg("-vV").output().unwrap();
            let host = String::from_utf8_lossy(&vv.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
                .expect("rustc -vV names the host");
            let target_dir = root.join("target").join("agent");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&root)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "sandkasten-agent",
                    "--bin",
                    "sandkasten-agent",
                    "--target",
                    &host,
                ])
                .arg("--target-dir")
                .arg(&target_dir)
                .env_remove("RUSTFLAGS")
                .env_remove("RUSTC_WRAPPER")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("CARGO_BUILD_RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
                .status()
                .expect("running cargo to build the static agent");
            assert!(
                status.success(),
                "building the static sandkasten-agent failed"
            );
            target_dir
                .join(host)
                .join("release")
                .join("sandkasten-agent")
        })
        .clone()
}

/// Busybox applets the test image links.
const APPLETS: &[&str] = &[
    "cat", "ls", "mkdir", "rm", "sleep", "echo", "true", "false", "id", "ps", "head", "tail", "wc",
    "env", "printf", "touch", "chmod", "stat", "grep", "sed", "dd", "cp", "mv", "seq", "uname",
    "hostname", "readlink", "sh", "kill", "cut", "tr", "sort",
];

/// `sandkasten-test:bash-<hash>`: busybox-static and the host's bash with
/// its libraries, a passwd with the sandbox user, imported once through
/// the runtime's own `import_image` and reused while its inputs are
/// unchanged.
pub async fn test_image(rt: &DockerRuntime) -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| async {
            let busybox = Path::new("/bin/busybox");
            let bash = Path::new("/bin/bash");
            assert!(
                busybox.exists() && bash.exists(),
                "the docker runtime tests build their image from the host's /bin/busybox \
                 and /bin/bash: apt-get install busybox-static bash"
            );
            let mut files: Vec<(String, PathBuf)> = vec![
                ("bin/busybox".into(), busybox.into()),
                ("bin/bash".into(), bash.into()),
            ];
            let ldd = Command::new("ldd").arg(bash).output().expect("ldd");
            for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
                // "/lib64/ld-linux-x86-64.so.2 (0x...)"
                let path = line
                    .split("=>")
                    .last()
                    .and_then(|r| r.split_whitespace().next())
                    .filter(|p| p.starts_with('/'));
                if let Some(p) = path {
                    files.push((p.trim_start_matches('/').to_string(), PathBuf::from(p)));
                }
            }
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for (name, p) in &files {
                for b in name.bytes().chain(std::fs::read(p).unwrap()) {
                    hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
            for a in APPLETS {
                for b in a.bytes() {
                    hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
            let name = format!("sandkasten-test:bash-{:012x}", hash & 0xffff_ffff_ffff);
            if rt
                .list_images()
                .await
                .unwrap()
                .iter()
                .any(|i| i.name == name)
            {
                return name;
            }
            let dir = tempfile::Builder::new()
                .prefix("dockerrt-img-")
                .tempdir_in("/tmp")
                .unwrap();
            let tarball = dir.path().join("rootfs.tar");
            build_rootfs_tar(&tarball, &files);
            rt.import_image(&name, tarball)
                .await
                .unwrap_or_else(|e| panic!("importing the test image: {e}"));
            name
        })
        .await
        .clone()
}

fn build_rootfs_tar(out: &Path, files: &[(String, PathBuf)]) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let dir = |b: &mut tar::Builder<std::fs::File>, path: &str, mode: u32, uid: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    let file = |b: &mut tar::Builder<std::fs::File>, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut dirs: Vec<String> = vec![
        "bin".into(),
        "etc".into(),
        "root".into(),
        "home".into(),
        "workspace".into(),
        "proc".into(),
        "sys".into(),
        "dev".into(),
    ];
    for (name, _) in files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.push(d.display().to_string());
            p = d.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        dir(&mut b, d, 0o755, 0);
    }
    dir(&mut b, "tmp", 0o1777, 0);
    dir(&mut b, "home/sandbox", 0o755, 1000);
    for (name, p) in files {
        file(&mut b, name, 0o755, &std::fs::read(p).unwrap());
    }
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash\n",
    );
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nsandbox:x:1000:\n");
    b.finish().unwrap();
}

/// Runs the docker CLI (for checks from outside the runtime).
pub fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}
