"""cxr_orient/reclassify.py and the worker's side of it, on SQLite and PostgreSQL: real
files (RG1 wrapped into DICOM), the real pipeline in this process with the shipped model
and a second registered version (compact-v1), a list standing in for the broker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from cxr_orient.errors import ReclassifyError
from cxr_orient.ingest import enqueue_paths
from cxr_orient.reclassify import Filters, reclassify
from cxr_orient.registry import promote, register_checkpoint, rollback
from cxr_orient.settings import SHIPPED_MODEL, get_settings
from db import crud
from db.models import Instance, ModelVersion, Prediction, ReclassifyRun
from db.session import session_scope
from tests.utils.corpus import rg1_dicom
from tests.utils.factories import prediction_record, register_version
from worker.pipeline import classify_instances

SHIPPED_NAME = SHIPPED_MODEL.stem
OTHER = SHIPPED_MODEL.parent / "compact-v1.keras"
STUDY_A = "1.2.826.0.1.3680043.10.77.1"
STUDY_B = "1.2.826.0.1.3680043.10.77.2"


class Broker:
    """Stands in for worker.dispatch.send_instances: what each send carried."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, ids: Sequence[int]) -> int:
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            self.calls.append([])
            raise ConnectionError("broker down")
        self.calls.append(list(ids))
        return len(ids)

    @property
    def sent(self) -> list[int]:
        return [i for call in self.calls for i in call]


def _archive(root: Path, n: int, *, study: str = STUDY_A) -> list[int]:
    """``n`` RG1 instances of ``study``, recorded (nothing sent); their ids in id order."""
    folder = root / study
    paths = [
        rg1_dicom(folder / f"{k}.dcm", study_uid=study, view_position="PA" if k % 2 else None)
        for k in range(n)
    ]
    report = enqueue_paths(paths, send=None, settings=get_settings())
    assert len(report.queued) == n, report.refused
    return sorted(report.queued)


def _classified(root: Path, n: int, *, study: str = STUDY_A) -> list[int]:
    ids = _archive(root, n, study=study)
    outcome = classify_instances(ids, settings=get_settings())
    assert sorted(outcome.done) == ids and outcome.model_version == SHIPPED_NAME
    return ids


def _register_other() -> None:
    with session_scope() as session:
        register_checkpoint(session, OTHER, actor="test", reason="second version")


def _answers(ids: Sequence[int]) -> dict[int, list[tuple[int, str, str, float]]]:
    """instance id -> [(prediction id, version, label, confidence)] in id order."""
    out: dict[int, list[tuple[int, str, str, float]]] = {i: [] for i in ids}
    with session_scope() as session:
        rows = session.execute(
            select(
                Prediction.instance_id,
                Prediction.id,
                ModelVersion.name,
                Prediction.label,
                Prediction.confidence,
            )
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.instance_id.in_(ids))
            .order_by(Prediction.id)
        )
        for instance_id, pid, name, label, confidence in rows:
            out[instance_id].append((pid, name, str(label), confidence))
    return out


def _instances(ids: Sequence[int]) -> dict[int, tuple[str, int | None, int]]:
    """instance id -> (status, target version id, attempts)."""
    with session_scope() as session:
        rows = session.execute(
            select(
                Instance.id, Instance.status, Instance.target_model_version_id, Instance.attempts
            ).where(Instance.id.in_(ids))
        )
        return {i: (str(s), t, a) for i, s, t, a in rows}


def _version_id(name: str) -> int:
    with session_scope() as session:
        version = crud.find_model_version(session, name=name)
        assert version is not None
        return version.id


def _shown(ids: Sequence[int], model: str | None = None) -> dict[int, str | None]:
    """What `cxr-orient results` shows: instance id -> model version."""
    with session_scope() as session:
        by_uid = {
            r.sop_instance_uid: r.model_version
            for r in crud.results(
                session,
                instance_ids=ids,
                model_version_id=None if model is None else _version_id(model),
            )
        }
        uids = {
            i: uid
            for i, uid in session.execute(
                select(Instance.id, Instance.sop_instance_uid).where(Instance.id.in_(ids))
            )
        }
    return {i: by_uid[uids[i]] for i in ids if uids[i] in by_uid}


