//! The docker runtime against the real engine: sessions (exec, state,
//! files, limits, isolation), workspaces as volumes, session-less file
//! access, recovery from labels, images, and that destroy leaves nothing.

mod common;

use common::{ok, run, unique, Harness};
use sandkasten_docker::{container_name, volume_name, DockerRuntime};

/// The sandbox user (the default `docker.sandbox_uid`); the test image is
/// made for uid 1000, which the agent takes over.
const U: u32 = sandkasten_docker::DEFAULT_SANDBOX_ID;
use sandkasten_runtime::{
    FileErrorKind, FileOp, FileReply, NetworkMode, Runtime, RuntimeError, SandboxHandle,
    WorkspaceMount,
};

/// True while the engine knows container `name`.
async fn container_exists(rt: &DockerRuntime, name: &str) -> bool {
    rt.docker().inspect_container(name, None).await.is_ok()
}

/// A session-less read of workspace `ws`, collected.
async fn ws_read(
    rt: &DockerRuntime,
    ws: &str,
    path: &str,
) -> Result<sandkasten_runtime::FileData, sandkasten_runtime::RuntimeError> {
    rt.workspace_read(ws, path.into(), None)
        .await?
        .read_all()
        .await
}

async fn volume_exists(rt: &DockerRuntime, name: &str) -> bool {
    rt.docker().inspect_volume(name).await.is_ok()
}

