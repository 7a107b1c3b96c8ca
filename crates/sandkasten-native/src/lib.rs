//! The native runtime: each sandbox is a tree of processes in its own user,
//! mount, pid, uts, ipc, net and cgroup namespaces, on an overlayfs root,
//! limited by cgroups (v2 or v1), with our agent as its PID 1.
//!
//! The daemon side lives here (directories, cgroups, images, spawning,
//! proving and killing the init); the in-sandbox side (mounts, pivot_root,
//! capabilities, seccomp) is `sandkasten-agent init`, which this module
//! starts with a [`LaunchSpec`].
//!
//! Layout under the data dir:
//! ```text
//! images/base/rootfs          generated minimal root (owned by sandbox root)
//! images/<name>/              imported images (manifest + generated top layer)
//! layers/<sha256>/            content-addressed layers shared by all images
//! sessions/<id>/              0700, root: never reachable from a sandbox
//!   upper/ work/              overlay upper and work dirs
//!   rootfs/                   mount point (mounts exist only in the sandbox)
//!   workspace/                ephemeral /workspace
//!   agent.sock                the agent's socket
//! ```

mod cgroups;
mod fsutil;
mod image;
mod layers;
mod process;
mod wsimage;
mod wstar;

pub use cgroups::{Cgroups, Hierarchy};
pub use fsutil::{has_mounts_below, remove_tree};
pub use wsimage::{host_support as workspace_quota_support, MIN_QUOTA_BYTES};

use async_trait::async_trait;
use sandkasten_protocol::{
    AgentConfig, BindMount, BlockMount, IdMap, LaunchReport, LaunchSpec, NetworkMode as WireNetwork,
};
use sandkasten_runtime::latebind;
use sandkasten_runtime::{
    AgentClient, ImageInfo, NetworkMode, Request, Response, Runtime, RuntimeError, Sandbox,
    SandboxHandle, SandboxSpec, SandboxStats, WorkspaceMount,
};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// The host uid/gid range sandboxes map to: uid 0 inside is `host_root`,
/// the sandbox user (uid 1000 inside) is `host_user`.
#[derive(Debug, Clone)]
pub struct IdRange {
    pub host_root: u32,
    pub host_user: u32,
    pub size: u32,
}

impl Default for IdRange {
    fn default() -> Self {
        IdRange {
            host_root: 100_000,
            host_user: 101_000,
            size: 65_536,
        }
    }
}

/// The uid of the sandbox user inside every sandbox.
pub const SANDBOX_UID: u32 = 1000;

/// Settings of the native runtime.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    pub data_dir: PathBuf,
    /// The static `sandkasten-agent` binary.
    pub agent_binary: PathBuf,
    /// Size of each sandbox's `/tmp` and `/dev/shm` tmpfs.
    pub tmp_size_mb: u64,
}

pub struct NativeRuntime {
    cfg: NativeConfig,
    cgroups: Cgroups,
    ids: IdRange,
}

fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let ctx = ctx.into();
    move |e| RuntimeError::io(ctx, e)
}

