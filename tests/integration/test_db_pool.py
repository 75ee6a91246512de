"""The PostgreSQL pool's checks of a connection it hands out (db/engine.py): a connection
the server closed is replaced without a request failing, one idle for a while is pinged
with one round trip, and one used just now costs no round trip at all. Round trips are
counted by a TCP proxy between the engine and PostgreSQL: a round trip is the client
speaking after the server answered (or first)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from backup_repository.db import engine as engine_module
from backup_repository.db.engine import create_engine, migrate
from backup_repository.http.app import create_app
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import collection_doc, make_settings, user_doc, write_config

pytestmark = pytest.mark.postgres

BASE = "/api/stable/repository/collection"
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
# Round trips of one upload that rotates a version out, its session lookup included (22
# when every checkout was pinged with BEGIN, ";" and ROLLBACK).
MAX_UPLOAD_ROUND_TRIPS = 10


class CountingProxy:
    """A TCP proxy in front of PostgreSQL that counts round trips, and can turn into a black
    hole for the connections open at that moment (as a NAT or a proxy that dropped them
    silently: what the client sends is never answered)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.round_trips = 0
        self.connections = 0
        self._open: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def swallow_open_connections(self) -> None:
        with self._lock:
            for _client, _upstream, swallowed in self._open:
                swallowed.set()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for client, upstream, _ in self._open:
                for end in (client, upstream):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)
                    end.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=None)
            swallowed = threading.Event()
            # Whether the server spoke last on this connection.
            answered = [True]
            with self._lock:
                self.connections += 1
                self._open.append((client, upstream, swallowed))
            threading.Thread(
                target=self._pump, args=(client, upstream, swallowed, answered, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, swallowed, answered, False), daemon=True
            ).start()

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        swallowed: threading.Event,
        answered: list[bool],
        from_client: bool,
    ) -> None:
        try:
            while piece := source.recv(65536):
                if swallowed.is_set():
                    continue
                with self._lock:
                    if from_client and answered[0]:
                        self.round_trips += 1
                    answered[0] = not from_client
                sink.sendall(piece)
        except OSError:
            pass
        finally:
            if not swallowed.is_set():
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[CountingProxy]:
    url = make_url(postgres_url)
    found = CountingProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
async def engine(postgres_url: str, proxy: CountingProxy) -> AsyncIterator[AsyncEngine]:
    created = create_engine(proxy.url(postgres_url))
    try:
        yield created
    finally:
        await created.dispose()


async def _backend_pid(engine: AsyncEngine) -> int:
    """The pid of the backend of the connection the pool hands out (in autocommit mode,
    so the statement is the only round trip)."""
    async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
        pid: int = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def _terminate(postgres_url: str, pids: list[int]) -> None:
    """pg_terminate_backend on each, waiting until the backend is gone."""
    url = make_url(postgres_url)
    admin = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        database=url.database,
    )  # fmt: skip
    try:
        for pid in pids:
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await admin.close()


class Returned:
    """The pool entries returned to ``engine``'s pool, to age them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.records: list[ConnectionPoolEntry] = []
        event.listen(engine.sync_engine, "checkin", self._returned)

    def _returned(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.records.append(record)

    def age(self, seconds: float) -> None:
        """As if every pooled connection had been returned ``seconds`` earlier."""
        for record in self.records:
            returned = record.info.get(engine_module._RETURNED_AT)
            if returned is not None:
                record.info[engine_module._RETURNED_AT] = returned - seconds


async def test_a_connection_used_just_now_is_handed_out_without_a_round_trip(
    engine: AsyncEngine, proxy: CountingProxy
) -> None:
    first = await _backend_pid(engine)
    before = proxy.round_trips
    assert await _backend_pid(engine) == first
    assert proxy.round_trips - before == 1  # the SELECT alone


async def test_the_connection_returned_last_is_handed_out_first(engine: AsyncEngine) -> None:
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as outer:
        async with autocommit.connect() as inner:
            await inner.execute(text("SELECT 1"))
        last = (await outer.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    assert await _backend_pid(engine) == last


async def test_a_connection_idle_for_a_while_is_pinged_with_one_round_trip(
    engine: AsyncEngine, proxy: CountingProxy
) -> None:
    returned = Returned(engine)
    first = await _backend_pid(engine)
    returned.age(engine_module.POSTGRES_PING_AFTER_IDLE_S)
    before = proxy.round_trips
    assert await _backend_pid(engine) == first
    assert proxy.round_trips - before == 2  # the ping, then the SELECT
    # Pinged, it counts as used now.
    before = proxy.round_trips
    assert await _backend_pid(engine) == first
    assert proxy.round_trips - before == 1


async def test_a_connection_the_server_closed_is_replaced_without_an_error(
    engine: AsyncEngine, proxy: CountingProxy, postgres_url: str
) -> None:
    first = await _backend_pid(engine)
    await _terminate(postgres_url, [first])
    connections = proxy.connections
    # Used a moment ago, so not pinged: the pool knows it is closed without asking.
    second = await _backend_pid(engine)
    assert second != first
    assert proxy.connections == connections + 1


async def test_a_connection_that_no_longer_answers_after_idling_is_replaced(
    engine: AsyncEngine, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A middlebox dropped the connection without telling either end: the ping is never
    answered, and after its timeout the connection is replaced."""
    monkeypatch.setattr(engine_module, "POSTGRES_PING_TIMEOUT_S", 0.5)
    returned = Returned(engine)
    first = await _backend_pid(engine)
    proxy.swallow_open_connections()
    returned.age(engine_module.POSTGRES_PING_AFTER_IDLE_S)
    second = await _backend_pid(engine)
    assert second != first


async def test_sqlite_connections_are_not_checked(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'br.db'}")
    try:
        assert not engine.sync_engine.pool._pre_ping
        pool = engine.sync_engine.pool
        assert not event.contains(pool, "checkout", engine_module._on_checkout)
    finally:
        await engine.dispose()


@pytest.fixture
async def client(
    tmp_path: Path, postgres_url: str, proxy: CountingProxy
) -> AsyncIterator[httpx.AsyncClient]:
    db = collection_doc(
        "db", acl=[{"name": "uploader", "type": "user", "roles": ["backupUploader"]}]
    )
    db["spec"].update(maxBackupsCount=2)
    write_config(tmp_path / "config", [user_doc("uploader", "uploader-pass", []), db])
    settings = make_settings(
        tmp_path, proxy.url(postgres_url), notify_interval=None, session_retention=None
    )
    migrating = create_engine(postgres_url)
    try:
        await migrate(migrating)
    finally:
        await migrating.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as found:
            yield found


async def test_requests_pay_no_round_trip_for_checking_their_connections(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    login = await client.post(
        "/api/stable/auth/login", json={"username": "uploader", "password": "uploader-pass"}
    )
    headers = {"Authorization": f"Bearer {login.json()['data']['token']}"}

    async def upload() -> None:
        response = await client.post(
            f"{BASE}/db/version", content=pad_to(MESSAGE, 2048), headers=headers
        )
        assert response.status_code == 200, response.text

    async def whoami() -> None:
        response = await client.get("/api/stable/auth/whoami", headers=headers)
        assert response.status_code == 200, response.text

    for _ in range(4):  # every statement prepared, rotations included
        await upload()
        await whoami()
    connections = proxy.connections
    before = proxy.round_trips
    await whoami()
    assert proxy.round_trips - before == 1  # the session lookup
    before = proxy.round_trips
    await upload()
    assert proxy.round_trips - before <= MAX_UPLOAD_ROUND_TRIPS
    assert proxy.connections == connections
