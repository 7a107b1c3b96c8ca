"""The async client: :class:`SandboxClient`."""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import IO, Any, TypeVar, overload

import httpx

from . import _core
from ._core import ArchiveInput, ExportDest, FileInput, TimeoutInput
from ._sse import ExecStream
from .exceptions import api_error_from_response
from .session import Session
from .types import (
    FileEntry,
    NetworkPolicy,
    PoolInfo,
    ReadResult,
    SandboxSnapshot,
    SessionInfo,
    SnapshotInfo,
    WorkspaceInfo,
)

T = TypeVar("T")

__all__ = ["SandboxClient"]


class SandboxClient(_core.ClientBase):
    """Async client of a Sandkasten daemon.

    Example::

        async with SandboxClient(base_url="http://127.0.0.1:8080", api_key="sk-...") as client:
            async with await client.create_session() as session:
                result = await session.exec("echo hello")
                print(result.output)

    Args:
        base_url: The daemon's URL.
        api_key: The API key; defaults to ``$SANDKASTEN_API_KEY``.
        timeout: Seconds for every phase of a request, or an ``httpx.Timeout``
            (default: 120 s, connect 10 s). ``exec`` waits at least the
            command's ``timeout_ms`` plus a margin; streams tolerate at least
            30 s of silence.
        max_retries: How often a GET or DELETE is retried after a connection
            error (refused, reset, connect timeout), with exponential backoff.
        retry_backoff: Seconds before the first retry; doubles each time (capped at 8 s).
        transport: A custom ``httpx`` transport (e.g. ``httpx.MockTransport`` in tests).
    """

    _NAME = "SandboxClient"
    _http: httpx.AsyncClient

    def __init__(
        self,
        *,
        base_url: str = _core.DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: TimeoutInput = _core.DEFAULT_TIMEOUT,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        retry_backoff: float = _core.DEFAULT_RETRY_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = self._configure(base_url, api_key, timeout, max_retries, retry_backoff)
        self._http = httpx.AsyncClient(transport=transport, **settings)

    # ------------------------------------------------------------ I/O (the rest is in _core)

    async def _run(self, plan: _core.Call[T] | _core.Plan[T]) -> T:
        """Run a call or a plan of :mod:`sandkasten._core`, performing its steps."""
        run = _core.Runner(plan, self._retry)
        while not run.done:
            try:
                result = await self._perform(run.step)
            except BaseException as exc:
                run.fail(exc)
            else:
                run.reply(result)
        return run.result

    async def _perform(self, step: _core.Step) -> Any:
        if isinstance(step, _core.Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, _core.Disk):
            return await asyncio.to_thread(step.fn, *step.args)
        call, sink = step.call, step.sink
        async with self._http.stream(call.method, call.path, **_kwargs(call)) as response:
            step.answered = True
            if sink is None or not 200 <= response.status_code < 300:
                return response.status_code, await response.aread()
            async for chunk in response.aiter_bytes(_core.CHUNK_SIZE):
                if sink.in_memory:
                    sink.write(chunk)
                else:
                    await asyncio.to_thread(sink.write, chunk)
            return response.status_code, b""

    async def _stream(self, call: _core.Call[Any], events: Any = None) -> AsyncIterator[Any]:
        """Send a streaming call and yield what ``events`` (an :class:`ExecStream`
        by default, or a :class:`ProcessStream`) makes of its lines until ``done``.
        """
        try:
            async with self._http.stream(call.method, call.path, **_kwargs(call)) as response:
                if response.status_code >= 400:
                    raise api_error_from_response(response.status_code, await response.aread())
                events = events if events is not None else ExecStream()
                async for line in response.aiter_lines():
                    chunk = events.feed(line)
                    if chunk is not None:
                        yield chunk
                        if chunk.done:
                            return
                for chunk in events.finish():
                    yield chunk
        except _core.HTTP_ERRORS as exc:
            raise _core.wrap_http_error(exc, call.method, call.path) from exc

    def _session(self, info: SessionInfo) -> Session:
        return Session(self, info.id, info=info)

    # ------------------------------------------------------------ sessions

    async def health(self) -> bool:
        """``GET /healthz``: True once the daemon can create sessions."""
        return await self._run(_core.health())

    async def create_session(
        self,
        image: str | None = None,
        ttl_seconds: int | None = None,
        workspace_id: str | None = None,
        env: Mapping[str, str] | None = None,
        disk_limit_mb: int | None = None,
        network: NetworkPolicy | Mapping[str, Any] | str | None = None,
        on_timeout: str | None = None,
        idle_timeout_seconds: int | None = None,
        metadata: Mapping[str, str] | None = None,
        from_snapshot: str | None = None,
    ) -> Session:
        """Create a session (``POST /v1/sessions``).

        When the daemon has a pre-warmed pool for the image, a ready sandbox
        is taken from it and given the workspace, env and TTL of this request
        (``session.last_info.acquire_source == "pool"``); otherwise one is
        started cold.

        Args:
            image: Image name; None for the daemon's ``default_image`` (``base``).
            ttl_seconds: The session's own TTL; every exec or file call moves
                its expiry to now + this. None for the daemon's default.
            workspace_id: Mount this persistent workspace at ``/workspace``
                (created on first use). None for an ephemeral ``/workspace``.
            env: Extra environment variables of the session's shell, sent as
                the JSON object ``env``; they override the defaults (``PATH``,
                ``HOME``, ...). Names are ``[A-Za-z_][A-Za-z0-9_]*``; at most
                128 variables and 64 KiB of names and values; values must not
                contain NUL. None sends no ``env``.
            disk_limit_mb: The disk limit (MiB) of the sandbox's own writes
                outside a persistent ``/workspace`` (root filesystem, home,
                ``/tmp``, ``/var/tmp``); past it writes fail with "Disk quota
                exceeded". None for the daemon's ``defaults.disk_limit_mb``.
                ``session.last_info.disk_limit_mb`` is the limit in force
                (None where the backend enforces none).
            network: The session's outbound network policy: a
                :class:`NetworkPolicy`, a mapping (``{"mode": "full",
                "allow_out": ["pypi.org", "203.0.113.0/24"]}``) or a bare
                mode (``"full"``, ``"none"``). None for the daemon's
                defaults. ``session.last_info.network`` is the policy in force.
            on_timeout: What the end of the TTL (or of the idle limit) does:
                ``"destroy"``, ``"pause"`` or ``"hibernate"``; None for the
                daemon's ``defaults.on_timeout``.
            idle_timeout_seconds: Seconds without activity (no API call and
                no CPU work in the sandbox) after which ``on_timeout`` runs;
                0 for none, None for the daemon's default.
            metadata: Strings kept with the session and shown with it.
            from_snapshot: Start on a copy of this sandbox snapshot
                (:meth:`Session.snapshot`): its image, files and a copy of
                its workspace; not with ``image`` or ``workspace_id``.

        Raises:
            InvalidImage, InvalidWorkspace, CapacityExhausted, WorkspaceDisabled.
            InvalidRequest: A bad ``env`` name or value, or too many or too large;
                ``disk_limit_mb`` below 1 or above the daemon's cap; a
                malformed network entry or one beyond the operator's cap
                (the message names it).
            StorageFull: The host's disk lacks room for another sandbox.
            TypeError: ``env`` is not a mapping of ``str`` to ``str``, or
                ``disk_limit_mb`` is not an int (nothing is sent).
        """
        info = await self._run(
            _core.create_session(
                image,
                ttl_seconds,
                workspace_id,
                env,
                disk_limit_mb,
                network,
                on_timeout,
                idle_timeout_seconds,
                metadata,
                from_snapshot,
            )
        )
        return self._session(info)

    async def get_session(self, session_id: str) -> Session:
        """A live session by id (``GET /v1/sessions/{id}``).

        Raises:
            SessionNotFound: No live session has this id.
        """
        return self._session(await self._run(_core.get_session(session_id)))

    async def list_sessions(self) -> builtins.list[SessionInfo]:
        """Every live session, oldest first (``GET /v1/sessions``)."""
        return await self._run(_core.list_sessions())

    # ------------------------------------------------------------ pool and metrics

    async def get_pool(self) -> PoolInfo:
        """The pre-warmed pool per image (``GET /v1/pool``).

        ``images`` is empty when the daemon runs without a pool. Counters
        count since the daemon started.
        """
        return await self._run(_core.get_pool())

    async def metrics(self) -> str:
        """The daemon's metrics in the Prometheus text format (``GET /metrics``),
        as the daemon sent them.
        """
        return await self._run(_core.metrics())

    # ------------------------------------------------------------ workspaces

    async def list_workspaces(self) -> builtins.list[WorkspaceInfo]:
        """Every workspace, by id (``GET /v1/workspaces``)."""
        return await self._run(_core.list_workspaces())

    async def create_workspace(
        self,
        workspace_id: str,
        labels: Mapping[str, str] | None = None,
        *,
        quota_bytes: int | None = None,
        quota_mb: int | None = None,
        from_snapshot: tuple[str, str] | None = None,
    ) -> WorkspaceInfo:
        """Create a workspace, empty or from a snapshot (``POST /v1/workspaces``).

        Args:
            workspace_id: 1-64 of ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``.
            labels: Free-form string labels.
            quota_bytes: Size limit in bytes (at least 128 MiB), enforced by the
                kernel; give this or ``quota_mb``. None for the daemon's
                ``workspace.quota_mb``.
            quota_mb: Size limit in MiB.
            from_snapshot: ``(source_workspace_id, snapshot_id)``: start with a
                copy of that snapshot's content (the quota defaults to the
                source workspace's).

        Raises:
            AlreadyExists: A workspace with this id exists.
            InvalidWorkspace: The id or a label is not valid.
            InvalidRequest: The quota is below 128 MiB, or the snapshot's
                content does not fit it.
            SnapshotNotFound, WorkspaceNotFound: The source does not exist.
        """
        return await self._run(
            _core.create_workspace(workspace_id, labels, quota_bytes, quota_mb, from_snapshot)
        )

    async def get_workspace(self, workspace_id: str) -> WorkspaceInfo:
        """One workspace (``GET /v1/workspaces/{id}``).

        Raises:
            WorkspaceNotFound: No workspace has this id.
        """
        return await self._run(_core.get_workspace(workspace_id))

    async def delete_workspace(self, workspace_id: str) -> None:
        """Delete a workspace and its files (``DELETE /v1/workspaces/{id}``).

        Raises:
            WorkspaceInUse: A live session mounts it.
            WorkspaceNotFound: No workspace has this id.
        """
        await self._run(_core.delete_workspace(workspace_id))

    async def read_workspace_file(
        self, workspace_id: str, path: str, max_bytes: int | None = None
    ) -> ReadResult:
        """Read a workspace file without a session (``GET /v1/workspaces/{id}/fs/read``).

        ``a/b``, ``/a/b`` and ``/workspace/a/b`` name the same file.
        """
        fs = _core.workspace_path(workspace_id) + "/fs"
        return await self._run(_core.read_file(fs, path, max_bytes))

    async def write_workspace_file(
        self, workspace_id: str, path: str, content: str | bytes
    ) -> None:
        """Write a workspace file without a session (``POST /v1/workspaces/{id}/fs/write``).

        Missing parent directories are created; the file belongs to the sandbox user.
        """
        fs = _core.workspace_path(workspace_id) + "/fs"
        await self._run(_core.write_file(fs, path, content))

    async def list_workspace_files(
        self, workspace_id: str, path: str | None = None
    ) -> builtins.list[FileEntry]:
        """List a workspace directory without a session (``GET /v1/workspaces/{id}/fs``).

        Args:
            path: Directory inside the workspace; None for its root.
        """
        return await self._run(_core.list_files(_core.workspace_path(workspace_id) + "/fs", path))

    async def upload_workspace_file(
        self,
        workspace_id: str,
        file: FileInput,
        dest_path: str | None = None,
        filename: str | None = None,
    ) -> builtins.list[str]:
        """Upload one file into a workspace (``POST /v1/workspaces/{id}/fs/upload``).

        Args:
            file: A local path, the bytes, or a binary file object.
            dest_path: Target directory; None for the workspace root.
            filename: Name in the workspace; required for bytes, else the local name.

        Returns:
            The stored paths, as a session sees them (``/workspace/...``).
        """
        fs = _core.workspace_path(workspace_id) + "/fs"
        return await self._run(_core.upload(fs, file, dest_path, filename, self._retry))

    @overload
    async def export_workspace(self, workspace_id: str, dest: None = None) -> bytes: ...

    @overload
    async def export_workspace(
        self, workspace_id: str, dest: str | os.PathLike[str] | IO[bytes]
    ) -> int: ...

    async def export_workspace(self, workspace_id: str, dest: ExportDest = None) -> bytes | int:
        """Download a workspace's content as a tar (``GET /v1/workspaces/{id}/export``).

        Point-in-time for a workspace with a quota; works while sessions use it.

        Args:
            dest: None to return the tar's bytes; a local path (created or
                replaced; removed again if the export fails) or a binary file
                object to write it to, chunk by chunk, without holding it in memory.

        Returns:
            The tar's bytes, or the number of bytes written to ``dest``.

        Raises:
            WorkspaceNotFound: No workspace has this id.
            SandkastenConnectionError: The connection broke off mid-way (the
                daemon ends the stream early on an I/O error).
        """
        return await self._run(_core.export_workspace(workspace_id, dest, self._retry))

    async def import_workspace(self, workspace_id: str, data: ArchiveInput) -> None:
        """Replace a workspace's whole content with a tar's
        (``PUT /v1/workspaces/{id}/import``).

        The workspace must exist and no session may mount it. A refused or
        failed import leaves the old content intact.

        Args:
            data: The tar's bytes, a local path, or a binary file object
                (paths and file objects are streamed, not read into memory).

        Raises:
            WorkspaceNotFound: No workspace has this id.
            WorkspaceInUse: A live session mounts it (or an export is running).
            InvalidRequest: A bad archive (``..``, absolute paths, entries below
                a symlink, ...), or content over the quota.
            PayloadTooLarge: Over the daemon's ``max_body_mb``.
        """
        await self._run(_core.import_workspace(workspace_id, data, self._retry))

    async def sandbox_snapshots(self) -> builtins.list[SandboxSnapshot]:
        """Every snapshot of a whole sandbox, oldest first (``GET /v1/snapshots``)."""
        return await self._run(_core.list_sandbox_snapshots())

    async def delete_sandbox_snapshot(self, snapshot_id: str) -> None:
        """Delete a sandbox snapshot (``DELETE /v1/snapshots/{snap}``); sessions
        started from it keep their files.

        Raises:
            SnapshotNotFound: No such snapshot.
        """
        await self._run(_core.delete_sandbox_snapshot(snapshot_id))

    async def create_snapshot(self, workspace_id: str, label: str | None = None) -> SnapshotInfo:
        """Snapshot a workspace, also while sessions write to it
        (``POST /v1/workspaces/{id}/snapshots``).

        Only workspaces with a quota (btrfs images) have snapshots; others
        raise :class:`InvalidRequest`.
        """
        return await self._run(_core.create_snapshot(workspace_id, label))

    async def list_snapshots(self, workspace_id: str) -> builtins.list[SnapshotInfo]:
        """A workspace's snapshots, oldest first (``GET /v1/workspaces/{id}/snapshots``)."""
        return await self._run(_core.list_snapshots(workspace_id))

    async def delete_snapshot(self, workspace_id: str, snapshot_id: str) -> None:
        """Delete a snapshot (``DELETE /v1/workspaces/{id}/snapshots/{snap}``).

        Raises:
            SnapshotNotFound: The workspace has no such snapshot.
        """
        await self._run(_core.delete_snapshot(workspace_id, snapshot_id))

    async def restore_snapshot(self, workspace_id: str, snapshot_id: str) -> None:
        """Replace the workspace's content with the snapshot's
        (``POST /v1/workspaces/{id}/snapshots/{snap}/restore``).

        Raises:
            WorkspaceInUse: A live session mounts the workspace.
            SnapshotNotFound: The workspace has no such snapshot.
        """
        await self._run(_core.restore_snapshot(workspace_id, snapshot_id))

    # ------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Close the HTTP connections. Sessions keep running."""
        await self._http.aclose()

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _kwargs(call: _core.Call[Any]) -> dict[str, Any]:
    """``call``'s request arguments, a streamed body read in a worker thread."""
    kwargs = call.request_kwargs()
    content = kwargs.get("content")
    if content is not None and not isinstance(content, bytes):
        kwargs["content"] = _read_in_thread(content)
    return kwargs


async def _read_in_thread(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    """The pieces of a body read from a local file, each read in a worker thread."""
    it = iter(pieces)
    while (piece := await asyncio.to_thread(next, it, None)) is not None:
        yield piece
