//! The escape suite (issue 15, point 6): known escape and abuse attempts,
//! run inside real sandboxes of a real daemon, each asserting the
//! documented outcome (the exact errno, not "failed"). Every behaviour runs
//! on the native runtime (`native::*`) and on a local Docker engine
//! (`docker::*`), whatever `SANDKASTEN_E2E_RUNTIME` says: each daemon names
//! its runtime in its config.
//!
//! The attempts are a small static C program, `tests/escapes/probe.c`,
//! built with gcc when the test starts and uploaded into the sandbox
//! (the docker image has no compiler or python3). It runs each attempt in a
//! child and prints `<attempt> <outcome>`: `ok`, an errno name, or
//! `killed-by-SYS`. The table of attempts, outcomes, what enforces each and
//! the test that shows it is in docs/architecture.md ("Escape suite");
//! keep the two together.
//!
//! Network attempts only reach servers this test starts on the host's
//! loopback (and the daemon it started).

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    Native,
    Docker,
}

/// The probe, built once per test process.
fn probe_binary() -> &'static [u8] {
    static PROBE: OnceLock<Vec<u8>> = OnceLock::new();
    PROBE.get_or_init(|| static_c_binary("tests/escapes/probe.c", "the escape suite"))
}

/// A daemon of runtime `rt` on a fresh data dir (its docker containers
/// and volumes go with the data dir), with `extra` config.
fn daemon(rt: Rt, extra: &str) -> Daemon {
    let home = DataDir::new();
    let yaml = match rt {
        Rt::Native => format!("runtime: native\n{extra}"),
        Rt::Docker => {
            home.holds_docker_objects();
            format!(
                "runtime: docker\ndefault_image: \"{}\"\n{extra}",
                docker_image()
            )
        }
    };
    Daemon::start_in(&home, Some(&yaml))
}

/// A session with the probe at /tmp/probe.
fn session_with_probe(d: &Daemon) -> String {
    let id = d.new_session();
    d.write(&id, "/tmp/probe", probe_binary());
    d.sh(&id, "chmod 755 /tmp/probe");
    id
}

