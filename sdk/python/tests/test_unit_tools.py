"""Unit tests: the framework-neutral agent tools and the OpenAI Agents adapter."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import sandkasten
from sandkasten.tools import (
    TOOL_DEFINITIONS,
    SandboxTools,
    SyncSandboxTools,
    anthropic_tool_specs,
    format_exec_result,
    openai_tool_specs,
)
from sandkasten.types import ExecResult
from sdkmock import SESSION_JSON, Daemon, aclose, body, error, maybe

S = "/v1/sessions/2c0d6f"


@pytest.fixture(params=["async", "sync"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_specs() -> None:
    names = [d["name"] for d in TOOL_DEFINITIONS]
    assert names == [
        "sandbox_exec",
        "sandbox_read_file",
        "sandbox_write_file",
        "sandbox_list_files",
    ]
    for spec in openai_tool_specs():
        assert spec["type"] == "function"
        params = spec["function"]["parameters"]
        assert params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])
    assert [s["name"] for s in anthropic_tool_specs()] == names
    json.dumps(openai_tool_specs())  # serialisable as is


def test_exec_output_is_clipped_for_the_model() -> None:
    long = "".join(f"line {i}\n" for i in range(10_000))
    text = format_exec_result(ExecResult(0, "/w", long, truncated=True, timed_out=True), 1000)
    assert text.startswith("exit_code=0 (timed out, output truncated by the sandbox)\ncwd=/w\n")
    assert "line 0\n" in text and "line 9999\n" in text
    assert "characters omitted" in text and len(text) < 1200


async def test_tools_dispatch(flavor: str) -> None:
    d = Daemon()
    d.on("POST", "/v1/sessions", httpx.Response(201, json=SESSION_JSON))
    d.on("POST", S + "/exec", {"exit_code": 1, "cwd": "/tmp", "output": "no\n"})
    d.on("POST", S + "/fs/write", {"ok": True})
    d.on(
        "GET", S + "/fs/read", {"path": "/workspace/a", "content_base64": "aGk=", "truncated": True}
    )
    d.on(
        "GET",
        S + "/fs/list",
        {
            "path": "/workspace",
            "entries": [
                {"name": "d", "type": "dir", "size": 4096, "mode": 493, "mtime": 0},
                {"name": "f", "type": "file", "size": 3, "mode": 420, "mtime": 0},
            ],
        },
    )
    client: Any = d.async_client() if flavor == "async" else d.sync_client()
    session = await maybe(client.create_session())
    tools: Any = SandboxTools(session) if flavor == "async" else SyncSandboxTools(session)

    out = await maybe(tools.call("sandbox_exec", '{"cmd": "false", "timeout_ms": 500}'))
    assert out == "exit_code=1\ncwd=/tmp\n---\nno\n"
    assert body(d.requests[-1]) == {"cmd": "false", "timeout_ms": 500, "raw_output": False}

    out = await maybe(tools.call("sandbox_write_file", {"path": "a", "content": "hé"}))
    assert out == "wrote 3 bytes to a"
    assert await maybe(tools.call("sandbox_read_file", {"path": "a"})) == "hi\n(truncated)"
    listing = await maybe(tools.call("sandbox_list_files", None))
    assert listing.splitlines() == [
        "/workspace:",
        "dir      755       4096  d/",
        "file     644          3  f",
    ]

    d.on("GET", S + "/fs/read", error(404, "FILE_NOT_FOUND", "/workspace/x: not found"))
    assert await maybe(tools.call("sandbox_read_file", '{"path": "x"}')) == (
        "error: FILE_NOT_FOUND: /workspace/x: not found"
    )
    with pytest.raises(KeyError):
        await maybe(tools.call("rm_rf", "{}"))
    with pytest.raises(ValueError):
        await maybe(tools.call("sandbox_exec", "[1]"))
    await aclose(client)


async def test_openai_agents_adapter() -> None:
    """With openai-agents installed the tools are FunctionTools; without, a clear ImportError."""
    d = Daemon()
    d.on("POST", "/v1/sessions", httpx.Response(201, json=SESSION_JSON))
    d.on("POST", S + "/exec", {"exit_code": 0, "cwd": "/workspace", "output": "hi\n"})
    d.on(
        "GET",
        S + "/stats",
        {"memory_bytes": 2**20, "memory_limit": 2**29, "cpu_usage_usec": 5, "pids": 3},
    )
    client = d.async_client()
    session = await client.create_session()
    try:
        import agents  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"sandkasten\[agents\]"):
            sandkasten.create_sandkasten_tools(session)
        await client.close()
        return
    tools = sandkasten.create_sandkasten_tools(session)
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {
        "sandbox_exec",
        "sandbox_read_file",
        "sandbox_write_file",
        "sandbox_list_files",
        "sandbox_stats",
    }
    out = await by_name["sandbox_exec"].on_invoke_tool(None, '{"cmd": "echo hi"}')
    assert out == "exit_code=0\ncwd=/workspace\n---\nhi\n"
    assert "pids=3" in await by_name["sandbox_stats"].on_invoke_tool(None, "{}")

    class Ctx:
        context = sandkasten.SandkastenContext(session=session)

    ctx_tools = {t.name: t for t in sandkasten.sandkasten_tools()}
    out = await ctx_tools["sandbox_exec"].on_invoke_tool(Ctx(), '{"cmd": "echo hi"}')
    assert out.endswith("hi\n")
    await client.close()