def test_after_a_promotion_reclassify_adds_rows_loses_none_and_doubles_none(
    migrated_db: str, tmp_path: Path
) -> None:
    ids = _classified(tmp_path, 5)
    before = _answers(ids)
    _register_other()
    promote("compact-v1", actor="test", reason="better")
    broker = Broker()

    report = reclassify(send=broker, chunk_size=2, actor="tester")

    # Keyset chunks: id order, two per transaction and send, each id once.
    assert broker.calls == [ids[0:2], ids[2:4], ids[4:5]]
    assert (report.sent, report.skipped, report.finished) == (5, 0, True)
    assert report.model_version == "compact-v1" and not report.resumed
    v1 = _version_id("compact-v1")
    assert set(_instances(ids).values()) == {("queued", v1, 0)}
    with session_scope() as session:
        assert crud.status_counts(session, instance_ids=ids)["queued"] == 5
        assert crud.count_targeted(session) == 5
        run = crud.get_reclassify_run(session, run_id=report.run_id)
        assert run is not None and run.actor == "tester" and run.model_version_id == v1
        assert (run.cursor_instance_id, run.sent, run.skipped) == (ids[-1], 5, 0)
        assert run.finished_at is not None

    outcome = classify_instances(broker.sent, settings=get_settings())

    assert sorted(outcome.done) == ids and outcome.model_version == "compact-v1"
    assert set(_instances(ids).values()) == {("done", None, 1)}
    after = _answers(ids)
    for instance_id in ids:
        old, new = after[instance_id]
        assert old == before[instance_id][0], "an earlier answer changed"
        assert (old[1], new[1]) == (SHIPPED_NAME, "compact-v1")
    assert set(_shown(ids).values()) == {"compact-v1"}

    # Again: every instance has compact-v1's answer, nothing is sent, nothing added.
    again_broker = Broker()
    again = reclassify(send=again_broker, chunk_size=2)
    assert again.run_id != report.run_id and not again.resumed
    assert (again.sent, again.skipped, again.finished) == (0, 5, True)
    assert again_broker.sent == []
    assert classify_instances(ids, settings=get_settings()).skipped == ids
    assert _answers(ids) == after


def test_model_names_a_version_that_is_not_active(migrated_db: str, tmp_path: Path) -> None:
    ids = _classified(tmp_path, 3)
    _register_other()
    broker = Broker()

    report = reclassify(send=broker, model="compact-v1")
    # Work for the active model, in the same batch as the reclassify work.
    fresh = _archive(tmp_path, 1, study=STUDY_B)
    outcome = classify_instances([*broker.sent, *fresh], settings=get_settings())

    assert report.sent == 3 and sorted(outcome.done) == sorted([*ids, *fresh])
    answers = _answers([*ids, *fresh])
    assert [a[1] for a in answers[fresh[0]]] == [SHIPPED_NAME]
    for instance_id in ids:
        assert [a[1] for a in answers[instance_id]] == [SHIPPED_NAME, "compact-v1"]
    with session_scope() as session:
        active = crud.active_model_version(session)
        assert active is not None and active.name == SHIPPED_NAME  # nothing promoted
    # The current answer is the active version's; --model shows compact-v1's.
    assert set(_shown(ids).values()) == {SHIPPED_NAME}
    assert _shown([*ids, *fresh], model="compact-v1") == dict.fromkeys(ids, "compact-v1")
    # Promoting it makes its answers current; a rollback makes the old ones current
    # again, although compact-v1's rows are the newer rows.
    promote("compact-v1", actor="test", reason="after a look at its answers")
    assert set(_shown(ids).values()) == {"compact-v1"}
    rollback(actor="test", reason="no")
    assert set(_shown(ids).values()) == {SHIPPED_NAME}


def test_an_unknown_or_unloadable_version(migrated_db: str, tmp_path: Path) -> None:
    ids = _classified(tmp_path, 2)
    with pytest.raises(ReclassifyError, match="no model version named 'nope'"):
        reclassify(send=Broker(), model="nope")
    with session_scope() as session:
        register_version(session, "gone", file_path=str(tmp_path / "gone.keras"))
    broker = Broker()
    reclassify(send=broker, model="gone")

    outcome = classify_instances(broker.sent, settings=get_settings())

    assert outcome.failed == dict.fromkeys(ids, "model_error")
    assert set(_instances(ids).values()) == {("failed", None, 1)}
    assert [len(a) for a in _answers(ids).values()] == [1, 1]  # the earlier answers stay
    assert set(_shown(ids).values()) == {SHIPPED_NAME}


