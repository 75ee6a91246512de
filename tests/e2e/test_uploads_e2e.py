"""Uploads against the real server process over loopback: a client that goes away
mid-upload, a server killed with SIGKILL mid-upload and restarted, early answers to an
upload whose body is still coming, two replicas sharing one collection.

The upload lock's lease is long here (:data:`LEASE`): a lock that was not released stays
taken well past every wait of these tests, so a test that sees it free proves that it was
released, not that it ran out."""

from __future__ import annotations

import hashlib
import json
import select
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpg_fixtures import GpgHome
from support import ServerProcess, collection_doc, start_server, user_doc, wait_until, write_config

pytestmark = pytest.mark.e2e

BASE = "/api/stable/repository/collection"
#: The upload lock's lease in these tests, far longer than any wait below.
LEASE = 120
#: How long a released lock may take to show (the server noticing a closed connection).
RELEASED_WITHIN = 20.0


def config(folder: Path) -> Path:
    docs = [
        user_doc("uploader", "uploader-pass", ["collectionManager"]),
        user_doc("reader", "reader-pass", []),
        collection_doc("db"),
    ]
    docs[-1]["spec"].update(maxBackupsCount=5, maxOneVersionSize="20M", maxCollectionSize="100M")
    write_config(folder, docs)
    return folder


def login(server: ServerProcess, user: str = "uploader") -> dict[str, str]:
    response = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": user, "password": f"{user}-pass"},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


def upload(server: ServerProcess, auth: dict[str, str], data: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}{BASE}/db/version", content=data, headers=auth, timeout=60)


def listed(server: ServerProcess, auth: dict[str, str]) -> list[int]:
    response = httpx.get(f"{server.url}{BASE}/db/version", headers=auth)
    assert response.status_code == 200, response.text
    return [v["versionNumber"] for v in response.json()["data"]["versions"]]


def probe_lock(server: ServerProcess, auth: dict[str, str]) -> int:
    """The status of an upload that can never be stored (not OpenPGP): 409 while another
    upload holds the collection's lock, 400 once the lock is free."""
    response = upload(server, auth, b"a probe, not an OpenPGP message")
    assert response.status_code in (400, 409), response.text
    return response.status_code


def lock_taken(server: ServerProcess, auth: dict[str, str]) -> bool:
    return probe_lock(server, auth) == 409


def lock_free(server: ServerProcess, auth: dict[str, str]) -> bool:
    return probe_lock(server, auth) == 400


