"""Unit tests: server-sent events of exec/stream (decoder and both clients)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import sandkasten
from sandkasten import ExecChunk, SandkastenConnectionError, SandkastenStreamError
from sandkasten._sse import SSEDecoder, SSEEvent, event_to_chunk
from sdkmock import Daemon, aclose, collect, error, sse

STREAM = "/v1/sessions/s1/exec/stream"

BODY = (
    "event: chunk\n"
    'data: {"chunk": "1\\n", "timestamp": 1764344076889}\n'
    "\n"
    ": keep-alive\n"
    "\n"
    "event: chunk\n"
    'data: {"chunk": "2\\n", "timestamp": 1764344077889}\n'
    "\n"
    "event: done\n"
    'data: {"exit_code": 3, "cwd": "/tmp", "duration_ms": 912, "timed_out": false, '
    '"truncated": false}\n'
    "\n"
)

EXPECTED = [
    ExecChunk(output="1\n", timestamp=1764344076889),
    ExecChunk(output="2\n", timestamp=1764344077889),
    ExecChunk(output="", done=True, exit_code=3, cwd="/tmp", duration_ms=912),
]


@pytest.fixture(params=["async", "sync"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def session_of(d: Daemon, flavor: str) -> tuple[Any, Any]:
    if flavor == "async":
        client: Any = d.async_client()
        return client, sandkasten.Session(client, "s1")
    client = d.sync_client()
    return client, sandkasten.SyncSession(client, "s1")


def decode(lines: list[str]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [e for line in lines if (e := decoder.feed(line)) is not None]
    last = decoder.flush()
    return events + ([last] if last else [])


# ------------------------------------------------------------------ decoder


def test_decoder_follows_the_sse_rules() -> None:
    events = decode(
        [
            ": comment first",
            "event: chunk",
            "data:no-space",
            "data:  two spaces",
            "id: 7",
            "retry: 100",
            "",
            "",
            "data: unnamed",
            "",
            "event: lonely",  # no data: dispatches nothing
            "",
            "event: done",
            "data: {}",  # no blank line before the end: still delivered
        ]
    )
    assert events == [
        SSEEvent("chunk", "no-space\n two spaces"),
        SSEEvent("message", "unnamed"),
        SSEEvent("done", "{}"),
    ]


def test_event_to_chunk() -> None:
    assert event_to_chunk(SSEEvent("message", "{}")) is None
    assert event_to_chunk(SSEEvent("progress", "{}")) is None
    assert event_to_chunk(SSEEvent("chunk", '{"chunk": "x", "timestamp": 5}')) == ExecChunk("x", 5)
    done = event_to_chunk(
        SSEEvent("done", '{"exit_code": 124, "cwd": "/w", "timed_out": true, "truncated": true}')
    )
    assert done == ExecChunk("", done=True, exit_code=124, cwd="/w", timed_out=True, truncated=True)
    with pytest.raises(SandkastenStreamError, match="agent went away"):
        event_to_chunk(SSEEvent("error", '{"error": "agent went away"}'))
    with pytest.raises(SandkastenStreamError, match="malformed chunk"):
        event_to_chunk(SSEEvent("chunk", "{not json"))
    with pytest.raises(SandkastenStreamError, match="malformed done"):
        event_to_chunk(SSEEvent("done", '{"cwd": "/w"}'))
    with pytest.raises(SandkastenStreamError, match="malformed chunk"):
        event_to_chunk(SSEEvent("chunk", "[1]"))


# ------------------------------------------------------------------ through the clients


@pytest.mark.parametrize("piece", [0, 1, 2, 7, 64])
async def test_stream_split_anywhere(flavor: str, piece: int) -> None:
    """The body may arrive in pieces of any size, splitting lines and UTF-8."""
    d = Daemon()
    d.on("POST", STREAM, sse(BODY, piece))
    client, session = session_of(d, flavor)
    assert await collect(session.exec_stream("for i in 1 2; do echo $i; done")) == EXPECTED
    await aclose(client)


@pytest.mark.parametrize("piece", [0, 1, 3])
async def test_crlf_and_cr_line_endings(flavor: str, piece: int) -> None:
    d = Daemon()
    d.on("POST", STREAM, sse(BODY.replace("\n\n", "\r\n\r\n").replace("\n", "\r\n"), piece))
    client, session = session_of(d, flavor)
    assert await collect(session.exec_stream("x")) == EXPECTED
    d.on("POST", STREAM, sse(BODY.replace("\n", "\r"), piece))
    assert await collect(session.exec_stream("x")) == EXPECTED
    await aclose(client)


async def test_utf8_split_across_pieces(flavor: str) -> None:
    body = (
        'event: chunk\ndata: {"chunk": "größe ✓\\n", "timestamp": 1}\n\n'
        'event: done\ndata: {"exit_code": 0, "cwd": "/workspace"}\n\n'
    )
    d = Daemon()
    d.on("POST", STREAM, sse(body, 1))
    client, session = session_of(d, flavor)
    chunks = await collect(session.exec_stream("x"))
    assert chunks[0].output == "größe ✓\n"
    assert chunks[-1].done and chunks[-1].exit_code == 0 and chunks[-1].cwd == "/workspace"
    await aclose(client)


async def test_keep_alives_only_then_done(flavor: str) -> None:
    body = ": keep-alive\n\n" * 5 + 'event: done\ndata: {"exit_code": 0, "cwd": "/"}\n\n'
    d = Daemon()
    d.on("POST", STREAM, sse(body, 5))
    client, session = session_of(d, flavor)
    assert await collect(session.exec_stream("sleep 60")) == [
        ExecChunk("", done=True, exit_code=0, cwd="/")
    ]
    await aclose(client)


async def test_error_event_raises_after_earlier_chunks(flavor: str) -> None:
    body = (
        'event: chunk\ndata: {"chunk": "partial", "timestamp": 1}\n\n'
        ": keep-alive\n\n"
        'event: error\ndata: {"error": "the sandbox died"}\n\n'
    )
    d = Daemon()
    d.on("POST", STREAM, sse(body, 3))
    client, session = session_of(d, flavor)
    seen: list[ExecChunk] = []
    with pytest.raises(SandkastenStreamError, match="the sandbox died"):
        stream = session.exec_stream("x")
        if flavor == "async":
            async for chunk in stream:
                seen.append(chunk)
        else:
            for chunk in stream:
                seen.append(chunk)
    assert seen == [ExecChunk("partial", 1)]
    await aclose(client)


async def test_stream_without_done_raises(flavor: str) -> None:
    d = Daemon()
    d.on("POST", STREAM, sse('event: chunk\ndata: {"chunk": "a", "timestamp": 1}\n\n'))
    client, session = session_of(d, flavor)
    with pytest.raises(SandkastenStreamError, match="before its done event"):
        await collect(session.exec_stream("x"))
    await aclose(client)


async def test_nothing_is_read_after_done(flavor: str) -> None:
    body = BODY + 'event: chunk\ndata: {"chunk": "late", "timestamp": 9}\n\n'
    d = Daemon()
    d.on("POST", STREAM, sse(body))
    client, session = session_of(d, flavor)
    assert await collect(session.exec_stream("x")) == EXPECTED
    await aclose(client)


async def test_unknown_events_are_ignored(flavor: str) -> None:
    body = 'event: progress\ndata: {"pct": 50}\n\ndata: plain message\n\n' + BODY
    d = Daemon()
    d.on("POST", STREAM, sse(body))
    client, session = session_of(d, flavor)
    assert await collect(session.exec_stream("x")) == EXPECTED
    await aclose(client)


async def test_stream_http_errors_are_api_errors(flavor: str) -> None:
    d = Daemon()
    d.on("POST", STREAM, error(404, "SESSION_NOT_FOUND", "session s1 not found"))
    client, session = session_of(d, flavor)
    with pytest.raises(sandkasten.SessionNotFound, match="session s1 not found"):
        await collect(session.exec_stream("x"))
    d.on("POST", STREAM, error(400, "INVALID_REQUEST", "cmd must not be empty"))
    with pytest.raises(sandkasten.InvalidRequest):
        await collect(session.exec_stream(""))
    await aclose(client)


async def test_stream_transport_error_is_wrapped(flavor: str) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    d = Daemon()
    d.on("POST", STREAM, broken)
    client, session = session_of(d, flavor)
    with pytest.raises(SandkastenConnectionError):
        await collect(session.exec_stream("x"))
    assert len(d.requests) == 1  # a POST is never retried
    await aclose(client)


async def test_stream_request(flavor: str) -> None:
    d = Daemon()
    d.on("POST", STREAM, sse(BODY))
    client, session = session_of(d, flavor)
    await collect(session.exec_stream("echo hi", timeout_ms=5000, raw_output=True))
    request = d.requests[0]
    assert json.loads(request.content) == {"cmd": "echo hi", "timeout_ms": 5000, "raw_output": True}
    assert request.headers["accept"] == "text/event-stream"
    # Silence between events can last 10 s before a keep-alive: never time out below 30 s.
    assert request.extensions["timeout"]["read"] >= 30
    await aclose(client)


async def test_breaking_early_closes_the_response(flavor: str) -> None:
    d = Daemon()
    response = sse(BODY)
    body_stream = response.stream
    d.on("POST", STREAM, response)
    client, session = session_of(d, flavor)
    stream = session.exec_stream("x")
    if flavor == "async":
        first = await stream.__anext__()
        await stream.aclose()
    else:
        first = next(stream)
        stream.close()
    assert first == EXPECTED[0]
    assert body_stream.closed  # type: ignore[attr-defined]
    assert response.is_closed
    await aclose(client)
