"""Integration tests of the sync client against the real daemon."""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import sandkasten
from conftest import POOL_FILL_TIMEOUT, POOL_SIZE, metric_value
from sandkasten import ImagePoolInfo, SyncSandboxClient, SyncSession


@pytest.fixture
def session(client: SyncSandboxClient) -> Iterator[SyncSession]:
    s = client.create_session()
    yield s
    with contextlib.suppress(sandkasten.SessionNotFound):
        s.destroy()


def test_health_and_session_lifecycle(client: SyncSandboxClient) -> None:
    assert client.health() is True
    with client.create_session(image="base", ttl_seconds=300) as session:
        info = session.info()
        assert info.id == session.id and info.status == "running" and info.image == "base"
        assert info.acquire_source in ("cold", "pool") and info.workspace_id is None
        assert session.id in [s.id for s in client.list_sessions()]
        assert client.get_session(session.id).id == session.id
        stats = session.stats()
        assert stats.memory_limit > 0 and stats.pids >= 1
    with pytest.raises(sandkasten.SessionNotFound):
        client.get_session(session.id)
    with pytest.raises(sandkasten.SessionNotFound):
        session.destroy()


def test_a_session_has_its_own_disk_limit(client: SyncSandboxClient) -> None:
    with client.create_session(disk_limit_mb=32) as session:
        assert session.info().disk_limit_mb == 32
        r = session.exec("dd if=/dev/zero of=/tmp/big bs=1M count=64 2>&1; echo rc=$?")
        assert "Disk quota exceeded" in r.output and "rc=0" not in r.output, r.output
    with pytest.raises(sandkasten.InvalidRequest, match="disk_limit_mb"):
        client.create_session(disk_limit_mb=0)


def test_errors(client: SyncSandboxClient, daemon: Any) -> None:
    with pytest.raises(sandkasten.InvalidImage):
        client.create_session(image="no-such-image")
    with pytest.raises(sandkasten.InvalidWorkspace):
        client.create_session(workspace_id="../etc")
    with (
        SyncSandboxClient(base_url=daemon.url, api_key="sk-wrong-key") as bad,
        pytest.raises(sandkasten.Unauthorized),
    ):
        bad.list_workspaces()


def test_exec(session: SyncSession) -> None:
    assert session.exec("cd /tmp && export X=1").cwd == "/tmp"
    r = session.exec("echo $X $(pwd); echo err >&2; false")
    assert r.output == "1 /tmp\nerr\n" and r.exit_code == 1
    r = session.exec("sleep 10", timeout_ms=300)
    assert r.timed_out and r.exit_code == 124
    assert "\x1b[1m" in session.exec("printf '\\033[1mb\\n'", raw_output=True).output


SERVE_TMP = """
import http.server, os
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), http.server.SimpleHTTPRequestHandler)
if os.fork():
    os._exit(0)
os.setsid()
srv.serve_forever()
"""


def test_get_url_opens_a_port_without_the_key(
    client: SyncSandboxClient, session: SyncSession
) -> None:
    # The server forks once it listens, so the exec returns then.
    session.exec("echo hi > /tmp/hi.txt")
    r = session.exec(f"cd /tmp && python3 -c '{SERVE_TMP}' </dev/null >/dev/null 2>&1")
    assert r.exit_code == 0, r.output
    url = session.get_url(8000, ttl_seconds=60)
    assert url.url.startswith(f"http://8000-{session.id}.localhost:")
    # Without the key: the path form, then the preview host (as a Host
    # header: no DNS needed) with the cookie the first answer set.
    got = httpx.get(client.base_url + url.path.replace("/?", "/hi.txt?"))
    assert (got.status_code, got.text) == (200, "hi\n")
    preview = url.url.split("/?")[0].removeprefix("http://")
    got = httpx.get(
        client.base_url + "/hi.txt?sandkasten_token=" + url.token, headers={"Host": preview}
    )
    assert (got.status_code, got.text) == (200, "hi\n")
    assert httpx.get(client.base_url + f"/v1/sessions/{session.id}/ports/8000/").status_code == 401


