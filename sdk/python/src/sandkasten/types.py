"""Result types of the Sandkasten SDK.

Every type is a plain dataclass built from the daemon's JSON. Fields the
daemon may add later are ignored; fields an older daemon does not send get
their documented default.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ExecChunk",
    "ExecResult",
    "FileEntry",
    "FileStat",
    "ImagePoolInfo",
    "PoolInfo",
    "ReadResult",
    "SessionInfo",
    "SessionStats",
    "SnapshotInfo",
    "WorkspaceInfo",
]


@dataclass
class ExecResult:
    """The result of :meth:`Session.exec`."""

    exit_code: int
    """Exit code of the command (0 is success, 124 a timeout, 128+N a signal)."""

    cwd: str
    """The shell's working directory after the command."""

    output: str
    """stdout and stderr, interleaved in the order written."""

    truncated: bool = False
    """True when the output exceeded the daemon's cap (1 MiB)."""

    duration_ms: int = 0
    """How long the command ran, in milliseconds."""

    timed_out: bool = False
    """True when ``timeout_ms`` elapsed and the command was interrupted."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecResult:
        """Build from the body of ``POST /v1/sessions/{id}/exec``."""
        return cls(
            exit_code=int(data["exit_code"]),
            cwd=str(data["cwd"]),
            output=str(data.get("output", "")),
            truncated=bool(data.get("truncated", False)),
            duration_ms=int(data.get("duration_ms", 0)),
            timed_out=bool(data.get("timed_out", False)),
        )


@dataclass
class ExecChunk:
    """One piece of :meth:`Session.exec_stream`.

    Output chunks have ``done=False`` and carry ``output``. The last chunk of
    a stream has ``done=True``, an empty ``output``, and the command's
    ``exit_code``, ``cwd``, ``duration_ms``, ``timed_out`` and ``truncated``.
    """

    output: str
    """Output text of this chunk (empty on the final chunk)."""

    timestamp: int = 0
    """When the daemon received the chunk, in Unix milliseconds (0 on the final chunk)."""

    done: bool = False
    """True on the final chunk only."""

    exit_code: int | None = None
    """Exit code of the command (final chunk only)."""

    cwd: str | None = None
    """The shell's working directory after the command (final chunk only)."""

    duration_ms: int = 0
    """How long the command ran (final chunk only)."""

    timed_out: bool = False
    """True when the command was interrupted by its timeout (final chunk only)."""

    truncated: bool = False
    """True when the daemon stopped sending output at its cap (final chunk only)."""

    @classmethod
    def from_chunk_event(cls, data: dict[str, Any]) -> ExecChunk:
        """Build from the data of an ``event: chunk``."""
        return cls(output=str(data.get("chunk", "")), timestamp=int(data.get("timestamp", 0)))

    @classmethod
    def from_done_event(cls, data: dict[str, Any]) -> ExecChunk:
        """Build from the data of an ``event: done``."""
        return cls(
            output="",
            timestamp=0,
            done=True,
            exit_code=int(data["exit_code"]),
            cwd=str(data["cwd"]),
            duration_ms=int(data.get("duration_ms", 0)),
            timed_out=bool(data.get("timed_out", False)),
            truncated=bool(data.get("truncated", False)),
        )


