"""Hostile input: what an attacker (anonymous, with a leaked upload key or token, or as a
malicious user) can send, and what the server must answer.

- refreshed-then-revoked tokens, and tokens of odd shapes;
- escalation attempts: an operations scope asking for roles the user lacks or naming other
  collections, an access key reaching for another collection or for downloads;
- ``restrictByIP`` with spoofed ``X-Forwarded-For`` from trusted and untrusted peers;
- path traversal and odd bytes in collection ids, version ids, filename templates, user
  names and session ids;
- malformed and deeply nested JSON, odd ``Content-Length`` and ``Range`` values, broken
  upload forms;
- oversized request heads and bodies, and clients that send one byte per second, against
  the real server over raw sockets.

Most tests run the app in process (httpx over ASGI, SQLite and a local folder: what they
test does not depend on the backends; the NUL-byte test runs on PostgreSQL too, which is
where it matters); the raw-socket tests start the real server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
import yaml
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from backup_repository.config.documents import SourceFile
from backup_repository.config.loader import load_files
from backup_repository.domain.errors import RequestTimeout
from backup_repository.http.app import create_app
from backup_repository.http.middleware import BodyLimitMiddleware
from backup_repository.services.tokens import session_id_of
from gpg_fixtures import SAMPLES_DIR
from support import (
    JWT_SECRET,
    ServerProcess,
    collection_doc,
    eventually,
    make_settings,
    start_server,
    user_doc,
    write_config,
)

Client = httpx.AsyncClient
LOGIN = "/api/stable/auth/login"
WHOAMI = "/api/stable/auth/whoami"
BASE = "/api/stable/repository/collection"
TRUSTED_PROXIES = ("10.0.0.0/24",)
PROXY = "10.0.0.5"
OFFICE_IP = "1.2.3.4"
UNICODE_TEMPLATE = "kopia-zażółć-${version}.gpg"


def sample(name: str = "symmetric.gpg") -> bytes:
    return (SAMPLES_DIR / name).read_bytes()


def collection(name: str, acl: Sequence[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    doc = collection_doc(name, acl=acl)
    doc["spec"].update(spec)
    return doc


def documents(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    both = ["backupUploader", "backupDownloader"]
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
        user_doc("office", "office-pass", [], restrict_by_ip=[OFFICE_IP]),
        collection(
            "db",
            [
                {"name": "uploader", "type": "user", "roles": both},
                {"name": "reader", "type": "user", "roles": ["backupDownloader"]},
                {"name": "office", "type": "user", "roles": ["backupDownloader"]},
            ],
        ),
        collection("other", [{"name": "uploader", "type": "user", "roles": both}]),
        collection(
            "intl",
            [{"name": "uploader", "type": "user", "roles": both}],
            filenameTemplate=UNICODE_TEMPLATE,
        ),
        *extra,
    ]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write_config(tmp_path / "config", documents())
    return tmp_path / "config"


@pytest.fixture
async def app(tmp_path: Path, config_dir: Path) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", trusted_proxies=TRUSTED_PROXIES
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def connect(app: FastAPI, peer: str = "127.0.0.1") -> Client:
    """A client whose requests come from ``peer``; app errors are answered, not raised, so
    that a 500 is seen as a 500."""
    transport = httpx.ASGITransport(app=app, client=(peer, 40000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[Client]:
    async with connect(app) as c:
        yield c


async def login(client: Client, username: str, password: str, **extra: Any) -> str:
    response = await client.post(LOGIN, json={"username": username, "password": password, **extra})
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_of(client: Client, method: str, path: str, token: str, **kwargs: Any) -> int:
    response = await client.request(method, path, headers=bearer(token), **kwargs)
    return response.status_code


def assert_refused(response: httpx.Response, *allowed: int) -> None:
    """A 4xx in the JSON envelope (HEAD answers carry no body)."""
    expected = allowed or (400, 401, 403, 404, 405, 413, 416, 431)
    assert response.status_code in expected, (response.status_code, response.text[:300])
    if response.request.method != "HEAD":
        body = response.json()
        assert body["status"] is False
        assert isinstance(body["error"], str)
        assert body["error"]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# -- tokens: refreshed, then revoked ---------------------------------------------------------


async def test_revoking_the_original_token_stops_the_refreshed_one(client: Client) -> None:
    original = await login(client, "reader", "reader-pass")
    response = await client.get("/api/stable/auth/refresh_token", headers=bearer(original))
    assert response.status_code == 200, response.text
    refreshed = response.json()["data"]["token"]
    # The refreshed token says where it came from, and belongs to the original's family.
    who = await client.get(WHOAMI, headers=bearer(refreshed))
    assert who.status_code == 200
    granted = who.json()["data"]["grantedAccess"]
    assert granted["description"] == f"Refresh of {session_id_of(original)}"
    assert granted["familyId"] == session_id_of(original)

    assert (await client.delete("/api/stable/auth/logout", headers=bearer(original))).is_success
    for token in (original, refreshed):
        assert await status_of(client, "GET", WHOAMI, token) == 401
        assert await status_of(client, "GET", "/api/stable/auth/refresh_token", token) == 401
        assert await status_of(client, "GET", f"{BASE}/db/version", token) == 401


async def test_revoking_a_refreshed_token_stops_it_and_its_refreshes_only(client: Client) -> None:
    original = await login(client, "reader", "reader-pass")
    other = await login(client, "reader", "reader-pass")
    response = await client.get("/api/stable/auth/refresh_token", headers=bearer(original))
    refreshed = response.json()["data"]["token"]
    response = await client.get("/api/stable/auth/refresh_token", headers=bearer(refreshed))
    grandchild = response.json()["data"]["token"]
    # Revoked by id from another session of the user: the token and what was refreshed
    # from it go, everywhere...
    response = await client.delete(
        "/api/stable/auth/logout",
        params={"sessionId": session_id_of(refreshed)},
        headers=bearer(other),
    )
    assert response.status_code == 200, response.text
    for token in (refreshed, grandchild):
        for method, path in [
            ("GET", WHOAMI),
            ("GET", "/api/stable/auth/refresh_token"),
            ("GET", f"{BASE}/db/version"),
            ("GET", f"{BASE}/db/version/latest"),
            ("DELETE", "/api/stable/auth/logout"),
        ]:
            assert await status_of(client, method, path, token) == 401, path
    # ...the token it was refreshed from stays, and so does the rest of the user's.
    assert await status_of(client, "GET", WHOAMI, original) == 200
    assert await status_of(client, "GET", WHOAMI, other) == 200


async def test_refreshed_tokens_stay_as_narrow_as_the_original(client: Client) -> None:
    admin = await login(client, "admin", "admin-pass")
    assert (
        await client.post(f"{BASE}/db/version", content=sample(), headers=bearer(admin))
    ).is_success
    key = await login(client, "uploader$ci", "ci-pass")
    scope = {"elements": [{"type": "collection", "name": "db", "roles": ["backupDownloader"]}]}
    scoped = await login(client, "admin", "admin-pass", operationsScope=scope)
    for token in (key, scoped):
        response = await client.get("/api/stable/auth/refresh_token", headers=bearer(token))
        refreshed = response.json()["data"]["token"]
        original_claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
        claims = jwt.decode(refreshed, JWT_SECRET, algorithms=["HS256"])
        assert claims["accessKeyName"] == original_claims["accessKeyName"]
        assert claims["operationsScope"] == original_claims["operationsScope"]
        # Never longer, and never past the original: a refresh does not extend a token.
        assert claims["exp"] - claims["iat"] <= original_claims["exp"] - original_claims["iat"]
        assert claims["exp"] <= original_claims["exp"]
    refreshed_key = (
        await client.get("/api/stable/auth/refresh_token", headers=bearer(key))
    ).json()["data"]["token"]
    assert await status_of(client, "GET", f"{BASE}/db/version/latest", refreshed_key) == 403
    assert await status_of(client, "GET", f"{BASE}/other/version", refreshed_key) == 403


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "....",
        "x" * 20_000,
        # A header of deeply nested JSON, and one with a number of 5000 digits.
        base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("=") + ".e30.sig",
        base64.urlsafe_b64encode(b'{"alg":' + b"1" * 5000 + b"}").decode().rstrip("=") + ".e30.sig",
        # alg "none" claiming to be the administrator.
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
        + "."
        + base64.urlsafe_b64encode(b'{"login":"admin","jti":"x","exp":4102444800}')
        .decode()
        .rstrip("=")
        + ".",
    ],
    ids=["empty", "two-parts", "four-parts", "dots", "20k", "deep-json", "huge-number", "none"],
)
async def test_malformed_tokens_are_401(client: Client, token: str) -> None:
    for path in (WHOAMI, f"{BASE}/db/version", "/api/stable/auth/refresh_token"):
        response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert_refused(response, 401)


async def test_token_bytes_that_are_not_utf8_are_401(client: Client) -> None:
    response = await client.get(WHOAMI, headers=[(b"authorization", b"Bearer \xff\xfe.\x80.\xc3")])
    assert_refused(response, 401)


# -- escalation attempts ---------------------------------------------------------------------


async def test_a_scope_cannot_add_a_role_the_user_lacks(client: Client) -> None:
    admin = await login(client, "admin", "admin-pass")
    assert (
        await client.post(f"{BASE}/db/version", content=sample(), headers=bearer(admin))
    ).is_success
    greedy = {
        "elements": [
            {"type": "collection", "name": "db", "roles": ["backupUploader", "backupDownloader"]},
            {"type": "collection", "name": "other", "roles": ["collectionManager"]},
        ]
    }
    token = await login(client, "reader", "reader-pass", operationsScope=greedy)
    # What the reader has (downloads of db) still works; what the scope asked beyond: not.
    assert await status_of(client, "GET", f"{BASE}/db/version/latest", token) == 200
    response = await client.post(f"{BASE}/db/version", content=sample(), headers=bearer(token))
    assert_refused(response, 403)
    response = await client.post(f"{BASE}/other/version", content=sample(), headers=bearer(token))
    assert_refused(response, 403)
    assert await status_of(client, "GET", f"{BASE}/other/version", token) == 403
    listed = (await client.get(BASE, headers=bearer(token))).json()["data"]["collections"]
    assert [c["id"] for c in listed] == ["db"]


async def test_a_scope_on_one_collection_does_not_reach_another(client: Client) -> None:
    admin = await login(client, "admin", "admin-pass")
    for name in ("db", "other"):
        response = await client.post(
            f"{BASE}/{name}/version", content=sample(), headers=bearer(admin)
        )
        assert response.status_code == 200, response.text
    reader = await login(client, "reader", "reader-pass")
    scope = {"elements": [{"type": "collection", "name": "db", "roles": ["backupDownloader"]}]}
    token = await login(client, "admin", "admin-pass", operationsScope=scope)

    assert await status_of(client, "GET", f"{BASE}/db/version/latest", token) == 200
    assert await status_of(client, "GET", f"{BASE}/other/version/latest", token) == 403
    assert await status_of(client, "GET", f"{BASE}/other/version", token) == 403
    assert await status_of(client, "POST", f"{BASE}/db/version", token, content=sample()) == 403
    listed = (await client.get(BASE, headers=bearer(token))).json()["data"]["collections"]
    assert [c["id"] for c in listed] == ["db"]
    # The administrator's user-wide rights are gone from the narrowed token.
    assert await status_of(client, "GET", "/api/stable/auth/user/reader", token) == 403
    response = await client.get(
        "/api/stable/auth/token", params={"userName": "reader"}, headers=bearer(token)
    )
    assert_refused(response, 403)
    response = await client.delete(
        "/api/stable/auth/logout",
        params={"sessionId": session_id_of(reader)},
        headers=bearer(token),
    )
    assert_refused(response, 403)
    assert await status_of(client, "GET", WHOAMI, reader) == 200


async def test_an_access_key_stays_within_its_grants(client: Client) -> None:
    owner = await login(client, "uploader", "uploader-pass")
    key = await login(client, "uploader$ci", "ci-pass")
    assert await status_of(client, "POST", f"{BASE}/db/version", key, content=sample()) == 200
    # The owner may upload to "other" and download from "db"; the key lists neither.
    response = await client.post(f"{BASE}/other/version", content=sample(), headers=bearer(key))
    assert_refused(response, 403)
    response = await client.get(f"{BASE}/db/version/latest", headers=bearer(key))
    assert_refused(response, 403)
    assert (await client.head(f"{BASE}/db/version/1", headers=bearer(key))).status_code == 403
    assert await status_of(client, "GET", f"{BASE}/other/version", key) == 403
    assert await status_of(client, "GET", f"{BASE}/db/version", key) == 200
    assert await status_of(client, "GET", f"{BASE}/db/version/latest", owner) == 200

    # A scope asked for at login cannot widen the key.
    widen = {
        "elements": [
            {"type": "collection", "name": "db", "roles": ["backupDownloader"]},
            {"type": "collection", "name": "other", "roles": ["backupUploader"]},
        ]
    }
    scoped_key = await login(client, "uploader$ci", "ci-pass", operationsScope=widen)
    assert await status_of(client, "GET", f"{BASE}/db/version/latest", scoped_key) == 403
    assert (
        await status_of(client, "POST", f"{BASE}/other/version", scoped_key, content=sample())
        == 403
    )
    # ... and a scope naming only "other" leaves the key nothing at all.
    other_only = {
        "elements": [{"type": "collection", "name": "other", "roles": ["backupUploader"]}]
    }
    nothing = await login(client, "uploader$ci", "ci-pass", operationsScope=other_only)
    assert await status_of(client, "POST", f"{BASE}/db/version", nothing, content=sample()) == 403
    assert await status_of(client, "GET", f"{BASE}/db/version", nothing) == 403


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("uploader$ci$", "ci-pass"),
        ("uploader$", "ci-pass"),
        ("$ci", "ci-pass"),
        ("uploader$CI", "ci-pass"),
        ("admin\x00", "admin-pass"),
        ("admin ", "admin-pass"),
        ("ADMIN", "admin-pass"),
        ("admin$ci", "ci-pass"),
        ("ádmin", "admin-pass"),
        ("admin", "admin-pass\x00"),
    ],
)
async def test_login_name_tricks_are_refused(client: Client, username: str, password: str) -> None:
    response = await client.post(LOGIN, json={"username": username, "password": password})
    assert_refused(response, 401)
    assert response.json()["message"].startswith("incorrect Username or Password")


# -- restrictByIP and X-Forwarded-For ----------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded", "allowed"),
    [
        pytest.param(OFFICE_IP, [], True, id="direct-from-the-allowed-address"),
        pytest.param(PROXY, [OFFICE_IP], True, id="trusted-proxy-forwards-the-allowed-address"),
        pytest.param(PROXY, [f"{OFFICE_IP}, 10.0.0.9"], True, id="chain-of-trusted-proxies"),
        pytest.param("192.168.7.7", [OFFICE_IP], False, id="untrusted-peer-spoofs-the-header"),
        pytest.param(PROXY, [], False, id="trusted-proxy-without-header-is-the-proxy"),
        pytest.param(PROXY, [f"{OFFICE_IP}, 6.6.6.6"], False, id="spoofed-hop-before-real-one"),
        pytest.param(PROXY, [OFFICE_IP, "6.6.6.6"], False, id="spoofed-line-before-proxy-line"),
        pytest.param(PROXY, [f"{OFFICE_IP}, not-an-address"], False, id="garbage-last-hop"),
        pytest.param(OFFICE_IP, ["6.6.6.6"], True, id="header-ignored-from-untrusted-peer"),
    ],
)
async def test_restrict_by_ip_with_forwarded_for(
    app: FastAPI, peer: str, forwarded: list[str], allowed: bool
) -> None:
    headers = [("X-Forwarded-For", value) for value in forwarded]
    async with connect(app, peer) as client:
        response = await client.post(
            LOGIN, json={"username": "office", "password": "office-pass"}, headers=headers
        )
        if not allowed:
            assert_refused(response, 401)
            return
        assert response.status_code == 200, response.text
        token = response.json()["data"]["token"]
        who = await client.get(WHOAMI, headers=[*headers, ("Authorization", f"Bearer {token}")])
        assert who.status_code == 200
        assert who.json()["data"]["grantedAccess"]["requesterIP"] == OFFICE_IP


async def test_a_token_is_refused_from_outside_the_allowed_addresses(app: FastAPI) -> None:
    office = {"X-Forwarded-For": OFFICE_IP}
    async with connect(app, PROXY) as proxy:
        response = await proxy.post(
            LOGIN, json={"username": "office", "password": "office-pass"}, headers=office
        )
        assert response.status_code == 200, response.text
        auth = bearer(response.json()["data"]["token"])
        listed = await proxy.get(f"{BASE}/db/version", headers={**auth, **office})
        assert listed.status_code == 200
        moved = await proxy.get(
            f"{BASE}/db/version", headers={**auth, "X-Forwarded-For": "6.6.6.6"}
        )
        assert_refused(moved, 401)
    async with connect(app, "192.168.7.7") as stranger:
        spoofed = await stranger.get(f"{BASE}/db/version", headers={**auth, **office})
        assert_refused(spoofed, 401)


# -- odd collection ids and version ids ---------------------------------------------------------

# As they appear in the request target (percent-encoded where a client must encode them):
# the server decodes them before routing.
HOSTILE_COLLECTION_IDS = [
    "%2e%2e",
    "%2E%2E",
    "%2e",
    "..%2F..%2Fetc",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "db%2F..%2F..%2Fother",
    "db%2F",
    "%2Fetc%2Fpasswd",
    "db%00",
    "%00",
    "db%0A",
    "db%0D%0AX-Injected:%201",
    "db%20",
    "%20db",
    "db%5C..%5Cother",
    "~root",
    "db%3F",
    "db%23x",
    "*",
    "a" * 255,
    "a" * 256,
    "a" * 5000,
    "z%C5%BC%C3%B3%C5%82w",
    "%F0%9F%92%A9",
    "%FF%FE",
    "%C0%AE%C0%AE",
    "DB",
]


def collection_requests(collection_id: str) -> list[tuple[str, str]]:
    path = f"{BASE}/{collection_id}"
    return [
        ("POST", f"{path}/version"),
        ("GET", f"{path}/version"),
        ("GET", f"{path}/version/latest"),
        ("HEAD", f"{path}/version/1"),
        ("GET", f"{path}/health"),
    ]


async def test_odd_collection_ids_are_refused_and_never_reach_storage(
    client: Client, tmp_path: Path
) -> None:
    admin = await login(client, "admin", "admin-pass")
    assert (
        await client.post(f"{BASE}/db/version", content=sample(), headers=bearer(admin))
    ).is_success
    before = files_under(tmp_path)
    for collection_id in HOSTILE_COLLECTION_IDS:
        for method, path in collection_requests(collection_id):
            response = await client.request(method, path, content=sample(), headers=bearer(admin))
            # The health endpoint answers an unknown collection as a wrong code: 403.
            allowed = (400, 403, 404, 405) if path.endswith("/health") else (400, 404, 405)
            assert_refused(response, *allowed)
    # Nothing was written anywhere: not in storage, not beside it.
    assert files_under(tmp_path) == before


HOSTILE_VERSION_REFS = [
    "-1",
    "v",
    "V",
    "v-1",
    "vv1",
    "1e3",
    "1.0",
    "+1",
    "0",
    "v0",
    "0x1",
    "1_0",
    "%D9%A1",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit(), not a version
    "%C2%B9",  # SUPERSCRIPT ONE
    "99999999999999999999",
    "9" * 32,
    "9" * 33,
    "latest%2F..%2F..%2Fother",
    "latest%00",
    "LATEST",
    "latest1",
    "%2e%2e",
    "NaN",
    "Infinity",
    "v1e3",
]


async def test_odd_version_ids_are_refused(client: Client) -> None:
    admin = await login(client, "admin", "admin-pass")
    assert (
        await client.post(f"{BASE}/db/version", content=sample(), headers=bearer(admin))
    ).is_success
    assert (await client.get(f"{BASE}/db/version/1", headers=bearer(admin))).status_code == 200
    for ref in HOSTILE_VERSION_REFS:
        for method in ("GET", "HEAD"):
            response = await client.request(
                method, f"{BASE}/db/version/{ref}", headers=bearer(admin)
            )
            assert_refused(response, 400, 404)


@pytest.mark.parametrize(
    "value",
    [
        "bytes=" + "9" * 5000 + "-",
        "bytes=-" + "9" * 5000,
        "bytes=0-" + "9" * 5000,
        "bytes=99999999999999999999-",
        "bytes=--1",
        "bytes=1-2-3",
        "bytes=\u00b2-",
        "items=0-1",
        "bytes=0-1," * 2000,
    ],
    ids=[
        "5000-digit-first",
        "5000-digit-suffix",
        "5000-digit-last",
        "20-digits",
        "double-dash",
        "three-parts",
        "superscript",
        "other-unit",
        "2000-ranges",
    ],
)
async def test_hostile_range_headers(client: Client, value: str) -> None:
    """Numbers of thousands of digits once made int() raise inside the handler (a 500)."""
    admin = await login(client, "admin", "admin-pass")
    data = sample()
    assert (await client.post(f"{BASE}/db/version", content=data, headers=bearer(admin))).is_success
    headers = [(b"authorization", f"Bearer {admin}".encode()), (b"range", value.encode("latin-1"))]
    response = await client.get(f"{BASE}/db/version/1", headers=headers)
    assert response.status_code in (200, 206, 416), response.text[:300]
    if response.status_code == 200:
        assert response.content == data


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=" + "a" * 5000, b"--aaa\r\n"),
        ('multipart/form-data; boundary="', b"--\r\n"),
        ("multipart/form-data; boundary=x; boundary=y", b"--y\r\n"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=file"),
        ("multipart/form-data; boundary=x", b"--x\r\n" + b"X-H: v\r\n" * 100 + b"\r\n"),
        ("application/x-www-form-urlencoded; charset=\u00ff", b"file=%zz"),
        ("application/x-www-form-urlencoded", b"file=%"),
        ("application/x-www-form-urlencoded", b"nofile=1&" * 1000),
        ("multipart/mixed; boundary=x", b"--x\r\n"),
    ],
    ids=[
        "5000-char-boundary",
        "open-quote",
        "two-boundaries",
        "no-boundary",
        "unfinished-part",
        "100-part-headers",
        "bad-charset",
        "cut-escape",
        "no-file-field",
        "mixed",
    ],
)
async def test_hostile_upload_forms_are_400_and_free_the_lock(
    client: Client, content_type: str, body: bytes
) -> None:
    admin = await login(client, "admin", "admin-pass")
    headers = [
        (b"authorization", f"Bearer {admin}".encode()),
        (b"content-type", content_type.encode("latin-1")),
    ]
    response = await client.post(f"{BASE}/db/version", content=body, headers=headers)
    assert_refused(response, 400)
    response = await client.post(f"{BASE}/db/version", content=sample(), headers=bearer(admin))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["version"]["versionNumber"] == 1


async def test_nul_bytes_in_names_and_session_ids_are_no_database_outage(
    tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL refuses a statement carrying NUL; that error once passed for an outage
    (503, and "database unavailable" in the log) on every lookup of such a name."""
    write_config(tmp_path / "config", documents())
    application = create_app(make_settings(tmp_path, database_url))
    async with application.router.lifespan_context(application), connect(application) as client:
        admin = await login(client, "admin", "admin-pass")
        for value in ("a\x00b", "\x00", "0" * 63 + "\x00"):
            response = await client.get(
                "/api/stable/auth/token", params={"userName": value}, headers=bearer(admin)
            )
            assert response.status_code == 200, response.text
            assert response.json()["data"]["grantedAccesses"] == []
            response = await client.delete(
                "/api/stable/auth/logout", params={"sessionId": value}, headers=bearer(admin)
            )
            assert_refused(response, 404)
            user = await client.get(f"/api/stable/auth/user/{quote(value)}", headers=bearer(admin))
            assert_refused(user, 404)
        assert (await client.get(WHOAMI, headers=bearer(admin))).status_code == 200
        assert (await client.get("/ready")).status_code == 200


