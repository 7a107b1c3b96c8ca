//! The docker runtime's engine network across an upgrade: one an earlier
//! version made (IPv4 only, same name, labels and subnet) is made anew
//! with IPv6 at the next start when no container is on it; while a
//! container is on it, it is kept as it is, the start says so, and
//! sandboxes get IPv4 alone. Each test gives its daemon its own subnets
//! (in ranges the test picks; nothing is sent to them but by the
//! sandboxes it makes).
//!
//! Needs a running Docker engine (as root); without one every test fails
//! with what to do, none is skipped. The rest of the docker network runs in
//! the docker pass of `tests/network.rs`.

mod common;

use common::*;
use serde_json::json;
use sha2::Digest;

/// The engine network's name and bridge for data dir `home` (the daemon's
/// tag: four hex digits of a hash of the data dir).
fn names(home: &DataDir) -> (String, String) {
    let d = sha2::Sha256::digest(home.data.as_os_str().as_encoded_bytes());
    let tag = format!("{:02x}{:02x}", d[0], d[1]);
    (format!("sandkasten-{tag}"), format!("skn{tag}-br"))
}

fn config(v4: &str, v6: &str) -> String {
    format!(
        "runtime: docker\ndefault_image: \"{}\"\nnetwork:\n  allow_full: true\n  \
         ipv4_subnet: \"{v4}\"\n  ipv6_subnet: \"{v6}\"\n",
        docker_image()
    )
}

/// The network as the version before IPv6 made it.
fn make_ipv4_only(home: &DataDir, v4: &str, gateway: &str) -> String {
    let (name, bridge) = names(home);
    let (ok, out) = docker_cli(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        v4,
        "--gateway",
        gateway,
        "-o",
        &format!("com.docker.network.bridge.name={bridge}"),
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "--label",
        "sandkasten.network=true",
        "--label",
        &format!("sandkasten.data_dir={}", home.data.display()),
        &name,
    ]);
    assert!(ok, "docker network create: {out}");
    name
}

fn subnets(name: &str) -> String {
    let (ok, out) = docker_cli(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        name,
    ]);
    assert!(ok, "docker network inspect {name}: {out}");
    out.trim().to_string()
}

fn global_addrs(d: &Daemon, id: &str, family: &str) -> String {
    d.sh(
        id,
        &format!("ip -{family} -o addr show dev eth0 scope global"),
    )
}

/// A sandbox with `mode: full`, checked to have an IPv4 address starting
/// with `v4_prefix`; its global IPv6 addresses (`ip -o` lines).
fn full_sandbox(d: &Daemon, v4_prefix: &str) -> (String, String) {
    let id = d.create_session(json!({"network": {"mode": "full"}}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v4 = global_addrs(d, &id, "4");
    assert!(v4.contains(&format!(" {v4_prefix}")), "{v4}");
    let v6 = global_addrs(d, &id, "6");
    (id, v6)
}

#[test]
fn an_ipv4_only_network_of_an_earlier_version_gains_ipv6_when_free() {
    let home = DataDir::new();
    home.holds_docker_objects();
    let name = make_ipv4_only(&home, "10.77.16.0/24", "10.77.16.1");
    assert_eq!(subnets(&name), "10.77.16.0/24");
    let d = Daemon::start_in(&home, Some(&config("10.77.16.0/24", "fd5b:77:1::/64")));
    assert_eq!(subnets(&name), "10.77.16.0/24 fd5b:77:1::/64");
    let (_, v6) = full_sandbox(&d, "10.77.16.");
    assert!(v6.contains(" fd5b:77:1::"), "no IPv6 address: {v6}");
}

#[test]
fn an_ipv4_only_network_in_use_is_kept_and_its_sandboxes_stay_ipv4() {
    let home = DataDir::new();
    home.holds_docker_objects();
    let name = make_ipv4_only(&home, "10.77.17.0/24", "10.77.17.1");
    // A container of the earlier daemon still on it (labelled with the
    // data dir: the clean-up removes it).
    let (ok, dummy) = docker_cli(&[
        "run",
        "-d",
        "--network",
        &name,
        "--label",
        &format!("sandkasten.data_dir={}", home.data.display()),
        docker_image(),
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    assert!(ok, "docker run: {dummy}");
    let d = Daemon::start_in(&home, Some(&config("10.77.17.0/24", "fd5b:77:2::/64")));
    assert_eq!(subnets(&name), "10.77.17.0/24");
    assert!(
        d.logs().contains("the sandbox network has no IPv6"),
        "no warning:\n{}",
        d.logs()
    );
    let (id, v6) = full_sandbox(&d, "10.77.17.");
    assert_eq!(v6.trim(), "");
    // Once the earlier container is gone, a graceful stop leaves nothing:
    // neither the network nor the daemon's table.
    d.delete(&id);
    let (ok, out) = docker_cli(&["rm", "-f", dummy.trim()]);
    assert!(ok, "docker rm: {out}");
    d.terminate();
    let (tag, _) = names(&home);
    let table = format!("sandkasten_{}", tag.trim_start_matches("sandkasten-"));
    let listed = std::process::Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .expect("nft");
    assert!(!listed.status.success(), "table {table} left after a stop");
    let (exists, _) = docker_cli(&["network", "inspect", &name]);
    assert!(!exists, "network {name} left after a stop");
}
