"""The stored form of password hashes, as the reference project writes them.

``base64("$argon2id$v=19$m=65536,t=1,p=4$<salt>$<hash>")``, where the inner salt and hash
may carry ``=`` padding (the Argon2 library does not accept it, so it is removed). A bare
PHC string is accepted too.
"""

from __future__ import annotations

import base64
import binascii


class InvalidPasswordHash(ValueError):
    """The stored value is not an Argon2 hash in a form we accept."""


def decode_stored_hash(stored: str) -> str:
    """The PHC string inside a stored value, with ``=`` padding removed from salt and hash."""
    text = stored.strip()
    if not text.startswith("$argon2"):
        try:
            text = base64.b64decode(text, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidPasswordHash(
                "not base64 of an Argon2 PHC string nor a PHC string"
            ) from None
    if not text.startswith("$argon2"):
        raise InvalidPasswordHash("not an Argon2 PHC string")
    parts = text.split("$")
    # ['', 'argon2id', 'v=19', 'm=..,t=..,p=..', salt, hash]
    if len(parts) < 5:
        raise InvalidPasswordHash("truncated Argon2 PHC string")
    parts[-1] = parts[-1].rstrip("=")
    parts[-2] = parts[-2].rstrip("=")
    return "$".join(parts)


def encode_for_storage(phc: str) -> str:
    return base64.b64encode(phc.encode("ascii")).decode("ascii")
