"""The ``cxr-orient`` command line: the interface ingest scripts and operators use."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from cxr_orient.settings import get_settings, redact_url

logger = logging.getLogger("cxr_orient")

RESULT_COLUMNS = (
    "sop_instance_uid",
    "study_instance_uid",
    "status",
    "label",
    "confidence",
    "p_lateral",
    "needs_review",
    "header_view",
    "header_agrees",
    "model_version",
    "error",
)


def _setup_logging(verbose: bool) -> None:
    level = "DEBUG" if verbose else get_settings().log_level
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.version_option(package_name="cxr-orient")
def main(verbose: bool) -> None:
    """Frontal vs lateral classification of chest radiographs, recorded in SQL.

    Configuration comes from CXR_* environment variables (see docs/configuration.md);
    with none set, an SQLite file and a filesystem broker under ./cxr-orient-data are used.
    """
    _setup_logging(verbose)


# --- database ------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database migrations (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from db.migrate import upgrade

    upgrade(revision=revision)
    click.echo(f"database at {redact_url(get_settings().effective_database_url)} is at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes every table)."""
    from db.migrate import downgrade

    downgrade(revision=revision)
    click.echo(f"database downgraded to {revision}")


# --- ingest --------------------------------------------------------------------------


def _progress_enqueue(paths: list[Path]) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from cxr_orient.ingest import count_files, enqueue_paths

    total = count_files(paths)
    if total < 50 or not sys.stderr.isatty():
        return enqueue_paths(paths)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("reading headers", total=total)
        return enqueue_paths(paths, on_file=lambda: progress.advance(task))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Return when every instance is done or failed.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="With --wait: give up after S seconds (exit status 3).",
)
def enqueue(paths: tuple[Path, ...], wait: bool, timeout: float | None) -> None:
    """Record DICOM files (and folders, recursively) and queue them for classification.

    Idempotent: an instance whose SOPInstanceUID is already recorded is not queued again.
    Files that cannot be ingested are recorded as failed, with their reason.
    """
    from cxr_orient.ingest import wait_for

    report = _progress_enqueue(list(paths))
    click.echo(
        f"{report.files} files: {len(report.queued)} queued, "
        f"{len(report.already_known)} already known, {len(report.refused)} refused "
        f"({len(report.studies)} studies)"
    )
    for path, code, message in report.refused[:20]:
        click.echo(f"  refused {path}: {code}: {message}", err=True)
    if len(report.refused) > 20:
        click.echo(
            f"  ... and {len(report.refused) - 20} more (see `cxr-orient results`)", err=True
        )
    if wait and report.instance_ids:
        if not wait_for(report.instance_ids, timeout_s=timeout):
            click.echo(f"timed out after {timeout} s with work unfinished", err=True)
            sys.exit(3)
        click.echo("all instances finished")


@main.command()
def requeue() -> None:
    """Send again every instance the database has as queued or processing.

    Use after the broker lost its messages (e.g. Redis restarted without persistence).
    Safe to repeat: workers claim each instance once and skip finished ones.
    """
    from worker.requeue import requeue_unfinished

    sent = requeue_unfinished(only_stale=False)
    click.echo(f"re-sent {sent} instances")


# --- reporting -----------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@main.command()
@click.option("--study", "study_uid", default=None, help="Only this StudyInstanceUID.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
def results(study_uid: str | None, fmt: str) -> None:
    """One row per instance: status, label, confidence, header agreement, model version."""
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        rows = [r.as_dict() for r in crud.results(session, study_instance_uid=study_uid)]
    if fmt == "json":
        click.echo(json.dumps([{k: r[k] for k in EXPORT_COLUMNS} for r in rows], indent=2))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        _print_results_table(rows)


def _print_results_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for column in RESULT_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_format_value(row[c]) for c in RESULT_COLUMNS))
    Console(width=max(200, Console().width)).print(table)


@main.command()
def status() -> None:
    """Counts by status, broker queue depth, and the active model."""
    from db import crud
    from db.session import session_scope
    from worker.requeue import broker_queue_depth

    settings = get_settings()
    with session_scope() as session:
        counts = crud.status_counts(session)
        active = crud.active_model_version(session)
        active_name = f"{active.name} ({active.architecture})" if active else "none"
    depth = broker_queue_depth()
    click.echo(f"database: {redact_url(settings.effective_database_url)}")
    click.echo(
        f"broker:   {redact_url(settings.effective_broker_url)}"
        + (" (embedded filesystem transport)" if settings.uses_embedded_broker else "")
    )
    click.echo("instances: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo(f"queue depth: {'unknown' if depth is None else depth}")
    click.echo(f"active model: {active_name}")


# --- models --------------------------------------------------------------------------


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--architecture",
    default="compact",
    show_default=True,
    help="compact, tutorial2019, vgg16, mobilenetv3small.",
)
@click.option("--epochs", default=30, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the checkpoint and report (default CXR_MODEL_DIR).",
)
@click.option(
    "--manifest",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="CSV with file and patientid columns, for a patient-grouped split.",
)
def train(
    data_dir: Path,
    architecture: str,
    epochs: int,
    seed: int,
    out_dir: Path | None,
    manifest: Path | None,
) -> None:
    """Train from a folder of class subfolders (frontal/, lateral/) and register the model.

    The model is registered as a candidate version; promote it with `cxr-orient promote`.
    """
    from training.cli_train import train_from_folder

    from cxr_orient.registry import register_checkpoint
    from db.session import session_scope

    settings = get_settings()
    out = (out_dir or settings.effective_model_dir).expanduser().resolve()
    checkpoint, card = train_from_folder(
        data_dir,
        out_dir=out,
        architecture=architecture,
        epochs=epochs,
        seed=seed,
        manifest=manifest,
    )
    with session_scope() as session:
        version = register_checkpoint(
            session, checkpoint, actor="cli", reason=f"cxr-orient train {data_dir}"
        )
        click.echo(f"registered {version.name} ({card.architecture}) from {checkpoint}")


@main.command()
@click.option("--timeout", type=float, default=600, show_default=True)
@click.option("--keep-worker-log", is_flag=True, help="Print the worker's log at the end.")
def demo(timeout: float, keep_worker_log: bool) -> None:
    """Run the whole path on bundled sample studies and print the results.

    Starts a real `celery -A worker worker` process, enqueues the samples, waits,
    prints the results table and stops the worker. Uses CXR_DATABASE_URL and
    CXR_BROKER_URL when set; otherwise SQLite and a filesystem broker (no server).
    """
    from cxr_orient.demo import run_demo

    sys.exit(
        run_demo(
            timeout_s=timeout,
            show_worker_log=keep_worker_log,
            echo=click.echo,
            print_results=_print_results_table,
        )
    )


if __name__ == "__main__":
    main()
