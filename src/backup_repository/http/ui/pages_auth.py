"""Log in and log out. The login form posts user name (or ``user$key``) and password to
``AuthService.login``, rate limited in the API's login bucket; logging out revokes the
session."""

from __future__ import annotations

from datetime import timedelta

from fastapi import Request
from starlette.responses import RedirectResponse, Response

from backup_repository.domain.errors import AuthenticationFailed, InvalidInput, TooBusy
from backup_repository.http.deps import get_client_ip
from backup_repository.http.ratelimit import AUTH
from backup_repository.http.ui import csrf
from backup_repository.http.ui.rendering import render, state_of
from backup_repository.http.ui.routing import console_router
from backup_repository.http.ui.session import (
    DESCRIPTION,
    SESSION_LIFETIME,
    LoginRequired,
    Post,
    ServicesOf,
    clear_session_cookie,
    console_hosts,
    console_session,
    is_secure,
    safe_next,
    set_session_cookie,
)

router = console_router()

LOGIN_PATH = "/ui/login"
MAX_NAME = 512
MAX_PASSWORD = 4096
WRONG_CREDENTIALS = (
    "Wrong user name or password. Check both (an access key logs in as user$key) and try again."
)


def _login_form(
    request: Request,
    services: ServicesOf,
    *,
    next_path: str,
    message: str = "",
    notice: str = "",
    username: str = "",
    status_code: int = 200,
) -> Response:
    token = csrf.new_login_token()
    response = render(
        request,
        "login.html",
        {
            "login_csrf": token,
            "next": next_path,
            "message": message,
            "notice": notice,
            "username": username,
        },
        status_code=status_code,
    )
    response.set_cookie(
        csrf.LOGIN_COOKIE,
        token,
        max_age=3600,
        path=LOGIN_PATH,
        httponly=True,
        samesite="strict",
        secure=is_secure(request, services),
    )
    return response


@router.get("/login")
async def login_page(request: Request, services: ServicesOf) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    try:
        await console_session(request)
    except LoginRequired:
        pass
    else:
        return RedirectResponse(next_path, status_code=303)
    notice = "You are logged out." if request.query_params.get("logged_out") else ""
    return _login_form(request, services, next_path=next_path, notice=notice)


@router.post("/login")
async def login(request: Request, services: ServicesOf) -> Response:
    client_ip = get_client_ip(request)
    form = await request.form(max_files=0, max_fields=16)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    next_path = safe_next(fields.get("next"))
    csrf.check_origin(request, console_hosts(request, services))
    csrf.check_login_token(fields.get(csrf.FIELD), request.cookies.get(csrf.LOGIN_COOKIE))
    username = fields.get("username", "").strip()
    password = fields.get("password", "")
    limiter = state_of(request).limiter
    if limiter is not None:
        decision = await limiter.hit(AUTH, client_ip)
        if not decision.allowed:
            response = _login_form(
                request,
                services,
                next_path=next_path,
                username=username[:MAX_NAME],
                message=f"Too many login attempts from your address. Wait "
                f"{decision.retry_after} seconds and try again.",
                status_code=429,
            )
            response.headers["Retry-After"] = str(decision.retry_after)
            return response
    if not username or not password:
        return _login_form(
            request,
            services,
            next_path=next_path,
            username=username[:MAX_NAME],
            message="Enter both your user name and your password.",
            status_code=400,
        )
    if len(username) > MAX_NAME or len(password) > MAX_PASSWORD:
        return _login_form(
            request,
            services,
            next_path=next_path,
            message=f"The user name may have at most {MAX_NAME} characters and the password "
            f"at most {MAX_PASSWORD}.",
            status_code=400,
        )
    lifetime = min(SESSION_LIFETIME, services.settings.jwt_lifetime)
    try:
        issued, _ = await services.auth.login(
            username, password, client_ip, ttl=lifetime, description=DESCRIPTION
        )
    except (AuthenticationFailed, InvalidInput):
        return _login_form(
            request,
            services,
            next_path=next_path,
            username=username,
            message=WRONG_CREDENTIALS,
            status_code=401,
        )
    except TooBusy:
        return _login_form(
            request,
            services,
            next_path=next_path,
            username=username,
            message="The server is busy checking other logins. Try again in a few seconds.",
            status_code=503,
        )
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(
        response, issued.token, int(lifetime / timedelta(seconds=1)), request, services
    )
    response.delete_cookie(csrf.LOGIN_COOKIE, path=LOGIN_PATH, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, session: Post, services: ServicesOf) -> Response:
    await services.auth.logout(session.auth, None, get_client_ip(request))
    response = RedirectResponse(f"{LOGIN_PATH}?logged_out=1", status_code=303)
    clear_session_cookie(response, request, services)
    return response
