"""The seed's Python examples, run verbatim against the real daemon.

The two code blocks below are copied byte for byte from the seed
(``shared/seed/000_f1bd2626ce006d0b.txt``, "Usage Examples"); when that file
is present the test checks that they still match it. The only substitution
is the seed's ``"..."`` placeholders for the URL and key.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import sandkasten
from sandkasten import SandboxClient

SEED_FILE = Path(__file__).resolve().parents[4] / "shared" / "seed" / "000_f1bd2626ce006d0b.txt"

USAGE = """\
from sandkasten import SandboxClient

client = SandboxClient(base_url="...", api_key="...")

# Ephemeral session (default)
session = await client.create_session()

# Persistent workspace
session = await client.create_session(workspace_id="user123-project")

# List workspaces
workspaces = await client.list_workspaces()

# Delete workspace
await client.delete_workspace("user123-project")
"""

AGENT_PATTERN = """\
# Persistent agent sessions
user_id = "user123"
workspace_id = f"{user_id}-coding"

# First session
session1 = await client.create_session(workspace_id=workspace_id)
await session1.write("project.py", "print('hello')")
await session1.destroy()

# Later session - files still there!
session2 = await client.create_session(workspace_id=workspace_id)
content = await session2.read("project.py")
print(content)  # print('hello')
"""


def test_copies_match_the_seed() -> None:
    if not SEED_FILE.exists():  # outside the project's shared tree: nothing to compare
        return
    blocks = re.findall(r"```python\n(.*?)```", SEED_FILE.read_text(), flags=re.S)
    assert USAGE in blocks
    assert AGENT_PATTERN in blocks


def test_readme_shows_the_seed_examples_verbatim() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert USAGE in blocks
    assert AGENT_PATTERN in blocks


async def run_snippet(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run top-level-await code as the body of an async function; return its locals."""
    source = "async def __snippet():\n" + textwrap.indent(code, "    ") + "\n    return locals()\n"
    exec(compile(source, "<seed>", "exec"), namespace)
    result: dict[str, Any] = await namespace["__snippet"]()
    return result


async def test_agent_pattern_verbatim(
    aclient: SandboxClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Workspace persistence across two sessions, exactly as the seed writes it."""
    with pytest.raises(sandkasten.WorkspaceNotFound):
        await aclient.get_workspace("user123-coding")  # a fresh workspace, created on first use
    scope = await run_snippet(AGENT_PATTERN, {"client": aclient})
    try:
        assert capsys.readouterr().out == "print('hello')\n"
        content = scope["content"]
        assert content.content == b"print('hello')" and content.path == "/workspace/project.py"
        with pytest.raises(sandkasten.SessionNotFound):
            await aclient.get_session(scope["session1"].id)
    finally:
        await scope["session2"].destroy()
    await aclient.delete_workspace("user123-coding")


async def test_usage_example_verbatim(daemon: Any) -> None:
    """The seed's usage block, with the URL and key filled in.

    Its last line deletes a workspace that the session it just created still
    mounts; the contract answers that with 409 WORKSPACE_IN_USE (Docker
    refused the same for a mounted volume), so the block cannot succeed as
    written. Everything before it works; once the session is destroyed the
    delete works too.
    """
    code = USAGE.replace('base_url="..."', f'base_url="{daemon.url}"').replace(
        'api_key="..."', f'api_key="{daemon.api_key}"'
    )
    assert code.count(daemon.url) == 1 and code.count(daemon.api_key) == 1
    until_delete, delete_line = code.rsplit("\n# Delete workspace\n", 1)
    async with SandboxClient(base_url=daemon.url, api_key=daemon.api_key) as observer:
        before = {s.id for s in await observer.list_sessions()}
    scope = await run_snippet(until_delete, {})
    client = scope["client"]
    try:
        assert isinstance(client, SandboxClient)
        assert scope["session"].last_info.workspace_id == "user123-project"
        assert "user123-project" in [w.id for w in scope["workspaces"]]
        with pytest.raises(sandkasten.WorkspaceInUse):
            await run_snippet(delete_line, {"client": client})
        await scope["session"].destroy()
        await run_snippet(delete_line, {"client": client})
        with pytest.raises(sandkasten.WorkspaceNotFound):
            await client.get_workspace("user123-project")
    finally:
        # The block's first, ephemeral session is no longer referenced: find it.
        for info in await client.list_sessions():
            if info.id not in before:
                await (await client.get_session(info.id)).destroy()
        await client.close()
