//! `filesystem.Filesystem`: Stat, MakeDir, Move, ListDir (with depth) and
//! Remove through the engine's file calls (the agent does them confined
//! to the sandbox, as the sandbox user, or as root for a call whose user
//! is `root`); WatchDir and the watcher calls on the agent's inotify
//! watches (`watch.rs`).
//!
//! Relative paths resolve against `/workspace` (as in our own API; E2B
//! resolves them against the user's home). Owners are named as E2B names
//! them: uid 0 `root`, the sandbox user `user`.

use crate::connect::{self, Code, RpcError};
use crate::envd::rpc_error;
use crate::pb::{
    EntryInfo, EntryResponse, FileType, ListDirRequest, ListDirResponse, MakeDirRequest,
    MoveRequest, RemoveRequest, StatRequest, Timestamp, WatchRequest, WatcherId,
};
use crate::Shared;
use axum::extract::Request;
use axum::response::Response;
use futures::StreamExt;
use sandkasten_engine::{DirEntry, EngineError, FileOp, FileStat, FileType as Ft, FileUser};
use std::sync::Arc;

/// Most entries one ListDir answers.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Stats run at once for one listing.
const STAT_CONCURRENCY: usize = 16;

pub(crate) async fn call(
    e2b: &Arc<Shared>,
    id: &str,
    method: &str,
    user: FileUser,
    req: Request,
) -> Response {
    let Some(f) = connect::framing(req.headers()) else {
        return connect::unsupported_media_type();
    };
    let streaming_method = method == "WatchDir";
    let known = matches!(
        method,
        "Stat"
            | "MakeDir"
            | "Move"
            | "ListDir"
            | "Remove"
            | "WatchDir"
            | "CreateWatcher"
            | "GetWatcherEvents"
            | "RemoveWatcher"
    );
    if !known {
        let mut r = RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem has no method {method}"),
        )
        .unary_response();
        *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return r;
    }
    if f.streaming != streaming_method {
        return connect::unsupported_media_type();
    }
    let timing = crate::process::Timing::from_headers(req.headers());
    let body = req.into_body();
    let u = user;
    match method {
        "Stat" => connect::serve_unary(f, body, |r: StatRequest| stat(e2b, id, u, r)).await,
        "MakeDir" => {
            connect::serve_unary(f, body, |r: MakeDirRequest| make_dir(e2b, id, u, r)).await
        }
        "Move" => connect::serve_unary(f, body, |r: MoveRequest| move_entry(e2b, id, u, r)).await,
        "ListDir" => {
            connect::serve_unary(f, body, |r: ListDirRequest| list_dir(e2b, id, u, r)).await
        }
        "Remove" => connect::serve_unary(f, body, |r: RemoveRequest| remove(e2b, id, u, r)).await,
        "WatchDir" => crate::watch::watch_dir(f, e2b, id, user, timing, body).await,
        "CreateWatcher" => {
            connect::serve_unary(f, body, |r: WatchRequest| {
                crate::watch::create(e2b, id, user, r)
            })
            .await
        }
        "GetWatcherEvents" => {
            connect::serve_unary(f, body, |r: WatcherId| async move {
                crate::watch::events(e2b, id, r)
            })
            .await
        }
        _ => connect::serve_unary(f, body, |r: WatcherId| crate::watch::remove(e2b, id, r)).await,
    }
}

/// The name envd gives id `id`: `root`, `user` for the sandbox user
/// (`user_id`: the runtime's, 1000 on native), else the number.
fn owner(id: u32, user_id: u32) -> String {
    match id {
        0 => "root".into(),
        n if n == user_id => "user".into(),
        n => n.to_string(),
    }
}

/// `ls -l` style permissions, as Go's `FileMode.String` writes them
/// (envd's `permissions`).
fn permissions(t: Ft, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match t {
        Ft::Dir => 'd',
        Ft::Symlink => 'L',
        _ => '-',
    });
    for (bit, c) in [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ] {
        s.push(if mode & bit != 0 { c } else { '-' });
    }
    s
}

fn file_type(t: Ft) -> FileType {
    match t {
        Ft::File => FileType::File,
        Ft::Dir => FileType::Directory,
        Ft::Symlink => FileType::Symlink,
        Ft::Other => FileType::Unspecified,
    }
}

