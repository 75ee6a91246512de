"""Fixtures of the web console's browser tests: Debian's Chromium driven by Playwright, the
real server on a loopback port with a small world (ui_support.console_documents) and
versions uploaded, and pages logged in as one of its users.

- ``console_world`` (module): the server and what it holds; one per test module.
- ``browser`` (module): one Chromium for the module's tests. Not one per session: while
  Playwright's sync API is started it marks its event loop as the thread's running loop
  (between calls too), which would make every asyncio test that pytest-xdist runs later
  on the same worker fail. A module's tests run back to back on a worker, so the browser
  is stopped before any other module's test runs. Starting it costs about a second.
- ``new_context`` (function): fresh browser contexts (cookies, colour scheme, viewport),
  closed after the test; ``new_page`` a page in a fresh context.
- ``logged_in_page`` (function): ``logged_in_page("alice")`` is a page of a fresh context
  that logged in through the console's login form and shows the dashboard.

Without /usr/bin/chromium or the playwright package the tests skip with the reason, and
fail under BR_REQUIRE_SERVICES=1 (CI installs Chromium: ``apt-get install chromium``).
Playwright's own browser downloads are never used (``playwright install`` is not needed).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_support import (
    BROKEN_OBJECT,
    PASSWORDS,
    ConsoleWorld,
    console_documents,
)

from support import require_service, start_server, wait_until, write_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's waits; a page of the console answers in milliseconds.
TIMEOUT_MS = 10_000
DESKTOP = {"width": 1200, "height": 800}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for the tests of one module (see the module's docstring for why not one
    per session)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        require_service(
            "Playwright", f"the playwright package is not installed ({exc}): make .venv/.installed"
        )
    if not CHROMIUM.exists():
        require_service(
            "Chromium",
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)",
        )
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
    except Exception as exc:
        playwright.stop()
        require_service("Chromium", f"{CHROMIUM} does not start under Playwright: {exc}")
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


@pytest.fixture(scope="module")
def console_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleWorld]:
    """The real server with the console's world, some versions uploaded (real OpenPGP
    data) and some audit events recorded; one per test module."""
    workdir = tmp_path_factory.mktemp("console")
    config = workdir / "config"
    write_config(config, console_documents())
    (config / "broken.yaml").write_text(BROKEN_OBJECT)
    server = start_server(workdir / "server", config)
    world = ConsoleWorld(server)
    try:
        alice = world.token("alice")
        admin = world.token("admin")
        for _ in range(3):
            assert world.upload(alice, "db").status_code == 200
        assert world.upload(admin, "mail").status_code == 200
        assert world.upload(admin, "files").status_code == 200
        world.versions = {"db": 3, "mail": 1, "files": 1}
        yield world
    finally:
        server.stop()
        shutil.rmtree(workdir / "server" / "storage", ignore_errors=True)


@pytest.fixture
def new_context(browser: Any, console_world: ConsoleWorld) -> Iterator[Callable[..., Any]]:
    """``new_context(**options)``: a fresh browser context on the console's server
    (``base_url`` set, so ``page.goto("/ui/")`` works), closed after the test. Options
    are Playwright's: ``color_scheme="dark"``, ``viewport``, ``is_mobile``, ..."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("base_url", console_world.url)
        options.setdefault("viewport", DESKTOP)
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def new_page(new_context: Callable[..., Any]) -> Callable[..., Any]:
    """``new_page(**context_options)``: a page of a fresh context."""

    def make(**options: Any) -> Any:
        return new_context(**options).new_page()

    return make


def log_in(page: Any, login: str, password: str | None = None) -> None:
    """Log in through the console's login form, as a person would."""
    page.goto("/ui/login")
    page.get_by_label("User name").fill(login)
    page.get_by_label("Password").fill(PASSWORDS[login] if password is None else password)
    page.get_by_role("button", name="Log in").click()
    wait_until(lambda: "/ui/login" not in page.url, timeout=TIMEOUT_MS / 1000)


@pytest.fixture
def logged_in_page(new_page: Callable[..., Any]) -> Callable[..., Any]:
    """``logged_in_page(login, **context_options)``: a page of a fresh context, logged in
    as ``login`` (a user or ``user$key`` of ui_support.PASSWORDS) and showing the page the
    login leads to."""

    def make(login: str, **options: Any) -> Any:
        page = new_page(**options)
        log_in(page, login)
        return page

    return make
