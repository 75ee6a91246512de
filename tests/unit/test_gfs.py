"""The gfs rotation strategy (docs/collections.md, "gfs"): Proxmox Backup Server's prune
rules, its documented test cases, the cap of maxBackupsCount, time zones, invariants, and
the worked examples of the documentation."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.domain.identity import Collection, RotationStrategy
from backup_repository.domain.rotation import (
    Decision,
    KeepRule,
    decide,
    versions_to_rotate,
)
from backup_repository.domain.versions import StoredVersion

DOCS = Path(__file__).resolve().parents[2] / "docs" / "collections.md"


def gfs(
    last: int = 0,
    hourly: int = 0,
    daily: int = 0,
    weekly: int = 0,
    monthly: int = 0,
    yearly: int = 0,
    zone: str = "UTC",
) -> RotationStrategy:
    return RotationStrategy(
        name="gfs",
        keep_last=last,
        keep_hourly=hourly,
        keep_daily=daily,
        keep_weekly=weekly,
        keep_monthly=monthly,
        keep_yearly=yearly,
        time_zone=zone,
    )


def collection(strategy: RotationStrategy, count: int = 100) -> Collection:
    return Collection(
        name="db",
        description="",
        filename_template="db-${version}.gpg",
        max_backups_count=count,
        max_one_version_size=100,
        max_collection_size=100_000,
        strategy=strategy,
    )


def at(*stamps: str) -> list[StoredVersion]:
    """Versions created at the given UTC times (``2019-12-02T11:59:15``), numbered in
    order (the list is oldest first)."""
    return [
        StoredVersion(
            number=n, size=10, created_at=datetime.fromisoformat(stamp).replace(tzinfo=UTC)
        )
        for n, stamp in enumerate(stamps, start=1)
    ]


def kept_stamps(strategy: RotationStrategy, versions: list[StoredVersion]) -> list[str]:
    """The creation times of what stays, oldest first, as written in :func:`at`."""
    return sorted(
        d.version.created_at.strftime("%Y-%m-%dT%H:%M:%S")
        for d in decide(collection(strategy), versions)
        if d.kept
    )


# --- Proxmox Backup Server's own test cases (tests/prune.rs) ---------------------------------

SIMPLE = at(
    "2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15", "2019-12-04T12:59:15"
)
SIMPLE2 = at(
    "2018-11-15T11:59:15",
    "2019-11-15T11:59:15",
    "2019-11-21T11:59:15",
    "2019-11-22T11:59:15",
    "2019-11-29T11:59:15",
    "2019-12-01T11:59:15",
    "2019-12-02T11:59:15",
    "2019-12-03T11:59:15",
    "2019-12-04T11:59:15",
)
HOURLY = at(
    "2019-11-15T09:39:15",
    "2019-11-15T10:49:15",
    "2019-11-15T10:59:15",
    "2019-11-15T11:39:15",
    "2019-11-15T11:49:15",
    "2019-11-15T11:59:15",
)
ALL_SIMPLE = ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15"]
LAST_SIMPLE = ["2019-12-04T12:59:15"]


@pytest.mark.parametrize(
    ("versions", "strategy", "kept"),
    [
        (SIMPLE, gfs(last=4), [*ALL_SIMPLE, *LAST_SIMPLE]),
        (SIMPLE, gfs(last=3), [*ALL_SIMPLE[1:], *LAST_SIMPLE]),
        (SIMPLE, gfs(last=2), [ALL_SIMPLE[2], *LAST_SIMPLE]),
        (SIMPLE, gfs(last=1), LAST_SIMPLE),
        (SIMPLE, gfs(last=2, daily=2), [*ALL_SIMPLE, *LAST_SIMPLE]),
        (SIMPLE, gfs(daily=3), [*ALL_SIMPLE[:2], *LAST_SIMPLE]),
        (SIMPLE, gfs(daily=2), [ALL_SIMPLE[1], *LAST_SIMPLE]),
        # All in one ISO week, one month, one year: one version stays.
        (SIMPLE, gfs(weekly=5), LAST_SIMPLE),
        (SIMPLE, gfs(daily=1, weekly=5), LAST_SIMPLE),
        (SIMPLE, gfs(monthly=6), LAST_SIMPLE),
        (SIMPLE, gfs(yearly=7), LAST_SIMPLE),
        (SIMPLE, gfs(weekly=5, monthly=6, yearly=7), LAST_SIMPLE),
        (SIMPLE2, gfs(daily=1), ["2019-12-04T11:59:15"]),
        (SIMPLE2, gfs(last=1, daily=1), ["2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
        # 2019-12-01 is a Sunday: the ISO week before that of 2019-12-02..04.
        (SIMPLE2, gfs(daily=1, weekly=1), ["2019-12-01T11:59:15", "2019-12-04T11:59:15"]),
        # Not 2019-11-29: keepWeekly marked it as not kept (an older version of the week it
        # kept 2019-12-01 for), so keepMonthly skips it and keeps 2019-11-22 for November.
        (
            SIMPLE2,
            gfs(daily=1, weekly=1, monthly=1),
            ["2019-11-22T11:59:15", "2019-12-01T11:59:15", "2019-12-04T11:59:15"],
        ),
        (SIMPLE2, gfs(monthly=1, yearly=1), ["2018-11-15T11:59:15", "2019-12-04T11:59:15"]),
        (
            HOURLY,
            gfs(hourly=3),
            ["2019-11-15T09:39:15", "2019-11-15T10:59:15", "2019-11-15T11:59:15"],
        ),
        (HOURLY, gfs(hourly=2), ["2019-11-15T10:59:15", "2019-11-15T11:59:15"]),
    ],
)
def test_proxmox_backup_server_cases(
    versions: list[StoredVersion], strategy: RotationStrategy, kept: list[str]
) -> None:
    assert kept_stamps(strategy, versions) == kept


def test_each_version_names_the_rule_and_period_that_keep_it() -> None:
    decisions = decide(collection(gfs(daily=1, weekly=1, monthly=1)), SIMPLE2)
    found = {d.version.number: (d.rule, d.period, d.kept) for d in decisions}
    assert found[9] == (KeepRule.DAILY, "2019-12-04", True)
    assert found[6] == (KeepRule.WEEKLY, "2019-W48", True)
    assert found[4] == (KeepRule.MONTHLY, "2019-11", True)
    assert found[5] == (None, None, False)
    assert [d.version.number for d in decisions] == list(range(9, 0, -1))
    last = decide(collection(gfs(last=1, yearly=2)), SIMPLE2)
    assert (last[0].rule, last[0].period) == (KeepRule.LAST, None)
    assert (last[-1].rule, last[-1].period) == (KeepRule.YEARLY, "2018")


# --- weeks, time zones ---------------------------------------------------------------------


def test_iso_weeks_cross_the_new_year() -> None:
    # Thursday 2020-12-31 and Sunday 2021-01-03 are both in ISO week 2020-W53; Monday
    # 2021-01-04 starts 2021-W01.
    versions = at("2020-12-31T10:00:00", "2021-01-03T10:00:00", "2021-01-04T10:00:00")
    decisions = decide(collection(gfs(weekly=5)), versions)
    assert [(d.version.number, d.period) for d in decisions if d.kept] == [
        (3, "2021-W01"),
        (2, "2020-W53"),
    ]


def test_periods_are_counted_in_the_time_zone() -> None:
    # 23:30 and 00:30 UTC are two days in UTC, one in Warsaw (UTC+1 in winter).
    versions = at("2026-01-14T23:30:00", "2026-01-15T00:30:00")
    assert len(kept_stamps(gfs(daily=5), versions)) == 2
    warsaw = decide(collection(gfs(daily=5, zone="Europe/Warsaw")), versions)
    assert [(d.version.number, d.period) for d in warsaw if d.kept] == [(2, "2026-01-15")]
    # And the other way round: 22:30 and 23:30 UTC on one UTC day, two days in Warsaw.
    evening = at("2026-01-15T22:30:00", "2026-01-15T23:30:00")
    assert len(kept_stamps(gfs(daily=5), evening)) == 1
    assert len(kept_stamps(gfs(daily=5, zone="Europe/Warsaw"), evening)) == 2


def test_the_hour_repeated_when_clocks_go_back_is_one_hour() -> None:
    # 2026-10-25 in Warsaw: 02:00-03:00 CEST (00:xx UTC), then 02:00-03:00 CET (01:xx UTC).
    versions = at("2026-10-25T00:30:00", "2026-10-25T01:30:00")
    decisions = decide(collection(gfs(hourly=5, zone="Europe/Warsaw")), versions)
    assert [(d.version.number, d.period) for d in decisions if d.kept] == [(2, "2026-10-25T02")]


# --- maxBackupsCount -----------------------------------------------------------------------


def test_max_backups_count_rotates_the_oldest_of_what_the_rules_keep() -> None:
    versions = daily_versions(datetime(2026, 3, 1, 4, tzinfo=UTC), 10)
    decisions = decide(collection(gfs(last=2, daily=5), count=4), versions)
    assert [(d.version.number, d.kept, d.over_count) for d in decisions] == [
        (10, True, False),
        (9, True, False),
        (8, True, False),
        (7, True, False),
        (6, False, True),
        (5, False, True),
        (4, False, True),
        (3, False, False),
        (2, False, False),
        (1, False, False),
    ]
    assert {d.rule for d in decisions if d.over_count} == {KeepRule.DAILY}


def test_with_every_keep_at_zero_it_is_fifo() -> None:
    versions = daily_versions(datetime(2026, 3, 1, 4, tzinfo=UTC), 6)
    decisions = decide(collection(gfs(), count=4), versions)
    assert [d.version.number for d in decisions if d.kept] == [6, 5, 4, 3]


# --- the upload pipeline's question --------------------------------------------------------


def test_the_new_version_pushes_out_the_one_of_its_own_day() -> None:
    morning = datetime(2026, 3, 2, 6, tzinfo=UTC)
    existing = daily_versions(datetime(2026, 2, 27, 6, tzinfo=UTC), 3)  # 27, 28 Feb, 1 Mar
    c = collection(gfs(daily=3))
    assert versions_to_rotate(c, existing, morning) == existing[:1]
    # A second upload on the same day replaces the first one of that day, not an older day.
    stored = [*existing[1:], StoredVersion(4, 10, morning)]
    assert versions_to_rotate(c, stored, morning + timedelta(hours=8)) == [stored[-1]]


def test_gfs_removes_while_there_is_room() -> None:
    # fifo keeps everything up to maxBackupsCount; gfs keeps what its rules keep.
    existing = at("2026-03-02T01:00:00", "2026-03-02T02:00:00")
    now = datetime(2026, 3, 2, 3, tzinfo=UTC)
    assert versions_to_rotate(collection(gfs(daily=7), count=50), existing, now) == existing


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        decide(collection(gfs(daily=1, zone="Mars/Olympus")), SIMPLE)


# --- invariants ----------------------------------------------------------------------------


def daily_versions(start: datetime, days: int) -> list[StoredVersion]:
    return [StoredVersion(n + 1, 10, start + timedelta(days=n)) for n in range(days)]


T0 = datetime(2025, 12, 20, tzinfo=UTC)
ZONES = ["UTC", "Europe/Warsaw", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
keeps = st.integers(0, 4)
gfs_strategies = st.builds(
    gfs, keeps, keeps, keeps, keeps, keeps, keeps, st.sampled_from(ZONES)
).filter(lambda s: total(s) > 0)


def total(strategy: RotationStrategy) -> int:
    return (
        strategy.keep_last
        + strategy.keep_hourly
        + strategy.keep_daily
        + strategy.keep_weekly
        + strategy.keep_monthly
        + strategy.keep_yearly
    )


@st.composite
def histories(draw: st.DrawFn) -> list[StoredVersion]:
    """Versions with growing numbers (gaps allowed) and times a few minutes to some months
    apart, now and then out of order (clocks of two replicas)."""
    count = draw(st.integers(0, 30))
    number, moment = 0, T0
    found = []
    for _ in range(count):
        number += draw(st.integers(1, 3))
        step = draw(st.sampled_from([5, 50, 60 * 7, 60 * 24, 60 * 24 * 6, 60 * 24 * 40]))
        moment += timedelta(minutes=draw(st.integers(-10, step)))
        found.append(StoredVersion(number=number, size=1, created_at=moment))
    return found


def kept(decisions: Sequence[Decision]) -> list[StoredVersion]:
    return [d.version for d in decisions if d.kept]


@settings(max_examples=300, deadline=None)
@given(strategy=gfs_strategies, versions=histories(), count=st.integers(1, 30), seed=st.integers())
def test_invariants(
    strategy: RotationStrategy, versions: list[StoredVersion], count: int, seed: int
) -> None:
    c = collection(strategy, count)
    decisions = decide(c, versions)
    stays = kept(decisions)
    assert len(decisions) == len(versions)
    # Never more than the rules' counts together, nor more than maxBackupsCount.
    assert len(stays) <= min(total(strategy), count)
    # The newest version always stays (the first rule with a count keeps it).
    if versions:
        assert decisions[0].version == versions[-1]
        assert decisions[0].kept
    if strategy.keep_last and versions:
        assert decisions[0].rule is KeepRule.LAST
    # Idempotent: applied again to what stays, it removes nothing.
    assert kept(decide(c, stays)) == stays
    # Deterministic, whatever the order of the input.
    shuffled = versions[:]
    random.Random(seed).shuffle(shuffled)
    assert decide(c, shuffled) == decisions
    # A decision names a rule exactly when a rule kept it; over_count only on those.
    for d in decisions:
        assert d.kept == (d.rule is not None and not d.over_count)
        assert not d.over_count or d.rule is not None


@settings(max_examples=150, deadline=None)
@given(
    strategy=gfs_strategies,
    versions=histories(),
    offset=st.integers(-12, 14),
)
def test_only_the_local_time_counts(
    strategy: RotationStrategy, versions: list[StoredVersion], offset: int
) -> None:
    """The same wall-clock times give the same answer in any zone: times shifted by a
    zone's fixed offset and counted in that zone decide like the unshifted times in UTC."""
    # Etc/GMT-5 is UTC+5 (POSIX signs).
    zone = "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"
    assert datetime(2026, 1, 1, tzinfo=ZoneInfo(zone)).utcoffset() == timedelta(hours=offset)
    shifted = [
        StoredVersion(v.number, v.size, v.created_at - timedelta(hours=offset)) for v in versions
    ]
    in_utc = decide(collection(gfs_with_zone(strategy, "UTC")), versions)
    in_zone = decide(collection(gfs_with_zone(strategy, zone)), shifted)
    assert [(d.version.number, d.rule, d.period) for d in in_utc] == [
        (d.version.number, d.rule, d.period) for d in in_zone
    ]


