"""Whether a worker can classify now, not merely whether celery is up.

Celery logs "ready" once its pool has forked, 20-28 s before the pool processes have
loaded TensorFlow and the model. Each pool process, once its model is loaded and warmed
up, drops a marker named by its pid in a folder the main process made before the fork
(:func:`prepare`, :func:`mark_ready`); the main process counts the markers of its live
pool processes (:class:`Readiness`, from :mod:`worker.housekeeping`) and, once every pool
process has one, logs ``ready to classify`` and sets ``cxr_orient_worker_ready``. It
writes its state to ``worker_heartbeats`` when it changes and every 10 s, so ``/readyz`` of
``cxr-orient serve`` can say whether any worker can classify.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from cxr_orient import metrics
from db import crud
from db.models import utcnow
from db.session import session_scope
from worker.launch import READY_LINE

logger = logging.getLogger(__name__)

__all__ = ["READY_LINE", "Readiness", "mark_ready", "marker_folder", "prepare"]

#: A heartbeat row is rewritten at least this often (fresh for crud.HEARTBEAT_FRESH_S).
HEARTBEAT_WRITE_S = 10.0

_FOLDER: Path | None = None


def prepare() -> Path:
    """Main process, before the pool forks: a fresh marker folder the pool inherits."""
    global _FOLDER
    _FOLDER = Path(tempfile.mkdtemp(prefix="cxr-orient-ready-"))
    return _FOLDER


def marker_folder() -> Path | None:
    """The folder :func:`prepare` made in this worker (None outside a worker)."""
    return _FOLDER


def mark_ready() -> None:
    """Pool process: its model is loaded and warmed up (no-op outside a worker)."""
    if _FOLDER is not None:
        with contextlib.suppress(OSError):
            (_FOLDER / str(os.getpid())).touch()


class Readiness:
    """The main process's view of its pool: how many processes can classify."""

    def __init__(self, node: str, pool_processes: int, folder: Path) -> None:
        self.node = node
        self.pool_processes = max(pool_processes, 1)
        self.folder = folder
        self.ready_at: datetime | None = None
        self._gauge = metrics.worker_metrics().worker_ready
        #: The ready count last written, and when (a write on change, else every
        #: HEARTBEAT_WRITE_S: well inside crud.HEARTBEAT_FRESH_S).
        self._written = -1
        self._written_at = 0.0

    def ready_processes(self) -> int:
        count = 0
        for marker in self.folder.iterdir():
            if marker.name.isdigit() and metrics.pid_alive(int(marker.name)):
                count += 1
            else:  # a pool process that exited (replaced): its marker goes
                with contextlib.suppress(OSError):
                    marker.unlink()
        return count

    def check(self) -> None:
        ready = self.ready_processes()
        if self.ready_at is None and ready >= self.pool_processes:
            self.ready_at = utcnow()
            self._gauge.set(1)
            logger.info("%s: %s (%d pool processes have their model)", self.node, READY_LINE, ready)
        elif self.ready_at is not None and ready == 0:
            self._gauge.set(0)
        elif self.ready_at is not None:
            self._gauge.set(1)
        now = time.monotonic()
        if ready == self._written and now - self._written_at < HEARTBEAT_WRITE_S:
            return
        with session_scope() as session:
            crud.record_worker_heartbeat(
                session,
                node=self.node,
                pool_processes=self.pool_processes,
                ready_processes=ready,
                ready_at=self.ready_at,
            )
        self._written, self._written_at = ready, now

    def forget(self) -> None:
        """A clean stop: this worker no longer counts as ready anywhere."""
        with contextlib.suppress(Exception), session_scope() as session:
            crud.forget_worker(session, node=self.node)
        shutil.rmtree(self.folder, ignore_errors=True)
