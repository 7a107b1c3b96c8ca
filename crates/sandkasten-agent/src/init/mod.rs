//! The launcher: builds one sandbox, whose PID 1 it forks.
//!
//! The spawner (`spawner.rs`) forks it as host root for each
//! [`SpawnRequest`], with a [`CgroupJoin`] (the session's CPU quota and
//! `cgroup.procs` files) as stdin's first line, then a [`LaunchSpec`].
//! Steps, in this process (the *launcher*):
//!
//! 1. Bind the agent socket (in a root-only host directory) before any
//!    namespace exists; the sandbox's PID 1 inherits the listening fd, and
//!    nothing inside the sandbox can reach the path.
//! 2. `unshare(CLONE_NEWNS)`, make every mount private, and assemble the
//!    root filesystem as real root: overlayfs of the image layers plus the
//!    per-session upper dir, bind mounts, tmpfs `/tmp`, a minimal `/dev`.
//!    With `LaunchSpec::idmap` the layer stores, the sandbox's own state
//!    and its workspace are idmapped clones first, so their shared on-disk
//!    ids appear in the sandbox's own host range.
//!    These mounts exist only in this mount namespace and its copies; the
//!    host never sees them, and they vanish with the last process inside.
//!    Meanwhile a thread writes the CPU quota (a walk of every CPU cgroup
//!    on the host) and moves the launcher into the session's cgroups
//!    (stdin's first line names them, before the spec; that write waits
//!    for an RCU grace period without `favordynmods`, so it overlaps the
//!    rest), joined before the clone. Then it clones the assembled tree, joins a private copy of
//!    the base mount namespace (`SpawnRequest::base_ns`: an empty read-only root,
//!    see `basens.rs`), stacks the tree on that root and `chroot`s into it
//!    (no `pivot_root`, whose cost grows with the host's thread count).
//! 3. `clone` the child, born in those cgroups, into new user, mount, pid,
//!    uts, ipc and net namespaces. The launcher writes its uid/gid maps
//!    (root inside maps to an unprivileged host uid), then releases it.
//! 4. The child (PID 1 of the sandbox): new cgroup namespace, hostname,
//!    loopback up, fresh `/proc` and `/dev/pts`, drop the capability
//!    bounding set, no_new_privs, seccomp; then it serves the daemon
//!    (`server::serve`).
//! 5. The launcher prints a [`LaunchReport`] and exits, so the sandbox does
//!    not depend on the daemon's process tree and survives its restart.
//!
//! [`SpawnRequest`]: sandkasten_protocol::SpawnRequest
//! [`CgroupJoin`]: sandkasten_protocol::CgroupJoin
//! [`LaunchSpec`]: sandkasten_protocol::LaunchSpec
//! [`LaunchReport`]: sandkasten_protocol::LaunchReport

mod basens;
pub mod caps;
mod mounts;
mod net;
pub mod seccomp;

use sandkasten_protocol::{CgroupJoin, LaunchReport, LaunchSpec, SpawnRequest};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

/// Formats the last OS error with what was being done.
pub(crate) fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// `sandkasten-agent base-ns` (see [`basens`]).
pub fn run_base_ns() -> ExitCode {
    basens::run()
}

