"""One batch of instances: claim -> decode (parallel) -> predict -> record.

The I/O shell of a batch: the claim and the write are one call each, decode and
predict one call each, and the metrics are counted here; what is decided between them
(which claimed rows to work on, the records and the failures, what the batch did) is
:mod:`worker.outcomes`, with no I/O. The Celery task only hands over instance ids. Each
image that cannot be used fails alone with its reason; the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from cxr_orient import metrics
from cxr_orient.answer import Answer
from cxr_orient.dicomnet.sr import new_sr_uid
from cxr_orient.errors import ModelError, TaskTimeoutError
from cxr_orient.settings import DB_RETRY_MAX_WAIT_S, Settings
from cxr_orient.studies import record_study_answers
from db import crud
from db.crud import ClaimedInstance
from db.models import utcnow
from db.session import dispose_engines, session_scope
from worker.decoding import abandon_decode_threads, decode_batch, start_decoding
from worker.leases import keeper, start_keeper
from worker.outcomes import (
    BatchOutcome,
    CorrectionRules,
    Decided,
    Failure,
    Refusal,
    Written,
    by_version,
    decide,
    refused_at_claim,
    settle,
)
from worker.readiness import mark_ready

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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


# --- resilience --------------------------------------------------------------------


def with_db_retry(fn: Callable[[], T], *, what: str, max_wait_s: float = DB_RETRY_MAX_WAIT_S) -> T:
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


def _claim(
    instance_ids: Sequence[int], settings: Settings, claim_token: str
) -> tuple[list[ClaimedInstance], BatchOutcome]:
    """Claim the batch (one statement) and fail at once, in the same transaction, what
    may not be worked on (:func:`worker.outcomes.refused_at_claim`)."""
    with session_scope() as session:
        claim = crud.claim_instances(
            session,
            instance_ids=instance_ids,
            lease_s=settings.worker.lease_s,
            claim_token=claim_token,
            claimed_by=worker_name(),
        )
        for instance_id in claim.unknown:
            logger.warning("dropping task for unknown instance id %d", instance_id)
        work, refused = refused_at_claim(claim.claimed, max_attempts=settings.worker.max_attempts)
        failed = _mark_failed(session, refused, claim_token)
        if failed:  # studies after instances: the lock order of every writer
            record_study_answers(session, instance_ids=failed)
    return work, BatchOutcome(
        failed={f.instance_id: f.error.code for f in refused}, skipped=claim.skipped
    )


def _mark_failed(session: Session, failures: Sequence[Failure], claim_token: str) -> list[int]:
    """Record each failure while its row is still held under ``claim_token`` and still
    refers to the bytes claimed; returns the ids recorded."""
    return [
        f.instance_id
        for f in failures
        if crud.mark_failed(
            session,
            instance_id=f.instance_id,
            error_code=f.error.code,
            error_message=str(f.error),
            file_sha256=f.file_sha256,
            claim_token=claim_token,
        )
    ]


def _write(
    work: Sequence[ClaimedInstance],
    model_version_id: int,
    decided: Decided,
    claim_token: str,
    destinations: Sequence[str],
    correction_destinations: Sequence[str],
) -> Written:
    """Record a batch's answers and failures in one transaction, with their outbox rows,
    the corrections the rules decided (and theirs) and their studies' answers, for the
    rows still held under ``claim_token`` only."""
    ids = [w.instance_id for w in work]
    with session_scope() as session:
        # The rows still ours, locked: a claim that lapsed and was taken over while
        # this worker was cut off is recorded by its new holder only.
        held = frozenset(crud.held_instance_ids(session, claim_token=claim_token, instance_ids=ids))
        recorded = crud.record_predictions(
            session,
            model_version_id=model_version_id,
            records=[r for r in decided.records if r.instance_id in held],
            worker=worker_name(),
            result_destinations=destinations,
            new_report_uid=new_sr_uid,
            claim_token=claim_token,
            corrections=decided.corrections,
            correction_destinations=correction_destinations,
        )
        _mark_failed(session, [f for f in decided.failures if f.instance_id in held], claim_token)
        # Files replaced since the claim (uid conflict, CXR_UID_CONFLICT_POLICY=replace):
        # nothing was recorded for them; their replacement is queued.
        superseded = crud.superseded_instance_ids(
            session, made_on={w.instance_id: w.file_sha256 for w in work}
        )
        # A study left with nothing waiting, queued or processing gets its answer.
        record_study_answers(session, instance_ids=ids)
    return Written(held=held, superseded=tuple(superseded), recorded=recorded)


def _record(
    work: Sequence[ClaimedInstance],
    model_version_id: int,
    decided: Decided,
    claim_token: str,
    settings: Settings,
) -> BatchOutcome:
    """Write (retried while the database is away), then say what the batch did."""
    destinations = settings.results.destination_urls
    correction_destinations = settings.corrections.destination_urls
    written = with_db_retry(
        lambda: _write(
            work, model_version_id, decided, claim_token, destinations, correction_destinations
        ),
        what="recording results",
    )
    if written.recorded and (destinations or decided.corrections):
        from worker.dispatch import kick_delivery

        kick_delivery(settings.results.outbox_interval_s)
    outcome = settle(work, decided, written)
    if outcome.skipped:
        logger.warning(
            "instances %s: file replaced while in flight; answer not recorded, "
            "the replacement is queued",
            outcome.skipped,
        )
    if outcome.lost:
        logger.warning(
            "claim on instances %s lapsed before their results were written "
            "(this worker was cut off for longer than CXR_LEASE_S): not "
            "recorded here; they were re-queued for another claim",
            outcome.lost,
        )
    return outcome


def _interrupted_before(instance_ids: Sequence[int]) -> list[int]:
    with session_scope() as session:
        return crud.interrupted_instance_ids(session, instance_ids=instance_ids)


def classify_instances(instance_ids: Sequence[int], *, settings: Settings) -> BatchOutcome:
    """Classify a batch of instances and record every outcome in the database.

    An instance whose processing was interrupted before (its worker was killed) may
    be what killed it: it runs alone, after the rest of the batch is recorded, so a
    poison file cannot take its batch-mates down with it again and again.
    """
    ids = list(dict.fromkeys(instance_ids))
    try:
        suspects: list[int] = []
        if len(ids) > 1:
            suspects = with_db_retry(lambda: _interrupted_before(ids), what="claim")
        outcome = _classify_batch([i for i in ids if i not in suspects], settings)
        for instance_id in suspects:
            outcome.merge(_classify_batch([instance_id], settings))
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
    limit = settings.worker.effective_task_soft_time_limit_s
    error = TaskTimeoutError(
        f"the batch ran past CXR_TASK_SOFT_TIME_LIMIT_S={limit:g} s before this image was "
        "finished (a read that hung?); tried at most "
        f"CXR_MAX_ATTEMPTS={settings.worker.max_attempts} times"
    )

    def write() -> crud.TimedOut:
        with session_scope() as session:
            timed_out = crud.time_out_instances(
                session,
                instance_ids=ids,
                max_attempts=settings.worker.max_attempts,
                error_code=error.code,
                error_message=str(error),
            )
            record_study_answers(session, instance_ids=timed_out.failed)
            return timed_out

    timed_out = with_db_retry(write, what="recording timeouts")
    from worker.dispatch import send_instances

    send_instances(timed_out.retried + timed_out.unclaimed)
    counters = metrics.worker_metrics()
    counters.timeouts.inc()
    counters.count_retried(error.code, len(timed_out.retried))
    counters.count_failed([error.code] * len(timed_out.failed))
    logger.error(
        "batch of %d stopped by the soft time limit (%g s): %d sent again, "
        "%d failed (%s), %d not started sent again",
        len(ids),
        limit,
        len(timed_out.retried),
        len(timed_out.failed),
        error.code,
        len(timed_out.unclaimed),
    )
    return BatchOutcome(
        failed={i: error.code for i in timed_out.failed},
        skipped=timed_out.retried + timed_out.unclaimed,
    )


def _classify_batch(instance_ids: Sequence[int], settings: Settings) -> BatchOutcome:
    from cxr_orient.registry import current_model

    if not instance_ids:
        return BatchOutcome()
    # The model first: if it cannot be loaded, nothing is claimed and the instances
    # stay queued for the reaper to re-send, instead of burning their attempts.
    model: LoadedModel = with_db_retry(
        lambda: current_model(settings.inference), what="model lookup"
    )
    # One token for the batch, made before the first try: a claim that committed though
    # its answer was lost (the connection dropped) is retried under the same token.
    token = crud.new_claim_token()
    work, outcome = with_db_retry(lambda: _claim(instance_ids, settings, token), what="claim")
    outcome.model_version = model.name
    if not work:
        return outcome
    with keeper(settings.worker).holding(token):
        for version_id, items in by_version(work, model.version_id).items():
            if version_id == model.version_id:
                outcome.merge(_predict_and_record(items, model, settings, token))
            else:
                outcome.merge(_classify_for_version(version_id, items, settings, token))
    logger.info(
        "batch of %d: %d done, %d failed, %d skipped, %d lost (model %s)",
        len(instance_ids),
        len(outcome.done),
        len(outcome.failed),
        len(outcome.skipped),
        len(outcome.lost),
        model.name,
    )
    return outcome


def _classify_for_version(
    version_id: int, work: list[ClaimedInstance], settings: Settings, token: str
) -> BatchOutcome:
    """Work reclassify names a version for, by the version from the per-process cache; if
    it cannot be loaded here (checkpoint missing or altered), that work fails with the
    reason."""
    from cxr_orient.registry import model_for_version

    try:
        model = with_db_retry(
            lambda: model_for_version(version_id, settings.inference), what="model lookup"
        )
    except ModelError as error:
        logger.error("cannot serve model version %d: %s", version_id, error)
        failures = [Failure(w.instance_id, w.file_sha256, error) for w in work]
        return _record(work, version_id, Decided([], failures), token, settings)
    return _predict_and_record(work, model, settings, token)


def _predict_and_record(
    work: list[ClaimedInstance], model: LoadedModel, settings: Settings, token: str
) -> BatchOutcome:
    """Decode, predict, decide, write: the work of one model version."""
    decoded = decode_batch(work, settings, model.input_size)
    counters = metrics.worker_metrics()
    for _, _, ms in decoded:
        counters.decode_seconds.observe(ms / 1000)
    if keeper(settings.worker).lost(token):
        ids = [w.instance_id for w in work]
        logger.warning(
            "claim on instances %s lapsed while decoding (no lease renewal "
            "reached the database for CXR_LEASE_S, or another worker holds "
            "them now): batch abandoned, nothing recorded; the work is "
            "re-queued",
            ids,
        )
        return BatchOutcome(lost=ids)
    images = [img for img, _, _ in decoded if img is not None]
    predictions: list[Answer] = []
    inference_ms = 0.0
    if images:
        start = time.perf_counter()
        predictions = model.classifier.predict(np.stack(images))
        inference_s = time.perf_counter() - start
        inference_ms = inference_s * 1000 / len(images)
        counters.inference_seconds.observe(inference_s)
        counters.batch_size.observe(len(images))
    refusal = Refusal(
        refuse_unusual=settings.inference.unusual_image_action == "refuse",
        unusual_threshold=model.classifier.card.unusual_threshold,
    )
    # Rules decide nothing while corrections go nowhere.
    rules = CorrectionRules(
        enabled=(
            settings.corrections.rule_faults
            if settings.corrections.correction_destinations
            else frozenset()
        ),
        model_name=model.name,
        decided_at=utcnow(),
    )
    decided = decide(
        work, decoded, predictions, refusal=refusal, inference_ms=inference_ms, rules=rules
    )
    outcome = _record(work, model.version_id, decided, token, settings)
    done = set(outcome.done)
    counters.count_done(r.answer.label for r in decided.records if r.instance_id in done)
    return outcome


def on_process_start(settings: Settings) -> None:
    """Per pool process, after fork: fresh DB connections, then load the model once."""
    from cxr_orient.registry import current_model

    dispose_engines(close=False)
    metrics.worker_metrics().pool_processes.set(1)
    # The lease keeper first: this process renews its claims and, idle or not, re-queues
    # claims whose worker died (worker.leases).
    start_keeper(settings.worker)
    started = time.monotonic()
    # The card's set-up (CUDA context, nvImageCodec) in a thread, meanwhile the model loads
    # and compiles (or, served, the inference process does): start-up is the longer of the
    # two, not their sum (issue 23).
    setup = ThreadPoolExecutor(1, thread_name_prefix="decode-setup")
    decoding: Future[str] = setup.submit(start_decoding, settings)
    setup.shutdown(wait=False)  # the thread ends once the set-up is done
    try:
        model = with_db_retry(
            lambda: current_model(settings.inference), what="initial model load", max_wait_s=60
        )
        # Compile now, not during the first real batches, so first-study latency stays low.
        model.classifier.warm_up(settings.worker.batch_size)
        warm = time.monotonic() - started
        where = decoding.result()
        logger.info(
            "worker process %s serving model %s, %s (model ready in %.1f s, decoding in %.1f s)",
            worker_name(),
            model.name,
            where,
            warm,
            time.monotonic() - started,
        )
        mark_ready()  # this process can classify now (worker.readiness)
    except Exception:
        # The first batch retries; a worker must not die because the DB is late.
        logger.exception("could not load the model at process start")
