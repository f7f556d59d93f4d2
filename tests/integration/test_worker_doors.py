"""The worker on its own, as the README starts it (``celery -A worker worker``, no beat),
with a Redis server of the test's own, PostgreSQL and a real Orthanc:

- readiness: "ready to classify" (log line, the worker metric, the heartbeat that
  ``/readyz`` of serve reads) comes only once every pool process has its model, and a
  classification then succeeds at once; celery's "ready." comes before that;
- a broker that loses its messages (killed and restarted without persistence, or
  flushed) while instances are queued: all are done within 60 s of its return;
- delivery without beat: a destination whose port is closed backs off (its consecutive
  failures grow the wait, capped), the error says "connection refused", ``cxr-orient
  status`` shows it; once a real Orthanc listens there the SRs arrive and the backoff
  resets; and the worker's log at INFO holds no UID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pydicom
import pytest
import redis

from bench.services import serving
from cxr_orient.settings import SHIPPED_MODEL
from tests.utils.faults import PrivateRedis, private_redis
from tests.utils.orthanc import Orthanc, free_port
from tests.utils.worker import REPO, WorkerProcess, run_cli, worker_env

pytestmark = pytest.mark.integration

T = TypeVar("T")
SAMPLES = REPO / "cxr_orient" / "samples"
CALLING_AE = "CXR_ORIENT"


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    """A Redis of the test's own (nothing kept on disk: a restart loses every message)."""
    with private_redis() as server:
        yield server


