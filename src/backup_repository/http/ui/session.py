"""The console's sessions: a row of the same sessions table as the API's tokens (made by
``AuthService.login``, so it is listed, revocable, audited and expires), whose token is
carried in the ``br_session`` cookie. Each request is authenticated through
``AuthService.authenticate``, the code path of the API's bearer tokens: revocation,
expiry and ``restrictByIP`` apply alike."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from starlette.responses import Response

from backup_repository.domain.errors import AuthenticationFailed
from backup_repository.domain.network import parse_address
from backup_repository.http.deps import Services, ServicesDep, get_client_ip, get_services
from backup_repository.http.ui import csrf
from backup_repository.services.auth import AuthContext

COOKIE = "br_session"
# How long a console login lasts (capped by the server's token lifetime).
SESSION_LIFETIME = timedelta(hours=12)
DESCRIPTION = "web console"
HOME = "/ui/"


class LoginRequired(Exception):
    """No valid session: the page answers 303 to the login page, ``next`` the page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class ConsoleSession:
    """The authenticated caller of a console page and the CSRF token of its forms."""

    auth: AuthContext
    csrf_token: str


def safe_next(value: str | None) -> str:
    """A path to return to after login: only ever a local console path, never another
    site (``//host``, ``/\\host``, ``https://...``)."""
    if (
        not value
        or not value.startswith("/ui")
        or value.startswith("//")
        or "\\" in value
        or any(ord(ch) < 0x20 for ch in value)
    ):
        return HOME
    if value != "/ui" and not value.startswith(("/ui/", "/ui?")):
        return HOME
    return value


def login_url(next_path: str) -> str:
    return "/ui/login?next=" + quote(safe_next(next_path), safe="/")


def _from_trusted_proxy(request: Request, services: Services) -> bool:
    peer = request.client.host if request.client else ""
    address = parse_address(peer)
    return address is not None and any(address in net for net in services.settings.trusted_proxies)


def is_secure(request: Request, services: Services) -> bool:
    """Whether the browser reached us over TLS: directly, or as a trusted proxy says
    (``X-Forwarded-Proto: https``)."""
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return forwarded == "https" and _from_trusted_proxy(request, services)


def console_hosts(request: Request, services: Services) -> set[str]:
    """Host names the console is reached under, for the Origin check: the Host header,
    and ``X-Forwarded-Host`` when a trusted proxy sends it."""
    hosts = {request.headers.get("host", "").lower()}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded and _from_trusted_proxy(request, services):
        hosts.add(forwarded.split(",")[0].strip().lower())
    return hosts


def set_session_cookie(
    response: Response, token: str, max_age: int, request: Request, services: Services
) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_secure(request, services),
    )


def clear_session_cookie(response: Response, request: Request, services: Services) -> None:
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_secure(request, services),
    )


def _requested_path(request: Request) -> str:
    path = request.url.path
    return f"{path}?{request.url.query}" if request.url.query else path


async def console_session(request: Request) -> ConsoleSession:
    """The caller of a page, from the session cookie; LoginRequired without a valid one."""
    services = get_services(request)
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired(_requested_path(request) if request.method == "GET" else HOME)
    try:
        ctx = await services.auth.authenticate(token, get_client_ip(request))
    except AuthenticationFailed:
        raise LoginRequired(_requested_path(request) if request.method == "GET" else HOME) from None
    session = ConsoleSession(
        ctx, csrf.session_token(ctx.session.id, services.settings.jwt_secret_key)
    )
    request.state.console_session = session
    return session


async def checked_post(request: Request) -> ConsoleSession:
    """The caller of a form post, after its CSRF token and origin were checked (before the
    handler does anything)."""
    session = await console_session(request)
    services = get_services(request)
    csrf.check_origin(request, console_hosts(request, services))
    form = await request.form(max_files=0, max_fields=64)
    given = form.get(csrf.FIELD)
    csrf.check_session_token(
        given if isinstance(given, str) else None,
        session.auth.session.id,
        services.settings.jwt_secret_key,
    )
    return session


Page = Annotated[ConsoleSession, Depends(console_session)]
Post = Annotated[ConsoleSession, Depends(checked_post)]
ServicesOf = ServicesDep  # a coroutine dependency: no trip to a worker thread


def public_base_url(request: Request, services: Services) -> str:
    """The server's address as the browser sees it (for command lines to copy): the
    request's, or what a trusted proxy forwards."""
    scheme = "https" if is_secure(request, services) else request.url.scheme
    host = request.headers.get("host", request.url.netloc)
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded and _from_trusted_proxy(request, services):
        host = forwarded.split(",")[0].strip()
    return f"{scheme}://{host}"
