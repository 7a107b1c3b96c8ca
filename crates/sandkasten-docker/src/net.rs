//! Sandboxes' network on a local Docker engine: the native runtime's
//! datapath (`sandkasten_netguard::routed`), unchanged. Every container
//! starts on the engine's `none` (loopback only, and no embedded resolver
//! of the engine inside); a sandbox given `full` gets a veth pair the
//! daemon makes into the container's network namespace (reached through
//! its proven init), its addresses and its elements in the daemon's
//! nftables table, in a few milliseconds; `none` deletes the pair. The
//! engine never sees the link, so it has no say in the policy, and no
//! engine network exists.
//!
//! Earlier versions put containers on an engine network of their own
//! (`sandkasten-<tag>`); at start, ours still on it are taken off it and
//! the network removed, so that recovery gives them the routed link.
//! Design, layout and invariants: docs/architecture.md, "Sandbox
//! networks", "On docker".

use crate::{api_err, container_name, status_of, LABEL_DATA_DIR};
use bollard::models::NetworkDisconnectRequest;
use bollard::Docker;
use sandkasten_netguard::host;
use sandkasten_netguard::routed::{NetConfig, Network, Slots};
use sandkasten_runtime::{
    blocking, latebind, NetworkDenial, NetworkPolicy, RuntimeError, SandboxHandle,
};
use std::path::Path;
use std::sync::Arc;

/// Label of the engine network earlier versions made.
const LABEL_NETWORK: &str = "sandkasten.network";

/// The datapath of one daemon on a local engine.
pub(crate) struct Datapath {
    routed: Arc<Network>,
    /// `<data dir>/docker-resolv.conf`.
    resolv_conf: std::path::PathBuf,
}

/// The resolver file in the data dir that containers bind.
const RESOLV_FILE: &str = "docker-resolv.conf";
/// Where a container's resolver file is bound (read-only).
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";

impl Datapath {
    /// Builds the datapath (the table anew; each running session's
    /// elements come back through `set_network` at recovery), after
    /// taking our containers off the engine network an earlier version
    /// made and removing it.
    pub async fn start(
        docker: &Docker,
        cfg: &NetConfig,
        data_dir: &Path,
    ) -> Result<Datapath, RuntimeError> {
        retire_engine_network(docker, data_dir).await?;
        // Not in a container's run dir: that is bound inside it, where its
        // root could rewrite its slot.
        let slots = Slots::Files(data_dir.join("docker-net-slots"));
        let (cfg, data) = (cfg.clone(), data_dir.to_path_buf());
        let routed = blocking("starting the sandbox network", move || {
            Network::start(&cfg, &data, slots)
        })
        .await?;
        // The file every container binds at /etc/resolv.conf: written in
        // place, so that containers of an earlier version (which named
        // their engine network's gateway) resolve through the new one.
        if let Some(conf) = routed.resolv_conf() {
            let (from, to) = (conf.to_path_buf(), data_dir.join(RESOLV_FILE));
            blocking("writing the sandboxes' resolv.conf", move || {
                std::fs::copy(&from, &to)
                    .map(|_| ())
                    .map_err(RuntimeError::io_ctx(format!("writing {}", to.display())))
            })
            .await?;
        }
        Ok(Datapath {
            routed: Arc::new(routed),
            resolv_conf: data_dir.join(RESOLV_FILE),
        })
    }

    /// Gives container `handle` (running, its init proven) its link and
    /// addresses with no rules: everything it sends is refused until
    /// [`Datapath::apply`] sets its policy (a pooled sandbox waiting for
    /// its claim).
    pub async fn prepare(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let (id, pid, start) = (handle.id.clone(), handle.pid, handle.start_time);
        let routed = self.routed.clone();
        blocking("giving a sandbox its link", move || {
            routed.prepare(&id, pid, &proven(&id, pid, start)?)
        })
        .await
    }

