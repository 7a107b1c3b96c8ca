"""What the async and the sync client share, so that they only add I/O.

Every operation is defined here once:

- a simple one as a :class:`Call`: method, path, body, and how to parse the
  answer;
- one with more to it (uploads, export, import) as a *plan*: a generator
  that yields :data:`Step` objects (:class:`Exchange` an HTTP request,
  :class:`Sleep` before a retry, :class:`Disk` a blocking local file
  operation) and receives their results. The retry policy, error mapping,
  request bodies and local file handling are plans too.

A client runs a plan with a :class:`Runner` and performs each step with its
own I/O: ``httpx.AsyncClient``, ``asyncio.sleep`` and ``asyncio.to_thread``
for :class:`~sandkasten.SandboxClient`; ``httpx.Client``, ``time.sleep`` and a
plain call for :class:`~sandkasten.SyncSandboxClient`. So both send the same
requests and raise the same errors, and the async client never touches a
local file on the event loop.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, Union, cast
from urllib.parse import quote

import httpx

from ._version import __version__
from .exceptions import (
    SandkastenConnectionError,
    SandkastenError,
    SandkastenTimeoutError,
    api_error_from_response,
)
from .types import (
    ExecResult,
    FileEntry,
    FileStat,
    NetworkEvent,
    NetworkPolicy,
    PoolInfo,
    PortUrl,
    ProcessInfo,
    ReadResult,
    SandboxSnapshot,
    SessionInfo,
    SessionStats,
    SnapshotInfo,
    WorkspaceInfo,
)

T = TypeVar("T")

FileInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]
"""What ``upload`` accepts: a local path, the bytes themselves, or a binary file object."""

ArchiveInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]
"""What ``import_workspace`` accepts: a local tar file's path, the tar's bytes, or a
binary file object positioned at its start."""

ExportDest = Union[str, "os.PathLike[str]", IO[bytes], None]
"""Where ``export_workspace`` writes: a local path, a binary file object, or None
for the bytes returned."""

TimeoutInput = float | httpx.Timeout | None
"""A timeout in seconds for every phase, an :class:`httpx.Timeout`, or None for none."""

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BACKOFF = 0.5
MAX_RETRY_DELAY = 8.0
DEFAULT_EXEC_TIMEOUT_MS = 30_000
EXEC_TIMEOUT_MARGIN = 15.0
"""Seconds the HTTP read timeout of an exec exceeds the command's own timeout:
the daemon answers up to ~1 s after ``timeout_ms`` (SIGINT, SIGKILL, new shell)."""
STREAM_MIN_READ_TIMEOUT = 30.0
"""The daemon sends a keep-alive after 10 s of silence; a stream's read timeout
is never below this, so a silent command does not look like a dead daemon."""
USER_AGENT = f"sandkasten-python/{__version__}"
CHUNK_SIZE = 64 * 1024
"""Bytes read from or written to a local file at a time (one thread hop each
in the async client)."""
TAR_CONTENT_TYPE = "application/x-tar"
METRICS_ACCEPT = "text/plain; version=0.0.4, text/plain;q=0.9, */*;q=0.1"
SSE_ACCEPT = "text/event-stream"

HTTP_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)
"""What ``httpx`` raises; the SDK turns it into its own errors (:func:`wrap_http_error`)."""


@dataclass
class Call(Generic[T]):
    """One HTTP request and the parser of its JSON answer (or, with ``text``,
    of its body as text).
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    json: Any = None
    timeout: httpx.Timeout | None = None
    content: bytes | Iterable[bytes] | None = None
    """A raw request body: bytes, or an iterable of pieces read from a local
    file (the async client reads each piece in a worker thread)."""
    headers: dict[str, str] | None = None
    missing_ok_after_retry: bool = False
    """A DELETE whose retry finds the thing gone: the first attempt did it."""
    text: bool = False
    """The successful answer is text, not JSON: ``parse`` gets the body decoded
    as UTF-8 (invalid bytes replaced). Error answers are JSON all the same."""

    @property
    def idempotent(self) -> bool:
        """Whether a connection error may be retried."""
        return self.method in ("GET", "HEAD", "DELETE")

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.stream`` / ``httpx.AsyncClient.stream``
        (the async client replaces an iterable ``content`` by an async one).
        """
        kwargs: dict[str, Any] = {}
        for name in ("content", "headers", "params", "json", "timeout"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


# ---------------------------------------------------------------- plans and their steps


@dataclass
class Exchange:
    """Step: send ``call`` once. The result is ``(status_code, body)``; with a
    ``sink`` a 2xx body goes to the sink chunk by chunk instead (``body`` is
    then empty). An ``httpx`` exception is thrown back into the plan.
    """

    call: Call[Any]
    sink: ExportSink | None = None
    answered: bool = False
    """Set by the client once the response's status line arrived."""


@dataclass
class Sleep:
    """Step: wait ``seconds`` (before a retry)."""

    seconds: float


