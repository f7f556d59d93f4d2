"""What every worker does from its main process, beat or no beat.

Started when the worker is ready (:mod:`worker.signals`), one daemon thread each, so a
worker started as ``celery -A worker worker`` (no ``-B``) is complete:

- **delivery**: the outbox is delivered every CXR_OUTBOX_INTERVAL_S
  (:func:`cxr_orient.dicomnet.delivery.deliver_due`; claims are atomic, so several
  workers, and a beat's task, never send a row twice). A slow or dead destination holds
  this thread, never a pool process.
- **broker watch**: every CXR_BROKER_WATCH_S, :class:`BrokerWatch` asks Redis whether its
  messages were lost (a new ``run_id``: restarted; or nothing queued nor unacknowledged
  while the database has instances queued for a while) and sends those instances again,
  compare-and-set (:func:`db.crud.take_queued_for_resend`), each once.
- **readiness**: :class:`worker.readiness.Readiness` counts the pool processes that have
  their model, logs ``ready to classify`` once all do, and keeps the heartbeat row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from cxr_orient.settings import Settings
from db import crud
from db.models import utcnow
from db.session import session_scope

logger = logging.getLogger(__name__)

#: How often the readiness state is looked at and the heartbeat renewed.
HEARTBEAT_S = 2.0

Sender = Callable[[Sequence[int]], int]


class Periodic:
    """``action`` every ``interval_s`` in a daemon thread; an error is logged (once per
    run of failures), not fatal."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], Any]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.action = action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        while True:
            try:
                self.action()
                if failing:
                    logger.warning("%s: working again", self.name)
                failing = False
            except Exception as exc:
                # Once per run of failures (a broker or database down for minutes must
                # not fill the log); the traceback at DEBUG (it may quote a path).
                level = logging.DEBUG if failing else logging.WARNING
                logger.log(
                    level,
                    "%s: this round failed (%s); trying every %gs",
                    self.name,
                    type(exc).__name__,
                    self.interval_s,
                )
                logger.debug("%s failed", self.name, exc_info=True)
                failing = True
            if self._stop.wait(self.interval_s):
                return


class BrokerWatch:
    """Notices a Redis broker that lost its messages and re-sends the queued instances."""

    def __init__(self, settings: Settings, send: Sender, app: Any) -> None:
        self.queue = settings.worker.queue_name
        self.grace_s = 3 * settings.worker.broker_watch_s
        self._send = send
        self._app = app
        self.run_id: str | None = None

    def _look(self) -> tuple[str, int, float]:
        """(run_id, messages queued + delivered but unacknowledged, uptime in s)."""
        with self._app.connection_for_write() as connection:
            channel = connection.default_channel
            client = channel.client
            info = client.info("server")
            held = int(channel._size(self.queue)) + int(client.hlen(channel.unacked_key))
            return str(info["run_id"]), held, float(info["uptime_in_seconds"])

    def check(self) -> int:
        """One look; returns how many instances were sent again."""
        run_id, held, uptime_s = self._look()
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        now = utcnow()
        if restarted:
            # Whatever was queued before the restart had its message there.
            cutoff = now - timedelta(seconds=max(uptime_s - 1.0, 0.0))
            why = "the broker restarted (new run_id)"
        elif held == 0:
            cutoff = now - timedelta(seconds=self.grace_s)
            why = f"the broker holds no message but instances are queued for > {self.grace_s:g}s"
        else:
            return 0
        with session_scope() as session:
            ids = crud.take_queued_for_resend(session, queued_before=cutoff)
            if ids:
                self._send(ids)  # in the transaction: a refused send leaves them for later
        if ids:
            logger.warning("%s: sent %d queued instances again", why, len(ids))
        return len(ids)


def uses_redis(settings: Settings) -> bool:
    return settings.storage.effective_broker_url.startswith(("redis://", "rediss://"))


class Housekeeping:
    """The main process's threads (started by :func:`start`)."""

    def __init__(self, threads: list[Periodic], readiness: Any | None) -> None:
        self.threads = threads
        self.readiness = readiness

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()
        if self.readiness is not None:
            self.readiness.forget()


def start(settings: Settings, *, node: str, pool_processes: int) -> Housekeeping:
    """The main process's threads, started; :meth:`Housekeeping.stop` at shutdown."""
    from worker import readiness
    from worker.celery import app
    from worker.dispatch import send_instances

    threads = []
    folder = readiness.marker_folder()
    state = None
    if folder is not None:
        state = readiness.Readiness(node, pool_processes, folder)
        threads.append(Periodic("readiness", HEARTBEAT_S, state.check))
    if settings.results.result_destinations or settings.corrections.correction_destinations:
        from cxr_orient.dicomnet.delivery import deliver_due

        threads.append(
            Periodic(
                "outbox-delivery", settings.results.outbox_interval_s, lambda: deliver_due(settings)
            )
        )
    if settings.worker.broker_watch_s and uses_redis(settings):
        watch = BrokerWatch(settings, send_instances, app)
        threads.append(Periodic("broker-watch", settings.worker.broker_watch_s, watch.check))
    for thread in threads:
        thread.start()
    return Housekeeping(threads, state)
