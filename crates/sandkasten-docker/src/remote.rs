//! The transport of an engine the docker runtime shares no filesystem with
//! (`tcp://`, or a local engine whose OCI runtime keeps its own view of
//! files, such as gVisor): [`RemoteTransport`]. The agent is copied onto the
//! engine, each container's agent is reached through the engine's exec
//! API, and workspaces without a session through helper containers.
//!
//! ```text
//! image  sandkasten-agent:<hash>     a root filesystem of only our static agent
//!                                    (/.sandkasten/agent) and empty /workspace, /tmp,
//!                                    /.sandkasten/run: helper containers run it
//! volume sandkasten-agent-<hash>     the agent binary, mounted read-only at
//!                                    /.sandkasten/bin of every session container
//! ```
//!
//! Both are named after the agent binary's hash, so a daemon upgrade gets a
//! fresh copy and a running container's binary is never rewritten. The
//! copy is made once per daemon process and engine, unless the volume has
//! the binary already: a helper container of the agent image, with the
//! volume mounted, receives the binary under a unique temporary name
//! through the archive endpoint, then runs `sandkasten-agent publish`,
//! which renames it into place. Daemons copying at the same time each
//! rename a whole file (the last one wins, with the same bytes), and a
//! container already running the binary keeps its inode.
//!
//! The relay: the daemon starts `sandkasten-agent relay` in the container
//! (root, attached stdin and stdout, no tty) once per connection, not per
//! call, and speaks the agent protocol through it (`relay.rs` of the
//! agent). The engine frames stdout; the frames' payloads are the agent's
//! bytes, in order.
//!
//! Workspaces without a session: a file operation runs in a short-lived
//! helper of the agent image (its agent's file operations rooted at
//! `/workspace`); size and export read `/workspace/.` through the archive
//! endpoint of a never-started helper and rebase the entries on a blocking
//! thread (the engine's stream bridged to it, never a `block_on` of ours).
//! Helpers hold their volume shared, deletion exclusively.

