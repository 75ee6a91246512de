"""Server time of the tokens and administration pages of the web console with a big world:
100 collections, 10,000 versions, 20,000 audit events and 300 sessions of the caller, on
SQLite and PostgreSQL, in process (httpx over ASGI: the time of the app, without a
network). Each page must answer in under 100 ms (the median of a few requests, after one
to warm up). A timing test, so a long one (``make test-slow``, serial): on a machine busy
with the parallel suite the figures mean little."""

from __future__ import annotations

import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from backup_repository.db.engine import create_engine
from backup_repository.db.tables import audit_events, backup_versions, granted_accesses
from backup_repository.http.app import create_app
from backup_repository.services.passwords import PasswordHasher
from support import collection_doc, make_settings, write_config

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

COLLECTIONS = 100
VERSIONS = 10_000
AUDIT_EVENTS = 20_000
SESSIONS = 300
LIMIT_MS = 100.0
ROUNDS = 5
PAGES = [
    "/ui/tokens",
    "/ui/admin",
    "/ui/admin/audit",
    "/ui/admin/audit?action=upload&outcome=failure",
    "/ui/admin/audit?user=user-7&collection=c-007",
    "/ui/admin/audit?action=verify",  # a rare event: the newest page scans far
    "/ui/admin/audit?since=2026-01-01T00:00&until=2026-01-02T00:00",
    "/ui/admin/problems",
    "/ui/admin/readiness",
    "/ui/admin/users",
    "/ui/admin/collections",
]
_CHEAP = PasswordHasher(1, time_cost=1, memory_cost=1024, parallelism=1)


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "backups.riotkit.org/v1alpha1",
            "kind": "BackupUser",
            "metadata": {"name": "admin"},
            "spec": {
                "email": "admin@example.org",
                "password": _CHEAP.hash_sync("admin-pass"),
                "roles": ["systemAdmin"],
            },
        }
    ]
    for index in range(COLLECTIONS):
        doc = collection_doc(
            f"c-{index:03d}", acl=[{"name": "admin", "type": "user", "roles": ["backupUploader"]}]
        )
        doc["spec"]["maxBackupsCount"] = 200
        doc["spec"]["windows"] = [{"from": "0 1 * * *", "duration": "2h"}]
        docs.append(doc)
    return docs


async def _fill(db_url: str) -> None:
    """The rows a long-running server would have, written directly."""
    engine = create_engine(db_url)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(backup_versions),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "collection_id": f"c-{i % COLLECTIONS:03d}",
                        "version_number": i // COLLECTIONS + 1,
                        "filename": f"c-{i % COLLECTIONS:03d}-{i // COLLECTIONS + 1}.tar.gz",
                        "storage_key": f"c-{i % COLLECTIONS:03d}/{i}",
                        "filesize": 1000 + i,
                        "sha256": "0" * 64,
                        "uploaded_by_session_id": "0" * 64,
                        "user_name": "admin",
                        "created_at": start + timedelta(minutes=i),
                        "updated_at": start + timedelta(minutes=i),
                    }
                    for i in range(VERSIONS)
                ],
            )
            await connection.execute(
                insert(audit_events),
                [
                    {
                        "at": start + timedelta(seconds=30 * i),
                        "action": "verify" if i == 5 else ("upload" if i % 3 else "download"),
                        "outcome": "failure" if i % 7 == 0 else "success",
                        "user_name": f"user-{i % 50}",
                        "access_key_name": "",
                        "client_ip": "192.0.2.1",
                        "collection_id": f"c-{i % COLLECTIONS:03d}",
                        "version_number": i % 100,
                        "size": 1000,
                        "reason": "",
                        "session": "0" * 12,
                        "detail": "",
                    }
                    for i in range(AUDIT_EVENTS)
                ],
            )
            now = datetime.now(UTC)
            await connection.execute(
                insert(granted_accesses),
                [
                    {
                        "id": f"{i:064x}",
                        "user_name": "admin",
                        "access_key_name": "",
                        "requester_ip": "192.0.2.1",
                        "description": "Login",
                        "expires_at": now + timedelta(days=1),
                        "deactivated": i % 2 == 0,
                        "created_at": now - timedelta(minutes=i + 1),
                        "updated_at": now - timedelta(minutes=i + 1),
                    }
                    for i in range(SESSIONS)
                ],
            )
    finally:
        await engine.dispose()


def _postgres_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
async def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    tmp: Path = tmp_path_factory.mktemp("console-speed")
    database = None
    if request.param == "postgres":
        admin_url: str = request.getfixturevalue("postgres_admin_url")
        database = f"br_test_{uuid.uuid4().hex[:16]}"
        connection = await asyncpg.connect(_postgres_dsn(admin_url))
        await connection.execute(f'CREATE DATABASE "{database}"')
        await connection.close()
        db_url = make_url(admin_url).set(database=database).render_as_string(False)
    else:
        db_url = f"sqlite:///{tmp / 'db.sqlite'}"
    write_config(tmp / "config", documents())
    (tmp / "config" / "broken.yaml").write_text(
        "apiVersion: backups.riotkit.org/v1alpha1\nkind: BackupUser\nmetadata: {name: x}\n"
        "spec: {email: x@example.org, password: '', roles: [nobody]}\n"
    )
    app = create_app(make_settings(tmp, db_url))
    try:
        async with app.router.lifespan_context(app):
            await _fill(db_url)
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                page = await client.get("/ui/login")
                token = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
                assert token
                response = await client.post(
                    "/ui/login",
                    data={"username": "admin", "password": "admin-pass", "csrf_token": token[1]},
                )
                assert response.status_code == 303, response.text
                yield client
    finally:
        if database is not None:
            connection = await asyncpg.connect(_postgres_dsn(admin_url))
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await connection.close()


@pytest.mark.parametrize("path", PAGES)
async def test_page_answers_within_100_ms(client: httpx.AsyncClient, path: str) -> None:
    timings = []
    for round_ in range(ROUNDS + 1):
        started = time.perf_counter()
        response = await client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, response.text[:500]
        if round_:
            timings.append(elapsed)
    median = statistics.median(timings)
    print(f"{path}: median {median:.1f} ms, max {max(timings):.1f} ms")
    assert median < LIMIT_MS, f"{path}: {median:.1f} ms (limit {LIMIT_MS} ms)"
