"""Long-running processes the integration tests talk to over HTTP, started as an operator
would: `cxr-orient serve` (bench.services) and `celery -A worker flower`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.services import REPO, free_port, serving, stop, wait_until_up

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


@contextmanager
def flower(env: dict[str, str], log: Path) -> Iterator[str]:
    """`celery -A worker flower` (the documented command) on a free local port, its API
    open without a login (FLOWER_UNAUTHENTICATED_API); its base URL once it answers."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, f"{base}/healthcheck", log, "flower")
        yield base
    finally:
        stop(process)