/// Runs `probe run <names>` in session `id`: attempt → outcome.
fn attempts(d: &Daemon, id: &str, names: &[&str]) -> BTreeMap<String, String> {
    let out = d.sh(id, &format!("/tmp/probe run {}", names.join(" ")));
    let got: BTreeMap<String, String> = out
        .lines()
        .map(|l| {
            let (k, v) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad probe line {l:?} in {out:?}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(got.len(), names.len(), "probe output: {out}");
    got
}

/// One attempt's documented outcomes (usually one).
type Expect = (&'static str, Vec<&'static str>);

fn one(name: &'static str, outcome: &'static str) -> Expect {
    (name, vec![outcome])
}

/// Runs every attempt of `expected` and fails with the full table of
/// those whose outcome differs.
#[track_caller]
fn assert_outcomes(rt: Rt, d: &Daemon, id: &str, expected: &[Expect]) {
    let names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    let got = attempts(d, id, &names);
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(n, want)| !want.contains(&got[*n].as_str()))
        .map(|(n, want)| format!("  {n}: got {}, documented {}", got[*n], want.join(" or ")))
        .collect();
    assert!(
        wrong.is_empty(),
        "{rt:?}: attempts with an outcome other than the documented one \
         (docs/architecture.md, \"Escape suite\"):\n{}\nall outcomes: {got:?}",
        wrong.join("\n")
    );
}

/// Outcome of opening host-dependent kernel files: absent on this kernel
/// (`ENOENT` inside too), else refused.
fn host_file(path: &str, refused: &[&'static str]) -> Vec<&'static str> {
    if Path::new(path).exists() {
        refused.to_vec()
    } else {
        vec!["ENOENT"]
    }
}

// ---------------------------------------------------------------------------
// The behaviours, each run on both runtimes (see the macro at the end)
// ---------------------------------------------------------------------------

/// Mount API, new namespaces (also through `clone` and `clone3`), joining
/// namespaces, chroot, root and hostname: all refused. `unshare -U` (a new
/// user namespace, where the sandbox user would be root) fails itself, so
/// nothing runs in one.
fn mounts_and_namespaces(rt: Rt) {
    let d = daemon(rt, "");
    let id = session_with_probe(&d);
    let mounts_before = d.sh(&id, "cat /proc/self/mountinfo");
    let mut expected = vec![];
    for n in [
        "mount",
        "umount",
        "fsopen",
        "open_tree",
        "pivot_root",
        "unshare_user",
        "unshare_mount",
        "unshare_net",
        "unshare_pid",
        "unshare_cgroup",
        "clone_newuser",
        "setns",
        "chroot",
        "setuid_root",
        "sethostname",
    ] {
        expected.push(one(n, "EPERM"));
    }
    expected.push(one("clone3_newuser", "ENOSYS"));
    assert_outcomes(rt, &d, &id, &expected);

    // The tools' way: `unshare -U` (util-linux on native, busybox on
    // docker), with a command that would mount inside the new namespace.
    for cmd in [
        "unshare -U sh -c 'touch /tmp/inner-ran; mount -t tmpfs none /tmp'",
        "unshare -U -r sh -c 'touch /tmp/inner-ran; mount -t tmpfs none /tmp'",
        "unshare -m sh -c 'touch /tmp/inner-ran'",
    ] {
        let v = d.exec(&id, &format!("{cmd} 2>&1"));
        assert_ne!(v["exit_code"], 0, "{rt:?}: `{cmd}` succeeded: {v}");
        assert!(
            v["output"]
                .as_str()
                .unwrap()
                .contains("Operation not permitted"),
            "{rt:?}: `{cmd}` did not fail with EPERM: {v}"
        );
    }
    assert_eq!(
        d.sh(&id, "test -e /tmp/inner-ran && echo ran || echo absent"),
        "absent\n",
        "{rt:?}: a command ran inside a new namespace"
    );
    assert_eq!(
        d.sh(&id, "cat /proc/self/mountinfo"),
        mounts_before,
        "{rt:?}: the sandbox's mounts changed"
    );
}

/// PID 1 (the agent, root with the channel to the daemon) cannot be
/// traced, read or signalled by the sandbox user; tracing its own child
/// works, so the refusal is about PID 1, not ptrace.
fn pid_1_is_out_of_reach(rt: Rt) {
    let d = daemon(rt, "");
    let id = session_with_probe(&d);
    assert_outcomes(
        rt,
        &d,
        &id,
        &[
            one("ptrace_own_child", "ok"),
            one("ptrace_attach_1", "EPERM"),
            one("ptrace_seize_1", "EPERM"),
            one("process_vm_readv_1", "EPERM"),
            one("kill_1", "EPERM"),
            one("proc_1_environ", "EACCES"),
            one("proc_1_mem", "EACCES"),
            one("proc_1_root", "EACCES"),
            one("proc_1_fd", "EACCES"),
        ],
    );
    // PID 1 survived the SIGKILL attempt: the session still works.
    assert_eq!(d.sh(&id, "echo alive"), "alive\n");
}

/// Kernel interfaces a sandbox never needs, each refused by the seccomp
/// filter (most of them the kernel would allow an unprivileged process
/// here: keyrings, perf on itself, io_uring, user-mode userfaultfd; module
/// loading would be ENOSYS on a kernel without modules), and other ABIs.
fn kernel_interfaces(rt: Rt) {
    let d = daemon(rt, "");
    let id = session_with_probe(&d);
    let mut expected = vec![];
    for n in [
        "keyctl",
        "add_key",
        "request_key",
        "bpf_map",
        "bpf_prog",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "name_to_handle_at",
        "open_by_handle_at",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "iopl",
        "syslog",
        "reboot",
        "clock_settime",
    ] {
        expected.push(one(n, "EPERM"));
    }
    expected.push(one("dev_userfaultfd", "ENOENT"));
    // The i386 ABI (int 0x80) and x32 (bit 30 of the number) are other
    // ABIs: the process is killed before the call runs.
    expected.push(one("int80_getpid", "killed-by-SYS"));
    expected.push(one("x32_keyctl", "killed-by-SYS"));
    assert_outcomes(rt, &d, &id, &expected);
}

/// Device nodes, raw and packet sockets, socket families and netlink.
fn devices_sockets_and_netlink(rt: Rt) {
    let d = daemon(rt, "");
    let id = session_with_probe(&d);
    let mut expected = vec![
        one("mknod_char", "EPERM"),
        one("mknod_block", "EPERM"),
        one("mknod_fifo", "ok"),
        one("dev_mem", "ENOENT"),
        one("dev_kmsg", "ENOENT"),
        one("raw_socket", "EPERM"),
        one("raw6_socket", "EPERM"),
        // ICMP echo sockets: net.ipv4.ping_group_range is "1 0" (nobody)
        // in the native sandbox's fresh network namespace; docker sets it
        // to every group (ping works, nothing beyond echo requests).
        one(
            "ping_socket",
            if rt == Rt::Native { "EACCES" } else { "ok" },
        ),
        // The seccomp filter's socket families: unix, inet, inet6, netlink.
        one("packet_socket", "EAFNOSUPPORT"),
        one("socketpair_packet", "EAFNOSUPPORT"),
        one("vsock_socket", "EAFNOSUPPORT"),
        one("alg_socket", "EAFNOSUPPORT"),
        one("key_socket", "EAFNOSUPPORT"),
        // Netlink: route and sock_diag only, on the own namespace.
        one("netlink_route_dump", "ok:lo"),
        one("netlink_route_newlink", "EPERM"),
        one("netlink_route_setlink", "EPERM"),
        one("netlink_sock_diag", "ok"),
    ];
    for n in [
        "netlink_audit_get",
        "netlink_uevent_bind",
        "netlink_generic",
        "netlink_netfilter",
        "netlink_xfrm",
        "netlink_crypto",
    ] {
        expected.push(one(n, "EPROTONOSUPPORT"));
    }
    assert_outcomes(rt, &d, &id, &expected);
}

/// Writes under /proc/sys and /sys, and the kernel's memory image.
fn proc_sys_and_sys(rt: Rt) {
    let d = daemon(rt, "");
    let id = session_with_probe(&d);
    let host_core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let expected = vec![
        one("proc_sys_core_pattern", "EACCES"),
        one("proc_sys_drop_caches", "EACCES"),
        one("proc_sys_ip_forward", "EACCES"),
        (
            "proc_sysrq_trigger",
            host_file("/proc/sysrq-trigger", &["EACCES", "EROFS"]),
        ),
        // Native has no sysfs at all (an empty /sys owned by root inside);
        // docker mounts it read-only.
        match rt {
            Rt::Native => one("sys_uevent_helper", "ENOENT"),
            Rt::Docker => (
                "sys_uevent_helper",
                host_file("/sys/kernel/uevent_helper", &["EROFS"]),
            ),
        },
        match rt {
            Rt::Native => one("sys_thp", "ENOENT"),
            Rt::Docker => (
                "sys_thp",
                host_file("/sys/kernel/mm/transparent_hugepage/enabled", &["EROFS"]),
            ),
        },
        one(
            "sys_lo_mtu",
            if rt == Rt::Native { "ENOENT" } else { "EROFS" },
        ),
        one(
            "sys_create_file",
            if rt == Rt::Native { "EACCES" } else { "EROFS" },
        ),
        // Native: owned by the host's root (unmapped), mode 0400; docker
        // masks it with /dev/null.
        (
            "proc_kcore",
            match rt {
                Rt::Native => host_file("/proc/kcore", &["EACCES"]),
                Rt::Docker => host_file("/proc/kcore", &["ok:empty"]),
            },
        ),
    ];
    assert_outcomes(rt, &d, &id, &expected);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        host_core_pattern
    );
}

/// A setuid-root binary in the image runs with the caller's ids: every
/// sandbox mount is nosuid on native, and no_new_privs holds on both.
fn setuid_binary_in_the_image_gives_no_privilege(rt: Rt) {
    let home = DataDir::new();
    let tar = home.root.join("suid-image.tar");
    std::fs::write(&tar, suid_image_tar()).unwrap();
    let name = format!("sandkasten-e2e-escape:suid-{}", random_hex(8));
    let _image = match rt {
        Rt::Native => {
            let out = Command::new(BIN)
                .args(["image", "import", &name])
                .arg(&tar)
                .env("SANDKASTEN_DATA_DIR", &home.data)
                .env("SANDKASTEN_API_KEY", &home.key)
                .output()
                .unwrap();
            assert!(out.status.success(), "image import: {out:?}");
            // The import's chown of each entry to the shifted owner clears
            // the setuid bit (chown(2) does): put it back in the layer, as
            // an image store that kept it would have it.
            let layer_file = find_file(&home.data.join("layers"), "probe-suid")
                .expect("the probe in the imported image's layers");
            let meta = std::fs::symlink_metadata(&layer_file).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                0o755,
                "native image import kept a setuid bit"
            );
            std::fs::set_permissions(&layer_file, std::fs::Permissions::from_mode(0o4755)).unwrap();
            None
        }
        Rt::Docker => {
            docker_image();
            let (ok, out) = docker_cli(&["import", tar.to_str().unwrap(), &name]);
            assert!(ok, "docker import: {out}");
            Some(DockerImageGuard(name.clone()))
        }
    };
    let yaml = match rt {
        Rt::Native => "runtime: native\n".to_string(),
        Rt::Docker => {
            home.holds_docker_objects();
            format!("runtime: docker\ndefault_image: \"{}\"\n", docker_image())
        }
    };
    let d = Daemon::start_in(&home, Some(&yaml));
    let s = d.create_session(json!({ "image": name }));
    let id = s["id"].as_str().unwrap().to_string();
    // The bit and the owner are there, as the image has them.
    assert_eq!(
        d.sh(
            &id,
            "ls -ln /probe-suid | cut -c1-10; ls -ln /probe-suid | tr -s ' ' | cut -d' ' -f3"
        ),
        "-rwsr-xr-x\n0\n",
        "{rt:?}: the image's setuid-root probe"
    );
    // The sandbox user: 1000 inside native's user namespace, docker's own
    // uid (the image's user was made for 1000).
    let u = match rt {
        Rt::Native => 1000,
        Rt::Docker => sandkasten_docker::DEFAULT_SANDBOX_ID,
    };
    assert_eq!(
        d.sh(&id, "/probe-suid euid"),
        format!("uid {u} {u} {u}\n"),
        "{rt:?}: a setuid-root binary raised the sandbox user's ids"
    );
    assert_eq!(
        d.sh(&id, "grep NoNewPrivs /proc/self/status"),
        "NoNewPrivs:\t1\n"
    );
    if rt == Rt::Native {
        let root_opts = d.sh(&id, "awk '$5 == \"/\" {print $6}' /proc/self/mountinfo");
        assert!(
            root_opts.split(',').any(|o| o.trim() == "nosuid"),
            "{rt:?}: / is not nosuid: {root_opts}"
        );
    }
    d.delete(&id);
}

/// The first regular file named `name` below `dir` (no symlink followed).
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let t = e.file_type().ok()?;
        if t.is_file() && e.file_name() == name {
            return Some(e.path());
        }
        if t.is_dir() {
            if let Some(p) = find_file(&e.path(), name) {
                return Some(p);
            }
        }
    }
    None
}

