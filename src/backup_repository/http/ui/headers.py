"""The headers of every ``/ui`` response, set by one pure ASGI middleware so that error
answers (404, 405, 429) carry them too."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No inline script or style anywhere in the console: every script and style sheet is a file
# under /ui/static/.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)
PREFIX = "/ui"
STATIC_PREFIX = "/ui/static/"


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleHeadersMiddleware:
    """Content-Security-Policy, X-Content-Type-Options, Referrer-Policy and Cache-Control
    (``no-store`` on pages, ``no-cache`` on static files) on every console response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_console_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        cache = "no-cache" if scope["path"].startswith(STATIC_PREFIX) else "no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower()
                    not in {
                        b"content-security-policy",
                        b"x-content-type-options",
                        b"referrer-policy",
                        b"cache-control",
                        b"x-frame-options",
                    }
                ]
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", cache.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
