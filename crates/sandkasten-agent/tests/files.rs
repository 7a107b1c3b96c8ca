//! File operations end to end against the real agent binary.

mod common;

use common::{require_root, Agent};
use sandkasten_protocol::{ErrorKind, FileType, Request, Response};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Instant;

fn path(agent: &Agent, rel: &str) -> String {
    agent.work.join(rel).to_str().unwrap().to_string()
}

fn error_kind(resp: Response) -> ErrorKind {
    match resp {
        Response::Error { kind, message } => {
            assert!(!message.is_empty());
            kind
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn binary_write_read_round_trip_creates_parents() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let data: Vec<u8> = (0..=255u8).collect();
    let p = path(&agent, "a/b/c/all.bin");
    let resp = c.call(Request::WriteFile {
        path: p.clone(),
        data: data.clone(),
        mode: None,
    });
    assert_eq!(resp, Response::Ok);
    assert_eq!(std::fs::read(&p).unwrap(), data);
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    let parent = std::fs::metadata(agent.work.join("a/b")).unwrap();
    assert_eq!(parent.permissions().mode() & 0o7777, 0o755);

    let r = c.read_file(&p, None).unwrap();
    assert_eq!((r.path, r.data, r.truncated), (p, data, false));
}

#[test]
fn write_truncates_and_honours_mode_exactly() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let p = path(&agent, "f.txt");
    std::fs::write(&p, "a much longer old content").unwrap();
    let resp = c.call(Request::WriteFile {
        path: p.clone(),
        data: b"new".to_vec(),
        mode: Some(0o600),
    });
    assert_eq!(resp, Response::Ok);
    assert_eq!(std::fs::read(&p).unwrap(), b"new");

    // A new file gets the mode exactly, whatever the umask.
    let q = path(&agent, "x.sh");
    let resp = c.call(Request::WriteFile {
        path: q.clone(),
        data: Vec::new(),
        mode: Some(0o777),
    });
    assert_eq!(resp, Response::Ok);
    assert_eq!(
        std::fs::metadata(&q).unwrap().permissions().mode() & 0o7777,
        0o777
    );
    assert_eq!(std::fs::metadata(&q).unwrap().len(), 0);

    let resp = c.call(Request::WriteFile {
        path: agent.work.to_str().unwrap().into(),
        data: b"x".to_vec(),
        mode: None,
    });
    assert_eq!(error_kind(resp), ErrorKind::IsADirectory);
}

#[test]
fn read_errors_and_truncation() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let read = |c: &mut common::Client, p: String, max| c.read_file(&p, max).unwrap_err();

    assert_eq!(
        error_kind(read(&mut c, path(&agent, "missing"), None)),
        ErrorKind::NotFound
    );
    assert_eq!(
        error_kind(read(&mut c, agent.work_str(), None)),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        error_kind(read(&mut c, "relative.txt".into(), None)),
        ErrorKind::InvalidPath
    );
    std::fs::write(agent.work.join("file"), "x").unwrap();
    assert_eq!(
        error_kind(read(&mut c, path(&agent, "file/below"), None)),
        ErrorKind::NotADirectory
    );

    std::fs::write(agent.work.join("ten"), "0123456789").unwrap();
    let r = c.read_file(&path(&agent, "ten"), Some(4)).unwrap();
    assert_eq!((&r.data[..], r.truncated), (&b"0123"[..], true));
    let r = c.read_file(&path(&agent, "ten"), Some(10)).unwrap();
    assert_eq!((&r.data[..], r.truncated), (&b"0123456789"[..], false));
    // Files whose st_size lies (procfs) are read to EOF.
    let r = c.read_file("/proc/self/status", None).unwrap();
    assert!(r.data.starts_with(b"Name:"));
    // A FIFO is refused rather than blocking the agent.
    let fifo = agent.work.join("fifo");
    let cpath = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o644) }, 0);
    assert_eq!(
        error_kind(read(&mut c, path(&agent, "fifo"), None)),
        ErrorKind::InvalidPath
    );
}

