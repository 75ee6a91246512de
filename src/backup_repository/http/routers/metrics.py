"""``/metrics``: the Prometheus text format. When a health check key is set (and the server
was not started with ``--metrics-public``), only for callers that present that key
(``?code=``, or the ``Authorization`` header as the key itself or as ``Bearer <key>``,
which is what Prometheus' ``authorization`` setting sends): the metrics name every
collection with its versions, bytes and last upload time."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from backup_repository.http.deps import ServicesDep, key_accepted, presented_keys
from backup_repository.http.envelope import error
from backup_repository.http.metrics import CONTENT_TYPE
from backup_repository.http.openapi import responses as openapi

router = APIRouter(tags=["health"])

METRICS_KEY_MISSING = (
    "metrics are protected: provide the health check key in the 'Authorization' header "
    "(the key, or 'Bearer <key>') or the 'code' query string; to serve them without a key, "
    "start the server with --metrics-public"
)
METRICS_KEY_INVALID = "health check key invalid: it must match the --health-check-key value"


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format (version 0.0.4); every metric "
            "is described in docs/monitoring.md",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **openapi.errors(403),
    },
)
async def metrics(
    request: Request,
    services: ServicesDep,
    code: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response:
    settings = services.settings
    if settings.metrics_need_key:
        keys = presented_keys(request.headers.get("authorization"), code)
        if not keys:
            return error(401, METRICS_KEY_MISSING, headers={"WWW-Authenticate": "Bearer"})
        if not key_accepted(keys, settings.health_check_key):
            return error(403, METRICS_KEY_INVALID)
    body = await services.metrics.render()
    return Response(body, media_type=CONTENT_TYPE)