use crate::transport::{AgentLaunch, AgentReady, RemovalGuard, Transport};
use crate::{api_err, status_of, volume_exists, volume_mount};
use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sandkasten_protocol::AgentConfig;
use sandkasten_runtime::{
    blocking, export_blocking, ports, AgentClient, ExportStream, FileOp, FileReply, FileStream,
    PortStream, RuntimeError, SandboxHandle,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Where the agent volume appears in a session container.
pub const AGENT_DIR: &str = "/.sandkasten/bin";
/// The agent binary in a session container of a remote engine.
pub const AGENT_IN_VOLUME: &str = "/.sandkasten/bin/sandkasten-agent";
/// The agent binary in a helper container (the agent image's own).
pub const AGENT_IN_IMAGE: &str = "/.sandkasten/agent";
/// The label marking our helper containers (removed at start if left).
pub const LABEL_HELPER: &str = "sandkasten.helper";

/// The agent copied onto one engine.
pub struct RemoteAgent {
    /// First 16 hex digits of the binary's sha256.
    hash: String,
    binary: Vec<u8>,
    ready: tokio::sync::OnceCell<()>,
}

impl RemoteAgent {
    pub fn load(binary: &Path) -> Result<RemoteAgent, RuntimeError> {
        use sha2::Digest;
        let bytes = std::fs::read(binary)
            .map_err(|e| RuntimeError::io(format!("reading {}", binary.display()), e))?;
        let digest = sha2::Sha256::digest(&bytes);
        let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(RemoteAgent {
            hash,
            binary: bytes,
            ready: tokio::sync::OnceCell::new(),
        })
    }

    pub fn image(&self) -> String {
        format!("sandkasten-agent:{}", self.hash)
    }

    pub fn volume(&self) -> String {
        format!("sandkasten-agent-{}", self.hash)
    }

    /// Makes sure the engine has the agent image and a complete agent
    /// volume (once per process).
    pub async fn ensure(&self, docker: &Docker, data_dir_label: &str) -> Result<(), RuntimeError> {
        self.ready
            .get_or_try_init(|| self.copy_in(docker, data_dir_label))
            .await
            .map(|_| ())
    }

    async fn copy_in(&self, docker: &Docker, data_dir_label: &str) -> Result<(), RuntimeError> {
        let image = self.image();
        match docker.inspect_image(&image).await {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => {
                let (repo, tag) = image.split_once(':').unwrap_or((&image, "latest"));
                let opts = CreateImageOptionsBuilder::default()
                    .from_src("-")
                    .repo(repo)
                    .tag(tag)
                    .build();
                let body = bollard::body_full(self.image_tar()?.into());
                let mut s = docker.create_image(Some(opts), Some(body), None);
                while let Some(item) = s.next().await {
                    item.map_err(api_err(format!("importing the agent image {image}")))?;
                }
            }
            Err(e) => return Err(api_err(format!("inspecting image {image}"))(e)),
        }
        let volume = self.volume();
        docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(volume.clone()),
                driver: Some("local".into()),
                labels: Some(HashMap::from([(
                    "sandkasten.agent".to_string(),
                    self.hash.clone(),
                )])),
                ..Default::default()
            })
            .await
            .map_err(api_err(format!("creating volume {volume}")))?;
        let tmp = format!("sandkasten-agent.tmp-{}", random_suffix());
        let publish = [
            AGENT_IN_IMAGE.to_string(),
            "publish".into(),
            format!("{AGENT_DIR}/{tmp}"),
            AGENT_IN_VOLUME.into(),
        ]
        .to_vec();
        let helper = Helper::create(
            docker,
            &image,
            vec![volume_mount(&volume, AGENT_DIR, false)],
            data_dir_label,
            Some((publish, vec![])),
        )
        .await?;
        let result = async {
            if helper.exists(AGENT_IN_VOLUME).await? {
                return Ok(());
            }
            let opts = UploadToContainerOptionsBuilder::default()
                .path(AGENT_DIR)
                .build();
            let tar = self.volume_tar(&tmp)?;
            docker
                .upload_to_container(&helper.name, Some(opts), bollard::body_full(tar.into()))
                .await
                .map_err(api_err(format!("copying the agent into volume {volume}")))?;
            helper.start().await?;
            let mut waited = docker.wait_container(
                &helper.name,
                None::<bollard::query_parameters::WaitContainerOptions>,
            );
            match waited.next().await {
                Some(Ok(w)) if w.status_code == 0 => Ok(()),
                other => Err(RuntimeError::Backend {
                    context: format!("publishing the agent in volume {volume}"),
                    message: match other {
                        Some(Ok(w)) => format!("the helper exited with {}", w.status_code),
                        Some(Err(e)) => e.to_string(),
                        None => "the engine ended the wait without a status".into(),
                    },
                }),
            }
        }
        .await;
        helper.remove().await;
        result?;
        tracing::info!(image = %image, volume = %volume, "agent copied onto the engine");
        Ok(())
    }

    /// The agent image's root filesystem.
    fn image_tar(&self) -> Result<Vec<u8>, RuntimeError> {
        let mut b = tar::Builder::new(Vec::new());
        for (dir, mode) in [
            (".sandkasten", 0o755),
            (".sandkasten/run", 0o700),
            ("workspace", 0o755),
            ("tmp", 0o1777),
        ] {
            append_dir(&mut b, dir, mode)?;
        }
        append_file(&mut b, ".sandkasten/agent", &self.binary, 0o755)?;
        b.into_inner()
            .map_err(|e| RuntimeError::io("building the agent image", e))
    }

    /// The agent binary as `name`, for the agent volume.
    fn volume_tar(&self, name: &str) -> Result<Vec<u8>, RuntimeError> {
        let mut b = tar::Builder::new(Vec::new());
        append_file(&mut b, name, &self.binary, 0o755)?;
        b.into_inner()
            .map_err(|e| RuntimeError::io("building the agent archive", e))
    }
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<(), RuntimeError> {
    let mut h = header(path, 0, mode, tar::EntryType::Directory);
    b.append_data(&mut h, path, std::io::empty())
        .map_err(|e| RuntimeError::io(format!("archiving {path}"), e))
}

fn append_file(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), RuntimeError> {
    let mut h = header(path, data.len() as u64, mode, tar::EntryType::Regular);
    b.append_data(&mut h, path, data)
        .map_err(|e| RuntimeError::io(format!("archiving {path}"), e))
}

