"""Transfer progress (bytes, rate) on a terminal; nothing at all when stderr is not one
(cron mails and container logs stay clean)."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)


class Reporter(Protocol):
    """One phase of a transfer: ``with reporter.phase("uploading", total) as advance: ...``."""

    def phase(self, description: str, total: int | None = None) -> Phase: ...


class Phase(Protocol):
    def __enter__(self) -> Phase: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def advance(self, count: int) -> None: ...


class _NullPhase:
    def __enter__(self) -> _NullPhase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def advance(self, count: int) -> None:
        return None


class NullReporter:
    """No output."""

    def phase(self, description: str, total: int | None = None) -> Phase:
        return _NullPhase()


class _RichPhase:
    def __init__(self, description: str, total: int | None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(description, total=total)
        self._lock = threading.Lock()

    def __enter__(self) -> _RichPhase:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def advance(self, count: int) -> None:
        # Called from the transfer thread as well as the main one.
        with self._lock:
            self._progress.advance(self._task, count)


class RichReporter:
    """A progress bar on stderr, one per phase."""

    def phase(self, description: str, total: int | None = None) -> Phase:
        return _RichPhase(description, total)


def reporter(enabled: bool | None = None) -> Reporter:
    """A rich reporter when ``enabled`` (default: when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return RichReporter() if enabled else NullReporter()
