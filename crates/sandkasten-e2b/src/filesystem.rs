//! `filesystem.Filesystem`: Stat, MakeDir, Move, ListDir (with depth) and
//! Remove through the engine's file calls (the agent does them as the
//! sandbox user, confined to the sandbox). WatchDir and the watcher calls
//! answer `unimplemented` (no file watching yet).
//!
//! Relative paths resolve against `/workspace` (as in our own API; E2B
//! resolves them against the user's home). Owners are named as E2B names
//! them: uid 0 `root`, the sandbox user `user`.

use crate::connect::{self, Code, RpcError};
use crate::envd::rpc_error;
use crate::pb::{
    EntryInfo, EntryResponse, FileType, ListDirRequest, ListDirResponse, MakeDirRequest,
    MoveRequest, RemoveRequest, StatRequest, Timestamp,
};
use crate::Shared;
use axum::extract::Request;
use axum::response::Response;
use futures::StreamExt;
use sandkasten_engine::{DirEntry, EngineError, FileError, FileStat, FileType as Ft};

/// Most entries one ListDir answers.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Stats run at once for one listing.
const STAT_CONCURRENCY: usize = 16;

pub(crate) async fn call(
    e2b: &Shared,
    id: &str,
    method: &str,
    root: bool,
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
    if root {
        let e = RpcError::new(
            Code::PermissionDenied,
            "file operations run as the sandbox user (\"user\") only, not as root",
        );
        return if f.streaming {
            connect::stream_error(f, e)
        } else {
            e.unary_response()
        };
    }
    let body = req.into_body();
    match method {
        "Stat" => connect::serve_unary(f, body, |r: StatRequest| stat(e2b, id, r)).await,
        "MakeDir" => connect::serve_unary(f, body, |r: MakeDirRequest| make_dir(e2b, id, r)).await,
        "Move" => connect::serve_unary(f, body, |r: MoveRequest| move_entry(e2b, id, r)).await,
        "ListDir" => connect::serve_unary(f, body, |r: ListDirRequest| list_dir(e2b, id, r)).await,
        "Remove" => connect::serve_unary(f, body, |r: RemoveRequest| remove(e2b, id, r)).await,
        "WatchDir" => connect::stream_error(f, no_watching()),
        _ => connect::unary::<crate::pb::Empty>(f, Err(no_watching())),
    }
}

fn no_watching() -> RpcError {
    RpcError::new(
        Code::Unimplemented,
        "watching directories is not supported by Sandkasten yet",
    )
}

fn owner(uid: u32) -> String {
    match uid {
        0 => "root".into(),
        1000 => "user".into(),
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

fn entry(st: &FileStat) -> EntryInfo {
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
        owner: owner(st.uid),
        group: owner(st.gid),
        modified_time: Some(Timestamp {
            seconds: st.mtime,
            nanos: 0,
        }),
        symlink_target: st.link_target.clone(),
    }
}

/// The absolute form of a client path, as the engine resolves it.
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/workspace/{path}")
    }
}

async fn stat_entry(e2b: &Shared, id: &str, path: &str) -> Result<EntryInfo, RpcError> {
    let mut st = e2b.engine.stat(id, path).await.map_err(rpc_error)?;
    st.path = absolute(path);
    Ok(entry(&st))
}

async fn stat(e2b: &Shared, id: &str, r: StatRequest) -> Result<EntryResponse, RpcError> {
    Ok(EntryResponse {
        entry: Some(stat_entry(e2b, id, &r.path).await?),
    })
}

async fn make_dir(e2b: &Shared, id: &str, r: MakeDirRequest) -> Result<EntryResponse, RpcError> {
    // envd creates parents, and says `already_exists` for a directory
    // that exists (the SDKs' make_dir then answers false).
    match e2b.engine.stat(id, &r.path).await {
        Ok(_) => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("{} already exists", absolute(&r.path)),
            ))
        }
        Err(EngineError::File(FileError::NotFound(_))) => {}
        Err(e) => return Err(rpc_error(e)),
    }
    e2b.engine
        .mkdir(id, &r.path, true)
        .await
        .map_err(rpc_error)?;
    stat(e2b, id, StatRequest { path: r.path }).await
}

async fn move_entry(e2b: &Shared, id: &str, r: MoveRequest) -> Result<EntryResponse, RpcError> {
    let to = e2b
        .engine
        .rename(id, &r.source, &r.destination)
        .await
        .map_err(rpc_error)?;
    stat(e2b, id, StatRequest { path: to }).await
}

async fn remove(e2b: &Shared, id: &str, r: RemoveRequest) -> Result<crate::pb::Empty, RpcError> {
    e2b.engine
        .remove(id, &r.path, true)
        .await
        .map_err(rpc_error)?;
    Ok(crate::pb::Empty {})
}

/// The entries below `path`, `depth` levels down (0 means 1, as in
/// envd), each with its owner and link target; directories reached
/// through symlinks are not entered.
async fn list_dir(e2b: &Shared, id: &str, r: ListDirRequest) -> Result<ListDirResponse, RpcError> {
    let depth = r.depth.max(1);
    let root = absolute(&r.path);
    let top = e2b.engine.stat(id, &root).await.map_err(rpc_error)?;
    if top.file_type != Ft::Dir && top.file_type != Ft::Symlink {
        return Err(RpcError::new(
            Code::InvalidArgument,
            format!("{root} is not a directory"),
        ));
    }
    let mut out = Vec::new();
    let mut level = vec![root.trim_end_matches('/').to_string()];
    for d in 1..=depth {
        let mut next = Vec::new();
        for dir in level {
            let entries: Vec<DirEntry> = e2b.engine.list_dir(id, &dir).await.map_err(rpc_error)?;
            if out.len() + entries.len() > MAX_LIST_ENTRIES {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("more than {MAX_LIST_ENTRIES} entries: list with a smaller depth"),
                ));
            }
            let paths: Vec<String> = entries
                .iter()
                .map(|e| format!("{dir}/{}", e.name))
                .collect();
            let infos: Vec<Result<EntryInfo, RpcError>> = futures::stream::iter(paths)
                .map(|p| async move { stat_entry(e2b, id, &p).await })
                .buffered(STAT_CONCURRENCY)
                .collect()
                .await;
            for (e, info) in entries.iter().zip(infos) {
                match info {
                    Ok(info) => out.push(info),
                    // Removed since the listing: skipped, as `ls` does.
                    Err(err) if err.code == Code::NotFound => continue,
                    Err(err) => return Err(err),
                }
                if d < depth && e.file_type == Ft::Dir {
                    next.push(format!("{dir}/{}", e.name));
                }
            }
        }
        level = next;
    }
    Ok(ListDirResponse { entries: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_go_file_modes() {
        assert_eq!(permissions(Ft::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(Ft::File, 0o640), "-rw-r-----");
        assert_eq!(permissions(Ft::Symlink, 0o777), "Lrwxrwxrwx");
        assert_eq!(owner(0), "root");
        assert_eq!(owner(1000), "user");
        assert_eq!(owner(7), "7");
    }
}
