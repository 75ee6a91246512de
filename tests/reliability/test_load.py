"""Load (issue 4, item 5): ``bench/load.py`` run as a separate process against the real
server, and its verdict and JSON figures checked.

The script starts the server, drives it from a second process with concurrent uploads,
downloads, listings, logins and login bursts, samples the server's RSS every 100 ms and
exits non-zero on any unintended answer or broken check; see bench/README.md and
docs/reliability.md ("Load"). The long run is marked ``slow``; a few seconds of the same mix
run in ``make test``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpg_fixtures import require_gpg

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "load.py"
# The operations every run must have exercised (a mix that silently lost one would pass).
EXPECTED_OPERATIONS = {
    "upload",
    "upload-form",
    "upload-over-quota",
    "download-number",
    "download-latest",
    "download-range",
    "download-rotating",
    "list-versions",
    "list-collections",
    "login",
    "login-burst",
    "health-rate-limited",
}


def run_load(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    require_gpg()
    figures_path = tmp_path / "load.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(figures_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    output = result.stdout[-6000:] + result.stderr[-4000:]
    assert result.returncode == 0, f"bench/load.py exited {result.returncode}:\n{output}"
    figures: dict[str, Any] = json.loads(figures_path.read_text())
    return figures


def assert_sound(figures: dict[str, Any]) -> None:
    failed = [c for c in figures["checks"] if not c["passed"]]
    assert not failed, failed
    assert figures["unintended"] == 0, figures["unintended_examples"]
    operations = figures["operations"]
    assert set(operations) >= EXPECTED_OPERATIONS, sorted(operations)
    assert all(op["unintended"] == 0 for op in operations.values()), operations
    # No 5xx and no transport error (those are named, not numbered) in the figures either.
    for name, op in operations.items():
        assert not any(s.startswith("5") for s in op["statuses"]), (name, op["statuses"])
        assert all(s.isdigit() for s in op["statuses"]), (name, op["statuses"])
    assert "429" in operations["health-rate-limited"]["statuses"]
    rss = figures["rss"]
    assert 0 < rss["idle"] <= rss["peak"] <= rss["bound"], rss
    assert rss["samples"] > 0


def test_load_smoke(tmp_path: Path) -> None:
    """A few seconds of the whole mix, with one smaller login burst."""
    figures = run_load(tmp_path, "--duration", "3", "--burst", "8", timeout=240)
    assert_sound(figures)


@pytest.mark.slow
def test_load_sustained(tmp_path: Path) -> None:
    """Twenty seconds of the mix with login bursts of 32: zero unintended answers, and the
    server's RSS within idle + 64 MiB x --password-hash-concurrency + margin."""
    figures = run_load(tmp_path, "--duration", "20", "--burst-every", "8", timeout=420)
    assert_sound(figures)
    assert figures["login_bursts"]["count"] >= 2
    assert figures["operations"]["login-burst"]["requests"] >= 64
    # Uploads kept going and some of them collided on purpose.
    uploads = figures["operations"]["upload"]["statuses"]
    assert int(uploads.get("200", 0)) >= 10, uploads
    assert int(uploads.get("409", 0)) >= 1, uploads
