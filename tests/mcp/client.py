"""The official MCP Python client (PyPI `mcp`) against a running daemon.

Usage: python client.py http URL KEY      (streamable HTTP at URL/mcp)
       python client.py stdio BIN URL KEY (`BIN mcp`, the stdio bridge)

Runs an agent's flow and the failure cases; prints one line per check and
exits non-zero at the first that does not hold. Run by scripts/mcp-clients.
"""

import asyncio
import json
import sys
import time
from contextlib import asynccontextmanager

import anyio
import jsonschema
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def ok(what):
    print(f"  ok: {what}", flush=True)


def payload(res):
    assert not res.is_error, ("tool error", res)
    return res.structured_content


def text_of(res):
    return "".join(c.text for c in res.content if getattr(c, "type", "") == "text")


@asynccontextmanager
async def connect(argv):
    if argv[0] == "http":
        url, key = argv[1], argv[2]
        async with create_mcp_http_client(headers={"Authorization": "Bearer " + key}) as http:
            async with streamable_http_client(url + "/mcp", http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    yield s
    else:
        binary, url, key = argv[1], argv[2], argv[3]
        listen = url.split("://", 1)[1]
        params = StdioServerParameters(
            command=binary,
            args=["mcp"],
            env={"SANDKASTEN_LISTEN": listen, "SANDKASTEN_API_KEY": key},
        )
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                yield s


class Checked:
    """The session, each tool result checked against the tool's output schema.

    The client validates successful results itself; failures (isError) it
    does not, but the TypeScript SDK does, so they are checked here too.
    Records which tools were called."""

    def __init__(self, session, tools):
        self.s = session
        self.schemas = {name: t.output_schema for name, t in tools.items()}
        self.called = set()

    async def call_tool(self, name, args, **kw):
        res = await self.s.call_tool(name, args, **kw)
        schema = self.schemas.get(name)
        if schema is not None:
            assert res.structured_content is not None, (name, res)
            jsonschema.validate(res.structured_content, schema)
            self.called.add(name)
        return res

    def __getattr__(self, attr):
        return getattr(self.s, attr)


async def flow(s):
    await s.initialize()
    tools = {t.name: t for t in (await s.list_tools()).tools}
    for want in (
        "create_sandbox", "list_sandboxes", "destroy_sandbox", "pause_sandbox", "resume_sandbox",
        "hibernate_sandbox", "fork_sandbox",
        "run_command", "start_process", "process_output", "send_stdin", "kill_process",
        "list_processes", "read_file", "write_file", "list_dir", "delete_path", "move_path",
        "list_workspaces", "snapshot_workspace", "list_snapshots", "restore_workspace", "get_port_url",
    ):
        assert want in tools, (want, sorted(tools))
        assert tools[want].input_schema.get("type") == "object", (want, tools[want].input_schema)
    for t in tools.values():
        assert t.output_schema and t.output_schema.get("type") == "object", (t.name, t.output_schema)
        jsonschema.validators.validator_for(t.output_schema).check_schema(t.output_schema)
    assert "cmd" in tools["run_command"].input_schema["properties"]
    # The schemas have teeth: a result without its fields is refused.
    for wrong in ({}, {"exit_code": "0", "output": "", "cwd": "/", "duration_ms": 1,
                       "timed_out": False, "truncated": False}):
        try:
            jsonschema.validate(wrong, tools["run_command"].output_schema)
            raise AssertionError(("accepted", wrong))
        except jsonschema.ValidationError:
            pass
    ok(f"initialize and {len(tools)} tools with input and output schemas")
    s = Checked(s, tools)

    sid = payload(await s.call_tool("create_sandbox", {"env": {"GREETING": "hi"}}))["id"]
    await s.call_tool("write_file", {"session_id": sid, "path": "calc.py",
                                     "content": "import os\nprint(6*7, os.environ['GREETING'])\n"})
    out = payload(await s.call_tool("run_command", {"session_id": sid, "cmd": "python3 calc.py"}))
    assert out["exit_code"] == 0 and out["output"] == "42 hi\n", out
    await s.call_tool("run_command", {"session_id": sid, "cmd": "python3 calc.py > result.txt"})
    got = payload(await s.call_tool("read_file", {"session_id": sid, "path": "/workspace/result.txt"}))
    assert got["content"] == "42 hi\n" and got["encoding"] == "text", got
    listing = payload(await s.call_tool("list_dir", {"session_id": sid}))
    assert {"calc.py", "result.txt"} <= {e["name"] for e in listing["entries"]}, listing
    res = await s.read_resource(f"sandkasten://sessions/{sid}/files/workspace/result.txt")
    assert res.contents[0].text == "42 hi\n", res
    ok("agent flow: create, write, run, read back (tool and resource), list")

    # A non-zero exit: a tool error whose structured content has the code.
    bad = await s.call_tool("run_command", {"session_id": sid, "cmd": "echo nope; exit 7"})
    assert bad.is_error and bad.structured_content["exit_code"] == 7, bad
    assert "nope" in text_of(bad) and "exit code 7" in text_of(bad), text_of(bad)
    # The shell persists between calls.
    await s.call_tool("run_command", {"session_id": sid, "cmd": "cd /tmp && export X=persisted"})
    out = payload(await s.call_tool("run_command", {"session_id": sid, "cmd": "echo $PWD $X"}))
    assert out["output"] == "/tmp persisted\n", out
    ok("non-zero exit is a tool error with its code; the shell persists")

    # Progress: output streamed as notifications while the command runs.
    seen = []

    async def progress(p, total, message):
        seen.append(message)

    out = payload(await s.call_tool(
        "run_command", {"session_id": sid, "cmd": "for i in 1 2 3; do echo step$i; sleep 0.2; done"},
        progress_callback=progress))
    assert out["output"] == "step1\nstep2\nstep3\n", out
    assert "".join(m or "" for m in seen) == out["output"] and len(seen) >= 2, seen
    ok(f"output streamed as {len(seen)} progress notifications")

    # Cancellation: the command really stops inside the sandbox. It is
    # cancelled once its first output arrives (a progress notification).
    started = anyio.Event()

    async def on_output(p, total, message):
        if "started" in (message or ""):
            started.set()

    async with anyio.create_task_group() as tg:
        async def long():
            await s.call_tool("run_command", {"session_id": sid,
                                              "cmd": "echo started; sleep 300; touch /tmp/survived"},
                              progress_callback=on_output)
        tg.start_soon(long)
        with anyio.fail_after(20):
            await started.wait()
        tg.cancel_scope.cancel()
    t = time.monotonic()
    # The next command waits for the shell, which the interrupt frees.
    out = payload(await s.call_tool("run_command", {"session_id": sid,
                                                     "cmd": "pgrep -f 'sleep 300' || echo none; ls /tmp/survived 2>&1 || true"}))
    assert out["output"].startswith("none\n"), out
    assert time.monotonic() - t < 20, "the shell stayed busy after the cancellation"
    ok("a cancelled run_command stops inside the sandbox")

    # Background processes.
    p = payload(await s.call_tool("start_process", {"session_id": sid, "argv": ["cat"], "stdin": True, "tag": "echoer"}))
    assert p["running"], p
    await s.call_tool("send_stdin", {"session_id": sid, "process": "echoer", "data": "hello\n", "close": True})
    o = payload(await s.call_tool("process_output", {"session_id": sid, "process": "echoer", "wait_seconds": 10}))
    assert o["stdout"] == "hello\n" and not o["process"]["running"] and o["process"]["exit_code"] == 0, o
    p = payload(await s.call_tool("start_process", {"session_id": sid, "cmd": "sleep 300"}))
    await s.call_tool("kill_process", {"session_id": sid, "process": str(p["pid"]), "signal": "KILL"})
    o = payload(await s.call_tool("process_output", {"session_id": sid, "process": str(p["pid"]), "wait_seconds": 10}))
    assert o["process"]["signal"] == 9, o
    procs = payload(await s.call_tool("list_processes", {"session_id": sid}))["processes"]
    assert len(procs) >= 2, procs
    ok("processes: start, stdin, output, kill, list")

    url = payload(await s.call_tool("get_port_url", {"session_id": sid, "port": 8000}))
    assert "sandkasten_token=" in url["url"], url
    moved = payload(await s.call_tool("move_path", {"session_id": sid, "from": "result.txt", "to": "out/r.txt"}))
    assert moved["path"] == "/workspace/out/r.txt", moved
    payload(await s.call_tool("delete_path", {"session_id": sid, "path": "out", "recursive": True}))
    missing = await s.call_tool("read_file", {"session_id": sid, "path": "out/r.txt"})
    assert missing.is_error and missing.structured_content["error_code"] == "FILE_NOT_FOUND", missing
    ok("port URL; move_path; delete_path; a missing file is a FILE_NOT_FOUND tool error")

    # Bad arguments: tool errors the model reads, never a broken session.
    for args, why in (
        ({"session_id": sid}, "missing cmd"),
        ({"session_id": sid, "cmd": 42}, "wrong type"),
        ({"session_id": sid, "cmd": "true", "bogus": 1}, "unknown argument"),
        ({"session_id": "no-such-session", "cmd": "true"}, "unknown session"),
    ):
        r = await s.call_tool("run_command", args)
        assert r.is_error, (why, r)
        assert r.structured_content["error_code"] in ("INVALID_REQUEST", "SESSION_NOT_FOUND"), (why, r)
    huge = await s.call_tool("write_file", {"session_id": sid, "path": "big.txt", "content": "x" * 3_000_000})
    assert not huge.is_error, huge
    ok("bad arguments, unknown session: tool errors; a 3 MB argument is written")

    try:
        await s.call_tool("no_such_tool", {})
        raise AssertionError("an unknown tool was answered")
    except Exception as e:  # the client raises the protocol error
        assert "no_such_tool" in str(e) or "nknown" in str(e), e
    ok("an unknown tool is a protocol error")

    # Pause and resume: the state shows, the shell goes on afterwards.
    paused = payload(await s.call_tool("pause_sandbox", {"session_id": sid}))
    assert paused["status"] == "paused", paused
    again = await s.call_tool("pause_sandbox", {"session_id": sid})
    assert again.is_error and again.structured_content["error_code"] == "SESSION_NOT_RUNNING", again
    resumed = payload(await s.call_tool("resume_sandbox", {"session_id": sid}))
    assert resumed["status"] == "running", resumed
    out = payload(await s.call_tool("run_command", {"session_id": sid, "cmd": "echo awake"}))
    assert out["output"] == "awake\n", out
    ok("pause_sandbox, resume_sandbox (a second pause: SESSION_NOT_RUNNING)")

    # Hibernate: the files and the shell's variables come back on the next call.
    payload(await s.call_tool("run_command", {"session_id": sid, "cmd": "export KEPT=yes; echo f > /tmp/h"}))
    hib = payload(await s.call_tool("hibernate_sandbox", {"session_id": sid}))
    assert hib["status"] == "hibernated", hib
    out = payload(await s.call_tool("run_command", {"session_id": sid, "cmd": "cat /tmp/h; echo $KEPT"}))
    assert out["output"] == "f\nyes\n", out
    # Fork: independent copies.
    forked = payload(await s.call_tool("fork_sandbox", {"session_id": sid, "count": 1}))
    kid = forked["sessions"][0]["id"]
    assert kid != sid, forked
    out = payload(await s.call_tool("run_command", {"session_id": kid, "cmd": "cat /tmp/h"}))
    assert out["output"] == "f\n", out
    bad = await s.call_tool("fork_sandbox", {"session_id": sid, "count": 0})
    assert bad.is_error and bad.structured_content["error_code"] == "INVALID_REQUEST", bad
    payload(await s.call_tool("destroy_sandbox", {"session_id": kid}))
    ok("hibernate_sandbox (files and variables kept), fork_sandbox (a copy; count 0 refused)")

    listed = payload(await s.call_tool("list_sandboxes", {}))
    assert sid in [x["id"] for x in listed["sandboxes"]], listed
    payload(await s.call_tool("destroy_sandbox", {"session_id": sid}))
    gone = await s.call_tool("run_command", {"session_id": sid, "cmd": "true"})
    assert gone.is_error, gone
    ok("destroy; the destroyed sandbox's calls are tool errors")

    # Workspaces: a file kept across sandboxes, a snapshot, a restore.
    ws = f"mcp-{int(time.time() * 1000)}"
    wsid = payload(await s.call_tool("create_sandbox", {"workspace_id": ws}))["id"]
    await s.call_tool("write_file", {"session_id": wsid, "path": "keep.txt", "content": "v1"})
    payload(await s.call_tool("destroy_sandbox", {"session_id": wsid}))
    assert ws in [w["id"] for w in payload(await s.call_tool("list_workspaces", {}))["workspaces"]]
    snap = payload(await s.call_tool("snapshot_workspace", {"workspace_id": ws, "label": "v1"}))
    snaps = payload(await s.call_tool("list_snapshots", {"workspace_id": ws}))["snapshots"]
    assert snap["id"] in [x["id"] for x in snaps], snaps
    wsid = payload(await s.call_tool("create_sandbox", {"workspace_id": ws}))["id"]
    await s.call_tool("write_file", {"session_id": wsid, "path": "keep.txt", "content": "v2"})
    busy = await s.call_tool("restore_workspace", {"workspace_id": ws, "snapshot_id": snap["id"]})
    assert busy.is_error, busy
    payload(await s.call_tool("destroy_sandbox", {"session_id": wsid}))
    payload(await s.call_tool("restore_workspace", {"workspace_id": ws, "snapshot_id": snap["id"]}))
    wsid = payload(await s.call_tool("create_sandbox", {"workspace_id": ws}))["id"]
    got = payload(await s.call_tool("read_file", {"session_id": wsid, "path": "keep.txt"}))
    assert got["content"] == "v1", got
    payload(await s.call_tool("destroy_sandbox", {"session_id": wsid}))
    ok("workspaces: listed, snapshot, restore refused while mounted, restored")

    missing = set(tools) - s.called
    assert not missing, f"tools never called: {sorted(missing)}"
    ok(f"all {len(s.called)} tools called; every result valid under its output schema")


async def main():
    async with connect(sys.argv[1:]) as s:
        await flow(s)
    print(f"mcp python ({sys.argv[1]}): all checks hold", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
