"""Integration tests of the async client against the real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import sandkasten
from conftest import POOL_FILL_TIMEOUT, POOL_SIZE, metric_value
from sandkasten import (
    ExecChunk,
    ImagePoolInfo,
    SandboxClient,
    Session,
)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
async def session(aclient: SandboxClient) -> AsyncIterator[Session]:
    s = await aclient.create_session()
    yield s
    with contextlib.suppress(sandkasten.SessionNotFound):
        await s.destroy()


async def test_health(aclient: SandboxClient) -> None:
    assert await aclient.health() is True


async def test_session_lifecycle(aclient: SandboxClient) -> None:
    session = await aclient.create_session(image="base", ttl_seconds=600)
    info = session.last_info
    assert info is not None
    assert info.id == session.id and info.image == "base" and info.status == "running"
    assert info.cwd == "/workspace" and info.workspace_id is None
    assert info.acquire_source in ("cold", "pool")
    assert 590 <= (ts(info.expires_at) - ts(info.created_at)).total_seconds() <= 610

    assert session.id in [s.id for s in await aclient.list_sessions()]
    again = await aclient.get_session(session.id)
    assert again.id == session.id
    fresh = await again.info()
    assert fresh.id == session.id and fresh.acquire_source == info.acquire_source

    stats = await session.stats()
    assert stats.memory_limit > 0 and stats.pids >= 1 and stats.memory_bytes > 0

    await session.destroy()
    assert session.id not in [s.id for s in await aclient.list_sessions()]
    with pytest.raises(sandkasten.SessionNotFound) as err:
        await session.info()
    assert err.value.status_code == 404 and err.value.details["session_id"] == session.id
    with pytest.raises(sandkasten.SessionNotFound):
        await session.destroy()
    with pytest.raises(sandkasten.SessionNotFound):
        await aclient.get_session(session.id)


async def test_session_context_manager_destroys(aclient: SandboxClient) -> None:
    async with await aclient.create_session() as session:
        assert (await session.exec("echo in")).output == "in\n"
    with pytest.raises(sandkasten.SessionNotFound):
        await aclient.get_session(session.id)


async def test_create_errors(aclient: SandboxClient) -> None:
    with pytest.raises(sandkasten.InvalidImage):
        await aclient.create_session(image="no-such-image")
    for bad in ("..", "a/b", "-x", ".hidden", "x" * 65):
        with pytest.raises(sandkasten.InvalidWorkspace):
            await aclient.create_session(workspace_id=bad)
    with pytest.raises(sandkasten.InvalidRequest):
        await aclient.create_session(ttl_seconds=0)


async def test_unauthorized(daemon: Any) -> None:
    async with SandboxClient(base_url=daemon.url, api_key="sk-wrong-key") as bad:
        with pytest.raises(sandkasten.Unauthorized) as err:
            await bad.list_sessions()
        assert err.value.status_code == 401 and err.value.error_code == "UNAUTHORIZED"


async def test_exec_state_persists(session: Session) -> None:
    r = await session.exec("cd /tmp && export GREETING=hi && f() { echo fn-$1; }")
    assert r.exit_code == 0 and r.cwd == "/tmp" and not r.timed_out
    r = await session.exec("echo $GREETING from $(pwd); f x")
    assert r.output == "hi from /tmp\nfn-x\n" and r.cwd == "/tmp"
    assert (await session.info()).cwd == "/tmp"

    r = await session.exec("echo out; echo err >&2; exit 3")
    assert r.exit_code == 3 and r.output == "out\nerr\n"
    r = await session.exec("pwd")  # a fresh shell, in the last cwd
    assert r.output == "/tmp\n" and r.exit_code == 0


async def test_exec_timeout_and_raw_output(session: Session) -> None:
    r = await session.exec("echo before; sleep 10", timeout_ms=500)
    assert r.timed_out and r.exit_code == 124 and "before" in r.output
    assert r.duration_ms >= 500
    assert (await session.exec("echo still usable")).output == "still usable\n"

    plain = await session.exec("printf '\\033[31mred\\033[0m\\n'")
    raw = await session.exec("printf '\\033[31mred\\033[0m\\n'", raw_output=True)
    assert plain.output == "red\n"
    assert "\x1b[31m" in raw.output

    with pytest.raises(sandkasten.InvalidRequest):
        await session.exec("")


async def test_exec_long_command_outlives_the_client_timeout(daemon: Any) -> None:
    """An exec waits for its own timeout_ms, not the client's shorter HTTP timeout."""
    async with (
        SandboxClient(
            base_url=daemon.url,
            api_key=daemon.api_key,
            timeout=1.0,
        ) as client,
        await client.create_session() as session,
    ):
        r = await session.exec("sleep 2; echo done", timeout_ms=10_000)
        assert r.output == "done\n" and not r.timed_out


