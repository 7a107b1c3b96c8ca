"""The async session: :class:`Session`."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _core
from ._core import FileInput
from ._sse import ProcessStream
from .exceptions import SessionNotFound
from .types import (
    ExecChunk,
    ExecResult,
    FileEntry,
    FileStat,
    NetworkEvent,
    NetworkPolicy,
    PortUrl,
    ProcessEvent,
    ProcessInfo,
    ReadResult,
    SandboxSnapshot,
    SessionInfo,
    SessionStats,
)

if TYPE_CHECKING:
    from .client import SandboxClient

__all__ = ["Session"]


class Session(_core.SessionBase):
    """A sandbox session: one persistent shell and its filesystem.

    Get one from :meth:`SandboxClient.create_session` or
    :meth:`SandboxClient.get_session`. Used as an async context manager it
    is destroyed on exit::

        async with await client.create_session() as session:
            await session.exec("cd /tmp && export X=1")
            print((await session.exec("echo $X in $(pwd)")).output)  # 1 in /tmp

    Relative paths of the file methods are relative to ``/workspace``.
    """

    _NAME = "Session"

    def __init__(
        self, client: SandboxClient, session_id: str, *, info: SessionInfo | None = None
    ) -> None:
        self._client = client
        self._id = session_id
        self._info = info

    # ------------------------------------------------------------ exec

    async def exec(
        self, cmd: str, timeout_ms: int | None = None, raw_output: bool = False
    ) -> ExecResult:
        """Run ``cmd`` in the session's shell and wait for it
        (``POST /v1/sessions/{id}/exec``).

        The shell persists: ``cd``, ``export``, functions and background jobs
        carry over to the next exec. A timeout is not an exception: the result
        has ``timed_out=True`` and ``exit_code=124``.

        Args:
            cmd: Shell command (non-empty).
            timeout_ms: Command timeout; None for the daemon's default (30 s),
                capped by its ``max_exec_timeout_ms``.
            raw_output: Keep terminal escape sequences in the output.
        """
        return await self._client._run(
            _core.exec_command(self._id, cmd, timeout_ms, raw_output, self._client._timeout)
        )

    def exec_stream(
        self, cmd: str, timeout_ms: int | None = None, raw_output: bool = False
    ) -> AsyncIterator[ExecChunk]:
        """Run ``cmd`` and yield its output as it is produced
        (``POST /v1/sessions/{id}/exec/stream``).

        The last chunk has ``done=True`` with ``exit_code`` and ``cwd``::

            async for chunk in session.exec_stream("for i in 1 2 3; do echo $i; sleep 1; done"):
                print(chunk.output, end="")
                if chunk.done:
                    print("exit", chunk.exit_code)

        Leaving the loop early closes the connection, which interrupts the
        command (wrap in ``contextlib.aclosing`` to do that deterministically).

        Raises:
            SandkastenStreamError: The daemon sent an ``error`` event, or the
                stream ended without ``done``.
        """
        call = _core.exec_stream(self._id, cmd, timeout_ms, raw_output, self._client._timeout)
        return self._client._stream(call)

    async def pause(self) -> SessionInfo:
        """Freeze every process of the session (``POST /v1/sessions/{id}/pause``):
        memory kept, no CPU used, the TTL stopped. Any later call resumes it.

        Raises:
            SessionNotRunning: It is paused already (or ending).
        """
        return await self._client._run(_core.pause_session(self._id))

    async def snapshot(self, label: str | None = None) -> SandboxSnapshot:
        """Snapshot the whole sandbox at a consistent point (frozen while
        taken): its files outside and inside ``/workspace``
        (``POST /v1/sessions/{id}/snapshots``). Start sessions from it with
        ``create_session(from_snapshot=snap.id)``.

        Raises:
            Unsupported: The daemon's backend has no sandbox snapshots.
        """
        return await self._client._run(_core.snapshot_session(self._id, label))

    async def fork(self, count: int = 1) -> list[Session]:
        """``count`` new sessions, each on a copy-on-write copy of this one's
        files, image, TTL, network policy and metadata
        (``POST /v1/sessions/{id}/fork``); processes are not copied.

        Raises:
            InvalidRequest: ``count`` out of range (1 to the daemon's
                ``max_fork_count``).
            Unsupported: The daemon's backend cannot fork.
        """
        infos = await self._client._run(_core.fork_session(self._id, count))
        return [self._client._session(i) for i in infos]

    async def hibernate(self) -> SessionInfo:
        """Hibernate the session (``POST /v1/sessions/{id}/hibernate``): every
        process ends and its memory is freed; files (``/``, ``/tmp``,
        ``/workspace``) and the shell's cwd and exported variables are kept.
        Any later call (or :meth:`resume`) wakes it on that state.

        Raises:
            SessionNotRunning: It is hibernated already (or ending).
            Unsupported: The daemon's backend cannot hibernate.
        """
        return await self._client._run(_core.hibernate_session(self._id))

    async def resume(self) -> SessionInfo:
        """Thaw a paused session or wake a hibernated one
        (``POST /v1/sessions/{id}/resume``).

        Raises:
            SessionNotPaused: It is neither paused nor hibernated.
        """
        return await self._client._run(_core.resume_session(self._id))

    # ------------------------------------------------------------ processes

    async def start_process(
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
        return await self._client._run(_core.start_process(self._id, body))

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
    ) -> AsyncIterator[ProcessEvent]:
        """Start a process and yield its events from its first byte: ``start``,
        ``stdout``/``stderr``/``pty`` (``event.data`` bytes), then ``end``
        (``event.exit_code``). Leaving early detaches; the process runs on.
        """
        body = _core.process_body(cmd, argv, env, cwd, user, pty, stdin, tag)
        call = _core.start_process_stream(self._id, body, self._client._timeout)
        return self._client._stream(call, ProcessStream())

    def attach_process(self, proc: int | str, replay: bool = True) -> AsyncIterator[ProcessEvent]:
        """Reattach to a process by pid or tag: ``start``, its kept output
        (the last 1 MiB since it started, unless ``replay=False``), then live
        output, then ``end``.
        """
        call = _core.attach_process(self._id, proc, replay, self._client._timeout)
        return self._client._stream(call, ProcessStream())

    async def processes(self) -> builtins.list[ProcessInfo]:
        """Running and recently ended processes, oldest first."""
        return await self._client._run(_core.list_processes(self._id))

    async def process(self, proc: int | str) -> ProcessInfo:
        """One process by pid or tag (:class:`ProcessNotFound` otherwise)."""
        return await self._client._run(_core.get_process(self._id, proc))

    async def send_stdin(self, proc: int | str, data: str | bytes, close: bool = False) -> None:
        """Write to a process's stdin (``str`` as UTF-8); ``close`` closes it after.

        Raises:
            StdinClosed: The process has no open stdin.
            ProcessEnded: The process has ended.
        """
        await self._client._run(_core.process_stdin(self._id, proc, data, close))

    async def close_stdin(self, proc: int | str) -> None:
        """Close a process's stdin (on a PTY: send end-of-file)."""
        await self._client._run(_core.close_process_stdin(self._id, proc))

    async def signal_process(self, proc: int | str, signal: str | int = "TERM") -> None:
        """Send a signal (a name such as ``"TERM"`` or a number) to the process's group."""
        await self._client._run(_core.signal_process(self._id, proc, signal))

    async def resize_process(self, proc: int | str, rows: int, cols: int) -> None:
        """Set a PTY process's window size."""
        await self._client._run(_core.resize_process(self._id, proc, rows, cols))

    # ------------------------------------------------------------ files

    async def write(self, path: str, content: str | bytes) -> None:
        """Write a file; parents are created, an existing file replaced
        (``POST /v1/sessions/{id}/fs/write``). ``str`` is stored as UTF-8.
        """
        await self._client._run(_core.write_file(self._fs(), path, content))

    async def read(self, path: str, max_bytes: int | None = None) -> ReadResult:
        """Read a file (``GET /v1/sessions/{id}/fs/read``).

        Args:
            path: File path.
            max_bytes: Read at most this many bytes (``truncated`` tells if
                there was more); None or 0 for the daemon's limit (64 MiB).

        Raises:
            FileNotFound: No such file.
            InvalidPath: The path is a directory.
        """
        return await self._client._run(_core.read_file(self._fs(), path, max_bytes))

    async def upload(
        self, file: FileInput, dest_path: str | None = None, filename: str | None = None
    ) -> builtins.list[str]:
        """Upload one file (``POST /v1/sessions/{id}/fs/upload``, multipart).

        Args:
            file: A local path (``str`` or ``Path``), the bytes, or a binary file object.
            dest_path: Target directory; None for ``/workspace``.
            filename: Name in the sandbox; required for bytes, else the local name.

        Returns:
            The absolute paths stored.
        """
        plan = _core.upload(self._fs(), file, dest_path, filename, self._client._retry)
        return await self._client._run(plan)

    async def list(self, path: str | None = None) -> builtins.list[FileEntry]:
        """List a directory, sorted by name (``GET /v1/sessions/{id}/fs/list``).

        Args:
            path: Directory; None for ``/workspace``.
        """
        return await self._client._run(_core.list_files(self._fs() + "/list", path))

    async def stat(self, path: str) -> FileStat:
        """Metadata of a path, not following a final symlink
        (``GET /v1/sessions/{id}/fs/stat``).
        """
        return await self._client._run(_core.stat_file(self._fs(), path))

    async def mkdir(self, path: str, parents: bool = True) -> str:
        """Create a directory (``POST /v1/sessions/{id}/fs/mkdir``).

        With ``parents`` (the default) missing parents are created and an
        existing directory is fine; without, it raises :class:`AlreadyExists`.

        Returns:
            The directory's absolute path.
        """
        return await self._client._run(_core.mkdir(self._fs(), path, parents))

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, symlink or directory (``POST /v1/sessions/{id}/fs/remove``).

        Raises:
            InvalidPath: A non-empty directory without ``recursive``.
            FileNotFound: No such path.
        """
        await self._client._run(_core.remove(self._fs(), path, recursive))

    # ------------------------------------------------------------ lifecycle

    async def get_url(self, port: int, ttl_seconds: int | None = None) -> PortUrl:
        """A signed URL that opens TCP ``port`` inside the sandbox without the
        API key, until it expires (``POST /v1/sessions/{id}/ports/{port}/url``).

        Any server listening there (on 127.0.0.1, ``::1`` or all addresses,
        whatever the session's network mode) is reached through the daemon:
        ``url`` on its preview host (``http://{port}-{id}.localhost:8080/``,
        for a browser), ``path`` on the daemon's own address. With the API
        key the port is also at ``{base_url}/v1/sessions/{id}/ports/{port}/``.

        Args:
            port: 1 to 65535.
            ttl_seconds: Lifetime, 1 to 604800 (7 days); None: one hour.
        """
        return await self._client._run(_core.port_url(self._id, port, ttl_seconds))

    async def stats(self) -> SessionStats:
        """Memory, CPU and process counts (``GET /v1/sessions/{id}/stats``)."""
        return await self._client._run(_core.session_stats(self._id))

    async def info(self) -> SessionInfo:
        """Current metadata: status, cwd, expiry, ``acquire_source``
        (``GET /v1/sessions/{id}``).
        """
        self._info = await self._client._run(_core.get_session(self._id))
        return self._info

    async def set_network(self, network: NetworkPolicy | Mapping[str, Any] | str) -> SessionInfo:
        """Replace the session's outbound network policy, whole
        (``PUT /v1/sessions/{id}/network``); in force for new connections
        when it returns (open connections keep going).

        Args:
            network: A :class:`NetworkPolicy`, a mapping with ``mode``,
                ``allow_out``, ``deny_out`` (absent lists are empty), or a
                bare mode (``"full"``, ``"none"``).

        Returns:
            The session's info with the policy in force (``.network``).

        Raises:
            InvalidRequest: A malformed entry, or one beyond the operator's
                cap (the message names it); nothing changed.
            UnsupportedError: The daemon's backend has no network policies.
        """
        self._info = await self._client._run(_core.set_network(self._id, network))
        return self._info

    async def network_events(self) -> list[NetworkEvent]:
        """What the session's network policy refused, oldest first (the
        latest 1000): names its DNS asked for and connections the daemon's
        proxy reset (``GET /v1/sessions/{id}/network/events``).
        """
        return await self._client._run(_core.network_events(self._id))

    async def destroy(self) -> None:
        """Destroy the sandbox: its processes end and its ephemeral files are
        deleted; a persistent workspace stays (``DELETE /v1/sessions/{id}``).

        Raises:
            SessionNotFound: It was already destroyed (or expired). Leaving
                an ``async with`` block ignores this.
        """
        await self._client._run(_core.destroy_session(self._id))

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(SessionNotFound):  # already destroyed or expired
            await self.destroy()
