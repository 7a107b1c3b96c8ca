"""Unit tests of the shared core (mocked transport): both clients are shells
around the same plans, so they send the same requests and give the same
results; the async client does its local file I/O in worker threads.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

import sandkasten
from sandkasten import SandboxClient, Session, SyncSandboxClient, SyncSession, _core
from sdkmock import SESSION_JSON, ChunkedStream, Daemon, aclose, collect, error, maybe, sse

# One answer every JSON parser of the SDK accepts.
ANSWER: dict[str, Any] = SESSION_JSON | {
    "status": "ok",
    "exit_code": 0,
    "output": "out\n",
    "path": "/workspace/a",
    "paths": ["/workspace/a"],
    "entries": [{"name": "a", "type": "file", "size": 1}],
    "content_base64": "aGk=",
    "type": "file",
    "workspace_id": "w1",
    "images": {"base": {"target": 1}},
    "memory_bytes": 5,
}
STREAM = (
    'event: chunk\ndata: {"chunk": "hi\\n", "timestamp": 1}\n\n'
    ": keep-alive\n\n"
    'event: done\ndata: {"exit_code": 0, "cwd": "/tmp", "duration_ms": 3}\n\n'
)
TAR = b"0123456789abcdef" * 20_000  # 320 kB, five pieces of 64 KiB and a rest
DATA = bytes(range(256)) * 1000


@pytest.fixture(params=["async", "sync"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Broken(ChunkedStream):
    """A body the connection breaks off after 100 kB."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"x" * 100_000
        raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"x" * 100_000
        raise httpx.ReadError("connection reset")


def daemon(broken: bool = False) -> Daemon:
    """A daemon that answers every route: an SSE stream, metrics text, a tar
    (``broken``: broken off), or ANSWER.
    """
    d = Daemon()

    def handle(request: httpx.Request) -> httpx.Response:
        d.requests.append(request)
        path = request.url.path
        if broken and path.endswith("/export"):
            return httpx.Response(200, stream=Broken([]))
        if path.endswith("/exec/stream"):
            return sse(STREAM, piece=7)
        if path == "/metrics":
            return httpx.Response(200, text="sandkasten_up 1\n")
        if path.endswith("/export"):
            pieces = [TAR[i : i + 5000] for i in range(0, len(TAR), 5000)]
            return httpx.Response(200, stream=ChunkedStream(pieces))
        return httpx.Response(200, json=ANSWER)

    d.handle = handle  # type: ignore[method-assign]
    return d


def make(d: Daemon, flavor: str) -> tuple[Any, Any]:
    """A client and a session of that client (made without a request)."""
    if flavor == "async":
        client: Any = d.async_client(timeout=httpx.Timeout(20, connect=3))
        return client, Session(client, "s1")
    client = d.sync_client(timeout=httpx.Timeout(20, connect=3))
    return client, SyncSession(client, "s1")


