"""Trusted uploaders: the keys a collection trusts, the detached signature an upload
carries, and what GnuPG said about it (docs/security.md, "Trusted uploaders").

Pure rules, no I/O: reading ``gpg --with-colons`` key listings and ``--status-fd`` lines
of ``gpg --verify``, armouring and de-armouring a signature, and the decision whether a
verification lets an upload in. Running gpg is services/signatures.py's job.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from backup_repository.domain.errors import Forbidden, InvalidInput

#: The request header that carries the detached signature (base64 of its bytes).
SIGNATURE_HEADER = "X-Backup-Signature"
#: The multipart part that carries it (before the part ``file``).
SIGNATURE_FIELD = b"signature"
#: The response header of a download of a signed version (base64 of the binary signature).
SIGNATURE_RESPONSE_HEADER = "X-Backup-Signature"
SIGNER_RESPONSE_HEADER = "X-Backup-Signed-By"
#: The largest signature accepted (real ones are well under 1 KiB; a signature with many
#: notations or an RSA-16384 key stays under this).
MAX_SIGNATURE_BYTES = 16 * 1024

ARMOR_BEGIN = "-----BEGIN PGP SIGNATURE-----"
ARMOR_END = "-----END PGP SIGNATURE-----"

_HOW_TO_SIGN = (
    "sign the encrypted file with a trusted key (gpg --detach-sign --local-user KEY "
    "backup.gpg) and send the signature in the X-Backup-Signature header (base64) or in a "
    "multipart part named 'signature' before the part 'file' (backup-maker make --sign-key "
    "does both steps)"
)
_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$|^[0-9A-F]{64}$")


class SignatureRefused(Forbidden):
    """The upload's signature is missing, wrong, or made by a key the collection does not
    trust (or no longer trusts: expired, revoked). 403: the uploader is not trusted."""


class BadSignatureInput(InvalidInput):
    """The signature sent cannot be read as an OpenPGP signature (400)."""


class Verdict(StrEnum):
    """What ``gpg --verify`` said about one detached signature."""

    GOOD = "good"  # GOODSIG and VALIDSIG
    BAD = "bad"  # BADSIG: the bytes are not the ones signed
    EXPIRED_KEY = "expired-key"  # EXPKEYSIG
    REVOKED_KEY = "revoked-key"  # REVKEYSIG
    EXPIRED_SIGNATURE = "expired-signature"  # EXPSIG
    NO_KEY = "no-key"  # ERRSIG with NO_PUBKEY: made by a key not in the trusted set
    ERROR = "error"  # ERRSIG for another reason (unsupported algorithm...)
    NO_SIGNATURE = "no-signature"  # NODATA, or gpg said nothing usable


@dataclass(frozen=True)
class TrustedKey:
    """One public key of a collection's ``trustedUploaders``, as gpg read it."""

    fingerprint: str  # the primary key's, upper-case hex
    user_ids: tuple[str, ...] = ()
    expires_at: datetime | None = None
    revoked: bool = False
    armored: str = ""
    # Fingerprints of the subkeys (signatures are often made by a signing subkey).
    subkeys: tuple[str, ...] = ()

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @property
    def label(self) -> str:
        """The fingerprint and the first user id, for messages."""
        return f"{self.fingerprint} ({self.user_ids[0]})" if self.user_ids else self.fingerprint


@dataclass(frozen=True)
class Verification:
    """The outcome of ``gpg --verify`` for one signature."""

    verdict: Verdict
    # The primary key's fingerprint (VALIDSIG's last field), or the key id / fingerprint
    # named by the other status lines; "" when gpg named none.
    key: str = ""
    signing_key: str = ""  # the (sub)key that made the signature (VALIDSIG's first field)
    signature_class: str = ""  # "00": a binary document
    signatures: int = 0  # NEWSIG lines: how many signatures the file held
    detail: str = ""


def parse_fingerprint(value: str) -> str | None:
    """A fingerprint as configured (spaces allowed, any case, optional 0x), or None."""
    text = value.replace(" ", "").upper()
    text = text.removeprefix("0X")
    return text if _FINGERPRINT.match(text) else None


# --- key listings -------------------------------------------------------------------------------


