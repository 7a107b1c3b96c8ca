//! Resource limits end to end: memory, pids and cpu from `defaults` are set
//! in the session's cgroup, enforced inside, reported by stats, and a
//! sandbox that hits them keeps answering.

mod common;

use common::*;
use serde_json::json;

const MEM_CONFIG: &str = "defaults:\n  mem_limit_mb: 64\n";
const PIDS_CONFIG: &str = "defaults:\n  pids_limit: 32\n";

#[test]
fn memory_limit_kills_the_hog_and_the_session_survives() {
    let d = Daemon::start(Some(MEM_CONFIG));
    let id = d.new_session();
    let r = d.exec_with(
        &id,
        json!({
            "cmd": "python3 -c \"x = b'a' * (200 * 1024 * 1024); print('allocated-' + str(len(x)))\"",
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

    let v = d.exec(&id, "head -c 200M /dev/zero | tail > /dev/null");
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
    let limit = cgroup_value(&id, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(limit, (64 * MIB).to_string(), "memory cgroup limit");
    // A modest allocation well below the limit works.
    assert_eq!(
        d.sh(
            &id,
            "python3 -c \"x = b'a' * (16 * 1024 * 1024); print(len(x))\""
        ),
        "16777216\n"
    );
}

#[test]
fn pids_limit_refuses_forks_and_the_session_recovers() {
    let d = Daemon::start(Some(PIDS_CONFIG));
    let id = d.new_session();
    let script = r#"python3 - <<'EOF'
import subprocess
procs, errors = [], []
for i in range(100):
    try:
        procs.append(subprocess.Popen(["sleep", "5"]))
    except OSError as e:
        errors.append(e)
print("started", len(procs))
print("failed", len(errors))
if errors:
    print("error", errors[0].strerror)
for p in procs:
    p.kill()
for p in procs:
    p.wait()
EOF"#;
    let r = d.exec_with(&id, json!({"cmd": script, "timeout_ms": 30000}));
    let v = r.expect(200, "exec of 100 forks");
    let out = v["output"].as_str().unwrap().to_string();
    let num = |key: &str| -> usize {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` line in {out:?}"))
    };
    let (started, failed) = (num("started"), num("failed"));
    assert_eq!(started + failed, 100, "{out}");
    assert!(
        failed > 0,
        "100 processes started under pids_limit 32: {out}"
    );
    assert!(
        started > 0 && started < 32,
        "{started} started under pids_limit 32: {out}"
    );
    assert!(
        out.contains("Resource temporarily unavailable"),
        "forks did not fail with EAGAIN: {out}"
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
    assert_eq!(cgroup_value(&id, "pids", "pids.max", "pids.max"), "32");
}

#[test]
fn cpu_limit_sets_the_cgroup_quota() {
    let d = Daemon::start(Some("defaults:\n  cpu_limit: 0.5\n"));
    let id = d.new_session();
    let v1 = |file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/sandkasten/{id}/{file}"))
            .ok()
            .map(|v| v.trim().parse::<f64>().unwrap())
    };
    let ratio = match (v1("cpu.cfs_quota_us"), v1("cpu.cfs_period_us")) {
        (Some(quota), Some(period)) => quota / period,
        _ => {
            // cgroup v2: "QUOTA PERIOD".
            let max = cgroup_value(&id, "cpu", "cpu.cfs_quota_us", "cpu.max");
            let f: Vec<f64> = max
                .split_whitespace()
                .map(|x| x.parse().unwrap_or_else(|_| panic!("cpu.max is {max:?}")))
                .collect();
            f[0] / f[1]
        }
    };
    assert!(
        (ratio - 0.5).abs() < 0.01,
        "cpu quota/period = {ratio}, want 0.5"
    );
}
