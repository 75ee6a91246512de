"""Which versions a collection keeps, and by which rule (docs/collections.md, "Rotation").

After a new version is committed and the versions the strategy does not keep are deleted,
the collection holds at most ``maxBackupsCount`` (``n``) versions, the new one always among
them. Versions are ordered by number (higher is newer); their creation times matter to
``fifo-plus-older`` (the spacing of the older copies) and to ``gfs`` (its periods).

``fifo``
    Keep the ``n`` newest versions, counting the new one; the rest go, oldest first.

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

``gfs`` (grandfather-father-son: ``keepLast``, ``keepHourly``, ``keepDaily``,
``keepWeekly``, ``keepMonthly``, ``keepYearly``, ``timeZone``)
    Proxmox Backup Server's prune rules, applied in that order. Each rule walks the versions
    from the newest to the oldest, skipping those an earlier rule already marked (kept or
    not). A *period* (an hour, a day, an ISO week, a month, a year, in ``timeZone``, of the
    version's creation time; for ``keepLast`` each version is a period of its own) that
    holds a version kept by an earlier rule counts as covered and is skipped. The newest
    version of each other period is kept, until the rule has kept its count of periods;
    the older versions of a period it kept are marked as not kept (so later rules skip
    them too). The walk stops at the first new period once the count is used. Versions no
    rule keeps go. Unlike the fifo strategies, this removes versions while there is room:
    two uploads in one day under ``keepDaily`` alone leave one.

    ``maxBackupsCount`` caps what the rules keep: when they keep more than ``n`` versions,
    the oldest of them go (:attr:`Decision.over_count`). The rules favour the newest
    versions and the quota (``domain/quota.py``) sizes the extra space for ``n`` versions,
    so the cap holds as it does for the other strategies; keep the sum of the keep* counts
    at or below ``n`` and it never bites. With every keep* at 0 (which the configuration
    refuses) every version is kept, up to the cap: ``fifo``.

Protected versions (set by a collection manager, services/versions.py) stand outside of
every strategy, as Proxmox Backup Server's protected snapshots stand outside of its prune
rules: they are always kept (:attr:`KeepRule.PROTECTED`), take no slot of a rule, cover no
gfs period and are never the chain of ``fifo-plus-older``. They still count against
``maxBackupsCount``: the strategy decides the unprotected versions with ``n - p`` slots
(``p`` protected versions), so the collection never holds more than ``n`` versions. With
``p >= n`` no unprotected version can stay, the new one included: the quota refuses the
upload (``domain/quota.py``) rather than store a version that would go at once.

``fifo`` and ``fifo-plus-older`` depend neither on ``now`` nor on the new version's size;
``gfs`` depends on ``now`` (the new version's period), never on sizes. The upload pipeline
computes the set at ``now`` before the upload (to size its quota) and records the new
version with that same time, so the set deleted after its commit is the one it computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backup_repository.domain.identity import Collection, RotationStrategy
from backup_repository.domain.versions import StoredVersion

FIFO = "fifo"
FIFO_PLUS_OLDER = "fifo-plus-older"
GFS = "gfs"
STRATEGIES = (FIFO, FIFO_PLUS_OLDER, GFS)


class KeepRule(StrEnum):
    """Why a version stays: the rule that keeps it."""

    LAST = "last"  # keepLast of gfs; the newest versions of fifo and fifo-plus-older
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"
    OLDER = "older"  # an older copy of fifo-plus-older
    PROTECTED = "protected"  # protected by a collection manager: outside of every rule


@dataclass(frozen=True)
class Decision:
    """What the strategy does with one version: the rule that keeps it (None: no rule
    does), the period it stands for under that rule (gfs: ``2026-12-03``, ``2026-W49``,
    …; None otherwise), and whether it goes although a rule keeps it, because the rules
    keep more than ``maxBackupsCount`` versions and it is among the oldest of them."""

    version: StoredVersion
    rule: KeepRule | None = None
    period: str | None = None
    over_count: bool = False

    @property
    def kept(self) -> bool:
        return self.rule is not None and not self.over_count


def decide(collection: Collection, versions: Sequence[StoredVersion]) -> list[Decision]:
    """What the collection's strategy keeps of ``versions``, the newest (highest number)
    being the latest upload; one decision per version, newest first. Protected versions
    are kept outside of the strategy, which decides the others with the slots of
    ``maxBackupsCount`` the protected ones leave (see the module docs)."""
    _check(collection, versions)
    newest_first = sorted(versions, key=lambda version: version.number, reverse=True)
    protected = [version for version in newest_first if version.protected]
    if not protected:
        return _decide(collection.strategy, collection.max_backups_count, newest_first)
    free = [version for version in newest_first if not version.protected]
    slots = collection.max_backups_count - len(protected)
    if slots > 0:
        decided = _decide(collection.strategy, slots, free)
    else:
        # No slot is left: every unprotected version goes, for maxBackupsCount.
        decided = [Decision(version, KeepRule.LAST, over_count=True) for version in free]
    by_number = {d.version.number: d for d in decided}
    by_number.update((v.number, Decision(v, KeepRule.PROTECTED)) for v in protected)
    return [by_number[version.number] for version in newest_first]


def _decide(
    strategy: RotationStrategy, count: int, newest_first: list[StoredVersion]
) -> list[Decision]:
    """The strategy's decisions about unprotected versions (newest first) with ``count``
    slots."""
    if strategy.name == GFS:
        return _gfs(strategy, count, newest_first)
    if strategy.name == FIFO_PLUS_OLDER and newest_first:
        # The newest version is the latest upload; the rule decides the others.
        older = list(reversed(newest_first[1:]))
        if len(older) > count - 1:
            chain, kept = _keep(strategy, count, older)
            return [Decision(newest_first[0], KeepRule.LAST)] + [
                Decision(version, _fifo_rule(version.number, chain, kept))
                for version in newest_first[1:]
            ]
    return [
        Decision(version, KeepRule.LAST if index < count else None)
        for index, version in enumerate(newest_first)
    ]


def versions_to_rotate(
    collection: Collection, existing: Sequence[StoredVersion], now: datetime
) -> list[StoredVersion]:
    """The existing versions to delete once one new version, created at ``now``, is
    stored, oldest first: those the strategy does not keep of ``existing`` plus the new
    one. Only gfs depends on ``now`` (see the module docs)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    _check(collection, existing)
    incoming = StoredVersion(
        number=max((version.number for version in existing), default=0) + 1,
        size=0,
        created_at=now,
    )
    decisions = decide(collection, [*existing, incoming])
    return sorted(
        (d.version for d in decisions if not d.kept and d.version is not incoming),
        key=lambda version: version.number,
    )


