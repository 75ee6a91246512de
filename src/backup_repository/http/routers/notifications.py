"""Notification operations (docs/notifications.md, "Operations"), for system
administrators: the outbox, the current conditions, and a test message to a channel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from backup_repository.domain.notifications import Condition
from backup_repository.http.deps import Auth, ServicesDep
from backup_repository.http.envelope import ok, rfc3339
from backup_repository.http.openapi import responses as openapi
from backup_repository.services.notifications import (
    DEFAULT_OUTBOX_LIMIT,
    MAX_CURSOR_DIGITS,
    MAX_OUTBOX_LIMIT,
    CollectionStates,
)
from backup_repository.services.ports import OutboxEntry

router = APIRouter(prefix="/api/stable/notifications", tags=["notifications"])

MAX_NAME = 255


# -- response documentation ------------------------------------------------------------------


class _Doc(BaseModel):
    # As in openapi/responses.py: fields may be added later, so extra properties are allowed.
    model_config = ConfigDict(extra="allow")


class EventDoc(_Doc):
    id: str = Field(description="the same for every delivery of the event (drop duplicates)")
    type: str = Field(description="missing, suspicious, limits, integrity, recovered or test")
    condition: str = Field(
        description="the condition the event is about; for recovered, the one that cleared"
    )
    collection: str
    occurredAt: str = Field(description="RFC 3339, UTC")
    summary: str
    facts: dict[str, Any]
    reminder: bool


class OutboxEntryDoc(_Doc):
    id: int = Field(description="grows with the order of queueing")
    channel: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    nextAttemptAt: str | None = Field(description="RFC 3339; for pending rows")
    createdAt: str
    deliveredAt: str | None
    lastError: str
    event: EventDoc


class OutboxData(_Doc):
    entries: list[OutboxEntryDoc]
    nextCursor: str | None = Field(
        description="pass as `cursor` for the next, older page; null on the last page"
    )


class OutboxEnvelope(_Doc):
    status: Literal[True]
    data: OutboxData


class ConditionDoc(_Doc):
    condition: str = Field(description=", ".join(c.value for c in Condition))
    failing: bool
    since: str = Field(description="RFC 3339: when it began failing (or stopped)")
    lastAnnouncedAt: str | None
    lastEventId: str | None
    facts: dict[str, Any]


class CollectionStateDoc(_Doc):
    collection: str
    channels: list[str] = Field(description="channels subscribed to any of its events")
    conditions: list[ConditionDoc] = Field(
        description="the conditions judged so far; empty before the first evaluation"
    )


class StateData(_Doc):
    collections: list[CollectionStateDoc]


class StateEnvelope(_Doc):
    status: Literal[True]
    data: StateData


class TestData(_Doc):
    channel: str
    eventId: str
    delivered: bool = Field(description="whether the channel took the test message")
    error: str = Field(description="why not; empty when delivered")


class TestEnvelope(_Doc):
    status: Literal[True]
    data: TestData


# -- the endpoints ---------------------------------------------------------------------------


def outbox_json(entry: OutboxEntry) -> dict[str, Any]:
    event = entry.event
    return {
        "id": entry.id,
        "channel": entry.channel,
        "status": entry.status,
        "attempts": entry.attempts,
        "nextAttemptAt": rfc3339(entry.next_attempt_at) if entry.status == "pending" else None,
        "createdAt": rfc3339(entry.created_at),
        "deliveredAt": rfc3339(entry.delivered_at),
        "lastError": entry.last_error,
        "event": {
            "id": event.id,
            "type": event.type.value,
            "condition": event.condition,
            "collection": event.collection,
            "occurredAt": rfc3339(event.occurred_at),
            "summary": event.summary,
            "facts": dict(event.facts),
            "reminder": event.reminder,
        },
    }


def state_json(states: CollectionStates) -> dict[str, Any]:
    return {
        "collection": states.collection,
        "channels": list(states.channels),
        "conditions": [
            {
                "condition": s.condition.value,
                "failing": s.failing,
                "since": rfc3339(s.since),
                "lastAnnouncedAt": rfc3339(s.last_announced_at),
                "lastEventId": s.last_event_id,
                "facts": s.facts,
            }
            for s in states.states
        ],
    }


@router.get(
    "/outbox",
    responses={
        **openapi.ok(OutboxEnvelope, "Queued notifications, newest first"),
        **openapi.errors(403),
    },
)
async def outbox(
    auth: Auth,
    services: ServicesDep,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_OUTBOX_LIMIT)] = DEFAULT_OUTBOX_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            pattern=rf"^[0-9]{{1,{MAX_CURSOR_DIGITS}}}$",
            description="nextCursor of the previous page",
        ),
    ] = None,
) -> JSONResponse:
    page = await services.notifications.outbox_page(auth, status, limit, cursor)
    return ok({"entries": [outbox_json(e) for e in page.entries], "nextCursor": page.next_cursor})


@router.get(
    "/state",
    responses={
        **openapi.ok(StateEnvelope, "The conditions of every configured collection"),
        **openapi.errors(403),
    },
)
async def state(auth: Auth, services: ServicesDep) -> JSONResponse:
    collections = await services.notifications.current_states(auth)
    return ok({"collections": [state_json(c) for c in collections]})


@router.post(
    "/channels/{name}/test",
    responses={
        **openapi.ok(TestEnvelope, "Whether the channel took the test message"),
        **openapi.errors(403, 404),
    },
)
async def test_channel(
    auth: Auth,
    services: ServicesDep,
    name: Annotated[str, Path(min_length=1, max_length=MAX_NAME)],
) -> JSONResponse:
    result = await services.notifications.send_test(auth, name)
    return ok(
        {
            "channel": result.channel,
            "eventId": result.event_id,
            "delivered": result.delivered,
            "error": result.error,
        }
    )
