"""Protected versions in the rotation strategies and the quota (domain/rotation.py,
domain/quota.py; docs/collections.md "Protected versions"): kept outside of every rule,
counted against maxBackupsCount and maxCollectionSize."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.domain.identity import Collection, RotationStrategy
from backup_repository.domain.quota import QuotaRule, next_upload
from backup_repository.domain.rotation import KeepRule, decide, versions_to_rotate
from backup_repository.domain.versions import StoredVersion

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
DAY = timedelta(days=1)
K = 1024


def coll(strategy: RotationStrategy, n: int = 3, s: int = 64 * K, h: int = 1024 * K) -> Collection:
    return Collection(
        name="c",
        description="",
        filename_template="c-${version}",
        max_backups_count=n,
        max_one_version_size=s,
        max_collection_size=h,
        strategy=strategy,
    )


FIFO = RotationStrategy(name="fifo")
OLDER = RotationStrategy(
    name="fifo-plus-older", keep_last_older_not_more_than=DAY, max_older_copies=1
)
GFS = RotationStrategy(name="gfs", keep_last=1, keep_daily=2)


def versions(*numbers: int, protected: tuple[int, ...] = (), size: int = K) -> list[StoredVersion]:
    return [
        StoredVersion(number=n, size=size, created_at=T0 + (n - 1) * DAY, protected=n in protected)
        for n in numbers
    ]


def kept(collection: Collection, found: list[StoredVersion]) -> dict[int, KeepRule | None]:
    return {d.version.number: d.rule if d.kept else None for d in decide(collection, found)}


def test_fifo_keeps_protected_versions_outside_of_its_slots() -> None:
    found = versions(1, 2, 3, 4, protected=(1,))
    assert kept(coll(FIFO, n=3), found) == {
        4: KeepRule.LAST,
        3: KeepRule.LAST,
        2: None,
        1: KeepRule.PROTECTED,
    }
    assert [v.number for v in versions_to_rotate(coll(FIFO, n=3), found[:3], T0 + 3 * DAY)] == [2]


def test_fifo_plus_older_never_chains_a_protected_version() -> None:
    # n = 4, one protected: three slots, one of them for an older copy, which the chain
    # of the unprotected versions (a day apart) gives to v3, never to v1.
    found = versions(1, 2, 3, 4, 5, protected=(1,))
    assert kept(coll(OLDER, n=4), found) == {
        5: KeepRule.LAST,
        4: KeepRule.LAST,
        3: KeepRule.OLDER,
        2: None,
        1: KeepRule.PROTECTED,
    }


def test_a_protected_version_covers_no_gfs_period() -> None:
    # Two versions on one day: unprotected, the later one covers the day and the earlier
    # goes; protected, the earlier one stays and the day is still the later one's.
    morning = StoredVersion(1, K, T0)
    evening = StoredVersion(2, K, T0 + timedelta(hours=8))
    tomorrow = StoredVersion(3, K, T0 + DAY)
    assert kept(coll(GFS, n=4), [morning, evening, tomorrow]) == {
        3: KeepRule.LAST,
        2: KeepRule.DAILY,
        1: None,
    }
    assert kept(coll(GFS, n=4), [replace(morning, protected=True), evening, tomorrow]) == {
        3: KeepRule.LAST,
        2: KeepRule.DAILY,
        1: KeepRule.PROTECTED,
    }


def test_protected_versions_filling_max_backups_count_refuse_every_upload() -> None:
    collection = coll(FIFO, n=2, h=128 * K)
    found = versions(1, 2, 3, protected=(1, 2))
    # Lowered maxBackupsCount: the unprotected version goes for it.
    decisions = {d.version.number: d for d in decide(collection, found)}
    assert not decisions[3].kept
    assert decisions[3].over_count
    upcoming = next_upload(collection, found[:2], T0 + 5 * DAY)
    assert upcoming.rotated == []
    assert upcoming.limit.bytes == 0
    assert upcoming.limit.rule is QuotaRule.BACKUPS_COUNT
    assert upcoming.limit.explain() == (
        "rule maxBackupsCount: maxBackupsCount 2 is reached by 2 protected versions"
    )
    assert upcoming.limit.blocked_by_protection(1)
    assert upcoming.limit.without_protection == 64 * K


def test_the_size_a_protected_version_keeps_is_told_apart() -> None:
    # n = 2, s = 64K, H = 100K: unprotected, v1 (60K) goes with the next upload.
    collection = coll(FIFO, n=2, h=100 * K)
    found = [StoredVersion(1, 60 * K, T0), StoredVersion(2, 30 * K, T0 + DAY)]
    assert next_upload(collection, found, T0 + 2 * DAY).limit.bytes == 64 * K
    found[0] = replace(found[0], protected=True)
    limit = next_upload(collection, found, T0 + 2 * DAY).limit
    assert (limit.bytes, limit.rule) == (40 * K, QuotaRule.COLLECTION_TOTAL)
    assert (limit.protected_versions, limit.protected_bytes) == (1, 60 * K)
    assert limit.without_protection == 64 * K
    assert not limit.blocked_by_protection(40 * K)  # fits
    assert limit.blocked_by_protection(40 * K + 1)
    assert limit.blocked_by_protection(64 * K)
    assert not limit.blocked_by_protection(64 * K + 1)  # too large either way


@settings(max_examples=150, deadline=None)
@given(
    strategy=st.sampled_from([FIFO, OLDER, GFS]),
    n=st.integers(min_value=1, max_value=5),
    hours=st.lists(st.integers(min_value=1, max_value=60), min_size=0, max_size=9),
    protect=st.sets(st.integers(min_value=1, max_value=10), max_size=4),
)
def test_rotation_never_removes_a_protected_version_and_never_exceeds_the_count(
    strategy: RotationStrategy, n: int, hours: list[int], protect: set[int]
) -> None:
    collection = coll(strategy, n=n)
    moment = T0
    existing: list[StoredVersion] = []
    for number, gap in enumerate(hours, start=1):
        moment += timedelta(hours=gap)
        existing.append(StoredVersion(number, K, moment, protected=number in protect))
    now = moment + timedelta(hours=1)
    upcoming = next_upload(collection, existing, now)
    assert not any(version.protected for version in upcoming.rotated)
    protected = sum(1 for version in existing if version.protected)
    if protected >= n:
        assert upcoming.limit.bytes == 0
        assert upcoming.rotated == []
    else:
        # What stays after the upload, the upload included, fits maxBackupsCount.
        assert len(upcoming.remaining) + 1 <= n
