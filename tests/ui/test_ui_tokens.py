"""The tokens page in a real browser: a single-use token made in the console uploads once
with curl (a real process against the server) and is then listed as used; a scoped token
can do what it was given and nothing else; revoking another session and the current one;
a wrong password keeps the form."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from typing import Any

from ui_support import BASE, SAMPLE, ConsoleWorld, save_screenshot

Page = Any


def curl(*args: str) -> int:
    """Run curl and return the HTTP status it got."""
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return int(result.stdout or 0)


def shown_token(page: Page) -> str:
    token = page.locator("#token-value").inner_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token), token
    return token


def session_row(page: Page, short_id: str) -> Any:
    return page.locator("tbody tr", has=page.locator(f"code:text-is('{short_id}')"))


def test_single_use_token_uploads_once_with_curl_and_is_listed_as_used(
    logged_in_page: Callable[..., Page], console_world: ConsoleWorld
) -> None:
    page = logged_in_page("alice")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Single-use upload").select_option("db")
    page.get_by_label("Lifetime").select_option(label="1 hour")
    page.get_by_label("What it is for").fill("nightly CI upload")
    page.get_by_label("Your password").fill("alice-console-pass")
    save_screenshot(page, "tokens")
    page.get_by_role("button", name="Create token").click()

    page.get_by_role("heading", name="Token created").wait_for()
    assert "cannot be shown again" in page.inner_text("main")
    token = shown_token(page)
    assert "one upload to db" in page.inner_text("main")
    # The copy button (console.js) puts exactly the token on the clipboard.
    page.get_by_role("button", name="Copy: token").click()
    assert page.evaluate("() => navigator.clipboard.readText()") == token
    session_id = page.locator("dl.facts code").first.inner_text()
    save_screenshot(page, "token-created")

    url = f"{console_world.url}{BASE}/db/version"
    auth = f"Authorization: Bearer {token}"
    assert curl("-H", auth, "--data-binary", f"@{SAMPLE}", url) == 200
    assert curl("-H", auth, "--data-binary", f"@{SAMPLE}", url) == 401

    page.goto("/ui/tokens")
    assert token not in page.content(), "the token must never be shown again"
    row = session_row(page, session_id)
    assert "used or revoked" in row.inner_text()
    assert "single-use upload to db" in row.inner_text()
    assert row.get_by_role("button", name=re.compile("Revoke")).count() == 0


def test_scoped_token_does_what_it_was_given_and_nothing_else(
    logged_in_page: Callable[..., Page], console_world: ConsoleWorld
) -> None:
    page = logged_in_page("alice")
    page.goto("/ui/tokens")
    # alice may download from files but never upload there: only what she holds is offered.
    files_row = page.locator("tbody tr", has=page.locator("th:text-is('files')"))
    assert files_row.get_by_role("checkbox").count() == 1
    files_row.get_by_role("checkbox", name=re.compile("Download")).check()
    page.get_by_label("What it is for").fill("restore test")
    page.get_by_label("Your password").fill("alice-console-pass")
    page.get_by_role("button", name="Create token").click()
    token = shown_token(page)
    assert "backupDownloader on files" in page.inner_text("dl.facts")

    auth = f"Authorization: Bearer {token}"
    assert curl("-H", auth, f"{console_world.url}{BASE}/files/version") == 200
    # alice may upload to db, but this token was not given that.
    upload = f"{console_world.url}{BASE}/db/version"
    assert curl("-H", auth, "--data-binary", f"@{SAMPLE}", upload) == 403

    page.goto("/ui/tokens")
    row = page.locator("tbody tr", has=page.get_by_text("Web console token: restore test"))
    assert "backupDownloader on files" in row.inner_text()
    assert "active" in row.inner_text()


def test_wrong_password_keeps_the_form_and_says_what_to_do(
    logged_in_page: Callable[..., Page],
) -> None:
    page = logged_in_page("alice")
    page.goto("/ui/tokens")
    page.get_by_role("checkbox", name=re.compile(r"Upload backupUploader db")).check()
    page.get_by_label("What it is for").fill("kept")
    page.get_by_label("Your password").fill("not her password")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create token").click()
    assert answer.value.status == 401
    assert "Wrong password" in page.get_by_role("alert").inner_text()
    assert page.get_by_role("checkbox", name=re.compile(r"Upload backupUploader db")).is_checked()
    assert page.get_by_label("What it is for").input_value() == "kept"
    # Nothing chosen: the form says what to choose.
    page.get_by_role("checkbox", name=re.compile(r"Upload backupUploader db")).uncheck()
    page.get_by_label("Your password").fill("alice-console-pass")
    page.get_by_role("button", name="Create token").click()
    assert "choose at least one role" in page.get_by_role("alert").inner_text().lower()


def test_revoking_another_session_and_then_this_one(
    logged_in_page: Callable[..., Page],
) -> None:
    first = logged_in_page("bob")
    second = logged_in_page("bob")
    first.goto("/ui/tokens")
    current = first.locator("tbody tr.current code").first.inner_text()
    others = first.locator("tbody tr:not(.current)", has=first.get_by_text("web console"))
    other_id = others.first.locator("code").first.inner_text()
    assert other_id != current
    others.first.get_by_role("button", name=re.compile("Revoke")).click()
    assert f"Session {other_id} was revoked" in first.get_by_role("status").first.inner_text()
    assert "revoked" in session_row(first, other_id).inner_text()

    # The other browser is logged out at its next click.
    second.goto("/ui/tokens")
    assert "/ui/login" in second.url

    # Revoking this session logs out.
    first.locator("tbody tr.current").get_by_role("button", name=re.compile("Revoke")).click()
    assert "/ui/login" in first.url
    assert "logged out" in first.inner_text("main")
    first.goto("/ui/tokens")
    assert "/ui/login" in first.url


def test_an_access_key_creates_tokens_within_its_own_grants(
    logged_in_page: Callable[..., Page],
) -> None:
    page = logged_in_page("alice$ci")
    page.goto("/ui/tokens")
    assert "issued to alice$ci" in page.inner_text("main")
    # The key may only upload to db, whatever alice herself may do.
    assert page.get_by_role("checkbox").count() == 1
    page.get_by_role("checkbox", name=re.compile(r"Upload backupUploader db")).check()
    page.get_by_label("Your password").fill("alice-ci-console-pass")
    page.get_by_role("button", name="Create token").click()
    assert "backupUploader on db" in page.inner_text("dl.facts")
