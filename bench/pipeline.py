"""The whole product under load: enqueue -> broker -> real ``celery -A worker worker`` -> DB.

The bench process sets ``CXR_*`` variables for itself and the worker it starts
(SQLite under a temporary folder, Redis database 10 by default, or the
filesystem broker), enqueues studies with :func:`cxr_orient.ingest.enqueue_paths`
and reads latencies back from the database (``enqueued_at`` .. ``finished_at``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import CorpusItem, clone_with_new_uids
from worker import launch
from worker.launch import WorkerProcess

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BROKER = "redis://127.0.0.1:6379/10"


@dataclass
class PipelineConfig:
    root: Path
    model_path: Path
    broker_url: str | None = DEFAULT_BROKER
    concurrency: int = 1
    decode_threads: int = 0


def configure_environment(config: PipelineConfig) -> dict[str, str]:
    """Point this process's settings at the bench database and broker; return the env."""
    from cxr_orient.settings import reset_settings_cache

    values = {
        "CXR_DATABASE_URL": f"sqlite:///{config.root / 'bench.db'}",
        "CXR_INGEST_ROOT": str(config.root),
        "CXR_DATA_DIR": str(config.root / "data"),
        "CXR_MODEL_PATH": str(config.model_path),
        "CXR_DECODE_THREADS": str(config.decode_threads),
        "CXR_LOG_LEVEL": "WARNING",
    }
    if config.broker_url:
        values["CXR_BROKER_URL"] = config.broker_url
    else:
        os.environ.pop("CXR_BROKER_URL", None)
    os.environ.update(values)
    reset_settings_cache()
    from db.migrate import upgrade

    upgrade()
    if config.broker_url and config.broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(config.broker_url).flushdb()
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@contextmanager
def running_worker(
    env: dict[str, str], log_path: Path, *, concurrency: int, batch_size: int, max_wait_ms: int
) -> Iterator[WorkerProcess]:
    """A real, ready worker with this batch configuration, stopped with SIGTERM afterwards."""
    env = {**env, "CXR_BATCH_SIZE": str(batch_size), "CXR_BATCH_MAX_WAIT_MS": str(max_wait_ms)}
    with launch.running_worker(
        env, log_path, concurrency=concurrency, name="bench", ready_timeout=180
    ) as worker:
        yield worker


def peak_rss_mib(pid: int) -> dict[str, float]:
    """VmHWM (peak resident memory) of ``pid`` and its children, in MiB (Linux)."""
    out: dict[str, float] = {}
    pids = [pid] + [int(p) for p in _children(pid)]
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[str(each)] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return out


def _children(pid: int) -> list[str]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend((task / "children").read_text().split())
        except OSError:
            continue
    return found


def make_studies(
    items: Sequence[CorpusItem], target: Path, *, studies: int, tag: str, jobs: int = 1
) -> list[Path]:
    """``studies`` folders of two images each (a frontal and a lateral), fresh UIDs;
    ``jobs`` processes write them."""
    frontal = [i for i in items if i.view == "frontal"] or list(items)
    lateral = [i for i in items if i.view == "lateral"] or list(items)
    folders, copies = [], []
    for s in range(studies):
        folder = target / f"{tag}-{s:04d}"
        study_uid = f"1.2.826.0.1.3680043.10.3.{abs(hash(tag)) % 10**8}.{s}"
        for k, item in enumerate((frontal[s % len(frontal)], lateral[s % len(lateral)])):
            copies.append((item.path, folder / f"{k}.dcm", study_uid, f"S{s}"))
        folders.append(folder)
    if jobs > 1:
        # Fresh interpreters: the bench process may run JAX, which forking can deadlock.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=spawn) as pool:
            list(pool.map(_clone, copies, chunksize=8))
    else:
        for copy in copies:
            _clone(copy)
    return folders


def _clone(copy: tuple[Path, Path, str, str]) -> Path:
    source, target, study_uid, patient_id = copy
    return clone_with_new_uids(source, target, study_uid=study_uid, patient_id=patient_id)


def _wait_done(ids: Sequence[int], timeout_s: float) -> bool:
    from cxr_orient.ingest import wait_for

    return wait_for(ids, timeout_s=timeout_s, poll_s=0.2)


