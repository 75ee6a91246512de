"""How large the next upload to a collection may be (docs/collections.md, "Quotas").

With ``n = maxBackupsCount``, ``s = maxOneVersionSize`` and ``H = maxCollectionSize``, the
collection has ``extra = H - n*s`` bytes of "extra space" (none when that is 0 or less). A
version may use more than ``s`` by borrowing from the extra space; what the versions that
stay have borrowed is no longer available::

    allowed = s + (extra - sum(max(0, size - s) for the remaining versions))   if extra > 0
    allowed = s                                                                 otherwise
    allowed = min(allowed, H - sum(size of the remaining versions))
    allowed = max(allowed, 0)

"Remaining" means the versions that stay after the rotation this upload causes
(``rotation.versions_to_rotate``, computed with the incoming version created at ``now``):
a version about to be deleted does not count. Under ``gfs`` that set depends on the new
version's period (a second upload on one day under ``keepDaily`` pushes out the first), so
:func:`next_upload` computes it with the incoming version in place: the limit is never
smaller than what the commit frees makes room for, nor larger.

Examples (``n = 5``, ``s = 1 MiB``, ``H = 10 MiB``, so ``extra = 5 MiB``):

- empty collection: ``1 + 5 = 6 MiB``;
- remaining versions of 1, 1, 1 and 3 MiB: the 3 MiB one borrowed 2 MiB, so ``1 + 3 = 4 MiB``;
- remaining versions of 1 and 6 MiB: all extra space is borrowed, so ``1 MiB``.

With ``H = 4 MiB`` instead (``extra = -1 MiB``, none): ``1 MiB``, but never more than what
is left of the 4 MiB: with remaining versions of 1, 1 and 1.5 MiB only ``0.5 MiB``.

Protected versions are never rotated out, so they are always among the remaining versions
and count in full. When ``maxBackupsCount`` protected versions or more exist, no version
can be added at all: the limit is 0 (rule ``maxBackupsCount``). The limit also tells what
it would be if no version were protected (``without_protection``), so that a refusal
caused only by protected versions can say so (:meth:`UploadLimit.blocked_by_protection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from backup_repository.domain.identity import Collection
from backup_repository.domain.rotation import versions_to_rotate
from backup_repository.domain.versions import StoredVersion


def extra_space(collection: Collection) -> int:
    """``maxCollectionSize - maxBackupsCount * maxOneVersionSize``; 0 or less means none."""
    return collection.max_collection_size - (
        collection.max_backups_count * collection.max_one_version_size
    )


class QuotaRule(StrEnum):
    """Which rule gave the limit of the next upload."""

    ONE_VERSION = "maxOneVersionSize"  # no extra space: one version's size
    EXTRA_SPACE = "extra space"  # maxOneVersionSize plus the extra space not yet borrowed
    COLLECTION_TOTAL = "maxCollectionSize"  # what is left of the collection's total
    BACKUPS_COUNT = "maxBackupsCount"  # protected versions fill every slot: none at all


@dataclass(frozen=True)
class UploadLimit:
    """The largest next upload (``bytes``; 0: none at all), the rule that gave it, and the
    figures it was computed from."""

    bytes: int
    rule: QuotaRule
    max_one_version_size: int
    max_collection_size: int
    extra_left: int  # extra space not borrowed by the remaining versions (0: none)
    used: int  # bytes of the remaining versions
    max_backups_count: int = 0
    # The protected versions among the remaining ones, and their bytes.
    protected_versions: int = 0
    protected_bytes: int = 0
    # The limit if no version were protected; None when none is.
    without_protection: int | None = None

    def explain(self) -> str:
        """How the limit was computed, for a person: the rule and its figures."""
        if self.rule is QuotaRule.BACKUPS_COUNT:
            return (
                f"rule maxBackupsCount: maxBackupsCount {self.max_backups_count} is reached "
                f"by {self.protected_versions} protected versions"
            )
        if self.rule is QuotaRule.COLLECTION_TOTAL:
            return (
                f"rule maxCollectionSize: {self.max_collection_size} bytes in total, "
                f"{self.used} already used by the versions that stay"
            )
        if self.rule is QuotaRule.EXTRA_SPACE:
            return (
                f"rule extra space: maxOneVersionSize {self.max_one_version_size} bytes plus "
                f"{self.extra_left} bytes of extra space not yet borrowed"
            )
        return f"rule maxOneVersionSize: {self.max_one_version_size} bytes per version"

    def blocked_by_protection(self, size: int) -> bool:
        """True when an upload of ``size`` bytes is refused only because of protected
        versions: it would fit if none were protected."""
        if self.rule is QuotaRule.BACKUPS_COUNT:
            return True
        if self.protected_versions == 0 or size <= self.bytes:
            return False
        return self.without_protection is not None and size <= self.without_protection


def upload_limit(collection: Collection, remaining: Sequence[StoredVersion]) -> UploadLimit:
    """The limit of the next upload and the rule that gave it.

    ``remaining`` are the versions that stay after this upload's rotation."""
    per_version = collection.max_one_version_size
    extra = extra_space(collection)
    if extra > 0:
        borrowed = sum(max(0, version.size - per_version) for version in remaining)
        extra_left = max(0, extra - borrowed)
        allowed = per_version + (extra - borrowed)
        rule = QuotaRule.EXTRA_SPACE if extra_left > 0 else QuotaRule.ONE_VERSION
    else:
        extra_left = 0
        allowed = per_version
        rule = QuotaRule.ONE_VERSION
    used = sum(v.size for v in remaining)
    left_in_collection = collection.max_collection_size - used
    if left_in_collection < allowed:
        allowed, rule = left_in_collection, QuotaRule.COLLECTION_TOTAL
    protected = [version for version in remaining if version.protected]
    return UploadLimit(
        bytes=max(0, allowed),
        rule=rule,
        max_one_version_size=per_version,
        max_collection_size=collection.max_collection_size,
        extra_left=extra_left,
        used=used,
        max_backups_count=collection.max_backups_count,
        protected_versions=len(protected),
        protected_bytes=sum(version.size for version in protected),
    )


