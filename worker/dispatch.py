"""Sending work to the queue, by task name.

Whoever queues work (ingest, the requeue reaper, the benchmark) sends through here. Tasks
are named, not imported: a sender never loads the task module (and with it celery-batches
and the classification pipeline); the names in :mod:`worker.celery` are the queue's
contract with :mod:`worker.tasks`, which registers its tasks under them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from worker.celery import CLASSIFY, DELIVER_OUTBOX, app

logger = logging.getLogger(__name__)


def send_instances(instance_ids: Sequence[int]) -> int:
    """Queue one ``classify(instance_id)`` message per instance id; returns how many."""
    if not instance_ids:
        return 0
    with app.producer_or_acquire() as producer:
        for instance_id in instance_ids:
            app.send_task(CLASSIFY, args=[int(instance_id)], producer=producer)
    return len(instance_ids)


def broker_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the broker accepts a connection now (readiness checks)."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s
            )
        return True
    except Exception:
        logger.debug("broker unreachable", exc_info=True)
        return False


def kick_delivery(outbox_interval_s: float) -> None:
    """Ask a worker to deliver the outbox now (answers just recorded with outgoing SRs);
    best effort: the beat-scheduled sweep delivers them anyway. The message expires
    after two sweeps (``CXR_OUTBOX_INTERVAL_S``), at least 10 s."""
    try:
        app.send_task(DELIVER_OUTBOX, expires=max(outbox_interval_s * 2, 10.0))
    except Exception:
        logger.warning("could not queue an outbox delivery; the periodic one will", exc_info=True)


def broker_queue_depth() -> int | None:
    """Messages waiting in the broker queue, or None when the broker can't say."""
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            queue = str(app.conf.task_default_queue)  # CXR_QUEUE_NAME
            # kombu's Redis and filesystem channels count a queue directly; a passive
            # declare (AMQP) fails on a queue that is merely empty or not created yet.
            if hasattr(channel, "_size"):
                return int(channel._size(queue))
            return int(channel.queue_declare(queue, passive=True).message_count)
    except Exception:
        logger.debug("queue depth unavailable", exc_info=True)
        return None
