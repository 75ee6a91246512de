"""The one place where errors become status codes. Handlers never build error responses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from backup_repository.domain import errors as domain
from backup_repository.http.envelope import error

logger = logging.getLogger(__name__)

# Subclasses before their bases: the first match wins.
_STATUS: list[tuple[type[domain.DomainError], int]] = [
    (domain.RangeNotSatisfiable, 416),
    (domain.InvalidInput, 400),
    (domain.AuthenticationFailed, 401),
    (domain.Forbidden, 403),
    (domain.NotFound, 404),
    (domain.Conflict, 409),
    (domain.PayloadTooLarge, 413),
    (domain.RequestTimeout, 408),
    (domain.DependencyUnavailable, 503),
    (domain.TooBusy, 503),
]

_HTTP_MESSAGES = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


class BodyTooLarge(Exception):
    """Raised while reading a request body that exceeds the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: at most {limit} bytes are accepted here")
        self.limit = limit


def status_for(exc: domain.DomainError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def describe_validation_error(errors: Sequence[Mapping[str, Any]]) -> str:
    """One readable line from pydantic's error list, e.g. ``username: Input should be a
    valid string``."""
    parts: list[str] = []
    for err in list(errors)[:5]:
        if err.get("type") == "json_invalid":
            return "malformed JSON in request body"
        location = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        message = str(err.get("msg", "invalid value"))
        parts.append(f"{location}: {message}" if location else message)
    return "invalid request: " + "; ".join(parts)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, domain.DomainError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="backup-repository"'
    elif isinstance(exc, domain.RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    elif status == 413:
        # The rest of the body is not read; the connection cannot be reused.
        headers["Connection"] = "close"
    elif isinstance(exc, domain.TooBusy):
        headers["Retry-After"] = str(exc.retry_after)
    unread = getattr(request.state, "unread_body", False)
    if unread:
        # Answered before the upload's body was read to its end: say the connection ends,
        # then read and drop the rest (bounded), so the socket is not closed with unread
        # data (a reset, which makes clients that send the whole body first lose the answer).
        headers["Connection"] = "close"
    response = error(status, exc.message, headers=headers)
    if unread:
        response.background = BackgroundTask(_drain, request)
    return response


DRAIN_SECONDS = 10.0
DRAIN_BYTES = 64 * 1024 * 1024


async def _drain(request: Request) -> None:
    """What is left of a request body, read and dropped: at most DRAIN_BYTES during at most
    DRAIN_SECONDS, enough for clients that send a whole (moderate) body before reading the
    answer, without letting a refused upload keep the server busy."""
    drained = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_SECONDS):
            while drained <= DRAIN_BYTES:
                message = await request.receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                drained += len(message.get("body", b""))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error(400, describe_validation_error(exc.errors()))


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method the path supports. Starlette names only those of the first route that
    matched the path, but GET and POST on one path are two routes here."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    message = detail if isinstance(detail, str) and detail else None
    if message is None or message in {"Not Found", "Method Not Allowed"}:
        message = _HTTP_MESSAGES.get(exc.status_code, "request failed")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return error(exc.status_code, message, headers=headers)


async def _body_too_large(request: Request, exc: Exception) -> Response:
    return error(413, str(exc), headers={"Connection": "close"})


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, "internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(domain.DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(Exception, _unexpected)