def test_processes(session: SyncSession) -> None:
    events = list(session.run_process("echo hi; echo oops >&2"))
    assert events[0].kind == "start" and events[-1].done and events[-1].exit_code == 0
    assert b"".join(e.data for e in events if e.kind == "stdout") == b"hi\n"
    assert b"".join(e.data for e in events if e.kind == "stderr") == b"oops\n"
    info = session.start_process(argv=["sh", "-c", "read x; echo got:$x"], stdin=True, tag="r")
    session.send_stdin(info.pid, "yes\n")
    replay = list(session.attach_process("r"))
    assert b"".join(e.data for e in replay if e.kind == "stdout") == b"got:yes\n"
    with pytest.raises(sandkasten.ProcessEnded):
        session.signal_process("r")
    with pytest.raises(sandkasten.TagInUse):
        session.start_process("sleep 30", tag="t")
        session.start_process("sleep 30", tag="t")


def test_exec_stream(session: SyncSession) -> None:
    started = time.monotonic()
    arrivals = []
    chunks = []
    for chunk in session.exec_stream("for i in 1 2; do echo $i; sleep 0.5; done; cd /"):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert "".join(c.output for c in chunks) == "1\n2\n"
    assert chunks[-1].done and chunks[-1].exit_code == 0 and chunks[-1].cwd == "/"
    assert arrivals[0] < arrivals[-1] - 0.5

    with pytest.raises(sandkasten.SessionNotFound):
        list(SyncSession(session._client, "no-such-session").exec_stream("true"))

    stream = session.exec_stream("echo go; sleep 30")
    assert next(stream).output == "go\n"
    stream.close()  # interrupts the command
    assert session.exec("echo free").output == "free\n"


def test_files(session: SyncSession, tmp_path: Path) -> None:
    session.write("a.txt", "text")
    session.write("b.bin", bytes(range(256)))
    assert session.read("a.txt").content == b"text"
    assert session.read("b.bin").content == bytes(range(256))
    part = session.read("b.bin", max_bytes=3)
    assert part.content == b"\x00\x01\x02" and part.truncated
    with pytest.raises(sandkasten.FileNotFound):
        session.read("nope")

    local = tmp_path / "up.txt"
    local.write_text("uploaded")
    assert session.upload(local) == ["/workspace/up.txt"]
    assert session.upload(b"b", filename="b.txt", dest_path="d") == ["/workspace/d/b.txt"]
    assert session.upload(io.BytesIO(b"io"), filename="io.txt") == ["/workspace/io.txt"]
    assert session.read("d/b.txt").content == b"b"

    assert session.mkdir("x/y") == "/workspace/x/y"
    with pytest.raises(sandkasten.AlreadyExists):
        session.mkdir("x", parents=False)
    names = [e.name for e in session.list()]
    assert names == ["a.txt", "b.bin", "d", "io.txt", "up.txt", "x"]
    assert [e.name for e in session.list("/workspace/x")] == ["y"]
    st = session.stat("b.bin")
    assert st.size == 256 and st.is_file and st.path == "/workspace/b.bin"
    with pytest.raises(sandkasten.InvalidPath):
        session.remove("x")
    session.remove("x", recursive=True)
    session.remove("a.txt")
    with pytest.raises(sandkasten.FileNotFound):
        session.stat("a.txt")


def test_workspaces(client: SyncSandboxClient, unique: str) -> None:
    wid = f"sdk-sync-{unique}"
    assert client.create_workspace(wid).id == wid
    with pytest.raises(sandkasten.AlreadyExists):
        client.create_workspace(wid)
    client.write_workspace_file(wid, "w.txt", "written without a session")
    assert client.upload_workspace_file(wid, b"u", filename="u.bin") == ["/workspace/u.bin"]
    assert [e.name for e in client.list_workspace_files(wid)] == ["u.bin", "w.txt"]
    assert client.read_workspace_file(wid, "w.txt").text == "written without a session"

    with client.create_session(workspace_id=wid) as session:
        assert session.read("w.txt").text == "written without a session"
        session.write("from-session.txt", "hi")
        assert client.get_workspace(wid).in_use
        with pytest.raises(sandkasten.WorkspaceInUse):
            client.delete_workspace(wid)
    assert client.read_workspace_file(wid, "from-session.txt").text == "hi"
    assert wid in [w.id for w in client.list_workspaces()]
    client.delete_workspace(wid)
    with pytest.raises(sandkasten.WorkspaceNotFound):
        client.get_workspace(wid)
    with pytest.raises(sandkasten.WorkspaceNotFound):
        client.read_workspace_file(wid, "w.txt")