async def test_exec_stream(session: Session) -> None:
    started = time.monotonic()
    chunks: list[ExecChunk] = []
    first_at = None
    async for chunk in session.exec_stream("cd /tmp; for i in 1 2 3; do echo $i; sleep 0.4; done"):
        if first_at is None:
            first_at = time.monotonic() - started
        chunks.append(chunk)
    total = time.monotonic() - started
    assert "".join(c.output for c in chunks) == "1\n2\n3\n"
    assert first_at is not None and first_at < total - 0.5  # output arrives as produced
    done = chunks[-1]
    assert done.done and done.exit_code == 0 and done.cwd == "/tmp"
    assert done.duration_ms >= 1000 and not done.timed_out
    assert all(not c.done for c in chunks[:-1])
    assert all(c.timestamp > 0 for c in chunks[:-1])

    chunks = [c async for c in session.exec_stream("sleep 5", timeout_ms=300)]
    assert chunks[-1].done and chunks[-1].timed_out and chunks[-1].exit_code == 124

    with pytest.raises(sandkasten.InvalidRequest):
        async for _ in session.exec_stream(""):
            pass


async def test_exec_stream_keep_alive(session: Session) -> None:
    """A command silent for more than the daemon's 10 s keep-alive interval."""
    chunks = [c async for c in session.exec_stream("sleep 11; echo late", timeout_ms=20_000)]
    assert "".join(c.output for c in chunks) == "late\n"
    assert chunks[-1].done and chunks[-1].exit_code == 0


async def test_exec_stream_break_interrupts(session: Session) -> None:
    stream = session.exec_stream("echo start; sleep 30; echo never")
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for chunk in stream:
            assert chunk.output == "start\n"
            break
    started = time.monotonic()
    r = await session.exec("echo next")  # the shell is free again soon
    assert r.output == "next\n"
    assert time.monotonic() - started < 15


async def test_processes(session: Session) -> None:
    events = [
        e async for e in session.run_process(argv=["sh", "-c", "echo out; echo err >&2; exit 3"])
    ]
    assert events[0].kind == "start" and events[0].info is not None
    out = b"".join(e.data for e in events if e.kind == "stdout")
    err = b"".join(e.data for e in events if e.kind == "stderr")
    assert (out, err) == (b"out\n", b"err\n")
    assert events[-1].done and events[-1].exit_code == 3

    info = await session.start_process(argv=["cat"], stdin=True, tag="cat")
    assert info.running and info.tag == "cat" and info.stdin
    await session.send_stdin("cat", "hello ")
    await session.send_stdin(info.pid, b"world", close=True)
    replay = [e async for e in session.attach_process("cat")]
    assert b"".join(e.data for e in replay if e.kind == "stdout") == b"hello world"
    assert replay[-1].exit_code == 0
    with pytest.raises(sandkasten.ProcessEnded):
        await session.send_stdin("cat", "late")

    await session.start_process("sleep 100", tag="sleeper")
    await session.signal_process("sleeper", "KILL")
    ended = [e async for e in session.attach_process("sleeper", replay=False)]
    assert ended[-1].signal == 9 and ended[-1].exit_code == 137
    assert [p.tag for p in await session.processes()] == [None, "cat", "sleeper"]
    assert (await session.process("sleeper")).running is False

    term = [
        e.data
        async for e in session.run_process(argv=["sh", "-c", "stty size"], pty=(24, 80))
        if e.kind == "pty"
    ]
    assert b"".join(term) == b"24 80\r\n"
    with pytest.raises(sandkasten.ProcessNotFound):
        await session.process("nosuch")
    with pytest.raises(sandkasten.ProcessStartFailed):
        await session.start_process(argv=["no-such-program-here"])