/// The relay tasks of each container's connections, so that destroying a
/// container ends its connections even when the engine keeps an exec
/// stream of a removed container open (seen with gVisor).
#[derive(Default)]
pub struct Relays(std::sync::Mutex<HashMap<String, Vec<tokio::task::AbortHandle>>>);

impl Relays {
    fn register(&self, container: &str, tasks: [tokio::task::AbortHandle; 2]) {
        let mut map = self.0.lock().unwrap();
        let list = map.entry(container.to_string()).or_default();
        list.retain(|t| !t.is_finished());
        list.extend(tasks);
    }

    /// Ends every connection to `container`: its clients see them close.
    pub fn end(&self, container: &str) {
        if let Some(tasks) = self.0.lock().unwrap().remove(container) {
            for t in tasks {
                t.abort();
            }
        }
    }
}

/// Connects to the agent of running container `container` through a relay
/// started with the engine's exec API.
pub async fn connect_relay(
    docker: &Docker,
    relays: &Relays,
    container: &str,
    agent: &str,
    socket: &str,
) -> Result<AgentClient, RuntimeError> {
    let (rd, wr) = tokio::io::split(open_relay(docker, relays, container, agent, socket).await?);
    Ok(AgentClient::from_halves(rd, wr))
}

/// A byte stream to the agent of running container `container`: one end
/// of an in-process pipe whose other end two tasks carry to and from an
/// exec of `sandkasten-agent relay` (ended with the container's relays).
pub async fn open_relay(
    docker: &Docker,
    relays: &Relays,
    container: &str,
    agent: &str,
    socket: &str,
) -> Result<tokio::io::DuplexStream, RuntimeError> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec![agent, "relay", "--socket", socket]),
                user: Some("0:0"),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match status_of(&e) {
            Some(404) | Some(409) => RuntimeError::Gone(container.to_string()),
            _ => api_err(format!("starting the agent relay in {container}"))(e),
        })?;
    let started = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(api_err(format!("attaching the agent relay in {container}")))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(RuntimeError::Backend {
            context: format!("attaching the agent relay in {container}"),
            message: "the engine detached it".into(),
        });
    };
    // The client talks to one end of an in-process pipe; two tasks carry
    // the other end to and from the exec stream.
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut from_client, mut to_client) = tokio::io::split(theirs);
    let name = container.to_string();
    let out = tokio::spawn(async move {
        while let Some(item) = output.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) => {
                    if to_client.write_all(&message).await.is_err() {
                        break;
                    }
                }
                Ok(LogOutput::StdErr { message }) => {
                    tracing::warn!(
                        container = %name,
                        "agent relay: {}",
                        String::from_utf8_lossy(&message).trim()
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(container = %name, "agent relay stream ended: {e}");
                    break;
                }
            }
        }
        let _ = to_client.shutdown().await;
    });
    let inp = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut input).await;
        // The client hung up: closing the relay's stdin ends the relay.
        let _ = input.shutdown().await;
    });
    relays.register(container, [out.abort_handle(), inp.abort_handle()]);
    Ok(ours)
}

/// A short-lived container of the agent image (workspace access without a
/// session, the agent volume's copy), removed by [`Helper::remove`].
pub struct Helper {
    docker: Docker,
    pub name: String,
}

