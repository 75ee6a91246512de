"""The conditions a collection can be in, and what to announce when they change
(docs/notifications.md, "Events and conditions"). Pure: the facts come in, verdicts and
announcements go out.

A *condition* is judged at a moment from the collection's facts (:func:`judge`): failing
or not, with the figures behind the verdict and a sentence for a person. The *transition*
(:func:`transition`) compares a verdict with what was stored for the same (collection,
condition) and says what to announce: a new failure, a reminder of an ongoing one, a
recovery, or nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from backup_repository.domain.identity import Collection
from backup_repository.domain.notification_channels import EventType
from backup_repository.domain.units import format_duration
from backup_repository.domain.windows import last_closed_window


class Condition(StrEnum):
    MISSING = "missing"  # no backup arrived in time
    SHRUNK = "shrunk"  # the newest version is much smaller than the ones before
    REFUSALS = "refusals"  # uploads refused again and again
    USAGE = "usage"  # the collection is almost full
    EXTRA_SPACE = "extra-space"  # a live version is over maxOneVersionSize
    INTEGRITY = "integrity"  # the last integrity check found damaged versions


# The event type announcing each condition.
EVENT_OF: dict[Condition, EventType] = {
    Condition.MISSING: EventType.MISSING,
    Condition.SHRUNK: EventType.SUSPICIOUS,
    Condition.REFUSALS: EventType.SUSPICIOUS,
    Condition.USAGE: EventType.LIMITS,
    Condition.EXTRA_SPACE: EventType.LIMITS,
    Condition.INTEGRITY: EventType.INTEGRITY,
}

# The refusal reasons the ``refusals`` condition counts: those that say something is wrong
# with the backups themselves or their schedule (not a busy lock or a client gone away).
COUNTED_REFUSALS: frozenset[str] = frozenset({"quota", "openpgp", "window"})


@dataclass(frozen=True)
class VersionFacts:
    number: int
    size: int
    created_at: datetime


@dataclass(frozen=True)
class CollectionFacts:
    """What the database knows about a collection at one moment.

    ``recent`` holds the newest versions, rotated ones included, oldest first (at least
    ``size_sample + 1`` of them when there are that many); ``live`` the versions not rotated
    out; ``last_upload`` when the newest version was recorded (None: never);
    ``watched_since`` when conditions were first judged for the collection (None: now is
    the first time); ``refusals`` the counted refusals within the policy's period;
    ``damaged`` the live version numbers whose latest integrity check found them corrupt
    or missing."""

    recent: Sequence[VersionFacts] = ()
    live: Sequence[VersionFacts] = ()
    last_upload: datetime | None = None
    watched_since: datetime | None = None
    refusals: int = 0
    damaged: Sequence[int] = ()


@dataclass(frozen=True)
class Verdict:
    condition: Condition
    failing: bool
    summary: str
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def event_type(self) -> EventType:
        return EVENT_OF[self.condition]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def judge(collection: Collection, facts: CollectionFacts, now: datetime) -> list[Verdict]:
    """Every condition of ``collection`` at ``now``, in the order of :class:`Condition`."""
    return [
        judge_missing(collection, facts, now),
        judge_shrunk(collection, facts),
        judge_refusals(collection, facts),
        judge_usage(collection, facts),
        judge_extra_space(collection, facts),
        judge_integrity(collection, facts),
    ]


def judge_missing(collection: Collection, facts: CollectionFacts, now: datetime) -> Verdict:
    """With windows: the most recent window that closed more than ``grace_period`` ago saw
    no version created since it opened. Without windows: the newest version is older than
    ``max_age`` + grace (never judged when ``max_age`` is not set).

    A collection that never had a version is judged from when it was first watched
    (``watched_since``): only a window that opened after that counts, and without windows
    the age is counted from then. So a new collection is not missing before its first
    window has come and gone."""
    policy = collection.notifications
    grace = policy.grace_period
    first_seen = facts.watched_since or now
    last = facts.last_upload
    base: dict[str, object] = {
        "lastUpload": _iso(last) if last else None,
        "gracePeriodSeconds": int(grace.total_seconds()),
    }
    if collection.windows:
        slot = last_closed_window(collection.windows, now - grace)
        if slot is None:  # pragma: no cover - there are windows
            return Verdict(Condition.MISSING, False, "no backup window has closed yet", base)
        opened, closed = slot
        facts_out = {**base, "windowOpened": _iso(opened), "windowClosed": _iso(closed)}
        if last is not None and last >= opened:
            return Verdict(
                Condition.MISSING,
                False,
                f"a backup arrived at {_iso(last)}, after the last window opened",
                facts_out,
            )
        if last is None and opened < first_seen:
            return Verdict(
                Condition.MISSING,
                False,
                "no backup yet; the first window to count has not closed",
                facts_out,
            )
        since = f"the last one at {_iso(last)}" if last else "none was ever uploaded"
        return Verdict(
            Condition.MISSING,
            True,
            f"no backup of {collection.name} in the window {_iso(opened)} to {_iso(closed)} "
            f"(grace {format_duration(grace)}); {since}",
            facts_out,
        )
    if policy.max_age is None:
        return Verdict(Condition.MISSING, False, "no windows and no maximum age to judge", base)
    limit = policy.max_age + grace
    reference = last or first_seen
    age = now - reference
    facts_out = {**base, "maxAgeSeconds": int(policy.max_age.total_seconds())}
    if age <= limit:
        return Verdict(Condition.MISSING, False, "the newest backup is recent enough", facts_out)
    what = f"the newest backup is from {_iso(last)}" if last else "no backup was ever uploaded"
    return Verdict(
        Condition.MISSING,
        True,
        f"{what}, more than {format_duration(policy.max_age)} (+ grace "
        f"{format_duration(grace)}) ago for {collection.name}",
        facts_out,
    )


def judge_shrunk(collection: Collection, facts: CollectionFacts) -> Verdict:
    """The newest version is smaller than ``shrink_ratio`` x the median of the
    ``size_sample`` versions before it (rotated ones count); needs at least 3 of them."""
    policy = collection.notifications
    if not facts.recent:
        return Verdict(Condition.SHRUNK, False, "no versions yet")
    ordered = sorted(facts.recent, key=lambda v: v.number)
    newest = ordered[-1]
    previous = ordered[:-1][-policy.size_sample :] if policy.size_sample > 0 else []
    if len(previous) < 3:
        return Verdict(
            Condition.SHRUNK,
            False,
            "fewer than 3 earlier versions to compare with",
            {"version": newest.number, "size": newest.size},
        )
    median = statistics.median(v.size for v in previous)
    limit = policy.shrink_ratio * median
    figures: dict[str, object] = {
        "version": newest.number,
        "size": newest.size,
        "medianOfPrevious": median,
        "previousVersions": [v.number for v in previous],
        "shrinkRatio": policy.shrink_ratio,
    }
    if newest.size >= limit:
        return Verdict(Condition.SHRUNK, False, "the newest version has a usual size", figures)
    ratio = newest.size / median if median else 0.0
    return Verdict(
        Condition.SHRUNK,
        True,
        f"v{newest.number} of {collection.name} has {newest.size} bytes, {ratio:.0%} of the "
        f"median of the {len(previous)} versions before it ({median:g} bytes)",
        figures,
    )


def judge_refusals(collection: Collection, facts: CollectionFacts) -> Verdict:
    """At least ``refusal_threshold`` uploads refused (quota, OpenPGP check, window) within
    ``refusal_period``."""
    policy = collection.notifications
    figures: dict[str, object] = {
        "refusals": facts.refusals,
        "threshold": policy.refusal_threshold,
        "periodSeconds": int(policy.refusal_period.total_seconds()),
    }
    if facts.refusals < policy.refusal_threshold:
        return Verdict(Condition.REFUSALS, False, "few or no refused uploads", figures)
    return Verdict(
        Condition.REFUSALS,
        True,
        f"{facts.refusals} uploads to {collection.name} were refused (quota, OpenPGP check "
        f"or window) in the last {format_duration(policy.refusal_period)}",
        figures,
    )


def judge_usage(collection: Collection, facts: CollectionFacts) -> Verdict:
    """The live versions use at least ``usage_threshold`` of maxCollectionSize."""
    policy = collection.notifications
    used = sum(v.size for v in facts.live)
    limit = collection.max_collection_size
    figures: dict[str, object] = {
        "bytesUsed": used,
        "maxCollectionSize": limit,
        "threshold": policy.usage_threshold,
    }
    if limit <= 0 or used < policy.usage_threshold * limit:
        return Verdict(Condition.USAGE, False, "usage is below the threshold", figures)
    return Verdict(
        Condition.USAGE,
        True,
        f"{collection.name} uses {used} of {limit} bytes ({used / limit:.0%}, threshold "
        f"{policy.usage_threshold:.0%})",
        figures,
    )


def judge_extra_space(collection: Collection, facts: CollectionFacts) -> Verdict:
    """A live version is over maxOneVersionSize (it was stored in the extra space)."""
    limit = collection.max_one_version_size
    over = sorted(v.number for v in facts.live if v.size > limit)
    figures: dict[str, object] = {"versions": over, "maxOneVersionSize": limit}
    if not over:
        return Verdict(Condition.EXTRA_SPACE, False, "no version uses the extra space", figures)
    listed = ", ".join(f"v{n}" for n in over)
    return Verdict(
        Condition.EXTRA_SPACE,
        True,
        f"{listed} of {collection.name} {'is' if len(over) == 1 else 'are'} over "
        f"maxOneVersionSize ({limit} bytes) and stored in the extra space",
        figures,
    )


def judge_integrity(collection: Collection, facts: CollectionFacts) -> Verdict:
    """The latest integrity check found live versions corrupt or missing."""
    damaged = sorted(facts.damaged)
    figures: dict[str, object] = {"versions": damaged}
    if not damaged:
        return Verdict(Condition.INTEGRITY, False, "no damaged version found", figures)
    listed = ", ".join(f"v{n}" for n in damaged)
    return Verdict(
        Condition.INTEGRITY,
        True,
        f"the integrity check found {listed} of {collection.name} corrupt or missing",
        figures,
    )


# -- transitions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredState:
    """What was recorded for one (collection, condition) at the last change.
    ``revision`` grows with each write (the compare-and-set of the evaluators)."""

    collection: str
    condition: Condition
    failing: bool
    since: datetime
    last_announced_at: datetime | None
    last_event_id: str | None
    facts: dict[str, object]
    revision: int
    created_at: datetime


@dataclass(frozen=True)
class Transition:
    """What changes: the new state (``failing`` since ``since``) and the event to announce,
    if any. ``announce`` is None for a change recorded without an event (first sight of a
    condition that is not failing)."""

    failing: bool
    since: datetime
    announce: EventType | None
    reminder: bool = False


def transition(
    state: StoredState | None,
    verdict: Verdict,
    now: datetime,
    reminder_interval: timedelta | None,
) -> Transition | None:
    """What to record and announce for ``verdict`` given the ``state`` stored for the same
    condition (None: never judged). None: nothing changes.

    - not failing (or never judged) → failing: the condition's event;
    - failing → failing, announced ``reminder_interval`` or longer ago: a reminder (same
      type, ``reminder`` true);
    - failing → not failing: ``recovered``;
    - never judged → not failing: recorded, announced nothing;
    - otherwise nothing."""
    if state is None:
        if verdict.failing:
            return Transition(True, now, verdict.event_type)
        return Transition(False, now, None)
    if verdict.failing and not state.failing:
        return Transition(True, now, verdict.event_type)
    if not verdict.failing and state.failing:
        return Transition(False, now, EventType.RECOVERED)
    if verdict.failing and state.failing and reminder_interval is not None:
        last = state.last_announced_at or state.since
        if now - last >= reminder_interval:
            return Transition(True, state.since, verdict.event_type, reminder=True)
    return None
