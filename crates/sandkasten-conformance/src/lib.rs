//! The harness of the `Runtime` conformance suite (`tests/conformance.rs`):
//! one suite of behaviours, written once against `&dyn Runtime`, run
//! against the native and the docker backend.
//!
//! Each test gets an [`Env`]: a fresh runtime on its own data dir under
//! `/tmp` (`conformance-*`), the image to start (`base` on native, a small
//! busybox + bash image on docker, imported once through the runtime and
//! cached by content), a copy of the static agent built from this tree by
//! `build.rs`, and a per-backend [`Env::assert_clean`] hook that checks
//! what `destroy` must leave behind: nothing.
//!
//! Docker is never mocked and never skipped: without a running engine the
//! docker tests fail with what to do.
//!
//! [`run`] runs one suite with a time limit, then sweeps whatever the
//! suite left (also after a failure) and, when the suite passed, fails the
//! test if anything was left: no sandbox listed by the runtime, no
//! container or volume labelled with the data dir, no session cgroup.

use sandkasten_docker::{DockerConfig, DockerRuntime};
use sandkasten_native::{Cgroups, Hierarchy, NativeConfig, NativeRuntime};
use sandkasten_protocol::{Request, Response};
use sandkasten_runtime::{
    latebind, AgentClient, ExecReply, Limits, NetworkMode, Runtime, Sandbox, SandboxHandle,
    SandboxSpec, WorkspaceMount,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest one exec may take before the test fails instead of hanging.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest one behaviour may take on one backend.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The static agent `build.rs` built from this tree.
pub const AGENT_BINARY: &str = env!("SANDKASTEN_AGENT_BIN");

/// Memory limit of the sandboxes [`Env::spec`] describes.
pub const MEMORY_MB: u64 = 256;
/// Pids limit of the sandboxes [`Env::spec`] describes.
pub const PIDS: u64 = 64;
/// Disk limit (MiB) of the sandboxes [`Env::spec`] describes.
pub const DISK_MB: u64 = 512;
/// Pids limit of those sandboxes under gVisor.
pub const PIDS_GVISOR: u64 = 256;

/// Which backend an [`Env`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    /// A local engine (unix socket, shared filesystem).
    Docker,
    /// The same engine reached as a remote one: over TCP on loopback
    /// ([`engine_over_tcp`]), so the runtime shares nothing with it
    /// through the filesystem (the agent is copied in, connections go
    /// through the exec API, workspace access through helper containers).
    DockerRemote,
    /// A local engine with `docker.runtime: runsc` (gVisor): served like a
    /// remote engine, under gVisor's own kernel.
    Gvisor,
}

impl Kind {
    /// Served through the relay and helpers (no shared files).
    pub fn is_relayed(self) -> bool {
        matches!(self, Kind::DockerRemote | Kind::Gvisor)
    }
}

/// The local engine's socket.
pub const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// A loopback TCP port forwarding every connection to the local engine's
/// socket, started once per test process: the engine as a remote daemon
/// would see it.
pub fn engine_over_tcp() -> u16 {
    static F: std::sync::OnceLock<TcpForwarder> = std::sync::OnceLock::new();
    F.get_or_init(|| TcpForwarder::start(ENGINE_SOCKET)).port()
}

/// Forwards connections to a loopback TCP port to a unix socket, byte for
/// byte, without delay (TCP_NODELAY), a thread pair per connection; it
/// can fail like a network: [`TcpForwarder::cut`] breaks every open
/// connection, [`TcpForwarder::set_down`] refuses new ones.
pub struct TcpForwarder {
    port: u16,
    state: Arc<Mutex<ForwarderState>>,
}

#[derive(Default)]
struct ForwarderState {
    down: bool,
    next: u64,
    /// Open connections (handles to cut them), until their response side
    /// ends.
    open: HashMap<u64, (std::net::TcpStream, std::os::unix::net::UnixStream)>,
}

