"""Create version_checks (the latest integrity check of each version, `verify`) and
maintenance_leases (one replica at a time runs the scheduled check).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 20:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | tuple[str, ...] | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "version_checks",
        sa.Column("version_id", sa.String(length=36), nullable=False),
        sa.Column("collection_id", sa.String(length=255), nullable=False),
        sa.Column("version_number", sa.Integer(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=1024), nullable=False),
        sa.Column("actual_size", sa.BigInteger(), nullable=True),
        sa.Column("actual_sha256", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["backup_versions.id"],
            name=op.f("fk_version_checks_version_id_backup_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_version_checks")),
    )
    with op.batch_alter_table("version_checks") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_version_checks_collection_id"), ["collection_id"], unique=False
        )
    op.create_table(
        "maintenance_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_leases")),
    )


def downgrade() -> None:
    op.drop_table("maintenance_leases")
    with op.batch_alter_table("version_checks") as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_checks_collection_id"))
    op.drop_table("version_checks")
