"""Quick start with the blocking client, for scripts and notebooks.

SANDKASTEN_URL=http://127.0.0.1:8080 SANDKASTEN_API_KEY=sk-... python examples/sync_quickstart.py
"""

from __future__ import annotations

import os

from sandkasten import FileNotFound, SyncSandboxClient

base_url = os.environ.get("SANDKASTEN_URL", "http://127.0.0.1:8080")
api_key = os.environ["SANDKASTEN_API_KEY"]

with (
    SyncSandboxClient(base_url=base_url, api_key=api_key) as client,
    client.create_session() as session,
):
    print(session.exec("uname -s").output, end="")  # Linux
    session.mkdir("data")
    session.write("data/numbers.txt", "\n".join(str(i) for i in range(5)))
    print([entry.name for entry in session.list("data")])  # ['numbers.txt']
    print(session.exec("wc -l < data/numbers.txt").output, end="")  # 4
    for chunk in session.exec_stream("echo streamed"):
        print(chunk.output or f"exit {chunk.exit_code}", end="" if not chunk.done else "\n")
    try:
        session.read("missing.txt")
    except FileNotFound as err:
        print(f"{err.error_code}: {err.message}")
    print(session.stats())
