"""The web console's dashboard and collection page in process (httpx over ASGI): the
figures equal the API's, statuses (ok, late, failing, unknown) follow the health checks
and a controlled clock, authorization is the API's, downloads are the stored bytes, and
every page carries the CSP and works without script. One app per database for the module.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from backup_repository.domain.integrity import format_bytes
from backup_repository.http.app import create_app
from backup_repository.http.ui.headers import CONTENT_SECURITY_POLICY
from backup_repository.services.console import ConsoleService, Status
from backup_repository.services.passwords import PasswordHasher
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import KNOWN_PASSWORDS, collection_doc, make_settings, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

API = "/api/stable/repository/collection"
PEER = ("127.0.0.1", 40000)
UPLOADER = ("uploader", "uploader-pass")
STRANGER = ("stranger", "stranger-pass")
ADMIN = ("admin", "admin-pass")
READER = ("reader", "reader-pass")


def _collection(name: str, acl: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    doc = collection_doc(name, acl=acl)
    doc["spec"].update(spec)
    return doc


# Stored passwords that take a millisecond to check: the tests log in often.
_CHEAP = PasswordHasher(1, time_cost=1, memory_cost=1024, parallelism=1)


def cheap_user(name: str, password: str, roles: list[str], **spec: Any) -> dict[str, Any]:
    KNOWN_PASSWORDS.add(password)  # for the check that no server log holds it
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupUser",
        "metadata": {"name": name},
        "spec": {
            "email": f"{name}@example.org",
            "password": _CHEAP.hash_sync(password),
            "roles": roles,
            **spec,
        },
    }


def documents() -> list[dict[str, Any]]:
    uploader = [{"userName": "uploader", "roles": ["backupUploader", "backupDownloader"]}]
    return [
        cheap_user("admin", "admin-pass", ["systemAdmin"]),
        cheap_user("uploader", "uploader-pass", []),
        cheap_user("reader", "reader-pass", []),
        cheap_user("stranger", "stranger-pass", []),
        _collection(
            "db",
            [*uploader, {"userName": "reader", "roles": ["backupUploader"]}],
            maxBackupsCount=4,
            maxOneVersionSize="64K",
            maxCollectionSize="256K",
        ),
        # Daily at 03:00 UTC for an hour; the uploader may upload outside it.
        _collection(
            "windowed",
            [{"userName": "uploader", "roles": ["backupUploader", "uploadsAnytime"]}],
            windows=[{"from": "0 3 * * *", "duration": "1h"}],
        ),
        _collection("empty", uploader),
        _collection("tampered", uploader),
        _collection("admins-only", []),
    ]


@dataclass
class World:
    client: httpx.AsyncClient
    app: Any
    storage: Path
    uploaded: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def console(self) -> ConsoleService:
        console: ConsoleService = self.app.state.console
        return console


async def _api_token(client: httpx.AsyncClient, who: tuple[str, str]) -> dict[str, str]:
    response = await client.post(
        "/api/stable/auth/login", json={"username": who[0], "password": who[1]}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


async def console_login(client: httpx.AsyncClient, who: tuple[str, str]) -> None:
    client.cookies.clear()
    page = await client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
    assert token
    response = await client.post(
        "/ui/login", data={"username": who[0], "password": who[1], "csrf_token": token[1]}
    )
    assert response.status_code == 303, response.text


def _postgres_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _world(request: pytest.FixtureRequest, tmp: Path, backend: str) -> AsyncIterator[World]:
    database = None
    if backend == "postgres":
        admin_url: str = request.getfixturevalue("postgres_admin_url")
        database = f"br_test_{uuid.uuid4().hex[:16]}"
        connection = await asyncpg.connect(_postgres_dsn(admin_url))
        await connection.execute(f'CREATE DATABASE "{database}"')
        await connection.close()
        db_url = make_url(admin_url).set(database=database).render_as_string(False)
    else:
        db_url = f"sqlite:///{tmp / 'db.sqlite'}"
    write_config(tmp / "config", documents())
    app = create_app(make_settings(tmp, db_url))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=PEER)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                world = World(client, app, tmp / "storage")
                await _fill(world)
                yield world
    finally:
        if database is not None:
            connection = await asyncpg.connect(_postgres_dsn(admin_url))
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await connection.close()


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
async def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_world: World,
) -> AsyncIterator[World]:
    """The world on SQLite and on PostgreSQL: for the tests of what the database answers."""
    if request.param == "sqlite":
        yield sqlite_world
        return
    async for found in _world(request, tmp_path_factory.mktemp("console-pg"), "postgres"):
        yield found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sqlite_world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """The world on SQLite only: for the tests of what does not depend on the database."""
    async for found in _world(request, tmp_path_factory.mktemp("console"), "sqlite"):
        yield found


async def _fill(world: World) -> None:
    sample = (SAMPLES_DIR / "public-key.gpg").read_bytes()
    auth = await _api_token(world.client, UPLOADER)
    # db: a big version, then one that shrank to a fifth of it.
    for name, size in [("db", 20_000), ("db", 30_000), ("db", 6_000), ("windowed", 2_000)]:
        response = await world.client.post(
            f"{API}/{name}/version", content=pad_to(sample, size), headers=auth
        )
        assert response.status_code == 200, response.text
        world.uploaded.setdefault(name, []).append(response.json()["data"]["version"])
    response = await world.client.post(
        f"{API}/tampered/version", content=pad_to(sample, 3_000), headers=auth
    )
    assert response.status_code == 200, response.text
    # Its stored object damaged, and found so by an integrity check.
    stored = [p for p in world.storage.rglob("*") if p.is_file() and "tampered" in str(p)]
    assert len(stored) == 1, stored
    data = bytearray(stored[0].read_bytes())
    data[-1] ^= 0xFF
    stored[0].write_bytes(bytes(data))
    report = await world.app.state.services.integrity.verify("tampered")
    assert not report.all_ok


def rows(page: str) -> dict[str, dict[str, str]]:
    """The dashboard's rows: their data attributes by collection."""
    found: dict[str, dict[str, str]] = {}
    for tag in re.findall(r"<tr data-collection=[^>]*>", page):
        attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag))
        found[html.unescape(attributes["collection"])] = attributes
    return found


