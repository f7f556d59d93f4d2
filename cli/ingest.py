"""``cxr-orient enqueue``, ``requeue`` and ``reclassify``: work into the queue.

Each wires ``worker.dispatch.send_instances`` into the library function that records or
selects the work (``cxr_orient.ingest``, ``worker.requeue``, ``cxr_orient.reclassify``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


def _progress_enqueue(paths: list[Path]) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from cxr_orient.ingest import count_files, enqueue_paths
    from cxr_orient.settings import get_settings
    from worker.dispatch import send_instances

    settings = get_settings()
    total = count_files(paths)
    if total < 50 or not sys.stderr.isatty():
        return enqueue_paths(paths, send=send_instances, settings=settings)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("reading headers", total=total)
        return enqueue_paths(
            paths, send=send_instances, settings=settings, on_file=lambda: progress.advance(task)
        )


@click.command()
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

    Idempotent: an instance whose SOPInstanceUID is already recorded with the same bytes
    is not queued again (already known). A known SOPInstanceUID with other bytes is a
    uid_conflict, recorded and handled by CXR_UID_CONFLICT_POLICY (keep_first, replace).
    Instances the accept policy refuses (CXR_ACCEPT_*, CXR_REFUSE_IMAGE_TYPES: a CT, an
    MR, a screenshot) are recorded out_of_scope and never labelled. Files that cannot be
    ingested are recorded as failed, with their reason.
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
        f"{len(report.already_known)} already known, {len(report.uid_conflicts)} uid_conflict, "
        f"{len(report.out_of_scope)} out_of_scope, {len(report.refused)} refused "
        f"({len(report.studies)} studies)"
    )
    for conflict in report.uid_conflicts[:20]:
        notes = "" if conflict.study_matches else ", names another study: not moved"
        notes += "" if conflict.first_seen else ", recorded before"
        click.echo(
            f"  uid_conflict {conflict.path}: SOPInstanceUID {conflict.sop_instance_uid} "
            f"(instance {conflict.instance_id}) has other bytes: {conflict.action}{notes}",
            err=True,
        )
    if len(report.uid_conflicts) > 20:
        click.echo(
            f"  ... and {len(report.uid_conflicts) - 20} more (table uid_conflicts)", err=True
        )
    for path, _rule, message in report.out_of_scope[:20]:
        click.echo(f"  out_of_scope {path}: {message}", err=True)
    if len(report.out_of_scope) > 20:
        click.echo(
            f"  ... and {len(report.out_of_scope) - 20} more (see `cxr-orient results`)", err=True
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


@click.command()
def requeue() -> None:
    """Send again every instance the database has as queued, and processing ones whose
    claim lapsed (their worker stopped renewing its lease, CXR_LEASE_S).

    Use after the broker lost its messages (e.g. Redis restarted without persistence).
    A live worker's claim is never taken, however long its batch runs. Safe to repeat:
    workers claim each instance once and skip finished ones.
    """
    from cxr_orient.settings import get_settings
    from worker.requeue import requeue_unfinished

    sent = requeue_unfinished(get_settings().worker, only_stale=False)
    click.echo(f"re-sent {sent} instances")


@click.command()
@click.option("--study", "study_uid", default=None, help="Only this StudyInstanceUID.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    metavar="YYYY-MM-DD",
    help="Only instances ingested on or after this day (YYYY-MM-DD, UTC).",
)
@click.option(
    "--model",
    "model_name",
    default=None,
    metavar="VERSION",
    help="A registered version to answer (default: the active one).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Send at most N instances now; the run stays resumable.",
)
@click.option(
    "--include-failed", is_flag=True, help="Also failed instances (never files refused at ingest)."
)
@click.option(
    "--resume",
    "resume_id",
    type=int,
    default=None,
    metavar="RUN_ID",
    help="Go on with run RUN_ID (its own filters and model).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 50_000),
    default=1000,
    show_default=True,
    help="Instance ids per chunk (one id range per transaction and send).",
)
@click.option("--actor", default=None, help="Who (default: $USER).")
def reclassify(
    study_uid: str | None,
    since: Any,
    model_name: str | None,
    limit: int | None,
    include_failed: bool,
    resume_id: int | None,
    chunk_size: int,
    actor: str | None,
) -> None:
    """Queue done instances for another answer (after a promotion): each a new row.

    Instances that already have an answer from the version are skipped. The walk goes in
    id order, chunk by chunk, recorded in reclassify_runs: an interrupted run resumes with
    --resume RUN_ID, or by running the same command again (same filters and model).
    """
    import getpass

    from cxr_orient.errors import ReclassifyError
    from cxr_orient.reclassify import Filters, last_instance_id
    from cxr_orient.reclassify import reclassify as run_reclassify
    from worker.dispatch import send_instances

    if resume_id is not None and (study_uid or since or model_name or include_failed):
        raise click.UsageError(
            "--resume goes on with the run's own filters and model; "
            "give none of --study, --since, --model, --include-failed"
        )
    filters = Filters(
        study_instance_uid=study_uid,
        since=since.date() if since else None,
        include_failed=include_failed,
    )
    kwargs: dict[str, Any] = dict(
        send=send_instances,
        model=model_name,
        filters=filters,
        limit=limit,
        resume=resume_id,
        chunk_size=chunk_size,
        actor=actor or getpass.getuser(),
    )
    try:
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                "reclassify",
                BarColumn(),
                TextColumn("{task.description}"),
                TimeRemainingColumn(),
                transient=True,
            ) as bar:
                task = bar.add_task("", total=max(1, last_instance_id()))
                report = run_reclassify(
                    **kwargs,
                    on_chunk=lambda p: bar.update(
                        task,
                        completed=p.cursor,
                        description=f"run {p.run_id}: sent {p.sent}, skipped {p.skipped}",
                    ),
                )
        else:
            report = run_reclassify(**kwargs)
    except ReclassifyError as exc:
        raise click.ClickException(str(exc)) from exc
    if report.resumed:
        click.echo(f"resumed run {report.run_id}", err=True)
    click.echo(
        f"run {report.run_id} ({report.model_version}): sent {report.sent}, "
        f"skipped {report.skipped} already answered by {report.model_version}"
    )
    if report.finished:
        click.echo(
            f"run {report.run_id} finished: {report.total_sent} sent, "
            f"{report.total_skipped} skipped in all"
        )
    else:
        click.echo(
            f"run {report.run_id} stopped after instance {report.cursor}; go on with "
            f"`cxr-orient reclassify --resume {report.run_id}`"
        )
