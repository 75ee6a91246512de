"""The ``backup-repository`` command as operators run it: one-shot actions, start-up
validation, flags as environment variables, and the server answering over real HTTP."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from backup_repository.services.passwords import PasswordHasher
from support import JWT_SECRET, default_documents, server_command, start_server, write_config

pytestmark = pytest.mark.e2e


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    clean.update(env or {})
    return subprocess.run(
        server_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        cwd=cwd,
        check=False,
        input=stdin,
    )


def test_encode_password_reads_standard_input_with_a_dash() -> None:
    result = run_cli("--encode-password", "-", stdin="correct horse\n")
    assert result.returncode == 0, result.stderr
    encoded = result.stdout.strip()
    hasher = PasswordHasher(1)
    # The line's end is not part of the password; the space inside is.
    assert hasher.verify_sync(encoded, "correct horse")
    assert not hasher.verify_sync(encoded, "wrong horse")
    result = run_cli("--encode-password=-", stdin="other")
    assert hasher.verify_sync(result.stdout.strip(), "other")


def test_encode_password_asks_without_echo() -> None:
    """On a terminal: asked twice, the typed password never shown."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the command on the terminal
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
        command = server_command("--encode-password")
        os.execve(command[0], command, clean)  # noqa: S606
    transcript = b""

    def read_until(marker: bytes) -> None:
        nonlocal transcript
        deadline = time.monotonic() + 30
        while marker not in transcript:
            assert time.monotonic() < deadline, transcript
            if select.select([terminal], [], [], 0.2)[0]:
                transcript += os.read(terminal, 1024)

    try:
        read_until(b"Password:")
        os.write(terminal, b"correct horse\n")
        read_until(b"Repeat for confirmation:")
        os.write(terminal, b"correct horse\n")
        # Up to the hash's line end; the terminal closes when the command ends.
        read_until(b"==\r\n")
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0, transcript
    output = transcript.decode()
    assert "correct horse" not in output
    encoded = output.strip().splitlines()[-1].strip()
    assert PasswordHasher(1).verify_sync(encoded, "correct horse")


def test_encode_password_refuses_a_password_in_the_arguments() -> None:
    result = run_cli("--encode-password=correct horse")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "shell history" in result.stderr
    assert "--encode-password -" in result.stderr
    assert "correct horse" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_encode_password_refuses_an_empty_password(stdin: str) -> None:
    result = run_cli("--encode-password", "-", stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "the password is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_hash_jwt_prints_the_session_id() -> None:
    result = run_cli("--hash-jwt", "a.b.c")
    assert result.returncode == 0
    assert result.stdout.strip() == hashlib.sha256(b"a.b.c").hexdigest()


def test_missing_jwt_secret_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli("--config-local-path", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "--jwt-secret-key" in result.stderr
    assert "BR_JWT_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--db-url", "mysql://x@localhost/db"], "--db-url"),
        (["--listen", "nowhere"], "--listen"),
        (["--storage-url", "ftp://x"], "--storage-url"),
        (["--jwt-lifetime", "forever"], "--jwt-lifetime"),
        (["--trusted-proxies", "10.0.0.0/8,bogus"], "--trusted-proxies"),
        (["--rate-auth-limit", "-1"], "--rate-auth-limit"),
        (["--db-url", "sqlite:///x.db", "--db-hostname", "pg"], "--db-url"),
        (["--jwt-secret-key", "short"], "at least 16"),
    ],
)
def test_invalid_settings_are_reported_clearly(
    tmp_path: Path, args: list[str], phrase: str
) -> None:
    base = ["--jwt-secret-key", JWT_SECRET] if "--jwt-secret-key" not in args else []
    result = run_cli(*base, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert phrase in result.stderr
    assert "Traceback" not in result.stderr


def test_environment_variables_configure_the_server(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_config(config, default_documents())
    server = start_server(
        tmp_path,
        config,
        env={"BR_HEALTH_CHECK_KEY": "from-env", "BR_RATE_SERVER_HEALTH_LIMIT": "0"},
    )
    try:
        assert httpx.get(server.url + "/ready").status_code == 403
        assert httpx.get(server.url + "/ready", params={"code": "from-env"}).status_code == 200
    finally:
        assert server.stop() == 0


def test_postgres_flag_set_builds_the_url(tmp_path: Path, postgres_url: str) -> None:
    url = make_url(postgres_url)
    config = tmp_path / "config"
    write_config(config, default_documents())
    server = start_server(
        tmp_path,
        config,
        db_url="",
        env={
            "BR_DB_HOSTNAME": str(url.host),
            "BR_DB_PORT": str(url.port or 5432),
            "BR_DB_USERNAME": str(url.username),
            "BR_DB_NAME": str(url.database),
        },
    )
    try:
        assert f"postgresql+asyncpg://{url.username}@{url.host}" in server.log()
        response = httpx.post(
            server.url + "/api/stable/auth/login",
            json={"username": "plain", "password": "plain-pass"},
        )
        assert response.status_code == 200, response.text
        assert httpx.get(server.url + "/ready").status_code == 200
    finally:
        assert server.stop() == 0
