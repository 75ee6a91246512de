"""Collections over the API in process: uploads, downloads, listings, quotas, rotation,
windows, locks and collection health, on SQLite + local files and on PostgreSQL + S3."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest

from backup_repository.http.app import create_app
from backup_repository.http.errors import DRAIN_BYTES
from backup_repository.settings import Settings
from gpg_fixtures import SAMPLES_DIR, GpgHome, pad_to
from support import (
    closed_windows,
    collection_doc,
    eventually,
    make_settings,
    user_doc,
    write_config,
)

Client = httpx.AsyncClient
BASE = "/api/stable/repository/collection"
ADMIN = ("admin", "admin-pass")
UPLOADER = ("uploader", "uploader-pass")
KEY = ("uploader$ci", "ci-pass")
READER = ("reader", "reader-pass")
STRANGER = ("stranger", "stranger-pass")
HEALTH_CODE = "health-code"


def collection(name: str, **spec: Any) -> dict[str, Any]:
    doc = collection_doc(
        name,
        acl=[
            {"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]},
            {"userName": "reader", "roles": ["backupDownloader"]},
        ],
    )
    doc["spec"].update(spec)
    return doc


def documents(**collections: dict[str, Any]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
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
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "health"},
            "stringData": {"db": hashlib.sha256(HEALTH_CODE.encode()).hexdigest()},
        },
        collection(
            "db",
            maxBackupsCount=3,
            maxOneVersionSize="64K",
            maxCollectionSize="256K",
            healthSecretRef={"name": "health", "entry": "db"},
        ),
    ]
    docs.extend(collections.values())
    return docs


@dataclass
class Backend:
    database_url: str
    storage_url: str


@pytest.fixture(params=[("sqlite", "file"), ("postgres", "s3")], ids=["sqlite+file", "postgres+s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    database, storage = request.param
    if database == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        db_url = request.getfixturevalue("postgres_url")
    if storage == "file":
        storage_url = (tmp_path / "storage").as_uri()
    else:
        storage_url = request.getfixturevalue("s3_storage_url").url_for(
            f"t-{uuid.uuid4().hex[:12]}"
        )
    return Backend(db_url, storage_url)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write_config(tmp_path / "config", documents())
    return tmp_path / "config"


def settings_for(tmp_path: Path, backend: Backend, **overrides: Any) -> Settings:
    return make_settings(tmp_path, backend.database_url, backend.storage_url, **overrides)


@pytest.fixture
async def client(tmp_path: Path, backend: Backend, config_dir: Path) -> AsyncIterator[Client]:
    app = create_app(settings_for(tmp_path, backend))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


async def token(client: Client, credentials: tuple[str, str]) -> dict[str, str]:
    response = await client.post(
        "/api/stable/auth/login",
        json={"username": credentials[0], "password": credentials[1]},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


async def upload(
    client: Client, auth: dict[str, str], data: bytes, name: str = "db", **kwargs: Any
) -> httpx.Response:
    return await client.post(f"{BASE}/{name}/version", content=data, headers=auth, **kwargs)


async def versions(client: Client, auth: dict[str, str], name: str = "db") -> list[int]:
    response = await client.get(f"{BASE}/{name}/version", headers=auth)
    assert response.status_code == 200, response.text
    return [v["versionNumber"] for v in response.json()["data"]["versions"]]


def sample(name: str) -> bytes:
    return (SAMPLES_DIR / name).read_bytes()


# -- upload and download ----------------------------------------------------------------


async def test_upload_then_download_round_trip(client: Client, gpg_home: GpgHome) -> None:
    auth = await token(client, UPLOADER)
    data = gpg_home.encrypt(b"database dump " * 1000)
    response = await upload(client, auth, data)
    assert response.status_code == 200, response.text
    version = response.json()["data"]["version"]
    assert version["versionNumber"] == 1
    assert version["collectionId"] == "db"
    assert version["filename"] == "db-1.tar.gz"
    assert version["filesize"] == len(data)
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert version["user"] == "uploader"
    assert version["CreatedAt"].endswith("Z")

    for ref in ("1", "v1", "latest"):
        response = await client.get(f"{BASE}/db/version/{ref}", headers=auth)
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"] == 'attachment; filename="db-1.tar.gz"'
        assert int(response.headers["content-length"]) == len(data)
        assert response.headers["etag"] == f'"{version["sha256"]}"'
        expected = base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert response.headers["repr-digest"] == f"sha-256=:{expected}:"
        assert response.headers["accept-ranges"] == "bytes"


async def test_head_and_ranges(client: Client, gpg_home: GpgHome) -> None:
    auth = await token(client, UPLOADER)
    data = gpg_home.encrypt(bytes(range(256)) * 100)
    assert (await upload(client, auth, data)).status_code == 200
    url = f"{BASE}/db/version/latest"

    head = await client.head(url, headers=auth)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(data)

    cases = {
        "bytes=0-9": data[:10],
        "bytes=10-": data[10:],
        "bytes=-5": data[-5:],
        f"bytes=5-{len(data) + 100}": data[5:],
    }
    for header, expected in cases.items():
        response = await client.get(url, headers={**auth, "Range": header})
        assert response.status_code == 206, header
        assert response.content == expected, header
        assert response.headers["content-range"].endswith(f"/{len(data)}")
    response = await client.get(url, headers={**auth, "Range": f"bytes={len(data)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"
    # Unsupported forms fall back to the whole file.
    response = await client.get(url, headers={**auth, "Range": "bytes=0-1,5-6"})
    assert response.status_code == 200
    assert response.content == data

    etag = head.headers["etag"]
    response = await client.get(url, headers={**auth, "If-None-Match": etag})
    assert response.status_code == 304


@pytest.mark.parametrize("kind", ["armored", "binary-public-key", "symmetric-armored"])
async def test_accepted_message_kinds(client: Client, gpg_home: GpgHome, kind: str) -> None:
    auth = await token(client, UPLOADER)
    data = {
        "armored": gpg_home.encrypt(b"x" * 5000, armor=True, symmetric=False),
        "binary-public-key": gpg_home.encrypt(b"x" * 5000, armor=False, symmetric=False),
        "symmetric-armored": gpg_home.encrypt(b"x" * 5000, armor=True, symmetric=True),
    }[kind]
    response = await upload(client, auth, data)
    assert response.status_code == 200, response.text
    download = await client.get(f"{BASE}/db/version/latest", headers=auth)
    assert download.content == data


async def test_form_uploads(client: Client, gpg_home: GpgHome) -> None:
    auth = await token(client, UPLOADER)
    data = gpg_home.encrypt(b"form upload" * 500)
    response = await client.post(
        f"{BASE}/db/version",
        headers=auth,
        files={"file": ("dump.gpg", data, "application/octet-stream")},
        data={"comment": "ignored"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["version"]["sha256"] == hashlib.sha256(data).hexdigest()

    # A urlencoded form with the exact bytes percent-encoded.
    body = b"other=1&file=" + quote_from_bytes(data).encode() + b"&tail=2"
    response = await client.post(
        f"{BASE}/db/version",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        content=body,
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["version"]["sha256"] == hashlib.sha256(data).hexdigest()

    response = await client.post(
        f"{BASE}/db/version", headers=auth, files={"other": ("x", data, "application/octet-stream")}
    )
    assert response.status_code == 400
    assert "file" in response.json()["error"]


async def test_chunked_upload(client: Client, gpg_home: GpgHome) -> None:
    auth = await token(client, UPLOADER)
    data = gpg_home.encrypt(b"chunky" * 3000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 777):
            yield data[i : i + 777]

    response = await upload(client, auth, chunks())  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert (await client.get(f"{BASE}/db/version/1", headers=auth)).content == data


async def test_refused_bodies_leave_nothing(
    client: Client, gpg_home: GpgHome, tmp_path: Path
) -> None:
    auth = await token(client, UPLOADER)
    armored = gpg_home.encrypt(b"y" * 2000, armor=True, symmetric=True)
    refused = {
        b"": "sent empty data",
        b"just some plain text, not encrypted\n" * 10: "does not contain a valid GPG header",
        b"-----BEGIN PGP MESSAGE-----\n\n"
        + base64.encodebytes(b"\x00" * 300)
        + b"-----END PGP MESSAGE-----\n": "valid GPG header",
        armored.rsplit(b"-----END", 1)[0]: "end of stream does not contain a valid GPG footer",
        sample("signed.gpg"): "valid GPG header",
        sample("clearsigned.asc"): "valid GPG header",
        sample("public-key-export.asc"): "valid GPG header",
        sample("garbage-after-data.gpg"): "valid GPG footer",
    }
    for body, phrase in refused.items():
        response = await upload(client, auth, body)
        assert response.status_code == 400, (body[:40], response.text)
        assert phrase in response.json()["error"]
    assert await versions(client, auth) == []
    # The next accepted upload gets number 1: refused uploads used no numbers.
    response = await upload(client, auth, gpg_home.encrypt(b"ok"))
    assert response.json()["data"]["version"]["versionNumber"] == 1


# -- quotas and rotation ------------------------------------------------------------------


async def test_quota_at_the_limit_and_one_byte_over(
    client: Client, gpg_home: GpgHome, config_dir: Path
) -> None:
    # n=2, s=10K, H=30K: extra = 10K, so the first upload may take 20K.
    write_config(
        config_dir,
        documents(
            q=collection("q", maxBackupsCount=2, maxOneVersionSize="10K", maxCollectionSize="30K")
        ),
    )
    auth = await token(client, UPLOADER)
    await eventually(lambda: _has_collection(client, auth, "q"))
    sample = gpg_home.encrypt(b"q")
    over = await upload(client, auth, pad_to(sample, 20 * 1024 + 1), name="q")
    assert over.status_code == 413
    assert "filesize reached allowed limit" in over.json()["error"]
    assert await versions(client, auth, "q") == []

    exact = await upload(client, auth, pad_to(sample, 20 * 1024), name="q")
    assert exact.status_code == 200, exact.text
    # Now 10K of the extra space is used: the next may take 10K (s + 0).
    assert (await upload(client, auth, pad_to(sample, 10 * 1024 + 1), name="q")).status_code == 413
    assert (await upload(client, auth, pad_to(sample, 10 * 1024), name="q")).status_code == 200
    # The collection is full (2 versions): the next upload rotates v1 (20K) out, so 20K fit.
    assert (await upload(client, auth, pad_to(sample, 20 * 1024), name="q")).status_code == 200
    assert await versions(client, auth, "q") == [3, 2]


async def test_chunked_body_is_cut_off_at_the_limit(
    client: Client, gpg_home: GpgHome, config_dir: Path
) -> None:
    auth = await token(client, UPLOADER)
    data = pad_to(gpg_home.encrypt(b"q"), 128 * 1024 * 1024)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(data), 64 * 1024):
            sent += 64 * 1024
            yield data[start : start + 64 * 1024]

    response = await upload(client, auth, endless())  # type: ignore[arg-type]
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    # Refused the moment the limit (64K + 64K extra) was passed; after that the server only
    # reads and drops a bounded amount so that the client sees the answer.
    assert sent < 128 * 1024 + DRAIN_BYTES + 256 * 1024
    assert await versions(client, auth) == []


async def test_fifo_rotation_never_reuses_numbers(client: Client, gpg_home: GpgHome) -> None:
    auth = await token(client, UPLOADER)
    bodies = {}
    for _ in range(5):
        data = gpg_home.encrypt(f"backup {_}".encode())
        response = await upload(client, auth, data)
        assert response.status_code == 200, response.text
        bodies[response.json()["data"]["version"]["versionNumber"]] = data
    assert await versions(client, auth) == [5, 4, 3]
    for gone in (1, 2):
        response = await client.get(f"{BASE}/db/version/{gone}", headers=auth)
        assert response.status_code == 404
        assert "cannot find specified version" in response.json()["error"]
    for kept in (3, 4, 5):
        assert (await client.get(f"{BASE}/db/version/{kept}", headers=auth)).content == bodies[kept]
    listing = (await client.get(f"{BASE}/db/version", headers=auth)).json()["data"]
    assert listing["usage"]["versions"] == 3
    assert listing["usage"]["bytesUsed"] == sum(len(bodies[n]) for n in (3, 4, 5))
    assert listing["usage"]["maxBackupsCount"] == 3


# -- authorization and windows ---------------------------------------------------------------


async def test_permissions(client: Client, gpg_home: GpgHome) -> None:
    data = gpg_home.encrypt(b"perm")
    stranger = await token(client, STRANGER)
    reader = await token(client, READER)
    key = await token(client, KEY)

    response = await upload(client, stranger, data)
    assert response.status_code == 403
    assert "not authorized to upload versions to this collection" in response.json()["error"]
    response = await upload(client, reader, data)
    assert response.status_code == 403

    assert (await upload(client, key, data)).status_code == 200
    response = await client.get(f"{BASE}/db/version/latest", headers=key)
    assert response.status_code == 403
    assert "not authorized to download versions" in response.json()["error"]
    assert (await client.get(f"{BASE}/db/version/latest", headers=reader)).content == data

    response = await client.get(f"{BASE}/db/version", headers=stranger)
    assert response.status_code == 403
    assert "not authorized to list versions" in response.json()["error"]

    response = await upload(client, key, data, name="nope")
    assert response.status_code == 404
    assert "cannot find specified collection" in response.json()["error"]
    assert (await client.get(f"{BASE}/db/version/v99", headers=reader)).status_code == 404
    assert (await client.get(f"{BASE}/db/version/abc", headers=reader)).status_code == 404
    assert (await client.post(f"{BASE}/db/version", content=data)).status_code == 401


async def test_collection_listing_shows_what_the_caller_may_see(
    client: Client, config_dir: Path
) -> None:
    write_config(config_dir, documents(other=collection("other", accessControl=[])))
    admin = await token(client, ADMIN)
    await eventually(lambda: _has_collection(client, admin, "other"))
    reader = await token(client, READER)
    stranger = await token(client, STRANGER)
    names = lambda r: [c["id"] for c in r.json()["data"]["collections"]]  # noqa: E731
    assert names(await client.get(BASE, headers=admin)) == ["db", "other"]
    assert names(await client.get(BASE, headers=reader)) == ["db"]
    assert names(await client.get(BASE, headers=stranger)) == []


async def _has_collection(client: Client, auth: dict[str, str], name: str) -> bool:
    response = await client.get(BASE, headers=auth)
    return name in [c["id"] for c in response.json()["data"]["collections"]]


async def test_backup_window(client: Client, gpg_home: GpgHome, config_dir: Path) -> None:
    closed = collection("closed", windows=closed_windows())
    open_now = collection("open", windows=[{"from": "* * * * *", "duration": "1h"}])
    docs = documents(closed=closed, open=open_now)
    write_config(config_dir, docs)
    uploader = await token(client, UPLOADER)
    admin = await token(client, ADMIN)
    await eventually(lambda: _has_collection(client, admin, "closed"))
    data = gpg_home.encrypt(b"window")

    response = await upload(client, uploader, data, name="closed")
    assert response.status_code == 403
    assert (
        "backup window does not allow you to send a backup at this time" in response.json()["error"]
    )
    # systemAdmin includes uploadsAnytime.
    assert (await upload(client, admin, data, name="closed")).status_code == 200
    assert (await upload(client, uploader, data, name="open")).status_code == 200


# -- the upload lock -------------------------------------------------------------------------


async def test_parallel_uploads_to_one_collection(client: Client, gpg_home: GpgHome) -> None:
    auth = await token(client, UPLOADER)
    data = gpg_home.encrypt(b"slow" * 100)
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:100]
        started.set()
        await release.wait()
        yield data[100:]

    first = asyncio.create_task(upload(client, auth, slow()))  # type: ignore[arg-type]
    await asyncio.wait_for(started.wait(), 10)
    second = await upload(client, auth, data)
    assert second.status_code == 409
    assert "cannot upload to same collection in parallel" in second.json()["error"]
    release.set()
    assert (await first).status_code == 200
    # The lock was released: the next upload proceeds.
    assert (await upload(client, auth, data)).status_code == 200
    assert await versions(client, auth) == [2, 1]


async def test_failed_upload_releases_the_lock(client: Client, gpg_home: GpgHome) -> None:
    auth = await token(client, UPLOADER)
    assert (await upload(client, auth, b"not encrypted at all")).status_code == 400
    assert (await upload(client, auth, gpg_home.encrypt(b"ok"))).status_code == 200


# -- collection health -----------------------------------------------------------------------


async def test_collection_health(client: Client, gpg_home: GpgHome, backend: Backend) -> None:
    url = f"{BASE}/db/health"
    response = await client.get(url)
    assert response.status_code == 403
    assert "not authorized - invalid value of 'code' parameter" in response.json()["error"]
    assert (await client.get(url, params={"code": "wrong"})).status_code == 403

    response = await client.get(url, params={"code": HEALTH_CODE})
    assert response.status_code == 200, response.text
    checks = {c["name"]: c for c in response.json()["data"]["health"]}
    assert set(checks) == {
        "BackupWindowValidator",
        "VersionsSizeValidator",
        "SumOfVersionsValidator",
        "StoredObjectsValidator",
        "VersionsIntegrityValidator",
    }
    assert all(c["status"] for c in checks.values())
    response = await client.get(url, headers={"Authorization": HEALTH_CODE})
    assert response.status_code == 200

    auth = await token(client, UPLOADER)
    # Larger than maxOneVersionSize (64K) but within the extra space: kept, reported.
    big = pad_to(gpg_home.encrypt(b"big"), 100 * 1024)
    assert (await upload(client, auth, big)).status_code == 200
    response = await client.get(url, params={"code": HEALTH_CODE})
    assert response.status_code == 500
    assert response.json()["error"] == "one of checks failed"
    checks = {c["name"]: c for c in response.json()["data"]["health"]}
    assert checks["VersionsSizeValidator"]["status"] is False
    assert checks["VersionsSizeValidator"]["statusText"] == "VersionsSizeValidator=false"
    assert checks["StoredObjectsValidator"]["status"] is True


async def test_missing_object_fails_health_and_download(
    client: Client, gpg_home: GpgHome, backend: Backend
) -> None:
    auth = await token(client, UPLOADER)
    assert (await upload(client, auth, gpg_home.encrypt(b"gone"))).status_code == 200
    store = client.app.state.services.downloads._store  # type: ignore[attr-defined]
    await store.delete("db/db-1.tar.gz")
    response = await client.get(f"{BASE}/db/health", params={"code": HEALTH_CODE})
    assert response.status_code == 500
    checks = {c["name"]: c for c in response.json()["data"]["health"]}
    assert checks["StoredObjectsValidator"]["status"] is False
    assert "v1" in checks["StoredObjectsValidator"]["message"]
    response = await client.get(f"{BASE}/db/version/1", headers=auth)
    assert response.status_code == 503
    assert response.json()["status"] is False


async def test_ready_checks_storage(client: Client) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    checks = {c["name"]: c for c in response.json()["data"]["health"]}
    assert checks["StorageAvailabilityValidator"]["status"] is True


async def test_ready_fails_on_unreachable_storage(tmp_path: Path, config_dir: Path) -> None:
    backend = Backend(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        "s3://bucket?endpoint=127.0.0.1:9&disableSSL=true&s3ForcePathStyle=true&region=us-east-1",
    )
    app = create_app(settings_for(tmp_path, backend, storage_health_timeout=3))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.get("/ready")
            assert response.status_code == 500
            checks = {x["name"]: x for x in response.json()["data"]["health"]}
            assert checks["StorageAvailabilityValidator"]["status"] is False
            assert checks["DbValidator"]["status"] is True


async def test_upload_timeout_is_408_and_frees_the_lock(
    tmp_path: Path, config_dir: Path, gpg_home: GpgHome
) -> None:
    backend = Backend(f"sqlite:///{tmp_path / 'db.sqlite'}", (tmp_path / "storage").as_uri())
    app = create_app(settings_for(tmp_path, backend, http_upload_timeout=timedelta(seconds=1)))
    data = gpg_home.encrypt(b"slow")

    async def stalled() -> AsyncIterator[bytes]:
        yield data[:50]
        await asyncio.sleep(30)
        yield data[50:]

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            auth = await token(c, UPLOADER)
            response = await upload(c, auth, stalled())  # type: ignore[arg-type]
            assert response.status_code == 408
            assert response.json()["error"] == "Request took too long"
            assert (await upload(c, auth, data)).status_code == 200
            assert await versions(c, auth) == [1]
