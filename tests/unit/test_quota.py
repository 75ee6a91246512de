"""How large the next upload may be (docs/collections.md, "Quotas")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.domain.identity import Collection
from backup_repository.domain.quota import extra_space, max_upload_size
from backup_repository.domain.rotation import versions_to_rotate
from backup_repository.domain.versions import StoredVersion

MiB = 1024 * 1024
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def collection(count: int, one: int, total: int) -> Collection:
    return Collection(
        name="db",
        description="",
        filename_template="db-${version}.gpg",
        max_backups_count=count,
        max_one_version_size=one,
        max_collection_size=total,
    )


def versions(*sizes: int) -> list[StoredVersion]:
    return [
        StoredVersion(number=n, size=size, created_at=T0 + timedelta(days=n))
        for n, size in enumerate(sizes, start=1)
    ]


def test_extra_space() -> None:
    assert extra_space(collection(5, 1 * MiB, 10 * MiB)) == 5 * MiB
    assert extra_space(collection(5, 1 * MiB, 5 * MiB)) == 0
    assert extra_space(collection(5, 1 * MiB, 4 * MiB)) == -1 * MiB


@pytest.mark.parametrize(
    ("sizes", "allowed"),
    [
        ((), 6 * MiB),  # s + all the extra space
        ((1 * MiB, 1 * MiB, 1 * MiB, 3 * MiB), 4 * MiB),  # 2 MiB of the extra space borrowed
        ((1 * MiB, 6 * MiB), 1 * MiB),  # all of it borrowed
        ((MiB // 2,) * 4, 6 * MiB),  # small versions lend nothing to the extra space
        ((1 * MiB + 1,), 6 * MiB - 1),
    ],
)
def test_documented_examples_with_extra_space(sizes: tuple[int, ...], allowed: int) -> None:
    assert max_upload_size(collection(5, 1 * MiB, 10 * MiB), versions(*sizes)) == allowed


def test_without_extra_space_one_version_size_is_the_limit() -> None:
    exact = collection(5, 1 * MiB, 5 * MiB)
    assert max_upload_size(exact, []) == 1 * MiB
    assert max_upload_size(exact, versions(*(1 * MiB,) * 4)) == 1 * MiB


def test_without_extra_space_oversized_versions_borrow_nothing() -> None:
    # extra = 0; a 3 MiB version stored under an earlier configuration: the limit stays s,
    # as long as H has room for it.
    assert max_upload_size(collection(3, 2 * MiB, 6 * MiB), versions(3 * MiB)) == 2 * MiB
    assert max_upload_size(collection(3, 2 * MiB, 6 * MiB), versions(5 * MiB)) == 1 * MiB


def test_never_more_than_what_is_left_of_the_collection() -> None:
    small = collection(5, 1 * MiB, 4 * MiB)  # extra = -1 MiB: none
    assert max_upload_size(small, []) == 1 * MiB
    assert max_upload_size(small, versions(1 * MiB, 1 * MiB, 3 * MiB // 2)) == MiB // 2


def test_zero_when_the_collection_is_full() -> None:
    small = collection(5, 1 * MiB, 4 * MiB)
    assert max_upload_size(small, versions(*(1 * MiB,) * 4)) == 0


def test_never_negative() -> None:
    # Versions stored under an earlier, larger limit.
    assert max_upload_size(collection(3, 1 * MiB, 2 * MiB), versions(3 * MiB)) == 0
    assert max_upload_size(collection(3, 1 * MiB, 5 * MiB), versions(5 * MiB, 2 * MiB)) == 0


def test_overdrawn_extra_space_reduces_the_next_version() -> None:
    # extra = 2 MiB but a version from an earlier configuration borrowed 3 MiB:
    # s + (2 - 3) = 1 MiB, although 3 MiB would still fit under H (the formula as written).
    assert max_upload_size(collection(3, 2 * MiB, 8 * MiB), versions(5 * MiB)) == 1 * MiB
    assert max_upload_size(collection(3, 2 * MiB, 8 * MiB), versions(6 * MiB)) == 0


def test_exactly_at_the_limit_and_one_byte_over() -> None:
    c = collection(2, 100, 250)  # extra = 50
    assert max_upload_size(c, versions(120)) == 130  # 100 + (50 - 20); H left: 130
    assert max_upload_size(c, versions(121)) == 129
    assert max_upload_size(c, versions(150)) == 100  # the extra space is used up


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=6),
    one=st.integers(min_value=1, max_value=1000),
    spare=st.integers(min_value=-2000, max_value=3000),
    wishes=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=30),
)
def test_uploads_within_the_quota_keep_every_limit(
    count: int, one: int, spare: int, wishes: list[int]
) -> None:
    """Upload as much as wished, cut to the quota, rotating with fifo: the collection never
    exceeds its hard limit and never borrows more than its extra space."""
    total = max(one, count * one + spare)
    c = collection(count, one, total)
    stored: list[StoredVersion] = []
    for number, wish in enumerate(wishes, start=1):
        now = T0 + timedelta(hours=number)
        rotated = versions_to_rotate(c, stored, now)
        remaining = [v for v in stored if v not in rotated]
        allowed = max_upload_size(c, remaining)
        assert 0 <= allowed <= total - sum(v.size for v in remaining)
        if remaining == [] and extra_space(c) <= 0:
            assert allowed == one
        size = min(wish, allowed)
        stored = [*remaining, StoredVersion(number=number, size=size, created_at=now)]
        assert sum(v.size for v in stored) <= total
        assert len(stored) <= count
        borrowed = sum(max(0, v.size - one) for v in stored)
        assert borrowed <= max(0, extra_space(c))