/// Removes a docker image this test imported.
struct DockerImageGuard(String);

impl Drop for DockerImageGuard {
    fn drop(&mut self) {
        let (ok, out) = docker_cli(&["rmi", "-f", &self.0]);
        if !ok {
            eprintln!("removing image {}: {out}", self.0);
        }
    }
}

/// A root filesystem with busybox (sh and a few applets), the sandbox user
/// and the probe as `/probe-suid`: owned by root, mode 04755.
fn suid_image_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect(
        "the setuid image is built from the host's static busybox: apt-get install busybox-static",
    );
    let mut b = tar::Builder::new(Vec::new());
    let header = tar_header;
    for (dir, mode, uid) in [
        ("bin", 0o755, 0),
        ("etc", 0o755, 0),
        ("home", 0o755, 0),
        ("home/sandbox", 0o755, 1000),
        ("workspace", 0o755, 1000),
        ("tmp", 0o1777, 0),
        ("proc", 0o555, 0),
        ("dev", 0o755, 0),
        ("sys", 0o555, 0),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, uid, 0);
        b.append_data(&mut h, dir, std::io::empty()).unwrap();
    }
    let mut h = header(tar::EntryType::Regular, 0o755, 0, busybox.len());
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for applet in ["sh", "ls", "cut", "tr", "grep", "cat", "id", "true"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n",
        ),
        ("etc/group", "root:x:0:\nsandbox:x:1000:\n"),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, 0, text.len());
        b.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    let probe = probe_binary();
    let mut h = header(tar::EntryType::Regular, 0o4755, 0, probe.len());
    b.append_data(&mut h, "probe-suid", probe).unwrap();
    b.into_inner().unwrap()
}

