"""Trusted uploaders through the whole API in process, on SQLite and PostgreSQL with file
storage, and on PostgreSQL with S3 (docs/security.md, "Trusted uploaders"): a collection
with ``trustedUploaders`` takes only uploads whose detached signature, checked by the real
gpg while the upload streams, was made by one of its keys; every refusal stores nothing
(no object, no row), rotates nothing and leaves an audit row; a signed version names its
signer and hands out its signature."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from backup_repository.http.app import create_app
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import collection_doc, eventually, make_settings, user_doc, write_config
from trusted_keys import Signers, signers_fixture

signers = signers_fixture
# One server per database for the whole module.
pytestmark = pytest.mark.asyncio(loop_scope="module")

BASE = "/api/stable/repository/collection"
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
ACL = [{"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]}]


def body(number: int) -> bytes:
    """A distinct encrypted upload per number."""
    return pad_to(MESSAGE, len(MESSAGE) + 100 + number)


def documents(signers: Signers, rotating: str = "second") -> list[dict[str, Any]]:
    signed = collection_doc("signed", acl=ACL)
    # One version at most: a refused upload must not rotate the one there is.
    signed["spec"].update(
        maxBackupsCount=1,
        # Room for an upload of several multipart parts (S3).
        maxOneVersionSize="24M",
        maxCollectionSize="48M",
        trustedUploaders={"keysFromRef": {"name": "uploaders", "entry": "keys.asc"}},
    )
    pinned = collection_doc("pinned", acl=ACL)
    pinned["spec"]["trustedUploaders"] = {
        "keysFromRef": {"name": "uploaders", "entry": "keys.asc"},
        "fingerprints": [signers.fingerprints["second"]],
    }
    rotation = collection_doc("rotating", acl=ACL)
    rotation["spec"]["trustedUploaders"] = {
        "keysFromRef": {"name": "rotating-keys", "entry": "keys.asc"}
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "rotating-keys"},
            "stringData": {"keys.asc": signers.public(rotating)},
        },
        rotation,
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc("uploader", "uploader-pass", []),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "uploaders"},
            "stringData": {
                "keys.asc": signers.public("trusted", "second", "expired", "revoked"),
            },
        },
        signed,
        pinned,
        collection_doc("plain", acl=ACL),
    ]


@dataclass
class Api:
    client: httpx.AsyncClient
    storage: Path
    config: Path
    signers: Signers
    tokens: dict[str, dict[str, str]]
    # The S3 endpoint (storage_fixtures.S3TestEndpoint) and the prefix the server stores
    # under, when it stores in S3 rather than under ``storage``.
    s3: tuple[Any, str] | None = None
    database_url: str = ""

    async def auth(self, login: str = "uploader") -> dict[str, str]:
        if login not in self.tokens:
            response = await self.client.post(
                "/api/stable/auth/login", json={"username": login, "password": f"{login}-pass"}
            )
            assert response.status_code == 200, response.text
            self.tokens[login] = {"Authorization": f"Bearer {response.json()['data']['token']}"}
        return self.tokens[login]

    async def upload(
        self, name: str, data: bytes, signature: bytes | None = None
    ) -> httpx.Response:
        headers = dict(await self.auth())
        if signature is not None:
            headers["X-Backup-Signature"] = base64.b64encode(signature).decode()
        return await self.client.post(f"{BASE}/{name}/version", content=data, headers=headers)

    async def versions(self, name: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"{BASE}/{name}/version", headers=await self.auth())
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["data"]["versions"]
        return found

    def stored(self, name: str) -> list[str]:
        if self.s3 is not None:
            return sorted(
                key.removeprefix(f"{name}/") for key in self.objects() if key.startswith(f"{name}/")
            )
        folder = self.storage / name
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def objects(self) -> list[str]:
        """Every object key under the server's S3 prefix (relative to it), staging and
        unfinished multipart uploads included."""
        assert self.s3 is not None
        endpoint, prefix = self.s3
        client = endpoint.client()
        listed = client.list_objects_v2(Bucket=endpoint.bucket, Prefix=f"{prefix}/")
        keys = [entry["Key"] for entry in listed.get("Contents", [])]
        keys += endpoint.incomplete_uploads(f"{prefix}/")
        return sorted(key.removeprefix(f"{prefix}/") for key in keys)

    async def refusals(self) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/api/stable/audit",
            params={"action": "upload", "collection": "signed"},
            headers=await self.auth("admin"),
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["data"]["events"]
        return [e for e in events if e["outcome"] == "failure"]


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def fresh_postgres(admin_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for a module's server, dropped afterwards."""
    database = f"br_test_{uuid.uuid4().hex[:16]}"
    connection = await asyncpg.connect(_dsn(admin_url))
    await connection.execute(f'CREATE DATABASE "{database}"')
    await connection.close()
    try:
        yield make_url(admin_url).set(database=database).render_as_string(False)
    finally:
        connection = await asyncpg.connect(_dsn(admin_url))
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.close()


