"""Without the Keras backend it names, a worker and the demo stop at once with one line
(worker/signals.py, cxr_orient/runtime.py), instead of pool processes crash-looping and a
demo waiting for ever. Real processes; no Redis or PostgreSQL needed."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from tests.utils.worker import WorkerProcess, run_cli, worker_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is not None,
        reason="jax is installed here, so KERAS_BACKEND=jax is not missing",
    ),
]

MISSING = "Keras backend 'jax' is not installed (jax missing), so no model can run: "


def _env(tmp_path: Path) -> dict[str, str]:
    env = worker_env(
        database_url=f"sqlite:///{tmp_path / 'cxr.db'}",
        data_dir=tmp_path / "data",
        ingest_root=tmp_path,
    )
    env.pop("CXR_BROKER_URL", None)
    env["KERAS_BACKEND"] = "jax"
    return env


def test_worker_without_its_backend_exits_at_once(tmp_path: Path) -> None:
    worker = WorkerProcess(_env(tmp_path), tmp_path / "worker.log", name="no-backend")
    start = time.monotonic()
    try:
        while worker.exited() is None and time.monotonic() - start < 60:
            time.sleep(0.2)
        status = worker.exited()
        log = worker.log()
    finally:
        worker.stop(timeout=10)
    assert status is not None, f"worker still running after 60 s:\n{log[-5000:]}"
    assert status != 0, log
    assert MISSING in log, log
    assert " ready." not in log


def test_demo_without_its_backend_exits_at_once_with_one_line(tmp_path: Path) -> None:
    start = time.monotonic()

    result = run_cli("demo", env=_env(tmp_path), timeout=60)

    assert time.monotonic() - start < 30
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"cannot run the demo: {MISSING}pip install 'jax[cpu]' (or the CUDA build on a GPU host)"
    ], result.stdout
    assert "Traceback" not in result.stderr, result.stderr
