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
    "review_reason",
    "rotation",
    "mirrored",
    "header_view",
    "header_agrees",
    "model_version",
    "error",
)
#: csv and json add the unusual-image score and the file path (an operator needs it to
#: find a failed file).
EXPORT_COLUMNS = (*RESULT_COLUMNS, "unusual_score", "file_path")
#: ``results --by-study``: each study's current answer (view current_study_answers).
STUDY_COLUMNS = ("study_instance_uid", "sequence", "instance_count", "frontal_count",
                 "lateral_count", "needs_review_count", "failed_count", "out_of_scope_count",
                 "header_agrees_count", "header_disagrees_count", "flags", "model_versions",
                 "answered_at")
#: The table leaves out what the flags and the counts already say (csv/json have it all).
STUDY_TABLE_COLUMNS = ("study_instance_uid", "sequence", "instance_count", "frontal_count",
                       "lateral_count", "needs_review_count", "failed_count",
                       "out_of_scope_count", "flags", "model_versions")
#: ``results --changed-between A B``: A's answer, then B's.
CHANGED_COLUMNS = ("sop_instance_uid", "study_instance_uid", "label_a", "confidence_a",
                   "label_b", "confidence_b")


def _setup_logging(verbose: bool) -> None:
    from cxr_orient.logs import cap_third_party_loggers

    level = "DEBUG" if verbose else get_settings().log_level
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # No UIDs from highdicom, pynetdicom... (docs/security.md)
    cap_third_party_loggers(debugging=verbose)
    if not verbose:  # migration chatter and kombu's filesystem-transport notice
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)


#: ``ctx.meta`` key (shared by every nested context): what to suggest when the database
#: fails; a command sets its own so that it never advises running itself.
DATABASE_HINT = "cxr_orient.database_hint"
DEFAULT_DATABASE_HINT = "is it running, and has `cxr-orient db upgrade` been run?"
MIGRATE_DATABASE_HINT = ("is it running, is the URL right, and for SQLite, can its folder "
                         "be written?")


