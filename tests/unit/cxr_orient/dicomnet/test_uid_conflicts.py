"""The same SOPInstanceUID twice (issue 12, item 3): identical re-sends are already known;
other bytes are a uid conflict, recorded in uid_conflicts and handled by
CXR_UID_CONFLICT_POLICY (keep_first, replace). On SQLite and PostgreSQL; the replace tests
classify in the test process with the shipped model (worker.pipeline.classify_instances)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

import worker.decoding
from cli.main import main
from cxr_orient.ingest import enqueue_paths
from cxr_orient.settings import Settings, get_settings
from db import crud
from db.migrate import downgrade, upgrade
from db.models import OrientationLabel
from db.session import make_engine, session_scope
from tests.utils.uid_conflicts import (
    OTHER_STUDY,
    SOP,
    STUDY,
    Sent,
    conflict_rows,
    instance_row,
    prediction_rows,
    radiograph_version,
    sha256_of,
    study_uids,
)
from worker.pipeline import classify_instances


@pytest.fixture
def archive(migrated_db: str, tmp_path: Path) -> Path:
    """CXR_INGEST_ROOT is tmp_path (migrated_db); the files go under it."""
    root = tmp_path / "archive"
    root.mkdir()
    return root


def _first(archive: Path, name: str = "first.dcm") -> tuple[Path, int]:
    path = radiograph_version(archive / name, version=0)
    report = enqueue_paths([path], send=None, settings=get_settings())
    assert len(report.queued) == 1, report
    return path, report.queued[0]


def _policy(configure: Callable[..., None], policy: str) -> None:
    configure(uid_conflict_policy=policy)


# --- already known ---------------------------------------------------------------------


def test_identical_resends_are_already_known_under_any_path(archive: Path) -> None:
    path, instance_id = _first(archive)
    copy = archive / "copy" / "same-bytes.dcm"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    sent = Sent()

    again = enqueue_paths([path, copy], send=sent, settings=get_settings())

    assert again.already_known == [instance_id, instance_id]
    assert again.queued == [] and again.uid_conflicts == [] and sent == []
    assert conflict_rows() == []
    with session_scope() as session:
        assert crud.uid_conflict_counts(session) == {"kept_first": 0, "replaced": 0}
    assert instance_row(instance_id).file_path == str(path)


def test_a_file_refused_first_is_no_conflict(archive: Path) -> None:
    path = archive / "later-fixed.dcm"
    path.write_bytes(b"not yet a DICOM file")
    refused = enqueue_paths([path], send=None, settings=get_settings())
    assert [code for _, code, _ in refused.refused] == ["not_dicom"]

    radiograph_version(path, version=0)
    fixed = enqueue_paths([path], send=None, settings=get_settings())

    assert len(fixed.queued) == 1 and fixed.uid_conflicts == [] and fixed.already_known == []
    assert conflict_rows() == []


# --- keep_first ------------------------------------------------------------------------


def test_keep_first_records_the_conflict_and_queues_nothing(
    archive: Path, configure: Callable[..., None]
) -> None:
    first, instance_id = _first(archive)
    changed = radiograph_version(archive / "resent" / "changed.dcm", version=1)
    sent = Sent()

    report = enqueue_paths([changed], send=sent, settings=get_settings())

    assert report.queued == [] and report.already_known == [] and sent == []
    assert [
        (c.instance_id, c.action, c.study_matches, c.first_seen, c.sop_instance_uid)
        for c in report.uid_conflicts
    ] == [(instance_id, "kept_first", True, True, SOP)]
    assert report.instance_ids == [instance_id]
    (row,) = conflict_rows()
    assert (row.instance_id, row.policy, row.action, row.known_status) == (
        instance_id,
        "keep_first",
        "kept_first",
        "queued",
    )
    assert (row.known_file_path, row.known_file_sha256, row.known_file_size) == (
        str(first),
        sha256_of(first),
        first.stat().st_size,
    )
    assert (row.new_file_path, row.new_file_sha256, row.new_file_size) == (
        str(changed),
        sha256_of(changed),
        changed.stat().st_size,
    )
    assert row.known_file_sha256 != row.new_file_sha256
    assert (row.study_instance_uid, row.study_matches) == (STUDY, True)
    assert row.created_at is not None
    kept = instance_row(instance_id)
    assert (kept.file_path, kept.file_sha256) == (str(first), sha256_of(first))
    with session_scope() as session:
        assert crud.uid_conflict_counts(session) == {"kept_first": 1, "replaced": 0}

    # the same conflict: reported, not re-recorded
    again = enqueue_paths([changed], send=sent, settings=get_settings())

    assert [(c.conflict_id, c.first_seen) for c in again.uid_conflicts] == [(row.id, False)]
    assert len(conflict_rows()) == 1 and sent == []


def test_enqueue_and_status_report_the_conflict(archive: Path) -> None:
    _, instance_id = _first(archive)
    changed = radiograph_version(archive / "changed.dcm", version=1)

    result = CliRunner().invoke(main, ["enqueue", str(changed)])

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "1 files: 0 queued, 0 already known, 1 uid_conflict, "
        "0 out_of_scope, 0 refused (1 studies)\n"
    )
    assert (
        f"  uid_conflict {changed}: SOPInstanceUID {SOP} (instance {instance_id}) has "
        "other bytes: kept_first\n"
    ) in result.stderr
    status = CliRunner().invoke(main, ["status"])
    assert status.exit_code == 0, status.output
    assert "uid conflicts: 1 (kept_first 1, replaced 0)" in status.stdout.splitlines()


# --- replace ---------------------------------------------------------------------------


def test_replace_requeues_the_instance_and_keeps_the_earlier_answer(
    archive: Path, configure: Callable[..., None]
) -> None:
    first, instance_id = _first(archive)
    assert classify_instances([instance_id], settings=get_settings()).done == [instance_id]
    _policy(configure, "replace")
    corrected = radiograph_version(archive / "corrected.dcm", version=1, view_position="AP")
    sent = Sent()

    report = enqueue_paths([corrected], send=sent, settings=get_settings())

    assert report.queued == [] and sent == [instance_id]
    assert [(c.instance_id, c.action) for c in report.uid_conflicts] == [(instance_id, "replaced")]
    row = instance_row(instance_id)
    assert (row.status, row.file_path, row.file_sha256, row.file_size) == (
        "queued",
        str(corrected),
        sha256_of(corrected),
        corrected.stat().st_size,
    )
    assert (row.attempts, row.header_view_position, row.finished_at) == (0, "AP", None)
    (conflict,) = conflict_rows(instance_id)
    assert (conflict.policy, conflict.action, conflict.known_status) == (
        "replace",
        "replaced",
        "done",
    )
    assert conflict.known_file_sha256 == sha256_of(first)
    assert len(prediction_rows(instance_id)) == 1  # history is kept

    outcome = classify_instances([instance_id], settings=get_settings())

    assert outcome.done == [instance_id]
    answers = prediction_rows(instance_id)
    assert [p.file_sha256 for p in answers] == [sha256_of(first), sha256_of(corrected)]
    assert len({p.model_version_id for p in answers}) == 1  # one model, two file versions
    with session_scope() as session:
        (latest,) = crud.results(session, instance_ids=[instance_id])
        assert crud.uid_conflict_counts(session) == {"kept_first": 0, "replaced": 1}
    assert (latest.status, latest.file_path, latest.header_view) == ("done", str(corrected), "AP")
    # answered once
    assert classify_instances([instance_id], settings=get_settings()).skipped == [instance_id]
    assert len(prediction_rows(instance_id)) == 2


def test_replace_revives_a_failed_instance(archive: Path, configure: Callable[..., None]) -> None:
    broken = radiograph_version(archive / "broken.dcm", version=0)
    ds = pydicom.dcmread(broken)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # the header is intact
    ds.save_as(broken)
    (instance_id,) = enqueue_paths([broken], send=None, settings=get_settings()).queued
    outcome = classify_instances([instance_id], settings=get_settings())
    assert outcome.failed == {instance_id: "truncated"}
    _policy(configure, "replace")

    resent = radiograph_version(archive / "resent.dcm", version=0)
    enqueue_paths([resent], send=None, settings=get_settings())
    outcome = classify_instances([instance_id], settings=get_settings())

    assert outcome.done == [instance_id]
    row = instance_row(instance_id)
    assert (row.status, row.error_code, row.file_sha256) == ("done", None, sha256_of(resent))
    assert [p.file_sha256 for p in prediction_rows(instance_id)] == [sha256_of(resent)]
    assert [c.known_status for c in conflict_rows(instance_id)] == ["failed"]


@pytest.mark.parametrize("where", ["same-path", "other-path"])
def test_replace_while_processing_records_nothing_stale_and_requeues(
    archive: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The worker has claimed the instance (old sha) when the replacement is enqueued:
    overwritten in place, its read fails file_changed; elsewhere, it answers the old bytes.
    Either way nothing is recorded on the instance, which stays queued for the new file."""
    first, instance_id = _first(archive)
    _policy(configure, "replace")
    new_path = first if where == "same-path" else archive / "corrected.dcm"
    sent = Sent()
    real_read = worker.decoding.load_checked_image

    def replace_then_read(file_path: str, **kwargs: Any) -> Any:
        if not sent:  # in the decode thread, after the claim: the new file arrives
            radiograph_version(new_path, version=1)
            enqueue_paths([new_path], send=sent, settings=get_settings())
        return real_read(file_path, **kwargs)

    monkeypatch.setattr(worker.decoding, "load_checked_image", replace_then_read)

    outcome = classify_instances([instance_id], settings=get_settings())

    assert sent == [instance_id]
    assert outcome.done == [] and outcome.failed == {} and outcome.skipped == [instance_id]
    row = instance_row(instance_id)
    assert (row.status, row.error_code, row.file_sha256) == ("queued", None, sha256_of(new_path))
    assert prediction_rows(instance_id) == []
    (conflict,) = conflict_rows(instance_id)
    assert (conflict.known_status, conflict.action) == ("processing", "replaced")

    monkeypatch.setattr(worker.decoding, "load_checked_image", real_read)
    assert classify_instances([instance_id], settings=get_settings()).done == [instance_id]
    assert [p.file_sha256 for p in prediction_rows(instance_id)] == [sha256_of(new_path)]
    assert instance_row(instance_id).status == "done"


