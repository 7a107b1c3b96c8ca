"""The official E2B Python SDK (``e2b`` 2.x from PyPI, ``Sandbox`` and
``AsyncSandbox``) against the real daemon, through its documented flows,
configured only by ``E2B_API_URL``, ``E2B_SANDBOX_URL`` and ``E2B_API_KEY``
(see conftest.py).
"""

from __future__ import annotations

import io
import uuid

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    PtySize,
    Sandbox,
    SandboxQuery,
    SandboxState,
)
from e2b.exceptions import NotFoundException, TimeoutException


def test_create_with_metadata_and_envs(daemon):
    sb = Sandbox.create(metadata={"suite": "e2b", "case": "create"}, envs={"GREETING": "hallo"})
    try:
        info = sb.get_info()
        assert info.metadata == {"suite": "e2b", "case": "create"}
        assert info.template_id == "base"
        assert info.state.value == "running"
        # Our own API shows the same session with its metadata and env.
        status, own = daemon.api("GET", f"/v1/sessions/{sb.sandbox_id}")
        assert status == 200 and own["metadata"] == {"suite": "e2b", "case": "create"}
        assert daemon.sh(sb.sandbox_id, "echo $GREETING").strip() == "hallo"
        assert sb.is_running()
    finally:
        assert sb.kill()


def test_files(daemon):
    sb = Sandbox.create()
    try:
        f = sb.files
        info = f.write("/workspace/hello.txt", "hello e2b\n")
        assert (info.name, info.path) == ("hello.txt", "/workspace/hello.txt")
        assert f.read("/workspace/hello.txt") == "hello e2b\n"
        blob = bytes(range(256)) * 64
        f.write("/workspace/bin/blob", blob)
        assert bytes(f.read("/workspace/bin/blob", format="bytes")) == blob
        # Streams both ways: a file object up, an iterator of chunks down.
        f.write("/workspace/bin/streamed", io.BytesIO(blob))
        assert b"".join(f.read("/workspace/bin/streamed", format="stream")) == blob
        # Several files at once (multipart, paths in the file names).
        written = f.write_files(
            [
                {"path": "/workspace/multi/a.txt", "data": "a"},
                {"path": "/workspace/multi/b.txt", "data": b"b"},
            ]
        )
        assert sorted(w.path for w in written) == [
            "/workspace/multi/a.txt",
            "/workspace/multi/b.txt",
        ]
        # The shell sees what the SDK wrote, owned by the sandbox user.
        assert (
            daemon.sh(sb.sandbox_id, "cat /workspace/multi/b.txt; stat -c %u /workspace/hello.txt")
            == "b1000\n"
        )

        top = {e.name: e for e in f.list("/workspace")}
        assert {"hello.txt", "bin", "multi"} <= set(top)
        assert top["bin"].type.value == "dir" and top["hello.txt"].type.value == "file"
        assert top["hello.txt"].size == len("hello e2b\n")
        assert top["hello.txt"].owner == "user"
        deep = {e.path for e in f.list("/workspace", depth=2)}
        assert {"/workspace/bin/blob", "/workspace/multi/a.txt"} <= deep
        assert "/workspace/bin/blob" not in {e.path for e in f.list("/workspace", depth=1)}

        assert f.exists("/workspace/hello.txt")
        assert not f.exists("/workspace/nope")
        assert f.make_dir("/workspace/x/y/z") is True
        assert f.make_dir("/workspace/x/y/z") is False
        moved = f.rename("/workspace/hello.txt", "/workspace/x/y/z/hello.txt")
        assert moved.path == "/workspace/x/y/z/hello.txt"
        assert not f.exists("/workspace/hello.txt")
        got = f.get_info("/workspace/x/y/z/hello.txt")
        assert (got.name, got.type.value, got.size) == ("hello.txt", "file", 10)
        assert got.permissions == "-rw-r--r--"
        f.remove("/workspace/x")
        assert not f.exists("/workspace/x/y/z/hello.txt")
        with pytest.raises(NotFoundException):
            f.read("/workspace/missing.txt")
        with pytest.raises(NotFoundException):
            f.get_info("/workspace/missing.txt")
        # A path that climbs out stays in the sandbox.
        marker = f"e2b-sdk-{uuid.uuid4().hex}"
        f.write(f"/../../../tmp/{marker}", "inside")
        assert daemon.sh(sb.sandbox_id, f"cat /tmp/{marker}") == "inside"
        with pytest.raises(FileNotFoundError):
            open(f"/tmp/{marker}")
    finally:
        sb.kill()