def gfs_with_zone(strategy: RotationStrategy, zone: str) -> RotationStrategy:
    return gfs(
        strategy.keep_last,
        strategy.keep_hourly,
        strategy.keep_daily,
        strategy.keep_weekly,
        strategy.keep_monthly,
        strategy.keep_yearly,
        zone,
    )


@settings(max_examples=100, deadline=None)
@given(
    strategy=gfs_strategies,
    count=st.integers(1, 20),
    gaps=st.lists(st.sampled_from([1, 3, 7, 24, 30, 24 * 6]), min_size=1, max_size=80),
)
def test_applied_at_every_upload(strategy: RotationStrategy, count: int, gaps: list[int]) -> None:
    """A real sequence: the new version always stays, the collection never holds more than
    maxBackupsCount, and the set computed before an upload is what stays after it."""
    c = collection(strategy, count)
    stored: list[StoredVersion] = []
    moment = T0
    for number, gap in enumerate(gaps, start=1):
        moment += timedelta(hours=gap)
        rotated = versions_to_rotate(c, stored, moment)
        assert all(v in stored for v in rotated)
        stored = [v for v in stored if v not in rotated]
        stored.append(StoredVersion(number=number, size=1, created_at=moment))
        assert len(stored) <= count
        assert kept(decide(c, stored)) == list(reversed(stored))


