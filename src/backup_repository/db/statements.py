"""Short transactions of statements built once (:class:`~db.repositories.SingleStatement`),
for the writes on the path of an upload (db/versions.py, db/audit.py).

On SQLite every statement, the ``BEGIN`` and the ``COMMIT`` go to the driver directly, one
trip to its thread each, instead of the trips of each statement's cursor, execution, fetch
and close that SQLAlchemy makes; on other databases they run through SQLAlchemy in a short
transaction, as every other statement does. Either way a statement answers with its rows,
so a write that must know whether it changed a row says ``RETURNING``; values go in and
come back converted by the columns' types; an unreachable database is
``DependencyUnavailable``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backup_repository.db.repositories import (
    SingleStatement,
    raise_if_unavailable,
    transaction,
)
from backup_repository.domain.errors import DependencyUnavailable

_BEGIN: Final = SingleStatement(text("BEGIN"))
_COMMIT: Final = SingleStatement(text("COMMIT"))
_ROLLBACK: Final = SingleStatement(text("ROLLBACK"))


class Steps(Protocol):
    async def rows(
        self, statement: SingleStatement, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Run ``statement`` in the transaction: its rows (those it returns)."""


class _SqliteSteps:
    def __init__(self, driver: Any, dialect: Dialect) -> None:
        self._driver = driver
        self._dialect = dialect

    async def rows(
        self, statement: SingleStatement, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        return await statement.on_sqlite(self._driver, self._dialect, params)


class _SqlSteps:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def rows(
        self, statement: SingleStatement, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        result = await self._connection.execute(statement.statement, dict(params))
        return [tuple(row) for row in result.all()] if result.returns_rows else []


@contextlib.asynccontextmanager
async def short_transaction(engine: AsyncEngine) -> AsyncIterator[Steps]:
    """A short transaction: committed when the block ends, rolled back when it raises."""
    if engine.dialect.driver != "aiosqlite":
        async with transaction(engine) as connection:
            yield _SqlSteps(connection)
        return
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            steps = _SqliteSteps(raw.driver_connection, engine.dialect)
            await steps.rows(_BEGIN, {})
            try:
                yield steps
            except BaseException:
                # A cancelled rollback leaves the transaction to the pool, which rolls
                # back a returned connection that still has one open.
                with contextlib.suppress(Exception):
                    await steps.rows(_ROLLBACK, {})
                raise
            await steps.rows(_COMMIT, {})
    except DependencyUnavailable:
        raise
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise_if_unavailable(exc)
        raise


class _EachOnItsOwn:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def rows(
        self, statement: SingleStatement, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        return await statement.rows(self._engine, params)


@contextlib.asynccontextmanager
async def statements(engine: AsyncEngine) -> AsyncIterator[Steps]:
    """Statements that need not commit together (each is right by itself, e.g. under a
    lock the caller holds): on SQLite each is a transaction of its own, one trip to the
    driver without a BEGIN and a COMMIT; elsewhere they share one short transaction, which
    costs fewer round trips than one each."""
    if engine.dialect.driver == "aiosqlite":
        yield _EachOnItsOwn(engine)
        return
    async with short_transaction(engine) as steps:
        yield steps
