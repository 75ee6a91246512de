"""Request ids and the access log.

:class:`RequestIdMiddleware` is the outermost layer of the app (outside Starlette's own
error middleware), so that every line logged while a request is handled
(by any middleware, the handlers, the services, the 500 handler) carries its
``request_id``, and every response, errors included, carries the ``X-Request-ID`` header.
(:class:`..application.App` is what puts it outside the error middleware.)

An incoming ``X-Request-ID`` (from a proxy or the client) is kept when it is a sane token
(:data:`REQUEST_ID`); otherwise a new one is made (32 hex digits). One access line per
request is written on the logger ``backup_repository.access`` when the response is done:
method, route template (or path), status, duration, bytes sent, client address. Never the
query string (``/ready?code=`` carries the health key) nor any header. The health probes
(``/health``, ``/ready``) are logged at debug level to keep the logs quiet.

The layer also tells others when a request is done (``on_end``, e.g. the request metrics of
:mod:`.metrics`): one layer watches the responses of every request for all of them, instead
of one layer per concern each wrapping ``send``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backup_repository.logs import bind_fields, log_fields, reset_fields

REQUEST_ID_HEADER = "X-Request-ID"
# What an incoming request id may look like; anything else is replaced by a new id.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")
# Probes polled every few seconds by orchestrators: logged at debug level only.
QUIET_PATHS = frozenset({"/health", "/ready"})
# A path that matched no route is logged as sent, cut to this length.
MAX_LOGGED_PATH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

access_logger = logging.getLogger("backup_repository.access")


def new_request_id() -> str:
    """32 hex digits, as a UUID4 in hex, without a system call per request (an id, not a
    secret)."""
    return f"{random.getrandbits(128):032x}"


def accepted_request_id(value: str | None) -> str:
    """The incoming id when it is a sane token, else a new one."""
    if value is not None and REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def _incoming(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == _HEADER_KEY:
            return str(value.decode("latin-1"))
    return None


def route_template(scope: Scope) -> str:
    """The matched route's template (``/api/stable/repository/collection/{collectionId}``),
    or the raw path (cut short) when no route matched; never the query string."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    path = str(scope.get("path", ""))
    if len(path) > MAX_LOGGED_PATH:
        path = path[:MAX_LOGGED_PATH] + "..."
    # A decoded path may hold control characters (%0A): never a fake line in a readable log.
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", path)


def client_ip(scope: Scope) -> str:
    state = scope.get("state") or {}
    address = state.get("client_ip") if isinstance(state, dict) else None
    if address:
        return str(address)
    peer = scope.get("client")
    return str(peer[0]) if peer else ""


RequestEnd = Callable[[Scope, int, float], None]
"""Told of each request once it is done: its scope (``route`` set when routing chose one),
the status of its response (0 when the app returned without answering; 500, or 499 when the
client went away, when it raised before answering) and the seconds it took."""


class RequestIdMiddleware:
    """The outermost layer: the request id, the access log, and ``on_end`` (the request
    metrics) told of every request when its response is done."""

    def __init__(self, app: ASGIApp, on_end: Iterable[RequestEnd] = ()) -> None:
        self.app = app
        self.on_end = tuple(on_end)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_request_id(_incoming(scope))
        scope.setdefault("state", {})["request_id"] = request_id
        header = (_HEADER_KEY, request_id.encode("latin-1"))
        status = 0
        sent = 0
        declared_length: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent, declared_length
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = int(message["status"])
                headers: list[Any] = []
                for key, value in message.get("headers", ()):
                    name = key.lower()
                    if name == _HEADER_KEY:
                        continue
                    if name == b"content-length" and value.isdigit():
                        declared_length = int(value)
                    headers.append((key, value))
                headers.append(header)
                message = {**message, "headers": headers}
            elif kind == "http.response.pathsend" and declared_length is not None:
                # Sent by the server from the file (zero-copy): as long as it declared.
                sent += declared_length
            await send(message)

        started = time.perf_counter()
        # Every line logged while the request is handled carries its id (reset afterwards:
        # the task may run other requests, e.g. an in-process client's).
        tokens = bind_fields(request_id=request_id)
        try:
            try:
                await self.app(scope, receive, send_with_id)
            except BaseException as exc:
                # Logged by the error handler already; the access line still says how it
                # ended: 499 (as nginx writes it) when the client went away before an answer.
                ended = 499 if isinstance(exc, asyncio.CancelledError) else 500
                self._ended(scope, status or ended, started, sent)
                raise
            self._ended(scope, status, started, sent)
        finally:
            reset_fields(**tokens)

    def _ended(self, scope: Scope, status: int, started: float, sent: int) -> None:
        seconds = time.perf_counter() - started
        for on_end in self.on_end:
            on_end(scope, status, seconds)
        self._log(scope, status, seconds, sent)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, sent: int) -> None:
        path = str(scope.get("path", ""))
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        method = str(scope.get("method", ""))
        route = route_template(scope)
        duration_ms = round(seconds * 1000, 2)
        log_fields(
            access_logger,
            level,
            "%s %s %s",
            (method, route, status),
            {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "bytes": sent,
                "client_ip": client_ip(scope),
            },
        )
