"""uid_conflicts.file_purged_at: when the spool purge deleted the file of a UID conflict
that no instance refers to (the new file kept out under keep_first, the old one
replaced under replace), so that those received files leave the spool like the rest.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 22:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "uid_conflicts", sa.Column("file_purged_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("uid_conflicts") as batch:
        batch.drop_column("file_purged_at")