@dataclass
class NetworkPolicy:
    """A session's outbound network policy (``network`` of a create,
    ``Session.set_network``, ``SessionInfo.network``).

    ``mode`` is ``"none"`` (loopback only) or ``"full"``. With ``full`` an
    empty ``allow_out`` reaches everything not denied; with entries, only
    those. Entries are host names (``pypi.org``), wildcards
    (``*.github.com``), IP addresses and CIDRs; ``deny_out`` wins. The
    daemon's ``network.deny_always`` ranges are never reachable.
    """

    mode: str = "full"
    allow_out: list[str] = field(default_factory=list)
    deny_out: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the daemon reads."""
        return {
            "mode": self.mode,
            "allow_out": list(self.allow_out),
            "deny_out": list(self.deny_out),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkPolicy:
        """Build from a ``network`` JSON object."""
        return cls(
            mode=str(data.get("mode", "none")),
            allow_out=[str(e) for e in data.get("allow_out") or []],
            deny_out=[str(e) for e in data.get("deny_out") or []],
        )


@dataclass
class NetworkEvent:
    """One name or connection a session's network policy refused
    (``Session.network_events``).
    """

    time: str
    """RFC 3339, UTC."""
    destination: str
    """The name asked for (DNS), or ``address:port`` (a connection)."""
    name: str | None
    """The host name involved, where one is known."""
    reason: str
    """Why, e.g. ``not in allow_out``."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkEvent:
        """Build from one entry of ``events``."""
        name = data.get("name")
        return cls(
            time=str(data["time"]),
            destination=str(data["destination"]),
            name=None if name is None else str(name),
            reason=str(data["reason"]),
        )


@dataclass
class SessionInfo:
    """What the daemon knows about a session (``GET /v1/sessions/{id}``)."""

    id: str
    """Session id."""

    image: str
    """Image the session runs (``base`` is built in)."""

    status: str
    """One of ``creating``, ``running``, ``paused``, ``hibernated``, ``destroying``,
    ``destroyed``, ``expired``, ``lost``, ``failed``."""

    cwd: str
    """The shell's working directory after the last exec."""

    created_at: str
    """RFC 3339 time of creation."""

    expires_at: str
    """RFC 3339 time at which the daemon destroys the session unless it is used."""

    workspace_id: str | None = None
    """The persistent workspace mounted at ``/workspace``; None for an ephemeral one."""

    acquire_source: str | None = None
    """``"pool"`` when a pre-warmed sandbox served the create, ``"cold"`` otherwise."""

    disk_limit_mb: int | None = None
    """The disk limit (MiB) of the sandbox's own writes outside a persistent
    ``/workspace``; None where the daemon's backend enforces none."""

    network: NetworkPolicy | None = None
    """The outbound network policy in force; None from daemons without
    network policies."""

    metadata: dict[str, str] | None = None
    """Strings given at create; None from daemons that do not send them."""

    on_timeout: str | None = None
    """What the end of the TTL (or idle limit) does: ``destroy``, ``pause`` or
    ``hibernate``."""

    idle_timeout_seconds: int | None = None
    """The idle limit in seconds; None: none."""

    container_id: str | None = None
    """Kept for compatibility with sandkasten 0.3; this daemon does not send it."""

    last_activity: str | None = None
    """Kept for compatibility with sandkasten 0.3; this daemon does not send it."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionInfo:
        """Build from a ``SessionInfo`` JSON object."""
        return cls(
            id=str(data["id"]),
            image=str(data.get("image", "")),
            status=str(data.get("status", "")),
            cwd=str(data.get("cwd", "")),
            created_at=str(data.get("created_at", "")),
            expires_at=str(data.get("expires_at", "")),
            workspace_id=data.get("workspace_id") or None,
            acquire_source=data.get("acquire_source"),
            disk_limit_mb=data.get("disk_limit_mb"),
            network=NetworkPolicy.from_json(data["network"])
            if isinstance(data.get("network"), dict)
            else None,
            metadata=dict(data["metadata"]) if isinstance(data.get("metadata"), dict) else None,
            on_timeout=data.get("on_timeout"),
            idle_timeout_seconds=data.get("idle_timeout_seconds"),
            container_id=data.get("container_id"),
            last_activity=data.get("last_activity"),
        )


@dataclass
class SessionStats:
    """Resource usage of a session, read from its cgroups."""

    memory_bytes: int
    """Memory in use, in bytes."""

    memory_limit: int
    """Memory limit in bytes (0 when none is set)."""

    cpu_usage_usec: int
    """CPU time used, in microseconds."""

    pids: int = 0
    """Number of processes and threads."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionStats:
        """Build from the body of ``GET /v1/sessions/{id}/stats``."""
        return cls(
            memory_bytes=int(data.get("memory_bytes") or 0),
            memory_limit=int(data.get("memory_limit") or 0),
            cpu_usage_usec=int(data.get("cpu_usage_usec") or 0),
            pids=int(data.get("pids") or 0),
        )


