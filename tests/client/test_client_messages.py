"""``backup-maker`` names the step that failed, against the real server with real GnuPG.

- A refused login (wrong password, unknown or deactivated user, wrong access key secret)
  says the username, access key or password was not accepted; a refused token (revoked,
  expired, mistyped) says it was the token. Before, every 401 told to check the token,
  even for a login, where no token exists yet.
- A version encrypted with a passphrase (``gpg --symmetric``) is not mistaken for one
  encrypted to a protected key: gpg's status lines tell apart a missing secret key, a
  protected key without passphrase, a passphrase-encrypted message without passphrase, a
  wrong passphrase and data that is not OpenPGP; each has its message (exit status 4).
  The passphrase options decrypt such a version without any private key."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from client_support import (
    PASSPHRASE,
    KeyFiles,
    LiveServer,
    encrypt_to,
    run_bm,
    server_documents,
)
from relay import relay_to

from backup_repository.client.api import error_text, hint
from backup_repository.client.gpg import Keyring, decryption_error
from backup_repository.services.tokens import TokenCodec
from gpg_fixtures import GpgHome, require_gpg
from support import JWT_SECRET, start_server, user_doc, write_config

pytestmark = pytest.mark.e2e

SYMMETRIC_PASSPHRASE = "the passphrase of the version"
PLAINTEXT = b"rows of a database dump\n" * 2000
TOKEN_HINT = "the token was refused"
LOGIN_HINT = "the username, access key or password was not accepted"
SYMMETRIC_HINT = "was encrypted with a passphrase (gpg --symmetric), not to a key"
CHECKSUM_HEADERS = {"x-content-sha256", "digest", "repr-digest", "etag"}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The client tests' server (overriding conftest's), with a deactivated user and a user
    with an access key besides."""
    workdir = tmp_path_factory.mktemp("client-messages")
    key = {
        "name": "ci",
        "password": "ci-pass",
        "objects": [{"name": "col-0", "type": "collection", "roles": ["backupDownloader"]}],
    }
    documents = [
        *server_documents(),
        user_doc("sleeper", "sleeper-pass", deactivated=True),
        user_doc("keeper", "keeper-pass", access_keys=[key]),
    ]
    write_config(workdir / "config", documents)
    process = start_server(workdir, workdir / "config")
    try:
        yield LiveServer(process=process, storage=workdir / "storage")
    finally:
        process.stop()


def symmetric(data: bytes, passphrase: str = SYMMETRIC_PASSPHRASE) -> bytes:
    """``data`` as ``gpg --symmetric`` encrypts it (real gpg, no key anywhere)."""
    binary = require_gpg()
    home = GpgHome(path=Path(tempfile.mkdtemp(prefix="bm-sym-")), binary=binary)
    try:
        return home.run(
            "--passphrase", passphrase, "--s2k-count", "65536", "--symmetric",
            "--output", "-", data=data,
        )  # fmt: skip
    finally:
        home.close()


def server_args(url: str, collection: str, token: str) -> list[str]:
    return ["-u", url, "-i", collection, "-t", token]


