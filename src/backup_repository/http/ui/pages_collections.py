"""The dashboard (``/ui/``) and the collection page (``/ui/collections/<id>``)."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from backup_repository.http.ui.rendering import render
from backup_repository.http.ui.routing import console_router
from backup_repository.http.ui.session import Page, ServicesOf

router = console_router()


@router.get("/")
async def dashboard(request: Request, session: Page, services: ServicesOf) -> Response:
    found = await services.collections.list_collections(session.auth)
    return render(request, "dashboard.html", {"collections": found})
