"""What files are read and how arrivals are recorded: the ingest root (a security
boundary), the spool of received files and how long it keeps them, the largest image,
what a known UID with other bytes does, and how long a study is held while it arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cxr_orient.settings.base import SettingsGroup

__all__ = ["IntakeSettings"]


class IntakeSettings(SettingsGroup):
    """The checked read (root, size) and the spool; the recording of arrivals."""

    ingest_root: Path = Field(
        default_factory=Path.cwd,
        description="CXR_INGEST_ROOT: only files under this folder are read. "
        "Default: the working directory.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="CXR_SPOOL_DIR: where instances received over the network (C-STORE, "
        "STOW-RS, DICOMweb pull) are written before they are recorded; must lie under "
        "CXR_INGEST_ROOT. Default: <CXR_INGEST_ROOT>/spool.",
    )
    spool_keep_days: int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="CXR_SPOOL_KEEP_DAYS: days a received file (under the spool) is kept after "
        "its instance finished; 0 deletes it at the next purge once classified. Files of "
        "instances awaiting review, labelled, not finished, or with a result not yet "
        "delivered are kept whatever this says; files outside the spool are never "
        "deleted (docs/security.md). Default 0.",
    )
    spool_min_free_mb: int = Field(
        default=1024,
        ge=0,
        description="CXR_SPOOL_MIN_FREE_MB: network sources refuse an instance (C-STORE "
        "status A700, out of resources) while the file system holding the spool has less "
        "free space than this, in MiB. Default 1024.",
    )
    max_pixels: int = Field(
        default=60_000_000,
        ge=1,
        description="CXR_MAX_PIXELS: images with more pixels (rows x columns) are refused "
        "before decoding. Default 60,000,000.",
    )
    uid_conflict_policy: Literal["keep_first", "replace"] = Field(
        default="keep_first",
        description="CXR_UID_CONFLICT_POLICY: what enqueue does with a file whose "
        "SOPInstanceUID is known but whose bytes differ (a uid_conflicts row either way): "
        "'keep_first' does not queue it; 'replace' makes it the instance's file and "
        "classifies it again, keeping the earlier answers. A file naming another study "
        "is never moved there (kept first). Default 'keep_first'.",
    )
    study_quiet_s: float = Field(
        default=10.0,
        ge=0,
        le=86_400,
        description="CXR_STUDY_QUIET_S: instances received over the network (C-STORE, "
        "STOW-RS, pull) are held ('waiting') until no instance of their study arrived for "
        "this many seconds, then queued together; 0 queues each at once. Folder enqueue "
        "never holds. Default 10.",
    )

    @field_validator("ingest_root", "spool_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @model_validator(mode="after")
    def _spool_under_root(self) -> IntakeSettings:
        if self.spool_dir is not None and not self.spool_dir.is_relative_to(self.ingest_root):
            raise ValueError(
                f"CXR_SPOOL_DIR {self.spool_dir} must lie under CXR_INGEST_ROOT "
                f"{self.ingest_root}: workers read only files under the ingest root"
            )
        return self

    @property
    def effective_spool_dir(self) -> Path:
        return (self.spool_dir or self.ingest_root / "spool").expanduser().resolve()

    @property
    def study_release_interval_s(self) -> float:
        """How often held studies are swept: a quarter of CXR_STUDY_QUIET_S, between 1 and
        5 seconds (a quiet study is released at most that late; each sweep is one UPDATE
        through the status index, and one beat message)."""
        return min(5.0, max(1.0, self.study_quiet_s / 4))
