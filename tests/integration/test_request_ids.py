"""Request ids and the access log, through the real app (httpx over ASGI, SQLite).

Every response carries ``X-Request-ID``: successes, errors from the handlers, from the
middleware (413, 431, 429), from routing (404, 405) and the 500 of an unhandled error; the
log lines of the request carry the same id; one access line per request, without the
query string."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from backup_repository.http import errors
from backup_repository.http.app import App, create_app
from backup_repository.http.request_log import (
    RequestIdMiddleware,
    accepted_request_id,
    route_template,
)
from backup_repository.logs import configure_logging
from support import default_documents, make_settings, write_config

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("info", "json", stream=buffer)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(
            app=app, client=("127.0.0.1", 40000), raise_app_exceptions=False
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def client(tmp_path: Path, log: io.StringIO) -> AsyncIterator[httpx.AsyncClient]:
    write_config(tmp_path / "config", default_documents())
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    async for c in _client(create_app(settings)):
        yield c


def test_an_incoming_id_is_kept_only_when_it_is_a_sane_token() -> None:
    assert accepted_request_id("abc-123_X.y") == "abc-123_X.y"
    assert accepted_request_id("a" * 64) == "a" * 64
    for bad in (None, "", "a" * 65, "has space", "semi;colon", "new\nline", "ünï"):
        assert GENERATED.fullmatch(accepted_request_id(bad)), bad
    assert accepted_request_id(None) != accepted_request_id(None)


def test_the_route_template_is_logged_else_the_path_escaped_and_cut() -> None:
    class Route:
        path_format = "/api/stable/auth/user/{name}"

    assert route_template({"path": "/api/stable/auth/user/bob", "route": Route()}) == (
        "/api/stable/auth/user/{name}"
    )
    assert route_template({"path": "/a\nfake line\x00"}) == "/a\\x0afake line\\x00"
    assert route_template({"path": "/" + "x" * 1000}) == "/" + "x" * 255 + "..."


async def test_every_kind_of_response_carries_the_request_id(
    client: httpx.AsyncClient,
) -> None:
    login = "/api/stable/auth/login"
    answers = {
        "ok": await client.get("/health"),
        "bad credentials": await client.post(login, json={"username": "admin", "password": "x"}),
        "bad json": await client.post(login, content=b"{", headers={"Content-Type": "x/y"}),
        "unknown path": await client.get("/nowhere"),
        "method": await client.put("/health"),
        "body too large": await client.post(login, content=b"x" * (65 * 1024)),
        "headers too large": await client.get("/health", headers={"X-Big": "a" * 40_000}),
        "no token": await client.get("/api/stable/repository/collection"),
        "docs": await client.get("/docs"),
        "description": await client.get("/openapi.json"),
    }
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "ok": 200,
        "bad credentials": 401,
        "bad json": 400,
        "unknown path": 404,
        "method": 405,
        "body too large": 413,
        "headers too large": 431,
        "no token": 401,
        "docs": 200,
        "description": 200,
    }
    ids = [response.headers.get("x-request-id") for response in answers.values()]
    assert all(i is not None and GENERATED.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


async def test_a_rate_limited_answer_carries_the_request_id(
    tmp_path: Path, log: io.StringIO
) -> None:
    write_config(tmp_path / "config", default_documents())
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", rate_default_limit=2)
    answers = []
    async for client in _client(create_app(settings)):
        answers = [await client.get("/api/stable/repository/collection") for _ in range(6)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert all(GENERATED.fullmatch(r.headers["x-request-id"]) for r in limited)


async def test_the_id_sent_is_returned_and_logged(
    client: httpx.AsyncClient, log: io.StringIO
) -> None:
    response = await client.post(
        "/api/stable/auth/login",
        json={"username": "admin", "password": "admin-pass"},
        headers={"X-Request-ID": "from-the-proxy.42"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "from-the-proxy.42"
    mine = [line for line in log_lines(log) if line.get("request_id") == "from-the-proxy.42"]
    loggers = {line["logger"] for line in mine}
    # The service's own line and the access line both carry it.
    assert "backup_repository.services.auth" in loggers
    assert "backup_repository.access" in loggers
    forged = await client.get("/health", headers={"X-Request-ID": "x" * 65})
    assert GENERATED.fullmatch(forged.headers["x-request-id"])


async def test_one_access_line_per_request_without_query_or_headers(
    client: httpx.AsyncClient, log: io.StringIO
) -> None:
    token = (
        await client.post(
            "/api/stable/auth/login", json={"username": "admin", "password": "admin-pass"}
        )
    ).json()["data"]["token"]
    response = await client.get(
        "/api/stable/repository/collection/db/version?secret=query-value",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    access = [
        line
        for line in log_lines(log)
        if line["logger"] == "backup_repository.access" and line.get("request_id") == request_id
    ]
    assert len(access) == 1
    (line,) = access
    assert line["level"] == "info"
    assert line["method"] == "GET"
    assert line["route"] == "/api/stable/repository/collection/{collectionId}/version"
    assert line["status"] == 200
    assert line["bytes"] == len(response.content)
    assert line["client_ip"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], float | int)
    assert line["duration_ms"] >= 0
    text = log.getvalue()
    assert "query-value" not in text
    assert token not in text
    assert token.split(".")[1] not in text


async def test_health_probes_are_logged_at_debug_only(
    client: httpx.AsyncClient, log: io.StringIO
) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).status_code == 200
    assert not [line for line in log_lines(log) if line.get("route") in {"/health", "/ready"}]


async def test_an_unhandled_error_is_a_500_with_the_id_and_a_logged_traceback(
    log: io.StringIO,
) -> None:
    app = App()
    errors.install(app)

    @app.get("/explode")
    async def explode() -> None:
        raise RuntimeError("kaboom")

    app.add_outermost_middleware(RequestIdMiddleware)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/explode", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {"status": False, "error": "internal server error", "data": {}}
    assert response.headers["x-request-id"] == "boom-1"
    lines = [line for line in log_lines(log) if line.get("request_id") == "boom-1"]
    (error,) = [line for line in lines if line["level"] == "error"]
    assert error["message"] == "unhandled error on GET /explode"
    assert "RuntimeError: kaboom" in error["exception"]
    (access,) = [line for line in lines if line["logger"] == "backup_repository.access"]
    assert access["status"] == 500


def test_outermost_middleware_cannot_be_added_once_running() -> None:
    app = App()
    app.build_middleware_stack()
    app.middleware_stack = app.build_middleware_stack()
    with pytest.raises(RuntimeError):
        app.add_outermost_middleware(RequestIdMiddleware)


async def test_a_request_the_client_abandoned_is_logged_as_499(log: io.StringIO) -> None:
    async def abandoned(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError

    ended: list[tuple[str, int]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "client": ("::1", 1)}
    with pytest.raises(asyncio.CancelledError):
        await RequestIdMiddleware(
            abandoned, on_end=[lambda scope, status, _: ended.append((scope["path"], status))]
        )(scope, receive, send)
    (line,) = log_lines(log)
    assert (line["status"], line["client_ip"], line["bytes"]) == (499, "::1", 0)
    assert ended == [("/x", 499)]


async def test_those_told_of_each_request_get_its_status_route_and_duration() -> None:
    """The request metrics learn of every request from the request id layer (the one layer
    that watches responses): the status sent, 500 for an unhandled error (the answer of
    Starlette's error layer, inside it), the route template once routing chose one."""
    app = App()
    errors.install(app)

    @app.get("/explode/{what}")
    async def explode(what: str) -> None:
        raise RuntimeError(what)

    @app.get("/fine")
    async def fine() -> dict[str, bool]:
        return {"fine": True}

    ended: list[tuple[str, int, str]] = []

    def on_end(scope: Any, status: int, seconds: float) -> None:
        assert 0 <= seconds < 60
        ended.append((scope["path"], status, route_template(scope)))

    app.add_outermost_middleware(RequestIdMiddleware, on_end=[on_end])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/fine")).status_code == 200
        assert (await client.get("/explode/kaboom")).status_code == 500
        assert (await client.get("/nowhere")).status_code == 404
    assert ended == [
        ("/fine", 200, "/fine"),
        ("/explode/kaboom", 500, "/explode/{what}"),
        ("/nowhere", 404, "/nowhere"),
    ]


async def test_the_request_id_is_bound_while_the_request_runs_and_restored_after(
    client: httpx.AsyncClient, log: io.StringIO
) -> None:
    """The in-process client runs the app in this task: the id bound for the request is
    reset afterwards, and a value bound around it is the same again."""
    structlog.contextvars.bind_contextvars(request_id="outside")
    try:
        response = await client.get("/health", headers={"X-Request-ID": "inside-1"})
        assert response.headers["x-request-id"] == "inside-1"
        assert structlog.contextvars.get_contextvars()["request_id"] == "outside"
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    await client.get("/nowhere", headers={"X-Request-ID": "inside-2"})
    assert "request_id" not in structlog.contextvars.get_contextvars()
    (line,) = [line for line in log_lines(log) if line.get("route") == "/nowhere"]
    assert line["request_id"] == "inside-2"
