"""gfs rotation through the whole API in process, and the retention dry run
(docs/collections.md, "gfs" and "The retention dry run"), on SQLite and PostgreSQL.

The upload service's clock is set by the test, so that versions fall on the days the test
says; the dry run reads the same clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.http.app import create_app
from gpg_fixtures import SAMPLES_DIR, pad_to
from support import collection_doc, make_settings, user_doc, write_config

BASE = "/api/stable/repository/collection"
K = 1024
MESSAGE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()


def body(size: int) -> bytes:
    return pad_to(MESSAGE, size)


def collection(name: str, strategy: str, spec: dict[str, Any], **limits: Any) -> dict[str, Any]:
    doc = collection_doc(
        name,
        acl=[
            {"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]},
            {"name": "manager", "type": "user", "roles": ["collectionManager"]},
        ],
    )
    doc["spec"].update(strategyName=strategy, strategySpec=spec, **limits)
    return doc


def documents() -> list[dict[str, Any]]:
    return [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc("uploader", "uploader-pass", []),
        user_doc(
            "manager",
            "manager-pass",
            [],
            access_keys=[
                {
                    "name": "ci",
                    "password": "ci-pass",
                    "objects": [{"name": "g", "type": "collection", "roles": ["backupUploader"]}],
                },
                {
                    "name": "ops",
                    "password": "ops-pass",
                    "objects": [
                        {"name": "g", "type": "collection", "roles": ["collectionManager"]}
                    ],
                },
            ],
        ),
        user_doc("stranger", "stranger-pass", []),
        # s = 64K, H = 100K, n = 5: no extra space, so the limit is 64K, or what is left of
        # the 100K once the versions that stay are counted.
        collection(
            "g",
            "gfs",
            {"keepLast": 1, "keepDaily": 2},
            maxBackupsCount=5,
            maxOneVersionSize="64K",
            maxCollectionSize="100K",
        ),
        collection("f", "fifo", {}, maxBackupsCount=2),
        collection(
            "p",
            "fifo-plus-older",
            {"keepLastOlderNotMoreThan": "1d", "maxOlderCopies": 1},
            maxBackupsCount=3,
        ),
    ]


@dataclass
class Api:
    client: httpx.AsyncClient
    now: datetime
    tokens: dict[str, dict[str, str]]

    async def auth(self, login: str) -> dict[str, str]:
        if login not in self.tokens:
            password = {"manager$ci": "ci-pass", "manager$ops": "ops-pass"}.get(
                login, f"{login}-pass"
            )
            response = await self.client.post(
                "/api/stable/auth/login", json={"username": login, "password": password}
            )
            assert response.status_code == 200, response.text
            token = response.json()["data"]["token"]
            self.tokens[login] = {"Authorization": f"Bearer {token}"}
        return self.tokens[login]

    async def upload(self, name: str, size: int, login: str = "uploader") -> httpx.Response:
        return await self.client.post(
            f"{BASE}/{name}/version", content=body(size), headers=await self.auth(login)
        )

    async def versions(self, name: str) -> list[int]:
        response = await self.client.get(
            f"{BASE}/{name}/version", headers=await self.auth("uploader")
        )
        assert response.status_code == 200, response.text
        return [v["versionNumber"] for v in response.json()["data"]["versions"]]

    async def retention(self, name: str, login: str = "admin") -> httpx.Response:
        return await self.client.get(f"{BASE}/{name}/retention", headers=await self.auth(login))

    async def dry_run(self, name: str) -> dict[str, Any]:
        response = await self.retention(name)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    write_config(tmp_path / "config", documents())
    app = create_app(make_settings(tmp_path, database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            found = Api(client, datetime(2026, 3, 2, 10, 0, tzinfo=UTC), {})
            app.state.services.uploads.clock = lambda: found.now
            yield found


def fates(view: dict[str, Any]) -> list[tuple[int, list[str], str]]:
    return [(v["version"], v["keptBy"], v["fate"]) for v in view["versions"]]


async def test_gfs_rotation_and_its_quota(api: Api) -> None:
    assert (await api.upload("g", 60 * K)).status_code == 200
    run = await api.dry_run("g")
    assert run["strategy"] == {
        "name": "gfs",
        "maxBackupsCount": 5,
        "keepLast": 1,
        "keepHourly": 0,
        "keepDaily": 2,
        "keepWeekly": 0,
        "keepMonthly": 0,
        "keepYearly": 0,
        "timeZone": "UTC",
    }
    assert run["now"] == "2026-03-02T10:00:00Z"
    assert fates(run["current"]) == [(1, ["last"], "kept")]
    # A second upload today covers today (keepLast): v1, the first of the day, goes, and
    # its 60K are free for the upload, which fifo would have refused (100K - 60K < 60K).
    assert fates(run["afterUpload"]) == [(2, ["last"], "kept"), (1, [], "rotated")]
    after = run["afterUpload"]
    assert after["versions"][0]["upcoming"] is True
    assert after["versions"][0]["size"] is None
    assert after["versions"][1]["rotatedBecause"] == "noRule"
    assert (after["bytesFreed"], after["bytesKept"]) == (60 * K, 0)
    assert after["nextUploadMaxBytes"] == 64 * K

    api.now += timedelta(hours=3)
    assert (await api.upload("g", 60 * K)).status_code == 200
    assert await api.versions("g") == [2]

    # Tomorrow v2 stays (keepDaily): only 40K are left of the 100K, and the quota says so.
    api.now += timedelta(days=1)
    run = await api.dry_run("g")
    assert fates(run["afterUpload"]) == [(3, ["last"], "kept"), (2, ["daily"], "kept")]
    assert run["afterUpload"]["versions"][1]["period"] == "2026-03-02"
    assert run["afterUpload"]["nextUploadMaxBytes"] == 40 * K
    refused = await api.upload("g", 40 * K + 1)
    assert refused.status_code == 413
    assert "filesize reached allowed limit" in refused.json()["error"]
    assert (await api.upload("g", 30 * K)).status_code == 200
    assert await api.versions("g") == [3, 2]

    # Two more days: v4 keeps everything; v5 makes keepDaily reach v4 and v3, so v2 goes.
    for expected in ([4, 3, 2], [5, 4, 3]):
        api.now += timedelta(days=1)
        predicted = await api.dry_run("g")
        assert (await api.upload("g", 1 * K)).status_code == 200
        found = await api.versions("g")
        assert found == expected
        # What the dry run said the upload would keep is what it kept.
        assert [
            v["version"] for v in predicted["afterUpload"]["versions"] if v["fate"] == "kept"
        ] == found
    current = (await api.dry_run("g"))["current"]
    assert fates(current) == [(5, ["last"], "kept"), (4, ["daily"], "kept"), (3, ["daily"], "kept")]
    assert current["bytesKept"] == 30 * K + 2 * K
    assert current["bytesFreed"] == 0


async def test_who_may_see_the_dry_run_and_every_strategy(api: Api) -> None:
    for name in ("g", "f", "p"):
        assert (await api.upload(name, 1 * K)).status_code == 200
    # systemAdmin; collectionManager in the accessControl; an access key granting it.
    for login in ("admin", "manager", "manager$ops"):
        response = await api.retention("g", login)
        assert response.status_code == 200, (login, response.text)
    # Upload and download rights are not enough; nor is a key narrowed to backupUploader.
    for login in ("uploader", "manager$ci", "stranger"):
        response = await api.retention("g", login)
        assert response.status_code == 403, (login, response.text)
        answer = response.json()
        assert answer["status"] is False
        assert answer["error"].startswith("not authorized to see the retention")
        assert "collectionManager" in answer["error"]
    unknown = await api.retention("nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "cannot find specified collection"
    assert (await api.client.get(f"{BASE}/g/retention")).status_code == 401

    fifo = await api.dry_run("f")
    assert fifo["strategy"] == {"name": "fifo", "maxBackupsCount": 2}
    assert fates(fifo["afterUpload"]) == [(2, ["last"], "kept"), (1, ["last"], "kept")]
    assert (await api.upload("f", 1 * K)).status_code == 200
    fifo = await api.dry_run("f")
    assert fates(fifo["afterUpload"]) == [
        (3, ["last"], "kept"),
        (2, ["last"], "kept"),
        (1, [], "rotated"),
    ]

    older = await api.dry_run("p")
    assert older["strategy"] == {
        "name": "fifo-plus-older",
        "maxBackupsCount": 3,
        "keepLastOlderNotMoreThan": 86400,
        "maxOlderCopies": 1,
    }
    for _ in range(2):
        api.now += timedelta(days=1)
        assert (await api.upload("p", 1 * K)).status_code == 200
    older = await api.dry_run("p")
    # n = 3 with one older copy: the new version and the one before it, and one older
    # copy: v2 (a day after v1) replaces v1 in the chain.
    assert fates(older["afterUpload"]) == [
        (4, ["last"], "kept"),
        (3, ["last"], "kept"),
        (2, ["older"], "kept"),
        (1, [], "rotated"),
    ]