def test_a_clash_across_studies_is_recorded_and_never_moves_the_instance(
    archive: Path, configure: Callable[..., None]
) -> None:
    first, instance_id = _first(archive)
    _policy(configure, "replace")
    clash = radiograph_version(archive / "other-study.dcm", version=1, study_uid=OTHER_STUDY)
    sent = Sent()

    report = enqueue_paths([clash], send=sent, settings=get_settings())

    assert sent == [] and report.queued == []
    assert [(c.action, c.study_matches) for c in report.uid_conflicts] == [("kept_first", False)]
    assert report.studies == {STUDY}
    (row,) = conflict_rows(instance_id)
    assert (row.policy, row.action, row.study_matches, row.study_instance_uid) == (
        "replace",
        "kept_first",
        False,
        OTHER_STUDY,
    )
    assert OTHER_STUDY in row.detail and STUDY in row.detail
    kept = instance_row(instance_id)
    assert (kept.file_sha256, kept.status) == (sha256_of(first), "queued")
    with session_scope() as session:
        (result,) = crud.results(session, instance_ids=[instance_id])
    assert result.study_instance_uid == STUDY
    assert study_uids() == [STUDY], "no study is created for the clashing file"


# --- the guards in db.crud -------------------------------------------------------------


def test_answers_and_failures_on_replaced_bytes_are_not_recorded(archive: Path) -> None:
    from tests.utils.factories import prediction_record, register_version

    first, instance_id = _first(archive)
    old = sha256_of(first)
    with session_scope() as session:
        version_id = register_version(session).id
        assert crud.replace_instance_file(
            session,
            instance_id=instance_id,
            expected_sha256=old,
            file_path="/new.dcm",
            file_sha256="b" * 64,
            file_size=1,
            series_instance_uid=None,
            modality="CR",
            transfer_syntax_uid=None,
            header_view_position=None,
        )
        assert not crud.replace_instance_file(  # compare-and-set: the old sha is gone
            session,
            instance_id=instance_id,
            expected_sha256=old,
            file_path="/x.dcm",
            file_sha256="c" * 64,
            file_size=1,
            series_instance_uid=None,
            modality="CR",
            transfer_syntax_uid=None,
            header_view_position=None,
        )
    record = prediction_record(
        instance_id=instance_id,
        label=OrientationLabel.frontal,
        confidence=0.9,
        p_frontal=0.9,
        p_lateral=0.1,
        header_agrees=None,
        needs_review=False,
        decode_ms=None,
        inference_ms=None,
        batch_size=1,
        file_sha256=old,
    )
    with session_scope() as session:
        assert (
            crud.record_predictions(
                session, model_version_id=version_id, records=[record], worker="w"
            )
            == 0
        )
        crud.mark_failed(
            session,
            instance_id=instance_id,
            error_code="file_changed",
            error_message="stale",
            file_sha256=old,
        )
        assert crud.superseded_instance_ids(session, made_on={instance_id: old}) == [instance_id]
    row = instance_row(instance_id)
    assert (row.status, row.error_code, row.file_sha256) == ("queued", None, "b" * 64)
    assert prediction_rows(instance_id) == []


