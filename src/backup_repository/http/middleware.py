"""Pure ASGI middleware: client address, rate limits and body size limits. They run before
routing, so they stay cheap and never read a body they do not have to."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backup_repository.domain.errors import RequestTimeout
from backup_repository.domain.network import IPNetwork, client_address
from backup_repository.http.envelope import error
from backup_repository.http.errors import BodyTooLarge
from backup_repository.http.ratelimit import RateLimiter, bucket_for

# Uploads stream any size; quotas are enforced by the upload pipeline instead.
UPLOAD_PATH = re.compile(r"^/api/(stable|alpha)/repository/collection/[^/]+/version/?$")
# Content-Length as RFC 9110 spells it: ASCII digits only (str.isdigit() would also take "²").
_DIGITS = re.compile(r"[0-9]{1,19}")
# The largest request head (all header lines) the app accepts. Legitimate heads are well
# under 8 KiB (a token is about 400 bytes); nginx's default is 4 x 8 KiB.
MAX_HEADER_BYTES = 32 * 1024


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _joined_header(scope: Scope, name: bytes) -> str | None:
    """All lines of a header that may be repeated, joined with commas (RFC 9110 5.3): a
    proxy may append its own ``X-Forwarded-For`` line after one the client sent."""
    values = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]
    return ", ".join(values) if values else None


class HeaderLimitMiddleware:
    """Refuses requests whose header lines together exceed ``limit`` bytes with 431, before
    anything else looks at them."""

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(key) + len(value) + 4 for key, value in scope.get("headers", ()))
            if size > self.limit:
                response = error(
                    431,
                    f"request headers too large: at most {self.limit} bytes are accepted",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ClientAddressMiddleware:
    """Puts the client's address in ``scope["state"]["client_ip"]``, honouring
    ``X-Forwarded-For`` only when the peer is one of the trusted proxies."""

    def __init__(self, app: ASGIApp, trusted_proxies: Iterable[IPNetwork]) -> None:
        self.app = app
        self.trusted = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = scope.get("client") or ("", 0)
            forwarded = _joined_header(scope, b"x-forwarded-for") if self.trusted else None
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


# How long a client may take to send the (small) body of a request other than an upload;
# uploads have --http-upload-timeout. Without it, a client trickling a login body one byte
# per second would hold its connection for hours.
BODY_READ_TIMEOUT = 30.0


class BodyLimitMiddleware:
    """Refuses bodies above ``limit`` bytes with 413 on every route but uploads: at once when
    Content-Length says so, or the moment a chunked body passes the limit; and a body not
    complete within ``read_timeout`` seconds with 408."""

    def __init__(self, app: ASGIApp, limit: int, read_timeout: float = BODY_READ_TIMEOUT) -> None:
        self.app = app
        self.limit = limit
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] == "POST" and UPLOAD_PATH.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not _DIGITS.fullmatch(length):
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
        read_timeout = self.read_timeout
        deadline: float | None = None
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete, deadline
            if complete:
                # Past the body only a disconnect can come, e.g. during a long download.
                return await receive()
            if deadline is None:
                # From the app's first read: time it spent before reading is not the client's.
                deadline = asyncio.get_running_loop().time() + read_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout("Request took too long") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, limited_receive, send)