class _Group(click.Group):
    """Turns a database that cannot be reached or is not migrated into one clear line
    (with the URL's password hidden) instead of a traceback; the hint is the failing
    command's (``ctx.meta[DATABASE_HINT]``)."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        try:
            return super().invoke(ctx)
        except (OperationalError, ProgrammingError) as exc:
            url = redact_url(get_settings().effective_database_url)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            hint = ctx.meta.get(DATABASE_HINT, DEFAULT_DATABASE_HINT)
            raise click.ClickException(f"database {url}: {reason} ({hint})") from exc


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
    click.get_current_context().meta[DATABASE_HINT] = MIGRATE_DATABASE_HINT


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
        click.echo(f"  ... and {len(report.out_of_scope) - 20} more (see `cxr-orient "
                   "results`)", err=True)
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


# --- the DICOM node ------------------------------------------------------------------


@main.command()
@click.option("--port", type=int, default=None,
              help="TCP port (0: any free one, logged). Default CXR_DICOM_PORT (11112).")
@click.option("--bind", default=None, help="Address to bind. Default CXR_DICOM_BIND (127.0.0.1).")
@click.option("--ae-title", default=None, help="Our AE title. Default CXR_DICOM_AE_TITLE.")
def listen(port: int | None, bind: str | None, ae_title: str | None) -> None:
    """Receive instances over DICOM (C-STORE SCP, C-ECHO) until SIGTERM.

    Each instance is received onto disk, checked whole (one cut short gets a failure
    status, C210) and moved into the spool (durably, as sent) before success is returned,
    then recorded and queued like a file given to `enqueue`. Idle or slow peers are cut
    off and limited per host and per calling AE title (CXR_DICOM_* settings); every
    refusal is logged and counted on CXR_DICOM_METRICS_PORT. docs/dicom.md is the
    conformance statement.
    """
    from cxr_orient.dicomnet.listener import ListenerConfig, serve_dicom
    from worker.dispatch import send_instances

    settings = get_settings()
    try:
        config = ListenerConfig.from_settings(settings, ae_title=ae_title, bind=bind, port=port)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        stored = serve_dicom(
            settings, send=send_instances, config=config,
            on_ready=lambda host, bound: click.echo(
                f"listening on {host}:{bound} as {config.ae_title}", err=True))
    except OSError as exc:  # the port taken, the address not ours
        raise click.ClickException(
            f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}") from exc
    click.echo(f"listener stopped: {stored} instances stored", err=True)


@main.command()
@click.option("--dicomweb", "url", default=None,
              help="DICOMweb base URL, e.g. http://pacs:8042/dicom-web.")
@click.option("--dimse", default=None,
              help="Or a Query/Retrieve SCP, AET@host:port: C-FIND, then C-MOVE to "
                   "CXR_DICOM_AE_TITLE (a running `cxr-orient listen`).")
@click.option("--study", "study_uid", default=None, help="Only this StudyInstanceUID.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Studies from this StudyDate (YYYY-MM-DD), and undated ones.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Studies up to this StudyDate (YYYY-MM-DD), and undated ones.")
@click.option("--undated/--skip-undated", default=True, show_default=True,
              help="With --since/--until: also studies with no StudyDate (no date rules "
                   "them out; the PACS then lists every study and the dates are matched "
                   "here). --skip-undated lets the PACS match the dates.")
@click.option("--modality", default="CR,DX", show_default=True,
              help="Comma-separated series modalities to fetch.")
def pull(url: str | None, dimse: str | None, study_uid: str | None, since: Any, until: Any,
         undated: bool, modality: str) -> None:
    """Fetch studies from a PACS over DICOMweb (QIDO-RS, WADO-RS) or DIMSE (C-FIND,
    C-MOVE to the listener) and queue them.

    Idempotent and resumable: instances already recorded are not fetched again, so an
    interrupted pull run again fetches only the rest. A study with no StudyDate is in
    every date window unless --skip-undated.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from cxr_orient.dicomnet.pull import PullQuery, parse_modalities, remote_summary
    from cxr_orient.dicomnet.pull import pull as pull_dicomweb
    from cxr_orient.dicomnet.pull_dimse import DimsePeer, pull_dimse
    from worker.dispatch import send_instances

    if (url is None) == (dimse is None):
        raise click.UsageError("give one of --dicomweb URL or --dimse AET@host:port")
    recorded_now = 0
    query = PullQuery(study_uid=study_uid, since=since.date() if since else None,
                      until=until.date() if until else None,
                      modalities=parse_modalities(modality), undated=undated)
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
                  disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("fetching", total=None)

        def on_total(count: int) -> None:
            progress.update(task, total=count)

        def on_instance() -> None:
            progress.advance(task)

        if dimse is not None:
            try:
                peer = DimsePeer.parse(dimse)
                report, recorded_now = pull_dimse(peer, query, settings=get_settings(),
                                                  on_total=on_total, on_instance=on_instance)
            except (ValueError, ConnectionError) as exc:
                raise click.ClickException(str(exc)) from exc
        else:
            assert url is not None
            report = pull_dicomweb(url, query, settings=get_settings(), send=send_instances,
                                   on_total=on_total, on_instance=on_instance)
    summary = (f"{report.found} instances found: {report.skipped_known} recorded before, "
               f"{report.fetched} {'moved' if dimse else 'fetched'}, "
               f"{len(report.failed)} failed; ")
    recorded = report.recorded
    if dimse:
        summary += f"{recorded_now} of the moved recorded by the listener"
    else:
        summary += (f"{len(recorded.queued)} queued, {len(recorded.already_known)} already "
                    f"known, {len(recorded.uid_conflicts)} uid_conflict, "
                    f"{len(recorded.refused)} refused")
    click.echo(summary)
    for line in remote_summary(report.failed)[:20]:
        click.echo(f"  failed {line}", err=True)
    if report.failed:
        sys.exit(4)


@main.command()
def requeue() -> None:
    """Send again every instance the database has as queued, and processing ones whose
    claim lapsed (their worker stopped renewing its lease, CXR_LEASE_S).

    Use after the broker lost its messages (e.g. Redis restarted without persistence).
    A live worker's claim is never taken, however long its batch runs. Safe to repeat:
    workers claim each instance once and skip finished ones.
    """
    from worker.requeue import requeue_unfinished

    sent = requeue_unfinished(only_stale=False)
    click.echo(f"re-sent {sent} instances")