def operations(tmp: Path) -> list[tuple[str, Callable[[Any, Any], Any]]]:
    """Every public method with arguments that exercise its request building."""
    local = tmp / "local.bin"
    if not local.exists():
        local.write_bytes(DATA)
    return [
        ("health", lambda c, s: c.health()),
        ("create_session", lambda c, s: c.create_session("python", 60, "w1", {"A": "b c"})),
        ("create_session bare", lambda c, s: c.create_session()),
        ("get_session", lambda c, s: c.get_session("a/b?c")),
        ("list_sessions", lambda c, s: c.list_sessions()),
        ("get_pool", lambda c, s: c.get_pool()),
        ("metrics", lambda c, s: c.metrics()),
        ("list_workspaces", lambda c, s: c.list_workspaces()),
        (
            "create_workspace",
            lambda c, s: c.create_workspace(
                "w2", {"team": "a"}, quota_mb=256, from_snapshot=("w1", "snap-1")
            ),
        ),
        ("create_workspace quota", lambda c, s: c.create_workspace("w2", quota_bytes=2**28)),
        ("get_workspace", lambda c, s: c.get_workspace("..")),
        ("delete_workspace", lambda c, s: c.delete_workspace("w1")),
        ("read_workspace_file", lambda c, s: c.read_workspace_file("w1", "a", max_bytes=9)),
        ("write_workspace_file", lambda c, s: c.write_workspace_file("w1", "a", b"\x00\xff")),
        ("list_workspace_files", lambda c, s: c.list_workspace_files("w1", "sub dir")),
        (
            "upload_workspace_file",
            lambda c, s: c.upload_workspace_file("w1", local, "in", "renamed"),
        ),
        ("create_snapshot", lambda c, s: c.create_snapshot("w1", "before")),
        ("list_snapshots", lambda c, s: c.list_snapshots("w1")),
        ("delete_snapshot", lambda c, s: c.delete_snapshot("w1", "snap-1")),
        ("restore_snapshot", lambda c, s: c.restore_snapshot("w1", "snap-1")),
        ("export to memory", lambda c, s: c.export_workspace("w1")),
        ("export to a path", lambda c, s: c.export_workspace("w1", tmp / "out.tar")),
        ("import bytes", lambda c, s: c.import_workspace("w1", b"tar bytes")),
        ("import a path", lambda c, s: c.import_workspace("w1", local)),
        ("import a file", lambda c, s: c.import_workspace("w1", io.BytesIO(DATA))),
        ("exec", lambda c, s: s.exec("echo hi", timeout_ms=100_000, raw_output=True)),
        ("exec_stream", lambda c, s: collect(s.exec_stream("echo hi", timeout_ms=5000))),
        ("write text", lambda c, s: s.write("a.py", "print('hé')")),
        ("write bytes", lambda c, s: s.write("a.bin", b"\x00\x01")),
        ("read", lambda c, s: s.read("a", max_bytes=3)),
        ("upload a path", lambda c, s: s.upload(local)),
        ("upload bytes", lambda c, s: s.upload(b"xyz", dest_path="/tmp", filename="x.txt")),
        ("upload a file", lambda c, s: s.upload(io.BytesIO(DATA), filename="f.bin")),
        ("list", lambda c, s: s.list("a")),
        ("stat", lambda c, s: s.stat("a")),
        ("mkdir", lambda c, s: s.mkdir("x/y", parents=False)),
        ("remove", lambda c, s: s.remove("x", recursive=True)),
        ("stats", lambda c, s: s.stats()),
        ("info", lambda c, s: s.info()),
        ("destroy", lambda c, s: s.destroy()),
    ]


def normalized(request: httpx.Request) -> dict[str, Any]:
    """What a request sends, with the random multipart boundary replaced."""
    headers = dict(request.headers)
    content = request.content
    m = re.search(r"boundary=([0-9a-f]+)", headers.get("content-type", ""))
    if m:
        headers["content-type"] = headers["content-type"].replace(m.group(1), "BOUNDARY")
        content = content.replace(m.group(1).encode(), b"BOUNDARY")
    return {
        "method": request.method,
        "url": str(request.url),
        "headers": headers,
        "content": content,
        "length": len(request.content),
        "timeout": request.extensions.get("timeout"),
    }


def comparable(result: Any) -> Any:
    """A result with the client-specific session class left out."""
    if isinstance(result, (Session, SyncSession)):
        return ("session", result.id, result.last_info)
    return result


async def test_both_clients_send_identical_requests(tmp_path: Path) -> None:
    seen: dict[str, list[tuple[str, Any, list[dict[str, Any]]]]] = {}
    for flavor in ("async", "sync"):
        d = daemon()
        client, session = make(d, flavor)
        seen[flavor] = []
        for label, op in operations(tmp_path):
            before = len(d.requests)
            result = await maybe(op(client, session))
            sent = [normalized(r) for r in d.requests[before:]]
            seen[flavor].append((label, comparable(result), sent))
        await aclose(client)
    assert len(seen["async"]) == len(seen["sync"]) > 30
    for (label, a_result, a_sent), (_, s_result, s_sent) in zip(
        seen["async"], seen["sync"], strict=True
    ):
        assert len(a_sent) == 1, label
        assert a_sent == s_sent, label
        assert a_result == s_result, label

    # Spot checks that the comparison saw real bodies.
    by_label = {label: sent[0] for label, _, sent in seen["sync"]}
    assert by_label["upload a path"]["content"].count(DATA) == 1
    assert by_label["upload a path"]["headers"]["content-length"] == str(
        by_label["upload a path"]["length"]
    )
    assert by_label["import a path"]["content"] == DATA
    assert by_label["import a path"]["headers"]["content-length"] == str(len(DATA))
    assert by_label["import a file"]["headers"]["transfer-encoding"] == "chunked"
    assert by_label["exec_stream"]["headers"]["accept"] == "text/event-stream"
    results = {label: result for label, result, _ in seen["async"]}
    assert results["export to memory"] == TAR and results["export to a path"] == len(TAR)
    assert [c.output for c in results["exec_stream"]] == ["hi\n", ""]


