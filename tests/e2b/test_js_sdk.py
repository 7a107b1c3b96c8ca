"""The official E2B JS SDK (``e2b`` 2.x from npm, on node) against the real
daemon: runs flows.cjs with the same three variables the Python tests use.

``$SANDKASTEN_E2B_JS_MODULES`` is the ``node_modules`` of an ``npm install e2b``
(scripts/test installs it under target/e2b-js).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def test_js_sdk_flows(daemon):
    modules = os.environ.get("SANDKASTEN_E2B_JS_MODULES")
    if not modules or not (Path(modules) / "e2b").is_dir():
        pytest.fail(
            "SANDKASTEN_E2B_JS_MODULES must name a node_modules with the e2b package "
            "(`npm install e2b@2` in a directory; scripts/test does it under target/e2b-js)",
            pytrace=False,
        )
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the e2b JS SDK needs node >= 20.18.1)", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(
        E2B_API_URL=daemon.url,
        E2B_SANDBOX_URL=daemon.url,
        E2B_API_KEY=daemon.key,
        NODE_PATH=modules,
    )
    r = subprocess.run(
        [node, str(HERE / "flows.cjs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.stdout.strip().endswith("ok"), r.stdout
