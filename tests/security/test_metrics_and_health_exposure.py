"""What ``/metrics`` and the collection health endpoint tell a caller without a key, through
the real server on loopback.

``/metrics`` names every collection with its versions, bytes and last upload time, so when
a health check key is set it asks for that key unless the operator made it public on
purpose (``--metrics-public``). The collection health endpoint must not tell which
collection names exist: an unknown collection gets the very answer (status, body, headers,
time, rate limit) that a collection with a health secret gives to a missing or wrong code.
"""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ServerProcess, collection_doc, server_command, start_server, write_config

pytestmark = [pytest.mark.e2e]

BASE = "/api/stable/repository/collection"
HEALTH_KEY = "server-health-key-7f3a"
COLLECTION_CODE = "collection-health-code-9c1e"
WRONG_CODE = "not-the-code"
UNKNOWN = "no-such-collection"
# Answers that differ only in these headers are the same answer.
PER_RESPONSE_HEADERS = {"date", "x-request-id"}
# Medians of the three kinds of refusal must stay within this factor of each other. The
# refusal costs one SHA-256 and a comparison either way, so they are nearly equal; the
# bound is loose because the machine running the tests is shared.
TIMING_FACTOR = 3.0
TIMING_ROUNDS = 50


def documents() -> list[dict[str, Any]]:
    guarded = collection_doc("guarded")
    guarded["spec"]["healthSecretRef"] = {"name": "health", "entry": "guarded"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "health"},
            "stringData": {"guarded": hashlib.sha256(COLLECTION_CODE.encode()).hexdigest()},
        },
        guarded,
        collection_doc("open"),
    ]