@pytest.mark.parametrize(
    ("async_cls", "sync_cls"), [(SandboxClient, SyncSandboxClient), (Session, SyncSession)]
)
def test_the_two_surfaces_match(async_cls: type, sync_cls: type) -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(async_cls) == public(sync_cls)
    for name in sorted(public(async_cls)):
        a, s = getattr(async_cls, name), getattr(sync_cls, name)
        if isinstance(a, property):
            assert isinstance(s, property) and a.__doc__ == s.__doc__, name
            continue

        def params(f: Any) -> list[tuple[str, Any, Any]]:
            return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

        assert params(a) == params(s), name
        streams = ("exec_stream", "run_process", "attach_process")
        assert inspect.iscoroutinefunction(a) == (name not in streams), name
        assert not inspect.iscoroutinefunction(s), name


# ------------------------------------------------------------------ local file I/O


class TrackedFile(io.BytesIO):
    """A binary file object that records the threads its methods run in."""

    def __init__(self, data: bytes = b"", name: str | None = None) -> None:
        super().__init__(data)
        self.threads: list[int] = []
        if name is not None:
            self.name = name

    def read(self, size: int | None = -1) -> bytes:
        self.threads.append(threading.get_ident())
        return super().read(size)

    def write(self, data: Any) -> int:
        self.threads.append(threading.get_ident())
        return super().write(data)


