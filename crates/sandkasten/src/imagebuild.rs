//! `sandkasten image build`: builds the seed's images
//! (`sandbox-runtime:base|python|node`) from the recipes in `images/` out of
//! Debian packages (debootstrap and apt; no container registry), caches the
//! resulting rootfs tarball, and imports it like `image import` into the
//! native image store or the Docker engine (through the runtime's
//! `import_image`).
//!
//! ```text
//! <cache_dir>/                 default <data_dir>/build
//!   <recipe>-<hash>/           one version of a recipe, mode 0700; the hash
//!                              covers the recipes of its chain (suite
//!                              included), the architecture, BUILDER_VERSION
//!                              and the scripts run in the image
//!     lock                     flock held while building or pruning it
//!     recipe                   the recipes it was built from
//!     build.log                debootstrap's and apt's output
//!     rootfs/                  the root being built (deleted once packed)
//!     rootfs.tar               the result; present only when complete
//! ```
//!
//! A recipe either names a Debian `suite` (debootstrap, minbase variant) or
//! starts `from` another recipe (its cached tarball is unpacked), then
//! installs its `packages` with apt and runs its `run` lines in a chroot.
//! The builder then makes every image fit the runtimes: the sandbox user
//! (uid 1000, home `/home/sandbox`), `/workspace`, a sandbox `/etc` (hosts,
//! hostname, no resolver), `/etc/sandkasten-image`, and no documentation,
//! translations or apt caches.
//!
//! Every command that runs in the root being built runs in a private mount
//! namespace of its own (`unshare(CLONE_NEWNS)` and `MS_PRIVATE` before
//! exec): the `/proc` and `/sys` that debootstrap mounts in the target and
//! the `/proc` and `/dev` the chroot gets exist only there and vanish with
//! its last process, so the host never holds a mount below the build
//! directory, not even when a build is killed; deleting a root still
//! refuses when a mount lies below it (`remove_tree`). The build's lock is
//! inherited by its processes and debootstrap dies with the builder
//! (`PR_SET_PDEATHSIG`), so a killed build's leftovers finish before the
//! next build of that recipe starts.

use crate::config::Config;
use anyhow::{anyhow, bail, Context, Result};
use sandkasten_native::remove_tree;
use sandkasten_runtime::Runtime;
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

/// Bumped whenever the build steps change what an image contains, so that
/// tarballs cached by older steps are rebuilt (the scripts run in the image
/// are hashed into the key anyway; this covers the steps around them).
const BUILDER_VERSION: &str = "1";

/// The recipes of the repository's `images/`, embedded so that the binary
/// builds them anywhere.
const RECIPES: &[(&str, &str)] = &[
    ("base", include_str!("../../../images/base.recipe")),
    ("python", include_str!("../../../images/python.recipe")),
    ("node", include_str!("../../../images/node.recipe")),
];

const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a built image goes (imported as `image import` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The native runtime's image store.
    Native,
    /// The Docker engine of the `docker:` config.
    Docker,
}

/// `sandkasten image build`'s arguments.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Recipe to build: base, python or node (images/NAME.recipe).
    pub name: String,
    /// Where the image goes [default: the configured runtime, native
    /// unless the config says runtime: docker].
    #[arg(long, value_enum)]
    pub runtime: Option<Target>,
    /// Name of the image to create [default: sandbox-runtime:NAME].
    #[arg(long)]
    pub tag: Option<String>,
    /// Rebuild the image, and those it starts from, even when cached.
    #[arg(long)]
    pub no_cache: bool,
    /// Build cache [default: <data_dir>/build].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Debian mirror for debootstrap and apt [default: the host's apt
    /// mirror, else deb.debian.org].
    #[arg(long)]
    pub mirror: Option<String>,
}

