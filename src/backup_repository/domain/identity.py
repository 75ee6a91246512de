"""Users, access keys, scopes and collections as the domain sees them: validated, immutable,
with every reference (password hash, health secret) already resolved by the configuration
layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from backup_repository.domain.notification_channels import NotificationPolicy
from backup_repository.domain.roles import Role
from backup_repository.domain.signatures import TrustedKey

COLLECTION = "collection"


@dataclass(frozen=True)
class ObjectGrant:
    """Roles on one object, e.g. ``{type: collection, name: db-prod, roles: [backupUploader]}``.
    Used by access keys and by operations scopes."""

    type: str
    name: str
    roles: frozenset[Role]


@dataclass(frozen=True)
class AccessKey:
    name: str
    password_hash: str
    objects: tuple[ObjectGrant, ...] = ()


@dataclass(frozen=True)
class User:
    name: str
    email: str
    password_hash: str
    roles: frozenset[Role] = frozenset()
    deactivated: bool = False
    organization: str = ""
    about: str = ""
    # Entries as written: IP addresses, CIDR networks or host names. Empty: no restriction.
    restrict_by_ip: tuple[str, ...] = ()
    access_keys: tuple[AccessKey, ...] = ()

    def access_key(self, name: str) -> AccessKey | None:
        for key in self.access_keys:
            if key.name == name:
                return key
        return None


@dataclass(frozen=True)
class Login:
    """A login name split into user and access key: ``user$key`` (the last ``$`` separates)."""

    user: str
    access_key: str = ""

    @classmethod
    def parse(cls, login: str) -> Login:
        user, sep, key = login.rpartition("$")
        if not sep:
            return cls(user=login)
        return cls(user=user, access_key=key)

    def __str__(self) -> str:
        return f"{self.user}${self.access_key}" if self.access_key else self.user


@dataclass(frozen=True)
class AccessControlEntry:
    """One line of a collection's ``accessControl``: roles of a user on that collection."""

    user: str
    roles: frozenset[Role]


@dataclass(frozen=True)
class BackupWindow:
    """Uploads are allowed from each start of the cron expression for ``duration``."""

    cron: str
    duration: timedelta


@dataclass(frozen=True)
class RotationStrategy:
    name: str  # "fifo" | "fifo-plus-older" | "gfs"
    keep_last_older_not_more_than: timedelta | None = None
    max_older_copies: int = 0
    # gfs: how many versions each rule keeps (Proxmox Backup Server's keep-* options).
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    # gfs: the IANA time zone its hours, days, weeks, months and years are counted in.
    time_zone: str = "UTC"


@dataclass(frozen=True)
class Collection:
    name: str
    description: str
    filename_template: str
    max_backups_count: int
    max_one_version_size: int
    max_collection_size: int
    strategy: RotationStrategy = field(default_factory=lambda: RotationStrategy(name="fifo"))
    windows: tuple[BackupWindow, ...] = ()
    # The expected SHA-256 hex of the health code, already read from its Secret; None: open.
    health_secret: str | None = None
    access_control: tuple[AccessControlEntry, ...] = ()
    # spec.notifications: the channels it subscribes to and its thresholds.
    notifications: NotificationPolicy = field(default_factory=NotificationPolicy)
    # spec.trustedUploaders: the keys whose detached signature every upload must carry
    # (empty: uploads need no signature). domain/signatures.py.
    trusted_keys: tuple[TrustedKey, ...] = ()

    def roles_of(self, user: str) -> frozenset[Role]:
        roles: set[Role] = set()
        for entry in self.access_control:
            if entry.user == user:
                roles |= entry.roles
        return frozenset(roles)

    def filename_for(self, version: int) -> str:
        return self.filename_template.replace("${version}", str(version))
