"""CXR_INFERENCE=served through a real worker: the pool processes decode and record, one
inference process runs the model for all of them, and every answer is the prefork
layout's (tests of the layout run on the CPU; the card's figures are bench/gpu_archive.py's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.utils.corpus import rg1_pixels
from tests.utils.dicom_factory import make_dicom
from tests.utils.worker import REPO, run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration


def _archive(root: Path) -> int:
    """The sample studies, and RG1 stored turned and mirrored (the orientation head's
    answers travel too); returns the number of files."""
    for study in ("study1", "study2", "study3"):
        shutil.copytree(REPO / "cxr_orient" / "samples" / study, root / study)
    pixels = rg1_pixels()
    (root / "rg1").mkdir()
    for name, stored in {"turned.dcm": np.rot90(pixels), "mirrored.dcm": pixels[:, ::-1]}.items():
        make_dicom(
            root / "rg1" / name,
            np.ascontiguousarray(stored),
            photometric="MONOCHROME1",
            bits_stored=15,
            modality="CR",
            study_uid="1.2.826.0.1.3680043.10.7.3",
        )
    return len(list(root.rglob("*.dcm")))


def _classify(
    root: Path, tmp_path: Path, redis_url: str, layout: str
) -> tuple[dict[str, dict[str, object]], str]:
    from tests.utils.env import migrate_from_template

    database_url = f"sqlite:///{tmp_path / f'{layout}.db'}"
    env = worker_env(
        database_url=database_url,
        broker_url=redis_url,
        ingest_root=root,
        data_dir=tmp_path / f"data-{layout}",
        inference=layout,
        batch_size=4,
        batch_max_wait_ms=100,
    )
    migrate_from_template(database_url)
    with running_worker(env, tmp_path / f"worker-{layout}.log", concurrency=2) as worker:
        enqueued = run_cli("enqueue", str(root), "--wait", "--timeout", "240", env=env)
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()
        log = worker.log()
    listed = run_cli("results", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    return {str(Path(r["file_path"]).relative_to(root)): r for r in json.loads(listed.stdout)}, log


def test_served_inference_gives_the_prefork_answers(redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    files = _archive(root)
    local, _ = _classify(root, tmp_path, redis_url, "local")
    served, log = _classify(root, tmp_path, redis_url, "served")
    # One inference process loaded the model; the two pool processes never did.
    assert log.count("listening on") == 1 and log.count("loaded compact") == 1, log[-3000:]
    assert "inference-" in log.split("loaded compact")[0].splitlines()[-1], log[-3000:]
    assert len(served) == len(local) == files
    for name, row in local.items():
        other = served[name]
        assert row["status"] == other["status"] == "done", (row, other)
        for key in ("label", "needs_review", "rotation", "mirrored"):
            assert row[key] == other[key], (name, key, row, other)
        for key in ("p_lateral", "confidence", "unusual_score"):
            difference = abs(float(str(row[key])) - float(str(other[key])))
            assert difference < 1e-5, (name, key, row, other)
