"""What every request of the API goes through, kept cheap: guards that fail when a change
puts work back on the path of each request (docs/benchmarks.md has the figures)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, _IncludedRouter
from starlette.routing import BaseRoute

from backup_repository.http.app import create_app
from support import make_settings


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        if isinstance(route, _IncludedRouter):
            yield from _routes(route.original_router.routes)
        else:
            yield route


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _runs_on_the_loop(call: Any) -> bool:
    if inspect.iscoroutinefunction(call):
        return True
    # A class instance (the Bearer scheme of the OpenAPI description): its __call__.
    return inspect.iscoroutinefunction(type(call).__call__)


def test_the_dependencies_of_api_routes_run_on_the_event_loop(tmp_path: Path) -> None:
    """FastAPI runs a plain function dependency in a worker thread: a trip to a thread and
    back per dependency and request. The dependencies of the API and of the probes are
    coroutines (the web console's pages are left out)."""
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))
    routes = [
        route
        for route in _routes(app.routes)
        if isinstance(route, APIRoute) and not route.path.startswith("/ui")
    ]
    assert len(routes) > 20
    threaded = {
        f"{route.path} {getattr(call, '__name__', type(call).__name__)}"
        for route in routes
        for call in _calls(route.dependant)
        if not _runs_on_the_loop(call)
    }
    assert threaded == set()
