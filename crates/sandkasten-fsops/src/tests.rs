//! Tests on the real filesystem: a temp dir holds `root/` (the root of the
//! [`RootedFs`]) and `outside/` (which nothing may ever reach).

use super::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const NOBODY: u32 = 65534;

struct Fixture {
    _tmp: tempfile::TempDir,
    /// The temp dir itself.
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    fs: RootedFs,
}

/// `root/` and `outside/` (holding `secret` = "outside") in a fresh temp dir.
fn fixture() -> Fixture {
    fixture_as(None)
}

fn fixture_as(identity: Option<(u32, u32)>) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    // tempdir() is 0700; a non-root identity must be able to enter it.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "outside").unwrap();
    let fs = RootedFs::open(&root, identity).unwrap();
    Fixture {
        _tmp: tmp,
        base,
        root,
        outside,
        fs,
    }
}

impl Fixture {
    /// Fails unless `outside/` and the temp dir hold exactly what the
    /// fixture put there.
    fn assert_outside_untouched(&self) {
        assert_eq!(names(&self.outside), ["secret"]);
        assert_eq!(
            std::fs::read(self.outside.join("secret")).unwrap(),
            b"outside"
        );
        assert_eq!(names(&self.base), ["outside", "root"]);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn kind<T: std::fmt::Debug>(r: FsResult<T>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            assert!(!e.message.is_empty());
            e.kind
        }
    }
}

fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

fn require_root() {
    // SAFETY: plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test changes the fsuid and must run as root");
}

/// The calling thread's (real, effective, saved, filesystem) uid and gid.
fn thread_ids() -> ([u32; 4], [u32; 4]) {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let ids = |key: &str| -> [u32; 4] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        let v: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        [v[0], v[1], v[2], v[3]]
    };
    (ids("Uid:"), ids("Gid:"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- read_file ----

#[test]
fn read_returns_data_and_truncates_at_max_bytes() {
    let f = fixture();
    std::fs::write(f.root.join("ten"), "0123456789").unwrap();
    assert_eq!(
        f.fs.read_file("/ten", None).unwrap(),
        (b"0123456789".to_vec(), false)
    );
    assert_eq!(
        f.fs.read_file("/ten", Some(4)).unwrap(),
        (b"0123".to_vec(), true)
    );
    assert_eq!(
        f.fs.read_file("/ten", Some(10)).unwrap(),
        (b"0123456789".to_vec(), false)
    );
    assert_eq!(f.fs.read_file("/ten", Some(0)).unwrap(), (vec![], true));
    // Relative paths start at the root too.
    assert_eq!(f.fs.read_file("ten", Some(2)).unwrap().0, b"01");
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    std::fs::write(f.root.join("big"), &data).unwrap();
    assert_eq!(f.fs.read_file("/big", None).unwrap(), (data, false));
}

#[test]
fn read_errors() {
    let f = fixture();
    std::fs::write(f.root.join("file"), "x").unwrap();
    std::fs::create_dir(f.root.join("dir")).unwrap();
    assert_eq!(kind(f.fs.read_file("/missing", None)), ErrorKind::NotFound);
    assert_eq!(kind(f.fs.read_file("/dir", None)), ErrorKind::IsADirectory);
    assert_eq!(kind(f.fs.read_file("/", None)), ErrorKind::IsADirectory);
    assert_eq!(
        kind(f.fs.read_file("/file/below", None)),
        ErrorKind::NotADirectory
    );
    assert_eq!(kind(f.fs.read_file("", None)), ErrorKind::InvalidPath);
    assert_eq!(kind(f.fs.read_file("/a\0b", None)), ErrorKind::InvalidPath);
    // A FIFO is refused rather than blocking.
    let fifo = std::ffi::CString::new(s(&f.root.join("fifo"))).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert_eq!(kind(f.fs.read_file("/fifo", None)), ErrorKind::InvalidPath);
    symlink("loop", f.root.join("loop")).unwrap();
    assert_eq!(kind(f.fs.read_file("/loop", None)), ErrorKind::InvalidPath);
    let e = f.fs.read_file("/missing", None).unwrap_err();
    assert!(e.message.starts_with("/missing: "), "{}", e.message);
    let e = f.fs.read_file("rel/missing", None).unwrap_err();
    assert!(e.message.starts_with("/rel/missing: "), "{}", e.message);
}

#[test]
fn open_read_gives_the_file_and_its_size_or_the_errors_of_a_read() {
    let f = fixture();
    std::fs::write(f.root.join("ten"), "0123456789").unwrap();
    std::fs::create_dir(f.root.join("dir")).unwrap();
    let (mut file, size) = f.fs.open_read("ten").unwrap();
    assert_eq!(size, 10);
    let mut got = String::new();
    file.read_to_string(&mut got).unwrap();
    assert_eq!(got, "0123456789");
    assert_eq!(kind(f.fs.open_read("/dir")), ErrorKind::IsADirectory);
    assert_eq!(kind(f.fs.open_read("/missing")), ErrorKind::NotFound);
    symlink(&f.outside, f.root.join("out")).unwrap();
    assert_eq!(kind(f.fs.open_read("/out/secret")), ErrorKind::NotFound);
}

#[test]
fn read_follows_symlinks_inside_the_root() {
    let f = fixture();
    std::fs::create_dir(f.root.join("etc")).unwrap();
    std::fs::write(f.root.join("etc/hostname"), "inside").unwrap();
    symlink("/etc/hostname", f.root.join("abs")).unwrap();
    symlink("etc/hostname", f.root.join("rel")).unwrap();
    assert_eq!(f.fs.read_file("/abs", None).unwrap().0, b"inside");
    assert_eq!(f.fs.read_file("/rel", None).unwrap().0, b"inside");
}

#[test]
fn proc_files_are_read_to_eof() {
    // The agent's case: the root is `/`, and procfs sizes say 0.
    let fs = RootedFs::open(Path::new("/"), None).unwrap();
    let (data, truncated) = fs.read_file("/proc/self/status", None).unwrap();
    assert!(
        data.starts_with(b"Name:"),
        "{}",
        String::from_utf8_lossy(&data)
    );
    assert!(!truncated);
}

// ---- write_file ----

#[test]
fn write_creates_parents_and_the_file_with_its_mode_exactly() {
    let f = fixture();
    let data: Vec<u8> = (0..=255u8).collect();
    f.fs.write_file("/a/b/c/all.bin", &data, None).unwrap();
    assert_eq!(std::fs::read(f.root.join("a/b/c/all.bin")).unwrap(), data);
    let mode = |p: &str| std::fs::metadata(f.root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("a/b/c/all.bin"), 0o644);
    for d in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(d), 0o755 & !umask(), "{d}");
    }
    // Exactly the mode asked for, whatever the umask.
    f.fs.write_file("/x.sh", b"", Some(0o777)).unwrap();
    assert_eq!(mode("x.sh"), 0o777);
    assert_eq!(std::fs::metadata(f.root.join("x.sh")).unwrap().len(), 0);
    f.fs.write_file("rel/y", b"y", Some(0o600)).unwrap();
    assert_eq!(mode("rel/y"), 0o600);
    assert_eq!(std::fs::read(f.root.join("rel/y")).unwrap(), b"y");
}

