"""Answers to review, made like production makes them: a real DICOM file under the ingest
root, its instance recorded through db.crud, and the model's answer recorded with
crud.record_predictions (what the worker calls)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from db import crud
from db.models import InstanceStatus, ModelVersion, OrientationLabel
from tests.utils.dicom_factory import make_dicom, real_pixels
from tests.utils.factories import prediction_record, register_version

#: What the files say about the patient: a test looks for it where it must not be.
PATIENT_ID = "PHI-PATIENT-4711"
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def active_version(session: Session, name: str = "m1") -> ModelVersion:
    version = register_version(session, name)
    crud.activate_model_version(session, version=version, actor="test", reason="test")
    return version


def answered_instance(
    session: Session,
    *,
    root: Path,
    version: ModelVersion,
    index: int,
    label: str = "frontal",
    confidence: float = 0.6,
    needs_review: bool = True,
    header_view: str | None = "PA",
    header_agrees: bool | None = True,
    review_reason: str | None = "low_confidence",
    study: int | None = None,
    pixels: np.ndarray | None = None,
    projection: str | None = None,
    p_ap: float | None = None,
    projection_agrees: bool | None = None,
    rotation: int | None = None,
    mirrored: bool | None = None,
) -> int:
    """One instance with its answer; returns the instance id. ``study`` groups several
    instances in one study (default: a study each)."""
    sop = f"{UID_ROOT}.{index}"
    study_uid = f"{UID_ROOT}.9{study if study is not None else index}"
    if pixels is None:
        view = "lateral" if header_view == "LL" else "frontal"
        pixels = real_pixels(1, view=view, seed=index, start=index)[0]
    path = make_dicom(
        root / f"review-{index}.dcm",
        pixels,
        view_position=header_view,
        patient_id=PATIENT_ID,
        study_uid=study_uid,
        sop_uid=sop,
    )
    data = path.read_bytes()
    row = crud.get_or_create_study(session, study_instance_uid=study_uid, patient_id=PATIENT_ID)
    instance, _ = crud.add_instance(
        session,
        study=row,
        sop_instance_uid=sop,
        series_instance_uid=None,
        file_path=str(path),
        file_sha256=hashlib.sha256(data).hexdigest(),
        file_size=len(data),
        modality="DX",
        transfer_syntax_uid=None,
        header_view_position=header_view,
        status=InstanceStatus.processing,
    )
    session.flush()
    p_lateral = confidence if label == "lateral" else 1 - confidence
    crud.record_predictions(
        session,
        model_version_id=version.id,
        worker="test",
        records=[
            prediction_record(
                instance_id=instance.id,
                label=OrientationLabel(label),
                confidence=confidence,
                p_frontal=1 - p_lateral,
                p_lateral=p_lateral,
                header_agrees=header_agrees,
                needs_review=needs_review,
                decode_ms=1.0,
                inference_ms=1.0,
                batch_size=1,
                review_reason=review_reason if needs_review else None,
                projection=projection,
                p_ap=p_ap,
                projection_agrees=projection_agrees,
                rotation=rotation,
                mirrored=mirrored,
            )
        ],
    )
    return instance.id