impl Helper {
    /// Creates (does not start) a helper with `mounts`; `entrypoint` is the
    /// command it would run when started.
    pub async fn create(
        docker: &Docker,
        image: &str,
        mounts: Vec<Mount>,
        data_dir_label: &str,
        entrypoint: Option<(Vec<String>, Vec<String>)>,
    ) -> Result<Helper, RuntimeError> {
        let name = format!("sandkasten-helper-{}", random_suffix());
        let (entrypoint, env) = match entrypoint {
            Some((cmd, env)) => (Some(cmd), Some(env)),
            None => (
                Some(vec![AGENT_IN_IMAGE.to_string(), "version".into()]),
                None,
            ),
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            user: Some("0:0".into()),
            entrypoint,
            env,
            labels: Some(HashMap::from([
                (LABEL_HELPER.to_string(), "true".to_string()),
                (
                    crate::LABEL_DATA_DIR.to_string(),
                    data_dir_label.to_string(),
                ),
            ])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(
                    ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
                        .map(String::from)
                        .to_vec(),
                ),
                mounts: Some(mounts),
                tmpfs: Some(HashMap::from([(
                    crate::RUN_DIR.to_string(),
                    "rw,noexec,nosuid,nodev,size=1m,mode=0700".to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        docker
            .create_container(Some(opts), body)
            .await
            .map_err(api_err(format!("creating helper container {name}")))?;
        Ok(Helper {
            docker: docker.clone(),
            name,
        })
    }

    pub async fn start(&self) -> Result<(), RuntimeError> {
        self.docker
            .start_container(
                &self.name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(api_err(format!("starting helper {}", self.name)))
    }

    /// Whether `path` exists in the helper's filesystem (its volumes too).
    pub async fn exists(&self, path: &str) -> Result<bool, RuntimeError> {
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut s = self.docker.download_from_container(&self.name, Some(opts));
        // Read to the end, so that the engine's archive operation finishes
        // before the helper is removed.
        let mut found = false;
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(_) => found = true,
                Err(e) if status_of(&e) == Some(404) => return Ok(false),
                Err(e) => return Err(api_err(format!("looking for {path}"))(e)),
            }
        }
        Ok(found)
    }

    /// Removes the helper (and its anonymous volumes); errors are logged.
    pub async fn remove(self) {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&self.name, Some(opts)).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => tracing::warn!(container = %self.name, "removing helper: {e}"),
        }
    }
}

/// Per workspace volume: helper containers hold it shared, deletion
/// exclusively. A helper mounting a volume that was just removed would make
/// the engine create it again, empty; and the engine refuses to remove a
/// volume a helper mounts.
#[derive(Default)]
struct VolumeLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>);

impl VolumeLocks {
    fn of(&self, id: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut map = self.0.lock().unwrap();
        // Forget locks nobody holds or waits for.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(id.to_string()).or_default().clone()
    }
}

/// The engine's archive of a helper's `/workspace/.`, read on a blocking
/// thread.
type ArchiveReader = tokio_util::io::SyncIoBridge<
    tokio_util::io::StreamReader<
        std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>,
        bytes::Bytes,
    >,
>;

/// The transport of an engine whose files are not the daemon's: a `tcp://`
/// engine, or a local one whose OCI runtime keeps its own view of files
/// (gVisor). See the module docs.
pub(crate) struct RemoteTransport {
    docker: Docker,
    /// The daemon's data dir label (helpers carry it).
    label: String,
    agent: RemoteAgent,
    /// Relay connections by container.
    relays: Arc<Relays>,
    volume_locks: VolumeLocks,
    /// The sandbox user, whose the volumes are (helpers act as it).
    user: crate::SandboxUser,
}

impl RemoteTransport {
    pub fn new(
        docker: Docker,
        label: String,
        agent: RemoteAgent,
        user: crate::SandboxUser,
    ) -> Self {
        RemoteTransport {
            docker,
            label,
            agent,
            user,
            relays: Arc::default(),
            volume_locks: VolumeLocks::default(),
        }
    }

    /// A shared hold on workspace `id`'s volume for a helper; `None` when
    /// the volume does not exist.
    async fn hold_existing(
        &self,
        id: &str,
    ) -> Result<Option<tokio::sync::OwnedRwLockReadGuard<()>>, RuntimeError> {
        let guard = self.volume_locks.of(id).read_owned().await;
        Ok(volume_exists(&self.docker, id).await?.then_some(guard))
    }

    /// A started helper container of the agent image with workspace `id`'s
    /// volume at `/workspace` and our agent as PID 1, serving file
    /// operations rooted there with the sandbox user's identity, connected;
    /// with the volume's hold (keep both while the helper is used, then
    /// remove it).
    async fn workspace_agent(
        &self,
        id: &str,
    ) -> Result<(tokio::sync::OwnedRwLockReadGuard<()>, Helper, AgentClient), RuntimeError> {
        let Some(guard) = self.hold_existing(id).await? else {
            return Err(RuntimeError::NotFound(format!(
                "the volume of workspace {id}"
            )));
        };
        self.prepare().await?;
        let cfg = AgentConfig {
            uid: Some(self.user.uid),
            gid: Some(self.user.gid),
            workdir: "/workspace".into(),
            env: sandkasten_runtime::default_shell_env(),
            home: "/tmp".into(),
            files_root: Some("/workspace".into()),
            nproc_limit: None,
        };
        let json = crate::agent_config_json(&cfg)?;
        let entry = [
            AGENT_IN_IMAGE,
            "container",
            "--socket",
            crate::AGENT_SOCKET,
            "--config-env",
            crate::CONFIG_ENV,
            "--own-workdir",
        ]
        .map(String::from)
        .to_vec();
        let helper = Helper::create(
            &self.docker,
            &self.agent.image(),
            vec![volume_mount(&crate::volume_name(id), "/workspace", false)],
            &self.label,
            Some((entry, vec![format!("{}={json}", crate::CONFIG_ENV)])),
        )
        .await?;
        let connected = async {
            helper.start().await?;
            let relays = Relays::default();
            connect_relay(
                &self.docker,
                &relays,
                &helper.name,
                AGENT_IN_IMAGE,
                crate::AGENT_SOCKET,
            )
            .await
        }
        .await;
        match connected {
            Ok(agent) => Ok((guard, helper, agent)),
            Err(e) => {
                helper.remove().await;
                Err(e)
            }
        }
    }

    /// A never-started helper with workspace volume `volume` mounted
    /// read-only, and a blocking reader of the engine's archive of its
    /// `/workspace/.` (for a blocking thread; the engine has no other way
    /// to read a volume without running something in it).
    async fn workspace_archive(
        &self,
        volume: &str,
    ) -> Result<(Helper, ArchiveReader), RuntimeError> {
        self.prepare().await?;
        let helper = Helper::create(
            &self.docker,
            &self.agent.image(),
            vec![volume_mount(volume, "/workspace", true)],
            &self.label,
            None,
        )
        .await?;
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path("/workspace/.")
            .build();
        let stream = self
            .docker
            .download_from_container(&helper.name, Some(opts))
            .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string())));
        let stream: std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>> = Box::pin(stream);
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        Ok((helper, reader))
    }
}

