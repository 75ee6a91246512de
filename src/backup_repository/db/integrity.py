"""Integrity results (``version_checks``: the latest check of each version) and the named
leases of ``maintenance_leases`` that keep replicas from running the scheduled check at
the same time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import RowMapping, Table, case, func, or_, select, update

from backup_repository.db.dialects import insert_on_conflict
from backup_repository.db.engine import AsyncConnection, AsyncEngine
from backup_repository.db.owners import server_owner
from backup_repository.db.repositories import transaction
from backup_repository.db.tables import backup_versions, maintenance_leases, version_checks
from backup_repository.db.versions import _VERSION_COLUMNS, _to_record
from backup_repository.domain.integrity import CheckStatus
from backup_repository.services.ports import VersionCheck, VersionRecord

_CHECK_COLUMNS: Final = (
    version_checks.c.version_id,
    version_checks.c.collection_id,
    version_checks.c.version_number,
    version_checks.c.checked_at,
    version_checks.c.status,
    version_checks.c.detail,
    version_checks.c.actual_size,
    version_checks.c.actual_sha256,
)
_DAMAGE: Final = [s.value for s in CheckStatus if s.is_damage]


def _now() -> datetime:
    return datetime.now(UTC)


def _upsert(
    connection: AsyncConnection, table: Table, values: dict[str, Any], key: str, update: list[str]
) -> Any:
    """An INSERT that updates ``update`` columns when the row ``key`` exists (or does
    nothing, with ``update`` empty), in each database's syntax."""
    statement = insert_on_conflict(connection.dialect.name, table).values(**values)
    if not update:
        return statement.on_conflict_do_nothing(index_elements=[key])
    return statement.on_conflict_do_update(
        index_elements=[key], set_={c: statement.excluded[c] for c in update}
    )


class SqlIntegrityRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def live_versions(self, collection_ids: Sequence[str] | None) -> list[VersionRecord]:
        statement = select(*_VERSION_COLUMNS).where(backup_versions.c.deleted_at.is_(None))
        if collection_ids is not None:
            statement = statement.where(backup_versions.c.collection_id.in_(list(collection_ids)))
        statement = statement.order_by(
            backup_versions.c.collection_id, backup_versions.c.version_number
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_record(r) for r in rows]

    async def record_result(self, check: VersionCheck) -> None:
        values: dict[str, Any] = {
            "version_id": check.version_id,
            "collection_id": check.collection_id,
            "version_number": check.number,
            "checked_at": check.checked_at,
            "status": CheckStatus(check.status).value,
            "detail": check.detail[:1024],
            "actual_size": check.actual_size,
            "actual_sha256": check.actual_sha256,
        }
        columns = [c for c in values if c != "version_id"]
        async with transaction(self._engine) as connection:
            await connection.execute(
                _upsert(connection, version_checks, values, "version_id", columns)
            )

    async def results(self, collection_id: str | None = None) -> list[VersionCheck]:
        statement = (
            select(*_CHECK_COLUMNS)
            .join(backup_versions, backup_versions.c.id == version_checks.c.version_id)
            .where(backup_versions.c.deleted_at.is_(None))
        )
        if collection_id is not None:
            statement = statement.where(version_checks.c.collection_id == collection_id)
        statement = statement.order_by(
            version_checks.c.collection_id, version_checks.c.version_number
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_check(r) for r in rows]

    async def corrupt_counts(self) -> dict[str, int]:
        damaged = func.sum(case((version_checks.c.status.in_(_DAMAGE), 1), else_=0))
        statement = (
            select(version_checks.c.collection_id, damaged)
            .join(backup_versions, backup_versions.c.id == version_checks.c.version_id)
            .where(backup_versions.c.deleted_at.is_(None))
            .group_by(version_checks.c.collection_id)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return {str(r[0]): int(r[1] or 0) for r in rows}


class SqlLeaseRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def try_take(self, name: str, owner: str, lease_seconds: float) -> bool:
        now = _now()
        async with transaction(self._engine) as connection:
            await connection.execute(
                _upsert(
                    connection,
                    maintenance_leases,
                    {"name": name, "owner": None, "expires_at": None, "updated_at": now},
                    "name",
                    [],
                )
            )
            # Compare-and-set: of replicas racing for a free lease exactly one row update
            # succeeds (the row is locked by the first writer; the others re-check the
            # condition after it commits and find it held).
            result = await connection.execute(
                update(maintenance_leases)
                .where(
                    maintenance_leases.c.name == name,
                    or_(
                        maintenance_leases.c.expires_at.is_(None),
                        maintenance_leases.c.expires_at < now,
                    ),
                )
                .values(
                    owner=owner,
                    expires_at=now + timedelta(seconds=lease_seconds),
                    updated_at=now,
                )
            )
        return bool(result.rowcount == 1)

    async def renew(self, name: str, owner: str, lease_seconds: float) -> bool:
        now = _now()
        async with transaction(self._engine) as connection:
            result = await connection.execute(
                update(maintenance_leases)
                .where(maintenance_leases.c.name == name, maintenance_leases.c.owner == owner)
                .values(expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
            )
        return bool(result.rowcount == 1)

    async def release(self, name: str, owner: str, until: datetime | None = None) -> None:
        # The owner stays recorded (who ran last); ``expires_at`` alone decides who may take
        # the lease next.
        async with transaction(self._engine) as connection:
            await connection.execute(
                update(maintenance_leases)
                .where(maintenance_leases.c.name == name, maintenance_leases.c.owner == owner)
                .values(expires_at=until, updated_at=_now())
            )

    async def release_server_leases(self, tag: str | None, ending_before: datetime) -> int:
        now = _now()
        async with transaction(self._engine) as connection:
            result = await connection.execute(
                update(maintenance_leases)
                .where(
                    server_owner(maintenance_leases.c.owner, tag),
                    maintenance_leases.c.expires_at > now,
                    maintenance_leases.c.expires_at < ending_before,
                )
                .values(expires_at=None, updated_at=now)
            )
        return int(result.rowcount or 0)

    async def holder(self, name: str) -> tuple[str | None, datetime | None]:
        """(owner, expires_at) of the lease, (None, None) when it was never taken."""
        async with transaction(self._engine) as connection:
            row = (
                await connection.execute(
                    select(maintenance_leases.c.owner, maintenance_leases.c.expires_at).where(
                        maintenance_leases.c.name == name
                    )
                )
            ).one_or_none()
        return (None, None) if row is None else (row[0], row[1])


def _to_check(row: RowMapping) -> VersionCheck:
    return VersionCheck(
        version_id=row["version_id"],
        collection_id=row["collection_id"],
        number=row["version_number"],
        checked_at=row["checked_at"],
        status=row["status"],
        detail=row["detail"],
        actual_size=row["actual_size"],
        actual_sha256=row["actual_sha256"],
    )
