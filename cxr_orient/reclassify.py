"""Re-classifying finished instances with another model version (after a promotion).

A run walks the instances in id order, in chunks (keyset pagination: the id range
``(cursor, cursor + chunk]``, never OFFSET, never all ids in memory, at most a chunk of
rows read per transaction whatever the query plan). For each chunk, in one transaction:
the run's row is locked, the range's matching instances are read, those that already have an
answer from the target version are skipped (counted), the rest are moved ``done`` ->
``queued`` with the reclassify marker (``instances.target_model_version_id``) and the
run's cursor and counts move on. After the commit the chunk's ids are sent. So an
interrupted run resumes after its cursor without sending anything twice; ids committed
but not sent (a crash between the two) are ``queued`` in the database, which
``cxr-orient requeue`` and the reaper re-send, like any lost message.

Like :mod:`cxr_orient.ingest`, this module does not know the worker: the caller hands in
the sender (``worker.dispatch.send_instances``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from cxr_orient.errors import ReclassifyError
from db import crud
from db.session import session_scope

logger = logging.getLogger(__name__)

Sender = Callable[[Sequence[int]], int]

#: Instance ids per chunk (one transaction, one send) unless the caller says otherwise.
DEFAULT_CHUNK_SIZE = 1000


@dataclass(frozen=True)
class Filters:
    """Which finished instances a run considers (None: not filtered)."""

    study_instance_uid: str | None = None
    #: Instances ingested (``enqueued_at``) on or after this UTC day.
    since: date | None = None
    #: Also ``failed`` instances (files refused at ingest are never reclassified).
    include_failed: bool = False

    @property
    def since_utc(self) -> datetime | None:
        return None if self.since is None else datetime.combine(self.since, time(), UTC)


@dataclass(frozen=True)
class Progress:
    """After each chunk: where the walk is, and this invocation's counts so far."""

    run_id: int
    cursor: int
    sent: int
    skipped: int


@dataclass(frozen=True)
class Report:
    run_id: int
    model_version: str
    resumed: bool
    #: This invocation's counts.
    sent: int
    skipped: int
    #: The run's counts over all its invocations.
    total_sent: int
    total_skipped: int
    cursor: int
    finished: bool


def _start(
    *, model: str | None, filters: Filters, resume: int | None, actor: str
) -> tuple[int, str, bool]:
    """(run id, target version name, resumed): the run to go on with or a new one."""
    with session_scope() as session:
        if resume is not None:
            run = crud.get_reclassify_run(session, run_id=resume)
            if run is None:
                raise ReclassifyError(f"no reclassify run {resume}")
            if run.finished_at is not None:
                raise ReclassifyError(f"reclassify run {resume} finished at {run.finished_at}")
            version = crud.get_model_version(session, version_id=run.model_version_id)
            assert version is not None  # a foreign key
            return run.id, version.name, True
        if model is None:
            version = crud.active_model_version(session)
            if version is None:
                raise ReclassifyError("no active model version (and --model not given)")
        else:
            version = crud.find_model_version(session, name=model)
            if version is None:
                raise ReclassifyError(
                    f"no model version named {model!r} (register it first: cxr-orient register)"
                )
        same = crud.find_unfinished_reclassify_run(
            session,
            model_version_id=version.id,
            study_instance_uid=filters.study_instance_uid,
            since=filters.since_utc,
            include_failed=filters.include_failed,
        )
        if same is not None:
            return same.id, version.name, True
        run = crud.create_reclassify_run(
            session,
            actor=actor,
            model_version_id=version.id,
            study_instance_uid=filters.study_instance_uid,
            since=filters.since_utc,
            include_failed=filters.include_failed,
        )
        return run.id, version.name, False