def older_copy_slots(strategy: RotationStrategy, max_backups_count: int) -> int:
    """How many slots ``fifo-plus-older`` may give to older copies (0 for the others)."""
    if strategy.name != FIFO_PLUS_OLDER:
        return 0
    return max(0, min(strategy.max_older_copies, max_backups_count - 2))


def _check(collection: Collection, versions: Sequence[StoredVersion]) -> None:
    if collection.strategy.name not in STRATEGIES:
        raise ValueError(f"unknown rotation strategy {collection.strategy.name!r}")
    if collection.max_backups_count < 1:
        raise ValueError("maxBackupsCount must be at least 1")
    if len({version.number for version in versions}) != len(versions):
        raise ValueError("version numbers must be unique")


# --- fifo-plus-older -------------------------------------------------------------------------


def _fifo_rule(number: int, chain: set[int], kept: set[int]) -> KeepRule | None:
    if number in chain:
        return KeepRule.OLDER
    return KeepRule.LAST if number in kept else None


def _keep(
    strategy: RotationStrategy, max_backups_count: int, ordered: list[StoredVersion]
) -> tuple[set[int], set[int]]:
    """Numbers of the older copies, and of every version that stays, among the versions
    before the latest upload (``ordered`` oldest first, more than ``n - 1`` of them)."""
    older_slots = older_copy_slots(strategy, max_backups_count)
    # The recent window counts the latest upload, which is newer than every one of these.
    window = max_backups_count - older_slots - 1
    candidates = ordered[: len(ordered) - window] if window > 0 else ordered
    chain = _older_copies(
        candidates, older_slots, strategy.keep_last_older_not_more_than or timedelta(0)
    )
    copies = {version.number for version in chain}
    kept = set(copies)
    for version in reversed(ordered):
        if len(kept) >= max_backups_count - 1:
            break
        kept.add(version.number)
    return copies, kept


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


