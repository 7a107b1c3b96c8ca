//! The daemon's configuration: YAML file (the seed's keys plus `data_dir`,
//! `runtime`, `max_sessions`), then environment overrides, then validation.
//! Unknown keys and invalid values stop the daemon with a message naming
//! the key; defaults live here and nowhere else.

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Timeout of an exec whose request names none, when
/// `defaults.exec_timeout_ms` is unset (capped by `max_exec_timeout_ms`).
const DEFAULT_EXEC_TIMEOUT_MS: u64 = 30_000;
/// Smallest `defaults.max_output_bytes`.
const MIN_OUTPUT_BYTES: u64 = 1024;
/// Largest output one exec can return (the agent's frame limit). Bounds
/// `defaults.max_output_bytes`.
const AGENT_FRAME_BYTES: u64 = sandkasten_runtime::MAX_EXEC_OUTPUT_BYTES;
/// Largest file content one read can return. Bounds
/// `defaults.max_read_bytes`.
const AGENT_READ_BYTES: u64 = sandkasten_runtime::MAX_READ_BYTES;

/// The backend that runs sandboxes (`runtime:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Native,
    Docker,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Native => "native",
            RuntimeKind::Docker => "docker",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The network of a sandbox (`defaults.network_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// Outbound access, under the policy's lists.
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub api_key: Option<String>,
    pub data_dir: PathBuf,
    pub db_path: Option<PathBuf>,
    pub runtime: RuntimeKind,
    pub default_image: String,
    pub allowed_images: Vec<String>,
    pub session_ttl_seconds: u64,
    /// How long a paused session is kept (its TTL does not run while
    /// paused); then it is destroyed.
    pub paused_ttl_seconds: u64,
    /// How long a hibernated session is kept (its TTL does not run while
    /// hibernated); then it is destroyed.
    pub hibernated_ttl_seconds: u64,
    /// Upper bound of a fork's `count`.
    pub max_fork_count: u64,
    pub max_sessions: usize,
    /// Largest accepted request body (uploads and writes).
    pub max_body_mb: u64,
    /// Request bodies held whole in memory at once (JSON, uploads, unary
    /// E2B calls), at least one body of `max_body_mb`; past it a request
    /// waits up to 30 s for room, then is answered 503.
    pub body_memory_mb: u64,
    pub defaults: Defaults,
    pub workspace: Workspace,
    pub pool: Pool,
    /// Settings of `runtime: docker`.
    pub docker: Docker,
    /// Host storage for sandboxes' own writes.
    pub disk: Disk,
    /// Sandboxes' network: what an operator allows, the native datapath.
    pub network: Network,
    /// Native runtime: where no cgroup mount has `favordynmods`, mount a
    /// named cgroup v1 hierarchy without controllers with it (at
    /// `/run/sandkasten/cgroup-favordynmods`, left mounted), so that
    /// moving a sandbox into its cgroups does not wait for an RCU grace
    /// period (12-25 ms of every cold create). Host-wide: forks and exits
    /// take the cgroup lock's slower path. `false`: leave the host as it is.
    pub cgroup_favordynmods: bool,
    /// Native runtime: raise the host's `kernel.pty.max` at start where it
    /// is lower than `max_sessions` sandboxes can hold (each sandbox's own
    /// terminals are capped at 64); never lowers it. `false`: leave it.
    pub raise_pty_max: bool,
    /// Native runtime: raise the host's `kernel.pid_max` at start where it
    /// is lower than `max_sessions` sandboxes at `defaults.pids_limit`
    /// tasks each can use (plus 32768 for the host); never lowers it.
    /// `false`: leave it.
    pub raise_pid_max: bool,
    /// Native runtime: how many host uid/gid ranges (65536 ids each) the
    /// daemon hands out, one per sandbox, so that the kernel's per-user
    /// budgets (inotify, message queues, pipe buffers) are each sandbox's
    /// own; creates beyond it answer 503 `CAPACITY_EXHAUSTED`. 0: every
    /// sandbox in the shared range (as on hosts without idmapped mounts).
    pub uid_ranges: u32,
}

/// The `network:` section: the cap on sessions' network policies and the
/// native datapath's addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Whether a session may have `mode: full`; unset: true exactly when
    /// `defaults.network_mode` is `full`.
    pub allow_full: Option<bool>,
    /// Ranges (CIDRs or addresses) no sandbox reaches and no `allow_out`
    /// entry may overlap. Replaces the built-in list when set (leave a
    /// range out to lift it). The host's own addresses and other
    /// sandboxes are unreachable whatever it says.
    pub deny_always: Option<Vec<String>>,
    /// The IPv4 network sandboxes get addresses from (at
    /// least a /24); unset: a /20 in 10.128.0.0/10 derived from the data
    /// dir, so daemons with separate data dirs do not collide.
    pub ipv4_subnet: Option<String>,
    /// The IPv6 network (at least a /120); unset: a /64 in fd5b::/16
    /// derived from the data dir.
    pub ipv6_subnet: Option<String>,
    /// Whether sandboxes get IPv6 too.
    pub ipv6: bool,
    /// Native runtime: the resolver the daemon's DNS server forwards the
    /// names sandboxes may resolve to (`address` or `address:port`);
    /// unset: the first `nameserver` of the host's /etc/resolv.conf.
    pub dns_upstream: Option<String>,
    /// Domain of the ports proxy's preview hosts: a sandbox port is
    /// `http://{port}-{id}.{preview_domain}/`. Unset: `localhost:{the
    /// listen port}` (browsers resolve `*.localhost` to loopback).
    pub preview_domain: Option<String>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            allow_full: None,
            deny_always: None,
            ipv4_subnet: None,
            ipv6_subnet: None,
            ipv6: true,
            dns_upstream: None,
            preview_domain: None,
        }
    }
}

