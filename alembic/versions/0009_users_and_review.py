"""users and review: people who log in to the review page, failed logins (rate limit),
and indexes for the review queue

``users``: username, argon2id hash (NULL: single sign-on only), role (reviewer, auditor,
admin), a session epoch (bumped on password change or disable), disabled_at.
``login_failures``: one row per failed login, read for the per-username-and-address limit.
Partial indexes on ``predictions`` walk flagged answers (``needs_review``) and header
disagreements in instance order; ``created_at`` for the rates over time. ``labels.label`` may
now also say ``not_chest`` (a plain string column: no constraint to change).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column(
            "role",
            sa.Enum("reviewer", "auditor", "admin", name="user_role", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session_epoch", sa.Integer(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    op.create_index(
        "ix_login_failures_username_address",
        "login_failures",
        ["username", "address", "created_at"],
    )
    op.create_index(
        "ix_predictions_review_queue",
        "predictions",
        ["instance_id"],
        postgresql_where=sa.text("needs_review"),
        sqlite_where=sa.text("needs_review"),
    )
    op.create_index(
        "ix_predictions_header_disagrees",
        "predictions",
        ["instance_id"],
        postgresql_where=sa.text("header_agrees = false"),
        sqlite_where=sa.text("header_agrees = 0"),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_predictions_created_at", table_name="predictions")
    op.drop_index("ix_predictions_header_disagrees", table_name="predictions")
    op.drop_index("ix_predictions_review_queue", table_name="predictions")
    op.drop_index("ix_login_failures_username_address", table_name="login_failures")
    op.drop_table("login_failures")
    op.drop_table("users")