#[test]
fn write_truncates_an_existing_file_and_keeps_its_mode() {
    let f = fixture();
    let p = f.root.join("f.txt");
    std::fs::write(&p, "a much longer old content").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    f.fs.write_file("/f.txt", b"new", Some(0o600)).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
}

#[test]
fn write_through_a_final_symlink_stays_inside_the_root() {
    let f = fixture();
    std::fs::write(f.root.join("target"), "old").unwrap();
    symlink("/target", f.root.join("abs")).unwrap();
    symlink("../../target", f.root.join("rel")).unwrap();
    f.fs.write_file("/abs", b"via abs", None).unwrap();
    assert_eq!(std::fs::read(f.root.join("target")).unwrap(), b"via abs");
    f.fs.write_file("/rel", b"via rel", None).unwrap();
    assert_eq!(std::fs::read(f.root.join("target")).unwrap(), b"via rel");
    // A final symlink to the outside file means <root>/<that path>:
    // missing, and nothing is created for it.
    symlink(f.outside.join("secret"), f.root.join("out")).unwrap();
    assert_eq!(
        kind(f.fs.write_file("/out", b"pwned", None)),
        ErrorKind::NotFound
    );
    symlink("../outside/secret", f.root.join("up")).unwrap();
    assert_eq!(
        kind(f.fs.write_file("/up", b"pwned", None)),
        ErrorKind::NotFound
    );
    f.assert_outside_untouched();
    assert!(!f.root.join("outside").exists());
}

#[test]
fn write_errors() {
    let f = fixture();
    std::fs::create_dir(f.root.join("dir")).unwrap();
    std::fs::write(f.root.join("file"), "x").unwrap();
    assert_eq!(
        kind(f.fs.write_file("/dir", b"x", None)),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        kind(f.fs.write_file("/", b"x", None)),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        kind(f.fs.write_file("/dir/.", b"x", None)),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        kind(f.fs.write_file("/new/", b"x", None)),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        kind(f.fs.write_file("/file/x", b"x", None)),
        ErrorKind::NotADirectory
    );
    assert_eq!(
        kind(f.fs.write_file("/file/sub/x", b"x", None)),
        ErrorKind::NotADirectory
    );
    assert_eq!(std::fs::read(f.root.join("file")).unwrap(), b"x");
    assert_eq!(names(&f.root), ["dir", "file"]);
}

// ---- list_dir ----

#[test]
fn list_dir_is_sorted_with_lstat_types() {
    let f = fixture();
    std::fs::write(f.root.join("b.txt"), "hello").unwrap();
    std::fs::create_dir(f.root.join("a-dir")).unwrap();
    symlink("/etc", f.root.join("c-link")).unwrap();
    let fifo = std::ffi::CString::new(s(&f.root.join("d-fifo"))).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let entries = f.fs.list_dir("/").unwrap();
    let summary: Vec<(&str, FileType)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.file_type))
        .collect();
    assert_eq!(
        summary,
        [
            ("a-dir", FileType::Dir),
            ("b.txt", FileType::File),
            ("c-link", FileType::Symlink),
            ("d-fifo", FileType::Other),
        ]
    );
    let meta = std::fs::metadata(f.root.join("b.txt")).unwrap();
    assert_eq!(entries[1].size, 5);
    assert_eq!(entries[1].mode, meta.mode() & 0o7777);
    assert_eq!(entries[1].mtime, meta.mtime());
    assert_eq!(entries[3].mode, 0o600 & !umask());

    // Many entries (more than one getdents64 buffer).
    for i in 0..2000 {
        std::fs::write(f.root.join(format!("a-dir/{i:05}-{}", "n".repeat(40))), "").unwrap();
    }
    let entries = f.fs.list_dir("a-dir").unwrap();
    assert_eq!(entries.len(), 2000);
    assert!(entries.windows(2).all(|w| w[0].name < w[1].name));

    assert_eq!(kind(f.fs.list_dir("/b.txt")), ErrorKind::NotADirectory);
    assert_eq!(kind(f.fs.list_dir("/nope")), ErrorKind::NotFound);
}