    /// Gives container `handle` (running, its init proven) `policy`: its
    /// link and elements for `full`, no link for `none`.
    pub async fn apply(
        &self,
        handle: &SandboxHandle,
        policy: &NetworkPolicy,
    ) -> Result<(), RuntimeError> {
        let (id, pid, start) = (handle.id.clone(), handle.pid, handle.start_time);
        let (routed, policy) = (self.routed.clone(), policy.clone());
        blocking("setting a sandbox's network", move || {
            if !policy.is_full() {
                return routed.unlink(&id);
            }
            routed.apply(&id, pid, &proven(&id, pid, start)?, &policy)
        })
        .await
    }

    /// Deletes sandbox `id`'s link, elements and address slot; with `gone`
    /// also its record of refusals (kept across a hibernation).
    pub async fn forget(&self, id: &str, gone: bool) -> Result<(), RuntimeError> {
        let (routed, id) = (self.routed.clone(), id.to_string());
        blocking("deleting a sandbox's network", move || {
            if gone {
                routed.remove(&id)
            } else {
                routed.unlink(&id)
            }
        })
        .await
    }

    /// What sandbox `id`'s policy refused, oldest first.
    pub fn events(&self, id: &str) -> Vec<NetworkDenial> {
        self.routed.events(id)
    }

    /// Refusals recorded since start.
    pub fn denials_total(&self) -> u64 {
        self.routed.denials_total()
    }

    /// The resolv.conf bound at every container's `/etc/resolv.conf`,
    /// where the daemon answers DNS (`None`: no DNS server).
    pub fn resolv_conf(&self) -> Option<&Path> {
        self.routed
            .resolv_conf()
            .map(|_| self.resolv_conf.as_path())
    }

    /// At a graceful stop: when no sandbox has a link any more, the table
    /// and the Docker rules go too.
    pub async fn release(&self) -> Result<bool, RuntimeError> {
        let routed = self.routed.clone();
        blocking("releasing the sandbox network", move || routed.release()).await
    }

    /// The table's name and the veths' name prefix.
    pub fn names(&self) -> (String, String) {
        (
            self.routed.table().to_string(),
            self.routed.prefix().to_string(),
        )
    }
}

/// A pidfd of container `id`'s init (host pid `pid`, started at `start`),
/// proven to be it.
fn proven(id: &str, pid: i32, start: u64) -> Result<std::os::fd::OwnedFd, RuntimeError> {
    latebind::open_verified(pid, start).ok_or_else(|| RuntimeError::Backend {
        context: "network".into(),
        message: format!(
            "container {} has no provable init to reach its network namespace through",
            container_name(id)
        ),
    })
}

/// Takes the containers of this daemon off the engine network an earlier
/// version made (`sandkasten-<tag>`, labelled with our data dir), then
/// removes it. A network of that name that is not ours is left alone.
async fn retire_engine_network(docker: &Docker, data_dir: &Path) -> Result<(), RuntimeError> {
    let name = format!("sandkasten-{}", host::tag_of(data_dir));
    let found = docker
        .inspect_network(
            &name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await;
    let net = match found {
        Ok(n) => n,
        Err(e) if status_of(&e) == Some(404) => return Ok(()),
        Err(e) => return Err(api_err(format!("inspecting docker network {name}"))(e)),
    };
    let labels = net.labels.unwrap_or_default();
    if labels.get(LABEL_DATA_DIR).map(String::as_str) != Some(&data_dir.display().to_string())
        || !labels.contains_key(LABEL_NETWORK)
    {
        return Ok(());
    }
    let mut kept = 0;
    for (container, _) in net.containers.unwrap_or_default() {
        tracing::info!(%container, network = %name, "taking a sandbox off the engine network of an earlier version");
        let req = NetworkDisconnectRequest {
            container: container.clone(),
            force: Some(true),
        };
        match docker.disconnect_network(&name, req).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            // That sandbox cannot get its new link (its recovery says so);
            // the others go on.
            Err(e) => {
                tracing::warn!(%container, network = %name, "cannot take a sandbox off the engine network of an earlier version: {e}");
                kept += 1;
            }
        }
    }
    if kept > 0 {
        return Ok(());
    }
    match docker.remove_network(&name).await {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => return Err(api_err(format!("removing network {name}"))(e)),
    }
    tracing::info!(network = %name, "removed the engine network of an earlier version");
    Ok(())
}