/// The launcher with these options; prints the report or the error.
pub fn run(opts: &SpawnRequest) -> ExitCode {
    match launch(opts) {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sandkasten-agent init: {e}");
            ExitCode::from(1)
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The launcher's steps and how long each took.
struct Phases {
    last: std::time::Instant,
    done: Vec<(String, u64)>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends the step `name` now.
    fn end(&mut self, name: &str) {
        let now = std::time::Instant::now();
        let us = now.duration_since(self.last).as_micros() as u64;
        self.done.push((name.to_string(), us));
        self.last = now;
    }
}

/// Writes the session's CPU quota and moves this process into its
/// cgroups (stdin's first line, a [`CgroupJoin`]) on a thread of its
/// own. Writing `cgroup.procs` waits for an RCU grace period (12-15 ms on
/// a quiet host, cgroup v1 and v2 alike); started first, it runs while the
/// daemon prepares the rest, the spec is read and the root filesystem
/// assembled. The sandbox init, cloned after the join, is born in them.
/// What the cgroup thread reports: each write's time, by file.
type Joined = Result<Vec<(String, u64)>, String>;

fn join_cgroups_in_background() -> Result<std::thread::JoinHandle<Joined>, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the cgroups: {e}"))?;
    let join: CgroupJoin =
        serde_json::from_str(&line).map_err(|e| format!("invalid cgroups line: {e}"))?;
    Ok(std::thread::spawn(move || {
        let me = std::process::id().to_string();
        let mut took = Vec::new();
        let t = std::time::Instant::now();
        for (file, value) in &join.writes {
            std::fs::write(file, value)
                .map_err(|e| format!("writing {value} to {}: {e}", file.display()))?;
        }
        if !join.writes.is_empty() {
            took.push(("cgroup limits".to_string(), t.elapsed().as_micros() as u64));
        }
        for p in &join.procs {
            let t = std::time::Instant::now();
            std::fs::write(p, &me).map_err(|e| format!("joining cgroup {}: {e}", p.display()))?;
            // `<hierarchy>/sandkasten/<id>/cgroup.procs`: named by its
            // hierarchy (`memory`, … on v1; the cgroup2 mount's name).
            let hierarchy = p
                .iter()
                .rev()
                .nth(3)
                .map_or("?".into(), |h| h.to_string_lossy());
            took.push((
                format!("cgroup {hierarchy}"),
                t.elapsed().as_micros() as u64,
            ));
        }
        Ok(took)
    }))
}

fn launch(opts: &SpawnRequest) -> Result<LaunchReport, String> {
    // Nothing the daemon's own parent left open may reach the sandbox: the
    // sandbox init is a fork of this process and never execs.
    // SAFETY: close_range on fds this process does not use.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut phases = Phases::new();
    // When the daemon asked for this process (CLOCK_MONOTONIC).
    if opts.t0_ns > 0 {
        let fork_us = sandkasten_protocol::monotonic_ns().saturating_sub(opts.t0_ns) / 1000;
        phases.done.push(("start".to_string(), fork_us));
    }
    let cgroups = join_cgroups_in_background()?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading spec: {e}"))?;
    let spec: LaunchSpec =
        serde_json::from_str(&input).map_err(|e| format!("invalid spec: {e}"))?;
    phases.end("spec");

    let _ = std::fs::remove_file(&spec.socket_path);
    let listener = UnixListener::bind(&spec.socket_path)
        .map_err(|e| format!("binding agent socket {}: {e}", spec.socket_path.display()))?;
    std::fs::set_permissions(&spec.socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod agent socket: {e}"))?;

    // SAFETY: plain syscalls on the current (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os_err("unshare(CLONE_NEWNS)"));
    }
    mounts::assemble_rootfs(&spec)?;
    std::env::set_current_dir(&spec.rootfs_dir).map_err(|e| format!("chdir to the rootfs: {e}"))?;
    phases.end("rootfs");
    // Single-threaded again from here: the clone below must be.
    let joined = cgroups
        .join()
        .map_err(|_| "the cgroup thread panicked".to_string())??;
    phases.end("cgroups (rest)");
    phases.done.extend(joined);
    let base = std::fs::File::open(&opts.base_ns)
        .map_err(|e| format!("opening the base mount namespace {}: {e}", opts.base_ns))?;
    // The host's /proc, for the child's id maps and start time: no path
    // leads there once this process is rooted in the sandbox's tree.
    let proc_dir = std::fs::File::open("/proc").map_err(|e| format!("opening /proc: {e}"))?;
    mounts::enter_base(&base.into())?;
    phases.end("enter base");

    let (go_rd, go_wr) = pipe()?;
    let (ready_rd, ready_wr) = pipe()?;
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    // The user namespace is created with the sandbox root's host uid as
    // effective uid, so the kernel's per-user budgets (inotify instances,
    // message queues, pipe buffers...) that the sandbox uses are charged to
    // that uid, not to host root: a sandbox cannot exhaust host root's.
    let sandbox_root = spec
        .uid_map
        .iter()
        .find(|m| m.inside == 0)
        .map(|m| m.outside)
        .unwrap_or(0);
    // SAFETY: plain set*id syscalls; the saved uid stays 0 to switch back.
    if unsafe { libc::setresuid(u32::MAX, sandbox_root, 0) } != 0 {
        return Err(os_err("switching to the sandbox root's uid"));
    }
    // SAFETY: a raw clone without a new stack behaves like fork(); this
    // process is single-threaded, so the child may run arbitrary code.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Err(os_err("clone of the sandbox init"));
    }
    if pid == 0 {
        drop(go_wr);
        drop(ready_rd);
        // The sandbox init never execs, so close-on-exec never fires: it
        // keeps exactly its stdio, the agent socket and the two pipes.
        // (The host's /proc above, left open here, was a way out: a
        // dumpable process of the sandbox's root could take it.)
        drop(proc_dir);
        crate::sys::close_fds_except(&[
            listener.as_raw_fd(),
            go_rd.as_raw_fd(),
            ready_wr.as_raw_fd(),
        ]);
        child(spec, listener, go_rd, ready_wr);
    }
    // Back to root (the saved uid) to write the maps and join cgroups.
    // SAFETY: plain set*id syscall.
    if unsafe { libc::setresuid(u32::MAX, 0, 0) } != 0 {
        return Err(os_err("switching back to root"));
    }
    let pid = pid as i32;
    drop(go_rd);
    drop(ready_wr);
    drop(listener);

    let setup = (|| -> Result<(), String> {
        // The init's OOM score stays 0: a privileged -1000 here would also
        // become the floor of every process it starts, so the sandbox could
        // make its own hogs unkillable. The shell raises its score to +500
        // instead (see shell.rs) and the agent keeps its memory bounded.
        write_id_map(&proc_dir, pid, "uid_map", &spec.uid_map)?;
        write_id_map(&proc_dir, pid, "gid_map", &spec.gid_map)
    })();
    if let Err(e) = setup {
        // SAFETY: pid is our own child, not yet released.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return Err(e);
    }
    let mut go = std::fs::File::from(go_wr);
    go.write_all(b"g")
        .map_err(|e| format!("releasing sandbox init: {e}"))?;
    drop(go);
    phases.end("clone");

    // The child reports "ok" or an error message once it is serving.
    let mut msg = String::new();
    let _ = std::fs::File::from(ready_rd).read_to_string(&mut msg);
    if msg != "ok" {
        // SAFETY: pid is our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(if msg.is_empty() {
            "sandbox init died during setup".into()
        } else {
            msg
        });
    }
    phases.end("init setup");
    let start_time = start_time_in(&proc_dir, pid)?;
    Ok(LaunchReport {
        pid,
        start_time,
        phases_us: phases.done,
        finished_ns: sandkasten_protocol::monotonic_ns(),
    })
}

