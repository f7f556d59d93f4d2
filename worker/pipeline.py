"""One batch of instances: claim -> decode (parallel) -> predict -> record.

Plain functions; the Celery task only hands over instance ids. Each image that
cannot be used fails alone with its reason; the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from cxr_orient import metrics
from cxr_orient.dicomnet.sr import new_sr_uid
from cxr_orient.errors import (
    FilePurgedError,
    InterruptedProcessingError,
    ModelError,
    TaskTimeoutError,
    UnusualImageError,
)
from cxr_orient.imaging import view_to_label, view_to_projection
from cxr_orient.settings import DB_RETRY_MAX_WAIT_S, Settings, get_settings
from cxr_orient.studies import record_study_answers
from db import crud
from db.models import OrientationLabel
from db.session import dispose_engines, session_scope
from worker.decoding import abandon_decode_threads, decode_batch, start_decoding
from worker.leases import keeper, start_keeper
from worker.readiness import mark_ready

if TYPE_CHECKING:
    from cxr_orient.registry import LoadedModel

logger = logging.getLogger(__name__)
T = TypeVar("T")

_NODE_NAME: str | None = None


def set_node_name(name: str) -> None:
    """The celery node name (``-n``/``--hostname``), set in the worker's parent before the
    pool forks (worker.signals), so two workers on one host tell apart in the records."""
    global _NODE_NAME
    _NODE_NAME = name


def worker_name() -> str:
    """``<node>:<pid>`` of this pool process (the celery node name, else the host name),
    recorded with each answer and each claim (read at call time: this module is
    imported in the parent, before the pool forks)."""
    return f"{_NODE_NAME or socket.gethostname()}:{os.getpid()}"


@dataclass
class BatchOutcome:
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    model_version: str | None = None
    #: Claimed, then the claim lapsed before the outcome was written (this worker was cut
    #: off from the database for longer than CXR_LEASE_S): nothing recorded, the work was
    #: re-queued and another claim answers it.
    lost: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Work:
    instance_id: int
    file_path: str
    file_sha256: str
    header_view: str | None
    #: The reclassify marker: the version that must answer (None: the active one).
    target_version_id: int | None = None


# --- resilience --------------------------------------------------------------------


def with_db_retry(fn: Callable[[], T], *, what: str,
                  max_wait_s: float = DB_RETRY_MAX_WAIT_S) -> T:
    """Run ``fn`` until the database answers, backing off up to ``max_wait_s`` in all.

    A database outage must not lose the work in hand (predictions already
    computed) nor crash-loop the worker; after ``max_wait_s`` the error is raised
    and the broker redelivers the messages.
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            if not getattr(exc, "connection_invalidated", False) and not isinstance(
                exc, OperationalError
            ):
                raise
            if waited >= max_wait_s:
                raise
            logger.warning(
                "database unavailable during %s (%s); retrying in %.1fs",
                what,
                type(exc.orig).__name__ if exc.orig else exc,
                delay,
            )
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 15.0)


# --- the batch ----------------------------------------------------------------------


def _claim(instance_ids: Sequence[int], settings: Settings,
           claim_token: str) -> tuple[list[_Work], BatchOutcome]:
    outcome = BatchOutcome()
    work: list[_Work] = []
    me = worker_name()
    with session_scope() as session:
        for instance_id in dict.fromkeys(instance_ids):  # de-duplicate, keep order
            if not crud.claim_for_processing(
                session, instance_id=instance_id, lease_s=settings.lease_s,
                claim_token=claim_token, claimed_by=me,
            ):
                if crud.get_instance(session, instance_id=instance_id) is None:
                    logger.warning("dropping task for unknown instance id %d", instance_id)
                outcome.skipped.append(instance_id)
                continue
            row = crud.get_instance(session, instance_id=instance_id)
            assert row is not None
            if row.attempts > settings.max_attempts:
                error = InterruptedProcessingError(
                    f"processing was interrupted {row.attempts - 1} times "
                    f"(CXR_MAX_ATTEMPTS={settings.max_attempts}); giving up"
                )
                crud.mark_failed(
                    session,
                    instance_id=instance_id,
                    error_code=error.code,
                    error_message=str(error),
                    file_sha256=row.file_sha256,
                )
                outcome.failed[instance_id] = error.code
                continue
            if row.file_purged_at is not None:
                purged = FilePurgedError(
                    f"instance {row.id}: its received file was deleted by the spool purge "
                    "(CXR_SPOOL_KEEP_DAYS); its earlier answers stay, have it sent again "
                    "to classify it again")
                crud.mark_failed(session, instance_id=instance_id, error_code=purged.code,
                                 error_message=str(purged), file_sha256=row.file_sha256)
                outcome.failed[instance_id] = purged.code
                continue
            work.append(_Work(row.id, row.file_path, row.file_sha256, row.header_view_position,
                              row.target_model_version_id))
        if outcome.failed:  # studies after instances: the lock order of every writer
            record_study_answers(session, instance_ids=list(outcome.failed))
    return work, outcome


