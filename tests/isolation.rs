//! Isolation end to end: who commands run as, what of the host a sandbox
//! can see or touch (files, symlinks through the files API, /proc, mounts,
//! namespaces, hostname, network), and that destroy leaves nothing behind.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Asserts that the tools a negative test relies on exist inside the
/// sandbox, so that "command failed" cannot mean "command not found".
#[track_caller]
fn require_tools(d: &Daemon, id: &str, tools: &[&str]) {
    for t in tools {
        let v = d.exec(id, &format!("command -v {t}"));
        assert_eq!(
            v["exit_code"], 0,
            "`{t}` is not available inside the sandbox (native: the base image is the host's \
             /usr, install it on the host; docker: see docker_image in tests/common): {v}"
        );
    }
}

fn host_users() -> Vec<String> {
    fs::read_to_string("/etc/passwd")
        .expect("reading the host's /etc/passwd")
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|u| !u.is_empty() && !["root", "nobody", "sandbox"].contains(u))
        .map(str::to_string)
        .collect()
}

#[test]
fn commands_run_as_the_sandbox_user() {
    let d = Daemon::start(None);
    let id = d.new_session();
    assert_eq!(d.sh(&id, "id -u"), format!("{}\n", sandbox_uid()));
    assert_eq!(d.sh(&id, "id -un"), "sandbox\n");
    assert_eq!(d.sh(&id, "id -g"), format!("{}\n", sandbox_uid()));
    assert_eq!(d.sh(&id, "pwd"), "/workspace\n");
    assert_eq!(
        d.sh(&id, "stat -c %u /workspace"),
        format!("{}\n", sandbox_uid())
    );
}

/// Native: root inside is not root on the host (a user namespace maps it
/// to an unprivileged uid). Docker has no user namespace (documented):
/// PID 1 is host root with six capabilities and no-new-privileges, every
/// other process runs as the sandbox user (`docker.sandbox_uid`, no host
/// account's) without capabilities.
#[test]
fn sandbox_processes_hold_no_host_root_power() {
    let d = Daemon::start(None);
    let id = d.new_session();
    if on_docker() {
        return docker_root_is_pid_1_only_with_six_capabilities(&d, &id);
    }
    let map = d.sh(&id, "cat /proc/self/uid_map");
    let mut lines = 0;
    for line in map.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|_| panic!("bad uid_map line {line:?}"))
            })
            .collect();
        assert_eq!(f.len(), 3, "bad uid_map line {line:?}");
        let (inside, outside, count) = (f[0], f[1], f[2]);
        assert!(
            outside != 0 && count > 0,
            "uid_map maps host root into the sandbox: {line:?} (inside {inside})"
        );
        lines += 1;
    }
    assert!(lines > 0, "empty uid_map: not in a user namespace");

    // From the host: every process of the sandbox (those in a child pid
    // namespace) runs under a non-root host uid.
    let own_depth = proc_status_field(std::process::id() as i32, "NSpid")
        .map(|s| s.split_whitespace().count())
        .unwrap_or(1);
    let pids = pids_in_session_cgroups(&id);
    let inside: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| {
            proc_status_field(p, "NSpid")
                .map(|s| s.split_whitespace().count() > own_depth)
                .unwrap_or(false)
        })
        .collect();
    assert!(
        inside.len() >= 2,
        "expected the agent and the shell in session {id}'s cgroup in a child pid namespace; \
         cgroup pids {pids:?}, in a child pid namespace {inside:?}"
    );
    for p in inside {
        let uids = proc_status_field(p, "Uid").unwrap_or_default();
        assert!(
            uids.split_whitespace().all(|u| u != "0"),
            "sandbox process {p} runs as host root: Uid {uids}"
        );
    }
}

/// CHOWN, DAC_OVERRIDE, FOWNER, KILL, SETGID, SETUID (bits 0, 1, 3, 5, 6, 7).
const DOCKER_PID1_CAPS: &str = "00000000000000eb";