impl NativeRuntime {
    /// Checks the host, prepares the data dir and the built-in image.
    pub fn new(cfg: NativeConfig) -> Result<NativeRuntime, RuntimeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(RuntimeError::HostNotReady(
                "the native runtime needs root (it creates namespaces, cgroups and mounts); \
                 run the daemon as root or use runtime: docker"
                    .into(),
            ));
        }
        if !std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .contains("overlay")
        {
            return Err(RuntimeError::HostNotReady(
                "the kernel has no overlayfs (modprobe overlay)".into(),
            ));
        }
        let cgroups = Cgroups::detect()?;
        for d in ["sessions", "images"] {
            let p = cfg.data_dir.join(d);
            std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(io("chmod"))?;
        }
        let rt = NativeRuntime {
            cfg,
            cgroups,
            ids: IdRange::default(),
        };
        image::ensure_base(&rt.images_dir(), &rt.ids)?;
        tracing::info!(cgroups = ?rt.cgroups, "native runtime ready");
        Ok(rt)
    }

    fn images_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("images")
    }

    /// Directory of one session's state.
    pub fn session_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sessions").join(id)
    }

    fn image_store(&self) -> layers::ImageStore {
        layers::ImageStore {
            images: self.images_dir(),
            layers: self.cfg.data_dir.join("layers"),
            ids: self.ids.clone(),
        }
    }

    fn resolve_image(&self, name: &str) -> Result<image::ResolvedImage, RuntimeError> {
        if name == "base" {
            return image::ensure_base(&self.images_dir(), &self.ids);
        }
        match self.image_store().lower_dirs(name) {
            Some(layers) => Ok(image::ResolvedImage {
                layers,
                binds: Vec::new(),
            }),
            None => Err(RuntimeError::ImageNotFound(name.to_string())),
        }
    }

    fn agent_env(&self, extra: &[(String, String)]) -> Vec<(String, String)> {
        let mut env = sandkasten_runtime::default_shell_env();
        for (k, v) in [
            ("HOME", "/home/sandbox"),
            ("USER", "sandbox"),
            ("LOGNAME", "sandbox"),
        ] {
            env.push((k.to_string(), v.to_string()));
        }
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    async fn launch(&self, spec: &SandboxSpec, dir: &Path) -> Result<LaunchReport, RuntimeError> {
        let image = self.resolve_image(&spec.image)?;
        if spec.network == NetworkMode::Full {
            return Err(RuntimeError::Unsupported(
                "network_mode full".into(),
                "native",
            ));
        }
        let mkdir = |p: &Path, mode: u32, owner: Option<u32>| -> Result<(), RuntimeError> {
            std::fs::create_dir_all(p).map_err(io(format!("creating {}", p.display())))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod"))?;
            if let Some(uid) = owner {
                std::os::unix::fs::chown(p, Some(uid), Some(uid))
                    .map_err(io(format!("chown {}", p.display())))?;
            }
            Ok(())
        };
        mkdir(dir, 0o700, None)?;
        mkdir(&dir.join("upper"), 0o755, Some(self.ids.host_root))?;
        mkdir(&dir.join("work"), 0o700, None)?;
        mkdir(&dir.join("rootfs"), 0o755, None)?;
        let mut binds = image.binds;
        let mut block_mounts = Vec::new();
        // Held until the launch report: the sandbox's own mount then keeps
        // the loop device bound.
        let mut _attached = None;
        match &spec.workspace {
            WorkspaceMount::Ephemeral => {
                let w = dir.join("workspace");
                mkdir(&w, 0o755, Some(self.ids.host_user))?;
                binds.push(BindMount {
                    source: w,
                    target: "/workspace".into(),
                    readonly: false,
                });
            }
            WorkspaceMount::Persistent(ws) => {
                let img = self.workspace_image(ws);
                if img.exists() {
                    let attached = self.attach_workspace(ws)?;
                    block_mounts.push(BlockMount {
                        device: attached.device.clone(),
                        target: "/workspace".into(),
                        fstype: "btrfs".into(),
                        options: "subvol=data".into(),
                    });
                    _attached = Some(attached);
                } else {
                    let w = self.ensure_workspace_dir(ws)?;
                    binds.push(BindMount {
                        source: w,
                        target: "/workspace".into(),
                        readonly: false,
                    });
                }
            }
        }
        let cgroup_procs = self.cgroups.create(&spec.id, &spec.limits)?;
        let map = |size| {
            vec![IdMap {
                inside: 0,
                outside: self.ids.host_root,
                count: size,
            }]
        };
        let launch = LaunchSpec {
            session_id: spec.id.clone(),
            hostname: format!("sk-{}", &spec.id[..spec.id.len().min(12)]),
            lower_dirs: image.layers,
            upper_dir: dir.join("upper"),
            work_dir: dir.join("work"),
            rootfs_dir: dir.join("rootfs"),
            binds,
            block_mounts,
            tmp_size_mb: self.cfg.tmp_size_mb,
            readonly_rootfs: spec.readonly_rootfs,
            uid_map: map(self.ids.size),
            gid_map: map(self.ids.size),
            cgroup_procs,
            socket_path: sandkasten_protocol::socket_path(dir),
            network: WireNetwork::None,
            agent: AgentConfig {
                uid: Some(SANDBOX_UID),
                gid: Some(SANDBOX_UID),
                workdir: "/workspace".into(),
                env: self.agent_env(&spec.env),
                home: "/home/sandbox".into(),
                files_root: None,
            },
        };
        let json = serde_json::to_vec(&launch).map_err(|e| RuntimeError::Other(e.to_string()))?;
        // argv[0] without the host path: the sandbox sees /proc/1/cmdline.
        let mut child = tokio::process::Command::new(&self.cfg.agent_binary)
            .arg0("sandkasten-agent")
            .arg("init")
            // The daemon's environment (its API key among it) stays out of
            // the sandbox's PID 1; the shell's environment is in the spec.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", self.cfg.agent_binary.display())))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(&json)
            .await
            .map_err(io("sending launch spec"))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(io("waiting for sandbox init"))?;
        if !out.status.success() {
            return Err(RuntimeError::Other(format!(
                "sandbox init failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| RuntimeError::Other(format!("unreadable launch report: {e}")))
    }

    fn workspace_image(&self, id: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("workspaces")
            .join(format!("{id}.img"))
    }

    fn workspace_lock(&self, id: &str) -> Result<wsimage::Lock, RuntimeError> {
        let p = self
            .cfg
            .data_dir
            .join("workspaces")
            .join(format!("{id}.lock"));
        wsimage::Lock::take(&p).map_err(io(format!("locking workspace {id}")))
    }

    /// The image's loop device, attached unless it already is (under the
    /// workspace's lock, so an image is never attached twice).
    fn attach_workspace(&self, id: &str) -> Result<wsimage::Attached, RuntimeError> {
        let _lock = self.workspace_lock(id)?;
        wsimage::attach(&self.workspace_image(id)).map_err(io(format!("attaching workspace {id}")))
    }

    /// The attached device of an image workspace; `Unsupported` for a
    /// directory workspace.
    fn image_device(&self, id: &str) -> Result<wsimage::Attached, RuntimeError> {
        if !self.workspace_image(id).exists() {
            return Err(RuntimeError::Unsupported(
                "snapshots of a workspace without a quota".into(),
                "native",
            ));
        }
        self.attach_workspace(id)
    }

    /// Runs `f` on the workspace's content as the daemon sees it: the
    /// directory, or a detached mount of the image's `data` subvolume.
    fn with_workspace_root<T>(
        &self,
        id: &str,
        f: impl FnOnce(&Path) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let img = self.workspace_image(id);
        if img.exists() {
            let attached = self.attach_workspace(id)?;
            let mnt = wsimage::mount_detached(&attached.device, Some("data"))
                .map_err(io(format!("mounting workspace {id}")))?;
            drop(attached);
            f(&wsimage::fd_path(&mnt))
        } else {
            f(&self.workspace_dir(id))
        }
    }

    fn workspace_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("workspaces").join(id)
    }

    /// `<data_dir>/workspaces/<id>`, owned by the sandbox user.
    fn ensure_workspace_root(&self) -> Result<(), RuntimeError> {
        let root = self.cfg.data_dir.join("workspaces");
        if !root.exists() {
            std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(io("chmod"))?;
        }
        Ok(())
    }

    fn ensure_workspace_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let root = self.cfg.data_dir.join("workspaces");
        if !root.exists() {
            std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(io("chmod"))?;
        }
        let w = self.workspace_dir(id);
        match std::fs::create_dir(&w) {
            Ok(()) => {
                std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755))
                    .map_err(io("chmod"))?;
                std::os::unix::fs::chown(&w, Some(self.ids.host_user), Some(self.ids.host_user))
                    .map_err(io(format!("chown {}", w.display())))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(RuntimeError::io(format!("creating {}", w.display()), e)),
        }
        Ok(w)
    }

    /// Replaces workspace `id`'s content with the tar read from `archive`
    /// (extracted into a new subvolume or directory, then swapped in).
    fn import_from(
        &self,
        id: &str,
        archive: impl std::io::Read,
        keep_owners: bool,
    ) -> Result<(), RuntimeError> {
        let user = self.ids.host_user;
        let keep = keep_owners.then_some((self.ids.host_root, self.ids.size));
        let img = self.workspace_image(id);
        let fill = |root: &Path| wstar::extract(archive, root, user, keep);
        let result = if img.exists() {
            let detached = wsimage::wait_detached(&img, std::time::Duration::from_secs(3))
                .map_err(io("looking for the workspace's loop device"))?;
            if !detached {
                return Err(RuntimeError::Other(format!(
                    "workspace {id} is still mounted"
                )));
            }
            let device = self.attach_workspace(id)?;
            wsimage::replace_data(&device.device, user, fill)
        } else {
            let dir = self.workspace_dir(id);
            if !dir.is_dir() {
                return Err(RuntimeError::Other(format!(
                    "workspace {id} has no storage"
                )));
            }
            let root = self.cfg.data_dir.join("workspaces");
            let tmp = root.join(format!(".import-{id}-{}", std::process::id()));
            let _ = remove_tree(&tmp);
            let made = std::fs::create_dir(&tmp)
                .and_then(|_| {
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                })
                .and_then(|_| std::os::unix::fs::chown(&tmp, Some(user), Some(user)));
            let r = match made {
                Err(e) => Err(wstar::ImportError::Io(e)),
                Ok(()) => fill(&tmp),
            };
            match r {
                Err(e) => {
                    let _ = remove_tree(&tmp);
                    Err(e)
                }
                Ok(()) => {
                    let old = root.join(format!(".old-{id}-{}", std::process::id()));
                    std::fs::rename(&dir, &old)
                        .and_then(|_| std::fs::rename(&tmp, &dir))
                        .map_err(io("swapping in the imported content"))?;
                    let _ = remove_tree(&old);
                    Ok(())
                }
            }
        };
        result.map_err(|e| match e {
            wstar::ImportError::Invalid(m) => RuntimeError::InvalidArchive(m),
            wstar::ImportError::Io(e)
                if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) =>
            {
                RuntimeError::InvalidArchive(format!(
                    "the content does not fit in workspace {id}'s quota ({e}); \
                     the old content is unchanged"
                ))
            }
            wstar::ImportError::Io(e) => RuntimeError::io(format!("importing into {id}"), e),
        })
    }

    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError> {
        AgentClient::connect(&sandkasten_protocol::socket_path(&self.session_dir(id))).await
    }
}

