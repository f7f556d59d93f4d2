"""A real ``celery -A worker worker`` process for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from worker.launch import worker_command

REPO = Path(__file__).resolve().parents[2]


def worker_env(**values: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update({f"CXR_{k.upper()}": str(v) for k, v in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 1,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        command = worker_command(concurrency=concurrency, name="test", extra=extra_args)
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # A pool process orphaned by a killed parent (a fault test) can block on a
        # read and outlive it; the worker's process group still names it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        return self.process.returncode

    def kill_group(self) -> None:
        """SIGKILL the worker and its pool processes, as an OOM killer would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def running_worker(env: dict[str, str], log_path: Path, *, concurrency: int = 1,
                   extra_args: tuple[str, ...] = ()) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env, log_path, concurrency, extra_args)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxr_orient.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)
