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
    emit_kept,
    keeps_rows,
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


class KeepsRows(Batches):
    """A listener that keeps rows, as the audit log does."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[tuple[list[Event], Exception | None]] = []

    def keeps_rows(self) -> bool:
        return True

    async def emit_kept(self, events: Sequence[Event], failure: Exception | None = None) -> None:
        self.kept.append((list(events), failure))


def test_rows_kept_by_the_action_reach_the_row_keeper_as_kept_and_the_others_as_usual() -> None:
    """An upload writes its audit rows in its own commit when a listener keeps rows: that
    listener is told they are written (or why they could not be), every other one gets the
    events as from emit_all."""
    plain, batches, keeper = RecordingSink(), Batches(), KeepsRows()
    assert not keeps_rows(FanOut([plain, batches]))
    fan = FanOut([plain, Failing(), batches])
    fan.add(keeper)
    assert keeps_rows(fan)
    assert keeps_rows(keeper)
    events = [
        Event(Action.ROTATION_DELETE, Outcome.SUCCESS, collection="db", version=1),
        Event(Action.UPLOAD, Outcome.SUCCESS, collection="db", version=3),
    ]
    asyncio.run(emit_kept(fan, events))
    broken = RuntimeError("no such table: audit_events")
    asyncio.run(emit_kept(fan, events, broken))
    assert plain.events == events + events
    assert batches.calls == [events, events]
    assert keeper.calls == []
    assert keeper.kept == [(events, None), (events, broken)]
    # A sink that keeps no rows gets them as from emit_all.
    alone = Batches()
    asyncio.run(emit_kept(alone, events))
    assert alone.calls == [events]
