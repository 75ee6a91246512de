"""The conditions of a collection and the transitions between stored and judged states
(domain/notifications.py), and the retry backoff of the dispatcher."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from backup_repository.domain.identity import BackupWindow, Collection
from backup_repository.domain.notification_channels import EventType, NotificationPolicy
from backup_repository.domain.notifications import (
    CollectionFacts,
    Condition,
    StoredState,
    Verdict,
    VersionFacts,
    judge,
    judge_extra_space,
    judge_integrity,
    judge_missing,
    judge_refusals,
    judge_shrunk,
    judge_usage,
    transition,
)
from backup_repository.services.notifications import BACKOFF_CAP, backoff

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
MB = 1_000_000
# Every day at 02:00 for an hour.
NIGHTLY = BackupWindow(cron="0 2 * * *", duration=timedelta(hours=1))


def collection(**policy: object) -> Collection:
    return Collection(
        name="db",
        description="",
        filename_template="db-${version}.tar",
        max_backups_count=5,
        max_one_version_size=10 * MB,
        max_collection_size=100 * MB,
        windows=(NIGHTLY,),
        notifications=NotificationPolicy(**policy),  # type: ignore[arg-type]
    )


def version(number: int, size: int, at: datetime = T0) -> VersionFacts:
    return VersionFacts(number=number, size=size, created_at=at)


# -- missing ---------------------------------------------------------------------------------


def test_missing_after_the_window_and_the_grace_period_without_a_version() -> None:
    c = collection(grace_period=timedelta(minutes=15))
    watched = T0 - timedelta(days=1)
    last = T0 - timedelta(days=1) + timedelta(hours=2, minutes=10)  # yesterday's window
    facts = CollectionFacts(last_upload=last, watched_since=watched)
    # Today's window is 02:00-03:00; the grace runs until 03:15.
    assert not judge_missing(c, facts, T0 + timedelta(hours=3, minutes=14)).failing
    verdict = judge_missing(c, facts, T0 + timedelta(hours=3, minutes=16))
    assert verdict.failing
    assert verdict.facts["windowOpened"] == "2026-12-01T02:00:00Z"
    assert "2026-12-01T02:00:00Z" in verdict.summary


def test_a_version_since_the_window_opened_is_not_missing() -> None:
    c = collection()
    facts = CollectionFacts(
        last_upload=T0 + timedelta(hours=2, minutes=5), watched_since=T0 - timedelta(days=3)
    )
    assert not judge_missing(c, facts, T0 + timedelta(hours=5)).failing


def test_a_never_uploaded_collection_counts_only_windows_opened_after_it_was_watched() -> None:
    c = collection()
    # First watched at 02:30, inside today's window: that window does not count.
    facts = CollectionFacts(watched_since=T0 + timedelta(hours=2, minutes=30))
    assert not judge_missing(c, facts, T0 + timedelta(hours=6)).failing
    # Tomorrow's window opened after it was watched and closed without a version.
    tomorrow = T0 + timedelta(days=1, hours=3, minutes=30)
    verdict = judge_missing(c, facts, tomorrow)
    assert verdict.failing
    assert "none was ever uploaded" in verdict.summary
    # Never watched before (the first evaluation): not missing.
    assert not judge_missing(c, CollectionFacts(), tomorrow).failing


def test_without_windows_missing_needs_a_max_age() -> None:
    c = replace(collection(), windows=())
    old = CollectionFacts(last_upload=T0 - timedelta(days=30), watched_since=T0)
    assert not judge_missing(c, old, T0).failing
    aged = replace(
        collection(max_age=timedelta(hours=24), grace_period=timedelta(hours=1)), windows=()
    )
    recent = CollectionFacts(last_upload=T0 - timedelta(hours=24, minutes=59))
    assert not judge_missing(aged, recent, T0).failing
    late = CollectionFacts(last_upload=T0 - timedelta(hours=25, minutes=1))
    assert judge_missing(aged, late, T0).failing
    # Never uploaded: counted from when it was first watched.
    never = CollectionFacts(watched_since=T0 - timedelta(hours=26))
    assert judge_missing(aged, never, T0).failing
    assert not judge_missing(aged, CollectionFacts(), T0).failing


# -- shrunk ----------------------------------------------------------------------------------


def test_shrunk_compares_with_the_median_of_the_previous_versions() -> None:
    c = collection(shrink_ratio=0.5, size_sample=5)
    usual = [version(n, 100) for n in range(1, 6)]
    assert not judge_shrunk(c, CollectionFacts(recent=[*usual, version(6, 50)])).failing
    verdict = judge_shrunk(c, CollectionFacts(recent=[*usual, version(6, 10)]))
    assert verdict.failing
    assert verdict.facts["medianOfPrevious"] == 100
    assert "10%" in verdict.summary


def test_shrunk_needs_three_previous_versions_and_uses_only_the_sample() -> None:
    c = collection(size_sample=3)
    assert not judge_shrunk(
        c, CollectionFacts(recent=[version(1, 100), version(2, 100), version(3, 1)])
    ).failing
    # Only the 3 versions before the newest count: the huge first one is left out.
    facts = CollectionFacts(
        recent=[version(1, 10_000), version(2, 10), version(3, 10), version(4, 10), version(5, 6)]
    )
    assert not judge_shrunk(c, facts).failing
    assert not judge_shrunk(c, CollectionFacts()).failing


# -- refusals, usage, extra space, integrity -------------------------------------------------


def test_refusals_at_the_threshold() -> None:
    c = collection(refusal_threshold=3)
    assert not judge_refusals(c, CollectionFacts(refusals=2)).failing
    assert judge_refusals(c, CollectionFacts(refusals=3)).failing


def test_usage_at_the_threshold_of_max_collection_size() -> None:
    c = collection(usage_threshold=0.9)
    below = CollectionFacts(live=[version(1, 89 * MB)])
    at = CollectionFacts(live=[version(1, 45 * MB), version(2, 45 * MB)])
    assert not judge_usage(c, below).failing
    verdict = judge_usage(c, at)
    assert verdict.failing
    assert verdict.facts["bytesUsed"] == 90 * MB


def test_extra_space_names_the_versions_over_max_one_version_size() -> None:
    c = collection()
    facts = CollectionFacts(live=[version(1, 10 * MB), version(2, 10 * MB + 1)])
    verdict = judge_extra_space(c, facts)
    assert verdict.failing
    assert verdict.facts["versions"] == [2]
    assert not judge_extra_space(c, CollectionFacts(live=[version(1, 10 * MB)])).failing


def test_integrity_fails_with_damaged_versions() -> None:
    c = collection()
    assert judge_integrity(c, CollectionFacts(damaged=[3, 1])).facts["versions"] == [1, 3]
    assert not judge_integrity(c, CollectionFacts()).failing


def test_judge_gives_every_condition_with_its_event_type() -> None:
    verdicts = judge(collection(), CollectionFacts(), T0)
    assert [v.condition for v in verdicts] == list(Condition)
    types = {v.condition: v.event_type for v in verdicts}
    assert types[Condition.MISSING] is EventType.MISSING
    assert types[Condition.SHRUNK] is EventType.SUSPICIOUS
    assert types[Condition.REFUSALS] is EventType.SUSPICIOUS
    assert types[Condition.USAGE] is EventType.LIMITS
    assert types[Condition.EXTRA_SPACE] is EventType.LIMITS
    assert types[Condition.INTEGRITY] is EventType.INTEGRITY


# -- transitions -----------------------------------------------------------------------------


def stored(failing: bool, announced: datetime | None = T0) -> StoredState:
    return StoredState(
        collection="db",
        condition=Condition.USAGE,
        failing=failing,
        since=T0,
        last_announced_at=announced,
        last_event_id="e1" if announced else None,
        facts={},
        revision=3,
        created_at=T0,
    )


FAILING = Verdict(Condition.USAGE, True, "full")
FINE = Verdict(Condition.USAGE, False, "fine")
DAY = timedelta(hours=24)


def test_a_new_failure_is_announced_once() -> None:
    now = T0 + timedelta(hours=1)
    first = transition(None, FAILING, now, DAY)
    assert first is not None
    assert first.announce is EventType.LIMITS
    assert not first.reminder
    flipped = transition(stored(False), FAILING, now, DAY)
    assert flipped is not None
    assert flipped.announce is EventType.LIMITS
    assert flipped.since == now
    assert transition(stored(True), FAILING, now, DAY) is None


def test_a_reminder_after_the_interval_keeps_since() -> None:
    later = T0 + DAY
    reminder = transition(stored(True), FAILING, later, DAY)
    assert reminder is not None
    assert reminder.reminder
    assert reminder.announce is EventType.LIMITS
    assert reminder.since == T0
    assert transition(stored(True), FAILING, later, None) is None


def test_recovery_and_quiet_states() -> None:
    recovered = transition(stored(True), FINE, T0 + timedelta(hours=2), DAY)
    assert recovered is not None
    assert recovered.announce is EventType.RECOVERED
    assert not recovered.failing
    first = transition(None, FINE, T0, DAY)
    assert first is not None
    assert first.announce is None
    assert not first.failing
    assert transition(stored(False), FINE, T0 + DAY * 3, DAY) is None


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempts, base in ((1, 10), (2, 20), (3, 40), (4, 80)):
        wait = backoff(attempts, rng).total_seconds()
        assert base * 0.8 <= wait <= base * 1.2, (attempts, wait)
    assert backoff(40, rng) <= BACKOFF_CAP * 1.2
    assert backoff(40, rng) >= BACKOFF_CAP * 0.8


@pytest.mark.parametrize("attempts", [0, 1])
def test_the_first_retry_waits_about_ten_seconds(attempts: int) -> None:
    assert 8 <= backoff(attempts).total_seconds() <= 12


async def test_the_upload_trigger_keeps_a_bounded_set_of_names() -> None:
    from backup_repository.services.events import Action, Event, Outcome
    from backup_repository.services.notifications import MAX_PENDING_TRIGGERS, UploadTrigger

    trigger = UploadTrigger()
    await trigger.emit(Event(Action.DOWNLOAD, Outcome.SUCCESS, collection="db"))
    assert not trigger.wake.is_set()
    for n in range(MAX_PENDING_TRIGGERS + 50):
        await trigger.emit(Event(Action.UPLOAD, Outcome.FAILURE, collection=f"invented-{n}"))
    assert len(trigger.pending) == MAX_PENDING_TRIGGERS
    assert trigger.wake.is_set()
