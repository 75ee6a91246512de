"""The gfs strategy against an independent model of its documentation (docs/collections.md,
"gfs"): random timelines, random time zones (with daylight saving time) and every
combination of rules, decided by ``domain/rotation.py`` and by the deliberately simple
:func:`model` below, which is written from the documented rules, not from the code.

The model works on whole periods rather than walking version by version: for each rule in
order it groups the versions no earlier rule decided by period (newest period first),
skips the periods an earlier rule's kept version covers, and keeps the newest version of
each other period (marking the rest of it as not kept) until the rule's count is used.
Then the ``maxBackupsCount`` cap drops the oldest of what the rules keep. Uploads are
numbered in the order of their times, so each period's versions are consecutive and this
is the documented walk.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.domain.identity import Collection, RotationStrategy
from backup_repository.domain.rotation import decide, versions_to_rotate
from backup_repository.domain.versions import StoredVersion

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
# The labels the documentation's tables show: 2026-11-06, 2026-W43, 2026-10, ...
LABELS = {
    "hourly": "%Y-%m-%dT%H",
    "daily": "%Y-%m-%d",
    "weekly": "%G-W%V",  # ISO week year and week
    "monthly": "%Y-%m",
    "yearly": "%Y",
}
# A few zones: no DST, central Europe, North America, the southern hemisphere (DST over
# the new year), a half-hour offset.
ZONES = ("UTC", "Europe/Warsaw", "America/New_York", "Australia/Sydney", "Asia/Kolkata")
# Moments a few hours before clocks change in one of the zones above.
DST_CHANGES = (
    datetime(2026, 3, 29, 0, 0, tzinfo=UTC),  # Europe forward
    datetime(2026, 10, 24, 22, 0, tzinfo=UTC),  # Europe back
    datetime(2026, 3, 8, 4, 0, tzinfo=UTC),  # New York forward
    datetime(2026, 11, 1, 3, 0, tzinfo=UTC),  # New York back
    datetime(2026, 4, 4, 13, 0, tzinfo=UTC),  # Sydney back
    datetime(2026, 10, 3, 13, 0, tzinfo=UTC),  # Sydney forward
    datetime(2020, 12, 31, 20, 0, tzinfo=UTC),  # 2020-W53 into 2021
)


@dataclass(frozen=True)
class Outcome:
    """What one version comes to: the rule that keeps it and the period it stands for
    (None for keepLast and for versions no rule keeps), and whether the cap drops it."""

    rule: str | None
    period: str | None
    kept: bool


def model(counts: dict[str, int], zone: str, cap: int, times: list[datetime]) -> dict[int, Outcome]:
    """The documented gfs rules over versions 1..len(times) created at ``times``
    (non-decreasing). Keys: version numbers."""
    numbers = list(range(len(times), 0, -1))  # newest first
    local = {n: times[n - 1].astimezone(ZoneInfo(zone)) for n in numbers}

    def period(rule: str, number: int) -> str:
        return f"#{number}" if rule == "last" else local[number].strftime(LABELS[rule])

    rules = [(rule, counts[rule]) for rule in RULES if counts[rule] > 0]
    if not rules:
        # Refused by the configuration; the module documents it as fifo.
        rules = [("last", cap)]
    decided: dict[int, tuple[str, str, bool]] = {}  # number -> (rule, period, kept)
    for rule, count in rules:
        covered = {period(rule, n) for n, (_, _, kept) in decided.items() if kept}
        groups: dict[str, list[int]] = {}
        for n in numbers:
            if n not in decided:
                groups.setdefault(period(rule, n), []).append(n)
        taken = 0
        for label, members in groups.items():
            if label in covered:
                continue
            if taken == count:
                break
            taken += 1
            newest, *older = members
            decided[newest] = (rule, label, True)
            decided.update((n, (rule, label, False)) for n in older)
    kept_newest_first = [n for n in numbers if n in decided and decided[n][2]]
    survivors = set(kept_newest_first[:cap])
    outcomes: dict[int, Outcome] = {}
    for n in numbers:
        if n in decided and decided[n][2]:
            rule, label, _ = decided[n]
            outcomes[n] = Outcome(rule, None if rule == "last" else label, n in survivors)
        else:
            outcomes[n] = Outcome(None, None, False)
    return outcomes


def strategy_of(counts: dict[str, int], zone: str) -> RotationStrategy:
    return RotationStrategy(
        name="gfs",
        keep_last=counts["last"],
        keep_hourly=counts["hourly"],
        keep_daily=counts["daily"],
        keep_weekly=counts["weekly"],
        keep_monthly=counts["monthly"],
        keep_yearly=counts["yearly"],
        time_zone=zone,
    )


def collection_of(counts: dict[str, int], zone: str, cap: int) -> Collection:
    return Collection(
        name="db",
        description="",
        filename_template="db-${version}.gpg",
        max_backups_count=cap,
        max_one_version_size=100,
        max_collection_size=100_000,
        strategy=strategy_of(counts, zone),
    )


def versions_at(times: list[datetime]) -> list[StoredVersion]:
    return [StoredVersion(number=n, size=1, created_at=t) for n, t in enumerate(times, start=1)]


def code(counts: dict[str, int], zone: str, cap: int, times: list[datetime]) -> dict[int, Outcome]:
    decisions = decide(collection_of(counts, zone, cap), versions_at(times))
    return {
        d.version.number: Outcome(d.rule.value if d.rule else None, d.period, d.kept)
        for d in decisions
    }


def comparable(outcomes: dict[int, Outcome]) -> dict[int, Outcome]:
    """The model does not name the rule of a version the cap drops; neither do we."""
    return {n: o if o.kept else Outcome(None, None, False) for n, o in outcomes.items()}


# -- timelines -------------------------------------------------------------------------------

# Gaps between uploads: several in one hour or day, daily-ish, and long pauses, so that a
# timeline of a few dozen uploads spans hours to years.
gaps = st.one_of(
    st.just(0),
    st.integers(1, 3_600),
    st.integers(3_600, 86_400),
    st.integers(86_400 - 7_200, 86_400 + 7_200),
    st.integers(86_400, 40 * 86_400),
    st.integers(40 * 86_400, 400 * 86_400),
)
starts = st.one_of(
    st.datetimes(
        min_value=datetime(2019, 1, 1), max_value=datetime(2031, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from(DST_CHANGES).flatmap(
        lambda moment: st.integers(0, 6 * 3_600).map(lambda s: moment + timedelta(seconds=s))
    ),
)


@st.composite
def timelines(draw: st.DrawFn) -> list[datetime]:
    start = draw(starts)
    steps = draw(st.lists(gaps, min_size=0, max_size=50))
    times = [start]
    for step in steps:
        times.append(times[-1] + timedelta(seconds=step))
    return times


counts_strategy = st.fixed_dictionaries({rule: st.integers(0, 4) for rule in RULES})


@settings(max_examples=200, deadline=None)
@given(
    counts=counts_strategy,
    zone=st.sampled_from(ZONES),
    cap=st.integers(1, 30),
    times=timelines(),
)
def test_the_code_decides_as_the_documented_model(
    counts: dict[str, int], zone: str, cap: int, times: list[datetime]
) -> None:
    assert comparable(code(counts, zone, cap, times)) == comparable(model(counts, zone, cap, times))


@settings(max_examples=60, deadline=None)
@given(
    counts=counts_strategy,
    zone=st.sampled_from(ZONES),
    cap=st.integers(1, 20),
    times=timelines(),
)
def test_applied_at_every_upload_as_the_model(
    counts: dict[str, int], zone: str, cap: int, times: list[datetime]
) -> None:
    """Upload after upload, the code deletes what the model, applied to what is left and
    the new version, does not keep."""
    live: list[StoredVersion] = []
    collection = collection_of(counts, zone, cap)
    for number, now in enumerate(times, start=1):
        rotated = {v.number for v in versions_to_rotate(collection, live, now)}
        candidates = [*live, StoredVersion(number=number, size=1, created_at=now)]
        # The model numbers versions 1..k: map them onto the live numbers.
        outcome = model(counts, zone, cap, [v.created_at for v in candidates])
        expected = {
            version.number
            for index, version in enumerate(candidates, start=1)
            if not outcome[index].kept
        }
        assert number not in expected  # the new version always stays
        assert rotated == expected, (number, sorted(rotated), sorted(expected))
        live = [v for v in candidates if v.number not in rotated]


def test_every_combination_of_rules_on_one_timeline() -> None:
    """All 2^6 combinations of the rules on or off, each with count 2, on one fixed random
    timeline spanning about three years in a zone with DST, with several caps."""
    rng = random.Random(20261205)
    times = [datetime(2024, 2, 27, 21, 50, tzinfo=UTC)]
    for _ in range(400):
        step = rng.choice([rng.randint(0, 3_600), rng.randint(3_600, 86_400),
                           rng.randint(86_400, 10 * 86_400)])  # fmt: skip
        times.append(times[-1] + timedelta(seconds=step))
    assert times[-1] - times[0] > timedelta(days=365)
    compared = 0
    for switches in itertools.product((0, 2), repeat=len(RULES)):
        counts = dict(zip(RULES, switches, strict=True))
        for cap in (1, 5, 12):
            expected = comparable(model(counts, "Europe/Warsaw", cap, times))
            assert comparable(code(counts, "Europe/Warsaw", cap, times)) == expected, (
                counts,
                cap,
            )
            compared += 1
            if any(switches) and cap == 12:
                # Each rule on keeps at most its count of versions.
                assert sum(o.kept for o in expected.values()) <= 2 * sum(1 for s in switches if s)
    assert compared == 64 * 3


def test_the_model_reproduces_the_documented_worked_example() -> None:
    """The model itself follows the documentation: its first table (20 daily uploads)."""
    times = [datetime(2026, 10, 20, 1, 30, tzinfo=UTC) + timedelta(days=day) for day in range(20)]
    counts = dict(zip(RULES, (2, 0, 7, 4, 3, 0), strict=True))
    outcome = model(counts, "UTC", 16, times)
    kept = {n: (o.rule, o.period) for n, o in outcome.items() if o.kept}
    assert kept == {
        20: ("last", None),
        19: ("last", None),
        18: ("daily", "2026-11-06"),
        17: ("daily", "2026-11-05"),
        16: ("daily", "2026-11-04"),
        15: ("daily", "2026-11-03"),
        14: ("daily", "2026-11-02"),
        13: ("daily", "2026-11-01"),
        12: ("daily", "2026-10-31"),
        6: ("weekly", "2026-W43"),
    }
