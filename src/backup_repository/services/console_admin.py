"""What the web console's administration pages show (docs/console.md, "Administration"):
the audit log, the configuration problems, the readiness checks, and the users and
collections as loaded. View models only, no HTTP: the handlers are in
``http/ui/pages_admin.py``.

Every page is for a systemAdmin with a full session (not an access key, not a scope): the
rule the audit log already has (``authz.may_read_audit``), so the pages and the audit API
never disagree about who is an administrator. Nothing here ever exposes a password hash,
a health code or its digest: users and access keys appear with names and grants only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from backup_repository.domain import authz
from backup_repository.domain.errors import Forbidden, InvalidInput
from backup_repository.domain.identity import Collection, ObjectGrant, User
from backup_repository.domain.roles import Role
from backup_repository.domain.units import format_duration
from backup_repository.services.audit import (
    AuditEntry,
    AuditFilters,
    AuditPage,
    AuditService,
)
from backup_repository.services.auth import AuthContext
from backup_repository.services.events import Action, Outcome
from backup_repository.services.health import CheckResult, ReadinessCheck, run_checks
from backup_repository.services.ports import ConfigProblem, ConfigurationProvider

NO_PERMISSION_ADMIN: Final = (
    "the administration pages are for system administrators (systemAdmin) logged in with "
    "their own password; log in as one to see them"
)
# Audit entries per page of the console (the API allows up to MAX_LIMIT).
AUDIT_PAGE_SIZE: Final = 50


@dataclass(frozen=True)
class AuditForm:
    """The audit page's filters as the form sent them (empty text: no filter)."""

    action: str = ""
    outcome: str = ""
    user: str = ""
    collection: str = ""
    since: str = ""
    until: str = ""


def audit_filters(form: AuditForm) -> AuditFilters:
    """The filters a form asks for. Times are UTC: ``2026-12-05T10:00`` as a browser's
    date-time field sends it, or RFC 3339 with an offset. :class:`InvalidInput` names the
    field and what to write instead."""
    action: Action | None = None
    if form.action:
        try:
            action = Action(form.action)
        except ValueError:
            known = ", ".join(a.value for a in Action)
            raise InvalidInput(f"event type: unknown {form.action!r} (one of: {known})") from None
    outcome: Outcome | None = None
    if form.outcome:
        try:
            outcome = Outcome(form.outcome)
        except ValueError:
            raise InvalidInput(f"outcome: unknown {form.outcome!r} (success or failure)") from None
    return AuditFilters(
        user=form.user.strip() or None,
        collection=form.collection.strip() or None,
        action=action,
        outcome=outcome,
        since=_utc_time("from", form.since),
        until=_utc_time("until", form.until),
    )


def _utc_time(name: str, text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{name}: not a date and time, write e.g. 2026-12-05T10:00 (UTC)"
        ) from None
    if parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{name}: out of range") from None


def may_administer(ctx: AuthContext) -> bool:
    """Whether the caller sees the administration pages (and the link to them)."""
    return authz.may_read_audit(ctx.principal)


def _require_admin(ctx: AuthContext) -> None:
    if not may_administer(ctx):
        raise Forbidden(NO_PERMISSION_ADMIN)


# -- view models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantView:
    """Roles on one object (an access key's grant, an accessControl line)."""

    type: str
    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class AccessKeyView:
    name: str
    grants: tuple[GrantView, ...]


@dataclass(frozen=True)
class UserView:
    name: str
    email: str
    roles: tuple[str, ...]
    deactivated: bool
    restrict_by_ip: tuple[str, ...]
    access_keys: tuple[AccessKeyView, ...]


@dataclass(frozen=True)
class WindowView:
    cron: str
    duration: str


@dataclass(frozen=True)
class CollectionView:
    name: str
    description: str
    filename_template: str
    max_backups_count: int
    max_one_version_size: int
    max_collection_size: int
    strategy: str
    # The strategy's settings as "key: value" texts (empty for plain fifo).
    strategy_settings: tuple[str, ...]
    windows: tuple[WindowView, ...]
    # Whether collection health asks for a code; the code itself is never shown.
    health_code_required: bool
    access_control: tuple[GrantView, ...]


@dataclass(frozen=True)
class ConfigurationView:
    """The configuration as loaded: usable objects, and the objects left out and why."""

    users: tuple[UserView, ...]
    collections: tuple[CollectionView, ...]
    problems: tuple[ConfigProblem, ...]
    usable: bool
    unusable_reason: str


@dataclass(frozen=True)
class ReadinessView:
    checks: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        return all(check.status for check in self.checks)