/// The host's loopback (a server this test starts), the daemon's port, an
/// abstract unix socket of the host, the engine's and the agent's sockets:
/// none reachable. The sandbox's own loopback works (the control).
fn host_loopback_and_sockets_are_unreachable(rt: Rt) {
    let d = daemon(rt, "");
    let id = session_with_probe(&d);
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let abstract_name = format!("sandkasten-escape-{}", random_hex(12));
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    abstract_listener.set_nonblocking(true).unwrap();

    assert_outcomes(
        rt,
        &d,
        &id,
        &[
            one("loopback_self", "ok"),
            one("docker_socket", "ENOENT"),
            one("containerd_socket", "ENOENT"),
        ],
    );
    let try_ = |cmd: String| d.sh(&id, &format!("/tmp/probe {cmd}"));
    assert_eq!(
        try_(format!("connect-tcp {host_port}")),
        "connect-tcp ECONNREFUSED\n",
        "{rt:?}: a server on the host's 127.0.0.1"
    );
    assert_eq!(
        try_(format!("connect-tcp {}", d.port)),
        "connect-tcp ECONNREFUSED\n",
        "{rt:?}: the daemon's port"
    );
    assert_eq!(
        try_(format!("connect-abstract {abstract_name}")),
        "connect-abstract ECONNREFUSED\n",
        "{rt:?}: an abstract unix socket of the host"
    );
    // The agent's socket: on native a host path no sandbox can name; on
    // docker bound at /.sandkasten/run (root's, mode 0700).
    let (agent_sock, outcome) = match rt {
        Rt::Native => (
            d.data_dir.join("sessions").join(&id).join("agent.sock"),
            "ENOENT",
        ),
        Rt::Docker => (PathBuf::from("/.sandkasten/run/agent.sock"), "EACCES"),
    };
    assert_eq!(
        try_(format!("connect-unix {}", agent_sock.display())),
        format!("connect-unix {outcome}\n"),
        "{rt:?}: the agent's socket"
    );
    // Nothing reached the host's listeners.
    for (what, e) in [
        ("tcp", host.accept().map(|_| ()).err()),
        ("abstract", abstract_listener.accept().map(|_| ()).err()),
    ] {
        assert_eq!(
            e.map(|e| e.kind()),
            Some(ErrorKind::WouldBlock),
            "{rt:?}: the host's {what} listener got a connection"
        );
    }
}

