"""SQL implementations of the service ports. Every method runs in its own short
transaction (or, for the session lookup of every request, one statement: SingleStatement);
nothing holds a connection between calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, TypeVar

from sqlalchemy import (
    CTE,
    Insert,
    RowMapping,
    Select,
    String,
    TextClause,
    Update,
    and_,
    bindparam,
    delete,
    event,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.dml import UpdateBase

from backup_repository.db.engine import AsyncConnection, AsyncEngine
from backup_repository.db.tables import granted_accesses
from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.domain.identity import ObjectGrant
from backup_repository.domain.sessions import may_refresh_from, scope_from_json, scope_to_json
from backup_repository.services.ports import RevokedSessions, SessionCursor, SessionRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SESSION_COLUMNS: Final = (
    granted_accesses.c.id,
    granted_accesses.c.user_name,
    granted_accesses.c.access_key_name,
    granted_accesses.c.requester_ip,
    granted_accesses.c.description,
    granted_accesses.c.expires_at,
    granted_accesses.c.deactivated,
    granted_accesses.c.created_at,
    granted_accesses.c.updated_at,
    granted_accesses.c.single_use_collection,
    granted_accesses.c.family_id,
    granted_accesses.c.parent_id,
    granted_accesses.c.operations_scope,
)


class SqlSessionRepository:
    """Issued tokens in the ``granted_accesses`` table.

    Rows with ``deleted_at`` set (soft-deleted, as the reference project does) are treated
    as if they did not exist.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, session: SessionRecord) -> None:
        """Store a new session. ``created_at`` and ``updated_at`` default to now (UTC).

        Raises :class:`ValueError` for naive datetimes or values longer than their column
        (checked here so that SQLite, which does not enforce lengths, behaves like
        PostgreSQL), and SQLAlchemy's ``IntegrityError`` when the id already exists.
        """
        _check_session(session)
        await _ADD_SESSION.run(self._engine, _session_values(session))

    async def add_refreshed(self, session: SessionRecord) -> bool:
        """Store a refreshed token's session if the session it was refreshed from
        (``session.parent_id``) and every stored session that one descends from are active.

        The family's root row is locked first (a no-op UPDATE), as
        :meth:`deactivate_with_descendants` does before it reads anything: a revocation and
        a refresh in one family running at once on two replicas are serialized, so either
        the refresh sees its parent or an ancestor revoked and stores nothing, or the
        revocation (whose later statements see rows committed before it) revokes the new
        session as well. On SQLite the first UPDATE takes the database's write lock, with
        the same effect. The root row outlives every usable session of its family: all of
        them expire by its expiry, and revoking it revokes them all.
        """
        _check_session(session)
        parent_id = session.parent_id
        family = session.family
        if parent_id is None or not (_storable(parent_id) and _storable(family)):
            return False
        async with transaction(self._engine) as connection:
            await connection.execute(_lock_row(family))
            lineage = (await connection.execute(_lineage(parent_id, family))).all()
            if not may_refresh_from(parent_id, ((row[0], bool(row[1])) for row in lineage)):
                return False
            values = _session_values(session)
            values["family_id"] = family
            await connection.execute(insert(granted_accesses).values(**values))
        return True

    async def get(self, session_id: str) -> SessionRecord | None:
        """The session ``session_id`` as committed now (every request asks, so that a
        revocation counts from the very next request): one statement, built once."""
        if not _storable(session_id):
            return None
        row = await _SESSION_BY_ID.one_or_none(self._engine, {"session_id": session_id})
        return None if row is None else _to_record(dict(zip(_SESSION_BY_ID.keys, row, strict=True)))

    async def list_for_user(
        self,
        user: str,
        *,
        access_key: str | None = None,
        limit: int | None = None,
        after: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """Sessions of ``user``, newest first (ties broken by id, so the order is stable),
        those of ``access_key`` only when given, at most ``limit``, after ``after``."""
        if not _storable(user) or (access_key is not None and not _storable(access_key)):
            return []
        statement = select(*_SESSION_COLUMNS).where(
            granted_accesses.c.user_name == user, granted_accesses.c.deleted_at.is_(None)
        )
        if access_key is not None:
            statement = statement.where(granted_accesses.c.access_key_name == access_key)
        if after is not None:
            if not _storable(after.id):
                return []
            statement = statement.where(
                or_(
                    granted_accesses.c.created_at < after.created_at,
                    and_(
                        granted_accesses.c.created_at == after.created_at,
                        granted_accesses.c.id < after.id,
                    ),
                )
            )
        statement = statement.order_by(
            granted_accesses.c.created_at.desc(), granted_accesses.c.id.desc()
        )
        if limit is not None:
            statement = statement.limit(limit)
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_record(row) for row in rows]

    async def deactivate(self, session_id: str) -> bool:
        """Mark a session revoked. True when it exists (also when it was revoked before)."""
        if not _storable(session_id):
            return False
        statement = (
            update(granted_accesses)
            .where(granted_accesses.c.id == session_id, granted_accesses.c.deleted_at.is_(None))
            .values(deactivated=True, updated_at=_utcnow())
        )
        async with transaction(self._engine) as connection:
            result = await connection.execute(statement)
        return result.rowcount > 0

    async def deactivate_with_descendants(self, session_id: str) -> RevokedSessions:
        """Revoke the session ``session_id`` and its descendants: the sessions whose
        ``parent_id`` chain leads to it. The family's root row is locked first (see
        :meth:`add_refreshed`), so a refresh of a member running at the same time either
        commits before the walk (and its session is found and revoked) or waits and then
        finds its parent revoked. The walk is one recursive query over ``parent_id``
        within the family; each step must add a session not seen yet (``UNION``), so it
        ends after at most as many steps as the family has sessions."""
        if not _storable(session_id):
            return RevokedSessions(session=False, descendants=0)
        now = _utcnow()
        active = and_(
            granted_accesses.c.deleted_at.is_(None), granted_accesses.c.deactivated == false()
        )
        async with transaction(self._engine) as connection:
            target = granted_accesses.alias()
            root = (
                select(func.coalesce(target.c.family_id, target.c.id))
                .where(target.c.id == session_id, target.c.deleted_at.is_(None))
                .scalar_subquery()
            )
            await connection.execute(
                update(granted_accesses)
                .where(granted_accesses.c.id == root)
                .values(updated_at=granted_accesses.c.updated_at)
            )
            row = (
                await connection.execute(
                    select(granted_accesses.c.id, granted_accesses.c.family_id).where(
                        granted_accesses.c.id == session_id, granted_accesses.c.deleted_at.is_(None)
                    )
                )
            ).one_or_none()
            if row is None:
                return RevokedSessions(session=False, descendants=0)
            itself = await connection.execute(
                update(granted_accesses)
                .where(granted_accesses.c.id == session_id, active)
                .values(deactivated=True, updated_at=now)
            )
            descendants = _descendants(session_id, row[1] or session_id)
            below = await connection.execute(
                update(granted_accesses)
                .where(granted_accesses.c.id.in_(select(descendants.c.id)), active)
                .values(deactivated=True, updated_at=now)
            )
        return RevokedSessions(session=bool(itself.rowcount), descendants=int(below.rowcount or 0))

    async def purge(self, older_than: datetime, batch: int) -> int:
        """Delete at most ``batch`` sessions that expired before ``older_than``, or were
        revoked before it (the revocation is the row's last change). Their tokens are
        refused either way: a token without its session is not accepted."""
        doomed = (
            select(granted_accesses.c.id)
            .where(
                or_(
                    granted_accesses.c.expires_at < older_than,
                    and_(
                        granted_accesses.c.deactivated == true(),
                        granted_accesses.c.updated_at < older_than,
                    ),
                )
            )
            .limit(batch)
        )
        # One statement, so that on SQLite it takes the write lock at once (a read first
        # and a write after would fail at once when another connection wrote in between).
        statement = delete(granted_accesses).where(
            granted_accesses.c.id.in_(doomed.scalar_subquery())
        )
        async with transaction(self._engine) as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)


