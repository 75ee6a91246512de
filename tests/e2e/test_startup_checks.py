"""The server checks its port, database, storage and configuration folder before it
listens: a failure is one line on standard error naming the setting, the cause and the
fix, with exit code 2 (a wrong setting) or 1 (a dependency that cannot be used now), and
never a traceback or a ``Listening at`` line."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from support import JWT_SECRET, default_documents, free_port, server_command, write_config

pytestmark = pytest.mark.e2e


def start_failing(
    tmp_path: Path, *args: str, storage: str | None = None, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    if config is None:
        config = tmp_path / "config"
        write_config(config, default_documents())
    command = [
        f"--listen=127.0.0.1:{free_port()}",
        f"--jwt-secret-key={JWT_SECRET}",
        "--config-local-path",
        str(config),
        "--storage-url",
        storage or (tmp_path / "storage").as_uri(),
        *args,
    ]
    if not any(a.startswith("--db-") for a in args):
        command += ["--db-url", f"sqlite:///{tmp_path / 'server.db'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    return subprocess.run(
        server_command(*command),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def the_one_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "Listening at" not in output
    assert "listening on" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.postgres
def test_a_database_that_does_not_exist(tmp_path: Path, postgres_admin_url: str) -> None:
    name = f"doesnotexist_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    result = start_failing(tmp_path, "--db-url", url)
    assert result.returncode == 2
    line = the_one_line(result)
    assert "--db-url (BR_DB_URL)" in line
    assert f'database "{name}" does not exist' in line
    assert f"createdb {name}" in line


@pytest.mark.postgres
def test_a_database_name_given_as_a_flag_names_that_flag(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    url = make_url(postgres_admin_url)
    result = start_failing(
        tmp_path,
        f"--db-hostname={url.host}",
        f"--db-port={url.port or 5432}",
        f"--db-user={url.username}",
        "--db-name=doesnotexist_either",
    )
    assert result.returncode == 2
    line = the_one_line(result)
    assert "--db-name (BR_DB_NAME)" in line
    assert "does not exist" in line


def test_a_closed_postgres_port(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = start_failing(tmp_path, "--db-url", f"postgresql://postgres@127.0.0.1:{port}/db")
    assert result.returncode == 1
    line = the_one_line(result)
    assert "--db-url (BR_DB_URL)" in line
    assert f"cannot reach the PostgreSQL server at 127.0.0.1:{port}" in line
    assert "start it, or correct the host and port" in line


def test_a_storage_folder_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage folder's parent should be")
    result = start_failing(tmp_path, storage=(blocker / "storage").as_uri())
    assert result.returncode == 1
    line = the_one_line(result)
    assert "--storage-url (BR_STORAGE_DRIVER_URL)" in line
    assert "Not a directory" in line
    assert "may create and write it" in line


def test_a_storage_folder_without_write_permission(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    storage.chmod(0o555)
    try:
        if os.access(storage, os.W_OK):
            # The superuser writes anyway: a storage folder that is a file fails the probe
            # for everyone.
            storage.chmod(0o755)
            storage.rmdir()
            storage.write_text("not a folder")
        result = start_failing(tmp_path, storage=storage.as_uri())
    finally:
        if storage.is_dir():
            storage.chmod(0o755)
    assert result.returncode in (1, 2)
    line = the_one_line(result)
    assert "--storage-url (BR_STORAGE_DRIVER_URL)" in line


def test_a_port_already_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start_failing(tmp_path, f"--listen=127.0.0.1:{port}")
    assert result.returncode == 1
    line = the_one_line(result)
    assert "--listen (BR_LISTEN)" in line
    assert f"127.0.0.1:{port} is already in use" in line
    assert "choose another port" in line


def test_a_missing_configuration_folder(tmp_path: Path) -> None:
    result = start_failing(tmp_path, config=tmp_path / "no-such-folder")
    assert result.returncode == 2
    line = the_one_line(result)
    assert "--config-local-path (BR_CONFIG_LOCAL_PATH)" in line
    assert "does not exist" in line
    assert "point it at the folder with your users and collections" in line


def test_a_kubeconfig_that_does_not_exist(tmp_path: Path) -> None:
    """An API outage is waited for (/ready reports it); a kubeconfig given on purpose that
    is not there is a wrong setting."""
    missing = tmp_path / "no-kubeconfig"
    result = start_failing(tmp_path, "--provider=kubernetes", f"--kubeconfig={missing}")
    assert result.returncode == 2
    line = the_one_line(result)
    assert "--kubeconfig (BR_KUBECONFIG)" in line
    assert str(missing) in line
    assert "readable kubeconfig file" in line
