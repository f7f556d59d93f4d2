"""worker/pipeline.py: classify_instances in the test process, on SQLite, with the shipped
model, on real radiographs wrapped into DICOM (RG1, a frontal CR; the covid-cxr films
when ../shared/data has them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from cxr_orient.answer import Answer
from cxr_orient.ingest import enqueue_paths
from cxr_orient.registry import current_model
from cxr_orient.settings import SHIPPED_MODEL, get_settings
from db import crud
from db.models import Prediction
from db.session import session_scope
from tests.utils.corpus import film_dicom, rg1_dicom
from tests.utils.dicom_factory import COVID_CXR
from tests.utils.embedded import Embedded, embedded_setup
from worker.pipeline import classify_instances

SHIPPED_NAME = SHIPPED_MODEL.stem


@pytest.fixture
def embedded(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Embedded:
    return embedded_setup(tmp_path, configure, monkeypatch)


def _enqueue(*paths: Path) -> dict[str, int]:
    """Record the files (nothing sent); file name -> instance id."""
    report = enqueue_paths(list(paths), send=None, settings=get_settings())
    assert report.refused == [], report.refused
    with session_scope() as session:
        rows = [crud.get_instance(session, instance_id=i) for i in report.queued]
        return {Path(r.file_path).name: r.id for r in rows if r is not None}


def _results(ids: Sequence[int]) -> dict[str, crud.ResultRow]:
    with session_scope() as session:
        return {Path(r.file_path).name: r for r in crud.results(session, instance_ids=ids)}


def _answer(row: crud.ResultRow) -> Answer:
    assert row.answer is not None, row
    return row.answer


def _prediction_count(instance_id: int) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Prediction)
                .where(Prediction.instance_id == instance_id)
            )
            or 0
        )


def test_answers_are_recorded_with_model_version_and_header_agreement(embedded: Embedded) -> None:
    ids = _enqueue(
        rg1_dicom(embedded.root / "pa.dcm", view_position="PA"),
        rg1_dicom(embedded.root / "ll.dcm", view_position="LL"),
        rg1_dicom(embedded.root / "none.dcm", view_position=None),
    )

    outcome = classify_instances(list(ids.values()), settings=get_settings())

    assert sorted(outcome.done) == sorted(ids.values())
    assert outcome.failed == {} and outcome.skipped == []
    assert outcome.model_version == SHIPPED_NAME
    threshold = current_model(get_settings().inference).classifier.card.review_threshold
    assert threshold == 0.9  # the shipped card's, no CXR_REVIEW_THRESHOLD set
    rows = _results(list(ids.values()))
    for row in rows.values():
        assert row.status == "done"
        answer = _answer(row)
        assert answer.label == "frontal", row  # RG1 is a chest PA
        assert row.model_version == SHIPPED_NAME
        assert 0.5 <= answer.confidence <= 1.0
        assert abs(1 - answer.confidence - answer.p_lateral) < 1e-9
        assert answer.needs_review is (answer.confidence < threshold)
        assert row.error is None
    assert {name: row.header_view for name, row in rows.items()} == {
        "pa.dcm": "PA",
        "ll.dcm": "LL",
        "none.dcm": None,
    }
    assert {name: _answer(row).header_agrees for name, row in rows.items()} == {
        "pa.dcm": True,
        "ll.dcm": False,
        "none.dcm": None,
    }
    with session_scope() as session:
        active = crud.active_model_version(session)
        assert active is not None and active.name == SHIPPED_NAME
        version_ids = set(session.scalars(select(Prediction.model_version_id)))
    assert version_ids == {active.id}


@pytest.mark.skipif(not COVID_CXR.is_dir(), reason="needs the real films in ../shared/data")
def test_lateral_films_and_a_lying_header(embedded: Embedded) -> None:
    ids = _enqueue(
        film_dicom(embedded.root / "lat-ll.dcm", view="lateral", index=0, view_position="LL"),
        film_dicom(embedded.root / "lat-pa.dcm", view="lateral", index=3, view_position="PA"),
        film_dicom(embedded.root / "front-pa.dcm", view="frontal", index=0, view_position="PA"),
    )

    outcome = classify_instances(list(ids.values()), settings=get_settings())

    assert sorted(outcome.done) == sorted(ids.values())
    rows = _results(list(ids.values()))
    assert {n: _answer(r).label for n, r in rows.items()} == {
        "lat-ll.dcm": "lateral",
        "lat-pa.dcm": "lateral",
        "front-pa.dcm": "frontal",
    }
    assert {n: _answer(r).header_agrees for n, r in rows.items()} == {
        "lat-ll.dcm": True,
        "lat-pa.dcm": False,
        "front-pa.dcm": True,
    }


def test_a_bad_file_fails_alone(embedded: Embedded) -> None:
    good = rg1_dicom(embedded.root / "good.dcm")
    mate = rg1_dicom(embedded.root / "mate.dcm", view_position=None)
    bad = rg1_dicom(embedded.root / "short.dcm")
    ds = pydicom.dcmread(bad)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # the header is intact
    ds.save_as(bad)
    ids = _enqueue(good, mate, bad)

    outcome = classify_instances(list(ids.values()), settings=get_settings())

    assert outcome.failed == {ids["short.dcm"]: "truncated"}
    assert sorted(outcome.done) == sorted([ids["good.dcm"], ids["mate.dcm"]])
    rows = _results(list(ids.values()))
    assert rows["short.dcm"].status == "failed"
    assert rows["short.dcm"].answer is None
    assert str(rows["short.dcm"].error).startswith("truncated:")
    assert "short.dcm" in str(rows["short.dcm"].error)
    assert {rows["good.dcm"].status, rows["mate.dcm"].status} == {"done"}
    assert _prediction_count(ids["short.dcm"]) == 0


def test_a_file_changed_after_enqueue_fails(embedded: Embedded) -> None:
    path = rg1_dicom(embedded.root / "changed.dcm")
    ids = _enqueue(path)
    rg1_dicom(path, view_position="LL")  # same path, other bytes (new UIDs too)

    outcome = classify_instances(list(ids.values()), settings=get_settings())

    assert outcome.failed == {ids["changed.dcm"]: "file_changed"}
    assert outcome.done == []
    row = _results(list(ids.values()))["changed.dcm"]
    assert row.status == "failed" and str(row.error).startswith("file_changed:")


def test_an_instance_already_done_is_skipped(embedded: Embedded) -> None:
    ids = _enqueue(rg1_dicom(embedded.root / "once.dcm"))
    instance_id = ids["once.dcm"]
    assert classify_instances([instance_id], settings=get_settings()).done == [instance_id]

    again = classify_instances([instance_id, instance_id], settings=get_settings())

    assert again.skipped == [instance_id]
    assert again.done == [] and again.failed == {}
    assert _prediction_count(instance_id) == 1
    assert _results([instance_id])["once.dcm"].status == "done"


def test_review_threshold_setting_overrides_the_versions(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = embedded_setup(tmp_path, configure, monkeypatch, review_threshold=0.999)
    ids = _enqueue(rg1_dicom(embedded.root / "pa.dcm"))

    outcome = classify_instances(list(ids.values()), settings=get_settings())

    assert outcome.done == list(ids.values())
    assert current_model(get_settings().inference).classifier.card.review_threshold == 0.999
    with session_scope() as session:
        active = crud.active_model_version(session)
        assert active is not None and active.review_threshold == 0.9  # the record unchanged
    row = _results(list(ids.values()))["pa.dcm"]
    assert _answer(row).confidence < 0.999
    assert _answer(row).needs_review is True
