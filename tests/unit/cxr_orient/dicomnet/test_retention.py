"""cxr_orient.dicomnet.retention.purge_spool: which received files are deleted, which
kept, and what later work on a purged instance gets (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from cxr_orient.dicomnet.retention import purge_spool
from cxr_orient.dicomnet.spool import stale_partial_s, write_instance
from cxr_orient.dicomnet.sr import new_sr_uid
from cxr_orient.ingest import enqueue_paths
from cxr_orient.settings import get_settings
from db import crud
from db.models import (
    Instance,
    InstanceStatus,
    OrientationLabel,
    Prediction,
    UidConflict,
    utcnow,
)
from db.session import session_scope
from tests.utils.corpus import rg1_dicom
from tests.utils.dicom_factory import make_dicom
from tests.utils.embedded import embedded_setup
from tests.utils.factories import prediction_record, register_version

STUDY = "1.2.826.0.1.3680043.8.498.77"


def _dicom_bytes(tmp: Path, sop: str, study: str = STUDY) -> bytes:
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    return make_dicom(tmp / f"{sop}.dcm", pixels, study_uid=study, sop_uid=sop).read_bytes()


def _receive(tmp: Path, sop: str, study: str = STUDY) -> tuple[int, Path]:
    """A file received over the network: spooled, then recorded (nothing sent)."""
    settings = get_settings()
    spooled = write_instance(
        _dicom_bytes(tmp, sop, study),
        study_instance_uid=study,
        sop_instance_uid=sop,
        settings=settings,
    )
    report = enqueue_paths([spooled.path], send=None, settings=settings)
    assert len(report.queued) == 1, report
    return report.queued[0], spooled.path


def _answer(instance_id: int, version_id: int, *, needs_review: bool = False) -> None:
    with session_scope() as session:
        assert crud.claim_for_processing(session, instance_id=instance_id, lease_s=20)
        crud.record_predictions(
            session,
            model_version_id=version_id,
            worker="test",
            records=[
                prediction_record(
                    instance_id=instance_id,
                    label=OrientationLabel.frontal,
                    confidence=0.7 if needs_review else 0.99,
                    p_frontal=0.99,
                    p_lateral=0.01,
                    header_agrees=True,
                    needs_review=needs_review,
                    decode_ms=None,
                    inference_ms=None,
                    batch_size=1,
                )
            ],
        )


def _purged_at(instance_id: int) -> object:
    with session_scope() as session:
        row = crud.get_instance(session, instance_id=instance_id)
        assert row is not None
        return row.file_purged_at


@pytest.fixture
def version_id(migrated_db: str) -> int:
    with session_scope() as session:
        return register_version(session).id


def test_finished_unneeded_received_files_go_and_the_rest_stay(
    version_id: int, tmp_path: Path
) -> None:
    made = tmp_path / "made"
    made.mkdir()
    done, done_path = _receive(made, "1.2.3.1")
    review, review_path = _receive(made, "1.2.3.2")
    labelled, labelled_path = _receive(made, "1.2.3.3")
    queued, queued_path = _receive(made, "1.2.3.4")
    processing, processing_path = _receive(made, "1.2.3.5")
    failed, failed_path = _receive(made, "1.2.3.6", study="1.2.826.0.1.3680043.8.498.78")
    archive = tmp_path / "archive" / "2026" / "in-place.dcm"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(_dicom_bytes(made, "1.2.3.7"))
    in_place = enqueue_paths([archive], send=None, settings=get_settings()).queued[0]
    for instance_id in (done, labelled, in_place):
        _answer(instance_id, version_id)
    _answer(review, version_id, needs_review=True)
    with session_scope() as session:
        crud.add_label(
            session,
            instance_id=labelled,
            label=OrientationLabel.frontal,
            source="review",
            annotator="qa",
        )
        assert crud.claim_for_processing(session, instance_id=processing, lease_s=20)
        crud.mark_failed(
            session, instance_id=failed, error_code="decode_failed", error_message="test"
        )

    counts = purge_spool(get_settings(), utcnow())

    assert (counts.deleted, counts.already_gone, counts.errors) == (2, 0, 0)
    assert not done_path.exists() and not failed_path.exists()
    assert not failed_path.parent.exists(), "an emptied study folder goes too"
    assert counts.folders_removed == 1
    for kept in (review_path, labelled_path, queued_path, processing_path, archive):
        assert kept.is_file(), kept
    assert _purged_at(done) is not None and _purged_at(failed) is not None
    for instance_id in (review, labelled, queued, processing, in_place):
        assert _purged_at(instance_id) is None
    again = purge_spool(get_settings(), utcnow())
    assert again.purged == 0 and again.errors == 0


def test_keep_days_holds_files_that_long_after_they_finished(
    version_id: int, tmp_path: Path, configure: Callable[..., None], migrated_db: str
) -> None:
    configure(spool_keep_days=2)
    instance_id, path = _receive(tmp_path, "1.2.3.10")
    _answer(instance_id, version_id)
    now = utcnow()
    assert purge_spool(get_settings(), now + timedelta(days=1)).purged == 0
    assert path.is_file()
    assert purge_spool(get_settings(), now + timedelta(days=2, minutes=1)).deleted == 1
    assert not path.exists()


def test_a_file_gone_already_is_marked_and_a_resend_brings_it_back(
    version_id: int, tmp_path: Path
) -> None:
    instance_id, path = _receive(tmp_path, "1.2.3.20")
    _answer(instance_id, version_id)
    sent = path.read_bytes()
    path.unlink()
    counts = purge_spool(get_settings(), utcnow())
    assert (counts.deleted, counts.already_gone) == (0, 1)
    assert _purged_at(instance_id) is not None
    # The same bytes received again: known (not queued again), the file is back and the
    # row says so; the next purge deletes it again.
    spooled = write_instance(
        sent, study_instance_uid=STUDY, sop_instance_uid="1.2.3.20", settings=get_settings()
    )
    report = enqueue_paths([spooled.path], send=None, settings=get_settings())
    assert report.already_known == [instance_id]
    assert _purged_at(instance_id) is None and spooled.path.is_file()
    assert purge_spool(get_settings(), utcnow()).deleted == 1


def test_purged_instances_are_not_reclassified(version_id: int, tmp_path: Path) -> None:
    kept_id, _ = _receive(tmp_path, "1.2.3.30")
    purged_id, _ = _receive(tmp_path, "1.2.3.31")
    for instance_id in (kept_id, purged_id):
        _answer(instance_id, version_id)
    with session_scope() as session:
        crud.add_label(
            session,
            instance_id=kept_id,
            label=OrientationLabel.frontal,
            source="import",
            annotator=None,
        )
    assert purge_spool(get_settings(), utcnow()).deleted == 1
    with session_scope() as session:
        other = register_version(session, name="m2").id
        candidates = crud.reclassify_candidates(
            session,
            after_id=0,
            up_to_id=crud.max_instance_id(session),
            model_version_id=other,
            study_instance_uid=None,
            since=None,
            include_failed=False,
        )
    assert candidates == [(kept_id, False)]


def test_work_reaching_a_worker_for_a_purged_file_fails_with_file_purged(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.pipeline import classify_instances

    setup = embedded_setup(tmp_path, configure, monkeypatch)
    path = rg1_dicom(setup.root / "spool" / STUDY / "rg1.dcm", study_uid=STUDY)
    instance_id = enqueue_paths([path], send=None, settings=get_settings()).queued[0]
    assert classify_instances([instance_id], settings=get_settings()).done == [instance_id]
    assert purge_spool(get_settings(), utcnow()).deleted == 1
    with session_scope() as session:  # a re-send of the message, as after a redelivery
        row = session.scalar(select(Instance).where(Instance.id == instance_id))
        assert row is not None
        row.status = InstanceStatus.queued
    outcome = classify_instances([instance_id], settings=get_settings())
    assert outcome.failed == {instance_id: "file_purged"}
    with session_scope() as session:
        row = crud.get_instance(session, instance_id=instance_id)
        assert row is not None and row.error_code == "file_purged"
        assert "spool purge" in (row.error_message or "")


def test_a_label_after_the_purge_is_reported_file_purged_by_training(
    version_id: int, tmp_path: Path
) -> None:
    from training.lifecycle import labelled_images_from_db

    instance_id, _ = _receive(tmp_path, "1.2.3.40")
    _answer(instance_id, version_id)
    assert purge_spool(get_settings(), utcnow()).deleted == 1
    with session_scope() as session:
        crud.add_label(
            session,
            instance_id=instance_id,
            label=OrientationLabel.frontal,
            source="import",
            annotator=None,
        )
    with session_scope() as session:
        labelled = labelled_images_from_db(session, get_settings().intake)
    assert labelled.images == []
    assert len(labelled.problems) == 1 and ": file_purged: " in labelled.problems[0]


def test_a_report_not_yet_delivered_keeps_its_source_file(version_id: int, tmp_path: Path) -> None:
    """The SR is built from the source file's header when it is sent: a pending outbox
    row holds the file; once sent (or failed for good) the file may go."""
    instance_id, path = _receive(tmp_path, "1.2.3.20")
    _answer(instance_id, version_id)
    with session_scope() as session:
        prediction_id = session.scalars(
            select(Prediction.id).where(Prediction.instance_id == instance_id)
        ).one()
        crud.add_outbox_messages(
            session,
            prediction_ids=[prediction_id],
            destinations=["dicom://PACS@127.0.0.1:4242"],
            new_report_uid=new_sr_uid,
        )
        (outbox,) = crud.outbox_rows(session, prediction_ids=[prediction_id])
        outbox_id = outbox.id
    assert purge_spool(get_settings(), utcnow()).deleted == 0
    assert path.is_file() and _purged_at(instance_id) is None
    with session_scope() as session:
        crud.mark_outbox_sent(session, outbox_id=outbox_id)
    assert purge_spool(get_settings(), utcnow()).deleted == 1
    assert not path.exists() and _purged_at(instance_id) is not None


def _conflicting(tmp: Path, sop: str) -> Path:
    """Other bytes under a known SOPInstanceUID (a corrected re-send), spooled."""
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096)[:, ::-1].copy()
    data = make_dicom(tmp / f"{sop}.v2.dcm", pixels, study_uid=STUDY, sop_uid=sop).read_bytes()
    return write_instance(
        data, study_instance_uid=STUDY, sop_instance_uid=sop, settings=get_settings()
    ).path


@pytest.mark.parametrize("policy", ["keep_first", "replace"])
def test_the_file_of_a_uid_conflict_that_no_instance_uses_is_purged(
    version_id: int, tmp_path: Path, configure: Callable[..., None], policy: str
) -> None:
    """keep_first: the new bytes, never an instance's file; replace: the old ones. Both
    are received PHI that nothing reads (before: kept forever). The instance's own file
    is the usual rule's: kept here while it is unfinished."""
    configure(uid_conflict_policy=policy, spool_keep_days=1)
    instance_id, first = _receive(tmp_path, "1.2.3.60")
    second = _conflicting(tmp_path, "1.2.3.60")
    report = enqueue_paths([second], send=None, settings=get_settings())
    assert len(report.uid_conflicts) == 1, report
    unused, used = (second, first) if policy == "keep_first" else (first, second)
    now = utcnow()
    assert purge_spool(get_settings(), now).purged == 0, "kept CXR_SPOOL_KEEP_DAYS"
    counts = purge_spool(get_settings(), now + timedelta(days=1, minutes=1))
    assert (counts.deleted, counts.conflict_files, counts.errors) == (1, 1, 0)
    assert not unused.exists() and used.is_file()
    with session_scope() as session:
        (conflict,) = session.scalars(select(UidConflict)).all()
        assert conflict.file_purged_at is not None
        assert session.get(Instance, instance_id).file_purged_at is None  # type: ignore[union-attr]
    assert purge_spool(get_settings(), now + timedelta(days=2)).purged == 0, "once"


