"""The default rate limits, through the real server started without any limit flag: a
person at a terminal making quick ``curl`` calls never meets them, and a client that floods
the server still does."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support import ServerProcess, default_documents, start_server, write_config

pytestmark = pytest.mark.e2e

QUICK_CALLS = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("default-limits")
    write_config(workdir / "config", default_documents())
    process = start_server(workdir, workdir / "config", unlimited=False)
    assert not any(arg.startswith("--rate-") for arg in process.args)
    try:
        yield process
    finally:
        process.stop()


def curl_status(*args: str) -> str:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed")
    result = subprocess.run(
        [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout


def test_quick_curl_calls_at_a_terminal_are_never_limited(server: ServerProcess) -> None:
    login = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": "admin", "password": "admin-pass"},
    )
    assert login.status_code == 200, login.text
    bearer = f"Authorization: Bearer {login.json()['data']['token']}"
    urls = [
        "/api/stable/auth/whoami",
        "/api/stable/repository/collection",
        "/api/stable/repository/collection/db/version",
    ]
    statuses = [
        curl_status("-H", bearer, server.url + urls[call % len(urls)])
        for call in range(QUICK_CALLS)
    ]
    assert statuses == ["200"] * QUICK_CALLS, statuses
    health = [
        curl_status(server.url + "/api/stable/repository/collection/db/health")
        for _ in range(QUICK_CALLS)
    ]
    assert "429" not in health, health
    ready = [curl_status(server.url + "/ready") for _ in range(QUICK_CALLS)]
    assert "429" not in ready, ready


def test_a_flood_from_one_client_is_still_limited(server: ServerProcess) -> None:
    deadline = time.monotonic() + 10

    def hammer() -> set[int]:
        seen: set[int] = set()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while time.monotonic() < deadline and 429 not in seen:
                seen.add(http.get("/api/stable/auth/whoami").status_code)
        return seen

    with ThreadPoolExecutor(4) as pool:
        seen = set().union(*pool.map(lambda _: hammer(), range(4)))
    assert 429 in seen, seen
