"""The blocking client for scripts and notebooks: :class:`SyncSandboxClient`
and :class:`SyncSession`.

Same surface as :class:`~sandkasten.SandboxClient` and
:class:`~sandkasten.Session`, without ``await``; built on ``httpx.Client``
(no event loop involved).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import IO, Any, TypeVar, overload

import httpx

from . import _core
from ._core import ArchiveInput, ExportDest, FileInput, TimeoutInput
from ._sse import ExecStream, ProcessStream
from .exceptions import SessionNotFound, api_error_from_response
from .types import (
    ExecChunk,
    ExecResult,
    FileEntry,
    FileStat,
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

T = TypeVar("T")

__all__ = ["SyncSandboxClient", "SyncSession"]


class SyncSandboxClient(_core.ClientBase):
    """Blocking client of a Sandkasten daemon.

    Example::

        with SyncSandboxClient(base_url="http://127.0.0.1:8080", api_key="sk-...") as client:
            with client.create_session() as session:
                print(session.exec("echo hello").output)

    Arguments as for :class:`~sandkasten.SandboxClient`; ``transport`` is an
    ``httpx.BaseTransport``.
    """

    _NAME = "SyncSandboxClient"
    _http: httpx.Client

    def __init__(
        self,
        *,
        base_url: str = _core.DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: TimeoutInput = _core.DEFAULT_TIMEOUT,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        retry_backoff: float = _core.DEFAULT_RETRY_BACKOFF,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = self._configure(base_url, api_key, timeout, max_retries, retry_backoff)
        self._http = httpx.Client(transport=transport, **settings)

    # ------------------------------------------------------------ I/O (the rest is in _core)

    def _run(self, plan: _core.Call[T] | _core.Plan[T]) -> T:
        """Run a call or a plan of :mod:`sandkasten._core`, performing its steps."""
        run = _core.Runner(plan, self._retry)
        while not run.done:
            try:
                result = self._perform(run.step)
            except BaseException as exc:
                run.fail(exc)
            else:
                run.reply(result)
        return run.result

    def _perform(self, step: _core.Step) -> Any:
        if isinstance(step, _core.Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, _core.Disk):
            return step.fn(*step.args)
        call, sink = step.call, step.sink
        with self._http.stream(call.method, call.path, **call.request_kwargs()) as response:
            step.answered = True
            if sink is None or not 200 <= response.status_code < 300:
                return response.status_code, response.read()
            for chunk in response.iter_bytes(_core.CHUNK_SIZE):
                sink.write(chunk)
            return response.status_code, b""

    def _stream(self, call: _core.Call[Any], events: Any = None) -> Iterator[Any]:
        """Send a streaming call and yield what ``events`` (an :class:`ExecStream`
        by default, or a :class:`ProcessStream`) makes of its lines until ``done``.
        """
        try:
            with self._http.stream(call.method, call.path, **call.request_kwargs()) as response:
                if response.status_code >= 400:
                    raise api_error_from_response(response.status_code, response.read())
                events = events if events is not None else ExecStream()
                for line in response.iter_lines():
                    chunk = events.feed(line)
                    if chunk is not None:
                        yield chunk
                        if chunk.done:
                            return
                yield from events.finish()
        except _core.HTTP_ERRORS as exc:
            raise _core.wrap_http_error(exc, call.method, call.path) from exc

    def _session(self, info: SessionInfo) -> SyncSession:
        return SyncSession(self, info.id, info=info)

    # ------------------------------------------------------------ sessions

    def health(self) -> bool:
        """``GET /healthz``: True once the daemon can create sessions."""
        return self._run(_core.health())

    def create_session(
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
    ) -> SyncSession:
        """Create a session (``POST /v1/sessions``), from the pre-warmed pool
        when one is ready; see :meth:`sandkasten.SandboxClient.create_session`.

        Args:
            image: Image name; None for the daemon's ``default_image``.
            ttl_seconds: The session's own TTL; None for the daemon's default.
            workspace_id: Persistent workspace mounted at ``/workspace``.
            env: Extra environment variables of the session's shell (the JSON
                object ``env``); None sends none.
            disk_limit_mb: The disk limit (MiB) of the sandbox's own writes;
                None for the daemon's default.
            network: The outbound network policy (a :class:`NetworkPolicy`,
                a mapping or a bare mode); None for the daemon's defaults.
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
        """
        call = _core.create_session(
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
        return self._session(self._run(call))

    def get_session(self, session_id: str) -> SyncSession:
        """A live session by id; raises :class:`SessionNotFound`."""
        return self._session(self._run(_core.get_session(session_id)))

    def list_sessions(self) -> builtins.list[SessionInfo]:
        """Every live session, oldest first."""
        return self._run(_core.list_sessions())

    # ------------------------------------------------------------ pool and metrics

    def get_pool(self) -> PoolInfo:
        """The pre-warmed pool per image (``GET /v1/pool``); see
        :meth:`sandkasten.SandboxClient.get_pool`.
        """
        return self._run(_core.get_pool())

    def metrics(self) -> str:
        """The Prometheus text of ``GET /metrics``, as the daemon sent it."""
        return self._run(_core.metrics())

    # ------------------------------------------------------------ workspaces

    def list_workspaces(self) -> builtins.list[WorkspaceInfo]:
        """Every workspace, by id."""
        return self._run(_core.list_workspaces())

    def create_workspace(
        self,
        workspace_id: str,
        labels: Mapping[str, str] | None = None,
        *,
        quota_bytes: int | None = None,
        quota_mb: int | None = None,
        from_snapshot: tuple[str, str] | None = None,
    ) -> WorkspaceInfo:
        """Create a workspace, empty or from ``from_snapshot`` = (source workspace id,
        snapshot id); see :meth:`sandkasten.SandboxClient.create_workspace`.
        """
        return self._run(
            _core.create_workspace(workspace_id, labels, quota_bytes, quota_mb, from_snapshot)
        )

    def get_workspace(self, workspace_id: str) -> WorkspaceInfo:
        """One workspace; raises :class:`WorkspaceNotFound`."""
        return self._run(_core.get_workspace(workspace_id))

    def delete_workspace(self, workspace_id: str) -> None:
        """Delete a workspace; raises :class:`WorkspaceInUse` while a session mounts it."""
        self._run(_core.delete_workspace(workspace_id))

    def read_workspace_file(
        self, workspace_id: str, path: str, max_bytes: int | None = None
    ) -> ReadResult:
        """Read a workspace file without a session."""
        fs = _core.workspace_path(workspace_id) + "/fs"
        return self._run(_core.read_file(fs, path, max_bytes))

    def write_workspace_file(self, workspace_id: str, path: str, content: str | bytes) -> None:
        """Write a workspace file without a session."""
        fs = _core.workspace_path(workspace_id) + "/fs"
        self._run(_core.write_file(fs, path, content))

    def list_workspace_files(
        self, workspace_id: str, path: str | None = None
    ) -> builtins.list[FileEntry]:
        """List a workspace directory without a session (None: its root)."""
        return self._run(_core.list_files(_core.workspace_path(workspace_id) + "/fs", path))

    def upload_workspace_file(
        self,
        workspace_id: str,
        file: FileInput,
        dest_path: str | None = None,
        filename: str | None = None,
    ) -> builtins.list[str]:
        """Upload one file into a workspace; returns the stored paths."""
        fs = _core.workspace_path(workspace_id) + "/fs"
        return self._run(_core.upload(fs, file, dest_path, filename, self._retry))

    @overload
    def export_workspace(self, workspace_id: str, dest: None = None) -> bytes: ...

    @overload
    def export_workspace(
        self, workspace_id: str, dest: str | os.PathLike[str] | IO[bytes]
    ) -> int: ...

    def export_workspace(self, workspace_id: str, dest: ExportDest = None) -> bytes | int:
        """Download a workspace as a tar: its bytes (``dest`` None), or written to
        ``dest`` (a path or binary file object) chunk by chunk, returning the
        number of bytes written; see :meth:`sandkasten.SandboxClient.export_workspace`.
        """
        return self._run(_core.export_workspace(workspace_id, dest, self._retry))

    def import_workspace(self, workspace_id: str, data: ArchiveInput) -> None:
        """Replace a workspace's content with a tar (bytes, a path or a binary file
        object; streamed); raises :class:`WorkspaceInUse` while a session mounts
        it; see :meth:`sandkasten.SandboxClient.import_workspace`.
        """
        self._run(_core.import_workspace(workspace_id, data, self._retry))

    def sandbox_snapshots(self) -> builtins.list[SandboxSnapshot]:
        """Every snapshot of a whole sandbox, oldest first (``GET /v1/snapshots``)."""
        return self._run(_core.list_sandbox_snapshots())

    def delete_sandbox_snapshot(self, snapshot_id: str) -> None:
        """Delete a sandbox snapshot (``DELETE /v1/snapshots/{snap}``); sessions
        started from it keep their files.

        Raises:
            SnapshotNotFound: No such snapshot.
        """
        self._run(_core.delete_sandbox_snapshot(snapshot_id))

    def create_snapshot(self, workspace_id: str, label: str | None = None) -> SnapshotInfo:
        """Snapshot a workspace (only workspaces with a quota have snapshots)."""
        return self._run(_core.create_snapshot(workspace_id, label))

    def list_snapshots(self, workspace_id: str) -> builtins.list[SnapshotInfo]:
        """A workspace's snapshots, oldest first."""
        return self._run(_core.list_snapshots(workspace_id))

    def delete_snapshot(self, workspace_id: str, snapshot_id: str) -> None:
        """Delete a snapshot; raises :class:`SnapshotNotFound`."""
        self._run(_core.delete_snapshot(workspace_id, snapshot_id))

    def restore_snapshot(self, workspace_id: str, snapshot_id: str) -> None:
        """Replace the workspace's content with the snapshot's; raises
        :class:`WorkspaceInUse` while a session mounts it.
        """
        self._run(_core.restore_snapshot(workspace_id, snapshot_id))

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the HTTP connections. Sessions keep running."""
        self._http.close()

    def __enter__(self) -> SyncSandboxClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncSession(_core.SessionBase):
    """A sandbox session of :class:`SyncSandboxClient`; see :class:`sandkasten.Session`.

    Used as a context manager it is destroyed on exit.
    """

    _NAME = "SyncSession"

    def __init__(
        self, client: SyncSandboxClient, session_id: str, *, info: SessionInfo | None = None
    ) -> None:
        self._client = client
        self._id = session_id
        self._info = info

    def exec(self, cmd: str, timeout_ms: int | None = None, raw_output: bool = False) -> ExecResult:
        """Run ``cmd`` in the session's persistent shell and wait for it."""
        return self._client._run(
            _core.exec_command(self._id, cmd, timeout_ms, raw_output, self._client._timeout)
        )

    def exec_stream(
        self, cmd: str, timeout_ms: int | None = None, raw_output: bool = False
    ) -> Iterator[ExecChunk]:
        """Run ``cmd`` and yield output chunks as produced; the last has ``done=True``.

        Raises :class:`SandkastenStreamError` on an ``error`` event.
        """
        call = _core.exec_stream(self._id, cmd, timeout_ms, raw_output, self._client._timeout)
        return self._client._stream(call)

    def pause(self) -> SessionInfo:
        """Freeze every process of the session (``POST /v1/sessions/{id}/pause``):
        memory kept, no CPU used, the TTL stopped. Any later call resumes it.

        Raises:
            SessionNotRunning: It is paused already (or ending).
        """
        return self._client._run(_core.pause_session(self._id))

    def snapshot(self, label: str | None = None) -> SandboxSnapshot:
        """Snapshot the whole sandbox at a consistent point (frozen while
        taken): its files outside and inside ``/workspace``
        (``POST /v1/sessions/{id}/snapshots``). Start sessions from it with
        ``create_session(from_snapshot=snap.id)``.

        Raises:
            Unsupported: The daemon's backend has no sandbox snapshots.
        """
        return self._client._run(_core.snapshot_session(self._id, label))

    def fork(self, count: int = 1) -> list[SyncSession]:
        """``count`` new sessions, each on a copy-on-write copy of this one's
        files, image, TTL, network policy and metadata
        (``POST /v1/sessions/{id}/fork``); processes are not copied.

        Raises:
            InvalidRequest: ``count`` out of range (1 to the daemon's
                ``max_fork_count``).
            Unsupported: The daemon's backend cannot fork.
        """
        infos = self._client._run(_core.fork_session(self._id, count))
        return [self._client._session(i) for i in infos]

    def hibernate(self) -> SessionInfo:
        """Hibernate the session (``POST /v1/sessions/{id}/hibernate``): every
        process ends and its memory is freed; files (``/``, ``/tmp``,
        ``/workspace``) and the shell's cwd and exported variables are kept.
        Any later call (or :meth:`resume`) wakes it on that state.

        Raises:
            SessionNotRunning: It is hibernated already (or ending).
            Unsupported: The daemon's backend cannot hibernate.
        """
        return self._client._run(_core.hibernate_session(self._id))

    def resume(self) -> SessionInfo:
        """Thaw a paused session or wake a hibernated one
        (``POST /v1/sessions/{id}/resume``).

        Raises:
            SessionNotPaused: It is neither paused nor hibernated.
        """
        return self._client._run(_core.resume_session(self._id))

    # ------------------------------------------------------------ processes

    def start_process(
        self,
        cmd: str | None = None,
        *,
        argv: builtins.list[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        pty: tuple[int, int] | None = None,
        stdin: bool = False,
        tag: str | None = None,
    ) -> ProcessInfo:
        """Start a background process (``POST /v1/sessions/{id}/processes``):
        ``cmd`` runs as ``/bin/sh -c cmd``, or ``argv`` without a shell.
        ``pty=(rows, cols)`` runs it in a terminal; ``stdin=True`` keeps its
        stdin open for :meth:`send_stdin`; ``user`` is ``sandbox`` or ``root``;
        ``tag`` names it for the other process methods.

        Raises:
            ProcessStartFailed: The program was not found or could not start.
            TagInUse: A running process has the tag.
        """
        body = _core.process_body(cmd, argv, env, cwd, user, pty, stdin, tag)
        return self._client._run(_core.start_process(self._id, body))

    def run_process(
        self,
        cmd: str | None = None,
        *,
        argv: builtins.list[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        pty: tuple[int, int] | None = None,
        stdin: bool = False,
        tag: str | None = None,
    ) -> Iterator[ProcessEvent]:
        """Start a process and yield its events from its first byte: ``start``,
        ``stdout``/``stderr``/``pty`` (``event.data`` bytes), then ``end``
        (``event.exit_code``). Leaving early detaches; the process runs on.
        """
        body = _core.process_body(cmd, argv, env, cwd, user, pty, stdin, tag)
        call = _core.start_process_stream(self._id, body, self._client._timeout)
        return self._client._stream(call, ProcessStream())

    def attach_process(self, proc: int | str, replay: bool = True) -> Iterator[ProcessEvent]:
        """Reattach to a process by pid or tag: ``start``, its kept output
        (the last 1 MiB since it started, unless ``replay=False``), then live
        output, then ``end``.
        """
        call = _core.attach_process(self._id, proc, replay, self._client._timeout)
        return self._client._stream(call, ProcessStream())

    def processes(self) -> builtins.list[ProcessInfo]:
        """Running and recently ended processes, oldest first."""
        return self._client._run(_core.list_processes(self._id))

    def process(self, proc: int | str) -> ProcessInfo:
        """One process by pid or tag (:class:`ProcessNotFound` otherwise)."""
        return self._client._run(_core.get_process(self._id, proc))

    def send_stdin(self, proc: int | str, data: str | bytes, close: bool = False) -> None:
        """Write to a process's stdin (``str`` as UTF-8); ``close`` closes it after.

        Raises:
            StdinClosed: The process has no open stdin.
            ProcessEnded: The process has ended.
        """
        self._client._run(_core.process_stdin(self._id, proc, data, close))

    def close_stdin(self, proc: int | str) -> None:
        """Close a process's stdin (on a PTY: send end-of-file)."""
        self._client._run(_core.close_process_stdin(self._id, proc))

    def signal_process(self, proc: int | str, signal: str | int = "TERM") -> None:
        """Send a signal (a name such as ``"TERM"`` or a number) to the process's group."""
        self._client._run(_core.signal_process(self._id, proc, signal))

    def resize_process(self, proc: int | str, rows: int, cols: int) -> None:
        """Set a PTY process's window size."""
        self._client._run(_core.resize_process(self._id, proc, rows, cols))

    def write(self, path: str, content: str | bytes) -> None:
        """Write a file (parents created, existing replaced)."""
        self._client._run(_core.write_file(self._fs(), path, content))

    def read(self, path: str, max_bytes: int | None = None) -> ReadResult:
        """Read a file; raises :class:`FileNotFound` or :class:`InvalidPath`."""
        return self._client._run(_core.read_file(self._fs(), path, max_bytes))

    def upload(
        self, file: FileInput, dest_path: str | None = None, filename: str | None = None
    ) -> builtins.list[str]:
        """Upload one file (path, bytes or binary file object); returns the stored paths."""
        plan = _core.upload(self._fs(), file, dest_path, filename, self._client._retry)
        return self._client._run(plan)

    def list(self, path: str | None = None) -> builtins.list[FileEntry]:
        """List a directory (None: ``/workspace``), sorted by name."""
        return self._client._run(_core.list_files(self._fs() + "/list", path))

    def stat(self, path: str) -> FileStat:
        """Metadata of a path, not following a final symlink."""
        return self._client._run(_core.stat_file(self._fs(), path))

    def mkdir(self, path: str, parents: bool = True) -> str:
        """Create a directory; returns its absolute path."""
        return self._client._run(_core.mkdir(self._fs(), path, parents))

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, symlink or directory (non-empty only with ``recursive``)."""
        self._client._run(_core.remove(self._fs(), path, recursive))

    def get_url(self, port: int, ttl_seconds: int | None = None) -> PortUrl:
        """A signed URL that opens TCP ``port`` inside the sandbox without the
        API key, until it expires (see :meth:`Session.get_url`).
        """
        return self._client._run(_core.port_url(self._id, port, ttl_seconds))

    def stats(self) -> SessionStats:
        """Memory, CPU and process counts."""
        return self._client._run(_core.session_stats(self._id))

    def info(self) -> SessionInfo:
        """Current metadata: status, cwd, expiry, ``acquire_source``."""
        self._info = self._client._run(_core.get_session(self._id))
        return self._info

    def set_network(self, network: NetworkPolicy | Mapping[str, Any] | str) -> SessionInfo:
        """Replace the session's network policy; in force for new
        connections when it returns; see :meth:`sandkasten.Session.set_network`.
        """
        self._info = self._client._run(_core.set_network(self._id, network))
        return self._info

    def network_events(self) -> list[NetworkEvent]:
        """What the session's network policy refused, oldest first; see
        :meth:`sandkasten.Session.network_events`.
        """
        return self._client._run(_core.network_events(self._id))

    def destroy(self) -> None:
        """Destroy the sandbox; a persistent workspace stays."""
        self._client._run(_core.destroy_session(self._id))

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(SessionNotFound):  # already destroyed or expired
            self.destroy()