/// Builds (or takes from the cache) the image of `args.name` and imports
/// it into the chosen runtime (`configured` when that is the one). Prints
/// stage lines with the elapsed time on stderr and `NAME DIGEST` on stdout.
pub async fn run(args: BuildArgs, cfg: &Config, configured: Arc<dyn Runtime>) -> Result<()> {
    let progress = Progress(Instant::now());
    let chain = chain(&args.name)?;
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("sandbox-runtime:{}", args.name));
    let configured_docker = cfg.runtime == crate::config::RuntimeKind::Docker;
    let target = args.runtime.unwrap_or(if configured_docker {
        Target::Docker
    } else {
        Target::Native
    });
    // The runtime first, so that a missing engine fails before the build.
    let rt: Arc<dyn Runtime> = match target {
        Target::Docker if !configured_docker => Arc::new(crate::docker_runtime(cfg, false).await?),
        Target::Native if configured_docker => Arc::new(crate::native_runtime(cfg, false)?),
        _ => configured,
    };
    let (host_main, host_security) = host_mirrors();
    let ctx = Ctx {
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("build")),
        no_cache: args.no_cache,
        mirror: args
            .mirror
            .clone()
            .or(host_main)
            .unwrap_or(DEFAULT_MIRROR.into()),
        security_mirror: host_security.unwrap_or(DEFAULT_SECURITY_MIRROR.into()),
        progress,
    };
    progress.say(&format!(
        "building {tag} from images/{}.recipe (recipe hash {}, cache {})",
        args.name,
        recipe_hash(&chain),
        ctx.cache_dir.display()
    ));
    let tar = tokio::task::spawn_blocking(move || {
        ctx.prepare()?;
        ctx.build(&chain)
    })
    .await
    .context("the build task failed")??;
    progress.say(&format!(
        "importing… into {} as {tag}",
        match target {
            Target::Native => "the native image store",
            Target::Docker => "the Docker engine",
        }
    ));
    let info = rt.import_image(&tag, tar).await?;
    progress.say(&format!(
        "done: {} {} ({})",
        info.name,
        info.digest,
        megabytes(info.size_bytes)
    ));
    println!("{} {}", info.name, info.digest);
    Ok(())
}

/// Stage lines on stderr, each with the time since the command started.
#[derive(Debug, Clone, Copy)]
struct Progress(Instant);

impl Progress {
    fn say(&self, msg: &str) {
        eprintln!("[{:>6.1}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

// ---------------------------------------------------------------------------
// Recipes
// ---------------------------------------------------------------------------

/// One parsed `images/NAME.recipe`.
#[derive(Debug, Clone, PartialEq)]
struct Recipe {
    name: String,
    /// The file's text: what the cache key covers.
    text: String,
    /// Debian suite (root recipes only).
    suite: Option<String>,
    /// The recipe this one starts from.
    from: Option<String>,
    packages: Vec<String>,
    /// Shell lines run as root in the image after the packages.
    run: Vec<String>,
}

/// Debian policy: lowercase letters, digits, `+ - .`, at least two
/// characters, starting with a letter or digit. Names are put into a shell
/// command, so nothing else passes.
fn valid_package(p: &str) -> bool {
    p.len() >= 2
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse(name: &str, text: &str) -> Result<Recipe> {
    let mut r = Recipe {
        name: name.to_string(),
        text: text.to_string(),
        suite: None,
        from: None,
        packages: Vec::new(),
        run: Vec::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("images/{name}.recipe line {}", i + 1);
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        match key {
            "suite" | "from" => {
                if !valid_word(value) {
                    bail!("{at}: `{key}` needs one name of [a-z0-9-], got {value:?}");
                }
                let slot = if key == "suite" {
                    &mut r.suite
                } else {
                    &mut r.from
                };
                if slot.replace(value.to_string()).is_some() {
                    bail!("{at}: `{key}` given twice");
                }
            }
            "packages" => {
                for p in value.split_whitespace() {
                    if !valid_package(p) {
                        bail!("{at}: {p:?} is not a Debian package name");
                    }
                    r.packages.push(p.to_string());
                }
            }
            "run" if !value.is_empty() => r.run.push(value.to_string()),
            "run" => bail!("{at}: `run` needs a command"),
            other => bail!("{at}: unknown directive {other:?} (suite, from, packages or run)"),
        }
    }
    match (&r.suite, &r.from) {
        (None, None) => bail!(
            "images/{name}.recipe: needs `suite` (a Debian release to bootstrap) or `from` \
             (a recipe to start from)"
        ),
        (Some(_), Some(_)) => bail!(
            "images/{name}.recipe: has both `suite` and `from`; the suite comes from the \
             recipe it starts from"
        ),
        _ => Ok(r),
    }
}

fn recipe_text(name: &str) -> Result<&'static str> {
    RECIPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let known: Vec<&str> = RECIPES.iter().map(|(n, _)| *n).collect();
            anyhow!("no recipe {name:?}; the recipes are {}", known.join(", "))
        })
}

/// `name` and the recipes it starts from, root first.
fn chain(name: &str) -> Result<Vec<Recipe>> {
    let mut out: Vec<Recipe> = Vec::new();
    let mut next = Some(name.to_string());
    while let Some(n) = next {
        if out.iter().any(|r| r.name == n) {
            bail!("recipe {n} starts from itself");
        }
        let r = parse(&n, recipe_text(&n)?)?;
        next = r.from.clone();
        out.push(r);
    }
    out.reverse();
    Ok(out)
}

/// The cache key of the last recipe of `chain`: 12 hex digits over the
/// builder version and scripts, the architecture and every recipe of the
/// chain (the suite is in the root recipe's text).
fn recipe_hash(chain: &[Recipe]) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "sandkasten image build {BUILDER_VERSION} {}\n",
        std::env::consts::ARCH
    ));
    for script in [DPKG_SLIM, INSTALL_SCRIPT, FINISH_SCRIPT] {
        h.update(script.as_bytes());
    }
    for r in chain {
        h.update(format!("recipe {} {}\n", r.name, r.text.len()));
        h.update(r.text.as_bytes());
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Mirrors
// ---------------------------------------------------------------------------

/// The host's Debian mirror and security mirror, from its apt sources.
fn host_mirrors() -> (Option<String>, Option<String>) {
    let mut texts = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            texts.push(t);
        }
    }
    mirrors_from(&texts)
}

