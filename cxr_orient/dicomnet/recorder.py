"""Recording what the spool holds: every network source writes an instance durably to
the spool, then hands its path here, and returns success to its sender before the row
exists. :class:`Recorder` records those paths on one thread in batches (one transaction
per batch, whatever association or request they came from) and retries a batch that
fails; :func:`sweep_spool`, run when a source starts, records every spooled file that no
row names (acknowledged before a crash, or left by a failed recording), so nothing
acknowledged is lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from cxr_orient.dicomnet.receive import Received, record_received
from cxr_orient.dicomnet.spool import remove_stale_partials, spool_dir
from cxr_orient.ingest import Sender
from cxr_orient.settings import Settings
from db import crud
from db.session import session_scope

__all__ = ["Recorder", "sweep_spool"]

logger = logging.getLogger(__name__)


class Recorder:
    """One thread recording spooled paths in batches (every association's), retrying a
    batch that fails; what is unrecorded at stop is left to the next start's sweep."""

    def __init__(
        self, settings: Settings, send: Sender | None, *, batch: int = 200, window_s: float = 0.05
    ) -> None:
        self.settings = settings
        self.send = send
        self.batch = batch
        self.window_s = window_s
        self.recorded = 0
        self._paths: queue.Queue[Received] = queue.Queue()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="cxr-recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, path: Received) -> None:
        """A spooled path, or the record of a file just spooled (``received_file``)."""
        with self._idle:
            self._pending += 1
        self._paths.put(path)

    def _take(self) -> list[Received]:
        try:
            first = self._paths.get(timeout=0.2)
        except queue.Empty:
            return []
        taken = [first]
        deadline = time.monotonic() + self.window_s
        while len(taken) < self.batch:
            left = deadline - time.monotonic()
            try:
                taken.append(
                    self._paths.get(timeout=max(left, 0)) if left > 0 else self._paths.get_nowait()
                )
            except queue.Empty:
                break
        return taken

    def _record(self, paths: list[Received], *, retry: bool) -> bool:
        try:
            if not retry:
                report = record_received(paths, send=self.send, settings=self.settings)
            else:
                # The failed try may have committed rows and failed to send them (broker
                # down): send every instance of the batch again. A duplicate message is
                # harmless, the worker claims each instance once and skips finished ones.
                report = record_received(paths, send=None, settings=self.settings)
                if self.send is not None and report.instance_ids:
                    self.send(report.instance_ids)
        except Exception as exc:
            # The exception's text may quote paths (UIDs): its type at WARNING, the rest
            # at DEBUG only.
            logger.warning(
                "recording %d spooled instances failed (%s); retrying",
                len(paths),
                type(exc).__name__,
            )
            logger.debug("recording failed", exc_info=True)
            return False
        self.recorded += len(paths)
        logger.info(
            "recorded %d received instances: %d new, %d already known, "
            "%d uid conflicts, %d refused",
            len(paths),
            len(report.queued) + len(report.held),
            len(report.already_known),
            len(report.uid_conflicts),
            len(report.refused),
        )
        return True

    def _run(self) -> None:
        backoff = 0.5
        while True:
            paths = self._take()
            if not paths:
                if self._stopping.is_set():
                    return
                continue
            retry = False
            while not self._record(paths, retry=retry):
                retry = True
                if self._stopping.wait(backoff):
                    logger.warning(
                        "%d spooled instances left unrecorded at shutdown; the "
                        "next start's sweep records them",
                        len(paths),
                    )
                    return
                backoff = min(backoff * 2, 30.0)
                # What arrived meanwhile joins the retried batch: one recording when the
                # database is back, not one per waiting instance.
                while len(paths) < self.batch:
                    try:
                        paths.append(self._paths.get_nowait())
                    except queue.Empty:
                        break
            backoff = 0.5
            with self._idle:
                self._pending -= len(paths)
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every path put so far is recorded; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        self.wait_idle(timeout)
        self._stopping.set()
        self._thread.join(timeout)


def sweep_spool(settings: Settings, send: Sender | None) -> int:
    """Record every spooled file no row names (acknowledged before a crash or a failed
    recording) and remove stale temporaries of interrupted writes; returns how many
    files were recorded."""
    folder = spool_dir(settings)
    if not folder.is_dir():
        return 0
    # Younger partials may belong to a transfer in progress by another network source.
    remove_stale_partials(settings)
    with session_scope() as session:
        recorded = crud.recorded_paths_under(session, prefix=f"{folder}/")
    unrecorded = sorted(p for p in folder.glob("*/*.dcm") if str(p) not in recorded)
    for start in range(0, len(unrecorded), 500):
        record_received(unrecorded[start : start + 500], send=send, settings=settings)
    if unrecorded:
        logger.info("spool sweep: recorded %d files received before the last stop", len(unrecorded))
    return len(unrecorded)
