"""The ``backup-maker`` command: the subcommands (make, restore, download, login,
versions, collections, retention, protect, unprotect, delete) and the entry point. The
flags and environment variables are read by :mod:`~backup_repository.client.parser` and
:mod:`~backup_repository.client.arguments`."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from backup_repository.client import transfer
from backup_repository.client.api import RepositoryClient, check_url, check_version
from backup_repository.client.arguments import (
    COLLECTION_ID,
    COMMAND,
    GPG_BINARY,
    LOG_LEVEL,
    PASSWORD,
    PRIVATE_KEY,
    PUBLIC_KEY,
    SIGN_KEY,
    SPOOL_DIR,
    TIMEOUT,
    URL,
    USERNAME,
    VERSION,
    Arguments,
    auth_token,
    compress_level,
    log_level,
    parse_scope,
    passphrase,
    recipients,
    timeout_seconds,
    trusted_keys,
)
from backup_repository.client.errors import ClientError, ExitCode, Interrupted, UsageError
from backup_repository.client.gpg import Keyring, recipients_or_all
from backup_repository.client.parser import PROG, build_parser
from backup_repository.client.progress import Reporter, reporter
from backup_repository.client.tables import (
    collections_table,
    retention_table,
    versions_table,
)

log = logging.getLogger("backup_repository.client")


# -- helpers ---------------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to the current ``sys.stderr``, so that lines logged while a progress bar is
    shown go through the bar's redirection instead of tearing it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


def setup_logging(level: int) -> None:
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {PROG} %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs each request at INFO; httpcore's DEBUG lines are wire-level noise.
    logging.getLogger("httpx").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    )
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically."""
    target = path.absolute()
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ClientError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise ClientError(f"cannot write {str(path)!r}: {exc.strerror}") from None


@contextlib.contextmanager
def keyring_with(
    key_path: str | None, binary: str, secret: str | None, *, public_only: bool = False
) -> Iterator[Keyring | None]:
    """A throw-away keyring holding ``key_path`` (None: no keyring at all)."""
    if not key_path:
        yield None
        return
    with Keyring(binary, public_only=public_only) as keyring:
        keyring.import_key(Path(key_path), secret)
        yield keyring


# -- subcommands -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """The checked server settings; :meth:`open` makes the client."""

    url: str
    token: str | None
    timeout: float

    def open(self) -> RepositoryClient:
        return RepositoryClient(self.url, self.token, self.timeout)


def _connection(args: Arguments, *, token: bool = True) -> Connection:
    url = check_url(str(args.require(URL)))
    return Connection(url, auth_token(args) if token else None, timeout_seconds(args.get(TIMEOUT)))


def _collection(args: Arguments) -> str:
    return str(args.require(COLLECTION_ID))


def _progress(args: Arguments) -> Reporter:
    return reporter(False) if args.flag("no_progress") else reporter()


def _gpg_binary(args: Arguments) -> str:
    return str(args.get(GPG_BINARY))


def _spool_dir(args: Arguments) -> Path:
    spool_dir = Path(str(args.get(SPOOL_DIR) or tempfile.gettempdir()))
    if not spool_dir.is_dir():
        raise UsageError(f"--spool-dir {str(spool_dir)!r} is not a folder")
    return spool_dir


def cmd_make(args: Arguments) -> int:
    server = _connection(args)
    collection = _collection(args)
    command = args.require(COMMAND)
    key_path = args.require(PUBLIC_KEY)
    passphrase(args)  # accepted for compatibility (and checked): encryption needs none
    level = compress_level(args)
    sign_key = args.get(SIGN_KEY)
    spool_dir = _spool_dir(args)
    keyring_of = keyring_with(key_path, _gpg_binary(args), None, public_only=True)
    with server.open() as client, keyring_of as keyring:
        assert keyring is not None
        chosen = recipients_or_all(keyring, recipients(args))
        transfer.make(
            client,
            collection,
            command,
            keyring,
            chosen,
            armor=bool(args.flag("armor")),
            progress=_progress(args),
            compress_level=level,
            sign_key=str(sign_key) if sign_key else None,
            spool_dir=spool_dir,
        )
    return ExitCode.OK


@contextlib.contextmanager
def _decryption_keyring(
    args: Arguments, secret: str | None, without_key: str, level: int
) -> Iterator[Keyring | None]:
    """A keyring holding --private-key, its passphrase checked. Without the flag but with a
    passphrase, an empty keyring: gpg then decrypts with the passphrase alone (a version
    encrypted with ``gpg --symmetric``). Without either, None (then ``without_key`` says
    what happens instead, logged at ``level``)."""
    value = args.get(PRIVATE_KEY)
    key_path = str(value) if value else None
    if key_path is None and secret:
        log.info("no --private-key: decrypting with the passphrase (gpg --symmetric)")
        with Keyring(_gpg_binary(args), public_only=True) as keyring:
            yield keyring
        return
    with keyring_with(key_path, _gpg_binary(args), secret) as keyring:
        if keyring is None:
            log.log(level, "no --private-key: %s", without_key)
        else:
            keyring.check_passphrase(secret)
        yield keyring