def test_an_interrupted_run_resumes_and_sends_only_the_rest(
    migrated_db: str, tmp_path: Path
) -> None:
    ids = _classified(tmp_path, 9)
    _register_other()
    first = Broker()

    stopped = reclassify(send=first, model="compact-v1", chunk_size=2, limit=3)

    assert first.calls == [ids[0:2], ids[2:3]]  # the limit cut the second chunk
    assert (stopped.sent, stopped.cursor, stopped.finished) == (3, ids[2], False)
    # Some of the rest already answered by compact-v1 (e.g. by an earlier run): skipped.
    classify_instances(first.sent, settings=get_settings())
    head_start = Broker()
    reclassify(
        send=head_start,
        model="compact-v1",
        filters=Filters(study_instance_uid=STUDY_A),
        chunk_size=100,
        limit=1,
    )
    classify_instances(head_start.sent, settings=get_settings())
    assert head_start.sent == [ids[3]]

    # The same command again goes on with the unfinished run (same filters and model).
    second = Broker(fail_on_call=2)
    with pytest.raises(ReclassifyError, match=r"not sent .*cxr-orient requeue"):
        reclassify(send=second, model="compact-v1", chunk_size=2)
    assert second.calls[0] == [ids[4]]  # ids[3] was skipped: answered
    # The failed send's chunk is queued in the database (requeue sends it), not re-sent.
    with session_scope() as session:
        assert crud.unfinished_instance_ids(session) == ids[4:7]  # ids[4]: sent, in flight
        lost = ids[5:7]
        run = crud.get_reclassify_run(session, run_id=stopped.run_id)
        assert run is not None and (run.sent, run.skipped) == (6, 1)

    rest = Broker()
    resumed = reclassify(send=rest, resume=stopped.run_id, chunk_size=2)

    assert resumed.resumed and resumed.run_id == stopped.run_id
    assert rest.calls == [ids[7:9]] and resumed.finished
    assert (resumed.total_sent, resumed.total_skipped) == (8, 1)
    sent_by_run = first.sent + second.sent + rest.sent
    assert sorted(sent_by_run + lost) == sorted(set(ids) - {ids[3]})
    assert len(sent_by_run) == len(set(sent_by_run))
    with pytest.raises(ReclassifyError, match="finished"):
        reclassify(send=Broker(), resume=stopped.run_id)
    with pytest.raises(ReclassifyError, match="no reclassify run 999"):
        reclassify(send=Broker(), resume=999)


def test_filters_and_failed_instances(migrated_db: str, tmp_path: Path) -> None:
    a = _classified(tmp_path, 2, study=STUDY_A)
    b = _classified(tmp_path, 2, study=STUDY_B)
    short = rg1_dicom(tmp_path / "short.dcm", study_uid=STUDY_B)
    ds = pydicom.dcmread(short)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(short)
    (tmp_path / "notes.txt").write_text("not an image")
    report = enqueue_paths([short, tmp_path / "notes.txt"], send=None, settings=get_settings())
    outcome = classify_instances(report.queued, settings=get_settings())
    assert outcome.failed == dict.fromkeys(report.queued, "truncated")
    failed, refused = report.queued[0], report.refused
    assert len(refused) == 1
    _register_other()

    study = Broker()
    reclassify(send=study, model="compact-v1", filters=Filters(study_instance_uid=STUDY_B))
    assert study.sent == b  # done instances of that study only: not the failed one

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    later = Broker()
    assert reclassify(send=later, model="compact-v1", filters=Filters(since=tomorrow)).sent == 0
    today = Broker()
    reclassify(send=today, model="compact-v1", filters=Filters(since=datetime.now(UTC).date()))
    assert today.sent == a  # b is queued for compact-v1 already, not done

    with_failed = Broker()
    reclassify(send=with_failed, model="compact-v1", filters=Filters(include_failed=True))
    assert with_failed.sent == [failed]  # never the file refused at ingest
    assert _instances([failed])[failed] == ("queued", _version_id("compact-v1"), 0)
    assert classify_instances([failed], settings=get_settings()).failed == {failed: "truncated"}
    with session_scope() as session:
        runs = session.scalars(select(ReclassifyRun).order_by(ReclassifyRun.id)).all()
        assert [(r.study_instance_uid, r.since is not None, r.include_failed) for r in runs] == [
            (STUDY_B, False, False),
            (None, True, False),
            (None, True, False),
            (None, False, True),
        ]


def test_changed_between_lists_changed_labels_with_both_confidences(
    migrated_db: str, tmp_path: Path
) -> None:
    ids = _archive(tmp_path, 3)
    with session_scope() as session:
        v1 = register_version(session, "v1")
        v2 = register_version(session, "v2")
        for version, labels in ((v1, "FFL"), (v2, "FLL")):
            crud.record_predictions(
                session,
                model_version_id=version.id,
                worker="t",
                records=[
                    prediction_record(
                        instance_id=i,
                        label=crud.OrientationLabel("frontal" if c == "F" else "lateral"),
                        confidence=0.9 if c == "F" else 0.8,
                        p_frontal=0.5,
                        p_lateral=0.5,
                        header_agrees=None,
                        needs_review=False,
                        decode_ms=None,
                        inference_ms=None,
                        batch_size=None,
                    )
                    for i, c in zip(ids, labels, strict=True)
                ],
            )
        changed = crud.changed_between(session, version_a_id=v1.id, version_b_id=v2.id)
        uid = session.scalar(select(Instance.sop_instance_uid).where(Instance.id == ids[1]))
    assert [
        (c.sop_instance_uid, c.label_a, c.confidence_a, c.label_b, c.confidence_b) for c in changed
    ] == [(uid, "frontal", 0.9, "lateral", 0.8)]
