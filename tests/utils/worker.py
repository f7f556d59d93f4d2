"""Real ``celery -A worker worker`` processes and CLI runs for the tests
(:class:`worker.launch.WorkerProcess`, the demo's and the benchmark's too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from worker.launch import WorkerProcess, running_worker

__all__ = ["REPO", "WorkerProcess", "run_cli", "running_worker", "worker_env"]

REPO = Path(__file__).resolve().parents[2]


def worker_env(**values: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update({f"CXR_{k.upper()}": str(v) for k, v in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
