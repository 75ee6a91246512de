"""The administration pages in a real browser: only a systemAdmin sees them (others get 403
and no link); the audit log's filters and pages; the configuration problems, the
readiness checks, the users and collections as loaded, without a password hash."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
from ui_support import ConsoleWorld, save_screenshot

Page = Any
ADMIN_PAGES = [
    "/ui/admin",
    "/ui/admin/audit",
    "/ui/admin/problems",
    "/ui/admin/readiness",
    "/ui/admin/users",
    "/ui/admin/collections",
]
# Failed logins made for the paging test (the console shows 50 events a page).
FAILED_LOGINS = 53


def test_only_a_system_administrator_sees_the_administration(
    logged_in_page: Callable[..., Page],
) -> None:
    # alice, and her access key (an access key never carries a user-wide right).
    for login, paths in (("alice", ADMIN_PAGES), ("alice$ci", ADMIN_PAGES[:1])):
        page = logged_in_page(login)
        assert page.get_by_role("navigation", name="Main").get_by_role("link").count() >= 1
        assert page.get_by_role("link", name="Administration").count() == 0
        for path in paths:
            response = page.goto(path)
            assert response is not None
            assert response.status == 403, path
            assert "systemAdmin" in page.get_by_role("alert").inner_text()
    admin = logged_in_page("admin")
    admin.get_by_role("link", name="Administration").click()
    admin.get_by_role("heading", name="Administration", level=1).wait_for()
    save_screenshot(admin, "admin")
    for name in ("Audit log", "Configuration problems", "Readiness", "Users", "Collections"):
        admin.get_by_role("navigation", name="Administration").get_by_role(
            "link", name=name
        ).click()
        admin.get_by_role("heading", name=name, level=1).wait_for()
        assert (
            admin.get_by_role("navigation", name="Administration")
            .get_by_role("link", name=name)
            .get_attribute("aria-current")
            == "page"
        )


def test_audit_log_filters_and_pages(
    logged_in_page: Callable[..., Page], console_world: ConsoleWorld
) -> None:
    with httpx.Client(base_url=console_world.url, timeout=30) as client:
        for _ in range(FAILED_LOGINS):
            answer = client.post(
                "/api/stable/auth/login", json={"username": "bob", "password": "wrong"}
            )
            assert answer.status_code == 401
    page = logged_in_page("admin")
    page.goto("/ui/admin/audit")
    table = page.get_by_role("region", name=re.compile("events"))
    assert table.get_by_role("row").count() > 2

    page.get_by_label("Event type").select_option("upload")
    page.get_by_role("button", name="Show").click()
    save_screenshot(page, "admin-audit")
    rows = page.locator("tbody tr")
    events = rows.locator("td:nth-child(2)").all_inner_texts()
    assert events
    assert set(events) == {"upload"}, events
    assert "db" in page.locator("tbody").inner_text()
    assert "action=upload" in page.url

    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Event type").select_option("login")
    page.get_by_label("Outcome").select_option("failure")
    page.get_by_label("User").fill("bob")
    page.get_by_role("button", name="Show").click()
    assert rows.count() == 50
    first_page = rows.locator("td:first-child").all_inner_texts()
    page.get_by_role("link", name="Older events").click()
    assert rows.count() == FAILED_LOGINS - 50
    assert set(rows.locator("td:nth-child(4)").all_inner_texts()) == {"bob"}
    assert page.get_by_role("link", name="Older events").count() == 0
    # The filters stay on every page.
    assert page.get_by_label("User").input_value() == "bob"
    page.get_by_role("link", name="Newest events").click()
    assert rows.locator("td:first-child").all_inner_texts() == first_page

    # A time range: from an hour ahead there is nothing yet.
    page.get_by_label("From").fill("2999-01-01T00:00")
    page.get_by_role("button", name="Show").click()
    assert "No events match these filters" in page.locator("tbody").inner_text()

    # A filter that cannot be read is 400 with what to write instead.
    response = page.goto("/ui/admin/audit?since=yesterday&user=bob")
    assert response is not None
    assert response.status == 400
    assert "2026-12-05T10:00" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("User").input_value() == "bob"


def test_configuration_problems_readiness_users_and_collections(
    logged_in_page: Callable[..., Page],
) -> None:
    page = logged_in_page("admin")
    page.goto("/ui/admin/problems")
    row = page.locator("tbody tr").first
    cells = row.locator("td").all_inner_texts()
    assert cells[0].endswith("broken.yaml")
    assert cells[1:4] == ["BackupCollection", "broken", "spec.maxOneVersionSize"]
    assert "invalid size 'lots'" in cells[4]
    save_screenshot(page, "admin-problems")

    page.goto("/ui/admin/readiness")
    checks = page.locator("ul.checks > li")
    assert checks.count() == 3
    text = page.inner_text("main")
    for name in ("DbValidator", "StorageAvailabilityValidator", "ConfigurationProviderValidator"):
        assert name in text
    assert "Ready: every check passed" in text
    assert "broken.yaml" in text  # the configuration check lists the object left out
    save_screenshot(page, "admin-readiness")

    page.goto("/ui/admin/users")
    html = page.content()
    assert "JGFyZ29u" not in html
    assert "argon2" not in html
    alice = page.locator("tbody tr", has=page.locator("th", has_text="alice"))
    assert "alice$ci" in alice.inner_text()
    assert "backupUploader on collection db" in alice.inner_text()
    admin = page.locator("tbody tr", has=page.locator("th", has_text="admin"))
    assert "systemAdmin" in admin.inner_text()
    save_screenshot(page, "admin-users")
    page.get_by_role("link", name="Audit events of alice").click()
    assert page.get_by_label("User").input_value() == "alice"
    users = set(page.locator("tbody tr td:nth-child(4)").all_inner_texts())
    assert "alice" in users
    assert users <= {"alice", "alice$ci"}

    page.goto("/ui/admin/collections")
    files = page.locator("tbody tr", has=page.locator("th", has_text="files"))
    text = files.inner_text()
    assert "fifo-plus-older" in text
    assert "maxOlderCopies: 2" in text
    assert "0 1 * * 0 for 3h" in text
    assert "alice: backupDownloader" in text
    mail = page.locator("tbody tr", has=page.locator("th", has_text="mail"))
    assert "keepWeekly: 4" in mail.inner_text()
    assert "broken" not in page.locator("tbody").inner_text()
    save_screenshot(page, "admin-collections")
    page.get_by_role("link", name="Audit events of db").click()
    assert page.get_by_label("Collection").input_value() == "db"
    assert set(page.locator("tbody tr td:nth-child(5)").all_inner_texts()) == {"db"}