fn docker_root_is_pid_1_only_with_six_capabilities(d: &Daemon, id: &str) {
    // No user namespace: the identity map.
    let map = d.sh(id, "cat /proc/self/uid_map");
    let f: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(f, ["0", "0", "4294967295"], "uid_map on docker: {map:?}");

    // Start a background process too, then look from the host.
    d.sh(id, "sleep 100 &");
    let init = sandbox_init_pid(id).expect("the container's PID 1");
    let pids = sandbox_pids(id);
    assert!(
        pids.contains(&init) && pids.len() >= 3,
        "expected PID 1 {init}, the shell and a sleep in the container's cgroup: {pids:?}"
    );
    let field = |p: i32, f: &str| proc_status_field(p, f).unwrap_or_default();
    assert_eq!(innermost_pid(init), Some(1));
    assert!(
        field(init, "Uid").split_whitespace().all(|u| u == "0"),
        "PID 1: Uid {}",
        field(init, "Uid")
    );
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(init, key), DOCKER_PID1_CAPS, "PID 1 {key}");
    }
    assert_eq!(field(init, "NoNewPrivs"), "1", "PID 1 NoNewPrivs");
    for p in pids.into_iter().filter(|&p| p != init) {
        let uids = field(p, "Uid");
        let cmdline = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if on_remote_engine() && cmdline.starts_with(b"/.sandkasten/bin/sandkasten-agent\0relay\0")
        {
            // The daemon's way in on a remote engine: root (so the sandbox
            // user cannot signal it), without a capability (below).
            assert!(
                uids.split_whitespace().all(|u| u == "0"),
                "relay {p}: Uid {uids}"
            );
            assert_eq!(field(p, "NoNewPrivs"), "1", "relay {p} NoNewPrivs");
        } else {
            assert!(
                uids.split_whitespace()
                    .all(|u| u == sandbox_uid().to_string()),
                "container process {p} runs as Uid {uids}, not the sandbox user"
            );
        }
        assert_eq!(field(p, "CapEff"), "0000000000000000", "process {p} CapEff");
        assert_eq!(field(p, "CapPrm"), "0000000000000000", "process {p} CapPrm");
    }
}

#[test]
fn sandbox_user_has_no_capabilities_and_a_seccomp_filter() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let status = d.sh(&id, "cat /proc/self/status");
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
            .trim()
            .to_string()
    };
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("CapPrm"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no seccomp filter");
}

#[test]
fn pid_1_is_the_agent_and_proc_is_private() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let inside = d.sh(&id, "tr '\\0' ' ' < /proc/1/cmdline");
    let host = fs::read_to_string("/proc/1/cmdline")
        .unwrap_or_default()
        .replace('\0', " ");
    assert_ne!(inside, host, "/proc/1 inside is the host's init");
    assert!(
        inside.to_lowercase().contains("agent"),
        "PID 1 inside is not our agent: {inside:?}"
    );
    let n: usize = d
        .sh(&id, "ls /proc | grep -c '^[0-9][0-9]*$'")
        .trim()
        .parse()
        .unwrap();
    assert!(
        n < 20,
        "{n} processes visible: /proc is not the sandbox's own"
    );
    let cmdlines = d.sh(
        &id,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; true",
    );
    assert!(
        !cmdlines.contains(BIN) && !cmdlines.contains(" serve"),
        "the daemon is visible inside: {cmdlines:?}"
    );
}

