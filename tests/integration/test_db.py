"""The database layer against real databases: every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiosqlite
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.autogen import autogenerate_options
from backup_repository.db.engine import alembic_config, create_engine, migrate
from backup_repository.db.repositories import (
    SingleStatement,
    SqlDatabaseHealth,
    SqlSessionRepository,
    transaction,
)
from backup_repository.db.revision import create_revision
from backup_repository.db.tables import granted_accesses, metadata
from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.services.ports import SessionRecord

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
T0 = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _session(
    number: int = 1,
    *,
    user: str = "admin",
    created_at: datetime | None = None,
    expires_at: datetime = T0 + timedelta(days=365),
    **changes: object,
) -> SessionRecord:
    fields: dict[str, object] = {
        "id": f"{number:064x}",
        "user": user,
        "access_key_name": "",
        "requester_ip": "192.0.2.10",
        "description": f"login {number}",
        "expires_at": expires_at,
        "created_at": created_at,
    }
    fields.update(changes)
    return SessionRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def fresh_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty, not yet migrated database."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessions(db_engine: AsyncEngine) -> SqlSessionRepository:
    return SqlSessionRepository(db_engine)


async def _tables_and_version(engine: AsyncEngine) -> tuple[set[str], str | None]:
    def read(connection: Connection) -> tuple[set[str], str | None]:
        tables = set(inspect(connection).get_table_names())
        return tables, MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


# Migrations


async def test_migrate_creates_the_schema_on_an_empty_database(fresh_engine: AsyncEngine) -> None:
    assert await _tables_and_version(fresh_engine) == (set(), None)
    await migrate(fresh_engine)
    assert await _tables_and_version(fresh_engine) == (
        {"alembic_version", *metadata.tables},
        HEAD,
    )


async def test_migrate_twice_is_a_no_op(fresh_engine: AsyncEngine) -> None:
    await migrate(fresh_engine)
    sessions = SqlSessionRepository(fresh_engine)
    await sessions.add(_session(1))
    await migrate(fresh_engine)
    assert await _tables_and_version(fresh_engine) == (
        {"alembic_version", *metadata.tables},
        HEAD,
    )
    assert await sessions.get(_session(1).id) is not None


async def test_concurrent_migrations_all_succeed(database_url: str) -> None:
    # Separate engines, like replicas starting at the same moment.
    engines = [create_engine(database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        for engine in engines:
            assert await _tables_and_version(engine) == (
                {"alembic_version", *metadata.tables},
                HEAD,
            )
    finally:
        for engine in engines:
            await engine.dispose()


async def test_session_family_revision_downgrades_and_upgrades_again(
    fresh_engine: AsyncEngine,
) -> None:
    def columns(connection: Connection) -> set[str]:
        return {c["name"] for c in inspect(connection).get_columns("granted_accesses")}

    def indexes(connection: Connection) -> set[str]:
        return {i["name"] or "" for i in inspect(connection).get_indexes("granted_accesses")}

    family = {"family_id", "parent_id", "operations_scope"}
    await migrate(fresh_engine)
    sessions = SqlSessionRepository(fresh_engine)
    await sessions.add(_session(1))
    assert await sessions.add_refreshed(
        _session(2, family_id=_session(1).id, parent_id=_session(1).id)
    )
    async with fresh_engine.begin() as connection:
        assert family <= await connection.run_sync(columns)
        assert "ix_granted_accesses_parent_id" in await connection.run_sync(indexes)
        await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0005"))
    async with fresh_engine.connect() as connection:
        assert not family & await connection.run_sync(columns)
        assert not {"ix_granted_accesses_parent_id", "ix_granted_accesses_family_id"} & (
            await connection.run_sync(indexes)
        )
    await migrate(fresh_engine)
    assert await _tables_and_version(fresh_engine) == (
        {"alembic_version", *metadata.tables},
        HEAD,
    )
    stored = await sessions.get(_session(2).id)
    assert stored is not None
    assert (stored.family_id, stored.parent_id) == (None, None)


async def test_migrated_schema_matches_the_models(db_engine: AsyncEngine) -> None:
    """What ``alembic check`` does: autogenerate must find nothing to change."""

    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts=autogenerate_options())
        return list(compare_metadata(context, metadata))

    async with db_engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_revision_tool_writes_nothing_when_models_match(
    database_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "versions"
    output.mkdir()
    assert await create_revision("nothing", database_url, output_dir=output) is None
    assert list(output.iterdir()) == []


async def test_revision_tool_numbers_an_empty_revision_after_head(tmp_path: Path) -> None:
    output = tmp_path / "versions"
    output.mkdir()
    database_url = f"sqlite:///{tmp_path / 'revision.db'}"
    path = await create_revision(
        "add something", database_url, autogenerate=False, output_dir=output
    )
    assert HEAD is not None
    expected_id = f"{int(HEAD) + 1:04d}"
    assert path == output / f"{expected_id}_add_something.py"
    source = path.read_text()
    assert f'revision: str = "{expected_id}"' in source
    assert f'= "{HEAD}"' in source
    compile(source, str(path), "exec")


async def test_sqlite_engine_creates_its_folder_and_sets_the_pragmas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = create_engine("sqlite:///relative/folder/br.db")
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            }
    finally:
        await engine.dispose()
    assert (tmp_path / "relative" / "folder" / "br.db").is_file()
    # synchronous 1 is NORMAL
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 10_000,
        "synchronous": 1,
    }


async def test_sqlite_pool_rolls_back_a_returned_connection_only_in_a_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection given back to the pool with work not committed is rolled back; one in
    no transaction (a single statement run outside of one) is not: no ROLLBACK trip to the
    driver's thread."""
    rollbacks: list[object] = []
    original = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        rollbacks.append(self)
        await original(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
    engine = create_engine(f"sqlite:///{tmp_path / 'br.db'}")
    try:
        await migrate(engine)
        rollbacks.clear()
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            await raw.driver_connection.execute_fetchall("SELECT count(*) FROM granted_accesses")  # type: ignore[union-attr]
        assert rollbacks == []
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            await driver.execute("BEGIN")  # type: ignore[union-attr]
            await driver.execute(  # type: ignore[union-attr]
                "INSERT INTO granted_accesses (id, user_name, requester_ip, description,"
                " expires_at, created_at, updated_at) VALUES ('x', 'u', '', '', '', '', '')"
            )
        assert len(rollbacks) == 1
        async with engine.connect() as connection:
            count = await connection.scalar(select(func.count()).select_from(granted_accesses))
        assert count == 0
    finally:
        await engine.dispose()


async def test_sqlite_single_statements_use_two_kept_connections_closed_with_the_engine(
    tmp_path: Path,
) -> None:
    """On SQLite the SingleStatements run on two connections of their own (reads, writes)
    instead of taking one from the pool per statement (under load a pool smaller than the
    requests in flight opened and closed a connection per statement); dispose closes them,
    their threads end."""
    before = set(threading.enumerate())
    engine = create_engine(f"sqlite:///{tmp_path / 'br.db'}")
    checkouts: list[object] = []
    connects: list[object] = []
    try:
        await migrate(engine)
        sessions = SqlSessionRepository(engine)
        await sessions.add(_session(1, created_at=T0))
        assert await sessions.get(_session(1).id) is not None
        event.listen(engine.sync_engine.pool, "checkout", lambda *args: checkouts.append(args))
        event.listen(engine.sync_engine.pool, "connect", lambda *args: connects.append(args))
        for number in range(2, 12):
            await sessions.add(_session(number, created_at=T0))
            assert await sessions.get(_session(number).id) is not None
        assert (checkouts, connects) == ([], [])
    finally:
        await engine.dispose()
    for _ in range(50):
        left = [thread for thread in set(threading.enumerate()) - before if thread.is_alive()]
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == []


async def test_single_statements_on_an_in_memory_sqlite_database() -> None:
    """An in-memory database lives in its one pooled connection: SingleStatements use it
    (no connection of their own, which would be another, empty, database)."""
    engine = create_engine("sqlite://")
    try:
        await migrate(engine)
        sessions = SqlSessionRepository(engine)
        await sessions.add(_session(1, created_at=T0))
        assert await sessions.get(_session(1).id) is not None
        assert [record.id for record in await sessions.list_for_user("admin")] == [_session(1).id]
    finally:
        await engine.dispose()


# Sessions


async def test_add_then_get_returns_every_field(sessions: SqlSessionRepository) -> None:
    record = _session(
        7,
        user="backup-bot",
        access_key_name="ci",
        requester_ip="2001:db8::1",
        description="nightly job",
        created_at=T0,
    )
    await sessions.add(record)
    stored = await sessions.get(record.id)
    assert stored == SessionRecord(
        id=record.id,
        user="backup-bot",
        access_key_name="ci",
        requester_ip="2001:db8::1",
        description="nightly job",
        expires_at=record.expires_at,
        deactivated=False,
        created_at=T0,
        updated_at=T0,
    )


async def test_add_stamps_creation_time_in_utc(sessions: SqlSessionRepository) -> None:
    before = datetime.now(UTC)
    await sessions.add(_session(1))
    after = datetime.now(UTC)
    stored = await sessions.get(_session(1).id)
    assert stored is not None
    assert stored.created_at is not None
    assert stored.created_at.tzinfo is UTC
    assert before <= stored.created_at <= after
    assert stored.updated_at == stored.created_at


async def test_get_unknown_id_is_none(sessions: SqlSessionRepository) -> None:
    await sessions.add(_session(1))
    assert await sessions.get(_session(2).id) is None


async def test_datetimes_come_back_aware_in_utc(sessions: SqlSessionRepository) -> None:
    warsaw_summer = timezone(timedelta(hours=2))
    expires = datetime(2031, 6, 1, 12, 0, tzinfo=warsaw_summer)
    created = datetime(2030, 6, 1, 8, 30, 15, 123456, tzinfo=warsaw_summer)
    await sessions.add(_session(1, expires_at=expires, created_at=created))
    stored = await sessions.get(_session(1).id)
    assert stored is not None
    for value, original in (
        (stored.expires_at, expires),
        (stored.created_at, created),
        (stored.updated_at, created),
    ):
        assert value is not None
        assert value.tzinfo is UTC
        assert value == original
    assert stored.expires_at.hour == 10


async def test_naive_datetimes_are_refused(sessions: SqlSessionRepository) -> None:
    with pytest.raises(ValueError, match="expires_at must be a timezone-aware"):
        await sessions.add(_session(1, expires_at=datetime(2031, 1, 1)))
    assert await sessions.get(_session(1).id) is None


async def test_over_long_values_are_refused_on_every_backend(
    sessions: SqlSessionRepository,
) -> None:
    with pytest.raises(ValueError, match="description is 256 characters long, at most 255"):
        await sessions.add(_session(1, description="x" * 256))
    await sessions.add(_session(2, description="x" * 255))
    stored = await sessions.get(_session(2).id)
    assert stored is not None
    assert stored.description == "x" * 255


async def test_adding_an_existing_id_fails(sessions: SqlSessionRepository) -> None:
    await sessions.add(_session(1))
    with pytest.raises(IntegrityError):
        await sessions.add(_session(1, description="again"))
    stored = await sessions.get(_session(1).id)
    assert stored is not None
    assert stored.description == "login 1"


async def test_list_for_user_is_newest_first_and_only_that_user(
    sessions: SqlSessionRepository,
) -> None:
    await sessions.add(_session(1, created_at=T0))
    await sessions.add(_session(2, created_at=T0 + timedelta(hours=2)))
    await sessions.add(_session(3, created_at=T0 + timedelta(hours=1)))
    await sessions.add(_session(4, user="someone-else", created_at=T0 + timedelta(hours=3)))
    listed = await sessions.list_for_user("admin")
    assert [record.id for record in listed] == [_session(n).id for n in (2, 3, 1)]
    assert await sessions.list_for_user("nobody") == []


async def test_deactivate_marks_the_session_revoked(sessions: SqlSessionRepository) -> None:
    await sessions.add(_session(1, created_at=T0))
    await sessions.add(_session(2, created_at=T0))
    assert await sessions.deactivate(_session(1).id) is True
    revoked = await sessions.get(_session(1).id)
    untouched = await sessions.get(_session(2).id)
    assert revoked is not None
    assert untouched is not None
    assert revoked.deactivated is True
    assert revoked.updated_at is not None
    assert revoked.updated_at > T0
    assert untouched.deactivated is False
    assert untouched.updated_at == T0
    # Revoking again still finds the session.
    assert await sessions.deactivate(_session(1).id) is True


async def test_deactivate_unknown_session_is_false(sessions: SqlSessionRepository) -> None:
    assert await sessions.deactivate(_session(9).id) is False


async def test_soft_deleted_sessions_are_absent(
    db_engine: AsyncEngine, sessions: SqlSessionRepository
) -> None:
    await sessions.add(_session(1, created_at=T0))
    await sessions.add(_session(2, created_at=T0))
    async with db_engine.begin() as connection:
        await connection.execute(
            update(granted_accesses)
            .where(granted_accesses.c.id == _session(1).id)
            .values(deleted_at=datetime.now(UTC))
        )
    assert await sessions.get(_session(1).id) is None
    assert [record.id for record in await sessions.list_for_user("admin")] == [_session(2).id]
    assert await sessions.deactivate(_session(1).id) is False
    async with db_engine.connect() as connection:
        deactivated = await connection.scalar(
            select(granted_accesses.c.deactivated).where(granted_accesses.c.id == _session(1).id)
        )
    assert deactivated is False


async def test_defaults_apply_to_rows_written_by_other_tools(
    db_engine: AsyncEngine, sessions: SqlSessionRepository
) -> None:
    """Server-side defaults, as the reference project's rows may lack these columns."""
    async with db_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO granted_accesses (id, user_name, requester_ip, description,"
                " expires_at, created_at, updated_at)"
                " VALUES (:id, 'admin', '', '', :at, :at, :at)"
            ),
            {"id": _session(5).id, "at": T0},
        )
    stored = await sessions.get(_session(5).id)
    assert stored is not None
    assert stored.access_key_name == ""
    assert stored.deactivated is False
    assert stored.expires_at == T0


