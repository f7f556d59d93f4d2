"""The command line of a ``celery -A worker worker`` process started from Python
(the demo, the benchmark, the tests), so they all start the same worker."""

from __future__ import annotations

import os
import sys
import time


def worker_command(*, concurrency: int, name: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``celery -A worker worker`` with this interpreter, a unique node name, and no
    cluster chatter (gossip, mingle, heartbeats): these workers are alone on purpose."""
    return [
        sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO",
        f"--concurrency={concurrency}", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "-n", f"{name}-{os.getpid()}-{time.time_ns()}@%h", *extra,
    ]
