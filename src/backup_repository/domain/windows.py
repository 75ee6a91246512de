"""Backup windows and the window check of a collection's health (docs/collections.md,
"Backup windows").

A window is a 5-field cron expression, evaluated in UTC, giving its starts, and a duration:
it is open during ``[start, start + duration)``. Every start is found with croniter's
``get_prev``, never by scanning minute by minute.

All starts of one window share its duration, so the latest start at or before ``now`` is
also the one that ends last: when its slot is closed, every earlier slot is closed too, even
when the duration is longer than the time between starts (overlapping slots). Likewise the
most recent slot that has closed by ``now`` is the one of the latest start at or before
``now - duration``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from backup_repository.domain.errors import Forbidden
from backup_repository.domain.identity import BackupWindow

if TYPE_CHECKING:
    from croniter import croniter

_MINUTE = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Parsed expressions, per thread (a croniter is stateful): parsing costs more than finding
# a start, and a page of many collections asks for several starts of each.
_parsed = threading.local()
_MAX_PARSED = 1024


def _schedule(cron: str) -> croniter:
    cache: dict[str, croniter] | None = getattr(_parsed, "cache", None)
    if cache is None:
        cache = _parsed.cache = {}
    found = cache.get(cron)
    if found is None:
        # Imported by the first window (only collections with backup windows need it).
        from croniter import croniter

        if len(cache) >= _MAX_PARSED:
            cache.clear()
        found = cache[cron] = croniter(cron, _EPOCH)
    return found


WINDOW_CLOSED = "backup window does not allow you to send a backup at this time"


class WindowClosed(Forbidden):
    """An upload outside the collection's backup windows by a caller who may not upload
    outside them (403)."""

    def __init__(self, message: str = WINDOW_CLOSED) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class WindowState:
    """The windows of a collection at one moment: open or not, and the slot that is open
    (``opens`` in the past) or, when none is, the next one; both None without windows."""

    open: bool
    opens: datetime | None
    closes: datetime | None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Starts are pure functions of the window and the moment; a page of many collections asks
# for the same ones again (collections sharing a schedule, several rules asking at one
# moment), so the latest answers are kept.
@functools.lru_cache(maxsize=4096)
def next_start(window: BackupWindow, at: datetime) -> datetime:
    """The first start of ``window`` strictly after ``at`` (returned in UTC)."""
    start: datetime = _schedule(window.cron).get_next(datetime, start_time=_utc(at, "at"))
    return start.astimezone(UTC)


def window_state(windows: Sequence[BackupWindow], now: datetime) -> WindowState:
    """Whether a window is open at ``now`` and the slot that matters: the open slot that
    closes last, or else the next slot to open (of two opening together, the longer)."""
    if not windows:
        return WindowState(open=True, opens=None, closes=None)
    open_slots = [slot for w in windows if (slot := current_slot(w, now)) is not None]
    if open_slots:
        start, end = max(open_slots, key=lambda slot: slot[1])
        return WindowState(open=True, opens=start, closes=end)
    upcoming = [(start, start + w.duration) for w in windows for start in [next_start(w, now)]]
    start, end = min(upcoming, key=lambda slot: (slot[0], -slot[1].timestamp()))
    return WindowState(open=False, opens=start, closes=end)


def window_closed(windows: Sequence[BackupWindow], now: datetime) -> WindowClosed:
    """The refusal of an upload at ``now``, outside ``windows``: the reference phrase first,
    then that windows are UTC, when the next one opens and closes, and what to do."""
    state = window_state(windows, now)
    if state.opens is None or state.closes is None:
        return WindowClosed()
    return WindowClosed(
        f"{WINDOW_CLOSED}: backup windows are in UTC (now {_iso(now)}); the next one opens at "
        f"{_iso(state.opens)} and closes at {_iso(state.closes)}; upload then, or ask for "
        f"the uploadsAnytime role on the collection"
    )


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment.astimezone(UTC)


@functools.lru_cache(maxsize=4096)
def latest_start(window: BackupWindow, at: datetime) -> datetime:
    """The latest start of ``window`` at or before ``at`` (timezone-aware; returned in UTC)."""
    moment = _utc(at, "at")
    # Starts fall on whole minutes and get_prev() answers strictly before its base, so ask
    # from the next whole minute to include a start exactly at ``at``.
    next_minute = moment.replace(second=0, microsecond=0) + _MINUTE
    start: datetime = _schedule(window.cron).get_prev(datetime, start_time=next_minute)
    return start.astimezone(UTC)


def current_slot(window: BackupWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """``[start, end)`` of the slot of ``window`` that is open at ``now``, if any."""
    moment = _utc(now, "now")
    start = latest_start(window, moment)
    end = start + window.duration
    return (start, end) if start <= moment < end else None


def is_window_open(windows: Sequence[BackupWindow], now: datetime) -> bool:
    """Whether an upload is allowed at ``now``: always without windows, else while any
    window is open."""
    if not windows:
        return True
    return any(current_slot(window, now) is not None for window in windows)


def last_closed_slot(window: BackupWindow, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the most recent slot of ``window`` with ``end <= now``."""
    moment = _utc(now, "now")
    start = latest_start(window, moment - window.duration)
    return start, start + window.duration


def last_closed_window(
    windows: Sequence[BackupWindow], now: datetime
) -> tuple[datetime, datetime] | None:
    """``[start, end)`` of the most recent slot, over all windows, that has already closed
    (``end <= now``); None without windows. Of two slots ending together the longer one is
    returned (it contains the other)."""
    slots = [last_closed_slot(window, now) for window in windows]
    if not slots:
        return None
    return max(slots, key=lambda slot: (slot[1], -slot[0].timestamp()))


def upload_matches_windows(
    windows: Sequence[BackupWindow], last_upload: datetime | None, now: datetime
) -> bool:
    """The ``BackupWindowValidator`` of a collection's health: true without windows, while
    a window is open (a backup may be on its way), or when the last upload happened inside
    the most recent slot that has closed."""
    if not windows or is_window_open(windows, now):
        return True
    if last_upload is None:
        return False
    slot = last_closed_window(windows, now)
    if slot is None:
        return False
    upload = _utc(last_upload, "last_upload")
    return slot[0] <= upload < slot[1]