def no_answer_yet(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def partial_upload(
    server: ServerProcess,
    auth: dict[str, str],
    head: bytes,
    total: int,
    collection: str = "db",
) -> socket.socket:
    """Open a raw connection announcing ``total`` bytes and send only ``head``."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    request = (
        f"POST {BASE}/{collection}/version HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth['Authorization']}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
    ).encode()
    sock.sendall(request + head)
    return sock


def hold_lock(
    server: ServerProcess,
    auth: dict[str, str],
    head: bytes,
    total: int,
    probe: tuple[ServerProcess, dict[str, str]] | None = None,
) -> socket.socket:
    """A partial upload that holds the collection's lock and waits for the rest of its body.
    The first probe (sent to ``probe``, another replica, when given) can reach the lock
    before the partial upload does (which is then refused with 409): start it again until
    it is the one holding the lock."""
    prober, prober_auth = probe or (server, auth)
    for _ in range(10):
        held = partial_upload(server, auth, head, total)
        wait_until(lambda: lock_taken(prober, prober_auth) or not no_answer_yet(held))  # noqa: B023
        if no_answer_yet(held):
            return held
        held.close()
    raise AssertionError("a partial upload never held the collection's lock")


def stored_files(storage: Path) -> list[str]:
    return sorted(
        str(p.relative_to(storage))
        for p in storage.rglob("*")
        if p.is_file() and not p.relative_to(storage).parts[0].startswith(".")
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    config(tmp_path / "config")
    return tmp_path


def start(workdir: Path, **kwargs: Any) -> ServerProcess:
    return start_server(
        workdir, workdir / "config", extra_args=[f"--upload-lock-lease={LEASE}s"], **kwargs
    )


def test_client_going_away_mid_upload_leaves_nothing(workdir: Path, gpg_home: GpgHome) -> None:
    server = start(workdir)
    try:
        auth = login(server)
        first = gpg_home.encrypt(b"first" * 1000)
        assert upload(server, auth, first).status_code == 200
        big = gpg_home.encrypt(bytes(3 * 1024 * 1024), compress=False)
        sock = hold_lock(server, auth, big[: len(big) // 2], len(big))
        # The upload is under way: it holds the lock, and the server waits for the rest.
        assert no_answer_yet(sock)
        sock.close()
        # The lock is released when the client goes away, long before its lease runs out.
        wait_until(lambda: lock_free(server, auth), timeout=RELEASED_WITHIN)
        second = gpg_home.encrypt(b"second" * 1000)
        response = upload(server, auth, second)
        assert response.status_code == 200, response.text
        assert listed(server, auth) == [2, 1]
        assert stored_files(workdir / "storage") == ["db/db-1.tar.gz", "db/db-2.tar.gz"]
    finally:
        server.stop()


def test_sigkill_mid_upload_then_restart(workdir: Path, gpg_home: GpgHome) -> None:
    server = start(workdir)
    bodies: dict[int, bytes] = {}
    try:
        auth = login(server)
        for i in (1, 2):
            data = gpg_home.encrypt(f"version {i}".encode() * 500)
            response = upload(server, auth, data)
            assert response.status_code == 200
            bodies[response.json()["data"]["version"]["versionNumber"]] = data
        big = gpg_home.encrypt(bytes(4 * 1024 * 1024), compress=False)
        sock = hold_lock(server, auth, big[: len(big) // 2], len(big))
        # Killed while the upload is still running: it holds the lock and is unanswered.
        assert no_answer_yet(sock)
        assert server.process.poll() is None
        server.process.kill()
        server.process.wait(timeout=10)
        sock.close()
    finally:
        server.stop()

    restarted = start(workdir)
    try:
        auth = login(restarted)
        assert listed(restarted, auth) == [2, 1]
        for number, data in bodies.items():
            response = httpx.get(f"{restarted.url}{BASE}/db/version/{number}", headers=auth)
            assert response.status_code == 200
            assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(data).hexdigest()
        # The restart freed the dead server's lock: the next upload goes on at once with
        # the next number, and the interrupted upload's leftovers are cleaned up.
        response = upload(restarted, auth, gpg_home.encrypt(b"third"))
        assert response.status_code == 200, response.text
        assert response.json()["data"]["version"]["versionNumber"] == 3
        files = stored_files(workdir / "storage")
        assert files == ["db/db-1.tar.gz", "db/db-2.tar.gz", "db/db-3.tar.gz"], json.dumps(files)
    finally:
        restarted.stop()


def test_two_replicas_one_upload_at_a_time(
    tmp_path: Path, gpg_home: GpgHome, postgres_url: str, s3_storage_url: Any
) -> None:
    """Two server processes on one PostgreSQL database and one S3 bucket: of two uploads to
    the same collection at the same moment exactly one proceeds; numbers never collide."""
    config(tmp_path / "config")
    storage = s3_storage_url.url_for(f"replicas-{tmp_path.name[-12:]}")
    replicas = [
        start_server(
            tmp_path / name,
            tmp_path / "config",
            db_url=postgres_url,
            extra_args=["--storage-url", storage, "--upload-lock-lease=5s"],
            env=s3_storage_url.env,
        )
        for name in ("a", "b")
    ]
    try:
        auths = [login(r) for r in replicas]
        big = gpg_home.encrypt(bytes(2 * 1024 * 1024), compress=False)
        # Once the first replica holds the lock, the second refuses uploads.
        sock = hold_lock(
            replicas[0], auths[0], big[: len(big) // 2], len(big), (replicas[1], auths[1])
        )
        try:
            assert no_answer_yet(sock)
            response = upload(replicas[1], auths[1], gpg_home.encrypt(b"other replica"))
            assert response.status_code == 409, response.text
            assert "cannot upload to same collection in parallel" in response.json()["error"]
            sock.sendall(big[len(big) // 2 :])
            reply = sock.recv(65536)
            assert b" 200 " in reply.split(b"\r\n", 1)[0], reply[:200]
        finally:
            sock.close()
        response = upload(replicas[1], auths[1], gpg_home.encrypt(b"after"))
        assert response.status_code == 200, response.text
        assert listed(replicas[0], auths[0]) == [2, 1]
        assert listed(replicas[1], auths[1]) == [2, 1]
    finally:
        for replica in replicas:
            replica.stop()


def early_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body of the answer the server sends before the body ends."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed without an answer: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        piece = sock.recv(65536)
        assert piece, "connection closed inside the answer"
        body += piece
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    ("case", "status", "phrase"),
    [
        ("locked", 409, "cannot upload to same collection in parallel"),
        ("no rights", 403, "not authorized"),
        ("no collection", 404, ""),
    ],
)
def test_early_refusal_of_an_upload_says_connection_close(
    workdir: Path, gpg_home: GpgHome, case: str, status: int, phrase: str
) -> None:
    # Refused before the body was read: the answer says the connection ends, so that the
    # client does not send the next request after a body the server did not read.
    server = start(workdir)
    held: socket.socket | None = None
    try:
        auth = login(server)
        big = gpg_home.encrypt(bytes(1024 * 1024), compress=False)
        collection = "db"
        if case == "locked":
            held = hold_lock(server, auth, big[:1000], len(big))
        elif case == "no rights":
            auth = login(server, "reader")
        else:
            collection = "no-such-collection"
        sock = partial_upload(server, auth, big[:1000], len(big), collection)
        try:
            code, headers, body = early_answer(sock)
        finally:
            sock.close()
        assert code == status, body
        assert headers["connection"] == "close"
        assert body["status"] is False
        assert phrase in body["error"]
    finally:
        if held is not None:
            held.close()
        server.stop()
