"""JWT issuing and decoding."""

from __future__ import annotations

import base64
import json
import warnings
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from backup_repository.domain.errors import AuthenticationFailed
from backup_repository.domain.identity import ObjectGrant
from backup_repository.domain.roles import Role
from backup_repository.services.tokens import TokenCodec, decode_scope, encode_scope, session_id_of

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"
SCOPE = (ObjectGrant("collection", "db", frozenset({Role.BACKUP_DOWNLOADER})),)


def codec() -> TokenCodec:
    return TokenCodec(SECRET, timedelta(hours=1))


def test_issue_and_decode_round_trip() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    issued = codec().issue("alice", "ci", SCOPE, timedelta(minutes=30), now=now)
    assert issued.session_id == session_id_of(issued.token)
    assert issued.expires_at == now + timedelta(minutes=30)
    claims = jwt.decode(issued.token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["login"] == "alice"
    assert claims["accessKeyName"] == "ci"
    assert claims["orig_iat"] == int(now.timestamp())
    scope = json.loads(base64.b64decode(claims["operationsScope"]))
    assert scope == {
        "elements": [{"type": "collection", "name": "db", "roles": ["backupDownloader"]}]
    }


def test_decode_gives_back_what_was_issued() -> None:
    issued = codec().issue("alice", "", SCOPE, timedelta(minutes=5))
    decoded = codec().decode(issued.token)
    assert decoded.login == "alice"
    assert decoded.access_key_name == ""
    assert decoded.scope == SCOPE
    assert decoded.expires_at == issued.expires_at


def test_same_second_logins_differ() -> None:
    now = datetime.now(UTC)
    first = codec().issue("alice", "", (), timedelta(hours=1), now=now)
    second = codec().issue("alice", "", (), timedelta(hours=1), now=now)
    assert first.token != second.token
    assert first.session_id != second.session_id


def test_expired_token_is_refused() -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    issued = codec().issue("alice", "", (), timedelta(hours=1), now=past)
    with pytest.raises(AuthenticationFailed):
        codec().decode(issued.token)


def test_other_algorithms_and_secrets_are_refused() -> None:
    claims = {"login": "alice", "exp": 4102444800, "jti": "x", "accessKeyName": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the point is the algorithm
        hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    with pytest.raises(AuthenticationFailed):
        codec().decode(hs512)
    with pytest.raises(AuthenticationFailed):
        codec().decode(jwt.encode(claims, SECRET + "-other", algorithm="HS256"))
    with pytest.raises(AuthenticationFailed):
        codec().decode(jwt.encode(claims, None, algorithm="none"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 4102444800, "jti": "x"},
        {"login": "", "exp": 4102444800, "jti": "x"},
        {"login": 5, "exp": 4102444800, "jti": "x"},
        {"login": "alice", "jti": "x"},
        {"login": "alice", "exp": 4102444800},
        {"login": "alice", "exp": 4102444800, "jti": "x", "accessKeyName": ["k"]},
    ],
)
def test_incomplete_claims_are_refused(claims: dict[str, object]) -> None:
    with pytest.raises(AuthenticationFailed):
        codec().decode(jwt.encode(claims, SECRET, algorithm="HS256"))


@pytest.mark.parametrize(
    "claim",
    [
        "not base64!",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b'{"elements": []}').decode(),
        base64.b64encode(b'{"elements": [{"type": "collection"}]}').decode(),
        base64.b64encode(
            b'{"elements": [{"type": "collection", "name": "db", "roles": ["root"]}]}'
        ).decode(),
        42,
    ],
)
def test_unreadable_scope_invalidates_the_token(claim: object) -> None:
    # An unreadable scope must never be read as "no scope", which would widen the token.
    with pytest.raises(AuthenticationFailed):
        decode_scope(claim)


def test_empty_scope_round_trip() -> None:
    assert encode_scope(()) == ""
    assert decode_scope("") == ()
    assert decode_scope(None) == ()


def test_a_token_decoded_before_is_still_refused_once_expired() -> None:
    """Decoded tokens are remembered (the signature is checked once), their expiry is
    checked on every use."""
    now = [datetime.now(UTC).timestamp()]
    tokens = TokenCodec(SECRET, timedelta(hours=1), clock=lambda: now[0])
    issued = tokens.issue("alice", "", (), timedelta(minutes=5))
    first = tokens.decode(issued.token)
    assert tokens.decode(issued.token) == first
    now[0] = issued.expires_at.timestamp()
    with pytest.raises(AuthenticationFailed):
        tokens.decode(issued.token)
    with pytest.raises(AuthenticationFailed):
        tokens.decode(issued.token)


def test_a_remembered_token_does_not_vouch_for_an_altered_one() -> None:
    tokens = codec()
    issued = tokens.issue("alice", "", (), timedelta(minutes=5))
    tokens.decode(issued.token)
    header, payload, signature = issued.token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["login"] = "mallory"
    altered = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthenticationFailed):
        tokens.decode(f"{header}.{altered}.{signature}")
    assert tokens.decode(issued.token).login == "alice"