@main.command()
@click.option("--study", "study_uid", default=None, help="Only this StudyInstanceUID.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              metavar="YYYY-MM-DD",
              help="Only instances ingested on or after this day (YYYY-MM-DD, UTC).")
@click.option("--model", "model_name", default=None, metavar="VERSION",
              help="A registered version to answer (default: the active one).")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Send at most N instances now; the run stays resumable.")
@click.option("--include-failed", is_flag=True,
              help="Also failed instances (never files refused at ingest).")
@click.option("--resume", "resume_id", type=int, default=None, metavar="RUN_ID",
              help="Go on with run RUN_ID (its own filters and model).")
@click.option("--chunk-size", type=click.IntRange(1, 50_000), default=1000, show_default=True,
              help="Instance ids per chunk (one id range per transaction and send).")
@click.option("--actor", default=None, help="Who (default: $USER).")
def reclassify(study_uid: str | None, since: Any, model_name: str | None, limit: int | None,
               include_failed: bool, resume_id: int | None, chunk_size: int,
               actor: str | None) -> None:
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
        raise click.UsageError("--resume goes on with the run's own filters and model; "
                               "give none of --study, --since, --model, --include-failed")
    filters = Filters(study_instance_uid=study_uid, since=since.date() if since else None,
                      include_failed=include_failed)
    kwargs: dict[str, Any] = dict(send=send_instances, model=model_name, filters=filters,
                                  limit=limit, resume=resume_id, chunk_size=chunk_size,
                                  actor=actor or getpass.getuser())
    try:
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress("reclassify", BarColumn(), TextColumn("{task.description}"),
                          TimeRemainingColumn(), transient=True) as bar:
                task = bar.add_task("", total=max(1, last_instance_id()))
                report = run_reclassify(**kwargs, on_chunk=lambda p: bar.update(
                    task, completed=p.cursor,
                    description=f"run {p.run_id}: sent {p.sent}, skipped {p.skipped}"))
        else:
            report = run_reclassify(**kwargs)
    except ReclassifyError as exc:
        raise click.ClickException(str(exc)) from exc
    if report.resumed:
        click.echo(f"resumed run {report.run_id}", err=True)
    click.echo(f"run {report.run_id} ({report.model_version}): sent {report.sent}, "
               f"skipped {report.skipped} already answered by {report.model_version}")
    if report.finished:
        click.echo(f"run {report.run_id} finished: {report.total_sent} sent, "
                   f"{report.total_skipped} skipped in all")
    else:
        click.echo(f"run {report.run_id} stopped after instance {report.cursor}; go on with "
                   f"`cxr-orient reclassify --resume {report.run_id}`")


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
@click.option("--model", "model_name", default=None, metavar="VERSION",
              help="Only the answers of this model version (one row per instance it answered).")
@click.option("--changed-between", "changed", nargs=2, default=None, metavar="A B",
              help="Instances whose label differs between versions A and B, both confidences.")
@click.option("--by-study", is_flag=True,
              help="One row per study: its current study answer (counts and flags).")
