"""Role names and inclusions (docs/security.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.roles import (
    Role,
    UnknownRole,
    expand,
    grants,
    parse_role,
    parse_roles,
)

# Written out from docs/security.md, independent of the module's own tables.
CANONICAL = {
    "systemAdmin": Role.SYSTEM_ADMIN,
    "userManager": Role.USER_MANAGER,
    "collectionManager": Role.COLLECTION_MANAGER,
    "backupUploader": Role.BACKUP_UPLOADER,
    "backupDownloader": Role.BACKUP_DOWNLOADER,
    "uploadsAnytime": Role.UPLOADS_ANYTIME,
}

EXPECTED_EXPANSION = {
    Role.SYSTEM_ADMIN: {
        Role.SYSTEM_ADMIN,
        Role.USER_MANAGER,
        Role.COLLECTION_MANAGER,
        Role.BACKUP_UPLOADER,
        Role.BACKUP_DOWNLOADER,
        Role.UPLOADS_ANYTIME,
    },
    Role.USER_MANAGER: {Role.USER_MANAGER},
    Role.COLLECTION_MANAGER: {
        Role.COLLECTION_MANAGER,
        Role.BACKUP_UPLOADER,
        Role.BACKUP_DOWNLOADER,
        Role.UPLOADS_ANYTIME,
    },
    Role.BACKUP_UPLOADER: {Role.BACKUP_UPLOADER},
    Role.BACKUP_DOWNLOADER: {Role.BACKUP_DOWNLOADER},
    Role.UPLOADS_ANYTIME: {Role.UPLOADS_ANYTIME},
}


@pytest.mark.parametrize(("name", "role"), CANONICAL.items())
def test_canonical_names_parse_to_their_role(name: str, role: Role) -> None:
    parsed = parse_role(name)
    assert parsed is role
    assert str(parsed) == name  # serialises back to the same spelling


def test_there_are_exactly_six_roles() -> None:
    assert {r.value for r in Role} == set(CANONICAL)


def test_users_manager_alias_is_user_manager() -> None:
    assert parse_role("usersManager") is Role.USER_MANAGER
    assert str(parse_role("usersManager")) == "userManager"


@pytest.mark.parametrize(
    "name",
    [
        "admin",
        "",
        "SystemAdmin",  # names are case-sensitive
        "backupuploader",
        "usermanager",
        "UsersManager",
        " systemAdmin",
        "systemAdmin ",
        "backupUploaders",
        "collectionsManager",
    ],
)
def test_unknown_role_raises_with_the_name(name: str) -> None:
    with pytest.raises(UnknownRole) as caught:
        parse_role(name)
    assert caught.value.name == name
    assert repr(name) in str(caught.value)
    # Configuration loaders catch ValueError for every field.
    assert isinstance(caught.value, ValueError)


def test_unknown_role_message_lists_the_known_roles() -> None:
    with pytest.raises(UnknownRole) as caught:
        parse_role("root")
    message = str(caught.value)
    for name in [*CANONICAL, "usersManager"]:
        assert name in message


def test_parse_roles_folds_aliases_and_duplicates() -> None:
    assert parse_roles(["usersManager", "userManager", "backupUploader"]) == {
        Role.USER_MANAGER,
        Role.BACKUP_UPLOADER,
    }
    assert parse_roles([]) == frozenset()


def test_parse_roles_fails_on_any_unknown_name() -> None:
    with pytest.raises(UnknownRole) as caught:
        parse_roles(["backupUploader", "superUser", "backupDownloader"])
    assert caught.value.name == "superUser"


@pytest.mark.parametrize(("role", "expected"), EXPECTED_EXPANSION.items())
def test_expand_follows_inclusions_transitively(role: Role, expected: set[Role]) -> None:
    assert expand([role]) == expected


def test_system_admin_includes_everything() -> None:
    for role in Role:
        assert grants([Role.SYSTEM_ADMIN], role)


def test_collection_manager_includes_the_three_backup_roles_only() -> None:
    for role in (Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER, Role.UPLOADS_ANYTIME):
        assert grants([Role.COLLECTION_MANAGER], role)
    assert not grants([Role.COLLECTION_MANAGER], Role.USER_MANAGER)
    assert not grants([Role.COLLECTION_MANAGER], Role.SYSTEM_ADMIN)


def test_user_manager_includes_no_backup_role() -> None:
    for role in (
        Role.SYSTEM_ADMIN,
        Role.COLLECTION_MANAGER,
        Role.BACKUP_UPLOADER,
        Role.BACKUP_DOWNLOADER,
        Role.UPLOADS_ANYTIME,
    ):
        assert not grants([Role.USER_MANAGER], role)


@pytest.mark.parametrize(
    "leaf", [Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER, Role.UPLOADS_ANYTIME]
)
def test_leaf_roles_include_nothing_else(leaf: Role) -> None:
    for other in Role:
        assert grants([leaf], other) == (other is leaf)


def test_nothing_grants_nothing() -> None:
    assert expand([]) == frozenset()
    for role in Role:
        assert not grants([], role)


def test_expand_of_several_roles_is_the_union() -> None:
    assert expand([Role.USER_MANAGER, Role.BACKUP_DOWNLOADER]) == {
        Role.USER_MANAGER,
        Role.BACKUP_DOWNLOADER,
    }
    # Accepts any iterable, including a one-shot generator.
    assert (
        expand(r for r in [Role.COLLECTION_MANAGER]) == EXPECTED_EXPANSION[Role.COLLECTION_MANAGER]
    )


role_sets = st.frozensets(st.sampled_from(list(Role)))


@given(role_sets)
def test_expand_matches_the_spec_table(roles: frozenset[Role]) -> None:
    expected: set[Role] = set()
    for role in roles:
        expected |= EXPECTED_EXPANSION[role]
    assert expand(roles) == expected


@given(role_sets)
def test_expand_is_a_closure(roles: frozenset[Role]) -> None:
    once = expand(roles)
    assert roles <= once
    assert expand(once) == once


@given(role_sets, role_sets, st.sampled_from(list(Role)))
def test_more_roles_never_grant_less(
    roles: frozenset[Role], extra: frozenset[Role], needed: Role
) -> None:
    if grants(roles, needed):
        assert grants(roles | extra, needed)
