"""What every request of the API goes through, kept cheap: guards that fail when a change
puts work back on the path of each request (docs/benchmarks.md has the figures)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, _IncludedRouter
from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.routing import BaseRoute

from backup_repository.http.app import create_app
from gpg_fixtures import SAMPLES_DIR
from support import collection_doc, make_settings, user_doc, write_config


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        if isinstance(route, _IncludedRouter):
            yield from _routes(route.original_router.routes)
        else:
            yield route


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _runs_on_the_loop(call: Any) -> bool:
    if inspect.iscoroutinefunction(call):
        return True
    # A class instance (the Bearer scheme of the OpenAPI description): its __call__.
    return inspect.iscoroutinefunction(type(call).__call__)


def test_the_dependencies_of_api_and_console_routes_run_on_the_event_loop(tmp_path: Path) -> None:
    """FastAPI runs a plain function dependency in a worker thread: a trip to a thread and
    back per dependency and request. The dependencies of the API and of the probes are
    coroutines, and so are those of the web console's pages."""
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))
    routes = [route for route in _routes(app.routes) if isinstance(route, APIRoute)]
    assert len(routes) > 20
    assert any(route.path.startswith("/ui") for route in routes)
    threaded = {
        f"{route.path} {getattr(call, '__name__', type(call).__name__)}"
        for route in routes
        for call in _calls(route.dependant)
        if not _runs_on_the_loop(call)
    }
    assert threaded == set()


async def test_whoami_and_a_download_make_no_sqlalchemy_transaction_on_sqlite(
    tmp_path: Path,
) -> None:
    """On SQLite the session lookup, the version of a download and its audit row are one
    statement each, sent to the driver directly (one trip to its thread each); none of them
    goes through a SQLAlchemy transaction (BEGIN, statement, COMMIT: nine trips). The
    audit row is still written."""
    write_config(
        tmp_path / "config",
        [user_doc("admin", "admin-pass", ["systemAdmin"]), collection_doc("db")],
    )
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))
    seen: list[str] = []

    def on_statement(*args: Any) -> None:
        statement = " ".join(str(args[2]).split())
        if "granted_accesses" in statement or "INSERT INTO audit_events" in statement:
            seen.append(statement)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            login = await client.post(
                "/api/stable/auth/login", json={"username": "admin", "password": "admin-pass"}
            )
            client.headers["Authorization"] = f"Bearer {login.json()['data']['token']}"
            body = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
            base = "/api/stable/repository/collection/db/version"
            assert (await client.post(base, content=body)).status_code == 200
            event.listen(Engine, "before_cursor_execute", on_statement)
            try:
                whoami = await client.get("/api/stable/auth/whoami")
                download = await client.get(f"{base}/latest")
            finally:
                event.remove(Engine, "before_cursor_execute", on_statement)
            audit = await client.get("/api/stable/audit", params={"action": "download"})
    assert whoami.status_code == 200
    assert download.status_code == 200
    assert download.content == body
    assert seen == []
    assert [entry["outcome"] for entry in audit.json()["data"]["events"]] == ["success"]


async def test_no_opentelemetry_provider_is_looked_up_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI's own OpenTelemetry hooks are off (the server has its Prometheus metrics and
    its access log): with them on, FastAPI asks the global OpenTelemetry providers on every
    request whether one is configured (about 7 µs a request)."""
    pytest.importorskip("opentelemetry")
    from opentelemetry import _logs, metrics, trace

    asked: list[str] = []
    for module, name in (
        (trace, "get_tracer_provider"),
        (metrics, "get_meter_provider"),
        (_logs, "get_logger_provider"),
    ):

        def counting(*args: Any, _original: Any = getattr(module, name), **kwargs: Any) -> Any:
            asked.append(_original.__name__)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    write_config(tmp_path / "config", [user_doc("admin", "admin-pass", ["systemAdmin"])])
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            asked.clear()
            for path in ("/health", "/api/stable/auth/whoami", "/nowhere"):
                await client.get(path)
    assert asked == []


async def test_a_download_sent_from_the_file_derives_no_header_from_its_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version sent from its file carries the version's ETag and Last-Modified; the
    file's stat gives its length only (Starlette would format a date and hash the stat on
    every download, for headers it then drops)."""
    import starlette.responses

    def no_stat_headers(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a header derived from the file's stat")

    write_config(
        tmp_path / "config",
        [user_doc("admin", "admin-pass", ["systemAdmin"]), collection_doc("db")],
    )
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))
    body = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
    base = "/api/stable/repository/collection/db/version"
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            login = await client.post(
                "/api/stable/auth/login", json={"username": "admin", "password": "admin-pass"}
            )
            client.headers["Authorization"] = f"Bearer {login.json()['data']['token']}"
            uploaded = (await client.post(base, content=body)).json()["data"]["version"]
            monkeypatch.setattr(starlette.responses, "formatdate", no_stat_headers)
            download = await client.get(f"{base}/latest")
    assert download.status_code == 200
    assert download.content == body
    assert download.headers["content-length"] == str(len(body))
    assert download.headers["etag"] == f'"{uploaded["sha256"]}"'
    created = datetime.fromisoformat(uploaded["CreatedAt"].replace("Z", "+00:00"))
    assert download.headers["last-modified"] == format_datetime(created, usegmt=True)
