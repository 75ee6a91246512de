"""Pydantic models of the configuration objects as they are written in YAML (BackupUser,
BackupCollection, NotificationChannel and Secret in docs/configuration.md).

The models check the shape of one object and parse the values that can be parsed on their
own (roles, sizes, durations, cron expressions, address entries). Rules that need more than
one field or more than one object (password references, size ordering, unique access key
names) live in :mod:`backup_repository.config.loader`, which also turns the models into the
domain's objects.

Field names are the YAML spellings (aliases). Unknown fields are tolerated at the top level
and in ``metadata`` (labels, annotations, ``type`` of a Secret...), but refused inside
``spec``: a misspelt ``restrictByIp`` or ``deactivate`` must not be silently ignored.
An explicit ``null`` counts as "not set".
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from backup_repository.domain.identity import COLLECTION
from backup_repository.domain.notification_channels import (
    SUBSCRIBABLE,
    AppriseTarget,
    ChannelType,
    EventType,
    NotificationPolicy,
    SmtpSecurity,
)
from backup_repository.domain.roles import Role, parse_role
from backup_repository.domain.signatures import parse_fingerprint
from backup_repository.domain.units import parse_duration, parse_size

API_GROUP = "backups.riotkit.org"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND_USER = "BackupUser"
KIND_COLLECTION = "BackupCollection"
KIND_SECRET = "Secret"  # noqa: S105 - a kind name, not a password
KIND_CHANNEL = "NotificationChannel"

# The roles a collection's accessControl may hand out (the reference CRD's enum).
COLLECTION_ROLES = frozenset(
    {Role.COLLECTION_MANAGER, Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER, Role.UPLOADS_ANYTIME}
)

VERSION_PLACEHOLDER = "${version}"

_POLICY = NotificationPolicy()  # the defaults of spec.notifications
_APPRISE = AppriseTarget(urls=())  # the defaults of an apprise channel


# --- value parsers (each raises ValueError with a message meant for the operator) -------------


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _role(value: object) -> Role:
    if not isinstance(value, str):
        raise ValueError(f"a role must be a name, got {type(value).__name__}")
    return parse_role(value)


def _collection_role(value: Role) -> Role:
    if value not in COLLECTION_ROLES:
        allowed = ", ".join(sorted(r.value for r in COLLECTION_ROLES))
        raise ValueError(
            f"role {value.value!r} cannot be given on a collection (allowed here: {allowed})"
        )
    return value


def _grant_type(value: str) -> str:
    if value != COLLECTION:
        raise ValueError(
            f"type must be {COLLECTION!r} (the only kind of object that can be granted), "
            f"got {value!r}"
        )
    return value


def _acl_type(value: str) -> str:
    if value != "user":
        raise ValueError(f"type must be 'user', got {value!r}")
    return value


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f"a size must be a number with an optional unit such as 512K, 1M or 10G, "
            f"got {type(value).__name__}"
        )
    size = parse_size(value)
    if size <= 0:
        raise ValueError("a size must be greater than zero")
    return size


def _duration(value: object) -> timedelta:
    if not isinstance(value, str):
        raise ValueError(
            f"a duration must be text such as 30m, 1h30m or 5d, got {type(value).__name__}"
        )
    return parse_duration(value)


def _positive_duration(value: object) -> timedelta:
    duration = _duration(value)
    if duration <= timedelta(0):
        raise ValueError("a duration must be greater than zero")
    return duration


# Any fixed moment works: the check only asks whether the expression ever fires.
_CRON_PROBE = datetime(2024, 1, 1, tzinfo=UTC)


def check_cron(value: str) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week) that fires at
    least once a year; returned with its fields separated by single spaces."""
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(
            f"{value!r} is not a 5-field cron expression "
            "(minute hour day-of-month month day-of-week, e.g. '30 0 * * *')"
        )
    expression = " ".join(fields)
    # Imported by the first window (docs/architecture.md: a library only an optional
    # feature needs is imported where that feature is first used).
    from croniter import CroniterError, croniter

    try:
        iterator = croniter(expression, _CRON_PROBE)
        iterator.get_prev(datetime)
        iterator.get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
    return expression