/// Where envd keeps a file's metadata: its extended attributes under
/// this prefix (envd 0.6.2), taken off in `EntryInfo.metadata`.
pub(crate) const META_PREFIX: &str = "user.e2b.";

fn entry(st: &FileStat, meta: Vec<(String, String)>, user: (u32, u32)) -> EntryInfo {
    EntryInfo {
        name: st
            .path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        r#type: file_type(st.file_type) as i32,
        path: st.path.clone(),
        size: st.size as i64,
        mode: st.mode & 0o777,
        permissions: permissions(st.file_type, st.mode),
        owner: owner(st.uid, user.0),
        group: owner(st.gid, user.1),
        modified_time: Some(Timestamp {
            seconds: st.mtime,
            nanos: 0,
        }),
        symlink_target: st.link_target.clone(),
        metadata: meta.into_iter().collect(),
        is_symlink: st.file_type == Ft::Symlink,
    }
}

/// The absolute form of a client path, as the engine resolves it.
pub(crate) fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/workspace/{path}")
    }
}

/// One file operation with `user`'s rights.
async fn file(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    op: FileOp,
) -> Result<sandkasten_engine::FileReply, EngineError> {
    e2b.engine.file_as(id, user, op).await
}

async fn stat_file(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    path: &str,
) -> Result<FileStat, RpcError> {
    stat_meta(e2b, id, user, FileOp::Stat { path: path.into() })
        .await
        .map(|(st, _)| st)
}

/// A stat (`FileOp::Stat` or `FileOp::StatMeta`) and the metadata it found.
async fn stat_meta(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    op: FileOp,
) -> Result<(FileStat, Vec<(String, String)>), RpcError> {
    match file(e2b, id, user, op).await {
        Ok(reply) => reply.into_stat_meta().map_err(|e| {
            tracing::error!("envd: a stat answered {e}");
            RpcError::new(Code::Internal, "internal error")
        }),
        Err(e) => Err(rpc_error(e)),
    }
}

/// The entry at `path` as envd describes it, its metadata included.
pub(crate) async fn stat_entry(
    e2b: &Shared,
    id: &str,
    path: &str,
    user: FileUser,
) -> Result<EntryInfo, RpcError> {
    let op = FileOp::StatMeta {
        path: path.into(),
        prefix: META_PREFIX.into(),
    };
    let (mut st, meta) = stat_meta(e2b, id, user, op).await?;
    st.path = absolute(path);
    Ok(entry(&st, meta, e2b.engine.sandbox_ids()))
}

async fn stat(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    r: StatRequest,
) -> Result<EntryResponse, RpcError> {
    Ok(EntryResponse {
        entry: Some(stat_entry(e2b, id, &r.path, user).await?),
    })
}

async fn make_dir(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    r: MakeDirRequest,
) -> Result<EntryResponse, RpcError> {
    // envd creates parents, and says `already_exists` for a directory
    // that exists (the SDKs' make_dir then answers false).
    match stat_file(e2b, id, user, &r.path).await {
        Ok(_) => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("{} already exists", absolute(&r.path)),
            ))
        }
        Err(e) if e.code == Code::NotFound => {}
        Err(e) => return Err(e),
    }
    let op = FileOp::Mkdir {
        path: r.path.clone(),
        parents: true,
    };
    file(e2b, id, user, op).await.map_err(rpc_error)?;
    stat(e2b, id, user, StatRequest { path: r.path }).await
}

async fn move_entry(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    r: MoveRequest,
) -> Result<EntryResponse, RpcError> {
    let op = FileOp::Rename {
        from: r.source,
        to: r.destination.clone(),
    };
    file(e2b, id, user, op).await.map_err(rpc_error)?;
    stat(
        e2b,
        id,
        user,
        StatRequest {
            path: r.destination,
        },
    )
    .await
}

async fn remove(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    r: RemoveRequest,
) -> Result<crate::pb::Empty, RpcError> {
    let op = FileOp::Remove {
        path: r.path,
        recursive: true,
    };
    file(e2b, id, user, op).await.map_err(rpc_error)?;
    Ok(crate::pb::Empty {})
}

