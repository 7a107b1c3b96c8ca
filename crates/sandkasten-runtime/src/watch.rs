//! Directory watches and file operations as root through the agent
//! (protocol 5): typed calls on [`AgentClient`]. A watch is a stream of
//! event batches ([`DirWatch`]) acknowledged as its consumer takes them,
//! like a file read, and cancelled when dropped; it ends when the watched
//! directory goes away, and with an error when the agent's connection
//! closes (the sandbox was destroyed).

use crate::agent_client::READ_WINDOW;
use crate::{AgentClient, FileOp, FileReply, FileStream, RuntimeError};
use sandkasten_protocol::{self as proto, Request, Response};
use tokio::sync::mpsc;

pub use sandkasten_protocol::{WatchEvent, WatchEventKind, MAX_WATCHED_DIRS, MAX_WATCHES};

/// Whose rights a file operation runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileUser {
    /// The sandbox user (commands run as them).
    #[default]
    Sandbox,
    /// The sandbox's root.
    Root,
}

/// A directory being watched: batches of events as they come. Dropped,
/// it stops the watch in the agent.
pub struct DirWatch {
    client: AgentClient,
    id: u64,
    replies: mpsc::UnboundedReceiver<Response>,
    finished: bool,
}

impl DirWatch {
    /// The next batch of events (never empty); `None` once the watched
    /// directory went away. An error ends the watch: the agent's
    /// connection closed, or a limit or the kernel's event queue overflowed
    /// (`File` with `NoSpace`).
    pub async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, RuntimeError> {
        if self.finished {
            return Ok(None);
        }
        let reply = self.replies.recv().await;
        match reply {
            Some(Response::WatchEvents(events)) => {
                self.client.notify(Request::ReadAck {
                    target: self.id,
                    chunks: 1,
                });
                Ok(Some(events))
            }
            Some(Response::WatchEnded) => {
                self.finished = true;
                Ok(None)
            }
            other => {
                self.finished = true;
                Err(failure(other, "a watch"))
            }
        }
    }
}

impl DirWatch {
    /// Stops the watch and answers once the agent has (its place among
    /// the agent's watches is then free for another).
    pub async fn stop(mut self) {
        if self.finished {
            return;
        }
        self.client.notify(Request::CancelRead { target: self.id });
        while let Some(reply) = self.replies.recv().await {
            if !matches!(reply, Response::WatchEvents(_)) {
                break;
            }
        }
        self.finished = true;
    }
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("request", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.client.forget(self.id);
            self.client.notify(Request::CancelRead { target: self.id });
        }
    }
}

/// A failed or unexpected reply as a typed error.
fn failure(reply: Option<Response>, what: &str) -> RuntimeError {
    match reply {
        None => RuntimeError::Agent("agent connection closed".into()),
        Some(Response::Error { kind, message }) => RuntimeError::File {
            kind: kind.into(),
            message,
        },
        Some(other) => RuntimeError::Agent(format!("unexpected reply to {what}: {other:?}")),
    }
}

impl AgentClient {
    async fn watches(&self, what: &str) -> Result<(), RuntimeError> {
        if self.protocol().await? < proto::WATCH_SINCE {
            return Err(RuntimeError::Unsupported(
                format!("{what} in a sandbox started before the daemon's upgrade (recreate it)"),
                "agent",
            ));
        }
        Ok(())
    }

    /// Watches directory `path` (absolute), the directories below it too
    /// when `recursive`. Answers once the watch is in place, so a missing
    /// or unreadable directory is an error here.
    pub async fn watch_dir(
        &self,
        path: String,
        recursive: bool,
        user: FileUser,
    ) -> Result<DirWatch, RuntimeError> {
        self.watches("watching directories").await?;
        let (id, replies) = self.send(Request::WatchDir {
            path,
            recursive,
            root: user == FileUser::Root,
            window: READ_WINDOW,
        })?;
        let mut watch = DirWatch {
            client: self.clone(),
            id,
            replies,
            finished: false,
        };
        match watch.replies.recv().await {
            Some(Response::Watching) => Ok(watch),
            other => {
                watch.finished = true;
                Err(failure(other, "a watch"))
            }
        }
    }

    /// One file operation with `user`'s rights.
    pub async fn file_as(&self, user: FileUser, op: FileOp) -> Result<FileReply, RuntimeError> {
        match user {
            FileUser::Sandbox => self.file(op).await,
            FileUser::Root => {
                self.watches("file operations as root").await?;
                let Some(op) = self.fit(op).await? else {
                    return Ok(FileReply::Done);
                };
                let req = Request::AsRoot(Box::new(op.into_request()));
                FileReply::from_response(self.call(req).await?)
            }
        }
    }

    /// A file read with `user`'s rights (see [`AgentClient::read_file`]).
    pub async fn read_file_as(
        &self,
        user: FileUser,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError> {
        match user {
            FileUser::Sandbox => self.read_file(path, max_bytes).await,
            FileUser::Root => {
                self.watches("file operations as root").await?;
                self.read_stream(path, max_bytes, true).await
            }
        }
    }
}
