"""The ``backup-maker`` command line: the reference client's subcommands, flags and ``BM_*``
environment variables (make, restore, download), plus login, versions and collections.

Global flags are accepted before or after the subcommand, as the reference accepts them.
A flag wins over its environment variable, which wins over the default; an empty
variable counts as unset (as in the reference)."""

from __future__ import annotations

import argparse
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
from typing import Any, NoReturn, TextIO

from backup_repository.client import transfer
from backup_repository.client.api import RepositoryClient, check_url, check_version
from backup_repository.client.errors import ClientError, ExitCode, Interrupted, UsageError
from backup_repository.client.gpg import Keyring, recipients_or_all
from backup_repository.client.progress import Reporter, reporter
from backup_repository.client.tables import collections_table, versions_table

log = logging.getLogger("backup_repository.client")

PROG = "backup-maker"
DEFAULT_TIMEOUT_S = 20 * 60  # the reference's default
LOG_LEVELS: Mapping[str, int] = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}
# logrus's numbers, which an older reference release took: 0 panic ... 6 trace
_NUMERIC_LEVELS = ("panic", "fatal", "error", "warn", "info", "debug", "trace")
COLLECTION_ROLES = ("backupUploader", "backupDownloader", "uploadsAnytime", "collectionManager")


@dataclass(frozen=True)
class Setting:
    """One value that a flag or an environment variable can give."""

    dest: str
    env: str | None
    default: Any = None

    def describe(self) -> str:
        flag = "--" + self.dest.replace("_", "-")
        return f"{flag} (or {self.env})" if self.env else flag


URL = Setting("url", "BM_URL")
COLLECTION_ID = Setting("collection_id", "BM_COLLECTION_ID")
AUTH_TOKEN = Setting("auth_token", "BM_AUTH_TOKEN")
AUTH_TOKEN_FILE = Setting("auth_token_file", "BM_AUTH_TOKEN_FILE")
TIMEOUT = Setting("timeout", "BM_TIMEOUT", DEFAULT_TIMEOUT_S)
LOG_LEVEL = Setting("log_level", "BM_LOG_LEVEL", "info")
GPG_BINARY = Setting("gpg_binary", "BM_GPG_BINARY", "gpg")
COMMAND = Setting("cmd", "BM_CMD")
PUBLIC_KEY = Setting("key", "BM_PUBLIC_KEY_PATH")
PRIVATE_KEY = Setting("private_key", "BM_PRIVATE_KEY_PATH")
PASSPHRASE = Setting("passphrase", "BM_PASSPHRASE")
PASSPHRASE_FILE = Setting("passphrase_file", "BM_PASSPHRASE_FILE")
RECIPIENT = Setting("recipient", "BM_RECIPIENT")
VERSION = Setting("version", "BM_VERSION", "latest")
SPOOL_DIR = Setting("spool_dir", "BM_SPOOL_DIR")
USERNAME = Setting("username", "BM_USERNAME")
PASSWORD = Setting("password", "BM_PASSWORD")
COMPRESS_LEVEL = Setting("compress_level", "BM_COMPRESS_LEVEL")