#[test]
fn list_dir_is_sorted_and_does_not_follow_symlinks() {
    let agent = Agent::start();
    let mut c = agent.connect();
    std::fs::write(agent.work.join("b.txt"), "hello").unwrap();
    std::fs::create_dir(agent.work.join("a-dir")).unwrap();
    std::os::unix::fs::symlink("/etc", agent.work.join("c-link")).unwrap();
    match c.call(Request::ListDir {
        path: agent.work_str(),
    }) {
        Response::Entries(entries) => {
            let summary: Vec<(String, FileType)> = entries
                .iter()
                .map(|e| (e.name.clone(), e.file_type))
                .collect();
            assert_eq!(
                summary,
                [
                    ("a-dir".to_string(), FileType::Dir),
                    ("b.txt".to_string(), FileType::File),
                    ("c-link".to_string(), FileType::Symlink),
                ]
            );
            assert_eq!(entries[1].size, 5);
            assert_eq!(entries[1].mode, 0o644);
        }
        other => panic!("{other:?}"),
    }
    let resp = c.call(Request::ListDir {
        path: path(&agent, "b.txt"),
    });
    assert_eq!(error_kind(resp), ErrorKind::NotADirectory);
    let resp = c.call(Request::ListDir {
        path: path(&agent, "nope"),
    });
    assert_eq!(error_kind(resp), ErrorKind::NotFound);
}

#[test]
fn stat_uses_lstat_and_reports_link_targets() {
    let agent = Agent::start();
    let mut c = agent.connect();
    std::os::unix::fs::symlink("../elsewhere", agent.work.join("link")).unwrap();
    match c.call(Request::Stat {
        path: path(&agent, "link"),
    }) {
        Response::Stat(st) => {
            assert_eq!(st.file_type, FileType::Symlink);
            assert_eq!(st.link_target.as_deref(), Some("../elsewhere"));
            assert_eq!(st.path, path(&agent, "link"));
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(agent.work.join("f"), "abc").unwrap();
    match c.call(Request::Stat {
        path: path(&agent, "f"),
    }) {
        Response::Stat(st) => {
            let meta = std::fs::metadata(agent.work.join("f")).unwrap();
            assert_eq!(st.file_type, FileType::File);
            assert_eq!(st.size, 3);
            assert_eq!(st.mode, 0o644);
            assert_eq!((st.uid, st.gid), (meta.uid(), meta.gid()));
            assert_eq!(st.mtime, meta.mtime());
            assert_eq!(st.link_target, None);
        }
        other => panic!("{other:?}"),
    }
    let resp = c.call(Request::Stat {
        path: path(&agent, "missing"),
    });
    assert_eq!(error_kind(resp), ErrorKind::NotFound);
}

#[test]
fn mkdir_with_and_without_parents() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let deep = path(&agent, "x/y/z");
    let resp = c.call(Request::Mkdir {
        path: deep.clone(),
        parents: false,
    });
    assert_eq!(error_kind(resp), ErrorKind::NotFound);
    let resp = c.call(Request::Mkdir {
        path: deep.clone(),
        parents: true,
    });
    assert_eq!(resp, Response::Ok);
    assert!(std::fs::metadata(&deep).unwrap().is_dir());
    // Idempotent with parents, an error without.
    let resp = c.call(Request::Mkdir {
        path: deep.clone(),
        parents: true,
    });
    assert_eq!(resp, Response::Ok);
    let resp = c.call(Request::Mkdir {
        path: deep,
        parents: false,
    });
    assert_eq!(error_kind(resp), ErrorKind::AlreadyExists);
}

#[test]
fn remove_needs_recursive_for_a_tree_and_never_follows_symlinks() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), "keep").unwrap();
    let tree = agent.work.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/f"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("sub/escape")).unwrap();

    let resp = c.call(Request::Remove {
        path: path(&agent, "tree"),
        recursive: false,
    });
    assert_eq!(error_kind(resp), ErrorKind::DirectoryNotEmpty);
    let resp = c.call(Request::Remove {
        path: path(&agent, "tree"),
        recursive: true,
    });
    assert_eq!(resp, Response::Ok);
    assert!(!tree.exists());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");

    // Files, symlinks and empty directories go without `recursive`.
    std::fs::write(agent.work.join("f"), "").unwrap();
    std::fs::create_dir(agent.work.join("empty")).unwrap();
    std::os::unix::fs::symlink(&outside, agent.work.join("l")).unwrap();
    for name in ["f", "empty", "l"] {
        let resp = c.call(Request::Remove {
            path: path(&agent, name),
            recursive: false,
        });
        assert_eq!(resp, Response::Ok, "{name}");
    }
    assert!(outside.exists());
    let resp = c.call(Request::Remove {
        path: path(&agent, "f"),
        recursive: false,
    });
    assert_eq!(error_kind(resp), ErrorKind::NotFound);
}

