//! Persistent workspaces: named filesystems mounted at `/workspace`,
//! created on first use or explicitly, kept after their sessions, listed,
//! deleted (never while mounted) and readable without a session.

use crate::{CreateWorkspace, DirEntry, Engine, EngineError, FileContent, WorkspaceInfo};

impl Engine {
    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, EngineError> {
        todo!()
    }
    /// Explicit create; `AlreadyExists` when the id is taken.
    pub async fn create_workspace(
        &self,
        _req: CreateWorkspace,
    ) -> Result<WorkspaceInfo, EngineError> {
        todo!()
    }
    pub async fn get_workspace(&self, _id: &str) -> Result<WorkspaceInfo, EngineError> {
        todo!()
    }
    /// `WorkspaceInUse` while a live session has it mounted.
    pub async fn delete_workspace(&self, _id: &str) -> Result<(), EngineError> {
        todo!()
    }
    /// Session-less file access. Paths are inside the workspace: `a/b`,
    /// `/a/b` and `/workspace/a/b` all name `<workspace>/a/b`.
    pub async fn workspace_list_dir(
        &self,
        _id: &str,
        _path: &str,
    ) -> Result<Vec<DirEntry>, EngineError> {
        todo!()
    }
    pub async fn workspace_read_file(
        &self,
        _id: &str,
        _path: &str,
        _max_bytes: Option<u64>,
    ) -> Result<FileContent, EngineError> {
        todo!()
    }
    /// Returns the path written, as `/workspace/...`.
    pub async fn workspace_write_file(
        &self,
        _id: &str,
        _path: &str,
        _data: Vec<u8>,
    ) -> Result<String, EngineError> {
        todo!()
    }
}