def _lock_row(session_id: str) -> Update:
    """A no-op UPDATE of one session row: it holds the row's lock (on SQLite the database's
    write lock) until the transaction ends."""
    return (
        update(granted_accesses)
        .where(granted_accesses.c.id == session_id)
        .values(updated_at=granted_accesses.c.updated_at)
    )


def _lineage(parent_id: str, family_id: str) -> Select[str, bool]:
    """The session ``parent_id``, the sessions it descends from and the family's root (ids
    and ``deactivated``), found by following ``parent_id`` upwards. ``UNION`` drops rows
    already found, so the walk ends even on a (corrupt) cycle."""
    start = select(
        granted_accesses.c.id, granted_accesses.c.parent_id, granted_accesses.c.deactivated
    ).where(
        granted_accesses.c.id.in_([parent_id, family_id]), granted_accesses.c.deleted_at.is_(None)
    )
    lineage = start.cte("lineage", recursive=True)
    step = (
        select(granted_accesses.c.id, granted_accesses.c.parent_id, granted_accesses.c.deactivated)
        .join(lineage, granted_accesses.c.id == lineage.c.parent_id)
        .where(granted_accesses.c.deleted_at.is_(None))
    )
    lineage = lineage.union(step)
    return select(lineage.c.id, lineage.c.deactivated)


