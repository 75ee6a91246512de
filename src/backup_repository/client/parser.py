"""The ``backup-maker`` argument parser: the reference client's subcommands and flags
(make, restore, download), plus login, versions, collections, retention, protect,
unprotect and delete. Global flags are
accepted before or after the subcommand, as the reference accepts them."""

from __future__ import annotations

import argparse

from backup_repository.client.arguments import DEFAULT_TIMEOUT_S

PROG = "backup-maker"


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
        help=f"passphrase ({purpose}); prefer the variable or --passphrase-file, "
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


def _decryption_options(parser: argparse.ArgumentParser, key_help: str) -> None:
    """The options of the subcommands that fetch and decrypt a version."""
    parser.add_argument(
        "-p", "--private-key", metavar="PATH", help=key_help + _env("BM_PRIVATE_KEY_PATH")
    )
    _passphrase_options(
        parser,
        "of the private key; or, without --private-key, of a version encrypted with "
        "gpg --symmetric",
    )
    _version_option(parser)
    _recipient_option(parser, "accepted for compatibility; decryption does not need it")
    parser.add_argument(
        "--verify-signature", action="store_true",
        help="verify the trusted uploader's signature the server keeps with the version "
        "before anything is decrypted or kept; fails if there is none",
    )  # fmt: skip
    parser.add_argument(
        "--trusted-key", action="append", metavar="PATH",
        help="public key file of a trusted uploader for --verify-signature; repeat for "
        "several (default: every key in your own GnuPG keyring)" + _env("BM_TRUSTED_KEY_PATH"),
    )  # fmt: skip


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
    _passphrase_options(make, "of the key: accepted for compatibility; encrypting needs none")
    make.add_argument(
        "--armor", action="store_true", help="upload ASCII-armored OpenPGP (default: binary)"
    )
    make.add_argument(
        "--compress-level", metavar="0-9",
        help="gpg's compression: 0 for none (output that is already compressed: tar -z, "
        "pg_dump -Fc), 9 for the smallest; default gpg's own (6)" + _env("BM_COMPRESS_LEVEL"),
    )  # fmt: skip
    make.add_argument(
        "--sign-key", metavar="KEY",
        help="sign the encrypted backup with this key of your GnuPG keyring (fingerprint or "
        "user id), for a collection with trusted uploaders; the ciphertext is spooled in "
        "--spool-dir first (it takes its size on disk)" + _env("BM_SIGN_KEY"),
    )  # fmt: skip
    make.add_argument(
        "--spool-dir", metavar="PATH",
        help="folder for the signed upload's spool file (default: the system's temporary "
        "folder)" + _env("BM_SPOOL_DIR"),
    )  # fmt: skip

    restore = add(
        "restore",
        "download a version, decrypt it and pipe it into a command",
        "Downloads --version, checks it against the SHA-256 the server announces, decrypts "
        "it with the private key of --private-key (or, without one, with --passphrase for a "
        "version encrypted with gpg --symmetric) and pipes it into --cmd. By default the "
        "download is verified before anything is decrypted: the ciphertext (never the "
        "plaintext) is kept in an anonymous temporary file in --spool-dir meanwhile.",
    )
    restore.add_argument(
        "-c", "--cmd", metavar="COMMAND",
        help="shell command that reads the backup on its standard input" + _env("BM_CMD"),
    )  # fmt: skip
    _decryption_options(
        restore,
        "private key file to decrypt with; without it and without a passphrase the "
        "encrypted stream is piped into the command as it is",
    )
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
        "Downloads --version into --save-path: decrypted with --private-key (or, without "
        "one, with --passphrase for a version encrypted with gpg --symmetric), or the "
        "encrypted file as stored without either. The file is written under a temporary name "
        "beside the target and renamed only when the download verified and gpg succeeded.",
    )
    download.add_argument("--save-path", metavar="PATH", help="file to write (mode 0600)")
    _decryption_options(
        download,
        "private key file; without it and without a passphrase the encrypted file is saved",
    )

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

    retention = add(
        "retention",
        "show what the rotation strategy keeps now and after the next upload",
        "Shows every version of the collection, newest first, with the rule of its rotation "
        "strategy that keeps it (or that it is rotated out) now, and after one more upload "
        "made now; and how large that upload may be. Nothing is changed. Needs "
        "collectionManager on the collection (or systemAdmin).",
    )
    retention.add_argument(
        "collection", nargs="?", help="the collection (default: --collection-id)"
    )
    retention.add_argument("--json", action="store_true", help="print the server's data as JSON")

    for name, help_text, description in (
        (
            "protect",
            "protect a version: rotation never removes it, and it cannot be deleted",
            "Protects VERSION of --collection-id: the rotation strategy leaves it alone (it "
            "still counts against maxBackupsCount and maxCollectionSize) and it cannot be "
            "deleted until unprotected. Needs collectionManager on the collection (or "
            "systemAdmin).",
        ),
        (
            "unprotect",
            "unprotect a version: rotation may remove it again",
            "Unprotects VERSION of --collection-id; the next upload's rotation may remove it. "
            "Needs collectionManager on the collection (or systemAdmin).",
        ),
    ):
        protection = add(name, help_text, description)
        protection.add_argument("version", metavar="VERSION", help="a number, vN or latest")
        protection.add_argument(
            "--json", action="store_true", help="print the server's data as JSON"
        )

    delete = add(
        "delete",
        "delete a version (collection managers only; never a protected one)",
        "Deletes VERSION of --collection-id: it is no longer listed or downloadable and its "
        "file is deleted from the storage; its number is never given again. --reason is kept "
        "in the audit log. Needs collectionManager on the collection (or systemAdmin); a "
        "protected version must be unprotected first.",
    )
    delete.add_argument("version", metavar="VERSION", help="a number, vN or latest")
    delete.add_argument("--reason", required=True, help="why (kept in the audit log)")
    delete.add_argument("--json", action="store_true", help="print the server's data as JSON")
    return parser