impl TcpForwarder {
    pub fn start(target: &str) -> TcpForwarder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ForwarderState::default()));
        let (theirs, target) = (state.clone(), target.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                if theirs.lock().unwrap().down {
                    continue; // dropped: the peer sees the connection closed
                }
                let _ = tcp.set_nodelay(true);
                let Ok(unix) = std::os::unix::net::UnixStream::connect(&target) else {
                    continue;
                };
                let (Ok(t2), Ok(u2), Ok(t3), Ok(u3)) = (
                    tcp.try_clone(),
                    unix.try_clone(),
                    tcp.try_clone(),
                    unix.try_clone(),
                ) else {
                    continue;
                };
                let id = {
                    let mut st = theirs.lock().unwrap();
                    st.next += 1;
                    let id = st.next;
                    st.open.insert(id, (t3, u3));
                    id
                };
                let (mut t1, mut u1, mut t2, mut u2) = (tcp, unix, t2, u2);
                let state = theirs.clone();
                std::thread::spawn(move || {
                    // The client's end of its requests (or of an exec's
                    // stdin) is passed on as such.
                    match std::io::copy(&mut t1, &mut u1) {
                        Ok(_) => {
                            let _ = u1.shutdown(std::net::Shutdown::Write);
                        }
                        Err(_) => {
                            let _ = u1.shutdown(std::net::Shutdown::Both);
                        }
                    }
                });
                std::thread::spawn(move || {
                    // The responses ended, or the client is gone: the
                    // connection is over on both sides, so the engine stops
                    // writing (a held fd would keep it blocked).
                    let _ = std::io::copy(&mut u2, &mut t2);
                    let _ = t2.shutdown(std::net::Shutdown::Both);
                    let _ = u2.shutdown(std::net::Shutdown::Both);
                    state.lock().unwrap().open.remove(&id);
                });
            }
        });
        TcpForwarder { port, state }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Breaks every open connection, both ways, on both sides.
    pub fn cut(&self) {
        for (_, (t, u)) in self.state.lock().unwrap().open.drain() {
            let _ = t.shutdown(std::net::Shutdown::Both);
            let _ = u.shutdown(std::net::Shutdown::Both);
        }
    }

    /// While down, new connections are closed at once (open ones stay).
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
}

enum Backend {
    Native {
        rt: Arc<NativeRuntime>,
        cgroups: Cgroups,
    },
    Docker {
        rt: Arc<DockerRuntime>,
    },
}

/// One backend on its own data dir, for one test.
pub struct Env {
    pub kind: Kind,
    /// The runtime under test, as the engine holds it.
    pub rt: Arc<dyn Runtime>,
    /// The image sandboxes start from.
    pub image: String,
    backend: Backend,
    data_dir: PathBuf,
    tmp: Mutex<Option<tempfile::TempDir>>,
    /// Every sandbox the suite created (for the sweep after a failure).
    handles: Mutex<Vec<SandboxHandle>>,
    /// Every workspace id the suite asked for.
    workspaces: Mutex<Vec<String>>,
    /// Every image name the suite asked for.
    images: Mutex<Vec<String>>,
}

/// Runs `suite` on a fresh [`Env`] of `kind` within [`TEST_TIMEOUT`], then
/// removes everything it left; fails when the suite failed or, after a
/// passing suite, when anything was left behind.
pub async fn run<F, Fut>(kind: Kind, suite: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let env = Arc::new(Env::new(kind).await);
    let outcome = tokio::spawn(tokio::time::timeout(TEST_TIMEOUT, suite(env.clone()))).await;
    let leftovers = env.leftovers().await;
    env.sweep().await;
    match outcome {
        Ok(Ok(())) => assert!(
            leftovers.is_empty(),
            "{kind:?}: the behaviour passed but left {leftovers:?}"
        ),
        Ok(Err(_)) => panic!("{kind:?}: did not finish within {TEST_TIMEOUT:?}"),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("{kind:?}: the suite's task failed: {e}"),
    }
}

