"""Issue 13's "done when": a real worker, the real `cxr-orient serve` and a real
`celery -A worker flower`, on Redis and SQLite; real films classified, then the worker's
exporter, the service's GET /metrics and Flower's API all show the running worker and
the work it did."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from cxr_orient.settings import SHIPPED_MODEL
from tests.utils.faults import free_port, wait_until
from tests.utils.services import Samples, flower, serving
from tests.utils.services import parse_samples as samples
from tests.utils.worker import REPO, run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

SAMPLES = REPO / "cxr_orient" / "samples"


def _scrape(url: str) -> Samples:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


def _total(got: Samples, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in got.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def test_metrics_and_flower_show_a_running_worker(redis_url: str, tmp_path: Path) -> None:
    from tests.utils.env import migrate_from_template

    archive = tmp_path / "archive"
    for study in ("study1", "study2", "study3"):
        shutil.copytree(SAMPLES / study, archive / study)
    shutil.copy(SAMPLES / "broken" / "truncated.dcm", archive / "truncated.dcm")
    database_url = f"sqlite:///{tmp_path / 'cxr.db'}"
    worker_port = free_port()
    env = worker_env(
        database_url=database_url,
        broker_url=redis_url,
        ingest_root=archive,
        data_dir=tmp_path / "data",
        batch_size=8,
        batch_max_wait_ms=100,
        worker_metrics_port=worker_port,
    )
    migrate_from_template(database_url)
    worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"

    with (
        flower(env, tmp_path / "flower.log") as flower_url,
        running_worker(env, tmp_path / "worker.log", name="metrics") as worker,
        serving(env, tmp_path / "serve.log") as service_url,
    ):
        before = _scrape(worker_metrics)
        assert _total(before, "cxr_orient_worker_pool_processes") == 1
        assert _total(before, "cxr_orient_images_total") == 0

        enqueued = run_cli("enqueue", str(archive), "--wait", "--timeout", "240", env=env)
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()

        # The worker: 6 films answered, the truncated file failed with its reason.
        got = _scrape(worker_metrics)
        assert _total(got, "cxr_orient_images_total", status="done") == 6, got
        assert (
            _total(got, "cxr_orient_images_total", status="done", label="frontal")
            + _total(got, "cxr_orient_images_total", status="done", label="lateral")
        ) == 6
        assert _total(got, "cxr_orient_images_total", status="failed") == 1
        assert _total(got, "cxr_orient_images_total", status="failed", error_code="truncated") == 1
        assert _total(got, "cxr_orient_task_timeouts_total") == 0
        assert _total(got, "cxr_orient_decode_seconds_count") == 7
        assert _total(got, "cxr_orient_decode_seconds_sum") > 0
        assert _total(got, "cxr_orient_batch_size_sum") == 6  # the decoded ones
        assert _total(got, "cxr_orient_inference_seconds_count") >= 1
        assert _total(got, "cxr_orient_worker_pool_processes") == 1

        # The service: the same work, read from SQL, and the broker's empty queue.
        served = _scrape(f"{service_url}/metrics")
        assert _total(served, "cxr_orient_database_up") == 1
        assert _total(served, "cxr_orient_instances", status="done") == 6
        assert _total(served, "cxr_orient_instances", status="failed") == 1
        assert _total(served, "cxr_orient_broker_up") == 1
        assert _total(served, "cxr_orient_queue_depth", queue="cxr-orient") == 0
        versions = [
            dict(ls)["version"]
            for (n, ls), _ in served.items()
            if n == "cxr_orient_active_model_info"
        ]
        # The worker registered the shipped checkpoint on the empty database: its name.
        assert versions == [SHIPPED_MODEL.stem], versions
        assert httpx.get(f"{service_url}/readyz", timeout=10).status_code == 200

        # Flower: the worker (asked over the broker) and its tasks (from the events).
        node: dict[str, object] = {}

        def worker_listed() -> bool:
            answer = httpx.get(f"{flower_url}/api/workers", params={"refresh": "1"}, timeout=30)
            node.update(answer.json() if answer.status_code == 200 else {})
            return any(name.startswith("metrics-") for name in node)

        wait_until(worker_listed, timeout=60, poll=1, what="the worker listed by Flower")
        tasks: dict[str, dict[str, object]] = {}

        def tasks_seen() -> bool:
            answer = httpx.get(f"{flower_url}/api/tasks", timeout=30)
            tasks.update(answer.json() if answer.status_code == 200 else {})
            return sum(t.get("name") == "cxr_orient.classify" for t in tasks.values()) >= 7

        wait_until(tasks_seen, timeout=60, poll=1, what="the classify tasks in Flower")
        on_worker = [
            t
            for t in tasks.values()
            if t.get("name") == "cxr_orient.classify"
            and str(t.get("worker") or "").startswith("metrics-")
        ]
        assert len(on_worker) >= 7, tasks
