//! Engine tests against the fake runtime (`sandkasten_runtime::fake`): the
//! real engine, store and agent client over in-memory sandboxes whose
//! agent speaks the real protocol. No root, no namespaces, no Docker.
//! Waits are bounded (a test that would hang fails within seconds).

use crate::{
    AcquireSource, CreateSession, CreateWorkspace, Engine, EngineConfig, EngineError, ExecEvent,
    ExecRequest, ExecResult, FileError, FileType, Holder, ImageError, SessionError, SessionState,
    WorkspaceError, MIN_QUOTA_BYTES,
};
use sandkasten_runtime::fake::FakeRuntime;
use sandkasten_runtime::{Limits, NetworkMode, Runtime, SandboxSpec, WorkspaceMount};
use sandkasten_store::Store;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Upper bound of any single wait in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `$cond` every 10 ms until it holds; fails the test after
/// [`PATIENCE`]. (Test-side only: the engine itself waits on events.)
macro_rules! wait_until {
    ($what:expr, $cond:expr) => {{
        let deadline = Instant::now() + PATIENCE;
        loop {
            if $cond {
                break;
            }
            assert!(Instant::now() < deadline, "timed out waiting: {}", $what);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }};
}

/// Asserts that `$e` matches `$pat`, showing it otherwise.
macro_rules! assert_err {
    ($e:expr, $pat:pat) => {{
        match $e {
            Err($pat) => {}
            other => panic!("expected {}, got {other:?}", stringify!($pat)),
        }
    }};
}

/// An engine on a fake runtime and a fresh store.
struct TestEngine {
    engine: Engine,
    fake: Arc<FakeRuntime>,
    store: Arc<Store>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::ops::Deref for TestEngine {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl TestEngine {
    /// A session read, collected (the files of these tests are small).
    async fn read(
        &self,
        id: &str,
        path: &str,
        max: Option<u64>,
    ) -> Result<crate::FileContent, EngineError> {
        self.engine.read_file(id, path, max).await?.read_all().await
    }

    /// A session-less workspace read, collected.
    async fn ws_read(
        &self,
        id: &str,
        path: &str,
        max: Option<u64>,
    ) -> Result<crate::FileContent, EngineError> {
        self.engine
            .workspace_read_file(id, path, max)
            .await?
            .read_all()
            .await
    }
}

fn config(tweak: impl FnOnce(&mut EngineConfig)) -> EngineConfig {
    let mut cfg = EngineConfig {
        default_exec_timeout_ms: 5_000,
        ..EngineConfig::default()
    };
    tweak(&mut cfg);
    cfg
}

async fn engine_with(tweak: impl FnOnce(&mut EngineConfig)) -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("sandkasten.db")).unwrap());
    let fake = Arc::new(FakeRuntime::new());
    let stop = CancellationToken::new();
    let engine = Engine::start(config(tweak), fake.clone(), store.clone(), stop.clone())
        .await
        .unwrap();
    TestEngine {
        engine,
        fake,
        store,
        stop,
        _dir: dir,
    }
}

async fn engine() -> TestEngine {
    engine_with(|_| {}).await
}

/// `f`, or a failed test after [`PATIENCE`].
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("the engine did not answer in time")
}

fn req(cmd: &str) -> ExecRequest {
    ExecRequest {
        cmd: cmd.into(),
        timeout_ms: None,
        raw_output: false,
    }
}

async fn session(e: &Engine) -> String {
    e.create_session(CreateSession::default()).await.unwrap().id
}

async fn session_on(e: &Engine, workspace: &str) -> String {
    e.create_session(CreateSession {
        workspace_id: Some(workspace.into()),
        ..Default::default()
    })
    .await
    .unwrap()
    .id
}

async fn run(e: &Engine, id: &str, cmd: &str) -> ExecResult {
    within(e.exec(id, req(cmd))).await.unwrap()
}