# -- filename templates ------------------------------------------------------------------------

REFUSED_TEMPLATES = [
    "../${version}",
    "..${version}",
    "${version}..",
    "${version}/..",
    "/etc/cron.d/${version}",
    "/${version}",
    "C:\\backups\\${version}",
    "a\\${version}",
    "x\x00${version}",
    "x\n${version}",
    "x\r\nX-Injected: 1 ${version}",
    'x"${version}',
    "${version}\x7f",
    "x\x1b[31m${version}",
    "no-placeholder",
    "",
    "${VERSION}",
    "$version",
    "a" * 300 + "${version}",
    "ü" * 128 + "${version}",
    # obstore's own name for an unfinished local write is "<name>#<digits>".
    "db-${version}#1",
    "db#${version}",
]


def load_collection(template: str) -> Any:
    document = collection_doc("templated")
    document["spec"]["filenameTemplate"] = template
    return load_files([SourceFile("objects.yaml", yaml.safe_dump(document))])


@pytest.mark.parametrize("template", REFUSED_TEMPLATES)
def test_hostile_filename_templates_are_refused_by_validation(template: str) -> None:
    result = load_collection(template)
    assert "templated" not in result.snapshot.collections
    [problem] = result.snapshot.problems
    assert problem.field == "spec.filenameTemplate", problem
    assert problem.name == "templated"


