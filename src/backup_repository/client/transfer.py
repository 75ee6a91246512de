"""The three transfers: ``make`` (command -> gpg -> upload), ``restore`` (download -> verify
-> gpg -> command) and ``download`` (download -> gpg -> file).

Streams stay streams: every stage holds at most one chunk (:data:`CHUNK` bytes) and the OS
pipes between the processes, so memory does not grow with the size of a backup.

Failure rules:
- ``make`` sends the request body as it comes out of gpg, but the end of the chunked body
  only after the command and gpg have both exited with status 0. Otherwise the body
  generator raises, the connection is dropped before the final chunk, and the server,
  which records a version only for a complete body, records nothing.
- ``restore`` and ``download`` report success only when the download matched the SHA-256
  the server announced, gpg confirmed a complete and intact decryption, and (restore) the
  command exited with status 0. The restore command is started only once gpg has produced
  its first plaintext, so a wrong key or passphrase never starts it; by default the
  ciphertext is verified in full before gpg even starts (spooled, encrypted, to a
  temporary file that is deleted on close). A download goes to a temporary file beside
  the target, renamed only when everything passed.

Longer than most modules on purpose: the three transfers share their stages (the spool
file, the checksum verification, stopping gpg and the command together on any failure),
and the failure rules above hold only when read as one; gpg, the processes, the checksums
and the HTTP client are modules of their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from backup_repository.client.api import Download, RepositoryClient
from backup_repository.client.checksums import (
    Hasher,
    expected_sha256,
    verify_download,
    verify_upload,
)
from backup_repository.client.errors import (
    ClientError,
    CommandFailed,
    GpgFailed,
    ServerError,
    UsageError,
)
from backup_repository.client.gpg import (
    Keyring,
    StderrReader,
    decryption_error,
    find_gpg,
    passphrase_pipe,
)
from backup_repository.client.processes import Shell, close_quietly, start_shell, stop_process
from backup_repository.client.progress import Phase, Reporter
from backup_repository.client.signing import SignatureCheck, SpoolSigner, signature_header
from backup_repository.client.tables import human_size

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
PIPE_BUFFER = 1024 * 1024
SPOOL_MARGIN = 16 * 1024 * 1024  # free space kept beyond the spooled backup
JOIN_TIMEOUT_S = 10.0


def widen_pipe(stream: IO[bytes]) -> None:
    """Give a pipe a 1 MiB buffer (Linux; 64 KiB by default) so that gpg and the upload
    trade data in fewer, larger steps. Bounded, and skipped where not allowed."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), set_size, PIPE_BUFFER)


def describe_status(code: int) -> str:
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


# -- make -----------------------------------------------------------------------------------


WINDOW_CLOSED = "backup window does not allow you to send a backup at this time"


def preflight(client: RepositoryClient, collection_id: str) -> None:
    """Ask the server about the collection before running a possibly long backup command:
    an unreachable server, a refused token, an unknown collection or a closed backup window
    fail at once. Other refusals of the listing are left to the upload itself to report."""
    try:
        data = client.list_versions(collection_id)
    except ServerError as exc:
        if exc.status is None or exc.status == 401:
            raise
        if exc.status == 404 and "collection" in exc.message:
            raise
        log.debug("the pre-flight listing was refused, trying the upload anyway: %s", exc)
        return
    window = data.get("backupWindow")
    # Servers that do not say (the reference) leave the window to the upload.
    if isinstance(window, dict) and window.get("uploadAllowed") is False:
        raise ServerError(
            f"collection {collection_id!r}: {WINDOW_CLOSED}: backup windows are in UTC; the "
            f"next one opens at {window.get('opensAt')} and closes at "
            f"{window.get('closesAt')}; the backup command was not started. Run it then, or "
            "ask for the uploadsAnytime role on the collection",
            403,
        )


