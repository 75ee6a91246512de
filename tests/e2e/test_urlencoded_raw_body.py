"""A backup sent with ``curl --data-binary @file.gpg`` is labelled
``application/x-www-form-urlencoded`` by curl; the server stores it as the raw body when
its first bytes show an OpenPGP message (a packet header, or the armor line), and a real
form keeps working. Against the real server, with curl as a user runs it and with httpx."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest

from gpg_fixtures import SAMPLES_DIR
from support import ServerProcess, collection_doc, start_server, user_doc, write_config

pytestmark = pytest.mark.e2e

LOGIN = "/api/stable/auth/login"
UPLOAD = "/api/stable/repository/collection/db/version"
URLENCODED = "application/x-www-form-urlencoded"
BINARY = SAMPLES_DIR / "symmetric.gpg"
ARMORED = SAMPLES_DIR / "symmetric.asc"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("urlencoded-raw")
    doc = collection_doc("db")
    doc["spec"]["maxBackupsCount"] = 10
    write_config(workdir / "config", [user_doc("admin", "admin-pass", ["systemAdmin"]), doc])
    process = start_server(workdir, workdir / "config")
    try:
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()


def token_of(server: ServerProcess) -> str:
    response = httpx.post(server.url + LOGIN, json={"username": "admin", "password": "admin-pass"})
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def stored(server: ServerProcess, token: str, answer: dict[str, object], sent: bytes) -> None:
    """The upload was accepted and the stored version is exactly the bytes sent."""
    assert answer["status"] is True, answer
    version = answer["data"]["version"]  # type: ignore[index]
    assert version["filesize"] == len(sent), answer
    assert version["sha256"] == hashlib.sha256(sent).hexdigest(), answer
    download = httpx.get(
        f"{server.url}{UPLOAD}/v{version['versionNumber']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert download.status_code == 200, download.text
    assert download.content == sent


@pytest.mark.parametrize("sample", [BINARY, ARMORED], ids=["binary", "armored"])
def test_curl_data_binary_stores_the_file(server: ServerProcess, sample: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed")
    token = token_of(server)
    result = subprocess.run(
        [
            curl,
            "-s",
            "-H",
            f"Authorization: Bearer {token}",
            "--data-binary",
            f"@{sample}",
            server.url + UPLOAD,
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    stored(server, token, json.loads(result.stdout), sample.read_bytes())


@pytest.mark.parametrize("sample", [BINARY, ARMORED], ids=["binary", "armored"])
def test_a_urlencoded_label_on_an_openpgp_body_stores_the_body(
    server: ServerProcess, sample: Path
) -> None:
    token = token_of(server)
    body = sample.read_bytes()

    def pieces() -> Iterator[bytes]:  # the armor line split over several chunks
        for start in range(0, len(body), 5):
            yield body[start : start + 5]

    for content in (body, pieces()):
        response = httpx.post(
            server.url + UPLOAD,
            content=content,
            headers={"Authorization": f"Bearer {token}", "Content-Type": URLENCODED},
        )
        assert response.status_code == 200, response.text
        stored(server, token, response.json(), body)


def test_a_real_urlencoded_form_still_uploads(server: ServerProcess) -> None:
    token = token_of(server)
    sample = BINARY.read_bytes()
    response = httpx.post(
        server.url + UPLOAD,
        content=b"file=" + quote_from_bytes(sample, safe="").encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": URLENCODED},
    )
    assert response.status_code == 200, response.text
    stored(server, token, response.json(), sample)


def test_a_form_without_the_file_field_is_still_refused(server: ServerProcess) -> None:
    token = token_of(server)
    response = httpx.post(
        server.url + UPLOAD,
        content=b"note=nightly",
        headers={"Authorization": f"Bearer {token}", "Content-Type": URLENCODED},
    )
    assert response.status_code == 400, response.text
    assert "the form has no field named 'file'" in response.json()["error"]
