"""The audit log (docs/audit.md): ``GET /api/stable/audit`` for system administrators."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from backup_repository.domain.errors import InvalidInput
from backup_repository.http.deps import Auth, ServicesDep
from backup_repository.http.envelope import ok, rfc3339
from backup_repository.http.openapi import responses as openapi
from backup_repository.services.audit import (
    DEFAULT_LIMIT,
    MAX_CURSOR_DIGITS,
    MAX_LIMIT,
    AuditEntry,
    AuditFilters,
    AuditPage,
)
from backup_repository.services.events import Action, Outcome

router = APIRouter(prefix="/api/stable", tags=["audit"])

MAX_NAME = 255
MAX_TIME = 64


# -- response documentation ------------------------------------------------------------------


class _Doc(BaseModel):
    # As in openapi/responses.py: fields may be added later, so extra properties are allowed.
    model_config = ConfigDict(extra="allow")


class AuditEventDoc(_Doc):
    id: int = Field(description="grows with the order of recording")
    at: str = Field(description="RFC 3339, UTC")
    action: str = Field(description="one of: " + ", ".join(a.value for a in Action))
    outcome: str = Field(description="success or failure")
    user: str = Field(description="user name, without the access key; empty when unknown")
    accessKey: str
    clientIp: str
    collection: str
    version: int | None
    size: int | None = Field(description="bytes uploaded, downloaded or deleted")
    reason: str = Field(description="why an upload was refused: auth, window, lock, quota, ...")
    session: str = Field(description="first 12 characters of the session id")
    detail: str


class AuditData(_Doc):
    events: list[AuditEventDoc]
    nextCursor: str | None = Field(
        description="pass as `cursor` for the next, older page; null on the last page"
    )


class AuditEnvelope(_Doc):
    status: Literal[True]
    data: AuditData


# -- the endpoint ----------------------------------------------------------------------------


def parse_time(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 timestamp with its offset (``Z`` or ``+hh:mm``), as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{name}: not an RFC 3339 timestamp, e.g. 2026-11-27T18:00:00Z"
        ) from None
    if parsed.utcoffset() is None:
        raise InvalidInput(f"{name}: the timestamp needs an offset, e.g. Z or +01:00")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{name}: timestamp out of range") from None


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": rfc3339(entry.at),
        "action": entry.action,
        "outcome": entry.outcome,
        "user": entry.user,
        "accessKey": entry.access_key,
        "clientIp": entry.client_ip,
        "collection": entry.collection,
        "version": entry.version,
        "size": entry.size,
        "reason": entry.reason,
        "session": entry.session,
        "detail": entry.detail,
    }


@router.get(
    "/audit",
    responses={**openapi.ok(AuditEnvelope, "Recorded events, newest first"), **openapi.errors(403)},
)
async def audit(
    auth: Auth,
    services: ServicesDep,
    user: Annotated[str | None, Query(max_length=MAX_NAME, description="user name")] = None,
    collection: Annotated[
        str | None, Query(max_length=MAX_NAME, description="collection id")
    ] = None,
    action: Annotated[Action | None, Query()] = None,
    outcome: Annotated[Outcome | None, Query()] = None,
    since: Annotated[
        str | None,
        Query(
            max_length=MAX_TIME,
            description="RFC 3339; events at or after this time",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(
            max_length=MAX_TIME,
            description="RFC 3339; events before this time",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            pattern=rf"^[0-9]{{1,{MAX_CURSOR_DIGITS}}}$",
            description="nextCursor of the previous page",
        ),
    ] = None,
) -> JSONResponse:
    filters = AuditFilters(
        user=user,
        collection=collection,
        action=action,
        outcome=outcome,
        since=parse_time("since", since),
        until=parse_time("until", until),
    )
    result = await services.audit.search(auth, filters, AuditPage(limit, cursor))
    return ok({"events": [entry_json(e) for e in result.entries], "nextCursor": result.next_cursor})
