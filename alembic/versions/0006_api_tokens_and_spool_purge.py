"""api tokens and spool purge

``api_tokens``: bearer tokens for machines (STOW-RS senders), stored as SHA-256 only,
with scopes, last use and revocation. ``instances.file_purged_at``: when the spool purge
deleted the instance's received file (CXR_SPOOL_KEEP_DAYS).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )
    # Plain ADD COLUMN (no table rebuild on SQLite): nullable, no default.
    op.add_column(
        "instances", sa.Column("file_purged_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("file_purged_at")
    op.drop_table("api_tokens")
