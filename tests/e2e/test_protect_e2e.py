"""Protected versions and deletion against the real server process, driven by
``backup-maker protect``, ``unprotect`` and ``delete`` (docs/client.md, docs/collections.md
"Protected versions" and "Deleting a version", docs/security.md "Who can remove a backup").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backup_repository.client.cli import main
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import ServerProcess, collection_doc, start_server, user_doc, wait_until, write_config

pytestmark = pytest.mark.e2e

BASE = "/api/stable/repository/collection"
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("protect")
    collection = collection_doc(
        "db",
        acl=[
            {"name": "ops", "type": "user", "roles": ["collectionManager"]},
            {"name": "ci", "type": "user", "roles": ["backupUploader"]},
            {"name": "reader", "type": "user", "roles": ["backupDownloader"]},
        ],
    )
    collection["spec"].update(maxBackupsCount=2)
    docs = [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc("ops", "ops-pass", []),
        user_doc("ci", "ci-pass", []),
        user_doc("reader", "reader-pass", []),
        collection,
    ]
    write_config(workdir / "config", docs)
    process = start_server(workdir, workdir / "config")
    try:
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()


_TOKENS: dict[tuple[str, str], str] = {}


def token(server: ServerProcess, user: str) -> str:
    """A token of ``user`` (one login per user and server: logins cost a password check)."""
    if (server.url, user) in _TOKENS:
        return _TOKENS[server.url, user]
    response = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": user, "password": f"{user}-pass"},
    )
    assert response.status_code == 200, response.text
    found: str = response.json()["data"]["token"]
    _TOKENS[server.url, user] = found
    return found


def backup_maker(server: ServerProcess, user: str, *argv: str) -> int:
    """``backup-maker -i db ARGV`` with ``user``'s token; its exit status."""
    # The client sets up the root logger for itself: put back what pytest had.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    httpx_level = logging.getLogger("httpx").level
    environ = {"BM_URL": server.url, "BM_AUTH_TOKEN": token(server, user)}
    try:
        return main([*argv, "-i", "db"], environ)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(httpx_level)


def upload(server: ServerProcess, auth: dict[str, str]) -> int:
    response = httpx.post(
        f"{server.url}{BASE}/db/version", content=pad_to(MESSAGE, 2048), headers=auth
    )
    assert response.status_code == 200, response.text
    number: int = response.json()["data"]["version"]["versionNumber"]
    return number


def test_protect_rotate_and_delete_with_backup_maker(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = Path(server.args[server.args.index("--storage-url") + 1].removeprefix("file://"))
    ci = {"Authorization": f"Bearer {token(server, 'ci')}"}
    assert [upload(server, ci), upload(server, ci)] == [1, 2]

    # Neither the uploader nor the downloader may protect or delete (exit 5: refused).
    assert backup_maker(server, "ci", "protect", "1") == 5
    assert backup_maker(server, "ci", "delete", "1", "--reason", "leaked token") == 5
    assert backup_maker(server, "reader", "delete", "v1", "--reason", "x") == 5
    assert "not authorized to delete versions" in capsys.readouterr().err

    # Protected, v1 outlives the rotation of maxBackupsCount 2: v2 goes instead.
    assert backup_maker(server, "ops", "protect", "1") == 0
    assert upload(server, ci) == 3
    wait_until(lambda: not (stored / "db" / "db-2.tar.gz").exists())
    assert (stored / "db" / "db-1.tar.gz").exists()
    capsys.readouterr()
    assert backup_maker(server, "ops", "versions") == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listing[2:]] == [["3", "2.0"], ["1", "protected"]]

    # Two protected versions fill maxBackupsCount 2: the upload is refused, saying why.
    assert backup_maker(server, "ops", "protect", "latest") == 0
    refused = httpx.post(
        f"{server.url}{BASE}/db/version", content=pad_to(MESSAGE, 2048), headers=ci
    )
    assert refused.status_code == 413
    assert (
        "maxBackupsCount 2 of collection db is reached by 2 protected versions"
        in (refused.json()["error"])
    )

    # A protected version is not deleted; unprotected, it is, with its file.
    capsys.readouterr()
    assert backup_maker(server, "ops", "delete", "1", "--reason", "expired") == 5
    assert "unprotect it first" in capsys.readouterr().err
    assert backup_maker(server, "ops", "unprotect", "1") == 0
    assert backup_maker(server, "ops", "delete", "1", "--reason", "expired") == 0
    assert not (stored / "db" / "db-1.tar.gz").exists()

    # Deleting the newest version does not give its number again.
    assert backup_maker(server, "ops", "unprotect", "3") == 0
    assert backup_maker(server, "ops", "delete", "latest", "--reason", "bad dump") == 0
    assert upload(server, ci) == 4
    audit = httpx.get(
        f"{server.url}/api/stable/audit",
        params={"action": "version.delete", "outcome": "success"},
        headers={"Authorization": f"Bearer {token(server, 'admin')}"},
    )
    assert audit.status_code == 200, audit.text
    assert [(e["user"], e["version"], e["detail"]) for e in audit.json()["data"]["events"]] == [
        ("ops", 3, "v3 deleted; reason: bad dump"),
        ("ops", 1, "v1 deleted; reason: expired"),
    ]