class Arguments:
    """Parsed flags with the environment and the defaults filled in."""

    def __init__(self, namespace: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self._namespace = namespace
        self._environ = environ

    def get(self, setting: Setting) -> Any:
        value = getattr(self._namespace, setting.dest, None)
        if value is not None:
            return value
        if setting.env:
            env_value = self._environ.get(setting.env, "")
            if env_value != "":
                return env_value
        return setting.default

    def require(self, setting: Setting) -> Any:
        value = self.get(setting)
        if value is None or value == "":
            raise UsageError(f"missing {setting.describe()}")
        return value

    def flag(self, name: str) -> Any:
        return getattr(self._namespace, name, None)


# -- parser ----------------------------------------------------------------------------------


def _env(name: str) -> str:
    return f" [env: {name}]"


def _global_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server and logging (before or after the subcommand)")
    suppress = argparse.SUPPRESS
    group.add_argument(
        "-u", "--url", default=suppress,
        help="server address, e.g. https://backups.example.org" + _env("BM_URL"),
    )  # fmt: skip
    group.add_argument(
        "-i", "--collection-id", default=suppress,
        help="collection to work on" + _env("BM_COLLECTION_ID"),
    )  # fmt: skip
    group.add_argument(
        "-t", "--auth-token", default=suppress,
        help="token (JWT) from a login; prefer the variable, flags show in `ps`"
        + _env("BM_AUTH_TOKEN"),
    )  # fmt: skip
    group.add_argument(
        "--auth-token-file", default=suppress, metavar="PATH",
        help="read the token from a file (as `login --save-token` writes it)"
        + _env("BM_AUTH_TOKEN_FILE"),
    )  # fmt: skip
    group.add_argument(
        "--timeout", default=suppress, metavar="SECONDS",
        help=f"network timeout: connecting, and each wait for the server to send or take "
        f"data (default {DEFAULT_TIMEOUT_S})" + _env("BM_TIMEOUT"),
    )  # fmt: skip
    group.add_argument(
        "--log-level", default=suppress, metavar="LEVEL",
        help="panic|fatal|error|warn|info|debug|trace, or 0-6 (default info)"
        + _env("BM_LOG_LEVEL"),
    )  # fmt: skip
    group.add_argument(
        "--gpg-binary", default=suppress, metavar="PATH",
        help="the gpg program (default gpg)" + _env("BM_GPG_BINARY"),
    )  # fmt: skip
    group.add_argument(
        "--no-progress", action="store_true", default=suppress,
        help="no progress display (it is shown only on a terminal anyway)",
    )  # fmt: skip


def _passphrase_options(parser: argparse.ArgumentParser, purpose: str) -> None:
    parser.add_argument(
        "--passphrase",
        help=f"passphrase of the key ({purpose}); prefer the variable or --passphrase-file, "
        "flags show in `ps`" + _env("BM_PASSPHRASE"),
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="PATH",
        help="read the passphrase from the first line of a file" + _env("BM_PASSPHRASE_FILE"),
    )


def _version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-s", "--version", metavar="VERSION",
        help="version to fetch: latest (default), a number, or vN" + _env("BM_VERSION"),
    )  # fmt: skip


