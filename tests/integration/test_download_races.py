"""A download resolved a moment before uploads rotate its version away.

Regression: under load (bench/load.py, `make test-slow`), ``latest`` was answered 404
three times in 1,815 requests: the version ``latest`` resolved to was rotated away by
further uploads (``maxBackupsCount`` 3) before its object was opened. There is always a
newer version then, so ``latest`` is resolved again; a version asked for by number stays
a clean 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.domain.errors import NotFound
from backup_repository.http.app import create_app
from backup_repository.services.events import Action, Outcome
from gpg_fixtures import SAMPLES_DIR
from support import RecordingSink, collection_doc, make_settings, user_doc, write_config

BASE = "/api/stable/repository/collection"
BODY = (SAMPLES_DIR / "symmetric.gpg").read_bytes()


@pytest.fixture
async def app(tmp_path: Path, database_url: str) -> AsyncIterator[Any]:
    write_config(
        tmp_path / "config",
        [user_doc("admin", "admin-pass", ["systemAdmin"]), collection_doc("db")],
    )
    application = create_app(make_settings(tmp_path, database_url))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        response = await c.post(
            "/api/stable/auth/login", json={"username": "admin", "password": "admin-pass"}
        )
        c.headers["Authorization"] = f"Bearer {response.json()['data']['token']}"
        yield c


async def upload(client: httpx.AsyncClient) -> int:
    response = await client.post(f"{BASE}/db/version", content=BODY)
    assert response.status_code == 200, response.text
    number: int = response.json()["data"]["version"]["versionNumber"]
    return number


@pytest.mark.parametrize("local_file", [False, True], ids=["stream", "local-file"])
async def test_latest_rotated_away_before_it_is_opened_is_resolved_again(
    app: Any, client: httpx.AsyncClient, local_file: bool
) -> None:
    services = app.state.services
    ctx = await services.auth.authenticate(
        client.headers["Authorization"].removeprefix("Bearer "), "127.0.0.1"
    )
    sink = RecordingSink()
    services.events.add(sink)
    for _ in range(3):
        await upload(client)
    latest = await services.downloads.resolve(ctx, "db", "latest", None)
    by_number = await services.downloads.resolve(ctx, "db", "3", None)
    assert latest.version.number == by_number.version.number == 3
    # Three more uploads: maxBackupsCount is 3, so v3 is rotated away and its object gone.
    for _ in range(3):
        await upload(client)

    sent = await services.downloads.open(ctx, latest, local_file=local_file)
    assert sent.download.version.number == 6
    assert sent.download.length == len(BODY)
    if sent.file is not None:
        path, stat = sent.file
        assert local_file
        assert stat.st_size == len(BODY)
        assert await asyncio.to_thread(Path(path).read_bytes) == BODY
    else:
        assert sent.chunks is not None
        assert b"".join([chunk async for chunk in sent.chunks]) == BODY
    with pytest.raises(NotFound):
        await services.downloads.open(ctx, by_number)

    downloads = [e for e in sink.events if e.action is Action.DOWNLOAD]
    assert [(e.outcome, e.version) for e in downloads] == [
        (Outcome.SUCCESS, 6),
        (Outcome.FAILURE, None),
    ]
    # And over HTTP, latest is the newest version.
    response = await client.get(f"{BASE}/db/version/latest")
    assert response.status_code == 200
    assert "db-6.tar.gz" in response.headers["content-disposition"]


async def test_head_and_not_modified_are_not_told_as_downloads(
    app: Any, client: httpx.AsyncClient
) -> None:
    sink = RecordingSink()
    app.state.services.events.add(sink)
    await upload(client)
    head = await client.head(f"{BASE}/db/version/1")
    assert head.status_code == 200
    etag = head.headers["etag"]
    assert (
        await client.get(f"{BASE}/db/version/1", headers={"If-None-Match": etag})
    ).status_code == 304
    assert not [e for e in sink.events if e.action is Action.DOWNLOAD]
    assert (await client.get(f"{BASE}/db/version/1")).status_code == 200
    assert [e.version for e in sink.events if e.action is Action.DOWNLOAD] == [1]
