"""The audit log over the API in process, on SQLite and PostgreSQL: what each action
records (read back through ``GET /api/stable/audit``), the filters and pages, who may read
it, the structured log line, and that the audit never fails an action nor keeps a secret."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.audit import SqlAuditRepository
from backup_repository.db.engine import create_engine, migrate
from backup_repository.http.app import create_app
from backup_repository.services.audit import AUDIT_LOGGER, AuditFilters, AuditLog
from backup_repository.services.events import Action, Event, Outcome, short_session
from backup_repository.services.tokens import session_id_of
from gpg_fixtures import GpgHome, pad_to
from support import closed_windows, collection_doc, make_settings, user_doc, write_config

AUDIT = "/api/stable/audit"
LOGIN = "/api/stable/auth/login"
BASE = "/api/stable/repository/collection"
CLIENT_IP = "198.51.100.7"
ADMIN = ("admin", "admin-pass")
UPLOADER = ("uploader", "uploader-pass")
KEY = ("uploader$ci", "ci-pass")
READER = ("reader", "reader-pass")
STRANGER = ("stranger", "stranger-pass")
BAD_CREDENTIALS = (
    "incorrect Username or Password: the username, access key or password was not accepted "
    "(an unknown or deactivated user is refused alike); check them and try again"
)


def documents() -> list[dict[str, Any]]:
    acl = [
        {"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]},
        {"name": "reader", "type": "user", "roles": ["backupDownloader"]},
    ]
    db = collection_doc("db", acl=acl)
    db["spec"].update(maxBackupsCount=2, maxOneVersionSize="16K", maxCollectionSize="64K")
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
        user_doc("stranger", "stranger-pass", []),
        db,
        closed,
    ]


class Records(logging.Handler):
    """Every record of the audit logger, whatever the logging set-up does with them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def audit_records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger(AUDIT_LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    config_dir: Path
    database_url: str

    def client_from(self, ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
async def world(tmp_path: Path, database_url: str) -> AsyncIterator[World]:
    config_dir = tmp_path / "config"
    write_config(config_dir, documents())
    app = create_app(make_settings(tmp_path, database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield World(app, client, config_dir, database_url)


async def login(client: httpx.AsyncClient, credentials: tuple[str, str]) -> str:
    response = await client.post(
        LOGIN, json={"username": credentials[0], "password": credentials[1]}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def short(token: str) -> str:
    return short_session(session_id_of(token))


async def audit(client: httpx.AsyncClient, admin: str, **params: str | int) -> list[dict[str, Any]]:
    response = await client.get(AUDIT, params=params, headers=bearer(admin))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] is True
    events: list[dict[str, Any]] = body["data"]["events"]
    return events


def fields(event: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(event[name] for name in names)


async def upload(
    client: httpx.AsyncClient, token: str | None, data: Any, name: str = "db"
) -> httpx.Response:
    headers = bearer(token) if token else {}
    return await client.post(f"{BASE}/{name}/version", content=data, headers=headers)


# -- logins, refreshes, revocations ------------------------------------------------------------


async def test_logins_refreshes_and_revocations(world: World) -> None:
    client = world.client
    wrong = await client.post(LOGIN, json={"username": "uploader", "password": "nope"})
    assert wrong.status_code == 401
    async with world.client_from("192.0.2.99") as other:
        unknown = await other.post(LOGIN, json={"username": "ghost$key", "password": "x"})
        assert unknown.status_code == 401
    first = await login(client, UPLOADER)
    keyed = await login(client, KEY)
    refreshed = await client.get("/api/stable/auth/refresh_token", headers=bearer(first))
    assert refreshed.status_code == 200
    second = refreshed.json()["data"]["token"]
    assert (
        await client.delete("/api/stable/auth/logout", headers=bearer(second))
    ).status_code == 200
    # A token refreshed from the first, revoked with it below.
    refreshed = await client.get("/api/stable/auth/refresh_token", headers=bearer(first))
    assert refreshed.status_code == 200
    third = refreshed.json()["data"]["token"]
    admin = await login(client, ADMIN)
    revoke = await client.delete(
        "/api/stable/auth/logout",
        params={"sessionId": session_id_of(first)},
        headers=bearer(admin),
    )
    assert revoke.status_code == 200

    events = await audit(client, admin, user="uploader")
    names = ("action", "outcome", "user", "accessKey", "clientIp", "session", "detail")
    assert [fields(e, *names) for e in events] == [
        (
            "token.refresh",
            "success",
            "uploader",
            "",
            CLIENT_IP,
            short(first),
            f"new session {short(third)}",
        ),
        (
            "token.revoke",
            "success",
            "uploader",
            "",
            CLIENT_IP,
            short(second),
            f"revoked session {short(second)} of uploader",
        ),
        (
            "token.refresh",
            "success",
            "uploader",
            "",
            CLIENT_IP,
            short(first),
            f"new session {short(second)}",
        ),
        ("login", "success", "uploader", "ci", CLIENT_IP, short(keyed), ""),
        ("login", "success", "uploader", "", CLIENT_IP, short(first), ""),
        ("login", "failure", "uploader", "", CLIENT_IP, "", BAD_CREDENTIALS),
    ]
    for event in events:
        assert fields(event, "collection", "version", "size", "reason") == ("", None, None, "")
        assert event["at"].endswith("Z")
        datetime.fromisoformat(event["at"])
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)

    ghost = await audit(client, admin, user="ghost")
    assert [fields(e, "action", "outcome", "accessKey", "clientIp", "detail") for e in ghost] == [
        ("login", "failure", "key", "192.0.2.99", BAD_CREDENTIALS)
    ]

    # The administrator revoking the uploader's session is recorded as the administrator's
    # act, naming the session revoked and counting the tokens refreshed from it.
    revocations = await audit(client, admin, action="token.revoke", user="admin")
    assert [fields(e, "user", "session", "detail") for e in revocations] == [
        (
            "admin",
            short(first),
            f"revoked session {short(first)} of uploader and 1 token refreshed from it",
        )
    ]


# -- uploads -------------------------------------------------------------------------------


async def test_accepted_upload_and_rotation(world: World, gpg_home: GpgHome) -> None:
    client = world.client
    token = await login(client, UPLOADER)
    sizes = []
    for number in (1, 2, 3):
        data = pad_to(gpg_home.encrypt(f"dump {number}".encode()), 1000 * number)
        response = await upload(client, token, data)
        assert response.status_code == 200, response.text
        sizes.append(len(data))
    admin = await login(client, ADMIN)

    uploads = await audit(client, admin, action="upload", collection="db")
    names = ("outcome", "user", "collection", "version", "size", "reason", "session", "clientIp")
    assert [fields(e, *names) for e in uploads] == [
        ("success", "uploader", "db", n, sizes[n - 1], "", short(token), CLIENT_IP)
        for n in (3, 2, 1)
    ]
    # maxBackupsCount is 2: the third upload rotated the first out.
    rotations = await audit(client, admin, action="rotation.delete")
    assert [fields(e, "outcome", "user", "collection", "version", "size") for e in rotations] == [
        ("success", "uploader", "db", 1, sizes[0])
    ]
    assert rotations[0]["detail"] == "rotated out by v3 (fifo)"
    # Recorded as the third upload commits, just before that upload is recorded as accepted.
    everything = await audit(client, admin, collection="db")
    assert [fields(e, "action", "version") for e in everything] == [
        ("upload", 3),
        ("rotation.delete", 1),
        ("upload", 2),
        ("upload", 1),
    ]


async def test_refused_uploads_record_their_reason(world: World, gpg_home: GpgHome) -> None:
    client = world.client
    uploader = await login(client, UPLOADER)
    stranger = await login(client, STRANGER)
    reader = await login(client, READER)
    message = gpg_home.encrypt(b"refused")
    plain = b"plain text, not an OpenPGP message\n" * 20
    # n=2, s=16K, H=64K: the first version may take s + (H - n*s) = 48K.
    too_big = pad_to(message, 48 * 1024 + 1)

    assert (await upload(client, None, message)).status_code == 401
    assert (await upload(client, stranger, message)).status_code == 403
    assert (await upload(client, reader, message)).status_code == 403
    assert (await upload(client, uploader, message, name="closed")).status_code == 403
    assert (await upload(client, uploader, too_big)).status_code == 413
    assert (await upload(client, uploader, plain)).status_code == 400
    assert (await upload(client, uploader, b"")).status_code == 400
    assert (await upload(client, uploader, message, name="nope")).status_code == 404

    # The lock: a second upload while the first one is still sending.
    release, started = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield message[:50]
        started.set()
        await release.wait()
        yield message[50:]

    first = asyncio.create_task(upload(client, uploader, slow()))
    await asyncio.wait_for(started.wait(), 10)
    assert (await upload(client, uploader, message)).status_code == 409
    release.set()
    assert (await first).status_code == 200

    admin = await login(client, ADMIN)
    failures = await audit(client, admin, action="upload", outcome="failure")
    names = ("user", "collection", "reason", "size", "session", "clientIp")
    assert [fields(e, *names) for e in reversed(failures)] == [
        # Refused before the token was read: nobody known, no size.
        ("", "db", "auth", None, "", CLIENT_IP),
        # Refused before the body was read: the size the client announced.
        ("stranger", "db", "auth", len(message), short(stranger), CLIENT_IP),
        ("reader", "db", "auth", len(message), short(reader), CLIENT_IP),
        ("uploader", "closed", "window", len(message), short(uploader), CLIENT_IP),
        ("uploader", "db", "quota", len(too_big), short(uploader), CLIENT_IP),
        ("uploader", "db", "openpgp", len(plain), short(uploader), CLIENT_IP),
        ("uploader", "db", "invalid", None, short(uploader), CLIENT_IP),
        ("uploader", "nope", "not_found", len(message), short(uploader), CLIENT_IP),
        ("uploader", "db", "lock", len(message), short(uploader), CLIENT_IP),
    ]
    details = [e["detail"] for e in reversed(failures)]
    assert "not authorized to upload" in details[1]
    assert "backup window" in details[3]
    assert "cannot upload to same collection in parallel" in details[8]
    assert all(e["version"] is None and e["outcome"] == "failure" for e in failures)
    successes = await audit(client, admin, action="upload", outcome="success")
    assert [fields(e, "version", "size") for e in successes] == [(1, len(message))]


# -- downloads -----------------------------------------------------------------------------


async def test_downloads_accepted_and_refused(world: World, gpg_home: GpgHome) -> None:
    client = world.client
    uploader = await login(client, UPLOADER)
    data = gpg_home.encrypt(b"x" * 3000)
    assert (await upload(client, uploader, data)).status_code == 200
    reader = await login(client, READER)
    stranger = await login(client, STRANGER)
    url = f"{BASE}/db/version"
    assert (await client.get(f"{url}/latest", headers=bearer(reader))).content == data
    ranged = await client.get(f"{url}/1", headers={**bearer(reader), "Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert (await client.get(f"{url}/latest", headers=bearer(stranger))).status_code == 403
    assert (await client.get(f"{url}/v7", headers=bearer(reader))).status_code == 404

    admin = await login(client, ADMIN)
    downloads = await audit(client, admin, action="download")
    names = ("outcome", "user", "collection", "version", "size", "session", "detail")
    assert [fields(e, *names) for e in reversed(downloads)] == [
        ("success", "reader", "db", 1, len(data), short(reader), ""),
        ("success", "reader", "db", 1, 10, short(reader), "range"),
        ("failure", "stranger", "db", None, None, short(stranger), downloads[1]["detail"]),
        ("failure", "reader", "db", None, None, short(reader), downloads[0]["detail"]),
    ]
    assert "not authorized to download" in downloads[1]["detail"]
    assert downloads[0]["detail"]  # the version was not found
    assert await audit(client, admin, action="download", user="stranger") == [downloads[1]]


# -- filters, pages, permissions --------------------------------------------------------------


async def test_filters_and_pages(world: World) -> None:
    client = world.client
    for number in range(7):
        response = await client.post(LOGIN, json={"username": f"u{number}", "password": "x"})
        assert response.status_code == 401
    admin = await login(client, ADMIN)
    everything = await audit(client, admin)
    assert [e["user"] for e in everything] == ["admin"] + [f"u{n}" for n in range(6, -1, -1)]

    # Walk the pages, 3 at a time: every event once, newest first.
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = await client.get(AUDIT, params=params, headers=bearer(admin))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        seen.extend(data["events"])
        pages += 1
        cursor = data["nextCursor"]
        if cursor is None:
            break
        assert len(data["events"]) == 3
    assert pages == 3
    assert seen == everything
    # A page that ends exactly at the last event has no next cursor.
    exact = await client.get(AUDIT, params={"limit": 8}, headers=bearer(admin))
    assert exact.json()["data"]["nextCursor"] is None
    assert len(exact.json()["data"]["events"]) == 8

    assert await audit(client, admin, outcome="success") == everything[:1]
    assert await audit(client, admin, action="login", outcome="failure") == everything[1:]
    assert await audit(client, admin, action="upload") == []
    assert await audit(client, admin, user="u3") == [everything[4]]
    assert await audit(client, admin, user="u3", outcome="success") == []
    assert await audit(client, admin, collection="db") == []

    # Time bounds: since is inclusive, until exclusive.
    middle = everything[3]["at"]
    newer = await audit(client, admin, since=middle)
    older = await audit(client, admin, until=middle)
    assert newer + older == everything
    assert newer[-1]["at"] == middle
    assert all(e["at"] < middle for e in older)
    offset = datetime.fromisoformat(middle).astimezone(timezone(timedelta(hours=-5))).isoformat()
    assert await audit(client, admin, since=offset) == newer
    assert (
        await audit(client, admin, since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z") == []
    )
    assert await audit(client, admin, since=middle, until=middle) == []


@pytest.mark.parametrize(
    ("params", "phrase"),
    [
        ({"action": "delete"}, "action"),
        ({"outcome": "maybe"}, "outcome"),
        ({"since": "yesterday"}, "since: not an RFC 3339 timestamp"),
        ({"until": "2026-11-27T18:00:00"}, "until: the timestamp needs an offset"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since: timestamp out of range"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "1" * 19}, "cursor"),
        ({"user": "x" * 256}, "user"),
    ],
)
async def test_bad_parameters_are_400(
    world: World, params: dict[str, str | int], phrase: str
) -> None:
    admin = await login(world.client, ADMIN)
    response = await world.client.get(AUDIT, params=params, headers=bearer(admin))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] is False
    assert phrase in body["error"]


async def test_only_a_full_admin_token_reads_the_audit_log(world: World) -> None:
    client = world.client
    no_token = await client.get(AUDIT)
    assert no_token.status_code == 401
    assert no_token.json()["status"] is False
    for credentials in (UPLOADER, KEY, READER):
        token = await login(client, credentials)
        response = await client.get(AUDIT, headers=bearer(token))
        assert response.status_code == 403, credentials
        assert "no permissions to read the audit log" in response.json()["error"]
    scoped = await client.post(
        LOGIN,
        json={
            "username": "admin",
            "password": "admin-pass",
            "operationsScope": {
                "elements": [{"type": "collection", "name": "db", "roles": ["systemAdmin"]}]
            },
        },
    )
    assert scoped.status_code == 200
    response = await client.get(AUDIT, headers=bearer(scoped.json()["data"]["token"]))
    assert response.status_code == 403
    admin = await login(client, ADMIN)
    assert (await client.get(AUDIT, headers=bearer(admin))).status_code == 200


async def test_odd_bytes_in_a_filter_match_nothing(world: World) -> None:
    admin = await login(world.client, ADMIN)
    for name in ("user", "collection"):
        assert await audit(world.client, admin, **{name: "admin\x00"}) == []
        for raw in ("%FF%FE", "%00", "%F0%9F%92%BE", "%ED%A0%80"):
            response = await world.client.get(f"{AUDIT}?{name}={raw}", headers=bearer(admin))
            assert response.status_code == 200, (raw, response.text)
            assert response.json()["data"] == {"events": [], "nextCursor": None}
    # An empty user name finds what was done without one (a refused anonymous upload).
    assert (await upload(world.client, None, b"x")).status_code == 401
    [anonymous] = await audit(world.client, admin, user="")
    assert (anonymous["action"], anonymous["reason"]) == ("upload", "auth")


# -- the log line, secrets, failures ----------------------------------------------------------


async def test_each_event_is_one_structured_log_line(world: World, audit_records: Records) -> None:
    await world.client.post(LOGIN, json={"username": "reader", "password": "wrong"})
    token = await login(world.client, READER)
    lines = [r for r in audit_records.records if r.getMessage() == "audit"]
    assert [(r.levelno, r.action, r.outcome, r.user) for r in lines] == [  # type: ignore[attr-defined]
        (logging.INFO, "login", "failure", "reader"),
        (logging.INFO, "login", "success", "reader"),
    ]
    last = lines[-1].__dict__
    assert last["client_ip"] == CLIENT_IP
    assert last["session"] == short(token)
    assert last["stored"] is True
    for name in ("access_key", "collection", "version", "size", "reason", "detail", "at"):
        assert name in last
    datetime.fromisoformat(last["at"])


async def test_no_password_or_token_is_recorded(
    world: World, gpg_home: GpgHome, audit_records: Records
) -> None:
    client = world.client
    secrets = ["uploader-pass", "ci-pass", "admin-pass", "a-wrong-password-9f3c"]
    await client.post(LOGIN, json={"username": "uploader", "password": secrets[-1]})
    await client.post(LOGIN, json={"username": "uploader$ci", "password": secrets[-1]})
    uploader = await login(client, UPLOADER)
    keyed = await login(client, KEY)
    refreshed = await client.get("/api/stable/auth/refresh_token", headers=bearer(uploader))
    new_token = refreshed.json()["data"]["token"]
    assert (await upload(client, keyed, gpg_home.encrypt(b"secret-free"))).status_code == 200
    assert (await upload(client, uploader, b"not pgp")).status_code == 400
    await client.get(f"{BASE}/db/version/latest", headers=bearer(uploader))
    forged = uploader[:-4] + "AAAA"
    assert (await upload(client, forged, b"x")).status_code == 401
    await client.delete("/api/stable/auth/logout", headers=bearer(new_token))
    admin = await login(client, ADMIN)
    tokens = [uploader, keyed, new_token, forged, admin]
    secrets += tokens
    # Signatures alone, and the full session ids (a token's hash) are not recorded either.
    secrets += [t.rsplit(".", 1)[-1] for t in tokens]
    secrets += [session_id_of(t) for t in tokens]

    events = await audit(client, admin, limit=500)
    assert len(events) >= 10
    stored = json.dumps(events)
    logged = json.dumps([r.__dict__ for r in audit_records.records], default=str)
    for secret in secrets:
        assert secret not in stored
        assert secret not in logged


async def test_a_failed_audit_write_does_not_fail_the_upload(
    world: World, gpg_home: GpgHome, audit_records: Records
) -> None:
    token = await login(world.client, UPLOADER)
    # Behind the running app's back, through a connection of its own.
    engine = create_engine(world.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE audit_events"))
    finally:
        await engine.dispose()
    data = gpg_home.encrypt(b"audited or not")
    response = await upload(world.client, token, data)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["version"]["filesize"] == len(data)

    errors = [r for r in audit_records.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    record = errors[0].__dict__
    assert errors[0].getMessage() == "audit"
    assert (record["action"], record["outcome"], record["user"]) == (
        "upload",
        "success",
        "uploader",
    )
    assert (record["version"], record["size"], record["stored"]) == (1, len(data), False)
    assert "audit_events" in record["error"]
    assert errors[0].exc_info is not None
    # The app goes on as before: the version just stored is there to download.
    download = await world.client.get(f"{BASE}/db/version/1", headers=bearer(token))
    assert download.content == data


# -- the repository itself -------------------------------------------------------------------


async def test_texts_are_cut_to_their_columns_and_lose_nul(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        repository = SqlAuditRepository(engine)
        event = Event(
            Action.UPLOAD,
            Outcome.FAILURE,
            user="mal\x00lory" + "u" * 300,
            client_ip="::1\x00",
            collection="c" * 300,
            reason="invalid",
            session="0123456789abcdef",
            detail="line\x00" + "d" * 2000,
            size=2**40,
        )
        await AuditLog(repository).emit(event)
        [entry] = await repository.query(AuditFilters(), 10)
        assert entry.user == ("mallory" + "u" * 300)[:255]
        assert entry.client_ip == "::1"
        assert entry.collection == "c" * 255
        assert entry.session == "0123456789ab"
        assert entry.detail == ("line" + "d" * 2000)[:1024]
        assert entry.size == 2**40
        assert entry.at == event.at
        assert entry.at.tzinfo is not None
        assert await repository.query(AuditFilters(user=entry.user), 10) == [entry]
        assert await repository.query(AuditFilters(), 10, before_id=entry.id) == []
        # Cursors of the widest accepted form compare fine on both databases.
        assert await repository.query(AuditFilters(), 10, before_id=10**18 - 1) == [entry]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("count", [2, 11])
async def test_the_events_of_one_action_are_recorded_in_their_order(
    db_engine: AsyncEngine, count: int
) -> None:
    # An upload's events (the versions it rotated out, then itself) in one statement; more
    # than a statement takes, in one transaction.
    repository = SqlAuditRepository(db_engine)
    events = [
        Event(Action.ROTATION_DELETE, Outcome.SUCCESS, collection="db", version=n)
        for n in range(1, count)
    ] + [Event(Action.UPLOAD, Outcome.SUCCESS, collection="db", version=count, size=7)]
    await repository.add_all(events)
    await repository.add_all([])
    recorded = list(reversed(await repository.query(AuditFilters(), 100)))
    assert [(e.action, e.version) for e in recorded] == [
        (e.action.value, e.version) for e in events
    ]
    assert recorded[-1].size == 7