def _descendants(session_id: str, family_id: str) -> CTE:
    """The sessions refreshed from ``session_id``, directly or through others, within its
    family (``session_id`` itself included as the start of the walk)."""
    subtree = select(granted_accesses.c.id).where(granted_accesses.c.id == session_id)
    tree = subtree.cte("subtree", recursive=True, nesting=True)
    step = (
        select(granted_accesses.c.id)
        .join(tree, granted_accesses.c.parent_id == tree.c.id)
        .where(granted_accesses.c.family_id == family_id)
    )
    return tree.union(step)


class SqlDatabaseHealth:
    """The readiness check of the database (the reference's ``DbValidator``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise whatever the driver raises when that fails."""
        async with self._engine.connect() as connection:
            value = (await connection.execute(text("SELECT 1"))).scalar_one()
        if value != 1:
            raise RuntimeError(f"database answered {value!r} to SELECT 1")


DATABASE_UNAVAILABLE = "database is unavailable, try again later"


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean the database cannot be reached (as opposed to a bad
    statement): connection refused or lost, pool exhausted, database gone."""
    if isinstance(exc, OSError | TimeoutError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    # asyncpg errors without a more specific mapping (e.g. the database was dropped)
    # arrive as the DBAPIError base class itself.
    return isinstance(exc, sa_exc.DBAPIError) and (
        exc.connection_invalidated or type(exc) is sa_exc.DBAPIError
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A short transaction; an unreachable database becomes ``DependencyUnavailable`` (503)
    instead of an unexplained server error."""
    try:
        async with engine.begin() as connection:
            yield connection
    except Exception as exc:
        raise_if_unavailable(exc)
        raise


# -- one statement on the path of every request -------------------------------------------
#
# A SingleStatement is a SELECT (or an INSERT whose result is not needed) with bind
# parameters, compiled once per dialect. On SQLite it goes to the driver directly: one
# statement in autocommit mode is a transaction of its own (a read sees every commit made
# before it started, a revocation included; a write is committed when it returns, as
# durable as any COMMIT), and it costs one trip to the driver's thread instead of the trips
# of BEGIN, the statement's cursor, execution, fetch and close, and COMMIT. On other
# databases it runs through SQLAlchemy on a pooled connection in autocommit mode: a
# transaction of its own there too, without the round trips of BEGIN and COMMIT. Values go
# in and come back converted by the columns' types either way (timestamps aware, booleans
# as bool).

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # Bind parameter names in the order of the statement's placeholders.
    positions: tuple[str, ...]
    binds: tuple[Processor, ...]
    results: tuple[Processor, ...]
    # For the parameters not given: values in the statement, plain column defaults.
    defaults: Mapping[str, Any]