# --- the worked examples of the documentation ----------------------------------------------

EXAMPLE = gfs(last=2, daily=7, weekly=4, monthly=3)
EXAMPLE_COUNT = 16


def doc_table(decisions: Sequence[Decision]) -> str:
    rows = [
        "| version | created (UTC) | keptBy | period | fate |",
        "|---|---|---|---|---|",
    ]
    for d in decisions:
        created = d.version.created_at.strftime("%a %Y-%m-%d %H:%M")
        rule = d.rule.value if d.rule is not None and d.kept else "-"
        period = d.period if d.period is not None and d.kept else "-"
        rows.append(
            f"| {d.version.number} | {created} | {rule} | {period} | "
            f"{'kept' if d.kept else 'rotated'} |"
        )
    return "\n".join(rows)


def test_worked_example_of_the_documentation() -> None:
    """docs/collections.md, "gfs": 20 daily versions, keepLast 2, keepDaily 7, keepWeekly 4,
    keepMonthly 3."""
    versions = daily_versions(datetime(2026, 10, 20, 1, 30, tzinfo=UTC), 20)
    table = doc_table(decide(collection(EXAMPLE, EXAMPLE_COUNT), versions))
    assert table in DOCS.read_text(), f"the table of docs/collections.md should be:\n{table}"


def test_steady_state_example_of_the_documentation() -> None:
    """docs/collections.md, "gfs": what one upload a day for 160 days leaves."""
    c = collection(EXAMPLE, EXAMPLE_COUNT)
    stored: list[StoredVersion] = []
    for day in range(160):
        now = datetime(2026, 7, 1, 1, 30, tzinfo=UTC) + timedelta(days=day)
        rotated = versions_to_rotate(c, stored, now)
        stored = [v for v in stored if v not in rotated]
        stored.append(StoredVersion(day + 1, 10, now))
    assert len(stored) == EXAMPLE_COUNT
    table = doc_table(decide(c, stored))
    assert table in DOCS.read_text(), f"the table of docs/collections.md should be:\n{table}"