#[async_trait]
impl Runtime for NativeRuntime {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let dir = self.session_dir(&spec.id);
        let report = match self.launch(&spec, &dir).await {
            Ok(r) => r,
            Err(e) => {
                let handle = SandboxHandle {
                    id: spec.id.clone(),
                    pid: 0,
                    start_time: 0,
                };
                if let Err(ce) = self.destroy(&handle).await {
                    tracing::warn!(session = %spec.id, "cleanup after failed create: {ce}");
                }
                return Err(e);
            }
        };
        let handle = SandboxHandle {
            id: spec.id.clone(),
            pid: report.pid,
            start_time: report.start_time,
        };
        match self.connect(&spec.id).await {
            Ok(agent) => Ok(Sandbox { handle, agent }),
            Err(e) => {
                let _ = self.destroy(&handle).await;
                Err(e)
            }
        }
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Sandbox, RuntimeError> {
        if process::open_verified(handle.pid, handle.start_time).is_none() {
            return Err(RuntimeError::Gone(handle.id.clone()));
        }
        let agent = self
            .connect(&handle.id)
            .await
            .map_err(|_| RuntimeError::Gone(handle.id.clone()))?;
        Ok(Sandbox {
            handle: handle.clone(),
            agent,
        })
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        if let Some(pidfd) = process::open_verified(handle.pid, handle.start_time) {
            process::kill_and_wait(pidfd)
                .await
                .map_err(io("killing sandbox init"))?;
        }
        self.cgroups.remove(&handle.id).await?;
        let dir = self.session_dir(&handle.id);
        let what = format!("removing {}", dir.display());
        tokio::task::spawn_blocking(move || remove_tree(&dir))
            .await
            .map_err(|e| RuntimeError::Other(format!("delete task failed: {e}")))?
            .map_err(io(what))?;
        Ok(())
    }

