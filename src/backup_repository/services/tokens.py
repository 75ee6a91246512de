"""JWT issuing and decoding (HS256 only) with the reference project's claims.

Claims: ``login`` (user name), ``accessKeyName`` (empty or the key), ``operationsScope``
(base64 of the scope JSON, empty when not scoped), ``exp``, ``orig_iat``, ``iat`` and a
random ``jti`` so two logins in the same second never yield the same token (and session id).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from backup_repository.domain.errors import AuthenticationFailed
from backup_repository.domain.identity import ObjectGrant
from backup_repository.domain.roles import UnknownRole, parse_roles

ALGORITHM = "HS256"
INVALID_TOKEN = "invalid or expired token"  # noqa: S105 - a message, not a secret


def session_id_of(token: str) -> str:
    """The session id of a token: SHA-256 hex, as the reference's ``--hash-jwt``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def encode_scope(scope: tuple[ObjectGrant, ...]) -> str:
    if not scope:
        return ""
    document = {
        "elements": [
            {"type": g.type, "name": g.name, "roles": sorted(r.value for r in g.roles)}
            for g in scope
        ]
    }
    return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()


def decode_scope(claim: object) -> tuple[ObjectGrant, ...]:
    """The scope carried by a token; anything unreadable makes the token invalid, never
    unrestricted."""
    if claim in (None, ""):
        return ()
    if not isinstance(claim, str):
        raise AuthenticationFailed(INVALID_TOKEN)
    try:
        document = json.loads(base64.b64decode(claim, validate=True))
        elements = document["elements"]
        if not isinstance(elements, list) or not elements:
            raise ValueError("no elements")
        return tuple(
            ObjectGrant(
                type=str(e["type"]), name=str(e["name"]), roles=parse_roles(list(e["roles"]))
            )
            for e in elements
        )
    except (binascii.Error, ValueError, KeyError, TypeError, UnknownRole):
        raise AuthenticationFailed(INVALID_TOKEN) from None


@dataclass(frozen=True)
class IssuedToken:
    token: str
    session_id: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class TokenClaims:
    login: str
    access_key_name: str
    scope: tuple[ObjectGrant, ...]
    issued_at: datetime
    expires_at: datetime


class TokenCodec:
    def __init__(self, secret: str, lifetime: timedelta) -> None:
        self._secret = secret
        self.lifetime = lifetime

    def issue(
        self,
        login: str,
        access_key_name: str,
        scope: tuple[ObjectGrant, ...],
        lifetime: timedelta,
        now: datetime | None = None,
    ) -> IssuedToken:
        issued = (now or datetime.now(UTC)).replace(microsecond=0)
        expires = issued + lifetime
        claims: dict[str, Any] = {
            "login": login,
            "accessKeyName": access_key_name,
            "operationsScope": encode_scope(scope),
            "iat": int(issued.timestamp()),
            "orig_iat": int(issued.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return IssuedToken(token, session_id_of(token), issued, expires)

    def decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "login", "jti"]},
            )
        except jwt.PyJWTError:
            raise AuthenticationFailed(INVALID_TOKEN) from None
        login = claims.get("login")
        key = claims.get("accessKeyName", "")
        if not isinstance(login, str) or not login or not isinstance(key, str):
            raise AuthenticationFailed(INVALID_TOKEN)
        issued = claims.get("iat", claims.get("orig_iat"))
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return TokenClaims(
            login=login,
            access_key_name=key,
            scope=decode_scope(claims.get("operationsScope")),
            issued_at=datetime.fromtimestamp(int(issued), UTC) if issued else expires,
            expires_at=expires,
        )
