"""Trusted uploaders with GnuPG: reading the trusted public keys of a configuration, and
verifying an upload's detached signature while the upload streams (docs/security.md,
"Trusted uploaders").

- :func:`read_keys`: what ``gpg`` reads in an armoured key block (fingerprints, user ids,
  expiry, revocation), each key exported on its own; cached by text, so a configuration
  reload that did not change the keys costs no gpg run.
- :class:`SignatureService`: one throw-away keyring (a ``--homedir`` in a temporary folder)
  per set of trusted keys, built once per configuration change; :meth:`start` begins one
  verification: ``gpg --status-fd --verify <signature> -`` reads the upload's bytes from
  its stdin while they are stored (:class:`StreamVerification`), and its status lines are
  judged by domain/signatures.py.

Every gpg run has a home of its own and no agent: a public keyring and ``--verify`` need
none. ``--trust-model always``: the keyring is the trust decision (it holds only the
collection's trusted keys); expiry and revocation still count (EXPKEYSIG, REVKEYSIG).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.domain.signatures import (
    TrustedKey,
    Verdict,
    Verification,
    parse_key_listing,
    parse_verify_status,
)

logger = logging.getLogger(__name__)

GPG_TIMEOUT_S = 30.0
GPG_MISSING = (
    "gpg (GnuPG) is not installed on the server, so signatures of trusted uploaders cannot "
    "be checked: install gnupg"
)

_BASE_ARGS = (
    "--batch",
    "--no-tty",
    "--quiet",
    "--no-greeting",
    "--no-permission-warning",
    "--no-auto-check-trustdb",
    "--trust-model",
    "always",
    "--lock-never",
)


def gpg_binary() -> str | None:
    """The ``gpg`` of the server's PATH (the image ships Debian's gnupg)."""
    return shutil.which("gpg")


def _run(
    binary: str, home: Path, *args: str, data: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [binary, "--homedir", str(home), *_BASE_ARGS, *args],
        input=data,
        capture_output=True,
        timeout=GPG_TIMEOUT_S,
        check=False,
    )


@dataclass(frozen=True)
class KeyReading:
    """The keys of an armoured block, or why none could be read."""

    keys: tuple[TrustedKey, ...] = ()
    error: str = ""


@functools.lru_cache(maxsize=256)
def read_keys(text: str) -> KeyReading:
    """The public keys in ``text`` (one or more ASCII-armoured blocks), as gpg reads them."""
    binary = gpg_binary()
    if binary is None:
        return KeyReading(error=GPG_MISSING)
    if "PRIVATE KEY BLOCK" in text:
        return KeyReading(
            error="holds a private key: give only public keys (gpg --export --armor KEY)"
        )
    with tempfile.TemporaryDirectory(prefix="br-keys-") as folder:
        home = Path(folder)
        try:
            imported = _run(binary, home, "--import", "--import-options", "import-clean",
                            data=text.encode())  # fmt: skip
            if imported.returncode not in (0, 2):
                return KeyReading(error=_gpg_said(imported, "could not be read as public keys"))
            listing = _run(binary, home, "--with-colons", "--fixed-list-mode", "--list-keys")
            colons = listing.stdout.decode("utf-8", "replace")
            fingerprints = [
                line.split(":")[9].upper()
                for previous, line in zip(
                    ["", *colons.splitlines()], colons.splitlines(), strict=False
                )
                if line.startswith("fpr:") and previous.startswith("pub:")
            ]
            armored: dict[str, str] = {}
            for fingerprint in fingerprints:
                exported = _run(binary, home, "--armor", "--export", fingerprint)
                armored[fingerprint] = exported.stdout.decode("ascii", "replace")
        except subprocess.TimeoutExpired:
            return KeyReading(error="gpg took too long to read the keys")
        except OSError as exc:
            return KeyReading(error=f"gpg could not be run ({exc})")
    keys = parse_key_listing(colons, armored)
    if not keys:
        return KeyReading(
            error="holds no OpenPGP public key (give the output of gpg --export --armor KEY)"
        )
    return KeyReading(keys=tuple(keys))


def _gpg_said(result: subprocess.CompletedProcess[bytes], what: str) -> str:
    said = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"{what} (gpg: {said[-1].removeprefix('gpg: ')})" if said else what


class _Keyring:
    """A throw-away GnuPG home holding one set of trusted public keys."""

    def __init__(self, binary: str, keys: Sequence[TrustedKey]) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="br-trusted-"))
        block = "\n".join(key.armored for key in keys)
        result = _run(binary, self.home, "--import", data=block.encode())
        if result.returncode not in (0, 2):
            shutil.rmtree(self.home, ignore_errors=True)
            raise DependencyUnavailable(
                _gpg_said(result, "the trusted keys could not be put in a keyring")
            )
        # Creates what a later --verify would otherwise create (a trust database): every
        # verification then only reads the home, and many run at once.
        _run(binary, self.home, "--list-keys")

    def close(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


class StreamVerification:
    """One ``gpg --verify <signature> -`` fed the upload's bytes as they arrive.
    :meth:`write` is blocking (called from a ChunkWorker's thread); :meth:`finish` waits
    for gpg's verdict; :meth:`abort` kills it. The signature and gpg's output live in a
    temporary folder removed at the end."""

    def __init__(self, binary: str, home: Path, signature: bytes) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="br-verify-"))
        signature_file = self._folder / "signature"
        signature_file.write_bytes(signature)
        self._status = (self._folder / "status").open("w+b")
        self._errors = (self._folder / "errors").open("w+b")
        self._closed_early = False
        command = [
            binary, "--homedir", str(home), *_BASE_ARGS, "--status-fd", "1",
            "--verify", str(signature_file), "-",
        ]  # fmt: skip
        try:
            self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
                command, stdin=subprocess.PIPE, stdout=self._status, stderr=self._errors
            )
        except OSError:
            self._cleanup()
            raise

    def write(self, chunk: bytes) -> None:
        stdin = self._process.stdin
        if self._closed_early or stdin is None:
            return
        try:
            stdin.write(chunk)
        except (BrokenPipeError, ValueError):
            # gpg stopped reading (an unreadable signature): its verdict says why.
            self._closed_early = True

    def finish(self) -> Verification:
        """gpg's verdict once every byte was written."""
        try:
            if self._process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    self._process.stdin.close()
            try:
                self._process.wait(timeout=GPG_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
                return Verification(Verdict.ERROR, detail="gpg took too long")
            self._status.seek(0)
            lines = self._status.read().decode("utf-8", "replace").splitlines()
            verification = parse_verify_status(lines)
            if verification.verdict is not Verdict.GOOD:
                self._errors.seek(0)
                said = self._errors.read().decode("utf-8", "replace").strip()
                logger.info(
                    "signature refused",
                    extra={"verdict": verification.verdict.value, "gpg": said[-500:]},
                )
            return verification
        finally:
            self._cleanup()

    def abort(self) -> None:
        try:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            if self._process.stdin is not None:
                with contextlib.suppress(OSError):
                    self._process.stdin.close()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        self._status.close()
        self._errors.close()
        shutil.rmtree(self._folder, ignore_errors=True)


class SignatureService:
    """Keyrings of the configured trusted keys, and verifications against them."""

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary
        self._keyrings: dict[str, _Keyring] = {}
        self._lock = threading.Lock()
        # The keyrings' folders go with the service (or at exit), even if close() is never
        # called.
        weakref.finalize(self, _close_all, self._keyrings)

    def _gpg(self) -> str:
        binary = self._binary or gpg_binary()
        if binary is None:
            raise DependencyUnavailable(GPG_MISSING)
        self._binary = binary
        return binary

    def keyring(self, keys: Sequence[TrustedKey]) -> Path:
        """The home holding exactly ``keys``, built on first use; keyrings of key sets no
        longer asked for stay until :meth:`close` (a handful per configuration)."""
        identity = hashlib.sha256(
            "\n".join(sorted(k.fingerprint + k.armored for k in keys)).encode()
        ).hexdigest()
        with self._lock:
            found = self._keyrings.get(identity)
            if found is None:
                found = _Keyring(self._gpg(), keys)
                self._keyrings[identity] = found
            return found.home

    def start(self, keys: Sequence[TrustedKey], signature: bytes) -> StreamVerification:
        """A verification of ``signature`` by one of ``keys``, waiting for the bytes
        (blocking: run it in a thread)."""
        home = self.keyring(keys)
        try:
            return StreamVerification(self._gpg(), home, signature)
        except OSError as exc:
            raise DependencyUnavailable(f"gpg could not be started: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            _close_all(self._keyrings)


def _close_all(keyrings: dict[str, _Keyring]) -> None:
    for keyring in keyrings.values():
        keyring.close()
    keyrings.clear()