async def test_pause_resume(session: Session) -> None:
    await session.exec("export KEPT=yes")
    info = await session.pause()
    assert info.status == "paused"
    with pytest.raises(sandkasten.SessionNotRunning):
        await session.pause()
    info = await session.resume()
    assert info.status == "running"
    with pytest.raises(sandkasten.SessionNotPaused):
        await session.resume()
    await session.pause()
    # Any call resumes.
    assert (await session.exec("echo $KEPT")).output == "yes\n"
    assert (await session.info()).status == "running"


async def test_write_read(session: Session) -> None:
    await session.write("hello.py", "print(6*7)")
    assert (await session.exec("python3 hello.py")).output == "42\n"
    r = await session.read("hello.py")
    assert r.content == b"print(6*7)" and r.path == "/workspace/hello.py" and not r.truncated
    assert str(r) == "print(6*7)"

    blob = bytes(range(256)) * 4
    await session.write("/tmp/deep/dir/blob.bin", blob)
    assert (await session.read("/tmp/deep/dir/blob.bin")).content == blob
    part = await session.read("/tmp/deep/dir/blob.bin", max_bytes=10)
    assert part.content == blob[:10] and part.truncated

    await session.write("empty.txt", "")
    assert (await session.read("empty.txt")).content == b""
    await session.write("unicode.txt", "größe ✓")
    assert (await session.read("unicode.txt")).text == "größe ✓"

    with pytest.raises(sandkasten.FileNotFound):
        await session.read("missing.txt")
    with pytest.raises(sandkasten.InvalidPath):
        await session.read("/tmp")
    with pytest.raises(sandkasten.PermissionDenied):
        await session.write("/usr/evil", "x")


async def test_upload(session: Session, tmp_path: Path) -> None:
    local = tmp_path / "data.bin"
    local.write_bytes(bytes(range(256)))
    assert await session.upload(local) == ["/workspace/data.bin"]
    assert (await session.read("data.bin")).content == bytes(range(256))

    assert await session.upload(str(local), dest_path="/workspace/in", filename="copy.bin") == [
        "/workspace/in/copy.bin"
    ]
    assert await session.upload(b"raw", filename="raw.txt", dest_path="/tmp") == ["/tmp/raw.txt"]
    assert await session.upload(io.BytesIO(b"mem"), filename="mem.txt") == ["/workspace/mem.txt"]
    with local.open("rb") as f:
        assert await session.upload(f, dest_path="/workspace/f") == ["/workspace/f/data.bin"]
    assert (await session.read("/tmp/raw.txt")).content == b"raw"
    assert (await session.read("mem.txt")).content == b"mem"
    assert (await session.read("f/data.bin")).content == bytes(range(256))
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError, match="filename"):
            await session.upload(b"x", filename=bad)


async def test_list_stat_mkdir_remove(session: Session) -> None:
    assert await session.mkdir("a/b/c") == "/workspace/a/b/c"
    assert await session.mkdir("a/b/c") == "/workspace/a/b/c"  # parents: existing is fine
    with pytest.raises(sandkasten.AlreadyExists):
        await session.mkdir("a/b/c", parents=False)
    await session.write("a/file.txt", "abc")
    await session.exec("ln -s /etc /workspace/a/link")

    entries = await session.list("a")
    assert [(e.name, e.type) for e in entries] == [
        ("b", "dir"),
        ("file.txt", "file"),
        ("link", "symlink"),
    ]
    f = entries[1]
    assert f.size == 3 and f.mode == 0o644 and f.mtime > 0 and f.is_file
    assert [e.name for e in await session.list()] == ["a"]

    st = await session.stat("a/link")
    assert st.type == "symlink" and st.link_target == "/etc" and st.path == "/workspace/a/link"
    st = await session.stat("a/file.txt")
    assert st.is_file and st.size == 3 and st.uid == 1000 and st.gid == 1000
    assert (await session.stat("/workspace")).is_dir
    with pytest.raises(sandkasten.FileNotFound):
        await session.stat("nope")
    with pytest.raises(sandkasten.FileNotFound):
        await session.list("nope")

    with pytest.raises(sandkasten.InvalidPath):
        await session.remove("a")  # not empty
    await session.remove("a/file.txt")
    await session.remove("a/link")  # the link, not /etc
    assert (await session.stat("/etc")).is_dir
    await session.remove("a", recursive=True)
    assert await session.list() == []
    with pytest.raises(sandkasten.FileNotFound):
        await session.remove("a")