@pytest.mark.parametrize(
    "template", ["db-${version}.sql.gz.gpg", "${version}", "%2e%2e%2f${version}", UNICODE_TEMPLATE]
)
def test_ordinary_and_merely_odd_templates_are_accepted(template: str) -> None:
    result = load_collection(template)
    assert result.snapshot.problems == ()
    assert result.snapshot.collections["templated"].filename_template == template


async def test_a_collection_with_a_refused_template_never_reaches_storage(
    app: FastAPI, client: Client, config_dir: Path, tmp_path: Path
) -> None:
    evil = [
        collection("evil", [], filenameTemplate="../../${version}"),
        collection("hashed", [], filenameTemplate="db-${version}#1"),
        collection("long", [], filenameTemplate="a" * 300 + "${version}"),
    ]
    write_config(config_dir, documents(*evil))
    admin = await login(client, "admin", "admin-pass")

    async def reported() -> bool:
        ready = (await client.get("/ready")).json()
        check = {c["name"]: c for c in ready["data"]["health"]}["ConfigurationProviderValidator"]
        details = " ".join(check.get("details", []))
        return all(f"BackupCollection/{n}" in details for n in ("evil", "hashed", "long"))

    await eventually(reported)
    before = files_under(tmp_path)
    for name in ("evil", "hashed", "long"):
        response = await client.post(
            f"{BASE}/{name}/version", content=sample(), headers=bearer(admin)
        )
        assert_refused(response, 404)
        assert "cannot find specified collection" in response.json()["error"]
    assert files_under(tmp_path) == before