/// The first http(s) URI ending in `/debian`, and the first ending in
/// `/debian-security`, of one-line (`deb [opts] URI suite comp`) and
/// deb822 (`URIs: ...`) sources.
fn mirrors_from(texts: &[String]) -> (Option<String>, Option<String>) {
    let mut uris: Vec<String> = Vec::new();
    for text in texts {
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("URIs:") {
                uris.extend(rest.split_whitespace().map(str::to_string));
            } else if let Some(rest) = line.strip_prefix("deb ") {
                let rest = rest.trim_start();
                let rest = match rest.strip_prefix('[') {
                    Some(opts) => opts.split_once(']').map_or("", |(_, r)| r),
                    None => rest,
                };
                uris.extend(rest.split_whitespace().next().map(str::to_string));
            }
        }
    }
    let find = |suffix: &str| {
        uris.iter()
            .map(|u| u.trim_end_matches('/'))
            .find(|u| {
                (u.starts_with("http://") || u.starts_with("https://")) && u.ends_with(suffix)
            })
            .map(str::to_string)
    };
    (find("/debian"), find("/debian-security"))
}

// ---------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------

struct Ctx {
    cache_dir: PathBuf,
    no_cache: bool,
    mirror: String,
    security_mirror: String,
    progress: Progress,
}

/// An exclusive `flock` on a file, released when dropped.
struct Lock {
    _file: File,
}

impl Lock {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Takes the lock, calling `on_wait` first when someone else holds it.
    /// The fd is inherited by the build's processes, so the lock stays held
    /// until the last of them exits, even when this process is killed.
    fn take(path: &Path, on_wait: impl FnOnce()) -> Result<Lock> {
        let f = Lock::open(path)?;
        // SAFETY: clearing FD_CLOEXEC of an fd we own.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("fcntl {}", path.display()));
        }
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Lock { _file: f });
        }
        on_wait();
        loop {
            // SAFETY: as above; blocks until the holder releases it.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Lock { _file: f });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }

    /// The lock if nobody holds it now.
    fn try_take(path: &Path) -> Option<Lock> {
        let f = Lock::open(path).ok()?;
        // SAFETY: flock on an fd we own.
        (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0)
            .then_some(Lock { _file: f })
    }
}

/// An executable named `name` on PATH or in the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    found
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("NUL in {}", p.display()))
}

