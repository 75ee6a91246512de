"""The user's backup and restore commands, run by bash with ``errexit`` and ``pipefail``
(as the reference client runs them), and stopped together with their children on abort."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Any

from backup_repository.client.errors import UsageError

log = logging.getLogger(__name__)

GRACE_S = 5.0  # between SIGTERM and SIGKILL


def interactive() -> bool:
    """Whether a person runs us on a terminal (then the command may prompt on it)."""
    return sys.stdin.isatty() or sys.stderr.isatty()


@dataclass
class Shell:
    """A running ``bash -eo pipefail -c COMMAND``."""

    process: subprocess.Popen[bytes]
    own_group: bool

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self) -> int:
        return self.process.wait()

    def stop(self) -> None:
        """End the command and, where it runs in a process group of its own, everything
        it started (``pg_dump | gzip`` ...). Harmless when it has already exited."""
        stop_process(self.process, group=self.own_group)


def start_shell(command: str, *, stdin: Any = None, stdout: Any = None) -> Shell:
    """Start ``command`` under bash. Unattended (cron, Kubernetes) it gets a process group
    of its own so that an abort ends its whole pipeline; on a terminal it stays in ours,
    so that it can still prompt (psql asking for a password) and Ctrl-C reaches it."""
    bash = shutil.which("bash")
    if bash is None:
        raise UsageError("bash is required to run --cmd, and it is not installed")
    own_group = not interactive()
    log.debug("running: bash -eo pipefail -c %s", command)
    process = subprocess.Popen(  # noqa: S603 - the user's own command, by design
        [bash, "-eo", "pipefail", "-c", command],
        stdin=stdin,
        stdout=stdout,
        process_group=0 if own_group else None,
    )
    return Shell(process, own_group)


def stop_process(process: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after :data:`GRACE_S`; with ``group`` the whole process group
    that ``process`` leads (it may outlive its leader)."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(process.pid, sig)
            elif process.poll() is None:
                process.send_signal(sig)

    if process.poll() is not None and not group:
        return
    send(signal.SIGTERM)
    try:
        process.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
    if group:
        send(signal.SIGKILL)  # stragglers of the pipeline that ignored SIGTERM


def close_quietly(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()
