"""Rows for tests, made through db.crud like production code makes them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from cxr_orient.answer import Answer, reasons_of
from db import crud
from db.models import ModelVersion


def register_version(session: Session, name: str = "m1", **overrides: Any) -> ModelVersion:
    """A registered (candidate) model version with plausible defaults."""
    values: dict[str, Any] = {
        "architecture": "compact",
        "file_path": f"/var/lib/cxr-orient/models/{name}.keras",
        "sha256": "a" * 64,
        "input_size": 256,
        "labels": ["frontal", "lateral"],
        "temperature": 1.0,
        "review_threshold": 0.9,
        "metrics": {},
        "training": {},
        "actor": "test",
        "reason": f"register {name}",
        **overrides,
    }
    return crud.register_model_version(session, name=name, **values)


def prediction_record(
    instance_id: int,
    *,
    label: str = "frontal",
    confidence: float = 0.9,
    p_frontal: float | None = None,
    p_lateral: float | None = None,
    header_agrees: bool | None = None,
    needs_review: bool = False,
    review_reason: str | None = None,
    rotation: int | None = None,
    mirrored: bool | None = None,
    unusual_score: float | None = None,
    decode_ms: float | None = None,
    inference_ms: float | None = None,
    batch_size: int | None = None,
    file_sha256: str | None = None,
    projection: str | None = None,
    p_ap: float | None = None,
    projection_agrees: bool | None = None,
    p_not_chest: float | None = None,
) -> crud.PredictionRecord:
    """An answer to record for ``instance_id``, as the worker hands it to
    ``crud.record_predictions`` (p_frontal and p_lateral from the label and confidence
    unless given)."""
    p_label = confidence
    p_other = 1 - confidence
    if p_frontal is None:
        p_frontal = p_label if label == "frontal" else p_other
    if p_lateral is None:
        p_lateral = 1 - p_frontal
    answer = Answer(
        label=str(label),
        confidence=confidence,
        p_frontal=p_frontal,
        p_lateral=p_lateral,
        needs_review=needs_review,
        review_reasons=reasons_of(review_reason),
        rotation=rotation,
        mirrored=mirrored,
        unusual_score=unusual_score,
        header_agrees=header_agrees,
        projection=projection,
        p_ap=p_ap,
        projection_agrees=projection_agrees,
        p_not_chest=p_not_chest,
    )
    return crud.PredictionRecord(
        instance_id=instance_id,
        answer=answer,
        file_sha256=file_sha256,
        decode_ms=decode_ms,
        inference_ms=inference_ms,
        batch_size=batch_size,
    )
