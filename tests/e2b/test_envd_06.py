"""What the official E2B Python SDK turns on by the envd version we report
(0.6.4): file metadata (``metadata=`` on writes, ``EntryInfo.metadata`` on
reads: the file's ``user.e2b.*`` extended attributes), gzip uploads, entry
info in watch events (``include_entry``) and ``allow_network_mounts``; and
symlinks as the SDK reads them (see conftest.py for the daemon).
"""

from __future__ import annotations

import time

import httpx
import pytest
from e2b import AsyncSandbox, FilesystemEventType, Sandbox
from e2b.exceptions import InvalidArgumentException

CREATE = FilesystemEventType.CREATE
WRITE = FilesystemEventType.WRITE


def xattr(daemon, sandbox: str, path: str, name: str) -> str:
    """An extended attribute as the sandbox's own tools read it."""
    return daemon.sh(
        sandbox,
        f"python3 -c \"import os; print(os.getxattr('{path}', '{name}').decode(), end='')\"",
    )


def test_file_metadata_round_trips_through_extended_attributes(daemon):
    sb = Sandbox.create()
    try:
        f = sb.files
        info = f.write(
            "/workspace/m.txt", "with metadata", metadata={"Owner": "agent-7", "stage": "draft"}
        )
        # Keys are lower-cased, as envd does (they travel as header names).
        assert info.metadata == {"owner": "agent-7", "stage": "draft"}
        assert xattr(daemon, sb.sandbox_id, "/workspace/m.txt", "user.e2b.owner") == "agent-7"
        got = f.get_info("/workspace/m.txt")
        assert got.metadata == {"owner": "agent-7", "stage": "draft"}
        listed = {e.name: e for e in f.list("/workspace")}
        assert listed["m.txt"].metadata == {"owner": "agent-7", "stage": "draft"}
        # A rename keeps them; an attribute set inside shows up too.
        moved = f.rename("/workspace/m.txt", "/workspace/n.txt")
        assert moved.metadata == {"owner": "agent-7", "stage": "draft"}
        daemon.sh(
            sb.sandbox_id,
            "python3 -c \"import os; os.setxattr('/workspace/n.txt', 'user.e2b.by', b'shell');"
            " os.setxattr('/workspace/n.txt', 'user.other', b'not ours')\"",
        )
        assert f.get_info("/workspace/n.txt").metadata == {
            "owner": "agent-7",
            "stage": "draft",
            "by": "shell",
        }
        # An upload replaces the whole set; one without metadata clears it.
        assert f.write("/workspace/n.txt", "v2", metadata={"stage": "final"}).metadata == {
            "stage": "final"
        }
        assert f.get_info("/workspace/n.txt").metadata == {"stage": "final"}
        assert f.write("/workspace/n.txt", "v3").metadata is None
        assert f.get_info("/workspace/n.txt").metadata is None
        assert xattr(daemon, sb.sandbox_id, "/workspace/n.txt", "user.other") == "not ours"
        # Several files at once get the same set.
        many = f.write_files(
            [{"path": "/workspace/a", "data": "a"}, {"path": "/workspace/b", "data": b"b"}],
            metadata={"batch": "1"},
        )
        assert [w.metadata for w in many] == [{"batch": "1"}, {"batch": "1"}]
        assert f.get_info("/workspace/b").metadata == {"batch": "1"}
        # What the SDK lets through but envd refuses: the daemon's 400.
        with pytest.raises(InvalidArgumentException):
            f.write("/workspace/big", "x", metadata={"k": "v" * 5000})
        assert not f.exists("/workspace/big")
        # As root, where the user may not write.
        f.write("/root-meta.txt", "r", user="root", metadata={"who": "root"})
        assert f.get_info("/root-meta.txt", user="root").metadata == {"who": "root"}
    finally:
        sb.kill()


async def test_async_metadata_and_gzip_uploads(daemon):
    sb = await AsyncSandbox.create()
    try:
        blob = bytes(range(256)) * 400
        info = await sb.files.write(
            "/workspace/z.bin", blob, gzip=True, metadata={"packed": "gzip"}
        )
        assert info.metadata == {"packed": "gzip"}
        assert bytes(await sb.files.read("/workspace/z.bin", format="bytes")) == blob
        assert (await sb.files.get_info("/workspace/z.bin")).metadata == {"packed": "gzip"}
    finally:
        await sb.kill()


def test_gzip_uploads_and_their_bad_input(daemon):
    sb = Sandbox.create()
    try:
        text = "compressed on the way\n" * 1000
        sb.files.write("/workspace/g.txt", text, gzip=True)
        assert sb.files.read("/workspace/g.txt") == text
        assert sb.files.read("/workspace/g.txt", gzip=True) == text
        # Not gzip at all, or an encoding we do not take: refused, nothing written.
        url = sb.upload_url("/workspace/bad.txt")
        headers = {"Content-Type": "application/octet-stream"}
        r = httpx.post(url, content=b"plain", headers={**headers, "Content-Encoding": "gzip"})
        assert r.status_code == 400, r.text
        r = httpx.post(url, content=b"x", headers={**headers, "Content-Encoding": "br"})
        assert r.status_code == 415, r.text
        assert not sb.files.exists("/workspace/bad.txt")
    finally:
        sb.kill()


def test_watch_events_carry_entries_and_symlinks_read_as_symlinks(daemon):
    sb = Sandbox.create()
    try:
        sb.files.make_dir("/workspace/w")
        handle = sb.files.watch_dir("/workspace/w", include_entry=True, allow_network_mounts=True)
        sb.files.write("/workspace/w/e.txt", "12345", metadata={"k": "v"})
        deadline = time.monotonic() + 30
        events: list = []
        while (
            not any(e.type == WRITE and e.entry is not None for e in events)
            and time.monotonic() < deadline
        ):
            events += handle.get_new_events()
            time.sleep(0.05)
        with_entry = [e for e in events if e.name == "e.txt" and e.entry is not None]
        assert with_entry, events
        entry = with_entry[-1].entry
        assert (entry.path, entry.size, entry.owner) == ("/workspace/w/e.txt", 5, "user")
        handle.stop()

        sb.commands.run("ln -s e.txt /workspace/w/link")
        link = sb.files.get_info("/workspace/w/link")
        assert (link.type.value, link.symlink_target) == ("symlink", "e.txt")
        assert link.metadata is None
    finally:
        sb.kill()
