"""``/metrics`` after known traffic: exact counters, route templates as labels, the
per-collection gauges read at scrape time, protection by the health check key, the rate
limit bucket; in process (httpx over ASGI) on SQLite and PostgreSQL, and once through the
real server process."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backup_repository import __version__
from backup_repository.db.engine import create_engine
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.http.app import create_app
from backup_repository.http.metrics import documented_templates
from gpg_fixtures import GpgHome, pad_to
from support import (
    closed_windows,
    collection_doc,
    eventually,
    make_settings,
    start_server,
    user_doc,
    write_config,
)

BASE = "/api/stable/repository/collection"
VERSION_ROUTE = f"{BASE}/{{collectionId}}/version"
DOWNLOAD_ROUTE = f"{BASE}/{{collectionId}}/version/{{version}}"
LOGIN_ROUTE = "/api/stable/auth/login"
UPLOADER = ("uploader", "uploader-pass")
ADMIN = ("admin", "admin-pass")
STRANGER = ("stranger", "stranger-pass")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def collection(name: str, **spec: Any) -> dict[str, Any]:
    doc = collection_doc(
        name,
        acl=[{"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]}],
    )
    doc["spec"].update(
        {"maxBackupsCount": 3, "maxOneVersionSize": "64K", "maxCollectionSize": "256K", **spec}
    )
    return doc


def documents() -> list[dict[str, Any]]:
    broken = collection("broken", maxBackupsCount=0)  # refused by the loader: one problem
    return [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc("uploader", "uploader-pass", []),
        user_doc("stranger", "stranger-pass", []),
        collection("db"),
        collection("never", maxCollectionSize="1M", maxBackupsCount=5),
        collection("closed", windows=closed_windows()),
        broken,
    ]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for (sample, key) in samples if sample == name and label in dict(key)}


async def scrape(client: httpx.AsyncClient, **kwargs: Any) -> Samples:
    response = await client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


async def login(client: httpx.AsyncClient, credentials: tuple[str, str]) -> httpx.Response:
    return await client.post(
        LOGIN_ROUTE, json={"username": credentials[0], "password": credentials[1]}
    )


async def token(client: httpx.AsyncClient, credentials: tuple[str, str]) -> dict[str, str]:
    response = await login(client, credentials)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


async def upload(
    client: httpx.AsyncClient, auth: dict[str, str], data: bytes, name: str = "db"
) -> httpx.Response:
    return await client.post(f"{BASE}/{name}/version", content=data, headers=auth)


def app_client(tmp_path: Path, database_url: str, **overrides: Any) -> Any:
    write_config(tmp_path / "config", documents())
    app = create_app(make_settings(tmp_path, database_url, **overrides))

    class _Client:
        async def __aenter__(self) -> httpx.AsyncClient:
            self._lifespan = app.router.lifespan_context(app)
            await self._lifespan.__aenter__()
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            self._client = httpx.AsyncClient(transport=transport, base_url="http://test")
            return self._client

        async def __aexit__(self, *exc: object) -> None:
            await self._client.aclose()
            await self._lifespan.__aexit__(None, None, None)

    return _Client()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}") as c:
        yield c


async def test_exact_counters_after_known_traffic(
    tmp_path: Path, database_url: str, gpg_home: GpgHome
) -> None:
    async with app_client(tmp_path, database_url) as client:
        before = await scrape(client)
        assert value(before, "backup_repository_info", version=__version__) == 1
        assert value(before, "backup_repository_logins_total", outcome="success") == 0
        assert value(before, "backup_repository_uploads_refused_total", reason="quota") == 0
        assert value(before, "backup_repository_collection_versions", collection="db") == 0
        assert value(before, "backup_repository_config_problems") == 1
        assert value(before, "backup_repository_config_usable") == 1

        # 3 logins accepted, 2 refused.
        uploader = await token(client, UPLOADER)
        admin = await token(client, ADMIN)
        stranger = await token(client, STRANGER)
        assert (await login(client, ("uploader", "wrong"))).status_code == 401
        assert (await login(client, ("nobody", "wrong"))).status_code == 401

        # 2 uploads accepted.
        first = gpg_home.encrypt(b"first dump " * 300)
        second = gpg_home.encrypt(b"second dump " * 700)
        assert (await upload(client, uploader, first)).status_code == 200
        assert (await upload(client, admin, second)).status_code == 200

        # Refusals: quota, openpgp (twice), window, auth (no token; no right), lock, not found.
        over = pad_to(gpg_home.encrypt(b"q"), 260 * 1024)  # over maxCollectionSize
        assert (await upload(client, uploader, over)).status_code == 413
        assert (
            await upload(client, uploader, b"plain text, not encrypted\n" * 4)
        ).status_code == 400
        assert (await upload(client, uploader, b"\x00" * 100)).status_code == 400
        assert (await upload(client, uploader, first, name="closed")).status_code == 403
        assert (await upload(client, {}, first)).status_code == 401
        assert (await upload(client, stranger, first)).status_code == 403
        engine = create_engine(database_url)
        try:
            held = SqlVersionRepository(engine)
            assert await held.try_lock("db", "another-replica", 60) is not None
            assert (await upload(client, uploader, first)).status_code == 409
            await held.release_lock("db", "another-replica")
        finally:
            await engine.dispose()
        for invented in ("made-up-1", "made-up-2"):
            assert (await upload(client, uploader, first, name=invented)).status_code == 404

        # Downloads: the whole of v1, 10 bytes of the latest, and one refused.
        full = await client.get(f"{BASE}/db/version/1", headers=uploader)
        assert full.content == first
        part = await client.get(
            f"{BASE}/db/version/latest", headers={**uploader, "Range": "bytes=0-9"}
        )
        assert part.status_code == 206
        assert (await client.get(f"{BASE}/db/version/99", headers=uploader)).status_code == 404

        # Paths no route knows: each is counted as <unmatched>, never by its own path.
        for path in ("/nope", "/nope/1", "/wp-admin/x.php"):
            assert (await client.get(path)).status_code == 404

        m = await scrape(client)

    assert value(m, "backup_repository_logins_total", outcome="success") == 3
    assert value(m, "backup_repository_logins_total", outcome="failure") == 2

    uploads = "backup_repository_uploads_total"
    assert value(m, uploads, collection="db", outcome="success") == 2
    # quota, 2 openpgp, no token, no right, lock
    assert value(m, uploads, collection="db", outcome="failure") == 6
    assert value(m, uploads, collection="closed", outcome="failure") == 1
    assert value(m, uploads, collection="<unknown>", outcome="failure") == 2
    assert label_values(m, uploads, "collection") == {"db", "closed", "<unknown>"}
    assert value(m, "backup_repository_uploaded_bytes_total", collection="db") == len(first) + len(
        second
    )
    refused = {
        reason: value(m, "backup_repository_uploads_refused_total", reason=reason)
        for reason in label_values(m, "backup_repository_uploads_refused_total", "reason")
    }
    assert refused == {
        "auth": 2,
        "window": 1,
        "lock": 1,
        "quota": 1,
        "openpgp": 2,
        "signature": 0,
        "not_found": 2,
        "invalid": 0,
        "timeout": 0,
        "storage": 0,
        "aborted": 0,
    }

    assert value(m, "backup_repository_downloads_total", collection="db", outcome="success") == 2
    assert value(m, "backup_repository_downloads_total", collection="db", outcome="failure") == 1
    assert value(m, "backup_repository_downloaded_bytes_total", collection="db") == len(first) + 10

    requests = "backup_repository_http_requests_total"
    assert value(m, requests, method="POST", route=LOGIN_ROUTE, status="200") == 3
    assert value(m, requests, method="POST", route=LOGIN_ROUTE, status="401") == 2
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="200") == 2
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="413") == 1
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="400") == 2
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="403") == 2
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="401") == 1
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="409") == 1
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="404") == 2
    assert value(m, requests, method="GET", route=DOWNLOAD_ROUTE, status="200") == 1
    assert value(m, requests, method="GET", route=DOWNLOAD_ROUTE, status="206") == 1
    assert value(m, requests, method="GET", route=DOWNLOAD_ROUTE, status="404") == 1
    assert value(m, requests, method="GET", route="<unmatched>", status="404") == 3
    # The first scrape counted itself once it had answered.
    assert value(m, requests, method="GET", route="/metrics", status="200") == 1
    routes = label_values(m, requests, "route")
    assert not any("nope" in r or "wp-admin" in r or "made-up" in r for r in routes), routes
    assert routes == {LOGIN_ROUTE, VERSION_ROUTE, DOWNLOAD_ROUTE, "/metrics", "<unmatched>"}
    duration = "backup_repository_http_request_duration_seconds_count"
    assert value(m, duration, method="POST", route=VERSION_ROUTE) == 11
    assert value(m, duration, method="GET", route="<unmatched>") == 3

    assert value(m, "backup_repository_collection_versions", collection="db") == 2
    assert value(m, "backup_repository_collection_bytes", collection="db") == len(first) + len(
        second
    )
    assert value(m, "backup_repository_collection_max_bytes", collection="db") == 256 * 1024
    assert value(m, "backup_repository_collection_max_versions", collection="db") == 3
    assert value(m, "backup_repository_collection_max_bytes", collection="never") == 1024 * 1024
    assert value(m, "backup_repository_collection_max_versions", collection="never") == 5
    assert value(m, "backup_repository_collection_versions", collection="never") == 0
    # Only configured collections have gauges; the broken one is left out.
    assert label_values(m, "backup_repository_collection_versions", "collection") == {
        "db",
        "never",
        "closed",
    }
    # Never uploaded: no last-upload series at all.
    for name in (
        "backup_repository_collection_last_upload_timestamp_seconds",
        "backup_repository_collection_seconds_since_last_upload",
    ):
        assert label_values(m, name, "collection") == {"db"}
    last = value(m, "backup_repository_collection_last_upload_timestamp_seconds", collection="db")
    assert abs(last - datetime.now(UTC).timestamp()) < 60
    assert value(m, "backup_repository_scrape_source_up", source="collections") == 1


async def test_seconds_since_last_upload_grows(
    client: httpx.AsyncClient, gpg_home: GpgHome
) -> None:
    auth = await token(client, UPLOADER)
    assert (await upload(client, auth, gpg_home.encrypt(b"one"))).status_code == 200
    since = "backup_repository_collection_seconds_since_last_upload"
    stamp = "backup_repository_collection_last_upload_timestamp_seconds"
    first = await scrape(client)

    async def a_second_later() -> Samples | None:
        scraped = await scrape(client)
        grown = value(scraped, since, collection="db") >= value(first, since, collection="db") + 1
        return scraped if grown else None

    second = await eventually(a_second_later, within=30)
    assert value(second, stamp, collection="db") == value(first, stamp, collection="db")

    # A new upload resets it.
    assert (await upload(client, auth, gpg_home.encrypt(b"two"))).status_code == 200
    third = await scrape(client)
    assert value(third, since, collection="db") < value(second, since, collection="db")
    assert value(third, stamp, collection="db") > value(second, stamp, collection="db")


async def test_rotation_keeps_the_last_upload_and_counts_deletions(
    client: httpx.AsyncClient, gpg_home: GpgHome
) -> None:
    auth = await token(client, UPLOADER)
    sizes = []
    for n in range(5):
        data = gpg_home.encrypt(f"version {n}".encode() * 50)
        sizes.append(len(data))
        assert (await upload(client, auth, data)).status_code == 200
    m = await scrape(client)
    # maxBackupsCount 3: two versions rotated out.
    assert value(m, "backup_repository_collection_versions", collection="db") == 3
    assert value(m, "backup_repository_collection_bytes", collection="db") == sum(sizes[2:])
    assert value(m, "backup_repository_rotated_versions_total", collection="db") == 2
    assert value(m, "backup_repository_uploaded_bytes_total", collection="db") == sum(sizes)


async def test_refused_before_routing_keeps_the_route_template(tmp_path: Path) -> None:
    """A login refused by the rate limit (before routing) is still labelled with the login
    route; a scrape is in the server-health bucket, not the 5-per-second default one."""
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async with app_client(
        tmp_path,
        database_url,
        rate_auth_limit=1,
        rate_default_limit=5,
        rate_server_health_limit=160,
    ) as client:
        assert (await login(client, UPLOADER)).status_code == 200
        assert (await login(client, UPLOADER)).status_code == 429
        for _ in range(20):
            m = await scrape(client)
    requests = "backup_repository_http_requests_total"
    assert value(m, requests, method="POST", route=LOGIN_ROUTE, status="429") == 1
    assert value(m, requests, method="GET", route="/metrics", status="200") == 19
    assert value(m, "backup_repository_logins_total", outcome="success") == 1


async def test_an_unhandled_error_is_counted_as_the_500_it_was_answered(tmp_path: Path) -> None:
    """Requests are counted by the outermost layer, outside Starlette's error layer: an
    unhandled error is counted with the status of the answer it got, under its route."""
    write_config(tmp_path / "config", documents())
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))

    @app.get("/explode/{what}", include_in_schema=False)
    async def explode(what: str) -> None:
        raise RuntimeError(what)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(2):
                assert (await client.get("/explode/kaboom")).status_code == 500
            m = await scrape(client)
    requests = "backup_repository_http_requests_total"
    assert value(m, requests, method="GET", route="/explode/{what}", status="500") == 2


async def test_bounded_labels_for_odd_methods(client: httpx.AsyncClient) -> None:
    for method in ("BREW", "PROPFIND", "GET"):
        await client.request(method, "/health")
    m = await scrape(client)
    requests = "backup_repository_http_requests_total"
    assert label_values(m, requests, "method") == {"GET", "OTHER"}
    assert value(m, requests, method="OTHER", route="/health", status="405") == 2
    assert value(m, requests, method="GET", route="/health", status="200") == 1


async def test_protected_metrics_need_the_health_key(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    # A health check key alone protects /metrics.
    async with app_client(tmp_path, database_url, health_check_key="s3cret-key") as client:
        missing = await client.get("/metrics")
        assert missing.status_code == 401
        assert missing.json()["status"] is False
        assert "health check key" in missing.json()["error"]
        assert missing.headers["www-authenticate"] == "Bearer"
        for attempt in (
            {"params": {"code": "wrong"}},
            {"headers": {"Authorization": "Bearer wrong"}},
            {"headers": {"Authorization": "s3cret-key-and-more"}},
        ):
            wrong = await client.get("/metrics", **attempt)
            assert wrong.status_code == 403, attempt
            assert wrong.json() == {
                "status": False,
                "error": "health check key invalid: it must match the --health-check-key value",
                "data": {},
            }
        for attempt in (
            {"params": {"code": "s3cret-key"}},
            {"headers": {"Authorization": "s3cret-key"}},
            {"headers": {"Authorization": "Bearer s3cret-key"}},
        ):
            m = await scrape(client, **attempt)
        requests = "backup_repository_http_requests_total"
        assert value(m, requests, method="GET", route="/metrics", status="401") == 1
        assert value(m, requests, method="GET", route="/metrics", status="403") == 3
        assert value(m, requests, method="GET", route="/metrics", status="200") == 2
        # Over-long keys are refused as bad input, in the envelope.
        response = await client.get("/metrics", params={"code": "x" * 2000})
        assert response.status_code == 400
        assert response.json()["status"] is False


async def test_public_metrics_ignore_keys(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics", params={"code": "anything"})).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_metrics_public_on_purpose_ignore_the_health_key(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async with app_client(
        tmp_path, database_url, health_check_key="s3cret-key", metrics_public=True
    ) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/metrics", params={"code": "wrong"})).status_code == 200


async def test_docs_and_served_metrics_agree(client: httpx.AsyncClient) -> None:
    """Every metric docs/monitoring.md names (in its tables and alert rules) is served, and
    every metric served is documented."""
    text = (await client.get("/metrics")).text
    served = set(re.findall(r"^# HELP (backup_repository_[a-z_]+) ", text, re.M))
    served -= {name for name in served if name.endswith("_created")}
    documented = set(re.findall(r"backup_repository_[a-z_]+", DOCS.read_text()))
    assert not documented - served
    assert not served - documented


@pytest.mark.e2e
def test_metrics_through_the_real_server(tmp_path: Path, gpg_home: GpgHome) -> None:
    """Through granian: a download sent by path-send or streamed is counted once, with the
    bytes of the version."""
    config = tmp_path / "config"
    write_config(config, documents())
    server = start_server(tmp_path / "server", config)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            response = http.post(
                LOGIN_ROUTE, json={"username": "uploader", "password": "uploader-pass"}
            )
            auth = {"Authorization": f"Bearer {response.json()['data']['token']}"}
            data = gpg_home.encrypt(b"through the real server " * 2000)
            assert http.post(f"{BASE}/db/version", content=data, headers=auth).status_code == 200
            download = http.get(f"{BASE}/db/version/latest", headers=auth)
            assert hashlib.sha256(download.content).digest() == hashlib.sha256(data).digest()
            m = parse(http.get("/metrics").text)
    finally:
        server.stop()
    requests = "backup_repository_http_requests_total"
    assert value(m, requests, method="GET", route=DOWNLOAD_ROUTE, status="200") == 1
    assert value(m, requests, method="POST", route=VERSION_ROUTE, status="200") == 1
    assert value(m, "backup_repository_downloaded_bytes_total", collection="db") == len(data)
    assert value(m, "backup_repository_uploaded_bytes_total", collection="db") == len(data)
    assert value(m, "backup_repository_collection_bytes", collection="db") == len(data)


async def test_requests_refused_before_routing_are_labelled_without_the_description(
    tmp_path: Path,
) -> None:
    """The templates a refused or unknown path is matched against are those of the OpenAPI
    description, taken from the routes: the description (about 3 MiB, kept once built) is
    not built for the first stray request of a server nobody asked for /docs."""
    write_config(tmp_path / "config", documents())
    app = create_app(
        make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", rate_auth_limit=1)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/wp-admin/x.php")).status_code == 404
            assert (await login(client, UPLOADER)).status_code == 200
            assert (await login(client, UPLOADER)).status_code == 429
            assert app.openapi_schema is None
            m = await scrape(client)
            assert app.openapi_schema is None
    requests = "backup_repository_http_requests_total"
    assert value(m, requests, method="GET", route="<unmatched>", status="404") == 1
    assert value(m, requests, method="POST", route=LOGIN_ROUTE, status="429") == 1
    templates = documented_templates(app.routes)
    assert templates == list(app.openapi()["paths"])
    assert any(template.startswith("/api/alpha/") for template in templates)