# --- the setting -----------------------------------------------------------------------


def test_the_policy_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_UID_CONFLICT_POLICY", raising=False)
    assert Settings(_env_file=None).intake.uid_conflict_policy == "keep_first"
    monkeypatch.setenv("CXR_UID_CONFLICT_POLICY", "replace")
    assert Settings(_env_file=None).intake.uid_conflict_policy == "replace"
    monkeypatch.setenv("CXR_UID_CONFLICT_POLICY", "keep_last")
    with pytest.raises(ValidationError, match="uid_conflict_policy"):
        Settings(_env_file=None)


# --- the migration ---------------------------------------------------------------------


def test_migration_0002_backfills_widens_the_unique_rule_and_downgrades(database_url: str) -> None:
    upgrade(database_url, "0001")
    engine = make_engine(database_url)
    now = "CURRENT_TIMESTAMP"
    prediction = (
        "INSERT INTO predictions (instance_id, model_version_id, {extra_cols}label, "
        "confidence, p_frontal, p_lateral, needs_review, created_at) VALUES (1, 1, "
        "{extra_vals}'frontal', 0.9, 0.9, 0.1, false, " + now + ")"
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO studies (id, study_instance_uid, created_at) "
                    f"VALUES (1, '1.2.3', {now})"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO instances (id, study_id, sop_instance_uid, file_path, "
                    "file_sha256, file_size, status, attempts, enqueued_at, updated_at) VALUES "
                    f"(1, 1, '1.2.3.4', '/a.dcm', '{'a' * 64}', 10, 'done', 1, {now}, {now})"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO model_versions (id, name, architecture, file_path, sha256, "
                    "input_size, labels, temperature, review_threshold, metrics, training, "
                    "state, is_active, created_at) VALUES (1, 'm1', 'compact', '/m.keras', "
                    f"'{'f' * 64}', 256, '[]', 1.0, 0.9, '{{}}', '{{}}', 'active', true, {now})"
                )
            )
            conn.execute(text(prediction.format(extra_cols="", extra_vals="")))

        upgrade(database_url, "0002")

        with engine.begin() as conn:
            assert conn.execute(text("SELECT file_sha256 FROM predictions")).scalar_one() == (
                "a" * 64
            )
            conn.execute(
                text(
                    "INSERT INTO uid_conflicts (instance_id, study_instance_uid, study_matches, "
                    "known_file_path, known_file_sha256, known_file_size, known_status, "
                    "new_file_path, new_file_sha256, new_file_size, policy, action, detail, "
                    f"created_at) VALUES (1, '1.2.3', true, '/a.dcm', '{'a' * 64}', 10, 'done', "
                    f"'/b.dcm', '{'b' * 64}', 11, 'replace', 'replaced', 'test', {now})"
                )
            )
            conn.execute(
                text(
                    prediction.format(  # the same model on the new bytes: allowed
                        extra_cols="file_sha256, ", extra_vals=f"'{'b' * 64}', "
                    )
                )
            )
        with pytest.raises(IntegrityError), engine.begin() as conn:  # but only once
            conn.execute(
                text(prediction.format(extra_cols="file_sha256, ", extra_vals=f"'{'b' * 64}', "))
            )
        with pytest.raises(RuntimeError, match="more than one version of their file"):
            downgrade(database_url, "0001")  # would lose an answer: refused

        with engine.begin() as conn:
            conn.execute(text(f"DELETE FROM predictions WHERE file_sha256 = '{'b' * 64}'"))
        downgrade(database_url, "0001")

        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 1
            tables = {
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables"
                        if not database_url.startswith("sqlite")
                        else "SELECT name FROM sqlite_master WHERE type = 'table'"
                    )
                )
            }
            assert "uid_conflicts" not in tables
        upgrade(database_url, "0002")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT file_sha256 FROM predictions")).scalar_one() == (
                "a" * 64
            )
    finally:
        engine.dispose()