def max_upload_size(collection: Collection, remaining: Sequence[StoredVersion]) -> int:
    """The largest number of bytes the next upload may have; 0 means none at all.

    ``remaining`` are the versions that stay after this upload's rotation."""
    return upload_limit(collection, remaining).bytes


@dataclass(frozen=True)
class NextUpload:
    """An upload at ``now``: the versions its commit rotates out (oldest first), those that
    remain, and the limit of its size."""

    rotated: list[StoredVersion]
    remaining: list[StoredVersion]
    limit: UploadLimit


def next_upload(
    collection: Collection, existing: Sequence[StoredVersion], now: datetime
) -> NextUpload:
    """What an upload created at ``now`` frees and may use: the rotation computed with the
    incoming version in place, then the limit from the versions that remain. When
    protected versions fill ``maxBackupsCount`` nothing is rotated and the limit is 0."""
    found = _next_upload(collection, existing, now)
    if not any(version.protected for version in existing):
        return found
    unprotected = [replace(version, protected=False) for version in existing]
    without = _next_upload(collection, unprotected, now).limit.bytes
    return replace(found, limit=replace(found.limit, without_protection=without))


def _next_upload(
    collection: Collection, existing: Sequence[StoredVersion], now: datetime
) -> NextUpload:
    protected = sum(1 for version in existing if version.protected)
    if protected and protected >= collection.max_backups_count:
        # No slot for the new version: nothing is rotated, and nothing may be added.
        remaining = sorted(existing, key=lambda version: version.number)
        limit = upload_limit(collection, remaining)
        return NextUpload([], remaining, replace(limit, bytes=0, rule=QuotaRule.BACKUPS_COUNT))
    rotated = versions_to_rotate(collection, existing, now)
    gone = {version.number for version in rotated}
    remaining = sorted(
        (version for version in existing if version.number not in gone),
        key=lambda version: version.number,
    )
    return NextUpload(rotated, remaining, upload_limit(collection, remaining))
