"""cxr_orient/ingest.py: enqueue_paths with the real worker.dispatch.send_instances over
kombu's filesystem broker (messages are files), and wait_for. SQLite, no worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from cxr_orient.ingest import enqueue_paths, wait_for
from cxr_orient.settings import get_settings
from db import crud
from db.models import Instance, InstanceStatus, Study
from db.session import session_scope
from tests.utils.corpus import rg1_dicom
from tests.utils.embedded import Embedded, embedded_setup
from worker.dispatch import broker_queue_depth, send_instances

STUDY_A = "1.2.826.0.1.3680043.10.7.1"
STUDY_B = "1.2.826.0.1.3680043.10.7.2"


@pytest.fixture
def embedded(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Embedded:
    return embedded_setup(tmp_path, configure, monkeypatch)


def _rows(ids: Sequence[int]) -> dict[int, Instance]:
    with session_scope() as session:
        rows = {i: crud.get_instance(session, instance_id=i) for i in ids}
        session.expunge_all()
    assert all(r is not None for r in rows.values())
    return {i: r for i, r in rows.items() if r is not None}


def test_new_files_are_queued_one_message_each(embedded: Embedded) -> None:
    files = [rg1_dicom(embedded.root / f"s{i}.dcm", study_uid=STUDY_A) for i in range(3)]

    report = enqueue_paths([embedded.root], send=send_instances, settings=get_settings())

    assert report.files == 3
    assert len(report.queued) == 3 and report.already_known == [] and report.refused == []
    assert report.studies == {STUDY_A}
    messages = embedded.messages()
    assert len(messages) == 3
    assert {m.task for m in messages} == {"cxr_orient.classify"}
    assert {m.queue for m in messages} == {"cxr-orient"}
    assert sorted(m.args[0] for m in messages) == sorted(report.queued)
    assert all(len(m.args) == 1 and isinstance(m.args[0], int) for m in messages)
    assert broker_queue_depth() == 3
    rows = _rows(report.queued)
    assert {r.status for r in rows.values()} == {InstanceStatus.queued}
    assert sorted(r.file_path for r in rows.values()) == sorted(str(f) for f in files)
    assert {r.header_view_position for r in rows.values()} == {"PA"}


def test_re_enqueue_adds_nothing(embedded: Embedded) -> None:
    rg1_dicom(embedded.root / "a.dcm")
    rg1_dicom(embedded.root / "b.dcm")
    first = enqueue_paths([embedded.root], send=send_instances, settings=get_settings())
    assert len(first.queued) == 2

    again = enqueue_paths([embedded.root], send=send_instances, settings=get_settings())

    assert again.queued == []
    assert sorted(again.already_known) == sorted(first.queued)
    assert len(embedded.messages()) == 2, "nothing sent again"
    with session_scope() as session:
        assert crud.status_counts(session)["queued"] == 2


def test_non_dicom_and_outside_files_are_recorded_failed(
    embedded: Embedded, tmp_path: Path
) -> None:
    notes = embedded.root / "notes.txt"
    notes.write_text("not an image")
    outside = rg1_dicom(tmp_path / "elsewhere" / "outside.dcm")
    good = rg1_dicom(embedded.root / "good.dcm")

    report = enqueue_paths([notes, outside, good], send=send_instances, settings=get_settings())

    codes = {path: code for path, code, _ in report.refused}
    assert codes == {str(notes): "not_dicom", str(outside): "path_not_allowed"}
    assert len(report.refused_ids) == 2 and len(report.queued) == 1
    rows = _rows(report.refused_ids)
    assert {r.file_path: (r.status, r.error_code) for r in rows.values()} == {
        str(notes): (InstanceStatus.failed, "not_dicom"),
        str(outside): (InstanceStatus.failed, "path_not_allowed"),
    }
    assert [m.args for m in embedded.messages()] == [[report.queued[0]]], "refused: not sent"


def test_send_none_records_without_sending(embedded: Embedded) -> None:
    rg1_dicom(embedded.root / "a.dcm")

    report = enqueue_paths([embedded.root], send=None, settings=get_settings())

    assert len(report.queued) == 1
    assert _rows(report.queued)[report.queued[0]].status == InstanceStatus.queued
    assert embedded.broker_out.is_dir()
    assert embedded.messages() == []
    assert broker_queue_depth() == 0


def test_a_studys_instances_are_grouped(embedded: Embedded) -> None:
    # Path order interleaves the studies: a1 (A), b1 (B), c1 (A), d1 (B).
    for name, study in (("a1", STUDY_A), ("b1", STUDY_B), ("c1", STUDY_A), ("d1", STUDY_B)):
        rg1_dicom(embedded.root / f"{name}.dcm", study_uid=study)
    sent: list[list[int]] = []

    def send(ids: Sequence[int]) -> int:
        sent.append(list(ids))
        return send_instances(ids)

    report = enqueue_paths([embedded.root], send=send, settings=get_settings())

    assert report.studies == {STUDY_A, STUDY_B}
    assert sent == [report.queued]
    rows = _rows(report.queued)
    with session_scope() as session:
        study_ids = {
            uid: sid for uid, sid in session.execute(select(Study.study_instance_uid, Study.id))
        }
    order = [rows[i].study_id for i in report.queued]
    assert order == [study_ids[STUDY_A]] * 2 + [study_ids[STUDY_B]] * 2
    assert [Path(rows[i].file_path).name for i in report.queued] == [
        "a1.dcm",
        "c1.dcm",
        "b1.dcm",
        "d1.dcm",
    ]
    assert sorted(m.args[0] for m in embedded.messages()) == sorted(report.queued)


def test_wait_for_times_out_then_sees_the_work_finished(embedded: Embedded) -> None:
    rg1_dicom(embedded.root / "a.dcm")
    rg1_dicom(embedded.root / "b.dcm")
    ids = enqueue_paths([embedded.root], send=None, settings=get_settings()).queued
    polls: list[int] = []

    start = time.monotonic()
    assert wait_for(ids, timeout_s=0.4, poll_s=0.05, on_poll=polls.append) is False
    assert 0.4 <= time.monotonic() - start < 5
    assert polls and set(polls) == {2}

    with session_scope() as session:
        for instance_id in ids:
            crud.mark_failed(
                session,
                instance_id=instance_id,
                error_code="test",
                error_message="finished by the test",
            )
    polls.clear()
    start = time.monotonic()
    assert wait_for(ids, timeout_s=5, poll_s=0.05, on_poll=polls.append) is True
    assert time.monotonic() - start < 2
    assert polls == [0]