class SingleStatement:
    """One statement built once (every value a ``bindparam`` of the column's type): a
    ``SELECT`` run with :meth:`rows` or :meth:`one_or_none`, or an ``INSERT`` run with
    :meth:`run`; or one of the statements of a short transaction on SQLite
    (:meth:`on_sqlite`, db/versions.py)."""

    def __init__(self, statement: Select[*tuple[Any, ...]] | Insert | Update | TextClause) -> None:
        self.statement = statement
        # The names of a SELECT's columns, in the order of the values of each row.
        self.keys: tuple[str, ...] = tuple(key for key, _ in _returned(statement))
        self._compiled: dict[tuple[str, str], _Compiled] = {}

    async def rows(self, engine: AsyncEngine, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, each a tuple in the order of the selected columns (none for an
        INSERT)."""
        if engine.dialect.driver != "aiosqlite":
            # One statement is a transaction of its own: no BEGIN and COMMIT, two round
            # trips fewer.
            try:
                async with autocommit(engine).connect() as connection:
                    result = await connection.execute(self.statement, dict(params))
                    return [tuple(row) for row in result.all()] if result.returns_rows else []
            except Exception as exc:
                raise_if_unavailable(exc)
                raise
        return await on_sqlite_connection(
            engine,
            _kind(self.statement),
            lambda driver: self.on_sqlite(driver, engine.dialect, params),
        )

    async def on_sqlite(
        self, driver: Any, dialect: Dialect, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Run the statement on an aiosqlite connection (one trip to its thread), inside the
        transaction the caller opened on it, if any. The driver's errors come as SQLAlchemy
        would have wrapped them (a locked or unreadable database file is an outage: 503)."""
        sql, values = self.bound(dialect, params)
        try:
            found: Sequence[Sequence[Any]] = await driver.execute_fetchall(sql, values)
        except dialect.loaded_dbapi.Error as exc:
            raise_sqlite_error(dialect, sql, values, exc)
        except OSError as exc:
            raise_if_unavailable(exc)
            raise
        return self.converted(dialect, found)

    def bound(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The statement's SQL for ``dialect`` and its positional values, converted by the
        columns' types (what the SQLite driver is given)."""
        compiled = self._for(dialect)
        values = tuple(
            value if process is None else process(value)
            for value, process in zip(
                (
                    params[name] if name in params else compiled.defaults[name]
                    for name in compiled.positions
                ),
                compiled.binds,
                strict=True,
            )
        )
        return compiled.sql, values

    def converted(self, dialect: Dialect, found: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The rows the driver answered with, their values converted by the columns'
        types."""
        results = self._for(dialect).results
        return [
            tuple(
                value if process is None else process(value)
                for value, process in zip(row, results, strict=True)
            )
            for row in found
        ]

    async def run(self, engine: AsyncEngine, params: Mapping[str, Any]) -> None:
        await self.rows(engine, params)

    async def one_or_none(
        self, engine: AsyncEngine, params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        found = await self.rows(engine, params)
        if len(found) > 1:
            raise sa_exc.MultipleResultsFound("more than one row where at most one was expected")
        return found[0] if found else None

    def _for(self, dialect: Dialect) -> _Compiled:
        key = (dialect.name, dialect.paramstyle)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(self.statement, dialect)
        return compiled


_AUTOCOMMIT: Final[weakref.WeakKeyDictionary[Engine, AsyncEngine]] = weakref.WeakKeyDictionary()


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` in autocommit mode (the same pool): each statement commits by itself."""
    found = _AUTOCOMMIT.get(engine.sync_engine)
    if found is None:
        found = _AUTOCOMMIT[engine.sync_engine] = engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )
    return found


def _compile(
    statement: Select[*tuple[Any, ...]] | Insert | Update | TextClause, dialect: Dialect
) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    if dialect.paramstyle not in ("qmark", "numeric"):
        raise ValueError(f"positional parameters expected, not {dialect.paramstyle}")
    positions = tuple(compiled.positiontup or ())
    binds = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        for name in positions
    )
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for _, column in _returned(statement)
    )
    # An INSERT's plain column defaults, and values the statement carries itself (a LIMIT).
    defaults: dict[str, Any] = {}
    if isinstance(statement, Insert):
        for column in statement.table.columns:
            default = column.default
            if default is not None and getattr(default, "is_scalar", False):
                defaults[column.key] = getattr(default, "arg", None)
    for name in positions:
        if not compiled.binds[name].required:
            defaults.setdefault(name, compiled.binds[name].effective_value)
    return _Compiled(str(compiled), positions, binds, results, defaults)


# -- SQLite lanes: a connection of its own for the SingleStatements' reads, one for writes --
#
# Taking a pooled connection for each statement costs the pool's bookkeeping on the event
# loop, and under load a pool smaller than the requests in flight opens and closes a
# connection (a thread and its PRAGMAs) per statement. A SingleStatement on SQLite goes to
# one of two connections taken out of the pool (so opened with the engine's PRAGMAs) and
# kept: reads (never blocked by a writer in WAL mode) and writes (which SQLite runs one at a
# time anyway). Each runs its statements one after another in its thread. They are closed
# with the engine (dispose), and dropped when one fails in a way that may have broken it.


@dataclass
class _Lanes:
    loop: asyncio.AbstractEventLoop
    opening: dict[str, asyncio.Future[_Lane]]


_LANES: Final[weakref.WeakKeyDictionary[Engine, _Lanes]] = weakref.WeakKeyDictionary()


def _kind(statement: Any) -> str | None:
    """Which kept connection runs ``statement``: reads, writes, or (plain text such as
    BEGIN) none."""
    if isinstance(statement, Select):
        return "read"
    if isinstance(statement, UpdateBase):
        return "write"
    return None


