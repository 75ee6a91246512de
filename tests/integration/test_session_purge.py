"""The purge of old sessions (services/session_purge.py) and the session repository's
family operations, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.integrity import SqlLeaseRepository
from backup_repository.db.repositories import SqlSessionRepository
from backup_repository.db.tables import GrantedAccess
from backup_repository.domain.identity import COLLECTION, ObjectGrant
from backup_repository.domain.roles import Role
from backup_repository.services.ports import SessionRecord
from backup_repository.services.session_purge import LEASE_NAME, SessionPurger

NOW = datetime.now(UTC).replace(microsecond=0)


def session(
    number: int,
    *,
    expires: timedelta = timedelta(days=1),
    family: str | None = None,
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
    )


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


async def test_a_revoked_family_takes_no_refresh(db_engine: AsyncEngine) -> None:
    sessions = SqlSessionRepository(db_engine)
    root, child = session(1), session(2, family=session(1).id)
    await sessions.add(root)
    assert await sessions.add_refreshed(child, root.id)
    assert await sessions.deactivate_family(root.id) == 2
    # Refreshing any member of a revoked family stores nothing.
    assert not await sessions.add_refreshed(session(3, family=root.id), child.id)
    assert not await sessions.add_refreshed(session(4, family=root.id), root.id)
    assert await sessions.get(session(3).id) is None
    assert await sessions.get(session(4).id) is None


async def test_a_refresh_racing_a_revocation_never_survives_it(db_engine: AsyncEngine) -> None:
    sessions = SqlSessionRepository(db_engine)
    for round_ in range(10):
        root = session(1000 + round_ * 100)
        await sessions.add(root)
        children = [session(1000 + round_ * 100 + n, family=root.id) for n in range(1, 6)]
        outcomes = await asyncio.gather(
            *(sessions.add_refreshed(child, root.id) for child in children),
            sessions.deactivate_family(root.id),
        )
        for child, stored in zip(children, outcomes[:-1], strict=True):
            found = await sessions.get(child.id)
            if stored:
                assert found is not None
                assert found.deactivated, f"round {round_}: a refreshed session survived"
            else:
                assert found is None


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
            update(GrantedAccess)
            .where(GrantedAccess.id == session(7).id)
            .values(operations_scope=text)
        )
    stored = await sessions.get(session(7).id)
    assert stored is not None
    assert stored.scope == ()
