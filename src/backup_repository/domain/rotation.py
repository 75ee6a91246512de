"""Which versions go when a new one is committed (docs/collections.md, "Rotation").

After the new version is committed and the returned versions are deleted, the collection
holds at most ``maxBackupsCount`` versions, the new one always among them. Versions are
ordered by number (higher is newer); ``created_at`` only matters for the spacing of the
older copies kept by ``fifo-plus-older``.

``fifo``
    Keep the ``n = maxBackupsCount`` newest versions, counting the new one; the rest go,
    oldest first.

``fifo-plus-older`` (``D = keepLastOlderNotMoreThan``, ``K = maxOlderCopies``)
    Up to ``k = min(K, n - 2)`` slots (none when ``n < 3``) hold *older copies*, so that at
    least the new version and the one before it always stay.

    1. The ``n - k`` newest versions (the new one included) form the *recent window*.
    2. The versions older than the window are walked from the oldest to the newest, building
       a chain of older copies: the oldest joins; each next one joins when it was created at
       least ``D`` after the newest chain member; when the chain grows beyond ``k`` members,
       its oldest member leaves it.
    3. The chain is kept, and the remaining slots are filled with the newest versions.
       Everything else goes.

    Deleted versions never come back and the chain only advances, so applying the rule at
    every upload is stable: a version kept as an older copy stays one until ``k`` newer
    copies, each ``D`` apart, have replaced it. A run of bad recent backups therefore leaves
    good copies that are older than the recent window by up to about ``k * D``.

Neither strategy depends on ``now`` or on the new version's size, so the set computed
before an upload (to size its quota) is the set deleted after its commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from backup_repository.domain.identity import Collection, RotationStrategy
from backup_repository.domain.versions import StoredVersion

FIFO = "fifo"
FIFO_PLUS_OLDER = "fifo-plus-older"
STRATEGIES = (FIFO, FIFO_PLUS_OLDER)


def versions_to_rotate(
    collection: Collection, existing: Sequence[StoredVersion], now: datetime
) -> list[StoredVersion]:
    """The existing versions to delete once one new version (committed at ``now``) is
    stored, oldest first. The answer does not depend on ``now`` (see the module docs)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if collection.strategy.name not in STRATEGIES:
        raise ValueError(f"unknown rotation strategy {collection.strategy.name!r}")
    if collection.max_backups_count < 1:
        raise ValueError("maxBackupsCount must be at least 1")
    ordered = sorted(existing, key=lambda version: version.number)
    if len({version.number for version in ordered}) != len(ordered):
        raise ValueError("version numbers must be unique")
    # One slot belongs to the new version.
    slots = collection.max_backups_count - 1
    if len(ordered) <= slots:
        return []
    kept = _keep(collection.strategy, collection.max_backups_count, ordered)
    return [version for version in ordered if version.number not in kept]


def older_copy_slots(strategy: RotationStrategy, max_backups_count: int) -> int:
    """How many slots ``fifo-plus-older`` may give to older copies (0 for ``fifo``)."""
    if strategy.name != FIFO_PLUS_OLDER:
        return 0
    return max(0, min(strategy.max_older_copies, max_backups_count - 2))


def _keep(
    strategy: RotationStrategy, max_backups_count: int, ordered: list[StoredVersion]
) -> set[int]:
    """Numbers of the existing versions (``ordered`` oldest first) that stay."""
    older_slots = older_copy_slots(strategy, max_backups_count)
    # The recent window counts the new version, which is newer than every existing one.
    window = max_backups_count - older_slots - 1
    candidates = ordered[: len(ordered) - window] if window > 0 else ordered
    chain = _older_copies(
        candidates, older_slots, strategy.keep_last_older_not_more_than or timedelta(0)
    )
    kept = {version.number for version in chain}
    for version in reversed(ordered):
        if len(kept) >= max_backups_count - 1:
            break
        kept.add(version.number)
    return kept


def _older_copies(
    candidates: list[StoredVersion], slots: int, spacing: timedelta
) -> list[StoredVersion]:
    """The chain of older copies among ``candidates`` (oldest first), at most ``slots``
    long, each member created at least ``spacing`` after the one before it."""
    if slots <= 0:
        return []
    chain: list[StoredVersion] = []
    for version in candidates:
        if chain and version.created_at - chain[-1].created_at < spacing:
            continue
        chain.append(version)
        if len(chain) > slots:
            del chain[0]
    return chain
