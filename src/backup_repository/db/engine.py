"""Engines and schema migrations.

Engines are created by the composition root, one per process, and disposed of at shutdown;
nothing here creates one at import time.

Alembic is imported only when the schema is behind the shipped migrations: a server whose
database is current (every start but the first after an upgrade) checks the revision with
one SELECT and never loads it (Alembic and Mako are about 7 MiB of resident memory).

A PostgreSQL connection is checked when the pool hands it out (_on_checkout), so that a
request after a restart of the database, or after a proxy or an idle timeout cut a pooled
connection, still succeeds instead of failing with a 503:

- a connection the server has closed (a restart, ``pg_terminate_backend``, the
  ``idle_session_timeout``, a proxy hanging up) is known to be closed without asking:
  PostgreSQL or the proxy closed the socket, and asyncpg saw the end of the stream while the
  connection waited in the pool. It is replaced by a new one;
- a connection idle in the pool for POSTGRES_PING_AFTER_IDLE_S or longer is pinged first:
  one ``SELECT 1`` in the simple query protocol (one round trip, no transaction, so safe
  behind pgbouncer in transaction mode too), bounded by POSTGRES_PING_TIMEOUT_S. This
  finds the connections a middlebox dropped without telling either end. When the ping
  fails, the connection is replaced and the others pooled before it are replaced at their
  next checkout (as SQLAlchemy's ``pool_pre_ping`` does);
- a connection used within the last seconds is handed out as it is. The pool hands out
  the connection returned last (LIFO), so under a light load the same few stay in use.

SQLAlchemy's own ``pool_pre_ping`` did the ping on every checkout with BEGIN, ``;`` and
ROLLBACK: 3 round trips per checkout, 12 of the 22 of an upload. What is given up: a
connection that dies in the few milliseconds before it is taken, or that a middlebox drops
silently while it was idle for less than POSTGRES_PING_AFTER_IDLE_S, fails the statement
it runs (a 503); SQLAlchemy then replaces every pooled connection, so the next request
succeeds. SQLite has no network and no checks.

SQLAlchemy's async engine and connection come from its module ``sqlalchemy.ext.asyncio.engine``,
loaded here without running the ``__init__`` of its package, which also imports the async
ORM session and with it ``sqlalchemy.orm`` (about 6 MiB of resident memory; the server uses
no ORM). The other modules of this package take ``AsyncEngine`` and ``AsyncConnection`` from
here. When that way of loading fails (another SQLAlchemy release laid out differently), the
package is imported as usual and a warning is logged: the server works the same, with the
ORM in memory (``tests/integration/test_memory.py`` fails on such a release).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import logging
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError, InvalidatePoolError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, PoolResetState
from sqlalchemy.util import await_only

from backup_repository.db.urls import normalize_database_url

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

# SQLAlchemy's package of the async engine; its ``__init__`` also imports the async ORM.
_ASYNC_PACKAGE: Final = "sqlalchemy.ext.asyncio"
_ASYNC_ENGINE_MODULE: Final = f"{_ASYNC_PACKAGE}.engine"
_ASYNC_NAMES: Final = ("AsyncConnection", "AsyncEngine", "create_async_engine")


def _load_async_engine_module() -> ModuleType:
    """``sqlalchemy.ext.asyncio.engine``, imported without running its package's
    ``__init__`` when the package is not imported yet (see the module's docstring).

    While the module loads, an empty package object stands in ``sys.modules`` for the real
    package (``__path__`` and spec as the import system would set them, nothing executed),
    and it is taken out again afterwards: the real package, when something imports it later
    (Alembic, a test), runs its ``__init__`` then and finds this same module already loaded,
    so its classes are the ones used here.
    """
    if _ASYNC_PACKAGE in sys.modules:
        return importlib.import_module(_ASYNC_ENGINE_MODULE)
    spec = importlib.util.find_spec(_ASYNC_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{_ASYNC_PACKAGE} is not a package")
    stand_in = importlib.util.module_from_spec(spec)
    sys.modules[_ASYNC_PACKAGE] = stand_in
    try:
        module = importlib.import_module(_ASYNC_ENGINE_MODULE)
    finally:
        if sys.modules.get(_ASYNC_PACKAGE) is stand_in:
            del sys.modules[_ASYNC_PACKAGE]
    missing = [name for name in _ASYNC_NAMES if not hasattr(module, name)]
    if missing:
        raise ImportError(f"{_ASYNC_ENGINE_MODULE} has no {', '.join(missing)}")
    return module


def _async_engine_module() -> ModuleType:
    """The module of SQLAlchemy's async engine: loaded without the ORM when that works, else
    through its package as usual (with a warning, since the ORM then takes memory)."""
    try:
        return _load_async_engine_module()
    except Exception:
        logger.warning(
            "could not load SQLAlchemy's async engine without its ORM; importing %s as usual",
            _ASYNC_PACKAGE,
            exc_info=True,
        )
        importlib.import_module(_ASYNC_PACKAGE)
        return importlib.import_module(_ASYNC_ENGINE_MODULE)


if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection as AsyncConnection
    from sqlalchemy.ext.asyncio import AsyncEngine as AsyncEngine
    from sqlalchemy.ext.asyncio import create_async_engine
else:
    _async_engine = _async_engine_module()
    AsyncConnection = _async_engine.AsyncConnection
    AsyncEngine = _async_engine.AsyncEngine
    create_async_engine = _async_engine.create_async_engine

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
# Alembic's table of the applied revision (its default name).
VERSION_TABLE: Final = "alembic_version"
# ``revision = "0008"`` and ``down_revision = "0007"`` (or None) in a migration file.
_REVISION_LINE: Final = re.compile(
    r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(?:\"([^\"\n]*)\"|'([^'\n]*)'|(None))\s*$",
    re.MULTILINE,
)

# How long a SQLite writer waits for another one before "database is locked".
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000

# Key of the PostgreSQL advisory lock held while migrating, so that replicas starting
# together run the migrations one after another. Any fixed 64-bit number works; this one
# is the ASCII of "brmigrat".
MIGRATION_LOCK_KEY: Final = 0x62726D6967726174

# PostgreSQL connection pool: small per replica, since a deployment runs several replicas
# against one server whose max_connections (100 by default) they share.
POSTGRES_POOL_SIZE: Final = 5
POSTGRES_MAX_OVERFLOW: Final = 10
POSTGRES_POOL_RECYCLE_S: Final = 1800
POSTGRES_CONNECT_TIMEOUT_S: Final = 10.0
# A pooled PostgreSQL connection idle this long is pinged before use (see the module's
# docstring): far below any idle timeout of a proxy or a NAT, far above the gaps between
# the statements of a server at work.
POSTGRES_PING_AFTER_IDLE_S: Final = 5.0
# How long that ping may take before the connection counts as dead.
POSTGRES_PING_TIMEOUT_S: Final = 10.0
# Key in a pooled connection's ``info`` (cleared when it is replaced): when it was last
# returned to the pool, in time.monotonic() seconds.
_RETURNED_AT: Final = "br_returned_at"

# Execution option naming the statement that opens a SQLite transaction (see _on_begin).
_SQLITE_BEGIN_OPTION: Final = "br_sqlite_begin"
_SQLITE_BEGIN_STATEMENTS: Final = frozenset({"BEGIN", "BEGIN IMMEDIATE"})


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (any form :func:`normalize_database_url` accepts).

    SQLite: the file's folder is created, and every connection runs in WAL mode with foreign
    keys on and a busy timeout. PostgreSQL: a pre-pinged, recycled connection pool.
    """
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite_engine(parsed)
    return _create_postgres_engine(parsed)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (Alembic ``upgrade head``).

    The whole upgrade runs in one transaction. On PostgreSQL that transaction first takes
    an advisory lock, on SQLite it starts with ``BEGIN IMMEDIATE``; either way concurrent
    callers wait for each other, and the later ones find nothing left to do. (Alembic keeps
    the running migration in module globals, so callers in one process depend on these
    locks too.) When the applied revision already is the newest shipped one, Alembic is
    not even imported (:func:`head_revision`).
    """
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            await connection.execution_options(**{_SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        async with connection.begin():
            if engine.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            if await connection.run_sync(_schema_is_current):
                logger.debug("database schema is current (revision %s)", head_revision())
                return
            await connection.run_sync(_upgrade_to_head)


async def schema_is_current(engine: AsyncEngine) -> bool:
    """The database answers and is at the newest shipped revision (one SELECT; connection
    errors are raised as they come)."""
    async with engine.connect() as connection:
        return bool(await connection.run_sync(_schema_is_current))


async def migrate_in_child_process(url: str) -> bool:
    """:func:`migrate` in a separate interpreter (``python -m backup_repository.db.migrate``),
    so that Alembic, Mako and the migration scripts never take memory in the server's own
    process. Best effort: False when the child failed (the caller then migrates in process
    and so reports the real error). The URL goes through standard input, never the command
    line (``ps`` would show its password). Not for an in-memory SQLite database, which only
    exists in this process."""
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite" and _sqlite_in_memory(parsed):
        return False
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "backup_repository.db.migrate",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return False
    try:
        await child.communicate(url.encode())
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    return child.returncode == 0


@functools.cache
def head_revision() -> str | None:
    """The newest shipped revision, read from the migration files without importing
    Alembic; None when they do not form one line of revisions each naming its predecessor
    as a plain string (Alembic then decides)."""
    revisions: set[str] = set()
    predecessors: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        found: dict[str, str | None] = {}
        for match in _REVISION_LINE.finditer(path.read_text(encoding="utf-8")):
            key, double, single, none = match.groups()
            if key in found:
                return None
            found[key] = None if none else (double if double is not None else single)
        revision, down = found.get("revision"), found.get("down_revision", "")
        if revision is None or down == "":
            return None
        revisions.add(revision)
        if down is not None:
            predecessors.add(down)
    heads = revisions - predecessors
    if len(heads) != 1 or not predecessors <= revisions:
        return None
    return heads.pop()


def _schema_is_current(connection: Connection) -> bool:
    """The database is at the newest shipped revision (nothing for Alembic to do)."""
    head = head_revision()
    if head is None or not inspect(connection).has_table(VERSION_TABLE):
        return False
    applied = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return list(applied) == [head]


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code: no ``alembic.ini``, no dependence on the
    working directory. ``connection``, when given, is the one the migrations run on."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", config_path(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # Revision files are named "0002_add_something.py"; percent signs are doubled for
    # ConfigParser interpolation.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def config_path(path: Path) -> str:
    """``path`` escaped for an Alembic option value (ConfigParser interpolates ``%``)."""
    return str(path).replace("%", "%%")


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(alembic_config(connection), "head")
    after = MigrationContext.configure(connection).get_current_revision()
    if before != after:
        logger.info("database schema upgraded from revision %s to %s", before, after)
    else:
        logger.debug("database schema is current (revision %s)", after)


def _create_sqlite_engine(url: URL) -> AsyncEngine:
    database = url.database or ""
    in_memory = _sqlite_in_memory(url)
    if not in_memory and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # The pool's reset of a returned connection is _on_reset: a ROLLBACK (one more trip to
    # the driver's thread) only when SQLite says a transaction is open.
    engine = create_async_engine(url, pool_reset_on_return=None)
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
        # As the pool's own rollback-on-return, but a connection in no transaction (one
        # statement run outside of one, db/repositories.py SingleStatement) is left as is.
        if not state.asyncio_safe or state.transaction_was_reset:
            return
        if _sqlite_in_transaction(dbapi_connection):
            dbapi_connection.rollback()

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take BEGIN away from the sqlite3 module (which skips it before DDL and SELECT,
        # so migrations would not be atomic) and emit it ourselves in _on_begin.
        dbapi_connection.isolation_level = None
        _sqlite_pragma(dbapi_connection, f"busy_timeout = {SQLITE_BUSY_TIMEOUT_MS:d}")
        _sqlite_pragma(dbapi_connection, "foreign_keys = ON")
        if in_memory:
            return
        if _sqlite_pragma(dbapi_connection, "journal_mode") != "wal":
            try:
                _sqlite_pragma(dbapi_connection, "journal_mode = WAL")
            except Exception as exc:
                # Switching needs an exclusive lock and SQLite answers "locked" at once,
                # without waiting, while another connection reads. The mode belongs to the
                # file, so the next connection switches it; this one still works.
                if "locked" not in str(exc):
                    raise
                logger.info("SQLite file busy, WAL mode is left to the next connection")
        if _sqlite_pragma(dbapi_connection, "journal_mode") == "wal":
            # With WAL, NORMAL never corrupts the file; a power cut may lose the last commits.
            _sqlite_pragma(dbapi_connection, "synchronous = NORMAL")

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        statement = connection.get_execution_options().get(_SQLITE_BEGIN_OPTION, "BEGIN")
        if statement not in _SQLITE_BEGIN_STATEMENTS:
            raise ValueError(f"unsupported SQLite BEGIN statement {statement!r}")
        connection.exec_driver_sql(statement)

    return engine


def _sqlite_in_memory(url: URL) -> bool:
    return (url.database or "") in ("", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_in_transaction(dbapi_connection: Any) -> bool:
    """Whether SQLite has a transaction open on the connection (True when it cannot say:
    the connection is then rolled back, as the pool would)."""
    try:
        return bool(dbapi_connection.driver_connection.in_transaction)
    except Exception:
        return True


def _sqlite_pragma(dbapi_connection: Any, pragma: str) -> str | None:
    """Run ``PRAGMA <pragma>`` and return the first column of its answer, lower-cased."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
        row = cursor.fetchone()
    finally:
        cursor.close()
    return None if row is None else str(row[0]).lower()


def _create_postgres_engine(url: URL) -> AsyncEngine:
    # Query values are strings; asyncpg wants numbers for its timeouts.
    query = dict(url.query)
    connect_args: dict[str, Any] = {"timeout": POSTGRES_CONNECT_TIMEOUT_S}
    for name in ("timeout", "command_timeout"):
        value = query.pop(name, None)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"database URL option {name!r} is given more than once")
        try:
            connect_args[name] = float(value)
        except ValueError:
            raise ValueError(
                f"database URL option {name!r} must be a number of seconds, not {value!r}"
            ) from None
    engine = create_async_engine(
        url.set(query=query),
        connect_args=connect_args,
        pool_size=POSTGRES_POOL_SIZE,
        max_overflow=POSTGRES_MAX_OVERFLOW,
        pool_recycle=POSTGRES_POOL_RECYCLE_S,
        # The connection returned last is handed out first: under a light load the same few
        # stay in use (and need no ping), the others idle and are checked when needed.
        pool_use_lifo=True,
    )
    event.listen(engine.sync_engine, "checkin", _on_checkin)
    event.listen(engine.sync_engine, "checkout", _on_checkout)
    return engine


def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _on_checkout(
    dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """Check a pooled PostgreSQL connection before it is handed out (the module's
    docstring). Raising DisconnectionError makes the pool replace it and try again."""
    driver = dbapi_connection.driver_connection
    if driver.is_closed():
        raise DisconnectionError("the database closed the connection while it was pooled")
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is None or time.monotonic() - returned_at < POSTGRES_PING_AFTER_IDLE_S:
        return  # new, or used just now
    try:
        await_only(driver.execute("SELECT 1", timeout=POSTGRES_PING_TIMEOUT_S))
    except Exception as exc:
        raise InvalidatePoolError(f"a pooled connection did not answer a ping: {exc!r}") from exc