def parse_key_listing(colons: str, armored_by_fingerprint: dict[str, str]) -> list[TrustedKey]:
    """The keys of a ``gpg --with-colons --fixed-list-mode --list-keys`` listing (``pub``,
    ``fpr``, ``uid``, ``sub`` records; field 2 the validity, field 7 the expiry)."""
    keys: list[TrustedKey] = []
    current: dict[str, object] | None = None
    last_record = ""

    def close() -> None:
        if current is None:
            return
        fingerprint = str(current["fingerprint"])
        keys.append(
            TrustedKey(
                fingerprint=fingerprint,
                user_ids=tuple(current["uids"]),  # type: ignore[arg-type]
                expires_at=current["expires"],  # type: ignore[arg-type]
                revoked=bool(current["revoked"]),
                armored=armored_by_fingerprint.get(fingerprint, ""),
                subkeys=tuple(current["subkeys"]),  # type: ignore[arg-type]
            )
        )

    for line in colons.splitlines():
        fields = line.split(":")
        record = fields[0]
        if record == "pub":
            close()
            current = {
                "fingerprint": "",
                "uids": [],
                "expires": _timestamp(_field(fields, 6)),
                "revoked": _field(fields, 1) == "r",
                "subkeys": [],
            }
        elif current is None:
            pass
        elif record == "fpr":
            value = _field(fields, 9).upper()
            if last_record == "pub":
                current["fingerprint"] = value
            elif last_record == "sub" and value:
                current["subkeys"].append(value)  # type: ignore[attr-defined]
        elif record == "uid" and _field(fields, 1) != "r":
            current["uids"].append(_unescape(_field(fields, 9)))  # type: ignore[attr-defined]
        if record in ("pub", "sub", "uid"):
            last_record = record
    close()
    return [key for key in keys if key.fingerprint]


def _field(fields: list[str], index: int) -> str:
    return fields[index] if len(fields) > index else ""


def _timestamp(value: str) -> datetime | None:
    if not value.isdigit() or value == "0":
        return None
    return datetime.fromtimestamp(int(value), UTC)


def _unescape(value: str) -> str:
    """gpg escapes ``:`` and control characters in colon listings as ``\\xHH``."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


# --- gpg --verify status lines -------------------------------------------------------------------

_STATUS = "[GNUPG:] "


def parse_verify_status(lines: Iterable[str]) -> Verification:
    """The verdict of ``gpg --status-fd`` output for a detached signature. The first
    refusing line wins over a good one: a file with two signatures, one bad, is bad."""
    good: dict[str, str] = {}
    refusals: list[Verification] = []
    signatures = 0
    nodata = False
    for raw in lines:
        if not raw.startswith(_STATUS):
            continue
        words = raw[len(_STATUS) :].split()
        if not words:
            continue
        keyword, args = words[0], words[1:]
        first = args[0] if args else ""
        if keyword == "NEWSIG":
            signatures += 1
        elif keyword == "GOODSIG":
            good.setdefault("key", first)
        elif keyword == "VALIDSIG":
            good["signing_key"] = first
            good["class"] = args[8] if len(args) > 8 else ""
            good["primary"] = args[9] if len(args) > 9 else first
        elif keyword == "BADSIG":
            refusals.append(Verification(Verdict.BAD, key=first))
        elif keyword == "EXPKEYSIG":
            refusals.append(Verification(Verdict.EXPIRED_KEY, key=first))
        elif keyword == "REVKEYSIG":
            refusals.append(Verification(Verdict.REVOKED_KEY, key=first))
        elif keyword == "EXPSIG":
            refusals.append(Verification(Verdict.EXPIRED_SIGNATURE, key=first))
        elif keyword == "ERRSIG":
            rc = args[5] if len(args) > 5 else ""
            named = args[6] if len(args) > 6 and args[6] != "-" else first
            verdict = Verdict.NO_KEY if rc == "9" else Verdict.ERROR
            detail = f"gpg error code {rc}" if rc and rc != "9" else ""
            refusals.append(Verification(verdict, key=named, detail=detail))
        elif keyword == "NODATA":
            nodata = True
    signatures = max(signatures, 1 if (good or refusals) else 0)
    if refusals:
        first_refusal = refusals[0]
        return Verification(
            first_refusal.verdict,
            key=first_refusal.key,
            signatures=signatures,
            detail=first_refusal.detail,
        )
    if "primary" in good:
        return Verification(
            Verdict.GOOD,
            key=good["primary"].upper(),
            signing_key=good["signing_key"].upper(),
            signature_class=good["class"].lower(),
            signatures=signatures,
        )
    detail = "the signature holds no OpenPGP signature packet" if nodata else ""
    return Verification(Verdict.NO_SIGNATURE, signatures=signatures, detail=detail)


def decide(
    verification: Verification, trusted: Iterable[TrustedKey], collection: str
) -> TrustedKey:
    """The trusted key that made a good signature, or :class:`SignatureRefused` saying
    why the upload is refused and what to do."""
    keys = list(trusted)
    verdict = verification.verdict
    name = f"collection {collection}"
    if verification.signatures > 1:
        raise SignatureRefused(
            f"the signature file holds {verification.signatures} signatures; send exactly "
            f"one detached signature made by a key trusted by {name}"
        )
    if verdict is Verdict.GOOD:
        for key in keys:
            if verification.key == key.fingerprint:
                if verification.signature_class not in ("", "00"):
                    raise SignatureRefused(
                        f"the signature is a text-mode signature (class "
                        f"{verification.signature_class}), not one over the exact bytes "
                        f"uploaded: {_HOW_TO_SIGN}"
                    )
                return key
        raise SignatureRefused(
            f"the upload is signed by key {verification.key}, which is not among the "
            f"trusted uploaders of {name} (not pinned in trustedUploaders.fingerprints); "
            f"sign with a trusted key or ask an administrator to add it"
        )
    if verdict is Verdict.BAD:
        raise SignatureRefused(
            f"the signature by key {verification.key} does not match the uploaded bytes "
            "(it was made over other data, or the data changed on the way): sign the "
            "encrypted file exactly as it is uploaded"
        )
    if verdict is Verdict.EXPIRED_KEY:
        raise SignatureRefused(
            f"the upload is signed by key {verification.key}, a trusted uploader of {name} "
            "whose key has expired: extend the key's expiry (gpg --quick-set-expire) and "
            "give the administrator the updated public key"
        )
    if verdict is Verdict.REVOKED_KEY:
        raise SignatureRefused(
            f"the upload is signed by key {verification.key}, which has been revoked: "
            f"sign with another key trusted by {name}"
        )
    if verdict is Verdict.EXPIRED_SIGNATURE:
        raise SignatureRefused(
            f"the signature by key {verification.key} has expired: make a new signature"
        )
    if verdict is Verdict.NO_KEY:
        raise SignatureRefused(
            f"the upload is signed by key {verification.key or '(unnamed)'}, which is not "
            f"among the trusted uploaders of {name}: sign with a trusted key, or ask an "
            "administrator to add its public key to trustedUploaders"
        )
    if verdict is Verdict.ERROR:
        raise SignatureRefused(
            f"the signature by key {verification.key} could not be checked "
            f"({verification.detail or 'unsupported algorithm'}): {_HOW_TO_SIGN}"
        )
    raise SignatureRefused(
        f"the signature could not be read as an OpenPGP signature "
        f"({verification.detail or 'gpg found no signature'}): {_HOW_TO_SIGN}"
    )


def unsigned(collection: str) -> SignatureRefused:
    return SignatureRefused(
        f"collection {collection} accepts only uploads signed by a trusted uploader and "
        f"this upload carries no signature: {_HOW_TO_SIGN}"
    )


def signature_not_expected(collection: str) -> InvalidInput:
    return InvalidInput(
        f"collection {collection} has no trusted uploaders, so a signature cannot be "
        "checked: send the upload without one, or ask an administrator to set "
        "trustedUploaders on the collection"
    )


# --- the signature's bytes -----------------------------------------------------------------------


def signature_from_header(value: str) -> bytes:
    """The bytes of the ``X-Backup-Signature`` header: base64 (standard alphabet, padding
    optional) of the binary signature or of the armoured one."""
    text = value.strip()
    if len(text) > MAX_SIGNATURE_BYTES * 4 // 3 + 4:
        raise BadSignatureInput(_too_large())
    padded = text + "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignatureInput(
            f"the {SIGNATURE_HEADER} header is not base64: send base64 of the detached "
            "signature on one line (gpg --detach-sign --output - FILE | base64 -w0)"
        ) from None
    return binary_signature(data)


def binary_signature(data: bytes) -> bytes:
    """The binary OpenPGP signature in ``data`` (binary already, or armoured); refuses
    what is plainly no signature packet."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise BadSignatureInput(_too_large())
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN PGP"):
        data = dearmor(stripped.decode("ascii", "replace"))
    if not data:
        raise BadSignatureInput("the signature is empty: " + _HOW_TO_SIGN)
    if not data[0] & 0x80 or _packet_tag(data[0]) != 2:
        raise BadSignatureInput(
            "the signature does not start with an OpenPGP signature packet: send a "
            "detached signature (gpg --detach-sign), not the signed file or a key"
        )
    return data


