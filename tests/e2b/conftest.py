"""A real Sandkasten daemon for the official E2B SDKs' flows.

The daemon binary comes from ``$SANDKASTEN_BIN`` (``cargo build -p
sandkasten``; run as root). One daemon is started per test run on a free
loopback port with a fresh data dir and a random key; the SDKs are pointed at
it with the three variables a user sets, and nothing else:
``E2B_API_URL``, ``E2B_SANDBOX_URL`` (both the daemon's URL) and
``E2B_API_KEY`` (its key). Every other ``E2B_*`` variable is removed so that
no SDK default (a domain, debug mode) leaks in. At the end every session is
destroyed, the daemon stopped by its pid, and the data dir removed only when
no mount is left below it. The daemon's log stays in
``target/e2b-sdk-daemon.log``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


@dataclass
class Daemon:
    url: str
    key: str
    data_dir: Path
    log: Path
    process: subprocess.Popen

    def api(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        """A call to Sandkasten's own API (bearer key)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw, status = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        return status, json.loads(raw) if raw else None

    def sh(self, session: str, cmd: str) -> str:
        status, out = self.api("POST", f"/v1/sessions/{session}/exec", {"cmd": cmd})
        assert status == 200, out
        assert out["exit_code"] == 0, out
        return out["output"]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5:
                point = fields[4].replace("\\040", " ")
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(point)
    return found


def _binary() -> str:
    path = os.environ.get("SANDKASTEN_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"SANDKASTEN_BIN={path!r}: set it to the daemon binary "
            "(cargo build -p sandkasten; target/debug/sandkasten)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the daemon needs root (namespaces, cgroups, mounts)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def daemon():
    data_dir = Path(tempfile.mkdtemp(prefix="sandkasten-e2b-test-"))
    # Kept after the run for diagnosis, overwritten by the next one.
    log = Path(__file__).resolve().parents[2] / "target" / "e2b-sdk-daemon.log"
    log.parent.mkdir(exist_ok=True)
    key = "sk-e2b-" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDKASTEN_")}
    env.update(
        SANDKASTEN_LISTEN="127.0.0.1:0",
        SANDKASTEN_DATA_DIR=str(data_dir),
        SANDKASTEN_API_KEY=key,
        NO_COLOR="1",
    )
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [_binary(), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
        )
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    line = got[0].decode().strip() if got else ""
    d = Daemon(line.removeprefix("listening on "), key, data_dir, log, process)
    if not line.startswith("listening on "):
        process.kill()
        pytest.fail(f"the daemon did not start ({line!r}); log:\n{d.log_tail()}", pytrace=False)
    # What a user of the SDKs sets, and nothing else.
    for var in [v for v in os.environ if v.startswith("E2B_")]:
        del os.environ[var]
    os.environ.update(E2B_API_URL=d.url, E2B_SANDBOX_URL=d.url, E2B_API_KEY=key)
    yield d
    status, sessions = d.api("GET", "/v1/sessions")
    for s in sessions or []:
        d.api("DELETE", f"/v1/sessions/{s['id']}")
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    left = mounts_below(data_dir)
    if left:
        print(f"warning: mounts left below {data_dir}, not removing it: {left}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