async def test_workspaces(aclient: SandboxClient, unique: str) -> None:
    wid = f"sdk-async-{unique}"
    info = await aclient.create_workspace(wid, labels={"team": "a"})
    assert info.id == wid and info.labels == {"team": "a"} and not info.in_use
    assert info.last_used_at is None
    with pytest.raises(sandkasten.AlreadyExists):
        await aclient.create_workspace(wid)
    assert wid in [w.id for w in await aclient.list_workspaces()]

    # Session-less file access.
    await aclient.write_workspace_file(wid, "notes/a.txt", "from outside")
    await aclient.write_workspace_file(wid, "bin.dat", b"\x00\xff")
    assert (await aclient.read_workspace_file(wid, "/workspace/notes/a.txt")).content == (
        b"from outside"
    )
    r = await aclient.read_workspace_file(wid, "/notes/a.txt", max_bytes=4)
    assert r.content == b"from" and r.truncated and r.path == "/workspace/notes/a.txt"
    assert [e.name for e in await aclient.list_workspace_files(wid)] == ["bin.dat", "notes"]
    assert [e.name for e in await aclient.list_workspace_files(wid, "notes")] == ["a.txt"]
    assert await aclient.upload_workspace_file(wid, b"up", filename="u.txt", dest_path="notes") == [
        "/workspace/notes/u.txt"
    ]
    with pytest.raises(sandkasten.FileNotFound):
        await aclient.read_workspace_file(wid, "missing")

    async with await aclient.create_session(workspace_id=wid) as session:
        assert session.last_info is not None and session.last_info.workspace_id == wid
        r2 = await session.exec("cat notes/a.txt notes/u.txt; stat -c %u notes/a.txt")
        assert r2.output == "from outsideup1000\n"
        ws = await aclient.get_workspace(wid)
        assert ws.in_use and ws.last_used_at is not None and ws.size_bytes >= 16
        with pytest.raises(sandkasten.WorkspaceInUse) as err:
            await aclient.delete_workspace(wid)
        assert err.value.details["session_id"] == session.id

    await aclient.delete_workspace(wid)
    with pytest.raises(sandkasten.WorkspaceNotFound):
        await aclient.get_workspace(wid)
    with pytest.raises(sandkasten.WorkspaceNotFound):
        await aclient.delete_workspace(wid)
    with pytest.raises(sandkasten.InvalidWorkspace):
        await aclient.get_workspace("..")


async def test_parallel_sessions(aclient: SandboxClient) -> None:
    sessions = await asyncio.gather(*(aclient.create_session() for _ in range(3)))
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(s.exec("sleep 1; hostname") for s in sessions))
        assert time.monotonic() - started < 2.8  # sessions run in parallel
        assert all(r.exit_code == 0 for r in results)
    finally:
        await asyncio.gather(*(s.destroy() for s in sessions))


async def test_quota_and_snapshots(aclient: SandboxClient, unique: str) -> None:
    wid = f"sdk-snap-{unique}"
    ws = await aclient.create_workspace(wid, quota_mb=128)
    assert ws.quota_bytes == 128 * 2**20
    with pytest.raises(sandkasten.InvalidRequest):
        await aclient.create_workspace(f"{wid}-tiny", quota_bytes=2**20)
    try:
        await aclient.write_workspace_file(wid, "state.txt", "v1")
        snap = await aclient.create_snapshot(wid, label="v1")
        assert snap.id.startswith("snap-") and snap.workspace_id == wid and snap.label == "v1"
        assert snap.created_at

        async with await aclient.create_session(workspace_id=wid) as session:
            await session.write("state.txt", "v2")
            # A snapshot while a session writes; the quota is enforced inside the sandbox.
            during = await aclient.create_snapshot(wid)
            assert during.label is None
            full = await session.exec("head -c 200M /dev/zero > big.bin; echo rc=$?")
            assert "No space left on device" in full.output and "rc=1" in full.output
            await session.remove("big.bin")
            with pytest.raises(sandkasten.WorkspaceInUse):
                await aclient.restore_snapshot(wid, snap.id)

        assert [s.id for s in await aclient.list_snapshots(wid)] == [snap.id, during.id]
        await aclient.restore_snapshot(wid, snap.id)
        assert (await aclient.read_workspace_file(wid, "state.txt")).text == "v1"
        await aclient.restore_snapshot(wid, during.id)
        assert (await aclient.read_workspace_file(wid, "state.txt")).text == "v2"

        await aclient.delete_snapshot(wid, during.id)
        with pytest.raises(sandkasten.SnapshotNotFound):
            await aclient.delete_snapshot(wid, during.id)
        with pytest.raises(sandkasten.SnapshotNotFound):
            await aclient.restore_snapshot(wid, "snap-0123456789abcdef")
        with pytest.raises(sandkasten.InvalidRequest):  # not the daemon's id format
            await aclient.restore_snapshot(wid, "snap-nope")
        assert [s.id for s in await aclient.list_snapshots(wid)] == [snap.id]
    finally:
        await aclient.delete_workspace(wid)
    with pytest.raises(sandkasten.WorkspaceNotFound):
        await aclient.list_snapshots(wid)


