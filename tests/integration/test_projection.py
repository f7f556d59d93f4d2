"""PA or AP end to end: a database answered by v3 (no PA/AP head: the columns empty)
adopts compact-invariant-64-v4, the shipped default, and ``cxr-orient reclassify`` adds
its answers through a real worker: each frontal's projection, p_ap and the projection's
agreement with the header in SQL (SQLite and PostgreSQL), listed by ``cxr-orient
results``; a film the model is not sure of keeps its p_ap with the projection left
empty; v3's answers stay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cxr_orient.settings import SHIPPED_MODEL
from tests.utils.corpus import film_dicom, rg1_dicom
from tests.utils.dicom_factory import COVID_CXR
from tests.utils.worker import run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "cxr_orient" / "shipped"
SAMPLES = Path(__file__).resolve().parents[2] / "cxr_orient" / "samples"
#: covid-cxr frontals (by index of the sorted folder) v4 is sure of: an AP Supine film
#: (p_ap 0.88) and a PA film (p_ap 0.08).
AP_FILM, PA_FILM = 29, 16


@pytest.mark.skipif(not COVID_CXR.is_dir(), reason="needs the real films in ../shared/data")
def test_v4_adopted_and_reclassify_records_the_projection(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    import shutil

    from sqlalchemy import create_engine, text

    from db.migrate import upgrade

    root = tmp_path / "archive"
    film_dicom(
        root / "ap_supine.dcm",
        view="frontal",
        index=AP_FILM,
        view_position="AP SUPINE",
        study_uid="1.2.826.0.1.3680043.10.9.1",
    )
    film_dicom(
        root / "pa_claims_ap.dcm",
        view="frontal",
        index=PA_FILM,
        view_position="AP",
        study_uid="1.2.826.0.1.3680043.10.9.2",
    )
    rg1_dicom(root / "rg1.dcm", view_position="PA", study_uid="1.2.826.0.1.3680043.10.9.3")
    shutil.copy(SAMPLES / "study1" / "lateral.dcm", root / "lateral.dcm")
    env = worker_env(
        database_url=database_url,
        broker_url=redis_url,
        ingest_root=root,
        data_dir=tmp_path / "data",
        batch_max_wait_ms=100,
        model_path=SHIPPED / "compact-invariant-64-v3.keras",
    )
    upgrade(database_url)
    with running_worker(env, tmp_path / "worker.log") as worker:
        enqueued = run_cli("enqueue", str(root), "--wait", "--timeout", "240", env=env)
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()
        before = run_cli("results", "--format", "json", env=env)
        for args in (
            ("register", str(SHIPPED_MODEL), "--reason", "release 0.5"),
            ("promote", SHIPPED_MODEL.stem, "--reason", "release 0.5"),
        ):
            done = run_cli(*args, env=env)
            assert done.returncode == 0, done.stderr
        reclassified = run_cli("reclassify", env=env)
        assert "sent 4, skipped 0" in reclassified.stdout, reclassified.stdout + reclassified.stderr
        _wait_for_answers(database_url, 8)
    v3_rows = json.loads(before.stdout)
    assert {r["model_version"] for r in v3_rows} == {"compact-invariant-64-v3"}
    assert all(
        r[k] is None
        for r in v3_rows
        for k in ("projection", "p_ap", "projection_agrees", "p_not_chest")
    )
    listed = run_cli("results", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {Path(r["file_path"]).name: r for r in json.loads(listed.stdout)}
    got = {name: (r["label"], r["projection"], r["projection_agrees"]) for name, r in rows.items()}
    assert got == {
        "ap_supine.dcm": ("frontal", "AP", True),
        "pa_claims_ap.dcm": ("frontal", "PA", False),
        "rg1.dcm": ("frontal", None, None),  # not sure: left empty, not guessed
        "lateral.dcm": ("lateral", None, None),
    }, rows
    assert rows["ap_supine.dcm"]["p_ap"] > 0.81 and rows["pa_claims_ap.dcm"]["p_ap"] < 0.19
    assert 0.19 < rows["rg1.dcm"]["p_ap"] < 0.81
    assert rows["lateral.dcm"]["p_ap"] is None  # a lateral has no projection
    assert all(r["p_not_chest"] is not None for r in rows.values())
    assert {r["model_version"] for r in rows.values()} == {SHIPPED_MODEL.stem}
    exported = run_cli("results", "--format", "csv", env=env)
    assert "projection,p_ap," in exported.stdout.splitlines()[0]
    assert ",projection_agrees," in exported.stdout.splitlines()[0]

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                text(
                    "SELECT i.header_view_position, p.projection, p.projection_agrees "
                    "FROM predictions p JOIN instances i ON i.id = p.instance_id "
                    "WHERE p.projection IS NOT NULL ORDER BY p.projection"
                )
            ).all()
            per_version: dict[str, int] = dict(
                conn.execute(
                    text(
                        "SELECT m.name, count(*) FROM predictions p JOIN model_versions m "
                        "ON m.id = p.model_version_id GROUP BY m.name"
                    )
                ).all()
            )
    finally:
        engine.dispose()
    assert [(v, p, bool(a)) for v, p, a in stored] == [
        ("AP SUPINE", "AP", True),
        ("AP", "PA", False),
    ]
    assert per_version == {"compact-invariant-64-v3": 4, SHIPPED_MODEL.stem: 4}


def _wait_for_answers(database_url: str, n: int, timeout: float = 240) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() >= n:
                    return
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise TimeoutError(f"fewer than {n} answers after {timeout}s")
