"""The event fan-out and the refusal reasons of uploads (services/events.py,
upload_refusals.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from backup_repository.domain.errors import (
    AuthenticationFailed,
    Conflict,
    DependencyUnavailable,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from backup_repository.domain.openpgp import EmptyUpload, NotOpenPGP
from backup_repository.domain.windows import WINDOW_CLOSED, WindowClosed
from backup_repository.services.collections import NOT_AUTHORIZED_UPLOAD
from backup_repository.services.events import (
    Action,
    Event,
    FanOut,
    Outcome,
    RefusalReason,
)
from backup_repository.services.upload_refusals import refusal_reason
from backup_repository.storage.base import StorageError
from support import RecordingSink


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (AuthenticationFailed("expired"), RefusalReason.AUTH),
        (Forbidden(NOT_AUTHORIZED_UPLOAD), RefusalReason.AUTH),
        (WindowClosed(), RefusalReason.WINDOW),
        # A closed window is told by its type, not by its message.
        (Forbidden(WINDOW_CLOSED), RefusalReason.AUTH),
        (Conflict("cannot upload to same collection in parallel"), RefusalReason.LOCK),
        (PayloadTooLarge("filesize reached allowed limit"), RefusalReason.QUOTA),
        (NotOpenPGP("there is no OpenPGP packet"), RefusalReason.OPENPGP),
        (NotFound("cannot find specified collection"), RefusalReason.NOT_FOUND),
        (EmptyUpload(), RefusalReason.INVALID),
        (InvalidInput("invalid Content-Length header"), RefusalReason.INVALID),
        (RequestTimeout("Request took too long"), RefusalReason.TIMEOUT),
        (DependencyUnavailable("storage is unavailable"), RefusalReason.STORAGE),
        (StorageError("disk full"), RefusalReason.STORAGE),
        (ConnectionResetError(), RefusalReason.ABORTED),
    ],
)
def test_refusal_reason(error: BaseException, reason: RefusalReason) -> None:
    assert refusal_reason(error) is reason


class Failing:
    async def emit(self, event: Event) -> None:
        raise RuntimeError("listener broke")


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    first, last = RecordingSink(), RecordingSink()
    fan = FanOut([first, Failing()])
    fan.add(last)
    event = Event(Action.LOGIN, Outcome.FAILURE, user="admin", client_ip="10.0.0.1")
    asyncio.run(fan.emit(event))
    assert first.events == [event]
    assert last.events == [event]
    assert "event listener Failing failed" in caplog.text


class Batches:
    def __init__(self) -> None:
        self.calls: list[list[Event]] = []

    async def emit(self, event: Event) -> None:
        self.calls.append([event])

    async def emit_all(self, events: Sequence[Event]) -> None:
        self.calls.append(list(events))


def test_the_events_of_one_action_go_together_to_who_takes_them_together() -> None:
    plain, batches = RecordingSink(), Batches()
    fan = FanOut([plain, Failing(), batches])
    events = [
        Event(Action.ROTATION_DELETE, Outcome.SUCCESS, collection="db", version=1),
        Event(Action.UPLOAD, Outcome.SUCCESS, collection="db", version=3),
    ]
    asyncio.run(fan.emit_all(events))
    assert plain.events == events
    assert batches.calls == [events]
