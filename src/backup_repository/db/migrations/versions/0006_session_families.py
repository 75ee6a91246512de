"""Token families and the scope of each session; indexes for the purge of old sessions.

Adds to ``granted_accesses``:

- ``family_id``: the session id of the login a refreshed token descends from (its
  family); NULL for a login, and for every row written before this revision: such a row is
  a family of its own. It sets the limit no refresh may pass (the login's expiry).
- ``parent_id``: the session id of the token a refreshed token was refreshed from; NULL for
  a login and for older rows. Revoking a session revokes every session that descends from
  it through ``parent_id``.
- ``operations_scope``: the scope the token carries, as JSON (NULL: not scoped, or not
  known for rows written before this revision, which are then treated as not scoped).

Indexes ``family_id`` (the family's login), ``parent_id`` (the sessions refreshed from one)
and ``expires_at`` (purging old sessions).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | tuple[str, ...] | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("granted_accesses") as batch_op:
        batch_op.add_column(sa.Column("family_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("parent_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("operations_scope", sa.Text(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_granted_accesses_family_id"), ["family_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_granted_accesses_parent_id"), ["parent_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_granted_accesses_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("granted_accesses") as batch_op:
        batch_op.drop_index(batch_op.f("ix_granted_accesses_expires_at"))
        batch_op.drop_index(batch_op.f("ix_granted_accesses_parent_id"))
        batch_op.drop_index(batch_op.f("ix_granted_accesses_family_id"))
        batch_op.drop_column("operations_scope")
        batch_op.drop_column("parent_id")
        batch_op.drop_column("family_id")