/// What [`isolate`] sets up in a root before it chroots there: every
/// string is made before the fork.
struct ChrootPlan {
    root: CString,
    proc_dir: CString,
    dev: CString,
    /// Directories made in the fresh `/dev`.
    dev_dirs: Vec<CString>,
    /// (host device, its place in the fresh `/dev`), bound there.
    devices: Vec<(CString, CString)>,
    /// (link target, link path) in the fresh `/dev`.
    links: Vec<(CString, CString)>,
}

impl ChrootPlan {
    fn new(root: &Path) -> Result<ChrootPlan> {
        for d in ["proc", "dev"] {
            let p = root.join(d);
            let meta = std::fs::symlink_metadata(&p)
                .with_context(|| format!("{} is missing", p.display()))?;
            if !meta.is_dir() {
                bail!("{} is not a directory", p.display());
            }
        }
        let dev = root.join("dev");
        let c = |rel: &str| cstring(&dev.join(rel));
        Ok(ChrootPlan {
            root: cstring(root)?,
            proc_dir: cstring(&root.join("proc"))?,
            dev: cstring(&dev)?,
            dev_dirs: vec![c("pts")?, c("shm")?],
            devices: ["null", "zero", "full", "random", "urandom", "tty"]
                .iter()
                .map(|d| Ok((cstring(&Path::new("/dev").join(d))?, c(d)?)))
                .collect::<Result<_>>()?,
            links: [
                ("/proc/self/fd", "fd"),
                ("/proc/self/fd/0", "stdin"),
                ("/proc/self/fd/1", "stdout"),
                ("/proc/self/fd/2", "stderr"),
            ]
            .iter()
            .map(|(target, link)| Ok((CString::new(*target)?, c(link)?)))
            .collect::<Result<_>>()?,
        })
    }

    /// Runs between fork and exec: raw syscalls only, no allocation.
    ///
    /// # Safety
    /// Only to be called in the child of a fork, before exec.
    unsafe fn enter(&self) -> std::io::Result<()> {
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY: every pointer is a NUL-terminated string owned by self
        // (or a literal), or null where the syscall allows it.
        unsafe {
            let nodev = libc::MS_NOSUID | libc::MS_NODEV;
            if libc::mount(
                c"proc".as_ptr(),
                self.proc_dir.as_ptr(),
                c"proc".as_ptr(),
                nodev | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            // A /dev of its own: the devices programs expect, nothing else.
            if libc::mount(
                c"tmpfs".as_ptr(),
                self.dev.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"mode=755,size=64k".as_ptr().cast(),
            ) != 0
            {
                return fail();
            }
            for d in &self.dev_dirs {
                if libc::mkdir(d.as_ptr(), 0o755) != 0 {
                    return fail();
                }
            }
            for (host, inside) in &self.devices {
                let fd = libc::open(inside.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                if fd < 0 {
                    return fail();
                }
                libc::close(fd);
                if libc::mount(
                    host.as_ptr(),
                    inside.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return fail();
                }
            }
            for (target, link) in &self.links {
                if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
                    return fail();
                }
            }
            if libc::chroot(self.root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return fail();
            }
        }
        Ok(())
    }
}

/// Makes `cmd` run in a private mount namespace of its own and, with
/// `root`, chrooted into `root` with a fresh `/proc` and a minimal `/dev`
/// (mounted only in that namespace).
fn isolate(cmd: &mut Command, root: Option<&Path>) -> Result<()> {
    let plan = root.map(ChrootPlan::new).transpose()?;
    // SAFETY: the closure runs between fork and exec; it only makes raw
    // syscalls on strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Killed with us (its own children hold the build's lock).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let null = std::ptr::null();
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            match &plan {
                Some(plan) => plan.enter(),
                None => Ok(()),
            }
        });
    }
    Ok(())
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with its output appended to `log`.
fn run_logged(cmd: &mut Command, log: &Path, what: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(f, "\n==> {what}")?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .status()
        .with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}); the end of {}:\n{}",
            log.display(),
            tail(log, 30)
        );
    }
    Ok(())
}

