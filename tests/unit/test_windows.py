"""Backup windows and the window check of the collection health (docs/collections.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.domain.identity import BackupWindow
from backup_repository.domain.windows import (
    current_slot,
    is_window_open,
    last_closed_slot,
    last_closed_window,
    latest_start,
    upload_matches_windows,
    window_closed,
    window_state,
)

MINUTE = timedelta(minutes=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(cron: str, duration: timedelta) -> BackupWindow:
    return BackupWindow(cron=cron, duration=duration)


NIGHTLY = window("30 0 * * *", timedelta(hours=1))  # 00:30-01:30 every day
REFERENCE = window("*/30 * * * *", timedelta(minutes=30))  # the reference configuration
SHORT = window("*/30 * * * *", timedelta(minutes=5))  # hh:00-hh:05 and hh:30-hh:35


# --- is_window_open ------------------------------------------------------------------------


def test_no_windows_means_always_open() -> None:
    assert is_window_open([], at("2024-05-01T13:37:00"))


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        ("2024-05-01T00:29:59.999999", False),
        ("2024-05-01T00:30:00", True),  # the start belongs to the window
        ("2024-05-01T01:00:00", True),
        ("2024-05-01T01:29:59.999999", True),
        ("2024-05-01T01:30:00", False),  # the end does not
        ("2024-05-01T12:00:00", False),
        ("2024-05-02T00:45:00", True),
    ],
)
def test_nightly_window_edges(moment: str, open_: bool) -> None:
    assert is_window_open([NIGHTLY], at(moment)) is open_


def test_reference_window_is_always_open() -> None:
    start = at("2024-05-01T16:00:00")
    for seconds in range(0, 2 * 3600, 7 * 60 + 13):
        assert is_window_open([REFERENCE], start + timedelta(seconds=seconds))


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        ("2024-05-01T16:00:00", True),
        ("2024-05-01T16:04:59", True),
        ("2024-05-01T16:05:00", False),
        ("2024-05-01T16:29:59", False),
        ("2024-05-01T16:30:00", True),
        ("2024-05-01T16:35:00", False),
    ],
)
def test_short_window_every_half_hour(moment: str, open_: bool) -> None:
    assert is_window_open([SHORT], at(moment)) is open_


def test_any_of_several_windows() -> None:
    noon = window("0 12 * * *", timedelta(minutes=15))
    both = [NIGHTLY, noon]
    assert is_window_open(both, at("2024-05-01T00:40:00"))
    assert is_window_open(both, at("2024-05-01T12:10:00"))
    assert not is_window_open(both, at("2024-05-01T12:15:00"))
    assert not is_window_open(both, at("2024-05-01T06:00:00"))


def test_duration_longer_than_the_period() -> None:
    # Starts every hour, open 90 minutes: the slots overlap, always open.
    overlapping = window("0 * * * *", timedelta(minutes=90))
    for minute in range(0, 300, 11):
        assert is_window_open([overlapping], at("2024-05-01T00:00:00") + minute * MINUTE)
    # Mondays and Tuesdays at midnight for two days: open Monday 00:00 to Thursday 00:00.
    weekly = window("0 0 * * 1,2", timedelta(days=2))
    assert not is_window_open([weekly], at("2024-05-05T23:59:00"))  # Sunday
    assert is_window_open([weekly], at("2024-05-06T00:00:00"))  # Monday
    assert is_window_open([weekly], at("2024-05-08T23:59:59"))  # Wednesday, Tuesday's slot
    assert not is_window_open([weekly], at("2024-05-09T00:00:00"))  # Thursday


def test_other_time_zones_are_converted_to_utc() -> None:
    warsaw = timezone(timedelta(hours=2))
    # 02:45 at UTC+2 is 00:45 UTC: inside the nightly window, which is evaluated in UTC.
    assert is_window_open([NIGHTLY], datetime(2024, 5, 1, 2, 45, tzinfo=warsaw))
    assert not is_window_open([NIGHTLY], datetime(2024, 5, 1, 0, 45, tzinfo=warsaw))


def test_naive_times_are_refused() -> None:
    naive = datetime(2024, 5, 1, 0, 45)
    with pytest.raises(ValueError, match="timezone-aware"):
        is_window_open([NIGHTLY], naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        upload_matches_windows([NIGHTLY], naive, at("2024-05-01T03:00:00"))


# --- starts and slots ----------------------------------------------------------------------


def test_latest_start_includes_the_moment_itself() -> None:
    assert latest_start(NIGHTLY, at("2024-05-01T00:30:00")) == at("2024-05-01T00:30:00")
    assert latest_start(NIGHTLY, at("2024-05-01T00:30:59")) == at("2024-05-01T00:30:00")
    assert latest_start(NIGHTLY, at("2024-05-01T00:29:59")) == at("2024-04-30T00:30:00")
    assert latest_start(NIGHTLY, at("2024-05-01T00:30:00")).tzinfo is UTC


def test_current_slot() -> None:
    assert current_slot(NIGHTLY, at("2024-05-01T01:00:00")) == (
        at("2024-05-01T00:30:00"),
        at("2024-05-01T01:30:00"),
    )
    assert current_slot(NIGHTLY, at("2024-05-01T01:30:00")) is None


def test_last_closed_slot() -> None:
    assert last_closed_slot(NIGHTLY, at("2024-05-01T01:30:00")) == (
        at("2024-05-01T00:30:00"),
        at("2024-05-01T01:30:00"),
    )
    assert last_closed_slot(NIGHTLY, at("2024-05-01T01:29:59")) == (
        at("2024-04-30T00:30:00"),
        at("2024-04-30T01:30:00"),
    )


def test_last_closed_window_without_windows() -> None:
    assert last_closed_window([], at("2024-05-01T00:00:00")) is None


def test_last_closed_window_over_several_windows() -> None:
    noon = window("0 12 * * *", timedelta(minutes=15))
    assert last_closed_window([NIGHTLY, noon], at("2024-05-01T15:00:00")) == (
        at("2024-05-01T12:00:00"),
        at("2024-05-01T12:15:00"),
    )
    assert last_closed_window([NIGHTLY, noon], at("2024-05-01T03:00:00")) == (
        at("2024-05-01T00:30:00"),
        at("2024-05-01T01:30:00"),
    )
    # While the noon window is open, the night's is the last closed one.
    assert last_closed_window([NIGHTLY, noon], at("2024-05-01T12:05:00")) == (
        at("2024-05-01T00:30:00"),
        at("2024-05-01T01:30:00"),
    )


def test_last_closed_window_prefers_the_longer_of_two_ending_together() -> None:
    long_ = window("0 0 * * *", timedelta(hours=2))
    short = window("0 1 * * *", timedelta(hours=1))
    expected = (at("2024-05-01T00:00:00"), at("2024-05-01T02:00:00"))
    assert last_closed_window([short, long_], at("2024-05-01T05:00:00")) == expected
    assert last_closed_window([long_, short], at("2024-05-01T05:00:00")) == expected


def test_last_closed_window_with_overlapping_slots() -> None:
    weekly = window("0 0 * * 1,2", timedelta(days=2))
    # Friday: Tuesday's slot (to Thursday 00:00) closed last.
    assert last_closed_window([weekly], at("2024-05-10T12:00:00")) == (
        at("2024-05-07T00:00:00"),
        at("2024-05-09T00:00:00"),
    )
    # Wednesday: Monday's slot closed, Tuesday's is still open.
    assert last_closed_window([weekly], at("2024-05-08T12:00:00")) == (
        at("2024-05-06T00:00:00"),
        at("2024-05-08T00:00:00"),
    )


def test_long_durations_cost_no_scan() -> None:
    every_minute_for_a_month = window("* * * * *", timedelta(days=30))
    rare = window("0 0 1 1 *", timedelta(days=300))
    started = time.perf_counter()
    for _ in range(50):
        last_closed_window([every_minute_for_a_month, rare], at("2024-05-01T00:00:00"))
        is_window_open([every_minute_for_a_month, rare], at("2024-05-01T00:00:00"))
    assert time.perf_counter() - started < 2.0
    assert last_closed_slot(rare, at("2024-12-01T00:00:00")) == (
        at("2024-01-01T00:00:00"),
        at("2024-01-01T00:00:00") + timedelta(days=300),
    )


# --- upload_matches_windows (BackupWindowValidator) ----------------------------------------


def test_no_windows_always_match() -> None:
    assert upload_matches_windows([], None, at("2024-05-01T00:00:00"))


def test_open_window_matches_even_without_uploads() -> None:
    assert upload_matches_windows([NIGHTLY], None, at("2024-05-01T01:00:00"))


def test_no_upload_and_no_open_window() -> None:
    assert not upload_matches_windows([NIGHTLY], None, at("2024-05-01T03:00:00"))


@pytest.mark.parametrize(
    ("upload", "matches"),
    [
        ("2024-05-01T00:30:00", True),
        ("2024-05-01T01:29:59", True),
        ("2024-05-01T01:30:00", False),  # after the window closed
        ("2024-05-01T00:29:59", False),
        ("2024-04-30T00:45:00", False),  # yesterday's window
    ],
)
def test_upload_inside_the_last_closed_window(upload: str, matches: bool) -> None:
    assert upload_matches_windows([NIGHTLY], at(upload), at("2024-05-01T09:00:00")) is matches


def test_reference_cases() -> None:
    """The cases of the reference's own BackupWindowValidator test, at 16:00 UTC."""
    now = at("2021-05-01T16:00:00")
    # "30 * * * *" + 5m, last upload 15:34: inside 15:30-15:35, the last closed slot.
    assert upload_matches_windows(
        [window("30 * * * *", timedelta(minutes=5))], now - timedelta(minutes=26), now
    )
    # "*/30 * * * *" + 5m at 16:10, upload at 16:05: the 16:00 slot ended at 16:05.
    later = now + timedelta(minutes=10)
    assert not upload_matches_windows([SHORT], now + timedelta(minutes=5), later)
    assert upload_matches_windows([SHORT], now + timedelta(minutes=4), later)


