"""Short transactions of statements built once (:class:`~db.repositories.SingleStatement`),
for the writes on the path of an upload (db/versions.py, db/audit.py).

:func:`in_one_transaction` runs statements known in advance (:class:`Step`: a statement,
its values, and what to raise when it answers with no row) as one transaction. On SQLite
the whole transaction, ``BEGIN IMMEDIATE`` to ``COMMIT`` (or ``ROLLBACK`` when a step
raises), is one call in the driver's thread on the kept connection of the writes: one trip
to the thread and one wake of the event loop, however many statements, where a statement
each would cost a trip each. On other databases the steps run through SQLAlchemy in a
short transaction, one after the other.

:func:`short_transaction` is for transactions whose later statements depend on what the
earlier ones answered in ways a :class:`Step` cannot say: on SQLite every statement, the
``BEGIN`` and the ``COMMIT`` go to the driver directly, one trip to its thread each,
instead of the trips of each statement's cursor, execution, fetch and close that
SQLAlchemy makes; elsewhere they run through SQLAlchemy, as every other statement does.

Either way a statement answers with its rows, so a write that must know whether it changed
a row says ``RETURNING``; values go in and come back converted by the columns' types; an
unreachable database is ``DependencyUnavailable``.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Dialect

from backup_repository.db.engine import AsyncConnection, AsyncEngine
from backup_repository.db.repositories import (
    SingleStatement,
    autocommit,
    is_unavailable,
    on_sqlite_connection,
    raise_if_unavailable,
    raise_sqlite_error,
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
    lock the caller holds), each a transaction of its own: on SQLite one trip to the driver
    without a BEGIN and a COMMIT; elsewhere on one pooled connection in autocommit mode
    (one checkout, no round trips for BEGIN and COMMIT)."""
    if engine.dialect.driver == "aiosqlite":
        yield _EachOnItsOwn(engine)
        return
    try:
        async with autocommit(engine).connect() as connection:
            yield _SqlSteps(connection)
    except DependencyUnavailable:
        raise
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise_if_unavailable(exc)
        raise


@dataclass(frozen=True)
class Step:
    """One statement of :func:`in_one_transaction`, with its values. ``unless_rows``: when
    the statement answers with no row, the transaction is rolled back and what it returns
    is raised (e.g. a write guarded by a condition that no longer holds); None: go on.
    ``optional``: when the statement fails (other than by the database being unreachable),
    the transaction goes on without the optional steps (all of them or none are written)
    and commits; optional steps come last."""

    statement: SingleStatement
    params: Mapping[str, Any]
    unless_rows: Callable[[], Exception] | None = None
    optional: bool = False


@dataclass(frozen=True)
class Done:
    """What a committed :func:`in_one_transaction` answered: the rows of each step (none
    for an optional step that was left out), and the error that left the optional steps
    out, if one did."""

    rows: list[list[tuple[Any, ...]]]
    optional_failed: Exception | None = None


_Call = tuple[str, tuple[Any, ...], Callable[[], Exception] | None, bool]


async def in_one_transaction(engine: AsyncEngine, steps: Sequence[Step]) -> Done:
    """Run ``steps`` in order in one transaction, committed when all the required ones went
    through. On SQLite one trip to the driver's thread (module docstring). A cancelled
    caller does not stop a transaction already sent: it commits or rolls back by itself.

    aiosqlite has no public call that runs a function in its thread: its ``_execute``
    (which every one of its own calls goes through) and ``_conn`` are used, and a
    statement each (:func:`short_transaction`) when a release of aiosqlite lacks them."""
    if any(a.optional and not b.optional for a, b in itertools.pairwise(steps)):
        raise ValueError("optional steps come last")
    if engine.dialect.driver != "aiosqlite":
        return await _one_by_one(engine, steps)
    dialect = engine.dialect
    calls: list[_Call] = [
        (*step.statement.bound(dialect, step.params), step.unless_rows, step.optional)
        for step in steps
    ]

    async def run(driver: Any) -> Done | _Refused | None:
        execute = getattr(driver, "_execute", None)
        if execute is None or not hasattr(type(driver), "_conn"):
            return None
        done: list[int] = []
        try:
            found, failed = await execute(partial(_in_thread, driver, calls, done))
        except _Refused as refused:
            # Raised once out of the connection's hands: it is not the connection's fault.
            return refused
        except dialect.loaded_dbapi.Error as exc:
            sql, values = ("COMMIT", ()) if len(done) == len(calls) else calls[len(done)][:2]
            raise_sqlite_error(dialect, sql, values, exc)
        except OSError as exc:
            raise_if_unavailable(exc)
            raise
        rows = [step.statement.converted(dialect, r) for step, r in zip(steps, found, strict=True)]
        if failed is None:
            return Done(rows)
        at, error = failed
        wrapped = sa_exc.DBAPIError.instance(
            calls[at][0], calls[at][1], error, dialect.loaded_dbapi.Error
        )
        return Done(rows, wrapped)

    outcome = await on_sqlite_connection(engine, "write", run)
    if isinstance(outcome, _Refused):
        raise outcome.error
    if outcome is None:
        return await _one_by_one(engine, steps)
    return outcome