/// A second session's processes are invisible and out of signal reach,
/// its /workspace unreachable, from the first.
fn other_sessions_are_invisible(rt: Rt) {
    let d = daemon(rt, "");
    let a = session_with_probe(&d);
    let b = session_with_probe(&d);
    let token = format!("escape{}", random_hex(12));
    // B: a process marked with the token (started once the fifo read
    // returns: the probe has exec'd by then) and a file in /workspace.
    let held = d.sh(
        &b,
        &format!(
            "mkfifo /tmp/held; /tmp/probe hold {token} > /tmp/held & read -r line < /tmp/held; \
             echo \"$line\"; echo secret > /workspace/secret-{token}"
        ),
    );
    assert_eq!(held, "held\n");
    let host_pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&token))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(
        host_pids.len(),
        1,
        "the held probe's host pid: {host_pids:?}"
    );
    let host_pid = host_pids[0];
    // A pattern that matches the token but not itself: grep's own
    // cmdline must not count.
    let pattern = format!("escap[e]{}", &token["escape".len()..]);
    // Control: B sees its own process and file.
    assert_eq!(
        d.sh(
            &b,
            &format!("grep -l '{pattern}' /proc/[0-9]*/cmdline | wc -l")
        )
        .trim(),
        "1"
    );
    assert_eq!(
        d.sh(&b, &format!("cat /workspace/secret-{token}")),
        "secret\n"
    );

    // A: no process of B by its host pid, none by its token.
    assert_eq!(
        d.sh(&a, &format!("/tmp/probe kill {host_pid}")),
        "kill ESRCH\n",
        "{rt:?}: session a can signal session b's process"
    );
    assert_eq!(
        d.sh(
            &a,
            &format!("grep -l '{pattern}' /proc/[0-9]*/cmdline 2>/dev/null | wc -l")
        )
        .trim(),
        "0",
        "{rt:?}: session a sees session b's process"
    );
    // A: B's file is nowhere, not through B's /proc root, not at the
    // host paths of B's session or volume.
    let v = d.exec(
        &a,
        &format!(
            "cat /proc/{host_pid}/root/workspace/secret-{token} {}/secret-{token} \
             /var/lib/docker/volumes/sandkasten-ws-{b}/_data/secret-{token} 2>&1; \
             find / /tmp /workspace /home -xdev -name 'secret-{token}' 2>/dev/null",
            d.data_dir
                .join("sessions")
                .join(&b)
                .join("workspace")
                .display()
        ),
    );
    let out = v["output"].as_str().unwrap();
    assert!(
        !out.contains("secret\n") && !out.contains(&format!("/secret-{token}\n")),
        "{rt:?}: session a reached session b's workspace: {out}"
    );
    assert_eq!(
        out.matches("No such file or directory").count(),
        3,
        "{rt:?}: {out}"
    );
}

