"""Rendering of console pages: one Jinja2 environment per app (autoescaping on, undefined
names an error), the context every page gets, and the error page.

Jinja2 is imported when the first page is rendered: a server whose console nobody opens
never loads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from backup_repository.domain import authz
from backup_repository.domain.integrity import format_bytes
from backup_repository.domain.roles import Role, grants
from backup_repository.http.ratelimit import RateLimiter

if TYPE_CHECKING:
    from jinja2 import Environment
    from jinja2.runtime import Context
    from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class NavItem:
    """A link of the navigation bar; ``admin`` links show only to a systemAdmin (with a
    token that is not narrowed)."""

    label: str
    href: str
    admin: bool = False


# The navigation slots, in order. A page module's routes live under these paths.
NAVIGATION: tuple[NavItem, ...] = (
    NavItem("Dashboard", "/ui/"),
    NavItem("Tokens", "/ui/tokens"),
    NavItem("Administration", "/ui/admin", admin=True),
)


@dataclass
class ConsoleState:
    """What the console's handlers share, built once per app (``app.state.console_ui``);
    the templates' environment is built at the first page."""

    limiter: RateLimiter | None
    _templates: Environment | None = None

    @property
    def templates(self) -> Environment:
        if self._templates is None:
            self._templates = build_environment()
        return self._templates


def build_environment() -> Environment:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bytes"] = format_bytes
    env.filters["utc"] = format_utc
    env.filters["age"] = format_age
    env.globals["csrf_field"] = pass_context(csrf_field)
    return env


def csrf_field(context: Context) -> Markup:
    """The hidden input with the session's CSRF token that every POST form carries (a
    global of the templates, given their context)."""
    from markupsafe import Markup, escape

    token = escape(context.get("csrf_token", ""))
    return Markup(f'<input type="hidden" name="csrf_token" value="{token}">')  # noqa: S704


def format_utc(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_age(age: timedelta | None) -> str:
    """``3 d 4 h``, ``5 h 2 min``, ``12 min``, ``40 s``."""
    if age is None:
        return "—"
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "in the future"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def state_of(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console_ui
    return state


def is_admin(principal: authz.Principal) -> bool:
    return not principal.is_narrowed and grants(principal.user.roles, Role.SYSTEM_ADMIN)


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The page ``template`` with ``context`` and what every page gets: ``user`` (None on
    the login page), ``csrf_token`` of the session's forms, ``nav`` and ``current``."""
    session = getattr(request.state, "console_session", None)
    principal = session.auth.principal if session is not None else None
    nav = [
        item
        for item in NAVIGATION
        if principal is not None and (not item.admin or is_admin(principal))
    ]
    values: dict[str, Any] = {
        "user": principal,
        "csrf_token": session.csrf_token if session is not None else "",
        "nav": nav,
        "current": request.url.path,
    }
    values.update(context or {})
    html = state_of(request).templates.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code)


def error_page(
    request: Request, status_code: int, title: str, message: str, hint: str
) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"status": status_code, "title": title, "message": message, "hint": hint},
        status_code=status_code,
    )
