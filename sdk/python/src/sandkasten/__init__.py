"""Python SDK of Sandkasten, the self-hosted sandbox daemon for AI agents.

Async::

    from sandkasten import SandboxClient

    async with SandboxClient(base_url="http://127.0.0.1:8080", api_key="sk-...") as client:
        async with await client.create_session() as session:
            print((await session.exec("echo hi")).output)

Blocking: :class:`SyncSandboxClient` with the same methods.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .client import SandboxClient
from .exceptions import (
    AlreadyExists,
    CapacityExhausted,
    FileNotFound,
    ImageInUse,
    InternalError,
    InvalidImage,
    InvalidPath,
    InvalidRequest,
    InvalidWorkspace,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    PortNotListening,
    PortUnreachable,
    ProcessEnded,
    ProcessNotFound,
    ProcessStartFailed,
    SandkastenAPIError,
    SandkastenConnectionError,
    SandkastenError,
    SandkastenStreamError,
    SandkastenTimeoutError,
    SessionLost,
    SessionNotFound,
    SessionNotPaused,
    SessionNotRunning,
    ShuttingDown,
    SnapshotNotFound,
    StdinClosed,
    StorageFull,
    TagInUse,
    Unauthorized,
    UnsupportedError,
    WorkspaceDisabled,
    WorkspaceInUse,
    WorkspaceNotFound,
)
from .session import Session
from .sync import SyncSandboxClient, SyncSession
from .types import (
    ExecChunk,
    ExecResult,
    FileEntry,
    FileStat,
    ImagePoolInfo,
    NetworkEvent,
    NetworkPolicy,
    PoolInfo,
    PortUrl,
    ProcessEvent,
    ProcessInfo,
    ReadResult,
    SandboxSnapshot,
    SessionInfo,
    SessionStats,
    SnapshotInfo,
    WorkspaceInfo,
)

__all__ = [
    "AlreadyExists",
    "CapacityExhausted",
    "ExecChunk",
    "ExecResult",
    "FileEntry",
    "FileNotFound",
    "FileStat",
    "ImageInUse",
    "ImagePoolInfo",
    "InternalError",
    "InvalidImage",
    "InvalidPath",
    "InvalidRequest",
    "InvalidWorkspace",
    "MethodNotAllowed",
    "NetworkEvent",
    "NetworkPolicy",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PoolInfo",
    "PortNotListening",
    "PortUnreachable",
    "PortUrl",
    "ProcessEnded",
    "ProcessEvent",
    "ProcessInfo",
    "ProcessNotFound",
    "ProcessStartFailed",
    "ReadResult",
    "SandboxClient",
    "SandboxSnapshot",
    "SandkastenAPIError",
    "SandkastenConnectionError",
    "SandkastenError",
    "SandkastenStreamError",
    "SandkastenTimeoutError",
    "Session",
    "SessionInfo",
    "SessionLost",
    "SessionNotFound",
    "SessionNotPaused",
    "SessionNotRunning",
    "SessionStats",
    "ShuttingDown",
    "SnapshotInfo",
    "SnapshotNotFound",
    "StdinClosed",
    "StorageFull",
    "SyncSandboxClient",
    "SyncSession",
    "TagInUse",
    "Unauthorized",
    "UnsupportedError",
    "WorkspaceDisabled",
    "WorkspaceInUse",
    "WorkspaceInfo",
    "WorkspaceNotFound",
    "__version__",
]

_AGENTS_NAMES = (
    "SandkastenContext",
    "create_sandkasten_tools",
    "sandbox_tools_for_workspace",
    "sandkasten_tools",
)


def __getattr__(name: str) -> Any:
    """The OpenAI Agents helpers, loaded on first use (as in sandkasten 0.3)."""
    if name in _AGENTS_NAMES:
        from . import agents

        return getattr(agents, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
