"""Quota answers that say their numbers, the warning of an upload stored in the extra space,
the room left for the next version in the metrics, backup windows that say when they open
(and a client that checks before it runs the backup command), and what an upload-only
access key may see: against the real server process, with ``backup-maker`` and real GnuPG
keys."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from client_support import KeyFiles, encrypt_to, run_bm

from support import ServerProcess, collection_doc, start_server, user_doc, write_config

pytestmark = pytest.mark.e2e

API = "/api/stable/repository/collection"
MiB = 1024 * 1024
# "extra": 3 versions of 1 MiB in 5 MiB, so 2 MiB of extra space.
QUOTA = {"maxBackupsCount": 3, "maxOneVersionSize": "1M", "maxCollectionSize": "5M"}
WINDOW_CLOSED = "backup window does not allow you to send a backup at this time"
# "windowed": one 30-minute window a day, starting two to three hours from now (UTC).
OPENS = (datetime.now(UTC) + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
WINDOW = {"from": f"0 {OPENS.hour} * * *", "duration": "30m"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("quota-server")
    acl = [{"name": "ci", "type": "user", "roles": ["backupUploader", "backupDownloader"]}]
    docs = [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc(
            "ci",
            "ci-pass",
            [],
            access_keys=[
                {
                    "name": "upload",
                    "password": "upload-pass",
                    "objects": [
                        {"name": "listed", "type": "collection", "roles": ["backupUploader"]}
                    ],
                }
            ],
        ),
    ]
    for name in ("extra", "refused", "listed", "windowed"):
        doc = collection_doc(name, acl=acl)
        doc["spec"].update(QUOTA)
        docs.append(doc)
    docs[-1]["spec"]["windows"] = [WINDOW]
    write_config(workdir / "config", docs)
    process = start_server(workdir, workdir / "config")
    try:
        yield process
    finally:
        process.stop()


def token(server: ServerProcess, username: str, password: str) -> str:
    response = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": username, "password": password},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["token"])


def auth(server: ServerProcess) -> dict[str, str]:
    """The admin's headers."""
    return {"Authorization": f"Bearer {token(server, 'admin', 'admin-pass')}"}