#[test]
fn host_files_are_invisible() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let in_tmp = HostMarker::in_temp_dir();
    let in_root = HostMarker::in_dir(Path::new("/root"));

    // Control: find does search the sandbox's root file system.
    let found = d.sh(
        &id,
        "find / -xdev -name passwd -path '/etc/*' 2>/dev/null; true",
    );
    assert!(
        found.contains("/etc/passwd"),
        "find found nothing: {found:?}"
    );

    for m in [&in_tmp, &in_root] {
        let name = m.file_name();
        let out = d
            .exec(
                &id,
                &format!(
                    "find / -xdev -name '{name}' 2>/dev/null; \
                     find /tmp /workspace /root /home /var /opt /mnt /srv /run -name '{name}' 2>/dev/null; true"
                ),
            )["output"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !out.contains(&name),
            "host file {} found inside: {out}",
            m.path_str()
        );
        let out = d.exec(&id, &format!("cat '{}' 2>&1", m.path_str()));
        assert_ne!(out["exit_code"], 0, "host file readable inside: {out}");
        assert!(
            !out["output"].as_str().unwrap().contains(&m.content),
            "host content read inside: {out}"
        );
        let grep = d.exec(
            &id,
            &format!(
                "grep -rsl -- '{}' /root /tmp /home /workspace /etc /var /opt /srv 2>/dev/null; true",
                m.content
            ),
        );
        assert_eq!(grep["output"], "", "host content found inside: {grep}");
        let r = d.read_resp(&id, &m.path_str());
        r.assert_client_error("fs/read of a host path");
        assert!(!r.text.contains(&b64(m.content.as_bytes())));
    }
}

#[test]
fn etc_is_generated_not_the_hosts() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let passwd = d.sh(&id, "cat /etc/passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("sandbox:")
            && l.split(':').nth(2) == Some(sandbox_uid().to_string().as_str())),
        "no sandbox user with uid {} in /etc/passwd: {passwd}",
        sandbox_uid()
    );
    for u in host_users() {
        assert!(
            !passwd.lines().any(|l| l.starts_with(&format!("{u}:"))),
            "host user {u} appears in the sandbox's /etc/passwd: {passwd}"
        );
    }
    let shadow = d.exec(&id, "cat /etc/shadow 2>&1");
    let text = shadow["output"].as_str().unwrap();
    for u in host_users() {
        assert!(
            !text.lines().any(|l| l.starts_with(&format!("{u}:"))),
            "the host's /etc/shadow ({u}) is readable inside: {text}"
        );
    }
    if let Ok(host_shadow) = fs::read_to_string("/etc/shadow") {
        for line in host_shadow.lines() {
            let hash = line.split(':').nth(1).unwrap_or("");
            if hash.starts_with('$') {
                assert!(
                    !text.contains(hash),
                    "a host password hash is readable inside"
                );
            }
        }
    }
}

#[test]
fn symlink_to_root_through_the_files_api_stays_inside() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let in_tmp = HostMarker::in_temp_dir();
    let in_root = HostMarker::in_dir(Path::new("/root"));
    d.sh(&id, "ln -s / /workspace/root");

    let inside = d.exec(&id, "cat /etc/hostname");
    let r = d.read_resp(&id, "/workspace/root/etc/hostname");
    assert!(
        r.status < 500,
        "5xx on a symlinked read: {} {}",
        r.status,
        r.text
    );
    if r.status == 200 {
        let got = unb64(r.json["content_base64"].as_str().unwrap());
        assert_eq!(inside["exit_code"], 0, "API read what cat cannot: {inside}");
        assert_eq!(
            String::from_utf8_lossy(&got),
            inside["output"].as_str().unwrap(),
            "read through / symlink differs from the sandbox's own /etc/hostname"
        );
    }
    for m in [&in_tmp, &in_root] {
        let r = d.read_resp(&id, &format!("/workspace/root{}", m.path_str()));
        r.assert_client_error("read of a host file through a / symlink");
        assert!(!r.text.contains(&b64(m.content.as_bytes())));
    }

    // A write through the symlink lands in the sandbox's /tmp, not the host's.
    let name = format!("sandkasten-e2e-{}", random_hex(12));
    let r = d.write_with(
        &id,
        json!({"path": format!("/workspace/root/tmp/{name}"), "text": "inside"}),
    );
    assert!(r.status < 500, "{} {}", r.status, r.text);
    assert!(
        !Path::new("/tmp").join(&name).exists(),
        "a write through a symlink created /tmp/{name} on the host"
    );
    if r.status == 200 {
        assert_eq!(d.sh(&id, &format!("cat /tmp/{name}")), "inside");
    }
}

#[test]
fn symlink_to_proc_1_root_stays_inside() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let in_tmp = HostMarker::in_temp_dir();
    let in_root = HostMarker::in_dir(Path::new("/root"));
    d.sh(
        &id,
        "ln -s /proc/1/root /workspace/p1; ln -s /proc/self/root /workspace/pself",
    );

    for link in ["p1", "pself"] {
        for m in [&in_tmp, &in_root] {
            let r = d.read_resp(&id, &format!("/workspace/{link}{}", m.path_str()));
            r.assert_client_error(&format!("read of a host file through {link}"));
            assert!(!r.text.contains(&b64(m.content.as_bytes())));
        }
        let r = d.read_resp(&id, &format!("/workspace/{link}/etc/passwd"));
        assert!(r.status < 500, "{} {}", r.status, r.text);
        if r.status == 200 {
            let got = unb64(r.json["content_base64"].as_str().unwrap());
            assert_eq!(
                String::from_utf8_lossy(&got),
                d.sh(&id, "cat /etc/passwd"),
                "/etc/passwd through {link} is not the sandbox's"
            );
        }
        let name = format!("sandkasten-e2e-{}", random_hex(12));
        let r = d.write_with(
            &id,
            json!({"path": format!("/workspace/{link}/tmp/{name}"), "text": "x"}),
        );
        assert!(r.status < 500, "{} {}", r.status, r.text);
        assert!(
            !Path::new("/tmp").join(&name).exists(),
            "a write through {link} reached the host's /tmp"
        );
    }
}

#[test]
fn writes_through_symlinks_never_reach_the_host() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let name = format!("sandkasten-e2e-{}", random_hex(12));
    let host_targets = [
        format!("/usr/bin/{name}"),
        format!("/root/{name}"),
        format!("/etc/{name}"),
    ];
    d.sh(
        &id,
        &format!(
            "ln -s /usr/bin/{name} /workspace/l-usr; ln -s /root/{name} /workspace/l-root; \
             ln -s /proc/1/root/etc/{name} /workspace/l-etc; ln -s /root /workspace/d-root"
        ),
    );
    for path in [
        "/workspace/l-usr".to_string(),
        "/workspace/l-root".to_string(),
        "/workspace/l-etc".to_string(),
        format!("/workspace/d-root/{name}"),
    ] {
        let r = d.write_with(&id, json!({"path": path, "text": "pwned"}));
        assert!(r.status < 500, "write to {path}: {} {}", r.status, r.text);
        for t in &host_targets {
            assert!(
                !Path::new(t).exists(),
                "a write to {path} created {t} on the host"
            );
        }
    }
}

#[test]
fn system_dirs_are_read_only() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let name = format!("sandkasten-e2e-{}", random_hex(12));
    d.write_with(
        &id,
        json!({"path": format!("/usr/bin/{name}"), "text": "x"}),
    )
    .assert_client_error("fs/write to /usr/bin");
    let v = d.exec(&id, &format!("touch /usr/bin/{name}"));
    assert_ne!(v["exit_code"], 0, "touch in /usr/bin worked: {v}");
    let v = d.exec(&id, "echo x >> /usr/bin/bash");
    assert_ne!(v["exit_code"], 0, "appending to /usr/bin/bash worked: {v}");
    assert!(
        !Path::new(&format!("/usr/bin/{name}")).exists(),
        "/usr/bin/{name} appeared on the host"
    );
}

