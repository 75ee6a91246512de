"""The small interfaces services depend on. Implementations live in ``config/`` and ``db/``
and are wired together in the composition root (``http/app.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from backup_repository.domain.identity import Collection, ObjectGrant, User
from backup_repository.domain.notification_channels import Channel, NotificationEvent
from backup_repository.domain.notifications import StoredState, VersionFacts
from backup_repository.services.events import Event


@dataclass(frozen=True)
class ConfigProblem:
    """A configuration object that could not be used, and why.

    ``source`` names the file (or the Kubernetes resource) it came from, ``kind`` and
    ``name`` the object when they could be read, ``field`` the dotted path of the offending
    field (empty for whole-document problems such as bad YAML).
    """

    source: str
    message: str
    kind: str = ""
    name: str = ""
    field: str = ""

    def __str__(self) -> str:
        what = f"{self.kind}/{self.name}" if self.kind or self.name else "document"
        where = f" field {self.field}" if self.field else ""
        return f"{self.source}: {what}{where}: {self.message}"


@dataclass(frozen=True)
class ConfigSnapshot:
    """Every usable object at one moment. Broken objects are left out (so they refuse every
    request) and described in ``problems``."""

    users: Mapping[str, User] = field(default_factory=dict)
    collections: Mapping[str, Collection] = field(default_factory=dict)
    # NotificationChannel objects, by name.
    channels: Mapping[str, Channel] = field(default_factory=dict)
    problems: tuple[ConfigProblem, ...] = ()
    # False when the provider itself could not be read (folder missing, API unreachable).
    usable: bool = True
    unusable_reason: str = ""


class ConfigurationProvider(Protocol):
    async def start(self) -> None:
        """Load the objects once and begin following changes."""

    async def close(self) -> None: ...

    def snapshot(self) -> ConfigSnapshot:
        """The current objects; cheap, never does I/O."""


@dataclass(frozen=True)
class SessionRecord:
    """An issued token ("granted access"): ``id`` is the SHA-256 hex of the token."""

    id: str
    user: str
    access_key_name: str
    requester_ip: str
    description: str
    expires_at: datetime
    deactivated: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Set for a single-use upload token: the collection of its one upload. Such a session
    # is deactivated in the transaction that records that upload.
    single_use_collection: str | None = None
    # The token family: the session id of the login a refreshed token descends from; None
    # for a login (and for sessions recorded before families were), a family of its own.
    family_id: str | None = None
    # The session a refreshed token was refreshed from; None for a login (and for sessions
    # recorded before families were). Revoking a session revokes its descendants.
    parent_id: str | None = None
    # The operations scope the token carries; empty: not scoped.
    scope: tuple[ObjectGrant, ...] = ()

    @property
    def family(self) -> str:
        return self.family_id or self.id


@dataclass(frozen=True)
class RevokedSessions:
    """What one revocation changed: whether the session itself was active until then, and
    how many sessions refreshed from it (transitively) it revoked as well."""

    session: bool
    descendants: int


@dataclass(frozen=True)
class SessionCursor:
    """Where a page of a session listing ends: the creation time and id of its last
    session (listings are ordered by both, newest first)."""

    created_at: datetime
    id: str


class SessionRepository(Protocol):
    async def add(self, session: SessionRecord) -> None: ...

    async def add_refreshed(self, session: SessionRecord) -> bool:
        """Store a refreshed token's session, in one transaction with the check that the
        session it was refreshed from (``session.parent_id``) and every session that one
        descends from are still there and active. False (and nothing stored) when one was
        revoked, also by a revocation running at the same time on another replica."""

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def list_for_user(
        self,
        user: str,
        *,
        access_key: str | None = None,
        limit: int | None = None,
        after: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """Sessions of a user, newest first (by creation time, then id); only those of
        ``access_key`` when given; at most ``limit``; only those after ``after``."""

    async def deactivate(self, session_id: str) -> bool:
        """Mark a session revoked; False when no such session exists."""

    async def deactivate_with_descendants(self, session_id: str) -> RevokedSessions:
        """Revoke the session ``session_id`` and every session refreshed from it, directly
        or through others, in one transaction; never the session it was refreshed from nor
        the others refreshed from that one. Once this returns, no session descending from
        it can be stored (see :meth:`add_refreshed`)."""

    async def purge(self, older_than: datetime, batch: int) -> int:
        """Delete at most ``batch`` sessions that expired, or were revoked, before
        ``older_than``; how many were deleted."""


class DatabaseHealth(Protocol):
    async def ping(self) -> None:
        """Raise when the database cannot answer a trivial query."""


class HostResolver(Protocol):
    async def resolve(self, host: str) -> frozenset[str]:
        """Addresses a host name resolves to; empty when it does not resolve."""


@dataclass(frozen=True)
class VersionRecord:
    """A stored version of a collection as recorded in the database."""

    id: str
    collection_id: str
    number: int
    filename: str
    storage_key: str
    size: int
    sha256: str
    session_id: str
    user: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    # The access key of the uploading session ("" for the user's own password); None when
    # not known: the session's row was purged, or the version was imported.
    access_key: str | None = None
    # Kept outside of rotation and refused to deletion until unprotected.
    protected: bool = False
    # The trusted uploader's key (primary fingerprint) and its detached signature over the
    # stored bytes, ASCII-armoured; None for an unsigned upload (docs/security.md).
    signer_fingerprint: str | None = None
    signature: str | None = None


class LockLost(Exception):
    """The upload lock of a collection is no longer held by this uploader."""


class SessionConsumed(Exception):
    """The single-use session an upload was to consume was already used or revoked."""


@dataclass(frozen=True)
class LockedCollection:
    """What an upload finds as it takes a collection's upload lock
    (:meth:`VersionRepository.lock_for_upload`)."""

    # The last version number ever given in the collection.
    last_number: int
    # Versions not rotated out, oldest first.
    live: list[VersionRecord]
    # Rotated or deleted versions whose stored object may still exist.
    unpurged: list[VersionRecord]


class VersionRepository(Protocol):
    async def try_lock(self, collection_id: str, owner: str, lease_seconds: float) -> int | None:
        """Take the collection's upload lock if it is free or its lease ran out. Returns the
        last version number ever given in the collection, or None when someone else holds
        the lock."""

    async def lock_for_upload(
        self,
        collection_id: str,
        owner: str,
        lease_seconds: float,
        purged: Sequence[str] = (),
    ) -> LockedCollection | None:
        """:meth:`try_lock`, and once the lock is ours (no other writer changes the
        versions then) read what an upload plans with: the live versions and those whose
        object may still exist. None when someone else holds the lock. ``purged``: ids of
        rotated versions whose objects are gone, marked purged before the read (in the
        same trip; whether or not the lock is taken, they may be marked)."""

    async def renew_lock(self, collection_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; False when the lock is no longer ours."""

    async def release_lock(self, collection_id: str, owner: str) -> None: ...

    async def release_server_locks(self, tag: str | None) -> int:
        """Free the upload locks whose owner is ``<tag>/…`` (a previous life of a restarted
        replica), or, with None, every lock a server holds (owners with a ``/``). Returns
        how many were freed."""

    async def live_versions(self, collection_id: str) -> list[VersionRecord]:
        """Versions not rotated out, oldest first."""

    async def get_version(self, collection_id: str, number: int) -> VersionRecord | None:
        """A live version by number."""

    async def latest_version(self, collection_id: str) -> VersionRecord | None: ...

    async def commit_version(
        self,
        version: VersionRecord,
        owner: str,
        rotated_ids: Sequence[str],
        consume_session_id: str | None = None,
        *,
        release: bool = False,
        audit: Sequence[Event] = (),
    ) -> Exception | None:
        """In one transaction: check the lock is still ``owner``'s and the number is the next
        one, advance the counter, record the version and mark the rotated ones deleted.
        Raises LockLost (and records nothing) when the lock was taken over. With
        ``consume_session_id``, also deactivate that session; raises SessionConsumed (and
        records nothing) when it is no longer active. With ``release``, the same
        transaction frees the lock. ``audit``: the events of the upload, whose audit rows
        the same transaction writes, in their order (services/events.py, ``keeps_rows``);
        when they cannot be written the version is recorded without them and the error is
        returned (None: written, or none given)."""

    async def set_protected(self, version_id: str, owner: str, protected: bool) -> bool:
        """Protect a live version, or unprotect it, while ``owner`` holds its collection's
        upload lock (checked in the same transaction: LockLost, and nothing changed, when
        it does not). False when the version is no longer live."""

    async def delete_version(self, version_id: str, owner: str) -> datetime | None:
        """Mark a live, unprotected version deleted while ``owner`` holds its collection's
        upload lock (LockLost, and nothing changed, when it does not); its object is
        deleted after, like a rotated version's. Returns the time of the deletion; None
        when the version is not live or is protected."""

    async def deleted_unpurged(self, collection_id: str) -> list[VersionRecord]:
        """Rotated versions whose stored object may still exist."""

    async def mark_purged(self, version_ids: Sequence[str]) -> None: ...

    async def usage(self) -> dict[str, tuple[int, int]]:
        """Per collection: (number of live versions, bytes they use)."""

    async def last_uploads(self) -> dict[str, datetime]:
        """Per collection: when its newest version was recorded (rotated versions count)."""