def test_a_conflict_file_that_became_an_instances_file_is_kept(
    version_id: int, tmp_path: Path, configure: Callable[..., None]
) -> None:
    """keep_first kept the second bytes out; replace later made them the instance's file
    (a second conflict, same bytes): the first conflict's "unused" file is used now."""
    configure(uid_conflict_policy="keep_first")
    _receive(tmp_path, "1.2.3.61")
    second = _conflicting(tmp_path, "1.2.3.61")
    enqueue_paths([second], send=None, settings=get_settings())
    configure(uid_conflict_policy="replace")
    enqueue_paths([second], send=None, settings=get_settings())
    counts = purge_spool(get_settings(), utcnow())
    assert second.is_file(), "the instance's file now"
    assert counts.errors == 0


def test_the_purge_removes_stale_partial_files_and_leaves_fresh_ones(
    migrated_db: str, tmp_path: Path
) -> None:
    """Partials of interrupted writes (``.incoming-*.tmp``) and of transfers cut off
    (``.receiving/``), left by a killed process: removed by the periodic purge once
    stale, not only by a listener's restart; a fresh one may be a transfer in progress."""
    settings = get_settings()
    spool = settings.intake.effective_spool_dir
    (spool / "1.2.3").mkdir(parents=True)
    (spool / ".receiving").mkdir()
    stale = [spool / "1.2.3" / ".incoming-a.tmp", spool / ".receiving" / ".receiving-a.tmp"]
    fresh = [spool / "1.2.3" / ".incoming-b.tmp", spool / ".receiving" / ".receiving-b.tmp"]
    old = time.time() - stale_partial_s(settings) - 1
    for path in stale + fresh:
        path.write_bytes(b"part of an instance")
    for path in stale:
        os.utime(path, (old, old))
    counts = purge_spool(settings, utcnow())
    assert counts.partials == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in fresh)
