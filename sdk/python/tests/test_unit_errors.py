"""Unit tests: error mapping, connection errors and retries (mocked transport)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

import sandkasten
from sandkasten import (
    SandkastenAPIError,
    SandkastenConnectionError,
    SandkastenError,
    SandkastenTimeoutError,
)
from sandkasten.exceptions import api_error_from_response, error_class_for
from sdkmock import SESSION_JSON, Daemon, aclose, error, maybe

# Every error_code of docs/api.md's table and of the daemon's error.rs.
CODES = {
    "INVALID_REQUEST": (400, "InvalidRequest"),
    "INVALID_IMAGE": (400, "InvalidImage"),
    "INVALID_WORKSPACE": (400, "InvalidWorkspace"),
    "INVALID_PATH": (400, "InvalidPath"),
    "UNSUPPORTED": (400, "UnsupportedError"),
    "UNAUTHORIZED": (401, "Unauthorized"),
    "PERMISSION_DENIED": (403, "PermissionDenied"),
    "SESSION_NOT_FOUND": (404, "SessionNotFound"),
    "SESSION_LOST": (410, "SessionLost"),
    "WORKSPACE_NOT_FOUND": (404, "WorkspaceNotFound"),
    "FILE_NOT_FOUND": (404, "FileNotFound"),
    "SNAPSHOT_NOT_FOUND": (404, "SnapshotNotFound"),
    "NOT_FOUND": (404, "NotFound"),
    "METHOD_NOT_ALLOWED": (405, "MethodNotAllowed"),
    "SESSION_NOT_RUNNING": (409, "SessionNotRunning"),
    "SESSION_NOT_PAUSED": (409, "SessionNotPaused"),
    "WORKSPACE_DISABLED": (409, "WorkspaceDisabled"),
    "WORKSPACE_IN_USE": (409, "WorkspaceInUse"),
    "IMAGE_IN_USE": (409, "ImageInUse"),
    "ALREADY_EXISTS": (409, "AlreadyExists"),
    "PAYLOAD_TOO_LARGE": (413, "PayloadTooLarge"),
    "CAPACITY_EXHAUSTED": (503, "CapacityExhausted"),
    "SHUTTING_DOWN": (503, "ShuttingDown"),
    "STORAGE_FULL": (507, "StorageFull"),
    "PORT_NOT_LISTENING": (502, "PortNotListening"),
    "PORT_UNREACHABLE": (502, "PortUnreachable"),
    "PROCESS_START_FAILED": (400, "ProcessStartFailed"),
    "PROCESS_NOT_FOUND": (404, "ProcessNotFound"),
    "PROCESS_ENDED": (409, "ProcessEnded"),
    "STDIN_CLOSED": (409, "StdinClosed"),
    "TAG_IN_USE": (409, "TagInUse"),
    "INTERNAL_ERROR": (500, "InternalError"),
}

DOCS_API = Path(__file__).resolve().parents[3] / "docs" / "api.md"


@pytest.fixture(params=["async", "sync"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(d: Daemon, flavor: str, **kwargs: Any) -> Any:
    return d.async_client(**kwargs) if flavor == "async" else d.sync_client(**kwargs)


def test_every_documented_code_has_a_class() -> None:
    if DOCS_API.exists():  # in the repository: the docs' error table must be covered
        documented: set[str] = set()
        for line in DOCS_API.read_text().splitlines():
            cols = line.split("|")
            if len(cols) > 3 and re.fullmatch(r"\s*[45]\d\d\s*", cols[1]):
                documented |= set(re.findall(r"`([A-Z][A-Z_]+)`", cols[2]))
        assert len(documented) >= 15, documented
        assert documented <= set(CODES), documented - set(CODES)
    for code, (_status, name) in CODES.items():
        cls = getattr(sandkasten, name)
        assert issubclass(cls, SandkastenAPIError)
        assert cls.error_code_value == code
        assert error_class_for(code) is cls


@pytest.mark.parametrize("code", sorted(CODES))
async def test_error_code_maps_to_subclass(flavor: str, code: str) -> None:
    status, name = CODES[code]
    d = Daemon()
    d.on("GET", "/v1/sessions/abc", error(status, code, "it failed", session_id="abc"))
    client = make(d, flavor)
    with pytest.raises(SandkastenAPIError) as info:
        await maybe(client.get_session("abc"))
    err = info.value
    assert type(err) is getattr(sandkasten, name)
    assert (err.status_code, err.error_code, err.message) == (status, code, "it failed")
    assert err.details == {"session_id": "abc"}
    assert str(err) == f"{status} {code}: it failed"
    assert isinstance(err, SandkastenError)
    assert len(d.requests) == 1  # API errors are never retried
    await aclose(client)


def test_unknown_code_and_non_json_bodies() -> None:
    err = api_error_from_response(418, b'{"error_code": "TEAPOT", "message": "short"}')
    assert type(err) is SandkastenAPIError
    assert (err.status_code, err.error_code, err.message) == (418, "TEAPOT", "short")

    err = api_error_from_response(502, b"<html>Bad Gateway</html>")
    assert type(err) is SandkastenAPIError
    assert (err.error_code, err.message) == ("HTTP_502", "<html>Bad Gateway</html>")
    assert err.response_body == "<html>Bad Gateway</html>"

    err = api_error_from_response(500, b"")
    assert (err.error_code, err.message) == ("HTTP_500", "HTTP 500")

    err = api_error_from_response(400, b'{"error_code": "INVALID_PATH", "details": []}')
    assert isinstance(err, sandkasten.InvalidPath)
    assert err.message == "INVALID_PATH" and err.details == {}


async def test_unsupported_is_an_invalid_request(flavor: str) -> None:
    # 400 UNSUPPORTED replaced 400 INVALID_REQUEST for what the runtime cannot do:
    # its class is a subclass, so code written against older daemons still catches it.
    assert issubclass(sandkasten.UnsupportedError, sandkasten.InvalidRequest)
    assert error_class_for("UNSUPPORTED") is sandkasten.UnsupportedError
    assert sandkasten.InvalidRequest.error_code_value == "INVALID_REQUEST"
    d = Daemon()
    what = {"what": "snapshots", "runtime": "docker"}
    d.on(
        "POST",
        "/v1/workspaces/w1/snapshots",
        error(400, "UNSUPPORTED", "snapshots is not supported by the docker runtime", **what),
        error(400, "INVALID_REQUEST", "snapshots is not supported by the docker runtime"),
    )
    client = make(d, flavor)
    with pytest.raises(sandkasten.InvalidRequest) as info:  # an existing except clause
        await maybe(client.create_snapshot("w1"))
    err = info.value
    assert type(err) is sandkasten.UnsupportedError
    assert (err.status_code, err.error_code) == (400, "UNSUPPORTED")
    assert err.details == what and "docker" in err.message
    # An older daemon's answer is still a plain InvalidRequest, not the subclass.
    with pytest.raises(sandkasten.InvalidRequest) as info:
        await maybe(client.create_snapshot("w1"))
    assert type(info.value) is sandkasten.InvalidRequest
    assert not isinstance(info.value, sandkasten.UnsupportedError)
    assert len(d.requests) == 2  # a POST is never retried
    await aclose(client)


async def test_unauthorized(flavor: str) -> None:
    d = Daemon()
    d.on("GET", "/v1/sessions", error(401, "UNAUTHORIZED", "missing or invalid API key"))
    client = make(d, flavor)
    with pytest.raises(sandkasten.Unauthorized):
        await maybe(client.list_sessions())
    assert d.requests[0].headers["authorization"] == "Bearer sk-unit-test-key"
    await aclose(client)


async def test_malformed_success_body_is_a_sandkasten_error(flavor: str) -> None:
    d = Daemon()
    d.on("GET", "/v1/sessions/abc", httpx.Response(200, text="not json"))
    d.on("GET", "/v1/workspaces/w", httpx.Response(200, json={"no": "id"}))
    client = make(d, flavor)
    with pytest.raises(SandkastenError, match="unexpected response"):
        await maybe(client.get_session("abc"))
    with pytest.raises(SandkastenError, match="unexpected response"):
        await maybe(client.get_workspace("w"))
    await aclose(client)


# ------------------------------------------------------------------ connection errors


def connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def remote_closed(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("server disconnected", request=request)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry delays instead of sleeping."""
    delays: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr("sandkasten.client.asyncio.sleep", fake_async_sleep)
    monkeypatch.setattr("sandkasten.sync.time.sleep", delays.append)
    return delays


