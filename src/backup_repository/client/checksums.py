"""SHA-256 checks: of what was uploaded against what the server recorded, and of what was
downloaded against what the server announced in the response headers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from backup_repository.client.errors import IntegrityError

_HEX = re.compile(r"^[0-9a-f]{64}$")


class Hasher:
    """SHA-256 and length of a stream, fed chunk by chunk."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def _from_digest_header(value: str) -> str | None:
    """The SHA-256 in a ``Digest`` (``sha-256=<b64>``) or ``Repr-Digest``
    (``sha-256=:<b64>:``) header; other algorithms are ignored."""
    for item in value.split(","):
        name, _, encoded = item.strip().partition("=")
        if name.strip().lower() != "sha-256":
            continue
        text = encoded.strip()
        if text.startswith(":") and text.endswith(":") and len(text) >= 2:
            text = text[1:-1]
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != hashlib.sha256().digest_size:
            raise IntegrityError(f"the server sent a malformed digest header: {value!r}")
        return raw.hex()
    return None


def _from_etag(value: str) -> str | None:
    """An ETag that is a quoted SHA-256 hex (the server's form); any other ETag is opaque."""
    tag = value.strip()
    if tag.startswith("W/"):
        return None  # a weak validator says nothing about the bytes
    tag = tag.strip('"').lower()
    return tag if _HEX.match(tag) else None


def expected_sha256(headers: Mapping[str, str]) -> str | None:
    """The SHA-256 (lower-case hex) a download response announces, or None when it announces
    none (the reference server sends none). ``headers`` must be case-insensitive, as httpx's
    are. Several headers that disagree are an error: one of them is wrong."""
    found: dict[str, str] = {}
    explicit = headers.get("x-content-sha256")
    if explicit is not None:
        value = explicit.strip().lower()
        if not _HEX.match(value):
            raise IntegrityError(f"the server sent a malformed X-Content-SHA256: {explicit!r}")
        found["X-Content-SHA256"] = value
    for name in ("Repr-Digest", "Digest"):
        header = headers.get(name.lower())
        if header is not None:
            digest = _from_digest_header(header)
            if digest is not None:
                found[name] = digest
    etag = headers.get("etag")
    if etag is not None:
        digest = _from_etag(etag)
        if digest is not None:
            found["ETag"] = digest
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{name} {value}" for name, value in found.items())
        raise IntegrityError(f"the server sent conflicting checksums: {listed}")
    return next(iter(found.values()), None)


def verify_download(expected: str | None, actual: Hasher, length: int | None) -> None:
    """Raise IntegrityError unless the received bytes match the announced SHA-256 and
    ``Content-Length``."""
    if length is not None and actual.size != length:
        raise IntegrityError(
            f"received {actual.size} bytes but the server announced {length}; "
            "the download is incomplete"
        )
    if expected is not None and actual.hexdigest() != expected:
        raise IntegrityError(
            f"SHA-256 mismatch: the server announced {expected} but the received bytes "
            f"hash to {actual.hexdigest()}; the download is damaged"
        )


def verify_upload(version: Mapping[str, Any], sent: Hasher) -> bool:
    """Compare what the server recorded for a new version with what was sent. Returns
    False when the server reported no SHA-256 (nothing to compare), True when it matched;
    raises IntegrityError on a mismatch."""
    number = version.get("versionNumber", "?")
    size = version.get("filesize")
    if isinstance(size, int) and size != sent.size:
        raise IntegrityError(
            f"the server recorded version {number} with {size} bytes but {sent.size} were sent"
        )
    recorded = version.get("sha256")
    if not isinstance(recorded, str) or not recorded:
        return False
    if recorded.lower() != sent.hexdigest():
        raise IntegrityError(
            f"the server recorded version {number} with SHA-256 {recorded} but the sent "
            f"bytes hash to {sent.hexdigest()}; the stored backup is damaged"
        )
    return True
