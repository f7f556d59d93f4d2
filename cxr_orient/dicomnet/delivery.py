"""Delivering the outbox: due rows are claimed, their Structured Reports (or a
correction's replacement and rejection note, :mod:`.corrections.outgoing`) built and
sent, and each outcome recorded.

:func:`deliver_due` is the one entry point (the ``deliver_outbox`` Celery task, beat
scheduled and kicked after each recorded batch, and ``cxr-orient outbox deliver``):

1. **claim** up to ``limit`` due pending rows atomically (:func:`db.crud.claim_due_outbox`:
   one more attempt, leased for CXR_OUTBOX_LEASE_S), in a transaction of its own;
2. **build** each answer's SR once (:func:`cxr_orient.dicomnet.sr.build_sr`) from the
   source file's header, read through the checked read (:func:`cxr_orient.intake.read_checked`:
   confined, bounded, and the bytes the answer was made on);
3. **send** it to each row's destination and record: ``sent`` (and the destination's
   backoff ends); or, for a transient error, ``pending`` again with the cause
   ("connection refused", "association rejected", "timed out"...) and the destination
   backs off: its consecutive failures (``outbox_destinations``, shared by every sender)
   grow one capped exponential wait (CXR_OUTBOX_BACKOFF_S doubled per failure up to
   CXR_OUTBOX_BACKOFF_MAX_S) before any of its rows is claimed again. A destination that
   is down delays delivery, never loses it, and is not hammered; its other rows in the
   run are given back untried, due with it. Or ``failed`` for good when the destination
   refused the object or its source file can no longer be read.

Delivered once: a sender that dies between the destination's answer and step 3's
commit leaves the row pending; after the lease it is sent again, the same object with
the same SOPInstanceUID, which a PACS stores once (Orthanc: "AlreadyStored").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

from cxr_orient.dicomnet.addresses import parse_result_destination
from cxr_orient.dicomnet.corrections.outgoing import correction_objects
from cxr_orient.dicomnet.destinations import Sender, sender_for
from cxr_orient.dicomnet.sr import build_sr
from cxr_orient.errors import CxrError, DeliveryError
from cxr_orient.imaging.reading import inflated_size_limit, read_dataset
from cxr_orient.intake import read_checked
from cxr_orient.settings import IntakeSettings, ResultSettings, Settings
from db import crud
from db.models import utcnow
from db.session import session_scope

__all__ = ["DeliveryCounts", "backoff_s", "deliver_due", "report_for"]

logger = logging.getLogger(__name__)

#: One outbox row's work: an answer's report, or a correction's objects.
Work = crud.OutboxWork | crud.CorrectionWork


@dataclass
class DeliveryCounts:
    claimed: int = 0
    sent: int = 0
    #: Pending again, due after the backoff.
    retrying: int = 0
    failed: int = 0


def backoff_s(failures: int, results: ResultSettings) -> float:
    """Wait before trying a destination again after ``failures`` consecutive failures."""
    exponent = min(max(failures - 1, 0), 30)
    return float(min(results.outbox_backoff_max_s, results.outbox_backoff_s * 2**exponent))


def report_for(work: crud.OutboxWork, intake: IntakeSettings) -> Dataset:
    """The SR of one outbox row, built from its source file's header (raises an
    :class:`~cxr_orient.errors.InputError` when the file is gone or changed)."""
    checked = read_checked(work.file_path, expected_sha256=work.file_sha256, intake=intake)
    source = read_dataset(
        checked.real,
        stop_before_pixels=True,
        data=checked.data,
        inflate_limit=inflated_size_limit(intake.max_pixels),
    )
    return build_sr(
        source,
        work.answer,
        model_name=work.model_name,
        model_architecture=work.model_architecture,
        answered_at=work.answered_at,
        sop_instance_uid=work.sr_sop_instance_uid,
        instance_number=work.prediction_id,
    )


def deliver_due(settings: Settings, limit: int | None = None) -> DeliveryCounts:
    """Claim, build, send and record up to ``limit`` (CXR_OUTBOX_BATCH) due rows."""
    counts = DeliveryCounts()
    with session_scope() as session:
        ids = crud.claim_due_outbox(
            session,
            limit=limit or settings.results.outbox_batch,
            lease_s=settings.results.outbox_lease_s,
        )
    if not ids:
        return counts
    counts.claimed = len(ids)
    with session_scope() as session:
        work: list[Work] = [
            *crud.outbox_work(session, outbox_ids=ids),
            *crud.correction_work(session, outbox_ids=ids),
        ]
    # Fewest attempts first: while a destination is down only its first row is tried per
    # run (below), so its rows take turns and each records why it waits.
    work.sort(key=lambda w: (w.attempts, w.outbox_id))
    senders: dict[str, Sender] = {}
    try:
        _deliver(work, senders, settings, counts)
    finally:
        for sender in senders.values():
            try:
                sender.close()
            except Exception:  # a release the peer no longer hears: nothing to keep
                logger.debug("closing a sender", exc_info=True)
    logger.info(
        "outbox: %d claimed, %d sent, %d retrying, %d failed",
        counts.claimed,
        counts.sent,
        counts.retrying,
        counts.failed,
    )
    return counts


def _key(item: Work) -> tuple[str, int]:
    if isinstance(item, crud.CorrectionWork):
        return "correction", item.correction_id
    return "report", item.prediction_id


def _deliver(
    work: list[Work], senders: dict[str, Sender], settings: Settings, counts: DeliveryCounts
) -> None:
    built: dict[tuple[str, int], list[Dataset] | CxrError] = {}
    #: Destinations found unavailable in this run -> (when due again, the error).
    down: dict[str, tuple[datetime, str]] = {}
    for item in work:
        if item.destination in down:
            # Not tried: one timeout per down destination per run, not one per row
            # (a black-holed PACS must not hold this pool process for rows x timeout).
            due, error = down[item.destination]
            with session_scope() as session:
                crud.release_outbox(
                    session,
                    outbox_id=item.outbox_id,
                    error=f"not tried, destination unavailable: {error}",
                    next_attempt_at=due,
                )
            counts.retrying += 1
            continue
        if _key(item) not in built:
            built[_key(item)] = _build(item, settings)
        objects = built[_key(item)]
        if isinstance(objects, CxrError):
            _record_failed(item, f"{objects.code}: {objects}", counts)
            continue
        try:
            if item.destination not in senders:
                senders[item.destination] = sender_for(item.destination, settings.results)
            # In order: a correction's replacement is stored before the note rejecting
            # the original; a retry sends both again (the same UIDs, stored once).
            for dataset in objects:
                senders[item.destination].send(dataset)
        except DeliveryError as exc:
            if exc.transient:
                error = f"{exc.code}: {exc}"
                down[item.destination] = (_record_retry(item, error, settings, counts), error)
            else:
                _record_failed(item, f"{exc.code}: {exc}", counts)
            continue
        except Exception as exc:  # a library's own error: the network, most likely
            logger.exception("unexpected error sending outbox row %d", item.outbox_id)
            error = f"unexpected {type(exc).__name__}: {exc}"
            down[item.destination] = (_record_retry(item, error, settings, counts), error)
            continue
        with session_scope() as session:
            crud.mark_outbox_sent(session, outbox_id=item.outbox_id)
            crud.record_destination_success(session, destination=item.destination)
        counts.sent += 1


def _build(item: Work, settings: Settings) -> list[Dataset] | CxrError:
    try:
        if isinstance(item, crud.CorrectionWork):
            return correction_objects(item, settings.intake)
        return [report_for(item, settings.intake)]
    except CxrError as exc:
        return exc
    except Exception as exc:  # highdicom or a codec refusing a header value
        kind, key = _key(item)
        what = (
            f"the objects of correction {key}"
            if kind == "correction"
            else f"the SR of prediction {key}"
        )
        logger.exception("cannot build %s", what)
        return DeliveryError(f"cannot build {what}: {type(exc).__name__}: {exc}")


def _record_retry(item: Work, error: str, settings: Settings, counts: DeliveryCounts) -> datetime:
    """Pending again, due when its destination's backoff ends; returns that time."""
    with session_scope() as session:
        failures, due = crud.record_destination_failure(
            session,
            destination=item.destination,
            error=error,
            delay_s=lambda n: backoff_s(n, settings.results),
        )
        crud.mark_outbox_retry(session, outbox_id=item.outbox_id, error=error, next_attempt_at=due)
    logger.warning(
        "outbox row %d (%s), attempt %d: %s; destination failed %d times in a "
        "row, next try in %.1fs",
        item.outbox_id,
        item.destination,
        item.attempts,
        error,
        failures,
        (due - utcnow()).total_seconds(),
    )
    counts.retrying += 1
    return due


def _record_failed(item: Work, error: str, counts: DeliveryCounts) -> None:
    logger.error("outbox row %d (%s) failed for good: %s", item.outbox_id, item.destination, error)
    with session_scope() as session:
        crud.mark_outbox_failed(session, outbox_id=item.outbox_id, error=error)
    counts.failed += 1


def retry_failed(*, destination: str | None = None, outbox_ids: list[int] | None = None) -> int:
    """Make failed rows pending and due now (``cxr-orient outbox retry``: the operator
    fixed what the destination refused); ``destination`` in any spelling the setting
    accepts. Returns rows moved."""
    canonical = parse_result_destination(destination).url if destination else None
    with session_scope() as session:
        return crud.retry_failed_outbox(session, destination=canonical, outbox_ids=outbox_ids)
