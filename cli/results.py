"""``cxr-orient results`` and ``status``: what the database holds, as tables, CSV or JSON."""

from __future__ import annotations

from typing import Any

import click

from cli.formatting import aware, echo_csv, echo_json, print_table
from cxr_orient.settings import get_settings, redact_url

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
    "projection",
    "p_ap",
    "header_view",
    "header_agrees",
    "model_version",
    "error",
)
#: csv and json add the projection's agreement with the header, the unusual-image score,
#: the chest-or-not probability and the file path (an operator needs it to find a failed
#: file); the table has no room for them.
EXPORT_COLUMNS = (*RESULT_COLUMNS, "projection_agrees", "unusual_score", "p_not_chest", "file_path")
#: ``results --by-study``: each study's current answer (view current_study_answers).
STUDY_COLUMNS = (
    "study_instance_uid",
    "sequence",
    "instance_count",
    "frontal_count",
    "lateral_count",
    "needs_review_count",
    "failed_count",
    "out_of_scope_count",
    "header_agrees_count",
    "header_disagrees_count",
    "flags",
    "model_versions",
    "answered_at",
)
#: The table leaves out what the flags and the counts already say (csv/json have it all).
STUDY_TABLE_COLUMNS = (
    "study_instance_uid",
    "sequence",
    "instance_count",
    "frontal_count",
    "lateral_count",
    "needs_review_count",
    "failed_count",
    "out_of_scope_count",
    "flags",
    "model_versions",
)
#: ``results --changed-between A B``: A's answer, then B's.
CHANGED_COLUMNS = (
    "sop_instance_uid",
    "study_instance_uid",
    "label_a",
    "confidence_a",
    "label_b",
    "confidence_b",
)


@click.command()
@click.option("--study", "study_uid", default=None, help="Only this StudyInstanceUID.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--model",
    "model_name",
    default=None,
    metavar="VERSION",
    help="Only the answers of this model version (one row per instance it answered).",
)
@click.option(
    "--changed-between",
    "changed",
    nargs=2,
    default=None,
    metavar="A B",
    help="Instances whose label differs between versions A and B, both confidences.",
)
@click.option(
    "--by-study",
    is_flag=True,
    help="One row per study: its current study answer (counts and flags).",
)
def results(
    study_uid: str | None,
    fmt: str,
    model_name: str | None,
    changed: tuple[str, str] | None,
    by_study: bool,
) -> None:
    """One row per instance: status, label, confidence, header agreement, model version.

    A frontal answered by a model with a PA/AP head also has its projection (PA or AP;
    empty where the model is not confident enough to say), p_ap (the probability of AP)
    and projection_agrees (against the header's ViewPosition when it names PA or AP).

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
        raise click.UsageError(
            "--by-study shows each study's current answer; it takes "
            "--study, not --model or --changed-between"
        )
    columns: tuple[str, ...] = EXPORT_COLUMNS
    with session_scope() as session:
        if by_study:
            rows = [
                r.as_dict()
                for r in crud.current_study_answers(session, study_instance_uid=study_uid)
            ]
            for row in rows:
                row["answered_at"] = row["answered_at"].isoformat()
            columns = STUDY_COLUMNS
        elif changed:
            a, b = (version_id(session, name) for name in changed)
            rows = [
                r.as_dict() for r in crud.changed_between(session, version_a_id=a, version_b_id=b)
            ]
            columns = CHANGED_COLUMNS
        else:
            only = None if model_name is None else version_id(session, model_name)
            rows = [
                r.as_dict()
                for r in crud.results(session, study_instance_uid=study_uid, model_version_id=only)
            ]
    if fmt == "json":
        echo_json(rows, columns)
    elif fmt == "csv":
        echo_csv(rows, columns)
    else:
        print_table(
            rows,
            STUDY_TABLE_COLUMNS if by_study else CHANGED_COLUMNS if changed else RESULT_COLUMNS,
        )


@click.command()
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
    click.echo(f"database: {redact_url(settings.storage.effective_database_url)}")
    click.echo(
        f"broker:   {redact_url(settings.storage.effective_broker_url)}"
        + (" (embedded filesystem transport)" if settings.storage.uses_embedded_broker else "")
    )
    click.echo("instances: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo(f"queue depth: {'unknown' if depth is None else depth}")
    if waiting:
        click.echo(
            f"held: {waiting} instances of {waiting_studies} studies waiting for "
            f"CXR_STUDY_QUIET_S={settings.intake.study_quiet_s:g} s of quiet"
        )
    click.echo(f"active model: {active_name}")
    if targeted or runs:
        click.echo(
            f"reclassify: {targeted} instances queued or processing for a named "
            f"version; unfinished runs: {', '.join(map(str, runs)) or 'none'}"
        )
    click.echo(
        f"uid conflicts: {sum(conflicts.values())} ("
        + ", ".join(f"{k} {v}" for k, v in conflicts.items())
        + ")"
    )
    configured = list(settings.results.destination_urls)
    configured += [u for u in settings.corrections.destination_urls if u not in configured]
    _echo_outbox(outbox, configured=configured, states=destinations)
    click.echo(
        f"workers ready to classify: {len(ready)}" + (f" ({', '.join(ready)})" if ready else "")
    )


def _echo_outbox(summary: list[Any], *, configured: list[str], states: dict[str, Any]) -> None:
    """The outbox per destination: pending, sent, failed, the oldest pending's age, and
    for a destination that is failing, why and when it is tried next."""
    from db.models import utcnow

    if not summary and not configured:
        click.echo(
            "outbox: no result destinations (CXR_RESULT_DESTINATIONS, CXR_CORRECTION_DESTINATIONS)"
        )
        return
    click.echo("outbox:")
    now = utcnow()
    listed = {s.destination for s in summary}
    for s in summary:
        age = ""
        if s.oldest_pending is not None:
            oldest = aware(s.oldest_pending, now)
            age = f", oldest pending {(now - oldest).total_seconds():.0f}s"
        extra = "" if s.destination in configured else " (not configured now)"
        click.echo(
            f"  {s.destination}{extra}: pending {s.pending}, sent {s.sent}, failed {s.failed}{age}"
        )
        _echo_destination_state(states.get(s.destination), now)
    for url in configured:
        if url not in listed:
            click.echo(f"  {url}: pending 0, sent 0, failed 0")
            _echo_destination_state(states.get(url), now)


def _echo_destination_state(state: Any, now: Any) -> None:
    if state is None or not state.consecutive_failures:
        return

    wait = ""
    if state.next_attempt_at is not None:
        left = (aware(state.next_attempt_at, now) - now).total_seconds()
        wait = f", next try in {max(left, 0):.0f}s"
    since = ""
    if state.failing_since is not None:
        since = f" over {(now - aware(state.failing_since, now)).total_seconds():.0f}s"
    click.echo(
        f"    down: {state.consecutive_failures} failures in a row{since}{wait}; "
        f"last error: {state.last_error}"
    )