def _upload_body(
    shell: Shell,
    gpg: subprocess.Popen[bytes],
    stderr: StderrReader,
    hasher: Hasher,
    phase: Phase,
    done: threading.Event,
) -> Generator[bytes, None, None]:
    """gpg's output in chunks; raises, instead of ending, unless the command and gpg
    both succeeded (see the module's docstring). Sets ``done`` when it ends normally."""
    assert gpg.stdout is not None
    while chunk := gpg.stdout.read(CHUNK):
        hasher.update(chunk)
        phase.advance(len(chunk))
        yield chunk
    gpg_code = gpg.wait()
    output = stderr.join()
    shell_code = shell.wait()
    aborted = "the upload was aborted and the server stored nothing"
    if gpg_code != 0:
        raise GpgFailed(
            f"gpg failed to encrypt ({describe_status(gpg_code)}): {output.summary()}; {aborted}"
        )
    if shell_code != 0:
        raise CommandFailed(f"the backup command failed ({describe_status(shell_code)}); {aborted}")
    done.set()


def make(
    client: RepositoryClient,
    collection_id: str,
    command: str,
    keyring: Keyring,
    recipients: list[str],
    *,
    armor: bool,
    progress: Reporter,
    compress_level: int | None = None,
    sign_key: str | None = None,
    spool_dir: Path | None = None,
) -> dict[str, Any]:
    """Run ``command``, encrypt its output to ``recipients`` and upload it as a new version
    of ``collection_id``; returns the version the server recorded (its SHA-256 and size
    checked against what was sent). With ``sign_key``, the ciphertext is spooled and
    signed first, and uploaded with its signature (client/signing.py)."""
    preflight(client, collection_id)
    keyring.check_recipients(recipients)
    hasher = Hasher()
    shell = start_shell(command, stdout=subprocess.PIPE)
    assert shell.process.stdout is not None
    widen_pipe(shell.process.stdout)
    completed = False
    gpg: subprocess.Popen[bytes] | None = None
    try:
        try:
            gpg = subprocess.Popen(  # noqa: S603
                keyring.encrypt_command(recipients, armor=armor, compress_level=compress_level),
                stdin=shell.process.stdout,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        finally:
            close_quietly(shell.process.stdout)  # gpg holds the read end now
        assert gpg.stderr is not None
        assert gpg.stdout is not None
        widen_pipe(gpg.stdout)
        stderr = StderrReader(gpg.stderr, "gpg")
        log.info("running the backup command and uploading to collection %s", collection_id)
        sent = threading.Event()
        if sign_key is not None:
            version = _signed_upload(
                client, collection_id, sign_key, spool_dir, keyring.binary,
                lambda phase: _upload_body(shell, gpg, stderr, hasher, phase, sent),
                progress,
            )  # fmt: skip
        else:
            with progress.phase("uploading") as phase:
                body = _upload_body(shell, gpg, stderr, hasher, phase, sent)
                try:
                    version = client.upload(collection_id, body)
                finally:
                    body.close()
        if not sent.is_set():
            raise ServerError(
                "the server answered before the whole backup was sent; "
                "check with `backup-maker versions` what it recorded"
            )
        completed = True
    finally:
        if gpg is not None:
            close_quietly(gpg.stdout)
            if not completed:
                stop_process(gpg)
            gpg.wait()
        if not completed:
            shell.stop()
        shell.wait()
    number = version.get("versionNumber", "?")
    if verify_upload(version, hasher):
        log.info(
            "uploaded version %s of collection %s: %s, SHA-256 %s (verified)",
            number, collection_id, human_size(hasher.size), hasher.hexdigest(),
        )  # fmt: skip
    else:
        log.warning(
            "uploaded version %s of collection %s (%s); the server reported no SHA-256 to verify",
            number, collection_id, human_size(hasher.size),
        )  # fmt: skip
    return version


def _signed_upload(
    client: RepositoryClient,
    collection_id: str,
    sign_key: str,
    spool_dir: Path | None,
    binary: str,
    make_body: Callable[[Phase], Generator[bytes, None, None]],
    progress: Reporter,
) -> dict[str, Any]:
    """Spool and sign the ciphertext ``make_body`` yields, then upload the spool with the
    signature (client/signing.py)."""
    folder = spool_dir or Path(tempfile.gettempdir())
    signer = SpoolSigner(binary, sign_key, folder)
    try:
        with progress.phase("encrypting and signing") as encrypting:
            body = make_body(encrypting)
            try:
                for chunk in body:
                    signer.write(chunk)
            finally:
                body.close()
        signature = signer.finish()
        with progress.phase("uploading", signer.size) as phase:
            return client.upload(
                collection_id, _file_chunks(signer.spool, phase), signature_header(signature)
            )
    finally:
        signer.close()


# -- restore and download ----------------------------------------------------------------------


class Sink(Protocol):
    """Where plaintext goes. ``finish`` commits; ``abort`` undoes what it can."""

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class CommandSink:
    """The restore command's stdin. The command starts with the first chunk (or, for an
    empty backup, at the end), and on abort it is stopped before its stdin is closed, so
    that it never sees a clean end of a partial stream."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.shell: Shell | None = None
        self.written = 0

    def _stdin(self) -> IO[bytes]:
        if self.shell is None:
            log.info("starting the restore command")
            self.shell = start_shell(self.command, stdin=subprocess.PIPE)
            assert self.shell.process.stdin is not None
            widen_pipe(self.shell.process.stdin)
        assert self.shell.process.stdin is not None
        return self.shell.process.stdin

    def _exited_early(self) -> CommandFailed:
        assert self.shell is not None
        code = self.shell.wait()
        return CommandFailed(
            f"the restore command stopped reading after {human_size(self.written)} "
            f"({describe_status(code)}); the restore is incomplete"
        )

    def write(self, chunk: bytes) -> None:
        stdin = self._stdin()
        try:
            stdin.write(chunk)
        except BrokenPipeError:
            raise self._exited_early() from None
        self.written += len(chunk)

    def finish(self) -> None:
        stdin = self._stdin()
        try:
            stdin.close()
        except BrokenPipeError:
            raise self._exited_early() from None
        assert self.shell is not None
        code = self.shell.wait()
        if code != 0:
            raise CommandFailed(f"the restore command failed ({describe_status(code)})")

    def abort(self) -> None:
        if self.shell is None:
            return
        if self.shell.process.poll() is None or self.shell.own_group:
            self.shell.stop()
        close_quietly(self.shell.process.stdin)
        self.shell.wait()


class FileSink:
    """A temporary file (mode 0600) beside ``target``, renamed to it by :meth:`finish`."""

    def __init__(self, target: Path) -> None:
        self.target = target.absolute()
        parent = self.target.parent
        if self.target.is_dir():
            raise UsageError(f"--save-path {str(target)!r} is a directory; name a file")
        if not parent.is_dir():
            raise UsageError(f"the folder of --save-path does not exist: {str(parent)!r}")
        try:
            fd, name = tempfile.mkstemp(dir=parent, prefix=f".{self.target.name}.", suffix=".part")
        except OSError as exc:
            raise ClientError(f"cannot create a file in {str(parent)!r}: {exc.strerror}") from None
        self.temporary = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise ClientError(f"cannot write {str(self.temporary)!r}: {exc.strerror}") from None

    def finish(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.temporary, self.target)
            directory = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise ClientError(f"cannot save {str(self.target)!r}: {exc.strerror}") from None

    def abort(self) -> None:
        close_quietly(self._file)
        with contextlib.suppress(FileNotFoundError):
            self.temporary.unlink()


def pump(chunks: Iterator[bytes], sink: Sink) -> None:
    """Everything from ``chunks`` into ``sink``, committed only if nothing failed."""
    try:
        for chunk in chunks:
            sink.write(chunk)
        sink.finish()
    except BaseException:
        sink.abort()
        raise


class Feeder:
    """Writes ``source`` into gpg's stdin on a thread of its own while the main thread reads
    gpg's stdout. An error of the source (a network failure, a SHA-256 mismatch found at the
    end of the download) kills gpg, so it can never finish a message that did not verify."""

    def __init__(self, source: Iterator[bytes], process: subprocess.Popen[bytes]) -> None:
        self.error: BaseException | None = None
        self._source = source
        self._process = process
        self._thread = threading.Thread(target=self._run, name="gpg-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            for chunk in self._source:
                stdin.write(chunk)
            stdin.close()
        except BaseException as exc:  # handed over to the main thread
            self.error = exc
            with contextlib.suppress(OSError):
                self._process.kill()
        finally:
            close_quietly(stdin)

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        self._thread.join(timeout)


class Decryption:
    """``gpg --decrypt`` fed from a chunk iterator; :meth:`plaintext` yields its output and
    raises at the end unless the source verified and gpg confirmed the decryption."""

    def __init__(self, keyring: Keyring, passphrase: str | None, source: Iterator[bytes]) -> None:
        self.key_given = keyring.key_imported
        fd = passphrase_pipe(passphrase)
        try:
            self.process = subprocess.Popen(  # noqa: S603
                keyring.decrypt_command(fd),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        assert self.process.stderr is not None
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        widen_pipe(self.process.stdin)
        widen_pipe(self.process.stdout)
        self.stderr = StderrReader(self.process.stderr, "gpg")
        self.feeder = Feeder(source, self.process)

    def plaintext(self) -> Iterator[bytes]:
        stdout = self.process.stdout
        assert stdout is not None
        while chunk := stdout.read(CHUNK):
            yield chunk
        code = self.process.wait()
        self.feeder.join()
        output = self.stderr.join()
        # The source's own failure is the cause; a broken pipe to a gpg that gave up is not.
        if isinstance(self.feeder.error, ClientError):
            raise self.feeder.error
        error = decryption_error(code, output, key_given=self.key_given)
        if error is not None:
            raise error
        if self.feeder.error is not None:
            raise GpgFailed(f"feeding gpg failed: {self.feeder.error!r}")

    def close(self) -> None:
        close_quietly(self.process.stdout)
        if self.process.poll() is None:
            stop_process(self.process)
        self.process.wait()
        self.feeder.join()
        self.stderr.join()

    def __enter__(self) -> Decryption:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deliver(
    source: Iterator[bytes], keyring: Keyring | None, passphrase: str | None, sink: Sink
) -> None:
    if keyring is None:
        pump(source, sink)
        return
    with Decryption(keyring, passphrase, source) as decryption:
        pump(decryption.plaintext(), sink)


def _verified(download: Download, expected: str | None, phase: Phase) -> Iterator[bytes]:
    """The download's chunks; raises IntegrityError at the end if they do not match."""
    hasher = Hasher()
    for chunk in download.chunks(CHUNK):
        hasher.update(chunk)
        phase.advance(len(chunk))
        yield chunk
    verify_download(expected, hasher, download.length)
    if expected is not None:
        log.info("download verified: %s, SHA-256 %s", human_size(hasher.size), expected)