def _chunk(run_id: int, *, chunk_size: int, budget: int | None) -> tuple[list[int], int, int, bool]:
    """One chunk in one transaction: (ids queued, skipped, cursor, run finished)."""
    with session_scope() as session:
        run = crud.get_reclassify_run(session, run_id=run_id, lock=True)
        assert run is not None
        if run.finished_at is not None:  # another process resuming it got to the end
            return [], 0, run.cursor_instance_id, True
        last = crud.max_instance_id(session)
        end = min(run.cursor_instance_id + chunk_size, last)
        candidates = crud.reclassify_candidates(
            session,
            after_id=run.cursor_instance_id,
            up_to_id=end,
            model_version_id=run.model_version_id,
            study_instance_uid=run.study_instance_uid,
            since=run.since,
            include_failed=run.include_failed,
        )
        todo = 0
        skipped = 0
        for k, (_, answered) in enumerate(candidates):
            if budget is not None and todo >= budget:
                end = candidates[k - 1][0]  # the last one examined (k > 0: budget >= 1)
                break
            if answered:
                skipped += 1
            else:
                todo += 1
        cursor = max(run.cursor_instance_id, end)
        # The same range and filters, the answered ones left out: one statement, no id list.
        queued = crud.queue_for_model(
            session,
            after_id=run.cursor_instance_id,
            up_to_id=cursor,
            model_version_id=run.model_version_id,
            study_instance_uid=run.study_instance_uid,
            since=run.since,
            include_failed=run.include_failed,
        )
        skipped += max(0, todo - len(queued))  # no longer finished: someone else has it
        run.cursor_instance_id = cursor
        run.sent += len(queued)
        run.skipped += skipped
        finished = cursor >= last  # the walk reached the last instance
        if finished:
            run.finished_at = crud.utcnow()
        return queued, skipped, cursor, finished


def reclassify(
    *,
    send: Sender,
    model: str | None = None,
    filters: Filters | None = None,
    limit: int | None = None,
    resume: int | None = None,
    actor: str = "cli",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: Callable[[Progress], None] | None = None,
) -> Report:
    """Queue finished instances for ``model`` (a registered version name; default the
    active one) to answer again, each answer a new ``predictions`` row.

    ``resume`` goes on with that run (its own filters and target); without it, an
    unfinished run with the same target and filters is resumed, else a new one starts.
    ``limit`` caps what this invocation sends (the run stays resumable).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    filters = filters or Filters()
    run_id, version_name, resumed = _start(model=model, filters=filters, resume=resume, actor=actor)
    sent = skipped = 0
    cursor, finished = 0, False
    while not finished and (limit is None or sent < limit):
        budget = None if limit is None else limit - sent
        ids, chunk_skipped, cursor, finished = _chunk(run_id, chunk_size=chunk_size, budget=budget)
        try:
            send(ids)
        except Exception as exc:
            raise ReclassifyError(
                f"run {run_id}: {len(ids)} instances are queued in the database but were not "
                f"sent ({type(exc).__name__}: {exc}); `cxr-orient requeue` sends them, and "
                f"`cxr-orient reclassify --resume {run_id}` goes on after instance {cursor}"
            ) from exc
        sent += len(ids)
        skipped += chunk_skipped
        if on_chunk is not None:
            on_chunk(Progress(run_id=run_id, cursor=cursor, sent=sent, skipped=skipped))
    with session_scope() as session:
        run = crud.get_reclassify_run(session, run_id=run_id)
        assert run is not None
        report = Report(
            run_id=run_id,
            model_version=version_name,
            resumed=resumed,
            sent=sent,
            skipped=skipped,
            total_sent=run.sent,
            total_skipped=run.skipped,
            cursor=run.cursor_instance_id,
            finished=run.finished_at is not None,
        )
    logger.info(
        "reclassify run %d (%s): sent %d, skipped %d%s",
        run_id,
        version_name,
        sent,
        skipped,
        ", finished" if report.finished else "",
    )
    return report


def last_instance_id() -> int:
    """The largest instance id: what a progress bar measures the cursor against."""
    with session_scope() as session:
        return crud.max_instance_id(session)
