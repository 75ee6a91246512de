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
import time
from collections import OrderedDict
from collections.abc import Callable
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


# How many decoded tokens a codec remembers (the tokens in use at once; a few hundred bytes
# each). A token's signature is checked once; every request still checks its expiry here
# and its session in the database (revocation counts from the next request).
DECODED_CACHE_SIZE = 1024


class TokenCodec:
    def __init__(
        self, secret: str, lifetime: timedelta, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self.lifetime = lifetime
        self._clock = clock
        self._decoded: OrderedDict[str, TokenClaims] = OrderedDict()

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
        """The claims of a valid token (signature, expiry, required claims), or
        AuthenticationFailed. A token decoded before is only checked for expiry."""
        known = self._decoded.get(token)
        if known is not None:
            if known.expires_at.timestamp() > self._clock():
                self._decoded.move_to_end(token)
                return known
            del self._decoded[token]
            raise AuthenticationFailed(INVALID_TOKEN)
        claims = self._decode(token)
        self._decoded[token] = claims
        if len(self._decoded) > DECODED_CACHE_SIZE:
            self._decoded.popitem(last=False)
        return claims

    def _decode(self, token: str) -> TokenClaims:
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
        if expires.timestamp() <= self._clock():
            # Expired by the codec's clock too (the one remembered tokens are checked by).
            raise AuthenticationFailed(INVALID_TOKEN)
        return TokenClaims(
            login=login,
            access_key_name=key,
            scope=decode_scope(claims.get("operationsScope")),
            issued_at=datetime.fromtimestamp(int(issued), UTC) if issued else expires,
            expires_at=expires,
        )