#[test]
fn mounts_and_new_namespaces_are_refused() {
    let d = Daemon::start(None);
    let id = d.new_session();
    require_tools(&d, &id, &["mount", "unshare"]);
    for cmd in [
        "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m",
        "unshare -U true",
        "unshare -r true",
        "unshare -m true",
        "unshare -rm sh -c 'mount -t tmpfs none /tmp/m'",
    ] {
        let v = d.exec(&id, cmd);
        assert_ne!(v["exit_code"], 0, "`{cmd}` succeeded inside: {v}");
    }
    assert_eq!(
        d.sh(&id, "grep -c ' /tmp/m ' /proc/self/mountinfo; true"),
        "0\n",
        "a tmpfs got mounted inside"
    );
}

#[test]
fn hostname_is_the_sandboxs_own() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let inside = d.sh(&id, "hostname").trim().to_string();
    assert!(!inside.is_empty(), "empty hostname inside");
    assert_ne!(inside, host, "the sandbox has the host's hostname");
    let v = d.exec(&id, "hostname evil-e2e");
    assert_ne!(
        v["exit_code"], 0,
        "the sandbox user could set the hostname: {v}"
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        host,
        "the host's hostname changed"
    );
}

#[test]
fn network_is_loopback_only_and_the_daemon_is_unreachable() {
    let d = Daemon::start(None);
    let id = d.new_session();
    require_tools(&d, &id, &["bash", "busybox", "ip"]);

    // Control: loopback inside works, so failures below are about reach.
    let v = d
        .exec_with(
            &id,
            json!({
                "cmd": "busybox nc -l -p 7777 > /tmp/got & \
                    for i in $(seq 50); do echo 'loopback ok' 2>/dev/null > /dev/tcp/127.0.0.1/7777 \
                    && break; sleep 0.1; done; wait $!; cat /tmp/got",
                "timeout_ms": 15000
            }),
        )
        .expect(200, "loopback control");
    assert_eq!(v["output"], "loopback ok\n", "{v}");

    let r = d.exec_with(
        &id,
        json!({"cmd": format!("bash -c 'echo > /dev/tcp/127.0.0.1/{}'", d.port), "timeout_ms": 15000}),
    );
    let v = r.expect(200, "connect to the daemon's port");
    assert_eq!(v["timed_out"], false, "{v}");
    assert_ne!(
        v["exit_code"], 0,
        "the sandbox reached the daemon on 127.0.0.1:{}: {v}",
        d.port
    );

    let dev = d.sh(&id, "cat /proc/net/dev");
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "/proc/net/dev: {dev}");
    let links = d.sh(&id, "ip -o link");
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap())
        .collect();
    assert_eq!(names, ["lo"], "ip link: {links}");
}

#[test]
fn sessions_cannot_see_each_other() {
    let d = Daemon::start(None);
    let a = d.new_session();
    let b = d.new_session();
    d.sh(
        &a,
        "echo secret-a > /tmp/a.txt; echo ws-a > /workspace/a.txt; sleep 100 &",
    );
    let v = d.exec(&b, "cat /tmp/a.txt /workspace/a.txt 2>&1");
    assert_ne!(v["exit_code"], 0, "{v}");
    assert!(!v["output"].as_str().unwrap().contains("secret-a"), "{v}");
    assert_eq!(d.sh(&b, "ls -A /workspace"), "");
    assert_eq!(
        d.sh(
            &b,
            "cat /proc/[0-9]*/comm 2>/dev/null | grep -cx sleep; true"
        ),
        "0\n",
        "session b sees session a's processes"
    );
    d.read_resp(&b, "/tmp/a.txt")
        .assert_error(404, "FILE_NOT_FOUND", "a's /tmp from b");
}

#[test]
fn path_traversal_in_the_files_api_stays_inside() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let in_root = HostMarker::in_dir(Path::new("/root"));
    let in_tmp = HostMarker::in_temp_dir();
    for p in [
        format!("../../../..{}", in_root.path_str()),
        format!("/workspace/../../..{}", in_root.path_str()),
        format!("../../../..{}", in_tmp.path_str()),
    ] {
        let r = d.read_resp(&id, &p);
        r.assert_client_error(&format!("read of {p}"));
    }
    let name = format!("sandkasten-e2e-{}", random_hex(12));
    let r = d.write_with(
        &id,
        json!({"path": format!("../../../../tmp/{name}"), "text": "t"}),
    );
    assert!(r.status < 500, "{} {}", r.status, r.text);
    assert!(
        !Path::new("/tmp").join(&name).exists(),
        "a ../ write reached the host's /tmp"
    );
}