def serve(tmp_path: Path, *args: str, **kwargs: Any) -> ServerProcess:
    config = tmp_path / "config"
    write_config(config, documents())
    return start_server(tmp_path / "server", config, extra_args=args, **kwargs)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # SQLite only: a refused health request never reaches the database.
    process = serve(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def answer(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in PER_RESPONSE_HEADERS
    }
    return response.status_code, response.content, headers


def refusals(collection: str) -> dict[str, dict[str, Any]]:
    """The ways of asking for a collection's health without the right code."""
    url = f"{BASE}/{collection}/health"
    return {
        "no code": {"url": url},
        "wrong code": {"url": url, "params": {"code": WRONG_CODE}},
        "wrong header": {"url": url, "headers": {"Authorization": WRONG_CODE}},
        "wrong bearer": {"url": url, "headers": {"Authorization": f"Bearer {WRONG_CODE}"}},
    }


# -- collection health ---------------------------------------------------------------------


def test_an_unknown_collection_answers_as_a_wrong_code_does(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for how, request in refusals("guarded").items():
            expected = answer(http.get(**request))
            assert expected[0] == 403, how
            for collection in (UNKNOWN, "Guarded", "a" * 255):
                got = answer(http.get(**{**request, "url": f"{BASE}/{collection}/health"}))
                assert got == expected, (how, collection)
        body = http.get(f"{BASE}/{UNKNOWN}/health").json()
        assert body == {
            "status": False,
            "error": "not authorized - invalid value of 'code' parameter: give the "
            "collection's health code as ?code=, as the Authorization header or as "
            "'Authorization: Bearer <code>'",
            "data": {},
        }
        # The right code still opens the guarded collection, and no other name.
        # The right code, in each of the three ways /ready and /metrics take a key.
        for right in (
            {"params": {"code": COLLECTION_CODE}},
            {"headers": {"Authorization": COLLECTION_CODE}},
            {"headers": {"Authorization": f"Bearer {COLLECTION_CODE}"}},
        ):
            ok = http.get(f"{BASE}/guarded/health", **right)
            assert ok.status_code == 200, (right, ok.text)
            other = http.get(f"{BASE}/{UNKNOWN}/health", **right)
            assert answer(other) == answer(http.get(f"{BASE}/{UNKNOWN}/health")), right
        # A collection without a health secret stays open to monitoring, as before.
        assert http.get(f"{BASE}/open/health").status_code == 200


def test_refusals_of_unknown_and_known_collections_take_about_the_same_time(
    server: ServerProcess,
) -> None:
    kinds = {
        "unknown, no code": {"url": f"{BASE}/{UNKNOWN}/health"},
        "unknown, wrong code": {"url": f"{BASE}/{UNKNOWN}/health", "params": {"code": WRONG_CODE}},
        "guarded, no code": {"url": f"{BASE}/guarded/health"},
        "guarded, wrong code": {"url": f"{BASE}/guarded/health", "params": {"code": WRONG_CODE}},
        "unknown, wrong bearer": {
            "url": f"{BASE}/{UNKNOWN}/health",
            "headers": {"Authorization": f"Bearer {WRONG_CODE}"},
        },
        "guarded, wrong bearer": {
            "url": f"{BASE}/guarded/health",
            "headers": {"Authorization": f"Bearer {WRONG_CODE}"},
        },
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for request in kinds.values():  # warm up the connection and the code paths
            http.get(**request)
        for _ in range(TIMING_ROUNDS):
            for kind, request in kinds.items():  # interleaved, so drift hits every kind
                started = time.perf_counter()
                response = http.get(**request)
                times[kind].append(time.perf_counter() - started)
                assert response.status_code == 403, kind
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    slowest, fastest = max(medians.values()), min(medians.values())
    assert slowest <= TIMING_FACTOR * fastest, medians


def test_unknown_and_known_collections_share_one_rate_limit(tmp_path: Path) -> None:
    process = serve(
        tmp_path,
        "--rate-collection-health-limit=4",
        "--rate-default-limit=1000",
        "--rate-auth-limit=1000",
        "--rate-server-health-limit=1000",
        unlimited=False,
    )
    try:
        with httpx.Client(base_url=process.url, timeout=30) as http:
            first = [answer(http.get(f"{BASE}/{name}/health")) for name in (UNKNOWN, "guarded") * 2]
            assert [status for status, _, _ in first] == [403] * 4
            assert first[0] == first[1] == first[2] == first[3]
            # Four requests in one minute used the bucket up, whichever names they asked for.
            unknown = http.get(f"{BASE}/{UNKNOWN}/health")
            known = http.get(f"{BASE}/guarded/health")
            assert unknown.status_code == known.status_code == 429
            assert unknown.content == known.content
            assert set(unknown.headers) - PER_RESPONSE_HEADERS == set(known.headers) - (
                PER_RESPONSE_HEADERS
            )
    finally:
        process.stop()


# -- /metrics -------------------------------------------------------------------------------


def test_metrics_need_the_health_key_when_one_is_set(tmp_path: Path, database_url: str) -> None:
    process = serve(tmp_path, f"--health-check-key={HEALTH_KEY}", db_url=database_url)
    try:
        with httpx.Client(base_url=process.url, timeout=30) as http:
            missing = http.get("/metrics")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["status"] is False
            assert "health check key" in missing.json()["error"]
            assert "--metrics-public" in missing.json()["error"]
            assert "guarded" not in missing.text
            for attempt in (
                {"params": {"code": WRONG_CODE}},
                {"headers": {"Authorization": f"Bearer {WRONG_CODE}"}},
                {"headers": {"Authorization": WRONG_CODE}},
            ):
                wrong = http.get("/metrics", **attempt)  # type: ignore[arg-type]
                assert wrong.status_code == 403, attempt
                assert wrong.json()["status"] is False
                assert "guarded" not in wrong.text
            # What Prometheus sends with `authorization: {credentials_file: ...}`, and with
            # `params: {code: [...]}`.
            for attempt in (
                {"headers": {"Authorization": f"Bearer {HEALTH_KEY}"}},
                {"params": {"code": HEALTH_KEY}},
            ):
                scrape = http.get("/metrics", **attempt)  # type: ignore[arg-type]
                assert scrape.status_code == 200, attempt
                assert 'backup_repository_collection_versions{collection="guarded"} 0.0' in (
                    scrape.text
                )
    finally:
        process.stop()
    assert "/metrics is public" not in process.log()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_metrics_are_public_on_purpose(tmp_path: Path, how: str) -> None:
    args = [f"--health-check-key={HEALTH_KEY}"]
    env: dict[str, str] = {}
    if how == "flag":
        args.append("--metrics-public")
    else:
        env["BR_METRICS_PUBLIC"] = "true"
    process = serve(tmp_path, *args, env=env)
    try:
        scrape = httpx.get(f"{process.url}/metrics", timeout=30)
        assert scrape.status_code == 200
        assert 'collection="guarded"' in scrape.text
        # /ready keeps asking for the key.
        assert httpx.get(f"{process.url}/ready", timeout=30).status_code == 403
    finally:
        process.stop()
    assert "/metrics is public" not in process.log()


def test_metrics_without_a_health_key_are_public_and_the_log_says_so(tmp_path: Path) -> None:
    process = serve(tmp_path)
    try:
        assert httpx.get(f"{process.url}/metrics", timeout=30).status_code == 200
    finally:
        process.stop()
    log = process.log()
    assert "/metrics is public" in log
    assert "--health-check-key" in log
    assert "--metrics-public" in log


def test_protected_metrics_without_a_health_key_refuse_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        server_command(
            "--metrics-protected",
            "--listen=127.0.0.1:1",
            "--jwt-secret-key=a-secret-that-is-long-enough-for-the-test",
            "--storage-url",
            (tmp_path / "storage").as_uri(),
            "--config-local-path",
            str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert "--metrics-protected" in result.stderr
    assert "--health-check-key" in result.stderr