#[test]
fn a_file_read_is_answered_while_a_long_exec_runs() {
    let agent = Agent::start();
    let mut c = agent.connect();
    std::fs::write(agent.work.join("f"), "content").unwrap();
    let start = Instant::now();
    let exec = c.send(Request::Exec {
        cmd: "sleep 2; echo finished".into(),
        timeout_ms: 30_000,
        max_output_bytes: 1 << 20,
    });
    let read = c.send(Request::ReadStream {
        path: path(&agent, "f"),
        max_bytes: None,
        window: 1,
    });
    let (id, resp) = c.recv();
    assert_eq!(id, read, "the exec answered first: {resp:?}");
    assert!(matches!(resp, Response::FileChunk { ref data } if data == b"content"));
    let (id, resp) = c.recv();
    assert_eq!(id, read, "the exec answered first: {resp:?}");
    assert!(matches!(resp, Response::FileEnd { .. }), "{resp:?}");
    let r = c.collect_exec(exec, start);
    assert_eq!(r.text(), "finished\n");
}

#[test]
fn file_operations_run_with_the_sandbox_users_rights() {
    require_root();
    const NOBODY: u32 = 65534;
    let agent = Agent::start_as(Some(NOBODY), Some(NOBODY), |dir| {
        // tempdir() is 0700; the sandbox user must be able to enter it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mine = dir.join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    });
    let mut c = agent.connect();
    let root_owned = agent.work_str(); // created by root, 0755
    let resp = c.call(Request::WriteFile {
        path: format!("{root_owned}/denied.txt"),
        data: b"x".to_vec(),
        mode: None,
    });
    assert_eq!(error_kind(resp), ErrorKind::PermissionDenied);
    assert!(!agent.work.join("denied.txt").exists());

    let secret = agent
        .dir
        .path()
        .join("secret")
        .to_str()
        .unwrap()
        .to_string();
    let resp = c.read_file(&secret, None).unwrap_err();
    assert_eq!(error_kind(resp), ErrorKind::PermissionDenied);

    let mine = agent.dir.path().join("mine");
    let resp = c.call(Request::WriteFile {
        path: mine.join("sub/ok.txt").to_str().unwrap().into(),
        data: b"ok".to_vec(),
        mode: None,
    });
    assert_eq!(resp, Response::Ok);
    for p in [mine.join("sub"), mine.join("sub/ok.txt")] {
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "{p:?}");
    }

    // The shell runs as the sandbox user too, without supplementary groups.
    let r = c.exec("id -u; id -g; id -G");
    assert_eq!(r.text(), "65534\n65534\n65534\n");

    // And the agent's own identity is intact for later requests.
    let resp = c.call(Request::Remove {
        path: mine.join("sub").to_str().unwrap().into(),
        recursive: true,
    });
    assert_eq!(resp, Response::Ok);
}

/// The agent's peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_streamed_read_comes_in_bounded_chunks() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let chunk = sandkasten_protocol::READ_CHUNK_BYTES;
    let data: Vec<u8> = (0..=250u8).cycle().take(3 * chunk + 17).collect();
    let p = path(&agent, "three.bin");
    std::fs::write(&p, &data).unwrap();
    let r = c.read_file(&p, None).unwrap();
    assert_eq!(r.chunks, [chunk, chunk, chunk, 17]);
    assert!(r.data == data && !r.truncated);
    let r = c.read_file(&p, Some(chunk as u64 + 1)).unwrap();
    assert_eq!((r.chunks, r.truncated), (vec![chunk, 1], true));
    // Empty: no chunk, just the end.
    std::fs::write(agent.work.join("empty"), b"").unwrap();
    let r = c.read_file(&path(&agent, "empty"), None).unwrap();
    assert_eq!((r.chunks.len(), r.truncated), (0, false));
}

#[test]
fn a_read_sends_its_window_then_waits_and_a_cancel_ends_it_silently() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let p = path(&agent, "big");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let stalled = c.send(Request::ReadStream {
        path: p.clone(),
        max_bytes: None,
        window: 2,
    });
    for _ in 0..2 {
        assert!(matches!(c.recv_for(stalled), Response::FileChunk { .. }));
    }
    c.send(Request::CancelRead { target: stalled });
    // The connection goes on serving: a whole read and a ping behind it.
    let r = c.read_file(&p, Some(1 << 20)).unwrap();
    assert_eq!((r.data.len(), r.truncated), (1 << 20, true));
    assert!(matches!(c.call(Request::Ping), Response::Pong { .. }));
    // Never acknowledged, the stalled read sent nothing beyond its window,
    // and after the cancel not even its end.
    let mut extra = Vec::new();
    while let Some(i) = c.stash_position(stalled) {
        extra.push(c.take_stashed(i));
    }
    assert!(extra.is_empty(), "frames of the cancelled read: {extra:?}");
}

