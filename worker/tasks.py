"""Celery tasks. Thin: they take instance ids and call plain functions.

Registered under the names in :mod:`worker.celery`, which senders use
(:mod:`worker.dispatch`) without importing this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task
from sqlalchemy.exc import OperationalError

from cxr_orient.dicomnet.delivery import deliver_due
from cxr_orient.dicomnet.retention import purge_spool as run_purge_spool
from cxr_orient.settings import get_settings
from cxr_orient.studies import release_quiet_studies as release_studies
from db.models import utcnow
from worker.celery import (
    CLASSIFY,
    DELIVER_OUTBOX,
    PURGE_SPOOL,
    RELEASE_QUIET_STUDIES,
    REQUEUE_STUCK,
    RETRAIN,
    app,
)
from worker.dispatch import send_instances
from worker.events import send_batch_events
from worker.pipeline import classify_instances
from worker.requeue import requeue_unfinished

logger = logging.getLogger(__name__)


class HandingBackBatches(Batches):
    """celery-batches' ``Batches``, but a batch whose pool process died hands its messages
    back to the broker (as ``task_reject_on_worker_lost`` does for plain tasks).

    celery-batches acknowledges a batch's messages only when its pool job returns; when
    the pool process is killed the job never returns and its messages stay unacknowledged
    in the worker until the worker restarts: instances still ``queued`` with no message
    anyone will deliver (found by the poison test once claims became leases: the lapsed
    claim came back, its batch-mates did not).
    """

    def flush(self, requests: Collection[Request]) -> Any:
        late = [r for r in requests if r.task.acks_late]
        early = [r for r in requests if not r.task.acks_late]

        def on_accepted(pid: int, time_accepted: float) -> None:
            for request in early:
                request.acknowledge()

        def on_return(result: Any) -> None:
            for request in late:
                request.acknowledge()

        def on_pool_failure(error: Any) -> None:
            # The pool job failed outside the task (its process was killed): give the
            # messages back; a redelivered id whose claim is still leased is skipped, the
            # others are claimed, and a lapsed claim is re-sent by the lease keepers.
            cause = getattr(error, "exception", error)
            logger.warning(
                "batch of %d lost with its pool process (%s); its messages go back to the queue",
                len(late),
                type(cause).__name__,
            )
            for request in late:
                request.reject(requeue=True)

        return self._pool.apply_async(
            apply_batches_task,
            (self, ([SimpleRequest.from_request(r) for r in requests],), 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=on_pool_failure,
        )


@app.task(
    base=HandingBackBatches,
    name=CLASSIFY,
    flush_every=get_settings().worker.batch_size,
    flush_interval=get_settings().worker.batch_max_wait_ms / 1000,
    acks_late=True,
    reject_on_worker_lost=True,
)
def classify(requests: list[SimpleRequest]) -> dict[str, Any]:
    """Classify the instances named by a batch of ``classify(instance_id)`` messages."""
    ids: list[int] = []
    for request in requests:
        try:
            ids.append(int(request.args[0]))
        except (IndexError, TypeError, ValueError):
            logger.warning(
                "dropping malformed classify message %s: args=%r", request.id, request.args
            )
    send_batch_events(requests, "task-started")
    start = time.monotonic()
    try:
        outcome = classify_instances(ids, settings=get_settings())
    except Exception as exc:
        send_batch_events(
            requests, "task-failed", exception=repr(exc), runtime=time.monotonic() - start
        )
        raise
    result = {
        "done": len(outcome.done),
        "failed": len(outcome.failed),
        "skipped": len(outcome.skipped),
        "lost": len(outcome.lost),
        "model": outcome.model_version,
    }
    send_batch_events(
        requests, "task-succeeded", result=repr(result), runtime=time.monotonic() - start
    )
    return result


@app.task(name=REQUEUE_STUCK, ignore_result=True)
def requeue_stuck() -> int:
    """Periodic reaper (celery beat): re-send instances whose processing stalled."""
    return requeue_unfinished(get_settings().worker, only_stale=True)


@app.task(
    name=RELEASE_QUIET_STUDIES,
    ignore_result=True,
    acks_late=False,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def release_quiet_studies() -> int:
    """Periodic (celery beat): queue the held instances of studies quiet for
    CXR_STUDY_QUIET_S. Not acked late: a lost run is simply the next one."""
    return release_studies(send_instances, get_settings().intake)


@app.task(name=PURGE_SPOOL, ignore_result=True, acks_late=False)
def purge_spool() -> dict[str, int]:
    """Periodic (celery beat): delete received files that nobody needs any more
    (CXR_SPOOL_KEEP_DAYS, docs/security.md)."""
    counts = run_purge_spool(get_settings(), utcnow())
    return {"deleted": counts.deleted, "already_gone": counts.already_gone, "errors": counts.errors}


@app.task(name=DELIVER_OUTBOX, ignore_result=True, acks_late=False)
def deliver_outbox() -> dict[str, int]:
    """Send due Structured Reports (beat, every CXR_OUTBOX_INTERVAL_S, and after each
    recorded batch). Acked early: the outbox rows, not the message, hold the work, so a
    lost message loses nothing (the next sweep finds the rows)."""
    counts = deliver_due(get_settings())
    return dict(counts.__dict__)


#: The retrain's own time limits (training takes minutes to hours, far past the pool's
#: batch-sized defaults); the lock in training.lifecycle keeps runs from overlapping.
RETRAIN_TIME_LIMIT_S = 12 * 3600


@app.task(
    name=RETRAIN,
    ignore_result=True,
    acks_late=False,
    soft_time_limit=RETRAIN_TIME_LIMIT_S - 60,
    time_limit=RETRAIN_TIME_LIMIT_S,
)
def retrain() -> str:
    """Nightly retrain (celery beat, CXR_RETRAIN_SCHEDULE); the lock in
    training.lifecycle keeps it from overlapping with a cron-started run."""
    # Imported here: training (and its plotting) is loaded only by the process that runs it.
    from training.lifecycle import retrain as run_retrain

    settings = get_settings()
    result = run_retrain(
        settings, min_new_labels=settings.training.retrain_min_new_labels, actor="celery-beat"
    )
    logger.info("scheduled retrain: %s", result.message)
    return result.message
