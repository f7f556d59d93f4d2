"""Task events for the batched classify messages, so that Flower (and ``celery events``)
follows each message as it does any other task.

celery-batches hands a whole batch to the pool as one call and sends no event for the
messages in it: without these, Flower lists classify tasks as sent and never received.
The main process sends ``task-received`` for each message as it is buffered
(:func:`send_received`, from the ``task_received`` signal); the pool process sends
``task-started`` and then ``task-succeeded`` or ``task-failed`` for each message of its
batch (:func:`send_batch_events`). Nothing is sent when task events are off
(``CXR_TASK_EVENTS``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from worker.celery import CLASSIFY, app

logger = logging.getLogger(__name__)


def send_received(request: Any) -> None:
    """``task-received`` for a classify message just buffered by celery-batches (other
    tasks get theirs from celery's own strategy)."""
    if getattr(request, "name", None) != CLASSIFY:
        return
    request.send_event(
        "task-received",
        name=request.name,
        args=request.argsrepr,
        kwargs=request.kwargsrepr,
        root_id=request.root_id,
        parent_id=request.parent_id,
        retries=0,
        eta=None,
        expires=None,
    )


def send_batch_events(requests: Sequence[Any], kind: str, **fields: Any) -> None:
    """``kind`` (task-started, task-succeeded, task-failed) for each message of a batch,
    from the pool process; best effort (monitoring must never fail a batch)."""
    if not requests or not app.conf.worker_send_task_events:
        return
    try:
        with app.events.default_dispatcher(hostname=requests[0].hostname) as dispatcher:
            for request in requests:
                dispatcher.send(kind, uuid=request.id, **fields)
    except Exception:
        logger.warning("could not send %s events", kind, exc_info=True)