/// Asserts that session `id` left nothing behind.
async fn assert_gone(h: &Harness, id: &str) {
    assert!(
        !container_exists(&h.rt, &container_name(id)).await,
        "container of {id} survived"
    );
    assert!(
        !volume_exists(&h.rt, &volume_name(id)).await,
        "ephemeral volume of {id} survived"
    );
    assert!(!h.rt.run_dir(id).exists(), "run dir of {id} survived");
    assert!(!h
        .rt
        .list_sandboxes()
        .await
        .unwrap()
        .contains(&id.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_state_files_limits_and_isolation() {
    let h = Harness::new().await;
    let spec = h.spec(WorkspaceMount::Ephemeral);
    let id = spec.id.clone();
    let sb = h.rt.create(spec).await.unwrap();
    assert!(sb.handle.pid > 0 && sb.handle.start_time > 0);
    let a = &sb.agent;

    // Exec and persistent shell state.
    let r = run(a, "echo hi").await;
    assert_eq!((r.output.as_str(), r.exit_code), ("hi\n", 0));
    assert_eq!(r.cwd, "/workspace");
    ok(a, "cd /tmp && export GREETING=hello && f() { echo fn-$1; }").await;
    let r = run(a, "echo $GREETING from $(pwd); f x").await;
    assert_eq!(r.output, "hello from /tmp\nfn-x\n");
    assert_eq!(r.cwd, "/tmp");
    assert_eq!(run(a, "exit 3").await.exit_code, 3);
    assert_eq!(
        ok(a, "echo $SANDKASTEN_TEST $HOME $USER").await,
        "yes /home/sandbox sandbox\n"
    );

    // The sandbox user, without capabilities, without new privileges.
    assert_eq!(ok(a, "id -u; id -g").await, format!("{U}\n{U}\n"));
    assert_eq!(
        ok(
            a,
            "grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status | tr -d '\\t'"
        )
        .await,
        "CapPrm:0000000000000000\nCapEff:0000000000000000\nNoNewPrivs:1\n"
    );
    // The agent's run dir (socket, config) is out of the user's reach.
    assert_ne!(run(a, "ls /.sandkasten/run").await.exit_code, 0);
    assert_ne!(
        run(a, "cat /.sandkasten/run/config.json").await.exit_code,
        0
    );
    let r = a
        .read_file("/.sandkasten/run/config.json".into(), None)
        .await;
    assert!(matches!(r, Err(RuntimeError::File { .. })), "{r:?}");
    // PID 1 is the agent.
    assert_eq!(ok(a, "cat /proc/1/comm").await, "agent\n");
    // No network but loopback.
    assert_eq!(
        ok(a, "ls /sys/class/net | sort | tr '\\n' ' '").await,
        "lo "
    );

    // Files through the agent, both ways, owned by the sandbox user.
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    a.write_file("/workspace/sub/blob.bin".into(), data.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        ok(
            a,
            "wc -c < /workspace/sub/blob.bin; stat -c %u /workspace/sub/blob.bin"
        )
        .await,
        format!("100000\n{U}\n")
    );
    ok(a, "printf 'from shell' > /workspace/note.txt").await;
    let note = a
        .read_file("/workspace/note.txt".into(), None)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    assert_eq!(note.data, b"from shell");
    let back = a
        .read_file("/workspace/sub/blob.bin".into(), None)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    assert_eq!(back.data, data);

    // Limits are the container's cgroup's (v1 or v2 paths).
    let mem = ok(
        a,
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )
    .await;
    assert_eq!(mem.trim(), (256u64 << 20).to_string());
    let pids = ok(
        a,
        "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
    )
    .await;
    assert_eq!(pids.trim(), "64");
    // A fork bomb stops at the pids limit and the agent still answers.
    let r = run(
        a,
        "for i in $(seq 100); do sleep 5 & done 2>&1 | tail -1; wait",
    )
    .await;
    assert!(
        r.output.contains("fork") || r.output.contains("resource"),
        "{}",
        r.output
    );
    assert_eq!(ok(a, "echo alive").await, "alive\n");
    let st = h.rt.stats(&sb.handle).await.unwrap();
    assert_eq!(st.memory_limit, 256 << 20);
    assert!(
        st.memory_bytes > 0 && st.pids > 0 && st.cpu_usage_usec > 0,
        "{st:?}"
    );

    // Destroy leaves no container, volume or run dir; twice is fine.
    drop(sb);
    let handle = SandboxHandle {
        id: id.clone(),
        pid: 0,
        start_time: 0,
    };
    h.rt.destroy(&handle).await.unwrap();
    assert_gone(&h, &id).await;
    h.rt.destroy(&handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn readonly_rootfs_and_full_network() {
    let h = Harness::new().await;
    let mut spec = h.spec(WorkspaceMount::Ephemeral);
    spec.readonly_rootfs = true;
    let id = spec.id.clone();
    let sb = h.rt.create(spec.clone()).await.unwrap();
    let a = &sb.agent;
    assert_ne!(run(a, "touch /home/sandbox/x").await.exit_code, 0);
    ok(a, "touch /tmp/x /workspace/y").await;
    assert_eq!(ok(a, "ls /sys/class/net").await.trim(), "lo");
    h.rt.destroy(&sb.handle).await.unwrap();
    assert_gone(&h, &id).await;
    // Without a sandbox network (the daemon builds one where the operator
    // allows `full`: tests/network.rs) `full` is refused, creating nothing.
    spec.id = unique("nonet");
    spec.network = NetworkMode::Full;
    let why = h.rt.network_unsupported().expect("a reason");
    assert!(why.contains("without a sandbox network"), "{why}");
    assert!(matches!(
        h.rt.create(spec.clone()).await,
        Err(RuntimeError::Unsupported(..))
    ));
    assert_gone(&h, &spec.id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_volumes_outlive_sessions() {
    let h = Harness::new().await;
    let ws = unique("ws");
    let vol = volume_name(&ws);
    assert!(matches!(
        h.rt.ensure_workspace(&ws, Some(1 << 30)).await,
        Err(RuntimeError::Unsupported(..))
    ));
    assert_eq!(h.rt.workspace_size(&ws).await.unwrap(), None);
    h.rt.ensure_workspace(&ws, None).await.unwrap();
    h.rt.ensure_workspace(&ws, None).await.unwrap();
    let v = h.rt.docker().inspect_volume(&vol).await.unwrap();
    assert_eq!(
        v.labels.get("sandkasten.workspace").map(String::as_str),
        Some("true")
    );
    assert_eq!(v.labels.get("sandkasten.workspace_id"), Some(&ws));

    // First session writes.
    let spec = h.spec(WorkspaceMount::Persistent(ws.clone()));
    let first = spec.id.clone();
    let sb = h.rt.create(spec).await.unwrap();
    let c =
        h.rt.docker()
            .inspect_container(&container_name(&first), None)
            .await
            .unwrap();
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels.get("sandkasten.workspace_id"), Some(&ws));
    assert_eq!(labels.get("sandkasten.session_id"), Some(&first));
    assert_eq!(labels.get("sandkasten.image"), Some(&h.image));
    assert_eq!(
        ok(&sb.agent, "stat -c '%u %a' /workspace").await,
        format!("{U} 755\n")
    );
    ok(&sb.agent, "mkdir -p d && printf 12345 > d/kept.txt").await;
    // In use: not deletable.
    assert!(h.rt.delete_workspace(&ws).await.is_err());
    h.rt.destroy(&sb.handle).await.unwrap();
    assert_gone(&h, &first).await;
    assert!(
        volume_exists(&h.rt, &vol).await,
        "the workspace went with the session"
    );
    assert_eq!(h.rt.workspace_size(&ws).await.unwrap(), Some(5));

    // Session-less file access, confined and as the sandbox user.
    let kept = ws_read(&h.rt, &ws, "/d/kept.txt").await.unwrap();
    assert_eq!(kept.data, b"12345");
    let w = FileOp::Write {
        path: "/from-host.txt".into(),
        data: b"outside".to_vec(),
        mode: None,
    };
    assert_eq!(h.rt.workspace_file(&ws, w).await.unwrap(), FileReply::Done);
    match ws_read(&h.rt, &ws, "/../../../../etc/passwd").await {
        // RESOLVE_IN_ROOT: `..` stops at the workspace root.
        Err(RuntimeError::File { .. }) => {}
        other => panic!("escaped the workspace: {other:?}"),
    }
    let listed =
        h.rt.workspace_file(&ws, FileOp::ListDir { path: "/".into() })
            .await
            .unwrap();
    let mut names: Vec<_> = listed
        .into_entries()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["d", "from-host.txt"]);
    // A workspace without a volume is not found; a missing file is a
    // file error.
    assert!(matches!(
        ws_read(&h.rt, &unique("nows"), "/x").await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        ws_read(&h.rt, &ws, "/missing").await,
        Err(RuntimeError::File {
            kind: FileErrorKind::NotFound,
            ..
        })
    ));

    // Export: the content as a tar with relative paths and the user's
    // ownership.
    let mut tar_bytes = Vec::new();
    let mut stream = h.rt.export_workspace(&ws).await.unwrap();
    while let Some(chunk) = stream.recv().await {
        tar_bytes.extend_from_slice(&chunk.unwrap());
    }
    let mut entries: Vec<(String, u64)> = tar::Archive::new(&tar_bytes[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().uid().unwrap(),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("d".to_string(), u64::from(U)),
            ("d/kept.txt".to_string(), u64::from(U)),
            ("from-host.txt".to_string(), u64::from(U))
        ]
    );

    // A new session sees both files, with the user's ownership.
    let spec = h.spec(WorkspaceMount::Persistent(ws.clone()));
    let sb = h.rt.create(spec).await.unwrap();
    assert_eq!(
        ok(
            &sb.agent,
            "cat d/kept.txt; echo; cat from-host.txt; echo; stat -c %u from-host.txt"
        )
        .await,
        format!("12345\noutside\n{U}\n")
    );
    h.rt.destroy(&sb.handle).await.unwrap();

    h.rt.delete_workspace(&ws).await.unwrap();
    assert!(!volume_exists(&h.rt, &vol).await);
    assert_eq!(h.rt.workspace_size(&ws).await.unwrap(), None);
    h.rt.delete_workspace(&ws).await.unwrap();
    assert!(matches!(
        h.rt.snapshot_workspace(&ws, "s1").await,
        Err(RuntimeError::Unsupported(..))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_from_labels() {
    let h = Harness::new().await;
    let spec = h.spec(WorkspaceMount::Ephemeral);
    let id = spec.id.clone();
    let sb = h.rt.create(spec).await.unwrap();
    ok(&sb.agent, "cd /tmp && export KEPT=1").await;
    let handle = sb.handle.clone();
    assert!(h.rt.list_sandboxes().await.unwrap().contains(&id));
    drop(sb);

    // A restarted daemon finds it by its labels and reattaches; the shell
    // kept its state.
    let rt2 = h.restart().await;
    assert!(rt2.list_sandboxes().await.unwrap().contains(&id));
    let sb = rt2.attach(&handle).await.unwrap();
    assert_eq!(sb.handle, handle);
    let r = run(&sb.agent, "echo $KEPT").await;
    assert_eq!((r.output.as_str(), r.cwd.as_str()), ("1\n", "/tmp"));
    // A handle with another PID 1 is not this sandbox.
    let wrong = SandboxHandle {
        pid: handle.pid + 1,
        ..handle.clone()
    };
    assert!(matches!(
        rt2.attach(&wrong).await,
        Err(RuntimeError::Gone(_))
    ));

    // Another daemon's data dir does not see it.
    let other = Harness::new().await;
    assert!(!other.rt.list_sandboxes().await.unwrap().contains(&id));

    // A dead container is gone; the connection notices its death.
    let agent = sb.agent.clone();
    rt2.docker()
        .kill_container(
            &container_name(&id),
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    tokio::time::timeout(common::EXEC_TIMEOUT, agent.closed())
        .await
        .expect("the agent connection did not close when the container died");
    assert!(matches!(
        rt2.attach(&handle).await,
        Err(RuntimeError::Gone(_))
    ));
    // Still listed (stopped containers are), so recovery cleans it up.
    assert!(rt2.list_sandboxes().await.unwrap().contains(&id));
    rt2.destroy(&handle).await.unwrap();
    assert_gone(&h, &id).await;

    // A run dir without a container is an orphan to destroy.
    let orphan = unique("orphan");
    std::fs::create_dir(h.rt.run_dir(&orphan)).unwrap();
    assert!(h.rt.list_sandboxes().await.unwrap().contains(&orphan));
    h.rt.destroy(&SandboxHandle {
        id: orphan.clone(),
        pid: 0,
        start_time: 0,
    })
    .await
    .unwrap();
    assert!(!h.rt.run_dir(&orphan).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn images_and_failed_creates() {
    let h = Harness::new().await;
    let list = h.rt.list_images().await.unwrap();
    let me = list
        .iter()
        .find(|i| i.name == h.image)
        .expect("test image listed");
    assert!(me.digest.starts_with("sha256:") && me.size_bytes > 0 && !me.builtin);

    // An unknown image: ImageNotFound, and nothing left behind.
    let mut spec = h.spec(WorkspaceMount::Ephemeral);
    spec.image = "sandkasten-test:does-not-exist".into();
    let id = spec.id.clone();
    assert!(matches!(
        h.rt.create(spec).await,
        Err(RuntimeError::ImageNotFound(_))
    ));
    assert_gone(&h, &id).await;

    // An archive the engine cannot read is an invalid image.
    let junk = h.data_dir().join("junk.tar");
    std::fs::write(&junk, b"this is not a tarball").unwrap();
    let name = format!("sandkasten-test:junk-{}", unique(""));
    match h.rt.import_image(&name, junk).await {
        Err(RuntimeError::InvalidImage(_)) => {}
        other => panic!("junk imported: {other:?}"),
    }
    assert!(matches!(
        h.rt.remove_image("sandkasten-test:never-was").await,
        Err(RuntimeError::ImageNotFound(_))
    ));

    // Import of a copy under a new name, then removal of that name only.
    let copy = format!("sandkasten-test:copy-{}", unique(""));
    h.rt.docker()
        .tag_image(
            &h.image,
            Some(
                bollard::query_parameters::TagImageOptionsBuilder::default()
                    .repo("sandkasten-test")
                    .tag(copy.split_once(':').unwrap().1)
                    .build(),
            ),
        )
        .await
        .unwrap();
    assert!(h
        .rt
        .list_images()
        .await
        .unwrap()
        .iter()
        .any(|i| i.name == copy));
    h.rt.remove_image(&copy).await.unwrap();
    let after = h.rt.list_images().await.unwrap();
    assert!(!after.iter().any(|i| i.name == copy));
    assert!(after.iter().any(|i| i.name == h.image));
}

/// Host mount points below the volumes' directories (none must appear:
/// a late-bound mount lives in the container's namespace only).
fn host_mounts_of(vol: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(vol))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn late_binding_mounts_a_workspace_into_a_running_container() {
    let h = Harness::new().await;
    assert!(
        h.rt.can_bind_workspace(),
        "late binding is off on a local runc engine"
    );
    // A pooled container: started with an ephemeral workspace.
    let spec = h.spec(WorkspaceMount::Ephemeral);
    let id = spec.id.clone();
    let sb = h.rt.create(spec).await.unwrap();
    ok(&sb.agent, "echo ephemeral > /workspace/eph").await;

    // The workspace volume does not exist yet: binding creates it.
    let ws = unique("late");
    let vol = volume_name(&ws);
    assert!(!volume_exists(&h.rt, &vol).await);
    // A handle that is not this container's PID 1 is refused.
    let wrong = SandboxHandle {
        start_time: sb.handle.start_time + 1,
        ..sb.handle.clone()
    };
    assert!(matches!(
        h.rt.bind_workspace(&wrong, &ws).await,
        Err(RuntimeError::Gone(_))
    ));
    h.rt.bind_workspace(&sb.handle, &ws).await.unwrap();
    let v = h.rt.docker().inspect_volume(&vol).await.unwrap();
    assert_eq!(
        v.labels.get("sandkasten.workspace").map(String::as_str),
        Some("true")
    );
    assert!(
        host_mounts_of(&vol).is_empty(),
        "the late-bound mount reached the host: {:?}",
        host_mounts_of(&vol)
    );

    // The shell re-enters /workspace (as the engine does) and sees the
    // workspace, not the ephemeral volume below it.
    let r = run(&sb.agent, "cd /workspace && pwd; echo x > f; ls").await;
    assert_eq!((r.exit_code, r.output.as_str()), (0, "/workspace\nf\n"));
    assert_eq!(ok(&sb.agent, "stat -c %u f").await, format!("{U}\n"));
    let opts = ok(
        &sb.agent,
        "grep ' /workspace ' /proc/self/mountinfo | tail -1 | cut -d' ' -f6",
    )
    .await;
    assert!(
        opts.contains("nosuid") && opts.contains("nodev"),
        "mount options of the late-bound /workspace: {opts}"
    );
    // The agent's file operations see it too.
    let f = sb
        .agent
        .read_file("/workspace/f".into(), None)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    assert_eq!(f.data, b"x\n");
    // Session-less access reads the same file.
    let f = ws_read(&h.rt, &ws, "/f").await.unwrap();
    assert_eq!(f.data, b"x\n");
    // Labels are fixed at create: the pooled container's stays empty.
    let c =
        h.rt.docker()
            .inspect_container(&container_name(&id), None)
            .await
            .unwrap();
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(
        labels.get("sandkasten.workspace_id").map(String::as_str),
        Some("")
    );

    // Two pooled containers can share one workspace.
    let other =
        h.rt.create(h.spec(WorkspaceMount::Ephemeral))
            .await
            .unwrap();
    h.rt.bind_workspace(&other.handle, &ws).await.unwrap();
    assert_eq!(ok(&other.agent, "cd /workspace && cat f").await, "x\n");
    h.rt.destroy(&other.handle).await.unwrap();
    assert_gone(&h, &other.handle.id).await;

    // Destroy removes the container and its ephemeral volume; the
    // workspace keeps f.
    h.rt.destroy(&sb.handle).await.unwrap();
    assert_gone(&h, &id).await;
    assert!(volume_exists(&h.rt, &vol).await);
    let f = ws_read(&h.rt, &ws, "/f").await.unwrap();
    assert_eq!(f.data, b"x\n");
    // ... and a cold session with it sees f.
    let sb =
        h.rt.create(h.spec(WorkspaceMount::Persistent(ws.clone())))
            .await
            .unwrap();
    assert_eq!(ok(&sb.agent, "cat f").await, "x\n");
    h.rt.destroy(&sb.handle).await.unwrap();
    h.rt.delete_workspace(&ws).await.unwrap();
    assert!(!volume_exists(&h.rt, &vol).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_named_after_its_pooled_container_survives_it() {
    // workspace.persist_by_default names the workspace after the session,
    // and a pooled session's id is its container's: the workspace is the
    // container's own ephemeral volume.
    let h = Harness::new().await;
    let spec = h.spec(WorkspaceMount::Ephemeral);
    let id = spec.id.clone();
    let sb = h.rt.create(spec).await.unwrap();
    h.rt.ensure_workspace(&id, None).await.unwrap();
    h.rt.bind_workspace(&sb.handle, &id).await.unwrap();
    ok(&sb.agent, "cd /workspace && echo kept > k").await;
    h.rt.destroy(&sb.handle).await.unwrap();
    assert!(!container_exists(&h.rt, &container_name(&id)).await);
    assert!(
        volume_exists(&h.rt, &volume_name(&id)).await,
        "the workspace went with its session"
    );
    // A second destroy (recovery after a crash) keeps it too.
    h.rt.destroy(&sb.handle).await.unwrap();
    let k = ws_read(&h.rt, &id, "/k").await.unwrap();
    assert_eq!(k.data, b"kept\n");
    h.rt.delete_workspace(&id).await.unwrap();
    assert!(!volume_exists(&h.rt, &volume_name(&id)).await);
    assert!(!h.data_dir().join("docker-kept").join(&id).exists());
}
