"""Freeing the upload locks and maintenance leases of a restarted replica, on SQLite and
PostgreSQL: only owners ``<tag>/…`` of that replica (``_`` and ``%`` in a tag are not
wildcards), or every server's owner, never the ``import-reference`` command's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.integrity import SqlLeaseRepository
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.services.integrity import LEASE_NAME

OWNERS = {
    "c1": "node_1/0000aaaa:1234",
    "c2": "nodeX1/0000bbbb:1234",
    "c3": "node_1-b/0000cccc:1234",
    "c4": "import-reference:0123456789abcdef",
    "c5": "node_1/0000dddd:cleanup",
    "c6": "node%/0000eeee:1234",
}


async def held(versions: SqlVersionRepository) -> set[str]:
    """Collections whose lock someone holds (a new owner cannot take it)."""
    busy = set()
    for collection in OWNERS:
        if await versions.try_lock(collection, "probe/0:0", 60) is None:
            busy.add(collection)
        else:
            await versions.release_lock(collection, "probe/0:0")
    return busy


async def test_only_the_restarted_replicas_locks_are_freed(db_engine: AsyncEngine) -> None:
    versions = SqlVersionRepository(db_engine)
    for collection, owner in OWNERS.items():
        assert await versions.try_lock(collection, owner, 60) is not None
    assert await versions.release_server_locks("node_1") == 2
    assert await held(versions) == {"c2", "c3", "c4", "c6"}
    assert await versions.release_server_locks("node") == 0
    assert await versions.release_server_locks("node%") == 1
    # Every server's: the import command's lock stays.
    assert await versions.release_server_locks(None) == 2
    assert await held(versions) == {"c4"}


async def test_only_a_pass_in_progress_of_the_replica_is_freed(db_engine: AsyncEngine) -> None:
    leases = SqlLeaseRepository(db_engine)
    owner = "node_1/0000aaaa:12345678"
    assert await leases.try_take(LEASE_NAME, owner, 60)
    soon = datetime.now(UTC) + timedelta(seconds=65)
    assert await leases.release_server_leases("nodeX1", soon) == 0
    assert await leases.release_server_leases("node", soon) == 0
    assert await leases.release_server_leases("node_1", soon) == 1
    assert await leases.holder(LEASE_NAME) == (owner, None)
    # A finished pass keeps the schedule for its interval: not freed.
    assert await leases.try_take(LEASE_NAME, owner, 60)
    await leases.release(LEASE_NAME, owner, datetime.now(UTC) + timedelta(hours=1))
    assert await leases.release_server_leases("node_1", soon) == 0
    assert await leases.release_server_leases(None, soon) == 0
    assert not await leases.try_take(LEASE_NAME, "other/0:0", 60)
