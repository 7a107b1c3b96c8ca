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

    match c.call(Request::ReadFile {
        path: p.clone(),
        max_bytes: None,
    }) {
        Response::FileData {
            path: got,
            data: back,
            truncated,
        } => {
            assert_eq!(got, p);
            assert_eq!(back, data);
            assert!(!truncated);
        }
        other => panic!("{other:?}"),
    }
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
    let read = |c: &mut common::Client, p: String, max| {
        c.call(Request::ReadFile {
            path: p,
            max_bytes: max,
        })
    };

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
    match read(&mut c, path(&agent, "ten"), Some(4)) {
        Response::FileData {
            data, truncated, ..
        } => {
            assert_eq!(data, b"0123");
            assert!(truncated);
        }
        other => panic!("{other:?}"),
    }
    match read(&mut c, path(&agent, "ten"), Some(10)) {
        Response::FileData {
            data, truncated, ..
        } => {
            assert_eq!(data, b"0123456789");
            assert!(!truncated);
        }
        other => panic!("{other:?}"),
    }
    // Files whose st_size lies (procfs) are read to EOF.
    match read(&mut c, "/proc/self/status".into(), None) {
        Response::FileData { data, .. } => assert!(data.starts_with(b"Name:")),
        other => panic!("{other:?}"),
    }
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
    let read = c.send(Request::ReadFile {
        path: path(&agent, "f"),
        max_bytes: None,
    });
    let (id, resp) = c.recv();
    assert_eq!(id, read, "the exec answered first: {resp:?}");
    assert!(matches!(resp, Response::FileData { ref data, .. } if data == b"content"));
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
    let resp = c.call(Request::ReadFile {
        path: secret,
        max_bytes: None,
    });
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
