//! Latency of the docker runtime against the engine's own tools, on the
//! same image and container:
//!
//! - exec round trip through our agent vs `docker exec <container> true`;
//! - cold create (container + volume + agent listening) vs a bare
//!   `docker run -d` (CLI) and a bare create+start (Engine API);
//! - what a pooled create costs the runtime once a container is ready
//!   (the engine's part: health ping, then with a workspace the late bind
//!   and the shell re-entering `/workspace`), against the cold creates of
//!   the same run. End to end over HTTP: `sandkasten bench --url` against
//!   a docker daemon with a pool.
//!
//! `cargo run --release -p sandkasten-docker --example bench [-- N]`

#[path = "../tests/common/mod.rs"]
mod common;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use sandkasten_runtime::{Runtime, WorkspaceMount};
use std::process::Command;
use std::time::Instant;

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, v: &[f64]) -> f64 {
    let p50 = pct(v.to_vec(), 0.5);
    println!(
        "{name:<44} n={:<4} p50 {:>8.2} ms  p95 {:>8.2} ms",
        v.len(),
        p50,
        pct(v.to_vec(), 0.95)
    );
    p50
}

fn cli(args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let h = common::Harness::new().await;
    println!("image {}, {n} samples (exec: {})", h.image, n * 10);

    // Exec on one warm session.
    let sb =
        h.rt.create(h.spec(WorkspaceMount::Ephemeral))
            .await
            .unwrap();
    let ctr = sandkasten_docker::container_name(&sb.handle.id);
    for _ in 0..20 {
        common::ok(&sb.agent, "true").await;
    }
    let mut ours = Vec::new();
    for _ in 0..n * 10 {
        let t = Instant::now();
        common::ok(&sb.agent, "true").await;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut theirs = Vec::new();
    cli(&["exec", &ctr, "true"]);
    for _ in 0..n {
        theirs.push(cli(&["exec", &ctr, "true"]));
    }
    let e_ours = report("exec round trip via agent (true)", &ours);
    let e_theirs = report("docker exec <same container> true (CLI)", &theirs);
    h.rt.destroy(&sb.handle).await.unwrap();

    // Cold creates, interleaved so both see the same engine state.
    let mut create = Vec::new();
    let mut run_cli = Vec::new();
    let mut run_api = Vec::new();
    let docker = h.rt.docker();
    for i in 0..n {
        let spec = h.spec(WorkspaceMount::Ephemeral);
        let t = Instant::now();
        let sb = h.rt.create(spec).await.unwrap();
        create.push(t.elapsed().as_secs_f64() * 1e3);
        h.rt.destroy(&sb.handle).await.unwrap();

        let name = format!("dockerrt-bench-{}-{i}", std::process::id());
        run_cli.push(cli(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            &h.image,
            "sleep",
            "600",
        ]));
        cli(&["rm", "-f", &name]);

        let t = Instant::now();
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        docker
            .create_container(
                Some(opts),
                ContainerCreateBody {
                    image: Some(h.image.clone()),
                    cmd: Some(vec!["sleep".into(), "600".into()]),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .unwrap();
        run_api.push(t.elapsed().as_secs_f64() * 1e3);
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        docker.remove_container(&name, Some(rm)).await.unwrap();
    }
    // Pooled creates: containers started (untimed) like the pool's, then
    // what taking one costs: the health ping, and with a workspace the
    // late bind and `cd /workspace` in the shell.
    let ws = common::unique("benchws");
    h.rt.ensure_workspace(&ws, None).await.unwrap();
    let mut pooled = Vec::new();
    let mut pooled_ws = Vec::new();
    for i in 0..2 * n {
        let sb =
            h.rt.create(h.spec(WorkspaceMount::Ephemeral))
                .await
                .unwrap();
        common::ok(&sb.agent, "true").await;
        let t = Instant::now();
        sb.agent.ping().await.unwrap();
        if i % 2 == 1 {
            h.rt.bind_workspace(&sb.handle, &ws).await.unwrap();
            common::ok(&sb.agent, "cd /workspace && unset OLDPWD").await;
            pooled_ws.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            pooled.push(t.elapsed().as_secs_f64() * 1e3);
        }
        h.rt.destroy(&sb.handle).await.unwrap();
    }
    h.rt.delete_workspace(&ws).await.unwrap();

    let c_ours = report("cold create (container+volume+agent)", &create);
    let c_cli = report("docker run -d (CLI, same image)", &run_cli);
    let c_api = report("create+start (Engine API, same image)", &run_api);
    let p = report("pooled create, runtime part (ping)", &pooled);
    let p_ws = report("pooled create with workspace (late bind)", &pooled_ws);
    println!(
        "docker exec / agent exec (p50): {:.1}x; cold create / docker run -d: {:.2}; \
         cold create / API create+start: {:.2}",
        e_theirs / e_ours,
        c_ours / c_cli,
        c_ours / c_api
    );
    println!(
        "cold create / pooled create (p50): {:.0}x; cold create / pooled create with \
         workspace (p50): {:.0}x",
        c_ours / p,
        c_ours / p_ws
    );
}
