"""Transactions of statements known in advance (db/statements.py ``in_one_transaction``), on
SQLite and PostgreSQL: committed together, rolled back together when a step finds no row,
optional steps left out together when one of them fails; on SQLite one trip to the
driver's thread for the whole transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import aiosqlite
import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.repositories import SingleStatement
from backup_repository.db.statements import Step, in_one_transaction
from backup_repository.db.tables import collection_states

STATES: Final = collection_states
NOW: Final = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
ADD: Final = SingleStatement(
    insert(STATES).values(
        collection_id=bindparam("cid", type_=STATES.c.collection_id.type),
        last_version_number=bindparam("number", type_=STATES.c.last_version_number.type),
        updated_at=bindparam("now", type_=STATES.c.updated_at.type),
    )
)
BUMP: Final = SingleStatement(
    update(STATES)
    .where(STATES.c.collection_id == bindparam("cid"))
    .values(last_version_number=bindparam("number"))
    .returning(STATES.c.last_version_number, STATES.c.updated_at)
)
READ: Final = SingleStatement(
    select(STATES.c.collection_id, STATES.c.last_version_number).order_by(STATES.c.collection_id)
)


class Missing(Exception):
    pass


def add(cid: str, *, optional: bool = False) -> Step:
    return Step(ADD, {"cid": cid, "number": 0, "now": NOW}, optional=optional)


async def stored(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    return await READ.rows(engine, {})


async def test_the_steps_commit_together_and_answer_their_rows(db_engine: AsyncEngine) -> None:
    done = await in_one_transaction(
        db_engine,
        [
            add("a"),
            Step(BUMP, {"cid": "a", "number": 5}, unless_rows=Missing),
            Step(READ, {}),
        ],
    )
    # Values come back converted by the columns' types (an aware timestamp).
    assert done.rows == [[], [(5, NOW)], [("a", 5)]]
    assert done.optional_failed is None
    assert await stored(db_engine) == [("a", 5)]


async def test_a_step_without_its_row_rolls_the_whole_transaction_back(
    db_engine: AsyncEngine,
) -> None:
    with pytest.raises(Missing):
        await in_one_transaction(
            db_engine,
            [add("b"), Step(BUMP, {"cid": "nobody", "number": 1}, unless_rows=Missing), add("c")],
        )
    assert await stored(db_engine) == []
    # The connection goes on working.
    await in_one_transaction(db_engine, [add("b")])
    assert await stored(db_engine) == [("b", 0)]


async def test_a_failing_statement_rolls_back_and_raises_as_any_statement_would(
    db_engine: AsyncEngine,
) -> None:
    await in_one_transaction(db_engine, [add("a")])
    with pytest.raises(sa_exc.IntegrityError):
        await in_one_transaction(db_engine, [add("b"), add("a")])
    assert await stored(db_engine) == [("a", 0)]


async def test_optional_steps_are_left_out_together_when_one_of_them_fails(
    db_engine: AsyncEngine,
) -> None:
    await in_one_transaction(db_engine, [add("a")])
    done = await in_one_transaction(
        db_engine,
        [
            add("b"),
            Step(BUMP, {"cid": "b", "number": 2}),
            add("c", optional=True),
            add("a", optional=True),  # already there
            add("d", optional=True),
        ],
    )
    assert isinstance(done.optional_failed, sa_exc.IntegrityError)
    assert done.rows == [[], [(2, NOW)], [], [], []]
    # The required steps are committed, none of the optional ones.
    assert await stored(db_engine) == [("a", 0), ("b", 2)]


async def test_optional_steps_come_last(db_engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="optional steps come last"):
        await in_one_transaction(db_engine, [add("a", optional=True), add("b")])


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calls into aiosqlite's threads (every one goes through ``_execute``)."""
    found: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        found.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return found


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_on_sqlite_a_transaction_is_one_trip_to_the_driver(
    db_engine: AsyncEngine, trips: list[str]
) -> None:
    await in_one_transaction(db_engine, [add("a")])  # opens the kept connection
    trips.clear()
    await in_one_transaction(
        db_engine,
        [
            add("b"),
            Step(BUMP, {"cid": "b", "number": 2}, unless_rows=Missing),
            add("c"),
            add("d", optional=True),
        ],
    )
    assert len(trips) == 1, trips
    trips.clear()
    with pytest.raises(Missing):
        await in_one_transaction(
            db_engine, [add("e"), Step(BUMP, {"cid": "x", "number": 2}, unless_rows=Missing)]
        )
    assert len(trips) == 1, trips
    # A refused transaction leaves the kept connection as it was (reopening it would cost
    # trips of its own).
    trips.clear()
    await in_one_transaction(db_engine, [add("f")])
    assert len(trips) == 1, trips
    assert await stored(db_engine) == [("a", 0), ("b", 2), ("c", 0), ("d", 0), ("f", 0)]


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_single_statement_is_a_transaction_of_its_own_without_begin(
    db_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SingleStatement sends no BEGIN and COMMIT of its own (on PostgreSQL it runs in
    autocommit mode: two round trips fewer), and its write is committed when it returns.
    (SQLite's statements go to the driver directly: test_db.py.)"""
    assert db_engine.dialect.name == "postgresql"
    import asyncpg.transaction

    # Transactions committed (the pool's ping before a checkout opens one and rolls it back).
    committed: list[object] = []
    commit = asyncpg.transaction.Transaction.commit

    async def counted(self: asyncpg.transaction.Transaction) -> None:
        committed.append(self)
        await commit(self)

    monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", counted)
    await ADD.rows(db_engine, {"cid": "a", "number": 0, "now": NOW})
    assert await BUMP.rows(db_engine, {"cid": "a", "number": 4}) == [(4, NOW)]
    assert committed == []
    # Committed all the same: a transaction (another connection, maybe) reads it.
    await in_one_transaction(db_engine, [Step(READ, {})])
    assert len(committed) == 1
    assert await stored(db_engine) == [("a", 4)]
