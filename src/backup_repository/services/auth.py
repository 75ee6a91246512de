"""Login, sessions and request authentication (docs/security.md, docs/api.md). The paging
of session listings is in :mod:`services.session_listing`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backup_repository.domain import authz, sessions
from backup_repository.domain.errors import (
    AuthenticationFailed,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
)
from backup_repository.domain.identity import COLLECTION, Login, ObjectGrant, User
from backup_repository.domain.network import AddressRules
from backup_repository.domain.roles import UnknownRole, parse_roles
from backup_repository.domain.sessions import Narrowing
from backup_repository.services.events import (
    Action,
    Event,
    EventSink,
    NullSink,
    Outcome,
    short_session,
)
from backup_repository.services.passwords import PasswordHasher
from backup_repository.services.ports import (
    ConfigurationProvider,
    HostResolver,
    SessionRecord,
    SessionRepository,
)
from backup_repository.services.session_listing import (
    MAX_SESSION_LIMIT,
    UNPAGED_LIMIT,
    SessionListing,
    SessionPage,
    cursor_of,
    encode_session_cursor,
    parse_session_cursor,
)
from backup_repository.services.tokens import IssuedToken, TokenCodec, session_id_of

logger = logging.getLogger(__name__)

# The reference's phrase first: its clients match on the start of the message.
BAD_CREDENTIALS = (
    "incorrect Username or Password: the username, access key or password was not accepted "
    "(an unknown or deactivated user is refused alike); check them and try again"
)
MISSING_CREDENTIALS = "missing Username or Password"
SESSION_NOT_FOUND = "cannot find specified session"
USER_NOT_FOUND = "cannot find specified user"
NO_PERMISSION_VIEW_USER = "no permissions to view that user account"
NO_PERMISSION_OTHER_USER = "no permissions to act as other user"
NO_PERMISSION_REVOKE = "you don't have permissions to revoke session of other user"
COLLECTION_NOT_FOUND = "cannot find specified collection"
SINGLE_USE_NOT_ALLOWED = "singleUseUpload: not authorized to upload versions to this collection"
SINGLE_USE_NO_REFRESH = "a single-use upload token cannot be refreshed"
SINGLE_USE_USED = "single-use token was already used or revoked"
SESSION_REVOKED = "session was revoked or does not exist"
FAMILY_EXPIRED = (
    "this token's login has expired: refreshing cannot extend it past that; log in again"
)
MAX_SCOPE_ELEMENTS = 100


@dataclass(frozen=True)
class ScopeElementInput:
    type: str
    name: str
    roles: Sequence[str]


@dataclass(frozen=True)
class AuthContext:
    """Who is calling, with which token, narrowed to what."""

    principal: authz.Principal
    session: SessionRecord
    token: str
    claims_issued_at: datetime
    claims_expires_at: datetime
    client_ip: str = ""

    @property
    def user(self) -> User:
        return self.principal.user


class AuthService:
    def __init__(
        self,
        config: ConfigurationProvider,
        sessions: SessionRepository,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        resolver: HostResolver,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        events: EventSink | None = None,
    ) -> None:
        self._events: EventSink = events or NullSink()
        self._config = config
        self._sessions = sessions
        self._hasher = hasher
        self._tokens = tokens
        self._resolver = resolver
        self._clock = clock

    # -- login ------------------------------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        client_ip: str,
        scope: Sequence[ScopeElementInput] | None = None,
        ttl: timedelta | None = None,
        single_use_upload: str | None = None,
        description: str = "Login",
    ) -> tuple[IssuedToken, SessionRecord]:
        """Issue a token. ``single_use_upload`` names a collection: the token then allows one
        upload there and nothing else, and is revoked by that upload. ``description`` is
        what session listings show (the web console's sessions say so)."""
        login = Login.parse(username) if username else Login("", "")
        try:
            issued, record = await self._login(
                username, password, client_ip, scope, ttl, single_use_upload, description
            )
        except DomainError as exc:
            await self._events.emit(
                Event(
                    Action.LOGIN,
                    Outcome.FAILURE,
                    user=login.user[:255],
                    access_key=login.access_key[:255],
                    client_ip=client_ip,
                    detail=exc.message,
                )
            )
            raise
        await self._events.emit(
            Event(
                Action.LOGIN,
                Outcome.SUCCESS,
                user=login.user,
                access_key=login.access_key,
                client_ip=client_ip,
                session=short_session(record.id),
            )
        )
        return issued, record

    async def _login(
        self,
        username: str,
        password: str,
        client_ip: str,
        scope: Sequence[ScopeElementInput] | None,
        ttl: timedelta | None,
        single_use_upload: str | None,
        description: str = "Login",
    ) -> tuple[IssuedToken, SessionRecord]:
        if not username or not password:
            raise AuthenticationFailed(MISSING_CREDENTIALS)
        grants = self._parse_scope(scope or ())
        lifetime = self._lifetime(ttl)
        if single_use_upload is not None and not single_use_upload:
            raise InvalidInput("singleUseUpload must name a collection")
        login = Login.parse(username)
        user = self._config.snapshot().users.get(login.user)
        stored_hash: str | None = None
        if user is not None:
            if login.access_key:
                key = user.access_key(login.access_key)
                stored_hash = key.password_hash if key else None
            else:
                stored_hash = user.password_hash
        # Always verify (a decoy when there is nothing to verify against): the time taken
        # must not tell which user names exist.
        password_ok = await self._hasher.verify(stored_hash, password)
        if user is None or not password_ok or user.deactivated:
            logger.info("login refused for %r from %s", username, client_ip)
            raise AuthenticationFailed(BAD_CREDENTIALS)
        if not await self._ip_allowed(user, client_ip):
            logger.info("login refused for %r: address %s not allowed", username, client_ip)
            raise AuthenticationFailed(BAD_CREDENTIALS)
        if single_use_upload is not None:
            key = user.access_key(login.access_key) if login.access_key else None
            principal = authz.Principal(user=user, access_key=key, scope=grants)
            grants = self._single_use_scope(principal, single_use_upload)
            description = f"Single-use upload to {single_use_upload}"
        issued = self._tokens.issue(login.user, login.access_key, grants, lifetime, self._clock())
        record = await self._store(
            self._record(
                issued,
                login,
                client_ip,
                description,
                scope=grants,
                single_use_collection=single_use_upload,
            )
        )
        logger.info("login of %r from %s, session %s", username, client_ip, record.id[:12])
        return issued, record

    async def refresh(self, ctx: AuthContext, client_ip: str) -> tuple[IssuedToken, SessionRecord]:
        """A new token with the same user, access key, scope and lifetime as the caller's,
        in the caller's token family, refreshed from the caller's session: it never expires
        after the login that started the family, and revoking the caller's session (or any
        it descends from) revokes it too. Refused when any of those is revoked, and for a
        single-use token: its refresh would be a second token for its upload."""
        if ctx.session.single_use_collection is not None:
            raise Forbidden(SINGLE_USE_NO_REFRESH)
        family = ctx.session.family
        root = ctx.session if family == ctx.session.id else await self._sessions.get(family)
        # A family whose login row is gone (purged) is held to the caller's own expiry.
        limit = root.expires_at if root is not None else ctx.session.expires_at
        now = self._clock().replace(microsecond=0)
        requested = max(ctx.claims_expires_at - ctx.claims_issued_at, timedelta(seconds=1))
        lifetime = sessions.refresh_lifetime(requested, now, limit)
        if lifetime is None:
            raise AuthenticationFailed(FAMILY_EXPIRED)
        issued = self._tokens.issue(
            ctx.user.name, ctx.principal.access_key_name, ctx.principal.scope, lifetime, now
        )
        record = self._record(
            issued,
            Login(ctx.user.name, ctx.principal.access_key_name),
            client_ip,
            f"Refresh of {ctx.session.id}",
            scope=ctx.principal.scope,
            family_id=family,
            parent_id=ctx.session.id,
        )
        if not await self._sessions.add_refreshed(record):
            raise AuthenticationFailed(SESSION_REVOKED)
        record = await self._sessions.get(record.id) or record
        await self._events.emit(
            Event(
                Action.TOKEN_REFRESH,
                Outcome.SUCCESS,
                user=ctx.user.name,
                access_key=ctx.principal.access_key_name,
                client_ip=client_ip,
                session=short_session(ctx.session.id),
                detail=f"new session {short_session(record.id)}",
            )
        )
        return issued, record

    # -- authentication of requests ---------------------------------------------------------

    async def authenticate(self, token: str, client_ip: str) -> AuthContext:
        claims = self._tokens.decode(token)
        session = await self._sessions.get(session_id_of(token))
        if session is not None and session.deactivated and session.single_use_collection:
            raise AuthenticationFailed(SINGLE_USE_USED)
        if session is None or session.deactivated:
            raise AuthenticationFailed(SESSION_REVOKED)
        if session.expires_at <= self._clock() or session.user != claims.login:
            raise AuthenticationFailed("invalid or expired token")
        user = self._config.snapshot().users.get(claims.login)
        if user is None or user.deactivated:
            raise AuthenticationFailed("user does not exist or is deactivated")
        key = None
        if claims.access_key_name:
            key = user.access_key(claims.access_key_name)
            if key is None:
                raise AuthenticationFailed("access key no longer exists")
        if not await self._ip_allowed(user, client_ip):
            raise AuthenticationFailed("requests from this address are not allowed")
        return AuthContext(
            principal=authz.Principal(
                user=user,
                access_key=key,
                scope=claims.scope,
                single_use_collection=session.single_use_collection,
            ),
            session=session,
            token=token,
            claims_issued_at=claims.issued_at,
            claims_expires_at=claims.expires_at,
            client_ip=client_ip,
        )

    # -- sessions and users -----------------------------------------------------------------

    async def logout(self, ctx: AuthContext, session_id: str | None, client_ip: str = "") -> str:
        """Revoke the caller's session, or another one by id, together with every session
        refreshed from it (directly or through others); the session it was refreshed from
        and the others refreshed from that one stay. Returns the id."""
        if session_id is None or session_id == ctx.session.id:
            target = ctx.session
        else:
            found = await self._sessions.get(session_id)
            if found is None:
                raise NotFound(SESSION_NOT_FOUND)
            if not authz.may_revoke_session(ctx.principal, found.user, _narrowing(found)):
                raise Forbidden(NO_PERMISSION_REVOKE)
            target = found
        revoked = await self._sessions.deactivate_with_descendants(target.id)
        await self._revoked(ctx, target, client_ip, revoked.descendants)
        return target.id

    async def _revoked(
        self, ctx: AuthContext, target: SessionRecord, client_ip: str, descendants: int
    ) -> None:
        owner = target.user + (f"${target.access_key_name}" if target.access_key_name else "")
        detail = f"revoked session {short_session(target.id)} of {owner}"
        if descendants:
            tokens = "token" if descendants == 1 else "tokens"
            detail += f" and {descendants} {tokens} refreshed from it"
        await self._events.emit(
            Event(
                Action.TOKEN_REVOKE,
                Outcome.SUCCESS,
                user=ctx.user.name,
                access_key=ctx.principal.access_key_name,
                client_ip=client_ip,
                session=short_session(target.id),
                detail=detail,
            )
        )

    async def list_sessions(
        self, ctx: AuthContext, user_name: str | None, page: SessionPage | None = None
    ) -> SessionListing:
        """Sessions of a user the caller may see, newest first: one page of them, or
        without ``page`` the newest ``UNPAGED_LIMIT``. A narrowed token sees only the
        sessions it may revoke."""
        name = ctx.user.name if user_name is None else user_name
        if not authz.may_list_sessions_of(ctx.principal, name):
            raise Forbidden(NO_PERMISSION_OTHER_USER)
        limit = UNPAGED_LIMIT if page is None else page.limit
        if not 1 <= limit <= max(MAX_SESSION_LIMIT, UNPAGED_LIMIT):
            raise InvalidInput(f"limit must be between 1 and {MAX_SESSION_LIMIT}")
        after = None if page is None else parse_session_cursor(page.cursor)
        # Sessions of other keys are never visible to a narrowed token: leave them out in
        # the query; the scope rule is applied below.
        key = ctx.principal.access_key_name if ctx.principal.is_narrowed else None
        visible: list[SessionRecord] = []
        while len(visible) <= limit:
            rows = await self._sessions.list_for_user(
                name, access_key=key, limit=limit + 1, after=after
            )
            for row in rows:
                if authz.may_see_session(
                    ctx.principal, row.user, _narrowing(row), own_session=row.id == ctx.session.id
                ):
                    visible.append(row)
            if len(rows) <= limit:
                break
            after = cursor_of(rows[-1])
        if len(visible) > limit:
            visible = visible[:limit]
            return SessionListing(visible, encode_session_cursor(cursor_of(visible[-1])))
        return SessionListing(visible, None)

    def lookup_user(self, ctx: AuthContext, name: str) -> User:
        if not authz.may_view_user(ctx.principal, name):
            raise Forbidden(NO_PERMISSION_VIEW_USER)
        user = self._config.snapshot().users.get(name)
        if user is None:
            raise NotFound(USER_NOT_FOUND)
        return user

    # -- helpers ----------------------------------------------------------------------------

    def _lifetime(self, ttl: timedelta | None) -> timedelta:
        if ttl is None:
            return self._tokens.lifetime
        if ttl <= timedelta(0):
            raise InvalidInput("ttl must be a positive duration, e.g. 1h or 3600")
        if ttl > self._tokens.lifetime:
            raise InvalidInput(
                f"ttl must not be longer than the server's token lifetime "
                f"({int(self._tokens.lifetime.total_seconds())}s)"
            )
        return ttl

    @staticmethod
    def _parse_scope(elements: Sequence[ScopeElementInput]) -> tuple[ObjectGrant, ...]:
        if len(elements) > MAX_SCOPE_ELEMENTS:
            raise InvalidInput(f"operationsScope may hold at most {MAX_SCOPE_ELEMENTS} elements")
        grants: list[ObjectGrant] = []
        for index, element in enumerate(elements):
            if element.type != COLLECTION:
                raise InvalidInput(
                    f"operationsScope.elements[{index}].type: only {COLLECTION!r} is supported"
                )
            if not element.name:
                raise InvalidInput(f"operationsScope.elements[{index}].name must not be empty")
            try:
                roles = parse_roles(element.roles)
            except UnknownRole as exc:
                raise InvalidInput(f"operationsScope.elements[{index}].roles: {exc}") from None
            if not roles:
                raise InvalidInput(f"operationsScope.elements[{index}].roles must not be empty")
            grants.append(ObjectGrant(type=element.type, name=element.name, roles=roles))
        return tuple(grants)

    async def _ip_allowed(self, user: User, client_ip: str) -> bool:
        rules = AddressRules.parse(user.restrict_by_ip)
        if rules.is_empty:
            return True
        resolved = {host: await self._resolver.resolve(host) for host in rules.hostnames}
        return rules.allows(client_ip, resolved)

    def _single_use_scope(
        self, principal: authz.Principal, collection_id: str
    ) -> tuple[ObjectGrant, ...]:
        collection = self._config.snapshot().collections.get(collection_id)
        if collection is None:
            raise NotFound(COLLECTION_NOT_FOUND)
        scope = authz.single_use_upload_scope(principal, collection)
        if scope is None:
            raise Forbidden(SINGLE_USE_NOT_ALLOWED)
        return scope

    def _record(
        self,
        issued: IssuedToken,
        login: Login,
        client_ip: str,
        description: str,
        *,
        scope: tuple[ObjectGrant, ...] = (),
        single_use_collection: str | None = None,
        family_id: str | None = None,
        parent_id: str | None = None,
    ) -> SessionRecord:
        return SessionRecord(
            id=issued.session_id,
            user=login.user,
            access_key_name=login.access_key,
            requester_ip=client_ip,
            description=description[:255],
            expires_at=issued.expires_at,
            deactivated=False,
            single_use_collection=single_use_collection,
            family_id=family_id,
            parent_id=parent_id,
            scope=scope,
        )

    async def _store(self, record: SessionRecord) -> SessionRecord:
        await self._sessions.add(record)
        stored = await self._sessions.get(record.id)
        return stored or record


def _narrowing(session: SessionRecord) -> Narrowing:
    return Narrowing(
        access_key=session.access_key_name,
        scope=session.scope,
        single_use_collection=session.single_use_collection,
    )