async def test_get_is_retried_with_exponential_backoff(flavor: str, sleeps: list[float]) -> None:
    d = Daemon()
    d.on("GET", "/v1/sessions", connect_error, remote_closed, [SESSION_JSON])
    client = make(d, flavor, retry_backoff=0.5)
    sessions = await maybe(client.list_sessions())
    assert [s.id for s in sessions] == ["2c0d6f"]
    assert len(d.requests) == 3
    assert sleeps == [0.5, 1.0]
    await aclose(client)


async def test_retries_give_up_after_max_retries(flavor: str, sleeps: list[float]) -> None:
    d = Daemon()
    d.on("GET", "/v1/workspaces", connect_error)
    client = make(d, flavor, retry_backoff=1.0)
    with pytest.raises(SandkastenConnectionError) as info:
        await maybe(client.list_workspaces())
    assert len(d.requests) == 4  # one try + max_retries (3)
    assert sleeps == [1.0, 2.0, 4.0]
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert not isinstance(info.value, httpx.HTTPError)
    assert "GET /v1/workspaces" in str(info.value)
    await aclose(client)


async def test_backoff_is_capped(flavor: str, sleeps: list[float]) -> None:
    d = Daemon()
    d.on("GET", "/v1/workspaces", connect_error)
    client = make(d, flavor, retry_backoff=3.0, max_retries=4)
    with pytest.raises(SandkastenConnectionError):
        await maybe(client.list_workspaces())
    assert sleeps == [3.0, 6.0, 8.0, 8.0]
    await aclose(client)


