"""Single-use upload tokens: the narrowing rule (domain/authz.py), rule by rule and as
properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.authz import (
    SINGLE_USE_ACTIONS,
    CollectionAction,
    Principal,
    may_act_on_collection,
    may_list_sessions_of,
    may_revoke_session,
    may_view_user,
    single_use_upload_scope,
)
from backup_repository.domain.identity import (
    COLLECTION,
    AccessControlEntry,
    AccessKey,
    Collection,
    ObjectGrant,
    User,
)
from backup_repository.domain.roles import Role
from backup_repository.domain.sessions import Narrowing

UPLOAD = CollectionAction.UPLOAD
DOWNLOAD = CollectionAction.DOWNLOAD
LIST = CollectionAction.LIST_VERSIONS
ANYTIME = CollectionAction.UPLOAD_OUTSIDE_WINDOW
ACTIONS = list(CollectionAction)
FULL = Narrowing()  # a session of the user's own password, without scope


def user(*roles: Role, name: str = "alice", keys: tuple[AccessKey, ...] = ()) -> User:
    return User(
        name=name,
        email=f"{name}@example.org",
        password_hash="hash",
        roles=frozenset(roles),
        access_keys=keys,
    )


def collection(name: str = "db", acl: dict[str, set[Role]] | None = None) -> Collection:
    return Collection(
        name=name,
        description="",
        filename_template=name + "-${version}",
        max_backups_count=5,
        max_one_version_size=1024,
        max_collection_size=10240,
        access_control=tuple(
            AccessControlEntry(user=u, roles=frozenset(r)) for u, r in (acl or {}).items()
        ),
    )


def grant(name: str, *roles: Role) -> ObjectGrant:
    return ObjectGrant(type=COLLECTION, name=name, roles=frozenset(roles))


def allowed(principal: Principal, coll: Collection) -> set[CollectionAction]:
    return {a for a in ACTIONS if may_act_on_collection(principal, coll, a)}


def single_use(principal: Principal, coll: Collection) -> Principal:
    """The principal a single-use token for ``coll`` issued to ``principal`` acts as."""
    scope = single_use_upload_scope(principal, coll)
    assert scope is not None
    return dataclasses.replace(principal, scope=scope, single_use_collection=coll.name)


# -- the scope issued at login ------------------------------------------------------------


def test_scope_is_uploader_on_the_collection_only() -> None:
    scope = single_use_upload_scope(Principal(user(Role.BACKUP_UPLOADER)), collection("db"))
    assert scope == (grant("db", Role.BACKUP_UPLOADER),)


def test_scope_keeps_uploads_anytime_when_held() -> None:
    for roles in [(Role.SYSTEM_ADMIN,), (Role.COLLECTION_MANAGER,)]:
        scope = single_use_upload_scope(Principal(user(*roles)), collection("db"))
        assert scope == (grant("db", Role.BACKUP_UPLOADER, Role.UPLOADS_ANYTIME),)
    acl = {"alice": {Role.BACKUP_UPLOADER, Role.UPLOADS_ANYTIME}}
    scope = single_use_upload_scope(Principal(user()), collection("db", acl))
    assert scope == (grant("db", Role.BACKUP_UPLOADER, Role.UPLOADS_ANYTIME),)


@pytest.mark.parametrize(
    "principal",
    [
        Principal(user()),
        Principal(user(Role.BACKUP_DOWNLOADER)),
        Principal(user(Role.USER_MANAGER)),
        Principal(user(Role.UPLOADS_ANYTIME)),
    ],
    ids=["nothing", "downloader", "user-manager", "uploads-anytime-alone"],
)
def test_no_scope_without_the_right_to_upload(principal: Principal) -> None:
    assert single_use_upload_scope(principal, collection("db")) is None


def test_scope_respects_the_access_key() -> None:
    k = AccessKey("ci", "hash", (grant("db", Role.BACKUP_UPLOADER),))
    principal = Principal(user(Role.SYSTEM_ADMIN, keys=(k,)), access_key=k)
    # The key allows db, and only uploading there: no uploadsAnytime even for an admin.
    assert single_use_upload_scope(principal, collection("db")) == (
        grant("db", Role.BACKUP_UPLOADER),
    )
    assert single_use_upload_scope(principal, collection("other")) is None


def test_scope_respects_the_requested_operations_scope() -> None:
    admin = user(Role.SYSTEM_ADMIN)
    downloads_only = Principal(admin, scope=(grant("db", Role.BACKUP_DOWNLOADER),))
    assert single_use_upload_scope(downloads_only, collection("db")) is None
    other_only = Principal(admin, scope=(grant("other", Role.BACKUP_UPLOADER),))
    assert single_use_upload_scope(other_only, collection("db")) is None
    uploads = Principal(admin, scope=(grant("db", Role.BACKUP_UPLOADER),))
    assert single_use_upload_scope(uploads, collection("db")) == (
        grant("db", Role.BACKUP_UPLOADER),
    )


# -- what a single-use principal may do ------------------------------------------------------


def test_uploads_to_its_collection_and_nothing_else() -> None:
    acl = {"alice": {Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER}}
    db, other = collection("db", acl), collection("other", acl)
    principal = single_use(Principal(user()), db)
    assert allowed(principal, db) == {UPLOAD}
    assert allowed(principal, other) == set()


def test_even_a_collection_manager_may_only_upload() -> None:
    db, other = collection("db"), collection("other")
    principal = single_use(Principal(user(Role.COLLECTION_MANAGER)), db)
    assert allowed(principal, db) == {UPLOAD, ANYTIME}
    assert allowed(principal, other) == set()


def test_the_session_row_narrows_even_without_a_scope() -> None:
    # The database row is the source of truth: a single-use session narrows the principal
    # whatever the token's scope claim says.
    db, other = collection("db"), collection("other")
    principal = Principal(user(Role.SYSTEM_ADMIN), single_use_collection="db")
    assert principal.is_narrowed
    assert allowed(principal, db) == {UPLOAD, ANYTIME}
    assert allowed(principal, other) == set()


def test_no_sessions_profiles_or_revocations_of_others() -> None:
    principal = Principal(user(Role.SYSTEM_ADMIN), single_use_collection="db")
    assert not may_list_sessions_of(principal, "alice")
    assert not may_list_sessions_of(principal, "bob")
    assert not may_view_user(principal, "bob")
    assert may_view_user(principal, "alice")
    assert not may_revoke_session(principal, "alice", FULL)
    assert not may_revoke_session(principal, "bob", FULL)
    # Not even another single-use token of the same collection.
    assert not may_revoke_session(principal, "alice", Narrowing(single_use_collection="db"))
    assert may_revoke_session(principal, "alice", FULL, own_session=True)


def test_ordinary_principals_are_unchanged_by_own_session() -> None:
    principal = Principal(user())
    assert may_revoke_session(principal, "alice", FULL)
    assert may_revoke_session(principal, "alice", FULL, own_session=True)
    assert not may_revoke_session(principal, "bob", FULL, own_session=True)


# -- properties ------------------------------------------------------------------------------

roles_st = st.frozensets(st.sampled_from(list(Role)))
names = st.sampled_from(["db", "other", "logs"])


@given(
    user_roles=roles_st,
    acl_roles=roles_st,
    key_roles=st.none() | roles_st,
    scope_roles=st.none() | roles_st,
    target=names,
    probe=names,
)
def test_never_more_than_the_issuer_and_only_uploads(
    user_roles: frozenset[Role],
    acl_roles: frozenset[Role],
    key_roles: frozenset[Role] | None,
    scope_roles: frozenset[Role] | None,
    target: str,
    probe: str,
) -> None:
    acl = {"alice": set(acl_roles)}
    k = None if key_roles is None else AccessKey("k", "hash", (grant(target, *key_roles),))
    issuer = Principal(
        user(*user_roles, keys=(k,) if k else ()),
        access_key=k,
        scope=() if scope_roles is None else (grant(target, *scope_roles),),
    )
    target_collection, probed = collection(target, acl), collection(probe, acl)
    scope = single_use_upload_scope(issuer, target_collection)
    if scope is None:
        assert not may_act_on_collection(issuer, target_collection, UPLOAD)
        return
    token = dataclasses.replace(issuer, scope=scope, single_use_collection=target)
    granted = allowed(token, probed)
    assert granted <= SINGLE_USE_ACTIONS
    assert granted <= allowed(issuer, probed)
    if probe != target:
        assert granted == set()
    else:
        assert UPLOAD in granted
