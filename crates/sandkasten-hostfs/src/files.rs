//! Session-less workspace access: one file operation served on the host
//! inside a workspace's root, exactly as the agent serves it inside a
//! sandbox. `sandkasten_fsops::RootedFs` resolves every path with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` below the root and
//! acts with the sandbox user's filesystem identity (per-thread `setfsuid`),
//! so symlinks, `..` and races cannot lead outside and new files belong to
//! the sandbox user. A read opens the file that way and then streams it
//! ([`FileStream`]), never holding it whole.

use sandkasten_fsops::RootedFs;
use sandkasten_runtime::{FileErrorKind, FileOp, FileReply, FileStream, RuntimeError};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The fsops root of a workspace, as the host user `uid`.
fn rooted(root: &Path, uid: u32) -> Result<RootedFs, RuntimeError> {
    RootedFs::open(root, Some((uid, uid))).map_err(RuntimeError::io_ctx(format!(
        "opening the workspace root {}",
        root.display()
    )))
}

/// Serves `op` inside `root` as the host user `uid` (uid and gid) on the
/// calling thread, which it blocks. `uid` is the sandbox user as the host
/// sees it: `sandkasten_runtime::SANDBOX_UID` without a user namespace
/// (docker), its mapped host uid with one (native). A failed operation is
/// [`RuntimeError::File`]; a root that cannot be opened is
/// [`RuntimeError::Io`] (the caller checks that the workspace exists).
pub fn workspace_file_blocking(
    root: &Path,
    uid: u32,
    op: FileOp,
) -> Result<FileReply, RuntimeError> {
    let fs = rooted(root, uid)?;
    match fs.handle(&op.into_request()) {
        Some(resp) => FileReply::from_response(resp),
        // Every FileOp is a file request; RootedFs answers each.
        None => Err(RuntimeError::File {
            kind: FileErrorKind::InvalidRequest,
            message: "not a file operation".into(),
        }),
    }
}

/// Opens the regular file `path` inside `root` for reading, as the host
/// user `uid` (rules as [`workspace_file_blocking`]); blocks. The open file
/// keeps what it lives on mounted (a detached workspace mount) until it is
/// closed.
pub fn open_workspace_file(root: &Path, uid: u32, path: &str) -> Result<File, RuntimeError> {
    rooted(root, uid)?
        .open_read(path)
        .map(|(f, _)| f)
        .map_err(|e| RuntimeError::File {
            kind: e.kind.into(),
            message: e.message,
        })
}

/// Reads `path` inside `root` as a stream, at most `max_bytes`: opened on
/// the blocking pool (an error before any content), then read there in
/// chunks as the consumer takes them.
pub async fn workspace_read(
    root: PathBuf,
    uid: u32,
    path: String,
    max_bytes: Option<u64>,
) -> Result<FileStream, RuntimeError> {
    let p = path.clone();
    sandkasten_runtime::read_blocking(path, max_bytes, move || open_workspace_file(&root, uid, &p))
        .await
}

/// [`workspace_file_blocking`] on the blocking pool.
pub async fn workspace_file(
    root: PathBuf,
    uid: u32,
    op: FileOp,
) -> Result<FileReply, RuntimeError> {
    sandkasten_runtime::blocking("a workspace file operation", move || {
        workspace_file_blocking(&root, uid, op)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn operations_stay_inside_the_root_and_belong_to_the_user() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host").unwrap();
        let ws = tempfile::tempdir().unwrap();
        let uid = 101_000;
        std::os::unix::fs::chown(ws.path(), Some(uid), Some(uid)).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("out")).unwrap();
        let root = ws.path().to_path_buf();

        let write = FileOp::Write {
            path: "/d/f".into(),
            data: b"hi".to_vec(),
            mode: None,
        };
        workspace_file(root.clone(), uid, write)
            .await
            .unwrap()
            .into_done()
            .unwrap();
        assert_eq!(std::fs::metadata(ws.path().join("d/f")).unwrap().uid(), uid);
        let data = workspace_read(root.clone(), uid, "/d/f".into(), None)
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap();
        assert_eq!((data.path.as_str(), &data.data[..]), ("/d/f", &b"hi"[..]));
        let data = workspace_read(root.clone(), uid, "d/f".into(), Some(1))
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap();
        assert_eq!((&data.data[..], data.truncated), (&b"h"[..], true));

        // The absolute symlink resolves inside the root, where nothing is.
        match workspace_read(root.clone(), uid, "/out/secret".into(), None).await {
            Err(RuntimeError::File { kind, .. }) => assert_eq!(kind, FileErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        let missing = workspace_file(
            ws.path().join("nope"),
            uid,
            FileOp::Stat { path: "/".into() },
        );
        assert!(matches!(missing.await, Err(RuntimeError::Io { .. })));
    }
}