def _interrupted_before(instance_ids: Sequence[int]) -> list[int]:
    with session_scope() as session:
        return crud.interrupted_instance_ids(session, instance_ids=instance_ids)


def _merge(into: BatchOutcome, other: BatchOutcome) -> None:
    into.done.extend(other.done)
    into.failed.update(other.failed)
    into.skipped.extend(other.skipped)
    into.lost.extend(other.lost)
    into.model_version = into.model_version or other.model_version


def classify_instances(
    instance_ids: Sequence[int], *, settings: Settings | None = None
) -> BatchOutcome:
    """Classify a batch of instances and record every outcome in the database.

    An instance whose processing was interrupted before (its worker was killed) may
    be what killed it: it runs alone, after the rest of the batch is recorded, so a
    poison file cannot take its batch-mates down with it again and again.
    """
    settings = settings or get_settings()
    ids = list(dict.fromkeys(instance_ids))
    try:
        suspects: list[int] = []
        if len(ids) > 1:
            suspects = with_db_retry(lambda: _interrupted_before(ids), what="claim")
        outcome = _classify_batch([i for i in ids if i not in suspects], settings)
        for instance_id in suspects:
            _merge(outcome, _classify_batch([instance_id], settings))
    except SoftTimeLimitExceeded:
        return _timed_out(ids, settings)
    metrics.worker_metrics().count_failed(outcome.failed.values())
    return outcome


def _timed_out(ids: list[int], settings: Settings) -> BatchOutcome:
    """The batch ran past CXR_TASK_SOFT_TIME_LIMIT_S: what it had claimed and not finished
    is recorded ``timeout`` and sent again (failed with it on its last attempt), what it
    had not claimed yet is sent again as it is; what it finished stays finished. The
    decode threads are replaced: one may be stuck in the read that hung, for good."""
    abandon_decode_threads()
    limit = settings.effective_task_soft_time_limit_s
    error = TaskTimeoutError(
        f"the batch ran past CXR_TASK_SOFT_TIME_LIMIT_S={limit:g} s before this image was "
        f"finished (a read that hung?); tried at most CXR_MAX_ATTEMPTS={settings.max_attempts}"
        " times")

    def write() -> crud.TimedOut:
        with session_scope() as session:
            timed_out = crud.time_out_instances(
                session, instance_ids=ids, max_attempts=settings.max_attempts,
                error_code=error.code, error_message=str(error))
            record_study_answers(session, instance_ids=timed_out.failed)
            return timed_out

    timed_out = with_db_retry(write, what="recording timeouts")
    from worker.dispatch import send_instances

    send_instances(timed_out.retried + timed_out.unclaimed)
    counters = metrics.worker_metrics()
    counters.timeouts.inc()
    counters.count_retried(error.code, len(timed_out.retried))
    counters.count_failed([error.code] * len(timed_out.failed))
    logger.error("batch of %d stopped by the soft time limit (%g s): %d sent again, "
                 "%d failed (%s), %d not started sent again", len(ids), limit,
                 len(timed_out.retried), len(timed_out.failed), error.code,
                 len(timed_out.unclaimed))
    return BatchOutcome(failed={i: error.code for i in timed_out.failed},
                        skipped=timed_out.retried + timed_out.unclaimed)


def _classify_batch(instance_ids: Sequence[int], settings: Settings) -> BatchOutcome:
    from cxr_orient.registry import current_model

    if not instance_ids:
        return BatchOutcome()
    # The model first: if it cannot be loaded, nothing is claimed and the instances
    # stay queued for the reaper to re-send, instead of burning their attempts.
    model: LoadedModel = with_db_retry(current_model, what="model lookup")
    # One token for the batch, made before the first try: a claim that committed though
    # its answer was lost (the connection dropped) is retried under the same token.
    token = crud.new_claim_token()
    work, outcome = with_db_retry(lambda: _claim(instance_ids, settings, token),
                                  what="claim")
    outcome.model_version = model.name
    if not work:
        return outcome
    with keeper(settings).holding(token):
        _classify_claimed(work, model, settings, outcome, token)
    return outcome