impl Env {
    /// A fresh runtime of `kind` on a new data dir. Panics with what to do
    /// when the host cannot run it (no Docker engine, not root, ...).
    pub async fn new(kind: Kind) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("conformance-")
            .tempdir_in("/tmp")
            .unwrap();
        let data_dir = tmp.path().to_path_buf();
        // A private copy: a concurrent rebuild of the shared one must not
        // change what this test's sandboxes run.
        let agent = data_dir.join("bin").join("sandkasten-agent");
        std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
        std::fs::copy(AGENT_BINARY, &agent)
            .unwrap_or_else(|e| panic!("copying the agent {AGENT_BINARY}: {e}"));
        let backend = backend_at(kind, &data_dir).await;
        let (rt, image): (Arc<dyn Runtime>, String) = match &backend {
            Backend::Native { rt, .. } => (rt.clone(), "base".into()),
            Backend::Docker { rt } => (rt.clone(), docker_test_image(rt).await),
        };
        Env {
            kind,
            rt,
            image,
            backend,
            data_dir,
            tmp: Mutex::new(Some(tmp)),
            handles: Mutex::new(Vec::new()),
            workspaces: Mutex::new(Vec::new()),
            images: Mutex::new(Vec::new()),
        }
    }

    /// Another runtime of the same kind on the same data dir: the daemon
    /// after a restart.
    pub async fn restarted(&self) -> Arc<dyn Runtime> {
        match backend_at(self.kind, &self.data_dir).await {
            Backend::Native { rt, .. } => rt,
            Backend::Docker { rt } => rt,
        }
    }

    /// The runtime's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The pids limit of [`Env::spec`]: [`PIDS`], or under gVisor
    /// [`PIDS_GVISOR`] (the limit holds inside gVisor's kernel, but the
    /// stats count the host tasks of gVisor itself, about 60 at start;
    /// documented in docs/api.md).
    pub fn pids(&self) -> u64 {
        if self.kind == Kind::Gvisor {
            PIDS_GVISOR
        } else {
            PIDS
        }
    }

    /// A spec for a fresh sandbox id: this env's image, [`MEMORY_MB`],
    /// one core, [`PIDS`], loopback only, writable root, ephemeral
    /// workspace, `SANDKASTEN_CONFORMANCE=yes` in the shell's environment.
    pub fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            id: unique("c"),
            image: self.image.clone(),
            limits: Limits {
                memory_mb: MEMORY_MB,
                cpu: 1.0,
                pids: self.pids(),
                disk_mb: Some(DISK_MB),
            },
            network: NetworkMode::None,
            readonly_rootfs: false,
            workspace: WorkspaceMount::Ephemeral,
            env: vec![("SANDKASTEN_CONFORMANCE".into(), "yes".into())],
            wake: false,
            from_snapshot: None,
        }
    }

    /// A fresh workspace id (deleted by the sweep if the suite does not).
    pub fn workspace_id(&self) -> String {
        let ws = unique("w");
        self.workspaces.lock().unwrap().push(ws.clone());
        ws
    }

    /// A fresh image name (removed by the sweep if the suite does not).
    pub fn image_name(&self) -> String {
        let name = format!("sandkasten-conformance:imported-{}", unique(""));
        self.images.lock().unwrap().push(name.clone());
        name
    }

    /// Creates a sandbox that must start, and remembers it for the sweep.
    pub async fn create(&self, spec: SandboxSpec) -> Sandbox {
        let id = spec.id.clone();
        let sb = self
            .rt
            .create(spec)
            .await
            .unwrap_or_else(|e| panic!("{:?}: create {id}: {e}", self.kind));
        assert_eq!(sb.handle.id, id);
        self.handles.lock().unwrap().push(sb.handle.clone());
        if let Backend::Docker { rt } = &self.backend {
            assert_eq!(rt.is_remote(), self.kind.is_relayed());
            if rt.is_remote() {
                // Nothing on this host serves it: the run dir only marks
                // the session, the agent is reached through the engine.
                let run = rt.run_dir(&id);
                let entries: Vec<_> = std::fs::read_dir(&run)
                    .unwrap_or_else(|e| panic!("{}: {e}", run.display()))
                    .collect();
                assert!(
                    entries.is_empty(),
                    "remote: {entries:?} in {}",
                    run.display()
                );
            }
        }
        sb
    }

    /// Asserts that sandbox `handle` left nothing: the runtime does not
    /// list it, and the backend's own traces are gone (native: session
    /// dir, cgroups, processes; docker: container, run dir, ephemeral
    /// volume).
    pub async fn assert_clean(&self, handle: &SandboxHandle) {
        let id = &handle.id;
        let listed = self.rt.list_sandboxes().await.unwrap();
        assert!(
            !listed.contains(id),
            "{:?}: {id} is still listed: {listed:?}",
            self.kind
        );
        match &self.backend {
            Backend::Native { rt, cgroups } => {
                let dir = rt.session_dir(id);
                assert!(!dir.exists(), "native: {} survived", dir.display());
                for g in native_cgroups(cgroups, id) {
                    assert!(!g.exists(), "native: cgroup {} survived", g.display());
                }
                let procs = processes_in_cgroup(&format!("/sandkasten/{id}"));
                assert!(
                    procs.is_empty(),
                    "native: processes of {id} survived: {procs:?}"
                );
                if handle.pid > 0 {
                    assert!(
                        !alive(handle.pid, handle.start_time),
                        "native: the init of {id} (pid {}) survived",
                        handle.pid
                    );
                }
            }
            Backend::Docker { rt } => {
                let name = sandkasten_docker::container_name(id);
                let c = rt.docker().inspect_container(&name, None).await;
                assert!(c.is_err(), "docker: container {name} survived");
                let vol = sandkasten_docker::volume_name(id);
                assert!(
                    rt.docker().inspect_volume(&vol).await.is_err(),
                    "docker: ephemeral volume {vol} survived"
                );
                let run = rt.run_dir(id);
                assert!(!run.exists(), "docker: {} survived", run.display());
            }
        }
    }

    /// What this env's data dir still owns on the host, as descriptions.
    async fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.rt.list_sandboxes().await {
            Ok(ids) => out.extend(ids.into_iter().map(|id| format!("sandbox {id}"))),
            Err(e) => out.push(format!("list_sandboxes failed: {e}")),
        }
        match &self.backend {
            Backend::Native { cgroups, .. } => {
                for h in self.handles.lock().unwrap().iter() {
                    for g in native_cgroups(cgroups, &h.id) {
                        if g.exists() {
                            out.push(format!("cgroup {}", g.display()));
                        }
                    }
                }
                let ws = self.data_dir.join("workspaces");
                for e in std::fs::read_dir(&ws).into_iter().flatten().flatten() {
                    out.push(format!("workspace {}", e.path().display()));
                }
            }
            Backend::Docker { rt } => {
                let (containers, volumes) = labelled(rt, &self.label()).await;
                out.extend(containers.into_iter().map(|c| format!("container {c}")));
                out.extend(volumes.into_iter().map(|v| format!("volume {v}")));
            }
        }
        out
    }

    fn label(&self) -> String {
        format!(
            "{}={}",
            sandkasten_docker::LABEL_DATA_DIR,
            self.data_dir.display()
        )
    }

    /// Destroys every sandbox and workspace of this env, then deletes the
    /// data dir unless something is mounted below it.
    async fn sweep(&self) {
        let mut handles = self.handles.lock().unwrap().clone();
        for id in self.rt.list_sandboxes().await.unwrap_or_default() {
            if !handles.iter().any(|h| h.id == id) {
                handles.push(SandboxHandle {
                    id,
                    pid: 0,
                    start_time: 0,
                });
            }
        }
        for h in &handles {
            if let Err(e) = self.rt.destroy(h).await {
                eprintln!("{:?}: sweep: destroying {}: {e}", self.kind, h.id);
            }
        }
        let workspaces = self.workspaces.lock().unwrap().clone();
        for ws in &workspaces {
            if let Err(e) = self.rt.delete_workspace(ws).await {
                eprintln!("{:?}: sweep: deleting workspace {ws}: {e}", self.kind);
            }
        }
        let images = self.images.lock().unwrap().clone();
        for name in &images {
            // Removed already when the suite got that far.
            let _ = self.rt.remove_image(name).await;
        }
        if let Backend::Docker { rt } = &self.backend {
            remove_labelled(rt, &self.label()).await;
        }
        let Some(tmp) = self.tmp.lock().unwrap().take() else {
            return;
        };
        // Never delete a tree with a mount below it.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let p = tmp.path().display().to_string();
        if mounts.lines().any(|l| l.contains(&p)) {
            eprintln!("leaving {p}: something is mounted below it");
            let _ = tmp.keep();
        }
    }
}