def _study_latencies(ids: Sequence[int]) -> tuple[list[float], datetime, datetime, int]:
    from sqlalchemy import select

    from db.models import Instance, InstanceStatus
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(
                Instance.study_id, Instance.enqueued_at, Instance.finished_at, Instance.status
            ).where(Instance.id.in_(list(ids)))
        ).all()
    per_study: dict[int | None, list[tuple[datetime, datetime]]] = {}
    failed = 0
    for study, enqueued, finished, status in rows:
        if status != InstanceStatus.done:
            failed += 1
        if finished is not None:
            per_study.setdefault(study, []).append((enqueued, finished))
    latencies = [
        (max(f for _, f in pairs) - min(e for e, _ in pairs)).total_seconds()
        for pairs in per_study.values()
    ]
    first = min(e for _, e, _, _ in rows)
    last = max(f for _, _, f, _ in rows if f is not None)
    return latencies, first, last, failed


def saturate(folders: Sequence[Path], *, timeout_s: float = 600) -> dict[str, Any]:
    """Enqueue every study at once; images/s from the first enqueue to the last result."""
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.settings import get_settings
    from worker.dispatch import send_instances

    report = enqueue_paths(list(folders), send=send_instances, settings=get_settings())
    ids = list(report.queued)
    finished = _wait_done(ids, timeout_s)
    latencies, first, last, failed = _study_latencies(ids)
    seconds = max((last - first).total_seconds(), 1e-6)
    return {
        "images": len(ids),
        "seconds": seconds,
        "images_per_s": len(ids) / seconds,
        "failed": failed,
        "complete": finished,
        **_percentiles(latencies),
    }


def wait_for_pool(log_path: Path, processes: int, *, timeout_s: float = 300) -> None:
    """Wait until ``processes`` pool processes logged that they serve a model."""
    deadline = time.monotonic() + timeout_s
    while log_path.read_text(errors="replace").count(" serving model ") < processes:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"pool not ready after {timeout_s:.0f} s:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.5)


def drain(ids: Sequence[int], *, started: float, timeout_s: float = 600) -> dict[str, Any]:
    """Throughput of workers emptying a queue that holds all of ``ids`` at once.

    ``sustained_images_per_s`` counts the results between the 10th and the 90th
    percentile of finishing times: the rate once every pool process is busy, without
    the start or the tail (the last batches, when processes run out of work).
    ``images_per_s`` is over the whole run from ``started`` (``time.time()`` when the
    work became available).
    """
    from sqlalchemy import select

    from db.models import Instance, InstanceStatus
    from db.session import session_scope

    finished = _wait_done(ids, timeout_s)
    with session_scope() as session:
        rows = session.execute(
            select(Instance.finished_at, Instance.status).where(Instance.id.in_(list(ids)))
        ).all()
    # SQLite hands back naive datetimes; they were written in UTC.
    times = sorted(
        (f if f.tzinfo else f.replace(tzinfo=UTC)).timestamp() for f, _ in rows if f is not None
    )
    failed = sum(1 for _, status in rows if status != InstanceStatus.done)
    out: dict[str, Any] = {"images": len(ids), "failed": failed, "complete": finished}
    if len(times) >= 10:
        lo, hi = int(0.1 * len(times)), int(0.9 * len(times))
        out["sustained_images_per_s"] = (hi - lo) / max(times[hi] - times[lo], 1e-6)
        out["sustained_window_s"] = times[hi] - times[lo]
    if times:
        out["seconds_from_start"] = times[-1] - started
        out["images_per_s"] = len(times) / max(times[-1] - started, 1e-6)
        out["first_result_after_start_s"] = times[0] - started
    return out


def steady(
    folders: Sequence[Path], *, images_per_s: float, timeout_s: float = 300
) -> dict[str, Any]:
    """Offer studies (two images each) at a steady ``images_per_s``; per-study latency."""
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.settings import get_settings
    from worker.dispatch import send_instances

    interval = 2.0 / images_per_s
    ids: list[int] = []
    start = time.monotonic()
    for k, folder in enumerate(folders):
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ids.extend(enqueue_paths([folder], send=send_instances, settings=get_settings()).queued)
    offered_s = time.monotonic() - start
    finished = _wait_done(ids, timeout_s)
    latencies, _, _, failed = _study_latencies(ids)
    return {
        "offered_images_per_s": images_per_s,
        "images": len(ids),
        "achieved_offer_images_per_s": len(ids) / max(offered_s, 1e-6),
        "failed": failed,
        "complete": finished,
        **_percentiles(latencies),
    }


def _percentiles(latencies: Sequence[float]) -> dict[str, float | None]:
    if not latencies:
        return {"latency_p50_s": None, "latency_p99_s": None, "latency_max_s": None}
    values = np.asarray(latencies)
    return {
        "latency_p50_s": float(np.percentile(values, 50)),
        "latency_p99_s": float(np.percentile(values, 99)),
        "latency_max_s": float(values.max()),
    }
