"""The start-up banner lists only the accounts the loaded configuration really has, shows an
example password only while the stored hash is still that of the example, and in
production says nothing but the URL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support import ServerProcess, default_documents, start_server, wait_until, write_config

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "config"


def banner_of(server: ServerProcess) -> str:
    wait_until(lambda: "listening on" in server.log(), timeout=15)
    return server.log()


def test_dev_mode_with_the_example_configuration_lists_its_accounts(tmp_path: Path) -> None:
    config = tmp_path / "examples" / "config"
    shutil.copytree(EXAMPLES, config)
    server = start_server(tmp_path, config, extra_args=["--dev", "--log-format=console"])
    try:
        text = banner_of(server)
    finally:
        server.stop()
    assert f"listening on {server.url}" in text
    assert "Example accounts" in text
    for login, password in (
        ("admin", "admin"),
        ("ci-bot$uploader", "upload-only"),
        ("ci-bot", "ci-bot-password"),
    ):
        assert any(
            line.split()[:3] == [login, "password", password] for line in text.splitlines()
        ), text
    assert '"username": "admin", "password": "admin"' in text


def test_dev_mode_with_another_folder_shows_no_example_passwords(tmp_path: Path) -> None:
    """Its admin has another password; the other example accounts do not exist."""
    config = tmp_path / "config"
    write_config(config, default_documents())
    server = start_server(tmp_path, config, extra_args=["--dev", "--log-format=console"])
    try:
        text = banner_of(server)
    finally:
        server.stop()
    assert f"listening on {server.url}" in text
    admin_lines = [line for line in text.splitlines() if line.split()[:1] == ["admin"]]
    assert len(admin_lines) == 1, text
    assert "(not the example one)" in admin_lines[0]
    assert "ci-bot" not in text
    assert '"password": "admin"' not in text
    assert "log in:" not in text  # no account whose password the banner knows


def test_dev_mode_without_example_accounts_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_config(config, default_documents()[1:])  # no admin
    server = start_server(tmp_path, config, extra_args=["--dev", "--log-format=console"])
    try:
        text = banner_of(server)
    finally:
        server.stop()
    assert "No example accounts in" in text
    assert "Example accounts" not in text
    assert "admin" not in text.replace("--jwt", "")


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_production_shows_only_the_url(tmp_path: Path, log_format: str) -> None:
    config = tmp_path / "config"
    write_config(config, default_documents())
    server = start_server(tmp_path, config, extra_args=[f"--log-format={log_format}"])
    try:
        text = banner_of(server)
    finally:
        server.stop()
    assert text.count("listening on") == 1
    assert f"listening on {server.url}" in text
    for leaked in ("admin", "password", "log in:", "Example accounts", "====="):
        assert leaked not in text, leaked
