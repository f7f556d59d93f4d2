"""Training: local ImageNet weights for transfer learning and the beat-driven retrain."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from cxr_orient.settings.base import SettingsGroup

__all__ = ["TrainingSettings"]


class TrainingSettings(SettingsGroup):
    """What training reads and when the nightly retrain runs."""

    imagenet_weights_dir: Path | None = Field(
        default=None,
        description="CXR_IMAGENET_WEIGHTS_DIR: local folder of keras.applications ImageNet "
        "weight files for transfer learning. Nothing is downloaded. Default unset.",
    )
    retrain_schedule: str | None = Field(
        default=None,
        description="CXR_RETRAIN_SCHEDULE: crontab expression (5 fields, UTC) for the nightly "
        "retrain run by celery beat, e.g. '15 2 * * *'; an alternative to the cron line in "
        "docs/operations.md. Default unset (no beat-driven retrain).",
    )
    retrain_min_new_labels: int = Field(
        default=50,
        ge=1,
        description="CXR_RETRAIN_MIN_NEW_LABELS: a scheduled retrain with fewer new labels "
        "exits without training. Default 50.",
    )

    @field_validator("retrain_schedule")
    @classmethod
    def _five_field_crontab(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("CXR_RETRAIN_SCHEDULE must be a 5-field crontab expression")
        return value
