"""A server killed with SIGKILL and started again frees what its previous life held: the
next upload to the collection it was receiving is accepted at once (not refused with 409
until the dead upload's lease runs out), and a scheduled integrity check it was running
goes on. Another replica's locks and leases are never touched (real server processes on
loopback, SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.integrity import SqlLeaseRepository
from backup_repository.services.integrity import LEASE_NAME
from gpg_fixtures import GpgHome
from support import ServerProcess, collection_doc, start_server, user_doc, wait_until, write_config

pytestmark = pytest.mark.e2e

BASE = "/api/stable/repository/collection"
PARALLEL_UPLOAD = "cannot upload to same collection in parallel"


def write_world(folder: Path) -> Path:
    docs = [
        user_doc("uploader", "uploader-pass", ["collectionManager"]),
        collection_doc("db"),
    ]
    docs[1]["spec"].update(maxBackupsCount=5, maxOneVersionSize="20M", maxCollectionSize="100M")
    write_config(folder, docs)
    return folder


def login(server: ServerProcess) -> dict[str, str]:
    response = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": "uploader", "password": "uploader-pass"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


def upload(server: ServerProcess, auth: dict[str, str], data: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}{BASE}/db/version", content=data, headers=auth, timeout=60)


def start_partial_upload(
    server: ServerProcess, auth: dict[str, str], body: bytes, storage: Path
) -> socket.socket:
    """Send the head and half of ``body`` over a raw connection and wait until the server
    writes it to storage (it holds the collection's lock by then)."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    request = (
        f"POST {BASE}/db/version HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth['Authorization']}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(request + body[: len(body) // 2])
    wait_until(lambda: staging_files(storage), timeout=15)
    return sock


def staging_files(storage: Path) -> list[str]:
    """Unfinished writes of the file storage (``<name>#<n>``)."""
    return sorted(p.name for p in storage.rglob("*#*") if p.is_file())


def stored_files(storage: Path) -> list[str]:
    return sorted(
        str(p.relative_to(storage))
        for p in storage.rglob("*")
        if p.is_file() and not p.relative_to(storage).parts[0].startswith(".")
    )


def kill(server: ServerProcess) -> None:
    server.process.kill()
    server.process.wait(timeout=10)


def test_an_upload_right_after_a_crash_is_accepted_at_once(
    tmp_path: Path, database_url: str, gpg_home: GpgHome
) -> None:
    """Killed mid-upload and restarted with the default 30 s lease: the very first upload
    to that collection is accepted (it used to get 409 for the rest of the dead upload's
    lease). On SQLite the restarted server has another replica id than its previous life
    (it is the only server on the file, so it frees every server's locks); on PostgreSQL
    it keeps its id, the default one: the host name. The interrupted upload's staging
    file is cleaned up as before."""
    write_world(tmp_path / "config")
    storage = tmp_path / "storage"
    same_id = "" if database_url.startswith("postgres") else None
    server = start_server(tmp_path, tmp_path / "config", db_url=database_url, replica_id=same_id)
    try:
        auth = login(server)
        assert upload(server, auth, gpg_home.encrypt(b"first" * 1000)).status_code == 200
        big = gpg_home.encrypt(bytes(4 * 1024 * 1024), compress=False)
        sock = start_partial_upload(server, auth, big, storage)
        kill(server)
        killed_at = time.monotonic()
        sock.close()
        assert staging_files(storage), "the kill should leave the partial write behind"
    finally:
        server.stop()

    restarted = start_server(tmp_path, tmp_path / "config", db_url=database_url, replica_id=same_id)
    try:
        auth = login(restarted)
        response = upload(restarted, auth, gpg_home.encrypt(b"second" * 1000))
        accepted_after = time.monotonic() - killed_at
        assert response.status_code == 200, response.text
        assert response.json()["data"]["version"]["versionNumber"] == 2
        assert accepted_after < 30, accepted_after
        print(f"\nkill to the next accepted upload: {accepted_after:.2f} s")
        assert staging_files(storage) == []
        assert stored_files(storage) == ["db/db-1.tar.gz", "db/db-2.tar.gz"]
        assert "freed 1 upload locks" in restarted.log()
    finally:
        restarted.stop()


def test_a_restart_frees_its_own_previous_locks_and_never_another_replicas(
    tmp_path: Path, postgres_url: str, gpg_home: GpgHome
) -> None:
    """Two replicas on one PostgreSQL database and one storage folder. Replica b restarting
    does not free the lock replica a holds mid-upload; when a is killed, b still waits for
    a's lease (cross-replica leases are unchanged); when a starts again under its id
    (here from BR_REPLICA_ID), a's dead upload no longer blocks anyone."""
    write_world(tmp_path / "config")
    storage = tmp_path / "shared-storage"
    args = ["--storage-url", storage.as_uri()]

    def start_a() -> ServerProcess:
        return start_server(
            tmp_path / "a",
            tmp_path / "config",
            db_url=postgres_url,
            extra_args=args,
            replica_id="",
            env={"BR_REPLICA_ID": "replica-a"},
        )

    def start_b() -> ServerProcess:
        return start_server(
            tmp_path / "b",
            tmp_path / "config",
            db_url=postgres_url,
            extra_args=args,
            replica_id="replica-b",
        )

    a, b = start_a(), start_b()
    try:
        auth = login(a)
        assert upload(a, auth, gpg_home.encrypt(b"first")).status_code == 200
        big = gpg_home.encrypt(bytes(3 * 1024 * 1024), compress=False)
        sock = start_partial_upload(a, auth, big, storage)
        try:
            kill(b)
            b.stop()
            b = start_b()
            refused = upload(b, auth, gpg_home.encrypt(b"while a uploads"))
            assert refused.status_code == 409, refused.text
            assert PARALLEL_UPLOAD in refused.json()["error"]
            assert "freed" not in b.log()

            kill(a)
            a.stop()
        finally:
            sock.close()
        refused = upload(b, auth, gpg_home.encrypt(b"a is dead, its lease is not"))
        assert refused.status_code == 409, refused.text

        a = start_a()
        assert "replica id: replica-a" in a.log()
        # a's start-up clean-up takes the free lock for a moment, which b cannot know.
        wait_until(lambda: "start-up clean-up done" in a.log(), timeout=15)
        response = upload(b, auth, gpg_home.encrypt(b"after a's restart"))
        assert response.status_code == 200, response.text
        assert response.json()["data"]["version"]["versionNumber"] == 2
        assert "freed 1 upload locks that replica replica-a held" in a.log()
        assert stored_files(storage) == ["db/db-1.tar.gz", "db/db-2.tar.gz"]
    finally:
        a.stop()
        b.stop()


# -- the integrity check's lease ---------------------------------------------------------


def passes(log: str) -> int:
    """Integrity check passes a server's JSON log reports as finished."""
    count = 0
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("message", "")).startswith(
            "integrity check: "
        ):
            count += 1
    return count


