"""Errors of the client, each with the exit status it ends the program with."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit statuses of ``backup-maker`` (documented in docs/client.md)."""

    OK = 0
    FAILURE = 1  # anything not covered below (a local file cannot be written, ...)
    USAGE = 2  # bad or missing flags / environment variables, unreadable key file
    COMMAND_FAILED = 3  # the backup or restore command failed
    GPG_FAILED = 4  # gpg failed: bad key, wrong passphrase, damaged data
    SERVER = 5  # the server refused the request, or it could not be reached
    INTEGRITY = 6  # a SHA-256 did not match
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM


class ClientError(Exception):
    """A failure reported to the user as one clear line, without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ClientError):
    exit_code = ExitCode.USAGE


class CommandFailed(ClientError):
    exit_code = ExitCode.COMMAND_FAILED


class GpgFailed(ClientError):
    exit_code = ExitCode.GPG_FAILED


class ServerError(ClientError):
    """The server answered with an error, or could not be reached (``status`` None)."""

    exit_code = ExitCode.SERVER

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class IntegrityError(ClientError):
    exit_code = ExitCode.INTEGRITY


class Interrupted(ClientError):
    """A signal asked the program to stop; raised from the signal handler."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code