# A file name may have at most 255 bytes on common file systems; the version number is
# counted with 20 digits, more than any collection will reach.
MAX_FILENAME_BYTES = 255
_LONGEST_VERSION = "9" * 20
# obstore writes a local object through a staging file "<name>#<digits>" and treats names
# of that shape as unfinished writes, so a file name must not look like one.
_STAGING_SUFFIX = re.compile(r"#[0-9]+\Z")


def check_filename_template(value: str) -> str:
    if VERSION_PLACEHOLDER not in value:
        raise ValueError(f"must contain {VERSION_PLACEHOLDER} (replaced by the version number)")
    if "/" in value or "\\" in value:
        raise ValueError("must not contain a path separator ('/' or '\\')")
    if ".." in value:
        raise ValueError("must not contain '..'")
    if '"' in value or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        # The file name ends up in a Content-Disposition header.
        raise ValueError("must not contain quotes or control characters")
    longest = value.replace(VERSION_PLACEHOLDER, _LONGEST_VERSION)
    if len(longest.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise ValueError(
            f"is too long: a file name may have at most {MAX_FILENAME_BYTES} bytes (UTF-8, "
            f"with the version number counted as {len(_LONGEST_VERSION)} digits)"
        )
    if _STAGING_SUFFIX.search(value.replace(VERSION_PLACEHOLDER, "1")):
        raise ValueError(
            "must not end with '#' and digits (the storage's name for an unfinished write)"
        )
    return value


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_LOOKS_NUMERIC = re.compile(r"^[0-9./]+$")


def check_address_entry(value: str) -> str:
    """An IP address, a CIDR network or a host name (``restrictByIP``)."""
    entry = value.strip()
    if not entry:
        raise ValueError("an address entry must not be empty")
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    else:
        return entry
    if ":" in entry or _LOOKS_NUMERIC.match(entry):
        raise ValueError(f"{entry!r} is not a valid IP address or CIDR network")
    host = entry.rstrip(".")
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{entry!r} is not an IP address, a CIDR network or a host name")
    return entry


RoleName = Annotated[Role, BeforeValidator(_role)]
CollectionRoleName = Annotated[Role, BeforeValidator(_role), AfterValidator(_collection_role)]
Size = Annotated[int, BeforeValidator(_size)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_positive_duration)]
NonBlank = Annotated[str, AfterValidator(_non_blank)]
CronExpression = Annotated[str, AfterValidator(check_cron)]
FilenameTemplate = Annotated[str, AfterValidator(check_filename_template)]
AddressEntry = Annotated[str, AfterValidator(check_address_entry)]
StrictBool = Annotated[bool, Field(strict=True)]
GrantType = Annotated[str, AfterValidator(_grant_type)]
AclType = Annotated[str, AfterValidator(_acl_type)]


# --- base classes ------------------------------------------------------------------------------


def _drop_nulls(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if value is not None}
    return data


