"""Read-only access to a reference deployment's database: its ``uploaded_versions`` table.

The reference project (Go, GORM) declares the table through its ``UploadedVersion`` model
(``server-go/storage/entity.go``, later ``pkg/storage``; created by GORM's ``AutoMigrate``)
with GORM's default names: ``id``, ``collection_id``, ``version_number``, ``filename``
(the file name only; the object key is ``<collection_id>/<filename>``), ``filesize``
(bytes), ``uploaded_by_session_id``, ``uploader``, ``created_at``, ``updated_at`` and
``deleted_at``. Rotation deletes rows softly: ``deleted_at`` is set and GORM leaves such
rows out of every query, so they are ignored here too.

Nothing is ever written to that database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Text, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.repositories import transaction
from backup_repository.domain.importing import ReferenceRow

REFERENCE_TABLE: Final = "uploaded_versions"

# Its own MetaData: this table is not ours, no migration may ever create it.
_metadata = MetaData()
uploaded_versions: Final = Table(
    REFERENCE_TABLE,
    _metadata,
    Column("id", Text, primary_key=True),
    Column("collection_id", Text),
    Column("version_number", BigInteger),
    Column("filename", Text),
    Column("filesize", BigInteger),
    Column("uploaded_by_session_id", Text),
    Column("uploader", Text),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
    Column("deleted_at", DateTime(timezone=True)),
)


class ReferenceSchemaError(Exception):
    """The database does not hold the reference's ``uploaded_versions`` table."""


class SqlReferenceVersions:
    """Implements :class:`~backup_repository.services.importer.ReferenceVersions`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def check(self) -> None:
        """Raise ReferenceSchemaError unless the table and its columns are there."""

        def columns(connection: Any) -> set[str] | None:
            inspector = inspect(connection)
            if not inspector.has_table(REFERENCE_TABLE):
                return None
            return {str(c["name"]) for c in inspector.get_columns(REFERENCE_TABLE)}

        async with transaction(self._engine) as connection:
            found = await connection.run_sync(columns)
        if found is None:
            raise ReferenceSchemaError(
                f"the reference database has no {REFERENCE_TABLE} table (is it the database "
                f"of a Backup Repository v4 deployment?)"
            )
        missing = sorted({c.name for c in uploaded_versions.columns} - found)
        if missing:
            raise ReferenceSchemaError(
                f"the reference database's {REFERENCE_TABLE} table lacks the column(s) "
                f"{', '.join(missing)}"
            )

    async def counts(self) -> dict[str, int]:
        """Live rows per collection id."""
        statement = (
            select(uploaded_versions.c.collection_id, func.count())
            .where(uploaded_versions.c.deleted_at.is_(None))
            .group_by(uploaded_versions.c.collection_id)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    async def versions(self, collection_id: str) -> list[ReferenceRow]:
        """The live rows of a collection, by version number."""
        table = uploaded_versions.c
        statement = (
            select(
                table.version_number,
                table.filename,
                table.filesize,
                table.created_at,
                table.updated_at,
                table.uploader,
                table.uploaded_by_session_id,
            )
            .where(table.collection_id == collection_id, table.deleted_at.is_(None))
            .order_by(table.version_number, table.filename)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return [
            ReferenceRow(
                number=int(r[0] or 0),
                filename=str(r[1] or ""),
                size=None if r[2] is None else int(r[2]),
                created_at=_aware(r[3]),
                updated_at=_aware(r[4]),
                uploader=str(r[5] or ""),
                session_id=str(r[6] or ""),
            )
            for r in rows
        ]


def _aware(value: object) -> datetime | None:
    """A timestamp as UTC; one without a zone (``timestamp without time zone``, SQLite)
    is taken to be UTC. Go's zero time (year 1) means unknown."""
    if not isinstance(value, datetime) or value.year <= 1:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
