//! `sandkasten`: the daemon and its command line. Wiring only: parse the
//! CLI and config, build the runtime, store, engine and API, and run.

mod bench;
mod config;
mod imagebuild;
mod mcp_bridge;
mod terminal;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use config::{Config, RuntimeKind};
use sandkasten_engine::{Engine, EngineConfig};
use sandkasten_native::{NativeConfig, NativeRuntime};
use sandkasten_runtime::{Limits, Runtime};
use sandkasten_store::Store;
use sha2::Digest;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The static in-sandbox agent, built by build.rs.
static AGENT_BINARY: &[u8] = include_bytes!(env!("SANDKASTEN_AGENT_BIN"));

#[derive(Parser)]
#[command(
    name = "sandkasten",
    version,
    about = "Self-hosted sandbox runtime for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve {
        /// YAML config file; without it, embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List sessions of the running daemon.
    Ps {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A stdio MCP server for clients that start local programs: a bridge
    /// to the running daemon's /mcp (its listen address and API key from
    /// the config, like `ps`).
    Mcp {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Destroy a session of the running daemon.
    Rm {
        id: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a signed URL that opens TCP PORT inside session ID without
    /// the API key until it expires (the preview host, then the daemon's
    /// own address).
    Url {
        id: String,
        port: u16,
        /// Lifetime in seconds (1 to 604800); default one hour.
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a program in session ID as a process and pass its exit code
    /// through: `sandkasten exec ID -- python3 -c 'print(1)'`. Its stdout
    /// and stderr stay apart.
    Exec {
        id: String,
        /// Run as root of the sandbox instead of the sandbox user.
        #[arg(long)]
        root: bool,
        /// Working directory (default /workspace).
        #[arg(long)]
        cwd: Option<String>,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// An interactive terminal in session ID (a login shell, or --cmd), in
    /// raw mode, following this terminal's size.
    Shell {
        id: String,
        /// A command line instead of the login shell.
        #[arg(long)]
        cmd: Option<String>,
        #[arg(long)]
        root: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Measure latency (p50/p95) over HTTP; compares with Docker when an
    /// engine answers. Starts its own daemon unless --url is given.
    Bench {
        /// Samples per operation (exec uses five times as many).
        #[arg(long, default_value_t = 30)]
        iterations: usize,
        /// Where to write the JSON report.
        #[arg(long, default_value = "bench.json")]
        json: PathBuf,
        /// Benchmark this running daemon instead of starting one.
        #[arg(long)]
        url: Option<String>,
        /// API key for --url.
        #[arg(long, env = "SANDKASTEN_API_KEY")]
        key: Option<String>,
        /// The pause before each create of the time-to-first-command
        /// series, as a user's pace (a quiet machine ends RCU grace periods
        /// later than a busy one: 0 measures back-to-back creates).
        #[arg(long, default_value_t = 300)]
        gap_ms: u64,
        /// Scale mode: measure the time to first command with this many
        /// idle sessions alive (and with none), and their host memory.
        #[arg(long)]
        sessions: Option<usize>,
        /// Scale mode: exec throughput and p99 of this many concurrent
        /// clients, each with a session of its own.
        #[arg(long)]
        clients: Option<usize>,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// List images.
    Ls,
    /// Import a rootfs tarball or `docker save` archive as NAME.
    Import { name: String, file: PathBuf },
    /// Remove an image.
    Rm { name: String },
    /// Build sandbox-runtime:NAME (base, python, node) from the recipes in
    /// images/ with debootstrap, cached, into the native store or Docker.
    Build(imagebuild::BuildArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("sandkasten {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Bench {
            iterations,
            json,
            url,
            key,
            gap_ms,
            sessions,
            clients,
        } => bench::run(bench::BenchOptions {
            iterations,
            json,
            url,
            key,
            gap: std::time::Duration::from_millis(gap_ms),
            sessions,
            clients,
        }),
        Command::Serve { config } => runtime().and_then(|rt| rt.block_on(serve(config))),
        Command::Ps { config } => runtime().and_then(|rt| rt.block_on(ps(config))),
        Command::Mcp { config } => runtime().and_then(|rt| {
            let (url, key, http) = client(config)?;
            rt.block_on(mcp_bridge::run(url, key, http))
        }),
        Command::Rm { id, config } => runtime().and_then(|rt| rt.block_on(rm(config, id))),
        Command::Url {
            id,
            port,
            ttl,
            config,
        } => runtime().and_then(|rt| rt.block_on(url(config, id, port, ttl))),
        Command::Exec {
            id,
            root,
            cwd,
            argv,
            config,
        } => {
            return exit_with(runtime().and_then(|rt| {
                rt.block_on(async {
                    let (url, key, _) = client(config)?;
                    terminal::exec(&url, &key, &id, argv, root, cwd).await
                })
            }))
        }
        Command::Shell {
            id,
            cmd,
            root,
            config,
        } => {
            return exit_with(runtime().and_then(|rt| {
                rt.block_on(async {
                    let (url, key, _) = client(config)?;
                    terminal::shell(&url, &key, &id, cmd, root).await
                })
            }))
        }
        Command::Image { command, config } => {
            runtime().and_then(|rt| rt.block_on(image(config, command)))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandkasten: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The exit code of a command that passes one through (a failure of our
/// own is 1, like every other command's, with its message).
fn exit_with(r: Result<u8>) -> std::process::ExitCode {
    match r {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("sandkasten: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    fixed_malloc_thresholds();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Gives large buffers (request bodies, file contents) their own mappings,
/// returned to the system when freed, and trims the heap's top past 4 MiB.
/// glibc's default raises its mmap threshold to the largest buffer freed
/// (up to 32 MiB), after which such buffers come from its arenas and stay
/// resident: the daemon kept 50-200 MB after a burst of uploads. Before
/// any thread exists (mallopt is not thread-safe against allocation).
fn fixed_malloc_thresholds() {
    #[cfg(target_env = "gnu")]
    // SAFETY: called before the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // rmcp logs what an MCP client sends whole at INFO (an initialize's
    // parameters, every notification): megabytes of log per request. The
    // daemon's MCP handler logs bounded fields instead; a RUST_LOG that
    // names rmcp still decides.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("rmcp")) {
        filter = filter.add_directive("rmcp=warn".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The configured key, or the one generated at first start (0600 file).
fn api_key(cfg: &Config, create: bool) -> Result<String> {
    if let Some(k) = &cfg.api_key {
        return Ok(k.clone());
    }
    let path = cfg.data_dir.join("api_key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_string());
    }
    if !create {
        bail!(
            "no api_key configured and {} does not exist; start the daemon first",
            path.display()
        );
    }
    let bytes: [u8; 24] = rand::random();
    let key = format!(
        "sk-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{key}")?;
    eprintln!(
        "sandkasten: generated an API key in {} (mode 0600)",
        path.display()
    );
    Ok(key)
}

/// The key of signed port URLs: 32 random bytes in
/// `<data_dir>/port_url_secret` (mode 0600), made at first start and kept,
/// so URLs signed before a restart still open.
fn port_url_secret(data_dir: &Path) -> Result<Vec<u8>> {
    let path = data_dir.join("port_url_secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 32 => return Ok(secret),
        Ok(_) => bail!(
            "{} is shorter than 32 bytes; remove it to make a new one (signed URLs then stop working)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret: [u8; 32] = rand::random();
    let tmp = data_dir.join(format!(".port_url_secret-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&secret)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    Ok(secret.to_vec())
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Writes the embedded agent under the data dir (once per version).
fn install_agent(data_dir: &Path) -> Result<PathBuf> {
    let digest = sha2::Sha256::digest(AGENT_BINARY);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = data_dir.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("sandkasten-agent-{hex}"));
    if !path.exists() {
        let tmp = dir.join(format!(".agent-{}", std::process::id()));
        std::fs::write(&tmp, AGENT_BINARY).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// The engine's config from the daemon's: every field set here (no
/// `EngineConfig::default()`), so the defaults are config.rs's alone.
fn engine_config(cfg: &Config) -> EngineConfig {
    EngineConfig {
        default_image: cfg.default_image.clone(),
        allowed_images: cfg.allowed_images.clone(),
        session_ttl_seconds: cfg.session_ttl_seconds,
        paused_ttl_seconds: cfg.paused_ttl_seconds,
        hibernated_ttl_seconds: cfg.hibernated_ttl_seconds,
        max_fork_count: cfg.max_fork_count,
        // Checked by Config::validate at start.
        on_timeout: sandkasten_engine::OnTimeout::parse(&cfg.defaults.on_timeout)
            .unwrap_or_default(),
        idle_timeout_seconds: (cfg.defaults.idle_timeout_seconds > 0)
            .then_some(cfg.defaults.idle_timeout_seconds),
        max_sessions: cfg.max_sessions,
        limits: Limits {
            memory_mb: cfg.defaults.mem_limit_mb,
            cpu: cfg.defaults.cpu_limit,
            pids: cfg.defaults.pids_limit,
            disk_mb: Some(cfg.defaults.disk_limit_mb),
        },
        max_disk_limit_mb: cfg.defaults.max_disk_limit_mb,
        // Checked by Config::validate at start.
        network: cfg
            .network_config()
            .expect("network settings were validated at start"),
        readonly_rootfs: cfg.defaults.readonly_rootfs,
        default_exec_timeout_ms: cfg.defaults.default_exec_timeout_ms(),
        max_exec_timeout_ms: cfg.defaults.max_exec_timeout_ms,
        max_output_bytes: cfg.defaults.max_output_bytes,
        max_read_bytes: cfg.defaults.max_read_bytes,
        workspace_enabled: cfg.workspace.enabled,
        workspace_persist_by_default: cfg.workspace.persist_by_default,
        workspace_default_quota_bytes: cfg.workspace_quota_bytes(),
        workspace_max_idle: cfg
            .workspace
            .max_idle_days
            .map(|d| std::time::Duration::from_secs_f64(d * 86_400.0)),
        workspace_max_total_bytes: cfg.workspace.max_total_gb.map(|g| (g * 1e9) as u64),
        pool: sandkasten_engine::PoolConfig {
            images: if cfg.pool.enabled {
                cfg.pool.images.clone()
            } else {
                Default::default()
            },
            max_idle: std::time::Duration::from_secs(cfg.pool.max_idle_seconds),
            max_concurrent_fills: cfg.pool_fill_slots(),
        },
    }
}

/// A configured subnet (`key` names it in the error), if set.
fn subnet(value: &Option<String>, key: &str) -> Result<Option<sandkasten_runtime::IpNet>> {
    value
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| anyhow::anyhow!("{key}: {e}"))
}

/// The sandbox network's settings (both runtimes), where `serve` builds
/// it and the operator allows `mode: full`.
fn net_config(cfg: &Config, serve: bool) -> Result<Option<sandkasten_native::NetConfig>> {
    if !(serve && cfg.network_config()?.allow_full) {
        return Ok(None);
    }
    Ok(Some(sandkasten_native::NetConfig {
        ipv4_subnet: subnet(&cfg.network.ipv4_subnet, "network.ipv4_subnet")?,
        ipv6_subnet: subnet(&cfg.network.ipv6_subnet, "network.ipv6_subnet")?,
        ipv6: cfg.network.ipv6,
        deny_always: cfg.deny_always()?,
        dns_upstream: cfg.network.dns_upstream()?,
    }))
}

/// The native runtime; `serve` also builds the sandbox network where the
/// operator allows `mode: full` (without it no sandbox can have a link, so
/// the host's forwarding, nftables and Docker's chain are left alone; the
/// image commands must not touch a running daemon's rules either).
fn native_runtime(cfg: &Config, serve: bool) -> Result<NativeRuntime> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let agent = install_agent(&cfg.data_dir)?;
    Ok(NativeRuntime::new(NativeConfig {
        data_dir: cfg.data_dir.clone(),
        agent_binary: agent,
        tmp_size_mb: cfg.defaults.tmp_size_mb,
        scratch_size_mb: cfg.disk.scratch_size_mb,
        min_free_mb: cfg.disk.min_free_mb,
        favordynmods: serve && cfg.cgroup_favordynmods,
        pty_max_for_sessions: (serve && cfg.raise_pty_max).then_some(cfg.max_sessions as u64),
        pid_max_for_sessions: (serve && cfg.raise_pid_max)
            .then_some((cfg.max_sessions as u64, cfg.defaults.pids_limit)),
        uid_ranges: cfg.uid_ranges,
        network: net_config(cfg, serve)?,
    })?)
}

/// The docker runtime on the configured engine; `serve` also builds the
/// sandbox network (native's datapath: the nftables table, the DNS
/// guard, the routed veths) where the operator allows `mode: full` and
/// the engine can have it (a local engine with runc whose processes the
/// daemon sees).
pub(crate) async fn docker_runtime(
    cfg: &Config,
    serve: bool,
) -> Result<sandkasten_docker::DockerRuntime> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let agent = install_agent(&cfg.data_dir)?;
    Ok(
        sandkasten_docker::DockerRuntime::new(sandkasten_docker::DockerConfig {
            data_dir: cfg.data_dir.clone(),
            agent_binary: agent,
            host: cfg.docker.host.clone(),
            oci_runtime: cfg.docker.runtime.clone(),
            tmp_size_mb: cfg.defaults.tmp_size_mb,
            min_free_mb: cfg.disk.min_free_mb,
            network: net_config(cfg, serve)?,
            sandbox_user: sandkasten_docker::SandboxUser::new(cfg.docker.sandbox_uid),
        })
        .await?,
    )
}

async fn serve(config: Option<PathBuf>) -> Result<()> {
    init_logging();
    let cfg = Config::load(config.as_deref())?;
    let mut native = None;
    let mut docker = None;
    let runtime: Arc<dyn Runtime> = match cfg.runtime {
        RuntimeKind::Docker => {
            let rt = Arc::new(docker_runtime(&cfg, true).await?);
            docker = Some(rt.clone());
            rt
        }
        RuntimeKind::Native => {
            let rt = Arc::new(native_runtime(&cfg, true)?);
            native = Some(rt.clone());
            rt
        }
    };
    if let Some(why) = runtime.network_unsupported() {
        if cfg.defaults.network_mode == config::NetworkMode::Full {
            anyhow::bail!(
                "defaults.network_mode: full, but this runtime cannot give sandboxes a network: {why}"
            );
        }
    }
    let key = api_key(&cfg, true)?;
    let store = Arc::new(Store::open(&cfg.db_path())?);
    let shutdown = CancellationToken::new();
    let engine = Engine::start(engine_config(&cfg), runtime, store, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let router = sandkasten_api::router(
        engine.clone(),
        sandkasten_api::ApiConfig {
            api_key: key,
            max_body_bytes: (cfg.max_body_mb * 1024 * 1024) as usize,
            // At least one body of max_body_mb: the API sees to that.
            body_memory_bytes: cfg.body_memory_mb.saturating_mul(1024 * 1024),
            preview_domain: cfg.network.preview_domain(addr.port()),
            port_url_secret: port_url_secret(&cfg.data_dir)?,
            shutdown: shutdown.clone(),
        },
    );
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, runtime = %cfg.runtime, data_dir = %cfg.data_dir.display(), "sandkasten ready");

    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down; running sessions stay up for the next start");
        signal_token.cancel();
    });
    sandkasten_api::serve(listener, router, shutdown).await?;
    // In-flight requests are done or past the shutdown grace: the engine
    // gives the lifecycle steps they began a grace to end, then destroys
    // the idle pool (sessions stay).
    engine.shutdown().await;
    if let Some(rt) = native {
        match rt.release_network().await {
            Ok(true) => {}
            Ok(false) => tracing::info!("sandboxes with network keep running: their rules stay"),
            Err(e) => tracing::warn!("removing the sandbox network: {e}"),
        }
    }
    if let Some(rt) = docker {
        match rt.release_network().await {
            Ok(true) => {}
            Ok(false) => tracing::info!("sandboxes with network keep running: their rules stay"),
            Err(e) => tracing::warn!("removing the sandbox network: {e}"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Base URL and key of the local daemon for the client commands.
fn client(config: Option<PathBuf>) -> Result<(String, String, reqwest::Client)> {
    let cfg = Config::load(config.as_deref())?;
    let key = api_key(&cfg, false)?;
    Ok((
        format!("http://{}", cfg.listen),
        key,
        reqwest::Client::new(),
    ))
}

async fn check(resp: reqwest::Response) -> Result<serde_json::Value> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("request failed")
        );
    }
    Ok(body)
}

async fn ps(config: Option<PathBuf>) -> Result<()> {
    let (url, key, http) = client(config)?;
    let body = check(
        http.get(format!("{url}/v1/sessions"))
            .bearer_auth(&key)
            .send()
            .await?,
    )
    .await?;
    println!(
        "{:<34} {:<10} {:<10} {:<22} {:<14} WORKSPACE",
        "ID", "IMAGE", "STATUS", "EXPIRES", "NETWORK"
    );
    for s in body.as_array().into_iter().flatten() {
        let f = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        println!(
            "{:<34} {:<10} {:<10} {:<22} {:<14} {}",
            f("id"),
            f("image"),
            f("status"),
            f("expires_at"),
            network_column(s.get("network")),
            f("workspace_id")
        );
    }
    Ok(())
}

/// `ps`'s NETWORK column: the mode, and for `full` whether lists narrow it
/// (`full`, `full+allow`, `full+deny`, `full+allow+deny`).
fn network_column(n: Option<&serde_json::Value>) -> String {
    let Some(n) = n else {
        return "-".into();
    };
    let mut out = n
        .get("mode")
        .and_then(|m| m.as_str())
        .unwrap_or("-")
        .to_string();
    for list in ["allow", "deny"] {
        let key = format!("{list}_out");
        if n.get(&key)
            .and_then(|v| v.as_array())
            .is_some_and(|a| !a.is_empty())
        {
            out.push('+');
            out.push_str(list);
        }
    }
    out
}

async fn rm(config: Option<PathBuf>, id: String) -> Result<()> {
    let (url, key, http) = client(config)?;
    check(
        http.delete(format!("{url}/v1/sessions/{id}"))
            .bearer_auth(&key)
            .send()
            .await?,
    )
    .await?;
    println!("{id}");
    Ok(())
}

async fn url(config: Option<PathBuf>, id: String, port: u16, ttl: Option<u64>) -> Result<()> {
    let (url, key, http) = client(config)?;
    let mut body = serde_json::Map::new();
    if let Some(t) = ttl {
        body.insert("ttl_seconds".into(), t.into());
    }
    let v = check(
        http.post(format!("{url}/v1/sessions/{id}/ports/{port}/url"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    let f = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
    println!("{}", f("url"));
    println!("{url}{}", f("path"));
    println!("expires {}", f("expires_at"));
    Ok(())
}

async fn image(config: Option<PathBuf>, cmd: ImageCommand) -> Result<()> {
    let cfg = Config::load(config.as_deref())?;
    // The configured runtime's images: the native store, or the engine's.
    let rt: Arc<dyn Runtime> = match cfg.runtime {
        RuntimeKind::Docker => Arc::new(docker_runtime(&cfg, false).await?),
        RuntimeKind::Native => Arc::new(native_runtime(&cfg, false)?),
    };
    match cmd {
        ImageCommand::Ls => {
            println!("{:<24} {:<20} SIZE", "NAME", "DIGEST");
            for i in rt.list_images().await? {
                println!("{:<24} {:<20} {}", i.name, i.digest, i.size_bytes);
            }
            // Snapshots of whole sandboxes start sessions like images.
            let store = Store::open(&cfg.db_path())?;
            for s in store.list_sandbox_snapshots()? {
                println!("{:<24} {:<20} -", s.id, format!("snapshot of {}", s.image));
            }
        }
        ImageCommand::Import { name, file } => {
            let info = rt.import_image(&name, file).await?;
            println!("{} {}", info.name, info.digest);
        }
        ImageCommand::Rm { name } if sandkasten_engine::is_sandbox_snapshot(&name) => {
            bail!("{name} is a sandbox snapshot: delete it with DELETE /v1/snapshots/{name}");
        }
        ImageCommand::Rm { name } => {
            // Refused while a live session uses it (the store is shared
            // with a running daemon; SQLite's WAL allows this reader).
            let store = Store::open(&cfg.db_path())?;
            let live = store.list_live_sessions()?;
            if let Some(s) = live.iter().find(|s| s.image == name) {
                bail!("image {name} is used by session {}; destroy it first", s.id);
            }
            if store.list_pool_entries()?.iter().any(|e| e.image == name) {
                bail!(
                    "image {name} has pre-warmed sandboxes in the daemon's pool; \
                     remove it from pool.images and restart the daemon first"
                );
            }
            rt.remove_image(&name).await?;
            println!("{name}");
        }
        ImageCommand::Build(args) => imagebuild::run(args, &cfg, rt).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::network_column;
    use serde_json::json;

    #[test]
    fn ps_shows_the_network_mode_and_whether_lists_narrow_it() {
        let col = |v: serde_json::Value| network_column(Some(&v));
        assert_eq!(
            col(json!({"mode": "none", "allow_out": [], "deny_out": []})),
            "none"
        );
        assert_eq!(
            col(json!({"mode": "full", "allow_out": [], "deny_out": []})),
            "full"
        );
        assert_eq!(
            col(json!({"mode": "full", "allow_out": ["pypi.org"], "deny_out": ["203.0.113.9"]})),
            "full+allow+deny"
        );
        assert_eq!(network_column(None), "-", "a daemon without policies");
    }
}
