"""Real OpenPGP signing keys for the trusted uploaders' tests, made with the ``gpg`` binary.

:class:`Signers` is one throw-away GnuPG home with four signing keys (ed25519): ``trusted``
and ``second`` (both meant to be trusted), ``stranger`` (never trusted), ``expired`` (made
with a faked clock in 2020, valid for one day) and ``revoked``. The home itself never sees
the revocation, so it can still sign with the revoked key; :meth:`Signers.public` exports
the public keys as a server sees them (the revoked key with its revocation).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpg_fixtures import require_gpg

NAMES = ("trusted", "second", "stranger", "expired", "revoked")
PAST = "20200101T000000"  # when the expired key was made, and signs


@dataclass
class Signers:
    home: Path
    binary: str
    fingerprints: dict[str, str] = field(default_factory=dict)
    _revocation: bytes = b""

    def run(self, *args: str, data: bytes = b"", home: Path | None = None) -> bytes:
        result = subprocess.run(
            [self.binary, "--homedir", str(home or self.home), "--batch", "--yes", "--no-tty",
             "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
             "--trust-model", "always" if home is None else "pgp", *args],
            input=data, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"gpg {args} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    @classmethod
    def create(cls, binary: str) -> Signers:
        home = Path(tempfile.mkdtemp(prefix="br-sign-"))
        home.chmod(0o700)
        signers = cls(home, binary)
        for name in NAMES:
            uid = f"{name.capitalize()} Uploader <{name}@example.org>"
            if name == "expired":
                signers.run("--faked-system-time", PAST, "--quick-generate-key", uid,
                            "ed25519", "sign", "1d")  # fmt: skip
            else:
                signers.run("--quick-generate-key", uid, "ed25519", "sign", "never")
            listing = signers.run("--with-colons", "--list-keys", f"{name}@example.org")
            fpr = next(line for line in listing.decode().splitlines() if line.startswith("fpr:"))
            signers.fingerprints[name] = fpr.split(":")[9]
        # gpg writes a revocation certificate for every key it makes; its lines start with
        # ":" so that it is not imported by accident.
        certificate = home / "openpgp-revocs.d" / f"{signers.fingerprints['revoked']}.rev"
        text = certificate.read_text()
        signers._revocation = text[text.index(":-----BEGIN") + 1 :].encode()
        return signers

    def sign(self, name: str, data: bytes, *, armor: bool = False) -> bytes:
        """A detached signature of ``data`` by the key ``name``."""
        args = ["--armor"] if armor else []
        if name == "expired":
            args += ["--faked-system-time", f"{PAST[:8]}T120000"]
        return self.run(*args, "--local-user", self.fingerprints[name], "--detach-sign",
                        "--output", "-", data=data)  # fmt: skip

    def public(self, *names: str) -> str:
        """The armoured public keys of ``names``, the revoked one revoked."""
        view = Path(tempfile.mkdtemp(prefix="br-view-"))
        view.chmod(0o700)
        try:
            exported = self.run("--armor", "--export", *(self.fingerprints[n] for n in names))
            self.run("--import", data=exported, home=view)
            if "revoked" in names:
                self.run("--import", data=self._revocation, home=view)
            return self.run(
                "--armor", "--export", *(self.fingerprints[n] for n in names), home=view
            ).decode()
        finally:
            shutil.rmtree(view, ignore_errors=True)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether gpg finds ``signature`` good over ``data`` (with this home's keys)."""
        with tempfile.NamedTemporaryFile(suffix=".sig") as file:
            file.write(signature)
            file.flush()
            result = subprocess.run(
                [self.binary, "--homedir", str(self.home), "--batch", "--status-fd", "1",
                 "--verify", file.name, "-"],
                input=data, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        return b"[GNUPG:] GOODSIG" in result.stdout

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "all"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session", name="signers")
def signers_fixture() -> Iterator[Signers]:
    found = Signers.create(require_gpg())
    try:
        yield found
    finally:
        found.close()
