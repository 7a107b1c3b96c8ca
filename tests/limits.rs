//! Resource limits end to end: memory, pids and cpu from `defaults` are set
//! in the session's cgroup (the container's on docker), enforced inside,
//! reported by stats, and a sandbox that hits them keeps answering.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const MEM_CONFIG: &str = "defaults:\n  mem_limit_mb: 64\n";
const PIDS_CONFIG: &str = "defaults:\n  pids_limit: 32\n";

#[test]
fn memory_limit_kills_the_hog_and_the_session_survives() {
    let d = Daemon::start(Some(MEM_CONFIG));
    let id = d.new_session();
    let r = d.exec_with(
        &id,
        json!({
            "cmd": "bash -c 'x=$(head -c 209715200 /dev/zero | tr \"\\0\" a); echo allocated-${#x}'",
            "timeout_ms": 30000
        }),
    );
    let v = r.expect(200, "exec of a 200 MB allocation");
    assert_eq!(v["timed_out"], false, "{v}");
    assert_ne!(
        v["exit_code"], 0,
        "200 MB allocated under a 64 MB limit: {v}"
    );
    assert!(
        // Not the command text (bash's "Killed" line quotes it): its result.
        !v["output"]
            .as_str()
            .unwrap()
            .contains("allocated-209715200"),
        "the allocation succeeded: {v}"
    );

    let v = d.exec(&id, "head -c 209715200 /dev/zero | tail > /dev/null");
    assert_ne!(
        v["exit_code"], 0,
        "tail buffered 200 MB under a 64 MB limit: {v}"
    );

    assert_eq!(
        d.sh(&id, "echo alive"),
        "alive\n",
        "session died with its hog"
    );
    assert_eq!(d.stats(&id)["memory_limit"], 64 * MIB);
}

#[test]
fn memory_limit_is_set_in_the_cgroup_and_reported() {
    let d = Daemon::start(Some(MEM_CONFIG));
    let id = d.new_session();
    let stats = d.stats(&id);
    assert_eq!(stats["memory_limit"], 64 * MIB, "{stats}");
    let limit = sandbox_cgroup_value(&id, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(limit, (64 * MIB).to_string(), "memory cgroup limit");
    // A modest allocation well below the limit works.
    assert_eq!(
        d.sh(
            &id,
            "bash -c 'x=$(head -c 16777216 /dev/zero | tr \"\\0\" a); echo ${#x}'"
        ),
        "16777216\n"
    );
}

#[test]
fn pids_limit_refuses_forks_and_the_session_recovers() {
    let d = Daemon::start(Some(PIDS_CONFIG));
    let id = d.new_session();
    // Forks in a loop of `sh` (bash would retry a refused fork for 15 s):
    // the shell gives up at the first refusal; the pids of the sleeps that
    // did start are in /tmp/pids, and bash's builtins (no fork needed)
    // count and kill them.
    let script = "rm -f /tmp/pids; \
        sh -c 'for i in $(seq 100); do sleep 30 & echo $! >> /tmp/pids; done'; \
        mapfile -t p < /tmp/pids; echo \"started ${#p[@]}\"; kill \"${p[@]}\"";
    let r = d.exec_with(&id, json!({"cmd": script, "timeout_ms": 30000}));
    let v = r.expect(200, "exec of 100 forks");
    assert_eq!(v["timed_out"], false, "{v}");
    let out = v["output"].as_str().unwrap().to_string();
    let started: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `started` line in {out:?}"));
    assert!(
        started > 0 && started < 32,
        "{started} of 100 started under pids_limit 32: {out}"
    );
    assert!(
        out.to_lowercase().contains("fork"),
        "the shell did not report a refused fork: {out}"
    );

    // The session works again once they are gone.
    assert_eq!(d.sh(&id, "echo recovered; ls / > /dev/null"), "recovered\n");
    let stats = d.stats(&id);
    assert!(stats["pids"].as_u64().unwrap() < 32, "{stats}");
}

#[test]
fn pids_limit_is_set_in_the_cgroup() {
    let d = Daemon::start(Some(PIDS_CONFIG));
    let id = d.new_session();
    assert_eq!(
        sandbox_cgroup_value(&id, "pids", "pids.max", "pids.max"),
        "32"
    );
}

#[test]
fn cpu_limit_sets_the_cgroup_quota() {
    let d = Daemon::start(Some("defaults:\n  cpu_limit: 0.5\n"));
    let id = d.new_session();
    // cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us; v2: cpu.max is
    // "QUOTA PERIOD".
    let quota = sandbox_cgroup_value(&id, "cpu", "cpu.cfs_quota_us", "cpu.max");
    let ratio = match quota.parse::<f64>() {
        Ok(quota) => {
            let period = sandbox_cgroup_value(&id, "cpu", "cpu.cfs_period_us", "cpu.max");
            quota / period.parse::<f64>().unwrap()
        }
        Err(_) => {
            let f: Vec<f64> = quota
                .split_whitespace()
                .map(|x| x.parse().unwrap_or_else(|_| panic!("cpu.max is {quota:?}")))
                .collect();
            f[0] / f[1]
        }
    };
    assert!(
        (ratio - 0.5).abs() < 0.01,
        "cpu quota/period = {ratio}, want 0.5"
    );
}

mod native_only {
    use super::*;

    /// A sandbox holds at most 64 pseudo-terminals (its devpts instance's
    /// `max=`), so it cannot take the terminals its neighbours' shells and
    /// execs need; the daemon raises the host's `kernel.pty.max` to what
    /// `max_sessions` sandboxes can hold (never lowers it).
    #[test]
    fn a_sandbox_cannot_take_the_hosts_terminals() {
        require_native("the docker engine mounts the containers' devpts");
        let d = Daemon::start(Some("max_sessions: 100\n"));
        let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pty/max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let reserve: u64 = std::fs::read_to_string("/proc/sys/kernel/pty/reserve")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            max >= reserve + 100 * 64,
            "kernel.pty.max {max} leaves 100 sandboxes less than 64 terminals each"
        );
        let hog = d.new_session();
        let neighbour = d.new_session();
        let v = d.exec(
            &hog,
            "python3 -c 'import os\nn = 0\ntry:\n    while True:\n        os.openpty()\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)\n'",
        );
        // The shell's terminal and this exec's are two of the 64.
        assert_eq!(v["output"], "62 28\n", "{v}");
        assert_eq!(d.sh(&neighbour, "echo fine"), "fine\n");
        // The hog's terminals closed with its process: the session goes on.
        assert_eq!(d.sh(&hog, "echo again"), "again\n");
    }

    /// Pages of `path` in the page cache (`mincore`).
    fn resident_pages(path: &std::path::Path) -> usize {
        let f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        use std::os::fd::AsRawFd;
        // SAFETY: a shared read-only map of a file we hold open, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap of {}", path.display());
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `vec` has a byte per page of the mapping.
        let r = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(map, len) };
        assert_eq!(r, 0, "mincore of {}", path.display());
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    /// A sandbox that is the first to read a file of its image is charged for
    /// that file's page cache. Unless its memory cgroup is reclaimed before
    /// it is removed, the kernel keeps the removed group (offline, with its
    /// share of the per-cgroup tables) for as long as that cache stays: a
    /// daemon that creates and destroys sandboxes all day piles them up.
    #[test]
    fn a_destroyed_sandbox_leaves_no_page_cache_charged_to_its_cgroup() {
        require_native("the native runtime's own memory cgroups");
        let d = Daemon::start(None);
        let probe = d.data_dir.join("images/base/rootfs/opt/cache-probe");
        std::fs::write(&probe, random_bytes(1 << 20)).unwrap();
        {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&probe).unwrap();
            f.sync_all().unwrap();
            // SAFETY: an advice on a file we hold open.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        assert_eq!(resident_pages(&probe), 0, "the probe left in the cache");

        let id = d.new_session();
        assert_eq!(d.sh(&id, "cat /opt/cache-probe | wc -c"), "1048576\n");
        assert!(
            resident_pages(&probe) > 0,
            "the sandbox's read left nothing in the page cache"
        );
        let cached: u64 = cgroup_value(&id, "memory", "memory.stat", "memory.stat")
            .lines()
            .find_map(|l| {
                l.strip_prefix("cache ")
                    .or_else(|| l.strip_prefix("file "))?
                    .parse()
                    .ok()
            })
            .unwrap();
        assert!(
            cached >= 1 << 20,
            "not charged to the sandbox: {cached} bytes"
        );

        d.delete(&id);
        assert_eq!(
            resident_pages(&probe),
            0,
            "the page cache the sandbox was first to read outlived it, charged to its removed cgroup"
        );
    }
}