def test_several_windows_ask_for_the_most_recent_closed_one() -> None:
    noon = window("0 12 * * *", timedelta(minutes=15))
    night_upload = at("2024-05-01T00:40:00")
    assert upload_matches_windows([NIGHTLY, noon], night_upload, at("2024-05-01T11:00:00"))
    assert not upload_matches_windows([NIGHTLY, noon], night_upload, at("2024-05-01T15:00:00"))
    noon_upload = at("2024-05-01T12:01:00")
    assert upload_matches_windows([NIGHTLY, noon], noon_upload, at("2024-05-01T15:00:00"))


# --- against a minute-by-minute oracle -----------------------------------------------------

CRONS = ["*/30 * * * *", "30 0 * * *", "0 */6 * * *", "15 3 * * 1-5", "*/7 2-4 * * *", "0 0 * * 0"]


def oracle_open(cron: str, duration: timedelta, now: datetime) -> bool:
    """Open when some start lies in (now - duration, now], found minute by minute."""
    minute = now.replace(second=0, microsecond=0)
    while minute > now - duration:
        if croniter.match(cron, minute):
            return True
        minute -= MINUTE
    return False


@settings(max_examples=200, deadline=None)
@given(
    cron=st.sampled_from(CRONS),
    minutes=st.integers(1, 6 * 60),
    now=st.datetimes(
        min_value=datetime(2023, 1, 1),
        max_value=datetime(2026, 1, 1),
        timezones=st.just(UTC),
    ),
)
def test_open_agrees_with_a_minute_scan(cron: str, minutes: int, now: datetime) -> None:
    duration = timedelta(minutes=minutes)
    assert is_window_open([window(cron, duration)], now) is oracle_open(cron, duration, now)
    start, end = last_closed_slot(window(cron, duration), now)
    assert end <= now
    assert croniter.match(cron, start)
    # The next start (found forwards, by get_next) has not closed yet.
    following: datetime = croniter(cron, start).get_next(datetime)
    assert following + duration > now