@dataclass
class Disk:
    """Step: call ``fn(*args)``, a blocking local file operation, and give its
    result (the async client runs it in a worker thread).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


Step = Exchange | Sleep | Disk
Plan = Generator[Step, Any, T]
"""An operation: yields steps, receives their results, returns the method's result."""


@dataclass(frozen=True)
class Retry:
    """The retry policy of a client."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: float = DEFAULT_RETRY_BACKOFF


class Runner(Generic[T]):
    """Steps through a plan (or a plain :class:`Call`, sent with retries) for a
    client: perform :attr:`step`, then :meth:`reply` with its result or
    :meth:`fail` with its exception, until :attr:`done`; then :attr:`result`.
    """

    def __init__(self, plan: Call[T] | Plan[T], retry: Retry) -> None:
        self._plan = send(plan, retry) if isinstance(plan, Call) else plan
        self.done = False
        self.step: Step
        self.result: T
        self._advance(None, None)

    def reply(self, value: Any) -> None:
        """The current step gave ``value``."""
        self._advance(value, None)

    def fail(self, exc: BaseException) -> None:
        """The current step raised ``exc`` (re-raised unless the plan handles it)."""
        self._advance(None, exc)

    def _advance(self, value: Any, exc: BaseException | None) -> None:
        try:
            self.step = self._plan.send(value) if exc is None else self._plan.throw(exc)
        except StopIteration as stop:
            self.done = True
            self.result = stop.value


def blocking(needed: bool, fn: Callable[..., T], *args: Any) -> Generator[Step, Any, T]:
    """Call ``fn(*args)`` as a :class:`Disk` step when it touches a local file
    (``needed``), else right away.
    """
    if needed:
        result: T = yield Disk(fn, args)
        return result
    return fn(*args)


def _exchange(
    call: Call[Any], retry: Retry, sink: ExportSink | None = None
) -> Generator[Step, Any, tuple[int, bytes, int]]:
    """Send ``call``, retrying idempotent ones on connection errors (not after
    a sink got data); gives ``(status_code, body, retries made)``.
    """
    attempt = 0
    while True:
        step = Exchange(call, sink)
        try:
            status, body = yield step
            return status, body, attempt
        except HTTP_ERRORS as exc:
            may_retry = call.idempotent and attempt < retry.max_retries and is_retryable(exc)
            if may_retry and not (sink is not None and step.answered):
                yield Sleep(retry_delay(attempt, retry.backoff))
                attempt += 1
                continue
            raise wrap_http_error(exc, call.method, call.path) from exc


def send(call: Call[T], retry: Retry) -> Plan[T]:
    """Send ``call`` (with retries) and parse the answer."""
    status, body, attempts = yield from _exchange(call, retry)
    if is_missing_after_retry(call, status, attempts):
        return call.parse(None)
    return parse_response(call, status, body)


# ---------------------------------------------------------------- what both clients have


class ClientBase:
    """Settings and properties of both clients."""

    _NAME = "ClientBase"
    _http: httpx.AsyncClient | httpx.Client
    _timeout: httpx.Timeout
    _retry: Retry

    def _configure(
        self,
        base_url: str,
        api_key: str | None,
        timeout: TimeoutInput,
        max_retries: int,
        retry_backoff: float,
    ) -> dict[str, Any]:
        """Check and keep the settings; gives the ``httpx`` client's arguments."""
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._timeout = make_timeout(timeout)
        self._retry = Retry(max_retries, retry_backoff)
        return {
            "base_url": base_url,
            "headers": default_headers(resolve_api_key(api_key)),
            "timeout": self._timeout,
        }

    @property
    def base_url(self) -> str:
        """The daemon's URL."""
        return str(self._http.base_url)

    def __repr__(self) -> str:
        return f"{self._NAME}(base_url={self.base_url!r})"


class SessionBase:
    """State and properties of both session classes."""

    _NAME = "SessionBase"
    _id: str
    _info: SessionInfo | None

    @property
    def id(self) -> str:
        """The session id."""
        return self._id

    @property
    def last_info(self) -> SessionInfo | None:
        """The :class:`SessionInfo` this object was made from (not refreshed; see :meth:`info`)."""
        return self._info

    def __repr__(self) -> str:
        return f"{self._NAME}(id={self._id!r})"

    def _fs(self) -> str:
        return session_path(self._id) + "/fs"


# ---------------------------------------------------------------- local files


def file_chunks(f: IO[bytes]) -> Iterator[bytes]:
    """A binary file's content in pieces of :data:`CHUNK_SIZE` bytes."""
    while True:
        chunk = f.read(CHUNK_SIZE)
        if not chunk:
            return
        if not isinstance(chunk, bytes):
            raise TypeError(f"the file object must be binary; read() gave {type(chunk).__name__}")
        yield chunk


def is_local(value: Any) -> bool:
    """Whether an upload or import input is a path or a file object (not bytes)."""
    return not isinstance(value, (bytes, bytearray, memoryview))


