"""Which versions go when a new one is committed (docs/collections.md)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.domain.identity import Collection, RotationStrategy
from backup_repository.domain.rotation import older_copy_slots, versions_to_rotate
from backup_repository.domain.versions import StoredVersion

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
FIFO = RotationStrategy(name="fifo")


def plus_older(spacing: timedelta | None, copies: int) -> RotationStrategy:
    return RotationStrategy(
        name="fifo-plus-older", keep_last_older_not_more_than=spacing, max_older_copies=copies
    )


def collection(count: int, strategy: RotationStrategy = FIFO) -> Collection:
    return Collection(
        name="db",
        description="",
        filename_template="db-${version}.gpg",
        max_backups_count=count,
        max_one_version_size=100,
        max_collection_size=1000,
        strategy=strategy,
    )


def daily(*numbers: int) -> list[StoredVersion]:
    """Versions uploaded once a day: version n on day n."""
    return [StoredVersion(number=n, size=10, created_at=T0 + (n - 1) * DAY) for n in numbers]


def numbers(found: Sequence[StoredVersion]) -> list[int]:
    return [version.number for version in found]


def upload_daily(c: Collection, days: int) -> list[tuple[list[int], list[int]]]:
    """Upload once a day for ``days`` days; per day (deleted, kept) version numbers."""
    stored: list[StoredVersion] = []
    log = []
    for day in range(1, days + 1):
        now = T0 + (day - 1) * DAY
        rotated = versions_to_rotate(c, stored, now)
        stored = [v for v in stored if v not in rotated]
        stored.append(StoredVersion(number=day, size=10, created_at=now))
        log.append((numbers(rotated), numbers(stored)))
    return log


# --- fifo ----------------------------------------------------------------------------------


def test_fifo_keeps_everything_while_there_is_room() -> None:
    assert versions_to_rotate(collection(5), [], T0) == []
    assert versions_to_rotate(collection(5), daily(1, 2, 3, 4), T0) == []


def test_fifo_deletes_the_oldest_when_full() -> None:
    assert numbers(versions_to_rotate(collection(5), daily(1, 2, 3, 4, 5), T0)) == [1]
    assert numbers(versions_to_rotate(collection(3), daily(4, 7, 9), T0)) == [4]


def test_fifo_orders_by_number_not_by_input_order_or_time() -> None:
    stored = daily(3, 1, 2)
    # Version 1 claims to be the newest by its clock; numbers decide.
    stored[1] = StoredVersion(number=1, size=10, created_at=T0 + 30 * DAY)
    assert numbers(versions_to_rotate(collection(3), stored, T0)) == [1]


def test_fifo_catches_up_after_the_limit_was_lowered() -> None:
    found = versions_to_rotate(collection(2), daily(1, 2, 3, 4, 5), T0)
    assert numbers(found) == [1, 2, 3, 4]


def test_a_single_slot_replaces_the_previous_version() -> None:
    assert numbers(versions_to_rotate(collection(1), daily(8), T0)) == [8]
    older = collection(1, plus_older(DAY, 3))
    assert numbers(versions_to_rotate(older, daily(8, 9), T0)) == [8, 9]


def test_fifo_daily_log() -> None:
    log = upload_daily(collection(3), 6)
    assert log == [
        ([], [1]),
        ([], [1, 2]),
        ([], [1, 2, 3]),
        ([1], [2, 3, 4]),
        ([2], [3, 4, 5]),
        ([3], [4, 5, 6]),
    ]


# --- fifo-plus-older -----------------------------------------------------------------------


def test_worked_example_of_the_documentation() -> None:
    """docs/collections.md: daily uploads, maxBackupsCount 5, maxOlderCopies 2,
    keepLastOlderNotMoreThan 5d."""
    log = upload_daily(collection(5, plus_older(5 * DAY, 2)), 21)
    assert log == [
        ([], [1]),
        ([], [1, 2]),
        ([], [1, 2, 3]),
        ([], [1, 2, 3, 4]),
        ([], [1, 2, 3, 4, 5]),
        ([2], [1, 3, 4, 5, 6]),
        ([3], [1, 4, 5, 6, 7]),
        ([4], [1, 5, 6, 7, 8]),
        ([5], [1, 6, 7, 8, 9]),
        ([7], [1, 6, 8, 9, 10]),
        ([8], [1, 6, 9, 10, 11]),
        ([9], [1, 6, 10, 11, 12]),
        ([10], [1, 6, 11, 12, 13]),
        ([1], [6, 11, 12, 13, 14]),
        ([12], [6, 11, 13, 14, 15]),
        ([13], [6, 11, 14, 15, 16]),
        ([14], [6, 11, 15, 16, 17]),
        ([15], [6, 11, 16, 17, 18]),
        ([6], [11, 16, 17, 18, 19]),
        ([17], [11, 16, 18, 19, 20]),
        ([18], [11, 16, 19, 20, 21]),
    ]


def test_a_run_of_bad_backups_does_not_push_out_every_older_copy() -> None:
    """With fifo, 5 daily versions reach back 4 days; with 2 older copies 5 days apart the
    collection always (after the start) holds a version at least 5 days older than the
    oldest of the recent window."""
    c = collection(5, plus_older(5 * DAY, 2))
    for day, (_, kept) in enumerate(upload_daily(c, 60), start=1):
        if day >= 10:
            assert day - kept[0] >= 5 + 3, (day, kept)
            assert kept[-3:] == [day - 2, day - 1, day]


def test_older_copies_are_spaced_apart() -> None:
    c = collection(6, plus_older(3 * DAY, 3))
    for day, (_, kept) in enumerate(upload_daily(c, 40), start=1):
        older = kept[: len(kept) - 3]
        if day > 12:
            assert len(older) == 3
            assert all(b - a >= 3 for a, b in pairwise(older)), kept


def test_hourly_uploads_with_daily_older_copies() -> None:
    c = collection(4, plus_older(DAY, 2))
    stored: list[StoredVersion] = []
    for hour in range(24 * 5):
        now = T0 + timedelta(hours=hour)
        rotated = versions_to_rotate(c, stored, now)
        stored = [v for v in stored if v not in rotated]
        stored.append(StoredVersion(number=hour + 1, size=1, created_at=now))
        assert len(stored) == min(4, hour + 1)
        if hour >= 48:
            first, second, previous, new = stored
            assert second.created_at - first.created_at == DAY
            assert DAY <= now - first.created_at <= 2 * DAY + timedelta(hours=1)
            assert (previous.number, new.number) == (hour, hour + 1)


def test_without_spacing_or_copies_it_is_fifo() -> None:
    existing = daily(1, 2, 3, 4, 5, 6, 7)
    expected = numbers(versions_to_rotate(collection(4), existing, T0))
    for strategy in (plus_older(None, 2), plus_older(timedelta(0), 2), plus_older(DAY, 0)):
        assert numbers(versions_to_rotate(collection(4, strategy), existing, T0)) == expected


def test_older_copies_leave_the_new_and_previous_version_their_slots() -> None:
    assert older_copy_slots(plus_older(DAY, 5), 4) == 2
    assert older_copy_slots(plus_older(DAY, 1), 4) == 1
    assert older_copy_slots(plus_older(DAY, 5), 2) == 0
    assert older_copy_slots(plus_older(DAY, 5), 1) == 0
    assert older_copy_slots(FIFO, 10) == 0
    kept_after = [
        v.number
        for v in daily(1, 2, 3, 4, 5)
        if v not in versions_to_rotate(collection(3, plus_older(DAY, 5)), daily(1, 2, 3, 4, 5), T0)
    ]
    assert kept_after[-1] == 5
    assert len(kept_after) == 2


# --- arguments -----------------------------------------------------------------------------


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rotation strategy"):
        versions_to_rotate(collection(1, RotationStrategy(name="lifo")), daily(1, 2), T0)
    with pytest.raises(ValueError, match="unknown rotation strategy"):
        versions_to_rotate(collection(5, RotationStrategy(name="lifo")), [], T0)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        versions_to_rotate(collection(2), daily(1), datetime(2024, 5, 1))


def test_duplicate_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        versions_to_rotate(collection(2), daily(1, 1, 2), T0)


# --- invariants ----------------------------------------------------------------------------

strategies = st.one_of(
    st.just(FIFO),
    st.builds(
        plus_older,
        st.one_of(st.none(), st.integers(0, 10 * 24).map(lambda h: timedelta(hours=h))),
        st.integers(0, 6),
    ),
)


@st.composite
def histories(draw: st.DrawFn) -> list[StoredVersion]:
    """Existing versions: increasing numbers with gaps, times roughly increasing."""
    count = draw(st.integers(0, 25))
    number, moment = 0, T0
    found = []
    for _ in range(count):
        number += draw(st.integers(1, 3))
        moment += timedelta(minutes=draw(st.integers(-30, 4 * 24 * 60)))
        found.append(StoredVersion(number=number, size=1, created_at=moment))
    return found


@settings(max_examples=400, deadline=None)
@given(count=st.integers(1, 8), strategy=strategies, existing=histories(), seed=st.integers())
def test_invariants(
    count: int, strategy: RotationStrategy, existing: list[StoredVersion], seed: int
) -> None:
    c = collection(count, strategy)
    now = T0 + timedelta(days=400)
    rotated = versions_to_rotate(c, existing, now)
    kept = [v for v in existing if v not in rotated]
    # Never more than maxBackupsCount after the new version joins, and never fewer than
    # needed: rotation frees exactly the slots the new version needs.
    assert len(kept) + 1 == min(count, len(existing) + 1)
    assert all(v in existing for v in rotated)
    assert numbers(rotated) == sorted(numbers(rotated))
    # The newest existing version stays whenever there is a slot besides the new one.
    if existing and count >= 2:
        assert existing[-1] in kept
    # Deterministic and independent of the input order.
    shuffled = existing[:]
    random.Random(seed).shuffle(shuffled)
    assert versions_to_rotate(c, shuffled, now) == rotated
    assert versions_to_rotate(c, existing, now + timedelta(days=9)) == rotated


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 7),
    strategy=strategies,
    gaps=st.lists(st.integers(1, 3 * 24), min_size=1, max_size=60),
)
def test_applied_at_every_upload(count: int, strategy: RotationStrategy, gaps: list[int]) -> None:
    """A real sequence: every slot is used, the count never exceeds the limit, the new and
    the previous version always stay."""
    c = collection(count, strategy)
    stored: list[StoredVersion] = []
    moment = T0
    for number, gap in enumerate(gaps, start=1):
        moment += timedelta(hours=gap)
        rotated = versions_to_rotate(c, stored, moment)
        stored = [v for v in stored if v not in rotated]
        stored.append(StoredVersion(number=number, size=1, created_at=moment))
        assert len(stored) == min(count, number)
        assert stored[-1].number == number
        if count >= 2 and number >= 2:
            assert stored[-2].number == number - 1
        # Rotating again without a new upload asks for nothing more.
        assert len(versions_to_rotate(c, stored[:-1], moment)) == 0
