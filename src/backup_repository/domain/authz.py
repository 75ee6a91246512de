"""Authorization decisions (docs/security.md, "Authorization") as pure functions of a
principal and an object.

A principal is a user plus what its token narrows it to: the access key it logged in with
and the operations scope it asked for. Narrowing only ever removes rights: every rule below
first requires what the user has, then additionally what the key and the scope allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from backup_repository.domain.identity import (
    COLLECTION,
    AccessKey,
    Collection,
    ObjectGrant,
    User,
)
from backup_repository.domain.roles import Role, grants
from backup_repository.domain.sessions import Narrowing, at_least_as_narrow


class CollectionAction(StrEnum):
    UPLOAD = "upload"
    DOWNLOAD = "download"
    LIST_VERSIONS = "listVersions"
    UPLOAD_OUTSIDE_WINDOW = "uploadOutsideWindow"
    VIEW_RETENTION = "viewRetention"  # the retention dry run (services/retention.py)
    # Protecting a version from rotation, and unprotecting it (services/versions.py).
    PROTECT_VERSION = "protectVersion"
    # Deleting one version (services/versions.py): never an uploader's or a downloader's.
    DELETE_VERSION = "deleteVersion"


# What a single-use upload token may do, on its one collection only.
SINGLE_USE_ACTIONS: frozenset[CollectionAction] = frozenset(
    {CollectionAction.UPLOAD, CollectionAction.UPLOAD_OUTSIDE_WINDOW}
)

# Any one of the roles suffices for the action.
_ACTION_ROLES: dict[CollectionAction, tuple[Role, ...]] = {
    CollectionAction.UPLOAD: (Role.BACKUP_UPLOADER,),
    CollectionAction.DOWNLOAD: (Role.BACKUP_DOWNLOADER,),
    CollectionAction.LIST_VERSIONS: (Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER),
    CollectionAction.UPLOAD_OUTSIDE_WINDOW: (Role.UPLOADS_ANYTIME,),
    CollectionAction.VIEW_RETENTION: (Role.COLLECTION_MANAGER,),
    CollectionAction.PROTECT_VERSION: (Role.COLLECTION_MANAGER,),
    CollectionAction.DELETE_VERSION: (Role.COLLECTION_MANAGER,),
}


@dataclass(frozen=True)
class Principal:
    user: User
    access_key: AccessKey | None = None
    # Elements of the operations scope the token was issued with; empty: not scoped.
    scope: tuple[ObjectGrant, ...] = ()
    # The collection a single-use upload token was issued for (read from its session);
    # None for every other token.
    single_use_collection: str | None = None

    @property
    def access_key_name(self) -> str:
        return self.access_key.name if self.access_key else ""

    @property
    def is_narrowed(self) -> bool:
        """True when the token was issued for an access key, with an operations scope or
        for a single upload."""
        return (
            self.access_key is not None
            or bool(self.scope)
            or self.single_use_collection is not None
        )


def roles_allow(roles: Iterable[Role], action: CollectionAction) -> bool:
    held = frozenset(roles)
    return any(grants(held, needed) for needed in _ACTION_ROLES[action])


def _grant_roles(grants_: Iterable[ObjectGrant], object_type: str, name: str) -> frozenset[Role]:
    roles: set[Role] = set()
    for grant in grants_:
        if grant.type == object_type and grant.name == name:
            roles |= grant.roles
    return frozenset(roles)


def may_act_on_collection(
    principal: Principal, collection: Collection, action: CollectionAction
) -> bool:
    """The three rules of authorization (docs/security.md); all must hold. A single-use
    upload token additionally allows nothing but uploading to its one collection."""
    name = collection.name
    if principal.single_use_collection is not None and (
        name != principal.single_use_collection or action not in SINGLE_USE_ACTIONS
    ):
        return False
    if principal.access_key is not None and not roles_allow(
        _grant_roles(principal.access_key.objects, COLLECTION, name), action
    ):
        return False
    if principal.scope and not roles_allow(_grant_roles(principal.scope, COLLECTION, name), action):
        return False
    return roles_allow(principal.user.roles, action) or roles_allow(
        collection.roles_of(principal.user.name), action
    )


def _has_global_role(principal: Principal, role: Role) -> bool:
    # Access keys and scopes name collections only, so a narrowed token never carries a
    # user-wide management right, whatever roles the user itself holds.
    return not principal.is_narrowed and grants(principal.user.roles, role)


def may_view_user(principal: Principal, user_name: str) -> bool:
    """Profiles: one's own, or any for a userManager."""
    return principal.user.name == user_name or _has_global_role(principal, Role.USER_MANAGER)


