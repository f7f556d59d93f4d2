"""``cxr-orient listen``, ``pull``, ``serve``, ``outbox`` and ``token``: the DICOM node
and the HTTP service, long-running processes and what feeds them or leaves them."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.formatting import when
from cxr_orient.settings import get_settings


@click.command()
@click.option(
    "--port",
    type=int,
    default=None,
    help="TCP port (0: any free one, logged). Default CXR_DICOM_PORT (11112).",
)
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
            settings,
            send=send_instances,
            config=config,
            on_ready=lambda host, bound: click.echo(
                f"listening on {host}:{bound} as {config.ae_title}", err=True
            ),
        )
    except OSError as exc:  # the port taken, the address not ours
        raise click.ClickException(
            f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}"
        ) from exc
    click.echo(f"listener stopped: {stored} instances stored", err=True)


@click.command()
@click.option(
    "--dicomweb", "url", default=None, help="DICOMweb base URL, e.g. http://pacs:8042/dicom-web."
)
@click.option(
    "--dimse",
    default=None,
    help="Or a Query/Retrieve SCP, AET@host:port: C-FIND, then C-MOVE to "
    "CXR_DICOM_AE_TITLE (a running `cxr-orient listen`).",
)
@click.option("--study", "study_uid", default=None, help="Only this StudyInstanceUID.")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Studies from this StudyDate (YYYY-MM-DD), and undated ones.",
)
@click.option(
    "--until",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Studies up to this StudyDate (YYYY-MM-DD), and undated ones.",
)
@click.option(
    "--undated/--skip-undated",
    default=True,
    show_default=True,
    help="With --since/--until: also studies with no StudyDate (no date rules "
    "them out; the PACS then lists every study and the dates are matched "
    "here). --skip-undated lets the PACS match the dates.",
)
@click.option(
    "--modality",
    default="CR,DX",
    show_default=True,
    help="Comma-separated series modalities to fetch.",
)
def pull(
    url: str | None,
    dimse: str | None,
    study_uid: str | None,
    since: Any,
    until: Any,
    undated: bool,
    modality: str,
) -> None:
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
    query = PullQuery(
        study_uid=study_uid,
        since=since.date() if since else None,
        until=until.date() if until else None,
        modalities=parse_modalities(modality),
        undated=undated,
    )
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("fetching", total=None)

        def on_total(count: int) -> None:
            progress.update(task, total=count)

        def on_instance() -> None:
            progress.advance(task)

        if dimse is not None:
            try:
                peer = DimsePeer.parse(dimse)
                report, recorded_now = pull_dimse(
                    peer, query, settings=get_settings(), on_total=on_total, on_instance=on_instance
                )
            except (ValueError, ConnectionError) as exc:
                raise click.ClickException(str(exc)) from exc
        else:
            assert url is not None
            report = pull_dicomweb(
                url,
                query,
                settings=get_settings(),
                send=send_instances,
                on_total=on_total,
                on_instance=on_instance,
            )
    summary = (
        f"{report.found} instances found: {report.skipped_known} recorded before, "
        f"{report.fetched} {'moved' if dimse else 'fetched'}, "
        f"{len(report.failed)} failed; "
    )
    recorded = report.recorded
    if dimse:
        summary += f"{recorded_now} of the moved recorded by the listener"
    else:
        summary += (
            f"{len(recorded.queued)} queued, {len(recorded.already_known)} already "
            f"known, {len(recorded.uid_conflicts)} uid_conflict, "
            f"{len(recorded.refused)} refused"
        )
    click.echo(summary)
    for line in remote_summary(report.failed)[:20]:
        click.echo(f"  failed {line}", err=True)
    if report.failed:
        sys.exit(4)


@click.command()
@click.option("--host", default=None, help="Address to listen on [default: CXR_HTTP_HOST].")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="TCP port [default: CXR_HTTP_PORT]."
)
def serve(host: str | None, port: int | None) -> None:
    """The HTTP service: the review page (/review, /audit, /admin/users; log in as a
    user made with `cxr-orient user create`), its JSON API (/api/v1, OpenAPI at
    /openapi.json), STOW-RS in (POST /dicom-web/studies, bearer token with the 'stow'
    scope, see `cxr-orient token`), GET /healthz and /readyz. Request bodies, header
    and body deadlines and open connections are bounded (CXR_HTTP_*, CXR_STOW_*);
    behind a reverse proxy list it in CXR_TRUSTED_PROXIES (docs/security.md)."""
    from service.server import serve as run_server

    settings = get_settings()
    run_server(settings, host=host or settings.http.http_host, port=port or settings.http.http_port)


@click.group()
def token() -> None:
    """API tokens for machines (STOW-RS senders, review/audit API scripts); only their
    SHA-256 is stored."""


@token.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=("stow",),
    show_default=True,
    help="What the token may do (repeatable): stow, review, audit.",
)
def token_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create token NAME and print it, once: it cannot be shown again."""
    from cxr_orient.tokens import TokenError, create_token
    from db.session import session_scope

    try:
        with session_scope() as session:
            secret = create_token(session, name=name, scopes=list(scopes))
    except TokenError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"token {name} ({', '.join(sorted(set(scopes)))}); it is shown only now:", err=True)
    click.echo(secret)


@token.command("list")
def token_list() -> None:
    """Every token: name, scopes, created, last used, revoked (never the token)."""
    from cxr_orient.tokens import list_tokens
    from db.session import session_scope

    with session_scope() as session:
        for info in list_tokens(session):
            click.echo(
                f"{info.name:32s} {','.join(info.scopes):12s} "
                f"created {when(info.created_at)}  last used {when(info.last_used_at)}"
                f"  {'REVOKED ' + when(info.revoked_at) if info.revoked_at else ''}"
            )


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


@click.group()
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
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Most rows to send (default CXR_OUTBOX_BATCH).",
)
def outbox_deliver(limit: int | None) -> None:
    """Send due rows now, from this process (what the deliver_outbox task does)."""
    from cxr_orient.dicomnet.delivery import deliver_due

    counts = deliver_due(get_settings(), limit)
    click.echo(
        f"{counts.claimed} claimed: {counts.sent} sent, {counts.retrying} retrying, "
        f"{counts.failed} failed"
    )