@dataclass(frozen=True)
class VersionCheck:
    """The result of re-reading a version's stored object (``backup-repository verify``).
    ``status`` is a ``domain.integrity.CheckStatus`` value; ``actual_*`` is what was found
    (None when not known: the object is missing, unreadable, or of the wrong size)."""

    version_id: str
    collection_id: str
    number: int
    checked_at: datetime
    status: str
    detail: str = ""
    actual_size: int | None = None
    actual_sha256: str | None = None


class IntegrityRepository(Protocol):
    async def live_versions(self, collection_ids: Sequence[str] | None) -> list[VersionRecord]:
        """Live versions of the given collections (None: all), by collection and number."""

    async def record_result(self, check: VersionCheck) -> None:
        """Keep ``check`` as the latest result of its version (replacing an earlier one)."""

    async def results(self, collection_id: str | None = None) -> list[VersionCheck]:
        """The latest result of every live version that has one, by collection and number."""

    async def corrupt_counts(self) -> dict[str, int]:
        """Per collection with a verified live version: how many live versions the latest
        check found corrupt or missing (0 when none)."""


class LeaseRepository(Protocol):
    """Named leases shared by the replicas (one row each): at most one holder at a time, and
    a lease that is not released frees itself when it expires."""

    async def try_take(self, name: str, owner: str, lease_seconds: float) -> bool:
        """Take the lease when it is free or expired; False when it is held."""

    async def renew(self, name: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; False when it is no longer ``owner``'s."""

    async def release(self, name: str, owner: str, until: datetime | None = None) -> None:
        """Give the lease up, or keep it from everybody (``owner`` included) ``until``."""

    async def release_server_leases(self, tag: str | None, ending_before: datetime) -> int:
        """Free the leases whose owner is ``<tag>/…`` (None: any server's, owners with a
        ``/``) and whose expiry is after now but before ``ending_before`` (held by work in
        progress, not kept for a schedule). Returns how many were freed."""


class NotificationSender(Protocol):
    async def send(self, channel: Channel, event: NotificationEvent) -> None:
        """Deliver one event to one channel, or raise
        :class:`~backup_repository.domain.notification_channels.DeliveryError`. Never logs
        a secret; may take up to the channel's timeout."""


# -- notifications (services/notifications.py) ---------------------------------------------


@dataclass(frozen=True)
class StateWrite:
    """The new state of one (collection, condition). ``event_id`` and ``announced_at`` are
    set when the change is announced; otherwise the stored ones are kept."""

    collection: str
    condition: str
    failing: bool
    since: datetime
    facts: Mapping[str, object]
    at: datetime
    event_id: str | None = None
    announced_at: datetime | None = None


@dataclass(frozen=True)
class OutboxItem:
    """An event queued for one channel."""

    channel: str
    event: NotificationEvent
    created_at: datetime


@dataclass(frozen=True)
class OutboxEntry:
    """A row of the outbox. ``status`` is pending, delivered or failed."""

    id: int
    channel: str
    event: NotificationEvent
    status: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None = None
    last_error: str = ""
    claimed_by: str | None = None
    claimed_until: datetime | None = None


class NotificationStateRepository(Protocol):
    async def states(self, collection_id: str | None = None) -> list[StoredState]:
        """The stored states (of one collection, or all), by collection and condition."""

    async def apply(
        self, expected: StoredState | None, write: StateWrite, outbox: Sequence[OutboxItem]
    ) -> bool:
        """In one transaction: write the state when the stored one is still ``expected``
        (the same revision; with None: when none is stored), and queue ``outbox``. False,
        and nothing written, when another evaluator changed the state first."""


class OutboxRepository(Protocol):
    async def claim(
        self, claimer: str, due: datetime, now: datetime, until: datetime, limit: int
    ) -> list[OutboxEntry]:
        """Claim at most ``limit`` pending rows that are due (``next_attempt_at`` at or
        before ``due``) and not claimed by anyone (or whose claim ran out before ``now``)
        for ``claimer`` until ``until``; oldest due first. Two claimers never get the same
        row. (``due`` is on the server's clock, ``now`` and ``until`` on real time: a claim
        is about a process being alive.)"""

    async def mark_delivered(self, entry_id: int, claimer: str, now: datetime) -> bool:
        """Delivered; False when the claim was no longer ``claimer``'s."""

    async def mark_retry(
        self, entry_id: int, claimer: str, next_attempt_at: datetime, error: str
    ) -> bool:
        """Try again at ``next_attempt_at``; False when the claim was no longer ours."""

    async def mark_failed(self, entry_id: int, claimer: str, now: datetime, error: str) -> bool:
        """Given up; False when the claim was no longer ours."""

    async def page(
        self, status: str | None, limit: int, before_id: int | None = None
    ) -> list[OutboxEntry]:
        """At most ``limit`` rows (of ``status`` when given), newest first, with an id below
        ``before_id`` when given."""

    async def counts(self) -> dict[str, int]:
        """Rows per status."""

    async def release_server_claims(self, tag: str | None) -> int:
        """Free the claims of rows a previous life of replica ``tag`` (None: any server)
        was delivering when it died; how many."""

    async def purge(self, older_than: datetime, batch: int) -> int:
        """Delete at most ``batch`` delivered or failed rows queued before ``older_than``;
        how many."""


class NotificationFactsRepository(Protocol):
    async def recent_versions(self, collection_id: str, count: int) -> list[VersionFacts]:
        """The newest ``count`` versions, rotated ones included, oldest first."""

    async def counted_refusals(
        self, collection_id: str, since: datetime, reasons: Sequence[str]
    ) -> int:
        """Uploads to the collection refused for one of ``reasons`` at or after ``since``
        (from the audit log)."""


class VersionSize(NamedTuple):
    """A live version as the dashboard needs it: no file names, no times (a tuple: the
    dashboard reads 10,000 of them)."""

    number: int
    size: int


class CheckMark(NamedTuple):
    """The latest integrity check of a live version, without its time."""

    version_id: str
    number: int
    status: str
    detail: str


class ConsoleRepository(Protocol):
    """The batched reads of the web console's dashboard: one query each for all the
    collections it shows, and only the columns it needs."""

    async def live_sizes_of(self, collection_ids: Sequence[str]) -> dict[str, list[VersionSize]]:
        """Live versions of the given collections, oldest first per collection (only
        collections with versions are keys)."""

    async def newest_uploads_of(self, collection_ids: Sequence[str]) -> dict[str, datetime]:
        """When the newest live version (the highest number) of each collection was
        uploaded."""

    async def check_marks_of(self, collection_ids: Sequence[str]) -> dict[str, list[CheckMark]]:
        """The latest integrity check of every live version whose latest check was not
        ``ok``, by number per collection (few: the others are only counted, see
        :meth:`check_tallies_of`)."""

    async def check_tallies_of(
        self, collection_ids: Sequence[str]
    ) -> dict[str, tuple[int, datetime]]:
        """Per collection with a checked live version: how many live versions have a
        latest check, and when the latest of those checks ran."""

    async def latest_checks_of(
        self, collection_ids: Sequence[str]
    ) -> dict[str, list[VersionCheck]]:
        """The latest integrity check of every live version of the given collections that
        has one, by number per collection (with times: the collection page)."""