// ---- stat ----

#[test]
fn stat_is_lstat_and_reports_link_targets() {
    let f = fixture();
    symlink("../elsewhere", f.root.join("link")).unwrap();
    let st = f.fs.stat("/link").unwrap();
    assert_eq!(st.file_type, FileType::Symlink);
    assert_eq!(st.link_target.as_deref(), Some("../elsewhere"));
    assert_eq!(st.path, "/link");
    let long = "t".repeat(1000);
    symlink(&long, f.root.join("long")).unwrap();
    assert_eq!(f.fs.stat("long").unwrap().link_target, Some(long));

    std::fs::write(f.root.join("f"), "abc").unwrap();
    let st = f.fs.stat("f").unwrap();
    let meta = std::fs::metadata(f.root.join("f")).unwrap();
    assert_eq!(st.path, "/f");
    assert_eq!(st.file_type, FileType::File);
    assert_eq!(st.size, 3);
    assert_eq!(st.mode, meta.mode() & 0o7777);
    assert_eq!((st.uid, st.gid), (meta.uid(), meta.gid()));
    assert_eq!(st.mtime, meta.mtime());
    assert_eq!(st.link_target, None);

    let st = f.fs.stat("/").unwrap();
    assert_eq!((st.path.as_str(), st.file_type), ("/", FileType::Dir));
    // A trailing slash follows a symlink to a directory.
    std::fs::create_dir(f.root.join("d")).unwrap();
    symlink("d", f.root.join("dl")).unwrap();
    assert_eq!(f.fs.stat("/dl").unwrap().file_type, FileType::Symlink);
    assert_eq!(f.fs.stat("/dl/").unwrap().file_type, FileType::Dir);

    assert_eq!(kind(f.fs.stat("/missing")), ErrorKind::NotFound);
    assert_eq!(kind(f.fs.stat("/f/x")), ErrorKind::NotADirectory);
}

// ---- mkdir ----

#[test]
fn mkdir_with_and_without_parents() {
    let f = fixture();
    assert_eq!(kind(f.fs.mkdir("/x/y/z", false)), ErrorKind::NotFound);
    f.fs.mkdir("/x/y/z", true).unwrap();
    assert!(f.root.join("x/y/z").is_dir());
    // Idempotent with parents, an error without.
    f.fs.mkdir("/x/y/z", true).unwrap();
    f.fs.mkdir("/", true).unwrap();
    assert_eq!(kind(f.fs.mkdir("/x/y/z", false)), ErrorKind::AlreadyExists);
    assert_eq!(kind(f.fs.mkdir("/", false)), ErrorKind::AlreadyExists);
    f.fs.mkdir("/x/new", false).unwrap();
    f.fs.mkdir("trailing/", false).unwrap();
    f.fs.mkdir("/x/./dot/../dotdot", true).unwrap();
    assert!(f.root.join("x/dotdot").is_dir());
    assert!(f.root.join("x/dot").is_dir());
    let mode = std::fs::metadata(f.root.join("x/new")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755 & !umask());

    std::fs::write(f.root.join("file"), "").unwrap();
    assert_eq!(kind(f.fs.mkdir("/file", true)), ErrorKind::NotADirectory);
    assert_eq!(kind(f.fs.mkdir("/file/d", true)), ErrorKind::NotADirectory);
    assert_eq!(kind(f.fs.mkdir("/file/d", false)), ErrorKind::NotADirectory);
    assert_eq!(kind(f.fs.mkdir("/file", false)), ErrorKind::AlreadyExists);
    // Through a symlink to a directory inside the root.
    symlink("/x/y", f.root.join("toy")).unwrap();
    f.fs.mkdir("/toy/a/b", true).unwrap();
    f.fs.mkdir("/toy/c", false).unwrap();
    assert!(f.root.join("x/y/a/b").is_dir());
    assert!(f.root.join("x/y/c").is_dir());
}

// ---- remove ----

#[test]
fn remove_files_links_and_dirs() {
    let f = fixture();
    let tree = f.root.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("sub/f"), "x").unwrap();
    std::fs::write(tree.join("sub/deeper/g"), "x").unwrap();
    assert_eq!(
        kind(f.fs.remove("/tree", false)),
        ErrorKind::DirectoryNotEmpty
    );
    f.fs.remove("/tree", true).unwrap();
    assert!(!tree.exists());

    std::fs::write(f.root.join("f"), "").unwrap();
    std::fs::create_dir(f.root.join("empty")).unwrap();
    std::fs::create_dir(f.root.join("d")).unwrap();
    symlink("/d", f.root.join("l")).unwrap();
    for name in ["/f", "empty", "/l"] {
        f.fs.remove(name, false).unwrap();
    }
    assert_eq!(names(&f.root), ["d"]);
    assert_eq!(kind(f.fs.remove("/f", false)), ErrorKind::NotFound);
    assert_eq!(kind(f.fs.remove("/d/x/y", true)), ErrorKind::NotFound);

    // A symlink with a trailing slash is not its target.
    symlink("/d", f.root.join("l")).unwrap();
    assert_eq!(kind(f.fs.remove("/l/", true)), ErrorKind::NotADirectory);
    assert!(f.root.join("d").is_dir());
    f.fs.remove("/d/", false).unwrap();
}

