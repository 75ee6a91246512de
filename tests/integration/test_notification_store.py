"""Notification states and the outbox on SQLite and PostgreSQL: the compare-and-set that
lets exactly one evaluator announce a change, claims of due rows, retries with backoff and
giving up; and the service in process (evaluate, dispatch) with a sender of the test's own
that implements the ``NotificationSender`` port."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.integrity import SqlIntegrityRepository, SqlLeaseRepository
from backup_repository.db.notifications import (
    SqlNotificationFacts,
    SqlNotificationStateRepository,
    SqlOutboxRepository,
)
from backup_repository.db.repositories import transaction
from backup_repository.db.tables import backup_versions, notification_outbox
from backup_repository.db.versions import SqlVersionRepository, insert_version
from backup_repository.domain.identity import Collection
from backup_repository.domain.notification_channels import (
    Channel,
    ChannelType,
    DeliveryError,
    EventType,
    NotificationEvent,
    NotificationPolicy,
    Subscription,
    WebhookTarget,
)
from backup_repository.domain.notifications import Condition
from backup_repository.services.events import Action, Outcome
from backup_repository.services.notifications import NotificationService
from backup_repository.services.ports import (
    ConfigSnapshot,
    OutboxItem,
    StateWrite,
    VersionRecord,
)
from support import RecordingSink

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def event(collection: str = "db", type_: EventType = EventType.LIMITS) -> NotificationEvent:
    return NotificationEvent(
        id=str(uuid.uuid4()),
        type=type_,
        condition="usage",
        collection=collection,
        occurred_at=T0,
        summary="db uses 95 of 100 bytes",
        facts={"bytesUsed": 95},
    )


async def outbox_rows(engine: AsyncEngine) -> int:
    async with transaction(engine) as connection:
        return int(
            (await connection.execute(select(func.count(notification_outbox.c.id)))).scalar_one()
        )


# -- states ----------------------------------------------------------------------------------


async def test_state_is_written_by_exactly_one_of_racing_evaluators(db_engine: AsyncEngine) -> None:
    states = SqlNotificationStateRepository(db_engine)
    first = StateWrite("db", "usage", True, T0, {"bytesUsed": 95}, T0, "e-0", T0)
    item = OutboxItem("ops", event(), T0)
    assert await states.apply(None, first, [item])
    # A second "first sight" of the same condition loses, and queues nothing.
    assert not await states.apply(None, first, [OutboxItem("ops", event(), T0)])
    (stored,) = await states.states("db")
    assert stored.condition is Condition.USAGE
    assert stored.failing
    assert stored.last_event_id == "e-0"
    assert stored.facts == {"bytesUsed": 95}
    assert await outbox_rows(db_engine) == 1

    # Eight evaluators found the same state and judged it recovered: one write wins.
    later = T0 + timedelta(hours=1)

    async def recover(n: int) -> bool:
        write = StateWrite("db", "usage", False, later, {}, later, f"e-{n + 1}", later)
        return await states.apply(stored, write, [OutboxItem("ops", event(), later)])

    results = await asyncio.gather(*(recover(n) for n in range(8)))
    assert results.count(True) == 1
    assert await outbox_rows(db_engine) == 2
    (after,) = await states.states("db")
    assert not after.failing
    assert after.revision == stored.revision + 1
    assert after.created_at == stored.created_at
    # A write without an announcement keeps the last announced event.
    quiet = StateWrite("db", "usage", False, later, {"bytesUsed": 1}, later)
    assert await states.apply(after, quiet, [])
    (kept,) = await states.states("db")
    assert kept.last_event_id == after.last_event_id
    assert kept.facts == {"bytesUsed": 1}


# -- the outbox ------------------------------------------------------------------------------


async def test_claims_never_overlap_and_expired_claims_are_taken_again(
    db_engine: AsyncEngine,
) -> None:
    outbox = SqlOutboxRepository(db_engine)
    await outbox.enqueue([OutboxItem(f"ch{n}", event(), T0) for n in range(12)])
    now = datetime.now(UTC)
    until = now + timedelta(minutes=2)
    claims = await asyncio.gather(
        *(outbox.claim(f"r{n}/life:{n}", T0, now, until, 5) for n in range(4))
    )
    ids = [entry.id for claim in claims for entry in claim]
    assert len(ids) == 12
    assert len(set(ids)) == 12
    # Nothing is left to claim while the claims hold.
    assert await outbox.claim("late/x:1", T0, now, until, 50) == []
    # Not yet due on the server's clock: not claimed either.
    await outbox.enqueue([OutboxItem("future", event(), T0 + timedelta(hours=1))])
    assert await outbox.claim("late/x:1", T0, now, until, 50) == []
    # Once the claims ran out (real time), the rows are taken again.
    retaken = await outbox.claim("late/x:1", T0, now + timedelta(minutes=3), until, 50)
    assert len(retaken) == 12
    # Finishing under a claim that was taken over does nothing.
    n, claim = next((n, claim) for n, claim in enumerate(claims) if claim)
    first = claim[0]
    assert not await outbox.mark_delivered(first.id, f"r{n}/life:{n}", T0)
    assert await outbox.mark_delivered(first.id, "late/x:1", T0)
    counts = await outbox.counts()
    assert counts == {"pending": 12, "delivered": 1, "failed": 0}


async def test_retry_delay_give_up_and_previous_life_claims(db_engine: AsyncEngine) -> None:
    outbox = SqlOutboxRepository(db_engine)
    await outbox.enqueue([OutboxItem("a", event(), T0), OutboxItem("b", event(), T0)])
    now = datetime.now(UTC)
    until = now + timedelta(minutes=2)
    a, b = await outbox.claim("r1/l1:1", T0, now, until, 10)
    assert await outbox.mark_retry(a.id, "r1/l1:1", T0 + timedelta(seconds=10), "HTTP 503")
    assert await outbox.mark_failed(b.id, "r1/l1:1", T0, "HTTP 400: refused")
    # Due again only 10 s later on the server's clock.
    assert await outbox.claim("r2/l1:1", T0 + timedelta(seconds=9), now, until, 10) == []
    (again,) = await outbox.claim("r2/l1:1", T0 + timedelta(seconds=10), now, until, 10)
    assert again.id == a.id
    assert again.attempts == 1
    assert again.last_error == "HTTP 503"
    # Replica r2 dies during the delivery; its next life frees the claim at once.
    assert await outbox.release_server_claims("r1") == 0
    assert await outbox.release_server_claims("r2") == 1
    (retaken,) = await outbox.claim("r2/l2:1", T0 + timedelta(seconds=10), now, until, 10)
    assert retaken.id == a.id
    failed = await outbox.page("failed", 10)
    assert [(e.id, e.status, e.attempts, e.last_error) for e in failed] == [
        (b.id, "failed", 1, "HTTP 400: refused")
    ]
    everything = await outbox.page(None, 1)
    older = await outbox.page(None, 10, before_id=everything[0].id)
    assert [e.id for e in everything + older] == [b.id, a.id]
    # Old delivered and failed rows are purged; pending ones stay whatever their age.
    assert await outbox.purge(T0, 10) == 0
    assert await outbox.purge(T0 + timedelta(seconds=1), 10) == 1
    assert [e.id for e in await outbox.page(None, 10)] == [a.id]


# -- the service in process --------------------------------------------------------------------


@dataclass
class StaticConfig:
    collections: dict[str, Collection]
    channels: dict[str, Channel]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def snapshot(self) -> ConfigSnapshot:
        return ConfigSnapshot(collections=self.collections, channels=self.channels)


@dataclass
class RecordingSender:
    """A NotificationSender of the test's own: records what it was given and fails while
    ``failure`` is set."""

    sent: list[tuple[str, NotificationEvent]] = field(default_factory=list)
    failure: DeliveryError | None = None

    async def send(self, channel: Channel, event: NotificationEvent) -> None:
        if self.failure is not None:
            raise self.failure
        self.sent.append((channel.name, event))


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


def channel(name: str, all_collections: frozenset[EventType] | None = None) -> Channel:
    target = WebhookTarget(url="http://127.0.0.1:9/hook", signing_secret="s")
    return Channel(name, ChannelType.WEBHOOK, webhook=target, all_collections=all_collections)


def the_collection(**policy: object) -> Collection:
    return Collection(
        name="db",
        description="",
        filename_template="db-${version}.tar",
        max_backups_count=5,
        max_one_version_size=100,
        max_collection_size=500,
        notifications=NotificationPolicy(
            subscriptions=(Subscription("ops"),),
            **policy,  # type: ignore[arg-type]
        ),
    )


async def add_version(engine: AsyncEngine, number: int, size: int, at: datetime) -> None:
    record = VersionRecord(
        id=str(uuid.uuid4()),
        collection_id="db",
        number=number,
        filename=f"db-{number}.tar",
        storage_key=f"db/db-{number}.tar",
        size=size,
        sha256="0" * 64,
        session_id="s" * 64,
        user="uploader",
        created_at=at,
        updated_at=at,
    )
    async with transaction(engine) as connection:
        await connection.execute(insert_version(record))


def service(
    engine: AsyncEngine,
    config: StaticConfig,
    sender: RecordingSender,
    clock: Clock,
    sink: RecordingSink | None = None,
    max_age: timedelta = timedelta(hours=24),
) -> NotificationService:
    return NotificationService(
        config,
        SqlVersionRepository(engine),
        SqlIntegrityRepository(engine),
        SqlNotificationFacts(engine),
        SqlNotificationStateRepository(engine),
        SqlOutboxRepository(engine),
        sender,
        max_age=max_age,
        events=sink,
        leases=SqlLeaseRepository(engine),
        clock=clock,
    )


def by_type(sent: list[tuple[str, NotificationEvent]]) -> Mapping[tuple[str, EventType], int]:
    counts: dict[tuple[str, EventType], int] = {}
    for name, ev in sent:
        counts[name, ev.type] = counts.get((name, ev.type), 0) + 1
    return counts


async def test_announced_once_delivered_and_recovered(db_engine: AsyncEngine) -> None:
    config = StaticConfig(
        {"db": the_collection(usage_threshold=0.9)},
        {"ops": channel("ops"), "all": channel("all", frozenset({EventType.LIMITS}))},
    )
    sender = RecordingSender()
    clock = Clock()
    sink = RecordingSink()
    # Two replicas' services sharing the database.
    one = service(db_engine, config, sender, clock, sink)
    two = service(db_engine, config, sender, clock, sink)
    for number in range(1, 6):
        await add_version(db_engine, number, 95, T0 - timedelta(hours=6 - number))
    results = await asyncio.gather(one.evaluate(), two.evaluate())
    announced = [a for result in results for a in result]
    assert [(a.event.type, a.event.condition, a.channels) for a in announced] == [
        (EventType.LIMITS, "usage", ("all", "ops"))
    ]
    assert await one.evaluate() == []
    assert sum(await asyncio.gather(one.dispatch_once(), two.dispatch_once())) == 2
    assert by_type(sender.sent) == {("all", EventType.LIMITS): 1, ("ops", EventType.LIMITS): 1}
    assert {ev.id for _, ev in sender.sent} == {announced[0].event.id}
    deliveries = [e for e in sink.events if e.action is Action.NOTIFICATION_DELIVERY]
    assert [(e.outcome, e.reason) for e in deliveries] == [(Outcome.SUCCESS, "delivered")] * 2

    # Rotation frees the space: "recovered" goes to the channels subscribed to recovered
    # and to limits ("all" subscribes to limits only).
    async with transaction(db_engine) as connection:
        await connection.execute(
            update(backup_versions)
            .where(backup_versions.c.version_number <= 3)
            .values(deleted_at=T0)
        )
    clock.now = T0 + timedelta(minutes=5)
    (recovered,) = await one.evaluate()
    assert recovered.event.type is EventType.RECOVERED
    assert recovered.event.condition == "usage"
    assert recovered.channels == ("ops",)
    await one.dispatch_once()
    assert by_type(sender.sent)["ops", EventType.RECOVERED] == 1


async def test_retries_back_off_then_give_up_after_the_max_age(db_engine: AsyncEngine) -> None:
    config = StaticConfig({"db": the_collection(usage_threshold=0.1)}, {"ops": channel("ops")})
    sender = RecordingSender(failure=DeliveryError("HTTP 503 from 127.0.0.1:9"))
    clock = Clock()
    sink = RecordingSink()
    notify = service(db_engine, config, sender, clock, sink, max_age=timedelta(minutes=2))
    outbox = SqlOutboxRepository(db_engine)
    await add_version(db_engine, 1, 100, T0)
    (announced,) = await notify.evaluate()
    assert await notify.dispatch_once() == 1
    (row,) = await outbox.page("pending", 10)
    assert row.attempts == 1
    assert row.last_error == "HTTP 503 from 127.0.0.1:9"
    assert timedelta(seconds=8) <= row.next_attempt_at - T0 <= timedelta(seconds=12)
    # Not due yet.
    assert await notify.dispatch_once() == 0
    clock.now = row.next_attempt_at
    assert await notify.dispatch_once() == 1
    (row,) = await outbox.page("pending", 10)
    assert timedelta(seconds=16) <= row.next_attempt_at - clock.now <= timedelta(seconds=24)
    # The receiver is back: the next attempt delivers.
    sender.failure = None
    clock.now = row.next_attempt_at
    assert await notify.dispatch_once() == 1
    assert [ev.id for _, ev in sender.sent] == [announced.event.id]
    reasons = [e.reason for e in sink.events if e.action is Action.NOTIFICATION_DELIVERY]
    assert reasons == ["retry", "retry", "delivered"]

    # A channel that stays down: retried until the max age, then failed.
    sender.failure = DeliveryError("connection refused")
    await outbox.enqueue([OutboxItem("ops", event(), clock.now)])
    start = clock.now
    for _ in range(10):
        await notify.dispatch_once()
        pending = await outbox.page("pending", 10)
        if not pending:
            break
        assert pending[0].next_attempt_at <= start + timedelta(minutes=2)
        clock.now = pending[0].next_attempt_at
    (failed,) = await outbox.page("failed", 10)
    assert failed.last_error == "connection refused"
    assert clock.now >= start + timedelta(minutes=2)
    # A permanent refusal fails at once.
    sender.failure = DeliveryError("HTTP 400", permanent=True)
    await outbox.enqueue([OutboxItem("ops", event(), clock.now)])
    assert await notify.dispatch_once() == 1
    assert len(await outbox.page("failed", 10)) == 2


async def test_reminders_and_unconfigured_channels(db_engine: AsyncEngine) -> None:
    config = StaticConfig(
        {"db": the_collection(usage_threshold=0.1, reminder_interval=timedelta(hours=1))},
        {"ops": channel("ops")},
    )
    sender = RecordingSender()
    clock = Clock()
    notify = service(db_engine, config, sender, clock)
    outbox = SqlOutboxRepository(db_engine)
    await add_version(db_engine, 1, 100, T0)
    (first,) = await notify.evaluate()
    clock.now = T0 + timedelta(minutes=59)
    assert await notify.evaluate() == []
    clock.now = T0 + timedelta(hours=1)
    (reminder,) = await notify.evaluate()
    assert reminder.event.reminder
    assert reminder.event.type is EventType.LIMITS
    assert reminder.event.id != first.event.id
    assert reminder.event.summary.startswith("still: ")
    # The channel was removed from the configuration before delivery: given up at once.
    config.channels.clear()
    assert await notify.dispatch_once() == 2
    failed = await outbox.page("failed", 10)
    assert {f.last_error for f in failed} == {"channel ops is not configured (any more)"}
    assert sender.sent == []


async def test_refusals_are_counted_from_the_audit_log(db_engine: AsyncEngine) -> None:
    from backup_repository.db.audit import SqlAuditRepository
    from backup_repository.services.events import Event

    audit = SqlAuditRepository(db_engine)
    now = datetime.now(UTC)
    for reason in ("quota", "openpgp", "window", "lock", "auth"):
        await audit.add(
            Event(Action.UPLOAD, Outcome.FAILURE, collection="db", reason=reason, at=now)
        )
    await audit.add(Event(Action.UPLOAD, Outcome.FAILURE, collection="x", reason="quota", at=now))
    await audit.add(Event(Action.UPLOAD, Outcome.SUCCESS, collection="db", at=now))
    facts = SqlNotificationFacts(db_engine)
    reasons = ["quota", "openpgp", "window"]
    assert await facts.counted_refusals("db", now - timedelta(minutes=1), reasons) == 3
    assert await facts.counted_refusals("db", now + timedelta(seconds=1), reasons) == 0
