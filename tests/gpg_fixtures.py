"""Real OpenPGP data made with the ``gpg`` binary, for the OpenPGP check and end-to-end uploads.

- :class:`GpgHome`: a throw-away keyring (GNUPGHOME in a temporary folder) with two
  ed25519/cv25519 keys; encrypts, decrypts, signs and exports with the real ``gpg``.
- :func:`make_encrypted`: one call that encrypts bytes with a keyring kept in a folder.
- the ``gpg_home`` session fixture (:func:`gpg_home_fixture`): one keyring for the whole
  run; skipped where ``gpg`` is missing, or failed under ``BR_REQUIRE_SERVICES=1``. Make it
  available with ``pytest_plugins = ["gpg_fixtures"]`` in the root conftest, or in one module
  with ``from gpg_fixtures import gpg_home_fixture`` and ``gpg_home = gpg_home_fixture``.
- :data:`SAMPLES`: the committed sample files of ``tests/fixtures/openpgp/`` with what the
  check must say about each. ``python tests/gpg_fixtures.py`` writes them anew.
"""

from __future__ import annotations

import base64
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import require_service

PASSPHRASE = "correct horse battery staple"
KEY_USERS = ("Alice Backup <alice@example.org>", "Bob Backup <bob@example.org>")
RECIPIENTS = ("alice@example.org", "bob@example.org")
SAMPLES_DIR = Path(__file__).parent / "fixtures" / "openpgp"
GPG_TIMEOUT_S = 60


class GpgError(RuntimeError):
    """gpg failed."""


def gpg_binary() -> str | None:
    return shutil.which("gpg")


