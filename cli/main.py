"""The ``cxr-orient`` group: logging, the database error hint, and every verb group
joined in one place (celery's ``celery/bin/celery.py``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from cli.acceptance import acceptance
from cli.corrections import corrections
from cli.db import db
from cli.demo import demo
from cli.hints import DATABASE_HINT, DEFAULT_DATABASE_HINT
from cli.ingest import enqueue, reclassify, requeue
from cli.models import (
    evaluate,
    label,
    models,
    promote,
    register,
    retrain,
    rollback,
    train,
)
from cli.node import listen, outbox, pull, serve, token
from cli.results import results, status
from cli.users import user
from cxr_orient.settings import get_settings, redact_url


def setup_logging(verbose: bool) -> None:
    from cxr_orient.logs import cap_third_party_loggers

    level = "DEBUG" if verbose else get_settings().logs.log_level
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # No UIDs from highdicom, pynetdicom... (docs/security.md)
    cap_third_party_loggers(debugging=verbose)
    if not verbose:  # migration chatter and kombu's filesystem-transport notice
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)


class DatabaseErrorGroup(click.Group):
    """Turns a database that cannot be reached or is not migrated into one clear line
    (with the URL's password hidden) instead of a traceback; the hint is the failing
    command's (``ctx.meta[DATABASE_HINT]``)."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        try:
            return super().invoke(ctx)
        except (OperationalError, ProgrammingError) as exc:
            url = redact_url(get_settings().storage.effective_database_url)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            hint = ctx.meta.get(DATABASE_HINT, DEFAULT_DATABASE_HINT)
            raise click.ClickException(f"database {url}: {reason} ({hint})") from exc


@click.group(cls=DatabaseErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.version_option(package_name="cxr-orient")
def main(verbose: bool) -> None:
    """Frontal vs lateral classification of chest radiographs, recorded in SQL.

    Configuration comes from CXR_* environment variables (see docs/configuration.md);
    with none set, an SQLite file and a filesystem broker under ./cxr-orient-data are used.
    """
    setup_logging(verbose)


for command in (
    db,
    enqueue,
    requeue,
    reclassify,  # cli.db, cli.ingest
    listen,
    pull,
    serve,
    outbox,
    token,  # cli.node
    corrections,  # cli.corrections
    results,
    status,  # cli.results
    train,
    evaluate,
    register,
    promote,
    rollback,
    models,
    retrain,
    label,
    user,
    demo,
    acceptance,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
