"""How much database work one upload costs, on SQLite and PostgreSQL: a regression guard for
the small-upload path (docs/architecture.md, "The upload pipeline"). An upload that rotates
a version out takes the lock and reads the versions (one transaction on PostgreSQL, a
statement each on SQLite), records the version, rotates and frees the lock in one
transaction, writes its audit rows in one more and marks the rotated object purged in a
last one; the request's authentication is not counted here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool
from sqlalchemy.util import await_only

from backup_repository.db.engine import create_engine
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.http.app import create_app
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import collection_doc, make_settings, user_doc, write_config

BASE = "/api/stable/repository/collection"
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
# What a rotating upload may cost at most (it took 9 transactions and 13 statements, the
# audit rows and the lock release each in a transaction of their own).
MAX_TRANSACTIONS = 5
MAX_STATEMENTS = 8


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

    def traced(self, statement: str) -> None:
        if self.counting:
            self.statements.append(" ".join(statement.split()))

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
def counter() -> Iterator[Counter]:
    found = Counter()
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
    counter: Counter, world: World
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

    assert [await upload(), await upload()] == [1, 2]
    counter.counting = True
    assert await upload() == 3
    counter.counting = False

    transactions = counter.transactions()
    statements = [s for t in transactions for s in t.statements]
    described = "\n".join(f"{i}: {t.statements}" for i, t in enumerate(transactions))
    assert len(transactions) <= MAX_TRANSACTIONS, described
    assert len(statements) <= MAX_STATEMENTS, described
    # The lock is taken, then the versions are read...
    assert statements[0].startswith("UPDATE collection_states SET lock_owner="), described
    assert statements[1].startswith("SELECT backup_versions.id"), described
    # ...and one transaction records the version, rotates v1 out and frees the lock.
    [commit] = [t for t in transactions if _records_a_version(t)]
    assert commit.statements[0].startswith("UPDATE collection_states SET last_version_number=")
    assert commit.statements[2].startswith("UPDATE backup_versions SET updated_at=")
    assert commit.statements[3].startswith("UPDATE collection_states SET lock_owner="), described
    # Answered: the lock is free, v1's object is gone.
    engine = create_engine(world.database_url)
    try:
        versions = SqlVersionRepository(engine)
        assert await versions.try_lock("db", "someone-else", 30) == 3
        await versions.release_lock("db", "someone-else")
        assert await versions.deleted_unpurged("db") == []
    finally:
        await engine.dispose()
    assert sorted(p.name for p in world.storage.rglob("db-*")) == ["db-2.tar.gz", "db-3.tar.gz"]
