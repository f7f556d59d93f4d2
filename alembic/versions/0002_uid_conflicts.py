"""uid conflicts (same SOPInstanceUID, other bytes)

A ``uid_conflicts`` table, and ``predictions.file_sha256`` (the bytes each answer was
made on), with the one-answer rule widened to one answer per model version per file
version: unique ``(instance_id, model_version_id, file_sha256)``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 18:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The naming convention names a unique constraint after its first column, so the old
# (instance_id, model_version_id) and the new three-column one share this name.
PREDICTIONS_UNIQUE = "uq_predictions_instance_id"


def _status_enum() -> sa.Enum:
    return sa.Enum(
        "queued",
        "processing",
        "done",
        "failed",
        name="instance_status",
        native_enum=False,
        length=16,
    )


def upgrade() -> None:
    op.create_table(
        "uid_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_matches", sa.Boolean(), nullable=False),
        sa.Column("known_file_path", sa.Text(), nullable=False),
        sa.Column("known_file_sha256", sa.String(length=64), nullable=False),
        sa.Column("known_file_size", sa.BigInteger(), nullable=False),
        sa.Column("known_status", _status_enum(), nullable=False),
        sa.Column("new_file_path", sa.Text(), nullable=False),
        sa.Column("new_file_sha256", sa.String(length=64), nullable=False),
        sa.Column("new_file_size", sa.BigInteger(), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column(
            "action",
            sa.Enum(
                "kept_first", "replaced", name="uid_conflict_action", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_uid_conflicts_instance_id_instances"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uid_conflicts")),
    )
    with op.batch_alter_table("uid_conflicts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_uid_conflicts_instance_id"), ["instance_id"], unique=False
        )

    # Every answer so far was made on its instance's one and only file.
    op.add_column("predictions", sa.Column("file_sha256", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE predictions SET file_sha256 = "
        "(SELECT i.file_sha256 FROM instances i WHERE i.id = predictions.instance_id)"
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.alter_column("file_sha256", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_constraint(PREDICTIONS_UNIQUE, type_="unique")
        batch_op.create_unique_constraint(
            PREDICTIONS_UNIQUE, ["instance_id", "model_version_id", "file_sha256"]
        )


def downgrade() -> None:
    # Two answers by one model version on two versions of a file cannot be kept under
    # the old rule; refuse rather than delete audit rows.
    clashes = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM (SELECT instance_id, model_version_id FROM predictions "
                "GROUP BY instance_id, model_version_id HAVING count(*) > 1) AS twice"
            )
        )
        .scalar_one()
    )
    if clashes:
        raise RuntimeError(
            f"cannot downgrade below 0002: {clashes} (instance, model version) pairs have "
            "answers on more than one version of their file (replaced by a uid conflict); "
            "export predictions and delete the older answers first"
        )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_constraint(PREDICTIONS_UNIQUE, type_="unique")
        batch_op.create_unique_constraint(PREDICTIONS_UNIQUE, ["instance_id", "model_version_id"])
        batch_op.drop_column("file_sha256")

    with op.batch_alter_table("uid_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uid_conflicts_instance_id"))
    op.drop_table("uid_conflicts")
