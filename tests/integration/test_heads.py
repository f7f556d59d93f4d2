"""The shipped model's extra answers through a real worker: which way up a film is
stored, and a CT slice whose header claims CR flagged (or refused) as unusual."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.utils.corpus import rg1_pixels
from tests.utils.dicom_factory import make_dicom
from tests.utils.worker import run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration


def _ct_as_cr(path: Path) -> Path:
    """pydicom's CT_small slice re-wrapped as a CR chest film, as a bad modality or a
    mislabelled secondary capture sends it: only the pixels can tell."""
    import pydicom
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(str(get_testdata_file("CT_small.dcm"))).pixel_array
    shifted = (pixels.astype(np.int32) - int(pixels.min())).astype(np.uint16)
    return make_dicom(
        path,
        shifted,
        bits_stored=16,
        view_position="PA",
        modality="CR",
        study_uid="1.2.826.0.1.3680043.10.7.1",
        patient_id="P9",
    )


def _archive(root: Path) -> dict[str, tuple[int, bool]]:
    """RG1 stored upright, turned 90 degrees and mirrored, plus the CT; file -> pose."""
    poses = {"upright.dcm": (0, False), "turned.dcm": (90, False), "mirrored.dcm": (0, True)}
    root.mkdir(parents=True)
    pixels = rg1_pixels()
    for name, (rotation, mirrored) in poses.items():
        stored = np.rot90(pixels[:, ::-1] if mirrored else pixels, rotation // 90)
        make_dicom(
            root / name,
            np.ascontiguousarray(stored),
            photometric="MONOCHROME1",
            bits_stored=15,
            modality="CR",
            study_uid="1.2.826.0.1.3680043.10.7.2",
        )
    _ct_as_cr(root / "ct.dcm")
    return poses


@pytest.mark.parametrize("action", ["review", "refuse"])
def test_worker_records_orientation_and_flags_a_ct_slice(
    action: str, redis_url: str, tmp_path: Path
) -> None:
    from tests.utils.env import migrate_from_template

    root = tmp_path / "archive"
    poses = _archive(root)
    database_url = f"sqlite:///{tmp_path / 'cxr.db'}"
    env = worker_env(
        database_url=database_url,
        broker_url=redis_url,
        ingest_root=root,
        data_dir=tmp_path / "data",
        unusual_image_action=action,
    )
    migrate_from_template(database_url)
    with running_worker(env, tmp_path / "worker.log") as worker:
        enqueued = run_cli("enqueue", str(root), "--wait", "--timeout", "240", env=env)
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()
    listed = run_cli("results", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {Path(r["file_path"]).name: r for r in json.loads(listed.stdout)}
    for name, (rotation, mirrored) in poses.items():
        row = rows[name]
        assert (row["status"], row["label"]) == ("done", "frontal"), row
        assert (row["rotation"], row["mirrored"]) == (rotation, mirrored), row
        assert row["unusual_score"] is not None
        assert "unusual_image" not in (row["review_reason"] or ""), row
    ct = rows["ct.dcm"]
    if action == "review":
        assert ct["status"] == "done" and ct["needs_review"] is True, ct
        assert "unusual_image" in ct["review_reason"], ct
    else:
        assert ct["status"] == "failed" and ct["label"] is None, ct
        assert str(ct["error"]).startswith("unusual_image:"), ct
