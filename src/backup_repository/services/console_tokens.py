"""What the web console's tokens page shows and does (docs/console.md, "Tokens"): the
caller's sessions, revoking one, and creating a token for a CI job. View models only, no
HTTP: the handlers are in ``http/ui/pages_tokens.py``.

Every rule is the auth service's: the listing is ``AuthService.list_sessions``, a
revocation ``AuthService.logout``, and a new token ``AuthService.login`` with the caller's
own name and the password typed again (so that a console session alone, say a browser left
open, cannot mint a long-lived token), an operations scope and a lifetime, or a single-use
upload collection. What the form offers comes from the authorization rules
(``domain/authz.py``): a role on a collection is offered only when the caller has it there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from backup_repository.domain import authz
from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.errors import InvalidInput
from backup_repository.domain.identity import COLLECTION, Login
from backup_repository.domain.roles import Role
from backup_repository.domain.units import format_duration, parse_ttl
from backup_repository.services.auth import AuthContext, AuthService, ScopeElementInput
from backup_repository.services.ports import ConfigurationProvider, SessionRecord
from backup_repository.services.session_listing import SessionPage

# Sessions per page of the tokens page.
SESSIONS_PAGE_SIZE: Final = 50
# The lifetimes the form offers (those up to the server's --jwt-lifetime, and that one).
LIFETIMES: Final = (
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=7),
    timedelta(days=30),
    timedelta(days=90),
    timedelta(days=365),
)
# The roles a scope element can carry, and the action each one allows.
SCOPE_ROLES: Final = (
    (Role.BACKUP_UPLOADER, CollectionAction.UPLOAD),
    (Role.BACKUP_DOWNLOADER, CollectionAction.DOWNLOAD),
    (Role.UPLOADS_ANYTIME, CollectionAction.UPLOAD_OUTSIDE_WINDOW),
)
NOTHING_CHOSEN: Final = (
    "choose at least one role on a collection, or a collection for a single-use upload token"
)
PASSWORD_MISSING: Final = "type your password to create a token"  # noqa: S105 (a message)


@dataclass(frozen=True)
class ScopeGrant:
    """One role on one collection (a scope element, a checkbox of the form)."""

    collection: str
    role: str

    @property
    def value(self) -> str:
        """The form value of its checkbox: ``<role>:<collection>`` (roles hold no colon)."""
        return f"{self.role}:{self.collection}"

    @classmethod
    def parse(cls, value: str) -> ScopeGrant:
        role, sep, collection = value.partition(":")
        if not sep or not role or not collection:
            raise InvalidInput(f"scope: {value[:80]!r} is not one of the offered roles")
        return cls(collection=collection, role=role)


@dataclass(frozen=True)
class GrantableCollection:
    """A collection the caller may act on, with the roles it may put in a token there."""

    name: str
    roles: tuple[str, ...]
    # Whether a single-use upload token can be made for it.
    single_use: bool

    @property
    def grants(self) -> tuple[ScopeGrant, ...]:
        return tuple(ScopeGrant(self.name, role) for role in self.roles)


@dataclass(frozen=True)
class LifetimeChoice:
    seconds: int
    label: str


@dataclass(frozen=True)
class SessionView:
    """One session of the listing."""

    id: str
    created_at: datetime | None
    expires_at: datetime
    requester_ip: str
    access_key: str
    description: str
    scope: tuple[ScopeGrant, ...]
    single_use_collection: str | None
    deactivated: bool
    expired: bool
    current: bool

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def active(self) -> bool:
        return not self.deactivated and not self.expired


@dataclass(frozen=True)
class TokensView:
    sessions: tuple[SessionView, ...]
    # The cursor of the next (older) page of sessions; None on the last page.
    next_cursor: str | None
    collections: tuple[GrantableCollection, ...]
    lifetimes: tuple[LifetimeChoice, ...]
    # The login a new token is issued to: the user, or ``user$key`` for an access key.
    login: str


@dataclass(frozen=True)
class TokenForm:
    """The create-a-token form as sent (checkbox values of :class:`ScopeGrant`)."""

    password: str = ""
    lifetime: str = ""
    scope: Sequence[str] = ()
    single_use: str = ""
    description: str = ""


@dataclass(frozen=True)
class CreatedToken:
    token: str
    session_id: str
    expires_at: datetime
    scope: tuple[ScopeGrant, ...] = ()
    single_use_collection: str | None = None


def _scope_grants(session: SessionRecord) -> tuple[ScopeGrant, ...]:
    return tuple(
        ScopeGrant(grant.name, role.value)
        for grant in session.scope
        for role in sorted(grant.roles, key=lambda r: r.value)
    )


def _description(form: TokenForm) -> str:
    """What the session listings show for a scoped token made here: that the console made
    it, and the note typed in the form. (A single-use token's description is always
    ``Single-use upload to <collection>``, as the API's.)"""
    note = " ".join(form.description.split())
    return ("Web console token" + (f": {note}" if note else ""))[:255]


def lifetime_choices(maximum: timedelta) -> tuple[LifetimeChoice, ...]:
    """The lifetimes up to the server's maximum, and the maximum itself."""
    choices = [d for d in LIFETIMES if d < maximum] + [maximum]
    return tuple(
        LifetimeChoice(int(d.total_seconds()), _lifetime_label(d, d == maximum)) for d in choices
    )


def _lifetime_label(value: timedelta, is_maximum: bool) -> str:
    if value.total_seconds() % 86400 == 0:
        days = value.days
        text = "1 day" if days == 1 else f"{days} days"
    elif value.total_seconds() % 3600 == 0:
        hours = int(value.total_seconds() // 3600)
        text = "1 hour" if hours == 1 else f"{hours} hours"
    else:
        text = format_duration(value)
    return f"{text} (the server's longest)" if is_maximum else text


class ConsoleTokenService:
    """The tokens page of one caller."""

    def __init__(
        self,
        auth: AuthService,
        config: ConfigurationProvider,
        max_lifetime: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._auth = auth
        self._config = config
        self._max_lifetime = max_lifetime
        self._clock = clock

    def grantable(self, ctx: AuthContext) -> tuple[GrantableCollection, ...]:
        """The collections the caller may act on, by name, with the roles it holds there."""
        offered = []
        collections = self._config.snapshot().collections
        for name in sorted(collections):
            collection = collections[name]
            roles = tuple(
                role.value
                for role, action in SCOPE_ROLES
                if authz.may_act_on_collection(ctx.principal, collection, action)
            )
            if roles:
                offered.append(
                    GrantableCollection(
                        name=name,
                        roles=roles,
                        single_use=authz.single_use_upload_scope(ctx.principal, collection)
                        is not None,
                    )
                )
        return tuple(offered)

    async def page(self, ctx: AuthContext, cursor: str | None = None) -> TokensView:
        """The caller's sessions (one page, newest first) and what the form offers."""
        listing = await self._auth.list_sessions(
            ctx, None, SessionPage(SESSIONS_PAGE_SIZE, cursor or None)
        )
        now = self._clock()
        sessions = tuple(
            SessionView(
                id=s.id,
                created_at=s.created_at,
                expires_at=s.expires_at,
                requester_ip=s.requester_ip,
                access_key=s.access_key_name,
                description=s.description,
                scope=_scope_grants(s),
                single_use_collection=s.single_use_collection,
                deactivated=s.deactivated,
                expired=s.expires_at <= now,
                current=s.id == ctx.session.id,
            )
            for s in listing.sessions
        )
        return TokensView(
            sessions=sessions,
            next_cursor=listing.next_cursor,
            collections=self.grantable(ctx),
            lifetimes=lifetime_choices(self._max_lifetime),
            login=str(Login(ctx.user.name, ctx.principal.access_key_name)),
        )

    async def create(self, ctx: AuthContext, form: TokenForm, client_ip: str) -> CreatedToken:
        """A new token for the caller's own login, narrowed as the form asks."""
        if not form.password:
            raise InvalidInput(PASSWORD_MISSING)
        lifetime = self._lifetime(form.lifetime)
        offered = {c.name: c for c in self.grantable(ctx)}
        single_use = form.single_use.strip() or None
        if single_use is not None:
            found = offered.get(single_use)
            if found is None or not found.single_use:
                raise InvalidInput(
                    f"single-use upload: you may not upload to {single_use[:80]!r}; "
                    "choose a collection from the list"
                )
            issued, record = await self._auth.login(
                str(Login(ctx.user.name, ctx.principal.access_key_name)),
                form.password,
                client_ip,
                ttl=lifetime,
                single_use_upload=single_use,
            )
            return CreatedToken(
                issued.token,
                issued.session_id,
                issued.expires_at,
                scope=_scope_grants(record),
                single_use_collection=single_use,
            )
        chosen = [ScopeGrant.parse(value) for value in dict.fromkeys(form.scope)]
        if not chosen:
            raise InvalidInput(NOTHING_CHOSEN)
        for grant in chosen:
            if grant.collection not in offered or grant.role not in offered[grant.collection].roles:
                raise InvalidInput(
                    f"scope: {grant.role} on {grant.collection[:80]!r} is not a role you hold; "
                    "choose from the roles offered"
                )
        by_collection: dict[str, list[str]] = {}
        for grant in chosen:
            by_collection.setdefault(grant.collection, []).append(grant.role)
        issued, record = await self._auth.login(
            str(Login(ctx.user.name, ctx.principal.access_key_name)),
            form.password,
            client_ip,
            scope=[
                ScopeElementInput(type=COLLECTION, name=name, roles=roles)
                for name, roles in by_collection.items()
            ],
            ttl=lifetime,
            description=_description(form),
        )
        return CreatedToken(
            issued.token, issued.session_id, issued.expires_at, scope=_scope_grants(record)
        )

    async def revoke(self, ctx: AuthContext, session_id: str, client_ip: str) -> bool:
        """Revoke one of the caller's sessions (and the tokens refreshed from it). True when
        it was the caller's own, current session: the console is then logged out."""
        revoked = await self._auth.logout(ctx, session_id, client_ip)
        return revoked == ctx.session.id

    def _lifetime(self, text: str) -> timedelta:
        if not text.strip():
            return self._max_lifetime
        try:
            return parse_ttl(text.strip())
        except ValueError as exc:
            raise InvalidInput(f"lifetime: {exc}") from None