async def on_sqlite_connection(
    engine: AsyncEngine, kind: str | None, call: Callable[[Any], Awaitable[T]]
) -> T:
    """``call`` with an aiosqlite connection of ``engine``: the kept one of ``kind``
    (``"read"`` or ``"write"``), or a pooled one when there is none (an in-memory database,
    another event loop, ``kind`` None). A kept connection that failed in a way that may
    have broken it is dropped; an unreachable database is ``DependencyUnavailable``."""
    try:
        lane = None if kind is None else await _lane(engine, kind)
    except Exception:
        lane = None  # not opened: a pooled connection says why, or works
    if lane is not None:
        try:
            return await call(lane.driver)
        except BaseException as exc:
            _drop_lane_if_broken(engine, lane, exc)
            raise
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            return await call(raw.driver_connection)
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise_if_unavailable(exc)
        raise


def raise_sqlite_error(dialect: Dialect, sql: str, values: Any, exc: Exception) -> NoReturn:
    """Raise an error of the SQLite driver as SQLAlchemy would have wrapped it (a locked or
    unreadable database file is an outage: ``DependencyUnavailable``, 503)."""
    wrapped = sa_exc.DBAPIError.instance(sql, values, exc, dialect.loaded_dbapi.Error)
    raise_if_unavailable(wrapped)
    raise wrapped from exc


async def _lane(engine: AsyncEngine, kind: str) -> _Lane | None:
    """The kept connection (pool proxy) of ``kind`` on this engine, opened on first use;
    None when the engine's lanes belong to another event loop."""
    sync_engine = engine.sync_engine
    if not isinstance(sync_engine.pool, QueuePool):
        # An in-memory database lives in its one pooled connection: nothing to take out.
        return None
    loop = asyncio.get_running_loop()
    lanes = _LANES.get(sync_engine)
    if lanes is None:
        lanes = _LANES[sync_engine] = _Lanes(loop, {})
        event.listen(sync_engine, "engine_disposed", _close_lanes)
    if lanes.loop is not loop:
        return None
    opening = lanes.opening.get(kind)
    if opening is None:
        opening = lanes.opening[kind] = asyncio.ensure_future(_detached(engine))
    try:
        return await asyncio.shield(opening)
    except Exception:
        if lanes.opening.get(kind) is opening:
            del lanes.opening[kind]
        raise


@dataclass(frozen=True)
class _Lane:
    proxy: Any  # the pool's proxy, detached: closing it closes the connection
    driver: Any  # the aiosqlite connection


async def _detached(engine: AsyncEngine) -> _Lane:
    proxy = await engine.raw_connection()
    driver = proxy.dbapi_connection.driver_connection  # type: ignore[union-attr]
    proxy.detach()
    return _Lane(proxy, driver)


def _drop_lane_if_broken(engine: AsyncEngine, lane: _Lane, exc: BaseException) -> None:
    """A lane whose statement failed for a reason other than the statement itself (a
    constraint, a wrong statement) is closed; the next statement opens another. (A
    cancelled caller leaves it as it is: its thread finishes the statement.)"""
    if isinstance(exc, asyncio.CancelledError | sa_exc.IntegrityError | sa_exc.ProgrammingError):
        return
    lanes = _LANES.get(engine.sync_engine)
    if lanes is None:
        return
    for kind, opening in list(lanes.opening.items()):
        if _opened(opening) is lane:
            del lanes.opening[kind]
            _close_lane(lane)


def _opened(opening: asyncio.Future[_Lane]) -> _Lane | None:
    if opening.done() and not opening.cancelled() and opening.exception() is None:
        return opening.result()
    return None


def _close_lanes(sync_engine: Engine) -> None:
    lanes = _LANES.pop(sync_engine, None)
    if lanes is None:
        return
    for opening in lanes.opening.values():
        lane = _opened(opening)
        if lane is not None:
            _close_lane(lane)
        else:
            opening.cancel()


def _close_lane(lane: _Lane) -> None:
    try:
        # Inside AsyncEngine.dispose (a greenlet): the driver's close is awaited.
        lane.proxy.close()
    except Exception:
        # Elsewhere: the driver's thread is told to close the connection and stop.
        with contextlib.suppress(Exception):
            lane.driver.stop()


