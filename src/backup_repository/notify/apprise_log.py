"""Apprise's logger kept out of the server's log, set before Apprise is first imported:
its import already logs (the locale it picked, at DEBUG), and its delivery lines name the
channels' URLs and tokens. Kept apart from ``notify/apprise.py`` so that the setting can
be made without importing Apprise."""

from __future__ import annotations

import logging
from typing import Final

APPRISE_LOGGER: Final = "apprise"


def quiet_apprise_logging() -> None:
    """Keep Apprise's log lines (which name URLs and tokens) out of the server's log. Its
    per-call capture, which the sender reads, still sees WARNING and above."""
    log = logging.getLogger(APPRISE_LOGGER)
    log.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        # Without a handler, Python would print WARNING lines to stderr itself.
        log.addHandler(logging.NullHandler())
    log.setLevel(logging.WARNING)