@dataclass(frozen=True)
class AuditView:
    entries: tuple[AuditEntry, ...]
    # The cursor of the next (older) page; None on the last page.
    next_cursor: str | None


def _roles(roles: frozenset[Role]) -> tuple[str, ...]:
    return tuple(sorted(role.value for role in roles))


def _grant(grant: ObjectGrant) -> GrantView:
    return GrantView(type=grant.type, name=grant.name, roles=_roles(grant.roles))


def user_view(user: User) -> UserView:
    return UserView(
        name=user.name,
        email=user.email,
        roles=_roles(user.roles),
        deactivated=user.deactivated,
        restrict_by_ip=user.restrict_by_ip,
        access_keys=tuple(
            AccessKeyView(name=key.name, grants=tuple(_grant(g) for g in key.objects))
            for key in user.access_keys
        ),
    )


def _strategy_settings(collection: Collection) -> tuple[str, ...]:
    strategy = collection.strategy
    settings: list[str] = []
    if strategy.keep_last_older_not_more_than is not None:
        settings.append(
            f"keepLastOlderNotMoreThan: {format_duration(strategy.keep_last_older_not_more_than)}"
        )
    if strategy.max_older_copies:
        settings.append(f"maxOlderCopies: {strategy.max_older_copies}")
    for key, value in (
        ("keepLast", strategy.keep_last),
        ("keepHourly", strategy.keep_hourly),
        ("keepDaily", strategy.keep_daily),
        ("keepWeekly", strategy.keep_weekly),
        ("keepMonthly", strategy.keep_monthly),
        ("keepYearly", strategy.keep_yearly),
    ):
        if value:
            settings.append(f"{key}: {value}")
    if strategy.name == "gfs":
        settings.append(f"timeZone: {strategy.time_zone}")
    return tuple(settings)


def collection_view(collection: Collection) -> CollectionView:
    return CollectionView(
        name=collection.name,
        description=collection.description,
        filename_template=collection.filename_template,
        max_backups_count=collection.max_backups_count,
        max_one_version_size=collection.max_one_version_size,
        max_collection_size=collection.max_collection_size,
        strategy=collection.strategy.name,
        strategy_settings=_strategy_settings(collection),
        windows=tuple(
            WindowView(cron=w.cron, duration=format_duration(w.duration))
            for w in collection.windows
        ),
        health_code_required=collection.health_secret is not None,
        access_control=tuple(
            GrantView(type="user", name=entry.user, roles=_roles(entry.roles))
            for entry in collection.access_control
        ),
    )


# -- the service ----------------------------------------------------------------------------


class ConsoleAdminService:
    """The administration pages' data, for system administrators only."""

    def __init__(
        self,
        config: ConfigurationProvider,
        audit: AuditService,
        readiness: Sequence[ReadinessCheck],
        readiness_timeout: float,
        audit_page_size: int = AUDIT_PAGE_SIZE,
    ) -> None:
        self._audit_page_size = audit_page_size
        self._config = config
        self._audit = audit
        self._readiness = readiness
        self._readiness_timeout = readiness_timeout

    async def audit(
        self, ctx: AuthContext, form: AuditForm, cursor: str | None = None
    ) -> AuditView:
        """One page of the audit log, newest first (the audit API's own search), filtered
        as the form asks; :class:`InvalidInput` (after the check that the caller is an
        administrator) when a filter cannot be read."""
        _require_admin(ctx)
        filters = audit_filters(form)
        result = await self._audit.search(ctx, filters, AuditPage(self._audit_page_size, cursor))
        return AuditView(tuple(result.entries), result.next_cursor)

    def configuration(self, ctx: AuthContext) -> ConfigurationView:
        """Users and collections as loaded, by name, and the objects that were not."""
        _require_admin(ctx)
        snapshot = self._config.snapshot()
        return ConfigurationView(
            users=tuple(user_view(snapshot.users[name]) for name in sorted(snapshot.users)),
            collections=tuple(
                collection_view(snapshot.collections[name]) for name in sorted(snapshot.collections)
            ),
            problems=tuple(
                sorted(snapshot.problems, key=lambda p: (p.source, p.kind, p.name, p.field))
            ),
            usable=snapshot.usable,
            unusable_reason=snapshot.unusable_reason,
        )

    async def readiness(self, ctx: AuthContext) -> ReadinessView:
        """The checks of ``/ready``, run now."""
        _require_admin(ctx)
        return ReadinessView(tuple(await run_checks(self._readiness, self._readiness_timeout)))
