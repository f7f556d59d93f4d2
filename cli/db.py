"""``cxr-orient db``: migrations (Alembic, through ``db.migrate``)."""

from __future__ import annotations

import click

from cli.hints import DATABASE_HINT, MIGRATE_DATABASE_HINT
from cxr_orient.settings import get_settings, redact_url


@click.group()
def db() -> None:
    """Database migrations (Alembic)."""
    click.get_current_context().meta[DATABASE_HINT] = MIGRATE_DATABASE_HINT


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from db.migrate import upgrade

    upgrade(revision=revision)
    url = get_settings().storage.effective_database_url
    click.echo(f"database at {redact_url(url)} is at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes every table)."""
    from db.migrate import downgrade

    downgrade(revision=revision)
    click.echo(f"database downgraded to {revision}")