def _file_chunks(file: IO[bytes], phase: Phase) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        phase.advance(len(chunk))
        yield chunk


def _announced(download: Download) -> str | None:
    expected = expected_sha256(download.headers)
    if expected is None:
        log.warning(
            "the server announced no SHA-256 for this download; only its length "
            "and gpg's own integrity check protect it"
        )
    return expected


def _check_space(folder: Path, length: int | None) -> None:
    if length is None:
        return
    free = shutil.disk_usage(folder).free
    if free < length + SPOOL_MARGIN:
        raise ClientError(
            f"the spool folder {str(folder)!r} has {human_size(free)} free, and the encrypted "
            f"backup takes {human_size(length)}: choose another folder with --spool-dir, "
            "or restore while downloading with --stream"
        )


@contextlib.contextmanager
def _signature_check(
    keyring: Keyring | None,
    download: Download,
    trusted_keys: Sequence[Path] | None,
    binary: str,
) -> Iterator[SignatureCheck | None]:
    """The check of the download's signature when asked for (``trusted_keys`` not None)."""
    if trusted_keys is None:
        yield None
        return
    check = SignatureCheck(
        keyring.binary if keyring is not None else find_gpg(binary), download.headers, trusted_keys
    )
    try:
        yield check
    finally:
        check.close()


