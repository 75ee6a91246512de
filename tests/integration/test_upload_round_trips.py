"""How much database work one upload costs, on SQLite and PostgreSQL, and how often it wakes
the event loop: a regression guard for the small-upload path (docs/architecture.md, "The
upload pipeline"). An upload that rotates a version out makes two short transactions: the
purge marks of what the collection's previous upload rotated out and deleted, the lock taken
and the versions read; the counter advanced and the lock freed (one statement), the version
recorded, the rotated one marked deleted and the audit rows written. On SQLite each is one
trip to the driver's thread (db/statements.py); on PostgreSQL only the commit has a BEGIN
and a COMMIT, the other statements run in autocommit mode. The request's authentication is
not counted here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg.transaction
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool
from sqlalchemy.util import await_only

from backup_repository.db.audit import SqlAuditRepository
from backup_repository.db.engine import create_engine
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.http.app import create_app
from backup_repository.services.audit import AuditFilters
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import collection_doc, make_settings, user_doc, write_config

BASE = "/api/stable/repository/collection"
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
# What a rotating upload may cost at most (it took 9 transactions and 13 statements, the
# audit rows and the lock release each in a transaction of their own; then 5 transactions,
# 8 statements and 11 trips to the SQLite driver's thread, a trip for each statement; then
# 3 transactions, the purge marking one of its own, and 3 trips).
MAX_TRANSACTIONS = 2
MAX_STATEMENTS = 7
MAX_SQLITE_TRIPS = 2
# Wakes of the event loop from other threads (SQLite: the session lookup, the lock step, the
# clean-up's one storage call, the write, the commit, the deletion of the rotated object;
# it was 8, the clean-up two storage calls and the purge marking a trip of its own), and
# tasks started on SQLite (there were 5: the clean-up's gather, the lease's renewer, the gather of
# the listeners and the purge).
MAX_SQLITE_WAKES = 6
MAX_TASKS = 0


@dataclass
class Transaction:
    statements: list[str] = field(default_factory=list)


@dataclass
class Counter:
    """The statements the database ran while ``counting``: as SQLite traced them (they
    may bypass SQLAlchemy, db/statements.py), or as SQLAlchemy sent them to PostgreSQL. The
    app runs no background loop meanwhile (notifications and the session purge are off)."""

    counting: bool = False
    statements: list[str] = field(default_factory=list)
    # Calls into the SQLite driver's thread: for each, how many statements ran before it.
    trips: list[int] = field(default_factory=list)
    pg_commits: int = 0
    # Callbacks handed to the event loop from other threads, and tasks started.
    wakes: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)

    def watch(self, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        """Count ``loop``'s wakes from other threads and the tasks started on it."""
        wake = loop.call_soon_threadsafe
        create_task = loop.create_task

        def woken(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if self.counting:
                self.wakes.append(getattr(callback, "__qualname__", repr(callback)))
            return wake(callback, *args, **kwargs)

        def started(coroutine: Any, **kwargs: Any) -> Any:
            if self.counting:
                self.tasks.append(getattr(coroutine, "__qualname__", repr(coroutine)))
            return create_task(coroutine, **kwargs)

        monkeypatch.setattr(loop, "call_soon_threadsafe", woken)
        monkeypatch.setattr(loop, "create_task", started)

    def traced(self, statement: str) -> None:
        if self.counting:
            self.statements.append(" ".join(statement.split()))

    def tripped(self) -> None:
        if self.counting:
            self.trips.append(len(self.statements))

    def trips_beyond_authentication(self) -> list[list[str]]:
        """The statements of each trip to the SQLite driver's thread, leaving out the
        session lookups."""
        ends = [*self.trips[1:], len(self.statements)]
        found = [self.statements[start:end] for start, end in zip(self.trips, ends, strict=True)]
        return [trip for trip in found if not (trip and _session_lookup(trip[0]))]

    def on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if isinstance(driver, aiosqlite.Connection):
            await_only(driver.set_trace_callback(self.traced))

    def begin(self, connection: Connection) -> None:
        if connection.dialect.name != "sqlite":
            self.traced("BEGIN")

    def commit(self, connection: Connection) -> None:
        if connection.dialect.name != "sqlite":
            self.traced("COMMIT")

    def executed(self, connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if connection.dialect.name != "sqlite":
            self.traced(statement)

    def transactions(self) -> list[Transaction]:
        """The statements by transaction (one outside BEGIN ... COMMIT is one of its own),
        leaving out the lookup of the request's session (authentication)."""
        found: list[Transaction] = []
        current: Transaction | None = None
        for statement in self.statements:
            word = statement.split(" ", 1)[0].upper()
            if word == "BEGIN":
                current = Transaction()
                found.append(current)
            elif word in ("COMMIT", "ROLLBACK"):
                current = None
            elif word in ("SAVEPOINT", "RELEASE"):
                # Around the audit rows on SQLite, in the same trip: bookkeeping, not counted.
                continue
            elif current is not None:
                current.statements.append(statement)
            else:
                found.append(Transaction([statement]))
        return [t for t in found if t.statements and not all(map(_session_lookup, t.statements))]


def _records_a_version(transaction: Transaction) -> bool:
    return any(s.startswith("INSERT INTO backup_versions") for s in transaction.statements)


def _session_lookup(statement: str) -> bool:
    return statement.startswith("SELECT granted_accesses.")


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    found = Counter()
    # Every call aiosqlite makes in its connection's thread goes through _execute.
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        found.tripped()
        return await execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    # PostgreSQL: the transactions committed (a statement in autocommit mode has none).
    commit = asyncpg.transaction.Transaction.commit

    async def committed(self: asyncpg.transaction.Transaction) -> None:
        if found.counting:
            found.pg_commits += 1
        await commit(self)

    monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", committed)
    listeners: list[tuple[Any, str, Any]] = [
        (Pool, "connect", found.on_connect),
        (Engine, "begin", found.begin),
        (Engine, "commit", found.commit),
        (Engine, "before_cursor_execute", found.executed),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    try:
        yield found
    finally:
        for target, name, listener in listeners:
            event.remove(target, name, listener)


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    database_url: str
    storage: Path


@pytest.fixture
async def world(tmp_path: Path, database_url: str) -> AsyncIterator[World]:
    db = collection_doc(
        "db", acl=[{"name": "uploader", "type": "user", "roles": ["backupUploader"]}]
    )
    db["spec"].update(maxBackupsCount=2)
    write_config(tmp_path / "config", [user_doc("uploader", "uploader-pass", []), db])
    # No background loop: only the upload's statements are counted.
    app = create_app(
        make_settings(tmp_path, database_url, notify_interval=None, session_retention=None)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield World(app, client, database_url, tmp_path / "storage")


async def test_an_upload_that_rotates_makes_few_short_transactions(
    counter: Counter, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    login = await world.client.post(
        "/api/stable/auth/login", json={"username": "uploader", "password": "uploader-pass"}
    )
    headers = {"Authorization": f"Bearer {login.json()['data']['token']}"}

    async def upload() -> int:
        response = await world.client.post(
            f"{BASE}/db/version", content=pad_to(MESSAGE, 2048), headers=headers
        )
        assert response.status_code == 200, response.text
        number: int = response.json()["data"]["version"]["versionNumber"]
        return number

    # v3 rotates v1 out, deletes its object and leaves its row to be marked purged by the
    # next upload, v4, which rotates v2 out: v4 is counted.
    assert [await upload(), await upload(), await upload()] == [1, 2, 3]
    counter.watch(asyncio.get_running_loop(), monkeypatch)
    counter.counting = True
    assert await upload() == 4
    counter.counting = False

    transactions = counter.transactions()
    statements = [s for t in transactions for s in t.statements]
    described = "\n".join(f"{i}: {t.statements}" for i, t in enumerate(transactions))
    assert len(transactions) <= MAX_TRANSACTIONS, described
    assert len(statements) <= MAX_STATEMENTS, described
    # v1 is marked purged, the lock is taken and the versions are read in one transaction...
    lock = transactions[0].statements
    assert lock[0].startswith("UPDATE backup_versions SET purged_at="), described
    assert lock[1].startswith("UPDATE collection_states SET lock_owner="), described
    assert lock[2].startswith("SELECT backup_versions.id"), described
    # ...and one transaction advances the counter and frees the lock (one statement),
    # records the version, rotates v2 out and writes the audit rows of both; nothing else is
    # written (v2's purge mark waits for the next upload).
    [commit] = [t for t in transactions if _records_a_version(t)]
    assert transactions[-1] is commit, described
    assert commit.statements[0].startswith("UPDATE collection_states SET last_version_number="), (
        described
    )
    assert "lock_owner=" in commit.statements[0].split(" WHERE ")[0], described
    assert commit.statements[2].startswith("UPDATE backup_versions SET updated_at="), described
    assert commit.statements[3].startswith("INSERT INTO audit_events"), described
    assert commit.statements[3].count("), (") == 1, described  # two rows
    if world.database_url.startswith("sqlite"):
        # Each transaction is one trip to the driver's thread.
        trips = counter.trips_beyond_authentication()
        assert len(trips) <= MAX_SQLITE_TRIPS, "\n".join(map(str, trips))
        assert len(counter.wakes) <= MAX_SQLITE_WAKES, counter.wakes
        # (On PostgreSQL the driver's connections start tasks of their own.)
        assert len(counter.tasks) <= MAX_TASKS, counter.tasks
    else:
        # Only the commit is a transaction with BEGIN and COMMIT: the session lookup, the
        # purge marks, the lock and the read are statements in autocommit mode.
        assert counter.pg_commits == 1, described
    # Answered: the lock is free, the objects of v1 and v2 are gone, v2 waits for its mark.
    engine = create_engine(world.database_url)
    try:
        versions = SqlVersionRepository(engine)
        assert await versions.try_lock("db", "someone-else", 30) == 4
        await versions.release_lock("db", "someone-else")
        assert [v.number for v in await versions.deleted_unpurged("db")] == [2]
        entries = await SqlAuditRepository(engine).query(AuditFilters(collection="db"), 2)
        assert [(e.action, e.version) for e in entries] == [("upload", 4), ("rotation.delete", 2)]
    finally:
        await engine.dispose()
    assert sorted(p.name for p in world.storage.rglob("db-*")) == ["db-3.tar.gz", "db-4.tar.gz"]


async def test_purge_marks_wait_for_an_upload_that_takes_the_lock(world: World) -> None:
    """The purge mark of a rotated version waits for the collection's next upload; an
    upload refused because the lock is someone else's hands it on to the one after."""
    login = await world.client.post(
        "/api/stable/auth/login", json={"username": "uploader", "password": "uploader-pass"}
    )
    headers = {"Authorization": f"Bearer {login.json()['data']['token']}"}

    async def upload() -> httpx.Response:
        return await world.client.post(
            f"{BASE}/db/version", content=pad_to(MESSAGE, 2048), headers=headers
        )

    for _ in range(3):
        assert (await upload()).status_code == 200
    engine = create_engine(world.database_url)
    try:
        versions = SqlVersionRepository(engine)
        # v1's object is gone, its row not marked yet.
        assert [v.number for v in await versions.deleted_unpurged("db")] == [1]
        assert not (world.storage / "db" / "db-1.tar.gz").exists()
        assert await versions.try_lock("db", "someone-else", 30) == 3
        assert (await upload()).status_code == 409
        await versions.release_lock("db", "someone-else")
        assert (await upload()).status_code == 200
        # v1 marked by the upload that took the lock; v2 (rotated by it) waits.
        assert [v.number for v in await versions.deleted_unpurged("db")] == [2]
    finally:
        await engine.dispose()