/// `/bin/sh -c script` as root in the image at `root`, with a clean
/// environment (plus `env` and the host's proxy settings).
fn in_image(root: &Path, script: &str, env: &[(&str, String)]) -> Result<Command> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", IMAGE_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEBCONF_NONINTERACTIVE_SEEN", "true");
    for k in [
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    isolate(&mut cmd, Some(root))?;
    Ok(cmd)
}

/// What dpkg leaves out of every image, like Debian's slim images: no
/// sandbox reads documentation, manuals or translations (the licences
/// stay). FINISH_SCRIPT removes what debootstrap installed before.
const DPKG_SLIM: &str = "\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias";

/// Prepares the image for apt (the host's resolver, a policy that starts
/// no services, sources on the mirror, slim dpkg), upgrades a freshly
/// bootstrapped root and installs the packages.
const INSTALL_SCRIPT: &str = r#"set -eu
rm -f /etc/resolv.conf
printf '%s\n' "$SK_RESOLV" > /etc/resolv.conf
printf '#!/bin/sh\n# no service starts while an image is built\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
mkdir -p /etc/dpkg/dpkg.cfg.d
rm -f /etc/dpkg/dpkg.cfg.d/sandkasten-slim
printf '%s\n' "$SK_DPKG_SLIM" > /etc/dpkg/dpkg.cfg.d/sandkasten-slim
rm -f /etc/apt/sources.list
printf '%s\n' "$SK_SOURCES" > /etc/apt/sources.list
apt-get update -q
if [ "$SK_UPGRADE" = 1 ]; then apt-get upgrade -y -q; fi
if [ -n "$SK_PACKAGES" ]; then apt-get install -y -q --no-install-recommends $SK_PACKAGES; fi
"#;

/// What every image gets, whatever its recipe: the sandbox user (uid and
/// gid 1000, home /home/sandbox), /workspace, a sandbox /etc, the image's
/// identity, and no documentation, apt caches or logs.
const FINISH_SCRIPT: &str = r#"set -eu
if ! getent passwd 1000 >/dev/null; then
  getent group 1000 >/dev/null || groupadd --gid 1000 sandbox
  shell=/bin/sh
  if [ -x /bin/bash ]; then shell=/bin/bash; fi
  useradd --uid 1000 --gid 1000 --create-home --home-dir /home/sandbox --shell "$shell" sandbox
