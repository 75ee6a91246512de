"""Signatures of trusted uploaders on the client's side (docs/client.md, "Signed uploads").

- :class:`SpoolSigner`: ``make --sign-key``. The server checks the signature while the
  upload streams, so it must arrive before the body: the ciphertext is written to an
  anonymous temporary file (mode 0600, in ``--spool-dir``) and, in the same pass, into
  ``gpg --detach-sign`` (the user's own keyring, ``--local-user``); then the file is
  uploaded with the signature in the ``X-Backup-Signature`` header. Memory stays at one
  chunk; the disk holds the ciphertext once.
- :class:`SignatureCheck`: ``restore``/``download --verify-signature``. ``gpg --verify``
  (with ``--trusted-key`` files in a throw-away keyring, or the user's keyring) reads the
  downloaded ciphertext as it arrives; a bad or missing signature fails before anything
  is decrypted (``restore``) or before the file is kept (``download``).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from backup_repository.client.errors import GpgFailed, IntegrityError, UsageError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Backup-Signature"
SIGNER_HEADER = "X-Backup-Signed-By"
GPG_TIMEOUT_S = 120.0
_BATCH = ("--batch", "--no-tty", "--yes")


class SpoolSigner:
    """The ciphertext spooled to a temporary file and signed in the same pass."""

    def __init__(self, binary: str, key: str, folder: Path) -> None:
        self.key = key
        try:
            self.spool: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115
        except OSError as exc:
            raise UsageError(
                f"cannot create the spool file of the signed upload in {str(folder)!r}: "
                f"{exc.strerror}; choose another folder with --spool-dir"
            ) from None
        self._signature = tempfile.NamedTemporaryFile(  # noqa: SIM115
            dir=folder, prefix=".signature-", delete=False
        )
        self._signature.close()
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        command = [
            binary, *_BATCH, "--local-user", key, "--detach-sign",
            "--output", self._signature.name, "-",
        ]  # fmt: skip
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._errors
        )
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self.spool.write(chunk)
        except OSError as exc:
            raise UsageError(
                f"cannot write the spool file of the signed upload: {exc.strerror}; choose "
                "another folder with --spool-dir"
            ) from None
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(chunk)
        except BrokenPipeError:
            raise self._failed() from None
        self.size += len(chunk)

    def finish(self) -> bytes:
        """The detached signature (binary); the spool is rewound for the upload."""
        assert self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        if self._process.wait(timeout=GPG_TIMEOUT_S) != 0:
            raise self._failed()
        signature = Path(self._signature.name).read_bytes()
        self.spool.flush()
        self.spool.seek(0)
        log.info("signed the encrypted backup with key %s", self.key)
        return signature

    def _failed(self) -> GpgFailed:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=GPG_TIMEOUT_S)
        self._errors.seek(0)
        said = self._errors.read().decode("utf-8", "replace").strip().splitlines()
        detail = said[-1] if said else "no message"
        return GpgFailed(
            f"gpg could not sign with --sign-key {self.key!r} ({detail}): the key must be "
            "in your GnuPG keyring with its secret part, usable without a prompt (gpg-agent "
            "holding its passphrase, or none); the upload was not sent"
        )

    def chunks(self, size: int) -> Iterator[bytes]:
        while chunk := self.spool.read(size):
            yield chunk

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        self.spool.close()
        self._errors.close()
        Path(self._signature.name).unlink(missing_ok=True)


def signature_header(signature: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode()}


class SignatureCheck:
    """``gpg --verify`` of a download's signature (from its headers), fed the ciphertext
    as it arrives; :meth:`checked` raises at the end unless it is good."""

    def __init__(
        self, binary: str, headers: Mapping[str, str], trusted_keys: Sequence[Path]
    ) -> None:
        encoded = headers.get(SIGNATURE_HEADER.lower()) or headers.get(SIGNATURE_HEADER)
        if not encoded:
            raise IntegrityError(
                "--verify-signature: the server sent no signature with this version (it was "
                "uploaded to a collection without trustedUploaders, or by a server that does "
                "not keep signatures); nothing was restored"
            )
        self.signer = headers.get(SIGNER_HEADER.lower()) or headers.get(SIGNER_HEADER) or "?"
        self._folder = Path(tempfile.mkdtemp(prefix="bm-verify-"))
        self._folder.chmod(0o700)
        signature_file = self._folder / "signature"
        signature_file.write_bytes(base64.b64decode(encoded))
        home: list[str] = []
        if trusted_keys:
            keyring = self._folder / "keyring"
            keyring.mkdir(mode=0o700)
            for key in trusted_keys:
                try:
                    data = key.read_bytes()
                except OSError as exc:
                    self.close()
                    raise UsageError(
                        f"--trusted-key {str(key)!r} cannot be read: {exc.strerror}"
                    ) from None
                subprocess.run(  # noqa: S603
                    [binary, "--homedir", str(keyring), *_BATCH, "--import"],
                    input=data, capture_output=True, timeout=GPG_TIMEOUT_S, check=False,
                )  # fmt: skip
            home = ["--homedir", str(keyring), "--trust-model", "always"]
        self._status = (self._folder / "status").open("w+b")
        self._process = subprocess.Popen(  # noqa: S603
            [binary, *home, *_BATCH, "--status-fd", "1", "--verify", str(signature_file), "-"],
            stdin=subprocess.PIPE,
            stdout=self._status,
            stderr=subprocess.DEVNULL,
        )

    def checked(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, each also given to gpg; at the end, IntegrityError unless gpg found
        a good signature."""
        assert self._process.stdin is not None
        for chunk in chunks:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.write(chunk)
            yield chunk
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        self._process.wait(timeout=GPG_TIMEOUT_S)
        self._status.seek(0)
        status = self._status.read().decode("utf-8", "replace")
        if "[GNUPG:] VALIDSIG" not in status or "[GNUPG:] GOODSIG" not in status:
            reason = _reason(status)
            raise IntegrityError(
                f"--verify-signature: the signature of key {self.signer} does not verify "
                f"the downloaded data ({reason}); nothing was restored or kept"
            )
        log.info("signature verified: signed by %s", self.signer)

    def close(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        status = getattr(self, "_status", None)
        if status is not None:
            status.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def _reason(status: str) -> str:
    if "[GNUPG:] BADSIG" in status:
        return "the data is not what was signed: it was changed after the upload"
    if "NO_PUBKEY" in status:
        return "the signing key is not among the trusted keys: give it with --trusted-key"
    if "[GNUPG:] EXPKEYSIG" in status:
        return "the signing key has expired"
    if "[GNUPG:] REVKEYSIG" in status:
        return "the signing key has been revoked"
    return "gpg found no good signature"