/// Processes started past the pids limit are refused as the sandbox's
/// limit (400 `PROCESS_START_FAILED`, saying so), never a 500, and the
/// session goes on once they end.
#[test]
fn process_starts_past_the_pids_limit_are_the_sandboxes_limit() {
    let d = Daemon::start(Some(PIDS_CONFIG));
    let id = d.new_session();
    let mut refused = None;
    for i in 0..40 {
        let r = d.post(
            &format!("/v1/sessions/{id}/processes"),
            &json!({"argv": ["sleep", "300"], "tag": format!("s{i}")}),
        );
        if r.status != 201 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("40 processes under a pids limit of 32");
    r.assert_error(400, "PROCESS_START_FAILED", "a start past the pids limit");
    assert!(r.text.contains("pids_limit"), "{}", r.text);
    for p in d
        .get(&format!("/v1/sessions/{id}/processes"))
        .expect(200, "list")
        .as_array()
        .unwrap()
    {
        let pid = p["pid"].as_u64().unwrap();
        d.post(
            &format!("/v1/sessions/{id}/processes/{pid}/signal"),
            &json!({"signal": 9}),
        );
    }
    // Their ends are seen (each process's output thread in the agent has
    // gone with it) before a start is asked again.
    assert!(
        wait_for(Duration::from_secs(20), || {
            d.get(&format!("/v1/sessions/{id}/processes"))
                .expect(200, "list")
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["running"] == false)
        }),
        "the processes did not end"
    );
    assert_eq!(d.sh(&id, "echo ok"), "ok\n");
    // (Their threads leave the pids cgroup a moment after the end.)
    assert!(
        wait_for(Duration::from_secs(10), || {
            d.post(
                &format!("/v1/sessions/{id}/processes"),
                &json!({"argv": ["true"]}),
            )
            .status
                == 201
        }),
        "no start once the others ended"
    );
}
