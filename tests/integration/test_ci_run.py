""".ci/run stops the Orthanc Debian's package started, and no other (issue 19): an
operator running the CI script on a host with an Orthanc of their own keeps it. Real
Orthanc processes; the service's pid file is a temporary one (ORTHANC_PIDFILE)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from bench.orthanc import orthanc_binary
from tests.utils.dicomnode import free_port
from tests.utils.orthanc import Orthanc, start
from tests.utils.worker import REPO

pytestmark = pytest.mark.integration

SCRIPT = REPO / ".ci" / "stop-debian-orthanc"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def stop_service(pidfile: Path, *, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(ORTHANC_PIDFILE=str(pidfile), ORTHANC_DAEMON=orthanc_binary())
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def two_orthancs(tmp_path: Path) -> Iterator[tuple[Orthanc, Orthanc]]:
    """The "service" (its pid in the pid file) and an operator's own Orthanc."""
    with ExitStack() as stack:
        service = start(tmp_path / "service", free_port(), free_port())
        stack.callback(service.stop)
        own = start(tmp_path / "own", free_port(), free_port())
        stack.callback(own.stop)
        yield service, own


def test_only_the_service_orthanc_is_stopped_and_only_in_ci(
    two_orthancs: tuple[Orthanc, Orthanc], tmp_path: Path
) -> None:
    service, own = two_orthancs
    assert service.process is not None and own.process is not None
    pidfile = tmp_path / "orthanc.pid"
    pidfile.write_text(f"{service.process.pid}\n")

    outside_ci = stop_service(pidfile, ci=None)
    assert outside_ci.returncode == 0, outside_ci.stderr
    assert alive(service.process.pid) and alive(own.process.pid), "stopped outside CI"

    in_ci = stop_service(pidfile, ci="true")
    assert in_ci.returncode == 0, in_ci.stderr
    deadline = time.monotonic() + 30
    while alive(service.process.pid) and time.monotonic() < deadline:
        service.process.poll()
        time.sleep(0.2)
    assert not alive(service.process.pid), "the service's Orthanc still runs"
    assert alive(own.process.pid), "the operator's own Orthanc was stopped"


def test_a_stale_pid_file_naming_another_program_stops_nothing(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "300"])
    try:
        pidfile = tmp_path / "orthanc.pid"
        pidfile.write_text(f"{other.pid}\n")
        result = stop_service(pidfile, ci="true")
        assert result.returncode == 0, result.stderr
        assert "left alone" in result.stderr
        assert other.poll() is None, "a process that is not Orthanc was stopped"
    finally:
        other.kill()
        other.wait()


def test_ci_run_uses_it_and_never_the_init_script() -> None:
    """`service orthanc stop` / `/etc/init.d/orthanc stop` end every Orthanc on the host
    (the init script's last start-stop-daemon matches by executable only)."""
    run = (REPO / ".ci" / "run").read_text()
    commands = [line.split("#", 1)[0] for line in run.splitlines()]
    assert any(c.strip() == ".ci/stop-debian-orthanc" for c in commands)
    assert not any("orthanc stop" in c or "init.d/orthanc" in c for c in commands)