async def test_session_lookup_is_one_statement_without_a_transaction_on_sqlite(
    db_engine: AsyncEngine, sessions: SqlSessionRepository
) -> None:
    """Every authenticated request looks its session up: on SQLite one statement straight
    to the driver (no BEGIN, no COMMIT), elsewhere one statement in a short transaction. A
    revocation committed on another connection is seen by the very next lookup."""
    await sessions.add(_session(1, created_at=T0))
    begun: list[object] = []
    statements: list[str] = []

    def on_begin(connection: Connection) -> None:
        begun.append(connection)

    def on_statement(*args: object) -> None:
        statements.append(str(args[2]))

    sync_engine = db_engine.sync_engine
    event.listen(sync_engine, "begin", on_begin)
    event.listen(sync_engine, "before_cursor_execute", on_statement)
    try:
        first = await sessions.get(_session(1).id)
        expected = 0 if db_engine.dialect.name == "sqlite" else 1
        assert (len(begun), len(statements)) == (expected, expected)
        async with db_engine.begin() as connection:
            await connection.execute(
                update(granted_accesses)
                .where(granted_accesses.c.id == _session(1).id)
                .values(deactivated=True)
            )
        second = await sessions.get(_session(1).id)
    finally:
        event.remove(sync_engine, "begin", on_begin)
        event.remove(sync_engine, "before_cursor_execute", on_statement)
    assert first is not None
    assert first.deactivated is False
    assert second is not None
    assert second.deactivated is True
    assert second.expires_at.tzinfo is UTC
    assert second.created_at == T0