async def hold_lease(database_url: str, owner: str, schedule: timedelta | None) -> None:
    """The integrity lease as a replica leaves it: mid-pass (renewed one lease ahead) when
    it dies, or after a finished pass, held for the rest of its interval (``schedule``)."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        leases = SqlLeaseRepository(engine)
        assert await leases.try_take(LEASE_NAME, owner, 60)
        if schedule is not None:
            await leases.release(LEASE_NAME, owner, datetime.now(UTC) + schedule)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("holder", "schedule"),
    [
        pytest.param("replica-a", None, id="own-pass-in-progress"),
        pytest.param("replica-b", None, id="other-replicas-pass"),
        pytest.param("replica-a", timedelta(hours=1), id="own-schedule"),
    ],
)
def test_a_restart_frees_the_integrity_lease_of_its_dead_pass(
    tmp_path: Path, database_url: str, holder: str, schedule: timedelta | None
) -> None:
    """The lease of a scheduled integrity check that replica a was running when it was
    killed (a pass in progress renews it one minute ahead) is freed when a starts again,
    and the check runs at once. On PostgreSQL another replica's pass is left alone; on
    SQLite there is no other server, so it goes too. A finished pass's hold on the
    schedule always stays: no pass in the first seconds."""
    write_world(tmp_path / "config")
    asyncio.run(hold_lease(database_url, f"{holder}/0badf00d:1234abcd", schedule))
    sqlite = database_url.startswith("sqlite")
    runs_at_once = schedule is None and (holder == "replica-a" or sqlite)
    server = start_server(
        tmp_path,
        tmp_path / "config",
        db_url=database_url,
        replica_id="replica-a",
        extra_args=["--verify-interval=1s"],
    )
    try:
        if runs_at_once:
            wait_until(lambda: passes(server.log()) >= 1, timeout=10)
            who = "a server" if sqlite else "replica replica-a"
            assert f"freed the integrity check lease that {who} held" in server.log()
        else:
            time.sleep(4)
            assert passes(server.log()) == 0, server.log()[-2000:]
            assert "freed" not in server.log()
    finally:
        server.stop()