#[async_trait]
impl Transport for RemoteTransport {
    fn is_remote(&self) -> bool {
        true
    }

    async fn prepare(&self) -> Result<(), RuntimeError> {
        self.agent.ensure(&self.docker, &self.label).await
    }

    /// The mount point is the engine's; the agent gives the root to the
    /// sandbox user when a container starts, or takes over a volume of an
    /// earlier sandbox uid (`--own-workdir`).
    async fn adopt_volume(
        &self,
        _name: &str,
        mountpoint: &str,
        _driver: &str,
    ) -> Result<PathBuf, RuntimeError> {
        Ok(PathBuf::from(mountpoint))
    }

    /// The agent from the agent volume, its config in PID 1's environment
    /// (removed before anything starts), its socket in a root-only tmpfs;
    /// the agent is awaited through a relay (which waits for the socket
    /// itself) and a ping that proves it serves.
    async fn launch(
        &self,
        id: &str,
        _run: &Path,
        cfg: &AgentConfig,
    ) -> Result<(AgentLaunch, AgentReady), RuntimeError> {
        let json = crate::agent_config_json(cfg)?;
        let launch = AgentLaunch {
            mounts: vec![volume_mount(&self.agent.volume(), AGENT_DIR, true)],
            tmpfs: vec![(
                crate::RUN_DIR.to_string(),
                "rw,noexec,nosuid,nodev,size=1m,mode=0700".into(),
            )],
            entrypoint: vec![
                AGENT_IN_VOLUME.to_string(),
                "container".into(),
                "--socket".into(),
                crate::AGENT_SOCKET.into(),
                "--config-env".into(),
                crate::CONFIG_ENV.into(),
                "--own-workdir".into(),
            ],
            env: Some(vec![format!("{}={json}", crate::CONFIG_ENV)]),
        };
        let (docker, relays, name) = (
            self.docker.clone(),
            self.relays.clone(),
            crate::container_name(id),
        );
        let ready: AgentReady = Box::pin(async move {
            let agent = connect_relay(
                &docker,
                &relays,
                &name,
                AGENT_IN_VOLUME,
                crate::AGENT_SOCKET,
            )
            .await?;
            agent.ping().await?;
            Ok(agent)
        });
        Ok((launch, ready))
    }

    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError> {
        connect_relay(
            &self.docker,
            &self.relays,
            &crate::container_name(id),
            AGENT_IN_VOLUME,
            crate::AGENT_SOCKET,
        )
        .await
    }

