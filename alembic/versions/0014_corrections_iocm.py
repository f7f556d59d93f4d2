"""corrections: corrected images and rejection notes back to PACS (IHE IOCM)

``corrections`` is the audit of every correction sent (what was wrong, the view the
replacement states, the UIDs of the replacement and the rejection note, who or which
rule decided and when) and of every reversal (a row naming the correction it undoes).
The outbox carries their delivery: ``outbox.correction_id`` beside ``prediction_id``
(exactly one of the two set; ``prediction_id`` becomes nullable), unique per
destination like the reports.

Revision ID: 0014_corrections
Revises: 0013_trust_projection
Create Date: 2026-12-07 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014_corrections"
down_revision: str | None = "0013_trust_projection"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "action",
            sa.Enum("correct", "reverse", name="correction_action", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("reverses_id", sa.Integer(), nullable=True),
        sa.Column("faults", sa.String(length=128), nullable=False),
        sa.Column("rotation", sa.SmallInteger(), nullable=False),
        sa.Column("mirrored", sa.Boolean(), nullable=False),
        sa.Column("view", sa.String(length=2), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("original_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("replacement_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("rejection_note_uid", sa.String(length=64), nullable=False),
        sa.Column("decided_via", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            ondelete="RESTRICT",
            name=op.f("fk_corrections_instance_id_instances"),
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            ondelete="RESTRICT",
            name=op.f("fk_corrections_prediction_id_predictions"),
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["corrections.id"],
            ondelete="RESTRICT",
            name=op.f("fk_corrections_reverses_id_corrections"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corrections")),
        sa.UniqueConstraint("rejection_note_uid", name=op.f("uq_corrections_rejection_note_uid")),
        sa.UniqueConstraint("reverses_id", name=op.f("uq_corrections_reverses_id")),
    )
    op.create_index(op.f("ix_corrections_instance_id"), "corrections", ["instance_id"])
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("prediction_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("correction_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_outbox_correction_id_corrections"),
            "corrections",
            ["correction_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch.create_unique_constraint(
            op.f("uq_outbox_correction_id"), ["correction_id", "destination"]
        )
        batch.create_check_constraint(
            "one_source", "(prediction_id IS NULL) != (correction_id IS NULL)"
        )
        batch.create_index(op.f("ix_outbox_correction_id"), ["correction_id"])


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE correction_id IS NOT NULL")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index(op.f("ix_outbox_correction_id"))
        batch.drop_constraint(op.f("ck_outbox_one_source"), type_="check")
        batch.drop_constraint(op.f("uq_outbox_correction_id"), type_="unique")
        batch.drop_constraint(op.f("fk_outbox_correction_id_corrections"), type_="foreignkey")
        batch.drop_column("correction_id")
        batch.alter_column("prediction_id", existing_type=sa.Integer(), nullable=False)
    op.drop_index(op.f("ix_corrections_instance_id"), table_name="corrections")
    op.drop_table("corrections")