impl Network {
    /// The preview domain in force for a daemon listening on `port`.
    pub fn preview_domain(&self, port: u16) -> String {
        self.preview_domain
            .clone()
            .unwrap_or_else(|| format!("localhost:{port}"))
    }

    /// `dns_upstream` as an address (port 53 unless given); unset: the
    /// host's first nameserver, `None` when it has none.
    pub fn dns_upstream(&self) -> Result<Option<std::net::SocketAddr>> {
        let parse = |s: &str| -> Option<std::net::SocketAddr> {
            s.parse()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(|ip| (ip, 53).into()))
        };
        match &self.dns_upstream {
            Some(s) => parse(s.trim()).map(Some).ok_or_else(|| {
                anyhow!("network.dns_upstream: {s:?} is not an address or address:port")
            }),
            None => Ok(std::fs::read_to_string("/etc/resolv.conf")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .find_map(|a| parse(a.trim()))),
        }
    }
}

impl Config {
    /// `network.deny_always`, parsed (the built-in list when unset).
    pub fn deny_always(&self) -> Result<Vec<sandkasten_runtime::IpNet>> {
        match &self.network.deny_always {
            None => Ok(sandkasten_runtime::default_deny_always()),
            Some(list) => list
                .iter()
                .map(|s| s.parse().map_err(|e| anyhow!("network.deny_always: {e}")))
                .collect(),
        }
    }

