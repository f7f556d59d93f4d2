"""reclassify runs

``reclassify_runs``: one row per ``cxr-orient reclassify`` (who, when, filters, target
model version, the cursor of its id-ordered walk, counts), so an interrupted run resumes.
``instances.target_model_version_id``: the reclassify marker, the version that must
answer queued work (NULL: the active model).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 18:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reclassify_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("include_failed", sa.Boolean(), nullable=False),
        sa.Column("cursor_instance_id", sa.Integer(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_reclassify_runs_model_version_id_model_versions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reclassify_runs")),
    )
    with op.batch_alter_table("reclassify_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reclassify_runs_model_version_id"), ["model_version_id"], unique=False
        )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target_model_version_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_instances_target_model_version_id_model_versions"),
            "model_versions",
            ["target_model_version_id"],
            ["id"],
            ondelete="RESTRICT",
        )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_instances_target_model_version_id_model_versions"), type_="foreignkey"
        )
        batch_op.drop_column("target_model_version_id")
    with op.batch_alter_table("reclassify_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reclassify_runs_model_version_id"))
    op.drop_table("reclassify_runs")
