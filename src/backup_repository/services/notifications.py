"""Notifications (docs/notifications.md): the evaluator that judges every collection's
conditions and queues what changed, and the dispatcher that delivers the queue.

- The **evaluator** runs every ``--notify-interval`` on one replica at a time (a
  maintenance lease, :func:`~services.leases.run_on_schedule`), and soon after each upload
  on the replica that took it (:class:`UploadTrigger`), so that a recovery is announced
  promptly. For each (collection, condition) it compares the verdict with the stored state
  (``domain.notifications.transition``) and writes the new state together with the outbox
  rows of the announcement in one transaction, with a compare-and-set on the state: two
  evaluators judging at once cannot both announce.
- The **dispatcher** runs on every replica: it claims due outbox rows (a claim that runs
  out is taken again, so a delivery cut short by a crash is retried), delivers each through
  the sender, and marks it delivered, schedules a retry with exponential backoff, or gives
  up after ``--notify-max-age``. Every attempt is an audit event and is counted.

Uploads never wait for any of it: the trigger only wakes a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from backup_repository.domain import authz
from backup_repository.domain.errors import Forbidden, InvalidInput, NotFound
from backup_repository.domain.identity import Collection
from backup_repository.domain.integrity import CheckStatus
from backup_repository.domain.notification_channels import (
    DeliveryError,
    EventType,
    NotificationEvent,
    subscribers,
)
from backup_repository.domain.notifications import (
    COUNTED_REFUSALS,
    EVENT_OF,
    CollectionFacts,
    StoredState,
    Verdict,
    VersionFacts,
    judge,
    transition,
)
from backup_repository.domain.units import format_duration
from backup_repository.services.auth import AuthContext
from backup_repository.services.clock import Clock, system_clock
from backup_repository.services.collections import caller_event
from backup_repository.services.events import Action, Event, EventSink, NullSink, Outcome
from backup_repository.services.leases import raise_if_cancelled, repeat_forever, run_on_schedule
from backup_repository.services.ports import (
    ConfigurationProvider,
    IntegrityRepository,
    LeaseRepository,
    NotificationFactsRepository,
    NotificationSender,
    NotificationStateRepository,
    OutboxEntry,
    OutboxItem,
    OutboxRepository,
    StateWrite,
    VersionRepository,
)

logger = logging.getLogger(__name__)

# The lease that lets one replica at a time run the scheduled evaluation.
LEASE_NAME: Final = "notifications-evaluate"
DEFAULT_LEASE_SECONDS: Final = 60.0
MAX_POLL_SECONDS: Final = 60.0
# How long a dispatcher holds the rows it claimed; a replica that dies while delivering
# leaves them to the others after this (and frees them itself when it starts again).
DEFAULT_CLAIM_SECONDS: Final = 120.0
# The longest one delivery may take, whatever the channel's own timeout: well inside the
# claim, so a delivery never outlives it.
DEFAULT_DELIVERY_TIMEOUT_S: Final = 60.0
# Rows claimed (and delivered concurrently) at a time.
CLAIM_BATCH: Final = 20
# Retries: 10 s, 20 s, 40 s, ... at most an hour apart, each with up to 20% jitter.
BACKOFF_BASE: Final = timedelta(seconds=10)
BACKOFF_CAP: Final = timedelta(hours=1)
BACKOFF_JITTER: Final = 0.2
# An upload's evaluation waits this long, so that a burst of uploads is judged once.
TRIGGER_DELAY_S: Final = 0.5
MAX_PENDING_TRIGGERS: Final = 1000
# Delivered and failed outbox rows are kept this long after they were queued (the history
# the operations API lists), then deleted by the scheduled evaluation, this many at a time.
OUTBOX_RETENTION: Final = timedelta(days=30)
OUTBOX_PURGE_BATCH: Final = 1000

DEFAULT_OUTBOX_LIMIT: Final = 100
MAX_OUTBOX_LIMIT: Final = 500
MAX_CURSOR_DIGITS: Final = 18
OUTBOX_STATUSES: Final = ("pending", "delivered", "failed")

NO_PERMISSION: Final = "no permissions to operate notifications (systemAdmin, not a narrowed token)"


class DeliveryOutcome:
    DELIVERED: Final = "delivered"
    RETRY: Final = "retry"
    FAILED: Final = "failed"


class DeliveryObserver(Protocol):
    """Counts delivery attempts (the metrics)."""

    def delivery(self, channel: str, outcome: str) -> None: ...


class _NoObserver:
    def delivery(self, channel: str, outcome: str) -> None:
        return None


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """The wait before the next attempt after ``attempts`` failed ones: 10 s doubled for
    each earlier failure, at most an hour, then up to 20% more or less (jitter), so the
    replicas and channels that failed together do not retry together."""
    exponent = max(0, attempts - 1)
    base = BACKOFF_BASE.total_seconds() * (2 ** min(exponent, 30))
    seconds = min(base, BACKOFF_CAP.total_seconds())
    spread = (rng or random).uniform(-BACKOFF_JITTER, BACKOFF_JITTER)
    return timedelta(seconds=seconds * (1 + spread))


@dataclass(frozen=True)
class Announcement:
    """An event queued by an evaluation, with the channels it went to."""

    event: NotificationEvent
    channels: tuple[str, ...]


@dataclass(frozen=True)
class TestResult:
    channel: str
    event_id: str
    delivered: bool
    error: str = ""


@dataclass(frozen=True)
class CollectionStates:
    collection: str
    channels: tuple[str, ...]  # channels subscribed to any event of the collection
    states: tuple[StoredState, ...]


@dataclass(frozen=True)
class OutboxPage:
    entries: Sequence[OutboxEntry]
    next_cursor: str | None


def _may_operate(ctx: AuthContext) -> None:
    # The same rule as the audit log: a systemAdmin with a token that is not narrowed.
    if not authz.may_read_audit(ctx.principal):
        raise Forbidden(NO_PERMISSION)


class UploadTrigger:
    """An ``EventSink``: every upload, accepted or refused, and every damaged version a
    scheduled integrity check finds, asks for an evaluation of its collection soon. Never
    waits for it."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.wake = asyncio.Event()

    async def emit(self, event: Event) -> None:
        if event.action in (Action.UPLOAD, Action.VERIFY) and event.collection:
            # Refused uploads may name collections that do not exist: at most this many
            # names wait (the scheduled evaluation judges every collection anyway).
            if len(self.pending) < MAX_PENDING_TRIGGERS:
                self.pending.add(event.collection)
            self.wake.set()