def test_a_refused_upload_says_the_limit_the_size_and_the_rule(
    server: ServerProcess, keys: KeyFiles
) -> None:
    headers = auth(server)
    body = encrypt_to(keys.alice_public, os.urandom(4 * MiB), compress=False)
    declared = httpx.post(f"{server.url}{API}/refused/version", content=body, headers=headers)
    assert declared.status_code == 413, declared.text
    message = declared.json()["error"]
    # The reference phrase first, then the figures: 1 MiB + 2 MiB of extra space.
    assert message.startswith("filesize reached allowed limit: ")
    assert f"Content-Length declares {len(body)} bytes" in message
    assert f"at most {3 * MiB} bytes" in message
    assert "rule extra space" in message
    assert "raise maxOneVersionSize or maxCollectionSize" in message

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), MiB // 2):
            yield body[start : start + MiB // 2]

    streamed = httpx.post(f"{server.url}{API}/refused/version", content=chunks(), headers=headers)
    assert streamed.status_code == 413, streamed.text
    cut = streamed.json()["error"]
    assert cut.startswith("filesize reached allowed limit: ")
    so_far = re.search(r"(\d+) bytes so far", cut)
    assert so_far is not None, cut
    assert 3 * MiB < int(so_far.group(1)) < len(body)

    # The same detail in the audit row and in the log line of the event.
    rows = httpx.get(
        f"{server.url}/api/stable/audit",
        params={"collection": "refused", "outcome": "failure"},
        headers=headers,
    )
    assert rows.status_code == 200, rows.text
    details = [event["detail"] for event in rows.json()["data"]["events"]]
    assert message in details
    assert cut in details
    assert f"at most {3 * MiB} bytes (rule extra space" in server.log()


def room(server: ServerProcess, collection: str) -> int:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    series = f'backup_repository_collection_next_version_max_bytes{{collection="{collection}"}}'
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return int(float(found.group(1)))


def test_an_upload_into_the_extra_space_is_stored_with_a_warning(
    server: ServerProcess, keys: KeyFiles
) -> None:
    assert room(server, "extra") == 3 * MiB  # 1 MiB plus all the extra space
    made = run_bm(
        "make", "-u", server.url, "-i", "extra", "-t", token(server, "admin", "admin-pass"),
        "-k", str(keys.alice_public), "--compress-level", "0",
        "-c", f"head -c {3 * MiB // 2} /dev/urandom",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "warning" in made.stderr.lower()
    assert "over maxOneVersionSize (1048576 bytes)" in made.stderr
    listing = httpx.get(f"{server.url}{API}/extra/version", headers=auth(server))
    size = listing.json()["data"]["versions"][0]["filesize"]
    assert size > MiB
    # 1 MiB + (2 MiB extra - what this version borrowed), under the 5 MiB total.
    assert room(server, "extra") == 3 * MiB - (size - MiB)


def test_a_version_within_the_limit_has_no_warning(server: ServerProcess, keys: KeyFiles) -> None:
    sealed = encrypt_to(keys.alice_public, b"small and fine\n")
    answer = httpx.post(f"{server.url}{API}/listed/version", content=sealed, headers=auth(server))
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["warnings"] == []


def test_an_upload_only_key_lists_versions_but_cannot_download(
    server: ServerProcess, keys: KeyFiles
) -> None:
    """What docs/security.md promises for a leaked upload-only key: it sees the names,
    sizes and SHA-256s of the encrypted versions (the client's pre-flight check needs
    that), never their contents."""
    sealed = encrypt_to(keys.alice_public, b"secret rows\n")
    stored = httpx.post(f"{server.url}{API}/listed/version", content=sealed, headers=auth(server))
    assert stored.status_code == 200, stored.text
    ci = token(server, "ci$upload", "upload-pass")
    listed = run_bm("versions", "-u", server.url, "-i", "listed", "-t", ci)
    assert listed.returncode == 0, listed.stderr
    assert "listed-1.tar.gz" in listed.stdout
    fetched = run_bm(
        "download", "-u", server.url, "-i", "listed", "-t", ci, "--save-path",
        str(Path(keys.folder) / "leaked.gpg"),
    )  # fmt: skip
    assert fetched.returncode != 0
    assert "not authorized to download versions from this collection" in fetched.stderr
    assert not (Path(keys.folder) / "leaked.gpg").exists()
    # Another collection stays invisible to the key.
    other = run_bm("versions", "-u", server.url, "-i", "extra", "-t", ci)
    assert other.returncode != 0
    assert "not authorized to list versions" in other.stderr


def test_a_closed_window_says_utc_and_when_the_next_one_opens(
    server: ServerProcess, keys: KeyFiles, tmp_path: Path
) -> None:
    opens = OPENS.strftime("%Y-%m-%dT%H:%M:%SZ")
    closes = (OPENS + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ci = token(server, "ci", "ci-pass")
    sealed = encrypt_to(keys.alice_public, b"outside the window\n")
    refused = httpx.post(
        f"{server.url}{API}/windowed/version",
        content=sealed,
        headers={"Authorization": f"Bearer {ci}"},
    )
    assert refused.status_code == 403, refused.text
    message = refused.json()["error"]
    assert message.startswith(f"{WINDOW_CLOSED}: backup windows are in UTC")
    assert f"the next one opens at {opens} and closes at {closes}" in message

    # The listing tells an uploader before it starts; uploadsAnytime (admin) may upload.
    mine = httpx.get(
        f"{server.url}{API}/windowed/version", headers={"Authorization": f"Bearer {ci}"}
    )
    assert mine.json()["data"]["backupWindow"] == {
        "timezone": "UTC",
        "open": False,
        "uploadAllowed": False,
        "opensAt": opens,
        "closesAt": closes,
    }
    admins = httpx.get(f"{server.url}{API}/windowed/version", headers=auth(server))
    assert admins.json()["data"]["backupWindow"]["uploadAllowed"] is True

    # make does not run the backup command at all.
    marker = tmp_path / "dump-started"
    made = run_bm(
        "make", "-u", server.url, "-i", "windowed", "-t", ci, "-k", str(keys.alice_public),
        "-c", f"touch '{marker}'; echo rows",
    )  # fmt: skip
    assert made.returncode == 5, made.stderr
    assert WINDOW_CLOSED in made.stderr
    assert f"opens at {opens}" in made.stderr
    assert "the backup command was not started" in made.stderr
    assert not marker.exists()

    # collections shows the window with its duration and time zone.
    listed = run_bm("collections", "-u", server.url, "-t", ci)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("windowed"))
    assert f"0 {OPENS.hour} * * * for 30m (UTC)" in row