    /// The engine's network settings: the cap and the default policy
    /// (`defaults.network_mode`, `allow_out`, `deny_out`), checked against
    /// the cap.
    pub fn network_config(&self) -> Result<sandkasten_engine::NetworkConfig> {
        let d = &self.defaults;
        let mode = match d.network_mode {
            NetworkMode::None => sandkasten_runtime::NetworkMode::None,
            NetworkMode::Full => sandkasten_runtime::NetworkMode::Full,
        };
        let cap = sandkasten_engine::NetworkConfig {
            allow_full: self
                .network
                .allow_full
                .unwrap_or(d.network_mode == NetworkMode::Full),
            deny_always: self.deny_always()?,
            default: sandkasten_runtime::NetworkPolicy::none(),
        };
        let default = cap
            .resolve_config(mode, &d.allow_out, &d.deny_out)
            .map_err(|e| anyhow!("defaults.network_mode/allow_out/deny_out: {e}"))?;
        Ok(sandkasten_engine::NetworkConfig { default, ..cap })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub cpu_limit: f64,
    pub mem_limit_mb: u64,
    pub pids_limit: u64,
    /// Upper bound of every exec's timeout.
    pub max_exec_timeout_ms: u64,
    /// Timeout of an exec whose request names none; unset: 30000, or
    /// `max_exec_timeout_ms` if that is smaller (see
    /// [`Defaults::default_exec_timeout_ms`]).
    pub exec_timeout_ms: Option<u64>,
    /// Output cap of one exec (bytes; beyond it the output is truncated).
    pub max_output_bytes: u64,
    /// Cap of one file read (bytes).
    pub max_read_bytes: u64,
    pub network_mode: NetworkMode,
    /// `allow_out` of a session whose request names no network.
    pub allow_out: Vec<String>,
    /// `deny_out` of a session whose request names no network.
    pub deny_out: Vec<String>,
    pub readonly_rootfs: bool,
    /// Size of each sandbox's /dev/shm (tmpfs, counted against its
    /// memory), and of /tmp where /tmp is a tmpfs (docker, or native
    /// without a scratch filesystem; docker's is at most
    /// `disk_limit_mb`).
    pub tmp_size_mb: u64,
    /// Disk limit (MiB) of each sandbox's own writes outside /workspace
    /// (root filesystem changes, home, /tmp, /var/tmp), where the backend
    /// enforces one; a create may ask for its own `disk_limit_mb`.
    pub disk_limit_mb: u64,
    /// Upper bound of a create request's `disk_limit_mb`.
    pub max_disk_limit_mb: u64,
    /// What a session's timeout does when its request names nothing:
    /// `destroy`, `pause` or `hibernate`.
    pub on_timeout: String,
    /// Seconds without activity after which a session's timeout action
    /// runs, when its request names none; 0: no idle limit.
    pub idle_timeout_seconds: u64,
}

/// The `disk:` section: where sandboxes' own writes live on the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Disk {
    /// Native runtime: size (MiB) of the scratch filesystem
    /// (`<data_dir>/scratch.img`, preallocated, btrfs with one quota group
    /// per sandbox) that holds every sandbox's own writes. Unset: a tenth
    /// of the data dir's filesystem, at most a quarter of its free space and
    /// 16 GiB (left out with a warning, disk limits then not enforced, where
    /// that is under 1 GiB or the host lacks btrfs or loop devices); 0: no
    /// scratch filesystem (not enforced). An existing image keeps its size.
    pub scratch_size_mb: Option<u64>,
    /// Creates fail with 507 STORAGE_FULL while the data dir's filesystem
    /// has less free space than this (or the scratch filesystem less than
    /// this, at most a tenth of its size).
    pub min_free_mb: u64,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            scratch_size_mb: None,
            min_free_mb: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workspace {
    pub enabled: bool,
    pub persist_by_default: bool,
    /// Size limit (MiB) of each persistent workspace without one of its
    /// own, enforced by the kernel (a btrfs image per workspace); 0: no
    /// limit (plain directories). Unset: 10240 where the host supports
    /// quotas (btrfs, btrfs-progs, loop devices), else 0 with a warning.
    pub quota_mb: Option<u64>,
    /// Cleanup policy: delete workspaces unused for more days than this
    /// (fractions allowed).
    pub max_idle_days: Option<f64>,
    /// Cleanup policy: delete least recently used workspaces while all
    /// together take more than this many GB (10^9 bytes).
    pub max_total_gb: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    pub enabled: bool,
    /// Image → number of ready sandboxes to keep.
    pub images: BTreeMap<String, usize>,
    /// Replace a pooled sandbox unused for this long.
    pub max_idle_seconds: u64,
    /// Sandboxes started at the same time to refill the pool (all images
    /// together), so refills never take every core from live requests.
    /// Unset: half the CPUs (at least 1, at most 4).
    pub max_concurrent_fills: Option<usize>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            enabled: false,
            images: BTreeMap::new(),
            max_idle_seconds: 1800,
            max_concurrent_fills: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            api_key: None,
            data_dir: PathBuf::from("/var/lib/sandkasten"),
            db_path: None,
            runtime: RuntimeKind::Native,
            default_image: "base".into(),
            allowed_images: Vec::new(),
            session_ttl_seconds: 1800,
            paused_ttl_seconds: 86_400,
            hibernated_ttl_seconds: 604_800,
            max_fork_count: 16,
            max_sessions: 64,
            max_body_mb: 64,
            body_memory_mb: 256,
            defaults: Defaults::default(),
            workspace: Workspace::default(),
            pool: Pool::default(),
            docker: Docker::default(),
            disk: Disk::default(),
            network: Network::default(),
            cgroup_favordynmods: true,
            raise_pty_max: true,
            raise_pid_max: true,
            uid_ranges: 16_384,
        }
    }
}

/// The `docker:` section (used with `runtime: docker`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Docker {
    /// Engine address: `unix:///path` (a local engine) or
    /// `tcp://host:port` (a remote one: the agent is copied onto it and
    /// reached through the exec API); unset: `DOCKER_HOST`, else
    /// `unix:///var/run/docker.sock`.
    pub host: Option<String>,
    /// OCI runtime the engine starts sandboxes with (e.g. `runsc`);
    /// unset: the engine's default.
    pub runtime: Option<String>,
    /// The uid (and gid) commands run as in containers, which is that id
    /// on the engine's host too (no user namespace): never a host
    /// account's, checked at start.
    pub sandbox_uid: u32,
}

impl Default for Docker {
    fn default() -> Self {
        Docker {
            host: None,
            runtime: None,
            sandbox_uid: sandkasten_docker::DEFAULT_SANDBOX_ID,
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            cpu_limit: 1.0,
            mem_limit_mb: 512,
            pids_limit: 256,
            max_exec_timeout_ms: 120_000,
            exec_timeout_ms: None,
            max_output_bytes: 1024 * 1024,
            max_read_bytes: 64 * 1024 * 1024,
            network_mode: NetworkMode::None,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
            readonly_rootfs: false,
            tmp_size_mb: 256,
            disk_limit_mb: 4096,
            max_disk_limit_mb: 16384,
            on_timeout: "destroy".into(),
            idle_timeout_seconds: 0,
        }
    }
}

impl Defaults {
    /// The timeout of an exec whose request names none.
    pub fn default_exec_timeout_ms(&self) -> u64 {
        self.exec_timeout_ms
            .unwrap_or(DEFAULT_EXEC_TIMEOUT_MS.min(self.max_exec_timeout_ms))
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            enabled: true,
            persist_by_default: false,
            quota_mb: None,
            max_idle_days: None,
            max_total_gb: None,
        }
    }
}