async def test_max_retries_zero_means_one_try(flavor: str, sleeps: list[float]) -> None:
    d = Daemon()
    d.on("GET", "/v1/sessions/abc", connect_error)
    client = make(d, flavor, max_retries=0)
    with pytest.raises(SandkastenConnectionError):
        await maybe(client.get_session("abc"))
    assert len(d.requests) == 1 and sleeps == []
    await aclose(client)


async def test_post_is_not_retried(flavor: str, sleeps: list[float]) -> None:
    d = Daemon()
    d.on("POST", "/v1/sessions", connect_error)
    d.on("POST", "/v1/sessions/abc/exec", remote_closed)
    client = make(d, flavor)
    with pytest.raises(SandkastenConnectionError):
        await maybe(client.create_session())
    session = (
        sandkasten.Session(client, "abc")
        if flavor == "async"
        else sandkasten.SyncSession(client, "abc")
    )
    with pytest.raises(SandkastenConnectionError):
        await maybe(session.exec("echo hi"))
    assert len(d.requests) == 2 and sleeps == []
    await aclose(client)


async def test_delete_is_retried_and_a_404_after_a_retry_means_done(
    flavor: str, sleeps: list[float]
) -> None:
    d = Daemon()
    d.on("GET", "/v1/sessions/abc", SESSION_JSON | {"id": "abc"})
    d.on("DELETE", "/v1/sessions/abc", remote_closed, error(404, "SESSION_NOT_FOUND"))
    d.on("DELETE", "/v1/workspaces/w", connect_error, {"ok": True})
    client = make(d, flavor)
    session = await maybe(client.get_session("abc"))
    await maybe(session.destroy())  # the first attempt may have destroyed it
    await maybe(client.delete_workspace("w"))
    assert len(d.calls("DELETE", "/v1/sessions/abc")) == 2
    assert len(d.calls("DELETE", "/v1/workspaces/w")) == 2
    # Without a retry, a 404 is an error.
    d.on("DELETE", "/v1/sessions/abc", error(404, "SESSION_NOT_FOUND"))
    with pytest.raises(sandkasten.SessionNotFound):
        await maybe(session.destroy())
    await aclose(client)


async def test_read_timeout_is_not_retried(flavor: str, sleeps: list[float]) -> None:
    d = Daemon()
    d.on("GET", "/v1/sessions/abc/stats", read_timeout)
    client = make(d, flavor)
    session = (
        sandkasten.Session(client, "abc")
        if flavor == "async"
        else sandkasten.SyncSession(client, "abc")
    )
    with pytest.raises(SandkastenTimeoutError) as info:
        await maybe(session.stats())
    assert isinstance(info.value, SandkastenConnectionError)
    assert len(d.requests) == 1
    await aclose(client)