class NotificationService:
    def __init__(
        self,
        config: ConfigurationProvider,
        versions: VersionRepository,
        integrity: IntegrityRepository,
        facts: NotificationFactsRepository,
        states: NotificationStateRepository,
        outbox: OutboxRepository,
        sender: NotificationSender,
        *,
        max_age: timedelta = timedelta(hours=24),
        events: EventSink | None = None,
        leases: LeaseRepository | None = None,
        observer: DeliveryObserver | None = None,
        clock: Clock = system_clock,
        instance: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        claim_seconds: float = DEFAULT_CLAIM_SECONDS,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._versions = versions
        self._integrity = integrity
        self._facts = facts
        self._states = states
        self._outbox = outbox
        self._sender = sender
        self._max_age = max_age
        self._events: EventSink = events or NullSink()
        self._leases = leases
        self._observer: DeliveryObserver = observer or _NoObserver()
        self._clock = clock
        self._instance = instance or secrets.token_hex(8)
        self._lease_seconds = lease_seconds
        self._claim_seconds = claim_seconds
        self._delivery_timeout = min(delivery_timeout, claim_seconds / 2)
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self.trigger = UploadTrigger()
        self._dispatch_wake = asyncio.Event()

    # -- evaluation ----------------------------------------------------------------------

    async def evaluate(self, collections: Iterable[str] | None = None) -> list[Announcement]:
        """Judge the conditions of ``collections`` (default: every configured one) now and
        queue what changed. Returns the announcements this call queued (an announcement
        another evaluator made first is not repeated)."""
        snapshot = self._config.snapshot()
        names = sorted(snapshot.collections if collections is None else collections)
        last_uploads = await self._versions.last_uploads()
        announced: list[Announcement] = []
        for name in names:
            collection = snapshot.collections.get(name)
            if collection is None:
                continue
            announced += await self._evaluate_one(collection, last_uploads.get(name))
        if announced:
            self._dispatch_wake.set()
        return announced

    async def _collection_facts(
        self, collection: Collection, last_upload: datetime | None, stored: Sequence[StoredState]
    ) -> CollectionFacts:
        policy = collection.notifications
        now = self._clock()
        recent = await self._facts.recent_versions(collection.name, policy.size_sample + 1)
        live = [
            VersionFacts(v.number, v.size, v.created_at)
            for v in await self._versions.live_versions(collection.name)
        ]
        refusals = await self._facts.counted_refusals(
            collection.name, now - policy.refusal_period, sorted(COUNTED_REFUSALS)
        )
        live_numbers = {v.number for v in live}
        damaged = [
            c.number
            for c in await self._integrity.results(collection.name)
            if CheckStatus(c.status).is_damage and c.number in live_numbers
        ]
        return CollectionFacts(
            recent=recent,
            live=live,
            last_upload=last_upload,
            watched_since=min((s.created_at for s in stored), default=None),
            refusals=refusals,
            damaged=damaged,
        )

    async def _evaluate_one(
        self, collection: Collection, last_upload: datetime | None
    ) -> list[Announcement]:
        stored = await self._states.states(collection.name)
        facts = await self._collection_facts(collection, last_upload, stored)
        now = self._clock()
        by_condition = {s.condition: s for s in stored}
        announced: list[Announcement] = []
        for verdict in judge(collection, facts, now):
            state = by_condition.get(verdict.condition)
            change = transition(state, verdict, now, collection.notifications.reminder_interval)
            if change is None:
                continue
            write = StateWrite(
                collection=collection.name,
                condition=verdict.condition.value,
                failing=change.failing,
                since=change.since,
                facts=verdict.facts,
                at=now,
            )
            if change.announce is None:
                await self._states.apply(state, write, ())
                continue
            event = self._event(collection, verdict, change.announce, change.reminder, now)
            cleared = change.announce is EventType.RECOVERED
            channels = subscribers(
                collection.name,
                collection.notifications,
                self._config.snapshot().channels,
                change.announce,
                condition=EVENT_OF[verdict.condition] if cleared else None,
            )
            write = replace(write, event_id=event.id, announced_at=now)
            items = [OutboxItem(channel, event, now) for channel in channels]
            if not await self._states.apply(state, write, items):
                logger.info(
                    "%s %s: another evaluator recorded the change first",
                    collection.name,
                    verdict.condition.value,
                )
                continue
            logger.info(
                "notification %s (%s%s) for %s queued for %s",
                event.type.value,
                event.condition,
                ", reminder" if event.reminder else "",
                collection.name,
                ", ".join(channels) or "no channel",
                extra={"event_id": event.id},
            )
            announced.append(Announcement(event, tuple(channels)))
        return announced

    @staticmethod
    def _event(
        collection: Collection,
        verdict: Verdict,
        announce: EventType,
        reminder: bool,
        now: datetime,
    ) -> NotificationEvent:
        summary = verdict.summary
        if announce is EventType.RECOVERED:
            summary = f"{verdict.condition.value} cleared for {collection.name}: {summary}"
        elif reminder:
            summary = f"still: {summary}"
        return NotificationEvent(
            id=str(uuid.uuid4()),
            type=announce,
            condition=verdict.condition.value,
            collection=collection.name,
            occurred_at=now,
            summary=summary,
            facts=dict(verdict.facts),
            reminder=reminder,
        )

    async def run_evaluator(self, interval: float) -> None:
        """Evaluate every ``interval`` seconds, one replica at a time, until cancelled.
        Never raises."""
        if self._leases is None:
            raise RuntimeError("NotificationService was built without a lease repository")
        leases = self._leases
        poll = max(0.05, min(interval, MAX_POLL_SECONDS))
        logger.info(
            "notifications evaluated every %s", format_duration(timedelta(seconds=interval))
        )

        async def scheduled() -> None:
            await self.evaluate()
            await self.purge_outbox()

        async def turn() -> object:
            return await run_on_schedule(
                leases,
                LEASE_NAME,
                f"{self._instance}:{secrets.token_hex(4)}",
                self._lease_seconds,
                interval,
                scheduled,
                "notification evaluation lease",
            )

        await repeat_forever(turn, poll, "notification evaluation")

    async def run_triggered(self, delay: float = TRIGGER_DELAY_S) -> None:
        """Evaluate the collections uploads went to, soon after the uploads, on this
        replica (the compare-and-set keeps it from repeating what another replica
        announced). Never raises."""
        trigger = self.trigger
        while True:
            await trigger.wake.wait()
            await asyncio.sleep(delay)
            trigger.wake.clear()
            names, trigger.pending = trigger.pending, set()
            try:
                await self.evaluate(names)
            except Exception as exc:
                raise_if_cancelled()
                logger.warning("evaluation after an upload failed: %s; the schedule goes on", exc)

    # -- delivery ------------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Claim the due rows and deliver them (concurrently); how many were attempted."""
        claimer = f"{self._instance}:{secrets.token_hex(4)}"
        real_now = datetime.now(UTC)
        entries = await self._outbox.claim(
            claimer,
            self._clock(),
            real_now,
            real_now + timedelta(seconds=self._claim_seconds),
            CLAIM_BATCH,
        )
        if entries:
            outcomes = await asyncio.gather(
                *(self._deliver(entry, claimer) for entry in entries), return_exceptions=True
            )
            for entry, outcome in zip(entries, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    # The claim runs out and the row is delivered again.
                    logger.warning(
                        "outbox row %d: the outcome could not be recorded: %s", entry.id, outcome
                    )
        return len(entries)

    async def run_dispatcher(self, poll: float) -> None:
        """Deliver what is due every ``poll`` seconds, or at once when this replica queued
        something, until cancelled. Never raises."""
        failing = False
        while True:
            attempted = 0
            try:
                attempted = await self.dispatch_once()
            except Exception as exc:
                raise_if_cancelled()
                # Said once per outage, not at every round.
                if not failing:
                    logger.warning("notification delivery failed: %s; trying again", exc)
                failing = True
            else:
                if failing:
                    logger.info("notification delivery works again")
                failing = False
            if attempted:
                continue
            try:
                async with asyncio.timeout(poll):
                    await self._dispatch_wake.wait()
            except TimeoutError:
                pass
            self._dispatch_wake.clear()

    async def _deliver(self, entry: OutboxEntry, claimer: str) -> None:
        event = entry.event
        attempt = entry.attempts + 1
        channel = self._config.snapshot().channels.get(entry.channel)
        error = ""
        permanent = False
        retry_after: timedelta | None = None
        if channel is None:
            error = f"channel {entry.channel} is not configured (any more)"
            permanent = True
        else:
            try:
                async with asyncio.timeout(self._delivery_timeout):
                    await self._sender.send(channel, event)
            except DeliveryError as exc:
                error, permanent, retry_after = exc.reason, exc.permanent, exc.retry_after
            except TimeoutError:
                took = format_duration(timedelta(seconds=self._delivery_timeout))
                error = f"the delivery took longer than {took}"
            except Exception as exc:
                logger.exception("delivery to channel %s failed", entry.channel)
                error = f"{type(exc).__name__}: {exc}"
        now = self._clock()
        label = entry.channel if channel is not None else "<unknown>"
        if not error:
            recorded = await self._outbox.mark_delivered(entry.id, claimer, now)
            outcome = DeliveryOutcome.DELIVERED
        elif permanent or now >= entry.created_at + self._max_age:
            recorded = await self._outbox.mark_failed(entry.id, claimer, now, error)
            outcome = DeliveryOutcome.FAILED
        else:
            wait = backoff(attempt, self._rng)
            if retry_after is not None:
                wait = max(wait, min(retry_after, BACKOFF_CAP))
            next_at = min(now + wait, entry.created_at + self._max_age)
            recorded = await self._outbox.mark_retry(entry.id, claimer, next_at, error)
            outcome = DeliveryOutcome.RETRY
        if not recorded:
            logger.warning(
                "outbox row %d: the claim ran out during the delivery; another replica may "
                "deliver it again (receivers drop duplicates by event id)",
                entry.id,
            )
        self._observer.delivery(label, outcome)
        detail = (
            f"{event.type.value} event {event.id} ({event.condition}) to channel "
            f"{entry.channel}, attempt {attempt}"
        )
        if error:
            detail += f": {error}"
        level = logging.INFO if outcome == DeliveryOutcome.DELIVERED else logging.WARNING
        logger.log(level, "notification %s: %s", outcome, detail)
        await self._events.emit(
            Event(
                Action.NOTIFICATION_DELIVERY,
                Outcome.SUCCESS if outcome == DeliveryOutcome.DELIVERED else Outcome.FAILURE,
                collection=event.collection[:255],
                reason=outcome,
                detail=detail[:1024],
            )
        )

    async def free_claims_of_previous_life(self, tag: str | None) -> int:
        """At start-up: free the rows a previous life of this replica (``tag``; None: any
        server, on SQLite) was delivering when it died, so they go out at once instead of
        after the claim runs out. Failures are logged, never raised."""
        try:
            freed = await self._outbox.release_server_claims(tag)
        except Exception as exc:
            logger.warning("could not free the notification claims of a previous run: %s", exc)
            return 0
        if freed:
            logger.warning("%d notification deliveries of a previous run will be retried", freed)
        return freed

    # -- operations ----------------------------------------------------------------------

    async def send_test(self, ctx: AuthContext, channel_name: str) -> TestResult:
        """Send a ``test`` event through the channel now, outside the outbox; the answer
        says whether the channel took it. Audited."""
        _may_operate(ctx)
        channel = self._config.snapshot().channels.get(channel_name)
        if channel is None:
            raise NotFound(
                f"no notification channel named {channel_name}; GET "
                "/api/stable/notifications/state lists the channels collections use"
            )
        event = NotificationEvent(
            # As backup-repository notify-test names its test events.
            id=f"test-{uuid.uuid4()}",
            type=EventType.TEST,
            condition="test",
            collection="",
            occurred_at=self._clock(),
            summary=f"a test message to channel {channel.name}, sent by {ctx.user.name}",
            facts={"requestedBy": ctx.user.name},
        )
        error = ""
        try:
            async with asyncio.timeout(self._delivery_timeout):
                await self._sender.send(channel, event)
        except DeliveryError as exc:
            error = exc.reason
        except TimeoutError:
            error = (
                f"the delivery took longer than "
                f"{format_duration(timedelta(seconds=self._delivery_timeout))}"
            )
        except Exception as exc:
            logger.exception("test delivery to channel %s failed", channel.name)
            error = f"{type(exc).__name__}: {exc}"
        detail = f"test event {event.id} to channel {channel.name}"
        await self._events.emit(
            caller_event(
                ctx,
                Action.NOTIFICATION_TEST,
                Outcome.FAILURE if error else Outcome.SUCCESS,
                "",
                reason=DeliveryOutcome.FAILED if error else DeliveryOutcome.DELIVERED,
                detail=(f"{detail}: {error}" if error else detail)[:1024],
            )
        )
        return TestResult(channel.name, event.id, not error, error)

    async def outbox_page(
        self, ctx: AuthContext, status: str | None, limit: int, cursor: str | None
    ) -> OutboxPage:
        _may_operate(ctx)
        if status is not None and status not in OUTBOX_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(OUTBOX_STATUSES)}")
        if not 1 <= limit <= MAX_OUTBOX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_OUTBOX_LIMIT}")
        before = None
        if cursor is not None:
            if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= MAX_CURSOR_DIGITS):
                raise InvalidInput("cursor: not a cursor of this endpoint (pass nextCursor)")
            before = int(cursor)
        rows = await self._outbox.page(status, limit + 1, before)
        if len(rows) > limit:
            rows = rows[:limit]
            return OutboxPage(rows, str(rows[-1].id))
        return OutboxPage(rows, None)

    async def current_states(self, ctx: AuthContext) -> list[CollectionStates]:
        """Every configured collection with its stored condition states and the channels
        it notifies."""
        _may_operate(ctx)
        snapshot = self._config.snapshot()
        stored: dict[str, list[StoredState]] = {}
        for state in await self._states.states():
            stored.setdefault(state.collection, []).append(state)
        result: list[CollectionStates] = []
        for name in sorted(snapshot.collections):
            policy = snapshot.collections[name].notifications
            channels = {
                channel
                for event in EventType
                if event is not EventType.TEST
                for channel in subscribers(name, policy, snapshot.channels, event)
            }
            result.append(
                CollectionStates(name, tuple(sorted(channels)), tuple(stored.get(name, ())))
            )
        return result

    async def purge_outbox(self) -> int:
        """Delete delivered and failed rows queued more than :data:`OUTBOX_RETENTION` ago
        (one batch; the next scheduled evaluation goes on); how many."""
        purged = await self._outbox.purge(self._clock() - OUTBOX_RETENTION, OUTBOX_PURGE_BATCH)
        if purged:
            logger.info("deleted %d notification outbox rows older than 30 days", purged)
        return purged

    async def outbox_counts(self) -> dict[str, int]:
        """Outbox rows per status (the depth gauge)."""
        return await self._outbox.counts()
