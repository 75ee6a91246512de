"""What the ``backup-maker`` command line was given: each setting with its flag, its
``BM_*`` environment variable and its default, and the checked values read from them.

A flag wins over its environment variable, which wins over the default; an empty
variable counts as unset (as in the reference)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_repository.client.errors import UsageError

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
# Trusted uploaders (docs/client.md, "Signed uploads").
SIGN_KEY = Setting("sign_key", "BM_SIGN_KEY")
TRUSTED_KEY = Setting("trusted_key", "BM_TRUSTED_KEY_PATH")


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


def log_level(value: str) -> int:
    text = value.strip().lower()
    if text.isdigit() and int(text) < len(_NUMERIC_LEVELS):
        text = _NUMERIC_LEVELS[int(text)]
    if text not in LOG_LEVELS:
        raise UsageError(f"unknown --log-level {value!r}: use one of {', '.join(_NUMERIC_LEVELS)}")
    return LOG_LEVELS[text]


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


def trusted_keys(args: Arguments) -> list[Path] | None:
    """The key files ``--verify-signature`` checks against ([] for the user's own
    keyring), or None when no signature check was asked for."""
    given = args.flag("trusted_key")
    env = args.get(TRUSTED_KEY) or ""
    paths = list(given) if given else [p for p in str(env).split(",") if p.strip()]
    if not args.flag("verify_signature"):
        if paths and given:
            raise UsageError("--trusted-key needs --verify-signature")
        return None
    return [Path(p.strip()) for p in paths]


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
