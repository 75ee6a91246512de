"""The web console under ``/ui``: server-rendered pages (Jinja2) for operators, served by
the API server itself, on the same origin and under the same authorization rules. It
never decrypts anything and never asks for a key.

``install(app, limiter)`` (called by the composition root) includes every page router,
serves ``static/`` under ``/ui/static/`` and adds the security headers middleware.

Adding a page
-------------

1. Write the view model in ``services/`` (no HTTP there; e.g. ``services/console.py``),
   reaching other services only (never re-implementing a rule of ``domain/authz.py``).
2. Write a thin handler module ``http/ui/pages_<name>.py``::

       from backup_repository.http.ui.rendering import render
       from backup_repository.http.ui.routing import console_router
       from backup_repository.http.ui.session import Page, Post, ServicesOf

       router = console_router()          # prefix /ui, errors as console pages

       @router.get("/tokens")
       async def tokens(request: Request, session: Page, services: ServicesOf) -> Response:
           ...                              # session.auth is the AuthContext
           return render(request, "tokens.html", {"sessions": ...})

       @router.post("/tokens/revoke")
       async def revoke(request: Request, session: Post, services: ServicesOf) -> Response:
           form = await request.form()      # CSRF and origin already checked by ``Post``
           ...
           return RedirectResponse("/ui/tokens", status_code=303)

   ``Page`` redirects to the login page (303, with ``next``) without a valid session;
   ``Post`` also refuses (403 page) a post without the session's CSRF token. Domain errors
   become error pages with the API's status (``routing.ConsoleRoute``).
3. Write the template ``templates/<name>.html``::

       {% extends "base.html" %}
       {% block title %}Tokens{% endblock %}
       {% block content %}
         <h1>Tokens</h1>
         <form method="post" action="/ui/tokens/revoke">
           {{ csrf_field() }}
           ...
         </form>
       {% endblock %}

   Every page gets ``user`` (the ``authz.Principal``), ``csrf_token``, ``nav`` and
   ``current``; ``csrf_field()`` (a macro of base.html) is the hidden input every POST
   form carries. No inline ``<script>``, ``<style>`` or ``style=`` (the CSP forbids them):
   classes of ``static/console.css``, behaviour in a file of ``static/`` loaded with
   ``{% block scripts %}<script src="/ui/static/x.js" defer></script>{% endblock %}``.
4. Add the module's ``router`` to ``ROUTERS`` below. The navigation bar's links are
   ``rendering.NAVIGATION`` ("Dashboard", "Tokens", "Administration"; the last one only
   for a systemAdmin).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.staticfiles import StaticFiles

from backup_repository.http.ratelimit import RateLimiter
from backup_repository.http.ui import (
    pages_admin,
    pages_auth,
    pages_collections,
    pages_missing,
    pages_tokens,
)
from backup_repository.http.ui.headers import ConsoleHeadersMiddleware
from backup_repository.http.ui.rendering import STATIC, ConsoleState

ROUTERS: tuple[APIRouter, ...] = (
    pages_auth.router,
    pages_collections.router,
    pages_tokens.router,
    pages_admin.router,
    # Last: any other path under /ui is a console 404 page.
    pages_missing.router,
)


def install(app: FastAPI, limiter: RateLimiter | None) -> None:
    """Serve the console on ``app``; ``limiter`` counts login attempts in the API's login
    bucket."""
    app.state.console_ui = ConsoleState(limiter)
    # The static files first: the last router answers every other path under /ui.
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(ConsoleHeadersMiddleware)