def results(study_uid: str | None, fmt: str, model_name: str | None,
            changed: tuple[str, str] | None, by_study: bool) -> None:
    """One row per instance: status, label, confidence, header agreement, model version.

    The answer shown is the current one: that of the model version most recently put in
    service (promotion or rollback) among those that answered the instance. With
    --by-study, one row per study whose instances are all finished: frontal, lateral,
    needs_review, failed and out_of_scope counts, header agreement and the flags
    no_frontal, no_lateral, header_disagreement, needs_review, failed (the newest row of
    study_answers; `sequence` counts the study's answers so far).
    """
    from db import crud
    from db.session import session_scope

    def version_id(session: Any, name: str) -> int:
        version = crud.find_model_version(session, name=name)
        if version is None:
            raise click.ClickException(f"no model version named {name!r}")
        return version.id

    if by_study and (changed or model_name):
        raise click.UsageError("--by-study shows each study's current answer; it takes "
                               "--study, not --model or --changed-between")
    columns: tuple[str, ...] = EXPORT_COLUMNS
    with session_scope() as session:
        if by_study:
            rows = [r.as_dict() for r in crud.current_study_answers(
                session, study_instance_uid=study_uid)]
            for row in rows:
                row["answered_at"] = row["answered_at"].isoformat()
            columns = STUDY_COLUMNS
        elif changed:
            a, b = (version_id(session, name) for name in changed)
            rows = [r.as_dict() for r in crud.changed_between(session, version_a_id=a,
                                                              version_b_id=b)]
            columns = CHANGED_COLUMNS
        else:
            only = None if model_name is None else version_id(session, model_name)
            rows = [r.as_dict() for r in crud.results(session, study_instance_uid=study_uid,
                                                      model_version_id=only)]
    if fmt == "json":
        click.echo(json.dumps([{k: r[k] for k in columns} for r in rows], indent=2))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        _print_results_table(rows, STUDY_TABLE_COLUMNS if by_study
                             else CHANGED_COLUMNS if changed else RESULT_COLUMNS)


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
    """Counts by status (out_of_scope: refused by the accept policy, not a failure;
    waiting: held for the study's quiet period), broker queue depth, the workers that can
    classify now, the active model, the outbox per destination."""
    from db import crud
    from db.session import session_scope
    from worker.dispatch import broker_queue_depth

    settings = get_settings()
    with session_scope() as session:
        counts = crud.status_counts(session)
        conflicts = crud.uid_conflict_counts(session)
        active = crud.active_model_version(session)
        active_name = f"{active.name} ({active.architecture})" if active else "none"
        targeted = crud.count_targeted(session)
        runs = [r.id for r in crud.unfinished_reclassify_runs(session)]
        waiting, waiting_studies = crud.count_waiting(session)
        outbox = crud.outbox_summary(session)
        destinations = crud.destination_states(session)
        ready = crud.ready_workers(session)
    depth = broker_queue_depth()
    click.echo(f"database: {redact_url(settings.effective_database_url)}")
    click.echo(
        f"broker:   {redact_url(settings.effective_broker_url)}"
        + (" (embedded filesystem transport)" if settings.uses_embedded_broker else "")
    )
    click.echo("instances: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo(f"queue depth: {'unknown' if depth is None else depth}")
    if waiting:
        click.echo(f"held: {waiting} instances of {waiting_studies} studies waiting for "
                   f"CXR_STUDY_QUIET_S={settings.study_quiet_s:g} s of quiet")
    click.echo(f"active model: {active_name}")
    if targeted or runs:
        click.echo(f"reclassify: {targeted} instances queued or processing for a named "
                   f"version; unfinished runs: {', '.join(map(str, runs)) or 'none'}")
    click.echo(
        f"uid conflicts: {sum(conflicts.values())} ("
        + ", ".join(f"{k} {v}" for k, v in conflicts.items())
        + ")"
    )
    _echo_outbox(outbox, configured=[d.url for d in settings.result_destination_list],
                 states=destinations)
    click.echo(f"workers ready to classify: {len(ready)}"
               + (f" ({', '.join(ready)})" if ready else ""))


def _echo_outbox(summary: list[Any], *, configured: list[str],
                 states: dict[str, Any]) -> None:
    """The outbox per destination: pending, sent, failed, the oldest pending's age, and
    for a destination that is failing, why and when it is tried next."""
    from db.models import utcnow

    if not summary and not configured:
        click.echo("outbox: no result destinations (CXR_RESULT_DESTINATIONS)")
        return
    click.echo("outbox:")
    now = utcnow()
    listed = {s.destination for s in summary}
    for s in summary:
        age = ""
        if s.oldest_pending is not None:
            oldest = s.oldest_pending
            if oldest.tzinfo is None:  # SQLite hands back naive UTC
                oldest = oldest.replace(tzinfo=now.tzinfo)
            age = f", oldest pending {(now - oldest).total_seconds():.0f}s"
        extra = "" if s.destination in configured else " (not configured now)"
        click.echo(f"  {s.destination}{extra}: pending {s.pending}, sent {s.sent}, "
                   f"failed {s.failed}{age}")
        _echo_destination_state(states.get(s.destination), now)
    for url in configured:
        if url not in listed:
            click.echo(f"  {url}: pending 0, sent 0, failed 0")
            _echo_destination_state(states.get(url), now)


def _echo_destination_state(state: Any, now: Any) -> None:
    if state is None or not state.consecutive_failures:
        return

    def aware(moment: Any) -> Any:  # SQLite hands back naive UTC
        return moment.replace(tzinfo=now.tzinfo) if moment.tzinfo is None else moment

    wait = ""
    if state.next_attempt_at is not None:
        left = (aware(state.next_attempt_at) - now).total_seconds()
        wait = f", next try in {max(left, 0):.0f}s"
    since = ""
    if state.failing_since is not None:
        since = f" over {(now - aware(state.failing_since)).total_seconds():.0f}s"
    click.echo(f"    down: {state.consecutive_failures} failures in a row{since}{wait}; "
               f"last error: {state.last_error}")


@main.group()
def outbox() -> None:
    """Structured Reports on their way back to PACS (CXR_RESULT_DESTINATIONS)."""


@outbox.command("retry")
@click.option("--destination", default=None, help="Only rows for this destination URL.")
@click.option("--id", "outbox_ids", type=int, multiple=True, help="Only this row (repeatable).")
def outbox_retry(destination: str | None, outbox_ids: tuple[int, ...]) -> None:
    """Make failed rows pending again, due now (after fixing what the destination refused)."""
    from cxr_orient.dicomnet.delivery import retry_failed

    try:
        moved = retry_failed(destination=destination, outbox_ids=list(outbox_ids) or None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{moved} failed rows pending again")


@outbox.command("deliver")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Most rows to send (default CXR_OUTBOX_BATCH).")
def outbox_deliver(limit: int | None) -> None:
    """Send due rows now, from this process (what the deliver_outbox task does)."""
    from cxr_orient.dicomnet.delivery import deliver_due

    counts = deliver_due(get_settings(), limit)
    click.echo(f"{counts.claimed} claimed: {counts.sent} sent, {counts.retrying} retrying, "
               f"{counts.failed} failed")


# --- models --------------------------------------------------------------------------

# Literal here: importing cxr_orient.architectures would load Keras for every command.
ARCHITECTURE_HELP = ("compact_invariant_64 (the shipped model's view network; "
                     "compact_invariant_64_heads adds its orientation and unusual-image "
                     "heads, see python -m training.heads; compact_invariant_64_heads2, "
                     "the shipped one, also scores unusual images by the orientation head, "
                     "see python -m training.unusual_design; compact_invariant_64_heads3 "
                     "adds a chest-or-not and a PA/AP head, see python -m "
                     "recipes.compact_invariant_64_v4), compact_invariant, "
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
            click.echo(f"{v.name:40s} {v.architecture:26s} {v.state:9s}"
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


# --- the HTTP service and its tokens --------------------------------------------------


@main.command()
@click.option("--host", default=None, help="Address to listen on [default: CXR_HTTP_HOST].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="TCP port [default: CXR_HTTP_PORT].")
def serve(host: str | None, port: int | None) -> None:
    """The HTTP service: the review page (/review, /audit, /admin/users; log in as a
    user made with `cxr-orient user create`), its JSON API (/api/v1, OpenAPI at
    /openapi.json), STOW-RS in (POST /dicom-web/studies, bearer token with the 'stow'
    scope, see `cxr-orient token`), GET /healthz and /readyz. Request bodies, header
    and body deadlines and open connections are bounded (CXR_HTTP_*, CXR_STOW_*);
    behind a reverse proxy list it in CXR_TRUSTED_PROXIES (docs/security.md)."""
    from service.server import serve as run_server

    settings = get_settings()
    run_server(host=host or settings.http_host, port=port or settings.http_port,
               log_level=settings.log_level)


@main.group()
def token() -> None:
    """API tokens for machines (STOW-RS senders, review/audit API scripts); only their
    SHA-256 is stored."""


@token.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, default=("stow",), show_default=True,
              help="What the token may do (repeatable): stow, review, audit.")
def token_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create token NAME and print it, once: it cannot be shown again."""
    from cxr_orient.tokens import TokenError, create_token
    from db.session import session_scope

    try:
        with session_scope() as session:
            secret = create_token(session, name=name, scopes=list(scopes))
    except TokenError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"token {name} ({', '.join(sorted(set(scopes)))}); it is shown only now:",
               err=True)
    click.echo(secret)


def _when(value: Any) -> str:
    """A listed timestamp to the minute, or '-'."""
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


@token.command("list")
def token_list() -> None:
    """Every token: name, scopes, created, last used, revoked (never the token)."""
    from cxr_orient.tokens import list_tokens
    from db.session import session_scope

    with session_scope() as session:
        for info in list_tokens(session):
            click.echo(f"{info.name:32s} {','.join(info.scopes):12s} "
                       f"created {_when(info.created_at)}  last used {_when(info.last_used_at)}"
                       f"  {'REVOKED ' + _when(info.revoked_at) if info.revoked_at else ''}")


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke token NAME: refused (401) from now on; the row stays for the audit."""
    from cxr_orient.tokens import TokenError, revoke_token
    from db.session import session_scope

    try:
        with session_scope() as session:
            revoke_token(session, name=name)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked {name}")


@main.group()
def user() -> None:
    """People who log in to the review page (roles: reviewer, auditor, admin)."""


def _password_from(stdin: bool, none: bool) -> str | None:
    if none:
        return None
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


@user.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["reviewer", "auditor", "admin"]),
              default="reviewer", show_default=True)
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin (scripts) instead of a "
                   "prompt.")
@click.option("--no-password", is_flag=True,
              help="No password: single sign-on only (CXR_TRUSTED_USER_HEADER).")
def user_create(username: str, role: str, password_stdin: bool, no_password: bool) -> None:
    """Create user USERNAME (asks for a password of at least 12 characters)."""
    from cxr_orient.users import UserError, create_user
    from db.session import session_scope

    password = _password_from(password_stdin, no_password)
    try:
        with session_scope() as session:
            made = create_user(session, username=username, role=role, password=password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {made.username} ({made.role.value}) created")


@user.command("list")
def user_list() -> None:
    """Every user: name, role, password set or not, last login, disabled."""
    from cxr_orient.users import list_users
    from db.session import session_scope

    with session_scope() as session:
        for info in list_users(session):
            click.echo(f"{info.username:32s} {info.role.value:9s} "
                       f"{'password' if info.has_password else 'sso-only':9s} "
                       f"last login {_when(info.last_login_at)}"
                       f"{'  DISABLED ' + _when(info.disabled_at) if info.disabled_at else ''}")


@user.command("disable")
@click.argument("username")
def user_disable(username: str) -> None:
    """Disable USERNAME: no more logins, its sessions end; its labels keep its name."""
    from cxr_orient.users import UserError, disable_user
    from db.session import session_scope

    try:
        with session_scope() as session:
            disable_user(session, username=username)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"disabled {username}")


@user.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read it from the first line of stdin.")
@click.option("--no-password", is_flag=True, help="Remove it (single sign-on only).")
def user_set_password(username: str, password_stdin: bool, no_password: bool) -> None:
    """Set USERNAME's password; the user's open sessions end."""
    from cxr_orient.users import UserError, set_password
    from db.session import session_scope

    password = _password_from(password_stdin, no_password)
    try:
        with session_scope() as session:
            set_password(session, username=username, password=password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {username} {'removed' if password is None else 'set'}")


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
@click.option("--no-network", is_flag=True,
              help="Skip network ingest: cxr-orient listen fed by concurrent dcmsend "
                   "(mixed and uncompressed corpora, beside the folder path and the "
                   "disk's fsync bound) and end to end dcmsend -> listen -> worker -> SR "
                   "in Orthanc.")
def bench(quick: bool, out_dir: Path, machine: str | None, model_path: Path | None,
          broker: str, no_pipeline: bool, no_network: bool) -> None:
    """Measure decode, model, pipeline, network ingest and the tutorial-script baseline
    side by side."""
    from bench.run import run_bench

    results = run_bench(out_dir, quick=quick, machine=machine, model_path=model_path,
                        broker_url=None if broker == "filesystem" else broker,
                        pipeline=not no_pipeline, network=not no_network,
                        say=lambda m: click.echo(m, err=True))
    click.echo(f"results: {out_dir}/{results['machine']}.json and .md")
    for key, value in results.get("summary", {}).items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        click.echo(f"{key}: {shown}")

if __name__ == "__main__":
    main()
