"""What to suggest when the database fails, per command (``cli.main`` shows it)."""

#: ``ctx.meta`` key (shared by every nested context): what to suggest when the database
#: fails; a command sets its own so that it never advises running itself.
DATABASE_HINT = "cxr_orient.database_hint"
DEFAULT_DATABASE_HINT = "is it running, and has `cxr-orient db upgrade` been run?"
MIGRATE_DATABASE_HINT = (
    "is it running, is the URL right, and for SQLite, can its folder be written?"
)