def _spool(
    download: Download, folder: Path, progress: Reporter, check: SignatureCheck | None = None
) -> IO[bytes]:
    """The verified ciphertext in an anonymous temporary file (0600, already unlinked)."""
    expected = _announced(download)
    _check_space(folder, download.length)
    try:
        spool = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - returned to the caller
    except OSError as exc:
        raise ClientError(f"cannot create a file in {str(folder)!r}: {exc.strerror}") from None
    try:
        with progress.phase("downloading", download.length) as phase:
            chunks = _verified(download, expected, phase)
            for chunk in check.checked(chunks) if check is not None else chunks:
                try:
                    spool.write(chunk)
                except OSError as exc:
                    raise ClientError(
                        f"cannot write the spool file in {str(folder)!r}: {exc.strerror}"
                    ) from None
        spool.flush()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def restore(
    client: RepositoryClient,
    collection_id: str,
    version: str,
    command: str,
    keyring: Keyring | None,
    passphrase: str | None,
    *,
    stream: bool,
    spool_dir: Path,
    progress: Reporter,
    trusted_keys: Sequence[Path] | None = None,
    gpg_binary: str = "gpg",
) -> None:
    """Download ``version``, verify it, decrypt it (with ``keyring``; None pipes the
    ciphertext as it is) and pipe it into ``command``. With ``trusted_keys`` (a list, may
    be empty: the user's keyring), the uploader's signature is verified too, before
    anything is decrypted."""
    sink = CommandSink(command)
    log.info("downloading version %s of collection %s", version, collection_id)
    if stream:
        with client.download(collection_id, version) as download:
            expected = _announced(download)
            with progress.phase("restoring", download.length) as phase:
                _deliver(_verified(download, expected, phase), keyring, passphrase, sink)
    else:
        with (
            client.download(collection_id, version) as download,
            _signature_check(keyring, download, trusted_keys, gpg_binary) as check,
        ):
            spool = _spool(download, spool_dir, progress, check)
        with spool:
            size = os.fstat(spool.fileno()).st_size
            with progress.phase("restoring", size) as phase:
                _deliver(_file_chunks(spool, phase), keyring, passphrase, sink)
    log.info("restore finished: %s passed to the restore command", human_size(sink.written))


def download(
    client: RepositoryClient,
    collection_id: str,
    version: str,
    target: Path,
    keyring: Keyring | None,
    passphrase: str | None,
    *,
    progress: Reporter,
    trusted_keys: Sequence[Path] | None = None,
    gpg_binary: str = "gpg",
) -> None:
    """Download ``version`` into ``target``: decrypted with ``keyring``, or the encrypted
    file as stored when there is none. With ``trusted_keys``, the uploader's signature is
    verified too; the file is kept only if it is good."""
    sink = FileSink(target)
    try:
        log.info("downloading version %s of collection %s", version, collection_id)
        with client.download(collection_id, version) as response:
            expected = _announced(response)
            with (
                _signature_check(keyring, response, trusted_keys, gpg_binary) as check,
                progress.phase("downloading", response.length) as phase,
            ):
                chunks = _verified(response, expected, phase)
                if check is not None:
                    chunks = check.checked(chunks)
                _deliver(chunks, keyring, passphrase, sink)
    except BaseException:
        sink.abort()
        raise
    log.info("saved %s", sink.target)
