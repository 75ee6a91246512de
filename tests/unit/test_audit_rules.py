"""Who may read the audit log (domain/authz.py ``may_read_audit``), and the pure helpers of
services/audit.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.authz import Principal, may_read_audit
from backup_repository.domain.errors import DependencyUnavailable, InvalidInput
from backup_repository.domain.identity import COLLECTION, AccessKey, ObjectGrant, User
from backup_repository.domain.roles import Role
from backup_repository.services.audit import describe_error, event_fields, parse_cursor
from backup_repository.services.events import Action, Event, Outcome


def user(*roles: Role) -> User:
    return User(
        name="alice", email="alice@example.org", password_hash="hash", roles=frozenset(roles)
    )


def grant(*roles: Role, name: str = "db") -> ObjectGrant:
    return ObjectGrant(type=COLLECTION, name=name, roles=frozenset(roles))


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ((), False),
        ((Role.SYSTEM_ADMIN,), True),
        ((Role.USER_MANAGER,), False),
        ((Role.COLLECTION_MANAGER,), False),
        ((Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER, Role.UPLOADS_ANYTIME), False),
        ((Role.USER_MANAGER, Role.COLLECTION_MANAGER), False),
        ((Role.SYSTEM_ADMIN, Role.BACKUP_UPLOADER), True),
    ],
)
def test_only_a_system_admin_reads_the_audit_log(roles: tuple[Role, ...], expected: bool) -> None:
    assert may_read_audit(Principal(user(*roles))) is expected


def test_an_access_key_of_an_admin_cannot_read_the_audit_log() -> None:
    # Even a key whose objects carry every role: keys name collections, not the server.
    every_role = grant(*Role)
    key = AccessKey(name="ci", password_hash="hash", objects=(every_role,))
    assert not may_read_audit(Principal(user(Role.SYSTEM_ADMIN), access_key=key))
    empty_key = AccessKey(name="bare", password_hash="hash", objects=())
    assert not may_read_audit(Principal(user(Role.SYSTEM_ADMIN), access_key=empty_key))


def test_a_scoped_admin_token_cannot_read_the_audit_log() -> None:
    scope = (grant(Role.SYSTEM_ADMIN), grant(Role.BACKUP_DOWNLOADER, name="other"))
    assert not may_read_audit(Principal(user(Role.SYSTEM_ADMIN), scope=scope))


@given(
    roles=st.frozensets(st.sampled_from(list(Role))),
    narrowed=st.booleans(),
)
def test_narrowing_never_grants_the_audit_log(roles: frozenset[Role], narrowed: bool) -> None:
    bare = Principal(user(*roles))
    principal = (
        Principal(bare.user, scope=(grant(*Role),)) if narrowed else bare
    )  # a scope can only take away
    assert may_read_audit(principal) <= may_read_audit(bare)
    assert may_read_audit(bare) is (Role.SYSTEM_ADMIN in roles)


# -- cursors and error texts of services/audit.py ----------------------------------------------


@pytest.mark.parametrize("cursor", ["0", "1", "42", "9" * 18])
def test_cursor_is_a_decimal_id(cursor: str) -> None:
    assert parse_cursor(cursor) == int(cursor)
    assert parse_cursor(None) is None


@pytest.mark.parametrize("cursor", ["", "-1", "1.5", "abc", "9" * 19, "١٢", "²", " 1", "1\n"])
def test_anything_else_is_not_a_cursor(cursor: str) -> None:
    with pytest.raises(InvalidInput, match="cursor"):
        parse_cursor(cursor)


def test_an_error_is_described_with_its_cause_on_one_line() -> None:
    try:
        try:
            raise OSError("no such table: audit_events\n[SQL: INSERT ...]")
        except OSError as inner:
            raise DependencyUnavailable("database is unavailable") from inner
    except DependencyUnavailable as exc:
        text = describe_error(exc)
    assert text == (
        "DependencyUnavailable: database is unavailable (OSError: no such table: audit_events)"
    )
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert len(describe_error(ValueError("x" * 5000))) == 1024


def test_event_fields_are_flat_and_json_ready() -> None:
    at = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
    event = Event(Action.UPLOAD, Outcome.FAILURE, user="u", reason="quota", size=5, at=at)
    fields = event_fields(event)
    assert fields == {
        "action": "upload",
        "outcome": "failure",
        "user": "u",
        "access_key": "",
        "client_ip": "",
        "collection": "",
        "version": None,
        "size": 5,
        "reason": "quota",
        "session": "",
        "detail": "",
        "at": "2026-11-27T18:00:00Z",
    }
    assert all(type(value) in (str, int, type(None)) for value in fields.values())
    # None of them collides with an attribute of a log record (``extra`` would refuse it).
    assert not set(fields) & set(logging.makeLogRecord({}).__dict__)
