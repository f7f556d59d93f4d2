"""study completeness, study-level answers, out-of-scope instances

``studies.last_arrival_at``: when an instance held for the study's quiet period last
arrived (``CXR_STUDY_QUIET_S``). ``study_answers``: the study-level answer, append-only,
and the view ``current_study_answers`` (the newest row per study, with its
StudyInstanceUID) for auditors. The instance statuses ``waiting`` and ``out_of_scope``
need no DDL (statuses are plain strings of at most 16 characters); a downgrade turns
them into ``queued`` and ``failed``, which the earlier code knows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same text on SQLite and PostgreSQL: a correlated MAX, no window function.
CURRENT_STUDY_ANSWERS = """
CREATE VIEW current_study_answers AS
SELECT s.study_instance_uid, a.*
FROM study_answers a
JOIN studies s ON s.id = a.study_id
WHERE a.sequence = (SELECT MAX(b.sequence) FROM study_answers b WHERE b.study_id = a.study_id)
"""


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default): no table rebuild of studies on SQLite,
    # whose children (instances) would make a rebuild fail its foreign keys.
    op.add_column(
        "studies", sa.Column("last_arrival_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "study_answers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("frontal_count", sa.Integer(), nullable=False),
        sa.Column("lateral_count", sa.Integer(), nullable=False),
        sa.Column("needs_review_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("out_of_scope_count", sa.Integer(), nullable=False),
        sa.Column("header_agrees_count", sa.Integer(), nullable=False),
        sa.Column("header_disagrees_count", sa.Integer(), nullable=False),
        sa.Column("no_frontal", sa.Boolean(), nullable=False),
        sa.Column("no_lateral", sa.Boolean(), nullable=False),
        sa.Column("header_disagreement", sa.Boolean(), nullable=False),
        sa.Column("flags", sa.String(length=128), nullable=True),
        sa.Column("model_versions", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_study_answers_study_id_studies"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_answers")),
        sa.UniqueConstraint("study_id", "sequence", name=op.f("uq_study_answers_study_id")),
    )
    with op.batch_alter_table("study_answers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_answers_study_id"), ["study_id"], unique=False)
    op.execute(CURRENT_STUDY_ANSWERS)


def downgrade() -> None:
    op.execute("DROP VIEW current_study_answers")
    with op.batch_alter_table("study_answers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_answers_study_id"))
    op.drop_table("study_answers")
    op.execute("UPDATE instances SET status = 'queued' WHERE status = 'waiting'")
    op.execute("UPDATE instances SET status = 'failed' WHERE status = 'out_of_scope'")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("last_arrival_at")