#[test]
fn remove_refuses_the_root_and_dot_paths() {
    let f = fixture();
    std::fs::create_dir_all(f.root.join("a/b")).unwrap();
    for p in ["/", "//", "/a/..", "/a/.", "/a/b/../", ".", "..", "/.."] {
        assert_eq!(kind(f.fs.remove(p, true)), ErrorKind::InvalidPath, "{p}");
    }
    assert!(f.root.join("a/b").is_dir());
}

#[test]
fn remove_recursive_never_follows_symlinks() {
    let f = fixture();
    std::fs::create_dir(f.outside.join("dir")).unwrap();
    std::fs::write(f.outside.join("dir/precious"), "keep").unwrap();
    let tree = f.root.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/f"), "x").unwrap();
    symlink(&f.outside, tree.join("sub/abs-escape")).unwrap();
    symlink("../../../../outside", tree.join("sub/rel-escape")).unwrap();
    symlink(f.outside.join("dir/precious"), tree.join("file-escape")).unwrap();
    f.fs.remove("/tree", true).unwrap();
    assert!(!tree.exists());
    assert_eq!(
        std::fs::read(f.outside.join("dir/precious")).unwrap(),
        b"keep"
    );
    assert_eq!(names(&f.outside), ["dir", "secret"]);
}

#[test]
fn remove_recursive_handles_deep_trees() {
    let f = fixture();
    let mut p = f.root.join("deep");
    for i in 0..300 {
        p = p.join(format!("{i}"));
    }
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("leaf"), "x").unwrap();
    f.fs.remove("/deep", true).unwrap();
    assert_eq!(names(&f.root), Vec::<String>::new());
}

// ---- handle ----