async def test_odd_but_valid_templates_stay_inside_storage(
    client: Client, config_dir: Path, tmp_path: Path
) -> None:
    write_config(
        config_dir, documents(collection("pct", [], filenameTemplate="%2e%2e%2f${version}"))
    )
    admin = await login(client, "admin", "admin-pass")

    async def loaded() -> bool:
        response = await client.get(BASE, headers=bearer(admin))
        return "pct" in [c["id"] for c in response.json()["data"]["collections"]]

    await eventually(loaded)
    data = sample("two-recipients.asc")
    response = await client.post(f"{BASE}/pct/version", content=data, headers=bearer(admin))
    assert response.status_code == 200, response.text
    stored = [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]
    assert [p.relative_to(tmp_path / "storage").parts[0] for p in stored] == ["pct"]
    download = await client.get(f"{BASE}/pct/version/1", headers=bearer(admin))
    assert download.content == data


async def test_a_unicode_file_name_downloads_with_an_encoded_header(client: Client) -> None:
    """Header values are Latin-1 bytes: a file name outside it once made every download of
    the collection a 500."""
    token = await login(client, "uploader", "uploader-pass")
    data = sample()
    response = await client.post(f"{BASE}/intl/version", content=data, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["version"]["filename"] == "kopia-zażółć-1.gpg"
    for method in ("GET", "HEAD"):
        download = await client.request(method, f"{BASE}/intl/version/1", headers=bearer(token))
        assert download.status_code == 200
        disposition = download.headers["content-disposition"]
        assert disposition == (
            'attachment; filename="kopia-za____-1.gpg"; '
            "filename*=UTF-8''kopia-za%C5%BC%C3%B3%C5%82%C4%87-1.gpg"
        )
    assert download.request.method == "HEAD"
    assert (await client.get(f"{BASE}/intl/version/1", headers=bearer(token))).content == data


# -- malformed bodies and headers on the API ------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"[" * 60_000),
        ("application/json", b'{"username": "a", "password": "b", "x": ' + b"[" * 30_000 + b"}"),
        (
            "application/json",
            b'{"username": "admin", "password": "x", "ttl": ' + b"1" * 5000 + b"}",
        ),
        ("application/json", b'{"username": "admin", "password": "x", "ttl": 1e999}'),
        ("application/json", b'{"username": "admin", "password": "x", "ttl": "99999999999w"}'),
        ("application/json", b"\xff\xfe{}"),
        ("application/json", b'{"username": "\\ud800", "password": "x"}'),
        ("application/json", b'"just a string"'),
        ("application/json", b"null"),
        (
            "application/x-www-form-urlencoded",
            b"username=a&password=b&operationsScope=" + b"%5B" * 15_000,
        ),
        (
            "application/x-www-form-urlencoded",
            b"username=a&password=b&operationsScope=" + b"1" * 5000,
        ),
        ("application/x-www-form-urlencoded", b"username=%FF&password=%00"),
        ("application/x-www-form-urlencoded", b"&" * 10_000),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n",
        ),
        ("multipart/form-data", b"no boundary"),
        ("text/plain", b"username=admin"),
    ],
)
async def test_malformed_login_bodies_are_4xx(
    client: Client, content_type: str, body: bytes
) -> None:
    response = await client.post(LOGIN, content=body, headers={"Content-Type": content_type})
    assert_refused(response, 400, 401)


