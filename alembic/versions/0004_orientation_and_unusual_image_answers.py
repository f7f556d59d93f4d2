"""orientation and unusual-image answers

Per prediction: how the image is stored (``rotation``, ``mirrored``), its unusual-image
score, and why it needs review (``review_reason``). All nullable: answers of models
without those heads have none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild on SQLite): predictions has children-free rows
    # but is referenced by nothing, and nullable columns need no default.
    op.add_column("predictions", sa.Column("review_reason", sa.String(length=64), nullable=True))
    op.add_column("predictions", sa.Column("rotation", sa.SmallInteger(), nullable=True))
    op.add_column("predictions", sa.Column("mirrored", sa.Boolean(), nullable=True))
    op.add_column("predictions", sa.Column("unusual_score", sa.Float(), nullable=True))
    # Low-confidence answers recorded before this revision said needs_review without why.
    op.execute("UPDATE predictions SET review_reason = 'low_confidence' WHERE needs_review")


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("unusual_score")
        batch.drop_column("mirrored")
        batch.drop_column("rotation")
        batch.drop_column("review_reason")