def _redis(server: PrivateRedis) -> redis.Redis:
    return redis.Redis(port=server.port, db=12, socket_timeout=2)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> float:
    """Seconds until ``condition`` held."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _studies(archive: Path, *names: str) -> set[str]:
    """Copy bundled studies under ``archive``; their SOP and Study Instance UIDs."""
    uids = set()
    for name in names:
        shutil.copytree(SAMPLES / name, archive / name)
        for path in sorted((archive / name).glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uids |= {str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)}
    return uids


def _counts(database_url: str) -> dict[str, int]:
    from db import crud
    from db.session import make_engine, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return crud.status_counts(session)
    finally:
        engine.dispose()


def _read(database_url: str, read: Callable[..., T]) -> T:
    from db.session import make_engine, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return read(session)
    finally:
        engine.dispose()


def _env(pg_url: str, redis_server: PrivateRedis, tmp_path: Path, **more: object) -> dict[str, str]:
    return worker_env(
        database_url=pg_url,
        broker_url=redis_server.url(),
        ingest_root=tmp_path / "archive",
        data_dir=tmp_path / "data",
        model_path=SHIPPED_MODEL,
        batch_max_wait_ms=100,
        **more,
    )


def test_ready_to_classify_only_once_every_pool_process_has_its_model(
    pg_url: str, redis_server: PrivateRedis, tmp_path: Path
) -> None:
    from db import crud
    from tests.utils.env import migrate_from_template

    (tmp_path / "archive").mkdir()
    _studies(tmp_path / "archive", "study1")
    metrics_port = free_port()
    env = _env(pg_url, redis_server, tmp_path, worker_metrics_port=metrics_port)
    migrate_from_template(pg_url)
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=2, cwd=REPO)
    try:
        worker.wait_ready(180)  # celery's "ready.": consuming, models not loaded yet
        log = worker.log()
        assert "ready to classify" not in log
        assert not _read(pg_url, crud.ready_workers), "ready before the models"

        worker.wait_ready_to_classify(240)
        log = worker.log()
        ready_at = log.index("ready to classify")
        assert log[:ready_at].count("serving model") == 2, "both pool processes first"
        assert log.index(" ready.") < ready_at
        assert len(_read(pg_url, crud.ready_workers)) == 1
        status = run_cli("status", env=env)
        assert "workers ready to classify: 1 (" in status.stdout, status.stdout + status.stderr
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert re.search(r"^cxr_orient_worker_ready(\{[^}]*\})? 1\.0$", scraped, re.M), scraped
        with serving(env, tmp_path / "serve.log") as base:
            ready = httpx.get(f"{base}/readyz", timeout=10).json()
            assert ready["workers_ready"] == 1, ready

            # Ready means a classification succeeds now, not after a model load.
            started = time.monotonic()
            enqueued = run_cli(
                "enqueue", str(tmp_path / "archive"), "--wait", "--timeout", "60", env=env
            )
            assert enqueued.returncode == 0, enqueued.stderr + worker.log()[-3000:]
            assert _counts(pg_url)["done"] == 2
            assert time.monotonic() - started < 30, "the model was not loaded yet?"

            assert worker.stop() == 0
            ready = httpx.get(f"{base}/readyz", timeout=10).json()
            assert ready["workers_ready"] == 0, "a stopped worker no longer counts"
    finally:
        worker.stop()


@pytest.mark.parametrize("loss", ["restart", "flush"])
def test_queued_work_is_done_within_60s_of_a_broker_that_lost_its_messages(
    pg_url: str, redis_server: PrivateRedis, tmp_path: Path, loss: str
) -> None:
    """The worker is paused (SIGSTOP) while 6 instances are queued, so their messages
    wait in Redis; Redis then loses them (SIGKILL and a restart without persistence, or
    FLUSHALL); the worker goes on. No beat, no worker restart: the worker notices."""
    from tests.utils.env import migrate_from_template

    (tmp_path / "archive").mkdir()
    _studies(tmp_path / "archive", "study1", "study2", "study3")
    env = _env(pg_url, redis_server, tmp_path, broker_watch_s=2)
    migrate_from_template(pg_url)
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=1, cwd=REPO)
    try:
        worker.wait_ready_to_classify(240)
        time.sleep(3)  # the watch has looked at the broker once
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            enqueued = run_cli("enqueue", str(tmp_path / "archive"), env=env)
            assert enqueued.returncode == 0, enqueued.stderr
            assert _counts(pg_url)["queued"] == 6
            assert _redis(redis_server).llen("cxr-orient") == 6, "the messages wait"
            if loss == "restart":
                redis_server.kill()
                redis_server.start()
            else:
                _redis(redis_server).flushall()
            assert _redis(redis_server).llen("cxr-orient") == 0
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        took = _wait(lambda: _counts(pg_url)["done"] == 6, "all 6 instances done", timeout=90)
        print(f"broker {loss}: all done {took:.1f}s after its return")
        assert took < 60, f"{took:.0f}s after the broker's return"
        assert "queued instances again" in worker.log(), "the watch, not something else"
    finally:
        worker.stop()


def test_delivery_without_beat_backs_off_from_a_closed_port_then_reaches_orthanc(
    pg_url: str, redis_server: PrivateRedis, tmp_path: Path
) -> None:
    from db import crud
    from tests.utils.env import migrate_from_template

    archive = tmp_path / "archive"
    archive.mkdir()
    uids = _studies(archive, "study1")
    dicom_port, http_port = free_port(), free_port()
    destination = f"dicom://ORTHANC@127.0.0.1:{dicom_port}"
    env = _env(
        pg_url,
        redis_server,
        tmp_path,
        result_destinations=destination,
        outbox_interval_s=1,
        outbox_backoff_s=1,
        outbox_backoff_max_s=4,
        outbox_timeout_s=5,
    )
    migrate_from_template(pg_url)

    def state() -> crud.DestinationState | None:
        return _read(pg_url, crud.destination_states).get(destination)

    # Exactly the README's recipe: `celery -A worker worker`, no -B.
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=1, cwd=REPO)
    orthanc = Orthanc(
        tmp_path / "orthanc", dicom_port, http_port, {"cxr": [CALLING_AE, "127.0.0.1", free_port()]}
    )
    try:
        worker.wait_ready_to_classify(240)
        enqueued = run_cli("enqueue", str(archive), "--wait", "--timeout", "120", env=env)
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()[-3000:]
        _wait(
            lambda: (s := state()) is not None and s.consecutive_failures >= 3,
            "the closed port failed 3 times in a row",
            timeout=60,
        )
        rows = _read(pg_url, crud.outbox_rows)
        assert len(rows) == 2
        assert all(r.status.value == "pending" for r in rows)
        assert all("connection refused" in str(r.last_error) for r in rows), [
            r.last_error for r in rows
        ]
        # At the cap (4 s) a closed port is tried about 3 times in 12 s, not 12 times.
        before = state()
        time.sleep(12)
        after = state()
        assert before is not None and after is not None
        assert after.consecutive_failures - before.consecutive_failures <= 4
        status = run_cli("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "failures in a row" in status.stdout, status.stdout
        assert "connection refused" in status.stdout, status.stdout

        orthanc.start()  # the PACS comes up on that port
        _wait(
            lambda: [r.status.value for r in _read(pg_url, crud.outbox_rows)] == ["sent", "sent"],
            "both SRs sent once the PACS is up",
            timeout=60,
        )
        assert len(orthanc.structured_reports()) == 2
        after_success = state()
        assert after_success is not None and after_success.consecutive_failures == 0
        status = run_cli("status", env=env)
        assert "failures in a row" not in status.stdout, status.stdout
        sr_uids = {r.sr_sop_instance_uid for r in _read(pg_url, crud.outbox_rows)}
    finally:
        worker.stop()
        orthanc.stop()
    log = worker.log()
    assert "outbox: " in log, "the worker delivered, at INFO"
    leaked = [uid for uid in uids | sr_uids if uid in log]
    assert not leaked, f"UIDs in the worker log: {leaked}"
