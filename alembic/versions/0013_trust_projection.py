"""PA/AP: a frontal answer's projection and what the header says about it; a
reviewer's projection on a frontal label.

Per prediction (all nullable: answers of models without the heads have none):
``projection`` ("PA", "AP", or NULL when the model abstains below its threshold, for a
lateral, and without a PA/AP head), ``p_ap`` (the calibrated probability of AP),
``projection_agrees`` (against the header's ViewPosition when it names PA or AP) and
``p_not_chest`` (the chest-or-not head's probability). Per label: ``projection``, the
PA or AP a reviewer gave a frontal (kept for retraining the PA/AP head).

Revision ID: 0013_trust_projection
Revises: 0012_acceptance
Create Date: 2026-12-07 00:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013_trust_projection"
down_revision: str | None = "0012_acceptance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default): no table rebuild on SQLite.
    op.add_column("predictions", sa.Column("projection", sa.String(length=2), nullable=True))
    op.add_column("predictions", sa.Column("p_ap", sa.Float(), nullable=True))
    op.add_column("predictions", sa.Column("projection_agrees", sa.Boolean(), nullable=True))
    op.add_column("predictions", sa.Column("p_not_chest", sa.Float(), nullable=True))
    op.add_column("labels", sa.Column("projection", sa.String(length=2), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("projection")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("p_not_chest")
        batch.drop_column("projection_agrees")
        batch.drop_column("p_ap")
        batch.drop_column("projection")
