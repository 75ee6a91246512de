"""The notification flags and the test clock (a test facility refused unless enabled on
purpose)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_repository.cli.server import build_settings, main
from backup_repository.services.clock import OffsetClock, clock_for, system_clock
from backup_repository.settings import SettingsError


def options(*args: str, **overrides: object) -> dict[str, object]:
    """What click hands to ``main`` for ``args`` (defaults and environment included)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("BR_")}
    for name in env:
        os.environ.pop(name)
    try:
        ctx = main.make_context("backup-repository", ["-s", "x" * 32, *args])
    finally:
        os.environ.update(env)
    return {**ctx.params, **overrides}


def test_notification_defaults_and_zero_interval() -> None:
    settings = build_settings(options())
    assert settings.notify_interval == timedelta(seconds=60)
    assert settings.notify_max_age == timedelta(hours=24)
    assert settings.notify_dispatch_interval == timedelta(seconds=2)
    assert settings.test_clock_file is None
    assert build_settings(options("--notify-interval=0")).notify_interval is None


def test_the_test_clock_needs_the_test_facilities(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    with pytest.raises(SettingsError, match="BR_ENABLE_TEST_FACILITIES=1"):
        build_settings(options(test_clock_file=str(path)))
    settings = build_settings(options(test_clock_file=str(path), enable_test_facilities=True))
    assert settings.test_clock_file == path


def test_offset_clock_follows_its_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "offset"
    assert clock_for(None) is system_clock
    clock = clock_for(path)
    assert isinstance(clock, OffsetClock)
    assert "TEST FACILITY" in caplog.text
    # No file yet: real time.
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=1)
    path.write_text("3600\n")
    assert abs(clock() - datetime.now(UTC) - timedelta(hours=1)) < timedelta(seconds=1)
    path.write_text("-86400.5")
    # A rewrite within the same timestamp tick is still seen (the size changed too).
    os.utime(path, ns=(0, 0))
    assert abs(clock() - datetime.now(UTC) + timedelta(days=1)) < timedelta(seconds=2)
    path.write_text("soon")
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=1)