    async fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError> {
        Ok(self.cgroups.stats(&handle.id))
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        let mut out = vec![ImageInfo {
            name: "base".into(),
            digest: "builtin".into(),
            size_bytes: 0,
            builtin: true,
        }];
        out.extend(self.image_store().list().into_iter().map(|m| ImageInfo {
            name: m.name,
            digest: m.digest,
            size_bytes: m.size_bytes,
            builtin: false,
        }));
        Ok(out)
    }

    async fn import_image(&self, name: &str, archive: PathBuf) -> Result<ImageInfo, RuntimeError> {
        let store = self.image_store();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || store.import(&name, &archive))
            .await
            .map_err(|e| RuntimeError::Other(format!("import task failed: {e}")))?
    }

    async fn remove_image(&self, name: &str) -> Result<(), RuntimeError> {
        if name == "base" {
            return Err(RuntimeError::ImageBuiltin(name.into()));
        }
        self.image_store().remove(name)
    }

    async fn ensure_workspace(
        &self,
        id: &str,
        quota_bytes: Option<u64>,
    ) -> Result<(), RuntimeError> {
        let img = self.workspace_image(id);
        if img.exists() || self.workspace_dir(id).is_dir() {
            return Ok(());
        }
        let Some(quota) = quota_bytes else {
            return self.ensure_workspace_dir(id).map(|_| ());
        };
        wsimage::host_support()
            .map_err(|e| RuntimeError::HostNotReady(format!("workspace quotas: {e}")))?;
        self.ensure_workspace_root()?;
        // mkfs and attach take tens of milliseconds of blocking work.
        tokio::task::block_in_place(|| {
            let _lock = self.workspace_lock(id)?;
            if img.exists() {
                return Ok(());
            }
            let created = wsimage::create(&img, quota, self.ids.host_user)
                .map_err(io(format!("creating workspace image {id}")));
            if created.is_err() {
                // Nothing of the failed workspace stays behind.
                let _ = std::fs::remove_file(img.with_extension("lock"));
            }
            created
        })
    }

    async fn delete_workspace(&self, id: &str) -> Result<(), RuntimeError> {
        let img = self.workspace_image(id);
        let dir = self.workspace_dir(id);
        tokio::task::block_in_place(|| {
            if img.exists() {
                let _lock = self.workspace_lock(id)?;
                let detached = wsimage::wait_detached(&img, std::time::Duration::from_secs(3))
                    .map_err(io("looking for the workspace's loop device"))?;
                if !detached {
                    return Err(RuntimeError::Other(format!(
                        "workspace {id} is still mounted"
                    )));
                }
                std::fs::remove_file(&img).map_err(io(format!("deleting {}", img.display())))?;
                let _ = std::fs::remove_file(img.with_extension("lock"));
                Ok(())
            } else {
                // A lock left by a create that failed before its image existed.
                let _ = std::fs::remove_file(img.with_extension("lock"));
                remove_tree(&dir).map_err(io("deleting workspace"))
            }
        })
    }

    async fn snapshot_workspace(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let device = self.image_device(id)?;
        tokio::task::block_in_place(|| wsimage::snapshot(&device.device, snap))
            .map_err(io(format!("snapshotting workspace {id}")))
    }

    async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let device = self.image_device(id)?;
        tokio::task::block_in_place(|| wsimage::delete_snapshot(&device.device, snap))
            .map_err(io(format!("deleting snapshot {snap}")))
    }

    async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let img = self.workspace_image(id);
        if !img.exists() {
            return Err(RuntimeError::Unsupported(
                "snapshots of a workspace without a quota".into(),
                "native",
            ));
        }
        tokio::task::block_in_place(|| {
            let detached = wsimage::wait_detached(&img, std::time::Duration::from_secs(3))
                .map_err(io("looking for the workspace's loop device"))?;
            if !detached {
                return Err(RuntimeError::Other(format!(
                    "workspace {id} is still mounted"
                )));
            }
            let device = self.image_device(id)?;
            wsimage::restore(&device.device, snap).map_err(io(format!("restoring snapshot {snap}")))
        })
    }

    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        if !self.workspace_image(id).exists() && !self.workspace_dir(id).is_dir() {
            return Ok(None);
        }
        tokio::task::block_in_place(|| {
            self.with_workspace_root(id, |root| Ok(Some(fsutil::tree_size(root))))
        })
    }

    async fn workspace_file(&self, id: &str, req: Request) -> Result<Response, RuntimeError> {
        let user = self.ids.host_user;
        tokio::task::block_in_place(|| {
            self.with_workspace_root(id, |root| {
                // Every path resolves strictly inside the workspace (openat2
                // RESOLVE_IN_ROOT), with the sandbox user's filesystem identity.
                let fs = sandkasten_fsops::RootedFs::open(root, Some((user, user)))
                    .map_err(io(format!("opening workspace {id}")))?;
                fs.handle(&req)
                    .ok_or_else(|| RuntimeError::Other("not a file request".into()))
            })
        })
    }

    fn export_workspace(
        &self,
        id: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), RuntimeError> {
        let (host_root, size) = (self.ids.host_root, self.ids.size);
        let img = self.workspace_image(id);
        if img.exists() {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("export-{}-{n}", std::process::id());
            let device = self.attach_workspace(id)?;
            // Declared before the mount, so it is deleted after the mount
            // is gone (also when the client stops reading half-way).
            let _snap = wsimage::TempSnapshot::take(&device.device, &name)
                .map_err(io(format!("snapshotting workspace {id}")))?;
            let mnt = wsimage::mount_detached(&device.device, Some(&format!("snaps/{name}")))
                .map_err(io(format!("mounting the export snapshot of {id}")))?;
            wstar::export(&wsimage::fd_path(&mnt), host_root, size, out)
                .map_err(io(format!("exporting workspace {id}")))
        } else {
            wstar::export(&self.workspace_dir(id), host_root, size, out)
                .map_err(io(format!("exporting workspace {id}")))
        }
    }

    async fn import_workspace(&self, id: &str, archive: PathBuf) -> Result<(), RuntimeError> {
        tokio::task::block_in_place(|| {
            let f = std::fs::File::open(&archive).map_err(io("opening the uploaded archive"))?;
            self.import_from(id, std::io::BufReader::new(f), false)
        })
    }

    async fn copy_snapshot(&self, src: &str, snap: &str, dst: &str) -> Result<(), RuntimeError> {
        let (host_root, size) = (self.ids.host_root, self.ids.size);
        tokio::task::block_in_place(|| {
            let device = self.image_device(src)?;
            let mnt = wsimage::mount_detached(&device.device, Some(&format!("snaps/{snap}")))
                .map_err(io(format!("mounting snapshot {snap}")))?;
            let root = wsimage::fd_path(&mnt);
            let mut fds = [0; 2];
            // SAFETY: pipe2 into our array.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
                return Err(RuntimeError::io("pipe", std::io::Error::last_os_error()));
            }
            // SAFETY: fresh fds we own.
            let (r, w) = unsafe {
                (
                    std::fs::File::from_raw_fd(fds[0]),
                    std::fs::File::from_raw_fd(fds[1]),
                )
            };
            std::thread::scope(|s| {
                let writer = s.spawn(move || {
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
                    wstar::export(&root, host_root, size, &mut w)
                });
                let imported = self.import_from(dst, std::io::BufReader::new(r), true);
                let exported = writer
                    .join()
                    .map_err(|_| RuntimeError::Other("export thread panicked".into()))?;
                imported?;
                exported.map_err(io(format!("reading snapshot {snap}")))
            })
        })
    }

    fn can_bind_workspace(&self) -> bool {
        true
    }

    async fn bind_workspace(&self, handle: &SandboxHandle, id: &str) -> Result<(), RuntimeError> {
        let img = self.workspace_image(id);
        // The attached device (if any) stays pinned until the mount is in
        // the sandbox, which then keeps it bound.
        let (mount, _attached) = if img.exists() {
            let attached = self.attach_workspace(id)?;
            let m = wsimage::mount_detached(&attached.device, Some("data"))
                .map_err(io(format!("mounting workspace {id}")))?;
            (m, Some(attached))
        } else {
            let dir = self.ensure_workspace_dir(id)?;
            let m = latebind::clone_dir(&dir).map_err(io(format!("binding workspace {id}")))?;
            (m, None)
        };
        let pidfd = process::open_verified(handle.pid, handle.start_time)
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
        tokio::task::spawn_blocking(move || latebind::move_into(pidfd, mount, "/workspace"))
            .await
            .map_err(|e| RuntimeError::Other(format!("late-bind task failed: {e}")))?
            .map_err(io(format!(
                "mounting workspace {id} into sandbox {}",
                handle.id
            )))
    }

    fn scratch_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("tmp")
    }

    async fn list_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let dir = self.cfg.data_dir.join("sessions");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
            let e = e.map_err(io("listing sessions"))?;
            if let Some(name) = e.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}
