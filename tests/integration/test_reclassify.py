"""After a promotion, end to end: enqueue -> Redis -> a real celery worker -> SQL, promote
compact-v1, `cxr-orient reclassify`, the same worker answers again with compact-v1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from cxr_orient.settings import SHIPPED_MODEL
from tests.utils.corpus import build_corpus, rg1_dicom
from tests.utils.dicom_factory import COVID_CXR
from tests.utils.worker import run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

SHIPPED_NAME = SHIPPED_MODEL.stem
OTHER = SHIPPED_MODEL.parent / "compact-v1.keras"


def _archive(root: Path) -> int:
    """Real films when ../shared/data has them (frontal and lateral), else RG1 copies."""
    if COVID_CXR.is_dir():
        return len(build_corpus(root, frontal=3, lateral=3))
    for k in range(4):
        rg1_dicom(root / f"rg1-{k}.dcm", view_position="PA" if k % 2 else None)
    return 4


def _answers(url: str) -> dict[int, list[str]]:
    from db.models import ModelVersion, Prediction
    from db.session import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Prediction.instance_id, ModelVersion.name)
                .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                .order_by(Prediction.id)
            ).all()
    finally:
        engine.dispose()
    out: dict[int, list[str]] = {}
    for instance_id, name in rows:
        out.setdefault(instance_id, []).append(name)
    return out


def _wait_for(url: str, n: int, *, per_instance: int, timeout: float = 240) -> dict[int, list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = _answers(url)
        if len(answers) == n and all(len(v) >= per_instance for v in answers.values()):
            return answers
        time.sleep(0.5)
    raise TimeoutError(f"answers after {timeout}s: {_answers(url)}")


def test_reclassify_after_a_promotion_with_a_real_worker(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    from tests.utils.env import migrate_from_template

    corpus = tmp_path / "archive"
    n = _archive(corpus)
    env = worker_env(
        database_url=database_url,
        broker_url=redis_url,
        ingest_root=corpus,
        data_dir=tmp_path / "data",
        batch_size=8,
        batch_max_wait_ms=100,
    )
    migrate_from_template(database_url)

    with running_worker(env, tmp_path / "worker.log") as worker:
        enqueued = run_cli("enqueue", str(corpus), "--wait", "--timeout", "240", env=env)
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()
        first = _wait_for(database_url, n, per_instance=1)
        assert {tuple(v) for v in first.values()} == {(SHIPPED_NAME,)}

        for args in (
            ("register", str(OTHER), "--reason", "test"),
            ("promote", "compact-v1", "--reason", "test"),
        ):
            done = run_cli(*args, env=env)
            assert done.returncode == 0, done.stderr
        reclassified = run_cli("reclassify", "--chunk-size", "2", env=env)
        assert reclassified.returncode == 0, reclassified.stderr
        assert f"sent {n}, skipped 0" in reclassified.stdout, reclassified.stdout
        second = _wait_for(database_url, n, per_instance=2)
        status = run_cli("status", env=env)
        again = run_cli("reclassify", env=env)
        listed = run_cli("results", "--format", "json", env=env)
        time.sleep(1)  # nothing more may arrive
        final = _answers(database_url)

    # Each instance: exactly two answers, from two versions, the old one first.
    assert second == final
    assert {tuple(v) for v in final.values()} == {(SHIPPED_NAME, "compact-v1")}, final
    assert f"sent 0, skipped {n}" in again.stdout, again.stdout
    assert f"done {n}" in status.stdout and "queued 0" in status.stdout, status.stdout
    rows = json.loads(listed.stdout)
    assert len(rows) == n
    assert {(r["status"], r["model_version"]) for r in rows} == {("done", "compact-v1")}
    assert "compact-v1" in worker.log()
