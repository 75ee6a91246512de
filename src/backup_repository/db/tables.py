"""The tables, declared with SQLAlchemy Core (``Table`` objects on one ``MetaData``; the
server loads no ORM). Queries live in ``repositories.py`` and the modules beside it; schema
changes go through a migration in ``migrations/versions/`` (see docs/database.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
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


metadata: Final = MetaData(naming_convention=NAMING_CONVENTION)


# An issued token (a "session"); the reference project's ``granted_accesses``.
granted_accesses: Final = Table(
    "granted_accesses",
    metadata,
    # SHA-256 hex of the token.
    Column("id", String(64), primary_key=True),
    Column("user_name", String(255), index=True, nullable=False),
    Column("access_key_name", String(255), default="", server_default="", nullable=False),
    Column("requester_ip", String(64), nullable=False),
    Column("description", String(255), nullable=False),
    Column("expires_at", UTCDateTime(), index=True, nullable=False),
    Column("deactivated", Boolean, default=False, server_default=false(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("deleted_at", UTCDateTime()),
    # Single-use upload tokens: the collection of the one upload (migration 0005).
    Column("single_use_collection", String(255)),
    # The token family (migration 0006): the session id of the login a refreshed token
    # descends from; NULL for a login and for older rows (a family of their own).
    Column("family_id", String(64), index=True),
    # The session a refreshed token was refreshed from (migration 0006); NULL for a login
    # and for older rows. Revoking a session revokes its descendants through this column.
    Column("parent_id", String(64), index=True),
    # The operations scope the token carries, as JSON; NULL: not scoped (or not known).
    Column("operations_scope", Text),
)


# Per-collection bookkeeping shared by all replicas: the version counter (never goes back,
# so numbers are never reused) and the upload lock, a lease with an owner and an expiry that
# the uploading replica renews while it works.
collection_states: Final = Table(
    "collection_states",
    metadata,
    Column("collection_id", String(255), primary_key=True),
    Column("last_version_number", Integer, default=0, server_default="0", nullable=False),
    Column("lock_owner", String(64)),
    Column("lock_expires_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# One uploaded file of a collection. Rotated versions keep their row with ``deleted_at`` set
# (history); ``purged_at`` is set once the stored object is gone.
backup_versions: Final = Table(
    "backup_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("collection_id", String(255), index=True, nullable=False),
    Column("version_number", Integer, nullable=False),
    Column("filename", String(512), nullable=False),
    Column("storage_key", String(1024), nullable=False),
    Column("filesize", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("uploaded_by_session_id", String(64), nullable=False),
    Column("user_name", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("deleted_at", UTCDateTime()),
    Column("purged_at", UTCDateTime()),
    # Kept outside of rotation and refused to deletion until unprotected (migration 0008).
    Column("protected", Boolean, default=False, server_default=false(), nullable=False),
    # The uploader's detached OpenPGP signature, ASCII-armoured, and the fingerprint of
    # the key that made it; NULL for an unsigned upload (migration 0008).
    Column("signer_fingerprint", Text),
    Column("signature", Text),
    UniqueConstraint("collection_id", "version_number"),
)


# One recorded event of the audit log (services/audit.py). Rows are only ever added; the id
# gives the order of recording (BIGINT on PostgreSQL; on SQLite an INTEGER PRIMARY KEY,
# which is the 64-bit rowid).
audit_events: Final = Table(
    "audit_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", UTCDateTime(), index=True, nullable=False),
    Column("action", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("user_name", String(255), index=True, nullable=False),
    Column("access_key_name", String(255), nullable=False),
    Column("client_ip", String(64), nullable=False),
    Column("collection_id", String(255), index=True, nullable=False),
    Column("version_number", Integer),
    Column("size", BigInteger),
    Column("reason", String(64), nullable=False),
    Column("session", String(12), nullable=False),
    Column("detail", String(1024), nullable=False),
)


# The latest integrity check of a version (``backup-repository verify``): one row per
# version, replaced at each check (migration 0004).
version_checks: Final = Table(
    "version_checks",
    metadata,
    Column(
        "version_id",
        String(36),
        ForeignKey("backup_versions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("collection_id", String(255), index=True, nullable=False),
    Column("version_number", Integer, nullable=False),
    Column("checked_at", UTCDateTime(), nullable=False),
    # ok | corrupt | missing | unreadable (domain/integrity.py CheckStatus)
    Column("status", String(16), nullable=False),
    Column("detail", String(1024), nullable=False),
    Column("actual_size", BigInteger),
    Column("actual_sha256", String(64)),
)


# A named lease for work that one replica at a time should do (the scheduled integrity
# check): taken with a compare-and-set, like the upload lock (migration 0004).
maintenance_leases: Final = Table(
    "maintenance_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(64)),
    Column("expires_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# The last judged state of one condition of one collection (services/notifications.py):
# whether it is failing, since when, and what was announced last. Evaluators write it with a
# compare-and-set on ``revision``, in the transaction that queues the announcement
# (migration 0007).
notification_states: Final = Table(
    "notification_states",
    metadata,
    Column("collection_id", String(255), primary_key=True),
    # missing | shrunk | refusals | usage | extra-space | integrity (domain/notifications.py)
    Column("condition", String(32), primary_key=True),
    Column("failing", Boolean, nullable=False),
    Column("since", UTCDateTime(), nullable=False),
    Column("last_announced_at", UTCDateTime()),
    Column("last_event_id", String(36)),
    # The figures of the verdict that last changed the row, as JSON.
    Column("facts", Text, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# One event to deliver to one channel, until it is delivered or given up (the outbox of
# services/notifications.py; migration 0007). A dispatcher claims a due row by setting
# ``claimed_by`` and ``claimed_until``; a claim that runs out is taken again.
notification_outbox: Final = Table(
    "notification_outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("event_id", String(36), nullable=False),
    Column("channel", String(255), nullable=False),
    Column("collection_id", String(255), nullable=False),
    # The NotificationEvent as JSON.
    Column("event", Text, nullable=False),
    # pending | delivered | failed
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, default=0, server_default="0", nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    Column("last_error", String(1024), default="", server_default="", nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_until", UTCDateTime()),
    UniqueConstraint("event_id", "channel"),
    Index("ix_notification_outbox_status_next_attempt_at", "status", "next_attempt_at"),
)