/// Reads the environment variable `name` if set and non-empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Parses the override `var` of the enum key `key` as the file's value is
/// parsed, with the same message (naming the allowed values).
fn env_enum<T: DeserializeOwned>(var: &str, key: &str, value: &str) -> Result<T> {
    use serde::de::IntoDeserializer;
    T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(value))
        .map_err(|e| anyhow!("{var}: {key}: {e}"))
}

impl Config {
    /// File (if any), then environment, then validation.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut cfg = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                Self::parse(&text).with_context(|| format!("invalid config {}", p.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        // serde_yaml's messages name the offending key and its line.
        Ok(serde_yaml::from_str(text)?)
    }

    /// Applies the `SANDKASTEN_*` overrides; `env` looks a variable up
    /// (set and non-empty).
    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = env("SANDKASTEN_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = env("SANDKASTEN_API_KEY") {
            self.api_key = Some(v);
        }
        if let Some(v) = env("SANDKASTEN_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("SANDKASTEN_RUNTIME") {
            self.runtime = env_enum("SANDKASTEN_RUNTIME", "runtime", &v)?;
        }
        if let Some(v) = env("SANDKASTEN_DEFAULT_IMAGE") {
            self.default_image = v;
        }
        if let Some(v) = env("SANDKASTEN_SESSION_TTL_SECONDS") {
            self.session_ttl_seconds = v
                .parse()
                .with_context(|| format!("SANDKASTEN_SESSION_TTL_SECONDS: not a number: {v:?}"))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "listen: {:?} is not an address like 127.0.0.1:8080",
                self.listen
            );
        }
        if let Some(k) = &self.api_key {
            if k.len() < 8 {
                bail!("api_key: must be at least 8 characters");
            }
        }
        if !self.data_dir.is_absolute() {
            bail!(
                "data_dir: must be an absolute path, got {}",
                self.data_dir.display()
            );
        }
        if self.default_image.is_empty() {
            bail!("default_image: must not be empty");
        }
        if let Some(d) = &self.network.preview_domain {
            let valid = !d.is_empty()
                && !d.starts_with('.')
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if !valid {
                bail!(
                    "network.preview_domain: {d:?} is not a host name (with an optional \
                     :port), like localhost:8080 or preview.example.com"
                );
            }
        }
        if !self.allowed_images.is_empty() && !self.allowed_images.contains(&self.default_image) {
            bail!(
                "allowed_images: does not contain default_image {:?}",
                self.default_image
            );
        }
        if self.session_ttl_seconds == 0 {
            bail!("session_ttl_seconds: must be at least 1");
        }
        if self.paused_ttl_seconds == 0 {
            bail!("paused_ttl_seconds: must be at least 1");
        }
        if self.max_fork_count == 0 {
            bail!("max_fork_count: must be at least 1");
        }
        if self.hibernated_ttl_seconds == 0 {
            bail!("hibernated_ttl_seconds: must be at least 1");
        }
        if sandkasten_engine::OnTimeout::parse(&self.defaults.on_timeout).is_none() {
            bail!(
                "defaults.on_timeout: must be destroy, pause or hibernate, got {:?}",
                self.defaults.on_timeout
            );
        }
        if self.max_sessions == 0 {
            bail!("max_sessions: must be at least 1");
        }
        if self.max_body_mb == 0 {
            bail!("max_body_mb: must be at least 1");
        }
        if self.body_memory_mb == 0 {
            bail!("body_memory_mb: must be at least 1");
        }
        if self.uid_ranges > sandkasten_native::MAX_UID_RANGES {
            bail!(
                "uid_ranges: at most {} (the last range must end below 2^31), got {}",
                sandkasten_native::MAX_UID_RANGES,
                self.uid_ranges
            );
        }
        let d = &self.defaults;
        if !(d.cpu_limit > 0.0 && d.cpu_limit <= 1024.0) {
            bail!(
                "defaults.cpu_limit: must be a number of cores > 0, got {}",
                d.cpu_limit
            );
        }
        if d.mem_limit_mb < 16 {
            bail!(
                "defaults.mem_limit_mb: must be at least 16, got {}",
                d.mem_limit_mb
            );
        }
        if d.pids_limit < 8 {
            bail!(
                "defaults.pids_limit: must be at least 8, got {}",
                d.pids_limit
            );
        }
        if d.max_exec_timeout_ms < 100 {
            bail!("defaults.max_exec_timeout_ms: must be at least 100");
        }
        if let Some(t) = d.exec_timeout_ms {
            if t == 0 {
                bail!("defaults.exec_timeout_ms: must be at least 1");
            }
            if t > d.max_exec_timeout_ms {
                bail!(
                    "defaults.exec_timeout_ms: must be at most defaults.max_exec_timeout_ms ({}), got {t}",
                    d.max_exec_timeout_ms
                );
            }
        }
        if d.max_output_bytes < MIN_OUTPUT_BYTES {
            bail!(
                "defaults.max_output_bytes: must be at least {MIN_OUTPUT_BYTES} (1 KiB), got {}",
                d.max_output_bytes
            );
        }
        if d.max_output_bytes > AGENT_FRAME_BYTES {
            bail!(
                "defaults.max_output_bytes: must be at most {AGENT_FRAME_BYTES} (the agent \
                 protocol's frame limit, 128 MiB), got {}",
                d.max_output_bytes
            );
        }
        if d.max_read_bytes == 0 {
            bail!("defaults.max_read_bytes: must be at least 1");
        }
        if d.max_read_bytes > AGENT_READ_BYTES {
            bail!(
                "defaults.max_read_bytes: must be at most {AGENT_READ_BYTES} (what one agent \
                 frame carries, 128 MiB less 64 KiB), got {}",
                d.max_read_bytes
            );
        }
        if d.tmp_size_mb == 0 {
            bail!("defaults.tmp_size_mb: must be at least 1");
        }
        if d.disk_limit_mb == 0 {
            bail!("defaults.disk_limit_mb: must be at least 1");
        }
        if d.disk_limit_mb > d.max_disk_limit_mb {
            bail!(
                "defaults.disk_limit_mb: must be at most defaults.max_disk_limit_mb ({}), got {}",
                d.max_disk_limit_mb,
                d.disk_limit_mb
            );
        }
        if let Some(mb) = self.disk.scratch_size_mb {
            if mb > 0 && mb < sandkasten_native::MIN_SCRATCH_MB {
                bail!(
                    "disk.scratch_size_mb: must be 0 (no scratch filesystem) or at least {}, got {mb}",
                    sandkasten_native::MIN_SCRATCH_MB
                );
            }
        }
        if let Some(h) = &self.docker.host {
            if let Err(e) = sandkasten_docker::check_engine_address(h) {
                bail!("docker.host: {e}");
            }
        }
        if let Some(r) = &self.docker.runtime {
            let ok = !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                bail!("docker.runtime: {r:?} is not an OCI runtime name (like runsc)");
            }
        }
        if matches!(self.docker.sandbox_uid, 0 | 65534 | u32::MAX) {
            bail!(
                "docker.sandbox_uid: {} is root, nobody or -1; choose an id no host account \
                 has (default {})",
                self.docker.sandbox_uid,
                sandkasten_docker::DEFAULT_SANDBOX_ID
            );
        }
        let docker = self.runtime == RuntimeKind::Docker;
        if let (true, true, Some(q)) = (docker, self.workspace.enabled, self.workspace.quota_mb) {
            if q > 0 {
                bail!(
                    "workspace.quota_mb: the docker runtime has no workspace quotas (its \
                     volumes have no size limit); set 0 or leave it unset"
                );
            }
        }
        if let (false, true, Some(q)) = (docker, self.workspace.enabled, self.workspace.quota_mb) {
            if q > 0 && q < 128 {
                bail!("workspace.quota_mb: must be 0 (no quota) or at least 128, got {q}");
            }
            if q > 0 {
                if let Err(e) = sandkasten_native::workspace_quota_support() {
                    bail!(
                        "workspace.quota_mb: workspace quotas need btrfs and loop devices, but {e}; \
                         install btrfs-progs, or set workspace.quota_mb: 0 for workspaces without a size limit"
                    );
                }
            }
        }
        if let Some(v) = self.workspace.max_idle_days {
            if !(v > 0.0 && v <= 36_500.0) {
                bail!("workspace.max_idle_days: must be a number of days > 0, got {v}");
            }
        }
        if let Some(v) = self.workspace.max_total_gb {
            if !(v > 0.0 && v <= 1e9) {
                bail!("workspace.max_total_gb: must be a number of GB > 0, got {v}");
            }
        }
        self.network_config()?;
        self.network.dns_upstream()?;
        for (key, v) in [
            ("network.ipv4_subnet", &self.network.ipv4_subnet),
            ("network.ipv6_subnet", &self.network.ipv6_subnet),
        ] {
            if let Some(s) = v {
                s.parse::<sandkasten_runtime::IpNet>()
                    .map_err(|e| anyhow!("{key}: {e}"))?;
            }
        }
        if self.pool.enabled {
            let mut total = 0;
            for (image, n) in &self.pool.images {
                if image.is_empty() {
                    bail!("pool.images: an image name must not be empty");
                }
                if *n > 64 {
                    bail!("pool.images.{image}: at most 64 sandboxes per image, got {n}");
                }
                if !self.allowed_images.is_empty() && !self.allowed_images.contains(image) {
                    bail!("pool.images.{image}: not in allowed_images");
                }
                total += n;
            }
            if total > self.max_sessions {
                bail!(
                    "pool.images: {total} pooled sandboxes in all, more than max_sessions ({})",
                    self.max_sessions
                );
            }
            if self.pool.max_idle_seconds == 0 {
                bail!("pool.max_idle_seconds: must be at least 1");
            }
            if let Some(n) = self.pool.max_concurrent_fills {
                if !(1..=16).contains(&n) {
                    bail!("pool.max_concurrent_fills: must be 1 to 16, got {n}");
                }
            }
        }
        Ok(())
    }

    /// Fills of the pool at once: as configured, else half the CPUs (1–4).
    pub fn pool_fill_slots(&self) -> usize {
        self.pool.max_concurrent_fills.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            (cpus / 2).clamp(1, 4)
        })
    }

    /// The default workspace quota in bytes (None: no quota).
    pub fn workspace_quota_bytes(&self) -> Option<u64> {
        if self.runtime == RuntimeKind::Docker {
            // Volumes have no size limit (validated: no quota_mb > 0).
            return None;
        }
        let mb = match self.workspace.quota_mb {
            Some(mb) => mb,
            None => match sandkasten_native::workspace_quota_support() {
                Ok(()) => 10240,
                Err(e) => {
                    tracing::warn!(
                        "workspaces have no size limit: quotas need btrfs and loop devices, but {e} \
                         (install btrfs-progs to enable them)"
                    );
                    0
                }
            },
        };
        (mb > 0).then(|| mb * 1024 * 1024)
    }

    pub fn db_path(&self) -> PathBuf {
        self.db_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sandkasten.db"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_config_is_accepted() {
        let cfg = Config::parse(
            "listen: \"127.0.0.1:8080\"\napi_key: \"sk-sandbox-quickstart\"\ndefault_image: base\n\
             allowed_images: [base]\nsession_ttl_seconds: 1800\ndefaults:\n  cpu_limit: 1.0\n  mem_limit_mb: 512\n\
             \x20 pids_limit: 256\n  max_exec_timeout_ms: 120000\n  network_mode: none\n  readonly_rootfs: true\n\
             workspace:\n  enabled: true\n  persist_by_default: false\npool:\n  enabled: true\n  images:\n    base: 2\n",
        )
        .unwrap();
        assert_eq!(cfg.pool.images.get("base"), Some(&2));
        assert!(cfg.defaults.readonly_rootfs);
        cfg.validate().unwrap();
    }

    #[test]
    fn pool_settings_are_validated() {
        let cfg = Config::parse("pool:\n  enabled: true\n  images:\n    base: 65\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("pool.images.base"), "{err}");
        let cfg = Config::parse(
            "allowed_images: [base]\npool:\n  enabled: true\n  images:\n    python: 1\n",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("pool.images.python"), "{err}");
        let cfg = Config::parse("pool:\n  enabled: true\n  max_idle_seconds: 0\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("pool.max_idle_seconds"), "{err}");
        let err = Config::parse("pool:\n  size: 3\n").unwrap_err().to_string();
        assert!(err.contains("size"), "{err}");
        // Disabled: the images are not used, so not checked.
        let cfg = Config::parse("pool:\n  enabled: false\n  images:\n    base: 99\n").unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn docker_section_is_validated() {
        let cfg = Config::parse(
            "runtime: docker\ndocker:\n  host: unix:///run/docker.sock\n  runtime: runsc\n\
             defaults:\n  network_mode: full\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.docker.runtime.as_deref(), Some("runsc"));
        assert_eq!(
            cfg.docker.sandbox_uid,
            sandkasten_docker::DEFAULT_SANDBOX_ID
        );
        let own = Config::parse("docker:\n  sandbox_uid: 70000\n").unwrap();
        own.validate().unwrap();
        assert_eq!(own.docker.sandbox_uid, 70000);
        Config::parse("runtime: docker\ndocker:\n  host: tcp://10.0.0.1:2375\n")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(cfg.workspace_quota_bytes(), None);
        let err = Config::parse("docker:\n  bogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        for (yaml, key) in [
            (
                "runtime: docker\ndocker:\n  host: ssh://me@10.0.0.1\n",
                "docker.host",
            ),
            (
                "runtime: docker\ndocker:\n  runtime: \"a b\"\n",
                "docker.runtime",
            ),
            (
                "runtime: docker\nworkspace:\n  quota_mb: 1024\n",
                "workspace.quota_mb",
            ),
            ("docker:\n  sandbox_uid: 0\n", "docker.sandbox_uid"),
            ("docker:\n  sandbox_uid: 65534\n", "docker.sandbox_uid"),
            (
                "network:\n  allow_full: false\ndefaults:\n  network_mode: full\n",
                "defaults.network_mode",
            ),
            (
                "defaults:\n  network_mode: full\n  allow_out: [\"a.*.example.com\"]\n",
                "a.*.example.com",
            ),
            (
                "defaults:\n  network_mode: full\n  allow_out: [\"192.168.0.0/16\"]\n",
                "192.168.0.0/16",
            ),
            (
                "network:\n  deny_always: [\"10.0.0.1/8\"]\n",
                "network.deny_always",
            ),
            (
                "network:\n  ipv4_subnet: \"10.0.0.0/33\"\n",
                "network.ipv4_subnet",
            ),
        ] {
            let err = Config::parse(yaml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("defaults:\n  mem_limit: 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mem_limit"), "{err}");
        let err = Config::parse("bogus: 1\n").unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = Config::parse("defaults:\n  mem_limit_mb: -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mem_limit_mb"), "{err}");
        let cfg = Config::parse("listen: nope\n").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("listen"));
    }

    /// Validation error of `yaml` (which parses).
    fn invalid(yaml: &str) -> String {
        Config::parse(yaml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    /// Applies the overrides in `vars` to the defaults.
    fn with_env(vars: &[(&str, &str)]) -> Result<Config> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cfg = Config::default();
        cfg.apply_env(|name| vars.get(name).filter(|v| !v.is_empty()).cloned())?;
        Ok(cfg)
    }

    #[test]
    fn enums_are_parsed_once() {
        let cfg = Config::parse("runtime: docker\ndefaults:\n  network_mode: full\n").unwrap();
        assert_eq!(cfg.runtime, RuntimeKind::Docker);
        assert_eq!(cfg.defaults.network_mode, NetworkMode::Full);
        cfg.validate().unwrap();
        let cfg = Config::parse("runtime: native\ndefaults:\n  network_mode: none\n").unwrap();
        assert_eq!(cfg.runtime, RuntimeKind::Native);
        assert_eq!(cfg.defaults.network_mode, NetworkMode::None);
        assert_eq!(cfg.runtime.to_string(), "native");
    }

    #[test]
    fn unknown_enum_values_name_the_key_and_the_choices() {
        let err = Config::parse("runtime: podman\n").unwrap_err().to_string();
        assert!(err.starts_with("runtime: "), "{err}");
        assert!(
            err.contains("podman") && err.contains("`native` or `docker`"),
            "{err}"
        );
        let err = Config::parse("defaults:\n  network_mode: bogus\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("defaults.network_mode: "), "{err}");
        assert!(
            err.contains("bogus") && err.contains("`none` or `full`"),
            "{err}"
        );
        // Values are exact, as before: no case folding.
        let err = Config::parse("runtime: Docker\n").unwrap_err().to_string();
        assert!(err.contains("runtime"), "{err}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cfg = Config::default();
        assert_eq!(cfg.runtime, RuntimeKind::Native);
        assert_eq!(cfg.session_ttl_seconds, 1800);
        assert_eq!(cfg.max_sessions, 64);
        assert_eq!(cfg.max_body_mb, 64);
        let d = &cfg.defaults;
        assert_eq!(d.network_mode, NetworkMode::None);
        assert_eq!(d.max_exec_timeout_ms, 120_000);
        assert_eq!(d.exec_timeout_ms, None);
        assert_eq!(d.default_exec_timeout_ms(), 30_000);
        assert_eq!(d.max_output_bytes, 1_048_576);
        assert_eq!(d.max_read_bytes, 67_108_864);
        assert_eq!((d.disk_limit_mb, d.max_disk_limit_mb), (4096, 16384));
        assert_eq!(cfg.disk.scratch_size_mb, None);
        assert_eq!(cfg.disk.min_free_mb, 256);
        cfg.validate().unwrap();
        // An empty file and an empty section are the defaults too.
        for yaml in ["", "defaults: {}\n"] {
            let c = Config::parse(yaml).unwrap();
            assert_eq!(c.runtime, cfg.runtime);
            assert_eq!(c.defaults.exec_timeout_ms, None);
            assert_eq!(c.defaults.max_output_bytes, d.max_output_bytes);
            assert_eq!(c.defaults.max_read_bytes, d.max_read_bytes);
        }
        // Unset, the exec timeout follows a smaller max_exec_timeout_ms
        // (such configs keep starting).
        let cfg = Config::parse("defaults:\n  max_exec_timeout_ms: 1000\n").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.defaults.default_exec_timeout_ms(), 1000);
        // The mirrored protocol limits.
        assert_eq!(AGENT_FRAME_BYTES, 134_217_728);
        assert_eq!(AGENT_READ_BYTES, 134_152_192);
    }

    #[test]
    fn exec_and_read_limits_are_configurable() {
        let cfg = Config::parse(
            "defaults:\n  exec_timeout_ms: 5000\n  max_output_bytes: 4096\n  max_read_bytes: 1000\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.defaults.exec_timeout_ms, Some(5000));
        assert_eq!(cfg.defaults.default_exec_timeout_ms(), 5000);
        assert_eq!(cfg.defaults.max_output_bytes, 4096);
        assert_eq!(cfg.defaults.max_read_bytes, 1000);
        // The bounds themselves are accepted.
        Config::parse(
            "defaults:\n  exec_timeout_ms: 120000\n  max_output_bytes: 1024\n  max_read_bytes: 1\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        Config::parse(&format!(
            "defaults:\n  exec_timeout_ms: 1\n  max_output_bytes: {AGENT_FRAME_BYTES}\n  \
             max_read_bytes: {AGENT_READ_BYTES}\n"
        ))
        .unwrap()
        .validate()
        .unwrap();
        let err = Config::parse("defaults:\n  max_output_bytes: -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("defaults.max_output_bytes"), "{err}");
    }

    #[test]
    fn exec_and_read_limits_are_validated() {
        for (yaml, message) in [
            (
                "defaults:\n  exec_timeout_ms: 0\n".to_string(),
                "defaults.exec_timeout_ms: must be at least 1",
            ),
            (
                "defaults:\n  exec_timeout_ms: 120001\n".to_string(),
                "defaults.exec_timeout_ms: must be at most defaults.max_exec_timeout_ms (120000), got 120001",
            ),
            (
                "defaults:\n  max_exec_timeout_ms: 1000\n  exec_timeout_ms: 2000\n".to_string(),
                "defaults.exec_timeout_ms: must be at most defaults.max_exec_timeout_ms (1000), got 2000",
            ),
            (
                "defaults:\n  max_output_bytes: 1023\n".to_string(),
                "defaults.max_output_bytes: must be at least 1024 (1 KiB), got 1023",
            ),
            (
                format!("defaults:\n  max_output_bytes: {}\n", AGENT_FRAME_BYTES + 1),
                "defaults.max_output_bytes: must be at most 134217728 (the agent protocol's \
                 frame limit, 128 MiB), got 134217729",
            ),
            (
                "defaults:\n  max_read_bytes: 0\n".to_string(),
                "defaults.max_read_bytes: must be at least 1",
            ),
            (
                format!("defaults:\n  max_read_bytes: {}\n", AGENT_READ_BYTES + 1),
                "defaults.max_read_bytes: must be at most 134152192 (what one agent frame \
                 carries, 128 MiB less 64 KiB), got 134152193",
            ),
        ] {
            assert_eq!(invalid(&yaml), message, "{yaml}");
        }
    }

    #[test]
    fn disk_settings_are_validated() {
        let cfg = Config::parse(
            "defaults:\n  disk_limit_mb: 256\n  max_disk_limit_mb: 1024\n\
             disk:\n  scratch_size_mb: 2048\n  min_free_mb: 64\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.defaults.disk_limit_mb, 256);
        assert_eq!(cfg.disk.scratch_size_mb, Some(2048));
        assert_eq!(cfg.disk.min_free_mb, 64);
        Config::parse("disk:\n  scratch_size_mb: 0\n")
            .unwrap()
            .validate()
            .unwrap();
        for (yaml, message) in [
            (
                "defaults:\n  disk_limit_mb: 0\n",
                "defaults.disk_limit_mb: must be at least 1",
            ),
            (
                "defaults:\n  disk_limit_mb: 2048\n  max_disk_limit_mb: 1024\n",
                "defaults.disk_limit_mb: must be at most defaults.max_disk_limit_mb (1024), got 2048",
            ),
            (
                "disk:\n  scratch_size_mb: 100\n",
                "disk.scratch_size_mb: must be 0 (no scratch filesystem) or at least 256, got 100",
            ),
        ] {
            assert_eq!(invalid(yaml), message, "{yaml}");
        }
        let err = Config::parse("disk:\n  size: 1\n").unwrap_err().to_string();
        assert!(err.contains("size"), "{err}");
    }

    #[test]
    fn uid_ranges_are_bounded() {
        assert_eq!(Config::default().uid_ranges, 16_384);
        for ok in ["uid_ranges: 0\n", "uid_ranges: 32000\n"] {
            Config::parse(ok).unwrap().validate().unwrap();
        }
        assert_eq!(
            invalid("uid_ranges: 32001\n"),
            "uid_ranges: at most 32000 (the last range must end below 2^31), got 32001"
        );
    }

    #[test]
    fn env_overrides_parse_like_the_file() {
        let cfg = with_env(&[
            ("SANDKASTEN_LISTEN", "0.0.0.0:9000"),
            ("SANDKASTEN_API_KEY", "sk-from-env"),
            ("SANDKASTEN_DATA_DIR", "/srv/sk"),
            ("SANDKASTEN_RUNTIME", "docker"),
            ("SANDKASTEN_DEFAULT_IMAGE", "python"),
            ("SANDKASTEN_SESSION_TTL_SECONDS", "60"),
        ])
        .unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9000");
        assert_eq!(cfg.api_key.as_deref(), Some("sk-from-env"));
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/sk"));
        assert_eq!(cfg.runtime, RuntimeKind::Docker);
        assert_eq!(cfg.default_image, "python");
        assert_eq!(cfg.session_ttl_seconds, 60);
        cfg.validate().unwrap();
        assert_eq!(
            with_env(&[("SANDKASTEN_RUNTIME", "native")])
                .unwrap()
                .runtime,
            RuntimeKind::Native
        );
        // Empty: not set.
        assert_eq!(
            with_env(&[("SANDKASTEN_RUNTIME", "")]).unwrap().runtime,
            RuntimeKind::Native
        );
        let err = with_env(&[("SANDKASTEN_RUNTIME", "podman")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "SANDKASTEN_RUNTIME: runtime: unknown variant `podman`, expected `native` or `docker`"
        );
        let err = with_env(&[("SANDKASTEN_SESSION_TTL_SECONDS", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SANDKASTEN_SESSION_TTL_SECONDS"), "{err}");
    }
}
