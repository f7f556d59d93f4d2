"""No UIDs in the logs: third-party loggers that carry them are capped at WARNING by the
one rule every entry point applies (cxr_orient.logs, docs/security.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxr_orient.answer import Answer
from cxr_orient.dicomnet.sr import build_sr
from cxr_orient.logs import PHI_LOGGERS, cap_third_party_loggers
from tests.utils.dicom_factory import make_dicom


@pytest.fixture
def info_root() -> Iterator[None]:
    """The root logger at INFO, as a worker or the CLI runs by default; levels restored."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *PHI_LOGGERS)}
    root.setLevel(logging.INFO)
    for name in PHI_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _build(tmp_path: Path) -> tuple[str, str]:
    tmp_path.mkdir()
    path = make_dicom(
        tmp_path / "src.dcm",
        np.full((64, 64), 500, np.uint16),
        view_position="PA",
        patient_id="PAT-7",
    )
    source = pydicom.dcmread(path, stop_before_pixels=True)
    answer = Answer(
        label="frontal",
        confidence=0.97,
        p_frontal=0.97,
        p_lateral=0.03,
        needs_review=False,
        header_agrees=True,
        rotation=0,
        mirrored=False,
        unusual_score=1.0,
    )
    sr_uid = generate_uid()
    build_sr(
        source,
        answer,
        model_name="m",
        model_architecture="a",
        answered_at=datetime(2026, 12, 3, 8, 15, 30, tzinfo=UTC),
        sop_instance_uid=sr_uid,
        instance_number=1,
    )
    return str(source.SOPInstanceUID), str(source.StudyInstanceUID)


def test_building_an_sr_at_info_logs_no_uid(
    tmp_path: Path, info_root: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    uncapped = _build(tmp_path / "a")
    # What the review found: highdicom names the source instance at INFO.
    assert any(uid in caplog.text for uid in uncapped), "highdicom no longer logs UIDs?"
    caplog.clear()

    cap_third_party_loggers()
    capped = _build(tmp_path / "b")
    assert not any(uid in caplog.text for uid in capped), caplog.text


def test_debugging_lets_them_through(info_root: None) -> None:
    cap_third_party_loggers(debugging=True)
    assert logging.getLogger("highdicom").getEffectiveLevel() == logging.DEBUG
    cap_third_party_loggers()
    assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in PHI_LOGGERS)
