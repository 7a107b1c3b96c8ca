//! Starting a session's container, in named steps: read the image, mark
//! the session on disk, get its workspace volume, let the transport say how
//! the agent comes in, build the container config, create, start, wait for
//! the agent, and read the new container's identity. [`DockerRuntime::start`]
//! runs them in that order; a failure anywhere is cleaned up by the caller
//! (`create` destroys what exists).

use crate::transport::{AgentLaunch, AgentReady};
use crate::{
    api_err, container_name, hostfs, status_of, volume_mount, volume_name, DockerRuntime,
    LABEL_DATA_DIR, LABEL_IMAGE, LABEL_SESSION, LABEL_WORKSPACE_ID,
};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use futures::StreamExt;
use sandkasten_protocol::AgentConfig;
use sandkasten_runtime::{
    blocking, NetworkMode, RuntimeError, Sandbox, SandboxHandle, SandboxSpec, WorkspaceMount,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// The longest a new container's agent may take to listen. Both outcomes
/// are events (the agent serves, or the container exits); this bound only
/// catches an agent that hangs.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The capabilities PID 1 keeps: what it needs to start the shell as the
/// sandbox user and to do file operations with its identity.
const CAPABILITIES: [&str; 6] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "KILL",
    "SETGID",
    "SETUID",
];

/// The volume a session's `/workspace` is, and the workspace id its
/// container is labelled with (empty for an ephemeral one).
struct WorkspaceVolume {
    name: String,
    label: String,
}

impl DockerRuntime {
    /// Creates and starts session `spec`'s container and returns it with a
    /// connected agent.
    pub(crate) async fn start(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        if spec.network == NetworkMode::Full {
            if let Some(why) = &self.no_net {
                return Err(RuntimeError::Unsupported(why.clone(), "docker"));
            }
        }
        self.transport.prepare().await?;
        // A wake starts from the image its hibernation committed, a create
        // from a sandbox snapshot from that snapshot's (`snapshot.rs`).
        let snap = spec.from_snapshot.as_deref().filter(|_| !spec.wake);
        let image = match (spec.wake, snap) {
            (true, _) => crate::hibernated_image(&spec.id),
            (false, Some(snap)) => self.image_from_snapshot(&spec.id, snap).await?,
            (false, None) => spec.image.clone(),
        };
        let image_env = self.image_env(&image).await?;
        let run = self.mark_session(&spec.id).await?;
        let volume = self.workspace_volume(spec).await?;
        if let (Some(snap), WorkspaceMount::Ephemeral) = (snap, &spec.workspace) {
            self.fill_workspace(spec, snap).await?;
        }
        let agent_cfg = AgentConfig {
            uid: Some(self.cfg.sandbox_user.uid),
            gid: Some(self.cfg.sandbox_user.gid),
            workdir: "/workspace".into(),
            env: sandkasten_runtime::shell_env(&image_env, &spec.env),
            home: "/home/sandbox".into(),
            files_root: None,
            nproc_limit: self.gvisor.then_some(spec.limits.pids),
        };
        let (launch, ready) = self.transport.launch(&spec.id, &run, &agent_cfg).await?;
        let name = container_name(&spec.id);
        let body = self.container_config(spec, &image, &volume, launch);
        self.create_container(&name, body).await?;
        self.start_container(&name).await?;
        let agent = self.wait_for_agent(&name, ready).await?;
        let handle = self.handle_of(&spec.id).await?;
        // Before anything runs in the sandbox but the agent.
        self.transport.restrict_workspace(&handle).await?;
        if let (NetworkMode::Full, Some(net)) = (spec.network, &self.net) {
            // Its link now, closed until the policy comes (a pool's
            // sandbox waits so for its claim).
            net.prepare(&handle).await?;
        }
        if let Some(snap) = snap {
            self.fill_tmp(&handle, snap).await?;
        }
        Ok(Sandbox {
            handle,
            agent,
            phases_us: Vec::new(),
        })
    }