def test_upload_and_download_urls(daemon):
    sb = Sandbox.create()
    try:
        up = sb.upload_url("/workspace/up.txt")
        r = httpx.post(up, files={"file": ("up.txt", b"uploaded by url")})
        assert r.status_code == 200, r.text
        down = sb.download_url("/workspace/up.txt")
        r = httpx.get(down)
        assert (r.status_code, r.content) == (200, b"uploaded by url")
        # Signed with an expiry, and tampered with.
        r = httpx.get(sb.download_url("/workspace/up.txt", use_signature_expiration=60))
        assert (r.status_code, r.content) == (200, b"uploaded by url")
        assert httpx.get(down.replace("up.txt", "other.txt")).status_code == 401
        # A signature opens its own sandbox's file only.
        other = Sandbox.create()
        try:
            other.files.write("/workspace/up.txt", "other")
            assert httpx.get(other.download_url("/workspace/up.txt")).content == b"other"
            assert httpx.get(down).content == b"uploaded by url"
        finally:
            other.kill()
    finally:
        sb.kill()


def test_timeout_list_connect_kill(daemon):
    tag = uuid.uuid4().hex
    a = Sandbox.create(metadata={"tag": tag, "name": "a"}, timeout=300)
    b = Sandbox.create(metadata={"tag": tag, "name": "b"})
    try:
        before = a.get_info().end_at
        a.set_timeout(3000)
        after = a.get_info().end_at
        assert (after - before).total_seconds() > 2000

        paginator = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}))
        listed = paginator.next_items()
        assert {s.sandbox_id for s in listed} == {a.sandbox_id, b.sandbox_id}
        assert {s.metadata["name"] for s in listed} == {"a", "b"}
        assert not paginator.has_next
        only_a = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "name": "a"})).next_items()
        assert [s.sandbox_id for s in only_a] == [a.sandbox_id]
        # Paging, one at a time.
        pages = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1)
        first = pages.next_items()
        assert len(first) == 1 and pages.has_next
        second = pages.next_items()
        assert {first[0].sandbox_id, second[0].sandbox_id} == {a.sandbox_id, b.sandbox_id}

        a.files.write("/workspace/kept.txt", "still here")
        again = Sandbox.connect(a.sandbox_id)
        assert again.files.read("/workspace/kept.txt") == "still here"
        assert Sandbox.kill(b.sandbox_id) is True
        assert Sandbox.kill(b.sandbox_id) is False
        with pytest.raises(NotFoundException):
            Sandbox.get_info(b.sandbox_id)
    finally:
        a.kill()
        b.kill()


def test_pause_and_resume_through_connect(daemon):
    sbx = Sandbox.create(metadata={"case": "pause"})
    try:
        sbx.commands.run("echo kept > /tmp/f")
        assert sbx.pause() is True
        assert sbx.pause() is False  # already paused
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        assert sbx.sandbox_id in [s.sandbox_id for s in paused]
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.commands.run("cat /tmp/f").stdout == "kept\n"
        running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
        assert sbx.sandbox_id in [s.sandbox_id for s in running]
    finally:
        sbx.kill()


def test_fork_and_snapshots(daemon):
    src = Sandbox.create(metadata={"case": "fork"})
    made: list[Sandbox] = []
    snap_id = None
    try:
        src.commands.run("echo base > /workspace/f; echo root > /tmp/t")
        # Fork: each child has the source's files and diverges on its own.
        forks = src.fork(count=2, timeout=600)
        assert all(isinstance(f, Sandbox) for f in forks), forks
        made.extend(forks)
        assert len({f.sandbox_id for f in forks} | {src.sandbox_id}) == 3
        for i, f in enumerate(forks):
            assert f.files.read("/workspace/f") == "base\n"
            assert f.commands.run("cat /tmp/t").stdout == "root\n"
            f.files.write("/workspace/f", f"child {i}\n")
            assert f.get_info().end_at > f.get_info().started_at
        assert src.files.read("/workspace/f") == "base\n"
        assert [f.files.read("/workspace/f") for f in forks] == ["child 0\n", "child 1\n"]
        # The source keeps its id and keeps running.
        assert src.is_running()

        # A snapshot is a template: new sandboxes start on its state.
        snap = src.create_snapshot(name="py-snap")
        snap_id = snap.snapshot_id
        assert snap_id.startswith("ssnap-") and snap.names == ["py-snap"]
        listed = Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items()
        assert [x.snapshot_id for x in listed] == [snap_id]
        from_snap = Sandbox.create(snap_id)
        made.append(from_snap)
        assert from_snap.files.read("/workspace/f") == "base\n"
        # Memory snapshots are refused, clearly.
        with pytest.raises(Exception, match="filesystem"):
            src.create_snapshot(mode="full")
        assert Sandbox.delete_snapshot(snap_id) is True
        assert Sandbox.delete_snapshot(snap_id) is False
        snap_id = None
        assert Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items() == []
        with pytest.raises(NotFoundException):
            Sandbox.fork("no-such-sandbox", count=1)
    finally:
        if snap_id:
            Sandbox.delete_snapshot(snap_id)
        for sb in made:
            sb.kill()
        src.kill()