def tar_contents(data: bytes) -> dict[str, Any]:
    """name -> file content (bytes), ``"dir"``, or ``("symlink", target)``."""
    out: dict[str, Any] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isdir():
                out[m.name] = "dir"
            elif m.issym():
                out[m.name] = ("symlink", m.linkname)
            else:
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


async def test_export_import_round_trip(
    aclient: SandboxClient, unique: str, tmp_path: Path
) -> None:
    src, dst = f"sdk-exp-{unique}", f"sdk-imp-{unique}"
    await aclient.create_workspace(src)
    await aclient.create_workspace(dst)
    try:
        await aclient.write_workspace_file(src, "notes/a.txt", "hello")
        await aclient.write_workspace_file(src, "bin.dat", bytes(range(256)) * 1000)
        async with await aclient.create_session(workspace_id=src) as session:
            assert (await session.exec("ln -s notes/a.txt link && chmod 700 notes")).exit_code == 0
            # Export works while a session uses the workspace.
            tar = await aclient.export_workspace(src)
        assert isinstance(tar, bytes)
        assert tar_contents(tar) == {
            "bin.dat": bytes(range(256)) * 1000,
            "link": ("symlink", "notes/a.txt"),
            "notes": "dir",
            "notes/a.txt": b"hello",
        }

        await aclient.write_workspace_file(dst, "old.txt", "replaced by the import")
        assert await aclient.import_workspace(dst, tar) is None
        assert sorted(e.name for e in await aclient.list_workspace_files(dst)) == [
            "bin.dat",
            "link",
            "notes",
        ]
        assert (await aclient.read_workspace_file(dst, "notes/a.txt")).text == "hello"
        async with await aclient.create_session(workspace_id=dst) as session:
            r = await session.exec("cat link; stat -c '%a %u' notes")
            assert r.output == "hello700 1000\n"
            # Import while a session mounts the workspace: refused, content intact.
            with pytest.raises(sandkasten.WorkspaceInUse):
                await aclient.import_workspace(dst, tar)

        # Export to a file, chunk by chunk, and import from that path and a file object.
        path = tmp_path / "src.tar"
        written = await aclient.export_workspace(src, path)
        assert written == path.stat().st_size and tar_contents(path.read_bytes()) == tar_contents(
            tar
        )
        await aclient.write_workspace_file(dst, "extra.txt", "x")
        await aclient.import_workspace(dst, path)
        assert tar_contents(await aclient.export_workspace(dst)) == tar_contents(tar)
        with path.open("rb") as f:
            await aclient.import_workspace(dst, f)
        buf = io.BytesIO()
        assert await aclient.export_workspace(dst, buf) == len(buf.getvalue())
        assert tar_contents(buf.getvalue()) == tar_contents(tar)

        # Errors map to the SDK's exceptions.
        with pytest.raises(sandkasten.InvalidRequest):
            await aclient.import_workspace(dst, b"this is not a tar archive" * 100)
        assert (await aclient.read_workspace_file(dst, "notes/a.txt")).text == "hello"
        with pytest.raises(sandkasten.WorkspaceNotFound):
            await aclient.import_workspace(f"sdk-none-{unique}", tar)
        with pytest.raises(sandkasten.WorkspaceNotFound):
            await aclient.export_workspace(f"sdk-none-{unique}", tmp_path / "none.tar")
        assert not (tmp_path / "none.tar").exists()
    finally:
        await aclient.delete_workspace(src)
        await aclient.delete_workspace(dst)


