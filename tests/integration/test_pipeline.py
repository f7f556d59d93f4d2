"""The product end to end: enqueue -> Redis -> a real celery worker -> SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.utils.corpus import CorpusFile, add_bad_files, build_corpus
from tests.utils.dicom_factory import COVID_CXR
from tests.utils.worker import run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not COVID_CXR.is_dir(), reason="needs the real films in ../shared/data")
def test_worker_classifies_mixed_corpus_once_each(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    from tests.utils.env import migrate_from_template

    corpus = tmp_path / "archive"
    truth = build_corpus(corpus, frontal=8, lateral=6)
    assert any(f.header_lies for f in truth.values()), "the corpus must hold lying headers"
    assert any(f.header_view is None for f in truth.values())
    bad = add_bad_files(corpus)
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
        again = run_cli("enqueue", str(corpus), "--wait", "--timeout", "60", env=env)
        assert again.returncode == 0, again.stderr
        assert "0 queued" in again.stdout, again.stdout
        listed = run_cli("results", "--format", "json", env=env)
        csv_listing = run_cli("results", "--format", "csv", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert csv_listing.stdout.count("\n") == len(rows) + 1

    assert len(rows) == len(truth) + len(bad), "one row per file, none lost or doubled"
    uids = [r["sop_instance_uid"] for r in rows if r["sop_instance_uid"]]
    assert len(uids) == len(set(uids))
    assert {r["file_path"] for r in rows} == set(truth) | set(bad)
    by_status = {r["status"] for r in rows}
    assert by_status <= {"done", "failed"}

    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == len(truth), [r for r in rows if r["status"] != "done"]
    for row in done:
        assert row["label"] in {"frontal", "lateral"}
        assert 0.5 <= row["confidence"] <= 1.0
        assert row["model_version"]
    # Wrong headers are caught: header_agrees is False exactly where the header lied
    # and the model was right.
    _assert_header_agreement(done, truth)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == len(bad)
    codes = {r["file_path"]: str(r["error"]).split(":")[0] for r in failed}
    assert codes == bad

    results_by_label = _accuracy(done, truth)
    assert results_by_label["lateral"] >= 0.8 and results_by_label["frontal"] >= 0.8, (
        results_by_label
    )


def _assert_header_agreement(done: list[dict[str, object]], truth: dict[str, CorpusFile]) -> None:
    """None without a ViewPosition; else whether the header claims the model's answer:
    True for a right header and a right model, False for a lying header and a right model."""
    caught = 0
    for row in done:
        film = truth[str(row["file_path"])]
        assert row["header_view"] == film.header_view, row
        model_right = row["label"] == film.label
        if film.header_view is None:
            assert row["header_agrees"] is None, row
        elif model_right:
            assert row["header_agrees"] is (not film.header_lies), row
            caught += int(film.header_lies)
        else:  # a wrong answer agrees with a lying header only
            assert row["header_agrees"] is film.header_lies, row
    assert caught >= 1, "no lying header was caught"


def _accuracy(done: list[dict[str, object]], truth: dict[str, CorpusFile]) -> dict[str, float]:
    hits: dict[str, list[bool]] = {"frontal": [], "lateral": []}
    for row in done:
        expected = truth[str(row["file_path"])].label
        hits[expected].append(row["label"] == expected)
    return {k: sum(v) / len(v) for k, v in hits.items() if v}
