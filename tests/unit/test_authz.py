"""Authorization decisions, rule by rule (docs/security.md), then as properties."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.authz import (
    CollectionAction,
    Principal,
    may_act_on_collection,
    may_list_sessions_of,
    may_revoke_session,
    may_see_session,
    may_view_user,
    roles_allow,
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
RETENTION = CollectionAction.VIEW_RETENTION
PROTECT = CollectionAction.PROTECT_VERSION
DELETE = CollectionAction.DELETE_VERSION
ACTIONS = list(CollectionAction)

ADMIN = Role.SYSTEM_ADMIN
USER_MGR = Role.USER_MANAGER
COLL_MGR = Role.COLLECTION_MANAGER
UPLOADER = Role.BACKUP_UPLOADER
DOWNLOADER = Role.BACKUP_DOWNLOADER
UPLOADS_ANYTIME = Role.UPLOADS_ANYTIME


def user(name: str = "alice", *roles: Role, keys: tuple[AccessKey, ...] = ()) -> User:
    return User(
        name=name,
        email=f"{name}@example.org",
        password_hash="hash",
        roles=frozenset(roles),
        access_keys=keys,
    )


def collection(name: str = "db-prod", acl: dict[str, set[Role]] | None = None) -> Collection:
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


def grant(name: str, *roles: Role, type_: str = COLLECTION) -> ObjectGrant:
    return ObjectGrant(type=type_, name=name, roles=frozenset(roles))


def key(name: str = "k", *objects: ObjectGrant) -> AccessKey:
    return AccessKey(name=name, password_hash="hash", objects=objects)


def allowed_actions(principal: Principal, coll: Collection) -> set[CollectionAction]:
    return {a for a in ACTIONS if may_act_on_collection(principal, coll, a)}


# -------------------------------------------------------------- action -> required roles

# Written out from the rules of docs/security.md and the role inclusions, one row per single role.
ROLE_ACTIONS: dict[Role | None, set[CollectionAction]] = {
    None: set(),
    ADMIN: {UPLOAD, DOWNLOAD, LIST, ANYTIME, RETENTION, PROTECT, DELETE},
    COLL_MGR: {UPLOAD, DOWNLOAD, LIST, ANYTIME, RETENTION, PROTECT, DELETE},
    USER_MGR: set(),
    UPLOADER: {UPLOAD, LIST},
    DOWNLOADER: {DOWNLOAD, LIST},
    UPLOADS_ANYTIME: {ANYTIME},
}


@pytest.mark.parametrize(("role", "expected"), ROLE_ACTIONS.items())
def test_global_role_allows_exactly_its_actions(
    role: Role | None, expected: set[CollectionAction]
) -> None:
    roles = () if role is None else (role,)
    principal = Principal(user("alice", *roles))
    assert allowed_actions(principal, collection()) == expected


@pytest.mark.parametrize(("role", "expected"), ROLE_ACTIONS.items())
def test_access_control_role_allows_exactly_its_actions(
    role: Role | None, expected: set[CollectionAction]
) -> None:
    acl = {} if role is None else {"alice": {role}}
    principal = Principal(user("alice"))
    assert allowed_actions(principal, collection(acl=acl)) == expected


@pytest.mark.parametrize(("role", "expected"), ROLE_ACTIONS.items())
def test_roles_allow_table(role: Role | None, expected: set[CollectionAction]) -> None:
    roles = [] if role is None else [role]
    assert {a for a in ACTIONS if roles_allow(roles, a)} == expected


def test_upload_outside_window_needs_uploads_anytime_not_uploader() -> None:
    principal = Principal(user("alice", UPLOADER))
    assert may_act_on_collection(principal, collection(), UPLOAD)
    assert not may_act_on_collection(principal, collection(), ANYTIME)
    both = Principal(user("alice", UPLOADER, UPLOADS_ANYTIME))
    assert may_act_on_collection(both, collection(), ANYTIME)


def test_list_versions_with_either_role() -> None:
    for role in (UPLOADER, DOWNLOADER):
        assert may_act_on_collection(Principal(user("alice", role)), collection(), LIST)
    assert not may_act_on_collection(Principal(user("alice", UPLOADS_ANYTIME)), collection(), LIST)


# ---------------------------------------------------- rule 3: global roles or accessControl


def test_global_roles_apply_to_every_collection() -> None:
    principal = Principal(user("alice", UPLOADER))
    for name in ("db-prod", "web", "logs"):
        assert may_act_on_collection(principal, collection(name), UPLOAD)


def test_access_control_grants_only_on_its_collection() -> None:
    principal = Principal(user("alice"))
    assert may_act_on_collection(principal, collection("db-prod", {"alice": {UPLOADER}}), UPLOAD)
    assert not may_act_on_collection(principal, collection("web", {"bob": {UPLOADER}}), UPLOAD)
    assert not may_act_on_collection(principal, collection("web"), UPLOAD)


def test_access_control_of_another_user_grants_nothing() -> None:
    coll = collection(acl={"bob": {ADMIN}, "Alice": {UPLOADER}})
    assert allowed_actions(Principal(user("alice")), coll) == set()


def test_global_roles_and_access_control_both_grant() -> None:
    # Either source suffices, and together they combine.
    coll = collection(acl={"alice": {UPLOADER}})
    principal = Principal(user("alice", DOWNLOADER))
    assert allowed_actions(principal, coll) == {UPLOAD, DOWNLOAD, LIST}


def test_no_roles_anywhere_denies_everything() -> None:
    coll = collection(acl={"bob": {COLL_MGR}})
    principal = Principal(user("alice", USER_MGR))
    assert allowed_actions(principal, coll) == set()


# ------------------------------------------------------------------ rule 1: access keys


def test_access_key_allows_what_it_lists_for_this_collection() -> None:
    k = key("uploader", grant("db-prod", UPLOADER))
    principal = Principal(user("alice", ADMIN, keys=(k,)), access_key=k)
    assert allowed_actions(principal, collection("db-prod")) == {UPLOAD, LIST}


def test_access_key_listing_another_collection_denies() -> None:
    k = key("uploader", grant("web", COLL_MGR))
    principal = Principal(user("alice", ADMIN, keys=(k,)), access_key=k)
    assert allowed_actions(principal, collection("db-prod")) == set()
    assert allowed_actions(principal, collection("web")) == set(ACTIONS)


def test_access_key_with_a_role_not_allowing_the_action_denies() -> None:
    k = key("reader", grant("db-prod", DOWNLOADER))
    principal = Principal(user("alice", ADMIN, keys=(k,)), access_key=k)
    assert not may_act_on_collection(principal, collection("db-prod"), UPLOAD)
    assert not may_act_on_collection(principal, collection("db-prod"), ANYTIME)
    assert may_act_on_collection(principal, collection("db-prod"), DOWNLOAD)


def test_access_key_without_objects_denies_everything() -> None:
    k = key("empty")
    principal = Principal(user("alice", ADMIN, keys=(k,)), access_key=k)
    assert allowed_actions(principal, collection()) == set()


def test_access_key_user_manager_role_allows_no_collection_action() -> None:
    k = key("k", grant("db-prod", USER_MGR))
    principal = Principal(user("alice", ADMIN), access_key=k)
    assert allowed_actions(principal, collection("db-prod")) == set()


def test_access_key_element_of_another_type_denies() -> None:
    k = key("k", grant("db-prod", UPLOADER, type_="user"))
    principal = Principal(user("alice", ADMIN), access_key=k)
    assert allowed_actions(principal, collection("db-prod")) == set()


def test_access_key_roles_follow_inclusions() -> None:
    k = key("k", grant("db-prod", COLL_MGR))
    principal = Principal(user("alice", UPLOADER, UPLOADS_ANYTIME), access_key=k)
    assert allowed_actions(principal, collection("db-prod")) == {UPLOAD, LIST, ANYTIME}


def test_access_key_cannot_add_rights_the_user_lacks() -> None:
    k = key("k", grant("db-prod", ADMIN))
    principal = Principal(user("alice", DOWNLOADER), access_key=k)
    assert allowed_actions(principal, collection("db-prod")) == {DOWNLOAD, LIST}
    # Nor on top of accessControl.
    coll = collection("db-prod", {"alice": {UPLOADER}})
    assert allowed_actions(Principal(user("alice"), access_key=k), coll) == {UPLOAD, LIST}


def test_access_key_several_elements_for_the_collection_combine() -> None:
    k = key("k", grant("db-prod", UPLOADER), grant("web", DOWNLOADER), grant("db-prod", DOWNLOADER))
    principal = Principal(user("alice", ADMIN), access_key=k)
    assert allowed_actions(principal, collection("db-prod")) == {UPLOAD, DOWNLOAD, LIST}
    assert allowed_actions(principal, collection("web")) == {DOWNLOAD, LIST}


# -------------------------------------------------------------- rule 2: operations scope


def test_scope_allows_what_it_lists_for_this_collection() -> None:
    principal = Principal(user("alice", ADMIN), scope=(grant("db-prod", DOWNLOADER),))
    assert allowed_actions(principal, collection("db-prod")) == {DOWNLOAD, LIST}


def test_scope_listing_another_collection_denies() -> None:
    principal = Principal(user("alice", ADMIN), scope=(grant("web", COLL_MGR),))
    assert allowed_actions(principal, collection("db-prod")) == set()


def test_scope_element_of_another_type_denies() -> None:
    scope = (
        grant("db-prod", COLL_MGR, type_="user"),
        grant("db-prod", COLL_MGR, type_="Collection"),
    )
    principal = Principal(user("alice", ADMIN), scope=scope)
    assert allowed_actions(principal, collection("db-prod")) == set()


def test_scope_element_with_no_roles_denies() -> None:
    principal = Principal(user("alice", ADMIN), scope=(grant("db-prod"),))
    assert allowed_actions(principal, collection("db-prod")) == set()


def test_scope_with_matching_element_among_others() -> None:
    scope = (grant("web", UPLOADER), grant("db-prod", UPLOADS_ANYTIME), grant("db-prod", UPLOADER))
    principal = Principal(user("alice", COLL_MGR), scope=scope)
    assert allowed_actions(principal, collection("db-prod")) == {UPLOAD, LIST, ANYTIME}


def test_empty_scope_does_not_restrict() -> None:
    principal = Principal(user("alice", UPLOADER), scope=())
    assert not principal.is_narrowed
    assert allowed_actions(principal, collection()) == {UPLOAD, LIST}


def test_scope_cannot_add_rights_the_user_lacks() -> None:
    principal = Principal(user("alice", UPLOADER), scope=(grant("db-prod", ADMIN),))
    assert allowed_actions(principal, collection("db-prod")) == {UPLOAD, LIST}


def test_access_key_and_scope_must_both_allow() -> None:
    k = key("k", grant("db-prod", UPLOADER))
    scope = (grant("db-prod", DOWNLOADER),)
    principal = Principal(user("alice", ADMIN), access_key=k, scope=scope)
    # Only what key, scope and user all allow: listing.
    assert allowed_actions(principal, collection("db-prod")) == {LIST}


# ------------------------------------------------------------------------------ Principal


def test_principal_narrowing_flags() -> None:
    bare = Principal(user("alice"))
    assert not bare.is_narrowed
    assert bare.access_key_name == ""
    keyed = Principal(user("alice"), access_key=key("uploader"))
    assert keyed.is_narrowed
    assert keyed.access_key_name == "uploader"
    scoped = Principal(user("alice"), scope=(grant("db-prod", UPLOADER),))
    assert scoped.is_narrowed
    assert scoped.access_key_name == ""


# ------------------------------------------------------------------------- user profiles

_NARROWING_KEY = key("k", grant("db-prod", COLL_MGR))
_NARROWING_SCOPE = (grant("db-prod", COLL_MGR),)

# The ways a token can be narrowed, each turning a user into a principal.
NARROWINGS: dict[str, Callable[[User], Principal]] = {
    "key": lambda u: Principal(u, access_key=_NARROWING_KEY),
    "scope": lambda u: Principal(u, scope=_NARROWING_SCOPE),
    "key and scope": lambda u: Principal(u, access_key=_NARROWING_KEY, scope=_NARROWING_SCOPE),
}


@pytest.mark.parametrize("role", [None, UPLOADER, ADMIN])
def test_own_profile_is_always_visible(role: Role | None) -> None:
    roles = () if role is None else (role,)
    assert may_view_user(Principal(user("alice", *roles)), "alice")
    for narrowing in NARROWINGS.values():
        assert may_view_user(narrowing(user("alice", *roles)), "alice")


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        ((), False),
        ((UPLOADER, DOWNLOADER, UPLOADS_ANYTIME), False),
        ((COLL_MGR,), False),
        ((USER_MGR,), True),
        ((ADMIN,), True),
    ],
)
def test_other_profiles_need_user_manager(roles: tuple[Role, ...], allowed: bool) -> None:
    assert may_view_user(Principal(user("alice", *roles)), "bob") is allowed


@pytest.mark.parametrize("narrowing", NARROWINGS.values(), ids=list(NARROWINGS))
@pytest.mark.parametrize("role", [USER_MGR, ADMIN])
def test_narrowed_tokens_cannot_view_other_profiles(
    role: Role, narrowing: Callable[[User], Principal]
) -> None:
    assert not may_view_user(narrowing(user("alice", role)), "bob")


# ----------------------------------------------------------------------- session listing


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [((), False), ((COLL_MGR,), False), ((USER_MGR,), False), ((ADMIN,), True)],
)
def test_sessions_of_others_need_system_admin(roles: tuple[Role, ...], allowed: bool) -> None:
    assert may_list_sessions_of(Principal(user("alice", *roles)), "bob") is allowed


def test_own_sessions_are_always_listable() -> None:
    assert may_list_sessions_of(Principal(user("alice")), "alice")
    for narrowing in NARROWINGS.values():
        assert may_list_sessions_of(narrowing(user("alice")), "alice")


@pytest.mark.parametrize("narrowing", NARROWINGS.values(), ids=list(NARROWINGS))
def test_narrowed_system_admin_cannot_list_others(
    narrowing: Callable[[User], Principal],
) -> None:
    assert not may_list_sessions_of(narrowing(user("alice", ADMIN)), "bob")


# -------------------------------------------------------------------- session revocation


def target(access_key: str = "", *scope: ObjectGrant) -> Narrowing:
    """A session to revoke: issued for ``access_key`` (empty: the user's own password)."""
    return Narrowing(access_key=access_key, scope=scope)


def test_own_sessions_can_be_revoked() -> None:
    principal = Principal(user("alice"))
    assert may_revoke_session(principal, "alice", target())
    assert may_revoke_session(principal, "alice", target("uploader"))
    assert may_revoke_session(principal, "alice", target("", grant("db-prod", UPLOADER)))


@pytest.mark.parametrize("roles", [(), (USER_MGR,), (COLL_MGR,), (UPLOADER,)])
def test_sessions_of_others_cannot_be_revoked_without_system_admin(
    roles: tuple[Role, ...],
) -> None:
    principal = Principal(user("alice", *roles))
    assert not may_revoke_session(principal, "bob", target())
    assert not may_revoke_session(principal, "bob", target("uploader"))


def test_system_admin_revokes_any_session() -> None:
    principal = Principal(user("alice", ADMIN))
    assert may_revoke_session(principal, "bob", target())
    assert may_revoke_session(principal, "bob", target("uploader"))
    assert may_revoke_session(principal, "alice", target("other"))


@pytest.mark.parametrize("roles", [(), (ADMIN,)])
def test_access_key_token_revokes_only_sessions_of_its_own_key(roles: tuple[Role, ...]) -> None:
    k = key("uploader", grant("db-prod", UPLOADER))
    principal = Principal(user("alice", *roles, keys=(k,)), access_key=k)
    assert may_revoke_session(principal, "alice", target("uploader"))
    assert may_revoke_session(principal, "alice", target("uploader", grant("db-prod", UPLOADER)))
    assert not may_revoke_session(principal, "alice", target())  # the owner's full sessions
    assert not may_revoke_session(principal, "alice", target("reader"))  # another key's
    assert not may_revoke_session(principal, "bob", target("uploader"))  # another user's key
    assert not may_revoke_session(principal, "bob", target())


@pytest.mark.parametrize("roles", [(), (ADMIN,)])
def test_scoped_token_revokes_only_scoped_sessions_within_its_scope(
    roles: tuple[Role, ...],
) -> None:
    principal = Principal(user("alice", *roles), scope=(grant("db-prod", UPLOADER, DOWNLOADER),))
    # Never a full session of its user: the empty access key is no licence.
    assert not may_revoke_session(principal, "alice", target())
    assert not may_revoke_session(principal, "alice", target("uploader"))
    assert not may_revoke_session(principal, "bob", target())
    # Sessions of the user's password with a scope within its own.
    assert may_revoke_session(principal, "alice", target("", grant("db-prod", UPLOADER)))
    assert may_revoke_session(
        principal, "alice", target("", grant("db-prod", DOWNLOADER, UPLOADER))
    )
    assert not may_revoke_session(principal, "alice", target("", grant("web", UPLOADER)))
    assert not may_revoke_session(principal, "alice", target("", grant("db-prod", COLL_MGR)))
    # Itself, whatever its session records.
    assert may_revoke_session(principal, "alice", target(), own_session=True)
    assert not may_revoke_session(principal, "bob", target(), own_session=True)


@pytest.mark.parametrize(
    "narrowing",
    [
        lambda u: Principal(u, access_key=key("uploader")),
        lambda u: Principal(u, scope=(grant("db-prod", UPLOADER),)),
    ],
)
def test_listing_shows_what_may_be_revoked(narrowing: Callable[[User], Principal]) -> None:
    principal = narrowing(user("alice", ADMIN))
    full = target()
    assert not may_see_session(principal, "alice", full)
    assert may_see_session(principal, "alice", full, own_session=True)
    assert not may_see_session(principal, "bob", full)
    bare = Principal(user("alice", ADMIN))
    assert may_see_session(bare, "alice", full)
    assert may_see_session(bare, "bob", target("reader"))


# ---------------------------------------------------------------------------- properties

NAMES = ["alice", "bob"]
COLLECTIONS = ["db-prod", "web"]

role_sets = st.frozensets(st.sampled_from(list(Role)), max_size=3)
object_grants = st.builds(
    ObjectGrant,
    type=st.sampled_from([COLLECTION, COLLECTION, "user"]),
    name=st.sampled_from([*COLLECTIONS, *NAMES]),
    roles=role_sets,
)
scopes = st.lists(object_grants, max_size=3).map(tuple)
access_keys = st.builds(
    AccessKey,
    name=st.sampled_from(["uploader", "reader"]),
    password_hash=st.just("hash"),
    objects=scopes,
)
users = st.builds(
    User,
    name=st.sampled_from(NAMES),
    email=st.just("someone@example.org"),
    password_hash=st.just("hash"),
    roles=role_sets,
)
collections = st.builds(
    Collection,
    name=st.sampled_from(COLLECTIONS),
    description=st.just(""),
    filename_template=st.just("x-${version}"),
    max_backups_count=st.just(5),
    max_one_version_size=st.just(1),
    max_collection_size=st.just(1),
    access_control=st.lists(
        st.builds(AccessControlEntry, user=st.sampled_from(NAMES), roles=role_sets), max_size=3
    ).map(tuple),
)
principals = st.builds(
    Principal, user=users, access_key=st.one_of(st.none(), access_keys), scope=scopes
)
actions = st.sampled_from(ACTIONS)

# An independent reading of the rules in docs/security.md for the oracle below.
_INCLUDES = {
    ADMIN: {ADMIN, USER_MGR, COLL_MGR, UPLOADER, DOWNLOADER, UPLOADS_ANYTIME},
    COLL_MGR: {COLL_MGR, UPLOADER, DOWNLOADER, UPLOADS_ANYTIME},
}
_NEEDS = {
    UPLOAD: {UPLOADER},
    DOWNLOAD: {DOWNLOADER},
    LIST: {UPLOADER, DOWNLOADER},
    ANYTIME: {UPLOADS_ANYTIME},
    RETENTION: {COLL_MGR},
    PROTECT: {COLL_MGR},
    DELETE: {COLL_MGR},
}


def _oracle_allows(roles: frozenset[Role], action: CollectionAction) -> bool:
    held: set[Role] = set()
    for role in roles:
        held |= _INCLUDES.get(role, {role})
    return bool(held & _NEEDS[action])


def _oracle_decision(p: Principal, coll: Collection, action: CollectionAction) -> bool:
    def listed(elements: tuple[ObjectGrant, ...]) -> bool:
        return any(
            e.type == "collection" and e.name == coll.name and _oracle_allows(e.roles, action)
            for e in elements
        )

    if p.access_key is not None and not listed(p.access_key.objects):
        return False
    if p.scope and not listed(p.scope):
        return False
    acl_allows = any(
        e.user == p.user.name and _oracle_allows(e.roles, action) for e in coll.access_control
    )
    return _oracle_allows(p.user.roles, action) or acl_allows


@given(principals, collections, actions)
def test_decision_matches_an_independent_reading_of_the_spec(
    principal: Principal, coll: Collection, action: CollectionAction
) -> None:
    assert may_act_on_collection(principal, coll, action) is _oracle_decision(
        principal, coll, action
    )


@given(principals, collections, actions, access_keys)
def test_adding_an_access_key_never_adds_rights(
    principal: Principal, coll: Collection, action: CollectionAction, k: AccessKey
) -> None:
    without_key = dataclasses.replace(principal, access_key=None)
    with_key = dataclasses.replace(principal, access_key=k)
    if not may_act_on_collection(without_key, coll, action):
        assert not may_act_on_collection(with_key, coll, action)


@given(principals, collections, actions, scopes.filter(bool))
def test_adding_a_scope_never_adds_rights(
    principal: Principal,
    coll: Collection,
    action: CollectionAction,
    scope: tuple[ObjectGrant, ...],
) -> None:
    without_scope = dataclasses.replace(principal, scope=())
    with_scope = dataclasses.replace(principal, scope=scope)
    if not may_act_on_collection(without_scope, coll, action):
        assert not may_act_on_collection(with_scope, coll, action)


@given(principals, collections, actions)
def test_narrowed_principal_never_exceeds_the_bare_user_on_collections(
    principal: Principal, coll: Collection, action: CollectionAction
) -> None:
    if may_act_on_collection(principal, coll, action):
        assert may_act_on_collection(Principal(principal.user), coll, action)


@given(
    principals,
    st.sampled_from(NAMES),
    st.sampled_from(["", "uploader", "reader"]),
    scopes,
)
def test_narrowed_principal_never_exceeds_the_bare_user_on_accounts(
    principal: Principal, other: str, other_key: str, other_scope: tuple[ObjectGrant, ...]
) -> None:
    bare = Principal(principal.user)
    if may_view_user(principal, other):
        assert may_view_user(bare, other)
    if may_list_sessions_of(principal, other):
        assert may_list_sessions_of(bare, other)
    session = Narrowing(access_key=other_key, scope=other_scope)
    if may_revoke_session(principal, other, session):
        assert may_revoke_session(bare, other, session)
    if may_see_session(principal, other, session):
        assert may_see_session(bare, other, session)


@given(principals, collections, actions, role_sets)
def test_more_user_roles_never_remove_rights(
    principal: Principal, coll: Collection, action: CollectionAction, extra: frozenset[Role]
) -> None:
    richer = dataclasses.replace(
        principal, user=dataclasses.replace(principal.user, roles=principal.user.roles | extra)
    )
    if may_act_on_collection(principal, coll, action):
        assert may_act_on_collection(richer, coll, action)


@given(principals, collections, actions)
def test_decision_on_another_collection_name_ignores_grants_for_this_one(
    principal: Principal, coll: Collection, action: CollectionAction
) -> None:
    # Renaming the collection to one no key or scope lists: any narrowing now denies.
    renamed = dataclasses.replace(coll, name="unlisted")
    if principal.is_narrowed:
        assert not may_act_on_collection(principal, renamed, action)