/// A runtime of `kind` on `data_dir`, running the agent copied to
/// `<data_dir>/bin`. Panics with what to do when the host cannot run it.
async fn backend_at(kind: Kind, data_dir: &Path) -> Backend {
    let agent = data_dir.join("bin").join("sandkasten-agent");
    match kind {
        Kind::Native => {
            let cfg = NativeConfig {
                data_dir: data_dir.to_path_buf(),
                agent_binary: agent,
                tmp_size_mb: 64,
                // A small scratch filesystem: sandboxes' writes under a
                // disk limit, as a daemon runs them by default.
                scratch_size_mb: Some(1024),
                min_free_mb: 16,
                // The host as the daemon finds it: both paths must hold.
                favordynmods: false,
                pty_max_for_sessions: None,
                pid_max_for_sessions: None,
                // One host range per sandbox, as a daemon runs them.
                uid_ranges: 64,
                network: None,
            };
            let rt = Arc::new(NativeRuntime::new(cfg).unwrap_or_else(|e| {
                panic!("the native conformance tests need root on a Linux host: {e}")
            }));
            let cgroups = Cgroups::detect().unwrap();
            Backend::Native { rt, cgroups }
        }
        Kind::Docker | Kind::DockerRemote | Kind::Gvisor => {
            let cfg = DockerConfig {
                data_dir: data_dir.to_path_buf(),
                agent_binary: agent,
                host: (kind == Kind::DockerRemote)
                    .then(|| format!("tcp://127.0.0.1:{}", engine_over_tcp())),
                oci_runtime: (kind == Kind::Gvisor).then(|| "runsc".to_string()),
                tmp_size_mb: 64,
                min_free_mb: 16,
                network: None,
                sandbox_user: Default::default(),
            };
            match DockerRuntime::new(cfg).await {
                Ok(rt) => Backend::Docker { rt: Arc::new(rt) },
                Err(e) => panic!(
                    "the docker conformance tests need a running Docker engine, as root \
                     (apt-get install docker.io; dockerd &); they never skip: {e}"
                ),
            }
        }
    }
}