async def test_single_statement_returning_converts_the_returned_columns(
    db_engine: AsyncEngine, sessions: SqlSessionRepository
) -> None:
    """An UPDATE ... RETURNING answers with its returned columns, named and converted by
    their types (a boolean as bool, a timestamp aware), on every backend."""
    await sessions.add(_session(1, created_at=T0))
    table = granted_accesses
    revoke = SingleStatement(
        update(table)
        .where(table.c.id == bindparam("session_id"))
        .values(deactivated=True, updated_at=bindparam("now", type_=table.c.updated_at.type))
        .returning(table.c.deactivated, table.c.updated_at)
    )
    assert revoke.keys == ("deactivated", "updated_at")
    now = T0 + timedelta(hours=1)
    assert await revoke.rows(db_engine, {"session_id": _session(1).id, "now": now}) == [(True, now)]
    assert await revoke.rows(db_engine, {"session_id": _session(2).id, "now": now}) == []


async def test_single_read_errors_are_those_of_any_statement(db_engine: AsyncEngine) -> None:
    """A failing SingleStatement raises what a SQLAlchemy transaction raises for the same
    statement (a table that is gone, as a broken database file would say: on SQLite the 503
    of an unavailable database)."""
    missing = Table("no_such_table", MetaData(), Column("id", String(8)))
    read = SingleStatement(select(missing.c.id).where(missing.c.id == bindparam("id")))

    async def in_transaction() -> None:
        async with transaction(db_engine) as connection:
            await connection.execute(read.statement, {"id": "x"})

    with pytest.raises(Exception) as from_read:  # noqa: PT011 - compared below
        await read.rows(db_engine, {"id": "x"})
    with pytest.raises(Exception) as from_transaction:  # noqa: PT011
        await in_transaction()
    assert type(from_read.value) is type(from_transaction.value)
    assert type(from_read.value.__cause__) is type(from_transaction.value.__cause__)
    if db_engine.dialect.name == "sqlite":
        assert isinstance(from_read.value, DependencyUnavailable)


