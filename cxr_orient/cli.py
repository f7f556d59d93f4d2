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
#: csv and json add the file path, which an operator needs to find a failed file.
EXPORT_COLUMNS = (*RESULT_COLUMNS, "file_path")


def _setup_logging(verbose: bool) -> None:
    level = "DEBUG" if verbose else get_settings().log_level
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # migration chatter and kombu's filesystem-transport notice
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)


class _Group(click.Group):
    """Turns a database that cannot be reached or is not migrated into one clear line
    (with the URL's password hidden) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        try:
            return super().invoke(ctx)
        except (OperationalError, ProgrammingError) as exc:
            url = redact_url(get_settings().effective_database_url)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise click.ClickException(
                f"database {url}: {reason} (is it running, and has `cxr-orient db upgrade` "
                "been run?)"
            ) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    from worker.dispatch import send_instances

    total = count_files(paths)
    if total < 50 or not sys.stderr.isatty():
        return enqueue_paths(paths, send=send_instances)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("reading headers", total=total)
        return enqueue_paths(paths, send=send_instances, on_file=lambda: progress.advance(task))


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
    from cxr_orient.runtime import missing_backend

    # Waiting is for a worker of this installation; without a model backend it would
    # wait for ever for workers that cannot start.
    problem = missing_backend() if wait else None
    if problem:
        raise click.ClickException(problem)
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


def _print_results_table(rows: list[dict[str, Any]],
                         columns: tuple[str, ...] = RESULT_COLUMNS) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_format_value(row[c]) for c in columns))
    Console(width=max(160, Console().width)).print(table)


@main.command()
def status() -> None:
    """Counts by status, broker queue depth, and the active model."""
    from db import crud
    from db.session import session_scope
    from worker.dispatch import broker_queue_depth

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

# Literal here: importing cxr_orient.architectures would load Keras for every command.
ARCHITECTURE_HELP = ("compact_invariant_64 (the shipped model's), compact_invariant, "
                     "compact_invariant_slim, compact, compact_wide, tutorial2019, vgg16, "
                     "mobilenetv3small.")


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--architecture",
    default="compact_invariant_64",
    show_default=True,
    help=ARCHITECTURE_HELP,
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
    from cxr_orient.registry import register_checkpoint
    from db.session import session_scope
    from training.candidate import train_from_folder

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


# --- model lifecycle -----------------------------------------------------------------


@main.group()
def label() -> None:
    """Ground-truth labels (append-only; the latest per instance counts)."""


@label.command("import")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", default="import", show_default=True,
              help="Source recorded for rows without a source column.")
@click.option("--annotator", default=None, help="Annotator for rows without one.")
def label_import(csv_path: Path, source: str, annotator: str | None) -> None:
    """Import CSV_PATH (sop_instance_uid,label[,source,annotator]); all rows or none."""
    from cxr_orient.errors import LabelImportError
    from cxr_orient.labels import import_labels, read_label_csv
    from db.session import session_scope

    try:
        rows = read_label_csv(csv_path)
        with session_scope() as session:
            count = import_labels(session, rows, default_source=source,
                                  default_annotator=annotator)
    except LabelImportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {count} labels from {csv_path}")


@main.command()
@click.option("--min-new-labels", default=50, show_default=True,
              help="Skip (exit 0) when fewer labels arrived since the last training run.")
@click.option("--data", "extra_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), default=None, help="Also train on a folder of class subfolders.")
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Patient ids for --data (CSV with file and patientid columns).")
@click.option("--architecture", default="compact_invariant_64", show_default=True,
              help=ARCHITECTURE_HELP)
@click.option("--epochs", default=200, show_default=True,
              help="Epochs of the cosine learning-rate schedule.")
@click.option("--min-epochs", type=int, default=None,
              help="Epochs before early stopping may stop the run [default: 70 % of --epochs].")
@click.option("--seed", default=0, show_default=True)
def retrain(min_new_labels: int, extra_dir: Path | None, manifest: Path | None,
            architecture: str, epochs: int, min_epochs: int | None, seed: int) -> None:
    """Nightly retrain: train a candidate on the labels, promote it only if it beats the
    active model on the fixed evaluation split. Exit 0 when done or nothing to do."""
    from training.lifecycle import retrain as run_retrain

    result = run_retrain(min_new_labels=min_new_labels, extra_dir=extra_dir, manifest=manifest,
                         architecture=architecture, epochs=epochs, min_epochs=min_epochs,
                         seed=seed)
    for problem in result.problems[:20]:
        click.echo(f"not trained on: {problem}", err=True)
    click.echo(result.message)


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--actor", default=None, help="Who (default: $USER).")
@click.option("--challenge", is_flag=True,
              help="Then let the promotion gate decide, on the fixed evaluation split, "
              "whether it replaces the active model (recorded either way).")
def register(checkpoint: Path, reason: str, actor: str | None, challenge: bool) -> None:
    """Register CHECKPOINT (a .keras file with its card beside it) as a model version.

    It is not active until `cxr-orient promote NAME` (a human decision) or, with
    --challenge, until it beats the active model at the gate. A new release's shipped
    model reaches an existing database this way; the shipped file only seeds an empty one.
    """
    import getpass

    from cxr_orient.errors import ModelError
    from cxr_orient.registry import register_checkpoint
    from db.session import session_scope

    who = actor or getpass.getuser()
    try:
        with session_scope() as session:
            version = register_checkpoint(session, checkpoint, actor=who, reason=reason)
            name, state = version.name, version.state
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"registered {name} ({state}) from {checkpoint.resolve()}")
    if not challenge:
        return
    from training.lifecycle import challenge_version

    try:
        decision = challenge_version(name, actor=who)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(("promoted: " if decision.promote else "kept the active model: ")
               + "; ".join(decision.reasons))


@main.command()
@click.argument("version")
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--actor", default=None, help="Who (default: $USER).")
def promote(version: str, reason: str, actor: str | None) -> None:
    """Make model VERSION the active one (recorded in model_events)."""
    import getpass

    from cxr_orient.errors import ModelError
    from cxr_orient.registry import promote as do_promote

    try:
        do_promote(version, actor=actor or getpass.getuser(), reason=reason)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{version} is now active")


@main.command()
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--actor", default=None, help="Who (default: $USER).")
def rollback(reason: str, actor: str | None) -> None:
    """Re-activate the model version that was in service before the current one."""
    import getpass

    from cxr_orient.errors import ModelError
    from cxr_orient.registry import rollback as do_rollback

    try:
        version = do_rollback(actor=actor or getpass.getuser(), reason=reason)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rolled back to {version.name}")


@main.command()
def models() -> None:
    """Registered model versions, newest first."""
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        for v in crud.list_model_versions(session):
            held_out = v.metrics.get("held_out_test", {}).get("balanced_accuracy", {})
            figure = held_out.get("value") if isinstance(held_out, dict) else held_out
            click.echo(f"{v.name:40s} {v.architecture:16s} {v.state:9s}"
                       f"{' ACTIVE' if v.is_active else '':7s} balanced_accuracy={figure}")


@main.command()
@click.argument("model")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Patient ids (bootstrap intervals resample patients).")
@click.option("--robustness/--no-robustness", default=True, show_default=True,
              help="Also rotated 90/180/270, flipped and inverted copies.")
@click.option("--json", "as_json", is_flag=True, help="Print the full metrics as JSON.")
def evaluate(model: str, data: Path, manifest: Path | None, robustness: bool,
             as_json: bool) -> None:
    """Evaluate MODEL (a registered version name or a .keras path) on DATA, a folder of
    frontal/ and lateral/ subfolders (PNG, JPEG or DICOM): accuracy, balanced accuracy,
    per-class precision and recall, ROC AUC and ECE with bootstrap 95 % intervals."""
    from cxr_orient.registry import load_classifier
    from training.data import load_labelled_folder
    from training.evaluate import robustness as run_robustness

    classifier = load_classifier(model)
    dataset = load_labelled_folder(data, manifest=manifest)
    variants = None if robustness else ["original"]
    results = run_robustness(classifier, dataset.images, dataset.labels,
                             groups=dataset.patients, variants=variants)
    if as_json:
        click.echo(json.dumps({k: {m: v for m, v in r.items() if m != "p_lateral"}
                               for k, r in results.items()}, indent=2, default=str))
        return
    keys = ("accuracy", "balanced_accuracy", "frontal_precision", "frontal_recall",
            "lateral_precision", "lateral_recall", "roc_auc", "ece")
    click.echo(f"{len(dataset)} images, {len(set(dataset.patients))} patients, "
               f"{dataset.class_counts()}")
    for variant, r in results.items():
        cells = []
        for k in keys:
            low, high = r["ci95"].get(k, (float("nan"), float("nan")))
            cells.append(f"{k}={r[k]:.3f} [{low:.3f}, {high:.3f}]")
        click.echo(f"{variant}: " + ", ".join(cells))


# --- benchmark -----------------------------------------------------------------------


@main.command()
@click.option("--quick", is_flag=True, help="A 2-3 minute run (smaller corpus, no sweep).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("bench/results"),
              show_default=True, help="Folder for <machine>.json and <machine>.md.")
@click.option("--machine", default=None, help="Results file name. Default cpu-<N>core-<arch>.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to measure. Default: CXR_MODEL_PATH or the shipped one.")
@click.option("--broker", default="redis://127.0.0.1:6379/10", show_default=True,
              help="Broker for the pipeline run; 'filesystem' for the embedded one.")
@click.option("--no-pipeline", is_flag=True, help="Skip the enqueue -> worker -> DB run.")
def bench(quick: bool, out_dir: Path, machine: str | None, model_path: Path | None,
          broker: str, no_pipeline: bool) -> None:
    """Measure decode, model, pipeline and the tutorial-script baseline side by side."""
    from bench.run import run_bench

    results = run_bench(out_dir, quick=quick, machine=machine, model_path=model_path,
                        broker_url=None if broker == "filesystem" else broker,
                        pipeline=not no_pipeline, say=lambda m: click.echo(m, err=True))
    click.echo(f"results: {out_dir}/{results['machine']}.json and .md")
    for key, value in results.get("summary", {}).items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        click.echo(f"{key}: {shown}")

if __name__ == "__main__":
    main()
