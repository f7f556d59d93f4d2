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

A study's answer: once none of its instances is waiting, queued or processing,
:func:`record_study_answers` (in the transaction that finished them) reads its instances
(``db.crud.finished_studies``), applies the rule (:func:`study_answer`, a pure function)
and records the result (``db.crud.add_study_answers``) when it changed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from cxr_orient.settings import IntakeSettings
from db import crud
from db.models import InstanceStatus, OrientationLabel, utcnow
from db.session import session_scope

__all__ = [
    "STUDY_FLAGS",
    "record_study_answers",
    "release_quiet_studies",
    "run_release_loop",
    "study_answer",
]

logger = logging.getLogger(__name__)

#: Sends one classification per instance id (``worker.dispatch.send_instances``).
Sender = Callable[[Sequence[int]], object]

#: The flags a study answer can carry, in the order they are listed.
STUDY_FLAGS = ("no_frontal", "no_lateral", "header_disagreement", "needs_review", "failed")


def study_answer(instances: Sequence[crud.StudyInstance]) -> crud.NewStudyAnswer:
    """The answer of a study whose instances (in id order) are all finished: how many
    answered frontal, lateral, flagged for review, failed, out of scope, agreeing or not
    with their header, the flags (:data:`STUDY_FLAGS`: no frontal, no lateral, a header
    disagreement, an answer to review, a failure) and the model versions that answered.
    Only ``done`` instances with an answer count as answered. The fingerprint names the
    inputs (each instance's id, status and current answer)."""
    done = [i for i in instances if i.status == InstanceStatus.done and i.answer_id is not None]
    frontal = sum(1 for i in done if i.label == OrientationLabel.frontal)
    lateral = sum(1 for i in done if i.label == OrientationLabel.lateral)
    review = sum(1 for i in done if i.needs_review)
    agrees = sum(1 for i in done if i.header_agrees is True)
    disagrees = sum(1 for i in done if i.header_agrees is False)
    failed = sum(1 for i in instances if i.status == InstanceStatus.failed)
    flags = {
        "no_frontal": frontal == 0,
        "no_lateral": lateral == 0,
        "header_disagreement": disagrees > 0,
        "needs_review": review > 0,
        "failed": failed > 0,
    }
    fingerprint = hashlib.sha256(
        ";".join(
            f"{i.instance_id},{i.status.value},{i.answer_id or ''}" for i in instances
        ).encode()
    ).hexdigest()
    return crud.NewStudyAnswer(
        fingerprint=fingerprint,
        instance_count=len(instances),
        frontal_count=frontal,
        lateral_count=lateral,
        needs_review_count=review,
        failed_count=failed,
        out_of_scope_count=sum(1 for i in instances if i.status == InstanceStatus.out_of_scope),
        header_agrees_count=agrees,
        header_disagrees_count=disagrees,
        no_frontal=flags["no_frontal"],
        no_lateral=flags["no_lateral"],
        header_disagreement=flags["header_disagreement"],
        flags=",".join(f for f in STUDY_FLAGS if flags[f]) or None,
        model_versions=",".join(sorted({i.model_version for i in done if i.model_version})) or None,
    )


def record_study_answers(
    session: Session, *, instance_ids: Sequence[int] = (), study_ids: Sequence[int] = ()
) -> int:
    """Add a ``study_answers`` row for each study of ``instance_ids`` (and each of
    ``study_ids``) that has no waiting, queued or processing instance left and whose
    answer (:func:`study_answer`) differs from its newest row's; returns rows added.

    Called in the transaction that finished the instances (``session``), after them:
    the studies' rows are locked then (the lock order of every writer), so the answer
    is written once, by whichever transaction finishes a study last."""
    finished = crud.finished_studies(session, instance_ids=instance_ids, study_ids=study_ids)
    return crud.add_study_answers(
        session,
        answers={study_id: study_answer(instances) for study_id, instances in finished.items()},
    )


def release_quiet_studies(send: Sender, intake: IntakeSettings, now: datetime | None = None) -> int:
    """Queue and send the waiting instances of every study quiet for
    ``CXR_STUDY_QUIET_S`` seconds (as of ``now``, default the present); how many sent."""
    cutoff = (now or utcnow()) - timedelta(seconds=intake.study_quiet_s)
    with session_scope() as session:
        ids = crud.release_waiting(session, arrived_before=cutoff)
    if ids:
        send(ids)
        logger.info("released %d instances of quiet studies", len(ids))
    return len(ids)


def run_release_loop(send: Sender, stop: threading.Event, intake: IntakeSettings) -> None:
    """Sweep until ``stop`` is set (the body of a thread in ``listen``/``serve``); a
    database error is logged and the next sweep tries again: the process never dies of it."""
    interval = intake.study_release_interval_s
    while not stop.wait(interval):
        try:
            release_quiet_studies(send, intake)
        except Exception:
            logger.exception("releasing quiet studies failed; retrying in %.1f s", interval)
