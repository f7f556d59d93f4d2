"""Long-running processes the integration tests talk to over HTTP, started as an operator
would: `cxr-orient serve` and `celery -A worker flower`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.utils.faults import free_port
from tests.utils.worker import REPO

__all__ = ["Samples", "flower", "parse_samples", "serving"]

#: A scrape: (series name, sorted labels) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _up(process: subprocess.Popen[bytes], url: str, log: Path, what: str,
        timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not up after {timeout} s:\n{log.read_text()}")
        time.sleep(0.3)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """`cxr-orient serve` on a free port; its base URL once /healthz answers."""
    port = free_port()
    with log.open("ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "cxr_orient.cli", "serve", "--port", str(port)],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _up(server, f"{base}/healthz", log, "serve")
        yield base
    finally:
        _stop(server)


@contextmanager
def flower(env: dict[str, str], log: Path) -> Iterator[str]:
    """`celery -A worker flower` (the documented command) on a free local port, its API
    open without a login (FLOWER_UNAUTHENTICATED_API); its base URL once it answers."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
             "--address=127.0.0.1"],
            env={**env, "FLOWER_UNAUTHENTICATED_API": "true"}, cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _up(process, f"{base}/healthcheck", log, "flower")
        yield base
    finally:
        _stop(process)
