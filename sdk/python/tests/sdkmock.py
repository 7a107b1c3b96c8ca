"""Helpers for unit tests: a scripted daemon behind ``httpx.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from sandkasten import SandboxClient, SyncSandboxClient

Handler = Callable[[httpx.Request], httpx.Response]

KEY = "sk-unit-test-key"
BASE = "http://sandkasten.test"

SESSION_JSON: dict[str, Any] = {
    "id": "2c0d6f",
    "image": "base",
    "status": "running",
    "cwd": "/workspace",
    "workspace_id": None,
    "created_at": "2026-11-28T15:34:36.889Z",
    "expires_at": "2026-11-28T16:04:36.889Z",
    "acquire_source": "cold",
}


def error(status: int, code: str, message: str = "boom", **details: Any) -> httpx.Response:
    """A Sandkasten error response."""
    return httpx.Response(status, json={"error_code": code, "message": message, "details": details})


class ChunkedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body delivered in the given pieces, for sync and async clients."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def sse(body: str, piece: int = 0) -> httpx.Response:
    """An event-stream response; ``piece`` > 0 splits the body into pieces of that many bytes."""
    raw = body.encode()
    pieces = [raw[i : i + piece] for i in range(0, len(raw), piece)] if piece else [raw]
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=ChunkedStream(pieces)
    )


class Daemon:
    """Routes ``(method, path)`` to handlers and records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler | list[Handler]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *handlers: Handler | httpx.Response | Any) -> None:
        """Answer ``method path`` with the handlers in turn (the last one repeats).

        A handler may be a function of the request, a ready response, a JSON
        value (200), or an exception instance to raise.
        """
        self.routes[(method, path)] = [self._wrap(h) for h in handlers]

    @staticmethod
    def _wrap(h: Any) -> Handler:
        if callable(h) and not isinstance(h, httpx.Response):
            return h  # type: ignore[no-any-return]
        if isinstance(h, BaseException):

            def raiser(request: httpx.Request) -> httpx.Response:
                raise h

            return raiser
        if isinstance(h, httpx.Response):
            return lambda request: h
        return lambda request: httpx.Response(200, json=h)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        handlers = self.routes.get(key)
        if not handlers:
            return error(404, "NOT_FOUND", f"no route for {request.method} {request.url.path}")
        assert isinstance(handlers, list)
        handler = handlers.pop(0) if len(handlers) > 1 else handlers[0]
        return handler(request)

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def async_client(self, **kwargs: Any) -> SandboxClient:
        kwargs.setdefault("retry_backoff", 0.0)
        return SandboxClient(
            base_url=BASE, api_key=KEY, transport=httpx.MockTransport(self.handle), **kwargs
        )

    def sync_client(self, **kwargs: Any) -> SyncSandboxClient:
        kwargs.setdefault("retry_backoff", 0.0)
        return SyncSandboxClient(
            base_url=BASE, api_key=KEY, transport=httpx.MockTransport(self.handle), **kwargs
        )


def body(request: httpx.Request) -> Any:
    """The JSON body of a recorded request."""
    return json.loads(request.content)


async def maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (async client), else return it (sync client)."""
    if hasattr(value, "__await__"):
        return await value
    return value


async def collect(stream: Any) -> list[Any]:
    """All items of an async or a sync iterator."""
    if hasattr(stream, "__aiter__"):
        return [item async for item in stream]
    return list(stream)


async def aclose(client: Any) -> None:
    """Close an async or a sync client."""
    await maybe(client.close())
