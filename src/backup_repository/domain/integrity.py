"""Integrity of stored versions: what a re-read of a stored object means, and how the
latest results read in a collection health report and a summary. Pure rules, no I/O; the
reading itself is ``services/integrity.py``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

# Longest detail text kept with a result (the column holds 1024 characters).
MAX_DETAIL: Final = 1000

MISSING_DETAIL: Final = "stored object is missing"
SHA256_DETAIL: Final = "SHA-256 differs"


class CheckStatus(StrEnum):
    OK = "ok"
    CORRUPT = "corrupt"  # the object is there but its size or SHA-256 is not the recorded one
    MISSING = "missing"  # no object under the version's key
    UNREADABLE = "unreadable"  # the storage failed or timed out; nothing is known

    @property
    def is_damage(self) -> bool:
        """True for the statuses that fail the collection health check and count as
        corrupt versions: the stored bytes are known to be wrong or gone."""
        return self in (CheckStatus.CORRUPT, CheckStatus.MISSING)


@dataclass(frozen=True)
class Verdict:
    status: CheckStatus
    detail: str


def judge(
    recorded_size: int, recorded_sha256: str, actual_size: int, actual_sha256: str | None
) -> Verdict:
    """Compare what was recorded at upload with what a re-read found. ``actual_sha256`` is
    None when the object was not read because its size already differs."""
    if actual_size != recorded_size:
        return Verdict(
            CheckStatus.CORRUPT,
            f"stored object has {actual_size} bytes, {recorded_size} recorded",
        )
    if actual_sha256 is None:
        raise ValueError("the SHA-256 of an object of the recorded size is needed")
    if actual_sha256.lower() != recorded_sha256.lower():
        return Verdict(CheckStatus.CORRUPT, SHA256_DETAIL)
    return Verdict(CheckStatus.OK, "")


def missing() -> Verdict:
    return Verdict(CheckStatus.MISSING, MISSING_DETAIL)


def unreadable(error: str) -> Verdict:
    return Verdict(CheckStatus.UNREADABLE, clip(f"storage error: {error}"))


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` on one line and at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class LatestCheck:
    """The latest verification of one version, as the health check needs it."""

    number: int
    status: CheckStatus
    detail: str
    checked_at: datetime


@dataclass(frozen=True)
class IntegrityHealth:
    ok: bool
    message: str
    problems: tuple[str, ...] = ()


def integrity_health(live_numbers: Sequence[int], latest: Iterable[LatestCheck]) -> IntegrityHealth:
    """The ``VersionsIntegrityValidator`` verdict for a collection: fails when the latest
    verification of any live version found it corrupt or missing; passes otherwise,
    including when nothing was verified yet (nothing is known to be wrong) and when the
    storage could not be read (that is the storage's problem, reported by ``/ready``)."""
    live = set(live_numbers)
    by_number: Mapping[int, LatestCheck] = {c.number: c for c in latest if c.number in live}
    return integrity_health_summarized(len(live), list(by_number.values()), 0, None)


def integrity_health_summarized(
    live_count: int,
    checks: Sequence[LatestCheck],
    more_ok: int,
    more_ok_at: datetime | None,
) -> IntegrityHealth:
    """:func:`integrity_health` from a summary, for callers that read many collections at
    once: ``checks`` are the latest checks of some live versions (each version at most
    once), and ``more_ok`` other live versions were last checked ``ok``, the latest of those
    checks at ``more_ok_at``. The same verdict and message, without an object per version."""
    damaged = sorted((c for c in checks if c.status.is_damage), key=_number)
    if damaged:
        problems = tuple(f"v{c.number}: {c.detail or c.status.value}" for c in damaged)
        return IntegrityHealth(False, "; ".join(problems), problems)
    verified = len(checks) + more_ok
    if not verified:
        return IntegrityHealth(True, "not verified yet")
    times = [c.checked_at for c in checks]
    if more_ok and more_ok_at is not None:
        times.append(more_ok_at)
    last = max(times)
    parts = [f"{verified} versions verified, last at {last.isoformat(timespec='seconds')}"]
    unverified = live_count - verified
    if unverified:
        parts.append(f"{unverified} not verified yet")
    unread = sorted(c.number for c in checks if c.status is CheckStatus.UNREADABLE)
    if unread:
        versions = ", ".join(f"v{n}" for n in unread)
        parts.append(f"could not be read at the last check: {versions}")
    return IntegrityHealth(True, "; ".join(parts))


def _number(check: LatestCheck) -> int:
    return check.number


def format_bytes(size: int) -> str:
    """``10.5 MiB``: powers of 1024, one decimal from KiB on."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Tally:
    versions: int
    collections: int
    bytes_read: int
    counts: Mapping[CheckStatus, int]

    def summary(self) -> str:
        """``checked 12 versions in 3 collections, 10.5 MiB: 11 ok, 1 corrupt, 0 missing,
        0 unreadable``"""
        counts = ", ".join(f"{self.counts.get(s, 0)} {s.value}" for s in CheckStatus)
        versions = "version" if self.versions == 1 else "versions"
        collections = "collection" if self.collections == 1 else "collections"
        return (
            f"checked {self.versions} {versions} in {self.collections} {collections}, "
            f"{format_bytes(self.bytes_read)}: {counts}"
        )

    @property
    def all_ok(self) -> bool:
        return all(n == 0 for s, n in self.counts.items() if s is not CheckStatus.OK)
