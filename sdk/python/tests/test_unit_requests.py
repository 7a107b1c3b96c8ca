"""Unit tests: what each method sends and how answers are parsed (mocked transport)."""

from __future__ import annotations

import base64
import io
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import sandkasten
from sandkasten import (
    ExecResult,
    FileEntry,
    FileStat,
    ImagePoolInfo,
    PoolInfo,
    PortUrl,
    ReadResult,
    SessionInfo,
    SessionStats,
    WorkspaceInfo,
)
from sdkmock import SESSION_JSON, ChunkedStream, Daemon, aclose, body, error, maybe

S = "/v1/sessions/2c0d6f"
WS_JSON = {
    "id": "user123-project456",
    "created_at": "2026-11-28T16:30:00.000Z",
    "last_used_at": None,
    "size_bytes": 1000,
    "quota_bytes": None,
    "in_use": False,
    "labels": {"team": "a"},
}
ENTRIES = {
    "path": "/workspace",
    "entries": [
        {"name": "a", "type": "dir", "size": 4096, "mode": 493, "mtime": 1795883633},
        {"name": "b.txt", "type": "file", "size": 3, "mode": 420, "mtime": 1795883634},
    ],
}


@pytest.fixture(params=["async", "sync"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def d() -> Daemon:
    daemon = Daemon()
    daemon.on("POST", "/v1/sessions", httpx.Response(201, json=SESSION_JSON))
    daemon.on("GET", S, SESSION_JSON)
    return daemon


async def open_session(d: Daemon, flavor: str, **kwargs: Any) -> tuple[Any, Any]:
    client: Any = d.async_client(**kwargs) if flavor == "async" else d.sync_client(**kwargs)
    return client, await maybe(client.create_session())


# ------------------------------------------------------------------ parsing


def test_dataclass_parsing() -> None:
    info = SessionInfo.from_json(SESSION_JSON | {"future_field": 1})
    assert info == SessionInfo(
        id="2c0d6f",
        image="base",
        status="running",
        cwd="/workspace",
        created_at="2026-11-28T15:34:36.889Z",
        expires_at="2026-11-28T16:04:36.889Z",
        workspace_id=None,
        acquire_source="cold",
    )
    assert SessionInfo.from_json(SESSION_JSON | {"workspace_id": "w"}).workspace_id == "w"

    assert ExecResult.from_json(
        {
            "exit_code": 124,
            "cwd": "/w",
            "output": "x",
            "truncated": True,
            "duration_ms": 5,
            "timed_out": True,
        }
    ) == ExecResult(124, "/w", "x", truncated=True, duration_ms=5, timed_out=True)
    # An older daemon without the optional fields.
    assert ExecResult.from_json({"exit_code": 0, "cwd": "/", "output": ""}) == ExecResult(
        0, "/", ""
    )

    assert SessionStats.from_json(
        {"memory_bytes": 1, "memory_limit": 2, "cpu_usage_usec": 3, "pids": 4}
    ) == SessionStats(1, 2, 3, 4)

    ws = WorkspaceInfo.from_json(WS_JSON)
    assert ws.id == "user123-project456" and ws.size_bytes == 1000 and ws.labels == {"team": "a"}
    assert ws.quota_bytes is None and ws.last_used_at is None and not ws.in_use
    assert WorkspaceInfo.from_json({"id": "x"}) == WorkspaceInfo(id="x")

    entry = FileEntry.from_json(ENTRIES["entries"][0])
    assert entry == FileEntry("a", "dir", 4096, 0o755, 1795883633)
    assert entry.is_dir and not entry.is_file

    st = FileStat.from_json(
        {
            "path": "/workspace/l",
            "type": "symlink",
            "size": 1,
            "mode": 511,
            "uid": 1000,
            "gid": 1000,
            "mtime": 2,
            "link_target": "/etc",
        }
    )
    assert st.link_target == "/etc" and st.uid == 1000 and not st.is_dir


def test_read_result() -> None:
    r = ReadResult.from_json(
        {
            "path": "/workspace/a",
            "content_base64": base64.b64encode(b"h\xc3\xa9\xff").decode(),
            "truncated": True,
        }
    )
    assert r.content == b"h\xc3\xa9\xff" and r.truncated and r.path == "/workspace/a"
    assert r.text == "hé\ufffd" and str(r) == "hé\ufffd" and bytes(r) == b"h\xc3\xa9\xff"
    # Unpadded base64 is accepted, as by the daemon.
    assert ReadResult.from_json({"content_base64": "aGk"}, path="x") == ReadResult(b"hi", "x")


# ------------------------------------------------------------------ sessions


async def test_create_session_sends_only_what_is_given(d: Daemon, flavor: str) -> None:
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    session = await maybe(client.create_session())
    assert body(d.requests[-1]) == {}
    assert session.id == "2c0d6f"
    assert session.last_info.acquire_source == "cold"
    await maybe(client.create_session(image="base", ttl_seconds=60, workspace_id="w1"))
    assert body(d.requests[-1]) == {"image": "base", "ttl_seconds": 60, "workspace_id": "w1"}
    await maybe(client.create_session("python"))
    assert body(d.requests[-1]) == {"image": "python"}
    await aclose(client)


async def test_create_session_disk_limit(d: Daemon, flavor: str) -> None:
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    await maybe(client.create_session(disk_limit_mb=2048))
    assert body(d.requests[-1]) == {"disk_limit_mb": 2048}
    # The daemon checks the range; the SDK only the type, before sending.
    n = len(d.requests)
    for bad in ("2048", 1.5, True):
        with pytest.raises(TypeError, match="disk_limit_mb"):
            await maybe(client.create_session(disk_limit_mb=bad))
    assert len(d.requests) == n
    await aclose(client)


async def test_create_session_network_and_set_network(d: Daemon, flavor: str) -> None:
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    pol = {"mode": "full", "allow_out": ["pypi.org", "203.0.113.0/24"], "deny_out": []}
    d.on("PUT", "/v1/sessions/2c0d6f/network", {**SESSION_JSON, "network": pol})
    session = await maybe(client.create_session(network=pol))
    assert body(d.requests[-1]) == {"network": pol}
    await maybe(client.create_session(network="full"))
    assert body(d.requests[-1]) == {"network": {"mode": "full"}}
    policy = sandkasten.NetworkPolicy(allow_out=("*.github.com",))
    await maybe(client.create_session(network=policy))
    assert body(d.requests[-1]) == {
        "network": {"mode": "full", "allow_out": ["*.github.com"], "deny_out": []}
    }
    info = await maybe(session.set_network(pol))
    assert d.requests[-1].method == "PUT"
    assert body(d.requests[-1]) == pol
    assert info.network == sandkasten.NetworkPolicy(**pol)
    assert session.last_info.network.allow_out == ["pypi.org", "203.0.113.0/24"]
    n = len(d.requests)
    for bad in (3, {"allow_out": "pypi.org"}):
        with pytest.raises(TypeError, match="network"):
            await maybe(client.create_session(network=bad))
    assert len(d.requests) == n
    await aclose(client)


async def test_network_events(d: Daemon, flavor: str) -> None:
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    ev = {
        "time": "2026-02-08T10:00:00.123Z",
        "destination": "203.0.113.9:443",
        "name": None,
        "reason": "no host name (TLS SNI or HTTP Host) to check against allow_out",
    }
    d.on("GET", "/v1/sessions/2c0d6f/network/events", {"events": [ev]})
    session = await maybe(client.create_session())
    events = await maybe(session.network_events())
    assert d.requests[-1].method == "GET"
    assert d.requests[-1].url.path == "/v1/sessions/2c0d6f/network/events"
    assert events == [sandkasten.NetworkEvent(**ev)]
    await aclose(client)


async def test_a_full_host_is_storage_full(flavor: str) -> None:
    d = Daemon()
    d.on("POST", "/v1/sessions", error(507, "STORAGE_FULL"))
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    with pytest.raises(sandkasten.StorageFull):
        await maybe(client.create_session())
    await aclose(client)


async def test_create_session_env(d: Daemon, flavor: str) -> None:
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    await maybe(client.create_session(env={"GREETING": "hi there", "PATH": "/opt/bin:/usr/bin"}))
    assert body(d.requests[-1]) == {"env": {"GREETING": "hi there", "PATH": "/opt/bin:/usr/bin"}}
    await maybe(client.create_session("base", 60, "w1", {"A": ""}))  # positional, as declared
    assert body(d.requests[-1]) == {
        "image": "base",
        "ttl_seconds": 60,
        "workspace_id": "w1",
        "env": {"A": ""},
    }
    # Any mapping is sent as a JSON object; an empty one is sent, None is omitted.
    await maybe(client.create_session(env=types.MappingProxyType({"X": "=;$(x)\n"})))
    assert body(d.requests[-1]) == {"env": {"X": "=;$(x)\n"}}
    await maybe(client.create_session(env={}))
    assert body(d.requests[-1]) == {"env": {}}
    await maybe(client.create_session(env=None))
    assert body(d.requests[-1]) == {}

    # Not a mapping of str to str: refused before anything is sent.
    n = len(d.requests)
    for bad in ([("A", "b")], "A=b", {"A": 1}, {1: "a"}, {"A": None}):
        with pytest.raises(TypeError, match="env"):
            await maybe(client.create_session(env=bad))
    assert len(d.requests) == n

    # What the daemon refuses (names, sizes, NUL) comes back as InvalidRequest.
    d.on("POST", "/v1/sessions", error(400, "INVALID_REQUEST", "env: invalid variable name"))
    with pytest.raises(sandkasten.InvalidRequest, match="env"):
        await maybe(client.create_session(env={"1BAD": "x"}))
    assert len(d.requests) == n + 1  # a POST is never retried
    await aclose(client)


async def test_session_routes(d: Daemon, flavor: str) -> None:
    d.on("GET", "/v1/sessions", [SESSION_JSON, SESSION_JSON | {"id": "x"}])
    d.on(
        "GET",
        S + "/stats",
        {"memory_bytes": 10, "memory_limit": 20, "cpu_usage_usec": 30, "pids": 2},
    )
    d.on("DELETE", S, {"ok": True})
    d.on("GET", "/healthz", {"status": "ok"})
    client, session = await open_session(d, flavor)
    assert await maybe(client.health()) is True
    assert [s.id for s in await maybe(client.list_sessions())] == ["2c0d6f", "x"]
    again = await maybe(client.get_session("2c0d6f"))
    assert again.id == "2c0d6f" and repr(again).endswith("(id='2c0d6f')")
    assert (await maybe(session.info())).status == "running"
    assert await maybe(session.stats()) == SessionStats(10, 20, 30, 2)
    await maybe(session.destroy())
    assert [r.method for r in d.calls("DELETE", S)] == ["DELETE"]
    assert d.requests[0].headers["user-agent"].startswith("sandkasten-python/")
    await aclose(client)


async def test_get_url_signs_a_port(d: Daemon, flavor: str) -> None:
    answer = {
        "url": "http://8000-2c0d6f.localhost:8080/?sandkasten_token=9.ab",
        "path": S + "/ports/8000/?sandkasten_token=9.ab",
        "token": "9.ab",
        "expires_at": "2026-12-06T08:00:00Z",
    }
    d.on("POST", S + "/ports/8000/url", answer)
    client, session = await open_session(d, flavor)
    got = await maybe(session.get_url(8000))
    assert got == PortUrl(answer["url"], answer["path"], "9.ab", "2026-12-06T08:00:00Z")
    assert body(d.calls("POST", S + "/ports/8000/url")[-1]) == {}
    await maybe(session.get_url(8000, ttl_seconds=60))
    assert body(d.calls("POST", S + "/ports/8000/url")[-1]) == {"ttl_seconds": 60}
    for bad in (0, 65536, "80", True):
        with pytest.raises(ValueError):
            await maybe(session.get_url(bad))  # type: ignore[arg-type]
    await aclose(client)


async def test_exec_request_and_timeout(d: Daemon, flavor: str) -> None:
    d.on(
        "POST",
        S + "/exec",
        {
            "exit_code": 0,
            "cwd": "/workspace",
            "output": "42\n",
            "truncated": False,
            "duration_ms": 3,
            "timed_out": False,
        },
    )
    client, session = await open_session(d, flavor, timeout=5)
    result = await maybe(session.exec("python3 -c 'print(42)'"))
    assert result == ExecResult(0, "/workspace", "42\n", duration_ms=3)
    request = d.requests[-1]
    assert body(request) == {"cmd": "python3 -c 'print(42)'", "raw_output": False}
    # The daemon's default command timeout is 30 s: the HTTP read waits longer.
    assert request.extensions["timeout"]["read"] >= 30 + 10
    assert request.extensions["timeout"]["connect"] == 5

    await maybe(session.exec("sleep 100", timeout_ms=100_000, raw_output=True))
    request = d.requests[-1]
    assert body(request) == {"cmd": "sleep 100", "timeout_ms": 100_000, "raw_output": True}
    assert request.extensions["timeout"]["read"] >= 110

    # Other calls use the client's timeout.
    d.on("GET", S + "/stats", {"memory_bytes": 0, "memory_limit": 0, "cpu_usage_usec": 0})
    await maybe(session.stats())
    assert d.requests[-1].extensions["timeout"]["read"] == 5
    await aclose(client)


async def test_no_timeout_stays_no_timeout(d: Daemon, flavor: str) -> None:
    d.on("POST", S + "/exec", {"exit_code": 0, "cwd": "/", "output": ""})
    client, session = await open_session(d, flavor, timeout=None)
    await maybe(session.exec("true", timeout_ms=1000))
    assert d.requests[-1].extensions["timeout"]["read"] is None
    await aclose(client)


async def test_session_context_manager_destroys(d: Daemon, flavor: str) -> None:
    d.on("DELETE", S, {"ok": True}, error(404, "SESSION_NOT_FOUND"))
    client, session = await open_session(d, flavor)
    if flavor == "async":
        async with session as s:
            assert s is session
        async with session:  # already gone: leaving the block does not raise
            pass
        with pytest.raises(RuntimeError):  # the body's error is not masked
            async with session:
                raise RuntimeError("body failed")
    else:
        with session as s:
            assert s is session
        with session:
            pass
        with pytest.raises(RuntimeError), session:
            raise RuntimeError("body failed")
    assert len(d.calls("DELETE", S)) == 3
    await aclose(client)


async def test_client_context_manager_closes(flavor: str) -> None:
    d = Daemon()
    if flavor == "async":
        async with d.async_client() as client:
            assert repr(client) == "SandboxClient(base_url='http://sandkasten.test')"
        assert client._http.is_closed
    else:
        with d.sync_client() as client:
            assert repr(client) == "SyncSandboxClient(base_url='http://sandkasten.test')"
        assert client._http.is_closed


# ------------------------------------------------------------------ pool and metrics

POOL_JSON = {
    "images": {
        "base": {
            "target": 3,
            "idle": 2,
            "in_flight": 1,
            "hits": 12,
            "misses": 2,
            "discarded": 1,
            "recycled": 4,
            "refill_failures": 5,
            "last_error": "starting sandbox: no space left on device",
            "acquire_wait_p50_ms": 0.9,
            "acquire_wait_p95_ms": 3,
        },
        "python": {
            "target": 1,
            "idle": 0,
            "in_flight": 0,
            "hits": 0,
            "misses": 0,
            "discarded": 0,
            "recycled": 0,
            "refill_failures": 0,
            "last_error": None,
            "acquire_wait_p50_ms": None,
            "acquire_wait_p95_ms": None,
            "future_field": [1, 2],
        },
    }
}

METRICS_TEXT = (
    "# HELP sandkasten_pool_hits_total Creates served from the pool per image.\n"
    "# TYPE sandkasten_pool_hits_total counter\n"
    'sandkasten_pool_hits_total{image="base"} 12\n'
    'sandkasten_pool_hits_total{image="we\\"ird\\\\ näme"} 0\n'
    'sandkasten_exec_duration_seconds_bucket{le="+Inf"} 7\n'
    "sandkasten_exec_duration_seconds_sum 0.25\r\n"
)


def test_pool_parsing() -> None:
    pool = PoolInfo.from_json(POOL_JSON)
    assert list(pool.images) == ["base", "python"]
    assert pool.images["base"] == ImagePoolInfo(
        target=3,
        idle=2,
        in_flight=1,
        hits=12,
        misses=2,
        discarded=1,
        recycled=4,
        refill_failures=5,
        last_error="starting sandbox: no space left on device",
        acquire_wait_p50_ms=0.9,
        acquire_wait_p95_ms=3.0,
    )
    assert isinstance(pool.images["base"].acquire_wait_p95_ms, float)
    assert pool.images["python"] == ImagePoolInfo(target=1)
    assert pool.images["python"].acquire_wait_p50_ms is None
    assert pool.images["python"].last_error is None
    # A daemon without a pool.
    assert PoolInfo.from_json({"images": {}}) == PoolInfo()
    assert PoolInfo.from_json({}) == PoolInfo(images={})


async def test_get_pool(flavor: str) -> None:
    d = Daemon()
    d.on("GET", "/v1/pool", POOL_JSON, {"images": {}})
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    pool = await maybe(client.get_pool())
    assert isinstance(pool, sandkasten.PoolInfo)
    assert pool == PoolInfo.from_json(POOL_JSON)
    request = d.requests[-1]
    assert (request.method, request.url.path, request.content) == ("GET", "/v1/pool", b"")
    assert request.headers["authorization"] == "Bearer sk-unit-test-key"
    assert (await maybe(client.get_pool())).images == {}
    await aclose(client)


async def test_metrics_text_is_returned_verbatim(flavor: str) -> None:
    d = Daemon()
    d.on(
        "GET",
        "/metrics",
        httpx.Response(
            200,
            content=METRICS_TEXT.encode(),
            headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
        ),
        httpx.Response(200, content=b""),
    )
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    text = await maybe(client.metrics())
    assert isinstance(text, str) and text == METRICS_TEXT
    request = d.requests[-1]
    assert (request.method, request.url.path) == ("GET", "/metrics")
    assert request.headers["authorization"] == "Bearer sk-unit-test-key"
    assert "text/plain" in request.headers["accept"]
    assert await maybe(client.metrics()) == ""
    await aclose(client)


# ------------------------------------------------------------------ files


async def test_file_routes(d: Daemon, flavor: str) -> None:
    d.on("POST", S + "/fs/write", {"ok": True})
    d.on(
        "GET",
        S + "/fs/read",
        {"path": "/workspace/a.bin", "content_base64": "AAH/", "truncated": False},
    )
    d.on("GET", S + "/fs/list", ENTRIES)
    d.on(
        "GET",
        S + "/fs/stat",
        {
            "path": "/workspace/a",
            "type": "dir",
            "size": 4096,
            "mode": 493,
            "uid": 1000,
            "gid": 1000,
            "mtime": 1,
            "link_target": None,
        },
    )
    d.on("POST", S + "/fs/mkdir", {"ok": True, "path": "/workspace/x/y"})
    d.on("POST", S + "/fs/remove", {"ok": True})
    client, session = await open_session(d, flavor)

    await maybe(session.write("hello.py", "print('hé')"))
    assert body(d.requests[-1]) == {"path": "hello.py", "text": "print('hé')"}
    await maybe(session.write("a.bin", b"\x00\x01\xff"))
    assert body(d.requests[-1]) == {"path": "a.bin", "content_base64": "AAH/"}
    await maybe(session.write("empty", b""))
    assert body(d.requests[-1]) == {"path": "empty", "content_base64": ""}
    with pytest.raises(TypeError):
        await maybe(session.write("x", 42))

    r = await maybe(session.read("a.bin"))
    assert r.content == b"\x00\x01\xff" and r.path == "/workspace/a.bin"
    assert dict(d.requests[-1].url.params) == {"path": "a.bin"}
    await maybe(session.read("a.bin", max_bytes=2))
    assert dict(d.requests[-1].url.params) == {"path": "a.bin", "max_bytes": "2"}

    entries = await maybe(session.list())
    assert [e.name for e in entries] == ["a", "b.txt"]
    assert "path" not in d.requests[-1].url.params
    await maybe(session.list("sub dir/&x"))
    assert d.requests[-1].url.params["path"] == "sub dir/&x"

    st = await maybe(session.stat("a"))
    assert st.is_dir and st.path == "/workspace/a"
    assert await maybe(session.mkdir("x/y")) == "/workspace/x/y"
    assert body(d.requests[-1]) == {"path": "x/y", "parents": True}
    await maybe(session.mkdir("x/y", parents=False))
    assert body(d.requests[-1]) == {"path": "x/y", "parents": False}
    await maybe(session.remove("x"))
    assert body(d.requests[-1]) == {"path": "x", "recursive": False}
    await maybe(session.remove("x", recursive=True))
    assert body(d.requests[-1]) == {"path": "x", "recursive": True}
    await aclose(client)


def multipart(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """Parse a multipart body: part name -> (filename, content)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = (part.get_filename(), part.get_payload(decode=True))
    return parts


async def test_upload(d: Daemon, flavor: str, tmp_path: Path) -> None:
    d.on("POST", S + "/fs/upload", {"ok": True, "paths": ["/workspace/data.bin"]})
    client, session = await open_session(d, flavor)
    local = tmp_path / "data.bin"
    local.write_bytes(bytes(range(256)))

    assert await maybe(session.upload(local)) == ["/workspace/data.bin"]
    assert multipart(d.requests[-1]) == {"file": ("data.bin", bytes(range(256)))}

    await maybe(session.upload(str(local), dest_path="/workspace/in", filename="renamed"))
    assert multipart(d.requests[-1]) == {
        "path": (None, b"/workspace/in"),
        "file": ("renamed", bytes(range(256))),
    }

    await maybe(session.upload(b"raw bytes", filename="r.txt"))
    assert multipart(d.requests[-1]) == {"file": ("r.txt", b"raw bytes")}

    with local.open("rb") as f:
        await maybe(session.upload(f))
    assert multipart(d.requests[-1])["file"] == ("data.bin", bytes(range(256)))

    await maybe(session.upload(io.BytesIO(b"mem"), filename="m"))
    assert multipart(d.requests[-1])["file"] == ("m", b"mem")

    n = len(d.requests)
    with pytest.raises(ValueError, match="filename"):
        await maybe(session.upload(b"no name"))
    with pytest.raises(ValueError, match="filename"):
        await maybe(session.upload(io.BytesIO(b"no name")))
    for bad in ("..", ".", "a/b", "nul\0"):
        with pytest.raises(ValueError, match="upload filename"):
            await maybe(session.upload(b"x", filename=bad))
    with pytest.raises(FileNotFoundError):
        await maybe(session.upload(tmp_path / "missing"))
    with pytest.raises(TypeError):
        await maybe(session.upload(42))
    assert len(d.requests) == n
    await aclose(client)


# ------------------------------------------------------------------ workspaces


async def test_workspace_routes(d: Daemon, flavor: str) -> None:
    W = "/v1/workspaces/user123-project456"
    d.on("GET", "/v1/workspaces", {"workspaces": [WS_JSON]})
    d.on("POST", "/v1/workspaces", httpx.Response(201, json=WS_JSON))
    d.on("GET", W, WS_JSON)
    d.on("DELETE", W, {"ok": True})
    d.on("GET", W + "/fs", ENTRIES)
    d.on(
        "GET",
        W + "/fs/read",
        {"path": "/workspace/a", "content_base64": "aGk=", "truncated": False},
    )
    d.on("POST", W + "/fs/write", {"ok": True})
    d.on("POST", W + "/fs/upload", {"ok": True, "paths": ["/workspace/in/u"]})
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    wid = "user123-project456"

    assert [w.id for w in await maybe(client.list_workspaces())] == [wid]
    assert (await maybe(client.create_workspace(wid, labels={"team": "a"}))).labels == {"team": "a"}
    assert body(d.requests[-1]) == {"id": wid, "labels": {"team": "a"}}
    await maybe(client.create_workspace(wid))
    assert body(d.requests[-1]) == {"id": wid}
    assert (await maybe(client.get_workspace(wid))).size_bytes == 1000
    await maybe(client.delete_workspace(wid))

    assert [e.name for e in await maybe(client.list_workspace_files(wid))] == ["a", "b.txt"]
    assert "path" not in d.requests[-1].url.params
    await maybe(client.list_workspace_files(wid, "a"))
    assert d.requests[-1].url.params["path"] == "a"
    r = await maybe(client.read_workspace_file(wid, "a", max_bytes=10))
    assert r.content == b"hi" and dict(d.requests[-1].url.params) == {
        "path": "a",
        "max_bytes": "10",
    }
    await maybe(client.write_workspace_file(wid, "a", b"\x00"))
    assert body(d.requests[-1]) == {"path": "a", "content_base64": "AA=="}
    assert await maybe(client.upload_workspace_file(wid, b"u", dest_path="in", filename="u")) == [
        "/workspace/in/u"
    ]
    assert multipart(d.requests[-1]) == {"path": (None, b"in"), "file": ("u", b"u")}
    await aclose(client)


async def test_snapshot_routes_and_quota(flavor: str) -> None:
    W = "/v1/workspaces/w1"
    snap = {
        "id": "snap-1",
        "workspace_id": "w1",
        "created_at": "2026-11-28T16:30:00.000Z",
        "label": "before",
    }
    d = Daemon()
    d.on("POST", "/v1/workspaces", httpx.Response(201, json=WS_JSON | {"quota_bytes": 2**28}))
    d.on("POST", W + "/snapshots", httpx.Response(201, json=snap))
    d.on("GET", W + "/snapshots", {"snapshots": [snap, snap | {"id": "snap-2", "label": None}]})
    d.on("DELETE", W + "/snapshots/snap-1", {"ok": True})
    d.on("POST", W + "/snapshots/snap-1/restore", {"ok": True})
    client: Any = d.async_client() if flavor == "async" else d.sync_client()

    ws = await maybe(client.create_workspace("w1", quota_mb=256))
    assert ws.quota_bytes == 2**28 and body(d.requests[-1]) == {"id": "w1", "quota_mb": 256}
    await maybe(client.create_workspace("w1", quota_bytes=2**28))
    assert body(d.requests[-1]) == {"id": "w1", "quota_bytes": 2**28}

    created = await maybe(client.create_snapshot("w1", label="before"))
    assert created == sandkasten.SnapshotInfo("snap-1", "w1", "2026-11-28T16:30:00.000Z", "before")
    assert body(d.requests[-1]) == {"label": "before"}
    await maybe(client.create_snapshot("w1"))
    assert body(d.requests[-1]) == {}
    snaps = await maybe(client.list_snapshots("w1"))
    assert [(s.id, s.label) for s in snaps] == [("snap-1", "before"), ("snap-2", None)]
    await maybe(client.restore_snapshot("w1", "snap-1"))
    await maybe(client.delete_snapshot("w1", "snap-1"))
    assert [r.method for r in d.requests[-2:]] == ["POST", "DELETE"]
    with pytest.raises(sandkasten.NotFound):
        await maybe(client.delete_snapshot("w1", "../../sessions"))
    assert d.requests[-1].url.raw_path == b"/v1/workspaces/w1/snapshots/..%2F..%2Fsessions"
    await aclose(client)


async def test_ids_cannot_change_the_route(flavor: str) -> None:
    d = Daemon()
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    for wid, raw in [
        ("..", "/v1/workspaces/%2E%2E"),
        ("a/b", "/v1/workspaces/a%2Fb"),
        ("a?b#c", "/v1/workspaces/a%3Fb%23c"),
        (".", "/v1/workspaces/%2E"),
    ]:
        with pytest.raises(sandkasten.NotFound):  # the mock has no routes
            await maybe(client.get_workspace(wid))
        assert d.requests[-1].url.raw_path.decode() == raw
    with pytest.raises(ValueError):
        await maybe(client.get_session(""))
    with pytest.raises(ValueError):
        await maybe(client.delete_workspace(""))
    await aclose(client)


# ------------------------------------------------------------------ construction


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDKASTEN_API_KEY", "sk-from-env")
    client = sandkasten.SyncSandboxClient()
    assert client._http.headers["authorization"] == "Bearer sk-from-env"
    assert client.base_url == "http://127.0.0.1:8080"
    client.close()
    monkeypatch.delenv("SANDKASTEN_API_KEY")
    with pytest.raises(ValueError, match="api_key"):
        sandkasten.SyncSandboxClient()
    with pytest.raises(ValueError, match="api_key"):
        sandkasten.SandboxClient(api_key="")
    with pytest.raises(ValueError, match="max_retries"):
        sandkasten.SandboxClient(api_key="k", max_retries=-1)


def test_timeout_argument() -> None:
    c = sandkasten.SyncSandboxClient(api_key="k", timeout=7)
    assert c._http.timeout == httpx.Timeout(7.0)
    c.close()
    c = sandkasten.SyncSandboxClient(api_key="k", timeout=httpx.Timeout(3, read=9))
    assert c._http.timeout.read == 9 and c._http.timeout.connect == 3
    c.close()
    c = sandkasten.SyncSandboxClient(api_key="k")
    assert c._http.timeout.read == 120 and c._http.timeout.connect == 10
    c.close()


def test_public_api_is_exported() -> None:
    for name in sandkasten.__all__:
        assert getattr(sandkasten, name) is not None
    assert sandkasten.__version__.count(".") == 2
    assert (Path(sandkasten.__file__).parent / "py.typed").exists()


# ------------------------------------------------------------------ export, import, from_snapshot

TAR = b"tar-bytes-" * 10_000  # not a real tar: the SDK never parses it


async def test_create_workspace_from_snapshot(flavor: str) -> None:
    d = Daemon()
    d.on("POST", "/v1/workspaces", httpx.Response(201, json=WS_JSON))
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    await maybe(client.create_workspace("copy", from_snapshot=("src", "snap-1"), quota_mb=256))
    assert body(d.requests[-1]) == {
        "id": "copy",
        "quota_mb": 256,
        "from_snapshot": {"workspace_id": "src", "snapshot_id": "snap-1"},
    }
    for bad in (("src",), ("src", ""), "src/snap-1", ("a", 1)):
        with pytest.raises(ValueError):
            await maybe(client.create_workspace("copy", from_snapshot=bad))
    assert len(d.requests) == 1
    d.on("POST", "/v1/workspaces", error(404, "SNAPSHOT_NOT_FOUND"))
    with pytest.raises(sandkasten.SnapshotNotFound):
        await maybe(client.create_workspace("copy", from_snapshot=("src", "snap-2")))
    await aclose(client)


async def test_export_workspace(flavor: str, tmp_path: Path) -> None:
    W = "/v1/workspaces/w1/export"
    stream = ChunkedStream([TAR[i : i + 7000] for i in range(0, len(TAR), 7000)])
    d = Daemon()
    d.on(
        "GET",
        W,
        lambda r: httpx.Response(200, headers={"content-type": "application/x-tar"}, stream=stream),
    )
    client: Any = d.async_client() if flavor == "async" else d.sync_client()

    assert await maybe(client.export_workspace("w1")) == TAR
    assert d.requests[-1].method == "GET" and d.requests[-1].url.path == W
    assert "application/x-tar" in d.requests[-1].headers["accept"]

    dest = tmp_path / "w1.tar"
    assert await maybe(client.export_workspace("w1", dest)) == len(TAR)
    assert dest.read_bytes() == TAR
    assert await maybe(client.export_workspace("w1", str(dest))) == len(TAR)  # replaced
    assert dest.read_bytes() == TAR

    buf = io.BytesIO(b"head:")
    buf.seek(0, io.SEEK_END)
    assert await maybe(client.export_workspace("w1", buf)) == len(TAR)
    assert buf.getvalue() == b"head:" + TAR and not buf.closed

    with pytest.raises(TypeError):
        await maybe(client.export_workspace("w1", 42))
    await aclose(client)


async def test_export_errors(flavor: str, tmp_path: Path) -> None:
    W = "/v1/workspaces/w1/export"
    d = Daemon()
    d.on("GET", W, error(404, "WORKSPACE_NOT_FOUND", workspace_id="w1"))
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    dest = tmp_path / "missing.tar"
    with pytest.raises(sandkasten.WorkspaceNotFound) as err:
        await maybe(client.export_workspace("w1", dest))
    assert err.value.status_code == 404 and err.value.details == {"workspace_id": "w1"}
    assert not dest.exists()  # nothing created for a refused export
    with pytest.raises(sandkasten.WorkspaceNotFound):
        await maybe(client.export_workspace("w1"))

    # Connection errors before the answer are retried (GET); the retry succeeds.
    d.on("GET", W, httpx.ConnectError("refused"), httpx.Response(200, content=b"tar"))
    assert await maybe(client.export_workspace("w1")) == b"tar"

    # A stream broken off half-way: a connection error, and the partial file is removed.
    class Broken(ChunkedStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"x" * 100
            raise httpx.ReadError("connection reset")

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"x" * 100
            raise httpx.ReadError("connection reset")

    d.on("GET", W, lambda r: httpx.Response(200, stream=Broken([])))
    before = len(d.requests)
    with pytest.raises(sandkasten.SandkastenConnectionError):
        await maybe(client.export_workspace("w1", dest))
    assert len(d.requests) == before + 1  # not retried after data arrived
    assert not dest.exists()
    with pytest.raises(ValueError):
        await maybe(client.export_workspace(""))
    await aclose(client)


async def test_import_workspace(flavor: str, tmp_path: Path) -> None:
    W = "/v1/workspaces/w1/import"
    d = Daemon()
    d.on("PUT", W, {"ok": True})
    client: Any = d.async_client() if flavor == "async" else d.sync_client()

    async def sent(request: httpx.Request) -> bytes:
        return request.read() if flavor == "sync" else await request.aread()

    assert await maybe(client.import_workspace("w1", TAR)) is None
    r = d.requests[-1]
    assert r.method == "PUT" and r.url.path == W
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-length"] == str(len(TAR)) and await sent(r) == TAR

    archive = tmp_path / "a.tar"
    archive.write_bytes(TAR)
    await maybe(client.import_workspace("w1", archive))
    r = d.requests[-1]
    assert r.headers["content-length"] == str(len(TAR)) and await sent(r) == TAR
    assert "transfer-encoding" not in r.headers
    await maybe(client.import_workspace("w1", str(archive)))
    assert await sent(d.requests[-1]) == TAR

    with archive.open("rb") as f:
        f.seek(5)
        await maybe(client.import_workspace("w1", f))
        assert not f.closed
    r = d.requests[-1]
    assert r.headers["transfer-encoding"] == "chunked" and await sent(r) == TAR[5:]

    with pytest.raises(FileNotFoundError):
        await maybe(client.import_workspace("w1", tmp_path / "nope.tar"))
    with pytest.raises(TypeError):
        await maybe(client.import_workspace("w1", 42))
    with pytest.raises(ValueError):
        await maybe(client.import_workspace("", TAR))
    with pytest.raises(sandkasten.NotFound):
        await maybe(client.import_workspace("../sessions", TAR))
    assert d.requests[-1].url.raw_path == b"/v1/workspaces/..%2Fsessions/import"
    await aclose(client)


@pytest.mark.parametrize(
    ("status", "code", "exc"),
    [
        (404, "WORKSPACE_NOT_FOUND", sandkasten.WorkspaceNotFound),
        (409, "WORKSPACE_IN_USE", sandkasten.WorkspaceInUse),
        (400, "INVALID_REQUEST", sandkasten.InvalidRequest),
        (413, "PAYLOAD_TOO_LARGE", sandkasten.PayloadTooLarge),
    ],
)
async def test_import_errors(
    flavor: str, status: int, code: str, exc: type[sandkasten.SandkastenAPIError]
) -> None:
    d = Daemon()
    d.on("PUT", "/v1/workspaces/w1/import", error(status, code, "refused", session_id="s1"))
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    with pytest.raises(exc) as err:
        await maybe(client.import_workspace("w1", io.BytesIO(TAR)))
    assert err.value.status_code == status and err.value.error_code == code
    assert err.value.message == "refused" and err.value.details == {"session_id": "s1"}
    assert len(d.requests) == 1  # a PUT with a streamed body is never retried
    await aclose(client)
