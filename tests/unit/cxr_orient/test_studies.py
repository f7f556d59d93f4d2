"""cxr_orient/studies.py and the study answers of db.crud, on SQLite and PostgreSQL:
instances recorded by network sources wait for their study's quiet period, are released
by exactly one of concurrent callers, and each finished study gets an append-only answer
(a late instance: a new row, never an update)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cxr_orient.dicomnet.receive import record_received
from cxr_orient.ingest import enqueue_paths
from cxr_orient.settings import get_settings
from cxr_orient.studies import (
    STUDY_FLAGS,
    record_study_answers,
    release_quiet_studies,
    run_release_loop,
    study_answer,
)
from db import crud
from db.models import InstanceStatus, OrientationLabel, utcnow
from db.session import session_scope
from tests.utils.corpus import rg1_dicom
from tests.utils.factories import prediction_record, register_version

STUDY = "1.2.826.0.1.3680043.10.9.1"


class Sent:
    """A sender that keeps what it was handed (in place of worker.dispatch.send_instances:
    these tests run no broker; the integration test does)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, ids: Sequence[int]) -> int:
        with self._lock:
            self.ids.extend(ids)
        return len(ids)


def release(send: Sent, now: datetime) -> int:
    """Release the studies quiet as of ``now``, with the test's settings."""
    return release_quiet_studies(send, get_settings().intake, now=now)


@pytest.fixture
def quiet_db(migrated_db: str, configure: Callable[..., None]) -> str:
    configure(study_quiet_s=10)
    return migrated_db


def _statuses(ids: Sequence[int]) -> list[str]:
    with session_scope() as session:
        rows = [crud.get_instance(session, instance_id=i) for i in ids]
        return [InstanceStatus(r.status).value for r in rows if r is not None]


def _receive(root: Path, *names: str, view: str = "PA") -> list[int]:
    paths = [rg1_dicom(root / f"{n}.dcm", study_uid=STUDY, view_position=view) for n in names]
    report = record_received(paths, send=Sent(), settings=get_settings())
    assert report.queued == [] and len(report.held) == len(names)
    return report.held


def test_received_instances_wait_for_the_quiet_period(quiet_db: str, tmp_path: Path) -> None:
    held = _receive(tmp_path, "a", "b")
    assert _statuses(held) == ["waiting", "waiting"]
    sent = Sent()

    assert release(sent, now=utcnow() + timedelta(seconds=5)) == 0
    late = _receive(tmp_path, "c")  # restarts the study's quiet period
    assert release(sent, now=utcnow() + timedelta(seconds=9)) == 0
    assert sent.ids == [] and _statuses(held + late) == ["waiting"] * 3

    assert release(sent, now=utcnow() + timedelta(seconds=11)) == 3
    assert sorted(sent.ids) == sorted(held + late)
    assert _statuses(held + late) == ["queued"] * 3
    assert release(sent, now=utcnow() + timedelta(seconds=60)) == 0
    assert len(sent.ids) == 3, "sent once"


