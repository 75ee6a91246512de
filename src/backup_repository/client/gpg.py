"""GnuPG through the ``gpg`` binary: a throw-away keyring in a private temporary folder,
key import, encryption and decryption processes, and their errors in plain words.

Passphrases go to gpg over a pipe (``--passphrase-fd``), never on a command line that
``ps`` would show. gpg is told never to look keys up on the network."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from backup_repository.client.errors import GpgFailed, UsageError

log = logging.getLogger(__name__)

SMALL_OP_TIMEOUT_S = 60.0
PASSPHRASE_LIMIT = 4096  # bytes; far below a pipe's buffer, so it is written before gpg starts
STATUS_PREFIX = "[GNUPG:] "
# libgpg-error codes (the low 16 bits of the numbers in ERROR status lines)
_GPG_ERR_BAD_PASSPHRASE = 11
_GPG_ERR_NO_PASSPHRASE = 177
# A fixed S2K count for the agent of a throw-away home: without one, gpg-agent first
# calibrates it by timing hashes, which costs several seconds before the first unlock. The
# value (2^24 iterations, about 0.1 s) protects only the temporary copy of an imported key.
AGENT_S2K_COUNT = 16_777_216


def find_gpg(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise UsageError(f"gpg not found ({binary!r}): install GnuPG or pass --gpg-binary")
    return found


def passphrase_pipe(passphrase: str | None) -> int:
    """The read end of a pipe holding ``passphrase`` and a newline, for --passphrase-fd.
    An empty line when there is none, so that a protected key fails with "bad passphrase"
    instead of gpg trying to prompt."""
    data = (passphrase or "").encode() + b"\n"
    if len(data) > PASSPHRASE_LIMIT:
        raise UsageError(f"the passphrase is longer than {PASSPHRASE_LIMIT - 1} bytes")
    if "\n" in (passphrase or "") or "\r" in (passphrase or ""):
        raise UsageError("the passphrase must be one line")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
    finally:
        os.close(write_end)
    return read_end


@dataclass
class GpgOutput:
    """What gpg said on stderr: its status lines (``--status-fd 2``) and its messages."""

    status: list[str] = field(default_factory=list)
    messages: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))

    def add(self, line: str) -> None:
        if line.startswith(STATUS_PREFIX):
            if len(self.status) < 10_000:
                self.status.append(line[len(STATUS_PREFIX) :])
        elif line.strip():
            self.messages.append(line.strip())

    def keywords(self) -> set[str]:
        return {line.split(" ", 1)[0] for line in self.status}

    def arguments(self, keyword: str) -> list[list[str]]:
        return [line.split()[1:] for line in self.status if line.split(" ", 1)[0] == keyword]

    def errors(self) -> list[tuple[str, int]]:
        """(location, libgpg-error code) of each ``ERROR`` status line. The code is a number
        (``67108875``) or a number with its name (``11_BAD_PASSPHRASE``); its low 16 bits
        are the code proper."""
        found = []
        for args in self.arguments("ERROR"):
            if len(args) < 2:
                continue
            digits = args[1].split("_", 1)[0]
            if digits.isdigit():
                found.append((args[0], int(digits) & 0xFFFF))
        return found

    def error_codes(self, location_prefix: str = "") -> set[int]:
        """The codes of the ``ERROR`` lines, of those whose location starts with
        ``location_prefix`` when given (``pkdecrypt``: the secret key; ``symkey``: the
        passphrase of a symmetrically encrypted message)."""
        return {code for where, code in self.errors() if where.startswith(location_prefix)}

    def summary(self) -> str:
        lines = [m for m in self.messages if m.startswith("gpg:")] or list(self.messages)
        return "; ".join(m.removeprefix("gpg: ") for m in lines[-4:]) or "no message"


class StderrReader:
    """Reads a gpg process's stderr on a thread of its own (so the pipe never fills and
    blocks gpg) into a :class:`GpgOutput`."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.output = GpgOutput()
        self._stream = stream
        self._name = name
        self._thread = threading.Thread(target=self._run, name=f"{name}-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in self._stream:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self.output.add(line)
                log.debug("%s: %s", self._name, line)

    def join(self, timeout: float = 10.0) -> GpgOutput:
        self._thread.join(timeout)
        return self.output


UNLOCK_OPTIONS = "--passphrase-file, BM_PASSPHRASE_FILE, BM_PASSPHRASE or --passphrase"
WRONG_KEY_UNLOCK = (
    "decryption failed: wrong passphrase for the private key (--passphrase / BM_PASSPHRASE)"
)
LOCKED_KEY = (
    "decryption failed: the private key is protected and no passphrase was given "
    "(--passphrase / BM_PASSPHRASE)"
)


def decryption_error(
    returncode: int, output: GpgOutput, *, key_given: bool = True
) -> GpgFailed | None:
    """None when gpg decrypted and verified the whole message; otherwise why not, from
    gpg's status lines (``--status-fd``), which tell apart:

    - a message encrypted to keys of which the key file holds none (``NO_SECKEY``), or
      with no key file at all (``key_given`` False: only a passphrase was given);
    - a protected secret key and a missing or wrong passphrase (``ERROR pkdecrypt_failed``
      with code 177 or 11);
    - a message encrypted with a passphrase (``gpg --symmetric``: ``NEED_PASSPHRASE_SYM``)
      and no passphrase (``MISSING_PASSPHRASE``) or a wrong one (``ERROR symkey_decrypt...
      11_BAD_PASSPHRASE``);
    - damaged data (``BADMDC``) and data that is no OpenPGP message (``NODATA``)."""
    keywords = output.keywords()
    if returncode == 0 and "DECRYPTION_OKAY" in keywords and "DECRYPTION_FAILED" not in keywords:
        return None
    key_codes = output.error_codes("pkdecrypt")
    if _GPG_ERR_BAD_PASSPHRASE in key_codes:
        return GpgFailed(WRONG_KEY_UNLOCK)
    if _GPG_ERR_NO_PASSPHRASE in key_codes:
        return GpgFailed(LOCKED_KEY)
    codes = output.error_codes()
    bad_passphrase = _GPG_ERR_BAD_PASSPHRASE in codes or "BAD_PASSPHRASE" in keywords
    no_passphrase = _GPG_ERR_NO_PASSPHRASE in codes or "MISSING_PASSPHRASE" in keywords
    missing = [args[0] for args in output.arguments("NO_SECKEY") if args]
    missing_keys = bool(missing) and "DECRYPTION_KEY" not in keywords
    if "NEED_PASSPHRASE_SYM" in keywords and (bad_passphrase or no_passphrase):
        return _symmetric_error(
            missing if missing_keys else [], wrong=bad_passphrase, key_given=key_given
        )
    if bad_passphrase:
        return GpgFailed(WRONG_KEY_UNLOCK)
    if no_passphrase:
        return GpgFailed(LOCKED_KEY)
    if "BADMDC" in keywords or any("manipulated" in m for m in output.messages):
        return GpgFailed(
            "decryption failed: the encrypted data is damaged or was tampered with "
            f"(gpg: {output.summary()})"
        )
    if missing_keys and not key_given:
        return GpgFailed(
            f"decryption failed: this version is encrypted to key(s) {', '.join(missing)}, "
            "not with a passphrase: give the private key file with --private-key (or "
            "BM_PRIVATE_KEY_PATH); a passphrase alone opens only versions encrypted with "
            "gpg --symmetric"
        )
    if missing_keys:
        return GpgFailed(
            "decryption failed: the backup is encrypted for key(s) "
            f"{', '.join(missing)}, and the private key file holds none of them"
        )
    if "NODATA" in keywords and "BEGIN_DECRYPTION" not in keywords:
        return GpgFailed(
            "decryption failed: the data is not an OpenPGP message, so not an encrypted "
            "backup; save it as stored (download without --private-key and passphrase) to "
            f"look at it (gpg: {output.summary()})"
        )
    if returncode == 0:
        return GpgFailed(
            f"gpg did not confirm a complete, verified decryption ({output.summary()})"
        )
    return GpgFailed(f"decryption failed (gpg exit status {returncode}): {output.summary()}")


def _symmetric_error(missing: Sequence[str], *, wrong: bool, key_given: bool) -> GpgFailed:
    """A message encrypted with a passphrase (and maybe also to keys that are missing)
    that gpg could not open."""
    if wrong:
        return GpgFailed(
            "decryption failed: wrong passphrase: this version was encrypted with a passphrase "
            "(gpg --symmetric), not to a key, and the passphrase given does not open it"
        )
    if missing:
        keys = ", ".join(missing)
        holder = "the private key file holds none of them" if key_given else "no --private-key"
        return GpgFailed(
            f"decryption failed: this version was encrypted to key(s) {keys} ({holder}) and "
            f"with a passphrase (gpg --symmetric); give the passphrase with "
            f"{UNLOCK_OPTIONS}, or the private key of one of those keys with --private-key"
        )
    return GpgFailed(
        "decryption failed: this version was encrypted with a passphrase (gpg --symmetric), "
        f"not to a key; give the passphrase with {UNLOCK_OPTIONS} (no --private-key is "
        "needed)"
    )


class Keyring:
    """A GnuPG home in a new private (0700) temporary folder, removed by :meth:`close`
    together with the gpg-agent gpg may have started for it."""

    def __init__(self, binary: str = "gpg", *, public_only: bool = False) -> None:
        self.binary = find_gpg(binary)
        # Public-key work (import, encrypt) and decryption with a passphrase alone need no
        # gpg-agent; never starting one means none can be left behind, even when the
        # client is killed with SIGKILL.
        self.public_only = public_only
        self.key_imported = False  # a key file was imported (else: a passphrase alone)
        # A short path: gpg-agent's socket may live in the home and socket paths are short.
        self.home = Path(tempfile.mkdtemp(prefix="bm-gpg-"))
        os.chmod(self.home, 0o700)
        (self.home / "gpg-agent.conf").write_text(f"s2k-count {AGENT_S2K_COUNT}\n")

    def close(self) -> None:
        gpgconf = shutil.which("gpgconf", path=str(Path(self.binary).parent)) or shutil.which(
            "gpgconf"
        )
        if gpgconf is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(  # noqa: S603
                    [gpgconf, "--homedir", str(self.home), "--kill", "all"],
                    capture_output=True,
                    timeout=SMALL_OP_TIMEOUT_S,
                    check=False,
                )
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, *args: str) -> list[str]:
        return [
            self.binary, "--homedir", str(self.home), "--batch", "--no-tty", "--yes",
            "--status-fd", "2", "--pinentry-mode", "loopback",
            "--auto-key-locate", "local", "--no-auto-key-retrieve",
            *(["--no-autostart"] if self.public_only else []), *args,
        ]  # fmt: skip

    def run(
        self, *args: str, data: bytes = b"", passphrase: str | None = None
    ) -> tuple[int, bytes, GpgOutput]:
        """A short gpg operation; returns (exit status, stdout, parsed stderr)."""
        fds: tuple[int, ...] = ()
        extra: list[str] = []
        if passphrase is not None:
            fd = passphrase_pipe(passphrase)
            fds = (fd,)
            extra = ["--passphrase-fd", str(fd)]
        try:
            result = subprocess.run(  # noqa: S603
                self.command(*extra, *args),
                input=data,
                capture_output=True,
                timeout=SMALL_OP_TIMEOUT_S,
                pass_fds=fds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GpgFailed(
                f"gpg {' '.join(args)} did not finish in {SMALL_OP_TIMEOUT_S:g} s"
            ) from None
        finally:
            for fd in fds:
                os.close(fd)
        output = GpgOutput()
        for line in result.stderr.decode("utf-8", errors="replace").splitlines():
            output.add(line)
            log.debug("gpg: %s", line)
        return result.returncode, result.stdout, output

    # -- keys ---------------------------------------------------------------------------

    def import_key(self, path: Path, passphrase: str | None = None) -> None:
        """Import a key file (armored or binary, public or secret)."""
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise UsageError(
                f"cannot read the key file {str(path)!r}: {exc.strerror or exc}"
            ) from None
        if path.is_dir():
            raise UsageError(f"the key file {str(path)!r} is a directory")
        code, _, output = self.run("--import", str(path), passphrase=passphrase)
        imported = "IMPORT_OK" in output.keywords()
        # Without an agent the secret part of a secret key file is refused, but its public
        # part, all that encryption needs, is imported.
        if not imported or (code != 0 and not self.public_only):
            raise GpgFailed(f"cannot import the key file {str(path)!r}: {output.summary()}")
        self.key_imported = True

    def _fingerprints(self, listing: str) -> list[str]:
        code, stdout, output = self.run(listing, "--with-colons")
        if code != 0:
            raise GpgFailed(f"cannot list the imported keys: {output.summary()}")
        found: list[str] = []
        expect_primary = False
        for line in stdout.decode("utf-8", errors="replace").splitlines():
            fields = line.split(":")
            if fields[0] in {"pub", "sec"}:
                expect_primary = True
            elif fields[0] == "fpr" and expect_primary and len(fields) > 9:
                found.append(fields[9])
                expect_primary = False
        return found

    def public_fingerprints(self) -> list[str]:
        return self._fingerprints("--list-keys")

    def secret_fingerprints(self) -> list[str]:
        return self._fingerprints("--list-secret-keys")

    # -- operations -----------------------------------------------------------------------

    @staticmethod
    def _encrypt_args(
        recipients: Sequence[str], *, armor: bool, compress_level: int | None = None
    ) -> list[str]:
        args = ["--trust-model", "always", "--encrypt"]
        for recipient in recipients:
            args += ["--recipient", recipient]
        if armor:
            args.append("--armor")
        if compress_level is not None:
            args += ["--compress-level", str(compress_level)]
        return [*args, "--output", "-"]

    def encrypt_command(
        self, recipients: Sequence[str], *, armor: bool, compress_level: int | None = None
    ) -> list[str]:
        """gpg encrypting stdin to ``recipients`` onto stdout, trusting the imported keys;
        ``compress_level`` 0-9 (0: none) instead of gpg's default."""
        return self.command(
            *self._encrypt_args(recipients, armor=armor, compress_level=compress_level)
        )

    def check_recipients(self, recipients: Sequence[str]) -> None:
        """Encrypt nothing to ``recipients``, so that an unknown, expired or sign-only key
        fails now, before the backup command runs."""
        code, _, output = self.run(*self._encrypt_args(recipients, armor=False))
        if code != 0:
            raise GpgFailed(
                f"cannot encrypt to {', '.join(recipients)} with the given key file: "
                f"{output.summary()}"
            )

    def check_passphrase(self, passphrase: str | None) -> None:
        """Unlock the first secret key that can encrypt, by a round trip of a few bytes,
        so that a wrong passphrase fails before a long download. Keys that cannot
        encrypt are left to the real decryption."""
        for fingerprint in self.secret_fingerprints():
            code, sealed, _ = self.run(
                "--trust-model", "always", "--encrypt", "--recipient", fingerprint,
                "--output", "-", data=b"passphrase check",
            )  # fmt: skip
            if code != 0:
                continue
            code, _, output = self.run(
                "--decrypt", "--output", "-", data=sealed, passphrase=passphrase or ""
            )
            error = decryption_error(code, output)
            if error is not None:
                raise error
            return

    def decrypt_command(self, passphrase_fd: int) -> list[str]:
        return self.command("--passphrase-fd", str(passphrase_fd), "--decrypt", "--output", "-")


def recipients_or_all(keyring: Keyring, wanted: Iterable[str]) -> list[str]:
    """The recipients asked for, or else every key of the imported file."""
    chosen = [r for r in wanted if r]
    if chosen:
        return chosen
    found = keyring.public_fingerprints()
    if not found:
        raise GpgFailed("the key file holds no public key to encrypt to")
    return found