def test_snapshots(client: SyncSandboxClient, unique: str) -> None:
    wid = f"sdk-sync-snap-{unique}"
    assert client.create_workspace(wid, quota_bytes=128 * 2**20).quota_bytes == 128 * 2**20
    try:
        client.write_workspace_file(wid, "f.txt", "before")
        snap = client.create_snapshot(wid, "checkpoint")
        client.write_workspace_file(wid, "f.txt", "after")
        assert [s.label for s in client.list_snapshots(wid)] == ["checkpoint"]
        client.restore_snapshot(wid, snap.id)
        assert client.read_workspace_file(wid, "f.txt").text == "before"
        client.delete_snapshot(wid, snap.id)
        assert client.list_snapshots(wid) == []
        with pytest.raises(sandkasten.SnapshotNotFound):
            client.delete_snapshot(wid, snap.id)
    finally:
        client.delete_workspace(wid)


def test_export_import(client: SyncSandboxClient, unique: str, tmp_path: Path) -> None:
    src, dst = f"sdk-sync-exp-{unique}", f"sdk-sync-imp-{unique}"
    client.create_workspace(src, quota_mb=128)
    client.create_workspace(dst)
    try:
        client.write_workspace_file(src, "a/b.txt", "round trip")
        client.write_workspace_file(src, "big.bin", b"\x01" * 3_000_000)
        tar = client.export_workspace(src)
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            assert sorted(t.getnames()) == ["a", "a/b.txt", "big.bin"]

        client.import_workspace(dst, tar)
        assert client.read_workspace_file(dst, "a/b.txt").text == "round trip"
        assert client.get_workspace(dst).size_bytes >= 3_000_000

        path = tmp_path / "out.tar"
        assert client.export_workspace(src, path) == path.stat().st_size
        client.write_workspace_file(dst, "a/b.txt", "changed")
        client.import_workspace(dst, path)
        assert client.read_workspace_file(dst, "a/b.txt").text == "round trip"

        snap = client.create_snapshot(src)
        client.write_workspace_file(src, "a/b.txt", "after")
        copy = f"sdk-sync-copy-{unique}"
        client.create_workspace(copy, from_snapshot=(src, snap.id))
        try:
            assert client.read_workspace_file(copy, "a/b.txt").text == "round trip"
        finally:
            client.delete_workspace(copy)

        with client.create_session(workspace_id=dst), pytest.raises(sandkasten.WorkspaceInUse):
            client.import_workspace(dst, path)
        with pytest.raises(sandkasten.InvalidRequest):
            client.import_workspace(dst, b"\x00garbage" * 1000)
        with pytest.raises(sandkasten.WorkspaceNotFound):
            client.export_workspace(f"sdk-sync-none-{unique}")
    finally:
        client.delete_workspace(src)
        client.delete_workspace(dst)


def wait_for_full_pool(client: SyncSandboxClient, image: str = "base") -> ImagePoolInfo:
    """Poll ``get_pool`` until ``image`` has :data:`POOL_SIZE` idle sandboxes (bounded)."""
    deadline = time.monotonic() + POOL_FILL_TIMEOUT
    while True:
        info = client.get_pool().images[image]
        if info.idle == POOL_SIZE:
            return info
        if time.monotonic() > deadline:
            pytest.fail(f"the pool of {image!r} is not full after {POOL_FILL_TIMEOUT} s: {info}")
        time.sleep(0.05)


def test_env_on_a_cold_create(client: SyncSandboxClient) -> None:
    with client.create_session(env={"GREETING": "hi there", "LANG": "C.UTF-8"}) as session:
        assert session.last_info is not None and session.last_info.acquire_source == "cold"
        assert session.exec('echo "$GREETING"; pwd; echo $LANG').output == (
            "hi there\n/workspace\nC.UTF-8\n"
        )
    with pytest.raises(sandkasten.InvalidRequest, match="env"):
        client.create_session(env={"NOT-A-NAME": "x"})
    assert client.get_pool().images == {}
    assert 'sandkasten_session_creates_total{source="cold"}' in client.metrics()