class _Loose(BaseModel):
    """Unknown fields are ignored (top level, metadata)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        return _drop_nulls(data)


class _Strict(BaseModel):
    """Unknown fields are errors (everything under ``spec``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        return _drop_nulls(data)


class ObjectMeta(_Loose):
    name: NonBlank
    namespace: str = ""


class SecretRef(_Strict):
    """``{name: <Secret name>, entry: <key in its data or stringData>}``."""

    name: NonBlank
    entry: NonBlank


# --- BackupUser --------------------------------------------------------------------------------


class ObjectGrantSpec(_Strict):
    """One object an access key (or an operations scope) may act on."""

    name: NonBlank
    type: GrantType
    roles: tuple[RoleName, ...] = ()


class AccessKeySpec(_Strict):
    name: str
    password: str = ""
    password_from_ref: SecretRef | None = Field(default=None, alias="passwordFromRef")
    objects: tuple[ObjectGrantSpec, ...] = ()


class BackupUserSpec(_Strict):
    email: str = ""
    deactivated: StrictBool = False
    organization: str = ""
    about: str = ""
    password: str = ""
    password_from_ref: SecretRef | None = Field(default=None, alias="passwordFromRef")
    restrict_by_ip: tuple[AddressEntry, ...] = Field(default=(), alias="restrictByIP")
    roles: tuple[RoleName, ...] = ()
    access_keys: tuple[AccessKeySpec, ...] = Field(default=(), alias="accessKeys")


class BackupUser(_Loose):
    api_version: Literal["backups.riotkit.org/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["BackupUser"]
    metadata: ObjectMeta
    spec: BackupUserSpec


# --- BackupCollection --------------------------------------------------------------------------


class WindowSpec(_Strict):
    """Uploads are allowed for ``duration`` from every start given by the cron ``from``."""

    from_: CronExpression = Field(alias="from")
    duration: PositiveDuration


class StrategySpec(_Strict):
    keep_last_older_not_more_than: PositiveDuration | None = Field(
        default=None, alias="keepLastOlderNotMoreThan"
    )
    max_older_copies: Annotated[int, Field(strict=True, ge=0)] = Field(
        default=0, alias="maxOlderCopies"
    )
    # strategyName: gfs (grandfather-father-son), Proxmox Backup Server's keep-* options.
    keep_last: Annotated[int, Field(strict=True, ge=0)] = Field(default=0, alias="keepLast")
    keep_hourly: Annotated[int, Field(strict=True, ge=0)] = Field(default=0, alias="keepHourly")
    keep_daily: Annotated[int, Field(strict=True, ge=0)] = Field(default=0, alias="keepDaily")
    keep_weekly: Annotated[int, Field(strict=True, ge=0)] = Field(default=0, alias="keepWeekly")
    keep_monthly: Annotated[int, Field(strict=True, ge=0)] = Field(default=0, alias="keepMonthly")
    keep_yearly: Annotated[int, Field(strict=True, ge=0)] = Field(default=0, alias="keepYearly")
    # The time zone hours, days, weeks, months and years of gfs are counted in (IANA name).
    time_zone: str = Field(default="UTC", alias="timeZone")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r}: give an IANA name such as UTC or Europe/Warsaw"
            ) from exc
        return value


class AccessControlEntrySpec(_Strict):
    """Either ``{name: alice, type: user, roles: [...]}`` or the older
    ``{userName: alice, roles: [...]}``."""

    name: NonBlank | None = None
    type: AclType | None = None
    user_name: NonBlank | None = Field(default=None, alias="userName")
    roles: tuple[CollectionRoleName, ...] = ()

    @model_validator(mode="after")
    def _one_user(self) -> AccessControlEntrySpec:
        if self.name is not None and self.user_name is not None:
            raise ValueError("give either name (with type: user) or userName, not both")
        if self.name is None and self.user_name is None:
            raise ValueError("the user is missing: give name (with type: user) or userName")
        return self

    @property
    def user(self) -> str:
        return self.user_name if self.user_name is not None else (self.name or "")


# --- notifications -----------------------------------------------------------------------------


def _event(value: object) -> EventType:
    valid = ", ".join(sorted(e.value for e in SUBSCRIBABLE))
    if not isinstance(value, str):
        raise ValueError(f"an event must be a name ({valid}), got {type(value).__name__}")
    if value == EventType.TEST.value:
        raise ValueError(
            "'test' cannot be subscribed to: test messages are sent to a channel on request; "
            f"subscribe to {valid}"
        )
    try:
        event = EventType(value)
    except ValueError:
        raise ValueError(f"unknown event {value!r}: valid events are {valid}") from None
    return event


def _events(value: tuple[EventType, ...]) -> frozenset[EventType]:
    if not value:
        raise ValueError("list at least one event, or leave events out to subscribe to all of them")
    return frozenset(value)


def _fraction(value: object) -> float:
    """``90%`` or ``0.9``: a fraction above 0 and at most 1."""
    if isinstance(value, bool):
        raise ValueError("give a percentage such as 90% or a fraction such as 0.9")
    number: float
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a percentage such as 90% or a fraction such as 0.9"
            ) from None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise ValueError(
            f"give a percentage such as 90% or a fraction such as 0.9, got {type(value).__name__}"
        )
    if not 0 < number <= 1:
        raise ValueError(f"{value!r} must be above 0% and at most 100% (a fraction up to 1)")
    return number


