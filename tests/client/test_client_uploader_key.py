"""``backup-maker versions`` names who uploaded each version as they logged in: ``alice``
for the user's own password, ``alice$ci`` for the access key ``ci``; the API's version
listing carries the key as ``accessKeyName``. Through the real server and client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from client_support import run_bm

from gpg_fixtures import SAMPLES_DIR
from support import ServerProcess, default_documents, start_server, write_config

pytestmark = pytest.mark.e2e

VERSIONS = "/api/stable/repository/collection/db/version"
SAMPLE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("uploader-key")
    write_config(workdir / "config", default_documents())
    process = start_server(workdir, workdir / "config")
    try:
        yield process
    finally:
        process.stop()


def token(server: ServerProcess, username: str, password: str) -> str:
    response = httpx.post(
        server.url + "/api/stable/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    value: str = response.json()["data"]["token"]
    return value


def upload(server: ServerProcess, bearer: str) -> dict[str, object]:
    response = httpx.post(
        server.url + VERSIONS, content=SAMPLE, headers={"Authorization": f"Bearer {bearer}"}
    )
    assert response.status_code == 200, response.text
    version: dict[str, object] = response.json()["data"]["version"]
    return version


def test_versions_show_the_access_key_an_upload_was_made_with(server: ServerProcess) -> None:
    with_key = upload(server, token(server, "uploader$ci", "ci-pass"))
    with_password = upload(server, token(server, "uploader", "uploader-pass"))
    assert (with_key["user"], with_key["accessKeyName"]) == ("uploader", "ci")
    assert (with_password["user"], with_password["accessKeyName"]) == ("uploader", "")

    admin = token(server, "admin", "admin-pass")
    listing = httpx.get(server.url + VERSIONS, headers={"Authorization": f"Bearer {admin}"})
    assert listing.status_code == 200, listing.text
    listed = {v["versionNumber"]: v for v in listing.json()["data"]["versions"]}
    assert listed[with_key["versionNumber"]]["accessKeyName"] == "ci"
    assert listed[with_password["versionNumber"]]["accessKeyName"] == ""

    table = run_bm("versions", "-u", server.url, "-i", "db", "-t", admin)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:] if line}
    assert "uploader$ci" in rows[str(with_key["versionNumber"])], table.stdout
    assert "uploader" in rows[str(with_password["versionNumber"])], table.stdout
    assert "uploader$ci" not in rows[str(with_password["versionNumber"])], table.stdout

    raw = run_bm("versions", "-u", server.url, "-i", "db", "-t", admin, "--json")
    assert raw.returncode == 0, raw.stderr
    keys = {v["versionNumber"]: v["accessKeyName"] for v in json.loads(raw.stdout)["versions"]}
    assert keys == {with_key["versionNumber"]: "ci", with_password["versionNumber"]: ""}
