"""Fixtures: real Sandkasten daemons for the integration tests.

The daemon binary comes from ``$SANDKASTEN_BIN`` (build it with
``cargo build -p sandkasten``; it runs as root). Each daemon is started on a
free port with a fresh data dir and a random API key, and stopped with
SIGTERM after every session it has is destroyed. The data dir is removed
only when no mount is left below it.

``daemon`` runs with the embedded defaults (no pool); ``pooled_daemon`` with
a config file that keeps a pre-warmed pool of :data:`POOL_SIZE` ``base``
sandboxes. Each is started once per test run, when a test first needs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import sandkasten

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
POOL_SIZE = 2
"""Pre-warmed ``base`` sandboxes of :func:`pooled_daemon`."""
POOL_CONFIG = f"""\
pool:
  enabled: true
  images:
    base: {POOL_SIZE}
"""
POOL_FILL_TIMEOUT = 60.0
"""Seconds a test waits for the pooled daemon's pool to be full again."""


@dataclass
class RunningDaemon:
    """A daemon started for the tests."""

    url: str
    api_key: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def metric_value(text: str, sample: str) -> float:
    """The value of one sample line (``name{labels}``) of a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line[len(sample) + 1 :])
    raise AssertionError(f"no sample {sample!r} in the metrics:\n{text}")


def _daemon_binary() -> str:
    path = os.environ.get("SANDKASTEN_BIN")
    if not path:
        pytest.fail(
            "SANDKASTEN_BIN is not set. The integration tests need the real daemon: "
            "build it with `cd <repo> && cargo build -p sandkasten` and run "
            "`SANDKASTEN_BIN=<repo>/target/debug/sandkasten pytest -q` (as root).",
            pytrace=False,
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"SANDKASTEN_BIN={path!r} is not an executable file "
            "(build it with `cargo build -p sandkasten`).",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the daemon needs root (namespaces, cgroups, mounts): run as root")
    return path


def _read_listen_line(process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The daemon's one stdout line, or None if it did not come in time."""
    result: list[bytes] = []

    def read() -> None:
        assert process.stdout is not None
        result.append(process.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        return None
    return result[0].decode(errors="replace").strip()


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` according to /proc/self/mountinfo."""
    prefix = str(path.resolve()).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _stop(daemon: RunningDaemon) -> None:
    """Destroy the daemon's sessions, SIGTERM it, and clean up its data dir if safe."""
    process = daemon.process
    if process.poll() is None:
        try:
            with httpx.Client(
                base_url=daemon.url,
                headers={"Authorization": f"Bearer {daemon.api_key}"},
                timeout=30,
            ) as http:
                for s in http.get("/v1/sessions").json():
                    http.delete(f"/v1/sessions/{s['id']}")
        except (httpx.HTTPError, ValueError) as exc:
            print(f"warning: could not destroy the test sessions: {exc}")
        process.send_signal(signal.SIGTERM)  # this pid only
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"warning: daemon {process.pid} ignored SIGTERM for {STOP_TIMEOUT}s; killing it")
            process.kill()
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()
    left = mounts_below(daemon.data_dir)
    if left:
        print(f"warning: mounts left below {daemon.data_dir}, not removing it: {left}")
    else:
        shutil.rmtree(daemon.data_dir, ignore_errors=True)


@contextmanager
def _run_daemon(config: str | None = None) -> Iterator[RunningDaemon]:
    """Start the real daemon (with ``config`` as its YAML config file, if given),
    wait until it is healthy, and stop it on exit.
    """
    binary = _daemon_binary()
    data_dir = Path(tempfile.mkdtemp(prefix="sandkasten-sdk-test-"))
    log = Path(tempfile.mkstemp(prefix="sandkasten-sdk-test-", suffix=".log")[1])
    args = [binary, "serve"]
    config_file: Path | None = None
    if config is not None:
        fd, name = tempfile.mkstemp(prefix="sandkasten-sdk-test-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(config)
        config_file = Path(name)
        args += ["--config", name]
    api_key = "sk-test-" + secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        SANDKASTEN_LISTEN="127.0.0.1:0",
        SANDKASTEN_DATA_DIR=str(data_dir),
        SANDKASTEN_API_KEY=api_key,
    )
    for var in ("SANDKASTEN_DEFAULT_IMAGE", "SANDKASTEN_SESSION_TTL_SECONDS", "SANDKASTEN_RUNTIME"):
        env.pop(var, None)
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
        )
    running = RunningDaemon("", api_key, data_dir, log, process)
    try:
        line = _read_listen_line(process, START_TIMEOUT)
        prefix = "listening on "
        if not line or not line.startswith(prefix):
            pytest.fail(
                f"the daemon did not print 'listening on http://ADDR' (got {line!r}); "
                f"exit status {process.poll()}; log:\n{running.log_tail()}",
                pytrace=False,
            )
        running.url = line[len(prefix) :]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(running.url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"the daemon never became healthy; log:\n{running.log_tail()}")
            time.sleep(0.1)
        yield running
    finally:
        _stop(running)
        log.unlink(missing_ok=True)
        if config_file is not None:
            config_file.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def daemon() -> Iterator[RunningDaemon]:
    """The real daemon with its embedded defaults (no pool), once for the whole run."""
    with _run_daemon() as running:
        yield running


@pytest.fixture(scope="session")
def pooled_daemon() -> Iterator[RunningDaemon]:
    """The real daemon with a pool of :data:`POOL_SIZE` ``base`` sandboxes
    (:data:`POOL_CONFIG`), once for the whole run. Its pool fills in the
    background after start: wait for it before expecting a pooled create.
    """
    with _run_daemon(POOL_CONFIG) as running:
        yield running


@pytest.fixture
async def aclient(daemon: RunningDaemon) -> AsyncIterator[sandkasten.SandboxClient]:
    """An async client of the test daemon."""
    async with sandkasten.SandboxClient(base_url=daemon.url, api_key=daemon.api_key) as client:
        yield client


@pytest.fixture
def client(daemon: RunningDaemon) -> Iterator[sandkasten.SyncSandboxClient]:
    """A sync client of the test daemon."""
    with sandkasten.SyncSandboxClient(base_url=daemon.url, api_key=daemon.api_key) as c:
        yield c


@pytest.fixture
async def pooled_aclient(pooled_daemon: RunningDaemon) -> AsyncIterator[sandkasten.SandboxClient]:
    """An async client of the pooled test daemon."""
    async with sandkasten.SandboxClient(
        base_url=pooled_daemon.url, api_key=pooled_daemon.api_key
    ) as client:
        yield client


@pytest.fixture
def pooled_client(pooled_daemon: RunningDaemon) -> Iterator[sandkasten.SyncSandboxClient]:
    """A sync client of the pooled test daemon."""
    with sandkasten.SyncSandboxClient(
        base_url=pooled_daemon.url, api_key=pooled_daemon.api_key
    ) as c:
        yield c


@pytest.fixture
def unique() -> str:
    """A fresh id fragment, so that tests never share a workspace."""
    return secrets.token_hex(4)