@pytest.mark.parametrize(
    "value",
    [b"\xb2", b"-1", b"1e3", b"0x10", b" 12", b"12 ", b"1" * 25, b"", b"+5"],
    ids=[
        "superscript-two",
        "negative",
        "exponent",
        "hex",
        "leading-space",
        "trailing-space",
        "25-digits",
        "empty",
        "plus",
    ],
)
async def test_odd_content_length_is_400(client: Client, value: bytes) -> None:
    """Through a real server most of these never reach the app (granian refuses them); in
    process they do, and must not become a 500 (``str.isdigit("²")`` is True)."""
    admin = await login(client, "admin", "admin-pass")
    for method, path in (("POST", LOGIN), ("GET", WHOAMI), ("POST", f"{BASE}/db/version")):
        headers = [(b"content-length", value), (b"authorization", f"Bearer {admin}".encode())]
        response = await client.request(method, path, headers=headers)
        assert_refused(response, 400)


NON_UPLOAD_REQUESTS = [
    ("POST", LOGIN),
    ("GET", WHOAMI),
    ("GET", "/api/stable/auth/refresh_token"),
    ("DELETE", "/api/stable/auth/logout"),
    ("GET", "/api/stable/auth/token"),
    ("GET", "/api/stable/auth/user/admin"),
    ("GET", BASE),
    ("GET", f"{BASE}/db/version"),
    ("GET", f"{BASE}/db/version/latest"),
    ("GET", f"{BASE}/db/health"),
    ("GET", "/health"),
    ("GET", "/ready"),
]


