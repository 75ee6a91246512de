"""Add to backup_versions: protected (kept outside of rotation and refused to deletion
until unprotected), signer_fingerprint and signature (the uploader's detached OpenPGP
signature, ASCII-armoured, and the fingerprint of the key that made it).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 11:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | tuple[str, ...] | None = "0007"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backup_versions") as batch_op:
        batch_op.add_column(
            sa.Column("protected", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("signer_fingerprint", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("signature", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backup_versions") as batch_op:
        batch_op.drop_column("signature")
        batch_op.drop_column("signer_fingerprint")
        batch_op.drop_column("protected")
