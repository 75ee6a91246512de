"""Create audit_events, the audit log (issue: operations).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 20:15:00
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0003"
down_revision: str | tuple[str, ...] | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