@dataclass
class PortUrl:
    """A signed, expiring URL of one TCP port inside a session's sandbox
    (``POST /v1/sessions/{id}/ports/{port}/url``): opens the port without
    the API key until ``expires_at``.
    """

    url: str
    """The port on its preview host, e.g.
    ``http://8000-<id>.localhost:8080/?sandkasten_token=...``: open it in a
    browser (which then keeps a cookie for that port until expiry)."""

    path: str
    """The same through the daemon's own address: append it to the base URL."""

    token: str
    """The token alone: ``?sandkasten_token=<token>`` on any path of the port."""

    expires_at: str
    """RFC 3339, UTC."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortUrl:
        """Build from the body of ``POST /v1/sessions/{id}/ports/{port}/url``."""
        return cls(
            url=str(data["url"]),
            path=str(data["path"]),
            token=str(data["token"]),
            expires_at=str(data["expires_at"]),
        )


@dataclass
class ReadResult:
    """The result of reading a file.

    ``str(result)`` is the content decoded as UTF-8 (invalid bytes replaced),
    so ``print(await session.read("a.py"))`` prints the file; ``bytes(result)``
    is the raw content.
    """

    content: bytes
    """The file's bytes (up to ``max_bytes``)."""

    path: str
    """The absolute path inside the sandbox, e.g. ``/workspace/a.py``."""

    truncated: bool = False
    """True when the file is longer than what was returned."""

    @property
    def text(self) -> str:
        """The content decoded as UTF-8, invalid bytes replaced by U+FFFD."""
        return self.content.decode("utf-8", errors="replace")

    def __str__(self) -> str:
        return self.text

    def __bytes__(self) -> bytes:
        return self.content

    @classmethod
    def from_json(cls, data: dict[str, Any], *, path: str = "") -> ReadResult:
        """Build from the body of ``GET …/fs/read``."""
        raw = str(data.get("content_base64", ""))
        raw += "=" * (-len(raw) % 4)
        return cls(
            content=base64.b64decode(raw),
            path=str(data.get("path", path)),
            truncated=bool(data.get("truncated", False)),
        )


@dataclass
class WorkspaceInfo:
    """A named persistent workspace."""

    id: str
    """Workspace id (1-64 of ``[A-Za-z0-9._-]``)."""

    created_at: str | None = None
    """RFC 3339 time of creation."""

    last_used_at: str | None = None
    """RFC 3339 time a session last mounted it; None if never."""

    size_bytes: int = 0
    """Bytes of its regular files."""

    quota_bytes: int | None = None
    """Size limit in bytes; None when unlimited."""

    in_use: bool = False
    """Whether a live session mounts it."""

    labels: dict[str, str] = field(default_factory=dict)
    """Free-form labels given at creation."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkspaceInfo:
        """Build from a ``WorkspaceInfo`` JSON object."""
        quota = data.get("quota_bytes")
        return cls(
            id=str(data["id"]),
            created_at=data.get("created_at"),
            last_used_at=data.get("last_used_at"),
            size_bytes=int(data.get("size_bytes") or 0),
            quota_bytes=int(quota) if quota is not None else None,
            in_use=bool(data.get("in_use", False)),
            labels=dict(data.get("labels") or {}),
        )


@dataclass
class SnapshotInfo:
    """A read-only, point-in-time snapshot of a workspace."""

    id: str
    """Snapshot id (``snap-…``)."""

    workspace_id: str
    """The workspace it belongs to."""

    created_at: str | None = None
    """RFC 3339 time of creation."""

    label: str | None = None
    """The label given at creation, if any."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotInfo:
        """Build from a ``SnapshotInfo`` JSON object."""
        return cls(
            id=str(data["id"]),
            workspace_id=str(data.get("workspace_id", "")),
            created_at=data.get("created_at"),
            label=data.get("label"),
        )


