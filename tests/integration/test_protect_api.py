"""Protected versions and deletion by collection managers through the whole API in process
(docs/collections.md "Protected versions" and "Deleting a version", docs/security.md "Who
can remove a backup"), on SQLite and PostgreSQL.

Each claim of docs/security.md has its assertion here: an uploader's and a downloader's
DELETE are 403 (and so are their protects), a manager's is 200; rotation skips protected
versions under every strategy; an upload that only protected versions keep out is refused
with a message that says so; numbers are not reused after deleting the newest version;
every attempt leaves an audit row."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from backup_repository.db.engine import create_engine
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.http.app import create_app
from backup_repository.services.passwords import PasswordHasher
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import KNOWN_PASSWORDS, collection_doc, make_settings, write_config

# One server per database for the whole module: each test has collections of its own.
pytestmark = pytest.mark.asyncio(loop_scope="module")

BASE = "/api/stable/repository/collection"
K = 1024
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
PASSWORDS = {"manager$ci": "ci-pass", "manager$ops": "ops-pass"}
# Stored passwords that take a millisecond to check: the tests log in often.
_CHEAP = PasswordHasher(1, time_cost=1, memory_cost=1024, parallelism=1)


def user_doc(name: str, roles: list[str], **spec: Any) -> dict[str, Any]:
    KNOWN_PASSWORDS.add(f"{name}-pass")  # for the check that no server log holds it
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupUser",
        "metadata": {"name": name},
        "spec": {
            "email": f"{name}@example.org",
            "password": _CHEAP.hash_sync(f"{name}-pass"),
            "roles": roles,
            **spec,
        },
    }


def key(name: str, collection: str, role: str) -> dict[str, Any]:
    KNOWN_PASSWORDS.add(f"{name}-pass")
    return {
        "name": name,
        "password": _CHEAP.hash_sync(f"{name}-pass"),
        "objects": [{"name": collection, "type": "collection", "roles": [role]}],
    }


def collection(name: str, strategy: str, spec: dict[str, Any], **limits: Any) -> dict[str, Any]:
    doc = collection_doc(
        name,
        acl=[
            {"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]},
            {"name": "downloader", "type": "user", "roles": ["backupDownloader"]},
            {"name": "manager", "type": "user", "roles": ["collectionManager"]},
        ],
    )
    doc["spec"].update(strategyName=strategy, strategySpec=spec, **limits)
    return doc


def documents() -> list[dict[str, Any]]:
    return [
        user_doc("admin", ["systemAdmin"]),
        user_doc("uploader", []),
        user_doc("downloader", []),
        user_doc(
            "manager",
            [],
            accessKeys=[
                # The manager's key for its backup job: uploads only, whatever the user may.
                key("ci", "rights", "backupUploader"),
                key("ops", "rights", "collectionManager"),
            ],
        ),
        collection("rights", "fifo", {}, maxBackupsCount=3),
        collection("fifo", "fifo", {}, maxBackupsCount=3),
        collection("numbers", "fifo", {}, maxBackupsCount=3),
        # n = 2, s = 64K, H = 100K (no extra space): a 60K version leaves 40K.
        collection(
            "size",
            "fifo",
            {},
            maxBackupsCount=2,
            maxOneVersionSize="64K",
            maxCollectionSize="100K",
        ),
        collection("gfs", "gfs", {"keepLast": 1, "keepDaily": 1}, maxBackupsCount=3),
        collection(
            "older",
            "fifo-plus-older",
            {"keepLastOlderNotMoreThan": "1d", "maxOlderCopies": 1},
            maxBackupsCount=3,
        ),
    ]


@dataclass
class Api:
    client: httpx.AsyncClient
    storage: Path
    database_url: str
    now: datetime
    tokens: dict[str, dict[str, str]]

    async def auth(self, login: str) -> dict[str, str]:
        if login not in self.tokens:
            response = await self.client.post(
                "/api/stable/auth/login",
                json={"username": login, "password": PASSWORDS.get(login, f"{login}-pass")},
            )
            assert response.status_code == 200, response.text
            token = response.json()["data"]["token"]
            self.tokens[login] = {"Authorization": f"Bearer {token}"}
        return self.tokens[login]

    async def upload(self, name: str, size: int = 1 * K, login: str = "uploader") -> int:
        response = await self.upload_response(name, size, login)
        assert response.status_code == 200, response.text
        number: int = response.json()["data"]["version"]["versionNumber"]
        return number

    async def upload_response(
        self, name: str, size: int, login: str = "uploader"
    ) -> httpx.Response:
        self.now += timedelta(hours=1)
        return await self.client.post(
            f"{BASE}/{name}/version", content=pad_to(MESSAGE, size), headers=await self.auth(login)
        )

    async def protect(
        self, name: str, version: int | str, login: str = "manager", *, on: bool = True
    ) -> httpx.Response:
        method = self.client.post if on else self.client.delete
        return await method(
            f"{BASE}/{name}/version/{version}/protect", headers=await self.auth(login)
        )

    async def delete(
        self, name: str, version: int | str, login: str = "manager", reason: str | None = "test"
    ) -> httpx.Response:
        params = {} if reason is None else {"reason": reason}
        return await self.client.delete(
            f"{BASE}/{name}/version/{version}", params=params, headers=await self.auth(login)
        )

    async def listing(self, name: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"{BASE}/{name}/version", headers=await self.auth("uploader")
        )
        assert response.status_code == 200, response.text
        versions: list[dict[str, Any]] = response.json()["data"]["versions"]
        return versions

    async def live(self, name: str) -> list[int]:
        return [v["versionNumber"] for v in await self.listing(name)]

    async def dry_run(self, name: str) -> dict[str, Any]:
        response = await self.client.get(
            f"{BASE}/{name}/retention", headers=await self.auth("admin")
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def audit(self, action: str, collection: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/api/stable/audit",
            params={"action": action, "collection": collection},
            headers=await self.auth("admin"),
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["data"]["events"]
        return events


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
async def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    tmp = tmp_path_factory.mktemp(f"protect-{request.param}")
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
    app = create_app(make_settings(tmp, db_url))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                found = Api(
                    client, tmp / "storage", db_url, datetime(2026, 3, 2, 10, tzinfo=UTC), {}
                )
                app.state.services.uploads.clock = lambda: found.now
                yield found
    finally:
        if database is not None:
            connection = await asyncpg.connect(_postgres_dsn(admin_url))
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await connection.close()


def _postgres_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def fates(view: dict[str, Any]) -> list[tuple[int, list[str], str]]:
    return [(v["version"], v["keptBy"], v["fate"]) for v in view["versions"]]


async def test_protect_and_delete_only_by_collection_managers(api: Api) -> None:
    for _ in range(2):
        await api.upload("rights")
    # Uploaders and downloaders can neither delete nor protect, nor can a manager's key
    # that grants only uploading; a manager, its managing key and a systemAdmin can.
    for login in ("uploader", "downloader", "manager$ci"):
        refused = await api.delete("rights", 1, login)
        assert refused.status_code == 403, refused.text
        assert "not authorized to delete versions" in refused.json()["error"]
        refused = await api.protect("rights", 1, login)
        assert refused.status_code == 403, refused.text
        assert "collectionManager" in refused.json()["error"]
    assert await api.live("rights") == [2, 1]

    protected = await api.protect("rights", 1, "manager$ops")
    assert protected.status_code == 200, protected.text
    assert protected.json()["data"]["version"]["protected"] is True
    assert [(v["versionNumber"], v["protected"]) for v in await api.listing("rights")] == [
        (2, False),
        (1, True),
    ]
    # Protecting again changes nothing and succeeds.
    assert (await api.protect("rights", "v1", "admin")).status_code == 200

    # A protected version cannot be deleted, not even by a systemAdmin: unprotect first.
    conflict = await api.delete("rights", 1, "admin")
    assert conflict.status_code == 409, conflict.text
    message = conflict.json()["error"]
    assert "version 1 of collection rights is protected" in message
    assert "/api/stable/repository/collection/rights/version/1/protect" in message
    assert (await api.protect("rights", 1, on=False)).json()["data"]["version"][
        "protected"
    ] is False

    # A deletion says why; without a reason it is refused, and so is an unknown version.
    missing = await api.delete("rights", 1, reason=None)
    assert missing.status_code == 400
    assert "reason" in missing.json()["error"]
    assert (await api.delete("rights", 9)).status_code == 404
    assert (await api.delete("rights", "nine")).status_code == 404
    assert (await api.delete("nope", 1)).status_code == 404

    deleted = await api.delete("rights", 1, reason="restored, found corrupt")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data"]["version"]["DeletedAt"] is not None
    assert await api.live("rights") == [2]
    assert not (api.storage / "rights" / "rights-1.tar.gz").exists()
    download = await api.client.get(f"{BASE}/rights/version/1", headers=await api.auth("uploader"))
    assert download.status_code == 404

    # Every attempt is in the audit log: who, which version, and why.
    deletions = await api.audit("version.delete", "rights")
    succeeded = [e for e in deletions if e["outcome"] == "success"]
    assert [(e["user"], e["version"]) for e in succeeded] == [("manager", 1)]
    assert "reason: restored, found corrupt" in succeeded[0]["detail"]
    failed = {(e["user"], e["accessKey"], e["reason"]) for e in deletions}
    assert {
        ("uploader", "", "auth"),
        ("downloader", "", "auth"),
        ("manager", "ci", "auth"),
        ("admin", "", "protected"),
        ("manager", "", "invalid"),
        ("manager", "", "not_found"),
    } <= failed
    protects = await api.audit("version.protect", "rights")
    assert [(e["user"], e["accessKey"], e["outcome"]) for e in protects][:2] == [
        ("admin", "", "success"),
        ("manager", "ops", "success"),
    ]
    assert "already protected" in protects[0]["detail"]
    unprotects = await api.audit("version.unprotect", "rights")
    assert [(e["user"], e["version"], e["outcome"]) for e in unprotects] == [
        ("manager", 1, "success")
    ]


async def test_fifo_rotation_skips_protected_versions_that_still_count(api: Api) -> None:
    for _ in range(3):
        await api.upload("fifo")
    assert (await api.protect("fifo", 1)).status_code == 200
    run = await api.dry_run("fifo")
    assert fates(run["current"]) == [
        (3, ["last"], "kept"),
        (2, ["last"], "kept"),
        (1, ["protected"], "kept"),
    ]
    assert run["current"]["versions"][2]["protected"] is True
    # The next upload takes a slot of the two v1 leaves: v2 goes, not v1.
    assert fates(run["afterUpload"]) == [
        (4, ["last"], "kept"),
        (3, ["last"], "kept"),
        (2, [], "rotated"),
        (1, ["protected"], "kept"),
    ]
    await api.upload("fifo")
    assert await api.live("fifo") == [4, 3, 1]

    # Three protected versions fill maxBackupsCount 3: nothing can be added, and the
    # refusal says why and what to do.
    for number in (3, 4):
        assert (await api.protect("fifo", number)).status_code == 200
    run = await api.dry_run("fifo")
    assert run["afterUpload"]["nextUploadMaxBytes"] == 0
    assert "reached by 3 protected versions" in run["afterUpload"]["quotaRule"]
    refused = await api.upload_response("fifo", 1 * K)
    assert refused.status_code == 413, refused.text
    message = refused.json()["error"]
    assert message.startswith(
        "filesize reached allowed limit: maxBackupsCount 3 of collection fifo is reached by 3 "
        "protected versions"
    )
    assert "unprotect one (DELETE /api/stable/repository/collection/fifo/version/" in message
    assert "raise maxBackupsCount" in message
    assert await api.live("fifo") == [4, 3, 1]

    # Unprotected, v4 is the one the next upload rotates out; numbers go on.
    assert (await api.protect("fifo", 4, on=False)).status_code == 200
    assert await api.upload("fifo") == 5
    assert await api.live("fifo") == [5, 3, 1]


async def test_protected_versions_count_against_the_collection_size(api: Api) -> None:
    await api.upload("size", 60 * K)
    await api.upload("size", 30 * K)
    # Unprotected, v1 would go with the next upload: 64K would be allowed.
    assert (await api.dry_run("size"))["afterUpload"]["nextUploadMaxBytes"] == 64 * K
    assert (await api.protect("size", 1)).status_code == 200
    run = await api.dry_run("size")
    # Protected, v1's 60K stay: v2 goes instead, and 40K are left of the 100K.
    assert fates(run["afterUpload"]) == [
        (3, ["last"], "kept"),
        (2, [], "rotated"),
        (1, ["protected"], "kept"),
    ]
    assert run["afterUpload"]["nextUploadMaxBytes"] == 40 * K
    refused = await api.upload_response("size", 50 * K)
    assert refused.status_code == 413, refused.text
    message = refused.json()["error"]
    assert message.startswith("filesize reached allowed limit: Content-Length declares")
    assert "because 1 protected versions (61440 bytes) are never rotated out" in message
    assert f"without them it could have {64 * K} bytes" in message
    assert "raise maxCollectionSize" in message
    # Too large even without protection: the usual message.
    too_large = await api.upload_response("size", 70 * K)
    assert "protected" not in too_large.json()["error"]
    assert await api.upload("size", 40 * K) == 3
    assert await api.live("size") == [3, 1]


async def test_gfs_and_fifo_plus_older_skip_protected_versions(api: Api) -> None:
    # gfs keepLast 1, keepDaily 1: a protected version covers no period and takes no slot.
    first = await api.upload("gfs")
    assert (await api.protect("gfs", first)).status_code == 200
    await api.upload("gfs")
    await api.upload("gfs")
    assert await api.live("gfs") == [3, 1]
    run = await api.dry_run("gfs")
    assert fates(run["current"]) == [(3, ["last"], "kept"), (1, ["protected"], "kept")]

    # fifo-plus-older, n = 3, one older copy: with v1 protected only two slots are left,
    # so there is no room for an older copy (n - p - 2 = 0) and v1 is never the chain.
    for _ in range(2):
        await api.upload("older")
    assert (await api.protect("older", 1)).status_code == 200
    for _ in range(3):
        api.now += timedelta(days=1)
        await api.upload("older")
    assert await api.live("older") == [5, 4, 1]


async def test_version_delete_never_reuses_numbers_and_is_cleaned_up_when_interrupted(
    api: Api,
) -> None:
    for _ in range(2):
        await api.upload("numbers")
    # Deleting the newest version: the next upload still gets the next number.
    assert (await api.delete("numbers", "latest")).status_code == 200
    assert await api.live("numbers") == [1]
    assert not (api.storage / "numbers" / "numbers-2.tar.gz").exists()
    assert await api.upload("numbers") == 3
    assert await api.live("numbers") == [3, 1]
    assert (
        await api.client.get(f"{BASE}/numbers/version/latest", headers=await api.auth("uploader"))
    ).headers["content-length"] == str(1 * K)

    # While an upload holds the collection's lock, versions do not change.
    engine = create_engine(api.database_url)
    try:
        await _interrupted(api, SqlVersionRepository(engine))
    finally:
        await engine.dispose()


async def _interrupted(api: Api, versions: SqlVersionRepository) -> None:
    assert await versions.try_lock("numbers", "someone-else", 30) == 3
    busy = await api.protect("numbers", 3)
    assert busy.status_code == 409
    assert "an upload to collection numbers is running" in busy.json()["error"]
    assert (await api.delete("numbers", 3)).status_code == 409
    await versions.release_lock("numbers", "someone-else")

    # A deletion interrupted between its row and its object: the next upload's clean-up
    # deletes the object.
    assert await versions.try_lock("numbers", "interrupted", 30) == 3
    record = await versions.get_version("numbers", 1)
    assert record is not None
    assert await versions.delete_version(record.id, "interrupted") is not None
    await versions.release_lock("numbers", "interrupted")
    assert (api.storage / "numbers" / "numbers-1.tar.gz").exists()
    assert await api.upload("numbers") == 4
    assert not (api.storage / "numbers" / "numbers-1.tar.gz").exists()
    assert await versions.deleted_unpurged("numbers") == []
    assert await api.live("numbers") == [4, 3]
