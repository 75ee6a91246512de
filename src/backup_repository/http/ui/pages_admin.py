"""The administration pages (``/ui/admin``), for system administrators: the audit log with
its filters, the configuration problems, the readiness checks, and the users and
collections as loaded (docs/console.md, "Administration"). Anyone else gets 403 (and no
link in the navigation). The view models are in ``services/console_admin.py``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from starlette.responses import Response

from backup_repository.domain.errors import InvalidInput
from backup_repository.http.deps import Services
from backup_repository.http.ui.rendering import render
from backup_repository.http.ui.routing import console_router
from backup_repository.http.ui.session import Page, ServicesOf
from backup_repository.services.audit import MAX_CURSOR_DIGITS
from backup_repository.services.console_admin import (
    AuditForm,
    AuditView,
    ConsoleAdminService,
)
from backup_repository.services.events import Action, Outcome

router = console_router()

MAX_NAME = 255
MAX_TIME = 64


def _admin(services: Services) -> ConsoleAdminService:
    return ConsoleAdminService(
        services.config,
        services.audit,
        services.readiness,
        services.settings.storage_health_timeout.total_seconds(),
    )


@router.get("/admin")
async def admin_home(request: Request, session: Page, services: ServicesOf) -> Response:
    configuration = _admin(services).configuration(session.auth)
    return render(request, "admin.html", {"configuration": configuration})


@router.get("/admin/audit")
async def admin_audit(
    request: Request,
    session: Page,
    services: ServicesOf,
    action: Annotated[str, Query(max_length=32)] = "",
    outcome: Annotated[str, Query(max_length=16)] = "",
    user: Annotated[str, Query(max_length=MAX_NAME)] = "",
    collection: Annotated[str, Query(max_length=MAX_NAME)] = "",
    since: Annotated[str, Query(max_length=MAX_TIME)] = "",
    until: Annotated[str, Query(max_length=MAX_TIME)] = "",
    cursor: Annotated[str, Query(pattern=rf"^[0-9]{{0,{MAX_CURSOR_DIGITS}}}$")] = "",
) -> Response:
    form = AuditForm(action, outcome, user, collection, since, until)
    message = ""
    status_code = 200
    try:
        view = await _admin(services).audit(session.auth, form, cursor or None)
    except InvalidInput as exc:
        # The form stays as typed, with what to correct; no entries until it is.
        message = exc.message[:1].upper() + exc.message[1:] + "."
        status_code = 400
        view = AuditView((), None)
    query = {k: v for k, v in vars(form).items() if v}
    return render(
        request,
        "admin_audit.html",
        {
            "form": form,
            "view": view,
            "message": message,
            "actions": [a.value for a in Action],
            "outcomes": [o.value for o in Outcome],
            "query": query,
            "paged": bool(cursor),
        },
        status_code=status_code,
    )


@router.get("/admin/problems")
async def admin_problems(request: Request, session: Page, services: ServicesOf) -> Response:
    configuration = _admin(services).configuration(session.auth)
    return render(request, "admin_problems.html", {"configuration": configuration})


@router.get("/admin/readiness")
async def admin_readiness(request: Request, session: Page, services: ServicesOf) -> Response:
    readiness = await _admin(services).readiness(session.auth)
    return render(request, "admin_readiness.html", {"readiness": readiness})


@router.get("/admin/users")
async def admin_users(request: Request, session: Page, services: ServicesOf) -> Response:
    configuration = _admin(services).configuration(session.auth)
    return render(request, "admin_users.html", {"configuration": configuration})


@router.get("/admin/collections")
async def admin_collections(request: Request, session: Page, services: ServicesOf) -> Response:
    configuration = _admin(services).configuration(session.auth)
    return render(request, "admin_collections.html", {"configuration": configuration})
