"""The dashboard and a collection's page in Chromium: logging in and out, the figures
against the API's, a collection whose window closed without a backup, the live filter and
the download of a version whose SHA-256 is the recorded one."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect
from ui_support import BASE, ConsoleWorld

from backup_repository.domain.identity import BackupWindow
from backup_repository.domain.windows import is_window_open

# files: weekly on Sunday at 01:00 UTC for three hours (ui_support.console_documents).
FILES_WINDOW = BackupWindow("0 1 * * 0", timedelta(hours=3))


def row(page: Page, collection: str) -> dict[str, str]:
    found: dict[str, str] = page.locator(f'tr[data-collection="{collection}"]').evaluate(
        "row => Object.assign({}, row.dataset)"
    )
    return found


def test_log_in_see_the_figures_and_log_out(
    logged_in_page: Callable[..., Page], console_world: ConsoleWorld
) -> None:
    page = logged_in_page("alice")
    expect(page).to_have_url(re.compile(r"/ui/$"))
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    token = console_world.token("alice")
    auth = {"Authorization": f"Bearer {token}"}
    listed = httpx.get(f"{console_world.url}{BASE}", headers=auth, timeout=30).json()
    collections = {c["id"]: c["usage"] for c in listed["data"]["collections"]}
    shown = page.locator("tr[data-collection]").evaluate_all(
        "rows => rows.map(r => r.dataset.collection)"
    )
    assert sorted(shown) == sorted(collections) == ["db", "files"]
    for name, usage in collections.items():
        data = row(page, name)
        assert int(data["versions"]) == usage["versions"]
        assert int(data["bytesUsed"]) == usage["bytesUsed"]
        assert int(data["maxVersions"]) == usage["maxBackupsCount"]
        assert int(data["maxBytes"]) == usage["maxCollectionSize"]
        text = page.locator(f'tr[data-collection="{name}"]').inner_text()
        assert f"{usage['versions']} of {usage['maxBackupsCount']}" in text
    # The size chart is drawn (inline SVG with a text alternative).
    expect(page.locator('tr[data-collection="db"] svg[role="img"]')).to_have_attribute(
        "aria-label", re.compile(r"Sizes of the last 3 versions")
    )
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/ui/login\?logged_out=1$"))
    expect(page.get_by_text("You are logged out.")).to_be_visible()
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui/$"))


def test_a_collection_whose_window_closed_without_a_backup_is_late(
    logged_in_page: Callable[..., Page],
) -> None:
    page = logged_in_page("admin")
    # files got its version when the test server started, outside its weekly window (unless
    # this runs on a Sunday between 01:00 and 04:00 UTC, when the window is open).
    expected = "ok" if is_window_open([FILES_WINDOW], datetime.now(UTC)) else "late"
    assert row(page, "files")["status"] == expected
    if expected == "late":
        cells = page.locator('tr[data-collection="files"]')
        expect(cells.locator(".status")).to_have_text("late")
        expect(cells).to_contain_text("no version was uploaded in the most recent backup window")
    # The live filter (script) hides what does not match as one types.
    page.get_by_label("Filter by name").fill("fil")
    expect(page.locator('tr[data-collection="files"]')).to_be_visible()
    expect(page.locator('tr[data-collection="db"]')).to_be_hidden()
    expect(page.locator("#filter-count")).to_have_text("1 collection")


def test_download_of_a_version_has_the_recorded_sha256(
    logged_in_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = logged_in_page("alice")
    page.get_by_role("link", name="db", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile(r"^db"))).to_be_visible()
    first = page.locator("tr[data-version]").first
    recorded = first.get_attribute("data-sha256")
    with page.expect_download() as download:
        first.get_by_role("link", name=re.compile("Download")).click()
    saved = tmp_path / "version.gpg"
    download.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == recorded
    # The commands are there to copy, and a copy button joins them when script runs.
    expect(page.locator("pre#command-1")).to_contain_text("backup-maker make -i db")
    expect(page.get_by_role("button", name=re.compile("^Copy"))).to_have_count(4)
