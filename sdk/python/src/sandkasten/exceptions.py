"""Errors raised by the Sandkasten SDK.

Everything the SDK raises on a failed call derives from :class:`SandkastenError`:

- :class:`SandkastenAPIError` — the daemon answered with an error
  (``{"error_code", "message", "details"}``); one subclass per
  ``error_code``, e.g. :class:`SessionNotFound` or :class:`WorkspaceInUse`.
- :class:`SandkastenConnectionError` — the daemon could not be reached or the
  connection broke (:class:`SandkastenTimeoutError` when a timeout elapsed).
- :class:`SandkastenStreamError` — an ``exec_stream`` reported an ``error``
  event or ended before its ``done`` event.

No ``httpx`` exception escapes the SDK; the original one is kept as
``__cause__``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AlreadyExists",
    "CapacityExhausted",
    "FileNotFound",
    "ImageInUse",
    "InternalError",
    "InvalidImage",
    "InvalidPath",
    "InvalidRequest",
    "InvalidWorkspace",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PortNotListening",
    "PortUnreachable",
    "SandkastenAPIError",
    "SandkastenConnectionError",
    "SandkastenError",
    "SandkastenStreamError",
    "SandkastenTimeoutError",
    "SessionLost",
    "SessionNotFound",
    "SessionNotPaused",
    "SessionNotRunning",
    "ShuttingDown",
    "SnapshotNotFound",
    "Unauthorized",
    "UnsupportedError",
    "WorkspaceDisabled",
    "WorkspaceInUse",
    "WorkspaceNotFound",
    "error_class_for",
]


class SandkastenError(Exception):
    """Base class of every error the SDK raises."""


class SandkastenConnectionError(SandkastenError):
    """The daemon could not be reached, or the connection failed mid-request.

    Idempotent calls (GET, DELETE) are retried ``max_retries`` times before
    this is raised.
    """


class SandkastenTimeoutError(SandkastenConnectionError):
    """A connect, read, write or pool timeout elapsed."""


class SandkastenStreamError(SandkastenError):
    """An ``exec_stream`` failed: an ``error`` event, a malformed event, or
    the stream ended without its ``done`` event.
    """


class SandkastenAPIError(SandkastenError):
    """The daemon answered with an error.

    Attributes:
        status_code: HTTP status (e.g. 404).
        error_code: The daemon's ``error_code`` (e.g. ``"SESSION_NOT_FOUND"``);
            ``"HTTP_<status>"`` when the body was not a Sandkasten error.
        message: The daemon's human-readable message.
        details: Structured context (``session_id``, ``workspace_id``, ...).
        response_body: The raw body text.
    """

    error_code_value: str | None = None
    """The ``error_code`` a subclass stands for (None on the base class)."""

    def __init__(
        self,
        status_code: int,
        error_code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        response_body: str | None = None,
    ) -> None:
        super().__init__(status_code, error_code, message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.response_body = response_body

    def __str__(self) -> str:
        return f"{self.status_code} {self.error_code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, "
            f"error_code={self.error_code!r}, message={self.message!r})"
        )


def _code(value: str) -> Any:
    """Class decorator registering an API error subclass for ``value``."""

    def register(cls: type[SandkastenAPIError]) -> type[SandkastenAPIError]:
        cls.error_code_value = value
        _BY_CODE[value] = cls
        return cls

    return register


_BY_CODE: dict[str, type[SandkastenAPIError]] = {}


@_code("INVALID_REQUEST")
class InvalidRequest(SandkastenAPIError):
    """400: malformed request (bad JSON or query, empty ``cmd``, bad ``timeout_ms``, ...)."""


@_code("UNSUPPORTED")
class UnsupportedError(InvalidRequest):
    """400: the daemon's runtime backend cannot do this (``details["what"]``,
    ``details["runtime"]``), e.g. snapshots of a workspace without a quota.

    A subclass of :class:`InvalidRequest`, which daemons before this code
    answered instead, so ``except InvalidRequest`` catches both.
    """


@_code("INVALID_IMAGE")
class InvalidImage(SandkastenAPIError):
    """400: unknown image, or one not in ``allowed_images``."""


@_code("INVALID_WORKSPACE")
class InvalidWorkspace(SandkastenAPIError):
    """400: workspace id not 1-64 of ``[A-Za-z0-9._-]`` or starting with ``.``/``-``."""


@_code("INVALID_PATH")
class InvalidPath(SandkastenAPIError):
    """400: empty path, NUL byte, a directory where a file is needed (or the
    reverse), a non-empty directory without ``recursive``, a bad upload name.
    """


@_code("UNAUTHORIZED")
class Unauthorized(SandkastenAPIError):
    """401: missing or wrong API key."""


@_code("PERMISSION_DENIED")
class PermissionDenied(SandkastenAPIError):
    """403: the sandbox user may not do this file operation."""


@_code("NOT_FOUND")
class NotFound(SandkastenAPIError):
    """404: unknown route (or unknown image)."""


@_code("SESSION_NOT_FOUND")
class SessionNotFound(SandkastenAPIError):
    """404: no live session has this id."""


@_code("SESSION_LOST")
class SessionLost(SessionNotFound):
    """410: the session's sandbox ended (its PID 1 died) during the request;
    the session is gone (marked ``lost``) and the request's effect unknown.
    """


@_code("WORKSPACE_NOT_FOUND")
class WorkspaceNotFound(SandkastenAPIError):
    """404: no workspace has this id."""


@_code("SNAPSHOT_NOT_FOUND")
class SnapshotNotFound(SandkastenAPIError):
    """404: the workspace has no snapshot with this id."""


@_code("FILE_NOT_FOUND")
class FileNotFound(SandkastenAPIError):
    """404: the path does not exist."""


@_code("METHOD_NOT_ALLOWED")
class MethodNotAllowed(SandkastenAPIError):
    """405: wrong method on a known route."""


@_code("SESSION_NOT_RUNNING")
class SessionNotRunning(SandkastenAPIError):
    """409: the session is being destroyed (``details["state"]``)."""


@_code("SESSION_NOT_PAUSED")
class SessionNotPaused(SandkastenAPIError):
    """409: a resume of a session that is not paused (``details["state"]``)."""


@_code("WORKSPACE_DISABLED")
class WorkspaceDisabled(SandkastenAPIError):
    """409: workspaces are disabled in the daemon's configuration."""