class _Refused(Exception):
    """A step's ``unless_rows`` error, on its way out of the driver's thread."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _in_thread(
    driver: Any, calls: Sequence[_Call], done: list[int]
) -> tuple[list[list[Any]], tuple[int, Exception] | None]:
    """The transaction of :func:`in_one_transaction`, in the aiosqlite connection's thread
    (nothing else runs on the connection meanwhile): the rows of each statement, and the
    failure that left the optional ones out (their index, the error). ``done`` counts the
    statements that went through, so that an error names the one that failed. The optional
    statements run after a savepoint, rolled back to when one of them fails."""
    connection: sqlite3.Connection = driver._conn
    connection.execute("BEGIN IMMEDIATE")
    failed: tuple[int, Exception] | None = None
    try:
        found: list[list[Any]] = []
        in_savepoint = False
        for at, (sql, values, unless_rows, optional) in enumerate(calls):
            if optional and failed is not None:
                found.append([])
                done.append(1)
                continue
            if optional and not in_savepoint:
                connection.execute("SAVEPOINT optional_steps")
                in_savepoint = True
            try:
                rows = connection.execute(sql, values).fetchall()
            except sqlite3.Error as exc:
                if not (optional and connection.in_transaction) or _unavailable(exc):
                    raise
                connection.execute("ROLLBACK TO optional_steps")
                failed = (at, exc)
                rows = []
            if not rows and unless_rows is not None:
                raise _Refused(unless_rows())
            found.append(rows)
            done.append(1)
        if in_savepoint:
            connection.execute("RELEASE optional_steps")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(Exception):
                connection.execute("ROLLBACK")
        raise
    return found, failed


def _unavailable(exc: sqlite3.Error) -> bool:
    """A locked, full or unreadable database: the transaction cannot go on."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _UNAVAILABLE_CODES


# SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL,
# SQLITE_CANTOPEN (primary result codes).
_UNAVAILABLE_CODES: Final = frozenset({5, 6, 7, 10, 11, 13, 14})


class _OptionalFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def _one_by_one(engine: AsyncEngine, steps: Sequence[Step]) -> Done:
    """The steps one statement each in a short transaction; when an optional one fails,
    everything again without the optional ones (a failed statement aborts the whole
    transaction on PostgreSQL)."""
    try:
        return Done(await _each(engine, steps))
    except _OptionalFailed as failed:
        required = [step for step in steps if not step.optional]
        rows = await _each(engine, required)
        return Done(rows + [[] for _ in steps[len(required) :]], failed.error)


async def _each(engine: AsyncEngine, steps: Sequence[Step]) -> list[list[tuple[Any, ...]]]:
    found: list[list[tuple[Any, ...]]] = []
    async with short_transaction(engine) as transaction_steps:
        for step in steps:
            try:
                rows = await transaction_steps.rows(step.statement, step.params)
            except sa_exc.DBAPIError as exc:
                if step.optional and not is_unavailable(exc):
                    raise _OptionalFailed(exc) from exc
                raise
            if not rows and step.unless_rows is not None:
                raise step.unless_rows()
            found.append(rows)
    return found
