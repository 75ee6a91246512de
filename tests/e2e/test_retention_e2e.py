"""gfs against the real server process (docs/collections.md, "gfs"): a second upload on one
day replaces the first, the quota counts the bytes that frees, the rotated object leaves
the storage, and the retention dry run over HTTP says so beforehand.

The collection counts its days in a fixed-offset zone where it is around noon now, so the
two uploads of the test fall on one day whenever it runs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

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
    write_config(workdir / "config", [user_doc("ops", "ops-pass", []), collection])
    process = start_server(workdir, workdir / "config")
    try:
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()


def login(server: ServerProcess) -> dict[str, str]:
    response = httpx.post(
        server.url + "/api/stable/auth/login", json={"username": "ops", "password": "ops-pass"}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


def dry_run(server: ServerProcess, auth: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(f"{server.url}{BASE}/g/retention", headers=auth)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_a_second_upload_of_the_day_replaces_the_first(server: ServerProcess) -> None:
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
