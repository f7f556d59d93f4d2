"""Study completeness: instances received over the network wait (status ``waiting``)
until no instance of their study arrived for ``CXR_STUDY_QUIET_S`` seconds, then are
queued and sent together.

The state is rows in the database (``instances.status``, ``studies.last_arrival_at``),
so a held instance outlives the process that received it. It is swept by
:func:`release_quiet_studies`: every few seconds by a beat-scheduled task
(``worker.tasks.release_quiet_studies``), and by a thread in each long-running network
process (:func:`run_release_loop`), so a study is released on time whether or not beat
runs. Callers may overlap: the release is one compare-and-set UPDATE, and only the caller
whose UPDATE moved a row sends it. If a process dies between that commit and its send,
the rows are ``queued`` with no message: the requeue reaper (``cxr-orient requeue``, the
worker's periodic ``requeue_stuck``) re-sends them like any other lost message.

An instance arriving after its study was released is held again and released on its
own quiet period; the study's answer (``study_answers``) then gets a new row.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from cxr_orient.ingest import Sender
from cxr_orient.settings import Settings, get_settings
from db import crud
from db.models import utcnow
from db.session import session_scope

__all__ = ["release_quiet_studies", "run_release_loop"]

logger = logging.getLogger(__name__)


def release_quiet_studies(
    send: Sender, settings: Settings | None = None, now: datetime | None = None
) -> int:
    """Queue and send the waiting instances of every study quiet for
    ``CXR_STUDY_QUIET_S`` seconds (as of ``now``, default the present); how many sent."""
    settings = settings or get_settings()
    cutoff = (now or utcnow()) - timedelta(seconds=settings.study_quiet_s)
    with session_scope() as session:
        ids = crud.release_waiting(session, arrived_before=cutoff)
    if ids:
        send(ids)
        logger.info("released %d instances of quiet studies", len(ids))
    return len(ids)


def run_release_loop(
    send: Sender, stop: threading.Event, settings: Settings | None = None
) -> None:
    """Sweep until ``stop`` is set (the body of a thread in ``listen``/``serve``); a
    database error is logged and the next sweep tries again: the process never dies of it."""
    settings = settings or get_settings()
    interval = settings.study_release_interval_s
    while not stop.wait(interval):
        try:
            release_quiet_studies(send, settings)
        except Exception:
            logger.exception("releasing quiet studies failed; retrying in %.1f s", interval)