    /// A relay of its own, turned into a pipe to the port by the agent
    /// (one exec per connection: the engine's exec API is the only way
    /// in).
    async fn connect_port(
        &self,
        handle: &SandboxHandle,
        port: u16,
    ) -> Result<PortStream, RuntimeError> {
        let relay = open_relay(
            &self.docker,
            &self.relays,
            &crate::container_name(&handle.id),
            AGENT_IN_VOLUME,
            crate::AGENT_SOCKET,
        )
        .await?;
        Ok(Box::new(ports::open_via_agent(relay, port).await?))
    }

    /// An engine may keep a removed container's exec stream open: the
    /// relay tasks are ended here.
    fn disconnect(&self, id: &str) {
        self.relays.end(&crate::container_name(id));
    }

    fn unreachable_agent_is_gone(&self) -> bool {
        false
    }

    /// The engine's pids are not ours to read: the container's start
    /// timestamp stands in (a restarted container has another).
    fn start_token(&self, _pid: i32, started_at: &str) -> u64 {
        crate::started_at_token(started_at)
    }

    /// A helper container of the agent image mounts the volume at
    /// `/workspace`, runs our agent as PID 1 with the sandbox user's
    /// identity for file operations (rooted at `/workspace`), and is
    /// removed after the answer.
    async fn workspace_file(&self, id: &str, op: FileOp) -> Result<FileReply, RuntimeError> {
        let (_guard, helper, agent) = self.workspace_agent(id).await?;
        let result = agent.file(op).await;
        helper.remove().await;
        result
    }

    /// The same helper, kept (with the volume's hold) until the stream
    /// ends or is dropped: its agent streams the file, and a task passes
    /// the chunks on as they are taken.
    async fn workspace_read(
        &self,
        id: &str,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError> {
        let (guard, helper, agent) = self.workspace_agent(id).await?;
        let mut from = match agent.read_file(path.clone(), max_bytes).await {
            Ok(s) => s,
            Err(e) => {
                helper.remove().await;
                return Err(e);
            }
        };
        let (tx, stream) = FileStream::channel(path);
        tokio::spawn(async move {
            let _guard = guard;
            let outcome = loop {
                let item = tokio::select! {
                    item = from.next() => item,
                    _ = tx.closed() => break None,
                };
                match item {
                    Some(Ok(chunk)) => {
                        if !tx.send(chunk).await {
                            break None;
                        }
                    }
                    Some(Err(e)) => break Some(Err(e)),
                    None => break Some(Ok(from.truncated())),
                }
            };
            // The helper goes before the end is told: once a read has
            // ended, nothing of it is left on the engine.
            drop((from, agent));
            helper.remove().await;
            match outcome {
                Some(Ok(truncated)) => tx.end(truncated).await,
                Some(Err(e)) => tx.fail(e).await,
                None => {}
            }
        });
        Ok(stream)
    }

    /// The same walk as an export, into nothing: the engine has no
    /// endpoint for a volume's size but a slow `system df`.
    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        let Some(_guard) = self.hold_existing(id).await? else {
            return Ok(None);
        };
        let volume = crate::volume_name(id);
        let (helper, reader) = self.workspace_archive(&volume).await?;
        let what = format!("reading volume {volume}");
        let size = blocking("measuring a workspace", move || {
            rebase_tar(reader, &mut std::io::sink()).map_err(RuntimeError::io_ctx(what))
        })
        .await;
        helper.remove().await;
        size.map(Some)
    }