#[test]
fn protocol_1_whole_file_reads_are_refused() {
    let agent = Agent::start();
    let mut c = agent.connect();
    std::fs::write(agent.work.join("f"), "x").unwrap();
    let resp = c.call(Request::ReadFile {
        path: path(&agent, "f"),
        max_bytes: None,
    });
    assert_eq!(error_kind(resp), ErrorKind::InvalidRequest);
}

/// Issue 15: 16 concurrent reads of a 64 MiB file made the agent hold over
/// 1 GiB (a whole file per read, plus its frame). Streamed, the agent's
/// peak memory grows by its chunk budget at most, whatever the number of
/// reads: measured here with 16 connections reading at once.
#[test]
fn concurrent_reads_of_a_huge_file_cost_the_agent_a_bounded_amount_of_memory() {
    let agent = Agent::start();
    let size: u64 = 64 << 20;
    let p = path(&agent, "sparse");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    // Warm up (threads, allocator arenas), then take the baseline.
    agent.connect().read_file(&p, Some(1 << 20)).unwrap();
    let before = peak_rss_kib(agent.pid());
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let r = agent.connect().read_file(&p, None).unwrap();
                    assert_eq!(r.data.len() as u64, size);
                    assert!(r.data.iter().all(|&b| b == 0) && !r.truncated);
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
    });
    let grown_mib = (peak_rss_kib(agent.pid()) - before) / 1024;
    eprintln!("agent peak RSS: {before} KiB before, grown by {grown_mib} MiB");
    // Chunk buffers and frames: 2 * 8 * 256 KiB = 4 MiB; the rest is
    // room for 16 request threads and allocator slack. One whole file
    // (the old behaviour) would be 64 MiB.
    assert!(
        grown_mib < 24,
        "the agent's peak memory grew by {grown_mib} MiB during 16 reads of 64 MiB"
    );
}

/// A pids cgroup of the test's own (v1 `pids` hierarchy, else v2), removed
/// when dropped (its processes must be gone by then).
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    fn new() -> PidsCgroup {
        let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
        let root = if v1.join("cgroup.procs").exists() {
            v1.to_path_buf()
        } else {
            std::path::PathBuf::from("/sys/fs/cgroup")
        };
        let dir = root.join(format!("sandkasten-agent-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        assert!(
            dir.join("pids.max").exists(),
            "no pids controller in {} (enable it in cgroup.subtree_control)",
            root.display()
        );
        PidsCgroup(dir)
    }

    /// Moves `pid` in and lets it start no more threads. The limit is 0,
    /// not the current count: a thread that ends later (the agent has
    /// short-lived ones) must not leave room for a new one.
    fn freeze_threads(&self, pid: i32) {
        std::fs::write(self.0.join("pids.max"), "0").unwrap();
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A read cannot run inline on the connection's reader thread (it would
/// wait there for acknowledgements only that thread can read): in a sandbox
/// at its pids limit, once the waiting worker threads are busy, it is
/// refused, and the connection serves on.
#[test]
fn a_read_without_a_thread_is_refused_and_the_connection_serves_on() {
    require_root();
    let cgroup = PidsCgroup::new();
    let agent = Agent::start();
    let mut c = agent.connect();
    std::fs::write(agent.work.join("big"), vec![b'y'; 4 << 20]).unwrap();
    // Its worker thread waits for the next request after answering.
    assert!(matches!(c.call(Request::Ping), Response::Pong { .. }));
    cgroup.freeze_threads(agent.pid());
    // Each waiting worker takes one of these reads, which then waits for
    // an acknowledgement that never comes; how many wait depends on which
    // threads finished first (at most 4 are kept). The next is refused.
    let mut taken = 0;
    let (kind, message) = loop {
        match c.call(Request::ReadStream {
            path: path(&agent, "big"),
            max_bytes: None,
            window: 1,
        }) {
            Response::FileChunk { .. } => {
                taken += 1;
                assert!(taken <= 5, "more reads got a thread than workers wait");
            }
            Response::Error { kind, message } => break (kind, message),
            other => panic!("expected a chunk or a refusal, got {other:?}"),
        }
    };
    assert_eq!(kind, ErrorKind::Io);
    assert!(message.contains("thread"), "{message}");
    // Other requests still run (inline).
    assert!(matches!(c.call(Request::Ping), Response::Pong { .. }));
    drop(c);
    drop(agent);
}
