"""The real server on each object store the project claims (S3 on SeaweedFS, Azure Blob on
Azurite, Google Cloud Storage on fake-gcs-server): /ready, uploads larger than one
multipart part, rotation to the collection's limit, downloads identical to what was sent,
and the rotated versions' objects gone from the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.storage.factory import open_blob_store
from gpg_fixtures import GpgHome
from support import collection_doc, start_server, user_doc, write_config

pytestmark = pytest.mark.e2e

BASE = "/api/stable/repository/collection"
MiB = 1024 * 1024
KEEP = 3


async def stored_keys(url: str) -> list[str]:
    store = open_blob_store(url, io_timeout=10)
    try:
        return sorted(
            [info.key async for info in store.list("") if not info.key.startswith(".health/")]
        )
    finally:
        await store.close()


@pytest.mark.parametrize(
    "fixture",
    ["s3_storage_url", "azure_storage_url", "gcs_storage_url"],
    ids=["s3", "azure", "gcs"],
)
def test_upload_rotate_download(
    tmp_path: Path, gpg_home: GpgHome, request: pytest.FixtureRequest, fixture: str
) -> None:
    endpoint: Any = request.getfixturevalue(fixture)
    url: str = endpoint.url_for(f"e2e-{tmp_path.name[-12:]}")
    collection = collection_doc("db")
    collection["spec"].update(
        maxBackupsCount=KEEP, maxOneVersionSize="20M", maxCollectionSize="100M"
    )
    write_config(
        tmp_path / "config",
        [user_doc("uploader", "uploader-pass", ["collectionManager"]), collection],
    )
    server = start_server(
        tmp_path / "server",
        tmp_path / "config",
        extra_args=["--storage-url", url],
        env=endpoint.env,
    )
    try:
        ready = httpx.get(f"{server.url}/ready", timeout=30)
        assert ready.status_code == 200, ready.text
        response = httpx.post(
            f"{server.url}/api/stable/auth/login",
            json={"username": "uploader", "password": "uploader-pass"},
        )
        assert response.status_code == 200, response.text
        auth = {"Authorization": f"Bearer {response.json()['data']['token']}"}

        sent: dict[int, str] = {}
        for number in range(1, KEEP + 2):
            # Above the 8 MiB part size, so every upload is a multipart upload.
            body = gpg_home.encrypt(os.urandom(9 * MiB), compress=False)
            answer = httpx.post(
                f"{server.url}{BASE}/db/version", content=body, headers=auth, timeout=120
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"]["version"]["versionNumber"] == number
            sent[number] = hashlib.sha256(body).hexdigest()

        listing = httpx.get(f"{server.url}{BASE}/db/version", headers=auth)
        assert listing.status_code == 200, listing.text
        kept = [v["versionNumber"] for v in listing.json()["data"]["versions"]]
        assert kept == [4, 3, 2]
        for number in kept:
            download = httpx.get(
                f"{server.url}{BASE}/db/version/{number}", headers=auth, timeout=120
            )
            assert download.status_code == 200
            assert hashlib.sha256(download.content).hexdigest() == sent[number]
        missing = httpx.get(f"{server.url}{BASE}/db/version/1", headers=auth)
        assert missing.status_code == 404, missing.text
    finally:
        server.stop()
    assert asyncio.run(stored_keys(url)) == ["db/db-2.tar.gz", "db/db-3.tar.gz", "db/db-4.tar.gz"]
