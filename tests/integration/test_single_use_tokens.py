"""Single-use upload tokens (login option ``singleUseUpload``) on SQLite and PostgreSQL: the
token uploads once and is then refused everywhere; refused uploads do not use it up; it can
do nothing but that one upload; concurrent uploads with it, in one process, against a real
server and against two servers sharing one PostgreSQL, record exactly one version."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.repositories import SqlSessionRepository
from backup_repository.db.tables import granted_accesses
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.http.app import create_app
from backup_repository.services.events import Action, Outcome
from backup_repository.services.ports import SessionConsumed, SessionRecord, VersionRecord
from backup_repository.services.tokens import session_id_of
from gpg_fixtures import GpgHome, pad_to
from support import (
    RecordingSink,
    ServerProcess,
    closed_windows,
    collection_doc,
    make_settings,
    start_server,
    user_doc,
    write_config,
)

Client = httpx.AsyncClient
LOGIN = "/api/stable/auth/login"
BASE = "/api/stable/repository/collection"
USED = "single-use token was already used or revoked"


def documents() -> list[dict[str, Any]]:
    acl = [
        {"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]},
        {"name": "reader", "type": "user", "roles": ["backupDownloader"]},
    ]
    db = collection_doc("db", acl=acl)
    db["spec"].update(maxOneVersionSize="64K", maxCollectionSize="192K")
    closed = collection_doc("closed", acl=acl)
    closed["spec"]["windows"] = closed_windows()
    return [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc(
            "uploader",
            "uploader-pass",
            [],
            access_keys=[
                {
                    "name": "ci",
                    "password": "ci-pass",
                    "objects": [{"name": "db", "type": "collection", "roles": ["backupUploader"]}],
                }
            ],
        ),
        user_doc("reader", "reader-pass", []),
        db,
        collection_doc("other", acl=acl),
        closed,
    ]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write_config(tmp_path / "config", documents())
    return tmp_path / "config"


@pytest.fixture
async def client(tmp_path: Path, database_url: str, config_dir: Path) -> AsyncIterator[Client]:
    app = create_app(make_settings(tmp_path, database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


async def login(client: Client, username: str, password: str, **extra: Any) -> httpx.Response:
    return await client.post(LOGIN, json={"username": username, "password": password, **extra})


async def bearer(client: Client, username: str, password: str, **extra: Any) -> dict[str, str]:
    response = await login(client, username, password, **extra)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


async def single_use(client: Client, collection: str = "db", **extra: Any) -> dict[str, str]:
    return await bearer(client, "uploader", "uploader-pass", singleUseUpload=collection, **extra)


def session_of(auth: dict[str, str]) -> str:
    return session_id_of(auth["Authorization"].removeprefix("Bearer "))


async def upload(
    client: Client, auth: dict[str, str], data: Any, name: str = "db"
) -> httpx.Response:
    return await client.post(f"{BASE}/{name}/version", content=data, headers=auth)


async def version_numbers(client: Client, name: str = "db") -> list[int]:
    admin = await bearer(client, "admin", "admin-pass")
    response = await client.get(f"{BASE}/{name}/version", headers=admin)
    assert response.status_code == 200, response.text
    return [v["versionNumber"] for v in response.json()["data"]["versions"]]


async def session_entry(client: Client, session_id: str) -> dict[str, Any]:
    admin = await bearer(client, "admin", "admin-pass")
    response = await client.get(
        "/api/stable/auth/token", params={"userName": "uploader"}, headers=admin
    )
    assert response.status_code == 200, response.text
    entries = {s["id"]: s for s in response.json()["data"]["grantedAccesses"]}
    entry: dict[str, Any] = entries[session_id]
    return entry


def assert_refused_as_used(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == USED


def stored_objects(storage: Path, collection: str = "db") -> list[str]:
    folder = storage / collection
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# -- works once, then 401 --------------------------------------------------------------------


async def test_works_once_then_401_everywhere(client: Client, gpg_home: GpgHome) -> None:
    sink = RecordingSink()
    client.app.state.services.events.add(sink)  # type: ignore[attr-defined]
    auth = await single_use(client)
    whoami = await client.get("/api/stable/auth/whoami", headers=auth)
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["data"]["grantedAccess"]["singleUseUpload"] == "db"

    data = gpg_home.encrypt(b"one upload")
    first = await upload(client, auth, data)
    assert first.status_code == 200, first.text
    assert first.json()["data"]["version"]["versionNumber"] == 1

    assert_refused_as_used(await upload(client, auth, data))
    assert_refused_as_used(await client.get(f"{BASE}/db/version/latest", headers=auth))
    assert_refused_as_used(await client.get(f"{BASE}/db/version", headers=auth))
    assert_refused_as_used(await client.get("/api/stable/auth/whoami", headers=auth))
    assert_refused_as_used(await client.get("/api/stable/auth/refresh_token", headers=auth))
    assert await version_numbers(client) == [1]

    entry = await session_entry(client, session_of(auth))
    assert entry["deactivated"] is True
    assert entry["singleUseUpload"] == "db"
    assert entry["description"] == "Single-use upload to db"

    revoked = [e for e in sink.events if e.action == Action.TOKEN_REVOKE]
    assert len(revoked) == 1
    assert revoked[0].outcome == Outcome.SUCCESS
    assert revoked[0].version == 1
    assert revoked[0].session == session_of(auth)[:12]
    # ... and kept in the audit log.
    admin = await bearer(client, "admin", "admin-pass")
    audit = await client.get("/api/stable/audit", params={"action": "token.revoke"}, headers=admin)
    assert audit.status_code == 200, audit.text
    [recorded] = audit.json()["data"]["events"]
    assert recorded["session"] == session_of(auth)[:12]
    assert recorded["collection"] == "db"
    assert recorded["version"] == 1


async def test_ordinary_tokens_show_null_and_are_not_consumed(
    client: Client, gpg_home: GpgHome
) -> None:
    auth = await bearer(client, "uploader", "uploader-pass")
    data = gpg_home.encrypt(b"many uploads")
    for _ in range(2):
        assert (await upload(client, auth, data)).status_code == 200
    entry = await session_entry(client, session_of(auth))
    assert entry["singleUseUpload"] is None
    assert entry["deactivated"] is False


async def test_form_login_and_ttl(client: Client, gpg_home: GpgHome) -> None:
    response = await client.post(
        LOGIN,
        data={
            "username": "uploader$ci",
            "password": "ci-pass",
            "singleUseUpload": "db",
            "ttl": "10m",
        },
    )
    assert response.status_code == 200, response.text
    issued = response.json()["data"]
    expire = datetime.fromisoformat(issued["expire"].replace("Z", "+00:00"))
    assert expire - datetime.now(UTC) <= timedelta(minutes=10, seconds=5)
    auth = {"Authorization": f"Bearer {issued['token']}"}
    assert (await upload(client, auth, gpg_home.encrypt(b"key"))).status_code == 200
    assert_refused_as_used(await upload(client, auth, gpg_home.encrypt(b"key")))


# -- refused uploads do not use it up --------------------------------------------------------


async def test_refused_uploads_do_not_consume_the_token(
    client: Client, gpg_home: GpgHome, tmp_path: Path
) -> None:
    auth = await single_use(client)
    sample = gpg_home.encrypt(b"q")
    refusals = [
        (b"plain text, not encrypted\n" * 10, 400),  # OpenPGP check
        (pad_to(sample, 64 * 1024 + 1), 413),  # quota
        (b"", 400),  # empty body
    ]
    for body, status in refusals:
        response = await upload(client, auth, body)
        assert response.status_code == status, response.text

    # Another upload holds the collection's lock: 409, the token stays usable.
    other = await bearer(client, "uploader", "uploader-pass")
    release, started = asyncio.Event(), asyncio.Event()
    slow_data = gpg_home.encrypt(b"slow" * 100)

    async def slow() -> AsyncIterator[bytes]:
        yield slow_data[:100]
        started.set()
        await release.wait()
        yield slow_data[100:]

    holder = asyncio.create_task(upload(client, other, slow()))
    await asyncio.wait_for(started.wait(), 10)
    assert (await upload(client, auth, sample)).status_code == 409
    release.set()
    assert (await holder).status_code == 200

    assert (await client.get("/api/stable/auth/whoami", headers=auth)).status_code == 200
    accepted = await upload(client, auth, sample)
    assert accepted.status_code == 200, accepted.text
    # Refused uploads used no version numbers and left no objects behind.
    assert accepted.json()["data"]["version"]["versionNumber"] == 2
    assert await version_numbers(client) == [2, 1]
    assert stored_objects(tmp_path / "storage") == ["db-1.tar.gz", "db-2.tar.gz"]
    assert_refused_as_used(await upload(client, auth, sample))


async def test_closed_window_refuses_without_consuming(client: Client, gpg_home: GpgHome) -> None:
    data = gpg_home.encrypt(b"window")
    auth = await single_use(client, "closed")
    response = await upload(client, auth, data, name="closed")
    assert response.status_code == 403
    assert "backup window" in response.json()["error"]
    assert (await client.get("/api/stable/auth/whoami", headers=auth)).status_code == 200
    # A systemAdmin's single-use token keeps uploadsAnytime on its collection.
    admin = await bearer(client, "admin", "admin-pass", singleUseUpload="closed")
    assert (await upload(client, admin, data, name="closed")).status_code == 200
    assert_refused_as_used(await upload(client, admin, data, name="closed"))


async def test_revoked_during_the_upload_records_nothing(
    client: Client, gpg_home: GpgHome, tmp_path: Path
) -> None:
    """The token is checked again in the transaction that records the version: revoked
    (or used by another replica) while the body streams, the upload is refused with 401, its
    object removed and its number not used."""
    auth = await single_use(client)
    data = gpg_home.encrypt(b"streaming" * 100)
    release, started = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:100]
        started.set()
        await release.wait()
        yield data[100:]

    pending = asyncio.create_task(upload(client, auth, slow()))
    await asyncio.wait_for(started.wait(), 10)
    assert (await client.delete("/api/stable/auth/logout", headers=auth)).status_code == 200
    release.set()
    response = await pending
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "token was already used"
    assert await version_numbers(client) == []
    assert stored_objects(tmp_path / "storage") == []
    ordinary = await bearer(client, "uploader", "uploader-pass")
    accepted = await upload(client, ordinary, data)
    assert accepted.json()["data"]["version"]["versionNumber"] == 1


# -- narrowed to one upload ------------------------------------------------------------------


async def test_can_do_nothing_but_upload_to_its_collection(
    client: Client, gpg_home: GpgHome
) -> None:
    ordinary = await bearer(client, "uploader", "uploader-pass")
    data = gpg_home.encrypt(b"existing")
    assert (await upload(client, ordinary, data)).status_code == 200
    auth = await single_use(client)

    assert (await client.get(f"{BASE}/db/version/latest", headers=auth)).status_code == 403
    assert (await client.get(f"{BASE}/db/version", headers=auth)).status_code == 403
    assert (await upload(client, auth, data, name="other")).status_code == 403
    assert (await client.get(f"{BASE}/other/version", headers=auth)).status_code == 403
    assert (await client.get("/api/stable/auth/token", headers=auth)).status_code == 403
    refresh = await client.get("/api/stable/auth/refresh_token", headers=auth)
    assert refresh.status_code == 403
    assert refresh.json()["error"] == "a single-use upload token cannot be refreshed"
    revoke_other = await client.delete(
        "/api/stable/auth/logout", params={"sessionId": session_of(ordinary)}, headers=auth
    )
    assert revoke_other.status_code == 403
    listing = await client.get(f"{BASE}", headers=auth)
    assert listing.status_code == 200
    assert [c["id"] for c in listing.json()["data"]["collections"]] == ["db"]

    # None of this used it up; the one upload goes through.
    assert (await upload(client, auth, data)).status_code == 200
    # The ordinary token is untouched.
    assert (await client.get(f"{BASE}/db/version", headers=ordinary)).status_code == 200


async def test_logout_revokes_it(client: Client, gpg_home: GpgHome) -> None:
    auth = await single_use(client)
    assert (await client.delete("/api/stable/auth/logout", headers=auth)).status_code == 200
    assert_refused_as_used(await upload(client, auth, gpg_home.encrypt(b"late")))


@pytest.mark.parametrize(
    ("username", "password", "extra", "status", "message"),
    [
        ("reader", "reader-pass", {"singleUseUpload": "db"}, 403, "singleUseUpload"),
        ("uploader$ci", "ci-pass", {"singleUseUpload": "other"}, 403, "singleUseUpload"),
        (
            "uploader",
            "uploader-pass",
            {
                "singleUseUpload": "db",
                "operationsScope": {
                    "elements": [{"type": "collection", "name": "other", "roles": ["systemAdmin"]}]
                },
            },
            403,
            "singleUseUpload",
        ),
        ("uploader", "uploader-pass", {"singleUseUpload": "missing"}, 404, "collection"),
        ("uploader", "uploader-pass", {"singleUseUpload": ""}, 400, "singleUseUpload"),
        ("uploader", "uploader-pass", {"singleUseUpload": 5}, 400, "singleUseUpload"),
        ("uploader", "uploader-pass", {"singleUseUpload": "x" * 256}, 400, "singleUseUpload"),
        ("uploader", "wrong", {"singleUseUpload": "db"}, 401, "incorrect Username or Password"),
        ("reader", "wrong", {"singleUseUpload": "missing"}, 401, "incorrect"),
    ],
    ids=[
        "no-upload-right",
        "key-not-for-collection",
        "scope-excludes-it",
        "unknown-collection",
        "empty",
        "not-a-string",
        "too-long",
        "bad-password",
        "bad-password-before-collection",
    ],
)
async def test_login_refused(
    client: Client,
    username: str,
    password: str,
    extra: dict[str, Any],
    status: int,
    message: str,
) -> None:
    response = await login(client, username, password, **extra)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] is False
    assert message in body["error"]
    admin = await bearer(client, "admin", "admin-pass")
    user = username.split("$")[0]
    sessions = await client.get("/api/stable/auth/token", params={"userName": user}, headers=admin)
    assert sessions.json()["data"]["grantedAccesses"] == []


# -- the repository primitive ----------------------------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


def _version(number: int, session_id: str) -> VersionRecord:
    now = datetime.now(UTC)
    return VersionRecord(
        id=f"00000000-0000-0000-0000-{number:012d}",
        collection_id="db",
        number=number,
        filename=f"db-{number}",
        storage_key=f"db/db-{number}",
        size=1,
        sha256="0" * 64,
        session_id=session_id,
        user="uploader",
        created_at=now,
        updated_at=now,
    )


async def test_commit_consumes_the_session_once(engine: AsyncEngine) -> None:
    sessions, versions = SqlSessionRepository(engine), SqlVersionRepository(engine)
    session_id = "a" * 64
    await sessions.add(
        SessionRecord(
            id=session_id,
            user="uploader",
            access_key_name="",
            requester_ip="127.0.0.1",
            description="Single-use upload to db",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            single_use_collection="db",
        )
    )
    stored = await sessions.get(session_id)
    assert stored is not None
    assert stored.single_use_collection == "db"

    assert await versions.try_lock("db", "one", 30) == 0
    await versions.commit_version(_version(1, session_id), "one", [], consume_session_id=session_id)
    consumed = await sessions.get(session_id)
    assert consumed is not None
    assert consumed.deactivated

    # The second commit with the same session records nothing, not even the counter.
    with pytest.raises(SessionConsumed):
        await versions.commit_version(
            _version(2, session_id), "one", [], consume_session_id=session_id
        )
    assert [v.number for v in await versions.live_versions("db")] == [1]
    await versions.release_lock("db", "one")
    assert await versions.try_lock("db", "two", 30) == 1


async def test_commit_refuses_a_soft_deleted_or_missing_session(engine: AsyncEngine) -> None:
    sessions, versions = SqlSessionRepository(engine), SqlVersionRepository(engine)
    session_id = "b" * 64
    await sessions.add(
        SessionRecord(
            id=session_id,
            user="uploader",
            access_key_name="",
            requester_ip="127.0.0.1",
            description="x",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            single_use_collection="db",
        )
    )
    async with engine.begin() as connection:
        await connection.execute(
            update(granted_accesses)
            .where(granted_accesses.c.id == session_id)
            .values(deleted_at=datetime.now(UTC))
        )
    assert await versions.try_lock("db", "one", 30) == 0
    for consume in (session_id, "c" * 64):
        with pytest.raises(SessionConsumed):
            await versions.commit_version(
                _version(1, consume), "one", [], consume_session_id=consume
            )
    assert await versions.live_versions("db") == []


# -- concurrent uploads against real servers -------------------------------------------------


@pytest.fixture
def payload(gpg_home: GpgHome) -> bytes:
    # Incompressible and not compressed: large enough that the uploads overlap.
    return gpg_home.encrypt(os.urandom(48 * 1024), compress=False)


async def _race(urls: list[str], payload: bytes, attempts: int = 8) -> tuple[list[int], str]:
    """Log in once with a single-use token, then send ``attempts`` uploads with it at once,
    spread over ``urls``. Returns their statuses and the token."""
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(
            urls[0] + LOGIN,
            json={"username": "uploader", "password": "uploader-pass", "singleUseUpload": "db"},
        )
        assert response.status_code == 200, response.text
        token = response.json()["data"]["token"]
        headers = {"Authorization": f"Bearer {token}"}
        responses = await asyncio.gather(
            *(
                http.post(
                    f"{urls[i % len(urls)]}{BASE}/db/version", content=payload, headers=headers
                )
                for i in range(attempts)
            )
        )
    return [r.status_code for r in responses], token


async def _check_after_race(urls: list[str], statuses: list[int], token: str) -> None:
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 401, 409}, statuses
    async with httpx.AsyncClient(timeout=30) as http:
        for url in urls:
            whoami = await http.get(
                url + "/api/stable/auth/whoami", headers={"Authorization": f"Bearer {token}"}
            )
            assert whoami.status_code == 401
        admin = await http.post(
            urls[0] + LOGIN, json={"username": "admin", "password": "admin-pass"}
        )
        headers = {"Authorization": f"Bearer {admin.json()['data']['token']}"}
        listing = await http.get(f"{urls[-1]}{BASE}/db/version", headers=headers)
        assert [v["versionNumber"] for v in listing.json()["data"]["versions"]] == [1]


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


async def test_concurrent_uploads_with_one_token_on_a_real_server(
    tmp_path: Path,
    database_url: str,
    config_dir: Path,
    payload: bytes,
    servers: list[ServerProcess],
) -> None:
    servers.append(start_server(tmp_path / "server", config_dir, db_url=database_url))
    statuses, token = await _race([servers[0].url], payload)
    await _check_after_race([servers[0].url], statuses, token)
    assert stored_objects(tmp_path / "server" / "storage") == ["db-1.tar.gz"]


async def test_concurrent_uploads_across_two_replicas(
    tmp_path: Path,
    postgres_url: str,
    config_dir: Path,
    payload: bytes,
    servers: list[ServerProcess],
) -> None:
    storage = (tmp_path / "shared-storage").as_uri()
    for name in ("one", "two"):
        servers.append(
            start_server(
                tmp_path / name,
                config_dir,
                db_url=postgres_url,
                extra_args=["--storage-url", storage],
            )
        )
    urls = [s.url for s in servers]
    for _ in range(3):
        # Each round: a fresh token, eight uploads spread over both replicas.
        statuses, _ = await _race(urls, payload)
        assert statuses.count(200) == 1, statuses
        assert set(statuses) <= {200, 401, 409}, statuses
    await _check_rounds(urls, rounds=3)
    assert stored_objects(tmp_path / "shared-storage") == [
        "db-1.tar.gz",
        "db-2.tar.gz",
        "db-3.tar.gz",
    ]


async def _check_rounds(urls: list[str], rounds: int) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        admin = await http.post(
            urls[0] + LOGIN, json={"username": "admin", "password": "admin-pass"}
        )
        headers = {"Authorization": f"Bearer {admin.json()['data']['token']}"}
        for url in urls:
            listing = await http.get(f"{url}{BASE}/db/version", headers=headers)
            numbers = [v["versionNumber"] for v in listing.json()["data"]["versions"]]
            assert numbers == list(range(rounds, 0, -1))