# -- login and token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param("uploader", "wrong-pass", id="wrong-password"),
        pytest.param("nobody", "uploader-pass", id="unknown-user"),
        pytest.param("sleeper", "sleeper-pass", id="deactivated-user"),
        pytest.param("keeper$ci", "keeper-pass", id="wrong-access-key-secret"),
    ],
)
def test_a_refused_login_says_the_credentials_were_not_accepted(
    live_server: LiveServer, username: str, password: str
) -> None:
    result = run_bm(
        "login", "-u", live_server.url, "--username", username, "--password-stdin",
        stdin=f"{password}\n".encode(),
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert "incorrect Username or Password" in result.stderr
    assert LOGIN_HINT in result.stderr
    assert "--username" in result.stderr  # what to check next
    assert "token" not in result.stderr.lower()
    assert result.stdout == ""


def test_the_access_key_logs_in(live_server: LiveServer) -> None:
    result = run_bm(
        "login", "-u", live_server.url, "--username", "keeper$ci", env={"BM_PASSWORD": "ci-pass"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2


def revoked_token(live_server: LiveServer) -> str:
    response = httpx.post(
        live_server.url + "/api/stable/auth/login",
        json={"username": "uploader", "password": "uploader-pass"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    revoked = httpx.delete(
        live_server.url + "/api/stable/auth/logout", headers={"Authorization": f"Bearer {token}"}
    )
    assert revoked.status_code == 200, revoked.text
    return token


def expired_token(live_server: LiveServer) -> str:
    """A token signed with the server's key, issued two hours ago for one hour."""
    codec = TokenCodec(JWT_SECRET, timedelta(hours=1))
    before = datetime.now(UTC) - timedelta(hours=2)
    return codec.issue("uploader", "", (), timedelta(hours=1), before).token


@pytest.mark.parametrize(
    ("make_token", "server_says"),
    [
        pytest.param(revoked_token, "session was revoked or does not exist", id="revoked"),
        pytest.param(expired_token, "invalid or expired token", id="expired"),
        pytest.param(lambda _: "not-a-token", "invalid or expired token", id="mistyped"),
    ],
)
def test_a_refused_token_says_it_was_the_token(
    live_server: LiveServer, make_token: object, server_says: str
) -> None:
    assert callable(make_token)
    token = make_token(live_server)
    result = run_bm("versions", "-u", live_server.url, "-i", "col-0", "-t", token)
    assert result.returncode == 5, result.stderr
    assert server_says in result.stderr
    assert TOKEN_HINT in result.stderr
    assert "log in again" in result.stderr
    assert LOGIN_HINT not in result.stderr


# -- decryption: each cause its message -------------------------------------------------------


@pytest.fixture(scope="module")
def symmetric_version(live_server: LiveServer) -> str:
    """A collection whose version 1 was encrypted with SYMMETRIC_PASSPHRASE."""
    collection = live_server.new_collection()
    live_server.upload(collection, symmetric(PLAINTEXT))
    return collection


@pytest.fixture(scope="module")
def key_version(live_server: LiveServer, keys: KeyFiles) -> str:
    """A collection whose version 1 was encrypted to alice's public key."""
    collection = live_server.new_collection()
    live_server.upload(collection, encrypt_to(keys.alice_public, PLAINTEXT))
    return collection


def download(
    live_server: LiveServer, collection: str, target: Path, *extra: str | Path
) -> tuple[int, str]:
    result = run_bm(
        "download", *server_args(live_server.url, collection, live_server.token()),
        "--save-path", str(target), *extra,
    )  # fmt: skip
    return result.returncode, result.stderr


def test_a_passphrase_version_without_a_passphrase_says_so(
    live_server: LiveServer, keys: KeyFiles, symmetric_version: str, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    code, stderr = download(
        live_server, symmetric_version, target, "-p", keys.alice_secret
    )  # alice's key has no passphrase: gpg asks for the message's
    assert code == 4, stderr
    assert SYMMETRIC_HINT in stderr
    assert "BM_PASSPHRASE" in stderr
    assert "--passphrase" in stderr
    assert "protected" not in stderr
    assert not target.exists()


def test_a_passphrase_version_is_restored_with_the_passphrase_alone(
    live_server: LiveServer, symmetric_version: str, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    code, stderr = download(
        live_server, symmetric_version, target, "--passphrase", SYMMETRIC_PASSPHRASE
    )
    assert code == 0, stderr
    assert target.read_bytes() == PLAINTEXT

    restored = tmp_path / "restored"
    secret = tmp_path / "passphrase"
    secret.write_text(SYMMETRIC_PASSPHRASE + "\n")
    result = run_bm(
        "restore", *server_args(live_server.url, symmetric_version, live_server.token()),
        "-c", f"cat > '{restored}'", env={"BM_PASSPHRASE_FILE": str(secret)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert restored.read_bytes() == PLAINTEXT


def test_a_wrong_passphrase_for_a_passphrase_version(
    live_server: LiveServer, symmetric_version: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    result = run_bm(
        "restore", *server_args(live_server.url, symmetric_version, live_server.token()),
        "-c", f"touch '{marker}'; cat > /dev/null", "--passphrase", "not the one",
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "wrong passphrase" in result.stderr
    assert "gpg --symmetric" in result.stderr
    assert "private key" not in result.stderr
    assert not marker.exists()


def test_a_key_version_with_a_passphrase_but_no_key_asks_for_the_key(
    live_server: LiveServer, key_version: str, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    code, stderr = download(live_server, key_version, target, "--passphrase", "anything")
    assert code == 4, stderr
    assert "encrypted to key" in stderr
    assert "--private-key" in stderr
    assert SYMMETRIC_HINT not in stderr
    assert not target.exists()


def test_a_key_version_with_another_key_names_the_missing_key(
    live_server: LiveServer, keys: KeyFiles, key_version: str, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    code, stderr = download(live_server, key_version, target, "-p", keys.bob_secret)
    assert code == 4, stderr
    assert "the private key file holds none of them" in stderr
    assert "passphrase" not in stderr
    assert not target.exists()


def test_data_that_is_not_openpgp_says_so(
    live_server: LiveServer, keys: KeyFiles, tmp_path: Path
) -> None:
    """A stored object that is no OpenPGP message (the server refuses such uploads; here the
    file was replaced on disk), served as the reference server serves it: no SHA-256
    announced, so only gpg can tell."""
    collection = live_server.new_collection()
    live_server.upload(collection, encrypt_to(keys.alice_public, PLAINTEXT))
    [path] = live_server.stored_objects(collection)
    size = path.stat().st_size
    path.write_bytes((b"plain text, not encrypted\n" * size)[:size])
    target = tmp_path / "out"
    with relay_to(live_server.url) as relay:
        relay.drop_response_headers = CHECKSUM_HEADERS
        result = run_bm(
            "download", *server_args(relay.url, collection, live_server.token()),
            "--save-path", str(target), "-p", str(keys.alice_secret),
        )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "not an OpenPGP message" in result.stderr
    assert "protected" not in result.stderr
    assert "encrypted with a passphrase" not in result.stderr
    assert not target.exists()


# -- gpg's status lines, without a server ------------------------------------------------------


def mixed(public_key: Path, data: bytes) -> bytes:
    """``data`` encrypted to the key of ``public_key`` and with SYMMETRIC_PASSPHRASE in one
    message (``gpg --encrypt --symmetric``)."""
    binary = require_gpg()
    home = GpgHome(path=Path(tempfile.mkdtemp(prefix="bm-mixed-")), binary=binary)
    try:
        home.run("--import", str(public_key))
        return home.run(
            "--passphrase", SYMMETRIC_PASSPHRASE, "--s2k-count", "65536",
            "--encrypt", "--symmetric", "--recipient", "alice@example.org",
            "--output", "-", data=data,
        )  # fmt: skip
    finally:
        home.close()


def gpg_verdict(message: bytes, key: Path | None, passphrase: str | None) -> str:
    """What the client says about real gpg decrypting ``message`` with ``key`` (None: no
    key file, a passphrase alone) and ``passphrase``; "ok" when it decrypted."""
    with Keyring(require_gpg()) as keyring:
        if key is not None:
            keyring.import_key(key, passphrase)
        code, _, output = keyring.run(
            "--decrypt", "--output", "-", data=message, passphrase=passphrase or ""
        )
        error = decryption_error(code, output, key_given=key is not None)
    return "ok" if error is None else error.message


@pytest.fixture(scope="module")
def messages(keys: KeyFiles) -> dict[str, bytes]:
    return {
        "symmetric": symmetric(b"symmetric\n"),
        "to-alice": encrypt_to(keys.alice_public, b"to alice\n"),
        "to-carol": encrypt_to(keys.carol_public, b"to carol\n"),
        "mixed": mixed(keys.alice_public, b"mixed\n"),
        "plain": b"not encrypted at all\n",
    }


# id: (message, key file, passphrase, what the client says); "ok" when it decrypts
CASES: dict[str, tuple[str, str | None, str | None, str]] = {
    "sym-no-passphrase": ("symmetric", "alice_secret", None, SYMMETRIC_HINT),
    "sym-wrong": ("symmetric", None, "wrong", "wrong passphrase: this version was encrypted"),
    "sym-passphrase-alone": ("symmetric", None, SYMMETRIC_PASSPHRASE, "ok"),
    "sym-key-passphrase": ("symmetric", "carol_secret", PASSPHRASE, "does not open it"),
    "key-missing": ("to-alice", "bob_secret", None, "the private key file holds none of them"),
    "key-no-key-file": ("to-alice", None, "anything", "not with a passphrase"),
    "key-locked": ("to-carol", "carol_secret", None, "protected and no passphrase was given"),
    "key-wrong": ("to-carol", "carol_secret", "wrong", "wrong passphrase for the private key"),
    "mixed-neither": ("mixed", "bob_secret", None, "and with a passphrase (gpg --symmetric)"),
    "mixed-passphrase": ("mixed", None, SYMMETRIC_PASSPHRASE, "ok"),
    "mixed-key": ("mixed", "alice_secret", None, "ok"),
    "not-openpgp": ("plain", "alice_secret", None, "not an OpenPGP message"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_cause_has_its_message(keys: KeyFiles, messages: dict[str, bytes], case: str) -> None:
    message, key, passphrase, expected = CASES[case]
    key_file = getattr(keys, key) if key else None
    verdict = gpg_verdict(messages[message], key_file, passphrase)
    assert expected in verdict


def test_the_login_hint_with_a_reference_server() -> None:
    """The reference answers a refused login with its phrase alone: the client then says
    itself that the credentials were not accepted; this server says it already."""
    reference = b'{"code": 401, "message": "incorrect Username or Password"}'
    text = error_text(httpx.Response(401, content=reference), reference)
    said = text + hint(401, text, login=True)
    assert LOGIN_HINT in said
    assert "--username" in said
    assert "token" not in said.lower()
    ours = "incorrect Username or Password: the username, access key or password was not accepted"
    assert hint(401, ours, login=True).count("not accepted") == 0
    assert TOKEN_HINT in hint(401, "invalid or expired token")
