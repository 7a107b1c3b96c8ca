//! The docker runtime's network across an upgrade. Earlier versions put a
//! container with network on an engine network of the daemon's
//! (`sandkasten-<tag>`, its own bridge); now every container starts on
//! the engine's `none` and a sandbox's link is the daemon's routed veth.
//! A session of an earlier version, still on that engine network when
//! the new daemon starts, is taken off it, given the routed link under
//! its policy, and resolves through the daemon's server; the engine
//! network is removed. Each test gives its daemon its own subnets (in
//! ranges the test picks; nothing is sent to them but by the sandboxes it
//! makes).
//!
//! Needs a running Docker engine (as root); without one every test fails
//! with what to do, none is skipped. The rest of the docker network runs in
//! the docker pass of `tests/network.rs`.

mod common;

use common::*;
use serde_json::json;

fn config(v4: &str, v6: &str) -> String {
    format!(
        "runtime: docker\ndefault_image: \"{}\"\nnetwork:\n  allow_full: true\n  \
         ipv4_subnet: \"{v4}\"\n  ipv6_subnet: \"{v6}\"\n",
        docker_image()
    )
}

fn engine_network_exists(name: &str) -> bool {
    docker_cli(&["network", "inspect", name]).0
}

#[test]
fn a_session_on_the_engine_network_of_an_earlier_version_gets_the_routed_link() {
    let home = DataDir::new();
    home.holds_docker_objects();
    let cfg = config("10.77.16.0/24", "fd5b:77:1::/64");
    let d = Daemon::start_in(&home, Some(&cfg));
    let tag = net_tag(&d).expect("the daemon's network tag");
    let prefix = format!("skn{tag}");
    let id = d.create_session(json!({"network": {"mode": "full"}}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let veth = format!("{prefix}{}", &id[..8]);
    assert_eq!(links_with(&prefix), vec![veth.clone()]);
    // The routed link: an address of the subnet, the host as gateway.
    let addrs = d.sh(&id, "ip -o addr show dev eth0 scope global");
    assert!(
        addrs.contains(" 10.77.16.") && addrs.contains(" fd5b:77:1::"),
        "{addrs}"
    );
    assert!(d
        .sh(&id, "ip route show default")
        .contains("via 169.254.1.1"));

    // The state an earlier version leaves: its daemon gone, the container
    // on the engine network (the engine's eth0, no routed link, no slot).
    d.kill_9();
    let (ok, out) = try_ip(&["link", "del", &veth]);
    assert!(ok, "ip link del {veth}: {out}");
    std::fs::remove_file(home.data.join("docker-net-slots").join(&id))
        .expect("the session's address slot");
    // Named by the hash of the data dir, as earlier versions named it (the
    // tag the daemon claims is that hash unless another daemon holds it).
    let old_tag = sandkasten_netguard::host::tag_of(&home.data);
    let name = format!("sandkasten-{old_tag}");
    let (ok, out) = docker_cli(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        "10.77.17.0/24",
        "-o",
        &format!("com.docker.network.bridge.name=skn{old_tag}-br"),
        "--label",
        "sandkasten.network=true",
        "--label",
        &format!("sandkasten.data_dir={}", home.data.display()),
        &name,
    ]);
    assert!(ok, "docker network create: {out}");
    let container = format!("sandkasten-{id}");
    let (ok, out) = docker_cli(&["network", "disconnect", "none", &container]);
    assert!(ok, "docker network disconnect none: {out}");
    let (ok, out) = docker_cli(&["network", "connect", &name, &container]);
    assert!(ok, "docker network connect: {out}");

    let d = Daemon::start_in(&home, Some(&cfg));
    assert!(
        !engine_network_exists(&name),
        "the engine network of the earlier version is left"
    );
    assert_eq!(links_with(&prefix), vec![veth]);
    let addrs = d.sh(&id, "ip -o addr show; ip route show default");
    assert!(
        addrs.contains(" 10.77.16.")
            && !addrs.contains(" 10.77.17.")
            && addrs.contains("via 169.254.1.1"),
        "{addrs}"
    );
    assert_eq!(
        d.sh(&id, "grep nameserver /etc/resolv.conf").trim(),
        "nameserver 169.254.1.1"
    );
    // Its policy holds as before, and a graceful stop without sessions
    // leaves nothing: no veth, no table.
    assert_eq!(
        d.get_session(&id).expect(200, "GET")["network"]["mode"],
        "full"
    );
    d.delete(&id);
    assert!(links_with(&prefix).is_empty());
    d.terminate();
    let listed = std::process::Command::new("nft")
        .args(["list", "table", "inet", &format!("sandkasten_{tag}")])
        .output()
        .expect("nft");
    assert!(!listed.status.success(), "the table is left after a stop");
}

/// `ip ARGS`: whether it succeeded, and what it wrote.
fn try_ip(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("the network tests need iproute2");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
