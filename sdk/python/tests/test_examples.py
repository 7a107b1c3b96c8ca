"""The scripts in examples/ run against the real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sandkasten

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(daemon: Any, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(SANDKASTEN_URL=daemon.url, SANDKASTEN_API_KEY=daemon.api_key)
    # The sandkasten the tests import, installed or not.
    src = str(Path(sandkasten.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quickstart(daemon: Any) -> None:
    p = run(daemon, "quickstart.py")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:3] == ["hello from /tmp", "42", "print(6 * 7)"]
    assert "chunk: 1" in lines and "exit 0 in /tmp" in lines
    assert "print('hello')" in lines
    assert lines[-1] == "done"


def test_sync_quickstart(daemon: Any) -> None:
    p = run(daemon, "sync_quickstart.py")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:3] == ["Linux", "['numbers.txt']", "4"]
    assert "streamed" in lines and "exit 0" in lines
    assert any(line.startswith("FILE_NOT_FOUND: ") for line in lines)
    assert lines[-1].startswith("SessionStats(memory_bytes=")


def test_agent_tools_scripted(daemon: Any) -> None:
    p = run(daemon, "agent_tools.py")
    assert p.returncode == 0, p.stderr
    assert "--> sandbox_write_file" in p.stdout
    assert "file     644" in p.stdout and "fib.py" in p.stdout
    assert "final answer: fib.py ran:" in p.stdout
    assert "0 1 1 2 3 5 8 13 21 34" in p.stdout


def test_openai_agents_example(daemon: Any, unique: str) -> None:
    p = run(daemon, "openai_agents_example.py", "--dry-run", "--user", f"agents-{unique}")
    try:
        import agents  # noqa: F401
    except ImportError:
        assert p.returncode == 2 and "pip install 'sandkasten[agents]'" in p.stdout
        return
    assert p.returncode == 0, p.stderr
    assert "'sandbox_exec'" in p.stdout and "ready" in p.stdout
    with sandkasten.SyncSandboxClient(base_url=daemon.url, api_key=daemon.api_key) as client:
        client.delete_workspace(f"agents-{unique}")  # the session is gone; its workspace stays


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_examples_compile(script: str) -> None:
    compile((EXAMPLES / script).read_text(), script, "exec")