async def test_single_statement_insert_stores_what_sqlalchemy_stores(
    db_engine: AsyncEngine, sessions: SqlSessionRepository
) -> None:
    """An INSERT through SingleStatement stores the very values (as the database holds
    them: timestamps in the same text on SQLite) that SQLAlchemy's own INSERT stores, so
    that comparisons and ordering in other queries see no difference."""
    table = granted_accesses
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    values = {
        "user_name": "admin",
        "requester_ip": "",
        "description": "",
        "expires_at": at,
        "created_at": at,
        "updated_at": at,
    }
    write = SingleStatement(
        insert(table).values(
            {key: bindparam(key, type_=table.c[key].type) for key in ("id", *values)}
        )
    )
    await write.run(db_engine, {"id": _session(1).id, **values})
    async with db_engine.begin() as connection:
        await connection.execute(insert(table), {"id": _session(2).id, **values})
    raw = text(
        "SELECT CAST(expires_at AS TEXT), CAST(deactivated AS TEXT) FROM granted_accesses"
        " WHERE id = :id"
    )
    async with db_engine.connect() as connection:
        stored = [(await connection.execute(raw, {"id": _session(n).id})).one() for n in (1, 2)]
    assert stored[0] == stored[1]
    first = await sessions.get(_session(1).id)
    assert first is not None
    assert first.expires_at == at


# Health


async def test_ping_succeeds(db_engine: AsyncEngine) -> None:
    await SqlDatabaseHealth(db_engine).ping()


@pytest.mark.postgres
async def test_libpq_options_in_the_url_reach_asyncpg(postgres_url: str) -> None:
    engine = create_engine(f"{postgres_url}?sslmode=disable&connect_timeout=5&command_timeout=30")
    try:
        await SqlDatabaseHealth(engine).ping()
    finally:
        await engine.dispose()


def test_a_timeout_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="'timeout' must be a number of seconds"):
        create_engine("postgresql://br@127.0.0.1/br?connect_timeout=soon")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_ping_raises_when_the_server_is_unreachable() -> None:
    engine = create_engine(f"postgresql://br:pw@127.0.0.1:{_closed_port()}/br")
    try:
        with pytest.raises(ConnectionRefusedError):
            await SqlDatabaseHealth(engine).ping()
    finally:
        await engine.dispose()
