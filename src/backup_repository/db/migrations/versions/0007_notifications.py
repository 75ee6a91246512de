"""Create notification_states (the last judged state of each condition of each collection)
and notification_outbox (events waiting for delivery to a channel, and their outcome).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | tuple[str, ...] | None = "0006"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "notification_states",
        sa.Column("collection_id", sa.String(length=255), nullable=False),
        sa.Column("condition", sa.String(length=32), nullable=False),
        sa.Column("failing", sa.Boolean(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_announced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_id", sa.String(length=36), nullable=True),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("collection_id", "condition", name=op.f("pk_notification_states")),
    )
    op.create_table(
        "notification_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=255), nullable=False),
        sa.Column("collection_id", sa.String(length=255), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        sa.UniqueConstraint("event_id", "channel", name=op.f("uq_notification_outbox_event_id")),
    )
    with op.batch_alter_table("notification_outbox") as batch_op:
        batch_op.create_index(
            "ix_notification_outbox_status_next_attempt_at",
            ["status", "next_attempt_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("notification_outbox") as batch_op:
        batch_op.drop_index("ix_notification_outbox_status_next_attempt_at")
    op.drop_table("notification_outbox")
    op.drop_table("notification_states")
