"""No secret ever reaches the server's log.

A realistic session against the real server process, logging JSON at debug level, on
PostgreSQL reached with a password in ``--db-url`` and on S3 storage with its credentials
in the environment: logins that succeed and fail (JSON and form bodies, an access key),
token refresh, uploads accepted and refused, downloads, listings, health checks with the
health key (query and header), logout and the use of the revoked token, forged tokens, a
token in a query string and in an ``X-Request-ID``, oversized headers. Then the whole log is
searched for the JWT secret, every password, the health keys, the database password, the
storage secret key, and every token issued (whole and each of its three parts).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from gpg_fixtures import SAMPLES_DIR
from support import JWT_SECRET, ServerProcess, collection_doc, start_server, user_doc, write_config

pytestmark = [pytest.mark.e2e]

LOGIN = "/api/stable/auth/login"
ADMIN_PASSWORD = "Adm1n-Pa55word-qz7"
UPLOADER_PASSWORD = "Upl0ader-Pa55word-kw3"
KEY_PASSWORD = "Acc3ss-Key-Pa55-vx9"
WRONG_PASSWORD = "Wr0ng-Guess-Pa55-jh4"
HEALTH_KEY = "Server-Health-Key-u8d2"
COLLECTION_HEALTH_CODE = "Collection-Health-Code-p3m5"
DB_PASSWORD = "Db-Pa55word-in-the-url-r6t"


def documents() -> list[dict[str, Any]]:
    guarded = collection_doc("db")
    guarded["spec"]["healthSecretRef"] = {"name": "health", "entry": "db"}
    guarded["spec"]["accessControl"] = [
        {"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]}
    ]
    return [
        user_doc("admin", ADMIN_PASSWORD, ["systemAdmin"]),
        user_doc(
            "uploader",
            UPLOADER_PASSWORD,
            [],
            access_keys=[
                {
                    "name": "ci",
                    "password": KEY_PASSWORD,
                    "objects": [{"name": "db", "type": "collection", "roles": ["backupUploader"]}],
                }
            ],
        ),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "health"},
            "stringData": {"db": hashlib.sha256(COLLECTION_HEALTH_CODE.encode()).hexdigest()},
        },
        guarded,
    ]


@pytest.fixture
def server(tmp_path: Path, postgres_url: str, s3_storage_url: Any) -> Iterator[ServerProcess]:
    write_config(tmp_path / "config", documents())
    db_url = make_url(postgres_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    process = start_server(
        tmp_path,
        tmp_path / "config",
        db_url=db_url,
        extra_args=[
            "--storage-url",
            s3_storage_url.url_for("no-secrets"),
            f"--health-check-key={HEALTH_KEY}",
            "--log-level=debug",
            "--log-format=json",
        ],
    )
    try:
        yield process
    finally:
        process.stop()


def _token(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def run_session(url: str) -> list[str]:
    """Everything a day of use does; returns the tokens issued."""
    tokens: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        admin = _token(client.post(LOGIN, json={"username": "admin", "password": ADMIN_PASSWORD}))
        tokens.append(admin)
        refused = client.post(LOGIN, json={"username": "admin", "password": WRONG_PASSWORD})
        assert refused.status_code == 401
        refused = client.post(LOGIN, data={"username": "uploader", "password": WRONG_PASSWORD})
        assert refused.status_code == 401
        uploader = _token(
            client.post(LOGIN, data={"username": "uploader", "password": UPLOADER_PASSWORD})
        )
        key = _token(client.post(LOGIN, json={"username": "uploader$ci", "password": KEY_PASSWORD}))
        tokens += [uploader, key]
        refreshed = _token(client.get("/api/stable/auth/refresh_token", headers=bearer(admin)))
        tokens.append(refreshed)
        assert client.get("/api/stable/auth/whoami", headers=bearer(refreshed)).status_code == 200
        assert client.get("/api/stable/auth/token", headers=bearer(admin)).status_code == 200

        versions = "/api/stable/repository/collection/db/version"
        sample = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
        assert client.post(versions, content=sample, headers=bearer(key)).status_code == 200
        files = {"file": ("backup.gpg", sample, "application/octet-stream")}
        assert client.post(versions, files=files, headers=bearer(uploader)).status_code == 200
        assert client.post(versions, content=b"plain", headers=bearer(key)).status_code == 400
        forged = refreshed[:-4] + ("AAAA" if not refreshed.endswith("AAAA") else "BBBB")
        assert client.post(versions, content=sample, headers=bearer(forged)).status_code == 401
        assert client.get(versions, headers=bearer(uploader)).status_code == 200
        download = client.get(f"{versions}/latest", headers=bearer(uploader))
        assert download.status_code == 200
        assert download.content == sample
        ranged = client.get(f"{versions}/v1", headers={**bearer(admin), "Range": "bytes=0-9"})
        assert ranged.status_code == 206
        assert client.head(f"{versions}/latest", headers=bearer(admin)).status_code == 200
        assert client.get(f"{versions}/v9", headers=bearer(admin)).status_code == 404
        listing = client.get("/api/stable/repository/collection", headers=bearer(admin))
        assert listing.status_code == 200

        health = "/api/stable/repository/collection/db/health"
        assert client.get(health, params={"code": COLLECTION_HEALTH_CODE}).status_code == 200
        assert client.get(health, params={"code": WRONG_PASSWORD}).status_code == 403
        assert client.get(health, headers={"Authorization": COLLECTION_HEALTH_CODE}).is_success
        assert client.get("/ready", params={"code": HEALTH_KEY}).status_code == 200
        assert client.get("/ready", headers={"Authorization": HEALTH_KEY}).status_code == 200
        assert client.get("/ready", params={"code": WRONG_PASSWORD}).status_code == 403

        # Tokens where they do not belong.
        assert client.get("/nowhere", params={"token": admin}).status_code == 404
        assert client.get(f"/nowhere/{uploader}").status_code == 404
        assert client.get("/health", headers={"X-Request-ID": admin}).status_code == 200
        assert client.get(f"/api/stable/auth/user/{admin}", headers=bearer(admin)).status_code in {
            404,
            400,
        }
        big = {"Authorization": f"Bearer {admin}" + "x" * 40_000}
        assert client.get("/api/stable/auth/whoami", headers=big).status_code == 431

        logout = client.delete("/api/stable/auth/logout", headers=bearer(refreshed))
        assert logout.status_code == 200
        assert client.get("/api/stable/auth/whoami", headers=bearer(refreshed)).status_code == 401
    return tokens


def test_no_secret_reaches_the_log(server: ServerProcess, s3_storage_url: Any) -> None:
    tokens = run_session(server.url)
    server.stop()
    log = server.log()

    # The log is the real thing: JSON lines at debug level, with the session in it.
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert {record["level"] for record in records} >= {"debug", "info"}
    access = [r for r in records if r.get("logger") == "backup_repository.access"]
    assert len(access) >= 30
    assert all(len(r["request_id"]) == 32 for r in access)
    assert any("login refused" in r["message"] for r in records)
    assert any(r["message"].startswith("database: postgresql") for r in records)

    secrets = {
        "the JWT secret": JWT_SECRET,
        "the admin password": ADMIN_PASSWORD,
        "the uploader password": UPLOADER_PASSWORD,
        "the access key password": KEY_PASSWORD,
        "a wrong password": WRONG_PASSWORD,
        "the health key": HEALTH_KEY,
        "the collection health code": COLLECTION_HEALTH_CODE,
        "the database password": DB_PASSWORD,
        "the storage secret key": s3_storage_url.secret_key,
    }
    for number, token in enumerate(tokens):
        secrets[f"token {number}"] = token
        for part, piece in zip(("header", "claims", "signature"), token.split("."), strict=True):
            secrets[f"the {part} of token {number}"] = piece
    found = {name: secret for name, secret in secrets.items() if secret in log}
    assert not found, f"in the log: {sorted(found)}"
