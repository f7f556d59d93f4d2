"""``cxr-orient pull`` from a real Orthanc's DICOMweb (QIDO-RS, WADO-RS): recorded,
idempotent, resumable after a kill, only the modalities asked for."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from tests.utils.dicom_factory import make_dicom, synthetic_pixels
from tests.utils.dicomnode import running_listener, running_orthanc
from tests.utils.worker import REPO, run_cli, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path: Path, configure: Callable[..., None]) -> dict[str, str]:
    from tests.utils.env import migrate_from_template

    values = {
        "database_url": f"sqlite:///{tmp_path / 'cxr.db'}",
        "ingest_root": tmp_path / "in",
        "data_dir": tmp_path / "data",
    }
    for folder in ("in", "data"):
        (tmp_path / folder).mkdir()
    configure(**values)
    migrate_from_template(str(values["database_url"]))
    return worker_env(**values)


def rows() -> list[dict[str, object]]:
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        return [dataclasses.asdict(row) for row in crud.results(session)]


def instances(
    folder: Path,
    count: int,
    *,
    study: str,
    modality: str = "DX",
    syntax: str = ExplicitVRLittleEndian,
    size: int = 64,
    study_date: str | None = None,
) -> list[Path]:
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    out = [
        make_dicom(
            folder / f"{k:03d}.dcm",
            synthetic_pixels((size, size), seed=k),
            study_uid=study,
            modality=modality,
            transfer_syntax=syntax,
        )
        for k in range(count)
    ]
    if study_date:
        for path in out:
            ds = pydicom.dcmread(path)
            ds.StudyDate = study_date
            ds.save_as(path)
    return out


def test_pull_records_what_matches_twice_adds_nothing(node: dict[str, str], tmp_path: Path) -> None:
    wanted = [
        *instances(
            tmp_path / "src" / "a",
            3,
            study="1.2.826.0.1.7.1",
            syntax=RLELossless,
            study_date="20261115",
        ),
        *instances(
            tmp_path / "src" / "b",
            3,
            study="1.2.826.0.1.7.2",
            modality="CR",
            syntax=JPEG2000Lossless,
            study_date="20261120",
        ),
    ]
    other = instances(tmp_path / "src" / "mr", 2, study="1.2.826.0.1.7.3", modality="MR")
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        for path in [*wanted, *other]:
            orthanc.upload(path)
        dated = run_cli(
            "pull",
            "--dicomweb",
            orthanc.dicomweb,
            "--since",
            "2026-11-18",
            "--until",
            "2026-11-30",
            env=node,
        )
        assert dated.returncode == 0, dated.stdout + dated.stderr
        first = run_cli("pull", "--dicomweb", orthanc.dicomweb, env=node)
        assert first.returncode == 0, first.stdout + first.stderr
        found = rows()
        again = run_cli("pull", "--dicomweb", orthanc.dicomweb, env=node)
        one = run_cli(
            "pull",
            "--dicomweb",
            orthanc.dicomweb,
            "--study",
            "1.2.826.0.1.7.3",
            "--modality",
            "MR",
            env=node,
        )
    assert "3 instances found: 0 recorded before, 3 fetched, 0 failed; 3 queued" in (
        dated.stdout
    ), dated.stdout
    assert "6 instances found: 3 recorded before, 3 fetched, 0 failed; 3 queued" in (
        first.stdout
    ), first.stdout
    assert len(found) == 6 and {r["status"] for r in found} == {"queued"}
    assert {r["study_instance_uid"] for r in found} == {"1.2.826.0.1.7.1", "1.2.826.0.1.7.2"}
    assert again.returncode == 0, again.stderr
    assert "6 instances found: 6 recorded before, 0 fetched" in again.stdout, again.stdout
    assert one.returncode == 0 and "2 instances found: 0 recorded before, 2 fetched" in one.stdout
    assert len(rows()) == 8
    import pydicom

    syntaxes = {
        str(pydicom.dcmread(str(r["file_path"])).file_meta.TransferSyntaxUID) for r in found
    }
    assert syntaxes == {RLELossless, JPEG2000Lossless}, "fetched as stored, not transcoded"


def test_an_interrupted_pull_run_again_fetches_the_rest_once(
    node: dict[str, str], tmp_path: Path
) -> None:
    sources = instances(tmp_path / "src" / "big", 60, study="1.2.826.0.1.6.1", size=512)
    spool = tmp_path / "in" / "spool"
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        for path in sources:
            orthanc.upload(path)
        puller = subprocess.Popen(
            [sys.executable, "-m", "cli", "pull", "--dicomweb", orthanc.dicomweb],
            env=node,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while len(list(spool.glob("*/*.dcm"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(puller.pid, signal.SIGKILL)
        puller.wait()
        interrupted = len(list(spool.glob("*/*.dcm")))
        assert 5 <= interrupted < 60, interrupted
        before = len(rows())
        resumed = run_cli("pull", "--dicomweb", orthanc.dicomweb, env=node)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"60 instances found: {before} recorded before, {60 - before} fetched" in (
        resumed.stdout
    ), resumed.stdout
    found = rows()
    assert len(found) == 60
    assert len({r["sop_instance_uid"] for r in found}) == 60
    assert len(list(spool.glob("*/*.dcm"))) == 60, "a refetched instance lands on its file"


def test_pull_over_dimse_moves_to_the_listener_once(node: dict[str, str], tmp_path: Path) -> None:
    """C-FIND at Orthanc, C-MOVE of each unrecorded instance to CXR_ORIENT, which is the
    running listener (Orthanc knows it, and lets it query, as a DicomModalities entry)."""
    wanted = instances(tmp_path / "src" / "a", 4, study="1.2.826.0.1.4.1", syntax=RLELossless)
    other = instances(tmp_path / "src" / "mr", 1, study="1.2.826.0.1.4.2", modality="MR")
    with (
        running_listener(node, tmp_path / "listen.log") as listener,
        running_orthanc(
            tmp_path / "orthanc", modalities={"cxr": ["CXR_ORIENT", "127.0.0.1", listener.port]}
        ) as orthanc,
    ):
        for path in [*wanted, *other]:
            orthanc.upload(path)
        peer = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        first = run_cli("pull", "--dimse", peer, env=node)
        again = run_cli("pull", "--dimse", peer, env=node)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (
        "4 instances found: 0 recorded before, 4 moved, 0 failed; 4 of the moved "
        "recorded by the listener" in first.stdout
    ), first.stdout
    assert "4 instances found: 4 recorded before, 0 moved" in again.stdout, again.stdout
    found = rows()
    assert len(found) == 4 and {r["study_instance_uid"] for r in found} == {"1.2.826.0.1.4.1"}


def test_since_includes_studies_without_a_study_date(node: dict[str, str], tmp_path: Path) -> None:
    """The bundled samples have no StudyDate: a date window cannot rule them out, so
    ``--since`` pulls them (DICOMweb and C-FIND alike); ``--skip-undated`` does not."""
    undated = instances(tmp_path / "src" / "u", 2, study="1.2.826.0.1.5.1")
    old = instances(tmp_path / "src" / "o", 1, study="1.2.826.0.1.5.2", study_date="20200101")
    new = instances(tmp_path / "src" / "n", 1, study="1.2.826.0.1.5.3", study_date="20261120")
    with running_orthanc(
        tmp_path / "orthanc", modalities={"cxr": ["CXR_ORIENT", "127.0.0.1", 9]}
    ) as orthanc:
        for path in [*undated, *old, *new]:
            orthanc.upload(path)
        skipping = run_cli(
            "pull",
            "--dicomweb",
            orthanc.dicomweb,
            "--since",
            "2026-11-01",
            "--skip-undated",
            env=node,
        )
        window = run_cli("pull", "--dicomweb", orthanc.dicomweb, "--since", "2026-11-01", env=node)
        dimse = run_cli(
            "pull",
            "--dimse",
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "--since",
            "2026-11-01",
            env=node,
        )
    assert skipping.returncode == 0, skipping.stdout + skipping.stderr
    assert "1 instances found: 0 recorded before, 1 fetched" in skipping.stdout, skipping.stdout
    assert window.returncode == 0, window.stdout + window.stderr
    assert "3 instances found: 1 recorded before, 2 fetched" in window.stdout, window.stdout
    assert {r["study_instance_uid"] for r in rows()} == {"1.2.826.0.1.5.1", "1.2.826.0.1.5.3"}
    assert dimse.returncode == 0, dimse.stdout + dimse.stderr
    assert "3 instances found: 3 recorded before, 0 moved" in dimse.stdout, dimse.stdout
