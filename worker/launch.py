"""Starting a ``celery -A worker worker`` process from Python: the demo, the benchmark and
the tests all start (and stop) their workers through :class:`WorkerProcess`, so they run
the very command an operator would."""

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

#: What a worker logs once every pool process can classify (worker.readiness; not
#: imported from there: launching a worker must not load the database layer).
READY_LINE = "ready to classify"

#: The folder holding ``worker/``: a worker started from anywhere imports this checkout.
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def worker_command(*, concurrency: int, name: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``celery -A worker worker`` with this interpreter, a unique node name, and no
    cluster chatter (gossip, mingle, heartbeats): these workers are alone on purpose."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"{name}-{os.getpid()}-{time.time_ns()}@%h",
        *extra,
    ]


class WorkerProcess:
    """A worker in its own process group, logging to ``log_path``."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        concurrency: int = 1,
        name: str = "worker",
        extra_args: tuple[str, ...] = (),
        cwd: Path | None = None,
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        """Start it; ``cwd`` defaults to the caller's (relative CXR_* paths keep their
        meaning), the tests and the benchmark run it in :data:`SOURCE_ROOT`.
        ``command_prefix`` runs it through a command that then execs it in place (same
        pid), e.g. ``ip netns exec <ns>`` to put the worker on another network."""
        self.log_path = log_path
        self._log = log_path.open("ab")
        command = [
            *command_prefix,
            *worker_command(concurrency=concurrency, name=name, extra=extra_args),
        ]
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        """The exit status once the worker has exited, else None."""
        return self.process.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120, *, line: str = " ready.") -> None:
        """Return once the worker logged ``line`` (celery's " ready.": consuming; its
        pool may still be loading the model); raise if it exits or is late."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log()[-5000:]}"
                )
            if line in self.log():
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()[-5000:]}")

    def wait_ready_to_classify(self, timeout: float = 180) -> None:
        """Return once every pool process has its model (worker.readiness.READY_LINE)."""
        self.wait_ready(timeout, line=READY_LINE)

    def stop(self, timeout: float = 60) -> int:
        """Warm shutdown (SIGTERM: the batch in hand is finished), SIGKILL after ``timeout``."""
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
def running_worker(
    env: dict[str, str],
    log_path: Path,
    *,
    concurrency: int = 1,
    name: str = "worker",
    extra_args: tuple[str, ...] = (),
    ready_timeout: float = 120,
    cwd: Path | None = SOURCE_ROOT,
) -> Iterator[WorkerProcess]:
    """A ready worker for the ``with`` block (run in :data:`SOURCE_ROOT` unless ``cwd``
    says otherwise), stopped afterwards."""
    worker = WorkerProcess(
        env, log_path, concurrency=concurrency, name=name, extra_args=extra_args, cwd=cwd
    )
    try:
        worker.wait_ready(ready_timeout)
        yield worker
    finally:
        worker.stop()
