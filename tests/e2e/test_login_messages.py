"""The real server over loopback HTTP: a refused login and a refused token each name their
own cause. A login refusal keeps the reference's phrase at the start (clients match on it)
and says that the username, access key or password was not accepted, never that a token
was refused: no token exists yet. A refused token says it was the token.

``backup-maker``'s lines for the same cases are in tests/client/test_client_messages.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from backup_repository.services.tokens import TokenCodec
from support import (
    JWT_SECRET,
    ServerProcess,
    default_documents,
    start_server,
    write_config,
)

pytestmark = pytest.mark.e2e

LOGIN = "/api/stable/auth/login"
WHOAMI = "/api/stable/auth/whoami"
LOGOUT = "/api/stable/auth/logout"
REFERENCE_PHRASE = "incorrect Username or Password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: default_documents() (plain, a deactivated sleeper, an
    uploader with the access key ci)."""
    workdir = tmp_path_factory.mktemp("login-messages")
    write_config(workdir / "config", default_documents())
    process = start_server(workdir, workdir / "config")
    try:
        yield process
    finally:
        process.stop()


def login(server: ServerProcess, username: str, password: str) -> httpx.Response:
    return httpx.post(
        server.url + LOGIN, json={"username": username, "password": password}, timeout=30
    )


def token_of(server: ServerProcess, username: str, password: str) -> str:
    response = login(server, username, password)
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def whoami(server: ServerProcess, token: str) -> httpx.Response:
    return httpx.get(server.url + WHOAMI, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param("plain", "wrong-pass", id="wrong-password"),
        pytest.param("nobody", "plain-pass", id="unknown-user"),
        pytest.param("sleeper", "sleeper-pass", id="deactivated-user"),
        pytest.param("uploader$ci", "uploader-pass", id="wrong-access-key-secret"),
        pytest.param("uploader$nokey", "ci-pass", id="unknown-access-key"),
    ],
)
def test_a_refused_login_names_the_credentials_not_a_token(
    server: ServerProcess, username: str, password: str
) -> None:
    response = login(server, username, password)
    assert response.status_code == 401
    body = response.json()
    assert body["status"] is False
    message = body["message"]
    assert body["error"] == message
    assert message.startswith(REFERENCE_PHRASE)
    assert "username, access key or password was not accepted" in message
    assert "token" not in message.lower()


def test_every_refused_login_reads_the_same(server: ServerProcess) -> None:
    """The answer does not tell which part was wrong (nor which user names exist)."""
    messages = {
        login(server, "plain", "wrong-pass").json()["message"],
        login(server, "nobody", "plain-pass").json()["message"],
        login(server, "sleeper", "sleeper-pass").json()["message"],
        login(server, "uploader$ci", "uploader-pass").json()["message"],
    }
    assert len(messages) == 1


def test_a_revoked_token_is_refused_as_a_token(server: ServerProcess) -> None:
    token = token_of(server, "plain", "plain-pass")
    revoked = httpx.delete(server.url + LOGOUT, headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 200, revoked.text
    response = whoami(server, token)
    assert response.status_code == 401
    message = response.json()["message"]
    assert message == "session was revoked or does not exist"
    assert not message.startswith(REFERENCE_PHRASE)


def test_an_expired_token_is_refused_as_a_token(server: ServerProcess) -> None:
    # A token the server itself would have issued two hours ago for one hour: signed with
    # its key, expired an hour ago (no clock to wait for).
    codec = TokenCodec(JWT_SECRET, timedelta(hours=1))
    issued = codec.issue(
        "plain", "", (), timedelta(hours=1), datetime.now(UTC) - timedelta(hours=2)
    )
    response = whoami(server, issued.token)
    assert response.status_code == 401
    message = response.json()["message"]
    assert message == "invalid or expired token"
    assert not message.startswith(REFERENCE_PHRASE)


def test_a_good_login_still_works(server: ServerProcess) -> None:
    token = token_of(server, "uploader$ci", "ci-pass")
    response = whoami(server, token)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["accessKeyName"] == "ci"
