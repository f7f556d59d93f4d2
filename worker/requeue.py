"""Re-send work the database says is unfinished.

The database is the source of truth. A message can be lost (the broker
restarted without persistence) or stranded (its worker was killed); either way
the instance stays ``queued`` or ``processing`` in the database, and sending
its id again is safe: a worker claims an instance atomically and an instance
that is already done is skipped.
"""

from __future__ import annotations

import logging

from cxr_orient.settings import WorkerSettings
from db import crud
from db.session import session_scope
from worker.dispatch import broker_queue_depth, send_instances

logger = logging.getLogger(__name__)


def requeue_unfinished(worker: WorkerSettings, *, only_stale: bool = False) -> int:
    """Send again every instance still ``queued`` or stranded in ``processing``.

    ``processing`` instances are re-sent only once their claim's lease lapsed (their
    worker stopped renewing it, CXR_LEASE_S): a live worker's batch, however slow, is
    never taken from it. With ``only_stale`` (worker start, periodic beat task) queued
    instances are re-sent only when the broker holds fewer messages than the database
    has queued instances, i.e. when messages were evidently lost.
    """
    lease_s = worker.lease_s
    with session_scope() as session:
        counts = crud.status_counts(session)
        ids = crud.unfinished_instance_ids(session, lapsed_lease_s=lease_s)
        if only_stale:
            depth = broker_queue_depth()
            if depth is not None and depth >= counts["queued"]:
                ids = crud.unfinished_instance_ids(session, lapsed_lease_s=lease_s, queued=False)
        crud.mark_queued(session, instance_ids=ids, lease_s=lease_s)
    sent = send_instances(ids)
    if sent:
        logger.info("re-sent %d unfinished instances", sent)
    return sent
