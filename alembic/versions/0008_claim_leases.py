"""claim leases: a claim on an instance is a lease its worker renews while it works

``instances.lease_expires_at`` (when the claim lapses unless renewed), ``claim_token`` (one
per claimed batch: results are recorded only by the holder of the current claim) and
``claimed_by`` (the worker node and pool process that holds or last held the claim). An
index on (status, lease_expires_at) serves the reaper's scan for lapsed leases.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 13:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(length=255), nullable=True))
    op.create_index(
        "ix_instances_status_lease", "instances", ["status", "lease_expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_instances_status_lease", table_name="instances")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("claimed_by")
        batch.drop_column("claim_token")
        batch.drop_column("lease_expires_at")
