"""One SOP instance in several versions (same SOPInstanceUID, other bytes), and the rows
ingest records about it: the building blocks of
tests/unit/cxr_orient/dicomnet/test_uid_conflicts.py."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import select

from db.models import Instance, Prediction, Study, UidConflict
from db.session import session_scope
from tests.utils.corpus import rg1_pixels
from tests.utils.dicom_factory import make_dicom

__all__ = [
    "OTHER_STUDY",
    "SOP",
    "STUDY",
    "Sent",
    "conflict_rows",
    "instance_row",
    "prediction_rows",
    "radiograph_version",
    "sha256_of",
    "study_uids",
]

STUDY = "1.2.826.0.1.3680043.10.12.1"
OTHER_STUDY = "1.2.826.0.1.3680043.10.12.2"
SOP = "1.2.826.0.1.3680043.10.12.1.1"


def radiograph_version(
    path: Path,
    *,
    version: int,
    sop_uid: str = SOP,
    study_uid: str = STUDY,
    view_position: str | None = "PA",
) -> Path:
    """RG1 (a real chest PA, CR) as SOP instance ``sop_uid`` of ``study_uid`` at ``path``.
    ``version`` 0 is the stored image; each other version shifts the pixels sideways (a
    corrected re-send, still a chest PA): same UIDs, other bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.array(rg1_pixels())
    if version:
        pixels = np.roll(pixels, 7 * version, axis=1)
    return make_dicom(
        path,
        pixels,
        photometric="MONOCHROME1",
        bits_stored=15,
        view_position=view_position,
        study_uid=study_uid,
        sop_uid=sop_uid,
        patient_id="P1",
        modality="CR",
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Sent(list[int]):
    """A sender for :func:`cxr_orient.ingest.enqueue_paths` that keeps the ids."""

    def __call__(self, ids: Sequence[int]) -> int:
        self.extend(ids)
        return len(ids)


def conflict_rows(instance_id: int | None = None) -> list[UidConflict]:
    """Every uid_conflicts row (of one instance), oldest first, detached."""
    with session_scope() as session:
        query = select(UidConflict).order_by(UidConflict.id)
        if instance_id is not None:
            query = query.where(UidConflict.instance_id == instance_id)
        rows = list(session.scalars(query))
        session.expunge_all()
    return rows


def prediction_rows(instance_id: int) -> list[Prediction]:
    """An instance's predictions, oldest first, detached."""
    with session_scope() as session:
        rows = list(
            session.scalars(
                select(Prediction)
                .where(Prediction.instance_id == instance_id)
                .order_by(Prediction.id)
            )
        )
        session.expunge_all()
    return rows


def instance_row(instance_id: int) -> Instance:
    with session_scope() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        session.expunge(row)
    return row


def study_uids() -> list[str]:
    with session_scope() as session:
        return sorted(session.scalars(select(Study.study_instance_uid)))
