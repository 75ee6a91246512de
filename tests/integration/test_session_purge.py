"""The purge of old sessions (services/session_purge.py) and the session repository's
refresh and revocation in token families, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.integrity import SqlLeaseRepository
from backup_repository.db.repositories import SqlSessionRepository
from backup_repository.db.tables import granted_accesses
from backup_repository.domain.identity import COLLECTION, ObjectGrant
from backup_repository.domain.roles import Role
from backup_repository.services.ports import RevokedSessions, SessionRecord
from backup_repository.services.session_purge import LEASE_NAME, SessionPurger

NOW = datetime.now(UTC).replace(microsecond=0)


def session(
    number: int,
    *,
    expires: timedelta = timedelta(days=1),
    family: str | None = None,
    parent: str | None = None,
    deactivated: bool = False,
    updated: datetime | None = None,
) -> SessionRecord:
    return SessionRecord(
        id=f"{number:064x}",
        user="alice",
        access_key_name="",
        requester_ip="127.0.0.1",
        description=f"session {number}",
        expires_at=NOW + expires,
        deactivated=deactivated,
        created_at=updated,
        updated_at=updated,
        family_id=family,
        parent_id=parent,
    )


def refreshed(number: int, parent: SessionRecord) -> SessionRecord:
    """A session refreshed from ``parent``."""
    return session(number, family=parent.family, parent=parent.id)


async def test_purge_deletes_only_old_expired_or_revoked_sessions(db_engine: AsyncEngine) -> None:
    sessions = SqlSessionRepository(db_engine)
    long_ago = NOW - timedelta(days=40)
    await sessions.add(session(1, expires=-timedelta(days=31)))  # expired 31 days ago
    await sessions.add(session(2, expires=-timedelta(days=29)))  # expired, within retention
    await sessions.add(session(3, deactivated=True, updated=long_ago))  # revoked long ago
    await sessions.add(session(4, deactivated=True, updated=NOW))  # revoked just now
    await sessions.add(session(5))  # active
    purger = SessionPurger(sessions, SqlLeaseRepository(db_engine), timedelta(days=30), batch=1)
    assert await purger.run_if_due(3600) == 2
    left = {s.id for s in await sessions.list_for_user("alice")}
    assert left == {session(n).id for n in (2, 4, 5)}
    # The lease keeps the schedule: not again within the interval.
    assert await purger.run_if_due(3600) is None


async def test_two_purgers_never_run_at_once(database_url: str) -> None:
    # Two replicas: two engines (connection pools) on one database.
    engines = [create_engine(database_url), create_engine(database_url)]
    try:
        await migrate(engines[0])
        repository = SqlSessionRepository(engines[0])
        for number in range(1, 31):
            await repository.add(session(number, expires=-timedelta(days=60)))
        running = 0
        overlaps = 0

        class SlowSessions(SqlSessionRepository):
            async def purge(self, older_than: datetime, batch: int) -> int:
                nonlocal running, overlaps
                running += 1
                overlaps += running > 1
                try:
                    await asyncio.sleep(0.02)
                    return await super().purge(older_than, batch)
                finally:
                    running -= 1

        purgers = [
            SessionPurger(
                SlowSessions(engine),
                SqlLeaseRepository(engine),
                timedelta(days=30),
                batch=4,
                instance=f"replica-{n}",
            )
            for n, engine in enumerate(engines)
        ]
        results = await asyncio.gather(*(p.run_if_due(3600) for p in purgers for _ in range(3)))
        assert sorted(results, key=lambda r: r is None) == [30] + [None] * 5
        assert overlaps == 0
        assert await repository.list_for_user("alice") == []
        owner, until = await SqlLeaseRepository(engines[0]).holder(LEASE_NAME)
        assert owner is not None
        assert owner.startswith("replica-")
        assert until is not None
        assert until > datetime.now(UTC) + timedelta(minutes=59)
    finally:
        for engine in engines:
            await engine.dispose()


async def test_revoking_a_session_revokes_its_descendants_only(db_engine: AsyncEngine) -> None:
    sessions = SqlSessionRepository(db_engine)
    root = session(1)
    await sessions.add(root)
    child, sibling = refreshed(2, root), refreshed(3, root)
    grandchild, nephew = refreshed(4, child), refreshed(5, sibling)
    for record in (child, sibling, grandchild, nephew):
        assert await sessions.add_refreshed(record)

    assert await sessions.deactivate_with_descendants(child.id) == RevokedSessions(True, 1)
    state = {r.id: r.deactivated for r in await sessions.list_for_user("alice")}
    assert state == {
        root.id: False,
        child.id: True,
        sibling.id: False,
        grandchild.id: True,
        nephew.id: False,
    }
    stored = await sessions.get(grandchild.id)
    assert stored is not None
    assert (stored.family_id, stored.parent_id) == (root.id, child.id)
    # No refresh from a revoked session or one descending from it; the others refresh.
    assert not await sessions.add_refreshed(refreshed(6, child))
    assert not await sessions.add_refreshed(refreshed(7, grandchild))
    assert await sessions.get(session(6).id) is None
    assert await sessions.get(session(7).id) is None
    assert await sessions.add_refreshed(refreshed(8, nephew))
    assert await sessions.add_refreshed(refreshed(9, root))

    # Revoking it again changes nothing; revoking the login revokes what is left.
    assert await sessions.deactivate_with_descendants(child.id) == RevokedSessions(False, 0)
    assert await sessions.deactivate_with_descendants(root.id) == RevokedSessions(True, 4)
    assert all(r.deactivated for r in await sessions.list_for_user("alice"))
    assert await sessions.deactivate_with_descendants("f" * 64) == RevokedSessions(False, 0)


async def test_no_refresh_from_a_session_with_a_revoked_ancestor(db_engine: AsyncEngine) -> None:
    # A row revoked without its descendants (by hand, or by an older server) still blocks
    # every refresh below it: the whole lineage is checked, not only the parent.
    sessions = SqlSessionRepository(db_engine)
    root = session(1)
    await sessions.add(root)
    child = refreshed(2, root)
    assert await sessions.add_refreshed(child)
    grandchild = refreshed(3, child)
    assert await sessions.add_refreshed(grandchild)
    assert await sessions.deactivate(root.id)
    assert not await sessions.add_refreshed(refreshed(4, grandchild))
    # A parent that is not stored gives no refresh either.
    assert not await sessions.add_refreshed(session(5, family=root.id, parent="e" * 64))
    assert await sessions.get(session(4).id) is None
    assert await sessions.get(session(5).id) is None


async def test_a_refresh_racing_a_revocation_never_survives_it(db_engine: AsyncEngine) -> None:
    # Refreshes from a session being revoked, and from one it descends from, running at
    # the same time as the revocation: what descends from the revoked session is either
    # refused or revoked with it; what was refreshed from the login stays.
    sessions = SqlSessionRepository(db_engine)
    for round_ in range(10):
        base = 1000 + round_ * 100
        root = session(base)
        await sessions.add(root)
        middle = refreshed(base + 1, root)
        assert await sessions.add_refreshed(middle)
        below = [refreshed(base + n, middle) for n in range(2, 6)]
        beside = [refreshed(base + n, root) for n in range(6, 8)]
        outcomes = await asyncio.gather(
            *(sessions.add_refreshed(record) for record in below + beside),
            sessions.deactivate_with_descendants(middle.id),
        )
        revocation = outcomes[-1]
        assert isinstance(revocation, RevokedSessions)
        assert revocation.session
        stored_below = 0
        for record, stored in zip(below + beside, outcomes[:-1], strict=True):
            found = await sessions.get(record.id)
            if record in beside:
                assert stored
                assert found is not None
                assert not found.deactivated, f"round {round_}: a sibling was revoked"
            elif stored:
                stored_below += 1
                assert found is not None
                assert found.deactivated, f"round {round_}: a refreshed session survived"
            else:
                assert found is None
        assert revocation.descendants == stored_below
        assert not await sessions.add_refreshed(refreshed(base + 99, middle))


async def test_sessions_keep_their_scope_and_family(db_engine: AsyncEngine) -> None:
    sessions = SqlSessionRepository(db_engine)
    grant = ObjectGrant(COLLECTION, "db", frozenset({Role.BACKUP_UPLOADER}))
    record = SessionRecord(
        id="a" * 64,
        user="alice",
        access_key_name="ci",
        requester_ip="::1",
        description="Login",
        expires_at=NOW + timedelta(hours=1),
        scope=(grant,),
    )
    await sessions.add(record)
    stored = await sessions.get(record.id)
    assert stored is not None
    assert stored.scope == (grant,)
    assert stored.family_id is None
    assert stored.family == record.id


@pytest.mark.parametrize("text", ["{", '{"elements": [{"type": "collection"}]}', '"x"'])
async def test_an_unreadable_stored_scope_reads_as_not_scoped(
    db_engine: AsyncEngine, text: str
) -> None:
    sessions = SqlSessionRepository(db_engine)
    await sessions.add(session(7))
    async with db_engine.begin() as connection:
        await connection.execute(
            update(granted_accesses)
            .where(granted_accesses.c.id == session(7).id)
            .values(operations_scope=text)
        )
    stored = await sessions.get(session(7).id)
    assert stored is not None
    assert stored.scope == ()
