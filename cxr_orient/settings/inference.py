"""The model in service: which checkpoint starts an empty database, where the forward
pass runs and in what precision, and what an answer needs to stand without review."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cxr_orient.settings.base import SettingsGroup

__all__ = ["SHIPPED_MODEL", "InferenceSettings"]

#: Checkpoint shipped with the source tree, used when nothing else is active.
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "shipped" / "compact-invariant-64-v4.keras"


class InferenceSettings(SettingsGroup):
    """The model's checkpoint, placement, precision and review rules."""

    model_path: Path | None = Field(
        default=None,
        description="CXR_MODEL_PATH: .keras checkpoint registered and activated when the "
        "database has no active model. Default: the shipped checkpoint (compact-invariant-64-v4).",
    )
    inference: Literal["local", "served"] = Field(
        default="local",
        description="CXR_INFERENCE: where a worker's pool processes run the model. "
        "'local': each loads it and predicts its own batches (the prefork layout). "
        "'served': the worker starts one inference process per card (or one on a CPU "
        "host) that loads the model and predicts for every pool process, which only "
        "read, decode and record (worker/serving.py): the pool processes start without "
        "loading the model, and decoding overlaps inference from the first batch. "
        "Default 'local'.",
    )
    mixed_precision: Literal["off", "bfloat16"] = Field(
        default="off",
        description="CXR_MIXED_PRECISION: 'bfloat16' runs the model's layers in bfloat16 "
        "(weights and the softmax stay float32) on GPU workers: 31,000-33,600 images/s "
        "against 28,900-30,100 on an H100 at batch 2048, same labels, probabilities within "
        "1e-4. Slower on CPUs without bfloat16 units. Default 'off'.",
    )
    review_threshold: float | None = Field(
        default=None,
        ge=0.5,
        le=1.0,
        description="CXR_REVIEW_THRESHOLD: confidence under which an answer is flagged for "
        "review. Default: the threshold recorded with the model version.",
    )
    projection_threshold: float | None = Field(
        default=None,
        ge=0.5,
        le=1.0,
        description="CXR_PROJECTION_THRESHOLD: confidence max(p_ap, 1 - p_ap) a frontal's "
        "PA/AP answer must reach to be stated (models with a PA/AP head); under it the "
        "projection is left empty. Raise it to state fewer, surer projections (1.0: "
        "none, p_ap still recorded). Default: the model card's projection_threshold "
        "(0.81 for compact-invariant-64-v4; see docs/model-card.md).",
    )
    unusual_image_action: Literal["review", "refuse"] = Field(
        default="review",
        description="CXR_UNUSUAL_IMAGE_ACTION: what happens to an image the model finds "
        "unlike any chest radiograph it was trained on (score above the model's "
        "unusual_threshold; models with the unusual-image head only): 'review' answers it "
        "and flags it needs_review with reason unusual_image; 'refuse' gives no answer and "
        "fails the instance with error code unusual_image (its score in the message). "
        "Default 'review'.",
    )

    @property
    def bootstrap_model_path(self) -> Path:
        return (self.model_path or SHIPPED_MODEL).expanduser().resolve()