/// The session cgroups the native runtime makes for `id`.
fn native_cgroups(c: &Cgroups, id: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for h in [&c.memory, &c.pids, &c.cpu, &c.cpuacct] {
        let (Hierarchy::V1(root) | Hierarchy::V2(root)) = h;
        let g = root.join("sandkasten").join(id);
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// The state letter of `/proc/<pid>/stat` (after the command name).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` is the process started at `start_time` and has not
/// exited (a zombie waiting for its parent to reap it has).
fn alive(pid: i32, start_time: u64) -> bool {
    latebind::start_time(pid) == Some(start_time)
        && !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// Host pids whose cgroup path (any hierarchy) ends with `suffix`.
fn processes_in_cgroup(suffix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let inside = cg
            .lines()
            .any(|l| l.ends_with(suffix) || l.contains(&format!("{suffix}/")));
        if inside && !matches!(proc_state(pid), None | Some('Z') | Some('X')) {
            out.push(pid);
        }
    }
    out
}

/// Names of the containers and volumes carrying `label` (key=value).
async fn labelled(rt: &DockerRuntime, label: &str) -> (Vec<String>, Vec<String>) {
    use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
    let filters = std::collections::HashMap::from([("label", vec![label.to_string()])]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = rt
        .docker()
        .list_containers(Some(opts))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.into_iter().next()).or(c.id))
        .collect();
    let opts = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let volumes = rt
        .docker()
        .list_volumes(Some(opts))
        .await
        .ok()
        .and_then(|v| v.volumes)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    (containers, volumes)
}

/// Removes every container and volume carrying `label` (key=value).
async fn remove_labelled(rt: &DockerRuntime, label: &str) {
    use bollard::query_parameters::{RemoveContainerOptionsBuilder, RemoveVolumeOptions};
    let (containers, volumes) = labelled(rt, label).await;
    for c in containers {
        let rm = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let c = c.trim_start_matches('/').to_string();
        if let Err(e) = rt.docker().remove_container(&c, Some(rm)).await {
            eprintln!("docker: sweep: removing container {c}: {e}");
        }
    }
    for v in volumes {
        if let Err(e) = rt
            .docker()
            .remove_volume(&v, None::<RemoveVolumeOptions>)
            .await
        {
            eprintln!("docker: sweep: removing volume {v}: {e}");
        }
    }
}

/// A fresh id with a prefix: unique across processes and runs (session
/// ids name host cgroups and engine containers), at most 32 chars.
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
#[derive(Debug)]
pub struct Ran {
    pub output: String,
    pub exit_code: i32,
    pub cwd: String,
}

/// Runs `cmd` in the sandbox's persistent shell through the agent (the
/// exec path the engine uses).
pub async fn run_cmd(agent: &AgentClient, cmd: &str) -> Ran {
    let mut h = agent.exec(cmd.to_string(), 30_000, 1 << 20).unwrap();
    let mut out = Vec::new();
    let done = tokio::time::timeout(EXEC_TIMEOUT, async {
        while let Some(r) = h.next().await {
            match r {
                ExecReply::Output(data) => out.extend_from_slice(&data),
                ExecReply::Done(d) => return Some((d.exit_code, d.cwd)),
                other => panic!("unexpected reply to {cmd:?}: {other:?}"),
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
    let r = run_cmd(agent, cmd).await;
    assert_eq!(r.exit_code, 0, "{cmd:?} failed: {}", r.output);
    r.output
}

/// Sends a one-reply request to the agent.
pub async fn call(agent: &AgentClient, req: Request) -> Response {
    tokio::time::timeout(EXEC_TIMEOUT, agent.call(req.clone()))
        .await
        .unwrap_or_else(|_| panic!("{req:?} got no reply"))
        .unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

/// Busybox applets the docker test image links.
const APPLETS: &[&str] = &[
    "cat", "ls", "mkdir", "rm", "sleep", "echo", "true", "false", "id", "ps", "head", "tail", "wc",
    "env", "printf", "touch", "chmod", "stat", "grep", "sed", "dd", "cp", "mv", "seq", "uname",
    "hostname", "readlink", "sh", "kill", "cut", "tr", "sort", "mount", "ln",
];

/// The files of the test root filesystem (busybox-static and the host's
/// bash with its libraries) and a hash of them and the applets.
fn rootfs_files() -> (Vec<(String, PathBuf)>, u64) {
    let busybox = Path::new("/bin/busybox");
    let bash = Path::new("/bin/bash");
    assert!(
        busybox.exists() && bash.exists(),
        "the conformance tests build a test image from the host's /bin/busybox \
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
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    for (name, p) in &files {
        feed(name.as_bytes());
        feed(&std::fs::read(p).unwrap());
    }
    for a in APPLETS {
        feed(a.as_bytes());
    }
    (files, hash)
}

/// Writes a root filesystem tarball with bash, busybox applets and a
/// passwd with the sandbox user (uid 1000) to `out`: an image either
/// backend can import and start.
pub fn write_test_rootfs(out: &Path) {
    build_rootfs_tar(out, &rootfs_files().0);
}

/// `sandkasten-conformance:bash-<hash>`: [`write_test_rootfs`] imported
/// once through the runtime's own `import_image` and reused while its
/// inputs are unchanged.
async fn docker_test_image(rt: &DockerRuntime) -> String {
    let (files, hash) = rootfs_files();
    let name = format!(
        "sandkasten-conformance:bash-{:012x}",
        hash & 0xffff_ffff_ffff
    );
    let images = rt.list_images().await.unwrap();
    if images.iter().any(|i| i.name == name) {
        return name;
    }
    let dir = tempfile::Builder::new()
        .prefix("conformance-img-")
        .tempdir_in("/tmp")
        .unwrap();
    let tarball = dir.path().join("rootfs.tar");
    build_rootfs_tar(&tarball, &files);
    rt.import_image(&name, tarball)
        .await
        .unwrap_or_else(|e| panic!("importing the docker test image: {e}"));
    name
}

fn build_rootfs_tar(out: &Path, files: &[(String, PathBuf)]) {
    type B = tar::Builder<std::fs::File>;
    let mut b: B = tar::Builder::new(std::fs::File::create(out).unwrap());
    let dir = |b: &mut B, path: &str, mode: u32, uid: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    let file = |b: &mut B, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut dirs: Vec<String> = [
        "bin",
        "etc",
        "root",
        "home",
        "workspace",
        "proc",
        "sys",
        "dev",
    ]
    .map(String::from)
    .to_vec();
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