def _packet_tag(first: int) -> int:
    if first & 0x40:  # new format
        return first & 0x3F
    return (first >> 2) & 0x0F


def _too_large() -> str:
    return (
        f"the signature is larger than {MAX_SIGNATURE_BYTES // 1024} KiB: send one detached "
        "signature"
    )


def dearmor(text: str) -> bytes:
    """The binary data of an ASCII-armoured signature."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines or lines[0] != ARMOR_BEGIN or ARMOR_END not in lines:
        raise BadSignatureInput(
            f"an armoured signature must start with {ARMOR_BEGIN} and end with {ARMOR_END}"
        )
    body = lines[1 : lines.index(ARMOR_END)]
    # Armor headers (Version: ..., Comment: ...) end with an empty line.
    if "" in body:
        body = body[body.index("") + 1 :]
    data = "".join(line for line in body if line and not line.startswith("="))
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignatureInput("the armoured signature's data is not base64") from None


def armor(data: bytes) -> str:
    """``data`` (a binary signature) as an ASCII-armoured ``PGP SIGNATURE`` block with its
    CRC-24 checksum (RFC 4880, 6)."""
    encoded = base64.b64encode(data).decode()
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    checksum = base64.b64encode(_crc24(data).to_bytes(3, "big")).decode()
    return "\n".join([ARMOR_BEGIN, "", *lines, f"={checksum}", ARMOR_END, ""])


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF
