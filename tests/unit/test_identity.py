"""Logins, users, access keys and collections as the domain sees them."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.identity import (
    COLLECTION,
    AccessControlEntry,
    AccessKey,
    Collection,
    Login,
    ObjectGrant,
    User,
)
from backup_repository.domain.roles import Role


def make_collection(
    *,
    template: str = "db-prod-${version}.sql.gz.asc",
    access_control: tuple[AccessControlEntry, ...] = (),
) -> Collection:
    return Collection(
        name="db-prod",
        description="Production database",
        filename_template=template,
        max_backups_count=5,
        max_one_version_size=1024,
        max_collection_size=10240,
        access_control=access_control,
    )


# ------------------------------------------------------------------------------- Login


@pytest.mark.parametrize(
    ("login", "user", "key"),
    [
        ("admin", "admin", ""),
        ("admin$uploader", "admin", "uploader"),
        ("alice$db-prod", "alice", "db-prod"),
        # The last "$" separates: user names may contain "$", key names may not.
        ("a$b$c", "a$b", "c"),
        ("ci$bot$daily", "ci$bot", "daily"),
        ("user.name@example.org$key", "user.name@example.org", "key"),
    ],
)
def test_login_parse(login: str, user: str, key: str) -> None:
    parsed = Login.parse(login)
    assert parsed.user == user
    assert parsed.access_key == key


@pytest.mark.parametrize("login", ["admin", "admin$uploader", "a$b$c", "x$y"])
def test_login_str_round_trips(login: str) -> None:
    assert str(Login.parse(login)) == login


def test_login_str_of_plain_user_has_no_separator() -> None:
    assert str(Login(user="admin")) == "admin"
    assert str(Login(user="admin", access_key="k")) == "admin$k"


@given(
    user=st.text(min_size=1),
    key=st.text(min_size=1).filter(lambda s: "$" not in s),
)
def test_login_parse_splits_at_the_last_dollar(user: str, key: str) -> None:
    parsed = Login.parse(f"{user}${key}")
    assert (parsed.user, parsed.access_key) == (user, key)


@given(st.text().filter(lambda s: "$" not in s))
def test_login_without_dollar_is_a_plain_user(login: str) -> None:
    assert Login.parse(login) == Login(user=login, access_key="")


# -------------------------------------------------------------------------- Collection


@pytest.mark.parametrize(
    ("template", "version", "expected"),
    [
        ("db-prod-${version}.sql.gz.asc", 1, "db-prod-1.sql.gz.asc"),
        ("db-prod-${version}.sql.gz.asc", 42, "db-prod-42.sql.gz.asc"),
        ("${version}", 7, "7"),
        ("v${version}-of-${version}.tar", 3, "v3-of-3.tar"),
        # Only the exact placeholder is replaced.
        ("$version-${version}-{version}", 9, "$version-9-{version}"),
    ],
)
def test_filename_for(template: str, version: int, expected: str) -> None:
    assert make_collection(template=template).filename_for(version) == expected


def test_roles_of_unions_all_entries_of_that_user_only() -> None:
    collection = make_collection(
        access_control=(
            AccessControlEntry(user="alice", roles=frozenset({Role.BACKUP_UPLOADER})),
            AccessControlEntry(user="bob", roles=frozenset({Role.BACKUP_DOWNLOADER})),
            AccessControlEntry(user="alice", roles=frozenset({Role.UPLOADS_ANYTIME})),
        )
    )
    assert collection.roles_of("alice") == {Role.BACKUP_UPLOADER, Role.UPLOADS_ANYTIME}
    assert collection.roles_of("bob") == {Role.BACKUP_DOWNLOADER}
    assert collection.roles_of("carol") == frozenset()
    # User names are compared exactly.
    assert collection.roles_of("Alice") == frozenset()
    assert collection.roles_of("") == frozenset()


def test_roles_of_without_access_control_is_empty() -> None:
    assert make_collection().roles_of("alice") == frozenset()


def test_collection_defaults() -> None:
    collection = make_collection()
    assert collection.strategy.name == "fifo"
    assert collection.windows == ()
    assert collection.health_secret is None


# -------------------------------------------------------------------------------- User


def test_user_access_key_by_name() -> None:
    uploader = AccessKey(
        name="uploader",
        password_hash="h1",
        objects=(ObjectGrant(COLLECTION, "db-prod", frozenset({Role.BACKUP_UPLOADER})),),
    )
    reader = AccessKey(name="reader", password_hash="h2")
    user = User(
        name="admin", email="admin@example.org", password_hash="h", access_keys=(uploader, reader)
    )
    assert user.access_key("uploader") is uploader
    assert user.access_key("reader") is reader
    assert user.access_key("Uploader") is None
    assert user.access_key("") is None
    assert user.access_key("missing") is None


def test_user_without_access_keys() -> None:
    user = User(name="bob", email="bob@example.org", password_hash="h")
    assert user.access_key("anything") is None
    assert user.roles == frozenset()
    assert not user.deactivated


def test_domain_objects_are_immutable() -> None:
    user = User(name="bob", email="bob@example.org", password_hash="h")
    with pytest.raises(dataclasses.FrozenInstanceError):
        user.name = "mallory"  # type: ignore[misc]
    # Hashable, so they can be cached and used in sets.
    assert len({user, User(name="bob", email="bob@example.org", password_hash="h")}) == 1