#[test]
fn handle_dispatches_file_requests_only() {
    let f = fixture();
    assert_eq!(f.fs.handle(&Request::Ping), None);
    assert_eq!(f.fs.handle(&Request::CancelExec { target: 1 }), None);
    let ok = f.fs.handle(&Request::WriteFile {
        path: "dir/f".into(),
        data: b"hi".to_vec(),
        mode: None,
    });
    assert_eq!(ok, Some(Response::Ok));
    assert_eq!(
        f.fs.handle(&Request::ReadFile {
            path: "dir/f".into(),
            max_bytes: None
        }),
        Some(Response::FileData {
            path: "/dir/f".into(),
            data: b"hi".to_vec(),
            truncated: false
        })
    );
    match f.fs.handle(&Request::ListDir {
        path: "/dir".into(),
    }) {
        Some(Response::Entries(e)) => assert_eq!(e.len(), 1),
        other => panic!("{other:?}"),
    }
    match f.fs.handle(&Request::Stat {
        path: "/dir".into(),
    }) {
        Some(Response::Stat(st)) => assert_eq!(st.file_type, FileType::Dir),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.fs.handle(&Request::Mkdir {
            path: "/m/n".into(),
            parents: true
        }),
        Some(Response::Ok)
    );
    match f.fs.handle(&Request::Remove {
        path: "/dir".into(),
        recursive: false,
    }) {
        Some(Response::Error { kind, message }) => {
            assert_eq!(kind, ErrorKind::DirectoryNotEmpty);
            assert!(message.starts_with("/dir"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_map_to_kinds_and_name_the_path() {
    let cases = [
        (libc::ENOENT, ErrorKind::NotFound),
        (libc::ENOTDIR, ErrorKind::NotADirectory),
        (libc::EISDIR, ErrorKind::IsADirectory),
        (libc::EACCES, ErrorKind::PermissionDenied),
        (libc::EPERM, ErrorKind::PermissionDenied),
        (libc::EROFS, ErrorKind::PermissionDenied),
        (libc::EEXIST, ErrorKind::AlreadyExists),
        (libc::ENOTEMPTY, ErrorKind::DirectoryNotEmpty),
        (libc::ELOOP, ErrorKind::InvalidPath),
        (libc::ENOSPC, ErrorKind::NoSpace),
        (libc::EDQUOT, ErrorKind::NoSpace),
        (libc::EIO, ErrorKind::Io),
    ];
    for (errno, want) in cases {
        let e = FsError::from_io(io::Error::from_raw_os_error(errno), "/x");
        assert_eq!(e.kind, want, "errno {errno}");
        assert!(e.message.starts_with("/x: "), "{}", e.message);
    }
}

#[test]
fn open_needs_a_directory() {
    let f = fixture();
    let err = RootedFs::open(&f.outside.join("secret"), None).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
    assert!(RootedFs::open(&f.base.join("nope"), None).is_err());
}

// ---- escapes ----

#[test]
fn a_symlink_to_slash_leads_to_the_root() {
    let f = fixture();
    std::fs::create_dir(f.root.join("etc")).unwrap();
    std::fs::write(f.root.join("etc/hostname"), "inside").unwrap();
    symlink("/", f.root.join("esc")).unwrap();
    assert_eq!(
        f.fs.read_file("/esc/etc/hostname", None).unwrap().0,
        b"inside"
    );
    // The host's files by absolute path are not there.
    let secret = format!("/esc{}", s(&f.outside.join("secret")));
    assert_eq!(kind(f.fs.read_file(&secret, None)), ErrorKind::NotFound);
    assert_eq!(
        kind(f.fs.read_file("/esc/etc/passwd", None)),
        ErrorKind::NotFound
    );
    let listed: Vec<String> =
        f.fs.list_dir("/esc")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
    assert_eq!(listed, names(&f.root));
}

#[test]
fn relative_symlinks_and_dotdot_chains_stop_at_the_root() {
    let f = fixture();
    std::fs::write(f.root.join("mine"), "inside").unwrap();
    symlink("../../..", f.root.join("x")).unwrap();
    symlink("../outside", f.root.join("up")).unwrap();
    std::fs::create_dir(f.root.join("d")).unwrap();
    symlink("../../../../../../../../..", f.root.join("d/deep")).unwrap();
    let secret_abs = s(&f.outside.join("secret")).to_string();
    for p in [
        format!("/x{secret_abs}"),
        "/x/outside/secret".to_string(),
        "/x/../outside/secret".to_string(),
        "/up/secret".to_string(),
        "/d/deep/outside/secret".to_string(),
        format!("/d/deep{secret_abs}"),
        "/../outside/secret".to_string(),
        "../../../../outside/secret".to_string(),
        format!("/../../../../../..{secret_abs}"),
        secret_abs.clone(),
        format!("/d/..{secret_abs}"),
    ] {
        assert_eq!(kind(f.fs.read_file(&p, None)), ErrorKind::NotFound, "{p}");
        assert_eq!(kind(f.fs.stat(&p)), ErrorKind::NotFound, "{p}");
    }
    // Climbing just leads back to the root.
    for p in ["/x/mine", "/../../mine", "/d/deep/mine", "/d/../../../mine"] {
        assert_eq!(f.fs.read_file(p, None).unwrap().0, b"inside", "{p}");
    }
    f.assert_outside_untouched();
}

#[test]
fn writes_through_symlinks_to_outside_create_nothing_outside() {
    let f = fixture();
    symlink(&f.outside, f.root.join("abs")).unwrap();
    symlink("../outside", f.root.join("rel")).unwrap();
    symlink("../../..", f.root.join("top")).unwrap();
    symlink("/", f.root.join("slash")).unwrap();
    for link in ["abs", "rel"] {
        for p in [
            format!("/{link}/new.txt"),
            format!("/{link}/sub/new.txt"),
            format!("/{link}/secret"),
        ] {
            let e = f.fs.write_file(&p, b"pwned", None).unwrap_err();
            assert_eq!(e.kind, ErrorKind::NotADirectory, "{p}: {}", e.message);
        }
        assert_eq!(
            kind(f.fs.mkdir(&format!("/{link}/d"), false)),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(f.fs.mkdir(&format!("/{link}/d/e"), true)),
            ErrorKind::NotADirectory
        );
        assert_eq!(
            kind(f.fs.remove(&format!("/{link}/secret"), false)),
            ErrorKind::NotFound
        );
    }
    // Climbing to "the top" lands in the root: the files are created there.
    let outside_rel = s(&f.outside).trim_start_matches('/').to_string();
    for link in ["top", "slash"] {
        f.fs.write_file(&format!("/{link}/{outside_rel}/secret"), b"inside", None)
            .unwrap();
        f.fs.mkdir(&format!("/{link}/made-{link}"), false).unwrap();
    }
    assert_eq!(
        std::fs::read(f.root.join(&outside_rel).join("secret")).unwrap(),
        b"inside"
    );
    assert!(f.root.join("made-top").is_dir());
    assert!(f.root.join("made-slash").is_dir());
    f.fs.remove(&format!("/top/{outside_rel}/secret"), false)
        .unwrap();
    f.assert_outside_untouched();
    // Removing the links removes the links.
    for link in ["abs", "rel", "top", "slash"] {
        f.fs.remove(&format!("/{link}"), true).unwrap();
    }
    f.assert_outside_untouched();
}

#[test]
fn magic_links_are_refused() {
    // The agent's case: root `/`, and a symlink to /proc/self/root (here
    // in a temp dir, which is inside `/`).
    let f = fixture();
    let fs = RootedFs::open(Path::new("/"), None).unwrap();
    symlink("/proc/self/root", f.root.join("magic")).unwrap();
    let via_link = format!("{}/magic/etc/hostname", s(&f.root));
    let e = fs.read_file(&via_link, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidPath, "{}", e.message);
    assert!(e.message.contains("magic link"), "{}", e.message);
    for p in [
        "/proc/self/root/etc/hostname",
        "/proc/self/cwd",
        "/proc/thread-self/root/proc/self/status",
        "/proc/self/fd/0",
    ] {
        assert_eq!(kind(fs.read_file(p, None)), ErrorKind::InvalidPath, "{p}");
    }
    assert_eq!(
        kind(fs.write_file(&format!("{via_link}.new"), b"x", None)),
        ErrorKind::InvalidPath
    );
    assert_eq!(kind(fs.list_dir("/proc/self/root")), ErrorKind::InvalidPath);
    // stat shows a final magic link as the link it is.
    let st = fs.stat("/proc/self/root").unwrap();
    assert_eq!(st.file_type, FileType::Symlink);
    assert_eq!(st.link_target.as_deref(), Some("/"));

    // A root with magic links right in it.
    let fs = RootedFs::open(Path::new("/proc/self"), None).unwrap();
    for p in ["/root/etc/hostname", "/cwd", "/exe", "root"] {
        assert_eq!(kind(fs.read_file(p, None)), ErrorKind::InvalidPath, "{p}");
    }
    assert!(fs
        .read_file("/status", None)
        .unwrap()
        .0
        .starts_with(b"Name:"));
}

#[test]
fn swapping_a_directory_for_a_symlink_never_leads_outside() {
    let f = fixture();
    // `sw` and `alt` trade places (RENAME_EXCHANGE) all the time: one is a
    // directory inside the root, the other a symlink to the outside dir.
    let targets = [
        s(&f.outside).to_string(),
        "../outside".to_string(),
        "../../../../../outside".to_string(),
    ];
    let pairs: Vec<(PathBuf, PathBuf)> = (0..targets.len())
        .map(|i| {
            let sw = f.root.join(format!("sw{i}"));
            let alt = f.root.join(format!("alt{i}"));
            std::fs::create_dir(&sw).unwrap();
            symlink(&targets[i], &alt).unwrap();
            (sw, alt)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = spawn_swapper(pairs, stop.clone());
    let mut ok = 0;
    for n in 0..3000 {
        let i = n % targets.len();
        let results = [
            f.fs.write_file(&format!("/sw{i}/f{n}"), b"data", None),
            f.fs.write_file(&format!("/sw{i}/d{n}/f"), b"data", None),
            f.fs.mkdir(&format!("/sw{i}/m{n}"), false),
            f.fs.mkdir(&format!("/sw{i}/p{n}/q"), true),
            f.fs.write_file(&format!("/sw{i}/secret"), b"pwned", None),
            f.fs.remove(&format!("/sw{i}/secret"), false),
            f.fs.remove(&format!("/sw{i}/f{n}"), true),
        ];
        ok += results.iter().filter(|r| r.is_ok()).count();
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 1000, "only {swaps} swaps");
    assert!(ok > 0, "no operation ever succeeded");
    f.assert_outside_untouched();
    // Everything that was created is inside the root.
    assert!(!f.root.join("outside").exists() || names(&f.root.join("outside")).is_empty());
}

// ---- identity ----

#[test]
fn identity_gives_the_users_permissions_and_ownership() {
    require_root();
    let f = fixture_as(Some((NOBODY, NOBODY)));
    // Root-owned 0755 directory: not writable for nobody.
    std::fs::set_permissions(&f.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(f.root.join("mine")).unwrap();
    std::os::unix::fs::chown(f.root.join("mine"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::write(f.root.join("secret"), "root only").unwrap();
    std::fs::set_permissions(
        f.root.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = thread_ids();

    assert_eq!(
        kind(f.fs.write_file("/denied.txt", b"x", None)),
        ErrorKind::PermissionDenied
    );
    assert!(!f.root.join("denied.txt").exists());
    assert_eq!(
        kind(f.fs.read_file("/secret", None)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(f.fs.mkdir("/nope", false)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(f.fs.remove("/secret", false)),
        ErrorKind::PermissionDenied
    );

    f.fs.write_file("/mine/sub/ok.txt", b"ok", None).unwrap();
    f.fs.mkdir("/mine/made", false).unwrap();
    for p in ["mine/sub", "mine/sub/ok.txt", "mine/made"] {
        let meta = std::fs::metadata(f.root.join(p)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "{p}");
    }
    assert_eq!(f.fs.read_file("/mine/sub/ok.txt", None).unwrap().0, b"ok");
    f.fs.remove("/mine/sub", true).unwrap();

    // The thread's identity is back, fsuid and fsgid (4th field) included.
    let after = thread_ids();
    assert_eq!(after, before);
    assert_eq!((after.0[3], after.1[3]), (0, 0));
    // And without an identity, root's rights apply again.
    let plain = RootedFs::open(&f.root, None).unwrap();
    plain.write_file("/as-root", b"x", None).unwrap();
    assert_eq!(std::fs::metadata(f.root.join("as-root")).unwrap().uid(), 0);
}

#[test]
fn identity_is_per_thread() {
    require_root();
    let f = fixture_as(Some((NOBODY, NOBODY)));
    std::fs::create_dir(f.root.join("mine")).unwrap();
    std::os::unix::fs::chown(f.root.join("mine"), Some(NOBODY), Some(NOBODY)).unwrap();
    let fs = Arc::new(f.fs);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    fs.write_file(&format!("/mine/t{t}-{i}"), b"x", None)
                        .unwrap();
                    assert_eq!(thread_ids().0[3], 0);
                }
            })
        })
        .collect();
    // Meanwhile this thread keeps its own identity.
    for _ in 0..200 {
        assert_eq!(thread_ids(), ([0; 4], [0; 4]));
    }
    for t in threads {
        t.join().unwrap();
    }
    let owners: Vec<u32> = std::fs::read_dir(f.root.join("mine"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().uid())
        .collect();
    assert_eq!(owners.len(), 1600);
    assert!(owners.iter().all(|&u| u == NOBODY));
}

#[test]
fn identity_is_restored_after_a_panic() {
    require_root();
    let before = thread_ids();
    let r = std::panic::catch_unwind(|| {
        let _id = FsIdentity::assume(Some((NOBODY, NOBODY))).unwrap();
        assert_eq!(thread_ids().0[3], NOBODY);
        assert_eq!(thread_ids().1[3], NOBODY);
        panic!("inside an operation");
    });
    assert!(r.is_err());
    assert_eq!(thread_ids(), before);
}

#[test]
fn a_root_owned_dir_is_given_to_the_user_once_and_never_through_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("_data");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    assert!(claim_tree(&link, 1000, 1000).is_err());
    assert_eq!(std::fs::metadata(&root).unwrap().uid(), 0);

    assert_eq!(claim_tree(&root, 1000, 1000).unwrap(), Claim::Fresh);
    let m = std::fs::metadata(&root).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o755));
    // The user's own choice of mode stays.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(claim_tree(&root, 1000, 1000).unwrap(), Claim::Owned);
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o750);
    assert!(claim_tree(&d.path().join("missing"), 1000, 1000).is_err());
}

#[test]
fn rename_moves_inside_the_root_and_never_out_of_it() {
    let f = fixture();
    std::fs::write(f.root.join("a.txt"), "a").unwrap();
    f.fs.rename("/a.txt", "/new/dir/b.txt").unwrap();
    assert_eq!(std::fs::read(f.root.join("new/dir/b.txt")).unwrap(), b"a");
    assert!(!f.root.join("a.txt").exists());
    // A file at the destination is replaced; a directory moves whole.
    std::fs::write(f.root.join("c.txt"), "c").unwrap();
    f.fs.rename("/c.txt", "/new/dir/b.txt").unwrap();
    assert_eq!(std::fs::read(f.root.join("new/dir/b.txt")).unwrap(), b"c");
    f.fs.rename("/new", "/moved").unwrap();
    assert!(f.root.join("moved/dir/b.txt").is_file());
    assert_eq!(kind(f.fs.rename("/missing", "/x")), ErrorKind::NotFound);
    for p in ["/", "/moved/..", "/moved/."] {
        assert_eq!(kind(f.fs.rename(p, "/y")), ErrorKind::InvalidPath, "{p}");
        assert_eq!(
            kind(f.fs.rename("/moved", p)),
            ErrorKind::InvalidPath,
            "{p}"
        );
    }
    // `..` and a symlink out of the root stay inside it: the file lands
    // below the root, never in the directory outside.
    symlink(&f.outside, f.root.join("out")).unwrap();
    f.fs.rename("/moved/dir/b.txt", "/../../b.txt").unwrap();
    assert!(f.root.join("b.txt").is_file());
    // The link's target means a path below the root there (which does
    // not exist): refused, and nothing lands outside.
    assert_eq!(
        kind(f.fs.rename("/b.txt", "/out/b.txt")),
        ErrorKind::NotADirectory
    );
    assert!(!f.outside.join("b.txt").exists());
    // A final symlink is renamed itself, not its target.
    f.fs.rename("/out", "/out2").unwrap();
    assert!(f.outside.is_dir());
    assert!(std::fs::symlink_metadata(f.root.join("out2"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A thread that swaps each pair of paths (`RENAME_EXCHANGE`) in a loop, as
/// a sandbox racing the daemon would, until `stop`; it returns how many
/// swaps it made.
pub(crate) fn spawn_swapper(
    pairs: Vec<(PathBuf, PathBuf)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let c = |p: &PathBuf| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let pairs: Vec<_> = pairs.iter().map(|(a, b)| (c(a), c(b))).collect();
    std::thread::spawn(move || {
        let mut swaps = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (a, b) in &pairs {
                // SAFETY: valid C strings.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(r, 0, "{}", io::Error::last_os_error());
                swaps += 1;
            }
        }
        swaps
    })
}

/// `getxattr` of `path`'s attribute `name`, straight from the kernel.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    sys::get_xattr_max(&p, &std::ffi::CString::new(name).unwrap(), 1 << 16)
        .ok()
        .flatten()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const META: &str = "user.e2b.";

#[test]
fn metadata_is_the_user_xattrs_under_a_prefix_replaced_whole() {
    let f = fixture();
    let file = f.root.join("f");
    std::fs::write(&file, "x").unwrap();
    // Another tool's attribute, outside the prefix: kept, never shown.
    let at = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
    sys::set_xattr(&at, c"user.other", b"theirs").unwrap();
    assert_eq!(f.fs.stat_meta("/f", META).unwrap().1, vec![]);

    f.fs.write_meta("/f", META, &pairs(&[("b", "2"), ("a", "1")]))
        .unwrap();
    let (st, meta) = f.fs.stat_meta("/f", META).unwrap();
    assert_eq!((st.file_type, st.size), (FileType::File, 1));
    assert_eq!(meta, pairs(&[("a", "1"), ("b", "2")]));
    assert_eq!(xattr(&file, "user.e2b.a").as_deref(), Some(&b"1"[..]));
    // A new set replaces the old one whole; an empty one clears it.
    f.fs.write_meta("/f", META, &pairs(&[("a", "3")])).unwrap();
    assert_eq!(f.fs.stat_meta("/f", META).unwrap().1, pairs(&[("a", "3")]));
    f.fs.write_meta("/f", META, &[]).unwrap();
    assert_eq!(f.fs.stat_meta("/f", META).unwrap().1, vec![]);
    assert_eq!(xattr(&file, "user.other").as_deref(), Some(&b"theirs"[..]));
    // A value that is not UTF-8 (set inside, by hand) is left out.
    sys::set_xattr(&at, c"user.e2b.bin", b"\xff\xfe").unwrap();
    assert_eq!(f.fs.stat_meta("/f", META).unwrap().1, vec![]);

    // Directories carry them; a write follows a final symlink (inside
    // the root), a stat shows the link itself, which has none.
    std::fs::create_dir(f.root.join("d")).unwrap();
    f.fs.write_meta("/d/", META, &pairs(&[("k", "dir")]))
        .unwrap();
    assert_eq!(
        f.fs.stat_meta("/d", META).unwrap().1,
        pairs(&[("k", "dir")])
    );
    symlink("f", f.root.join("l")).unwrap();
    f.fs.write_meta("/l", META, &pairs(&[("via", "link")]))
        .unwrap();
    assert_eq!(
        f.fs.stat_meta("/f", META).unwrap().1,
        pairs(&[("via", "link")])
    );
    let (st, meta) = f.fs.stat_meta("/l", META).unwrap();
    assert_eq!((st.file_type, meta), (FileType::Symlink, vec![]));
    // A symlink that points out of the root resolves inside it.
    symlink("../outside/secret", f.root.join("esc")).unwrap();
    assert_eq!(
        kind(f.fs.write_meta("/esc", META, &pairs(&[("x", "y")]))),
        ErrorKind::NotFound
    );
    assert_eq!(xattr(&f.outside.join("secret"), "user.e2b.x"), None);

    // Only files and directories; a FIFO is neither (and is not opened).
    let fifo = std::ffi::CString::new(f.root.join("p").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert_eq!(
        kind(f.fs.write_meta("/p", META, &pairs(&[("x", "y")]))),
        ErrorKind::InvalidPath
    );
    assert_eq!(f.fs.stat_meta("/p", META).unwrap().1, vec![]);
    f.assert_outside_untouched();
}

#[test]
fn metadata_bad_input_is_refused_before_anything_changes() {
    let f = fixture();
    std::fs::write(f.root.join("f"), "x").unwrap();
    f.fs.write_meta("/f", META, &pairs(&[("keep", "1")]))
        .unwrap();
    let long = "k".repeat(sandkasten_protocol::MAX_XATTR_NAME - META.len() + 1);
    let big = "v".repeat(MAX_META_BYTES);
    for (prefix, meta) in [
        ("trusted.", pairs(&[("a", "1")])),
        ("security.", pairs(&[("a", "1")])),
        ("user.", pairs(&[("a", "1")])),
        ("", pairs(&[("a", "1")])),
        (META, pairs(&[("", "1")])),
        (META, pairs(&[("a\0b", "1")])),
        (META, pairs(&[(long.as_str(), "1")])),
        (META, pairs(&[("a", big.as_str())])),
    ] {
        assert_eq!(
            kind(f.fs.write_meta("/f", prefix, &meta)),
            ErrorKind::InvalidRequest,
            "{prefix:?} {:?}",
            &meta[0].0
        );
    }
    assert_eq!(
        kind(f.fs.stat_meta("/f", "trusted.")),
        ErrorKind::InvalidRequest
    );
    // What a sandbox sets itself beyond a write's bound is cut, not
    // carried: a stat answers at most MAX_META_BYTES, by name (on a tmpfs:
    // ext4 keeps no more than a block of attributes per file anyway).
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let fs = RootedFs::open(shm.path(), None).unwrap();
    std::fs::write(shm.path().join("f"), "x").unwrap();
    let at = std::ffi::CString::new(shm.path().join("f").as_os_str().as_bytes()).unwrap();
    for i in 0..6 {
        let name = std::ffi::CString::new(format!("user.e2b.big{i}")).unwrap();
        sys::set_xattr(&at, &name, &vec![b'x'; 1500]).unwrap();
    }
    let meta = fs.stat_meta("/f", META).unwrap().1;
    let bytes: usize = meta
        .iter()
        .map(|(k, v)| META.len() + k.len() + v.len())
        .sum();
    assert!(bytes <= MAX_META_BYTES && meta.len() == 2, "{}", meta.len());
    assert_eq!((meta[0].0.as_str(), meta[1].0.as_str()), ("big0", "big1"));

    assert_eq!(
        f.fs.stat_meta("/f", META).unwrap().1,
        pairs(&[("keep", "1")])
    );
    assert_eq!(
        kind(f.fs.write_meta("/missing", META, &[])),
        ErrorKind::NotFound
    );
    assert_eq!(kind(f.fs.stat_meta("", META)), ErrorKind::InvalidPath);
}

#[test]
fn metadata_needs_the_identitys_rights() {
    require_root();
    let f = fixture_as(Some((NOBODY, NOBODY)));
    // Root's files: one anybody may read, one only root may.
    for (name, mode) in [("open", 0o644), ("closed", 0o600)] {
        let p = f.root.join(name);
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let at = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        sys::set_xattr(&at, c"user.e2b.owner", b"root").unwrap();
    }
    // Writing needs write permission; reading shows what may be read.
    assert_eq!(
        kind(f.fs.write_meta("/open", META, &pairs(&[("a", "1")]))),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        f.fs.stat_meta("/open", META).unwrap().1,
        pairs(&[("owner", "root")])
    );
    assert_eq!(f.fs.stat_meta("/closed", META).unwrap().1, vec![]);
    assert_eq!(
        xattr(&f.root.join("open"), "user.e2b.owner").as_deref(),
        Some(&b"root"[..])
    );
    // The user's own file: theirs to label.
    std::fs::write(f.root.join("mine"), "m").unwrap();
    std::os::unix::fs::chown(f.root.join("mine"), Some(NOBODY), Some(NOBODY)).unwrap();
    f.fs.write_meta("/mine", META, &pairs(&[("a", "1")]))
        .unwrap();
    assert_eq!(
        f.fs.stat_meta("/mine", META).unwrap().1,
        pairs(&[("a", "1")])
    );
}