def _recipient_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "-r", "--recipient", action="append", metavar="KEY", help=help_text + _env("BM_RECIPIENT")
    )


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.HelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Backup client of Backup Repository: encrypts a command's output with "
        "GnuPG and streams it to the server; downloads, verifies, decrypts and restores.",
        epilog="Exit status: 0 success, 1 other failure, 2 usage, 3 the command failed, "
        "4 gpg failed, 5 server refused or unreachable, 6 checksum mismatch, "
        "130/143 interrupted. See docs/client.md.",
        formatter_class=formatter,
    )
    _global_options(parser)
    commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    commands.required = True

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=description, formatter_class=formatter
        )
        _global_options(sub)
        return sub

    make = add(
        "make",
        "run a command, encrypt its output and upload it as a new version",
        "Runs --cmd with `bash -eo pipefail -c`, encrypts its standard output with gpg to the "
        "public key of --key and streams the ciphertext to the collection as a new version. "
        "If the command or gpg fails, the upload is aborted and the server stores nothing.",
    )
    make.add_argument(
        "-c", "--cmd", metavar="COMMAND",
        help="shell command whose standard output is the backup" + _env("BM_CMD"),
    )  # fmt: skip
    make.add_argument(
        "-k", "--key", metavar="PATH",
        help="public key file to encrypt to (armored or binary; a secret key file works too)"
        + _env("BM_PUBLIC_KEY_PATH"),
    )  # fmt: skip
    _recipient_option(
        make,
        "recipient (e-mail, key id or fingerprint) within the key file; repeat for several "
        "(the variable takes a comma-separated list); default: every key in the file",
    )
    _passphrase_options(make, "accepted for compatibility; encrypting needs none")
    make.add_argument(
        "--armor", action="store_true", help="upload ASCII-armored OpenPGP (default: binary)"
    )
    make.add_argument(
        "--compress-level", metavar="0-9",
        help="gpg's compression: 0 for none (output that is already compressed: tar -z, "
        "pg_dump -Fc), 9 for the smallest; default gpg's own (6)" + _env("BM_COMPRESS_LEVEL"),
    )  # fmt: skip

    restore = add(
        "restore",
        "download a version, decrypt it and pipe it into a command",
        "Downloads --version, checks it against the SHA-256 the server announces, decrypts "
        "it with the private key of --private-key and pipes it into --cmd. By default the "
        "download is verified before anything is decrypted: the ciphertext (never the "
        "plaintext) is kept in an anonymous temporary file in --spool-dir meanwhile.",
    )
    restore.add_argument(
        "-c", "--cmd", metavar="COMMAND",
        help="shell command that reads the backup on its standard input" + _env("BM_CMD"),
    )  # fmt: skip
    restore.add_argument(
        "-p", "--private-key", metavar="PATH",
        help="private key file to decrypt with; without it the encrypted stream is piped "
        "into the command as it is" + _env("BM_PRIVATE_KEY_PATH"),
    )  # fmt: skip
    _passphrase_options(restore, "of the private key")
    _version_option(restore)
    _recipient_option(restore, "accepted for compatibility; decryption does not need it")
    restore.add_argument(
        "--stream", action="store_true",
        help="restore while downloading, without a spool file; a damaged download is then "
        "detected only at its end, after the command has received most of it (it is "
        "stopped, and the exit status says so)",
    )  # fmt: skip
    restore.add_argument(
        "--spool-dir", metavar="PATH",
        help="folder for the encrypted spool file (default: the system's temporary folder)"
        + _env("BM_SPOOL_DIR"),
    )  # fmt: skip

    download = add(
        "download",
        "download a version into a file (decrypted with --private-key)",
        "Downloads --version into --save-path: decrypted with --private-key, or the "
        "encrypted file as stored without it. The file is written under a temporary name "
        "beside the target and renamed only when the download verified and gpg succeeded.",
    )
    download.add_argument("--save-path", metavar="PATH", help="file to write (mode 0600)")
    download.add_argument(
        "-p", "--private-key", metavar="PATH",
        help="private key file; without it the encrypted file is saved"
        + _env("BM_PRIVATE_KEY_PATH"),
    )  # fmt: skip
    _passphrase_options(download, "of the private key")
    _version_option(download)
    _recipient_option(download, "accepted for compatibility; decryption does not need it")

    login = add(
        "login",
        "log in and print (or save) a token",
        "Logs in with a user name and password and prints the token on standard output, or "
        "saves it to a file (mode 0600) with --save-token. The password comes from "
        "BM_PASSWORD, from standard input with --password-stdin, or from a prompt.",
    )
    login.add_argument("--username", help="user, or user$accesskey" + _env("BM_USERNAME"))
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    login.add_argument("--ttl", help="shorter lifetime for this token, e.g. 1h or 30d")
    login.add_argument(
        "--scope", action="append", metavar="COLLECTION=ROLE[,ROLE]",
        help="narrow the token to a collection and roles (repeatable), e.g. "
        "db-prod=backupUploader",
    )  # fmt: skip
    login.add_argument(
        "--single-use", metavar="COLLECTION",
        help="a token for exactly one upload to this collection, revoked by that upload",
    )  # fmt: skip
    login.add_argument("--save-token", metavar="PATH", help="write the token to this file")

    versions = add(
        "versions",
        "list the versions of a collection",
        "Lists the versions of --collection-id, newest first, with the collection's usage.",
    )
    versions.add_argument("--json", action="store_true", help="print the server's data as JSON")

    collections = add(
        "collections",
        "list the collections you may use",
        "Lists the collections the token may upload to, download from or list.",
    )
    collections.add_argument("--json", action="store_true", help="print the server's data as JSON")
    return parser


# -- helpers ---------------------------------------------------------------------------------


def log_level(value: str) -> int:
    text = value.strip().lower()
    if text.isdigit() and int(text) < len(_NUMERIC_LEVELS):
        text = _NUMERIC_LEVELS[int(text)]
    if text not in LOG_LEVELS:
        raise UsageError(f"unknown --log-level {value!r}: use one of {', '.join(_NUMERIC_LEVELS)}")
    return LOG_LEVELS[text]


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


def timeout_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--timeout must be a number of seconds, got {value!r}") from None
    if not 0 < seconds <= 7 * 24 * 3600:
        raise UsageError(f"--timeout must be between 0 and 604800 seconds, got {value!r}")
    return seconds


def read_secret_file(path: str, what: str) -> str:
    """The first line of a file (a token or a passphrase), without its line end."""
    try:
        with open(path, encoding="utf-8") as file:
            line = file.readline(64 * 1024)
    except OSError as exc:
        raise UsageError(f"cannot read the {what} file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the {what} file {path!r} is not UTF-8 text") from None
    return line.rstrip("\r\n")


