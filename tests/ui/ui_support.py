"""Helpers of the web console's browser tests (tests/ui): the world the console server is
started with, the accessibility check with the vendored axe-core, and the screenshots of
docs/console/.

The fixtures (the browser, the server, logged-in pages) are in ``tests/ui/conftest.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backup_repository.services.passwords import PasswordHasher
from support import KNOWN_PASSWORDS, ServerProcess, collection_doc

ROOT = Path(__file__).resolve().parents[2]
VENDOR = Path(__file__).resolve().parent / "vendor"
AXE_PATH = VENDOR / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "console"
# Set to 1 to write the screenshots of docs/console/ anew (a normal run never does).
UPDATE_SCREENSHOTS = os.environ.get("BR_UPDATE_SCREENSHOTS") == "1"
SCREENSHOT_WIDTH = 1200
# Long pages are cut here: the docs show what a page is, not all of its rows.
MAX_HEIGHT = 1300
SAMPLE = ROOT / "tests" / "fixtures" / "openpgp" / "public-key.gpg"
BASE = "/api/stable/repository/collection"

# The accounts of the console's world: name -> password.
PASSWORDS = {
    "admin": "admin-console-pass",
    "alice": "alice-console-pass",
    "alice$ci": "alice-ci-console-pass",
    "bob": "bob-console-pass",
}
# Impacts that fail the accessibility check (axe-core: minor, moderate, serious, critical).
FAILING_IMPACTS = frozenset({"serious", "critical"})


_CHEAP = PasswordHasher(1, time_cost=1, memory_cost=1024, parallelism=1)


def _hash(login: str) -> str:
    """A stored password that takes a millisecond to check (the reference's parameters
    take 64 MiB and a good part of a second here): the tests log in many times."""
    KNOWN_PASSWORDS.add(PASSWORDS[login])  # for the check that no server log holds it
    return _CHEAP.hash_sync(PASSWORDS[login])


def _user(name: str, roles: list[str], keys: dict[str, str] | None = None) -> dict[str, Any]:
    """``keys``: access key -> the collection it may upload to."""
    spec: dict[str, Any] = {"email": f"{name}@example.org", "password": _hash(name), "roles": roles}
    if keys:
        spec["accessKeys"] = [
            {
                "name": key,
                "password": _hash(f"{name}${key}"),
                "objects": [{"name": target, "type": "collection", "roles": ["backupUploader"]}],
            }
            for key, target in keys.items()
        ]
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupUser",
        "metadata": {"name": name},
        "spec": spec,
    }


def console_documents() -> list[dict[str, Any]]:
    """A small world: an administrator; alice, who uploads to ``db`` (also through her
    access key ``ci``) and reads ``files``; bob, who may see no collection; three
    collections of different strategies, windows and access control."""
    db = collection_doc(
        "db",
        acl=[{"name": "alice", "type": "user", "roles": ["backupUploader", "backupDownloader"]}],
    )
    db["spec"]["description"] = "PostgreSQL dumps of the shop"
    files = collection_doc(
        "files", acl=[{"name": "alice", "type": "user", "roles": ["backupDownloader"]}]
    )
    files["spec"].update(
        description="Uploaded files, weekly",
        strategyName="fifo-plus-older",
        strategySpec={"keepLastOlderNotMoreThan": "30d", "maxOlderCopies": 2},
        windows=[{"from": "0 1 * * 0", "duration": "3h"}],
    )
    mail = collection_doc("mail")
    mail["spec"].update(
        description="Mail server, grandfather-father-son",
        strategyName="gfs",
        strategySpec={"keepDaily": 7, "keepWeekly": 4, "keepMonthly": 6},
        maxBackupsCount=20,
    )
    return [
        _user("admin", ["systemAdmin"]),
        _user("alice", [], keys={"ci": "db"}),
        _user("bob", []),
        db,
        files,
        mail,
    ]


# A second file with an object the loader refuses, so that the configuration problems page
# has something to show (the rest of the configuration stays in use).
BROKEN_OBJECT = """\
apiVersion: backups.riotkit.org/v1alpha1
kind: BackupCollection
metadata:
  name: broken
spec:
  filenameTemplate: broken-${version}.tar.gz
  maxBackupsCount: 3
  maxOneVersionSize: lots
  maxCollectionSize: 5M
"""


@dataclass
class ConsoleWorld:
    """The running server of a test module and what it holds."""

    server: ServerProcess
    # Versions uploaded per collection at start.
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, login: str, **body: Any) -> str:
        """A token of the API's login (``body``: ``ttl``, ``operationsScope``, ...)."""
        response = httpx.post(
            f"{self.url}/api/stable/auth/login",
            json={"username": login, "password": PASSWORDS[login], **body},
            timeout=30,
        )
        response.raise_for_status()
        token: str = response.json()["data"]["token"]
        return token

    def upload(self, token: str, collection: str, data: bytes | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.url}{BASE}/{collection}/version",
            content=SAMPLE.read_bytes() if data is None else data,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )


class AccessibilityViolations(AssertionError):
    pass


def assert_accessible(page: Any, *, name: str = "") -> None:
    """Run axe-core on the page as it is now; fail on every violation of impact serious or
    critical, listing each rule, its impact, its help text and the elements.

    axe-core is evaluated through the DevTools protocol (``page.evaluate``), which the
    page's Content-Security-Policy does not apply to, so the console's CSP stays as
    strict as it is served (a ``<script>`` tag would be refused by ``script-src 'self'``,
    and ``bypass_csp`` would test a page the browser never shows)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE_PATH.read_text())
    violations = page.evaluate(
        """async () => {
            const result = await window.axe.run(document, {
                resultTypes: ['violations'],
                runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',
                                                'best-practice']},
            });
            return result.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary),
            }));
        }"""
    )
    failing = [v for v in violations if v["impact"] in FAILING_IMPACTS]
    if failing:
        lines = [f"{name or page.url}: {len(failing)} accessibility violation(s)"]
        for v in failing:
            lines.append(f"- {v['id']} ({v['impact']}): {v['help']}")
            lines += [f"    {node}" for node in v["nodes"][:5]]
        raise AccessibilityViolations("\n".join(lines))


def horizontal_overflow(page: Any) -> int:
    """How many pixels the page is wider than its viewport (0: no horizontal scrolling)."""
    width: int = page.evaluate(
        "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - window.innerWidth"
    )
    return max(width, 0)


def save_screenshot(page: Any, name: str) -> Path | None:
    """Write ``docs/console/<name>.png`` (1200 pixels wide, at most MAX_HEIGHT high) when
    BR_UPDATE_SCREENSHOTS=1; otherwise nothing (a normal run never rewrites the committed
    files). docs/console.md says how to make them smaller afterwards (optipng)."""
    if not UPDATE_SCREENSHOTS:
        return None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    height = min(page.evaluate("() => document.documentElement.scrollHeight"), MAX_HEIGHT)
    page.screenshot(
        path=str(target),
        full_page=True,
        clip={"x": 0, "y": 0, "width": SCREENSHOT_WIDTH, "height": height},
        animations="disabled",
        caret="hide",
    )
    return target
