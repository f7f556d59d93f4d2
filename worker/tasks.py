"""Celery tasks. Thin: they take instance ids and call plain functions.

Registered under the names in :mod:`worker.celery`, which senders use
(:mod:`worker.dispatch`) without importing this module.
"""

from __future__ import annotations

import logging
from typing import Any

from celery_batches import Batches, SimpleRequest
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
from worker.pipeline import classify_instances
from worker.requeue import requeue_unfinished

logger = logging.getLogger(__name__)
_settings = get_settings()


@app.task(
    base=Batches,
    name=CLASSIFY,
    flush_every=_settings.batch_size,
    flush_interval=_settings.batch_max_wait_ms / 1000,
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
    outcome = classify_instances(ids)
    return {
        "done": len(outcome.done),
        "failed": len(outcome.failed),
        "skipped": len(outcome.skipped),
        "lost": len(outcome.lost),
        "model": outcome.model_version,
    }


@app.task(name=REQUEUE_STUCK, ignore_result=True)
def requeue_stuck() -> int:
    """Periodic reaper (celery beat): re-send instances whose processing stalled."""
    return requeue_unfinished(only_stale=True)


@app.task(name=RELEASE_QUIET_STUDIES, ignore_result=True, acks_late=False,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def release_quiet_studies() -> int:
    """Periodic (celery beat): queue the held instances of studies quiet for
    CXR_STUDY_QUIET_S. Not acked late: a lost run is simply the next one."""
    return release_studies(send_instances, _settings)
@app.task(name=PURGE_SPOOL, ignore_result=True, acks_late=False)
def purge_spool() -> dict[str, int]:
    """Periodic (celery beat): delete received files that nobody needs any more
    (CXR_SPOOL_KEEP_DAYS, docs/security.md)."""
    counts = run_purge_spool(get_settings(), utcnow())
    return {"deleted": counts.deleted, "already_gone": counts.already_gone,
            "errors": counts.errors}
@app.task(name=DELIVER_OUTBOX, ignore_result=True, acks_late=False)
def deliver_outbox() -> dict[str, int]:
    """Send due Structured Reports (beat, every CXR_OUTBOX_INTERVAL_S, and after each
    recorded batch). Acked early: the outbox rows, not the message, hold the work, so a
    lost message loses nothing (the next sweep finds the rows)."""
    counts = deliver_due(get_settings())
    return dict(counts.__dict__)


@app.task(name=RETRAIN, ignore_result=True, acks_late=False)
def retrain() -> str:
    """Nightly retrain (celery beat, CXR_RETRAIN_SCHEDULE); the lock in
    training.lifecycle keeps it from overlapping with a cron-started run."""
    # Imported here: training (and its plotting) is loaded only by the process that runs it.
    from training.lifecycle import retrain as run_retrain

    result = run_retrain(min_new_labels=_settings.retrain_min_new_labels, actor="celery-beat")
    logger.info("scheduled retrain: %s", result.message)
    return result.message
