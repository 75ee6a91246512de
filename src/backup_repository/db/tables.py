"""Table models. Queries live in ``repositories.py``; schema changes go through a migration
in ``migrations/versions/`` (see docs/database.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Constraint and index names are spelled out instead of left to each database, so that a
# migration can address them by the same name on SQLite and PostgreSQL.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    PostgreSQL keeps the zone (``timestamp with time zone``); SQLite stores text without
    one, so values are converted to UTC on the way in and labelled UTC on the way out.
    Naive datetimes are refused: their meaning depends on the machine's clock settings.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use an aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value)!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class GrantedAccess(Base):
    """An issued token (a "session"); the reference project's ``granted_accesses``."""

    __tablename__ = "granted_accesses"

    # SHA-256 hex of the token.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(255), index=True)
    access_key_name: Mapped[str] = mapped_column(String(255), default="", server_default="")
    requester_ip: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    deactivated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Single-use upload tokens: the collection of the one upload (migration 0005).
    single_use_collection: Mapped[str | None] = mapped_column(String(255))
    # The token family (migration 0006): the session id of the login a refreshed token
    # descends from; NULL for a login and for older rows (a family of their own).
    family_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # The session a refreshed token was refreshed from (migration 0006); NULL for a login
    # and for older rows. Revoking a session revokes its descendants through this column.
    parent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # The operations scope the token carries, as JSON; NULL: not scoped (or not known).
    operations_scope: Mapped[str | None] = mapped_column(Text)


class CollectionState(Base):
    """Per-collection bookkeeping shared by all replicas: the version counter (never goes
    back, so numbers are never reused) and the upload lock, a lease with an owner and an
    expiry that the uploading replica renews while it works."""

    __tablename__ = "collection_states"

    collection_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_version_number: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lock_owner: Mapped[str | None] = mapped_column(String(64))
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BackupVersion(Base):
    """One uploaded file of a collection. Rotated versions keep their row with
    ``deleted_at`` set (history); ``purged_at`` is set once the stored object is gone."""

    __tablename__ = "backup_versions"
    __table_args__ = (UniqueConstraint("collection_id", "version_number"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    collection_id: Mapped[str] = mapped_column(String(255), index=True)
    version_number: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(512))
    storage_key: Mapped[str] = mapped_column(String(1024))
    filesize: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    uploaded_by_session_id: Mapped[str] = mapped_column(String(64))
    user_name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Kept outside of rotation and refused to deletion until unprotected (migration 0008).
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The uploader's detached OpenPGP signature, ASCII-armoured, and the fingerprint of
    # the key that made it; NULL for an unsigned upload (migration 0008).
    signer_fingerprint: Mapped[str | None] = mapped_column(Text)
    signature: Mapped[str | None] = mapped_column(Text)


class AuditEvent(Base):
    """One recorded event of the audit log (services/audit.py). Rows are only ever added;
    the id gives the order of recording (BIGINT on PostgreSQL; on SQLite an INTEGER
    PRIMARY KEY, which is the 64-bit rowid)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    user_name: Mapped[str] = mapped_column(String(255), index=True)
    access_key_name: Mapped[str] = mapped_column(String(255))
    client_ip: Mapped[str] = mapped_column(String(64))
    collection_id: Mapped[str] = mapped_column(String(255), index=True)
    version_number: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(64))
    session: Mapped[str] = mapped_column(String(12))
    detail: Mapped[str] = mapped_column(String(1024))


class VersionCheckRow(Base):
    """The latest integrity check of a version (``backup-repository verify``): one row per
    version, replaced at each check (migration 0004)."""

    __tablename__ = "version_checks"

    version_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("backup_versions.id", ondelete="CASCADE"), primary_key=True
    )
    collection_id: Mapped[str] = mapped_column(String(255), index=True)
    version_number: Mapped[int] = mapped_column(Integer)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # ok | corrupt | missing | unreadable (domain/integrity.py CheckStatus)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(1024))
    actual_size: Mapped[int | None] = mapped_column(BigInteger)
    actual_sha256: Mapped[str | None] = mapped_column(String(64))


class MaintenanceLease(Base):
    """A named lease for work that one replica at a time should do (the scheduled integrity
    check): taken with a compare-and-set, like the upload lock (migration 0004)."""

    __tablename__ = "maintenance_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NotificationState(Base):
    """The last judged state of one condition of one collection (services/notifications.py):
    whether it is failing, since when, and what was announced last. Evaluators write it
    with a compare-and-set on ``revision``, in the transaction that queues the announcement
    (migration 0007)."""

    __tablename__ = "notification_states"

    collection_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    # missing | shrunk | refusals | usage | extra-space | integrity (domain/notifications.py)
    condition: Mapped[str] = mapped_column(String(32), primary_key=True)
    failing: Mapped[bool] = mapped_column(Boolean)
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    last_announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_id: Mapped[str | None] = mapped_column(String(36))
    # The figures of the verdict that last changed the row, as JSON.
    facts: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NotificationOutbox(Base):
    """One event to deliver to one channel, until it is delivered or given up (the outbox
    of services/notifications.py; migration 0007). A dispatcher claims a due row by setting
    ``claimed_by`` and ``claimed_until``; a claim that runs out is taken again."""

    __tablename__ = "notification_outbox"
    __table_args__ = (
        UniqueConstraint("event_id", "channel"),
        Index("ix_notification_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(36))
    channel: Mapped[str] = mapped_column(String(255))
    collection_id: Mapped[str] = mapped_column(String(255))
    # The NotificationEvent as JSON.
    event: Mapped[str] = mapped_column(Text)
    # pending | delivered | failed
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str] = mapped_column(String(1024), default="", server_default="")
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