def may_list_sessions_of(principal: Principal, user_name: str) -> bool:
    """Session listings: one's own, or any user's for a systemAdmin; never with a single-use
    upload token. A narrowed token sees only the sessions it may revoke
    (:func:`may_see_session`)."""
    if principal.single_use_collection is not None:
        return False
    return principal.user.name == user_name or _has_global_role(principal, Role.SYSTEM_ADMIN)


def narrowing_of(principal: Principal) -> Narrowing:
    """How narrow the principal's token is."""
    return Narrowing(
        access_key=principal.access_key_name,
        scope=principal.scope,
        single_use_collection=principal.single_use_collection,
    )


def may_revoke_session(
    principal: Principal, owner: str, target: Narrowing, *, own_session: bool = False
) -> bool:
    """Revoking the session ``target`` of the user ``owner``.

    A token may always revoke itself (``own_session``). A single-use upload token may revoke
    nothing else. A token of the user's own password without scope (a full session) may
    revoke any session of its user, and a full session of a systemAdmin any session at all.
    Any other narrowed token (an access key, a scope) may revoke only sessions of its user
    that are at least as narrow as itself (``domain.sessions.at_least_as_narrow``), so that
    a leaked upload key or scoped token cannot log its owner out everywhere.
    """
    if own_session and principal.user.name == owner:
        return True
    if principal.single_use_collection is not None:
        return False
    if _has_global_role(principal, Role.SYSTEM_ADMIN):
        return True
    if principal.user.name != owner:
        return False
    if not principal.is_narrowed:
        return True
    return at_least_as_narrow(target, narrowing_of(principal))


def may_see_session(
    principal: Principal, owner: str, target: Narrowing, *, own_session: bool = False
) -> bool:
    """Which sessions a listing shows: those the caller may revoke (and only of users whose
    sessions it may list at all, :func:`may_list_sessions_of`)."""
    return may_list_sessions_of(principal, owner) and may_revoke_session(
        principal, owner, target, own_session=own_session
    )


def may_read_audit(principal: Principal) -> bool:
    """The audit log: a systemAdmin only, and only with a token that is not narrowed (an
    access key or an operations scope names collections, never the whole server)."""
    return _has_global_role(principal, Role.SYSTEM_ADMIN)


def single_use_upload_scope(
    principal: Principal, collection: Collection
) -> tuple[ObjectGrant, ...] | None:
    """The operations scope of a single-use upload token for ``collection``, issued to
    ``principal`` (the user, the access key it logs in with and the scope it asks for);
    None when the principal may not upload there at all.

    The scope holds ``backupUploader`` on that collection, plus ``uploadsAnytime`` when the
    principal has it there, so it never grants more than the principal had.
    """
    if not may_act_on_collection(principal, collection, CollectionAction.UPLOAD):
        return None
    roles = {Role.BACKUP_UPLOADER}
    if may_act_on_collection(principal, collection, CollectionAction.UPLOAD_OUTSIDE_WINDOW):
        roles.add(Role.UPLOADS_ANYTIME)
    return (ObjectGrant(type=COLLECTION, name=collection.name, roles=frozenset(roles)),)