# --- window_state and the refusal message ----------------------------------------------------


def test_window_state_without_windows_is_open_with_no_times() -> None:
    state = window_state([], at("2026-11-27T12:00:00"))
    assert (state.open, state.opens, state.closes) == (True, None, None)


def test_window_state_while_open_gives_the_open_slot() -> None:
    state = window_state([NIGHTLY], at("2026-11-27T01:00:00"))
    assert state.open
    assert (state.opens, state.closes) == (at("2026-11-27T00:30:00"), at("2026-11-27T01:30:00"))


def test_window_state_while_closed_gives_the_next_slot_of_all_windows() -> None:
    early = window("0 3 * * *", timedelta(minutes=10))
    state = window_state([NIGHTLY, early], at("2026-11-27T01:30:00"))  # NIGHTLY just closed
    assert not state.open
    assert (state.opens, state.closes) == (at("2026-11-27T03:00:00"), at("2026-11-27T03:10:00"))
    state = window_state([NIGHTLY, early], at("2026-11-27T03:10:00"))
    assert (state.opens, state.closes) == (at("2026-11-28T00:30:00"), at("2026-11-28T01:30:00"))


def test_the_refusal_says_utc_and_the_next_slot_after_the_reference_phrase() -> None:
    message = window_closed([NIGHTLY], at("2026-11-27T12:00:00")).message
    assert message.startswith("backup window does not allow you to send a backup at this time: ")
    assert "windows are in UTC (now 2026-11-27T12:00:00Z)" in message
    assert "opens at 2026-11-28T00:30:00Z and closes at 2026-11-28T01:30:00Z" in message
