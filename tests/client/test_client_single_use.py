"""``backup-maker login --single-use``: a token for one ``make``, refused afterwards."""

from __future__ import annotations

from pathlib import Path

import httpx
from client_support import KeyFiles, LiveServer, run_bm


def test_single_use_token_makes_one_backup(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    login = run_bm(
        "login", "-u", live_server.url, "--username", "uploader", "--password-stdin",
        "--single-use", collection, "--ttl", "1h", "--save-token", str(token_file),
        stdin=b"uploader-pass\n",
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    token = token_file.read_text().strip()
    who = httpx.get(
        live_server.url + "/api/stable/auth/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    assert who.status_code == 200
    assert who.json()["data"]["grantedAccess"]["singleUseUpload"] == collection

    make = [
        "make", "-u", live_server.url, "-i", collection, "--auth-token-file", str(token_file),
        "-c", "echo single-use", "-k", str(keys.alice_public),
    ]  # fmt: skip
    first = run_bm(*make)
    assert first.returncode == 0, first.stderr
    assert [v["versionNumber"] for v in live_server.versions(collection)] == [1]

    second = run_bm(*make)
    assert second.returncode == 5
    assert "single-use token was already used or revoked" in second.stderr
    assert [v["versionNumber"] for v in live_server.versions(collection)] == [1]


def test_single_use_login_refused_for_a_collection_without_upload_rights(
    live_server: LiveServer, collection: str
) -> None:
    refused = run_bm(
        "login", "-u", live_server.url, "--username", "downloader", "--password-stdin",
        "--single-use", collection,
        stdin=b"downloader-pass\n",
    )  # fmt: skip
    assert refused.returncode == 5
    assert "not authorized to upload" in refused.stderr
    assert refused.stdout == ""