@pytest.fixture
def disk_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record the threads that open, test and remove local paths."""
    seen: list[tuple[str, int]] = []
    for name in ("open", "is_file", "unlink"):
        original = getattr(Path, name)

        def wrapper(self: Path, *args: Any, _f: Any = original, _n: str = name, **kw: Any) -> Any:
            seen.append((_n, threading.get_ident()))
            return _f(self, *args, **kw)

        monkeypatch.setattr(Path, name, wrapper)
    return seen


async def test_async_file_io_runs_in_worker_threads(
    tmp_path: Path, disk_threads: list[tuple[str, int]]
) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(DATA)
    d = daemon()
    client, session = make(d, "async")
    loop_thread = threading.get_ident()

    cases: list[tuple[str, Callable[[TrackedFile], Any], set[str]]] = [
        ("upload a path", lambda f: session.upload(local), {"is_file", "open"}),
        ("upload ws path", lambda f: client.upload_workspace_file("w1", local), {"open"}),
        ("import a path", lambda f: client.import_workspace("w1", local), {"is_file", "open"}),
        ("export to a path", lambda f: client.export_workspace("w1", tmp_path / "o"), {"open"}),
        ("upload a file", lambda f: session.upload(f, filename="f"), set()),
        ("import a file", lambda f: client.import_workspace("w1", f), set()),
        ("export to a file", lambda f: client.export_workspace("w1", f), set()),
    ]
    for label, op, path_ops in cases:
        disk_threads.clear()
        f = TrackedFile(DATA)
        await op(f)
        threads = [t for _, t in disk_threads] + f.threads
        assert threads, label
        assert loop_thread not in threads, label
        assert path_ops <= {name for name, _ in disk_threads}, label

    await aclose(client)

    # A failed export removes its partial file in a worker thread too.
    client, _ = make(daemon(broken=True), "async")
    disk_threads.clear()
    with pytest.raises(sandkasten.SandkastenConnectionError):
        await client.export_workspace("w1", tmp_path / "partial.tar")
    assert not (tmp_path / "partial.tar").exists()
    assert {"open", "unlink"} <= {name for name, _ in disk_threads}
    assert loop_thread not in [t for _, t in disk_threads]
    await aclose(client)


def test_sync_file_io_stays_in_the_calling_thread(
    tmp_path: Path, disk_threads: list[tuple[str, int]]
) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(DATA)
    client, session = make(daemon(), "sync")
    f = TrackedFile(DATA)
    disk_threads.clear()
    session.upload(local)
    client.import_workspace("w1", f)
    client.export_workspace("w1", tmp_path / "out.tar")
    assert {t for _, t in disk_threads} | set(f.threads) == {threading.get_ident()}
    client.close()


class SlowFile(io.BytesIO):
    """A local file on a slow disk: every read and write blocks for 20 ms."""

    def read(self, size: int | None = -1) -> bytes:
        time.sleep(0.02)
        return super().read(size)

    def write(self, data: Any) -> int:
        time.sleep(0.02)
        return super().write(data)


async def test_slow_local_files_do_not_block_the_event_loop() -> None:
    client, session = make(daemon(), "async")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    big = bytes(5 * _core.CHUNK_SIZE)  # 6 reads or 5 writes of 20 ms each
    for op in (
        lambda: client.import_workspace("w1", SlowFile(big)),
        lambda: session.upload(SlowFile(big), filename="big"),
        lambda: client.export_workspace("w1", SlowFile()),
    ):
        before = ticks
        await op()
        # Blocking reads or writes on the loop would leave the ticker ~0 turns.
        assert ticks - before >= 10
    task.cancel()
    await aclose(client)


@pytest.mark.parametrize("answer", [200, 409])
async def test_local_files_the_sdk_opens_are_closed(
    flavor: str, answer: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[IO[bytes]] = []
    original = _core._open_file

    def tracking(path: Any) -> IO[bytes]:
        f = original(path)
        opened.append(f)
        return f

    monkeypatch.setattr(_core, "_open_file", tracking)
    local = tmp_path / "a.tar"
    local.write_bytes(DATA)
    d = Daemon()
    reply = httpx.Response(200, json=ANSWER) if answer == 200 else error(409, "WORKSPACE_IN_USE")
    d.on("PUT", "/v1/workspaces/w1/import", reply)
    d.on("POST", "/v1/sessions/s1/fs/upload", reply)
    client, session = make(d, flavor)
    for op in (lambda: client.import_workspace("w1", local), lambda: session.upload(local)):
        if answer == 200:
            await maybe(op())
        else:
            with pytest.raises(sandkasten.WorkspaceInUse):
                await maybe(op())
    assert len(opened) == 2 and all(f.closed for f in opened)
    # A bad file name is refused after the path was opened: closed all the same.
    with pytest.raises(ValueError, match="upload filename"):
        await maybe(session.upload(local, filename=".."))
    assert len(opened) == 3 and opened[-1].closed
    await aclose(client)


# ------------------------------------------------------------------ plans


def test_runner_steps_through_a_plan() -> None:
    log: list[str] = []

    def failing() -> None:
        raise OSError("disk full")

    def plan() -> _core.Plan[str]:
        value = yield _core.Disk(lambda x: x * 2, (21,))
        log.append(f"got {value}")
        yield _core.Sleep(0.5)
        try:
            yield _core.Disk(failing)
        except OSError as exc:
            log.append(f"caught {exc}")
        return "done"

    run = _core.Runner(plan(), _core.Retry())
    steps: list[Any] = []
    while not run.done:
        steps.append(run.step)
        if isinstance(run.step, _core.Disk):
            try:
                run.reply(run.step.fn(*run.step.args))
            except OSError as exc:
                run.fail(exc)
        else:
            run.reply(None)
    assert run.result == "done" and log == ["got 42", "caught disk full"]
    assert [type(s).__name__ for s in steps] == ["Disk", "Sleep", "Disk"]


async def test_both_clients_run_the_same_plan(flavor: str) -> None:
    client, _ = make(daemon(), flavor)
    caller = threading.get_ident()

    def plan() -> _core.Plan[tuple[bool, dict[str, Any]]]:
        thread = yield _core.Disk(threading.get_ident)
        yield _core.Sleep(0)
        answer = yield from _core.send(_core.Call("GET", "/anything", dict), client._retry)
        return thread == caller, answer

    same_thread, answer = await maybe(client._run(plan()))
    assert same_thread == (flavor == "sync") and answer == ANSWER
    await aclose(client)


def test_exec_stream_decoder() -> None:
    events = sandkasten._sse.ExecStream()
    lines = STREAM.split("\n")
    chunks = [c for c in map(events.feed, lines) if c is not None]
    assert [c.done for c in chunks] == [False, True] and events.done
    assert list(events.finish()) == []

    unfinished = sandkasten._sse.ExecStream()
    assert unfinished.feed("event: chunk") is None
    assert unfinished.feed('data: {"chunk": "x"}') is None
    it: Iterator[Any] = unfinished.finish()
    assert next(it).output == "x"  # the event without its blank line still counts
    with pytest.raises(sandkasten.SandkastenStreamError, match="before its done"):
        next(it)
