"""Create granted_accesses (issued tokens, a.k.a. sessions).

Revision ID: 0001
Revises:
Create Date: 2025-11-27 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | tuple[str, ...] | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "granted_accesses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("access_key_name", sa.String(length=255), server_default="", nullable=False),
        sa.Column("requester_ip", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deactivated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_granted_accesses")),
    )
    with op.batch_alter_table("granted_accesses") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_granted_accesses_user_name"), ["user_name"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("granted_accesses") as batch_op:
        batch_op.drop_index(batch_op.f("ix_granted_accesses_user_name"))
    op.drop_table("granted_accesses")
