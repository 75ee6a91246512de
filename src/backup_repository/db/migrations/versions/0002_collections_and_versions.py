"""Create collection_states (version counter, upload lock) and backup_versions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | tuple[str, ...] | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "collection_states",
        sa.Column("collection_id", sa.String(length=255), nullable=False),
        sa.Column("last_version_number", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lock_owner", sa.String(length=64), nullable=True),
        sa.Column("lock_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("collection_id", name=op.f("pk_collection_states")),
    )
    op.create_table(
        "backup_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("collection_id", sa.String(length=255), nullable=False),
        sa.Column("version_number", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=512), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("filesize", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uploaded_by_session_id", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_versions")),
        sa.UniqueConstraint(
            "collection_id", "version_number", name=op.f("uq_backup_versions_collection_id")
        ),
    )
    with op.batch_alter_table("backup_versions") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_backup_versions_collection_id"), ["collection_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("backup_versions") as batch_op:
        batch_op.drop_index(batch_op.f("ix_backup_versions_collection_id"))
    op.drop_table("backup_versions")
    op.drop_table("collection_states")
