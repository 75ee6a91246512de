"""What every page of the console must hold to, in a real browser: the Content-Security-
Policy header and no violation of it; no serious or critical accessibility violation
(axe-core) in the light and the dark colour scheme; no horizontal scrolling of the page on
a phone; the login form usable with the keyboard alone; form posts without their CSRF
token refused. With BR_UPDATE_SCREENSHOTS=1 the pages are also photographed for
docs/console/."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ui_support import (
    PASSWORDS,
    ConsoleWorld,
    assert_accessible,
    horizontal_overflow,
    save_screenshot,
)

from backup_repository.http.ui.headers import CONTENT_SECURITY_POLICY

Page = Any
# Every page of the console once logged in (as admin, who sees them all), with the name of
# its screenshot in docs/console/.
PAGES = [
    ("/ui/", "dashboard"),
    ("/ui/collections/db", "collection"),
    ("/ui/tokens", None),
    ("/ui/admin", None),
    ("/ui/admin/audit", None),
    ("/ui/admin/problems", None),
    ("/ui/admin/readiness", None),
    ("/ui/admin/users", None),
    ("/ui/admin/collections", None),
]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def csp_violations(page: Page) -> list[str]:
    """Collects the browser's reports of anything the page's CSP blocked."""
    found: list[str] = []
    page.on(
        "console",
        lambda message: (
            found.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return found


def log_in_with_keyboard(page: Page, login: str) -> None:
    page.goto("/ui/login")
    # The user name field has the focus when the page opens.
    assert page.evaluate("() => document.activeElement.id") == "username"
    page.keyboard.type(login)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "password"
    page.keyboard.type(PASSWORDS[login])
    with page.expect_navigation():
        page.keyboard.press("Enter")


def every_page(page: Page) -> Iterator[tuple[str, str | None, Any]]:
    """Visit the login page, log in as admin and visit every page, the one a new token is
    shown on included; yields (path, screenshot name, response) while on each."""
    yield "/ui/login", "login", page.goto("/ui/login?next=/ui/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORDS["admin"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ui/$"))
    for path, screenshot in PAGES:
        yield path, screenshot, page.goto(path)
    page.goto("/ui/tokens")
    page.get_by_role("checkbox", name=re.compile("Download backupDownloader files")).check()
    page.get_by_label("Your password").fill(PASSWORDS["admin"])
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create token").click()
    # The answer's headers come before the page is shown with its style sheets.
    page.get_by_role("heading", name="Token created").wait_for()
    page.wait_for_load_state("load")
    yield "/ui/tokens (token created)", None, answer.value


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_is_accessible_and_keeps_its_csp(
    new_page: Callable[..., Page], scheme: str
) -> None:
    page = new_page(color_scheme=scheme)
    blocked = csp_violations(page)
    for path, screenshot, response in every_page(page):
        assert response is not None, path
        assert response.status < 500, path
        assert response.headers.get("content-security-policy") == CONTENT_SECURITY_POLICY, path
        assert page.evaluate("() => matchMedia('(prefers-color-scheme: dark)').matches") == (
            scheme == "dark"
        )
        assert_accessible(page, name=f"{path} ({scheme})")
        if screenshot and (scheme == "light" or screenshot == "dashboard"):
            save_screenshot(page, screenshot if scheme == "light" else f"{screenshot}-dark")
    assert not blocked, blocked
    # The policy itself: scripts and styles only from the console's own files.
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_static_files_and_errors_carry_the_csp_too(
    new_page: Callable[..., Page], console_world: ConsoleWorld
) -> None:
    page = new_page()
    for path in (
        "/ui/static/console.css",
        "/ui/static/pages.css",
        "/ui/login",
        "/ui/tokens",  # a redirect to the login page
        "/ui/no-such-page",
    ):
        response = page.request.get(path, max_redirects=0)
        assert response.headers.get("content-security-policy") == CONTENT_SECURITY_POLICY, path


def test_no_page_scrolls_sideways_on_a_phone(new_page: Callable[..., Page]) -> None:
    page = new_page(**PHONE)
    for path, _, _ in every_page(page):
        assert horizontal_overflow(page) == 0, f"{path} is wider than a phone's screen"


def test_login_form_works_with_the_keyboard_alone(new_page: Callable[..., Page]) -> None:
    page = new_page()
    log_in_with_keyboard(page, "alice")
    assert page.url.endswith("/ui/")
    assert page.get_by_role("heading", level=1).inner_text() == "Dashboard"
    # The first Tab of a page reaches the skip link, which leads to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"


def test_a_form_post_without_its_csrf_token_is_refused(
    logged_in_page: Callable[..., Page],
) -> None:
    page = logged_in_page("bob")
    other = logged_in_page("bob")
    page.goto("/ui/tokens")
    rows = page.locator("tbody tr:not(.current)", has=page.get_by_text("web console"))
    victim = rows.first.locator("input[name=session_id]").input_value()
    csrf = page.locator("input[name=csrf_token]").first.input_value()

    for form in (
        {"session_id": victim},
        {"session_id": victim, "csrf_token": "0" * 64},
        {"session_id": victim, "csrf_token": ""},
    ):
        response = page.request.post("/ui/tokens/revoke", form=form, max_redirects=0)
        assert response.status == 403, form
        assert "security token" in response.text()
    response = page.request.post(
        "/ui/tokens",
        form={"scope": "backupUploader:db", "password": PASSWORDS["bob"]},
        max_redirects=0,
    )
    assert response.status == 403
    response = page.request.post("/ui/logout", form={}, max_redirects=0)
    assert response.status == 403
    # Nothing happened: both sessions still work.
    for browser_page in (page, other):
        browser_page.goto("/ui/tokens")
        assert browser_page.url.endswith("/ui/tokens")
    # With its token, the same post is accepted.
    response = page.request.post(
        "/ui/tokens/revoke", form={"session_id": victim, "csrf_token": csrf}, max_redirects=0
    )
    assert response.status == 303
    other.goto("/ui/tokens")
    assert "/ui/login" in other.url