def _ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"give a number between 0 and 1 such as 0.5, got {type(value).__name__}")
    if not 0 < value < 1:
        raise ValueError(f"{value} must be between 0 and 1 (0.5: half the usual size)")
    return float(value)


def _reminder(value: object) -> timedelta | None:
    if value in (0, "0", "never"):
        return None
    duration = _duration(value)
    if duration <= timedelta(0):
        return None
    return duration


def _non_negative_duration(value: object) -> timedelta:
    duration = _duration(value)
    if duration < timedelta(0):
        raise ValueError("a duration must not be negative")
    return duration


EventName = Annotated[EventType, BeforeValidator(_event)]
Fraction = Annotated[float, BeforeValidator(_fraction)]
Ratio = Annotated[float, BeforeValidator(_ratio)]
Reminder = Annotated[timedelta | None, BeforeValidator(_reminder)]
NonNegativeDuration = Annotated[timedelta, BeforeValidator(_non_negative_duration)]


class _EventsSpec(_Strict):
    """The ``events`` a subscription chooses; None: every subscribable event."""

    events: tuple[EventName, ...] | None = None

    @field_validator("events")
    @classmethod
    def _some(cls, value: tuple[EventType, ...] | None) -> tuple[EventType, ...] | None:
        if value is not None:
            _events(value)
        return value

    def event_set(self) -> frozenset[EventType]:
        return SUBSCRIBABLE if self.events is None else frozenset(self.events)


class SubscriptionSpec(_EventsSpec):
    """One entry of a collection's ``notifications.channels``."""

    name: NonBlank


class NotificationsSpec(_Strict):
    """A collection's ``spec.notifications``; the defaults are those of
    :class:`~backup_repository.domain.notification_channels.NotificationPolicy`."""

    channels: tuple[SubscriptionSpec, ...] = ()
    grace_period: NonNegativeDuration = Field(default=_POLICY.grace_period, alias="gracePeriod")
    max_age: PositiveDuration | None = Field(default=_POLICY.max_age, alias="maxAge")
    shrink_ratio: Ratio = Field(default=_POLICY.shrink_ratio, alias="shrinkRatio")
    size_sample: Annotated[int, Field(strict=True, ge=3, le=1000)] = Field(
        default=_POLICY.size_sample, alias="sizeSample"
    )
    refusal_threshold: Annotated[int, Field(strict=True, ge=1)] = Field(
        default=_POLICY.refusal_threshold, alias="refusalThreshold"
    )
    refusal_period: PositiveDuration = Field(default=_POLICY.refusal_period, alias="refusalPeriod")
    usage_threshold: Fraction = Field(default=_POLICY.usage_threshold, alias="usageThreshold")
    reminder_interval: Reminder = Field(default=_POLICY.reminder_interval, alias="reminderInterval")


def _ca_file(value: str) -> str:
    """The path of a channel's ``caFile``: absolute (the server's working folder is no
    place to look for it), one line. Whether the file is there and holds certificates is
    checked by the loader."""
    if not value.strip():
        raise ValueError("must not be empty: leave caFile out to trust the system's CA store")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("a file path must not contain line breaks or control characters")
    if not os.path.isabs(value):
        raise ValueError(
            f"{value!r} is not an absolute path: give the full path of the PEM file, "
            "such as /etc/backup-repository-ca/ca.crt"
        )
    return value


CaFile = Annotated[str, AfterValidator(_ca_file)]


class WebhookSpec(_Strict):
    url: NonBlank
    signing_secret_ref: SecretRef = Field(alias="signingSecretRef")
    timeout: PositiveDuration = Field(default=timedelta(seconds=10))
    ca_file: CaFile | None = Field(default=None, alias="caFile")


