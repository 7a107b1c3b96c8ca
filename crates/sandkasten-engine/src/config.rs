//! The engine's own configuration (the daemon config assembles it).

use sandkasten_runtime::Limits;

/// Settings of session management.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub default_image: String,
    /// Empty: any image the runtime knows.
    pub allowed_images: Vec<String>,
    pub session_ttl_seconds: u64,
    /// How long a paused session is kept before it is destroyed (its TTL
    /// does not run while paused).
    pub paused_ttl_seconds: u64,
    /// How long a hibernated session is kept before it is destroyed.
    pub hibernated_ttl_seconds: u64,
    /// What a session's timeout does when its request names nothing.
    pub on_timeout: crate::OnTimeout,
    /// Idle limit of a session whose request names none (None: none).
    pub idle_timeout_seconds: Option<u64>,
    /// Upper bound of a fork's `count`.
    pub max_fork_count: u64,
    pub max_sessions: usize,
    /// Limits of every sandbox; `limits.disk_mb` is the disk limit of a
    /// session whose request names none.
    pub limits: Limits,
    /// Upper bound of a create request's `disk_limit_mb`.
    pub max_disk_limit_mb: u64,
    /// Network policies: the operator's cap and the default policy.
    pub network: crate::NetworkConfig,
    pub readonly_rootfs: bool,
    /// Default exec timeout when a request names none.
    pub default_exec_timeout_ms: u64,
    /// Upper bound of any exec timeout.
    pub max_exec_timeout_ms: u64,
    /// Output cap of one exec (bytes before terminal-noise removal).
    pub max_output_bytes: u64,
    /// Cap of one file read.
    pub max_read_bytes: u64,
    pub workspace_enabled: bool,
    pub workspace_persist_by_default: bool,
    /// Size limit of a workspace created without one of its own (None:
    /// workspaces without a quota, plain directories).
    pub workspace_default_quota_bytes: Option<u64>,
    /// Delete workspaces unused for longer than this.
    pub workspace_max_idle: Option<std::time::Duration>,
    /// Delete least recently used workspaces while all together exceed this.
    pub workspace_max_total_bytes: Option<u64>,
    /// The pre-warmed pool (no images: no pool).
    pub pool: crate::PoolConfig,
}

/// Values for the engine's own tests only: the daemon's defaults live in one
/// place, the binary's config (`crates/sandkasten/src/config.rs`), which sets
/// every field.
#[cfg(test)]
impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            default_image: "base".into(),
            allowed_images: Vec::new(),
            session_ttl_seconds: 1800,
            paused_ttl_seconds: 86_400,
            hibernated_ttl_seconds: 604_800,
            on_timeout: crate::OnTimeout::Destroy,
            idle_timeout_seconds: None,
            max_fork_count: 16,
            max_sessions: 64,
            limits: Limits {
                memory_mb: 512,
                cpu: 1.0,
                pids: 256,
                disk_mb: Some(4096),
            },
            max_disk_limit_mb: 16384,
            network: crate::NetworkConfig::default(),
            readonly_rootfs: false,
            default_exec_timeout_ms: 30_000,
            max_exec_timeout_ms: 120_000,
            max_output_bytes: 1024 * 1024,
            max_read_bytes: 64 * 1024 * 1024,
            workspace_enabled: true,
            workspace_persist_by_default: false,
            workspace_default_quota_bytes: None,
            workspace_max_idle: None,
            workspace_max_total_bytes: None,
            pool: crate::PoolConfig::default(),
        }
    }
}