def cmd_restore(args: Arguments) -> int:
    server = _connection(args)
    collection = _collection(args)
    command = args.require(COMMAND)
    version = check_version(str(args.get(VERSION)))
    spool_dir = _spool_dir(args)
    checked_keys = trusted_keys(args)
    if checked_keys is not None and args.flag("stream"):
        raise UsageError(
            "--verify-signature checks the whole download before anything is restored: "
            "leave out --stream"
        )
    secret = passphrase(args)
    without_key = "the encrypted stream is piped into the command as it is"
    keyring_of = _decryption_keyring(args, secret, without_key, logging.WARNING)
    with server.open() as client, keyring_of as keyring:
        transfer.restore(
            client,
            collection,
            version,
            command,
            keyring,
            secret,
            stream=bool(args.flag("stream")),
            spool_dir=spool_dir,
            progress=_progress(args),
            trusted_keys=checked_keys,
            gpg_binary=_gpg_binary(args),
        )
    return ExitCode.OK


def cmd_download(args: Arguments) -> int:
    server = _connection(args)
    collection = _collection(args)
    target = args.flag("save_path")
    if not target:
        raise UsageError("missing --save-path")
    version = check_version(str(args.get(VERSION)))
    checked_keys = trusted_keys(args)
    secret = passphrase(args)
    without_key = "saving the encrypted file as stored"
    keyring_of = _decryption_keyring(args, secret, without_key, logging.INFO)
    with server.open() as client, keyring_of as keyring:
        transfer.download(
            client,
            collection,
            version,
            Path(target),
            keyring,
            secret,
            progress=_progress(args),
            trusted_keys=checked_keys,
            gpg_binary=_gpg_binary(args),
        )
    return ExitCode.OK


def _password(args: Arguments, stdin: TextIO) -> str:
    if args.flag("password_stdin"):
        line = stdin.readline()
        if not line:
            raise UsageError("--password-stdin: standard input is empty")
        return str(line).rstrip("\r\n")
    env = args.get(PASSWORD)
    if env:
        return str(env)
    if stdin.isatty():
        return getpass.getpass("Password: ")
    raise UsageError("no password: set BM_PASSWORD, use --password-stdin, or run on a terminal")


def cmd_login(args: Arguments) -> int:
    username = args.require(USERNAME)
    secret = _password(args, sys.stdin)
    scope = parse_scope(args.flag("scope") or [])
    with _connection(args, token=False).open() as client:
        data = client.login(
            str(username),
            secret,
            ttl=args.flag("ttl"),
            scope=scope,
            single_use=args.flag("single_use"),
        )
    token = str(data["token"])
    expire = data.get("expire", "?")
    save = args.flag("save_token")
    if save:
        write_private_file(Path(save), token + "\n")
        log.info("token saved to %s (expires %s)", save, expire)
    else:
        print(token)
        log.info("logged in as %s; the token expires %s", username, expire)
    return ExitCode.OK


def cmd_versions(args: Arguments) -> int:
    server = _connection(args)
    collection = _collection(args)
    with server.open() as client:
        data = client.list_versions(collection)
    print(json.dumps(data, indent=2) if args.flag("json") else versions_table(data))
    return ExitCode.OK


def cmd_collections(args: Arguments) -> int:
    with _connection(args).open() as client:
        data = client.list_collections()
    print(json.dumps(data, indent=2) if args.flag("json") else collections_table(data))
    return ExitCode.OK


def cmd_retention(args: Arguments) -> int:
    """What the collection's rotation strategy keeps now and after one more upload."""
    collection = args.flag("collection") or _collection(args)
    with _connection(args).open() as client:
        data = client.retention(str(collection))
    print(json.dumps(data, indent=2) if args.flag("json") else retention_table(data))
    return ExitCode.OK


def cmd_protect(args: Arguments) -> int:
    """Protect a version from rotation, or (``unprotect``) allow rotation again."""
    protected = args.flag("subcommand") == "protect"
    collection = _collection(args)
    with _connection(args).open() as client:
        version = client.protect(collection, str(args.flag("version")), protected=protected)
    if args.flag("json"):
        print(json.dumps(version, indent=2))
    log.info(
        "version %s of %s is %s",
        version.get("versionNumber"),
        collection,
        "protected" if version.get("protected") else "not protected",
    )
    return ExitCode.OK


def cmd_delete(args: Arguments) -> int:
    """Delete a version (collectionManager), saying why."""
    collection = _collection(args)
    with _connection(args).open() as client:
        version = client.delete(collection, str(args.flag("version")), str(args.flag("reason")))
    if args.flag("json"):
        print(json.dumps(version, indent=2))
    log.info("deleted version %s of %s", version.get("versionNumber"), collection)
    return ExitCode.OK


COMMANDS: Mapping[str, Callable[[Arguments], int]] = {
    "make": cmd_make,
    "restore": cmd_restore,
    "download": cmd_download,
    "login": cmd_login,
    "versions": cmd_versions,
    "collections": cmd_collections,
    "retention": cmd_retention,
    "protect": cmd_protect,
    "unprotect": cmd_protect,
    "delete": cmd_delete,
}


# -- entry point -----------------------------------------------------------------------------


def _raise_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    if signum == signal.SIGTERM:
        raise Interrupted("terminated (SIGTERM)", ExitCode.TERMINATED)
    raise Interrupted("interrupted", ExitCode.INTERRUPTED)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    args = Arguments(namespace, os.environ if environ is None else environ)
    try:
        setup_logging(log_level(str(args.get(LOG_LEVEL))))
    except UsageError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return ExitCode.USAGE
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _raise_on_signal)
    try:
        return COMMANDS[namespace.subcommand](args)
    except ClientError as exc:
        log.error("%s", exc.message)
        return int(exc.exit_code)
    except BrokenPipeError:
        # our own stdout went away (`backup-maker versions | head`)
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter closes it at exit
        return ExitCode.FAILURE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