/// `/workspace` is mounted `nosuid,nodev` (a setuid file the sandbox
/// leaves in a workspace, which lives on the host, gives nothing): on
/// native by the launcher's bind, on docker by `mount_setattr` from a
/// thread in the container's namespace (the engine's volume mounts have no
/// such option); for an ephemeral workspace and a persistent one.
fn workspace_is_nosuid_nodev(rt: Rt) {
    let d = daemon(rt, "");
    let ephemeral = d.new_session();
    let r = d.post(
        "/v1/sessions",
        &serde_json::json!({"workspace_id": "suid-check"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let persistent = r.json["id"].as_str().unwrap().to_string();
    for id in [&ephemeral, &persistent] {
        let line = d.sh(id, "grep ' /workspace ' /proc/self/mountinfo");
        let opts = line
            .split_whitespace()
            .nth(5)
            .unwrap_or_default()
            .to_string();
        let opts: Vec<&str> = opts.split(',').collect();
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{rt:?}: /workspace mount options {opts:?} in {line:?}"
        );
    }
}

/// A sandbox with a network holds its link as the daemon made it: neither
/// the sandbox user nor the sandbox's root can take it down, give it
/// another address (a forged source) or route through it, and raw and
/// packet sockets (forged packets) are refused.
fn the_network_link_is_the_daemons(rt: Rt) {
    let d = daemon(rt, "network:\n  allow_full: true\n");
    let id = d.create_session(serde_json::json!({"network": {"mode": "full"}}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.write(&id, "/tmp/probe", probe_binary());
    d.sh(&id, "chmod 755 /tmp/probe");
    let link = || {
        d.sh(
            &id,
            "ip -o link show dev eth0 | grep -o '<[^>]*>'; ip -o -4 addr show dev eth0",
        )
    };
    let before = link();
    assert!(before.contains(",UP"), "{rt:?}: {before}");
    assert_outcomes(
        rt,
        &d,
        &id,
        &[
            one("netlink_route_dump", "ok:lo,eth0"),
            one("eth0_down", "EPERM"),
            one("eth0_newaddr", "EPERM"),
            one("eth0_newroute", "EPERM"),
            one("raw_socket", "EPERM"),
            one("packet_socket", "EAFNOSUPPORT"),
        ],
    );
    // The sandbox's root (the processes API's `user: root`) no more.
    let mut s = d
        .sse(
            d.request(
                reqwest::Method::POST,
                &format!("/v1/sessions/{id}/processes/stream"),
            )
            .json(&serde_json::json!({
                "argv": ["/tmp/probe", "run", "eth0_down", "eth0_newaddr", "eth0_newroute", "raw_socket"],
                "user": "root",
            })),
        )
        .unwrap_or_else(|r| panic!("processes/stream: {} {}", r.status, r.text));
    let mut out = String::new();
    while let Some(e) = s.next_event() {
        if e.event == "stdout" {
            out.push_str(e.data["data"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(
        out, "eth0_down EPERM\neth0_newaddr EPERM\neth0_newroute EPERM\nraw_socket EPERM\n",
        "{rt:?}: as the sandbox's root"
    );
    assert_eq!(link(), before, "{rt:?}: the link changed");
}

macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $name() { super::$name(super::Rt::Native) })*
        }
        mod docker {
            $(#[test] fn $name() { super::$name(super::Rt::Docker) })*
        }
    };
}

on_both_runtimes!(
    mounts_and_namespaces,
    pid_1_is_out_of_reach,
    kernel_interfaces,
    devices_sockets_and_netlink,
    proc_sys_and_sys,
    setuid_binary_in_the_image_gives_no_privilege,
    host_loopback_and_sockets_are_unreachable,
    other_sessions_are_invisible,
    workspace_is_nosuid_nodev,
    the_network_link_is_the_daemons,
);
