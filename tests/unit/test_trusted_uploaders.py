"""Trusted uploaders without a server: the configuration of ``spec.trustedUploaders`` (keys
read by the real gpg, problems naming file and field, warnings for expired and revoked
keys), and the pure rules of domain/signatures.py (gpg's status lines, the signature's
encodings)."""

from __future__ import annotations

import base64
import textwrap
from typing import Any

import pytest
import yaml

from backup_repository.config.documents import SourceFile
from backup_repository.config.loader import BuildResult, load_files
from backup_repository.domain.signatures import (
    BadSignatureInput,
    SignatureRefused,
    Verdict,
    armor,
    dearmor,
    decide,
    parse_verify_status,
    signature_from_header,
)
from trusted_keys import Signers, signers_fixture

signers = signers_fixture

COLLECTION = """\
apiVersion: backups.riotkit.org/v1alpha1
kind: BackupCollection
metadata: {name: db}
spec:
  filenameTemplate: db-${version}.gpg
  maxBackupsCount: 2
  maxOneVersionSize: 1M
  maxCollectionSize: 5M
"""


def load(keys: str, trusted: str) -> BuildResult:
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "uploaders"},
        "stringData": {"keys.asc": keys},
    }
    text = (
        yaml.safe_dump(secret)
        + "---\n"
        + COLLECTION
        + textwrap.indent(textwrap.dedent(trusted), "  ")
    )
    return load_files([SourceFile("objects.yaml", text)])


REF = "trustedUploaders:\n  keysFromRef: {name: uploaders, entry: keys.asc}\n"


def test_trusted_keys_are_read_pinned_and_checked(signers: Signers) -> None:
    keys = signers.public("trusted", "second", "expired", "revoked")
    loaded = load(keys, REF)
    assert loaded.snapshot.problems == ()
    found = {k.fingerprint: k for k in loaded.snapshot.collections["db"].trusted_keys}
    assert set(found) == {signers.fingerprints[n] for n in ("trusted", "second", "expired",
                                                             "revoked")}  # fmt: skip
    assert found[signers.fingerprints["trusted"]].user_ids == (
        "Trusted Uploader <trusted@example.org>",
    )
    assert found[signers.fingerprints["revoked"]].revoked
    assert found[signers.fingerprints["expired"]].expires_at is not None
    warnings = " ".join(loaded.warnings)
    assert f"key {signers.fingerprints['expired']}" in warnings
    assert "is expired" in warnings
    assert "is revoked" in warnings
    assert "objects.yaml: BackupCollection/db: spec.trustedUploaders" in warnings

    # Pinned: only that key counts (spaces and lower case allowed).
    second = signers.fingerprints["second"]
    spaced = " ".join(second[i : i + 4] for i in range(0, 40, 4)).lower()
    pinned = load(keys, REF + f"  fingerprints: ['{spaced}']\n")
    assert pinned.snapshot.problems == ()
    assert [k.fingerprint for k in pinned.snapshot.collections["db"].trusted_keys] == [second]


@pytest.mark.parametrize(
    ("keys", "extra", "field", "phrase"),
    [
        ("not a key", "", "spec.trustedUploaders.keysFromRef", "holds no OpenPGP public key"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----", "", "spec.trustedUploaders.keysFromRef",
         "give only public keys"),
        (None, "  fingerprints: ['" + "A" * 40 + "']\n",
         "spec.trustedUploaders.fingerprints[0]", "is not among the keys"),
        (None, "  fingerprints: [nonsense]\n", "spec.trustedUploaders.fingerprints[0]",
         "is not an OpenPGP fingerprint"),
    ],
)  # fmt: skip
def test_a_broken_trusted_uploaders_block_leaves_the_collection_out(
    signers: Signers, keys: str | None, extra: str, field: str, phrase: str
) -> None:
    loaded = load(keys if keys is not None else signers.public("trusted"), REF + extra)
    assert "db" not in loaded.snapshot.collections
    problems = loaded.snapshot.problems
    assert [p.field for p in problems] == [field], problems
    assert phrase in problems[0].message
    assert problems[0].source == "objects.yaml"


def test_a_missing_secret_leaves_the_collection_out() -> None:
    text = COLLECTION + textwrap.indent(REF, "  ")
    loaded = load_files([SourceFile("objects.yaml", text)])
    assert "db" not in loaded.snapshot.collections
    assert [p.field for p in loaded.snapshot.problems] == ["spec.trustedUploaders.keysFromRef"]


FPR = "A" * 40
VALID = (
    f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 0123456789ABCDEF Alice\n"
    f"[GNUPG:] VALIDSIG BBBB 2026-01-01 1767225600 0 4 0 22 10 00 {FPR}\n"
)


def test_gpg_status_lines_are_told_apart() -> None:
    good = parse_verify_status(VALID.splitlines())
    assert (good.verdict, good.key, good.signature_class) == (Verdict.GOOD, FPR, "00")
    for line, verdict in [
        ("[GNUPG:] BADSIG 0123 Alice", Verdict.BAD),
        ("[GNUPG:] EXPKEYSIG 0123 Alice", Verdict.EXPIRED_KEY),
        ("[GNUPG:] REVKEYSIG 0123 Alice", Verdict.REVOKED_KEY),
        ("[GNUPG:] EXPSIG 0123 Alice", Verdict.EXPIRED_SIGNATURE),
        ("[GNUPG:] ERRSIG 0123 22 10 00 1767225600 9 " + FPR, Verdict.NO_KEY),
        ("[GNUPG:] ERRSIG 0123 99 10 00 1767225600 4 -", Verdict.ERROR),
        ("[GNUPG:] NODATA 3", Verdict.NO_SIGNATURE),
    ]:
        assert parse_verify_status(["[GNUPG:] NEWSIG", line]).verdict is verdict, line
    # A refusal wins over a good signature in the same file; two signatures are refused.
    mixed = parse_verify_status([*VALID.splitlines(), "[GNUPG:] NEWSIG", "[GNUPG:] BADSIG 1 B"])
    assert mixed.verdict is Verdict.BAD
    two = parse_verify_status([*VALID.splitlines(), *VALID.splitlines()])
    with pytest.raises(SignatureRefused, match="2 signatures"):
        decide(two, [], "db")


def test_signature_encodings() -> None:
    binary = bytes([0x88, 0x5E]) + bytes(range(94))
    assert dearmor(armor(binary)) == binary
    assert signature_from_header(base64.b64encode(binary).decode()) == binary
    assert signature_from_header(base64.b64encode(armor(binary).encode()).decode()) == binary
    assert signature_from_header(base64.b64encode(binary).decode().rstrip("=")) == binary
    with pytest.raises(BadSignatureInput, match="not base64"):
        signature_from_header("%%%")
    with pytest.raises(BadSignatureInput, match="signature packet"):
        signature_from_header(base64.b64encode(b"\x85\x01\x00").decode())  # a PKESK
    with pytest.raises(BadSignatureInput, match="larger than"):
        signature_from_header("A" * 30000)
