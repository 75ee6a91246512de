"""The console's "page not found": any other path under ``/ui`` gets a console page (with
its title, language and headers) instead of the API's JSON 404. Included last, so every
real page matches first."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from backup_repository.http.ui.rendering import error_page
from backup_repository.http.ui.routing import console_router

router = console_router()


@router.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def not_found(request: Request, path: str) -> Response:
    del path
    return error_page(
        request,
        404,
        "Page not found",
        "There is no console page at this address.",
        "Go to the dashboard (/ui/) and follow the links from there.",
    )