fi
mkdir -p /home/sandbox /workspace
chown -R 1000:1000 /home/sandbox /workspace
chmod 755 /home/sandbox /workspace
rm -f /etc/hostname /etc/hosts /etc/resolv.conf /etc/sandkasten-image /usr/sbin/policy-rc.d
echo sandkasten > /etc/hostname
printf '127.0.0.1\tlocalhost sandkasten\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
echo '# no DNS: the sandbox has no outside network (Docker replaces this file when it has)' > /etc/resolv.conf
printf '%s\n' "$SK_IMAGE_INFO" > /etc/sandkasten-image
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/groff/* /usr/share/lintian/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/lib/dpkg/*-old \
  /var/log/apt/* /var/log/*.log /tmp/* /var/tmp/* /root/.cache
"#;

impl Ctx {
    fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("creating {}", self.cache_dir.display()))
    }

    /// The tarball of the last recipe of `chain`, from the cache or built
    /// (after the recipes it starts from).
    fn build(&self, chain: &[Recipe]) -> Result<PathBuf> {
        let (recipe, parents) = chain.split_last().expect("a chain has a recipe");
        let parent_tar = if parents.is_empty() {
            None
        } else {
            Some(self.build(parents)?)
        };
        let hash = recipe_hash(chain);
        let dir = self.cache_dir.join(format!("{}-{hash}", recipe.name));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Roots being built hold setuid binaries: nobody else may reach them.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
        let _lock = Lock::take(&dir.join("lock"), || {
            self.progress.say(&format!(
                "{}: waiting for another build of it to finish…",
                recipe.name
            ))
        })?;
        let tar = dir.join("rootfs.tar");
        if !self.no_cache {
            if let Ok(meta) = std::fs::metadata(&tar) {
                self.progress.say(&format!(
                    "{}: cached ({}, {})",
                    recipe.name,
                    tar.display(),
                    megabytes(meta.len())
                ));
                return Ok(tar);
            }
        }
        self.build_in(chain, &dir, parent_tar.as_deref())
            .with_context(|| format!("building {}", recipe.name))?;
        self.prune(&recipe.name, &dir);
        Ok(tar)
    }

    fn build_in(&self, chain: &[Recipe], dir: &Path, parent_tar: Option<&Path>) -> Result<()> {
        let recipe = chain.last().expect("a chain has a recipe");
        let name = &recipe.name;
        let suite = chain[0]
            .suite
            .as_deref()
            .expect("a root recipe has a suite");
        let root = dir.join("rootfs");
        let log = dir.join("build.log");
        remove_tree(&root).with_context(|| format!("removing {}", root.display()))?;
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(dir.join("rootfs.tar"));
        let recipes: String = chain
            .iter()
            .map(|r| format!("# images/{}.recipe\n{}\n", r.name, r.text))
            .collect();
        std::fs::write(dir.join("recipe"), recipes)?;
        std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;

        match parent_tar {
            None => {
                let debootstrap = find_program("debootstrap").ok_or_else(|| {
                    anyhow!("debootstrap is not installed: apt-get install debootstrap")
                })?;
                if !Path::new(KEYRING).exists() {
                    bail!(
                        "{KEYRING} is missing (needed to check Debian's signatures): \
                         apt-get install debian-archive-keyring"
                    );
                }
                self.progress.say(&format!(
                    "{name}: debootstrap {suite} from {}…",
                    self.mirror
                ));
                let mut cmd = Command::new(debootstrap);
                cmd.arg("--variant=minbase")
                    .arg(format!("--keyring={KEYRING}"))
                    .arg(suite)
                    .arg(&root)
                    .arg(&self.mirror);
                isolate(&mut cmd, None)?;
                run_logged(&mut cmd, &log, "debootstrap")?;
            }
            Some(parent) => {
                let from = recipe.from.as_deref().unwrap_or_default();
                // Under the parent's lock: a concurrent --no-cache build of
                // it replaces the tarball.
                let _parent_lock = Lock::take(&parent.with_file_name("lock"), || {
                    self.progress
                        .say(&format!("{name}: waiting for a build of {from} to finish…"))
                })?;
                if !parent.is_file() {
                    bail!("{from} was being rebuilt meanwhile; build {name} again");
                }
                self.progress.say(&format!("{name}: unpacking {from}…"));
                let mut cmd = Command::new("tar");
                cmd.args(["--extract", "--preserve-permissions", "--numeric-owner"])
                    .arg("--file")
                    .arg(parent)
                    .arg("--directory")
                    .arg(&root);
                run_logged(&mut cmd, &log, "unpacking the parent image")?;
            }
        }

        self.progress.say(&format!(
            "{name}: installing packages… {}",
            if recipe.packages.is_empty() {
                "(none; updates only)".to_string()
            } else {
                recipe.packages.join(" ")
            }
        ));
        let sources = format!(
            "deb {m} {suite} main\ndeb {m} {suite}-updates main\ndeb {s} {suite}-security main",
            m = self.mirror,
            s = self.security_mirror
        );
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let env = [
            ("SK_RESOLV", resolv),
            ("SK_SOURCES", sources),
            (
                "SK_UPGRADE",
                if parent_tar.is_none() { "1" } else { "0" }.to_string(),
            ),
            ("SK_PACKAGES", recipe.packages.join(" ")),
            ("SK_DPKG_SLIM", DPKG_SLIM.to_string()),
        ];
        run_logged(&mut in_image(&root, INSTALL_SCRIPT, &env)?, &log, "apt-get")?;

        for line in &recipe.run {
            self.progress.say(&format!("{name}: running: {line}"));
            run_logged(&mut in_image(&root, line, &[])?, &log, line)?;
        }

        self.progress.say(&format!(
            "{name}: finishing (sandbox user, /etc, clean-up)…"
        ));
        let info = format!(
            "recipe={name}\nrecipe_hash={}\nsuite={suite}\nbuilder={BUILDER_VERSION}",
            recipe_hash(chain)
        );
        run_logged(
            &mut in_image(&root, FINISH_SCRIPT, &[("SK_IMAGE_INFO", info)])?,
            &log,
            "finishing",
        )?;

        self.progress.say(&format!("{name}: packing…"));
        let partial = dir.join("rootfs.tar.partial");
        let mut cmd = Command::new("tar");
        cmd.args([
            "--create",
            "--numeric-owner",
            "--one-file-system",
            "--sort=name",
            // Devices and kernel filesystems come from the runtime.
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
        ])
        .arg("--file")
        .arg(&partial)
        .arg("--directory")
        .arg(&root)
        .arg(".");
        run_logged(&mut cmd, &log, "packing")?;
        File::open(&partial)?.sync_all()?;
        let tar = dir.join("rootfs.tar");
        std::fs::rename(&partial, &tar)?;
        remove_tree(&root).with_context(|| format!("removing {}", root.display()))?;
        self.progress.say(&format!(
            "{name}: packed {} ({})",
            tar.display(),
            megabytes(std::fs::metadata(&tar)?.len())
        ));
        Ok(())
    }

    /// Removes the cached versions of `name` other than `keep` that no
    /// build holds.
    fn prune(&self, name: &str, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        let prefix = format!("{name}-");
        for e in rd.flatten() {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let Some(hash) = file_name.strip_prefix(&prefix) else {
                continue;
            };
            let path = e.path();
            if hash.len() != 12 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || path == keep {
                continue;
            }
            let Some(_lock) = Lock::try_take(&path.join("lock")) else {
                continue;
            };
            if remove_tree(&path).is_ok() {
                self.progress.say(&format!(
                    "{name}: removed an outdated cache entry ({file_name})"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_recipes_parse_and_chain_to_a_suite() {
        for (name, _) in RECIPES {
            let c = chain(name).unwrap();
            assert_eq!(c.last().unwrap().name, *name);
            assert_eq!(c[0].suite.as_deref(), Some("bookworm"), "{name}");
        }
        let py = chain("python").unwrap();
        assert_eq!(
            py.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["base", "python"]
        );
        assert!(py[1].packages.contains(&"python3-venv".to_string()));
        assert!(chain("nope").is_err());
    }

    #[test]
    fn the_hash_covers_the_whole_chain() {
        let base = chain("base").unwrap();
        let py = chain("python").unwrap();
        assert_eq!(recipe_hash(&base), recipe_hash(&base));
        assert_ne!(recipe_hash(&base), recipe_hash(&py));
        let mut changed = py.clone();
        changed[0].text.push_str("packages less\n");
        assert_ne!(recipe_hash(&py), recipe_hash(&changed));
        assert_eq!(recipe_hash(&py).len(), 12);
    }

    #[test]
    fn bad_recipes_are_refused_with_their_line() {
        for (text, want) in [
            ("suite bookworm\npackages ok bad;rm\n", "line 2"),
            ("suite bookworm\nfrom base\n", "both"),
            ("packages bash\n", "needs `suite`"),
            ("suite bookworm\nsuite trixie\n", "twice"),
            ("suite bookworm\ncopy a b\n", "unknown directive"),
            ("suite Book\n", "line 1"),
            ("from base\nrun\n", "needs a command"),
        ] {
            let err = parse("t", text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let r = parse(
            "t",
            "# c\nfrom base\npackages a1 b+c\npackages d.e\nrun echo 'x y'\n",
        )
        .unwrap();
        assert_eq!(r.packages, ["a1", "b+c", "d.e"]);
        assert_eq!(r.run, ["echo 'x y'"]);
    }

    #[test]
    fn mirrors_come_from_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirrors_from(&[deb822.to_string()]),
            (
                Some("http://mirror.example/debian".into()),
                Some("http://mirror.example/debian-security".into())
            )
        );
        let one_line = "# deb http://old.example/debian bookworm main\n\
                        deb [arch=amd64 signed-by=/k.gpg] https://m.example/debian bookworm main\n\
                        deb http://archive.ubuntu.com/ubuntu jammy main\n";
        assert_eq!(
            mirrors_from(&[one_line.to_string()]),
            (Some("https://m.example/debian".into()), None)
        );
        assert_eq!(mirrors_from(&[]), (None, None));
    }
}
