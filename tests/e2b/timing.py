"""commands.run("true") through the official E2B SDK against our own SDK's
exec, on one running daemon: medians of 100 each, interleaved in two
rounds. A measurement, not a test (figures go in the issue note; `sandkasten
bench` measures the Connect call without the SDK). Run by hand:

    E2B_API_URL=http://127.0.0.1:8080 E2B_SANDBOX_URL=http://127.0.0.1:8080 \\
    E2B_API_KEY=<key> target/e2b-venv/bin/python tests/e2b/timing.py
"""

import os
import statistics
import time

from e2b import Sandbox
from sandkasten import SyncSandboxClient


def median_ms(f, n=50):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main():
    sb = Sandbox.create()
    try:
        url, key = os.environ["E2B_API_URL"], os.environ["E2B_API_KEY"]
        with SyncSandboxClient(base_url=url, api_key=key) as client:
            own = client.create_session()
            try:
                for _ in range(10):
                    sb.commands.run("true")
                    own.exec("true")
                e2b_ms = own_ms = 0.0
                for _ in range(2):
                    e2b_ms += median_ms(lambda: sb.commands.run("true")) / 2
                    own_ms += median_ms(lambda: own.exec("true")) / 2
            finally:
                own.destroy()
        print(
            f"commands.run('true') via e2b: {e2b_ms:.2f} ms; "
            f"exec via the sandkasten SDK: {own_ms:.2f} ms; ratio {e2b_ms / own_ms:.2f}"
        )
    finally:
        sb.kill()


if __name__ == "__main__":
    main()
