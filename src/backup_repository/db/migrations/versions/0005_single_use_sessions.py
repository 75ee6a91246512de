"""Single-use upload tokens: a session may be bound to one upload.

Adds ``granted_accesses.single_use_collection``: NULL for ordinary tokens, the collection's
name for a token valid for one upload there (deactivated when that upload is recorded).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 20:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | tuple[str, ...] | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("granted_accesses") as batch_op:
        batch_op.add_column(
            sa.Column("single_use_collection", sa.String(length=255), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("granted_accesses") as batch_op:
        batch_op.drop_column("single_use_collection")
