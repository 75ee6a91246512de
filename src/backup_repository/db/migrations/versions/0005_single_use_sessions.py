"""Single-use upload tokens: a session may be bound to one upload.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 20:15:00
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0005"
down_revision: str | tuple[str, ...] | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
