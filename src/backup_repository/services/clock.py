"""The server's clock: UTC now, or, as a test facility only, UTC now plus an offset that a
test writes into a file (docs/notifications.md, "The test clock").

The offset clock lets end-to-end tests move a real server process hours ahead (a backup
window closes, a reminder falls due, a retry becomes due) without waiting. It is refused
unless explicitly enabled (``BR_TEST_CLOCK_FILE`` together with
``BR_ENABLE_TEST_FACILITIES=1``) and announced loudly in the log at start-up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class OffsetClock:
    """``datetime.now(UTC)`` plus the number of seconds written in ``path`` (a float; an
    absent, empty or unreadable file is 0). The file is read again when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._offset = timedelta(0)

    @property
    def path(self) -> Path:
        return self._path

    def offset(self) -> timedelta:
        try:
            info = os.stat(self._path)
        except OSError:
            self._stamp, self._offset = None, timedelta(0)
            return self._offset
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            try:
                text = self._path.read_text().strip()
                self._offset = timedelta(seconds=float(text or "0"))
            except (OSError, ValueError, OverflowError):
                logger.warning("test clock: %s does not hold a number of seconds", self._path)
                self._offset = timedelta(0)
            self._stamp = stamp
        return self._offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset()


def clock_for(test_clock_file: Path | None) -> Clock:
    """The clock of a server: the system clock, or the offset clock of the test facility
    (logged at warning level, so nobody runs a production server with it unnoticed)."""
    if test_clock_file is None:
        return system_clock
    logger.warning(
        "TEST FACILITY: the server's clock is real time plus the seconds in %s "
        "(BR_TEST_CLOCK_FILE); never run like this in production",
        test_clock_file,
    )
    return OffsetClock(test_clock_file)