    /// The environment of `image` (`KEY=value`); `ImageNotFound` for an
    /// image the engine does not have.
    async fn image_env(&self, image: &str) -> Result<Vec<String>, RuntimeError> {
        let found = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => RuntimeError::ImageNotFound(image.to_string()),
                // An invalid reference ("Base", "a b") is no image either.
                Some(400) => RuntimeError::ImageNotFound(image.to_string()),
                _ => api_err(format!("inspecting image {image}"))(e),
            })?;
        Ok(found.config.and_then(|c| c.env).unwrap_or_default())
    }

    /// Creates session `id`'s run directory: it marks the session on disk,
    /// so a crash from here on leaves an orphan that recovery lists and
    /// destroys. (On a remote engine it is only that mark.)
    async fn mark_session(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let run = self.run_dir(id);
        let dir = run.clone();
        blocking("creating a run directory", move || {
            hostfs::private_dir(&dir)
                .map_err(RuntimeError::io_ctx(format!("creating {}", dir.display())))
        })
        .await?;
        Ok(run)
    }

    /// The volume for the session's `/workspace`: the persistent
    /// workspace's (created on first use), or an ephemeral one labelled
    /// with the session (removed with it).
    async fn workspace_volume(&self, spec: &SandboxSpec) -> Result<WorkspaceVolume, RuntimeError> {
        match &spec.workspace {
            WorkspaceMount::Persistent(ws) => {
                self.ensure_workspace_volume(ws).await?;
                Ok(WorkspaceVolume {
                    name: volume_name(ws),
                    label: ws.clone(),
                })
            }
            WorkspaceMount::Ephemeral => {
                let name = volume_name(&spec.id);
                let labels = HashMap::from([
                    (LABEL_SESSION.to_string(), spec.id.clone()),
                    (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
                ]);
                self.ensure_volume(&name, labels).await?;
                Ok(WorkspaceVolume {
                    name,
                    label: String::new(),
                })
            }
        }
    }

    /// The container's config: our labels, the agent as PID 1 (as the
    /// transport brings it in), the workspace volume, `/tmp` as tmpfs, the
    /// spec's limits and network, few capabilities, no new privileges, no
    /// restart.
    fn container_config(
        &self,
        spec: &SandboxSpec,
        image: &str,
        volume: &WorkspaceVolume,
        launch: AgentLaunch,
    ) -> ContainerCreateBody {
        let labels = HashMap::from([
            (LABEL_SESSION.to_string(), spec.id.clone()),
            (LABEL_IMAGE.to_string(), spec.image.clone()),
            (LABEL_WORKSPACE_ID.to_string(), volume.label.clone()),
            (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
        ]);
        // /tmp is memory, not disk, but never more than the disk limit.
        let tmp_mb = spec
            .limits
            .disk_mb
            .map_or(self.cfg.tmp_size_mb, |d| d.min(self.cfg.tmp_size_mb));
        let mut tmpfs = HashMap::from([(
            "/tmp".to_string(),
            format!("rw,exec,nosuid,nodev,size={tmp_mb}m,mode=1777"),
        )]);
        tmpfs.extend(launch.tmpfs);
        let mut mounts = launch.mounts;
        mounts.push(volume_mount(&volume.name, "/workspace", false));
        // Where the daemon answers DNS every container resolves through it
        // (also one started without network, which a policy change may
        // give a link later).
        if let Some(conf) = self.net.as_ref().and_then(|n| n.resolv_conf()) {
            mounts.push(bollard::models::Mount {
                target: Some(crate::net::RESOLV_CONF.into()),
                source: Some(conf.display().to_string()),
                typ: Some(bollard::models::MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        let mem = (spec.limits.memory_mb * 1024 * 1024) as i64;
        let host_config = HostConfig {
            nano_cpus: Some((spec.limits.cpu * 1e9) as i64),
            memory: Some(mem),
            memory_swap: Some(mem),
            pids_limit: Some(crate::host_pids_limit(spec.limits.pids, self.gvisor) as i64),
            readonly_rootfs: Some(spec.readonly_rootfs),
            // The sandbox's link, when it has one, is the daemon's (`net.rs`).
            network_mode: Some("none".into()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(CAPABILITIES.map(String::from).to_vec()),
            runtime: self.cfg.oci_runtime.clone(),
            init: Some(false),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            tmpfs: Some(tmpfs),
            mounts: Some(mounts),
            // The writable layer's size, where the storage driver takes one.
            storage_opt: spec
                .limits
                .disk_mb
                .filter(|_| self.storage_size)
                .map(|mb| HashMap::from([("size".to_string(), format!("{mb}M"))])),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(image.to_string()),
            hostname: Some(format!("sk-{}", &spec.id[..spec.id.len().min(12)])),
            user: Some("0:0".into()),
            entrypoint: Some(launch.entrypoint),
            env: launch.env,
            cmd: None,
            working_dir: Some("/".into()),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Creates container `name` from `body`.
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<(), RuntimeError> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map(drop)
            .map_err(api_err(format!("creating container {name}")))
    }

    /// Starts container `name`.
    async fn start_container(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(api_err(format!("starting container {name}")))
    }

    /// Waits for the started container's agent to serve (`ready`, from the
    /// transport) or for the container's end (the engine's wait endpoint),
    /// whichever comes first: both are events. Returns the connection that
    /// proved the agent ready; `StartFailed` with the container's last
    /// output when it ended first or hung.
    async fn wait_for_agent(
        &self,
        name: &str,
        ready: AgentReady,
    ) -> Result<sandkasten_runtime::AgentClient, RuntimeError> {
        let mut exited = self.docker.wait_container(
            name,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        tokio::select! {
            r = ready => r,
            r = exited.next() => {
                let how = match r {
                    Some(Ok(w)) => format!("exit code {}", w.status_code),
                    Some(Err(e)) => e.to_string(),
                    None => "ended".into(),
                };
                let logs = self.logs(name).await;
                Err(RuntimeError::StartFailed(format!(
                    "container {name} stopped before its agent listened ({how}): {logs}"
                )))
            }
            _ = tokio::time::sleep(AGENT_START_TIMEOUT) => {
                Err(RuntimeError::StartFailed(format!(
                    "the agent of container {name} did not listen within {}s: {}",
                    AGENT_START_TIMEOUT.as_secs(),
                    self.logs(name).await
                )))
            }
        }
    }

    /// The last lines the container's agent wrote (for error messages).
    async fn logs(&self, name: &str) -> String {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut s = self.docker.logs(name, Some(opts));
        let mut out = String::new();
        while let Some(Ok(chunk)) = s.next().await {
            out.push_str(&chunk.to_string());
        }
        let out = out.trim().to_string();
        if out.is_empty() {
            "(no output)".into()
        } else {
            out
        }
    }

    /// The handle of a running container: its PID 1's host pid and what
    /// proves this start of it (the transport's token). `Gone` when it is
    /// not running.
    pub(crate) async fn handle_of(&self, id: &str) -> Result<SandboxHandle, RuntimeError> {
        let c = match self
            .docker
            .inspect_container(&container_name(id), None)
            .await
        {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(404) => return Err(RuntimeError::Gone(id.into())),
            Err(e) => return Err(api_err(format!("inspecting container of {id}"))(e)),
        };
        let state = c.state.unwrap_or_default();
        let pid = state.pid.unwrap_or(0) as i32;
        if state.running != Some(true) || pid <= 0 {
            return Err(RuntimeError::Gone(id.into()));
        }
        Ok(SandboxHandle {
            id: id.to_string(),
            pid,
            start_time: self
                .transport
                .start_token(pid, state.started_at.as_deref().unwrap_or("")),
        })
    }
}