def _address(value: str) -> str:
    """An e-mail address, bare (``ops@example.org``) or with a name
    (``Backups <backups@example.org>``); never a line break (it goes into a header)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("an e-mail address must not contain line breaks or control characters")
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain or " " in address:
        raise ValueError(
            f"{value!r} is not an e-mail address (write ops@example.org or "
            "Backups <backups@example.org>)"
        )
    return value


Address = Annotated[str, AfterValidator(_address)]


class EmailSpec(_Strict):
    host: NonBlank
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] | None = None
    security: SmtpSecurity = SmtpSecurity.TLS
    from_: Address = Field(alias="from")
    to: tuple[Address, ...]
    username: str = ""
    password_from_ref: SecretRef | None = Field(default=None, alias="passwordFromRef")
    timeout: PositiveDuration = Field(default=timedelta(seconds=30))
    ca_file: CaFile | None = Field(default=None, alias="caFile")

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one recipient address (to: [ops@example.org])")
        return value

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {SmtpSecurity.TLS: 465, SmtpSecurity.STARTTLS: 587}.get(self.security, 25)


class AppriseSpec(_Strict):
    urls_from_ref: SecretRef = Field(alias="urlsFromRef")
    timeout: PositiveDuration = Field(default=_APPRISE.timeout)


class AllCollectionsSpec(_EventsSpec):
    """A channel's ``allCollections``: the default subscription of every collection."""


class NotificationChannelSpec(_Strict):
    description: str = ""
    type: ChannelType
    webhook: WebhookSpec | None = None
    email: EmailSpec | None = None
    apprise: AppriseSpec | None = None
    all_collections: AllCollectionsSpec | None = Field(default=None, alias="allCollections")


class NotificationChannel(_Loose):
    api_version: Literal["backups.riotkit.org/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["NotificationChannel"]
    metadata: ObjectMeta
    spec: NotificationChannelSpec


def _fingerprint(value: str) -> str:
    found = parse_fingerprint(value)
    if found is None:
        raise ValueError(
            f"{value!r} is not an OpenPGP fingerprint: give the 40 (or 64) hex digits "
            "gpg --fingerprint shows, spaces allowed"
        )
    return found


Fingerprint = Annotated[str, AfterValidator(_fingerprint)]


class TrustedUploadersSpec(_Strict):
    """A collection's ``spec.trustedUploaders``: the public keys (ASCII-armoured, one or
    more, in a Secret's entry) whose detached signature every upload must carry, and
    optionally the fingerprints of those among them that count."""

    keys_from_ref: SecretRef = Field(alias="keysFromRef")
    fingerprints: tuple[Fingerprint, ...] = ()


class BackupCollectionSpec(_Strict):
    description: str = ""
    filename_template: FilenameTemplate = Field(alias="filenameTemplate")
    max_backups_count: Annotated[int, Field(strict=True, ge=1)] = Field(alias="maxBackupsCount")
    max_one_version_size: Size = Field(alias="maxOneVersionSize")
    max_collection_size: Size = Field(alias="maxCollectionSize")
    windows: tuple[WindowSpec, ...] = ()
    strategy_name: Literal["fifo", "fifo-plus-older", "gfs"] = Field(
        default="fifo", alias="strategyName"
    )
    strategy_spec: StrategySpec = Field(default_factory=StrategySpec, alias="strategySpec")
    health_secret_ref: SecretRef | None = Field(default=None, alias="healthSecretRef")
    access_control: tuple[AccessControlEntrySpec, ...] = Field(default=(), alias="accessControl")
    # Checked on its own by the loader (NotificationsSpec): a mistake in it is reported but
    # does not take the collection out of service, since notifications grant nothing.
    notifications: Any = None
    trusted_uploaders: TrustedUploadersSpec | None = Field(default=None, alias="trustedUploaders")


class BackupCollection(_Loose):
    api_version: Literal["backups.riotkit.org/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["BackupCollection"]
    metadata: ObjectMeta
    spec: BackupCollectionSpec


# --- Secret ------------------------------------------------------------------------------------


class Secret(_Loose):
    """Values are used exactly as written in ``data`` (no base64 decoding, as the reference
    project does) or in ``stringData``; ``stringData`` wins when both hold an entry, as in
    Kubernetes."""

    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Secret"]
    metadata: ObjectMeta
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict, alias="stringData")

    def value(self, entry: str) -> str | None:
        if entry in self.string_data:
            return self.string_data[entry]
        return self.data.get(entry)