@contextlib.asynccontextmanager
async def serve(
    tmp: Path, db_url: str, signers: Signers, storage_url: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on ``db_url`` (and ``storage_url``, else a folder under ``tmp``) with the
    configuration of :func:`documents`, reached in process."""
    write_config(tmp / "config", documents(signers))
    app = create_app(make_settings(tmp, db_url, storage_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
async def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, signers: Signers
) -> AsyncIterator[Api]:
    tmp = tmp_path_factory.mktemp(f"signed-{request.param}")
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            admin_url: str = request.getfixturevalue("postgres_admin_url")
            db_url = await stack.enter_async_context(fresh_postgres(admin_url))
        else:
            db_url = f"sqlite:///{tmp / 'db.sqlite'}"
        client = await stack.enter_async_context(serve(tmp, db_url, signers))
        yield Api(client, tmp / "storage", tmp / "config", signers, {})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s3_api(
    postgres_admin_url: str,
    s3_storage_url: Any,
    tmp_path_factory: pytest.TempPathFactory,
    signers: Signers,
) -> AsyncIterator[Api]:
    """The server on PostgreSQL with its versions in S3 (SeaweedFS), under a prefix of its
    own in the test bucket."""
    tmp = tmp_path_factory.mktemp("signed-s3")
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    async with (
        fresh_postgres(postgres_admin_url) as db_url,
        serve(tmp, db_url, signers, s3_storage_url.url_for(prefix)) as client,
    ):
        yield Api(
            client, tmp / "storage", tmp / "config", signers, {}, (s3_storage_url, prefix), db_url
        )


async def test_signed_upload_header_and_form_and_the_signature_download(api: Api) -> None:
    signers = api.signers
    first = body(1)
    signature = signers.sign("trusted", first)
    response = await api.upload("signed", first, signature)
    assert response.status_code == 200, response.text
    version = response.json()["data"]["version"]
    assert version["signedBy"] == signers.fingerprints["trusted"]
    assert [v["signedBy"] for v in await api.versions("signed")] == [
        signers.fingerprints["trusted"]
    ]

    # The download carries the signature, which verifies the bytes downloaded.
    headers = await api.auth()
    download = await api.client.get(f"{BASE}/signed/version/latest", headers=headers)
    assert download.status_code == 200
    assert download.content == first
    assert download.headers["x-backup-signed-by"] == signers.fingerprints["trusted"]
    assert base64.b64decode(download.headers["x-backup-signature"]) == signature
    armored = await api.client.get(f"{BASE}/signed/version/1/signature", headers=headers)
    assert armored.status_code == 200, armored.text
    assert armored.headers["content-type"].startswith("application/pgp-signature")
    assert armored.text.startswith("-----BEGIN PGP SIGNATURE-----")
    assert signers.verify(armored.content, first)
    assert not signers.verify(armored.content, body(2))

    # A multipart form: the (armoured) signature as the part before the file.
    second = body(2)
    form = await api.client.post(
        f"{BASE}/signed/version",
        files=[
            ("signature", ("backup.sig", signers.sign("second", second, armor=True))),
            ("file", ("backup.gpg", second)),
        ],
        headers=headers,
    )
    assert form.status_code == 200, form.text
    assert form.json()["data"]["version"]["signedBy"] == signers.fingerprints["second"]
    assert [v["versionNumber"] for v in await api.versions("signed")] == [2]

    # A version of a collection without trusted uploaders has no signature to hand out.
    plain = await api.upload("plain", body(3))
    assert plain.status_code == 200, plain.text
    assert plain.json()["data"]["version"]["signedBy"] is None
    missing = await api.client.get(f"{BASE}/plain/version/1/signature", headers=headers)
    assert missing.status_code == 404
    assert "without a signature" in missing.json()["error"]


async def test_trusted_uploaders_refuse_and_store_nothing(api: Api) -> None:
    signers = api.signers
    data = body(10)
    if not await api.versions("signed"):
        ok = await api.upload("signed", body(11), signers.sign("trusted", body(11)))
        assert ok.status_code == 200, ok.text
    before_versions = await api.versions("signed")
    before_files = api.stored("signed")
    before_refusals = len(await api.refusals())
    headers = await api.auth()

    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("unsigned", await api.upload("signed", data), 403, "carries no signature"),
        (
            "other bytes",
            await api.upload("signed", data, signers.sign("trusted", body(12))),
            403,
            "does not match the uploaded bytes",
        ),
        (
            "untrusted key",
            await api.upload("signed", data, signers.sign("stranger", data)),
            403,
            "not among the trusted uploaders",
        ),
        (
            "expired key",
            await api.upload("signed", data, signers.sign("expired", data)),
            403,
            "has expired",
        ),
        (
            "revoked key",
            await api.upload("signed", data, signers.sign("revoked", data)),
            403,
            "has been revoked",
        ),
        (
            "not pinned",
            await api.upload("pinned", data, signers.sign("trusted", data)),
            403,
            "not among the trusted uploaders",
        ),
        (
            "not base64",
            await api.client.post(
                f"{BASE}/signed/version",
                content=data,
                headers={**headers, "X-Backup-Signature": "not base64!"},
            ),
            400,
            "is not base64",
        ),
        (
            "signature after the file",
            await api.client.post(
                f"{BASE}/signed/version",
                files=[
                    ("file", ("backup.gpg", data)),
                    ("signature", ("backup.sig", signers.sign("trusted", data))),
                ],
                headers=headers,
            ),
            # Too late: the file's first bytes came without a signature.
            403,
            "carries no signature",
        ),
    ]
    for what, response, status, phrase in cases:
        assert response.status_code == status, (what, response.text)
        assert phrase in response.json()["error"], (what, response.text)

    # Nothing stored, nothing rotated, every refusal audited with its reason.
    assert await api.versions("signed") == before_versions
    assert api.stored("signed") == before_files
    assert api.stored("pinned") == []
    refusals = await api.refusals()
    assert len(refusals) - before_refusals == 7  # the pinned collection's is not "signed"'s
    assert {e["reason"] for e in refusals[: len(refusals) - before_refusals]} == {"signature"}

    # The pinned key is trusted by "pinned"; a signature sent to a collection without
    # trusted uploaders is not needed and changes nothing.
    pinned = await api.upload("pinned", data, signers.sign("second", data))
    assert pinned.status_code == 200, pinned.text
    plain = await api.upload("plain", data, signers.sign("stranger", data))
    assert plain.status_code == 200, plain.text
    assert plain.json()["data"]["version"]["signedBy"] is None


async def test_trusted_keys_follow_a_reload_of_their_secret(api: Api) -> None:
    signers = api.signers
    data = body(20)
    by_second = signers.sign("second", data)
    first = await api.upload("rotating", data, by_second)
    assert first.status_code == 200, first.text

    # The Secret now holds another key: the old one's signatures are refused from the
    # reload on, the new one's accepted.
    write_config(api.config, documents(signers, rotating="trusted"))

    async def refused() -> bool:
        response = await api.upload("rotating", data, by_second)
        return response.status_code == 403

    assert await eventually(refused, within=15)
    second = await api.upload("rotating", data, signers.sign("trusted", data))
    assert second.status_code == 200, second.text
    assert second.json()["data"]["version"]["signedBy"] == signers.fingerprints["trusted"]


@pytest.mark.postgres
async def test_signed_uploads_on_postgresql_and_s3(s3_api: Api) -> None:
    """The main cases on PostgreSQL with S3: a good signature is stored with its version;
    a wrong key, a signature of other bytes (also over several multipart parts, refused
    only after they were written), an expired or revoked key, and no signature leave no
    object in the bucket (nor an unfinished multipart upload) and no row."""
    api = s3_api
    signers = api.signers
    first = body(40)
    signature = signers.sign("trusted", first)
    accepted = await api.upload("signed", first, signature)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["data"]["version"]["signedBy"] == signers.fingerprints["trusted"]
    assert api.stored("signed") == ["signed-1.tar.gz"]
    download = await api.client.get(f"{BASE}/signed/version/1", headers=await api.auth())
    assert download.status_code == 200
    assert download.content == first
    assert base64.b64decode(download.headers["x-backup-signature"]) == signature

    objects = api.objects()
    rows = await _version_rows(api, "signed")
    refusals = len(await api.refusals())
    data = body(41)
    large = pad_to(MESSAGE, 17 * 1024 * 1024)  # three parts of 8 MiB
    cases = [
        ("untrusted key", data, signers.sign("stranger", data), "not among the trusted"),
        ("other bytes", data, signers.sign("trusted", body(42)), "does not match"),
        ("other bytes, multipart", large, signers.sign("trusted", data), "does not match"),
        ("expired key", data, signers.sign("expired", data), "has expired"),
        ("revoked key", data, signers.sign("revoked", data), "has been revoked"),
        ("unsigned", data, None, "carries no signature"),
    ]
    for what, content, by, phrase in cases:
        response = await api.upload("signed", content, by)
        assert response.status_code == 403, (what, response.text)
        assert phrase in response.json()["error"], (what, response.text)

    assert api.objects() == objects
    assert await _version_rows(api, "signed") == rows
    assert [v["versionNumber"] for v in await api.versions("signed")] == [1]
    assert len(await api.refusals()) - refusals == len(cases)

    # The same large upload, rightly signed, is stored over its parts.
    stored = await api.upload("signed", large, signers.sign("second", large))
    assert stored.status_code == 200, stored.text
    assert api.stored("signed") == ["signed-2.tar.gz"]


async def _version_rows(api: Api, collection: str) -> list[tuple[int, str | None]]:
    """Every row of the collection's versions, rotated ones included: (number, signer)."""
    connection = await asyncpg.connect(_dsn(api.database_url))
    try:
        found = await connection.fetch(
            "SELECT version_number, signer_fingerprint FROM backup_versions"
            " WHERE collection_id = $1 ORDER BY version_number",
            collection,
        )
    finally:
        await connection.close()
    return [(row["version_number"], row["signer_fingerprint"]) for row in found]
