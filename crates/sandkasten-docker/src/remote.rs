//! What the docker runtime needs on an engine it shares no filesystem with
//! (`tcp://`): the agent copied onto the engine, a connection to each
//! container's agent through the engine's exec API, and helper containers
//! for workspace access without a session.
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

use crate::{api_err, status_of};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sandkasten_protocol::AgentConfig;
use sandkasten_runtime::{AgentClient, Request, Response, RuntimeError};
use std::collections::HashMap;
use std::path::Path;
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
                other => Err(RuntimeError::Other(format!(
                    "publishing the agent in volume {volume} failed: {other:?}"
                ))),
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

/// A named volume mounted at `target` (never copying image content in).
pub fn volume_mount(volume: &str, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(volume.into()),
        typ: Some(MountType::VOLUME),
        read_only: Some(read_only),
        volume_options: Some(MountVolumeOptions {
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Connects to the agent of running container `container` through a relay
/// started with the engine's exec API.
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

pub async fn connect_relay(
    docker: &Docker,
    relays: &Relays,
    container: &str,
    agent: &str,
    socket: &str,
) -> Result<AgentClient, RuntimeError> {
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
        return Err(RuntimeError::Other(
            "the engine detached the agent relay".into(),
        ));
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
    let (rd, wr) = tokio::io::split(ours);
    Ok(AgentClient::from_halves(rd, wr))
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

impl RemoteAgent {
    /// Runs one file request on workspace volume `volume` without a
    /// session: a helper container of the agent image mounts it at
    /// `/workspace`, runs our agent as PID 1 with the sandbox user's
    /// identity for file operations, and is removed after the answer.
    pub async fn workspace_file(
        &self,
        docker: &Docker,
        data_dir_label: &str,
        volume: &str,
        req: Request,
    ) -> Result<Response, RuntimeError> {
        self.ensure(docker, data_dir_label).await?;
        let cfg = AgentConfig {
            uid: Some(crate::SANDBOX_UID),
            gid: Some(crate::SANDBOX_UID),
            workdir: "/workspace".into(),
            env: sandkasten_runtime::default_shell_env(),
            home: "/tmp".into(),
            files_root: Some("/workspace".into()),
        };
        let json = serde_json::to_string(&cfg).map_err(|e| RuntimeError::Other(e.to_string()))?;
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
            docker,
            &self.image(),
            vec![volume_mount(volume, "/workspace", false)],
            data_dir_label,
            Some((entry, vec![format!("{}={json}", crate::CONFIG_ENV)])),
        )
        .await?;
        let result = async {
            helper.start().await?;
            let relays = Relays::default();
            let agent = connect_relay(
                docker,
                &relays,
                &helper.name,
                AGENT_IN_IMAGE,
                crate::AGENT_SOCKET,
            )
            .await?;
            agent.call(req).await
        }
        .await;
        helper.remove().await;
        result
    }

    /// Streams workspace volume `volume` as a tar with relative paths to
    /// `out` (on a blocking thread of runtime `rt`), through the engine's
    /// archive endpoint on a helper container that is never started;
    /// returns the bytes in its regular files.
    pub fn workspace_tar(
        &self,
        rt: &tokio::runtime::Handle,
        docker: &Docker,
        data_dir_label: &str,
        volume: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, RuntimeError> {
        rt.block_on(self.ensure(docker, data_dir_label))?;
        let helper = rt.block_on(Helper::create(
            docker,
            &self.image(),
            vec![volume_mount(volume, "/workspace", true)],
            data_dir_label,
            None,
        ))?;
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path("/workspace/.")
            .build();
        let stream = docker.download_from_container(&helper.name, Some(opts));
        let reader = StreamReader {
            rt: rt.clone(),
            stream: Box::pin(stream),
            buf: bytes::Bytes::new(),
        };
        let result = rebase_tar(reader, out)
            .map_err(|e| RuntimeError::io(format!("reading volume {volume}"), e));
        rt.block_on(helper.remove());
        result
    }
}

/// A blocking reader over the engine's byte stream (used on a blocking
/// thread only).
struct StreamReader {
    rt: tokio::runtime::Handle,
    stream: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<bytes::Bytes, bollard::errors::Error>> + Send>,
    >,
    buf: bytes::Bytes,
}

impl std::io::Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
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
    // SAFETY: getrandom into our buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
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
