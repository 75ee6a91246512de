"""Sessions as the authorization rules see them: how narrow a token is, which sessions a
narrowed token may see and revoke, and how far a refresh may reach.

How narrow a token is: the access key it was issued for (empty for the user's own
password), the operations scope it carries (empty: not scoped) and, for a single-use upload
token, the collection of its one upload.

A session T is **at least as narrow** as a token C when all of these hold:

1. T was issued for the same access key as C (both for the user's own password counts);
2. when C carries a scope, T carries one too, and every role T's scope gives on an object,
   C's scope gives on that object as well (directly or by inclusion: ``collectionManager``
   on ``db`` covers ``backupUploader`` on ``db``). A single-use upload token's scope is
   ``backupUploader`` (and ``uploadsAnytime`` when its issuer had it) on its collection;
3. when C is a single-use upload token, T is one for the same collection.

So a token for the user's own password without a scope (a "full" session) is narrower than
no narrowed token, and a scoped or key token never reaches a full session. The relation is
an order: every session is at least as narrow as itself.

Token families: a login starts a family whose id is the session id of that login and whose
limit is that login's expiry. A refresh adds a session to the caller's family, records the
caller's session as its parent, and never expires after the family's limit. Revoking a
session revokes it and its descendants (every session refreshed from it, directly or
through others), never its ancestors nor their other descendants; a session whose parent
or any ancestor is revoked gives no refresh (:func:`may_refresh_from`). A thief who
refreshed a leaked token is stopped by revoking that token, and the owner who does not know
which token leaked revokes the login, the root of the whole family.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from backup_repository.domain.identity import COLLECTION, ObjectGrant
from backup_repository.domain.roles import Role, UnknownRole, expand, parse_roles


@dataclass(frozen=True)
class Narrowing:
    """What a token is narrowed to."""

    access_key: str = ""
    # Elements of the operations scope; empty: not scoped.
    scope: tuple[ObjectGrant, ...] = ()
    # The collection of a single-use upload token; None for every other token.
    single_use_collection: str | None = None

    @property
    def is_full(self) -> bool:
        """True for a token of the user's own password, without scope, not single-use."""
        return not self.access_key and not self.scope and self.single_use_collection is None

    def effective_scope(self) -> tuple[ObjectGrant, ...]:
        """The scope, or for a single-use token recorded without one (issued before
        sessions kept their scope) the most it can hold: upload rights on its collection."""
        if self.scope or self.single_use_collection is None:
            return self.scope
        roles = frozenset({Role.BACKUP_UPLOADER, Role.UPLOADS_ANYTIME})
        return (ObjectGrant(type=COLLECTION, name=self.single_use_collection, roles=roles),)


def _roles_on(scope: Iterable[ObjectGrant]) -> dict[tuple[str, str], frozenset[Role]]:
    held: dict[tuple[str, str], set[Role]] = {}
    for grant in scope:
        held.setdefault((grant.type, grant.name), set()).update(expand(grant.roles))
    return {key: frozenset(roles) for key, roles in held.items()}


def scope_within(inner: Iterable[ObjectGrant], outer: Iterable[ObjectGrant]) -> bool:
    """True when every role ``inner`` gives on an object, ``outer`` gives on it too."""
    available = _roles_on(outer)
    for (object_type, name), roles in _roles_on(inner).items():
        if not roles <= available.get((object_type, name), frozenset()):
            return False
    return True


def at_least_as_narrow(target: Narrowing, caller: Narrowing) -> bool:
    """True when the session ``target`` is at least as narrow as the token ``caller``
    (the three rules of the module description)."""
    if target.access_key != caller.access_key:
        return False
    if caller.single_use_collection is not None and (
        target.single_use_collection != caller.single_use_collection
    ):
        return False
    caller_scope = caller.effective_scope()
    if caller_scope:
        target_scope = target.effective_scope()
        if not target_scope or not scope_within(target_scope, caller_scope):
            return False
    return True


def family_of(session_id: str, family_id: str | None) -> str:
    """The family of a session: the one recorded, or (a session recorded before families
    were, or a login) its own id."""
    return family_id or session_id


def may_refresh_from(parent_id: str, lineage: Iterable[tuple[str, bool]]) -> bool:
    """True when a token may be refreshed from the session ``parent_id``: ``lineage`` holds
    that session and the sessions it descends from that are still stored, as pairs of id
    and "revoked"; the parent must be among them and none may be revoked. (A revoked
    ancestor's descendants are revoked with it, so checking the parent alone would do; the
    whole lineage is checked so that no row revoked by other means is ever extended.)"""
    found = False
    for session_id, revoked in lineage:
        if revoked:
            return False
        found = found or session_id == parent_id
    return found


def refresh_lifetime(
    requested: timedelta, now: datetime, family_limit: datetime
) -> timedelta | None:
    """The lifetime of a token refreshed at ``now``: ``requested``, cut so that it ends no
    later than ``family_limit`` (the expiry of the login that started the family). None
    when nothing is left: the family has expired, and only a new login gives a token."""
    lifetime = min(requested, family_limit - now)
    if lifetime <= timedelta(0):
        return None
    return lifetime


def scope_to_json(scope: tuple[ObjectGrant, ...]) -> str | None:
    """The scope as stored with a session: the JSON of the scope claim; None when not
    scoped."""
    if not scope:
        return None
    document = {
        "elements": [
            {"type": g.type, "name": g.name, "roles": sorted(r.value for r in g.roles)}
            for g in scope
        ]
    }
    return json.dumps(document, separators=(",", ":"))


def scope_from_json(text: str | None) -> tuple[ObjectGrant, ...]:
    """The scope stored with a session. ``ValueError`` for anything unreadable: the caller
    decides what that means (the repository treats it as not scoped, which makes the
    session reachable by full sessions only)."""
    if not text:
        return ()
    try:
        document = json.loads(text)
        return tuple(
            ObjectGrant(type=str(e["type"]), name=str(e["name"]), roles=parse_roles(e["roles"]))
            for e in document["elements"]
        )
    except (ValueError, KeyError, TypeError, UnknownRole) as exc:
        raise ValueError(f"unreadable stored scope: {exc}") from None