def _classify_claimed(work: list[_Work], model: LoadedModel, settings: Settings,
                      outcome: BatchOutcome, token: str) -> None:
    # Reclassify work names its version (the row's marker, so a re-sent id keeps it); the
    # rest, and work naming the active version, is one group for the active model.
    groups: dict[int, list[_Work]] = {}
    for w in work:
        groups.setdefault(w.target_version_id or model.version_id, []).append(w)
    for version_id, items in groups.items():
        served = model if version_id == model.version_id else _named_model(
            version_id, items, outcome, token)
        if served is not None:
            _predict_and_record(items, served, settings, outcome, token)


def _named_model(version_id: int, work: list[_Work], outcome: BatchOutcome,
                 token: str) -> LoadedModel | None:
    """The version reclassify work names, from the per-process cache; if it cannot be
    loaded here (checkpoint missing or altered), that work fails with the reason."""
    from cxr_orient.registry import model_for_version

    try:
        return with_db_retry(lambda: model_for_version(version_id), what="model lookup")
    except ModelError as exc:
        error = exc
    logger.error("cannot serve model version %d: %s", version_id, error)

    failed: list[int] = []

    def write() -> None:
        with session_scope() as session:
            failed[:] = [w.instance_id for w in work if crud.mark_failed(
                session, instance_id=w.instance_id, error_code=error.code,
                error_message=str(error), file_sha256=w.file_sha256, claim_token=token)]
            record_study_answers(session, instance_ids=[w.instance_id for w in work])

    with_db_retry(write, what="recording results")
    outcome.failed.update({i: error.code for i in failed})
    outcome.lost.extend(w.instance_id for w in work if w.instance_id not in set(failed))
    return None


def _abandon(work: list[_Work], outcome: BatchOutcome, when: str) -> None:
    ids = [w.instance_id for w in work]
    logger.warning("claim on instances %s lapsed %s (no lease renewal reached the database "
                   "for CXR_LEASE_S, or another worker holds them now): batch abandoned, "
                   "nothing recorded; the work is re-queued", ids, when)
    outcome.lost.extend(ids)