@dataclass
class Body:
    """A request body and its headers; ``opened`` is a local file to close afterwards."""

    content: bytes | Iterable[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    opened: IO[bytes] | None = None

    def close(self) -> None:
        """Close the file opened for the body, if any."""
        if self.opened is not None:
            self.opened.close()


def _open_file(path: str | os.PathLike[str]) -> IO[bytes]:
    local = Path(path)
    if not local.is_file():
        raise FileNotFoundError(f"not a file: {local}")
    return local.open("rb")


def check_upload_filename(name: str) -> None:
    """Refuse what the daemon refuses as an upload filename, before sending anything.

    The file goes exactly into the target directory: a name must not be
    empty, ``.`` or ``..``, and must not contain ``/`` or NUL. (Checking here
    also avoids a daemon that answers such an upload before reading its body,
    which can reset the connection.)
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid upload filename {name!r}: must be a plain file name")


def upload_body(file: FileInput, dest_path: str | None, filename: str | None) -> Body:
    """The multipart body of an upload (``file`` part, optional ``path`` field).
    Opens a path given (a blocking step); a file is streamed, bytes are encoded.
    """
    opened: IO[bytes] | None = None
    payload: bytes | IO[bytes]
    try:
        if isinstance(file, (bytes, bytearray, memoryview)):
            if not filename:
                raise ValueError("filename is required when uploading bytes")
            name, payload = filename, bytes(file)
        elif isinstance(file, (str, os.PathLike)):
            opened = _open_file(file)
            name, payload = filename or Path(file).name, opened
        elif hasattr(file, "read"):
            raw_name = getattr(file, "name", None)
            name = filename or (Path(raw_name).name if isinstance(raw_name, str) else "")
            if not name:
                raise ValueError("filename is required for a file object without a name")
            payload = file
        else:
            raise TypeError(
                f"file must be a path, bytes or a binary file object, not {type(file).__name__}"
            )
        check_upload_filename(name)
        data = {"path": dest_path} if dest_path is not None else None
        # httpx encodes the multipart body (boundary, part headers, length).
        request = httpx.Request(
            "POST", "http://upload.invalid/", files=[("file", (name, payload))], data=data
        )
        headers = {
            k: v for k, v in request.headers.items() if k in ("content-type", "content-length")
        }
        stream = cast(Iterable[bytes], request.stream)
        content = request.read() if isinstance(payload, bytes) else stream
        return Body(content, headers, opened)
    except BaseException:
        if opened is not None:
            opened.close()
        raise


def import_body(data: ArchiveInput) -> Body:
    """The tar body of an import. Opens a path given (a blocking step) and sends
    it with its length, in chunks; a file object is sent in chunks from its
    current position.
    """
    headers = {"Content-Type": TAR_CONTENT_TYPE}
    if isinstance(data, (bytes, bytearray, memoryview)):
        return Body(bytes(data), headers)
    if isinstance(data, (str, os.PathLike)):
        opened = _open_file(data)
        headers["Content-Length"] = str(os.fstat(opened.fileno()).st_size)
        return Body(file_chunks(opened), headers, opened)
    if hasattr(data, "read"):
        return Body(file_chunks(data), headers)
    raise TypeError(
        f"data must be bytes, a path or a binary file object, not {type(data).__name__}"
    )


class ExportSink:
    """Where the chunks of an export go: memory, a local file (opened at the
    first chunk, removed again if the export fails), or a caller's file object.
    Except in memory, :meth:`write`, :meth:`finish` and :meth:`abort` block.
    """

    def __init__(self, dest: ExportDest) -> None:
        self.written = 0
        self._buffer: bytearray | None = None
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self._owned = False
        if dest is None:
            self._buffer = bytearray()
        elif isinstance(dest, (str, os.PathLike)):
            self._path = Path(dest)
        elif hasattr(dest, "write"):
            self._file = dest
        else:
            raise TypeError(
                f"dest must be None, a path or a binary file object, not {type(dest).__name__}"
            )

    @property
    def in_memory(self) -> bool:
        """True when the export is returned as bytes (nothing blocks)."""
        return self._buffer is not None

    def write(self, chunk: bytes) -> None:
        """Store one chunk."""
        if not chunk:
            return
        if self._buffer is not None:
            self._buffer += chunk
        else:
            self._target().write(chunk)
        self.written += len(chunk)

    def _target(self) -> IO[bytes]:
        if self._file is None:
            assert self._path is not None
            self._file = self._path.open("wb")
            self._owned = True
        return self._file

    def finish(self) -> bytes | int:
        """The export's bytes (no ``dest``) or the number of bytes written."""
        if self._buffer is not None:
            return bytes(self._buffer)
        target = self._target()
        if self._owned:
            target.close()
        else:
            target.flush()
        return self.written

    def abort(self) -> None:
        """The export failed: close and remove a file this sink created."""
        if self._owned and self._file is not None:
            self._file.close()
            assert self._path is not None
            self._path.unlink(missing_ok=True)


# ---------------------------------------------------------------- settings


def resolve_api_key(api_key: str | None) -> str:
    """The key given, else ``$SANDKASTEN_API_KEY``."""
    key = api_key if api_key is not None else os.environ.get("SANDKASTEN_API_KEY")
    if not key:
        raise ValueError("api_key is required (or set SANDKASTEN_API_KEY)")
    return key


def make_timeout(timeout: TimeoutInput) -> httpx.Timeout:
    """Normalise the ``timeout`` argument of the clients."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is None:
        return httpx.Timeout(None)
    return httpx.Timeout(float(timeout))


def default_headers(api_key: str) -> dict[str, str]:
    """Headers every request carries."""
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


def _with_read(base: httpx.Timeout, read: float | None) -> httpx.Timeout:
    return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


def exec_timeout(base: httpx.Timeout, timeout_ms: int | None) -> httpx.Timeout:
    """An exec's HTTP timeout: long enough for the command's own timeout."""
    if base.read is None:
        return base
    needed = (timeout_ms if timeout_ms is not None else DEFAULT_EXEC_TIMEOUT_MS) / 1000.0
    return _with_read(base, max(base.read, needed + EXEC_TIMEOUT_MARGIN))


def stream_timeout(base: httpx.Timeout) -> httpx.Timeout:
    """A stream's HTTP timeout: the longest silence between two events."""
    if base.read is None:
        return base
    return _with_read(base, max(base.read, STREAM_MIN_READ_TIMEOUT))


# ---------------------------------------------------------------- errors and retries


def is_retryable(exc: Exception) -> bool:
    """Connection failures where the request may be repeated if it is idempotent.

    Read timeouts are not retried: the caller's timeout already elapsed.
    """
    return isinstance(
        exc,
        (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout, httpx.PoolTimeout),
    )


def retry_delay(attempt: int, backoff: float) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (exponential, capped)."""
    return float(min(backoff * (2.0**attempt), MAX_RETRY_DELAY))


def wrap_http_error(exc: Exception, method: str, path: str) -> SandkastenError:
    """Turn an ``httpx`` exception into the SDK's own."""
    where = f"{method} {path}"
    if isinstance(exc, httpx.TimeoutException):
        return SandkastenTimeoutError(f"{where}: timed out ({type(exc).__name__}: {exc})")
    if isinstance(exc, httpx.TransportError):
        return SandkastenConnectionError(f"{where}: {type(exc).__name__}: {exc}")
    return SandkastenError(f"{where}: {type(exc).__name__}: {exc}")


def check_response(status_code: int, body: bytes) -> None:
    """Raise the matching :class:`SandkastenAPIError` for a non-2xx answer."""
    if status_code >= 400 or status_code < 200:
        raise api_error_from_response(status_code, body)


def parse_response(call: Call[T], status_code: int, body: bytes) -> T:
    """Check the status, decode the JSON body and parse it with the call's parser."""
    check_response(status_code, body)
    try:
        if call.text:
            return call.parse(body.decode("utf-8", errors="replace"))
        data = json.loads(body) if body else None
        return call.parse(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        snippet = body[:200].decode("utf-8", errors="replace")
        raise SandkastenError(
            f"{call.method} {call.path}: unexpected response "
            f"({type(exc).__name__}: {exc}): {snippet!r}"
        ) from exc


def is_missing_after_retry(call: Call[Any], status_code: int, attempts: int) -> bool:
    """A retried DELETE found nothing: the earlier attempt already deleted it."""
    return call.missing_ok_after_retry and attempts > 0 and status_code == 404


# ---------------------------------------------------------------- paths


def seg(value: str, what: str) -> str:
    """One URL path segment from an id, escaped so that it cannot change the route."""
    if not isinstance(value, str) or value == "":
        raise ValueError(f"{what} must be a non-empty string")
    quoted = quote(value, safe="")
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")
    return quoted


def session_path(session_id: str) -> str:
    """``/v1/sessions/{id}``."""
    return f"/v1/sessions/{seg(session_id, 'session id')}"


def workspace_path(workspace_id: str) -> str:
    """``/v1/workspaces/{id}``."""
    return f"/v1/workspaces/{seg(workspace_id, 'workspace id')}"


# ---------------------------------------------------------------- parsers


def _obj(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _ignore(_data: Any) -> None:
    return None


def _session_list(data: Any) -> list[SessionInfo]:
    items = data if isinstance(data, list) else _obj(data).get("sessions", [])
    return [SessionInfo.from_json(_obj(s)) for s in items]


def _workspace_list(data: Any) -> list[WorkspaceInfo]:
    items = data if isinstance(data, list) else _obj(data).get("workspaces", [])
    return [WorkspaceInfo.from_json(_obj(w)) for w in items]


def _entries(data: Any) -> list[FileEntry]:
    return [FileEntry.from_json(_obj(e)) for e in _obj(data).get("entries", [])]


def _paths(data: Any) -> list[str]:
    return [str(p) for p in _obj(data).get("paths", [])]


# ---------------------------------------------------------------- calls: sessions


def health() -> Call[bool]:
    """``GET /healthz``."""
    return Call("GET", "/healthz", lambda d: _obj(d).get("status") == "ok")


def create_session(
    image: str | None,
    ttl_seconds: int | None,
    workspace_id: str | None,
    env: Mapping[str, str] | None = None,
    disk_limit_mb: int | None = None,
    network: NetworkPolicy | Mapping[str, Any] | str | None = None,
    on_timeout: str | None = None,
    idle_timeout_seconds: int | None = None,
    metadata: Mapping[str, str] | None = None,
    from_snapshot: str | None = None,
) -> Call[SessionInfo]:
    """``POST /v1/sessions``; ``env`` is sent as the JSON object ``env``
    (omitted when None; the daemon validates names and sizes),
    ``disk_limit_mb`` when given (the daemon checks its range), and
    ``network`` as the JSON object ``network`` (see :func:`network_body`).
    """
    if disk_limit_mb is not None and (
        isinstance(disk_limit_mb, bool) or not isinstance(disk_limit_mb, int)
    ):
        raise TypeError(f"disk_limit_mb must be an int, not {type(disk_limit_mb).__name__}")
    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    if workspace_id is not None:
        body["workspace_id"] = workspace_id
    if env is not None:
        if not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
        for name, value in env.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(
                    f"env must map str to str; got {type(name).__name__} -> {type(value).__name__}"
                )
        body["env"] = dict(env)
    if disk_limit_mb is not None:
        body["disk_limit_mb"] = disk_limit_mb
    if network is not None:
        body["network"] = network_body(network)
    if on_timeout is not None:
        body["on_timeout"] = on_timeout
    if idle_timeout_seconds is not None:
        body["idle_timeout_seconds"] = idle_timeout_seconds
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if from_snapshot is not None:
        body["from_snapshot"] = from_snapshot
    return Call("POST", "/v1/sessions", lambda d: SessionInfo.from_json(_obj(d)), json=body)


def network_body(network: NetworkPolicy | Mapping[str, Any] | str) -> dict[str, Any]:
    """The JSON object of a network policy: a :class:`NetworkPolicy`, a
    mapping with ``mode``/``allow_out``/``deny_out``, or a bare mode
    (``"none"``, ``"full"``). Entries are checked by the daemon.
    """
    if isinstance(network, NetworkPolicy):
        return network.to_json()
    if isinstance(network, str):
        return {"mode": network}
    if isinstance(network, Mapping):
        body = dict(network)
        for key in ("allow_out", "deny_out"):
            v = body.get(key)
            if v is not None and (isinstance(v, str) or not isinstance(v, Iterable)):
                raise TypeError(f"network {key} must be a list of str, not {type(v).__name__}")
            if v is not None:
                body[key] = [str(e) for e in v]
        return body
    raise TypeError(
        f"network must be a NetworkPolicy, a mapping or a mode, not {type(network).__name__}"
    )


def set_network(
    session_id: str, network: NetworkPolicy | Mapping[str, Any] | str
) -> Call[SessionInfo]:
    """``PUT /v1/sessions/{id}/network``: the whole new policy."""
    return Call(
        "PUT",
        session_path(session_id) + "/network",
        lambda d: SessionInfo.from_json(_obj(d)),
        json=network_body(network),
    )


def network_events(session_id: str) -> Call[list[NetworkEvent]]:
    """``GET /v1/sessions/{id}/network/events``: refusals, oldest first."""
    return Call(
        "GET",
        session_path(session_id) + "/network/events",
        lambda d: [NetworkEvent.from_json(_obj(e)) for e in _obj(d).get("events") or []],
    )


def get_session(session_id: str) -> Call[SessionInfo]:
    """``GET /v1/sessions/{id}``."""
    return Call("GET", session_path(session_id), lambda d: SessionInfo.from_json(_obj(d)))


def list_sessions() -> Call[list[SessionInfo]]:
    """``GET /v1/sessions``."""
    return Call("GET", "/v1/sessions", _session_list)


def destroy_session(session_id: str) -> Call[None]:
    """``DELETE /v1/sessions/{id}``."""
    return Call("DELETE", session_path(session_id), _ignore, missing_ok_after_retry=True)


def session_stats(session_id: str) -> Call[SessionStats]:
    """``GET /v1/sessions/{id}/stats``."""
    return Call(
        "GET", session_path(session_id) + "/stats", lambda d: SessionStats.from_json(_obj(d))
    )


def port_url(session_id: str, port: int, ttl_seconds: int | None) -> Call[PortUrl]:
    """``POST /v1/sessions/{id}/ports/{port}/url``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int from 1 to 65535, got {port!r}")
    body: dict[str, Any] = {}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return Call(
        "POST",
        f"{session_path(session_id)}/ports/{port}/url",
        lambda d: PortUrl.from_json(_obj(d)),
        json=body,
    )


def _exec_body(cmd: str, timeout_ms: int | None, raw_output: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"cmd": cmd, "raw_output": raw_output}
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    return body


def exec_command(
    session_id: str, cmd: str, timeout_ms: int | None, raw_output: bool, base: httpx.Timeout
) -> Call[ExecResult]:
    """``POST /v1/sessions/{id}/exec``."""
    return Call(
        "POST",
        session_path(session_id) + "/exec",
        lambda d: ExecResult.from_json(_obj(d)),
        json=_exec_body(cmd, timeout_ms, raw_output),
        timeout=exec_timeout(base, timeout_ms),
    )


def exec_stream(
    session_id: str, cmd: str, timeout_ms: int | None, raw_output: bool, base: httpx.Timeout
) -> Call[None]:
    """``POST /v1/sessions/{id}/exec/stream`` (the answer is read as events, not parsed)."""
    return Call(
        "POST",
        session_path(session_id) + "/exec/stream",
        _ignore,
        json=_exec_body(cmd, timeout_ms, raw_output),
        timeout=stream_timeout(base),
        headers={"Accept": SSE_ACCEPT},
    )


def pause_session(session_id: str) -> Call[SessionInfo]:
    """``POST /v1/sessions/{id}/pause``."""
    return Call(
        "POST", session_path(session_id) + "/pause", lambda d: SessionInfo.from_json(_obj(d))
    )


def resume_session(session_id: str) -> Call[SessionInfo]:
    """``POST /v1/sessions/{id}/resume``."""
    return Call(
        "POST", session_path(session_id) + "/resume", lambda d: SessionInfo.from_json(_obj(d))
    )


def snapshot_session(session_id: str, label: str | None) -> Call[SandboxSnapshot]:
    """``POST /v1/sessions/{id}/snapshots``."""
    body: dict[str, Any] = {} if label is None else {"label": label}
    return Call(
        "POST",
        session_path(session_id) + "/snapshots",
        lambda d: SandboxSnapshot.from_json(_obj(d)),
        json=body,
    )


def fork_session(session_id: str, count: int) -> Call[list[SessionInfo]]:
    """``POST /v1/sessions/{id}/fork``."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    return Call(
        "POST",
        session_path(session_id) + "/fork",
        lambda d: [SessionInfo.from_json(_obj(x)) for x in _obj(d).get("sessions", [])],
        json={"count": count},
    )


def list_sandbox_snapshots() -> Call[list[SandboxSnapshot]]:
    """``GET /v1/snapshots``."""
    return Call(
        "GET",
        "/v1/snapshots",
        lambda d: [SandboxSnapshot.from_json(_obj(x)) for x in _obj(d).get("snapshots", [])],
    )


def delete_sandbox_snapshot(snapshot_id: str) -> Call[None]:
    """``DELETE /v1/snapshots/{snap}``."""
    return Call(
        "DELETE",
        f"/v1/snapshots/{seg(snapshot_id, 'snapshot id')}",
        _ignore,
        missing_ok_after_retry=True,
    )


def hibernate_session(session_id: str) -> Call[SessionInfo]:
    """``POST /v1/sessions/{id}/hibernate``."""
    return Call(
        "POST", session_path(session_id) + "/hibernate", lambda d: SessionInfo.from_json(_obj(d))
    )


# ---------------------------------------------------------------- calls: processes


def process_body(
    cmd: str | None,
    argv: list[str] | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    user: str | None,
    pty: tuple[int, int] | None,
    stdin: bool,
    tag: str | None,
) -> dict[str, Any]:
    """The body of a process start."""
    body: dict[str, Any] = {}
    if cmd is not None:
        body["cmd"] = cmd
    if argv is not None:
        body["argv"] = list(argv)
    if env:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    if user is not None:
        body["user"] = user
    if pty is not None:
        body["pty"] = {"rows": pty[0], "cols": pty[1]}
    if stdin:
        body["stdin"] = True
    if tag is not None:
        body["tag"] = tag
    return body


def process_path(session_id: str, proc: int | str) -> str:
    """``/v1/sessions/{id}/processes/{pid or tag}``."""
    return session_path(session_id) + "/processes/" + seg(str(proc), "process")


def start_process(session_id: str, body: dict[str, Any]) -> Call[ProcessInfo]:
    """``POST /v1/sessions/{id}/processes``."""
    return Call(
        "POST",
        session_path(session_id) + "/processes",
        lambda d: ProcessInfo.from_json(_obj(d)),
        json=body,
    )


def start_process_stream(session_id: str, body: dict[str, Any], base: httpx.Timeout) -> Call[None]:
    """``POST /v1/sessions/{id}/processes/stream`` (read as events)."""
    return Call(
        "POST",
        session_path(session_id) + "/processes/stream",
        _ignore,
        json=body,
        params={"encoding": "base64"},
        timeout=stream_timeout(base),
        headers={"Accept": SSE_ACCEPT},
    )


def attach_process(
    session_id: str, proc: int | str, replay: bool, base: httpx.Timeout
) -> Call[None]:
    """``GET /v1/sessions/{id}/processes/{proc}/stream`` (read as events)."""
    return Call(
        "GET",
        process_path(session_id, proc) + "/stream",
        _ignore,
        params={"encoding": "base64", "replay": "true" if replay else "false"},
        timeout=stream_timeout(base),
        headers={"Accept": SSE_ACCEPT},
    )


def list_processes(session_id: str) -> Call[list[ProcessInfo]]:
    """``GET /v1/sessions/{id}/processes``."""
    return Call(
        "GET",
        session_path(session_id) + "/processes",
        lambda d: [ProcessInfo.from_json(_obj(p)) for p in d],
    )


def get_process(session_id: str, proc: int | str) -> Call[ProcessInfo]:
    """``GET /v1/sessions/{id}/processes/{proc}``."""
    return Call("GET", process_path(session_id, proc), lambda d: ProcessInfo.from_json(_obj(d)))


def process_stdin(session_id: str, proc: int | str, data: str | bytes, close: bool) -> Call[None]:
    """``POST /v1/sessions/{id}/processes/{proc}/stdin`` (``str`` as UTF-8)."""
    content = data.encode() if isinstance(data, str) else bytes(data)
    return Call(
        "POST",
        process_path(session_id, proc) + "/stdin",
        _ignore,
        content=content,
        params={"close": "true"} if close else None,
        headers={"Content-Type": "application/octet-stream"},
    )


def close_process_stdin(session_id: str, proc: int | str) -> Call[None]:
    """``DELETE /v1/sessions/{id}/processes/{proc}/stdin``."""
    return Call("DELETE", process_path(session_id, proc) + "/stdin", _ignore)


def signal_process(session_id: str, proc: int | str, signal: str | int) -> Call[None]:
    """``POST /v1/sessions/{id}/processes/{proc}/signal``."""
    return Call(
        "POST", process_path(session_id, proc) + "/signal", _ignore, json={"signal": signal}
    )


def resize_process(session_id: str, proc: int | str, rows: int, cols: int) -> Call[None]:
    """``POST /v1/sessions/{id}/processes/{proc}/resize``."""
    return Call(
        "POST",
        process_path(session_id, proc) + "/resize",
        _ignore,
        json={"rows": rows, "cols": cols},
    )


# ---------------------------------------------------------------- calls: pool and metrics


def get_pool() -> Call[PoolInfo]:
    """``GET /v1/pool``."""
    return Call("GET", "/v1/pool", lambda d: PoolInfo.from_json(_obj(d)))


def metrics() -> Call[str]:
    """``GET /metrics``: the Prometheus text exposition, returned as it is."""
    return Call("GET", "/metrics", str, headers={"Accept": METRICS_ACCEPT}, text=True)


# ---------------------------------------------------------------- calls: files
#
# ``fs`` is the files prefix: ``/v1/sessions/{id}/fs`` or ``/v1/workspaces/{id}/fs``.


def write_file(fs: str, path: str, content: str | bytes | bytearray | memoryview) -> Call[None]:
    """``POST {fs}/write``: text as ``text``, bytes as ``content_base64``."""
    body: dict[str, Any] = {"path": path}
    if isinstance(content, str):
        body["text"] = content
    elif isinstance(content, (bytes, bytearray, memoryview)):
        body["content_base64"] = base64.b64encode(bytes(content)).decode("ascii")
    else:
        raise TypeError(f"content must be str or bytes, not {type(content).__name__}")
    return Call("POST", fs + "/write", _ignore, json=body)


def read_file(fs: str, path: str, max_bytes: int | None) -> Call[ReadResult]:
    """``GET {fs}/read``."""
    params: dict[str, Any] = {"path": path}
    if max_bytes is not None:
        params["max_bytes"] = max_bytes
    return Call(
        "GET", fs + "/read", lambda d: ReadResult.from_json(_obj(d), path=path), params=params
    )


def list_files(url: str, path: str | None) -> Call[list[FileEntry]]:
    """``GET {url}?path=P`` (``{fs}/list`` for a session, ``{fs}`` for a workspace)."""
    params = {"path": path} if path is not None else None
    return Call("GET", url, _entries, params=params)


def stat_file(fs: str, path: str) -> Call[FileStat]:
    """``GET {fs}/stat``."""
    return Call("GET", fs + "/stat", lambda d: FileStat.from_json(_obj(d)), params={"path": path})


def mkdir(fs: str, path: str, parents: bool) -> Call[str]:
    """``POST {fs}/mkdir``; parses the created directory's absolute path."""
    return Call(
        "POST",
        fs + "/mkdir",
        lambda d: str(_obj(d).get("path", path)),
        json={"path": path, "parents": parents},
    )


def remove(fs: str, path: str, recursive: bool) -> Call[None]:
    """``POST {fs}/remove``."""
    return Call("POST", fs + "/remove", _ignore, json={"path": path, "recursive": recursive})


def upload(
    fs: str, file: FileInput, dest_path: str | None, filename: str | None, retry: Retry
) -> Plan[list[str]]:
    """``POST {fs}/upload`` (multipart); a local file is opened and read in blocking steps."""
    body: Body = yield from blocking(is_local(file), upload_body, file, dest_path, filename)
    try:
        call = Call("POST", fs + "/upload", _paths, content=body.content, headers=body.headers)
        return (yield from send(call, retry))
    finally:
        body.close()


# ---------------------------------------------------------------- calls: workspaces


def list_workspaces() -> Call[list[WorkspaceInfo]]:
    """``GET /v1/workspaces``."""
    return Call("GET", "/v1/workspaces", _workspace_list)


def create_workspace(
    workspace_id: str,
    labels: Mapping[str, str] | None,
    quota_bytes: int | None = None,
    quota_mb: int | None = None,
    from_snapshot: tuple[str, str] | None = None,
) -> Call[WorkspaceInfo]:
    """``POST /v1/workspaces``; ``from_snapshot`` is (source workspace id, snapshot id)."""
    body: dict[str, Any] = {"id": workspace_id}
    if labels is not None:
        body["labels"] = dict(labels)
    if quota_bytes is not None:
        body["quota_bytes"] = quota_bytes
    if quota_mb is not None:
        body["quota_mb"] = quota_mb
    if from_snapshot is not None:
        if (
            not isinstance(from_snapshot, (tuple, list))
            or len(from_snapshot) != 2
            or not all(isinstance(x, str) and x for x in from_snapshot)
        ):
            raise ValueError(
                "from_snapshot must be a (workspace_id, snapshot_id) pair of non-empty strings"
            )
        body["from_snapshot"] = {
            "workspace_id": from_snapshot[0],
            "snapshot_id": from_snapshot[1],
        }
    return Call("POST", "/v1/workspaces", lambda d: WorkspaceInfo.from_json(_obj(d)), json=body)


def get_workspace(workspace_id: str) -> Call[WorkspaceInfo]:
    """``GET /v1/workspaces/{id}``."""
    return Call("GET", workspace_path(workspace_id), lambda d: WorkspaceInfo.from_json(_obj(d)))


def delete_workspace(workspace_id: str) -> Call[None]:
    """``DELETE /v1/workspaces/{id}``."""
    return Call("DELETE", workspace_path(workspace_id), _ignore, missing_ok_after_retry=True)


def _snapshot_list(data: Any) -> list[SnapshotInfo]:
    items = data if isinstance(data, list) else _obj(data).get("snapshots", [])
    return [SnapshotInfo.from_json(_obj(x)) for x in items]


def snapshot_path(workspace_id: str, snapshot_id: str) -> str:
    """``/v1/workspaces/{id}/snapshots/{snap}``."""
    return f"{workspace_path(workspace_id)}/snapshots/{seg(snapshot_id, 'snapshot id')}"


def create_snapshot(workspace_id: str, label: str | None) -> Call[SnapshotInfo]:
    """``POST /v1/workspaces/{id}/snapshots``."""
    body: dict[str, Any] = {} if label is None else {"label": label}
    return Call(
        "POST",
        workspace_path(workspace_id) + "/snapshots",
        lambda d: SnapshotInfo.from_json(_obj(d)),
        json=body,
    )


def list_snapshots(workspace_id: str) -> Call[list[SnapshotInfo]]:
    """``GET /v1/workspaces/{id}/snapshots``."""
    return Call("GET", workspace_path(workspace_id) + "/snapshots", _snapshot_list)


def delete_snapshot(workspace_id: str, snapshot_id: str) -> Call[None]:
    """``DELETE /v1/workspaces/{id}/snapshots/{snap}``."""
    return Call(
        "DELETE", snapshot_path(workspace_id, snapshot_id), _ignore, missing_ok_after_retry=True
    )


def restore_snapshot(workspace_id: str, snapshot_id: str) -> Call[None]:
    """``POST /v1/workspaces/{id}/snapshots/{snap}/restore``."""
    return Call("POST", snapshot_path(workspace_id, snapshot_id) + "/restore", _ignore)


# ---------------------------------------------------------------- calls: export and import


def export_workspace(workspace_id: str, dest: ExportDest, retry: Retry) -> Plan[bytes | int]:
    """``GET /v1/workspaces/{id}/export``: the tar streamed into an :class:`ExportSink`;
    gives its bytes or the number of bytes written.
    """
    sink = ExportSink(dest)
    try:
        call = Call(
            "GET",
            workspace_path(workspace_id) + "/export",
            _ignore,
            headers={"Accept": f"{TAR_CONTENT_TYPE}, application/json"},
        )
        status, body, _ = yield from _exchange(call, retry, sink)
        check_response(status, body)
    except GeneratorExit:
        sink.abort()
        raise
    except BaseException:
        yield from blocking(not sink.in_memory, sink.abort)
        raise
    result: bytes | int = yield from blocking(not sink.in_memory, sink.finish)
    return result


def import_workspace(workspace_id: str, data: ArchiveInput, retry: Retry) -> Plan[None]:
    """``PUT /v1/workspaces/{id}/import`` with a tar body (see :func:`import_body`)."""
    path = workspace_path(workspace_id) + "/import"
    body: Body = yield from blocking(is_local(data), import_body, data)
    try:
        yield from send(
            Call("PUT", path, _ignore, content=body.content, headers=body.headers), retry
        )
    finally:
        body.close()