@dataclass
class SandboxSnapshot:
    """A snapshot of a whole sandbox (its files outside and inside
    ``/workspace``), usable as an image.
    """

    id: str
    """Snapshot id (``ssnap-…``), also its name as an image."""

    session_id: str
    """The session it was taken of."""

    image: str
    """The image that session started from."""

    workspace_id: str | None = None
    """The persistent workspace that session had; None for an ephemeral one."""

    label: str | None = None
    """The label given at creation, if any."""

    created_at: str | None = None
    """RFC 3339 time of creation."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxSnapshot:
        """Build from a ``SandboxSnapshot`` JSON object."""
        return cls(
            id=str(data["id"]),
            session_id=str(data.get("session_id", "")),
            image=str(data.get("image", "")),
            workspace_id=data.get("workspace_id"),
            label=data.get("label"),
            created_at=data.get("created_at"),
        )


def _opt_float(value: Any) -> float | None:
    return float(value) if value is not None else None


@dataclass
class ImagePoolInfo:
    """One image's pre-warmed pool (an entry of :attr:`PoolInfo.images`).

    Counters count since the daemon started.
    """

    target: int = 0
    """Configured number of ready sandboxes (``pool.images.<image>``)."""

    idle: int = 0
    """Ready sandboxes waiting to be handed out."""

    in_flight: int = 0
    """Sandboxes being started to refill the pool."""

    hits: int = 0
    """Creates served from the pool."""

    misses: int = 0
    """Creates of this image served cold because no pooled sandbox was idle."""

    discarded: int = 0
    """Pooled sandboxes found dead or unresponsive and thrown away."""

    recycled: int = 0
    """Pooled sandboxes replaced after ``pool.max_idle_seconds`` unused."""

    refill_failures: int = 0
    """Failed attempts to start a pooled sandbox."""

    last_error: str | None = None
    """The last refill failure, if any."""

    acquire_wait_p50_ms: float | None = None
    """Median time a create spent taking and preparing a pooled sandbox, in
    milliseconds, over the last 1024 hits; None before the first hit."""

    acquire_wait_p95_ms: float | None = None
    """95th percentile of the same; None before the first hit."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImagePoolInfo:
        """Build from one value of ``images`` in ``GET /v1/pool``."""
        return cls(
            target=int(data.get("target") or 0),
            idle=int(data.get("idle") or 0),
            in_flight=int(data.get("in_flight") or 0),
            hits=int(data.get("hits") or 0),
            misses=int(data.get("misses") or 0),
            discarded=int(data.get("discarded") or 0),
            recycled=int(data.get("recycled") or 0),
            refill_failures=int(data.get("refill_failures") or 0),
            last_error=data.get("last_error"),
            acquire_wait_p50_ms=_opt_float(data.get("acquire_wait_p50_ms")),
            acquire_wait_p95_ms=_opt_float(data.get("acquire_wait_p95_ms")),
        )


