"""``ConsoleRoute``: the route class of every console router. Whatever a console handler
(or its dependencies) raises becomes a console answer, never the API's JSON: a missing or
expired session a 303 to the login page, a refused form post and the domain errors an
error page with the status the API would give and what to do next."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backup_repository.domain import errors as domain
from backup_repository.http.deps import get_services
from backup_repository.http.errors import describe_validation_error, status_for
from backup_repository.http.ui.csrf import CsrfRefused
from backup_repository.http.ui.rendering import error_page
from backup_repository.http.ui.session import LoginRequired, clear_session_cookie, login_url

_HINTS = {
    400: "Check what you entered and try again.",
    403: "Your account has no right to this. Ask an administrator for the role you need.",
    404: "It may have been removed or renamed. Go back to the dashboard and pick it again.",
    408: "The request took too long. Try again.",
    409: "Something else changed it meanwhile. Reload the page and try again.",
    416: "The requested part of the file does not exist.",
    503: "A service the server needs is unavailable. Try again in a minute; if it persists, "
    "an administrator should look at /ready.",
}
_TITLES = {
    400: "Invalid request",
    403: "Not allowed",
    404: "Not found",
    408: "Too slow",
    409: "Conflict",
    416: "Range not satisfiable",
    503: "Temporarily unavailable",
}


def _csrf_refused(request: Request, exc: CsrfRefused) -> Response:
    return error_page(
        request,
        403,
        "Form refused",
        f"This form could not be accepted: {exc.reason}.",
        "Go back, reload the page (it gives the form a fresh security token) and send it "
        "again. If you opened the console in several tabs or logged in again meanwhile, use "
        "the newest tab.",
    )


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as exc:
                response = RedirectResponse(login_url(exc.next_path), status_code=303)
                if request.cookies:
                    clear_session_cookie(response, request, get_services(request))
                return response
            except CsrfRefused as exc:
                return _csrf_refused(request, exc)
            except domain.AuthenticationFailed:
                response = RedirectResponse(login_url("/ui/"), status_code=303)
                clear_session_cookie(response, request, get_services(request))
                return response
            except domain.DomainError as exc:
                status = status_for(exc)
                return error_page(
                    request,
                    status,
                    _TITLES.get(status, "Request failed"),
                    exc.message[:1].upper() + exc.message[1:] + ".",
                    _HINTS.get(status, "Try again later."),
                )
            except StarletteHTTPException as exc:
                # What Starlette raises itself while reading a request (a form with a file
                # or too many fields, say).
                detail = exc.detail if isinstance(exc.detail, str) else "request refused"
                return error_page(
                    request,
                    exc.status_code,
                    _TITLES.get(exc.status_code, "Request failed"),
                    detail[:1].upper() + detail[1:] + ("" if detail.endswith(".") else "."),
                    _HINTS.get(exc.status_code, "Go back and try again."),
                )
            except RequestValidationError as exc:
                return error_page(
                    request,
                    400,
                    _TITLES[400],
                    describe_validation_error(exc.errors()),
                    _HINTS[400],
                )

        return console_handler


def console_router() -> APIRouter:
    """A router for console pages: under /ui, kept out of the OpenAPI description, its
    errors answered as console pages."""
    return APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)