# --- gfs -------------------------------------------------------------------------------------

Period = Callable[[datetime], str]


def _hour(local: datetime) -> str:
    return f"{_day(local)}T{local.hour:02d}"


def _day(local: datetime) -> str:
    return f"{_month(local)}-{local.day:02d}"


def _week(local: datetime) -> str:
    # ISO weeks (Monday to Sunday); the ISO year of the first days of January may be the
    # year before, of the last days of December the year after.
    iso = local.isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


def _month(local: datetime) -> str:
    return f"{local.year:04d}-{local.month:02d}"


def _year(local: datetime) -> str:
    return f"{local.year:04d}"


def gfs_rules(strategy: RotationStrategy) -> list[tuple[KeepRule, int]]:
    """The rules of a gfs strategy in the order they apply, with their counts."""
    return [
        (KeepRule.LAST, strategy.keep_last),
        (KeepRule.HOURLY, strategy.keep_hourly),
        (KeepRule.DAILY, strategy.keep_daily),
        (KeepRule.WEEKLY, strategy.keep_weekly),
        (KeepRule.MONTHLY, strategy.keep_monthly),
        (KeepRule.YEARLY, strategy.keep_yearly),
    ]


_PERIODS: dict[KeepRule, Period] = {
    KeepRule.HOURLY: _hour,
    KeepRule.DAILY: _day,
    KeepRule.WEEKLY: _week,
    KeepRule.MONTHLY: _month,
    KeepRule.YEARLY: _year,
}


def _period_of(rule: KeepRule, zone: ZoneInfo) -> Callable[[StoredVersion], str]:
    """The period a version belongs to under ``rule``: for keepLast, itself."""
    if rule is KeepRule.LAST:
        return lambda version: f"v{version.number}"
    label = _PERIODS[rule]
    return lambda version: label(version.created_at.astimezone(zone))


@dataclass(frozen=True)
class _Mark:
    keep: bool
    rule: KeepRule
    period: str


def _gfs(
    strategy: RotationStrategy, max_backups_count: int, newest_first: list[StoredVersion]
) -> list[Decision]:
    rules = [(rule, count) for rule, count in gfs_rules(strategy) if count > 0]
    if not rules:
        # Nothing to select by: everything is kept, up to the cap.
        rules = [(KeepRule.LAST, max_backups_count)]
    try:
        zone = ZoneInfo(strategy.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {strategy.time_zone!r}") from exc
    marks: dict[int, _Mark] = {}
    for rule, count in rules:
        _mark(marks, newest_first, rule, count, _period_of(rule, zone))
    decisions: list[Decision] = []
    kept = 0
    for version in newest_first:
        mark = marks.get(version.number)
        if mark is None or not mark.keep:
            decisions.append(Decision(version))
            continue
        kept += 1
        period = None if mark.rule is KeepRule.LAST else mark.period
        decisions.append(Decision(version, mark.rule, period, over_count=kept > max_backups_count))
    return decisions


def _mark(
    marks: dict[int, _Mark],
    newest_first: list[StoredVersion],
    rule: KeepRule,
    count: int,
    period_of: Callable[[StoredVersion], str],
) -> None:
    """One rule, as Proxmox Backup Server's ``mark_selections``: periods holding a version
    an earlier rule kept are covered; of every other period the newest unmarked version is
    kept and the older ones marked as not kept, until ``count`` periods are kept."""
    covered = {
        period_of(version)
        for version in newest_first
        if (mark := marks.get(version.number)) is not None and mark.keep
    }
    included: set[str] = set()
    for version in newest_first:
        if version.number in marks:
            continue
        period = period_of(version)
        if period in covered:
            continue
        if period in included:
            marks[version.number] = _Mark(keep=False, rule=rule, period=period)
            continue
        if len(included) >= count:
            break
        included.add(period)
        marks[version.number] = _Mark(keep=True, rule=rule, period=period)
