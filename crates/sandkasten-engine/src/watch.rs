//! File calls with a chosen user's rights (the sandbox user or the
//! sandbox's root, as E2B's envd offers them) and directory watches. Each
//! call checks the session's state first, counts as activity (a watch at
//! its start), resolves relative paths against `/workspace` as every file
//! call does, and types the agent's failures.

use crate::{Engine, EngineError, FileReader};
use sandkasten_runtime::{DirWatch, FileOp, FileReply, FileUser, WatchEvent};

/// A directory being watched (see [`Engine::watch_dir`]). Dropping it
/// stops the watch.
#[derive(Debug)]
pub struct Watch {
    /// The watched directory (absolute).
    pub path: String,
    inner: DirWatch,
}

impl Watch {
    /// The next batch of events (names relative to the watched directory);
    /// `None` once the directory went away. An error ends the watch: the
    /// sandbox is gone (`Runtime`), or a watch limit or the kernel's
    /// event queue overflowed (`FileError::NoSpace`).
    pub async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, EngineError> {
        self.inner
            .next()
            .await
            .map_err(EngineError::runtime("watching a directory"))
    }

    /// Stops the watch; answers once the sandbox's agent has.
    pub async fn stop(self) {
        self.inner.stop().await
    }
}

impl Engine {
    /// One file operation in session `id` with `user`'s rights.
    pub async fn file_as(
        &self,
        id: &str,
        user: FileUser,
        op: FileOp,
    ) -> Result<FileReply, EngineError> {
        let op = match op {
            FileOp::Write { path, data, mode } => FileOp::Write {
                path: Self::resolve(&path)?,
                data,
                mode,
            },
            FileOp::ListDir { path } => FileOp::ListDir {
                path: Self::resolve(&path)?,
            },
            FileOp::Stat { path } => FileOp::Stat {
                path: Self::resolve(&path)?,
            },
            FileOp::Mkdir { path, parents } => FileOp::Mkdir {
                path: Self::resolve(&path)?,
                parents,
            },
            FileOp::Remove { path, recursive } => FileOp::Remove {
                path: Self::resolve(&path)?,
                recursive,
            },
            FileOp::Rename { from, to } => FileOp::Rename {
                from: Self::resolve(&from)?,
                to: Self::resolve(&to)?,
            },
            FileOp::StatMeta { path, prefix } => FileOp::StatMeta {
                path: Self::resolve(&path)?,
                prefix,
            },
            FileOp::WriteMeta { path, prefix, meta } => FileOp::WriteMeta {
                path: Self::resolve(&path)?,
                prefix,
                meta,
            },
        };
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.file_as(user, op).await).await
    }

    /// Reads a file with `user`'s rights (see [`Engine::read_file`]).
    pub async fn read_file_as(
        &self,
        id: &str,
        user: FileUser,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        if user == FileUser::Sandbox {
            return self.read_file(id, path, max_bytes).await;
        }
        let path = Self::resolve(path)?;
        let cap = self.inner.cfg.max_read_bytes;
        let max = Some(max_bytes.map_or(cap, |m| m.min(cap)));
        let (s, agent) = self.file_agent(id).await?;
        let stream = self
            .file_done(&s, agent.read_file_as(user, path.clone(), max).await)
            .await?;
        Ok(FileReader::new(path, stream, None))
    }

    /// Watches directory `path` of session `id` (the directories below it
    /// too when `recursive`) with `user`'s rights: the directory must be
    /// one they may read. Answers once the watch is in place. The watch
    /// ends with an error when the session's sandbox goes away.
    pub async fn watch_dir(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
        user: FileUser,
    ) -> Result<Watch, EngineError> {
        let path = Self::resolve(path)?;
        let (s, agent) = self.file_agent(id).await?;
        let inner = self
            .file_done(&s, agent.watch_dir(path.clone(), recursive, user).await)
            .await?;
        Ok(Watch { path, inner })
    }
}