def auth_token(args: Arguments) -> str:
    """-t, else --auth-token-file, else BM_AUTH_TOKEN, else BM_AUTH_TOKEN_FILE."""
    token = args.flag("auth_token")
    if token:
        return str(token)
    path = args.flag("auth_token_file")
    if path:
        return read_secret_file(path, "token").strip()
    token = args.get(AUTH_TOKEN)
    if token:
        return str(token)
    path = args.get(AUTH_TOKEN_FILE)
    if path:
        return read_secret_file(path, "token").strip()
    raise UsageError("missing --auth-token (or BM_AUTH_TOKEN, or --auth-token-file)")


def passphrase(args: Arguments) -> str | None:
    """--passphrase, else --passphrase-file, else BM_PASSPHRASE, else BM_PASSPHRASE_FILE."""
    if args.flag("passphrase") is not None:
        return str(args.flag("passphrase"))
    if args.flag("passphrase_file"):
        return read_secret_file(args.flag("passphrase_file"), "passphrase")
    value = args.get(PASSPHRASE)
    if value:
        return str(value)
    path = args.get(PASSPHRASE_FILE)
    return read_secret_file(path, "passphrase") if path else None


def compress_level(args: Arguments) -> int | None:
    value = args.get(COMPRESS_LEVEL)
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isdigit() and int(text) <= 9):
        raise UsageError(f"--compress-level must be 0 to 9, got {value!r}")
    return int(text)


def recipients(args: Arguments) -> list[str]:
    given = args.flag("recipient")
    if given:
        return [r.strip() for r in given if r.strip()]
    env = args.get(RECIPIENT) or ""
    return [r.strip() for r in str(env).split(",") if r.strip()]


def parse_scope(items: Sequence[str]) -> list[dict[str, Any]]:
    elements = []
    for item in items:
        name, sep, roles = item.partition("=")
        role_list = [r.strip() for r in roles.split(",") if r.strip()]
        if not sep or not name.strip() or not role_list:
            raise UsageError(f"--scope takes COLLECTION=ROLE[,ROLE], got {item!r}")
        for role in role_list:
            if role not in COLLECTION_ROLES:
                raise UsageError(
                    f"unknown role {role!r} in --scope: use {', '.join(COLLECTION_ROLES)}"
                )
        elements.append({"type": "collection", "name": name.strip(), "roles": role_list})
    return elements


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


def cmd_make(args: Arguments) -> int:
    server = _connection(args)
    collection = _collection(args)
    command = args.require(COMMAND)
    key_path = args.require(PUBLIC_KEY)
    passphrase(args)  # accepted for compatibility (and checked): encryption needs none
    level = compress_level(args)
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
        )
    return ExitCode.OK


def _private_key(args: Arguments) -> str | None:
    value = args.get(PRIVATE_KEY)
    return str(value) if value else None


def cmd_restore(args: Arguments) -> int:
    server = _connection(args)
    collection = _collection(args)
    command = args.require(COMMAND)
    version = check_version(str(args.get(VERSION)))
    spool_dir = Path(str(args.get(SPOOL_DIR) or tempfile.gettempdir()))
    if not spool_dir.is_dir():
        raise UsageError(f"--spool-dir {str(spool_dir)!r} is not a folder")
    secret = passphrase(args)
    key_path = _private_key(args)
    with server.open() as client, keyring_with(key_path, _gpg_binary(args), secret) as keyring:
        if keyring is None:
            log.warning("no --private-key: the encrypted stream is piped into the command as it is")
        else:
            keyring.check_passphrase(secret)
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
        )
    return ExitCode.OK


def cmd_download(args: Arguments) -> int:
    server = _connection(args)
    collection = _collection(args)
    target = args.flag("save_path")
    if not target:
        raise UsageError("missing --save-path")
    version = check_version(str(args.get(VERSION)))
    secret = passphrase(args)
    key_path = _private_key(args)
    with server.open() as client, keyring_with(key_path, _gpg_binary(args), secret) as keyring:
        if keyring is None:
            log.info("no --private-key: saving the encrypted file as stored")
        else:
            keyring.check_passphrase(secret)
        transfer.download(
            client, collection, version, Path(target), keyring, secret, progress=_progress(args)
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


COMMANDS: Mapping[str, Callable[[Arguments], int]] = {
    "make": cmd_make,
    "restore": cmd_restore,
    "download": cmd_download,
    "login": cmd_login,
    "versions": cmd_versions,
    "collections": cmd_collections,
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
