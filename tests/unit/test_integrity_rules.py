"""The pure rules of integrity checks: comparing a re-read object with what was recorded,
the collection health verdict over the latest results, and the summary line."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from backup_repository.domain.integrity import (
    MAX_DETAIL,
    CheckStatus,
    LatestCheck,
    Tally,
    clip,
    format_bytes,
    integrity_health,
    judge,
    missing,
    unreadable,
)

SHA = "a" * 64
OTHER = "b" * 64
AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_same_size_and_digest_is_ok() -> None:
    verdict = judge(10, SHA, 10, SHA)
    assert verdict.status is CheckStatus.OK
    assert verdict.detail == ""


def test_digest_comparison_ignores_hex_case() -> None:
    assert judge(10, SHA.upper(), 10, SHA).status is CheckStatus.OK


def test_a_flipped_byte_is_a_digest_mismatch() -> None:
    verdict = judge(10, SHA, 10, OTHER)
    assert verdict.status is CheckStatus.CORRUPT
    assert verdict.detail == "SHA-256 differs"


@pytest.mark.parametrize("actual", [0, 9, 11, 10_000])
def test_another_size_is_corrupt_without_a_digest(actual: int) -> None:
    verdict = judge(10, SHA, actual, None)
    assert verdict.status is CheckStatus.CORRUPT
    assert verdict.detail == f"stored object has {actual} bytes, 10 recorded"


def test_the_recorded_size_needs_a_digest() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        judge(10, SHA, 10, None)


def test_missing_and_unreadable() -> None:
    assert missing().status is CheckStatus.MISSING
    assert missing().detail == "stored object is missing"
    verdict = unreadable("connection refused\n  at line 2")
    assert verdict.status is CheckStatus.UNREADABLE
    assert verdict.detail == "storage error: connection refused at line 2"
    assert len(unreadable("x" * 5000).detail) == MAX_DETAIL


def test_only_corrupt_and_missing_are_damage() -> None:
    assert {s for s in CheckStatus if s.is_damage} == {CheckStatus.CORRUPT, CheckStatus.MISSING}


def test_clip_keeps_short_text_and_cuts_long_text() -> None:
    assert clip("a  b\tc") == "a b c"
    assert clip("abcdef", limit=4) == "abc…"


# -- the collection health verdict -----------------------------------------------------------


def check(number: int, status: CheckStatus, detail: str = "", at: datetime = AT) -> LatestCheck:
    return LatestCheck(number, status, detail, at)


def test_nothing_verified_yet_passes() -> None:
    verdict = integrity_health([1, 2], [])
    assert verdict.ok
    assert verdict.message == "not verified yet"


def test_no_versions_passes() -> None:
    assert integrity_health([], []).ok


def test_all_ok_passes_with_count_and_time() -> None:
    later = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)
    verdict = integrity_health(
        [1, 2], [check(1, CheckStatus.OK), check(2, CheckStatus.OK, at=later)]
    )
    assert verdict.ok
    assert verdict.message == "2 versions verified, last at 2026-11-27T13:00:00+00:00"


def test_new_versions_not_yet_verified_are_mentioned() -> None:
    verdict = integrity_health([1, 2, 3], [check(1, CheckStatus.OK)])
    assert verdict.ok
    assert "1 versions verified" in verdict.message
    assert "2 not verified yet" in verdict.message


def test_corrupt_and_missing_fail_and_are_listed_by_number() -> None:
    verdict = integrity_health(
        [3, 4, 5],
        [
            check(5, CheckStatus.MISSING, "stored object is missing"),
            check(4, CheckStatus.OK),
            check(3, CheckStatus.CORRUPT, "SHA-256 differs"),
        ],
    )
    assert not verdict.ok
    assert verdict.problems == ("v3: SHA-256 differs", "v5: stored object is missing")
    assert verdict.message == "v3: SHA-256 differs; v5: stored object is missing"


def test_unreadable_passes_with_a_note() -> None:
    verdict = integrity_health(
        [1, 2], [check(1, CheckStatus.UNREADABLE, "storage error: down"), check(2, CheckStatus.OK)]
    )
    assert verdict.ok
    assert "could not be read at the last check: v1" in verdict.message


def test_results_of_versions_no_longer_live_are_ignored() -> None:
    verdict = integrity_health([2], [check(1, CheckStatus.CORRUPT, "SHA-256 differs")])
    assert verdict.ok
    assert verdict.message == "not verified yet"


# -- the summary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (int(10.5 * 1024 * 1024), "10.5 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**5, "5120.0 TiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_summary_line() -> None:
    tally = Tally(
        versions=12,
        collections=3,
        bytes_read=int(10.5 * 1024 * 1024),
        counts={CheckStatus.OK: 11, CheckStatus.CORRUPT: 1},
    )
    assert tally.summary() == (
        "checked 12 versions in 3 collections, 10.5 MiB: 11 ok, 1 corrupt, 0 missing, 0 unreadable"
    )
    assert not tally.all_ok


def test_summary_singular_and_all_ok() -> None:
    tally = Tally(versions=1, collections=1, bytes_read=5, counts={CheckStatus.OK: 1})
    assert tally.summary().startswith("checked 1 version in 1 collection, 5 B: 1 ok")
    assert tally.all_ok


def test_unreadable_is_not_all_ok() -> None:
    tally = Tally(versions=1, collections=1, bytes_read=0, counts={CheckStatus.UNREADABLE: 1})
    assert not tally.all_ok