@dataclass
class GpgHome:
    """A throw-away GnuPG home holding the keys of :data:`RECIPIENTS` (no passphrase on the
    keys; symmetric encryption uses :data:`PASSPHRASE`)."""

    path: Path
    binary: str

    @classmethod
    def create(cls, path: Path, binary: str | None = None) -> GpgHome:
        """Create the home in the empty or missing folder ``path`` and generate the keys."""
        found = binary or gpg_binary()
        if found is None:
            raise GpgError("gpg is not installed")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        home = cls(path=path, binary=found)
        for user in KEY_USERS:
            home.run(
                "--passphrase", "", "--quick-generate-key", user, "future-default", "default",
                "never",
            )  # fmt: skip
        return home

    @classmethod
    def open_or_create(cls, path: Path) -> GpgHome:
        if (path / "pubring.kbx").exists():
            found = gpg_binary()
            if found is None:
                raise GpgError("gpg is not installed")
            return cls(path=path, binary=found)
        return cls.create(path)

    def run(self, *args: str, data: bytes = b"") -> bytes:
        command = [
            self.binary, "--homedir", str(self.path), "--batch", "--yes", "--no-tty",
            "--quiet", "--pinentry-mode", "loopback", "--trust-model", "always", *args,
        ]  # fmt: skip
        result = subprocess.run(
            command, input=data, capture_output=True, timeout=GPG_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise GpgError(
                f"gpg {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result.stdout

    def encrypt(
        self,
        data: bytes,
        *,
        armor: bool = False,
        symmetric: bool = False,
        recipients: Sequence[str] = RECIPIENTS[:1],
        also_symmetric: bool = False,
        compress: bool = True,
        extra: Sequence[str] = (),
    ) -> bytes:
        """Encrypt to ``recipients`` (public keys) or, with ``symmetric``, to
        :data:`PASSPHRASE`; ``also_symmetric`` does both in one message. Without
        ``compress`` the message is about as large as ``data`` (use it for large uploads)."""
        args: list[str] = ["--armor"] if armor else []
        if not compress:
            args += ["--compress-algo", "none"]
        # A low S2K count keeps symmetric encryption fast; the data is throw-away.
        args += ["--passphrase", PASSPHRASE, "--s2k-count", "65536", *extra]
        if symmetric:
            args.append("--symmetric")
        else:
            args.append("--encrypt")
            if also_symmetric:
                args.append("--symmetric")
            for recipient in recipients:
                args += ["--recipient", recipient]
        return self.run(*args, "--output", "-", data=data)

    def decrypt(self, data: bytes) -> bytes:
        return self.run("--passphrase", PASSPHRASE, "--decrypt", "--output", "-", data=data)

    def sign(self, data: bytes, *, armor: bool = False) -> bytes:
        """A signed, not encrypted, message."""
        armor_args = ["--armor"] if armor else []
        return self.run(*armor_args, "--local-user", RECIPIENTS[0], "--sign", data=data)

    def clearsign(self, data: bytes) -> bytes:
        return self.run("--local-user", RECIPIENTS[0], "--clearsign", data=data)

    def detach_sign(self, data: bytes, *, armor: bool = False) -> bytes:
        armor_args = ["--armor"] if armor else []
        return self.run(*armor_args, "--local-user", RECIPIENTS[0], "--detach-sign", data=data)

    def export_public_key(self, *, armor: bool = False) -> bytes:
        armor_args = ["--armor"] if armor else []
        return self.run(*armor_args, "--export", RECIPIENTS[0])

    def stop_agent(self) -> None:
        """Stop the gpg-agent of this home (and only this one); gpg starts it again when
        it needs it."""
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run(
                [gpgconf, "--homedir", str(self.path), "--kill", "all"],
                capture_output=True,
                timeout=GPG_TIMEOUT_S,
                check=False,
            )

    def close(self) -> None:
        """Stop this home's agent and remove the folder."""
        self.stop_agent()
        shutil.rmtree(self.path, ignore_errors=True)


def make_encrypted(tmp_dir: Path, data: bytes, *, armor: bool, symmetric: bool) -> bytes:
    """``data`` encrypted by real gpg with a keyring kept in ``tmp_dir / "gnupg"`` (created
    on first use; no agent is left running). For many messages the ``gpg_home`` fixture is
    faster."""
    home = GpgHome.open_or_create(tmp_dir / "gnupg")
    try:
        return home.encrypt(data, armor=armor, symmetric=symmetric)
    finally:
        home.stop_agent()


def require_gpg() -> str:
    """The gpg binary; skips the test without one (fails it under BR_REQUIRE_SERVICES=1)."""
    binary = gpg_binary()
    if binary is None:
        require_service("gpg", "the gpg binary is not installed")
    return binary


@pytest.fixture(scope="session", name="gpg_home")
def gpg_home_fixture() -> Iterator[GpgHome]:
    """One throw-away keyring for the whole test run."""
    binary = require_gpg()
    # A short path: gpg-agent's socket lives in the home and socket paths are limited.
    home = GpgHome.create(Path(tempfile.mkdtemp(prefix="br-gpg-")), binary)
    try:
        yield home
    finally:
        home.close()


def pad_to(message: bytes, size: int) -> bytes:
    """A binary ``message`` grown to exactly ``size`` bytes by a padding packet (tag 21,
    RFC 9580), which the OpenPGP check accepts after the encrypted data; trailing bytes of
    any other kind (zeros) are refused. ``size - len(message)`` must be 0 or at least 2."""
    missing = size - len(message)
    if missing == 0:
        return message
    if missing < 2:
        raise ValueError("a padding packet takes at least 2 bytes")
    if missing - 2 < 192:  # one-octet length
        return message + bytes([0xD5, missing - 2]) + bytes(missing - 2)
    if 192 <= missing - 3 < 8384:  # two-octet length
        encoded = missing - 3 - 192
        return message + bytes([0xD5, (encoded >> 8) + 192, encoded & 0xFF]) + bytes(missing - 3)
    # A five-octet length encodes any size.
    return message + b"\xd5\xff" + (missing - 6).to_bytes(4, "big") + bytes(missing - 6)


# --- committed samples ---------------------------------------------------------------------

ACCEPTED = "accepted"
EMPTY = "empty"
NO_HEADER = "no-header"
NO_FOOTER = "no-footer"


@dataclass(frozen=True)
class Sample:
    name: str
    expect: str  # ACCEPTED, EMPTY, NO_HEADER or NO_FOOTER
    about: str

    @property
    def path(self) -> Path:
        return SAMPLES_DIR / self.name

    def read(self) -> bytes:
        return self.path.read_bytes()


SAMPLES = (
    Sample("public-key.gpg", ACCEPTED, "binary, encrypted to one public key"),
    Sample("public-key.asc", ACCEPTED, "armored, encrypted to one public key"),
    Sample("symmetric.gpg", ACCEPTED, "binary, encrypted with a passphrase"),
    Sample("symmetric.asc", ACCEPTED, "armored, encrypted with a passphrase"),
    Sample("two-recipients.gpg", ACCEPTED, "binary, two public-key session keys"),
    Sample("two-recipients.asc", ACCEPTED, "armored, two public-key session keys"),
    Sample("key-and-passphrase.gpg", ACCEPTED, "a public-key and a symmetric session key"),
    Sample("hidden-recipient.gpg", ACCEPTED, "binary, --throw-keyids"),
    Sample("streamed.gpg", ACCEPTED, "binary from a pipe: partial body lengths"),
    Sample("armor-headers.asc", ACCEPTED, "armored with Version and Comment headers"),
    Sample("crlf.asc", ACCEPTED, "armored with CRLF line ends"),
    Sample("leading-whitespace.asc", ACCEPTED, "armored after blank lines and spaces"),
    Sample("trailing-whitespace.asc", ACCEPTED, "armored followed by blank lines"),
    Sample("signed.gpg", NO_HEADER, "binary, signed only (compressed data first)"),
    Sample("signed.asc", NO_HEADER, "armored PGP MESSAGE, signed only"),
    Sample("clearsigned.asc", NO_HEADER, "clear-signed text"),
    Sample("detached.sig", NO_HEADER, "binary detached signature"),
    Sample("detached.asc", NO_HEADER, "armored detached signature"),
    Sample("public-key-export.gpg", NO_HEADER, "binary exported public key"),
    Sample("public-key-export.asc", NO_HEADER, "armored exported public key"),
    Sample("plain.txt", NO_HEADER, "plain text"),
    Sample("whitespace.txt", NO_HEADER, "blank lines only"),
    Sample("fake-armor.asc", NO_HEADER, "armor lines around base64 of random bytes"),
    Sample("armored-plain-text.asc", NO_HEADER, "armor lines around base64 of plain text"),
    Sample("truncated.asc", NO_FOOTER, "armored, the END line removed"),
    Sample("cut.asc", NO_FOOTER, "armored, cut in the middle of the data"),
    Sample("garbage-after-end.asc", NO_FOOTER, "armored, text after the END line"),
    Sample("truncated.gpg", NO_FOOTER, "binary, cut in the middle of the encrypted data"),
    Sample("garbage-after-data.gpg", NO_FOOTER, "binary, bytes after the encrypted data"),
    Sample("empty.bin", EMPTY, "no bytes at all"),
)

PLAIN_TEXT = b"".join(f"{n:04d},row {n},{n * n}\n".encode() for n in range(40))


def crc24(data: bytes) -> int:
    """The armor checksum of RFC 4880, section 6.1."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor(data: bytes, *, kind: str = "MESSAGE") -> bytes:
    """ASCII armor around any bytes, with a correct checksum (for fake messages)."""
    body = base64.b64encode(data)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    checksum = base64.b64encode(crc24(data).to_bytes(3, "big"))
    return b"\n".join(
        [
            f"-----BEGIN PGP {kind}-----".encode(),
            b"",
            *lines,
            b"=" + checksum,
            f"-----END PGP {kind}-----".encode(),
            b"",
        ]
    )


def build_samples(home: GpgHome) -> dict[str, bytes]:
    """The bytes of every sample in :data:`SAMPLES`."""
    text = PLAIN_TEXT
    public_asc = home.encrypt(text, armor=True)
    public_gpg = home.encrypt(text)
    streamed = home.encrypt(random.Random(7).randbytes(20_000), extra=["--compress-level", "0"])
    samples = {
        "public-key.gpg": public_gpg,
        "public-key.asc": public_asc,
        "symmetric.gpg": home.encrypt(text, symmetric=True),
        "symmetric.asc": home.encrypt(text, symmetric=True, armor=True),
        "two-recipients.gpg": home.encrypt(text, recipients=RECIPIENTS),
        "two-recipients.asc": home.encrypt(text, recipients=RECIPIENTS, armor=True),
        "key-and-passphrase.gpg": home.encrypt(text, also_symmetric=True),
        "hidden-recipient.gpg": home.encrypt(text, extra=["--throw-keyids"]),
        "streamed.gpg": streamed,
        "armor-headers.asc": home.encrypt(
            text, armor=True, extra=["--emit-version", "--comment", "db-prod nightly"]
        ),
        "crlf.asc": public_asc.replace(b"\n", b"\r\n"),
        "leading-whitespace.asc": b"\n\r\n  \t\n" + public_asc,
        "trailing-whitespace.asc": public_asc + b"\n\r\n   \n",
        "signed.gpg": home.sign(text),
        "signed.asc": home.sign(text, armor=True),
        "clearsigned.asc": home.clearsign(text),
        "detached.sig": home.detach_sign(text),
        "detached.asc": home.detach_sign(text, armor=True),
        "public-key-export.gpg": home.export_public_key(),
        "public-key-export.asc": home.export_public_key(armor=True),
        "plain.txt": text,
        "whitespace.txt": b"\n\n  \r\n\t\n",
        "fake-armor.asc": armor(random.Random(42).randbytes(700)),
        "armored-plain-text.asc": armor(text),
        "truncated.asc": public_asc[: public_asc.index(b"-----END PGP MESSAGE-----")],
        "cut.asc": public_asc[: len(public_asc) // 2],
        "garbage-after-end.asc": public_asc + b"this line was not written by gpg\n",
        "truncated.gpg": streamed[: len(streamed) // 2],
        "garbage-after-data.gpg": public_gpg + b"\n",
        "empty.bin": b"",
    }
    assert set(samples) == {sample.name for sample in SAMPLES}
    return samples


def write_samples(folder: Path = SAMPLES_DIR) -> None:
    home = GpgHome.create(Path(tempfile.mkdtemp(prefix="br-gpg-")))
    try:
        samples = build_samples(home)
    finally:
        home.close()
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in samples.items():
        (folder / name).write_bytes(data)


if __name__ == "__main__":
    write_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLES_DIR)