def test_metrics(daemon):
    sb = Sandbox.create()
    try:
        metrics = sb.get_metrics()
        assert len(metrics) == 1
        assert metrics[0].mem_total > 0 and metrics[0].cpu_count >= 1
    finally:
        sb.kill()


async def test_async_sandbox(daemon):
    sb = await AsyncSandbox.create(metadata={"flavor": "async"}, envs={"A": "1"})
    try:
        await sb.files.write("/workspace/async.txt", "async")
        assert await sb.files.read("/workspace/async.txt") == "async"
        names = [e.name for e in await sb.files.list("/workspace")]
        assert "async.txt" in names
        assert await sb.files.exists("/workspace/async.txt")
        await sb.files.rename("/workspace/async.txt", "/workspace/a2.txt")
        assert (await sb.files.get_info("/workspace/a2.txt")).size == 5
        await sb.set_timeout(600)
        info = await sb.get_info()
        assert info.metadata == {"flavor": "async"}
        connected = await AsyncSandbox.connect(sb.sandbox_id)
        assert await connected.files.read("/workspace/a2.txt") == "async"
        r = await sb.commands.run("echo $A; echo e >&2")
        assert (r.stdout, r.stderr) == ("1\n", "e\n")
        bg = await sb.commands.run("sleep 60", background=True)
        assert await sb.commands.kill(bg.pid)
        listed = await AsyncSandbox.list(
            query=SandboxQuery(metadata={"flavor": "async"})
        ).next_items()
        assert [s.sandbox_id for s in listed] == [sb.sandbox_id]
    finally:
        assert await sb.kill()


def test_commands_foreground(daemon):
    sb = Sandbox.create(envs={"GREETING": "hallo"})
    try:
        r = sb.commands.run("echo out; echo err >&2")
        assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)
        assert sb.commands.run("echo $GREETING $EXTRA", envs={"EXTRA": "x"}).stdout == "hallo x\n"
        assert sb.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
        assert sb.commands.run("id -u").stdout == "1000\n"
        assert sb.commands.run("id -u", user="root").stdout == "0\n"
        seen: list[str] = []
        sb.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=seen.append)
        assert "".join(seen) == "1\n2\n3\n"
        with pytest.raises(CommandExitException) as err:
            sb.commands.run("echo partial; exit 3")
        assert (err.value.exit_code, err.value.stdout) == (3, "partial\n")
        # A command past its timeout fails and is killed.
        with pytest.raises(TimeoutException):
            sb.commands.run("sleep 30", timeout=1)
        # Killed at the deadline: followed to its end (no waiting 30 s).
        for p in [p for p in sb.commands.list() if "sleep 30" in " ".join(p.args)]:
            with pytest.raises(CommandExitException) as err:
                sb.commands.connect(p.pid).wait()
            assert err.value.exit_code == -1
    finally:
        sb.kill()


def test_commands_background_stdin_kill_list_connect(daemon):
    sb = Sandbox.create()
    try:
        sleeper = sb.commands.run("sleep 60", background=True)
        pids = {p.pid for p in sb.commands.list()}
        assert sleeper.pid in pids
        assert sb.commands.kill(sleeper.pid) is True
        with pytest.raises(CommandExitException) as err:
            sleeper.wait()
        assert err.value.exit_code == -1
        assert sb.commands.kill(sleeper.pid) is False
        assert sleeper.pid not in {p.pid for p in sb.commands.list()}

        cat = sb.commands.run("cat", background=True, stdin=True)
        sb.commands.send_stdin(cat.pid, "hello ")
        sb.commands.stream_input(cat.pid, ["stream", "ed\n"])
        sb.commands.close_stdin(cat.pid)
        assert cat.wait().stdout == "hello streamed\n"
        # Stdin to a finished process: not found.
        with pytest.raises(NotFoundException):
            sb.commands.send_stdin(cat.pid, "late")

        later = sb.commands.run("read line; echo got $line", background=True, stdin=True)
        later.disconnect()
        again = sb.commands.connect(later.pid)
        sb.commands.send_stdin(later.pid, "it\n")
        assert again.wait().stdout == "got it\n"
    finally:
        sb.kill()


def test_pty(daemon):
    sb = Sandbox.create()
    try:
        term = sb.pty.create(PtySize(rows=24, cols=80))

        def read_until(text: str) -> str:
            seen = b""
            for _, _, chunk in term:
                if chunk:
                    seen += chunk
                    if text.encode() in seen:
                        return seen.decode(errors="replace")
            raise AssertionError(f"the terminal ended before {text!r}: {seen!r}")

        sb.pty.send_stdin(term.pid, b"echo $((6*7))\n")
        read_until("42")
        sb.pty.resize(term.pid, PtySize(rows=30, cols=100))
        sb.pty.send_stdin(term.pid, b"stty size\n")
        read_until("30 100")
        assert sb.pty.kill(term.pid) is True
    finally:
        sb.kill()
