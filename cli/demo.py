"""``cxr-orient demo``: the whole product on bundled samples, on any machine.

The samples are real radiographs: RG1 (a CR chest PA from the NEMA test set,
via pydicom-data, MIT) and openly licensed images from the COVID-19 image data
collection wrapped into DICOM (see ``cxr_orient/samples/ATTRIBUTION.md``).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import cxr_orient
from cli.formatting import print_table
from cxr_orient.settings import get_settings, redact_url, reset_settings_cache

#: Package data of the library (pyproject.toml), so the demo runs from a wheel too.
SAMPLES = Path(cxr_orient.__file__).resolve().parent / "samples"
#: The demo shows sample file names rather than the (long) UIDs.
DEMO_COLUMNS = (
    "file",
    "status",
    "label",
    "confidence",
    "needs_review",
    "rotation",
    "mirrored",
    "header_view",
    "header_agrees",
    "model_version",
    "error",
)


class WorkerDied(Exception):
    def __init__(self, status: int | None) -> None:
        super().__init__(f"worker exited with status {status}")
        self.status = status


def run_demo(
    *,
    timeout_s: float,
    show_worker_log: bool,
    echo: Callable[[str], Any],
) -> int:
    from cxr_orient.ingest import enqueue_paths, wait_for
    from cxr_orient.runtime import missing_backend
    from db import crud
    from db.migrate import upgrade
    from db.session import dispose_engines, session_scope
    from worker.dispatch import send_instances
    from worker.launch import WorkerProcess

    problem = missing_backend()
    if problem:
        echo(f"cannot run the demo: {problem}")
        return 2
    settings = get_settings()
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    # The samples are copied under the data folder, which becomes the ingest root
    # for this run only, so the worker may read them whatever CXR_INGEST_ROOT says.
    sample_dir = settings.storage.data_dir / "demo-samples"
    shutil.rmtree(sample_dir, ignore_errors=True)
    shutil.copytree(SAMPLES, sample_dir, ignore=shutil.ignore_patterns("*.md"))
    os.environ["CXR_INGEST_ROOT"] = str(sample_dir)
    os.environ.setdefault("CXR_DATA_DIR", str(settings.storage.data_dir))
    reset_settings_cache()
    dispose_engines()
    settings = get_settings()

    echo(f"database: {redact_url(settings.storage.effective_database_url)}")
    if settings.storage.uses_embedded_broker:
        echo(
            f"broker:   none configured (CXR_BROKER_URL unset): using kombu's filesystem "
            f"transport in {settings.storage.broker_folder}"
        )
    else:
        echo(f"broker:   {redact_url(settings.storage.effective_broker_url)}")
    upgrade()

    log_path = settings.storage.data_dir / "demo-worker.log"
    worker = WorkerProcess(dict(os.environ), log_path, name="demo")
    echo(f"worker:   celery -A worker worker (pid {worker.pid}), log {log_path}")

    def give_up_if_worker_died(_remaining: int) -> None:
        if worker.exited() is not None:
            raise WorkerDied(worker.exited())

    try:
        start = time.monotonic()
        report = enqueue_paths([sample_dir], send=send_instances, settings=get_settings())
        echo(
            f"enqueued {report.files} files: {len(report.queued)} new, "
            f"{len(report.already_known)} already known, {len(report.out_of_scope)} "
            f"out_of_scope, {len(report.refused)} refused"
        )
        try:
            finished = (
                wait_for(
                    report.instance_ids,
                    timeout_s=timeout_s,
                    poll_s=0.5,
                    on_poll=give_up_if_worker_died,
                )
                if report.instance_ids
                else True
            )
        except WorkerDied as died:
            echo(f"the worker exited early with status {died.status}; see {log_path}:")
            echo("\n".join(worker.log().strip().splitlines()[-5:]))
            return 4
        elapsed = time.monotonic() - start
        with session_scope() as session:
            rows = crud.results(session, instance_ids=report.instance_ids)
        shown = []
        for row in rows:
            values = row.as_dict()
            values["file"] = str(Path(row.file_path).relative_to(sample_dir))
            if values["error"]:
                values["error"] = values["error"].replace(str(sample_dir) + "/", "")
            shown.append(values)
        print_table(sorted(shown, key=lambda r: r["file"]), DEMO_COLUMNS)
        if not finished:
            echo(f"timed out after {timeout_s:.0f} s; unfinished work stays queued")
            return 3
        echo(f"{len(rows)} instances in {elapsed:.1f} s")
        return 0
    finally:
        worker.stop()
        if show_worker_log:
            echo(log_path.read_text(errors="replace"))


@click.command()
@click.option("--timeout", type=float, default=600, show_default=True)
@click.option("--keep-worker-log", is_flag=True, help="Print the worker's log at the end.")
def demo(timeout: float, keep_worker_log: bool) -> None:
    """Run the whole path on bundled sample studies and print the results.

    Starts a real `celery -A worker worker` process, enqueues the samples, waits,
    prints the results table and stops the worker. Uses CXR_DATABASE_URL and
    CXR_BROKER_URL when set; otherwise SQLite and a filesystem broker (no server).
    """
    sys.exit(run_demo(timeout_s=timeout, show_worker_log=keep_worker_log, echo=click.echo))