INLINE = [
    re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.I),
    re.compile(r"<style", re.I),
    re.compile(r"\sstyle=", re.I),
    re.compile(r"\son[a-z]+=", re.I),
    re.compile(r"javascript:", re.I),
]


def assert_console_page(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["cache-control"] == "no-store"
    for pattern in INLINE:
        assert not pattern.search(response.text), pattern.pattern
    return response.text


async def test_dashboard_figures_equal_the_api(world: World) -> None:
    client = world.client
    auth = await _api_token(client, UPLOADER)
    await console_login(client, UPLOADER)
    page = assert_console_page(await client.get("/ui/"))
    shown = rows(page)
    listed = (await client.get(API, headers=auth)).json()["data"]["collections"]
    # The same collections as the API lists for the user: never one of someone else.
    assert set(shown) == {c["id"] for c in listed} == {"db", "windowed", "empty", "tampered"}
    for entry in listed:
        row, usage = shown[entry["id"]], entry["usage"]
        assert int(row["versions"]) == usage["versions"]
        assert int(row["max-versions"]) == usage["maxBackupsCount"]
        assert int(row["bytes-used"]) == usage["bytesUsed"]
        assert int(row["max-bytes"]) == usage["maxCollectionSize"]
        assert int(row["max-version-size"]) == usage["maxOneVersionSize"]
        assert f"{format_bytes(usage['bytesUsed'])} of " in page
        versions = (await client.get(f"{API}/{entry['id']}/version", headers=auth)).json()
        live = versions["data"]["versions"]
        assert int(row["biggest"]) == max((v["filesize"] for v in live), default=0)
        if live:
            newest = datetime.fromisoformat(live[0]["CreatedAt"].replace("Z", "+00:00"))
            assert datetime.fromisoformat(row["last-backup"]) == newest
        else:
            assert row["last-backup"] == ""
    # Worst first (the window of "windowed" depends on the time of day: see the next tests).
    ranks = [list(Status).index(Status(row["status"])) for row in shown.values()]
    assert ranks == sorted(ranks)
    assert next(iter(shown)) == "tampered"
    assert shown["tampered"]["status"] == "failing"
    assert shown["empty"]["status"] == "unknown"
    assert shown["db"]["status"] == "ok"
    assert "v3 is 20% of the size of v2" in page
    # The size chart is an inline SVG with a text alternative; the shrunk version is marked.
    assert 'class="drop"' in page
    assert "much smaller than the version before: v3" in page


async def test_filter_by_name_works_without_script(sqlite_world: World) -> None:
    world = sqlite_world
    await console_login(world.client, UPLOADER)
    page = assert_console_page(await world.client.get("/ui/", params={"name": "WIND"}))
    assert list(rows(page)) == ["windowed"]
    assert 'value="WIND"' in page
    none = assert_console_page(await world.client.get("/ui/", params={"name": "zzz"}))
    assert rows(none) == {}
    assert "No collection" in none


async def test_a_missed_window_shows_late(sqlite_world: World) -> None:
    world = sqlite_world
    """The console's clock moved: while the window is open the collection is ok; after a
    window closed without a version it is late."""
    await console_login(world.client, UPLOADER)
    uploaded = datetime.fromisoformat(world.uploaded["windowed"][0]["CreatedAt"])
    next_day = (uploaded + timedelta(days=1)).replace(hour=3, minute=30, second=0)
    original = world.console
    try:
        world.app.state.console = original.with_clock(lambda: next_day)
        during = rows(assert_console_page(await world.client.get("/ui/")))
        assert during["windowed"]["status"] == "ok"
        world.app.state.console = original.with_clock(lambda: next_day + timedelta(hours=2))
        page = assert_console_page(await world.client.get("/ui/"))
        assert rows(page)["windowed"]["status"] == "late"
        assert "no version was uploaded in the most recent backup window" in page
        detail = assert_console_page(await world.client.get("/ui/collections/windowed"))
        assert 'status-late">late' in detail
        assert "How to fix:" in detail
        expected = (next_day + timedelta(days=1)).replace(minute=0).astimezone(UTC)
        assert f"{expected:%Y-%m-%d %H:%M} UTC" in detail  # the next opening
    finally:
        world.app.state.console = original


async def test_collection_page_and_download(world: World) -> None:
    client = world.client
    await console_login(client, UPLOADER)
    page = assert_console_page(await client.get("/ui/collections/db"))
    versions = re.findall(r'data-version="(\d+)" data-sha256="([0-9a-f]{64})"', page)
    uploaded = world.uploaded["db"]
    assert versions == [(str(v["versionNumber"]), v["sha256"]) for v in reversed(uploaded)]
    for name in ["BackupWindowValidator", "VersionsSizeValidator", "StoredObjectsValidator"]:
        assert name in page
    assert "backup-maker make -i db" in page
    assert "backup-maker restore -i db -s 3" in page
    assert "http://test/api/stable/repository/collection/db/version" in page
    for version in uploaded:
        response = await client.get(
            f"/ui/collections/db/versions/{version['versionNumber']}/download"
        )
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == version["sha256"]
        assert response.headers["x-content-sha256"] == version["sha256"]
        assert "attachment" in response.headers["content-disposition"]
    damaged = assert_console_page(await client.get("/ui/collections/tampered"))
    assert "corrupt" in damaged
    assert "SHA-256 differs" in damaged
    assert "status-failing" in damaged


async def test_authorization_is_the_apis(sqlite_world: World) -> None:
    world = sqlite_world
    client = world.client
    await console_login(client, STRANGER)
    assert rows(assert_console_page(await client.get("/ui/"))) == {}
    auth = await _api_token(client, STRANGER)
    for path in ["db", "admins-only", "no-such-collection"]:
        api = await client.get(f"{API}/{path}/version", headers=auth)
        console = await client.get(f"/ui/collections/{path}")
        assert console.status_code == api.status_code, path
        assert console.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "<h1>" in console.text
    download = await client.get("/ui/collections/db/versions/1/download")
    assert download.status_code == 403
    # reader may upload to db but not download: the page says so, the download is refused.
    await console_login(client, READER)
    page = assert_console_page(await client.get("/ui/collections/db"))
    assert "no download right" in page
    assert (await client.get("/ui/collections/db/versions/1/download")).status_code == 403
    await console_login(client, ADMIN)
    assert "admins-only" in rows(assert_console_page(await client.get("/ui/")))


async def test_static_files_and_unknown_pages(sqlite_world: World) -> None:
    world = sqlite_world
    client = world.client
    css = await client.get("/ui/static/console.css")
    assert css.status_code == 200
    assert css.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert (await client.get("/ui/static/console.js")).status_code == 200
    missing = await client.get("/ui/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    await asyncio.sleep(0)


async def test_the_dashboards_integrity_verdict_is_the_health_reports() -> None:
    """The dashboard reads only the checks that were not ok and a tally of the others; its
    verdict and message equal the health report's over every check."""
    import random

    from backup_repository.domain.integrity import CheckStatus, LatestCheck, integrity_health
    from backup_repository.services.console import _integrity
    from backup_repository.services.ports import CheckMark, VersionSize

    rng = random.Random(7)
    at = datetime(2026, 12, 1, tzinfo=UTC)
    for _ in range(300):
        live = [VersionSize(n, 10) for n in range(1, rng.randint(0, 12) + 1)]
        statuses = {v.number: rng.choice([None, *CheckStatus]) for v in live}  # None: never checked
        full = [
            LatestCheck(n, s, "" if s is CheckStatus.OK else f"detail {n}", at)
            for n, s in statuses.items()
            if s is not None
        ]
        expected = integrity_health([v.number for v in live], full)
        marks = [
            CheckMark(f"id{c.number}", c.number, c.status.value, c.detail)
            for c in full
            if c.status is not CheckStatus.OK
        ]
        got = _integrity(live, marks, (len(full), at) if full else None)
        assert (got.status, got.message, got.details) == (
            expected.ok,
            expected.message,
            expected.problems,
        )
