"""The end-of-run check of the logs of every server the tests started (conftest.py's
``pytest_sessionfinish``): none may hold the JWT secret, a password the tests configured,
or anything shaped like a token. Cheap: one pass over each log file."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# A signed JWT (header and claims are base64url JSON objects, so both start with "eyJ").
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+")
# Shorter passwords ("x", "pw") would match ordinary text.
MIN_PASSWORD_LENGTH = 8


def findings(text: str, secrets: dict[str, str]) -> list[str]:
    """What ``text`` holds that it must not: the names of the ``secrets`` found in it, and
    any token-shaped string."""
    found = [name for name, secret in secrets.items() if secret and secret in text]
    found += [f"a token ({match[:12]}...)" for match in JWT_SHAPED.findall(text)[:3]]
    return found


def scan_logs(logs: Iterable[Path], jwt_secret: str, passwords: Iterable[str]) -> list[str]:
    """One line per log file that holds a secret, naming the file and what it holds."""
    secrets = {"the JWT secret": jwt_secret}
    secrets |= {
        f"the password {password[:3]}...": password
        for password in passwords
        if len(password) >= MIN_PASSWORD_LENGTH
    }
    problems = []
    for path in dict.fromkeys(logs):
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:  # its test's temporary folder is gone already
            continue
        found = findings(text, secrets)
        if found:
            problems.append(f"{path}: {', '.join(found)}")
    return problems
