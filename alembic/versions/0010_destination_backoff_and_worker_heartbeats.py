"""outbox destinations (a backoff per destination, not per row) and worker heartbeats

``outbox_destinations`` holds each result destination's consecutive failures, when it
may be tried again, the cause of its last failure and since when it fails. While rows
took turns, no row's attempt count grew and a dead destination was retried every few
seconds for ever; now its failures grow one shared, capped wait and a success resets it.

``worker_heartbeats`` holds each running worker's pool size and how many of its pool
processes have their model loaded, renewed by the worker's main process: ``/readyz``
says whether any worker can classify now (celery's "ready" comes before the models).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 22:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_destinations",
        sa.Column("destination", sa.String(length=512), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("destination", name=op.f("pk_outbox_destinations")),
    )
    op.create_table(
        "worker_heartbeats",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("pool_processes", sa.Integer(), nullable=False),
        sa.Column("ready_processes", sa.Integer(), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_worker_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    op.drop_table("outbox_destinations")
