"""``/health`` (liveness) and ``/ready`` (readiness with dependency checks)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from backup_repository.http.deps import ServicesDep, key_accepted, presented_keys
from backup_repository.http.envelope import error, ok
from backup_repository.http.openapi import responses as openapi
from backup_repository.services.health import overall_state, run_checks

router = APIRouter(tags=["health"])

HEALTH_CODE_INVALID = (
    "health code invalid. Should be provided within 'Authorization' header or 'code' query "
    "string. Must match --health-check-key value"
)


@router.get(
    "/health",
    summary="Liveness: the server answers",
    responses={**openapi.ok(openapi.AliveEnvelope), **openapi.errors(unauthorized=False)},
)
async def health() -> JSONResponse:
    return ok(
        {
            "msg": "The server is up and running. Dependent services are not shown there. "
            "Take a look at /ready endpoint"
        }
    )


@router.get(
    "/ready",
    summary="Readiness: database, storage and configuration checks",
    responses={
        **openapi.ok(openapi.HealthEnvelope, "Every check passed"),
        **openapi.errors(403, unauthorized=False),
        500: {
            "model": openapi.FailedHealthEnvelope | openapi.ErrorEnvelope,
            "description": "One of the checks failed (each is listed), or a server fault",
        },
    },
)
async def ready(
    request: Request,
    services: ServicesDep,
    code: Annotated[str | None, Query(max_length=1024)] = None,
) -> JSONResponse:
    expected = services.settings.health_check_key
    if expected and not key_accepted(
        presented_keys(request.headers.get("authorization"), code), expected
    ):
        return error(403, HEALTH_CODE_INVALID)
    timeout = services.settings.storage_health_timeout.total_seconds()
    results = await run_checks(services.readiness, timeout)
    # "state": ok, degraded (passes, with something to fix: still 200) or failed (500).
    data = {"health": [r.as_dict() for r in results], "state": overall_state(results)}
    if not all(r.status for r in results):
        return error(500, "one of checks failed", data)
    return ok(data)
