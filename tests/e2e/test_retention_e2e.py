"""gfs against the real server process (docs/collections.md, "gfs"): a second upload on one
day replaces the first, the quota counts the bytes that frees, the rotated object leaves
the storage, and the retention dry run over HTTP says so beforehand.

The collection counts its days in a fixed-offset zone where it is around noon now, so the
two uploads of the test fall on one day whenever it runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.client.cli import main
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import ServerProcess, collection_doc, start_server, user_doc, wait_until, write_config

pytestmark = pytest.mark.e2e

BASE = "/api/stable/repository/collection"
K = 1024
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()


def noon_zone(now: datetime) -> str:
    """An IANA zone of a whole-hour offset where ``now`` is between 11:00 and 13:00."""
    offset = 12 - now.hour  # -11 … +12, all of them zones of the tz database
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # POSIX signs: GMT-5 is UTC+5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("retention")
    collection = collection_doc(
        "g", acl=[{"name": "ops", "type": "user", "roles": ["collectionManager"]}]
    )
    # s = 64K, H = 100K: one 60K version leaves 40K, unless the next upload rotates it out.
    collection["spec"].update(
        maxBackupsCount=5,
        maxOneVersionSize="64K",
        maxCollectionSize="100K",
        strategyName="gfs",
        strategySpec={"keepDaily": 3, "timeZone": noon_zone(datetime.now(UTC))},
    )
    collection["spec"]["accessControl"].append(
        {"name": "ci", "type": "user", "roles": ["backupUploader"]}
    )
    docs = [user_doc("ops", "ops-pass", []), user_doc("ci", "ci-pass", []), collection]
    write_config(workdir / "config", docs)
    process = start_server(workdir, workdir / "config")
    try:
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()


def login(server: ServerProcess, user: str = "ops") -> dict[str, str]:
    response = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": user, "password": f"{user}-pass"},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


def dry_run(server: ServerProcess, auth: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(f"{server.url}{BASE}/g/retention", headers=auth)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_a_second_upload_of_the_day_replaces_the_first(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    auth = login(server)
    first = httpx.post(
        f"{server.url}{BASE}/g/version", content=pad_to(MESSAGE, 60 * K), headers=auth
    )
    assert first.status_code == 200, first.text
    stored = Path(server.args[server.args.index("--storage-url") + 1].removeprefix("file://"))
    assert (stored / "g" / "g-1.tar.gz").exists()

    run = dry_run(server, auth)
    assert [(v["version"], v["keptBy"], v["fate"]) for v in run["current"]["versions"]] == [
        (1, ["daily"], "kept")
    ]
    after = run["afterUpload"]
    assert [(v["version"], v["fate"], v["rotatedBecause"]) for v in after["versions"]] == [
        (2, "kept", None),
        (1, "rotated", "noRule"),
    ]
    assert after["bytesFreed"] == 60 * K
    assert after["nextUploadMaxBytes"] == 64 * K

    # fifo would refuse this (40K left of the 100K); gfs frees v1's 60K for it.
    second = httpx.post(
        f"{server.url}{BASE}/g/version", content=pad_to(MESSAGE, 60 * K), headers=auth
    )
    assert second.status_code == 200, second.text
    listing = httpx.get(f"{server.url}{BASE}/g/version", headers=auth).json()["data"]
    assert [v["versionNumber"] for v in listing["versions"]] == [2]
    wait_until(lambda: not (stored / "g" / "g-1.tar.gz").exists())
    assert (stored / "g" / "g-2.tar.gz").stat().st_size == 60 * K
    check_backup_maker_retention(server, capsys)


def check_backup_maker_retention(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """``backup-maker retention g`` after the uploads above: a table of the versions and
    what happens to them."""
    # The client sets up the root logger for itself: put back what pytest had.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    httpx_level = logging.getLogger("httpx").level
    try:
        for user, status in (("ops", 0), ("ci", 5)):
            token = login(server, user)["Authorization"].removeprefix("Bearer ")
            environ = {"BM_URL": server.url, "BM_AUTH_TOKEN": token}
            assert main(["retention", "g"], environ) == status
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(httpx_level)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("collection g: gfs keepDaily 3 (")
    assert lines[0].endswith("), maxBackupsCount 5")
    assert lines[1].split() == [
        "VERSION",
        "SIZE",
        "CREATED",
        "(UTC)",
        "NOW",
        "AFTER",
        "THE",
        "NEXT",
        "UPLOAD",
    ]
    rows = [line.split() for line in lines[2:-2]]
    # The next upload (kept by daily), and v2: kept now, rotated by an upload today.
    assert rows[0][1:3] == ["next", "upload"]
    assert rows[0][-3:-1] == ["kept:", "daily"]
    assert rows[1][0] == "2"
    assert rows[1][-4:-1] == ["kept:", "daily", rows[1][-2]]
    assert rows[1][-1] == "rotated"
    assert lines[-2] == "now: 1 kept (60.0 KiB), 0 rotated (0 B freed)"
    assert "1 rotated (60.0 KiB freed); it may have at most 64.0 KiB" in lines[-1]
    # The uploader may not: the refusal says what it takes.
    assert "collectionManager" in err