/// The entries below `path`, `depth` levels down (0 means 1, as in
/// envd), each with its owner and link target; directories reached
/// through symlinks are not entered. A name that is not UTF-8 is listed
/// with U+FFFD for what is not (the agent's lossy name), from the
/// listing alone: no path reaches it, so it has no owner (`""`), no
/// metadata, and is not entered.
async fn list_dir(
    e2b: &Shared,
    id: &str,
    user: FileUser,
    r: ListDirRequest,
) -> Result<ListDirResponse, RpcError> {
    let depth = r.depth.max(1);
    let root = absolute(&r.path);
    let top = stat_file(e2b, id, user, &root).await?;
    if top.file_type != Ft::Dir && top.file_type != Ft::Symlink {
        return Err(RpcError::new(
            Code::InvalidArgument,
            format!("{root} is not a directory"),
        ));
    }
    let mut out = Vec::new();
    let mut level = vec![dir_path(&root)];
    for d in 1..=depth {
        let mut next = Vec::new();
        for dir in level {
            let op = FileOp::ListDir { path: dir.clone() };
            let entries: Vec<DirEntry> = match file(e2b, id, user, op).await {
                Ok(sandkasten_engine::FileReply::Entries(e)) => e,
                Ok(other) => {
                    tracing::error!("envd: a listing answered {other:?}");
                    return Err(RpcError::new(Code::Internal, "internal error"));
                }
                Err(e) => return Err(rpc_error(e)),
            };
            if out.len() + entries.len() > MAX_LIST_ENTRIES {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("more than {MAX_LIST_ENTRIES} entries: list with a smaller depth"),
                ));
            }
            let paths: Vec<String> = entries.iter().map(|e| child(&dir, &e.name)).collect();
            let infos: Vec<Result<EntryInfo, RpcError>> = futures::stream::iter(paths)
                .map(|p| async move { stat_entry(e2b, id, &p, user).await })
                .buffered(STAT_CONCURRENCY)
                .collect()
                .await;
            for (e, info) in entries.iter().zip(infos) {
                match info {
                    Ok(info) => out.push(info),
                    // Its name is not UTF-8: listed as it was read.
                    Err(err) if err.code == Code::NotFound && e.name.contains('\u{FFFD}') => {
                        out.push(listed_entry(&dir, e));
                        continue;
                    }
                    // Removed since the listing: skipped, as `ls` does.
                    Err(err) if err.code == Code::NotFound => continue,
                    Err(err) => return Err(err),
                }
                if d < depth && e.file_type == Ft::Dir {
                    next.push(child(&dir, &e.name));
                }
            }
        }
        level = next;
    }
    Ok(ListDirResponse { entries: out })
}

/// An absolute directory path without trailing slashes (`/` for the root).
fn dir_path(path: &str) -> String {
    match path.trim_end_matches('/') {
        "" => "/".into(),
        p => p.into(),
    }
}

/// The path of `name` in directory `dir` (as [`dir_path`] writes it).
fn child(dir: &str, name: &str) -> String {
    match dir {
        "/" => format!("/{name}"),
        d => format!("{d}/{name}"),
    }
}

/// An entry of `dir` as its listing read it (a name that is not UTF-8).
fn listed_entry(dir: &str, e: &DirEntry) -> EntryInfo {
    EntryInfo {
        name: e.name.clone(),
        r#type: file_type(e.file_type) as i32,
        path: child(dir, &e.name),
        size: e.size as i64,
        mode: e.mode & 0o777,
        permissions: permissions(e.file_type, e.mode),
        owner: String::new(),
        group: String::new(),
        modified_time: Some(Timestamp {
            seconds: e.mtime,
            nanos: 0,
        }),
        symlink_target: None,
        metadata: Default::default(),
        is_symlink: e.file_type == Ft::Symlink,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_lists_as_a_directory() {
        assert_eq!(dir_path("/"), "/");
        assert_eq!(dir_path("//"), "/");
        assert_eq!(dir_path("/etc/"), "/etc");
        assert_eq!(child(&dir_path("/"), "etc"), "/etc");
        assert_eq!(child(&dir_path("/tmp//"), "x"), "/tmp/x");
    }

    #[test]
    fn permissions_read_like_go_file_modes() {
        assert_eq!(permissions(Ft::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(Ft::File, 0o640), "-rw-r-----");
        assert_eq!(permissions(Ft::Symlink, 0o777), "Lrwxrwxrwx");
        assert_eq!(owner(0, 1000), "root");
        assert_eq!(owner(1000, 1000), "user");
        assert_eq!(owner(90000, 90000), "user");
        assert_eq!(owner(1000, 90000), "1000");
        assert_eq!(owner(7, 1000), "7");
    }
}
