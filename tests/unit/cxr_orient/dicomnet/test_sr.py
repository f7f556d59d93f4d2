"""The Structured Report of an answer: codes, references, UIDs, and dciodvfy-clean."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxr_orient.answer import Answer
from cxr_orient.dicomnet.sr import (
    AP,
    FRONTAL,
    LATERAL,
    LEFT_LATERAL,
    LOCAL_SCHEME,
    PA,
    build_sr,
    sr_series_uid,
    view_code,
)
from tests.utils.dciodvfy import KNOWN_WARNINGS, dciodvfy
from tests.utils.dicom_factory import make_dicom

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


#: The model version that made the answers, and when.
MADE_BY: dict[str, Any] = {
    "model_name": "compact-invariant-64-v2",
    "model_architecture": "compact_invariant_64_heads",
    "answered_at": datetime(2026, 12, 3, 8, 15, 30, tzinfo=UTC),
}


def _answer(label: str, **overrides: Any) -> Answer:
    values: dict[str, Any] = {
        "label": label,
        "confidence": 0.97,
        "needs_review": False,
        "review_reasons": (),
        "p_frontal": 0.97 if label == "frontal" else 0.03,
        "p_lateral": 0.03 if label == "frontal" else 0.97,
        "header_agrees": True,
        "rotation": 0,
        "mirrored": False if label == "frontal" else None,
        "unusual_score": 1.02,
    }
    values.update(overrides)
    return Answer(**values)


def _source(tmp_path: Path, view: str | None) -> Dataset:
    path = make_dicom(
        tmp_path / "src.dcm",
        np.full((64, 64), 500, np.uint16),
        view_position=view,
        patient_id="PAT-7",
    )
    return pydicom.dcmread(path, stop_before_pixels=True)


def _items(sr: Dataset) -> list[Dataset]:
    """Every content item, depth first."""
    found: list[Dataset] = []

    def walk(node: Dataset) -> None:
        for item in node.get("ContentSequence", []):
            found.append(item)
            walk(item)

    walk(sr)
    return found


def _named(sr: Dataset, meaning: str) -> list[Dataset]:
    return [
        i
        for i in _items(sr)
        if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def _code(item: Dataset) -> tuple[str, str]:
    code = item.ConceptCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator


@pytest.mark.parametrize(
    ("label", "header", "expected"),
    [
        ("frontal", "PA", PA),
        ("frontal", "ap", AP),
        ("frontal", None, FRONTAL),
        ("frontal", "LL", FRONTAL),
        ("lateral", "LL", LEFT_LATERAL),
        ("lateral", "LAT", LATERAL),
        ("lateral", "PA", LATERAL),
        ("lateral", None, LATERAL),
    ],
    ids=[
        "pa",
        "ap",
        "frontal-no-header",
        "frontal-header-lateral",
        "left-lateral",
        "lateral",
        "lateral-header-pa",
        "lateral-no-header",
    ],
)
def test_view_code(label: str, header: str | None, expected: object) -> None:
    assert view_code(label, header) == expected


@pytest.mark.parametrize(
    ("header", "projection", "expected"),
    [
        ("PA", "AP", AP),
        (None, "PA", PA),
        ("AP SUPINE", None, AP),
        (None, None, FRONTAL),
    ],
    ids=["model-over-header", "model-no-header", "header-when-model-abstains", "neither"],
)
def test_view_code_takes_the_models_projection(
    header: str | None, projection: str | None, expected: object
) -> None:
    assert view_code("frontal", header, projection) == expected
    assert view_code("lateral", header, projection) == LATERAL


def test_codes_are_the_standard_ones() -> None:
    assert (PA.value, PA.scheme_designator) == ("272479007", "SCT")
    assert (AP.value, AP.scheme_designator) == ("399348003", "SCT")
    assert (LATERAL.value, LATERAL.scheme_designator) == ("399067008", "SCT")


def test_sr_references_its_source_in_the_source_study(tmp_path: Path) -> None:
    source = _source(tmp_path, "PA")
    uid = generate_uid()
    sr = build_sr(
        source,
        _answer(
            "frontal",
            needs_review=True,
            review_reasons=("low_confidence", "unusual_image"),
            header_agrees=False,
            rotation=90,
        ),
        **MADE_BY,
        sop_instance_uid=uid,
        instance_number=12,
    )
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.SOPInstanceUID == uid and sr.InstanceNumber == 12
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == "PAT-7"
    assert sr.SeriesInstanceUID == sr_series_uid(source.StudyInstanceUID)
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.Manufacturer == "cxr-orient" and sr.Modality == "SR"
    assert (sr.ContentDate, sr.ContentTime) == ("20261203", "081530")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    images = [i for i in _items(sr) if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
        source.SOPInstanceUID
    ]
    assert _code(_named(sr, "Image View")[0]) == ("272479007", "SCT")
    certainty = _named(sr, "Certainty of Finding")[0].MeasuredValueSequence[0]
    assert float(certainty.NumericValue) == pytest.approx(0.97)
    assert certainty.MeasurementUnitsCodeSequence[0].CodeValue == "{ratio}"
    rotation = _named(sr, "Rotation Angle")[0].MeasuredValueSequence[0]
    assert float(rotation.NumericValue) == 90
    assert rotation.MeasurementUnitsCodeSequence[0].CodeValue == "deg"
    assert _code(_named(sr, "Needs review")[0]) == ("373066001", "SCT")  # yes
    assert sorted(_code(i)[0] for i in _named(sr, "Review reason")) == [
        "low_confidence",
        "unusual_image",
    ]
    assert _code(_named(sr, "Header view disagrees")[0]) == ("373066001", "SCT")
    assert _code(_named(sr, "Stored mirrored")[0]) == ("373067005", "SCT")  # no
    names = [i.TextValue for i in _named(sr, "Algorithm Name")]
    assert names and set(names) == {"compact-invariant-64-v2"}
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME


def test_same_answer_same_uid_same_object(tmp_path: Path) -> None:
    """A re-send rebuilds the SR: with the UID fixed, it is the same object."""
    source = _source(tmp_path, "PA")
    uid = generate_uid()
    first = build_sr(source, _answer("frontal"), **MADE_BY, sop_instance_uid=uid, instance_number=1)
    again = build_sr(source, _answer("frontal"), **MADE_BY, sop_instance_uid=uid, instance_number=1)
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "ContentDate", "ContentTime"):
        assert first[keyword].value == again[keyword].value
    assert first.ContentSequence == again.ContentSequence


def test_without_header_view_or_heads(tmp_path: Path) -> None:
    """No ViewPosition: frontal coded locally, no header flag; no heads: no rotation."""
    source = _source(tmp_path, None)
    sr = build_sr(
        source,
        _answer("frontal", header_agrees=None, rotation=None, mirrored=None, unusual_score=None),
        **MADE_BY,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    assert _code(_named(sr, "Image View")[0]) == ("frontal", LOCAL_SCHEME)
    assert not _named(sr, "Header view disagrees")
    assert not _named(sr, "Rotation Angle") and not _named(sr, "Stored mirrored")
    assert "ViewPosition" not in source  # the caller's dataset is left alone
    assert "PatientName" not in source or source.PatientName is not None


def test_projection_as_a_coded_finding(tmp_path: Path) -> None:
    """A model that states AP on a film whose header says PA: the Image View is the
    model's AP, with p_ap and the projection disagreement beside it."""
    sr = build_sr(
        _source(tmp_path, "PA"),
        _answer("frontal", projection="AP", p_ap=0.93, projection_agrees=False),
        **MADE_BY,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    assert _code(_named(sr, "Image View")[0]) == ("399348003", "SCT")
    p_ap = _named(sr, "Probability of AP projection")[0].MeasuredValueSequence[0]
    assert float(p_ap.NumericValue) == pytest.approx(0.93)
    assert p_ap.MeasurementUnitsCodeSequence[0].CodeValue == "{ratio}"
    assert _code(_named(sr, "Header projection disagrees")[0]) == ("373066001", "SCT")


def test_abstained_projection_keeps_p_ap_without_a_disagreement(tmp_path: Path) -> None:
    sr = build_sr(
        _source(tmp_path, None),
        _answer("frontal", header_agrees=None, projection=None, p_ap=0.6),
        **MADE_BY,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    assert _code(_named(sr, "Image View")[0]) == ("frontal", LOCAL_SCHEME)
    assert _named(sr, "Probability of AP projection")
    assert not _named(sr, "Header projection disagrees")


@pytest.mark.parametrize(
    ("label", "view", "overrides"),
    [
        ("frontal", "PA", {}),
        ("frontal", "AP", {"projection": "PA", "p_ap": 0.02, "projection_agrees": False}),
        ("lateral", "LL", {"rotation": 180}),
        (
            "frontal",
            None,
            {
                "needs_review": True,
                "review_reasons": ("low_confidence",),
                "header_agrees": None,
                "confidence": 0.61,
            },
        ),
    ],
    ids=["frontal", "projection", "lateral", "needs-review"],
)
def test_dciodvfy_finds_no_errors(
    tmp_path: Path, label: str, view: str | None, overrides: dict[str, object]
) -> None:
    sr = build_sr(
        _source(tmp_path, view),
        _answer(label, **overrides),
        **MADE_BY,
        sop_instance_uid=generate_uid(),
        instance_number=3,
    )
    out = tmp_path / "sr.dcm"
    sr.save_as(out, enforce_file_format=True)
    errors, warnings, report = dciodvfy(out)
    assert "ComprehensiveSR" in report, report
    assert errors == [], report
    # The warnings documented in docs/dicom.md, and no others.
    assert all(any(k in w for k in KNOWN_WARNINGS) for w in warnings), warnings