/// Opens `<proc_dir>/<pid>/<file>` (read or write).
fn proc_file(
    proc_dir: &std::fs::File,
    pid: i32,
    file: &str,
    write: bool,
) -> Result<std::fs::File, String> {
    let rel = std::ffi::CString::new(format!("{pid}/{file}")).expect("no NUL");
    let mode = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    // SAFETY: a valid dirfd and NUL-terminated path; the fd is ours.
    let fd = unsafe { libc::openat(proc_dir.as_raw_fd(), rel.as_ptr(), mode | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(format!("opening /proc/{pid}/{file}")));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn write_id_map(
    proc_dir: &std::fs::File,
    pid: i32,
    file: &str,
    maps: &[sandkasten_protocol::IdMap],
) -> Result<(), String> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect();
    proc_file(proc_dir, pid, file, true)?
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing {file}: {e}"))
}

/// The start time of `pid`, read through a descriptor of the host's /proc.
fn start_time_in(proc_dir: &std::fs::File, pid: i32) -> Result<u64, String> {
    let mut stat = String::new();
    proc_file(proc_dir, pid, "stat", false)?
        .read_to_string(&mut stat)
        .map_err(|e| format!("reading stat of {pid}: {e}"))?;
    start_time_of(&stat)
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
fn start_time_of(stat: &str) -> Result<u64, String> {
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "malformed stat".to_string())
}

/// Runs in the cloned child; never returns.
fn child(spec: LaunchSpec, listener: UnixListener, go: OwnedFd, ready: OwnedFd) -> ! {
    let mut ready = std::fs::File::from(ready);
    let mut byte = [0u8; 1];
    let released = std::fs::File::from(go)
        .read(&mut byte)
        .map(|n| n == 1)
        .unwrap_or(false);
    if !released {
        std::process::exit(1);
    }
    match setup_child(&spec) {
        Ok(()) => {
            let _ = ready.write_all(b"ok");
            drop(ready);
            let code = crate::server::serve(listener, spec.agent);
            std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
        }
        Err(e) => {
            let _ = ready.write_all(e.as_bytes());
            std::process::exit(1);
        }
    }
}

fn setup_child(spec: &LaunchSpec) -> Result<(), String> {
    // SAFETY: plain syscalls on our own process.
    unsafe {
        if libc::setsid() < 0 {
            return Err(os_err("setsid"));
        }
        if libc::setresgid(0, 0, 0) != 0 {
            return Err(os_err("setresgid(0)"));
        }
        if libc::setresuid(0, 0, 0) != 0 {
            return Err(os_err("setresuid(0)"));
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(os_err("setgroups"));
        }
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            return Err(os_err("unshare(CLONE_NEWCGROUP)"));
        }
    }
    nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
    net::loopback_up()?;
    mounts::finish_in_namespace()?;
    // stdio must not keep the daemon's pipes open.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard fds.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    caps::drop_bounding_set()?;
    seccomp::install()?;
    Ok(())
}
