"""The web console's batched reads (services/console.py): the live versions and the latest
integrity checks of every collection the dashboard shows, each in one query however many
collections there are, with only the columns it needs (converting timestamps costs most
of the time of reading 10,000 rows)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import String, and_, cast, func, literal, select

from backup_repository.db.engine import AsyncEngine
from backup_repository.db.integrity import _CHECK_COLUMNS, _to_check
from backup_repository.db.repositories import transaction
from backup_repository.db.tables import backup_versions, version_checks
from backup_repository.domain.integrity import CheckStatus
from backup_repository.services.ports import CheckMark, VersionCheck, VersionSize

_LIVE: Final = backup_versions.c.deleted_at.is_(None)


class SqlConsoleRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _rows(self, statement: Any) -> Sequence[Any]:
        async with transaction(self._engine) as connection:
            return (await connection.execute(statement)).all()

    async def live_sizes_of(self, collection_ids: Sequence[str]) -> dict[str, list[VersionSize]]:
        if not collection_ids:
            return {}
        # One row per collection, "number:size,number:size,...": 10,000 rows of numbers cost
        # the database driver and SQLAlchemy far more than splitting the text.
        pairs = func.aggregate_strings(
            cast(backup_versions.c.version_number, String)
            + literal(":", String)
            + cast(backup_versions.c.filesize, String),
            ",",
        )
        statement = (
            select(backup_versions.c.collection_id, pairs)
            .where(backup_versions.c.collection_id.in_(list(collection_ids)), _LIVE)
            .group_by(backup_versions.c.collection_id)
        )
        found: dict[str, list[VersionSize]] = {}
        for collection_id, text in await self._rows(statement):
            versions = []
            for pair in str(text).split(","):
                number, _, size = pair.partition(":")
                versions.append(VersionSize(int(number), int(size)))
            versions.sort()
            found[str(collection_id)] = versions
        return found

    async def newest_uploads_of(self, collection_ids: Sequence[str]) -> dict[str, datetime]:
        if not collection_ids:
            return {}
        newest = (
            select(
                backup_versions.c.collection_id.label("collection_id"),
                func.max(backup_versions.c.version_number).label("number"),
            )
            .where(backup_versions.c.collection_id.in_(list(collection_ids)), _LIVE)
            .group_by(backup_versions.c.collection_id)
            .subquery()
        )
        statement = select(backup_versions.c.collection_id, backup_versions.c.created_at).join(
            newest,
            and_(
                backup_versions.c.collection_id == newest.c.collection_id,
                backup_versions.c.version_number == newest.c.number,
            ),
        )
        return {str(row[0]): row[1] for row in await self._rows(statement)}

    def _checks(self, collection_ids: Sequence[str], *columns: Any) -> Any:
        return (
            select(*columns)
            .join(backup_versions, backup_versions.c.id == version_checks.c.version_id)
            .where(_LIVE, version_checks.c.collection_id.in_(list(collection_ids)))
        )

    async def check_marks_of(self, collection_ids: Sequence[str]) -> dict[str, list[CheckMark]]:
        if not collection_ids:
            return {}
        statement = (
            self._checks(
                collection_ids,
                version_checks.c.collection_id,
                version_checks.c.version_id,
                version_checks.c.version_number,
                version_checks.c.status,
                version_checks.c.detail,
            )
            .where(version_checks.c.status != CheckStatus.OK.value)
            .order_by(version_checks.c.collection_id, version_checks.c.version_number)
        )
        found: dict[str, list[CheckMark]] = {}
        for collection_id, version_id, number, status, detail in await self._rows(statement):
            found.setdefault(collection_id, []).append(
                CheckMark(version_id, number, status, detail)
            )
        return found

    async def check_tallies_of(
        self, collection_ids: Sequence[str]
    ) -> dict[str, tuple[int, datetime]]:
        if not collection_ids:
            return {}
        statement = self._checks(
            collection_ids,
            version_checks.c.collection_id,
            func.count(version_checks.c.version_id),
            func.max(version_checks.c.checked_at),
        ).group_by(version_checks.c.collection_id)
        found: dict[str, tuple[int, datetime]] = {}
        for collection_id, count, checked_at in await self._rows(statement):
            if checked_at is not None:
                found[str(collection_id)] = (int(count), _aware(checked_at))
        return found

    async def latest_checks_of(
        self, collection_ids: Sequence[str]
    ) -> dict[str, list[VersionCheck]]:
        if not collection_ids:
            return {}
        statement = self._checks(collection_ids, *_CHECK_COLUMNS).order_by(
            version_checks.c.collection_id, version_checks.c.version_number
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        found: dict[str, list[VersionCheck]] = {}
        for row in rows:
            check = _to_check(row)
            found.setdefault(check.collection_id, []).append(check)
        return found


def _aware(value: Any) -> datetime:
    """An aggregate's timestamp: MAX() loses the column's type on SQLite (text comes back)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value)!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
