"""How narrow a session is, and how far and from which sessions a refresh may reach
(domain/sessions.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.identity import COLLECTION, ObjectGrant
from backup_repository.domain.roles import Role
from backup_repository.domain.sessions import (
    Narrowing,
    at_least_as_narrow,
    family_of,
    may_refresh_from,
    refresh_lifetime,
    scope_from_json,
    scope_to_json,
    scope_within,
)

UP = Role.BACKUP_UPLOADER
DOWN = Role.BACKUP_DOWNLOADER
ANYTIME = Role.UPLOADS_ANYTIME
MANAGER = Role.COLLECTION_MANAGER


def grant(name: str, *roles: Role, type_: str = COLLECTION) -> ObjectGrant:
    return ObjectGrant(type=type_, name=name, roles=frozenset(roles))


FULL = Narrowing()
KEY = Narrowing(access_key="ci")
SCOPED_UP = Narrowing(scope=(grant("db", UP),))
SCOPED_BOTH = Narrowing(scope=(grant("db", UP, DOWN),))
SINGLE_USE = Narrowing(scope=(grant("db", UP),), single_use_collection="db")


def test_full_sessions_are_narrower_than_no_narrowed_token() -> None:
    for caller in (KEY, SCOPED_UP, SCOPED_BOTH, SINGLE_USE):
        assert not at_least_as_narrow(FULL, caller)
    assert FULL.is_full
    assert not KEY.is_full
    assert not SCOPED_UP.is_full


def test_the_access_key_must_be_the_same() -> None:
    assert at_least_as_narrow(KEY, KEY)
    assert at_least_as_narrow(Narrowing("ci", (grant("db", UP),)), KEY)
    assert not at_least_as_narrow(Narrowing("restore"), KEY)
    assert not at_least_as_narrow(KEY, SCOPED_UP)
    assert not at_least_as_narrow(Narrowing("ci", (grant("db", UP),)), SCOPED_BOTH)


def test_a_scope_must_lie_within_the_callers() -> None:
    assert at_least_as_narrow(SCOPED_UP, SCOPED_BOTH)
    assert not at_least_as_narrow(SCOPED_BOTH, SCOPED_UP)
    assert not at_least_as_narrow(Narrowing(scope=(grant("web", UP),)), SCOPED_BOTH)
    assert not at_least_as_narrow(Narrowing(scope=(grant("db", UP, type_="user"),)), SCOPED_BOTH)


def test_role_inclusions_count() -> None:
    manager = Narrowing(scope=(grant("db", MANAGER),))
    assert at_least_as_narrow(SCOPED_BOTH, manager)
    assert at_least_as_narrow(Narrowing(scope=(grant("db", ANYTIME),)), manager)
    assert not at_least_as_narrow(manager, SCOPED_BOTH)


def test_elements_for_one_object_combine() -> None:
    split = Narrowing(scope=(grant("db", UP), grant("db", DOWN)))
    assert at_least_as_narrow(SCOPED_BOTH, split)
    assert at_least_as_narrow(split, SCOPED_BOTH)


def test_single_use_tokens() -> None:
    # A single-use token lies within a scope holding its upload rights ...
    assert at_least_as_narrow(SINGLE_USE, SCOPED_BOTH)
    assert not at_least_as_narrow(SINGLE_USE, Narrowing(scope=(grant("web", UP),)))
    # ... and only a single-use token of the same collection lies within one.
    assert not at_least_as_narrow(SCOPED_UP, SINGLE_USE)
    other = Narrowing(scope=(grant("web", UP),), single_use_collection="web")
    assert not at_least_as_narrow(other, SINGLE_USE)
    # One recorded without its scope counts with the most it can hold.
    bare = Narrowing(single_use_collection="db")
    assert bare.effective_scope() == (grant("db", UP, ANYTIME),)
    assert at_least_as_narrow(bare, Narrowing(scope=(grant("db", MANAGER),)))
    assert not at_least_as_narrow(bare, SCOPED_UP)


def test_scope_within() -> None:
    assert scope_within((), ())
    assert scope_within((), (grant("db", UP),))
    assert not scope_within((grant("db", UP),), ())


def test_family_of() -> None:
    assert family_of("a" * 64, None) == "a" * 64
    assert family_of("a" * 64, "b" * 64) == "b" * 64


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_refresh_lifetime_never_passes_the_family_limit() -> None:
    hour = timedelta(hours=1)
    assert refresh_lifetime(hour, NOW, NOW + 2 * hour) == hour
    assert refresh_lifetime(hour, NOW, NOW + timedelta(minutes=10)) == timedelta(minutes=10)
    assert refresh_lifetime(hour, NOW, NOW) is None
    assert refresh_lifetime(hour, NOW, NOW - hour) is None


@given(
    requested=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    elapsed=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)),
    lifetime=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
)
def test_refreshes_never_end_after_the_login(
    requested: timedelta, elapsed: timedelta, lifetime: timedelta
) -> None:
    limit = NOW + lifetime
    result = refresh_lifetime(requested, NOW + elapsed, limit)
    if result is None:
        assert NOW + elapsed >= limit
    else:
        assert NOW + elapsed + result <= limit
        assert result <= requested


def test_may_refresh_from_an_active_lineage_only() -> None:
    parent, grandparent, root = "p" * 64, "g" * 64, "r" * 64
    assert may_refresh_from(parent, [(parent, False)])
    assert may_refresh_from(parent, [(root, False), (grandparent, False), (parent, False)])
    # The parent itself revoked, or any session it descends from.
    assert not may_refresh_from(parent, [(parent, True)])
    assert not may_refresh_from(parent, [(parent, False), (grandparent, True)])
    assert not may_refresh_from(parent, [(root, True), (parent, False)])
    # The parent not stored (purged, or never there).
    assert not may_refresh_from(parent, [])
    assert not may_refresh_from(parent, [(root, False)])


@given(
    lifetime=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    gaps=st.lists(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)), max_size=8),
)
def test_every_refresh_in_a_chain_expires_with_the_login(
    lifetime: timedelta, gaps: list[timedelta]
) -> None:
    # Each token is refreshed from the one before, asking for its lifetime: none expires
    # before the token it was refreshed from, and all at the login's expiry. So a session
    # is never purged as expired while one refreshed from it is still usable, and the
    # chain the revocation walks stays whole.
    limit = NOW + lifetime
    issued, expires = NOW, limit
    for gap in gaps:
        now = issued + gap
        result = refresh_lifetime(expires - issued, now, limit)
        if result is None:
            assert now >= limit
            break
        assert now + result >= expires
        assert now + result == limit
        issued, expires = now, now + result


roles = st.frozensets(st.sampled_from(list(Role)), min_size=1, max_size=3)
grants = st.builds(
    ObjectGrant,
    type=st.sampled_from([COLLECTION, "user"]),
    name=st.sampled_from(["db", "web"]),
    roles=roles,
)
narrowings = st.builds(
    Narrowing,
    access_key=st.sampled_from(["", "ci"]),
    scope=st.lists(grants, max_size=3).map(tuple),
    single_use_collection=st.none() | st.sampled_from(["db", "web"]),
)


@given(narrowings)
def test_every_session_is_at_least_as_narrow_as_itself(session: Narrowing) -> None:
    assert at_least_as_narrow(session, session)


@given(narrowings, narrowings, narrowings)
def test_at_least_as_narrow_is_transitive(a: Narrowing, b: Narrowing, c: Narrowing) -> None:
    if at_least_as_narrow(a, b) and at_least_as_narrow(b, c):
        assert at_least_as_narrow(a, c)


@given(st.lists(grants, max_size=4).map(tuple))
def test_stored_scope_round_trips(scope: tuple[ObjectGrant, ...]) -> None:
    assert scope_from_json(scope_to_json(scope)) == scope


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"elements": 1}',
        '{"elements": [{"name": "db"}]}',
        '{"elements": [{"type": "collection", "name": "db", "roles": ["root"]}]}',
    ],
)
def test_unreadable_stored_scope_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="unreadable stored scope"):
        scope_from_json(text)
