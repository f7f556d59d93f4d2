"""acceptance: the device that made each film (``instances.manufacturer``,
``instances.manufacturer_model``, from the header at ingest), and acceptance plans with
their items (``cxr-orient acceptance plan``: a stratified sample of a site's answered
films that reviewers label in a queue of its own; ``acceptance report`` reads it back).

Revision ID: 0012_acceptance
Revises: 0011
Create Date: 2026-12-07 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012_acceptance"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("manufacturer", sa.String(length=64), nullable=True))
    op.add_column("instances", sa.Column("manufacturer_model", sa.String(length=64), nullable=True))
    op.create_table(
        "acceptance_plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("population", sa.Integer(), nullable=False),
        sa.Column("design", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acceptance_plans")),
        sa.UniqueConstraint("name", name=op.f("uq_acceptance_plans_name")),
    )
    op.create_table(
        "acceptance_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("core", sa.Boolean(), nullable=False),
        sa.Column("strata", sa.JSON(), nullable=False),
        sa.Column("label_id", sa.Integer(), nullable=True),
        sa.Column("projection", sa.String(length=8), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["acceptance_plans.id"],
            ondelete="RESTRICT",
            name=op.f("fk_acceptance_items_plan_id_acceptance_plans"),
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            ondelete="RESTRICT",
            name=op.f("fk_acceptance_items_instance_id_instances"),
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            ondelete="RESTRICT",
            name=op.f("fk_acceptance_items_prediction_id_predictions"),
        ),
        sa.ForeignKeyConstraint(
            ["label_id"],
            ["labels.id"],
            ondelete="RESTRICT",
            name=op.f("fk_acceptance_items_label_id_labels"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acceptance_items")),
        sa.UniqueConstraint("plan_id", "instance_id", name=op.f("uq_acceptance_items_plan_id")),
    )


def downgrade() -> None:
    op.drop_table("acceptance_items")
    op.drop_table("acceptance_plans")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("manufacturer_model")
        batch.drop_column("manufacturer")