#[test]
fn destroy_leaves_no_process_cgroup_mount_or_files() {
    let d = Daemon::start(None);
    let id = d.new_session();
    // Background jobs, one in its own session, one immune to SIGHUP.
    d.sh(
        &id,
        "sleep 1000 & sleep 1000 & (setsid sleep 1000 > /dev/null 2>&1 &); \
         (trap '' HUP; exec sleep 1000) > /dev/null 2>&1 & echo started",
    );
    d.write_text(&id, "some-file.txt", "data");

    let dirs = sandbox_cgroup_dirs(&id);
    assert!(
        !dirs.is_empty(),
        "no cgroup of session {id} (native: the daemon must name its cgroups \
         sandkasten/<session id>; docker: the container's)"
    );
    let pids = sandbox_pids(&id);
    assert!(
        pids.len() >= 6,
        "expected agent, shell and 4 sleeps in session {id}'s cgroups, found {pids:?}"
    );
    let sdir = sandbox_dir(&d.home, &id);
    assert!(sdir.is_dir(), "no sandbox dir at {}", sdir.display());

    d.delete(&id);

    assert_sandbox_gone(&d.home, &id, "destroyed session");
    assert!(
        wait_for(Duration::from_secs(5), || dirs.iter().all(|p| !p.exists())),
        "cgroups left after destroy: {:?}",
        dirs.iter().filter(|p| p.exists()).collect::<Vec<_>>()
    );
    assert!(!d.listed_ids().contains(&id));
}

/// Native internals: each sandbox's host uid range.
mod native_only {
    use super::*;
    use std::sync::OnceLock;

    /// Found by an attack on the launch without pivot_root: the sandbox
    /// init (a fork that never execs) kept the launcher's descriptor of
    /// the host's /proc, and a dumpable child of the agent handed it to
    /// the sandbox's root (pidfd_getfd), who could then list every host
    /// process. The init now holds nothing of the host's procfs.
    #[test]
    fn the_sandbox_init_holds_no_descriptor_of_the_hosts_proc() {
        require_native("the sandbox init's descriptors");
        use std::os::unix::fs::MetadataExt;
        let d = Daemon::start(None);
        let id = d.new_session();
        assert_eq!(d.sh(&id, "echo ok"), "ok\n");
        let init = sandbox_init_pid(&id).expect("the sandbox init");
        let host_proc = std::fs::metadata("/proc").unwrap().dev();
        let mut seen = 0;
        for e in std::fs::read_dir(format!("/proc/{init}/fd"))
            .unwrap()
            .flatten()
        {
            seen += 1;
            let Ok(m) = std::fs::metadata(e.path()) else {
                continue;
            };
            assert_ne!(
                m.dev(),
                host_proc,
                "fd {:?} of the sandbox init is the host's procfs ({:?})",
                e.file_name(),
                std::fs::read_link(e.path())
            );
        }
        assert!(seen >= 3, "the init's descriptors were read ({seen})");
    }