@dataclass
class PoolInfo:
    """The daemon's pre-warmed pool (``GET /v1/pool``)."""

    images: dict[str, ImagePoolInfo] = field(default_factory=dict)
    """The pool of each pooled image, by image name; empty when the daemon has
    no pool."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoolInfo:
        """Build from the body of ``GET /v1/pool``."""
        images = data.get("images")
        if images is None:
            images = {}
        if not isinstance(images, dict):
            raise TypeError(f"images: expected a JSON object, got {type(images).__name__}")
        for name, value in images.items():
            if not isinstance(value, dict):
                kind = type(value).__name__
                raise TypeError(f"images.{name}: expected a JSON object, got {kind}")
        return cls(images={str(k): ImagePoolInfo.from_json(v) for k, v in images.items()})


@dataclass
class FileEntry:
    """One entry of a directory listing."""

    name: str
    """File name (no directory part)."""

    type: str
    """``file``, ``dir``, ``symlink`` or ``other``."""

    size: int = 0
    """Size in bytes."""

    mode: int = 0
    """Permission bits (``st_mode & 0o7777``; 0o644 is 420)."""

    mtime: int = 0
    """Modification time, Unix seconds."""

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        """True for a regular file."""
        return self.type == "file"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        """Build from one element of ``entries``."""
        return cls(
            name=str(data["name"]),
            type=str(data.get("type", "other")),
            size=int(data.get("size") or 0),
            mode=int(data.get("mode") or 0),
            mtime=int(data.get("mtime") or 0),
        )


@dataclass
class FileStat:
    """Metadata of one path (a final symlink is not followed)."""

    path: str
    """Absolute path inside the sandbox."""

    type: str
    """``file``, ``dir``, ``symlink`` or ``other``."""

    size: int = 0
    """Size in bytes."""

    mode: int = 0
    """Permission bits (``st_mode & 0o7777``)."""

    uid: int = 0
    """Owner uid as seen inside the sandbox."""

    gid: int = 0
    """Group gid as seen inside the sandbox."""

    mtime: int = 0
    """Modification time, Unix seconds."""

    link_target: str | None = None
    """Target of a symlink; None for other types."""

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        """True for a regular file."""
        return self.type == "file"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileStat:
        """Build from the body of ``GET …/fs/stat``."""
        return cls(
            path=str(data["path"]),
            type=str(data.get("type", "other")),
            size=int(data.get("size") or 0),
            mode=int(data.get("mode") or 0),
            uid=int(data.get("uid") or 0),
            gid=int(data.get("gid") or 0),
            mtime=int(data.get("mtime") or 0),
            link_target=data.get("link_target"),
        )


@dataclass
class ProcessInfo:
    """A background process (``/v1/sessions/{id}/processes``)."""

    pid: int
    """Its pid inside the sandbox."""
    tag: str | None
    argv: list[str]
    cwd: str
    user: str
    """``sandbox`` or ``root``."""
    pty: dict[str, int] | None
    """``{"rows": R, "cols": C}`` for a PTY process."""
    stdin: bool
    """Stdin is open for input."""
    started_at: int
    """Unix ms."""
    running: bool
    exit_code: int | None
    """Once ended: the exit status, or 128 + N for death by signal N."""
    signal: int | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessInfo:
        """Build from a ``ProcessInfo`` body (or a stream's ``start`` event)."""
        pty = data.get("pty")
        return cls(
            pid=int(data["pid"]),
            tag=data.get("tag"),
            argv=[str(a) for a in data.get("argv") or []],
            cwd=str(data.get("cwd", "")),
            user=str(data.get("user", "sandbox")),
            pty={"rows": int(pty["rows"]), "cols": int(pty["cols"])} if pty else None,
            stdin=bool(data.get("stdin", False)),
            started_at=int(data.get("started_at", 0)),
            running=bool(data.get("running", False)),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
        )


@dataclass
class ProcessEvent:
    """One event of a process stream: ``start`` (with ``info``), ``stdout``,
    ``stderr`` or ``pty`` (with ``data``), then ``end`` (``done``, with
    ``exit_code`` and ``signal``).
    """

    kind: str
    data: bytes = b""
    info: ProcessInfo | None = None
    exit_code: int | None = None
    signal: int | None = None

    @property
    def done(self) -> bool:
        """The last event: the process ended."""
        return self.kind == "end"

    @property
    def text(self) -> str:
        """``data`` as text (UTF-8, invalid bytes replaced)."""
        return self.data.decode("utf-8", "replace")