    /// The engine's archive of the volume, read through a never-started
    /// helper and rebased onto the workspace root. The helper (and the
    /// hold on the volume) go once the stream has ended.
    async fn export_workspace(&self, id: &str) -> Result<ExportStream, RuntimeError> {
        let Some(guard) = self.hold_existing(id).await? else {
            return Err(RuntimeError::NotFound(format!(
                "the volume of workspace {id}"
            )));
        };
        let volume = crate::volume_name(id);
        let (helper, reader) = self.workspace_archive(&volume).await?;
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
        let (removed_tx, removed) = tokio::sync::oneshot::channel::<()>();
        let cleanup = tokio::spawn(async move {
            // Resolves when the producer drops its end (also on a panic).
            let _ = ended.await;
            helper.remove().await;
            drop(guard);
            let _ = removed_tx.send(());
        });
        let what = format!("reading volume {volume}");
        let stream = export_blocking(move |out| {
            let r = rebase_tar(reader, out)
                .map(drop)
                .map_err(RuntimeError::io_ctx(what));
            // The stream ends after its helper is gone: once an export has
            // ended, nothing of it is left on the engine.
            drop(ended_tx);
            let _ = removed.blocking_recv();
            r
        })
        .await;
        if stream.is_err() {
            // The producer has ended: answer once its helper is gone.
            let _ = cleanup.await;
        }
        stream
    }

    async fn hold_for_removal(&self, id: &str) -> RemovalGuard {
        Some(self.volume_locks.of(id).write_owned().await)
    }
}

/// Copies the engine's archive of `/workspace/.` (entries `./`, `./a`,
/// `./d/b`) to `out` with paths relative to the workspace (`a`, `d/b`),
/// hard link targets rebased the same way; returns the bytes in regular
/// files.
fn rebase_tar(input: impl std::io::Read, out: &mut dyn std::io::Write) -> std::io::Result<u64> {
    fn rebase(p: &Path) -> std::path::PathBuf {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    }
    let mut archive = tar::Archive::new(input);
    let mut b = tar::Builder::new(out);
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = rebase(&entry.path()?);
        if path.as_os_str().is_empty() {
            continue;
        }
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_hard_link() || kind.is_symlink() {
            let target = entry
                .link_name()?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let target = if kind.is_hard_link() {
                rebase(&target)
            } else {
                target
            };
            b.append_link(&mut header, &path, &target)?;
        } else {
            if kind.is_file() {
                total += header.size()?;
            }
            b.append_data(&mut header, &path, &mut entry)?;
        }
    }
    b.finish()?;
    Ok(total)
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    let n = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).unwrap_or(0);
    if n != b.len() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t as u64 ^ std::process::id() as u64).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_archive_is_rebased_onto_the_workspace() {
        let mut b = tar::Builder::new(Vec::new());
        append_dir(&mut b, "./", 0o755).unwrap();
        append_file(&mut b, "./a", b"hello", 0o644).unwrap();
        append_dir(&mut b, "./d/", 0o755).unwrap();
        let long = format!("./d/{}", "x".repeat(150));
        append_file(&mut b, &long, b"long name", 0o600).unwrap();
        let mut h = header("./d/hard", 0, 0o644, tar::EntryType::Link);
        b.append_link(&mut h, "./d/hard", "./a").unwrap();
        let mut h = header("./d/sym", 0, 0o777, tar::EntryType::Symlink);
        b.append_link(&mut h, "./d/sym", "../a").unwrap();
        let input = b.into_inner().unwrap();

        let mut out = Vec::new();
        let total = rebase_tar(&input[..], &mut out).unwrap();
        assert_eq!(total, 5 + 9);
        let mut got = Vec::new();
        for e in tar::Archive::new(&out[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            let mut data = String::new();
            std::io::Read::read_to_string(&mut e, &mut data).unwrap();
            got.push((path, link, data));
        }
        let long = format!("d/{}", "x".repeat(150));
        assert_eq!(
            got,
            vec![
                ("a".into(), None, "hello".into()),
                ("d".into(), None, String::new()),
                (long, None, "long name".into()),
                ("d/hard".into(), Some("a".into()), String::new()),
                ("d/sym".into(), Some("../a".into()), String::new()),
            ]
        );
    }
}
