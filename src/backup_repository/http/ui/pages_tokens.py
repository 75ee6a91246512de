"""The tokens page (``/ui/tokens``): the caller's sessions with a revoke button each, and a
form that creates a token for a CI job, shown once (docs/console.md, "Tokens"). The view
model and every rule are in ``services/console_tokens.py`` (over ``AuthService``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from starlette.responses import RedirectResponse, Response

from backup_repository.domain.errors import DomainError
from backup_repository.http.deps import Services, get_client_ip
from backup_repository.http.errors import status_for
from backup_repository.http.ratelimit import AUTH
from backup_repository.http.ui.rendering import render, state_of
from backup_repository.http.ui.routing import console_router
from backup_repository.http.ui.session import Page, Post, ServicesOf, clear_session_cookie
from backup_repository.services.console_tokens import ConsoleTokenService, TokenForm
from backup_repository.services.session_listing import MAX_SESSION_CURSOR

router = console_router()

MAX_FIELD = 512
MAX_SESSION_ID = 128


def _tokens(services: Services) -> ConsoleTokenService:
    return ConsoleTokenService(services.auth, services.config, services.settings.jwt_lifetime)


def _text(value: object, limit: int = MAX_FIELD) -> str:
    return value[:limit] if isinstance(value, str) else ""


@router.get("/tokens")
async def tokens_page(
    request: Request,
    session: Page,
    services: ServicesOf,
    cursor: Annotated[
        str | None, Query(max_length=MAX_SESSION_CURSOR, pattern=r"^[A-Za-z0-9_-]*$")
    ] = None,
    revoked: Annotated[str | None, Query(max_length=12, pattern=r"^[0-9a-f]*$")] = None,
) -> Response:
    view = await _tokens(services).page(session.auth, cursor)
    return render(
        request,
        "tokens.html",
        {
            "view": view,
            "form": TokenForm(),
            "message": "",
            "revoked": revoked or "",
            "older": cursor,
        },
    )


@router.post("/tokens")
async def create_token(request: Request, session: Post, services: ServicesOf) -> Response:
    """Create a token; the answer shows it once (never a redirect: the token must not
    land in the browser's history or in a URL)."""
    form_data = await request.form()
    form = TokenForm(
        password=_text(form_data.get("password"), 4096),
        lifetime=_text(form_data.get("lifetime"), 32),
        scope=[_text(v) for v in form_data.getlist("scope")][:300],
        single_use=_text(form_data.get("single_use"), 255),
        description=_text(form_data.get("description"), 200),
    )
    client_ip = get_client_ip(request)
    service = _tokens(services)
    limiter = state_of(request).limiter
    status_code = 200
    message = ""
    if limiter is not None:
        # The password is checked again: as many tries as the login form allows.
        decision = await limiter.hit(AUTH, client_ip)
        if not decision.allowed:
            message = (
                f"Too many password checks from your address. Wait {decision.retry_after} "
                "seconds and try again."
            )
            status_code = 429
    if not message:
        try:
            created = await service.create(session.auth, form, client_ip)
        except DomainError as exc:
            status_code = status_for(exc)
            message = exc.message[:1].upper() + exc.message[1:] + "."
            if status_code == 401:
                message = "Wrong password: type the password you log in with, then try again."
        else:
            return render(
                request,
                "tokens_created.html",
                {"created": created, "request_base": str(request.base_url).rstrip("/")},
            )
    view = await service.page(session.auth)
    return render(
        request,
        "tokens.html",
        {"view": view, "form": form, "message": message, "revoked": "", "older": None},
        status_code=status_code,
    )


@router.post("/tokens/revoke")
async def revoke_session(request: Request, session: Post, services: ServicesOf) -> Response:
    form_data = await request.form()
    session_id = _text(form_data.get("session_id"), MAX_SESSION_ID)
    current = await _tokens(services).revoke(session.auth, session_id, get_client_ip(request))
    if current:
        response = RedirectResponse("/ui/login?logged_out=1", status_code=303)
        clear_session_cookie(response, request, services)
        return response
    return RedirectResponse(f"/ui/tokens?revoked={session_id[:12]}", status_code=303)