@_code("WORKSPACE_IN_USE")
class WorkspaceInUse(SandkastenAPIError):
    """409: a live session mounts the workspace (``details["session_id"]``)."""


@_code("IMAGE_IN_USE")
class ImageInUse(SandkastenAPIError):
    """409: the image is used by a live session."""


@_code("ALREADY_EXISTS")
class AlreadyExists(SandkastenAPIError):
    """409: the directory or workspace already exists."""


@_code("PAYLOAD_TOO_LARGE")
class PayloadTooLarge(SandkastenAPIError):
    """413: request body over the daemon's ``max_body_mb`` (``details["max_bytes"]``)."""


@_code("CAPACITY_EXHAUSTED")
class CapacityExhausted(SandkastenAPIError):
    """503 (or 429): ``max_sessions`` live sessions exist."""


@_code("SHUTTING_DOWN")
class ShuttingDown(SandkastenAPIError):
    """503: the daemon is shutting down."""


@_code("STORAGE_FULL")
class StorageFull(SandkastenAPIError):
    """507: the host's disk lacks room for another sandbox; running sessions
    keep working, and the same create succeeds once space returns.
    """


@_code("PORT_NOT_LISTENING")
class PortNotListening(SandkastenAPIError):
    """502: through the ports proxy, nothing listens on that TCP port inside
    the sandbox (answered at once; ``details["port"]``).
    """


@_code("PORT_UNREACHABLE")
class PortUnreachable(SandkastenAPIError):
    """502: through the ports proxy, the port accepted no connection within
    5 s, or its server broke off the exchange (``details["port"]``).
    """


@_code("PROCESS_START_FAILED")
class ProcessStartFailed(InvalidRequest):
    """400: a process's program was not found or could not start, or its
    ``cwd`` does not exist.
    """


@_code("PROCESS_NOT_FOUND")
class ProcessNotFound(NotFound):
    """404: no process of the session has that pid or tag."""


@_code("PROCESS_ENDED")
class ProcessEnded(SandkastenAPIError):
    """409: stdin, a signal or a resize for a process that has ended."""


@_code("STDIN_CLOSED")
class StdinClosed(SandkastenAPIError):
    """409: the process's stdin was never opened (``stdin=True``) or is closed."""


@_code("TAG_IN_USE")
class TagInUse(SandkastenAPIError):
    """409: a running process already has that tag."""


@_code("INTERNAL_ERROR")
class InternalError(SandkastenAPIError):
    """500: a daemon bug or a host failure (details are in the daemon's log)."""


def error_class_for(error_code: str) -> type[SandkastenAPIError]:
    """The exception class for an ``error_code`` (the base class if unknown)."""
    return _BY_CODE.get(error_code, SandkastenAPIError)


def api_error_from_response(status_code: int, body: bytes) -> SandkastenAPIError:
    """Turn an error response into the matching :class:`SandkastenAPIError`.

    A body that is not a Sandkasten error (a proxy's HTML page, an empty
    body) gives the base class with ``error_code`` ``"HTTP_<status>"``.
    """
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error_code"), str):
        code = data["error_code"]
        message = str(data.get("message") or code)
        details = data.get("details")
        return error_class_for(code)(
            status_code,
            code,
            message,
            details if isinstance(details, dict) else None,
            response_body=text,
        )
    message = text.strip()[:500] or f"HTTP {status_code}"
    return SandkastenAPIError(status_code, f"HTTP_{status_code}", message, response_body=text)