    /// `tests/budgets/hold.c`, built once per test process.
    fn hold_binary() -> &'static [u8] {
        static HOLD: OnceLock<Vec<u8>> = OnceLock::new();
        HOLD.get_or_init(|| static_c_binary("tests/budgets/hold.c", "the kernel budget test"))
    }

    fn session_with_hold(d: &Daemon) -> String {
        let id = d.new_session();
        d.write(&id, "/tmp/hold", hold_binary());
        d.sh(&id, "chmod 755 /tmp/hold; mkfifo /tmp/hold.out");
        id
    }

    /// Runs `hold <budget> <n>` in session `id` in the background (it keeps
    /// what it took until `release`) and returns its line: `<taken>
    /// <errno of the first failure or ok>`.
    fn take(d: &Daemon, id: &str, budget: &str, n: u32) -> String {
        let line = d.sh(
            id,
            &format!(
                "/tmp/hold {budget} {n} > /tmp/hold.out & echo $! >> /tmp/hold.pids; \
                 read -r line < /tmp/hold.out; echo \"$line\""
            ),
        );
        line.trim().to_string()
    }

    fn release(d: &Daemon, id: &str) {
        d.sh(id, "kill $(cat /tmp/hold.pids); rm /tmp/hold.pids");
    }

    /// Host uid of root inside session `id` (its uid_map's one line).
    fn host_root(d: &Daemon, id: &str) -> u64 {
        let map = d.sh(id, "cat /proc/self/uid_map");
        let f: Vec<u64> = map.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(f.len(), 3, "one uid_map line: {map:?}");
        assert_eq!((f[0], f[2]), (0, 65_536), "{map:?}");
        f[1]
    }

    /// Issue 15, point 7: one session holding all 128 inotify instances
    /// made `inotify_init` fail in every other session, because every
    /// sandbox ran in host uids 100000-165535 and the kernel charges a user
    /// namespace's inotify instances (and message queue bytes, pipe
    /// buffers) to its owner's host uid. The shared range (`uid_ranges:
    /// 0`, what a host without idmapped mounts gets) still shows the
    /// finding; the default gives each sandbox a range, and budget, of its
    /// own.
    #[test]
    fn kernel_budgets_are_each_sandboxs_own() {
        {
            let d = Daemon::start(Some("uid_ranges: 0\n"));
            let (a, b) = (session_with_hold(&d), session_with_hold(&d));
            assert_eq!(host_root(&d, &a), 100_000);
            assert_eq!(host_root(&d, &b), 100_000);
            let held = take(&d, &a, "inotify", 4096);
            assert!(held.ends_with(" EMFILE"), "a takes the budget: {held}");
            // Held only this long: the shared range is every such sandbox's.
            let other = take(&d, &b, "inotify", 1);
            eprintln!("shared range: a took {held:?}, b then {other:?}");
            release(&d, &a);
            release(&d, &b);
            assert_eq!(other, "0 EMFILE", "shared range: a's instances starve b");
        }

        let d = Daemon::start(None);
        let (a, b) = (session_with_hold(&d), session_with_hold(&d));
        let (ra, rb) = (host_root(&d, &a), host_root(&d, &b));
        assert!(
            ra != rb && ra > 165_535 && rb > 165_535 && ra % 65_536 == rb % 65_536,
            "own ranges above the shared one: a {ra}, b {rb}"
        );
        let held = take(&d, &a, "inotify", 4096);
        eprintln!("own ranges: a took {held:?} inotify instances");
        let n: u32 = held.split(' ').next().unwrap().parse().unwrap();
        assert!(
            held.ends_with(" EMFILE") && n >= 100,
            "a takes its own budget (max_user_instances, 128 here): {held}"
        );
        assert_eq!(take(&d, &b, "inotify", 1), "1 ok", "b keeps its own");
        let queues = take(&d, &a, "mqueue", 4096);
        eprintln!("own ranges: a took {queues:?} message queues");
        assert!(
            queues.ends_with(" EMFILE") || queues.ends_with(" ENOMEM"),
            "a takes its message queue bytes (RLIMIT_MSGQUEUE): {queues}"
        );
        assert_eq!(take(&d, &b, "mqueue", 1), "1 ok", "b keeps its own");
        // A range is the sandbox's while it lives: a new session takes a
        // range no live one holds.
        release(&d, &a);
        d.delete(&a);
        let c = d.new_session();
        assert_ne!(host_root(&d, &c), rb);
    }

    /// What sandboxes share keeps one on-disk ownership whatever their
    /// range: a workspace written by one session is the sandbox user's in
    /// the next (another range), and the session-less file API (host uid
    /// 101000) writes into what both made.
    #[test]
    fn a_workspace_is_the_same_to_sessions_of_every_range() {
        let d = Daemon::start(None);
        let ws = ws_id("ranges");
        let on = |d: &Daemon| {
            d.create_session(json!({"workspace_id": ws}))["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let a = on(&d);
        d.sh(&a, "echo from-a > /workspace/a.txt; mkdir /workspace/d");
        let ra = host_root(&d, &a);
        d.delete(&a);
        // The lowest free range is a's again: taken by another first.
        let keep = d.new_session();
        assert_eq!(host_root(&d, &keep), ra, "a's range is free again");
        let b = on(&d);
        assert_ne!(host_root(&d, &b), ra, "b runs in another range");
        assert_eq!(
            d.sh(&b, "stat -c '%u %g' /workspace/a.txt /workspace/d"),
            "1000 1000\n1000 1000\n"
        );
        d.sh(&b, "echo from-b >> /workspace/a.txt; touch /workspace/d/b");
        let r = d.post(
            &format!("/v1/workspaces/{ws}/fs/write"),
            &json!({"path": "d/host.txt", "text": "session-less"}),
        );
        r.expect(
            200,
            "a session-less write into a file tree both sessions made",
        );
        assert_eq!(
            d.sh(&b, "cat /workspace/a.txt /workspace/d/host.txt"),
            "from-a\nfrom-b\nsession-less"
        );
        assert_eq!(d.sh(&b, "stat -c %u /workspace/d/host.txt"), "1000\n");
        d.delete(&b);
        d.delete(&keep);
    }

    /// A sandbox keeps its range while it lives, across a daemon's
    /// SIGKILL and a hibernation (a wake takes the same range), and a new
    /// session after the restart gets a range none of them holds.
    #[test]
    fn ranges_survive_a_restart_and_a_hibernation() {
        let d1 = Daemon::start(None);
        let a = d1.new_session();
        let h = d1.new_session();
        let (ra, rh) = (host_root(&d1, &a), host_root(&d1, &h));
        d1.sh(&h, "echo kept > /tmp/kept; echo kept > ~/kept");
        d1.post(&format!("/v1/sessions/{h}/hibernate"), &json!({}))
            .expect(200, "hibernate");
        let home = d1.home.clone();
        d1.kill_9();
        let d2 = Daemon::start_in(&home, None);
        let b = d2.new_session();
        let rb = host_root(&d2, &b);
        assert!(
            rb != ra && rb != rh,
            "b {rb} took a held range (a {ra}, h {rh})"
        );
        assert_eq!(host_root(&d2, &a), ra);
        d2.post(&format!("/v1/sessions/{h}/resume"), &json!({}))
            .expect(200, "resume wakes the hibernated session");
        assert_eq!(host_root(&d2, &h), rh, "a wake keeps the range");
        assert_eq!(
            d2.sh(&h, "cat /tmp/kept ~/kept; stat -c %u ~/kept"),
            "kept\nkept\n1000\n"
        );
    }

    /// `uid_ranges` bounds the sandboxes alive at once: a create beyond
    /// answers 503 `CAPACITY_EXHAUSTED` saying why, leaves nothing behind,
    /// and succeeds again once a session is destroyed.
    #[test]
    fn creates_beyond_uid_ranges_answer_capacity_exhausted() {
        let d = Daemon::start(Some("uid_ranges: 2\n"));
        let a = d.new_session();
        let _b = d.new_session();
        let r = d.try_create_session(json!({}));
        r.assert_error(503, "CAPACITY_EXHAUSTED", "a third sandbox with two ranges");
        let msg = r.json["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("uid_ranges"),
            "the message names the setting: {msg}"
        );
        assert_eq!(
            d.listed_ids().len(),
            2,
            "nothing is left of the refused create"
        );
        d.delete(&a);
        let c = d.new_session();
        assert_eq!(d.sh(&c, "id -u"), "1000\n");
    }
}