async def test_oversized_bodies_on_other_endpoints_are_413(client: Client) -> None:
    admin = await login(client, "admin", "admin-pass")
    big = b"x" * (64 * 1024 + 1)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 4096

    for method, path in NON_UPLOAD_REQUESTS:
        response = await client.request(method, path, content=big, headers=bearer(admin))
        assert_refused(response, 413)
        # Logging out would end the session the loop runs with: that one gets its own.
        token = await login(client, "admin", "admin-pass") if method == "DELETE" else admin
        response = await client.request(method, path, content=chunked(), headers=bearer(token))
        # A handler that never reads the body answers before the limit is reached.
        assert response.status_code in (200, 404, 413), (path, response.text)
    # The administrator's session is untouched by all this.
    assert (await client.get(WHOAMI, headers=bearer(admin))).status_code == 200


# -- the real server: raw sockets ----------------------------------------------------------------

UPLOAD_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("hostile-server")
    write_config(workdir / "config", documents())
    process = start_server(
        workdir,
        workdir / "config",
        extra_args=[f"--http-upload-timeout={UPLOAD_TIMEOUT_S}s", "--upload-lock-lease=30s"],
    )
    try:
        yield process
    finally:
        process.stop()
    log = process.log()
    assert "Traceback" not in log, log
    assert "unhandled error" not in log, log