def test_pooled_create_with_workspace_and_env(
    pooled_client: SyncSandboxClient, unique: str
) -> None:
    client = pooled_client
    before = wait_for_full_pool(client)
    assert before.target == POOL_SIZE

    with client.create_session() as plain:
        assert plain.info().acquire_source == "pool"

    wait_for_full_pool(client)
    wid = f"sdk-sync-pool-{unique}"
    with client.create_session(workspace_id=wid, env={"GREETING": "hi there"}) as session:
        info = session.info()
        assert info.acquire_source == "pool" and info.workspace_id == wid
        assert session.exec("echo $GREETING; pwd").output == "hi there\n/workspace\n"
        session.write("note.txt", "from the pooled session")
        assert client.read_workspace_file(wid, "note.txt").text == "from the pooled session"
    assert [e.name for e in client.list_workspace_files(wid)] == ["note.txt"]
    client.delete_workspace(wid)

    after = client.get_pool().images["base"]
    assert after.hits == before.hits + 2 and after.misses == before.misses
    assert after.acquire_wait_p50_ms is not None

    text = client.metrics()
    assert metric_value(text, 'sandkasten_pool_hits_total{image="base"}') == after.hits


def test_network_policy_on_create_and_live(client: SyncSandboxClient) -> None:
    # The default daemon does not allow mode full: refused, naming the key.
    with pytest.raises(sandkasten.InvalidRequest, match="allow_full"):
        client.create_session(network={"mode": "full"})
    with client.create_session(network="none") as session:
        assert session.info().network == sandkasten.NetworkPolicy(mode="none")
    # A daemon that allows it: a link under the policy, changed live.
    from conftest import _run_daemon

    policy = sandkasten.NetworkPolicy(allow_out=["203.0.113.0/24"])
    with (
        _run_daemon("network:\n  allow_full: true\n") as d,
        sandkasten.SyncSandboxClient(base_url=d.url, api_key=d.api_key) as c,
        c.create_session(network=policy) as session,
    ):
        assert session.last_info.network == policy
        assert session.exec("ip -o link show | wc -l").output.strip() == "2", "lo and eth0"
        with pytest.raises(sandkasten.InvalidRequest, match=r"10\.0\.0\.0/8"):
            session.set_network({"mode": "full", "allow_out": ["10.0.0.0/8"]})
        info = session.set_network("none")
        assert info.network.mode == "none"
        assert session.exec("ip -o link show | wc -l").output.strip() == "1"


def test_hibernate_and_the_timeout_fields(client: SyncSandboxClient) -> None:
    s = client.create_session(
        on_timeout="hibernate", idle_timeout_seconds=600, metadata={"owner": "sdk"}
    )
    try:
        assert s.last_info.on_timeout == "hibernate"
        assert s.last_info.idle_timeout_seconds == 600
        assert s.last_info.metadata == {"owner": "sdk"}
        s.exec("export KEPT=yes; echo f > /tmp/f")
        info = s.hibernate()
        assert info.status == "hibernated"
        with pytest.raises(sandkasten.SessionNotRunning):
            s.hibernate()
        # Any call wakes it on its kept state.
        assert (s.exec("cat /tmp/f; echo $KEPT")).output == "f\nyes\n"
        s.hibernate()
        assert (s.resume()).status == "running"
    finally:
        s.destroy()


def test_snapshot_and_fork(client: SyncSandboxClient) -> None:
    s = client.create_session()
    made = [s]
    try:
        s.exec("echo kept > /home/sandbox/k && echo w > /workspace/w")
        snap = s.snapshot("t")
        assert snap.id.startswith("ssnap-") and snap.session_id == s.id
        assert any(x.id == snap.id for x in client.sandbox_snapshots())
        child = client.create_session(from_snapshot=snap.id)
        made.append(child)
        assert (child.exec("cat /home/sandbox/k /workspace/w")).output == "kept\nw\n"
        kids = s.fork(2)
        made.extend(kids)
        assert len(kids) == 2 and len({k.id for k in kids}) == 2
        for k in kids:
            assert (k.exec("cat /home/sandbox/k")).output == "kept\n"
        with pytest.raises(sandkasten.InvalidRequest):
            s.fork(0)
        client.delete_sandbox_snapshot(snap.id)
        with pytest.raises(sandkasten.SnapshotNotFound):
            client.delete_sandbox_snapshot(snap.id)
    finally:
        for x in made:
            x.destroy()
