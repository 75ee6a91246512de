"""Pure ASGI middleware: client address, rate limits and body size limits. They run before
routing, so they stay cheap and never read a body they do not have to."""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backup_repository.domain.network import IPNetwork, client_address
from backup_repository.http.envelope import error
from backup_repository.http.errors import BodyTooLarge
from backup_repository.http.ratelimit import RateLimiter, bucket_for

# Uploads stream any size; quotas are enforced by the upload pipeline instead.
UPLOAD_PATH = re.compile(r"^/api/(stable|alpha)/repository/collection/[^/]+/version/?$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class ClientAddressMiddleware:
    """Puts the client's address in ``scope["state"]["client_ip"]``, honouring
    ``X-Forwarded-For`` only when the peer is one of the trusted proxies."""

    def __init__(self, app: ASGIApp, trusted_proxies: Iterable[IPNetwork]) -> None:
        self.app = app
        self.trusted = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = scope.get("client") or ("", 0)
            forwarded = _header(scope, b"x-forwarded-for") if self.trusted else None
            scope.setdefault("state", {})["client_ip"] = client_address(
                str(peer[0]), forwarded, self.trusted
            )
        await self.app(scope, receive, send)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("state", {}).get("client_ip", "")
        decision = await self.limiter.hit(bucket_for(scope["path"]), client)
        if not decision.allowed:
            response = error(
                429,
                "too many requests, slow down",
                headers={"Retry-After": str(decision.retry_after)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies above ``limit`` bytes with 413 on every route but uploads: at once when
    Content-Length says so, or the moment a chunked body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or UPLOAD_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                await error(400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(length) > self.limit:
                response = error(
                    413,
                    f"request body too large: at most {self.limit} bytes are accepted here",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        received = 0
        limit = self.limit

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)
