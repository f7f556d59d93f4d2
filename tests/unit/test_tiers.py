"""The unit tier needs no server: a test that gets the real PostgreSQL or Redis is marked
at collection (tests/conftest.py), so ``make unit`` deselects it. Run here as
``make unit`` would, in a pytest process whose PostgreSQL and Redis are a closed port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT_TIER = "not integration and not pg"
#: A test run on SQLite and on PostgreSQL (database_url's two sides).
BOTH_SIDES = "tests/unit/db/test_migrations.py::test_upgrade_creates_every_model_table"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PYTEST_"))}
    env.update(
        CXR_TEST_PG_ADMIN=f"postgresql://postgres@127.0.0.1:{port}/test",
        CXR_TEST_REDIS_HOST="127.0.0.1",
        CXR_TEST_REDIS_PORT=str(port),
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-q",
            *args,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_postgresql_side_of_database_url_is_left_out_of_the_unit_tier() -> None:
    result = _pytest("-m", UNIT_TIER, BOTH_SIDES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 deselected" in result.stdout, result.stdout


def test_without_the_tier_the_postgresql_side_runs_and_needs_the_server() -> None:
    """The same selection without the marker expression: the PostgreSQL side runs and
    errors on the closed port (the tier above leaves out what needs a server, no more)."""
    result = _pytest(BOTH_SIDES)
    assert result.returncode != 0
    assert "1 passed" in result.stdout and "1 error" in result.stdout, result.stdout


def test_tests_under_integration_and_those_using_redis_are_marked_integration() -> None:
    result = _pytest(
        "--collect-only",
        "-m",
        "integration",
        "tests/integration/test_heads.py",
        "tests/unit/db/test_migrations.py",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert collected, result.stdout
    assert all(line.startswith("tests/integration/") for line in collected), collected
