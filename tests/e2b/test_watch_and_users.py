"""The official E2B Python SDK's file watching and file users against the
real daemon: ``files.watch_dir`` (``Sandbox``: a watcher the SDK polls with
``get_new_events``; ``AsyncSandbox``: a stream with a callback), flat and
recursive, seeing what ``commands.run`` does; and file operations as
``root`` and as ``user`` (see conftest.py for the daemon).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from e2b import AsyncSandbox, FilesystemEventType, Sandbox
from e2b.exceptions import NotFoundException, SandboxException

CREATE = FilesystemEventType.CREATE
WRITE = FilesystemEventType.WRITE
REMOVE = FilesystemEventType.REMOVE
RENAME = FilesystemEventType.RENAME
CHMOD = FilesystemEventType.CHMOD


def collect_until(handle, wanted: set, timeout: float = 30.0) -> list:
    """The sync SDK's watcher is polled by its client (``get_new_events``,
    as envd defines it): asks until every wanted (name, type) came."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while True:
        seen += [(e.name, e.type) for e in handle.get_new_events()]
        if wanted <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def test_watch_dir_sync_sees_writes_removals_renames_and_chmods(daemon):
    sb = Sandbox.create()
    try:
        sb.files.make_dir("/workspace/w/sub")
        handle = sb.files.watch_dir("/workspace/w")
        sb.commands.run(
            "echo hi > /workspace/w/a.txt && chmod 600 /workspace/w/a.txt"
            " && mv /workspace/w/a.txt /workspace/w/b.txt && rm /workspace/w/b.txt"
            " && echo deep > /workspace/w/sub/deep.txt"
        )
        wanted = {
            ("a.txt", CREATE),
            ("a.txt", WRITE),
            ("a.txt", CHMOD),
            ("a.txt", RENAME),
            ("b.txt", CREATE),
            ("b.txt", REMOVE),
        }
        seen = collect_until(handle, wanted)
        assert wanted <= set(seen), seen
        # In order, and not recursive: nothing of sub/.
        assert seen.index(("a.txt", CREATE)) < seen.index(("a.txt", RENAME))
        assert seen.index(("b.txt", CREATE)) < seen.index(("b.txt", REMOVE))
        assert not any(name.startswith("sub/") for name, _ in seen), seen
        # Events are taken once.
        assert handle.get_new_events() == []
        handle.stop()
        with pytest.raises(SandboxException):
            handle.get_new_events()

        # Recursive: a directory made later is watched too, and the
        # entries made in it before its watch are reported as created.
        rec = sb.files.watch_dir("/workspace/w", recursive=True)
        sb.commands.run("mkdir -p /workspace/w/new/deeper && echo x > /workspace/w/new/deeper/f")
        seen = collect_until(rec, {("new", CREATE), ("new/deeper/f", CREATE)})
        assert {("new", CREATE), ("new/deeper/f", CREATE)} <= set(seen), seen
        sb.commands.run("echo more >> /workspace/w/sub/deep.txt && rm /workspace/w/new/deeper/f")
        wanted = {("sub/deep.txt", WRITE), ("new/deeper/f", REMOVE)}
        seen = collect_until(rec, wanted)
        assert wanted <= set(seen), seen
        rec.stop()

        # A missing directory, a file: the SDK's errors.
        with pytest.raises(NotFoundException):
            sb.files.watch_dir("/workspace/nope")
        with pytest.raises(SandboxException):
            sb.files.watch_dir("/workspace/w/sub/deep.txt")
    finally:
        sb.kill()