def admin_token(server: ServerProcess) -> str:
    response = httpx.post(server.url + LOGIN, json={"username": "admin", "password": "admin-pass"})
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def exchange(server: ServerProcess, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return what came back until the server closed or went quiet (b""
    when it closed without answering)."""
    port = int(server.url.rsplit(":", 1)[1])
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Refused mid-request: what it answered (if anything) is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if _complete(received):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def status_line(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


def assert_server_alive(server: ServerProcess) -> None:
    assert server.process.poll() is None, server.log()
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.e2e
@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * (100 * 1024) + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(1000)),
        b"Authorization: Bearer " + b"a" * (40 * 1024) + b"\r\n",
        b"".join(b"X-Forwarded-For: 10.0.0.%d\r\n" % (i % 250) for i in range(3000)),
    ],
    ids=["one-100KiB-header", "1000-headers", "40KiB-token", "3000-forwarded-lines"],
)
def test_oversized_request_heads_are_refused(server: ServerProcess, headers: bytes) -> None:
    for target in (b"/health", LOGIN.encode(), f"{BASE}/db/version".encode()):
        request = b"GET " + target + b" HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n"
        response = exchange(server, request)
        status = status_line(response)
        # Refused with a 4xx, or the connection closed without an answer: never served,
        # never a 5xx.
        assert status is None or 400 <= status < 500, response[:300]
        assert status != 200, response[:300]
    assert_server_alive(server)


@pytest.mark.e2e
def test_oversized_bodies_are_413_before_they_are_read(server: ServerProcess) -> None:
    token = admin_token(server)
    for method, path in NON_UPLOAD_REQUESTS:
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
        ).encode()
        started = time.monotonic()
        response = exchange(server, request)
        assert status_line(response) == 413, (path, response[:300])
        assert b'"status":false' in response
        assert time.monotonic() - started < 5
    assert_server_alive(server)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "target",
    [
        b"/api/stable/repository/collection/../../../../etc/passwd/version/1",
        b"/api/stable/repository/collection/db/version/../../../../../etc/passwd",
        b"/api/stable/repository/collection/db/version/1/../../../other/version/1",
        b"/api/stable/repository/collection/./db/version/1",
        b"//etc/passwd",
        b"/api/stable/repository/collection/%2e%2e/version/1",
        b"/api/stable/repository/collection/db%2f..%2f..%2fother/version/1",
        b"http://evil.example/api/stable/repository/collection/../version",
    ],
)
def test_raw_path_traversal_is_not_served(server: ServerProcess, target: bytes) -> None:
    token = admin_token(server).encode()
    request = b"GET " + target + b" HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer " + token
    response = exchange(server, request + b"\r\n\r\n")
    status = status_line(response)
    assert status is None or status in (400, 404), response[:300]
    assert b"root:" not in response
    assert_server_alive(server)


@pytest.mark.e2e
def test_a_client_sending_one_byte_per_second_times_out_and_frees_the_lock(
    server: ServerProcess,
) -> None:
    token = admin_token(server)
    data = sample("two-recipients.asc")
    port = int(server.url.rsplit(":", 1)[1])
    head = (
        f"POST {BASE}/other/version HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(head)
        for byte in data[: UPLOAD_TIMEOUT_S * 4]:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                received += sock.recv(65536)
            except TimeoutError:
                continue  # nothing yet: one byte per second
            except ConnectionResetError:
                break
            if not received or _complete(received):
                break
    elapsed = time.monotonic() - started
    # Answered 408 once the upload timeout passed, long before the body was sent.
    assert status_line(received) == 408, received[:300]
    assert b"Request took too long" in received
    assert UPLOAD_TIMEOUT_S - 0.5 <= elapsed < UPLOAD_TIMEOUT_S + 5, elapsed
    # The collection's lock is free again: the next upload goes through at once.
    response = httpx.post(
        f"{server.url}{BASE}/other/version", content=data, headers=bearer(token), timeout=30
    )
    assert response.status_code == 200, response.text
    listed = httpx.get(f"{server.url}{BASE}/other/version", headers=bearer(token)).json()
    assert [v["versionNumber"] for v in listed["data"]["versions"]] == [1]
    assert_server_alive(server)


def trickle(server: ServerProcess, head: bytes, body: bytes, within: float) -> tuple[bytes, float]:
    """Send ``head`` at once and ``body`` one byte per second; return what the server
    answered (b"" if it closed without an answer) and after how many seconds."""
    port = int(server.url.rsplit(":", 1)[1])
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(head)
        for byte in body:
            if time.monotonic() - started > within:
                break
            try:
                sock.sendall(bytes([byte]))
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                pass
            break
    return received, time.monotonic() - started


async def test_a_trickled_body_is_cut_at_the_read_timeout() -> None:
    """The body limit middleware gives a non-upload body ``read_timeout`` seconds from the
    app's first read; once the body is complete, waiting (for a disconnect during a long
    download) is not limited."""
    reads: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            reads.append(message)
            if not message.get("more_body", False):
                break
        reads.append(await receive())

    async def trickling() -> Message:
        if not reads:
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    scope: Scope = {"type": "http", "method": "POST", "path": LOGIN, "headers": []}
    middleware = BodyLimitMiddleware(app, limit=65536, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await middleware(scope, trickling, _no_send)
    # Not a tight bound: without the read timeout the trickle would hold it for an hour.
    assert 0.25 < time.monotonic() - started < 60

    reads.clear()

    async def complete_then_disconnect() -> Message:
        if not reads:
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.sleep(0.6)  # longer than the read timeout: must not be cut
        return {"type": "http.disconnect"}

    await middleware(scope, complete_then_disconnect, _no_send)
    assert reads[-1] == {"type": "http.disconnect"}


async def _no_send(message: Message) -> None:
    raise AssertionError(f"nothing is sent here: {message}")


@pytest.mark.e2e
@pytest.mark.slow
def test_slow_request_heads_and_login_bodies_are_dropped(server: ServerProcess) -> None:
    """Slowloris: a head or a login body sent one byte per second is cut after 30 s (the
    header read timeout, and the body read timeout of non-upload requests)."""
    body = json.dumps({"username": "admin", "password": "admin-pass"}).encode() * 2
    head = (
        f"POST {LOGIN} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow_head = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
    with ThreadPoolExecutor(max_workers=2) as pool:
        slow_body = pool.submit(trickle, server, head, body, 45)
        slow_headers = pool.submit(trickle, server, b"", slow_head, 45)
        received, elapsed = slow_body.result()
        assert status_line(received) == 408, received[:300]
        assert 29 < elapsed < 40, elapsed
        received, elapsed = slow_headers.result()
        status = status_line(received)
        assert status is None or 400 <= status < 500, received[:300]
        assert 29 < elapsed < 40, elapsed
    assert_server_alive(server)
