"""``cxr-orient demo``: the whole product on bundled samples, on any machine.

The samples are real radiographs: RG1 (a CR chest PA from the NEMA test set,
via pydicom-data, MIT) and openly licensed images from the COVID-19 image data
collection wrapped into DICOM (see ``samples/ATTRIBUTION.md``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr_orient.settings import get_settings, redact_url, reset_settings_cache

SAMPLES = Path(__file__).resolve().parent / "samples"
#: The demo shows sample file names rather than the (long) UIDs.
DEMO_COLUMNS = ("file", "status", "label", "confidence", "needs_review", "header_view",
                "header_agrees", "model_version", "error")


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    from worker.launch import worker_command

    command = worker_command(concurrency=1, name="demo")
    log = log_path.open("wb")
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # warm shutdown: finish the batch in hand
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_demo(
    *,
    timeout_s: float,
    show_worker_log: bool,
    echo: Callable[[str], Any],
    print_results: Callable[[list[dict[str, Any]], tuple[str, ...]], None],
) -> int:
    from cxr_orient.ingest import enqueue_paths, wait_for
    from db import crud
    from db.migrate import upgrade
    from db.session import dispose_engines, session_scope

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # The samples are copied under the data folder, which becomes the ingest root
    # for this run only, so the worker may read them whatever CXR_INGEST_ROOT says.
    sample_dir = settings.data_dir / "demo-samples"
    shutil.rmtree(sample_dir, ignore_errors=True)
    shutil.copytree(SAMPLES, sample_dir, ignore=shutil.ignore_patterns("*.md"))
    os.environ["CXR_INGEST_ROOT"] = str(sample_dir)
    os.environ.setdefault("CXR_DATA_DIR", str(settings.data_dir))
    reset_settings_cache()
    dispose_engines()
    settings = get_settings()

    echo(f"database: {redact_url(settings.effective_database_url)}")
    if settings.uses_embedded_broker:
        echo(
            f"broker:   none configured (CXR_BROKER_URL unset): using kombu's filesystem "
            f"transport in {settings.broker_folder}"
        )
    else:
        echo(f"broker:   {redact_url(settings.effective_broker_url)}")
    upgrade()

    log_path = settings.data_dir / "demo-worker.log"
    worker = _start_worker(dict(os.environ), log_path)
    echo(f"worker:   celery -A worker worker (pid {worker.pid}), log {log_path}")
    try:
        start = time.monotonic()
        report = enqueue_paths([sample_dir])
        echo(
            f"enqueued {report.files} files: {len(report.queued)} new, "
            f"{len(report.already_known)} already known, {len(report.refused)} refused"
        )
        finished = (
            wait_for(report.instance_ids, timeout_s=timeout_s, poll_s=0.5)
            if report.instance_ids
            else True
        )
        elapsed = time.monotonic() - start
        if worker.poll() is not None:
            echo(f"the worker exited early with status {worker.returncode}; see {log_path}")
        with session_scope() as session:
            rows = crud.results(session, instance_ids=report.instance_ids)
        shown = []
        for row in rows:
            values = row.as_dict()
            values["file"] = str(Path(row.file_path).relative_to(sample_dir))
            if values["error"]:
                values["error"] = values["error"].replace(str(sample_dir) + "/", "")
            shown.append(values)
        print_results(sorted(shown, key=lambda r: r["file"]), DEMO_COLUMNS)
        if not finished:
            echo(f"timed out after {timeout_s:.0f} s; unfinished work stays queued")
            return 3
        echo(f"{len(rows)} instances in {elapsed:.1f} s")
        return 0
    finally:
        _stop_worker(worker)
        if show_worker_log:
            echo(log_path.read_text(errors="replace"))
