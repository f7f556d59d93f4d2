"""Task time limits with a real worker (issue 13, item 3): a read that hangs for real (a
FUSE mount whose server stops answering, as a stalled NFS server does) ends as a recorded
``timeout``, is retried, and is failed with ``timeout`` after CXR_MAX_ATTEMPTS, while
its batch-mates are answered and the same pool process goes on with later work. A FIFO
swapped in for a recorded file is refused unread (``not_regular_file``) beside it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from db.models import Instance
from db.session import make_engine
from tests.utils.dicom_factory import make_dicom
from tests.utils.faults import free_port, wait_until
from tests.utils.hanging_fs import fuse_unavailable, hanging_mount
from tests.utils.services import parse_samples
from tests.utils.worker import REPO, run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

SAMPLES = REPO / "cxr_orient" / "samples"
#: The soft limit leaves room for TensorFlow tracing a new batch shape on a busy 2-core box
#: (batches of one, the retries, are traced in seconds there).
SOFT_S, HARD_S, MAX_ATTEMPTS = 15, 60, 2


def _rows(database_url: str, archive: Path) -> dict[str, tuple[str, str | None, int, str | None]]:
    """Per file (relative to the archive): status, error code, attempts, error message."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                str(Path(p).relative_to(archive)): (str(s), e, int(a), m)
                for p, s, e, a, m in conn.execute(
                    select(
                        Instance.file_path,
                        Instance.status,
                        Instance.error_code,
                        Instance.attempts,
                        Instance.error_message,
                    )
                )
            }
    finally:
        engine.dispose()


def test_a_hung_read_times_out_is_retried_then_failed_and_the_worker_goes_on(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    problem = fuse_unavailable()
    if problem:
        pytest.skip(f"needs a FUSE mount: {problem}")
    from tests.utils.env import migrate_from_template

    archive = tmp_path / "archive"
    for study in ("study1", "study2"):
        shutil.copytree(SAMPLES / study, archive / study)
    (archive / "fifo").mkdir()
    swapped = archive / "fifo" / "lateral.dcm"
    shutil.copy(SAMPLES / "study3" / "lateral.dcm", swapped)
    nfs_source = tmp_path / "nfs-export"
    nfs_source.mkdir()
    shutil.copy(SAMPLES / "study3" / "frontal.dcm", nfs_source / "frontal.dcm")
    port = free_port()
    env = worker_env(
        database_url=pg_url,
        broker_url=redis_url,
        ingest_root=archive,
        data_dir=tmp_path / "data",
        batch_size=8,
        batch_max_wait_ms=300,
        task_soft_time_limit_s=SOFT_S,
        task_time_limit_s=HARD_S,
        max_attempts=MAX_ATTEMPTS,
        processing_timeout_s=600,
        worker_metrics_port=port,
    )
    migrate_from_template(pg_url)

    with hanging_mount(archive / "nfs", nfs_source, tmp_path / "fuse.log") as mount:
        # Recorded while every file reads fine (ingest hashes each one)...
        enqueued = run_cli("enqueue", str(archive), env=env)
        assert enqueued.returncode == 0, enqueued.stdout + enqueued.stderr
        assert "6 queued" in enqueued.stdout, enqueued.stdout
        # ...then the NFS server stalls, and a FIFO takes a recorded file's place.
        mount.hang()
        swapped.unlink()
        os.mkfifo(swapped)

        with running_worker(env, tmp_path / "worker.log", name="limits") as worker:

            def finished() -> bool:
                return all(s in {"done", "failed"} for s, *_ in _rows(pg_url, archive).values())

            wait_until(finished, timeout=300, poll=1, what="every instance finished")
            rows = _rows(pg_url, archive)

            # The worker goes on: later work is answered by the same pool process, whose
            # decode thread is still stuck in the hung read.
            later = archive / "later"
            later.mkdir()
            pixels = (np.arange(256 * 200, dtype=np.uint16).reshape(256, 200) * 7) % 4096
            for n in range(2):
                make_dicom(
                    later / f"img{n}.dcm",
                    pixels,
                    study_uid="1.2.826.0.1.99.1",
                    sop_uid=f"1.2.826.0.1.99.1.{n}",
                    patient_id="LATER",
                )
            again = run_cli("enqueue", str(later), "--wait", "--timeout", "120", env=env)
            assert again.returncode == 0, again.stdout + again.stderr + worker.log()
            got = parse_samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            log = worker.log()
            # The decode thread stuck in the read would hold the pool process's exit
            # (uninterruptible, as on a hard NFS mount) until the server answers.
            mount.resume()
        rows_after = _rows(pg_url, archive)

    status, code, attempts, message = rows["nfs/frontal.dcm"]
    assert (status, code, attempts) == ("failed", "timeout", MAX_ATTEMPTS), rows
    assert message and f"CXR_TASK_SOFT_TIME_LIMIT_S={SOFT_S}" in message
    assert rows["fifo/lateral.dcm"][:2] == ("failed", "not_regular_file"), rows
    done = [k for k, (s, *_) in rows.items() if s == "done"]
    assert len(done) == 4, rows
    assert all(rows_after[f"later/img{n}.dcm"][0] == "done" for n in range(2)), rows_after
    assert log.count(" serving model ") == 1, "one pool process throughout, never killed"
    assert log.count("stopped by the soft time limit") == MAX_ATTEMPTS, log[-4000:]

    def total(name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in got.items()
            if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
        )

    assert total("cxr_orient_task_timeouts_total") == MAX_ATTEMPTS
    assert total("cxr_orient_images_total", status="failed", error_code="timeout") == 1
    assert total("cxr_orient_images_total", status="retried", error_code="timeout") >= 1
    assert total("cxr_orient_images_total", status="done") == 6