def _predict_and_record(
    work: list[_Work], model: LoadedModel, settings: Settings, outcome: BatchOutcome,
    token: str,
) -> None:
    leases = keeper(settings)
    decoded = decode_batch(work, settings, model.input_size)
    counters = metrics.worker_metrics()
    for _, _, ms in decoded:
        counters.decode_seconds.observe(ms / 1000)
    if leases.lost(token):
        _abandon(work, outcome, "while decoding")
        return

    ready = [
        (w, img, ms) for w, (img, err, ms) in zip(work, decoded, strict=True) if img is not None
    ]
    failures = [(w, err) for w, (img, err, _) in zip(work, decoded, strict=True) if err is not None]
    records: list[crud.PredictionRecord] = []
    if ready:
        batch = np.stack([img for _, img, _ in ready])
        start = time.perf_counter()
        predictions = model.classifier.predict(batch)
        inference_s = time.perf_counter() - start
        inference_ms = inference_s * 1000 / len(ready)
        counters.inference_seconds.observe(inference_s)
        counters.batch_size.observe(len(ready))
        for (w, _, decode_ms), answer in zip(ready, predictions, strict=True):
            if answer.unusual and settings.unusual_image_action == "refuse":
                failures.append((w, UnusualImageError(
                    f"{w.file_path!r}: unlike any chest radiograph the model was trained on "
                    f"(unusual-image score {answer.unusual_score:.3f} > "
                    f"{model.classifier.card.unusual_threshold:.3f}); "
                    "CXR_UNUSUAL_IMAGE_ACTION=refuse")))
                continue
            claimed = view_to_label(w.header_view)
            header_projection = view_to_projection(w.header_view)
            records.append(
                crud.PredictionRecord(
                    instance_id=w.instance_id,
                    label=OrientationLabel(answer.label),
                    confidence=answer.confidence,
                    p_frontal=answer.p_frontal,
                    p_lateral=answer.p_lateral,
                    header_agrees=None if claimed is None else claimed == answer.label,
                    needs_review=answer.needs_review,
                    review_reason=",".join(answer.review_reasons) or None,
                    rotation=answer.rotation,
                    mirrored=answer.mirrored,
                    unusual_score=answer.unusual_score,
                    projection=answer.projection,
                    # A lateral has no projection to be probable of.
                    p_ap=answer.p_ap if answer.label == "frontal" else None,
                    projection_agrees=(None if answer.projection is None
                                       or header_projection is None
                                       else answer.projection == header_projection),
                    p_not_chest=answer.p_not_chest,
                    decode_ms=round(decode_ms, 3),
                    inference_ms=round(inference_ms, 3),
                    batch_size=len(ready),
                    file_sha256=w.file_sha256,
                )
            )

    superseded: list[int] = []
    held: set[int] = set()
    recorded = [0]
    destinations = [d.url for d in settings.result_destination_list]

    def write() -> None:
        with session_scope() as session:
            # The rows still ours, locked: a claim that lapsed and was taken over while
            # this worker was cut off is recorded by its new holder only.
            held.clear()
            held.update(crud.held_instance_ids(
                session, claim_token=token, instance_ids=[w.instance_id for w in work]))
            recorded[0] = crud.record_predictions(
                session, model_version_id=model.version_id,
                records=[r for r in records if r.instance_id in held],
                worker=worker_name(), result_destinations=destinations,
                new_report_uid=new_sr_uid, claim_token=token)
            for w, err in failures:
                assert err is not None
                if w.instance_id not in held:
                    continue
                crud.mark_failed(
                    session,
                    instance_id=w.instance_id,
                    error_code=err.code,
                    error_message=str(err),
                    file_sha256=w.file_sha256,
                    claim_token=token,
                )
            # Files replaced since the claim (uid conflict, CXR_UID_CONFLICT_POLICY=replace):
            # nothing was recorded for them; their replacement is queued.
            superseded[:] = crud.superseded_instance_ids(
                session, made_on={w.instance_id: w.file_sha256 for w in work})
            # A study left with nothing waiting, queued or processing gets its answer.
            record_study_answers(session, instance_ids=[w.instance_id for w in work])

    with_db_retry(write, what="recording results")
    if recorded[0] and destinations:
        from worker.dispatch import kick_delivery

        kick_delivery()
    if superseded:
        logger.warning("instances %s: file replaced while in flight; answer not recorded, "
                       "the replacement is queued", superseded)
    lost = [w.instance_id for w in work
            if w.instance_id not in held and w.instance_id not in set(superseded)]
    if lost:
        logger.warning("claim on instances %s lapsed before their results were written "
                       "(this worker was cut off for longer than CXR_LEASE_S): not "
                       "recorded here; they were re-queued for another claim", lost)
    gone = set(superseded) | set(lost)
    outcome.done.extend(r.instance_id for r in records if r.instance_id not in gone)
    counters.count_done(r.label.value for r in records if r.instance_id not in gone)
    outcome.failed.update(
        {w.instance_id: err.code for w, err in failures if err is not None
         and w.instance_id not in gone})
    outcome.skipped.extend(superseded)
    outcome.lost.extend(lost)
    logger.info(
        "batch of %d: %d done, %d failed, %d skipped, %d lost (model %s)",
        len(work),
        len(outcome.done),
        len(outcome.failed),
        len(outcome.skipped),
        len(outcome.lost),
        model.name,
    )


def on_process_start() -> None:
    """Per pool process, after fork: fresh DB connections, then load the model once."""
    from cxr_orient.registry import current_model

    dispose_engines(close=False)
    metrics.worker_metrics().pool_processes.set(1)
    # The lease keeper first: this process renews its claims and, idle or not, re-queues
    # claims whose worker died (worker.leases).
    start_keeper()
    try:
        model = with_db_retry(current_model, what="initial model load", max_wait_s=60)
        # Compile now, not during the first real batches, so first-study latency stays low.
        model.classifier.warm_up(get_settings().batch_size)
        logger.info("worker process %s serving model %s, %s", worker_name(), model.name,
                    start_decoding(get_settings()))
        mark_ready()  # this process can classify now (worker.readiness)
    except Exception:
        # The first batch retries; a worker must not die because the DB is late.
        logger.exception("could not load the model at process start")