async def test_real_refused_connection(flavor: str) -> None:
    """Against a port nobody listens on: no httpx error escapes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kwargs: dict[str, Any] = {
        "base_url": f"http://127.0.0.1:{port}",
        "api_key": "k",
        "max_retries": 2,
        "retry_backoff": 0.01,
    }
    client: Any = (
        sandkasten.SandboxClient(**kwargs)
        if flavor == "async"
        else sandkasten.SyncSandboxClient(**kwargs)
    )
    with pytest.raises(SandkastenConnectionError):
        await maybe(client.list_sessions())
    with pytest.raises(SandkastenConnectionError):
        await maybe(client.create_session())
    await aclose(client)


# ------------------------------------------------------------------ pool and metrics


@pytest.mark.parametrize(
    ("status", "code", "exc"),
    [
        (401, "UNAUTHORIZED", sandkasten.Unauthorized),
        (404, "NOT_FOUND", sandkasten.NotFound),  # a daemon without these routes
        (503, "SHUTTING_DOWN", sandkasten.ShuttingDown),
        (500, "INTERNAL_ERROR", sandkasten.InternalError),
    ],
)
async def test_pool_and_metrics_errors_are_mapped(
    flavor: str, status: int, code: str, exc: type[SandkastenAPIError]
) -> None:
    d = Daemon()
    d.on("GET", "/v1/pool", error(status, code, "pool refused"))
    d.on("GET", "/metrics", error(status, code, "metrics refused"))
    client = make(d, flavor)
    with pytest.raises(exc) as info:
        await maybe(client.get_pool())
    assert (info.value.status_code, info.value.error_code) == (status, code)
    assert info.value.message == "pool refused"
    with pytest.raises(exc) as info:
        await maybe(client.metrics())
    assert (info.value.status_code, info.value.error_code) == (status, code)
    assert info.value.message == "metrics refused"
    assert len(d.requests) == 2  # API errors are never retried
    await aclose(client)


async def test_metrics_error_that_is_not_json(flavor: str) -> None:
    d = Daemon()
    d.on("GET", "/metrics", httpx.Response(502, text="<html>Bad Gateway</html>"))
    client = make(d, flavor)
    with pytest.raises(SandkastenAPIError) as info:
        await maybe(client.metrics())
    assert type(info.value) is SandkastenAPIError
    assert (info.value.status_code, info.value.error_code) == (502, "HTTP_502")
    await aclose(client)


async def test_malformed_pool_body_is_a_sandkasten_error(flavor: str) -> None:
    d = Daemon()
    d.on(
        "GET",
        "/v1/pool",
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=[]),
        httpx.Response(200, json={"images": []}),
        httpx.Response(200, json={"images": {"base": 3}}),
        httpx.Response(200, json={"images": {"base": {"idle": "many"}}}),
    )
    client = make(d, flavor)
    for _ in range(5):
        with pytest.raises(SandkastenError, match="unexpected response"):
            await maybe(client.get_pool())
    await aclose(client)


async def test_pool_and_metrics_are_retried_on_connection_errors(
    flavor: str, sleeps: list[float]
) -> None:
    d = Daemon()
    d.on("GET", "/v1/pool", connect_error, remote_closed, {"images": {}})
    d.on("GET", "/metrics", connect_error, httpx.Response(200, text="m 1\n"))
    client = make(d, flavor, retry_backoff=0.5)
    assert (await maybe(client.get_pool())).images == {}
    assert await maybe(client.metrics()) == "m 1\n"
    assert len(d.calls("GET", "/v1/pool")) == 3 and len(d.calls("GET", "/metrics")) == 2
    assert sleeps == [0.5, 1.0, 0.5]
    d.on("GET", "/metrics", read_timeout)
    with pytest.raises(SandkastenTimeoutError):
        await maybe(client.metrics())
    assert len(d.calls("GET", "/metrics")) == 3  # a read timeout is not retried
    await aclose(client)