async def test_create_workspace_from_snapshot(aclient: SandboxClient, unique: str) -> None:
    src, copy = f"sdk-fs-src-{unique}", f"sdk-fs-copy-{unique}"
    await aclient.create_workspace(src, quota_mb=128)
    try:
        await aclient.write_workspace_file(src, "state.txt", "v1")
        await aclient.write_workspace_file(src, "dir/deep.txt", "deep")
        snap = await aclient.create_snapshot(src, label="v1")
        await aclient.write_workspace_file(src, "state.txt", "v2")
        await aclient.write_workspace_file(src, "later.txt", "after the snapshot")

        info = await aclient.create_workspace(copy, from_snapshot=(src, snap.id))
        assert info.id == copy and info.quota_bytes == 128 * 2**20  # the source's quota
        try:
            # The copy holds exactly the snapshot's content.
            await aclient.restore_snapshot(src, snap.id)
            assert tar_contents(await aclient.export_workspace(copy)) == tar_contents(
                await aclient.export_workspace(src)
            )
            assert (await aclient.read_workspace_file(copy, "state.txt")).text == "v1"
            with pytest.raises(sandkasten.FileNotFound):
                await aclient.read_workspace_file(copy, "later.txt")
        finally:
            await aclient.delete_workspace(copy)

        with pytest.raises(sandkasten.SnapshotNotFound):
            await aclient.create_workspace(copy, from_snapshot=(src, "snap-0123456789abcdef"))
        with pytest.raises(sandkasten.WorkspaceNotFound):
            await aclient.create_workspace(copy, from_snapshot=(f"sdk-none-{unique}", snap.id))
        with pytest.raises(sandkasten.WorkspaceNotFound):
            await aclient.get_workspace(copy)  # nothing created on failure
    finally:
        await aclient.delete_workspace(src)


# ------------------------------------------------------------------ env, pool and metrics


async def wait_for_full_pool(client: SandboxClient, image: str = "base") -> ImagePoolInfo:
    """Poll ``get_pool`` until ``image`` has :data:`POOL_SIZE` idle sandboxes (bounded)."""
    deadline = time.monotonic() + POOL_FILL_TIMEOUT
    while True:
        info = (await client.get_pool()).images[image]
        if info.idle == POOL_SIZE:
            return info
        if time.monotonic() > deadline:
            pytest.fail(f"the pool of {image!r} is not full after {POOL_FILL_TIMEOUT} s: {info}")
        await asyncio.sleep(0.05)


async def test_env_on_a_cold_create(aclient: SandboxClient) -> None:
    env = {
        "GREETING": "hi there",
        "EMPTY": "",
        "TRICKY": "a'b\"c $HOME `x`\nline 2",
        "HOME": "/tmp",
    }
    async with await aclient.create_session(env=env) as session:
        assert session.last_info is not None and session.last_info.acquire_source == "cold"
        r = await session.exec('echo "$GREETING"; pwd; printf "[%s]\\n" "$EMPTY"; echo "$TRICKY"')
        assert r.output == "hi there\n/workspace\n[]\na'b\"c $HOME `x`\nline 2\n"
        assert (await session.exec("echo $HOME")).output == "/tmp\n"  # overrides the default
        # A fresh shell (after exit or a timeout) has the env too.
        assert (await session.exec("exit 3")).exit_code == 3
        assert (await session.exec('echo "$GREETING"')).output == "hi there\n"
    async with await aclient.create_session() as plain:
        assert (await plain.exec('echo "[$GREETING]"; echo $HOME')).output == "[]\n/home/sandbox\n"
    for bad in ({"1BAD": "x"}, {"A=B": "x"}, {"A": "x\0y"}, {"BIG": "x" * 70_000}):
        with pytest.raises(sandkasten.InvalidRequest, match="env"):
            await aclient.create_session(env=bad)


async def test_no_pool_and_metrics_of_a_daemon_without_pool(aclient: SandboxClient) -> None:
    assert (await aclient.get_pool()).images == {}
    async with await aclient.create_session():
        text = await aclient.metrics()
    assert "# TYPE sandkasten_pool_hits_total counter" in text
    assert "sandkasten_pool_hits_total{" not in text  # no pooled image
    assert metric_value(text, 'sandkasten_session_creates_total{source="cold"}') >= 1
    assert metric_value(text, 'sandkasten_session_creates_total{source="pool"}') == 0
    assert metric_value(text, 'sandkasten_sessions{state="running"}') >= 1