fn count(v: &[(&'static str, u64)], key: &str) -> u64 {
    v.iter().find(|(k, _)| *k == key).map_or(0, |(_, n)| *n)
}

fn stored_state(store: &Store, id: &str) -> SessionState {
    store
        .get_session(id)
        .unwrap()
        .expect("no session row")
        .state
}

fn pool_of(images: &[(&str, usize)]) -> crate::PoolConfig {
    crate::PoolConfig {
        images: images.iter().map(|(i, n)| (i.to_string(), *n)).collect(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Sessions

#[tokio::test]
async fn a_created_session_runs_is_listed_and_recorded() {
    let e = engine().await;
    let info = e.create_session(CreateSession::default()).await.unwrap();
    assert_eq!(info.status, SessionState::Running);
    assert_eq!(info.image, "base");
    assert_eq!(info.cwd, "/workspace");
    assert_eq!(info.workspace_id, None);
    assert_eq!(info.acquire_source, AcquireSource::Cold);
    assert_eq!(
        (info.expires_at - info.created_at).whole_seconds(),
        1800,
        "the default ttl"
    );
    assert_eq!(e.get_session(&info.id).await.unwrap(), info);
    assert_eq!(e.list_sessions().await, vec![info.clone()]);

    let created = e.fake.created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, info.id);
    assert_eq!(created[0].image, "base");
    assert_eq!(created[0].workspace, WorkspaceMount::Ephemeral);

    let row = e.store.get_session(&info.id).unwrap().unwrap();
    assert_eq!(row.state, SessionState::Running);
    assert!(row.pid > 0, "the sandbox's pid is recorded for recovery");
}

#[tokio::test]
async fn exec_returns_output_exit_code_and_cwd() {
    let e = engine().await;
    let id = session(&e).await;
    let r = run(&e, &id, "echo hello world").await;
    assert_eq!(
        (r.output.as_str(), r.exit_code, r.cwd.as_str()),
        ("hello world\n", 0, "/workspace")
    );
    assert!(!r.timed_out && !r.truncated);
    assert_eq!(run(&e, &id, "false").await.exit_code, 1);
    let r = run(&e, &id, "no-such-tool --help").await;
    assert_eq!(r.exit_code, 127);
    assert!(r.output.contains("command not found"), "{}", r.output);
}

#[tokio::test]
async fn the_shell_keeps_its_cwd_and_variables_between_execs() {
    let e = engine().await;
    let id = session(&e).await;
    let r = run(&e, &id, "cd /tmp && export GREETING='hello there'").await;
    assert_eq!((r.exit_code, r.cwd.as_str()), (0, "/tmp"));
    let r = run(&e, &id, "pwd && printenv GREETING").await;
    assert_eq!(r.output, "/tmp\nhello there\n");
    assert_eq!(e.get_session(&id).await.unwrap().cwd, "/tmp");
}

#[tokio::test]
async fn execs_of_one_session_run_in_arrival_order() {
    let e = engine().await;
    let id = session(&e).await;
    let cmds: Vec<String> = std::iter::once("sleep 0.2 && echo 0".to_string())
        .chain((1..6).map(|i| format!("echo {i}")))
        .collect();
    let mut streams = Vec::new();
    for c in &cmds {
        streams.push(e.exec_stream(&id, req(c)).await.unwrap());
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let outputs = within(futures::future::join_all(
        streams.into_iter().enumerate().map(|(i, mut rx)| {
            let order = order.clone();
            async move {
                let mut out = String::new();
                while let Some(ev) = rx.recv().await {
                    match ev {
                        ExecEvent::Chunk { data, .. } => out.push_str(&data),
                        ExecEvent::Done { .. } => order.lock().unwrap().push(i),
                        ExecEvent::Error { message } => panic!("exec {i}: {message}"),
                    }
                }
                out
            }
        }),
    ))
    .await;
    assert_eq!(*order.lock().unwrap(), (0..6).collect::<Vec<_>>());
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out, &format!("{i}\n"));
    }
    assert_eq!(
        e.fake.commands(&id),
        cmds,
        "the shell ran them in arrival order"
    );
}

#[tokio::test]
async fn an_exec_that_runs_into_its_timeout_is_reported_and_the_shell_survives() {
    let e = engine().await;
    let id = session(&e).await;
    run(&e, &id, "export KEPT=1").await;
    let started = Instant::now();
    let r = within(e.exec(
        &id,
        ExecRequest {
            timeout_ms: Some(100),
            ..req("echo before && sleep 30")
        },
    ))
    .await
    .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 124);
    assert_eq!(r.output, "before\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(run(&e, &id, "printenv KEPT").await.output, "1\n");
}

#[tokio::test]
async fn the_default_and_the_maximum_exec_timeouts_apply() {
    let e = engine_with(|c| {
        c.default_exec_timeout_ms = 100;
        c.max_exec_timeout_ms = 200;
    })
    .await;
    let id = session(&e).await;
    let started = Instant::now();
    assert!(run(&e, &id, "sleep 30").await.timed_out, "the default");
    let r = within(e.exec(
        &id,
        ExecRequest {
            timeout_ms: Some(600_000),
            ..req("sleep 30")
        },
    ))
    .await
    .unwrap();
    assert!(r.timed_out, "capped at max_exec_timeout_ms");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn dropping_an_exec_stream_interrupts_the_command() {
    let e = engine().await;
    let id = session(&e).await;
    let mut rx = e
        .exec_stream(&id, req("echo started && sleep 60"))
        .await
        .unwrap();
    match within(rx.recv()).await {
        Some(ExecEvent::Chunk { data, .. }) => assert_eq!(data, "started\n"),
        other => panic!("expected output first, got {other:?}"),
    }
    drop(rx);
    let started = Instant::now();
    assert_eq!(run(&e, &id, "echo after").await.output, "after\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.fake.cancelled_execs(), 1);
}

#[tokio::test]
async fn a_queued_exec_whose_client_left_never_runs() {
    let e = engine().await;
    let id = session(&e).await;
    let first = e.exec_stream(&id, req("sleep 0.2")).await.unwrap();
    let gone = e.exec_stream(&id, req("echo never")).await.unwrap();
    drop(gone);
    run(&e, &id, "echo last").await;
    drop(first);
    assert_eq!(e.fake.commands(&id), vec!["sleep 0.2", "echo last"]);
}

#[tokio::test]
async fn empty_or_nul_commands_and_a_zero_timeout_are_invalid() {
    let e = engine().await;
    let id = session(&e).await;
    for cmd in ["", "  \n ", "echo a\0b"] {
        assert_err!(e.exec(&id, req(cmd)).await, EngineError::InvalidRequest(_));
    }
    let zero = ExecRequest {
        timeout_ms: Some(0),
        ..req("true")
    };
    assert_err!(e.exec(&id, zero).await, EngineError::InvalidRequest(_));
    assert!(e.fake.commands(&id).is_empty(), "nothing reached the shell");
}

#[tokio::test]
async fn exec_output_is_capped_and_cleaned_unless_raw() {
    let e = engine_with(|c| c.max_output_bytes = 16).await;
    let id = session(&e).await;
    let r = run(&e, &id, &format!("echo {}", "x".repeat(100))).await;
    assert_eq!(r.output, "x".repeat(16));
    assert!(r.truncated);

    let colored = "echo \x1b[31mred\x1b[0m";
    assert_eq!(run(&e, &id, colored).await.output, "red\n");
    let raw = within(e.exec(
        &id,
        ExecRequest {
            raw_output: true,
            ..req(colored)
        },
    ))
    .await
    .unwrap();
    assert_eq!(raw.output, "\x1b[31mred\x1b[0m\n");
    assert!(!raw.truncated);
}

#[tokio::test]
async fn a_ttl_of_zero_or_beyond_thirty_days_is_refused() {
    let e = engine().await;
    for ttl in [0, 30 * 24 * 3600 + 1] {
        let r = e
            .create_session(CreateSession {
                ttl_seconds: Some(ttl),
                ..Default::default()
            })
            .await;
        assert_err!(r, EngineError::InvalidRequest(_));
    }
    assert!(e.fake.created().is_empty());
    let info = e
        .create_session(CreateSession {
            ttl_seconds: Some(30 * 24 * 3600),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (info.expires_at - info.created_at).whole_seconds(),
        30 * 24 * 3600
    );
}

#[tokio::test]
async fn session_variables_are_validated_and_reach_the_shell() {
    let e = engine().await;
    for env in [
        vec![("1BAD".to_string(), "x".to_string())],
        vec![("A-B".into(), "x".into())],
        vec![("OK".into(), "nul\0byte".into())],
    ] {
        let r = e
            .create_session(CreateSession {
                env,
                ..Default::default()
            })
            .await;
        assert_err!(r, EngineError::InvalidRequest(_));
    }
    assert!(e.fake.created().is_empty(), "nothing was started");

    let env = vec![("TOKEN".to_string(), "it's secret".to_string())];
    let id = e
        .create_session(CreateSession {
            env: env.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    assert_eq!(e.fake.created()[0].env, env);
    assert_eq!(run(&e, &id, "printenv TOKEN").await.output, "it's secret\n");
}

#[tokio::test]
async fn only_allowed_images_are_started() {
    let e = engine_with(|c| c.allowed_images = vec!["base".into()]).await;
    e.fake.add_image("python");
    let r = e
        .create_session(CreateSession {
            image: Some("python".into()),
            ..Default::default()
        })
        .await;
    assert_err!(r, EngineError::Image(ImageError::Invalid(_)));
    assert!(e.fake.created().is_empty());
    let info = e
        .create_session(CreateSession {
            image: Some(String::new()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.image, "base", "an empty image means the default");
}

#[tokio::test]
async fn an_unknown_image_fails_the_create_and_frees_its_place() {
    let e = engine_with(|c| c.max_sessions = 1).await;
    let r = e
        .create_session(CreateSession {
            image: Some("nope".into()),
            ..Default::default()
        })
        .await;
    assert_err!(r, EngineError::Image(ImageError::Invalid(_)));
    assert!(e.list_sessions().await.is_empty());
    assert_eq!(count(&e.metrics().sessions_ended, "failed"), 1);
    session(&e).await;
}

#[tokio::test]
async fn a_sandbox_that_fails_to_start_leaves_a_failed_record() {
    let e = engine().await;
    e.fake.fail_next_creates(1);
    let r = e.create_session(CreateSession::default()).await;
    assert_err!(r, EngineError::Runtime { .. });
    assert!(e.list_sessions().await.is_empty());
    assert_eq!(count(&e.metrics().sessions_ended, "failed"), 1);
    assert_eq!(e.fake.live_count(), 0);
    session(&e).await;
    assert_eq!(e.fake.live_count(), 1);
}

#[tokio::test]
async fn creates_beyond_max_sessions_are_refused_until_one_ends() {
    let e = engine_with(|c| c.max_sessions = 2).await;
    let a = session(&e).await;
    session(&e).await;
    assert_err!(
        e.create_session(CreateSession::default()).await,
        EngineError::Session(SessionError::CapacityExhausted(2))
    );
    assert_eq!(e.fake.live_count(), 2, "the refused create started nothing");
    e.destroy_session(&a).await.unwrap();
    session(&e).await;
}

#[tokio::test]
async fn a_destroyed_session_is_gone_for_every_operation() {
    let e = engine().await;
    let id = session(&e).await;
    e.destroy_session(&id).await.unwrap();
    assert_err!(
        e.exec(&id, req("true")).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    assert_err!(
        e.read(&id, "a", None).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    assert_err!(
        e.session_stats(&id).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    assert_err!(
        e.get_session(&id).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    assert_err!(
        e.destroy_session(&id).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    assert_eq!(stored_state(&e.store, &id), SessionState::Destroyed);
    assert_eq!(e.fake.destroyed(), vec![id]);
    assert_eq!(e.fake.live_count(), 0);
    assert!(e.list_sessions().await.is_empty());
}

#[tokio::test]
async fn session_stats_come_from_the_runtime() {
    let e = engine_with(|c| {
        c.limits = Limits {
            memory_mb: 256,
            cpu: 0.5,
            pids: 64,
            disk_mb: Some(1024),
        }
    })
    .await;
    let id = session(&e).await;
    let stats = e.session_stats(&id).await.unwrap();
    assert_eq!(stats.memory_limit, 256 * 1024 * 1024);
    assert!(stats.pids > 0);
}

#[tokio::test]
async fn activity_extends_the_ttl() {
    let e = engine().await;
    let info = e
        .create_session(CreateSession {
            ttl_seconds: Some(600),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    run(&e, &info.id, "true").await;
    let after = e.get_session(&info.id).await.unwrap().expires_at;
    assert!(after > info.expires_at, "{after} vs {}", info.expires_at);
}

#[tokio::test]
async fn the_reaper_destroys_a_session_when_its_ttl_runs_out() {
    let e = engine().await;
    let id = e
        .create_session(CreateSession {
            ttl_seconds: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let long = session(&e).await;
    wait_until!("the session expires", e.get_session(&id).await.is_err());
    assert_eq!(stored_state(&e.store, &id), SessionState::Expired);
    assert_eq!(count(&e.metrics().sessions_ended, "expired"), 1);
    assert_eq!(e.fake.destroyed(), vec![id.clone()]);
    assert_err!(
        e.exec(&id, req("true")).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    assert_eq!(
        e.get_session(&long).await.unwrap().status,
        SessionState::Running
    );
}

#[tokio::test]
async fn a_sandbox_that_dies_behind_the_engines_back_becomes_lost() {
    let e = engine().await;
    let id = session(&e).await;
    let other = session(&e).await;
    assert!(e.fake.kill(&id));
    wait_until!("the session is given up", e.get_session(&id).await.is_err());
    assert_eq!(stored_state(&e.store, &id), SessionState::Lost);
    assert_eq!(count(&e.metrics().sessions_ended, "lost"), 1);
    assert!(
        e.fake.destroyed().contains(&id),
        "its remains are cleaned up"
    );
    assert_err!(
        e.exec(&id, req("true")).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    assert_eq!(run(&e, &other, "echo fine").await.output, "fine\n");
}

#[tokio::test]
async fn an_exec_running_when_its_sandbox_dies_fails_at_once_and_a_queued_one_answers_lost() {
    let e = engine().await;
    let id = session(&e).await;
    let mut rx = e
        .exec_stream(&id, req("echo up && sleep 60"))
        .await
        .unwrap();
    assert!(matches!(
        within(rx.recv()).await,
        Some(ExecEvent::Chunk { .. })
    ));
    let queued = {
        let (engine, id) = (e.engine.clone(), id.clone());
        tokio::spawn(async move { engine.exec(&id, req("echo queued")).await })
    };
    let started = Instant::now();
    assert!(e.fake.kill(&id));
    match within(rx.recv()).await {
        Some(ExecEvent::Error { .. }) => {}
        other => panic!("expected an error event, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_err!(
        within(queued).await.unwrap(),
        EngineError::Session(SessionError::Lost(_))
    );
    wait_until!("the session is given up", e.get_session(&id).await.is_err());
}

// ---------------------------------------------------------------------------
// Files in a session

#[tokio::test]
async fn session_files_are_written_read_listed_and_removed() {
    let e = engine().await;
    let id = session(&e).await;
    let path = e
        .write_file(&id, "src/main.txt", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(path, "/workspace/src/main.txt", "relative to /workspace");
    let got = e.read(&id, "/workspace/src/main.txt", None).await.unwrap();
    assert_eq!((got.data.as_slice(), got.truncated), (&b"hello"[..], false));
    assert_eq!(got.path, "/workspace/src/main.txt");
    assert_eq!(run(&e, &id, "cat src/main.txt").await.output, "hello");

    let entries = e.list_dir(&id, "src").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            entries[0].name.as_str(),
            entries[0].file_type,
            entries[0].size
        ),
        ("main.txt", FileType::File, 5)
    );
    let st = e.stat(&id, "src").await.unwrap();
    assert_eq!(st.file_type, FileType::Dir);

    assert_eq!(e.mkdir(&id, "a/b", true).await.unwrap(), "/workspace/a/b");
    assert_eq!(e.stat(&id, "a/b").await.unwrap().file_type, FileType::Dir);
    run(&e, &id, "echo from-shell > a/b/c.txt").await;
    assert_eq!(
        e.read(&id, "a/b/c.txt", None).await.unwrap().data,
        b"from-shell\n"
    );
    e.remove(&id, "a", true).await.unwrap();
    assert_err!(
        e.stat(&id, "a").await,
        EngineError::File(FileError::NotFound(_))
    );
    e.remove(&id, "src/main.txt", false).await.unwrap();
    assert!(e.list_dir(&id, "src").await.unwrap().is_empty());
}

#[tokio::test]
async fn session_file_errors_are_typed() {
    let e = engine().await;
    let id = session(&e).await;
    assert_err!(
        e.read(&id, "missing.txt", None).await,
        EngineError::File(FileError::NotFound(_))
    );
    assert_err!(
        e.mkdir(&id, "x/y", false).await,
        EngineError::File(FileError::NotFound(_))
    );
    e.mkdir(&id, "d", false).await.unwrap();
    assert_err!(
        e.mkdir(&id, "d", false).await,
        EngineError::File(FileError::AlreadyExists(_))
    );
    e.write_file(&id, "d/f", b"1".to_vec()).await.unwrap();
    assert_err!(
        e.remove(&id, "d", false).await,
        EngineError::File(FileError::InvalidPath(_))
    );
    assert_err!(
        e.read(&id, "d", None).await,
        EngineError::File(FileError::InvalidPath(_))
    );
    assert_err!(
        e.list_dir(&id, "d/f").await,
        EngineError::File(FileError::InvalidPath(_))
    );
    assert_err!(
        e.read(&id, "", None).await,
        EngineError::File(FileError::InvalidPath(_))
    );
    assert_err!(
        e.write_file(&id, "a\0b", vec![]).await,
        EngineError::File(FileError::InvalidPath(_))
    );
}

#[tokio::test]
async fn reads_are_capped_by_max_read_bytes_and_the_request() {
    let e = engine_with(|c| c.max_read_bytes = 4).await;
    let id = session(&e).await;
    e.write_file(&id, "f", b"0123456789".to_vec())
        .await
        .unwrap();
    let got = e.read(&id, "f", None).await.unwrap();
    assert_eq!((got.data.as_slice(), got.truncated), (&b"0123"[..], true));
    let got = e.read(&id, "f", Some(2)).await.unwrap();
    assert_eq!((got.data.as_slice(), got.truncated), (&b"01"[..], true));
    let got = e.read(&id, "f", Some(100)).await.unwrap();
    assert_eq!(got.data, b"0123", "the config caps a larger request");
}

#[tokio::test]
async fn reads_stream_in_chunks_and_a_dropped_read_ends_in_the_sandbox() {
    use sandkasten_runtime::fake::FAKE_READ_CHUNK;
    let e = engine().await;
    let id = session(&e).await;
    let data: Vec<u8> = (0..=255u8).cycle().take(10 * FAKE_READ_CHUNK + 1).collect();
    e.write_file(&id, "big", data.clone()).await.unwrap();
    let mut r = e.read_file(&id, "big", None).await.unwrap();
    assert_eq!(r.path, "/workspace/big");
    let (mut chunks, mut back) = (0, Vec::new());
    while let Some(c) = within(r.next()).await {
        chunks += 1;
        back.extend_from_slice(&c.unwrap());
    }
    assert!(back == data && !r.truncated());
    assert_eq!(chunks, 11, "the read did not come in the agent's chunks");

    // A reader dropped half-way (the HTTP client left) ends the read in
    // the sandbox, and the session serves on.
    let mut r = e.read_file(&id, "big", None).await.unwrap();
    within(r.next()).await.unwrap().unwrap();
    drop(r);
    within(e.fake.cancelled_reads_reach(1)).await;
    assert_eq!(run(&e, &id, "echo on").await.output, "on\n");
}

#[tokio::test]
async fn a_session_whose_agent_predates_streamed_reads_is_still_readable() {
    let e = engine().await;
    e.fake.set_agent_protocol(1);
    let id = session(&e).await;
    e.write_file(&id, "f", b"from an old agent".to_vec())
        .await
        .unwrap();
    let got = e.read(&id, "f", Some(4)).await.unwrap();
    assert_eq!((got.data.as_slice(), got.truncated), (&b"from"[..], true));
    assert_err!(
        e.read(&id, "missing", None).await,
        EngineError::File(FileError::NotFound(_))
    );
    // Never sent a request it cannot decode: its connection, and so the
    // session, live on.
    assert_eq!(
        e.get_session(&id).await.unwrap().status,
        SessionState::Running
    );
    assert_eq!(run(&e, &id, "echo on").await.output, "on\n");
}

#[tokio::test]
async fn a_sessionless_read_holds_its_workspace_until_it_ends() {
    use sandkasten_runtime::fake::FAKE_READ_CHUNK;
    let e = engine().await;
    e.create_workspace(CreateWorkspace {
        id: "w".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let data = vec![7u8; 4 * FAKE_READ_CHUNK];
    e.workspace_write_file("w", "f", data.clone())
        .await
        .unwrap();
    let mut r = e.workspace_read_file("w", "f", None).await.unwrap();
    assert_eq!(r.path, "/workspace/f");
    within(r.next()).await.unwrap().unwrap();
    assert_err!(
        e.delete_workspace("w").await,
        EngineError::Workspace(WorkspaceError::InUse { .. })
    );
    let mut rest = 0;
    while let Some(c) = within(r.next()).await {
        rest += c.unwrap().len();
    }
    assert_eq!(rest, data.len() - FAKE_READ_CHUNK);
    drop(r);
    e.delete_workspace("w").await.unwrap();
}

// ---------------------------------------------------------------------------
// Workspaces

#[tokio::test]
async fn workspaces_are_created_listed_and_validated() {
    let e = engine().await;
    let info = e
        .create_workspace(CreateWorkspace {
            id: "proj-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (info.id.as_str(), info.in_use, info.size_bytes),
        ("proj-1", false, 0)
    );
    assert!(e.fake.has_workspace("proj-1"));
    assert_err!(
        e.create_workspace(CreateWorkspace {
            id: "proj-1".into(),
            ..Default::default()
        })
        .await,
        EngineError::Workspace(WorkspaceError::AlreadyExists(_))
    );
    for bad in ["../x", ".hidden", "a b", ""] {
        assert_err!(
            e.create_workspace(CreateWorkspace {
                id: bad.into(),
                ..Default::default()
            })
            .await,
            EngineError::Workspace(WorkspaceError::InvalidId(_))
        );
    }
    assert_err!(
        e.create_workspace(CreateWorkspace {
            id: "small".into(),
            quota_bytes: Some(MIN_QUOTA_BYTES - 1),
            ..Default::default()
        })
        .await,
        EngineError::InvalidRequest(_)
    );
    assert!(!e.fake.has_workspace("small"));
    let list = e.list_workspaces().await.unwrap();
    assert_eq!(
        list.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["proj-1"]
    );
    assert_eq!(e.get_workspace("proj-1").await.unwrap().id, "proj-1");
    assert_err!(
        e.get_workspace("nope").await,
        EngineError::Workspace(WorkspaceError::NotFound(_))
    );
    assert_err!(
        e.create_session(CreateSession {
            workspace_id: Some("bad/id".into()),
            ..Default::default()
        })
        .await,
        EngineError::Workspace(WorkspaceError::InvalidId(_))
    );
}

#[tokio::test]
async fn a_mounted_workspace_is_in_use_and_cannot_be_deleted() {
    let e = engine().await;
    let sid = session_on(&e, "shared").await;
    let info = e.get_session(&sid).await.unwrap();
    assert_eq!(info.workspace_id.as_deref(), Some("shared"));
    assert_eq!(
        e.fake.created()[0].workspace,
        WorkspaceMount::Persistent("shared".into())
    );
    assert!(e.get_workspace("shared").await.unwrap().in_use);
    match e.delete_workspace("shared").await {
        Err(EngineError::Workspace(WorkspaceError::InUse {
            id,
            holder: Holder::Session(holder),
        })) => assert_eq!((id.as_str(), holder.as_str()), ("shared", sid.as_str())),
        other => panic!("expected InUse by {sid}, got {other:?}"),
    }
    assert!(e.fake.has_workspace("shared"));

    e.destroy_session(&sid).await.unwrap();
    let ws = e.get_workspace("shared").await.unwrap();
    assert!(!ws.in_use);
    assert!(ws.last_used_at.is_some());
    e.delete_workspace("shared").await.unwrap();
    assert!(!e.fake.has_workspace("shared"));
    assert_err!(
        e.get_workspace("shared").await,
        EngineError::Workspace(WorkspaceError::NotFound(_))
    );
}

#[tokio::test]
async fn workspace_files_outlive_their_session() {
    let e = engine().await;
    let first = session_on(&e, "keep").await;
    e.write_file(&first, "notes.txt", b"remember".to_vec())
        .await
        .unwrap();
    run(&e, &first, "echo more > /workspace/more.txt").await;
    e.destroy_session(&first).await.unwrap();

    let second = session_on(&e, "keep").await;
    assert_eq!(
        run(&e, &second, "cat notes.txt more.txt").await.output,
        "remembermore\n"
    );
    let ws = e.get_workspace("keep").await.unwrap();
    assert_eq!(ws.size_bytes, 8 + 5);
}

#[tokio::test]
async fn sessionless_workspace_files_map_paths_inside_the_workspace() {
    let e = engine().await;
    e.create_workspace(CreateWorkspace {
        id: "w".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let path = e
        .workspace_write_file("w", "/workspace/a/x.txt", b"abc".to_vec())
        .await
        .unwrap();
    assert_eq!(path, "/workspace/a/x.txt");
    for p in ["a/x.txt", "/a/x.txt", "/workspace/a/x.txt"] {
        let got = e.ws_read("w", p, None).await.unwrap();
        assert_eq!(
            (got.path.as_str(), got.data.as_slice()),
            ("/workspace/a/x.txt", &b"abc"[..])
        );
    }
    let got = e.ws_read("w", "a/x.txt", Some(1)).await.unwrap();
    assert_eq!((got.data.as_slice(), got.truncated), (&b"a"[..], true));
    let names = |v: Vec<crate::DirEntry>| v.into_iter().map(|d| d.name).collect::<Vec<_>>();
    assert_eq!(
        names(e.workspace_list_dir("w", "/workspace").await.unwrap()),
        ["a"]
    );
    assert_eq!(
        names(e.workspace_list_dir("w", "a").await.unwrap()),
        ["x.txt"]
    );
    assert_eq!(
        e.fake
            .workspace_files("w")
            .unwrap()
            .get("a/x.txt")
            .map(Vec::as_slice),
        Some(&b"abc"[..])
    );
    assert_err!(
        e.workspace_write_file("w", "/workspace", b"x".to_vec())
            .await,
        EngineError::File(FileError::InvalidPath(_))
    );
    assert_err!(
        e.ws_read("w", "nope", None).await,
        EngineError::File(FileError::NotFound(_))
    );
    assert_err!(
        e.ws_read("missing", "a", None).await,
        EngineError::Workspace(WorkspaceError::NotFound(_))
    );

    let sid = session_on(&e, "w").await;
    assert_eq!(run(&e, &sid, "cat a/x.txt").await.output, "abc");
    e.write_file(&sid, "from-session", b"s".to_vec())
        .await
        .unwrap();
    assert_eq!(
        e.ws_read("w", "from-session", None).await.unwrap().data,
        b"s"
    );
}

#[tokio::test]
async fn with_workspaces_disabled_every_workspace_call_is_refused() {
    let e = engine_with(|c| c.workspace_enabled = false).await;
    assert_err!(
        e.create_workspace(CreateWorkspace {
            id: "w".into(),
            ..Default::default()
        })
        .await,
        EngineError::Workspace(WorkspaceError::Disabled)
    );
    assert_err!(
        e.list_workspaces().await,
        EngineError::Workspace(WorkspaceError::Disabled)
    );
    assert_err!(
        e.ws_read("w", "a", None).await,
        EngineError::Workspace(WorkspaceError::Disabled)
    );
    assert_err!(
        e.create_session(CreateSession {
            workspace_id: Some("w".into()),
            ..Default::default()
        })
        .await,
        EngineError::Workspace(WorkspaceError::Disabled)
    );
    assert!(e.fake.created().is_empty());
}

#[tokio::test]
async fn snapshots_of_a_workspace_without_quota_are_unsupported() {
    let e = engine().await;
    e.create_workspace(CreateWorkspace {
        id: "plain".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_err!(
        e.create_snapshot("plain", None).await,
        EngineError::Unsupported {
            runtime: "fake",
            ..
        }
    );
    assert!(e.list_snapshots("plain").await.unwrap().is_empty());
    assert_err!(
        e.create_snapshot("missing", None).await,
        EngineError::Workspace(WorkspaceError::NotFound(_))
    );
}

#[tokio::test]
async fn snapshots_are_taken_listed_restored_copied_and_deleted() {
    let e = engine().await;
    let q = Some(MIN_QUOTA_BYTES);
    e.create_workspace(CreateWorkspace {
        id: "q".into(),
        quota_bytes: q,
        ..Default::default()
    })
    .await
    .unwrap();
    e.workspace_write_file("q", "f", b"v1".to_vec())
        .await
        .unwrap();
    let snap = e.create_snapshot("q", Some("first".into())).await.unwrap();
    assert_eq!(snap.workspace_id, "q");
    e.workspace_write_file("q", "f", b"v2".to_vec())
        .await
        .unwrap();

    let list = e.list_snapshots("q").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].id.as_str(), list[0].label.as_deref()),
        (snap.id.as_str(), Some("first"))
    );

    e.restore_snapshot("q", &snap.id).await.unwrap();
    assert_eq!(e.ws_read("q", "f", None).await.unwrap().data, b"v1");

    let copy = e
        .create_workspace(CreateWorkspace {
            id: "copy".into(),
            from_snapshot: Some(("q".into(), snap.id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(copy.quota_bytes, q, "the copy inherits the quota");
    assert_eq!(e.ws_read("copy", "f", None).await.unwrap().data, b"v1");
    assert_err!(
        e.create_workspace(CreateWorkspace {
            id: "copy2".into(),
            from_snapshot: Some(("q".into(), "snap-nope".into())),
            ..Default::default()
        })
        .await,
        EngineError::Workspace(WorkspaceError::SnapshotNotFound(_))
    );

    // Taken while mounted; restoring it then is refused.
    let sid = session_on(&e, "q").await;
    let live = e.create_snapshot("q", None).await.unwrap();
    match e.restore_snapshot("q", &live.id).await {
        Err(EngineError::Workspace(WorkspaceError::InUse {
            holder: Holder::Session(s),
            ..
        })) => assert_eq!(s, sid),
        other => panic!("expected InUse, got {other:?}"),
    }
    e.destroy_session(&sid).await.unwrap();

    e.delete_snapshot("q", &snap.id).await.unwrap();
    assert_eq!(e.list_snapshots("q").await.unwrap().len(), 1);
    assert_err!(
        e.restore_snapshot("q", &snap.id).await,
        EngineError::Workspace(WorkspaceError::SnapshotNotFound(_))
    );
    assert_err!(
        e.delete_snapshot("copy", &live.id).await,
        EngineError::Workspace(WorkspaceError::SnapshotNotFound(_))
    );
}

#[tokio::test]
async fn persist_by_default_gives_a_session_a_workspace_named_after_it() {
    let e = engine_with(|c| c.workspace_persist_by_default = true).await;
    let info = e.create_session(CreateSession::default()).await.unwrap();
    assert_eq!(info.workspace_id.as_deref(), Some(info.id.as_str()));
    assert_eq!(
        e.fake.created()[0].workspace,
        WorkspaceMount::Persistent(info.id.clone())
    );
    e.write_file(&info.id, "kept", b"1".to_vec()).await.unwrap();
    e.destroy_session(&info.id).await.unwrap();
    let ws = e.get_workspace(&info.id).await.unwrap();
    assert!(!ws.in_use);
    assert_eq!(e.ws_read(&info.id, "kept", None).await.unwrap().data, b"1");
    let named = session_on(&e, "explicit").await;
    assert_eq!(
        e.get_session(&named).await.unwrap().workspace_id.as_deref(),
        Some("explicit")
    );
}

#[tokio::test]
async fn a_workspace_is_exported_held_meanwhile_and_imported_elsewhere() {
    let e = engine().await;
    for id in ["src", "dst"] {
        e.create_workspace(CreateWorkspace {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Larger than what the export pipeline buffers, so it stays open
    // while unread.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    e.workspace_write_file("src", "big.bin", big.clone())
        .await
        .unwrap();
    e.workspace_write_file("src", "dir/small.txt", b"small".to_vec())
        .await
        .unwrap();

    let mut rx = e.export_workspace("src").await.unwrap();
    assert_err!(
        e.delete_workspace("src").await,
        EngineError::Workspace(WorkspaceError::InUse {
            holder: Holder::Busy,
            ..
        })
    );
    let mut bytes = Vec::new();
    while let Some(chunk) = within(rx.recv()).await {
        bytes.extend(chunk.unwrap());
    }
    assert!(bytes.len() > big.len());

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("export.bin");
    std::fs::write(&archive, &bytes).unwrap();
    e.import_workspace("dst", archive.clone()).await.unwrap();
    assert_eq!(e.fake.workspace_files("dst"), e.fake.workspace_files("src"));
    assert_eq!(
        e.ws_read("dst", "dir/small.txt", None).await.unwrap().data,
        b"small"
    );

    let sid = session_on(&e, "dst").await;
    assert_err!(
        e.import_workspace("dst", archive.clone()).await,
        EngineError::Workspace(WorkspaceError::InUse {
            holder: Holder::Session(_),
            ..
        })
    );
    e.destroy_session(&sid).await.unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not an archive").unwrap();
    assert_err!(
        e.import_workspace("dst", junk).await,
        EngineError::InvalidRequest(_)
    );
    assert_eq!(e.fake.workspace_files("dst"), e.fake.workspace_files("src"));
    assert_err!(
        e.export_workspace("missing").await,
        EngineError::Workspace(WorkspaceError::NotFound(_))
    );
    e.delete_workspace("src").await.unwrap();
}

/// Found by the session 13 attack: an import whose caller went away (its
/// HTTP client gave up) went on, but the workspace was free again, so a
/// session mounted it and the import then swapped the content under it.
/// The import runs to its end holding the workspace. (Its archive here is
/// a fifo: the import waits in its read until the test writes it.)
#[tokio::test]
async fn an_import_whose_caller_goes_away_holds_the_workspace_then_changes_nothing() {
    let e = engine().await;
    for id in ["src", "dst"] {
        e.create_workspace(CreateWorkspace {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    e.workspace_write_file("src", "new.txt", b"imported".to_vec())
        .await
        .unwrap();
    let mut rx = e.export_workspace("src").await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = within(rx.recv()).await {
        bytes.extend(chunk.unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("archive");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo of a path in our temp dir.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let import = tokio::spawn({
        let (e, fifo) = (e.engine.clone(), fifo.clone());
        async move { e.import_workspace("dst", fifo).await }
    });
    // Opening the fifo for writing returns once the import reads it.
    let writer = within(tokio::task::spawn_blocking({
        let fifo = fifo.clone();
        move || std::fs::OpenOptions::new().write(true).open(fifo).unwrap()
    }))
    .await
    .unwrap();
    import.abort();
    assert!(import.await.unwrap_err().is_cancelled());
    assert_err!(
        e.create_session(CreateSession {
            workspace_id: Some("dst".into()),
            ..Default::default()
        })
        .await,
        EngineError::Workspace(WorkspaceError::InUse { .. })
    );
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut w = writer;
        w.write_all(&bytes).unwrap();
    })
    .await
    .unwrap();
    // The import ends by itself without changing anything: its caller is
    // gone.
    let sid = within(async {
        loop {
            match e
                .create_session(CreateSession {
                    workspace_id: Some("dst".into()),
                    ..Default::default()
                })
                .await
            {
                Ok(s) => break s.id,
                Err(EngineError::Workspace(WorkspaceError::InUse { .. })) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await;
    assert!(
        e.ws_read("dst", "new.txt", None).await.is_err(),
        "the abandoned import changed the workspace"
    );
    e.destroy_session(&sid).await.unwrap();
}

// ---------------------------------------------------------------------------
// The pool

async fn wait_for_idle(e: &Engine, image: &str, n: usize) {
    wait_until!(
        format!("{n} idle pooled {image} sandboxes"),
        e.pool_stats().images[image].idle == n && e.pool_stats().images[image].in_flight == 0
    );
}

#[tokio::test]
async fn a_pooled_sandbox_takes_on_the_requests_env_and_workspace() {
    let e = engine_with(|c| c.pool = pool_of(&[("base", 2)])).await;
    wait_for_idle(&e, "base", 2).await;
    let pooled = e.fake.live_ids();
    assert_eq!(pooled.len(), 2);

    let env = vec![("FOO".to_string(), "b'ar".to_string())];
    let info = e
        .create_session(CreateSession {
            workspace_id: Some("pw".into()),
            env,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.acquire_source, AcquireSource::Pool);
    assert!(pooled.contains(&info.id), "the session is a pooled sandbox");
    assert_eq!(info.workspace_id.as_deref(), Some("pw"));

    let spec = e
        .fake
        .created()
        .into_iter()
        .find(|c| c.id == info.id)
        .unwrap();
    assert_eq!(
        spec.workspace,
        WorkspaceMount::Ephemeral,
        "started without them"
    );
    assert!(spec.env.is_empty());
    assert_eq!(e.fake.bound(), vec![(info.id.clone(), "pw".to_string())]);
    assert_eq!(e.fake.mounted_workspace(&info.id).as_deref(), Some("pw"));

    assert_eq!(
        run(&e, &info.id, "printenv FOO && pwd").await.output,
        "b'ar\n/workspace\n"
    );
    e.write_file(&info.id, "x.txt", b"x".to_vec())
        .await
        .unwrap();
    assert!(e.fake.workspace_files("pw").unwrap().contains_key("x.txt"));
    // A fresh shell (after `exit`) still has the session's variables.
    run(&e, &info.id, "exit 0").await;
    assert_eq!(run(&e, &info.id, "printenv FOO").await.output, "b'ar\n");

    let stats = &e.pool_stats().images["base"];
    assert_eq!(stats.hits, 1);
    assert!(stats.acquire_wait_p50_ms.is_some());
    assert_eq!(count(&e.metrics().creates, "pool"), 1);
    assert_eq!(
        stored_state(&e.store, &info.id),
        SessionState::Running,
        "the pool entry became a session row"
    );
    wait_for_idle(&e, "base", 2).await;
}

#[tokio::test]
async fn a_pooled_sandbox_that_cannot_be_bound_is_discarded_and_the_create_goes_cold() {
    let e = engine_with(|c| c.pool = pool_of(&[("base", 1)])).await;
    wait_for_idle(&e, "base", 1).await;
    let pooled = e.fake.live_ids();
    e.fake.fail_next_binds(1);
    let info = e
        .create_session(CreateSession {
            workspace_id: Some("ws".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.acquire_source, AcquireSource::Cold);
    assert!(!pooled.contains(&info.id));
    let spec = e
        .fake
        .created()
        .into_iter()
        .find(|c| c.id == info.id)
        .unwrap();
    assert_eq!(spec.workspace, WorkspaceMount::Persistent("ws".into()));
    assert!(
        e.fake.destroyed().contains(&pooled[0]),
        "the pooled one is gone"
    );
    let stats = &e.pool_stats().images["base"];
    assert_eq!((stats.hits, stats.discarded), (0, 1));
    assert_eq!(count(&e.metrics().creates, "cold"), 1);
    assert_eq!(run(&e, &info.id, "pwd").await.output, "/workspace\n");
    wait_for_idle(&e, "base", 1).await;
}

#[tokio::test]
async fn a_pooled_sandbox_that_dies_while_idle_is_replaced() {
    let e = engine_with(|c| c.pool = pool_of(&[("base", 2)])).await;
    wait_for_idle(&e, "base", 2).await;
    let victim = e.fake.live_ids()[0].clone();
    assert!(e.fake.kill(&victim));
    wait_until!(
        "the dead one is replaced",
        e.pool_stats().images["base"].discarded == 1
            && e.pool_stats().images["base"].idle == 2
            && e.fake.live_count() == 2
    );
    assert!(!e.fake.live_ids().contains(&victim));
    let info = e.create_session(CreateSession::default()).await.unwrap();
    assert_eq!(info.acquire_source, AcquireSource::Pool);
    assert_ne!(info.id, victim);
}

#[tokio::test]
async fn shutdown_drains_the_pool_and_keeps_sessions() {
    let e = engine_with(|c| c.pool = pool_of(&[("base", 2)])).await;
    wait_for_idle(&e, "base", 2).await;
    let sid = session(&e).await;
    wait_for_idle(&e, "base", 2).await;
    assert_eq!(e.fake.live_count(), 3);
    within(e.shutdown()).await;
    assert_eq!(e.pool_stats().images["base"].idle, 0);
    assert_eq!(e.fake.live_ids(), vec![sid.clone()]);
    assert!(e.store.list_pool_entries().unwrap().is_empty());
    assert_eq!(run(&e, &sid, "echo still").await.output, "still\n");
    // A create after shutdown is refused as such, not served cold.
    assert!(matches!(
        e.create_session(CreateSession::default()).await,
        Err(EngineError::Session(SessionError::ShuttingDown))
    ));
}

#[tokio::test]
async fn a_create_of_an_image_without_a_pool_is_cold_and_counted() {
    let e = engine_with(|c| c.pool = pool_of(&[("base", 1)])).await;
    e.fake.add_image("python");
    wait_for_idle(&e, "base", 1).await;
    let info = e
        .create_session(CreateSession {
            image: Some("python".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.acquire_source, AcquireSource::Cold);
    assert_eq!(e.pool_stats().images["base"].hits, 0);
    assert_eq!(e.pool_stats().images.len(), 1);
}

// ---------------------------------------------------------------------------
// Recovery

fn spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        image: "base".into(),
        limits: EngineConfig::default().limits,
        network: NetworkMode::None,
        readonly_rootfs: false,
        workspace: WorkspaceMount::Ephemeral,
        env: Vec::new(),
        wake: false,
        from_snapshot: None,
    }
}

/// A runtime for the sandboxes' tasks that outlives the "daemons" (each
/// engine before a restart runs on a runtime of its own that is dropped,
/// like a killed process).
fn host_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` on a daemon of its own that is gone afterwards.
fn in_a_daemon_that_then_crashes<T>(f: impl Future<Output = T>) -> T {
    let daemon = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = daemon.block_on(async { within(f).await });
    drop(daemon);
    out
}

#[test]
fn a_restarted_engine_reattaches_running_sessions_and_marks_dead_ones_lost() {
    let host = host_runtime();
    let fake = {
        let _on = host.enter();
        Arc::new(FakeRuntime::new())
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());

    let (alive, dead) = in_a_daemon_that_then_crashes(async {
        let e = Engine::start(
            config(|_| {}),
            fake.clone(),
            store.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let alive = session_on(&e, "kept").await;
        run(&e, &alive, "cd /tmp && export STATE=kept").await;
        let dead = session(&e).await;
        (alive, dead)
    });
    assert_eq!(fake.live_count(), 2, "sandboxes outlive the daemon");
    assert!(fake.kill(&dead));

    host.block_on(within(async {
        let stop = CancellationToken::new();
        let e = Engine::start(config(|_| {}), fake.clone(), store.clone(), stop.clone())
            .await
            .unwrap();
        let info = e.get_session(&alive).await.unwrap();
        assert_eq!(info.status, SessionState::Running);
        assert_eq!(info.cwd, "/tmp", "the cwd comes from the agent");
        assert_eq!(info.workspace_id.as_deref(), Some("kept"));
        assert_eq!(run(&e, &alive, "printenv STATE").await.output, "kept\n");
        assert!(e.get_workspace("kept").await.unwrap().in_use);
        assert!(fake.attach_count() >= 1);

        assert_err!(
            e.get_session(&dead).await,
            EngineError::Session(SessionError::NotFound(_))
        );
        assert_eq!(stored_state(&store, &dead), SessionState::Lost);
        assert_eq!(count(&e.metrics().sessions_ended, "lost"), 1);
        assert!(fake.destroyed().contains(&dead));
        assert_eq!(fake.live_ids(), vec![alive.clone()]);

        // The reattached session is watched like any other.
        assert!(fake.kill(&alive));
        wait_until!(
            "the reattached session is lost",
            e.get_session(&alive).await.is_err()
        );
        assert_eq!(stored_state(&store, &alive), SessionState::Lost);
        stop.cancel();
    }));
}

#[test]
fn a_restart_destroys_leftover_pooled_sandboxes_and_orphans() {
    let host = host_runtime();
    let fake = {
        let _on = host.enter();
        Arc::new(FakeRuntime::new())
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());

    in_a_daemon_that_then_crashes(async {
        let cfg = config(|c| c.pool = pool_of(&[("base", 2)]));
        let e = Engine::start(cfg, fake.clone(), store.clone(), CancellationToken::new())
            .await
            .unwrap();
        wait_for_idle(&e, "base", 2).await;
    });
    assert_eq!(store.list_pool_entries().unwrap().len(), 2);
    let pooled = fake.live_ids();
    assert_eq!(pooled.len(), 2);

    host.block_on(within(async {
        // A sandbox the store knows nothing about.
        fake.create(spec("orphan")).await.unwrap();
        let stop = CancellationToken::new();
        let e = Engine::start(config(|_| {}), fake.clone(), store.clone(), stop.clone())
            .await
            .unwrap();
        assert_eq!(fake.live_count(), 0);
        let destroyed = fake.destroyed();
        for id in pooled.iter().chain(std::iter::once(&"orphan".to_string())) {
            assert!(destroyed.contains(id), "{id} was not destroyed");
        }
        assert!(store.list_pool_entries().unwrap().is_empty());
        assert!(e.list_sessions().await.is_empty());
        stop.cancel();
    }));
}

// ---------------------------------------------------------------------------
// Metrics

#[tokio::test]
async fn metrics_count_creates_execs_and_ended_sessions() {
    let e = engine().await;
    let a = session(&e).await;
    let b = session(&e).await;
    for _ in 0..3 {
        run(&e, &a, "true").await;
    }
    e.destroy_session(&b).await.unwrap();
    let m = e.metrics();
    assert_eq!(count(&m.creates, "cold"), 2);
    assert_eq!(count(&m.creates, "pool"), 0);
    assert_eq!(count(&m.sessions, "running"), 1);
    assert_eq!(count(&m.sessions, "creating"), 0);
    assert_eq!(count(&m.sessions_ended, "destroyed"), 1);
    assert_eq!(m.exec_duration.count, 3);
    assert_eq!(m.exec_duration.buckets.last().unwrap().1, 3);
    assert!(m.pool.images.is_empty());
}

#[tokio::test]
/// The activity of an exec reaches the store without the exec waiting for
/// it; at the latest, shutdown's flush has written it.
async fn the_activity_of_execs_is_in_the_store_after_shutdown() {
    let e = engine_with(|_| {}).await;
    let sid = session(&e).await;
    assert_eq!(run(&e, &sid, "cd /tmp").await.cwd, "/tmp");
    within(e.shutdown()).await;
    let rec = e.store.get_session(&sid).unwrap().unwrap();
    assert_eq!(
        rec.cwd, "/tmp",
        "the exec's cwd is in the store after shutdown"
    );
}

// Disk limits

/// A create with `disk_limit_mb`.
fn with_disk_limit(mb: i64) -> CreateSession {
    CreateSession {
        disk_limit_mb: Some(mb),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_session_gets_the_default_disk_limit_or_its_own_within_the_cap() {
    let e = engine_with(|c| {
        c.limits.disk_mb = Some(2048);
        c.max_disk_limit_mb = 8192;
    })
    .await;
    let info = e.create_session(CreateSession::default()).await.unwrap();
    assert_eq!(info.disk_limit_mb, Some(2048));
    assert_eq!(
        e.fake.disk_limit(&info.id),
        Some(2048),
        "given to the sandbox"
    );

    let info = e.create_session(with_disk_limit(300)).await.unwrap();
    assert_eq!(info.disk_limit_mb, Some(300));
    assert_eq!(e.fake.disk_limit(&info.id), Some(300));
    assert_eq!(
        e.get_session(&info.id).await.unwrap().disk_limit_mb,
        Some(300)
    );
    let rec = e.store.get_session(&info.id).unwrap().unwrap();
    assert_eq!(rec.disk_limit_mb, Some(300), "kept for a restarted daemon");

    // The cap itself is allowed.
    let info = e.create_session(with_disk_limit(8192)).await.unwrap();
    assert_eq!(info.disk_limit_mb, Some(8192));

    let created = e.fake.created().len();
    for (mb, says) in [
        (0, "disk_limit_mb must be at least 1, got 0"),
        (-5, "disk_limit_mb must be at least 1, got -5"),
        (
            8193,
            "disk_limit_mb must be at most 8192 (this daemon's defaults.max_disk_limit_mb), got 8193",
        ),
    ] {
        match e.create_session(with_disk_limit(mb)).await {
            Err(EngineError::InvalidRequest(m)) => assert_eq!(m, says),
            other => panic!("disk_limit_mb {mb}: {other:?}"),
        }
    }
    assert_eq!(e.fake.created().len(), created, "nothing was started");
}

#[tokio::test]
async fn where_the_backend_enforces_no_disk_limit_a_session_shows_none() {
    let e = engine().await;
    e.fake.set_disk_limits_enforced(false);
    let info = e.create_session(with_disk_limit(300)).await.unwrap();
    assert_eq!(info.disk_limit_mb, None);
    assert_eq!(e.fake.disk_limit(&info.id), None);
    assert_eq!(session_info_limit(&e, &info.id).await, None);
    // The cap is checked all the same (the request is wrong everywhere).
    assert_err!(
        e.create_session(with_disk_limit(1 << 40)).await,
        EngineError::InvalidRequest(_)
    );
}

async fn session_info_limit(e: &Engine, id: &str) -> Option<u64> {
    e.get_session(id).await.unwrap().disk_limit_mb
}

#[tokio::test]
async fn a_pooled_sandbox_takes_the_requests_disk_limit_when_claimed() {
    let e = engine_with(|c| {
        c.limits.disk_mb = Some(4096);
        c.pool = pool_of(&[("base", 2)]);
    })
    .await;
    wait_for_idle(&e, "base", 2).await;
    let pooled = e.fake.live_ids();
    for id in &pooled {
        assert_eq!(e.fake.disk_limit(id), Some(4096), "pooled with the default");
    }
    let info = e.create_session(with_disk_limit(256)).await.unwrap();
    assert_eq!(info.acquire_source, AcquireSource::Pool);
    assert!(pooled.contains(&info.id));
    assert_eq!(info.disk_limit_mb, Some(256));
    assert_eq!(e.fake.disk_limit(&info.id), Some(256), "set at claim time");

    let info = e.create_session(CreateSession::default()).await.unwrap();
    assert_eq!(info.acquire_source, AcquireSource::Pool);
    assert_eq!(info.disk_limit_mb, Some(4096));
    assert_eq!(e.fake.disk_limit(&info.id), Some(4096));
}

#[tokio::test]
async fn a_full_host_refuses_creates_until_space_returns_and_sessions_keep_working() {
    let e = engine().await;
    let id = session(&e).await;
    e.fake.set_storage_full(Some("the data dir has 3 MiB free"));
    let created = e.fake.created().len();
    match e.create_session(CreateSession::default()).await {
        Err(EngineError::StorageFull(m)) => assert_eq!(m, "the data dir has 3 MiB free"),
        other => panic!("expected StorageFull, got {other:?}"),
    }
    assert_eq!(e.fake.created().len(), created, "nothing was started");
    assert_eq!(run(&e, &id, "echo still").await.output, "still\n");
    // No latch: the next create after space returns succeeds.
    e.fake.set_storage_full(None);
    session(&e).await;
}

/// On a runtime without network policies (the fake, like docker) the mode
/// is honoured, entries are refused rather than ignored, a live change is
/// refused, and the policy in force is reported and stored.
#[tokio::test]
async fn network_policies_on_a_runtime_without_them() {
    let e = engine_with(|c| c.network.allow_full = true).await;
    let req = |mode, allow: &[&str]| crate::NetworkRequest {
        mode: Some(mode),
        allow_out: allow.iter().map(|s| s.to_string()).collect(),
        deny_out: vec![],
    };
    let info = e
        .create_session(CreateSession {
            network: Some(req(NetworkMode::Full, &[])),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.network.mode, NetworkMode::Full);
    let row = e.store.get_session(&info.id).unwrap().unwrap();
    assert_eq!(row.network.as_deref(), Some("full allow= deny="));
    let err = e
        .create_session(CreateSession {
            network: Some(req(NetworkMode::Full, &["203.0.113.0/24"])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Unsupported { .. }), "{err:?}");
    let err = e
        .set_network(&info.id, req(NetworkMode::None, &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Unsupported { .. }), "{err:?}");
    // The same policy again changes nothing and is fine.
    e.set_network(&info.id, req(NetworkMode::Full, &[]))
        .await
        .unwrap();
    // Beyond the cap: refused before anything is created.
    let before = e.fake.created().len();
    let err = e
        .create_session(CreateSession {
            network: Some(req(NetworkMode::Full, &["10.1.0.0/16"])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(ref m) if m.contains("10.1.0.0/16")));
    assert_eq!(e.fake.created().len(), before);
}

// ---------------------------------------------------------------------------
// Metadata and TTL changes (the E2B API's metadata and timeout)

#[tokio::test]
async fn metadata_is_kept_shown_and_stored_and_checked() {
    let e = engine().await;
    let metadata: std::collections::BTreeMap<String, String> =
        [("owner".to_string(), "agent-7".to_string())].into();
    let info = e
        .create_session(CreateSession {
            metadata: metadata.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.metadata, metadata);
    assert_eq!(e.get_session(&info.id).await.unwrap().metadata, metadata);
    let rec = e.store.get_session(&info.id).unwrap().unwrap();
    assert_eq!(rec.metadata, metadata, "kept for a restarted daemon");
    for bad in [
        [(String::new(), "v".to_string())].into(),
        [("k".repeat(257), "v".to_string())].into(),
        [("k".to_string(), "v".repeat(4097))].into(),
        (0..65).map(|i| (format!("k{i}"), String::new())).collect(),
    ] {
        assert_err!(
            e.create_session(CreateSession {
                metadata: bad,
                ..Default::default()
            })
            .await,
            EngineError::InvalidRequest(_)
        );
    }
}

#[tokio::test]
async fn set_ttl_moves_the_expiry_persists_it_and_wakes_the_reaper() {
    let e = engine().await;
    let id = e
        .create_session(CreateSession {
            ttl_seconds: Some(3600),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let info = e.set_ttl(&id, 7200).await.unwrap();
    assert_eq!(info.ttl_seconds, 7200);
    let left = (info.expires_at - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((7190..=7200).contains(&left), "{left}");
    let rec = e.store.get_session(&id).unwrap().unwrap();
    assert_eq!(rec.ttl_seconds, 7200);
    assert_eq!(
        rec.expires_at_ms,
        info.expires_at.unix_timestamp_nanos() as i64 / 1_000_000
    );
    for bad in [0, 30 * 24 * 3600 + 1] {
        assert_err!(e.set_ttl(&id, bad).await, EngineError::InvalidRequest(_));
    }
    assert_err!(
        e.set_ttl("nope", 60).await,
        EngineError::Session(SessionError::NotFound(_))
    );
    // A shorter TTL takes effect without waiting for the old expiry.
    e.set_ttl(&id, 1).await.unwrap();
    wait_until!("the session expires", e.get_session(&id).await.is_err());
    assert_eq!(stored_state(&e.store, &id), SessionState::Expired);
}