async def test_watch_dir_async_streams_events(daemon):
    sb = await AsyncSandbox.create()
    try:
        await sb.files.make_dir("/workspace/aw")
        got: list = []
        changed = asyncio.Event()

        def on_event(e):
            got.append((e.name, e.type))
            changed.set()

        async def until(wanted: set):
            async def wait():
                while not wanted <= set(got):
                    changed.clear()
                    await changed.wait()

            await asyncio.wait_for(wait(), 30)

        handle = await sb.files.watch_dir("/workspace/aw", on_event, recursive=True)
        await sb.commands.run("mkdir /workspace/aw/d && echo a > /workspace/aw/d/f.txt")
        await until({("d", CREATE), ("d/f.txt", CREATE)})
        await sb.files.remove("/workspace/aw/d/f.txt")
        await until({("d/f.txt", REMOVE)})
        await handle.stop()

        flat: list = []
        ended: list = []
        done = asyncio.Event()

        def on_flat(e):
            flat.append((e.name, e.type))
            done.set()

        h2 = await sb.files.watch_dir(
            "/workspace/aw", on_flat, on_exit=lambda err: ended.append(err)
        )
        await sb.files.write("/workspace/aw/top.txt", "t")
        await asyncio.wait_for(done.wait(), 30)
        assert ("top.txt", CREATE) in flat, flat
        await h2.stop()
    finally:
        await sb.kill()


def test_files_as_root_and_as_user(daemon):
    sb = Sandbox.create()
    try:
        # A file only root may write, and a directory only root may read.
        sb.commands.run(
            "echo root-only > /workspace/root.txt && chmod 644 /workspace/root.txt"
            " && mkdir -m 700 /workspace/secret && echo s > /workspace/secret/s.txt",
            user="root",
        )
        assert daemon.sh(sb.sandbox_id, "stat -c %u /workspace/root.txt") == "0\n"
        # `user` is the sandbox user, with a home that exists and is theirs.
        r = sb.commands.run('id -u; cd && test -w "$HOME" && echo "$HOME"', user="user")
        assert r.stdout.splitlines()[0] == "1000", r.stdout
        assert r.stdout.splitlines()[1].startswith("/"), r.stdout

        sb.files.write("/workspace/root.txt", "by root", user="root")
        assert sb.files.read("/workspace/root.txt") == "by root"
        with pytest.raises(SandboxException) as e:
            sb.files.write("/workspace/root.txt", "by user", user="user")
        assert "ermission" in str(e.value), e.value
        with pytest.raises(SandboxException):
            sb.files.write("/workspace/root.txt", "by default user")
        assert sb.files.read("/workspace/root.txt", user="root") == "by root"

        # New files belong to the user who wrote them.
        sb.files.write("/workspace/new-by-root.txt", "r", user="root")
        sb.files.write("/workspace/new-by-user.txt", "u", user="user")
        owners = {e.name: e.owner for e in sb.files.list("/workspace")}
        assert owners["new-by-root.txt"] == "root", owners
        assert owners["new-by-user.txt"] == "user", owners

        # Listing, reading, making, renaming and removing in the root-only
        # directory: root may, the user may not.
        assert [e.name for e in sb.files.list("/workspace/secret", user="root")] == ["s.txt"]
        with pytest.raises(SandboxException):
            sb.files.list("/workspace/secret", user="user")
        assert sb.files.read("/workspace/secret/s.txt", user="root") == "s\n"
        with pytest.raises(SandboxException):
            sb.files.read("/workspace/secret/s.txt", user="user")
        assert sb.files.make_dir("/workspace/secret/made", user="root") is True
        with pytest.raises(SandboxException):
            sb.files.make_dir("/workspace/secret/made2", user="user")
        sb.files.rename("/workspace/secret/s.txt", "/workspace/secret/t.txt", user="root")
        with pytest.raises(SandboxException):
            sb.files.rename("/workspace/secret/t.txt", "/workspace/u.txt", user="user")
        with pytest.raises(SandboxException):
            sb.files.remove("/workspace/secret/t.txt", user="user")
        sb.files.remove("/workspace/secret/t.txt", user="root")
        assert not sb.files.exists("/workspace/secret/t.txt", user="root")

        # Watching a directory only root may read.
        with pytest.raises(SandboxException):
            sb.files.watch_dir("/workspace/secret", user="user")
        h = sb.files.watch_dir("/workspace/secret", user="root")
        sb.commands.run("touch /workspace/secret/new", user="root")
        seen = collect_until(h, {("new", CREATE)})
        assert ("new", CREATE) in seen, seen
        h.stop()
    finally:
        sb.kill()
