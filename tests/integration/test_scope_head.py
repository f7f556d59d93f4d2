"""compact-invariant-64-v4 served by a real worker: an ultrasound frame whose header
claims a CR chest film, which v3's unusual-image score let through (answered, only
for low confidence), is refused as unusual by v4's chest-or-not head; a real chest CR
(RG1) is still answered, with v3's label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.utils.corpus import rg1_pixels
from tests.utils.dicom_factory import make_dicom
from tests.utils.worker import run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "cxr_orient" / "shipped"


def _ultrasound_as_cr(path: Path) -> Path:
    """pydicom's ``color-pl.dcm`` (an ultrasound, RGB), its luminance (ITU-R BT.601)
    re-wrapped as a 12-bit CR chest PA."""
    import pydicom
    from pydicom.data import get_testdata_file

    rgb = pydicom.dcmread(str(get_testdata_file("color-pl.dcm"))).pixel_array
    luminance = np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    grey = np.round(
        (luminance - luminance.min()) * 4095 / max(1e-9, float(luminance.max() - luminance.min()))
    )
    return make_dicom(
        path,
        grey.astype(np.uint16),
        bits_stored=12,
        view_position="PA",
        modality="CR",
        study_uid="1.2.826.0.1.3680043.10.8.1",
        patient_id="P8",
    )


@pytest.mark.parametrize("model", ["compact-invariant-64-v3", "compact-invariant-64-v4"])
def test_worker_refuses_an_ultrasound_claiming_cr_only_with_the_chest_head(
    model: str, redis_url: str, tmp_path: Path
) -> None:
    from tests.utils.env import migrate_from_template

    root = tmp_path / "archive"
    root.mkdir()
    _ultrasound_as_cr(root / "us.dcm")
    make_dicom(
        root / "rg1.dcm",
        rg1_pixels(),
        photometric="MONOCHROME1",
        bits_stored=15,
        modality="CR",
        study_uid="1.2.826.0.1.3680043.10.8.2",
    )
    database_url = f"sqlite:///{tmp_path / 'cxr.db'}"
    env = worker_env(
        database_url=database_url,
        broker_url=redis_url,
        ingest_root=root,
        data_dir=tmp_path / "data",
        unusual_image_action="refuse",
        model_path=SHIPPED / f"{model}.keras",
    )
    migrate_from_template(database_url)
    with running_worker(env, tmp_path / "worker.log") as worker:
        enqueued = run_cli("enqueue", str(root), "--wait", "--timeout", "240", env=env)
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()
    listed = run_cli("results", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {Path(r["file_path"]).name: r for r in json.loads(listed.stdout)}
    assert rows["rg1.dcm"]["model_version"] == model, rows["rg1.dcm"]
    assert (rows["rg1.dcm"]["status"], rows["rg1.dcm"]["label"]) == ("done", "frontal")
    us = rows["us.dcm"]
    if model.endswith("v3"):  # what v4 fixes: answered, for review only as low confidence
        assert us["status"] == "done" and us["review_reason"] == "low_confidence", us
    else:
        assert us["status"] == "failed" and us["label"] is None, us
        assert str(us["error"]).startswith("unusual_image:"), us