async def test_pooled_create_with_workspace_and_env(
    pooled_aclient: SandboxClient, unique: str
) -> None:
    client = pooled_aclient
    before = await wait_for_full_pool(client)
    assert before.target == POOL_SIZE and before.refill_failures == 0 and before.last_error is None

    async with await client.create_session() as plain:
        assert plain.last_info is not None and plain.last_info.acquire_source == "pool"
        assert (await plain.info()).acquire_source == "pool"
        r = await plain.exec("echo ok; pwd")
        assert r.output == "ok\n/workspace\n" and r.exit_code == 0

    await wait_for_full_pool(client)
    wid = f"sdk-pool-{unique}"
    session = await client.create_session(workspace_id=wid, env={"GREETING": "hi there"})
    try:
        info = session.last_info
        assert info is not None and info.acquire_source == "pool" and info.workspace_id == wid
        r = await session.exec("echo $GREETING; pwd")
        assert r.output == "hi there\n/workspace\n" and r.exit_code == 0 and r.cwd == "/workspace"
        await session.exec("echo written in the pooled session > from-session.txt")
        # The session-less workspace API sees the file at once, and the session sees its files.
        seen = await client.read_workspace_file(wid, "from-session.txt")
        assert seen.text == "written in the pooled session\n"
        await client.write_workspace_file(wid, "from-api.txt", "written without a session")
        assert (await session.exec("cat /workspace/from-api.txt")).output == (
            "written without a session"
        )
        assert (await client.get_workspace(wid)).in_use
    finally:
        await session.destroy()
    names = [e.name for e in await client.list_workspace_files(wid)]
    assert names == ["from-api.txt", "from-session.txt"]
    await client.delete_workspace(wid)

    after = (await client.get_pool()).images["base"]
    assert after.hits == before.hits + 2 and after.misses == before.misses
    assert after.acquire_wait_p50_ms is not None and after.acquire_wait_p50_ms >= 0
    assert after.acquire_wait_p95_ms is not None
    assert after.acquire_wait_p95_ms >= after.acquire_wait_p50_ms

    text = await client.metrics()
    assert 'sandkasten_pool_hits_total{image="base"}' in text
    assert metric_value(text, 'sandkasten_pool_hits_total{image="base"}') == after.hits
    assert metric_value(text, 'sandkasten_pool_target{image="base"}') == POOL_SIZE
    assert metric_value(text, 'sandkasten_session_creates_total{source="pool"}') >= 2


async def test_hibernate_and_the_timeout_fields(aclient: SandboxClient) -> None:
    s = await aclient.create_session(
        on_timeout="hibernate", idle_timeout_seconds=600, metadata={"owner": "sdk"}
    )
    try:
        assert s.last_info.on_timeout == "hibernate"
        assert s.last_info.idle_timeout_seconds == 600
        assert s.last_info.metadata == {"owner": "sdk"}
        await s.exec("export KEPT=yes; echo f > /tmp/f")
        info = await s.hibernate()
        assert info.status == "hibernated"
        with pytest.raises(sandkasten.SessionNotRunning):
            await s.hibernate()
        # Any call wakes it on its kept state.
        assert (await s.exec("cat /tmp/f; echo $KEPT")).output == "f\nyes\n"
        await s.hibernate()
        assert (await s.resume()).status == "running"
    finally:
        await s.destroy()


async def test_snapshot_and_fork(aclient: SandboxClient) -> None:
    s = await aclient.create_session()
    made = [s]
    try:
        await s.exec("echo kept > /home/sandbox/k && echo w > /workspace/w")
        snap = await s.snapshot("t")
        assert snap.id.startswith("ssnap-") and snap.session_id == s.id
        assert any(x.id == snap.id for x in await aclient.sandbox_snapshots())
        child = await aclient.create_session(from_snapshot=snap.id)
        made.append(child)
        assert (await child.exec("cat /home/sandbox/k /workspace/w")).output == "kept\nw\n"
        kids = await s.fork(2)
        made.extend(kids)
        assert len(kids) == 2 and len({k.id for k in kids}) == 2
        for k in kids:
            assert (await k.exec("cat /home/sandbox/k")).output == "kept\n"
        with pytest.raises(sandkasten.InvalidRequest):
            await s.fork(0)
        await aclient.delete_sandbox_snapshot(snap.id)
        with pytest.raises(sandkasten.SnapshotNotFound):
            await aclient.delete_sandbox_snapshot(snap.id)
    finally:
        for x in made:
            await x.destroy()