def test_quiet_zero_and_folders_send_at_once(
    migrated_db: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    folder = enqueue_paths(
        [rg1_dicom(tmp_path / "f.dcm", study_uid=STUDY)], send=Sent(), settings=get_settings()
    )
    assert len(folder.queued) == 1 and folder.held == [], "a folder is never held"
    configure(study_quiet_s=0)
    sent = Sent()
    report = record_received(
        [rg1_dicom(tmp_path / "n.dcm", study_uid=STUDY)], send=sent, settings=get_settings()
    )
    assert report.held == [] and sent.ids == report.queued and len(sent.ids) == 1


def test_concurrent_callers_send_each_instance_once(quiet_db: str, tmp_path: Path) -> None:
    held = _receive(tmp_path, *(f"i{n}" for n in range(12)))
    sent = Sent()
    later = utcnow() + timedelta(seconds=11)
    start = threading.Barrier(4)
    counts: list[int] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            start.wait()
            counts.append(release(sent, now=later))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(sent.ids) == sorted(held), "every instance sent, none twice"
    assert sum(counts) == len(held)


def test_the_release_loop_runs_in_a_thread_until_stopped(
    migrated_db: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    configure(study_quiet_s=0.5)
    held = _receive(tmp_path, "a")
    sent, stop = Sent(), threading.Event()
    thread = threading.Thread(
        target=run_release_loop, args=(sent, stop, get_settings().intake), daemon=True
    )
    thread.start()
    try:
        for _ in range(100):
            if sent.ids:
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert sent.ids == held and not thread.is_alive()


def _answer(ids: Sequence[int], label: str, *, agrees: bool | None = True) -> int:
    """Record answers as the worker does (the crud calls of worker.pipeline's write), with
    the study answers; returns the study-answer rows added."""
    with session_scope() as session:
        version = crud.find_model_version(session, name="m1")
        if version is None:
            version = register_version(session, "m1")
            crud.activate_model_version(session, version=version, actor="t", reason="t")
        crud.record_predictions(
            session,
            model_version_id=version.id,
            worker="t",
            records=[
                prediction_record(
                    instance_id=i,
                    label=OrientationLabel(label),
                    confidence=0.9,
                    p_frontal=0.9 if label == "frontal" else 0.1,
                    p_lateral=0.1 if label == "frontal" else 0.9,
                    header_agrees=agrees,
                    needs_review=False,
                    decode_ms=None,
                    inference_ms=None,
                    batch_size=len(ids),
                )
                for i in ids
            ],
        )
        return record_study_answers(session, instance_ids=ids)


def test_a_study_is_answered_once_complete_and_again_after_a_late_instance(
    quiet_db: str, tmp_path: Path
) -> None:
    frontal, lateral = _receive(tmp_path, "frontal", "lateral")
    release(Sent(), now=utcnow() + timedelta(seconds=11))

    assert _answer([frontal], "frontal") == 0, "the lateral is still queued"
    assert _answer([lateral], "lateral", agrees=False) == 1
    assert _answer([lateral], "lateral", agrees=False) == 0, "a redelivery adds nothing"
    with session_scope() as session:
        first = crud.current_study_answers(session)
    assert [
        (
            a.study_instance_uid,
            a.sequence,
            a.frontal_count,
            a.lateral_count,
            a.header_disagrees_count,
            a.flags,
            a.model_versions,
        )
        for a in first
    ] == [(STUDY, 1, 1, 1, 1, "header_disagreement", "m1")]

    late = _receive(tmp_path, "late", view="LL")
    with session_scope() as session:
        assert record_study_answers(session, study_ids=[_study_id()]) == 0, "held"
    release(Sent(), now=utcnow() + timedelta(seconds=11))
    assert _answer(late, "lateral") == 1

    with session_scope() as session:
        history = crud.study_answer_history(session, study_instance_uid=STUDY)
        current = crud.current_study_answers(session, study_instance_uid=STUDY)
        rows = [(a.sequence, a.instance_count, a.lateral_count) for a in history]
    assert rows == [(1, 2, 1), (2, 3, 2)], "a new row; the first kept as it was"
    assert [c.sequence for c in current] == [2]


def _study_id() -> int:
    with session_scope() as session:
        study = crud.get_or_create_study(session, study_instance_uid=STUDY, patient_id=None)
        return study.id


def test_concurrent_workers_finishing_a_study_write_its_answer_once(
    quiet_db: str, tmp_path: Path
) -> None:
    ids = _receive(tmp_path, *(f"i{n}" for n in range(8)))
    release(Sent(), now=utcnow() + timedelta(seconds=11))
    assert _answer(ids[:1], "frontal") == 0  # registers the model; the rest still queued
    rest = ids[1:]
    start = threading.Barrier(4)
    added: list[int] = []
    errors: list[BaseException] = []

    def worker(share: Sequence[int]) -> None:
        try:
            start.wait()
            added.append(_answer(share, "lateral"))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(rest[n::4],)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with session_scope() as session:
        history = crud.study_answer_history(session, study_instance_uid=STUDY)
    assert sum(added) == 1 and len(history) == 1, "the last to finish writes it, once"
    assert (history[0].frontal_count, history[0].lateral_count) == (1, 7)
    assert history[0].flags is None


def test_held_instances_outlive_their_process_and_the_reaper_leaves_them(
    quiet_db: str, tmp_path: Path
) -> None:
    """Held is a row, not a message: requeue/the reaper neither send nor re-status it, and
    any later sweep (another process) releases it."""
    from click.testing import CliRunner

    from cli.main import main

    held = _receive(tmp_path, "a", "b")
    with session_scope() as session:
        assert crud.unfinished_instance_ids(session) == [], "requeue sends nothing held"
        crud.mark_queued(session, instance_ids=held, lease_s=20)
        assert crud.count_unfinished(session, instance_ids=held) == 2, "but it is unfinished"
    assert _statuses(held) == ["waiting", "waiting"]
    status = CliRunner().invoke(main, ["status"])
    assert "held: 2 instances of 1 studies waiting for CXR_STUDY_QUIET_S=10 s" in status.stdout

    sent = Sent()  # a fresh caller, as after the receiving process died
    assert release(sent, now=utcnow() + timedelta(seconds=11)) == 2
    assert sorted(sent.ids) == sorted(held)


def _instance(
    instance_id: int,
    status: str,
    label: str | None = None,
    *,
    review: bool = False,
    agrees: bool | None = None,
    version: str | None = "m1",
) -> crud.StudyInstance:
    answered = label is not None
    return crud.StudyInstance(
        instance_id=instance_id,
        status=InstanceStatus(status),
        answer_id=100 + instance_id if answered else None,
        label=None if label is None else OrientationLabel(label),
        needs_review=review if answered else None,
        header_agrees=agrees if answered else None,
        model_version=version if answered else None,
    )


@pytest.mark.parametrize(
    ("instances", "counts", "flags", "versions"),
    [
        pytest.param(
            [
                _instance(1, "done", "frontal", agrees=True),
                _instance(2, "done", "lateral", agrees=True, version="m2"),
            ],
            (2, 1, 1, 0, 0, 0, 2, 0),
            None,
            "m1,m2",
            id="frontal_and_lateral",
        ),
        pytest.param(
            [
                _instance(1, "done", "frontal", review=True, agrees=False),
                _instance(2, "failed"),
                _instance(3, "out_of_scope"),
            ],
            (3, 1, 0, 1, 1, 1, 0, 1),
            "no_lateral,header_disagreement,needs_review,failed",
            "m1",
            id="flags_in_their_order",
        ),
        pytest.param(
            [_instance(1, "failed", "frontal"), _instance(2, "out_of_scope")],
            (2, 0, 0, 0, 1, 1, 0, 0),
            "no_frontal,no_lateral,failed",
            None,
            id="an_answer_counts_only_when_done",
        ),
    ],
)
def test_study_answer_rule(
    instances: list[crud.StudyInstance],
    counts: tuple[int, ...],
    flags: str | None,
    versions: str | None,
) -> None:
    """The rule over named fields: instances, frontal, lateral, to review, failed, out
    of scope, header agrees, header disagrees; the flags in STUDY_FLAGS' order."""
    answer = study_answer(instances)
    assert (
        answer.instance_count,
        answer.frontal_count,
        answer.lateral_count,
        answer.needs_review_count,
        answer.failed_count,
        answer.out_of_scope_count,
        answer.header_agrees_count,
        answer.header_disagrees_count,
    ) == counts
    assert answer.flags == flags and answer.model_versions == versions
    assert (answer.no_frontal, answer.no_lateral, answer.header_disagreement) == (
        answer.frontal_count == 0,
        answer.lateral_count == 0,
        answer.header_disagrees_count > 0,
    )
    assert set((flags or "").split(",")) - {""} <= set(STUDY_FLAGS)


def test_study_answer_fingerprint_is_the_recorded_one() -> None:
    """The fingerprint of rows recorded before the rule moved: (id, status, answer id)
    per instance, so a study answered then gets no new row for the same inputs."""
    answer = study_answer([_instance(1, "done", "frontal"), _instance(2, "failed")])
    assert answer.fingerprint == hashlib.sha256(b"1,done,101;2,failed,").hexdigest()
    moved = study_answer([_instance(1, "done", "frontal"), _instance(2, "done", "lateral")])
    assert moved.fingerprint != answer.fingerprint