def _returned(statement: Any) -> list[tuple[str, Any]]:
    """The names and columns of the rows a statement answers with: a SELECT's, or what an
    INSERT or UPDATE says it RETURNS (none for plain text such as BEGIN)."""
    columns: Any = ()
    if isinstance(statement, Select):
        columns = statement.selected_columns
    elif isinstance(statement, UpdateBase):
        columns = statement.exported_columns
    return [(str(key), column) for key, column in columns.items()] if columns else []


def raise_if_unavailable(exc: BaseException) -> None:
    """An unreachable database (or a locked or unreadable SQLite file) is an outage:
    ``DependencyUnavailable`` (503), logged once; any other error is left to the caller."""
    if is_unavailable(exc):
        logger.warning("database unavailable: %s", exc)
        raise DependencyUnavailable(DATABASE_UNAVAILABLE) from exc


# The session lookup of every authenticated request.
_SESSION_BY_ID: Final = SingleStatement(
    select(*_SESSION_COLUMNS).where(
        granted_accesses.c.id == bindparam("session_id"), granted_accesses.c.deleted_at.is_(None)
    )
)

# The INSERT of a login's session (every value a bindparam of its column's type).
_SESSIONS_TABLE: Final = granted_accesses
_ADD_SESSION: Final = SingleStatement(
    insert(_SESSIONS_TABLE).values(
        {
            key: bindparam(key, type_=_SESSIONS_TABLE.c[key].type)
            for key in (
                "id",
                "user_name",
                "access_key_name",
                "requester_ip",
                "description",
                "expires_at",
                "deactivated",
                "created_at",
                "updated_at",
                "single_use_collection",
                "family_id",
                "parent_id",
                "operations_scope",
            )
        }
    )
)


def _session_values(session: SessionRecord) -> dict[str, Any]:
    now = _utcnow()
    created_at = session.created_at or now
    return {
        "id": session.id,
        "user_name": session.user,
        "access_key_name": session.access_key_name,
        "requester_ip": session.requester_ip,
        "description": session.description,
        "expires_at": session.expires_at,
        "deactivated": session.deactivated,
        "created_at": created_at,
        "updated_at": session.updated_at or created_at,
        "single_use_collection": session.single_use_collection,
        "family_id": session.family_id,
        "parent_id": session.parent_id,
        "operations_scope": scope_to_json(session.scope),
    }


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _storable(value: str) -> bool:
    """PostgreSQL text cannot hold NUL and refuses a statement carrying one, an error that
    would pass for an outage (503). No stored row can match such a value (user names are
    validated, session ids are hex), so lookups answer "nothing" without asking."""
    return "\x00" not in value


def _check_session(session: SessionRecord) -> None:
    for name in ("expires_at", "created_at", "updated_at"):
        value: datetime | None = getattr(session, name)
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"session {name} must be a timezone-aware datetime")
    for name, limit in _TEXT_LIMITS.items():
        length = len(getattr(session, name) or "")
        if length > limit:
            raise ValueError(f"session {name} is {length} characters long, at most {limit}")


def _text_limits() -> dict[str, int]:
    """Longest value of each text field of SessionRecord, read from the table's columns."""
    columns = granted_accesses.c
    limits: dict[str, int] = {}
    for field, column in (
        ("id", "id"),
        ("user", "user_name"),
        ("access_key_name", "access_key_name"),
        ("requester_ip", "requester_ip"),
        ("description", "description"),
        ("single_use_collection", "single_use_collection"),
    ):
        column_type = columns[column].type
        if not isinstance(column_type, String) or column_type.length is None:
            raise TypeError(f"column {column} is not a bounded String")
        limits[field] = column_type.length
    return limits


_TEXT_LIMITS: Final = _text_limits()


def _to_record(row: RowMapping | Mapping[str, Any]) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        user=row["user_name"],
        access_key_name=row["access_key_name"],
        requester_ip=row["requester_ip"],
        description=row["description"],
        expires_at=row["expires_at"],
        deactivated=row["deactivated"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        single_use_collection=row["single_use_collection"],
        family_id=row["family_id"],
        parent_id=row["parent_id"],
        scope=_stored_scope(row["id"], row["operations_scope"]),
    )


def _stored_scope(session_id: str, text: str | None) -> tuple[ObjectGrant, ...]:
    """The stored scope; an unreadable one is logged and read as "not scoped", which puts
    the session out of reach of narrowed tokens (only full sessions see and revoke it)."""
    try:
        return scope_from_json(text)
    except ValueError as exc:
        logger.warning("session %s: %s; read as not scoped", session_id[:12], exc)
        return ()
