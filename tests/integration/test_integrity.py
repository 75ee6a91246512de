"""Integrity scrubbing: ``backup-repository verify`` and ``--verify-interval`` against real
servers, databases and storage (SQLite + local files, PostgreSQL + S3 on SeaweedFS), and the
service in process for what a server cannot show from outside (a version rotated away while
being checked, a storage outage, memory use, the lease between replicas)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.integrity import SqlIntegrityRepository, SqlLeaseRepository
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.domain.integrity import CheckStatus, format_bytes
from backup_repository.http.app import create_app
from backup_repository.services.events import Action, Outcome
from backup_repository.services.integrity import LEASE_NAME, IntegrityService
from backup_repository.storage.base import BlobInfo, BlobStore
from backup_repository.storage.factory import open_blob_store
from gpg_fixtures import GpgHome, pad_to
from support import (
    RecordingSink,
    ServerProcess,
    collection_doc,
    eventually,
    make_settings,
    start_server,
    user_doc,
    wait_until,
    write_config,
)

BASE = "/api/stable/repository/collection"
UPLOADER = ("uploader", "uploader-pass")
CHECK = "VersionsIntegrityValidator"
MiB = 1024 * 1024


def documents(max_backups: int = 5) -> list[dict[str, Any]]:
    collection = collection_doc(
        "db",
        acl=[{"name": "uploader", "type": "user", "roles": ["backupUploader", "backupDownloader"]}],
    )
    collection["spec"].update(
        maxBackupsCount=max_backups, maxOneVersionSize="128M", maxCollectionSize="1G"
    )
    return [user_doc("uploader", "uploader-pass"), collection]


@dataclass
class Backend:
    database_url: str
    storage_url: str
    folder: Path | None = None  # file:// storage
    s3: Any = None  # storage_fixtures.S3TestEndpoint
    prefix: str = ""

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def read(self, key: str) -> bytes:
        if self.folder is not None:
            return (self.folder / key).read_bytes()
        answer = self.s3.client().get_object(Bucket=self.s3.bucket, Key=self._s3_key(key))
        data: bytes = answer["Body"].read()
        return data

    def write(self, key: str, data: bytes) -> None:
        """Overwrite the stored object behind the server's back."""
        if self.folder is not None:
            (self.folder / key).write_bytes(data)
            return
        self.s3.client().put_object(Bucket=self.s3.bucket, Key=self._s3_key(key), Body=data)

    def delete(self, key: str) -> None:
        if self.folder is not None:
            (self.folder / key).unlink()
            return
        self.s3.client().delete_object(Bucket=self.s3.bucket, Key=self._s3_key(key))

    def flip_byte(self, key: str, offset: int) -> None:
        data = bytearray(self.read(key))
        data[offset] ^= 0x01
        self.write(key, bytes(data))


@pytest.fixture(params=[("sqlite", "file"), ("postgres", "s3")], ids=["sqlite+file", "postgres+s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    database, storage = request.param
    if database == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        db_url = request.getfixturevalue("postgres_url")
    if storage == "file":
        folder = tmp_path / "storage"
        return Backend(db_url, folder.as_uri(), folder=folder)
    endpoint = request.getfixturevalue("s3_storage_url")
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    return Backend(db_url, endpoint.url_for(prefix), s3=endpoint, prefix=prefix)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write_config(tmp_path / "config", documents())
    return tmp_path / "config"


# -- the real server and the real command ---------------------------------------------------------


def serve(workdir: Path, config_dir: Path, backend: Backend, *args: str) -> ServerProcess:
    return start_server(
        workdir,
        config_dir,
        db_url=backend.database_url,
        extra_args=["--storage-url", backend.storage_url, *args],
    )


def login(server: ServerProcess) -> dict[str, str]:
    response = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": UPLOADER[0], "password": UPLOADER[1]},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


def put(server: ServerProcess, auth: dict[str, str], data: bytes) -> int:
    response = httpx.post(f"{server.url}{BASE}/db/version", content=data, headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    number: int = response.json()["data"]["version"]["versionNumber"]
    return number


def health(server: ServerProcess) -> tuple[int, list[dict[str, Any]]]:
    response = httpx.get(f"{server.url}{BASE}/db/health", timeout=30)
    checks: list[dict[str, Any]] = response.json()["data"]["health"]
    return response.status_code, checks


def integrity_check(server: ServerProcess) -> dict[str, Any]:
    checks = {c["name"]: c for c in health(server)[1]}
    return checks[CHECK]


def run_verify(
    backend: Backend, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    full_env.update(
        {"BR_DB_URL": backend.database_url, "BR_STORAGE_DRIVER_URL": backend.storage_url}
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "backup_repository", "verify", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def corrupt_gauge(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        sample.labels["collection"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "backup_repository_collection_corrupt_versions"
        for sample in family.samples
    }


def test_verify_detects_a_flipped_byte_and_a_deleted_object(
    tmp_path: Path, backend: Backend, config_dir: Path, gpg_home: GpgHome
) -> None:
    server = serve(tmp_path / "server", config_dir, backend)
    try:
        auth = login(server)
        bodies = {
            1: gpg_home.encrypt(b"first version " * 2000),
            2: pad_to(gpg_home.encrypt(b"second version"), 3 * MiB + 17),
            3: gpg_home.encrypt(b"third version " * 500),
        }
        for number, body in bodies.items():
            assert put(server, auth, body) == number
        status, checks = health(server)
        assert status == 200, checks
        # The new check comes last, after the reference's and StoredObjectsValidator.
        assert [c["name"] for c in checks] == [
            "BackupWindowValidator",
            "VersionsSizeValidator",
            "SumOfVersionsValidator",
            "StoredObjectsValidator",
            CHECK,
        ]
        assert checks[-1]["status"] is True
        assert checks[-1]["message"] == "not verified yet"

        clean = run_verify(backend, tmp_path)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        total = sum(len(b) for b in bodies.values())
        assert clean.stdout.splitlines() == [
            f"checked 3 versions in 1 collection, {format_bytes(total)}: 3 ok, 0 corrupt, "
            "0 missing, 0 unreadable"
        ]
        verified = integrity_check(server)
        assert verified["status"] is True
        assert verified["message"].startswith("3 versions verified, last at ")

        # One bit of v1 flipped (same size), v2 deleted; v3 untouched.
        backend.flip_byte("db/db-1.tar.gz", len(bodies[1]) // 2)
        backend.delete("db/db-2.tar.gz")
        damaged = run_verify(backend, tmp_path)
        assert damaged.returncode == 1, damaged.stdout + damaged.stderr
        lines = damaged.stdout.splitlines()
        assert lines[:2] == [
            "db v1: corrupt: SHA-256 differs",
            "db v2: missing: stored object is missing",
        ]
        assert lines[-1] == (
            "checked 3 versions in 1 collection, "
            f"{format_bytes(len(bodies[1]) + len(bodies[3]))}: 1 ok, 1 corrupt, 1 missing, "
            "0 unreadable"
        )

        status, checks = health(server)
        assert status == 500
        by_name = {c["name"]: c for c in checks}
        assert by_name[CHECK]["status"] is False
        assert by_name[CHECK]["statusText"] == f"{CHECK}=false"
        assert by_name[CHECK]["details"] == [
            "v1: SHA-256 differs",
            "v2: stored object is missing",
        ]
        assert by_name[CHECK]["message"] == "v1: SHA-256 differs; v2: stored object is missing"
        # The /metrics gauge counts both (corrupt and missing) for the collection.
        assert corrupt_gauge(server) == {"db": 2.0}

        # Repaired v1 is ok again at the next check; v2 stays missing. (--collection given on
        # the command line, the variables still set for the rest.)
        backend.flip_byte("db/db-1.tar.gz", len(bodies[1]) // 2)
        again = run_verify(backend, tmp_path, "--collection", "db")
        assert again.returncode == 1
        assert again.stdout.splitlines()[0] == "db v2: missing: stored object is missing"
        assert "2 ok, 0 corrupt, 1 missing" in again.stdout
        assert integrity_check(server)["details"] == ["v2: stored object is missing"]
        assert corrupt_gauge(server) == {"db": 1.0}
        # The version itself still downloads intact (v3), and v1 as repaired.
        response = httpx.get(f"{server.url}{BASE}/db/version/1", headers=auth, timeout=30)
        assert response.content == bodies[1]
    finally:
        server.stop()


def test_verify_command_usage_errors(tmp_path: Path) -> None:
    backend = Backend(f"sqlite:///{tmp_path / 'nothing-here.db'}", (tmp_path / "s").as_uri())
    missing = run_verify(backend, tmp_path)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    assert not (tmp_path / "nothing-here.db").exists()

    both = run_verify(backend, tmp_path, env={"BR_DB_HOSTNAME": "localhost", "BR_DB_NAME": "x"})
    assert both.returncode == 2
    assert "not both" in both.stderr

    bad_timeout = run_verify(backend, tmp_path, "--storage-io-timeout", "soon")
    assert bad_timeout.returncode == 2
    assert "soon" in bad_timeout.stderr


def test_verify_options_given_before_the_command_count(
    tmp_path: Path, config_dir: Path, gpg_home: GpgHome
) -> None:
    """``backup-repository --db-url=X verify`` must not fall back to the default database
    (and check nothing)."""
    backend = Backend(f"sqlite:///{tmp_path / 'db.sqlite'}", (tmp_path / "storage").as_uri())
    server = serve(tmp_path / "server", config_dir, backend)
    try:
        put(server, login(server), gpg_home.encrypt(b"one"))
    finally:
        server.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "backup_repository",
            "--db-url",
            backend.database_url,
            "--storage-url",
            backend.storage_url,
            "verify",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("checked 1 version in 1 collection")


def test_verify_interval_records_results_by_itself(
    tmp_path: Path, backend: Backend, config_dir: Path, gpg_home: GpgHome
) -> None:
    server = serve(tmp_path / "server", config_dir, backend, "--verify-interval=1s")
    try:
        auth = login(server)
        body = gpg_home.encrypt(b"scheduled " * 1000)
        put(server, auth, body)
        wait_until(
            lambda: integrity_check(server)["message"].startswith("1 versions verified"),
            timeout=30,
            interval=0.2,
        )
        backend.flip_byte("db/db-1.tar.gz", 100)
        failing = wait_until(
            lambda: (c := integrity_check(server))["status"] is False and c, timeout=30
        )
        assert failing["details"] == ["v1: SHA-256 differs"]
        # The scheduled check logs its summary.
        assert "checked 1 version in 1 collection" in server.log()
    finally:
        assert server.stop() == 0


def _passes(log: str) -> list[tuple[datetime, datetime]]:
    """(started, finished) of every integrity check pass in a JSON log."""
    found = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("message", "")).startswith(
            "integrity check: "
        ):
            found.append(
                (
                    datetime.fromisoformat(record["started_at"]),
                    datetime.fromisoformat(record["finished_at"]),
                )
            )
    return found


def test_two_servers_take_turns_on_one_schedule(
    tmp_path: Path, postgres_url: str, config_dir: Path, gpg_home: GpgHome
) -> None:
    """Two replicas with --verify-interval on one PostgreSQL: never two passes at once, and
    one pass per interval between them, not one each."""
    backend = Backend(postgres_url, (tmp_path / "storage").as_uri())
    interval = 2.0
    first = serve(tmp_path / "a", config_dir, backend, f"--verify-interval={interval:g}s")
    second = serve(tmp_path / "b", config_dir, backend, f"--verify-interval={interval:g}s")
    try:
        auth = login(first)
        for i in range(3):
            put(first, auth, gpg_home.encrypt(f"version {i}".encode() * 3000))
        wait_until(lambda: len(_passes(first.log()) + _passes(second.log())) >= 4, timeout=40)
    finally:
        first.stop()
        second.stop()
    passes = sorted(_passes(first.log()) + _passes(second.log()))
    for (started, finished), (next_started, _) in itertools.pairwise(passes):
        assert finished <= next_started, passes
        # Each pass holds the schedule for the interval after its start (a few ms are
        # spent between taking the lease and starting the pass).
        assert (next_started - started).total_seconds() >= interval - 0.1, passes


# -- the service in process ---------------------------------------------------------------------


@pytest.fixture
async def app(tmp_path: Path, backend: Backend, config_dir: Path) -> AsyncIterator[Any]:
    application = create_app(make_settings(tmp_path, backend.database_url, backend.storage_url))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def upload(client: httpx.AsyncClient, data: bytes) -> int:
    response = await client.post(
        "/api/stable/auth/login", json={"username": UPLOADER[0], "password": UPLOADER[1]}
    )
    auth = {"Authorization": f"Bearer {response.json()['data']['token']}"}
    response = await client.post(f"{BASE}/db/version", content=data, headers=auth, timeout=120)
    assert response.status_code == 200, response.text
    number: int = response.json()["data"]["version"]["versionNumber"]
    return number


async def test_results_counts_and_events_in_process(
    app: Any, client: httpx.AsyncClient, backend: Backend, gpg_home: GpgHome
) -> None:
    services = app.state.services
    sink = RecordingSink()
    services.events.add(sink)
    bodies = [gpg_home.encrypt(f"v{i}".encode() * 4000) for i in (1, 2, 3)]
    for body in bodies:
        await upload(client, body)
    assert await services.integrity.corrupt_counts() == {}

    report = await services.integrity.verify()
    assert report.all_ok
    assert [c.number for c in report.checks] == [1, 2, 3]
    assert [c.actual_sha256 for c in report.checks] == [
        hashlib.sha256(b).hexdigest() for b in bodies
    ]
    assert await services.integrity.corrupt_counts() == {"db": 0}
    assert not [e for e in sink.events if e.action is Action.VERIFY]

    # v2 grows by a byte (its size alone tells), v3 disappears.
    backend.write("db/db-2.tar.gz", bodies[1] + b"\x00")
    backend.delete("db/db-3.tar.gz")
    report = await services.integrity.verify("db")
    assert [(c.number, c.status) for c in report.problems] == [(2, "corrupt"), (3, "missing")]
    assert report.problems[0].detail == f"stored object has {len(bodies[1]) + 1} bytes, " + (
        f"{len(bodies[1])} recorded"
    )
    assert report.problems[0].actual_size == len(bodies[1]) + 1
    # Only v1 was read; the grown v2 was judged by its size.
    assert report.bytes_read == len(bodies[0])
    assert await services.integrity.corrupt_counts() == {"db": 2}
    results = {r.number: r.status for r in await services.integrity.results("db")}
    assert results == {1: "ok", 2: "corrupt", 3: "missing"}

    failures = [e for e in sink.events if e.action is Action.VERIFY]
    assert [(e.outcome, e.version, e.reason) for e in failures] == [
        (Outcome.FAILURE, 2, "corrupt"),
        (Outcome.FAILURE, 3, "missing"),
    ]
    assert failures[1].collection == "db"
    assert failures[1].detail == "stored object is missing"

    # A verification of another collection only checks nothing and changes nothing.
    other = await services.integrity.verify("nothing-here")
    assert other.checks == ()
    assert other.all_ok
    assert await services.integrity.corrupt_counts() == {"db": 2}


async def test_a_version_rotated_away_during_the_check_is_skipped(
    tmp_path: Path, backend: Backend, gpg_home: GpgHome
) -> None:
    write_config(tmp_path / "config", documents(max_backups=2))
    app = create_app(make_settings(tmp_path, backend.database_url, backend.storage_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await upload(client, gpg_home.encrypt(b"one"))
            await upload(client, gpg_home.encrypt(b"two"))
            integrity = app.state.services.integrity
            engine = create_engine(backend.database_url)
            try:
                first = await SqlVersionRepository(engine).get_version("db", 1)
            finally:
                await engine.dispose()
            assert first is not None
            # The pass listed v1, then an upload rotated it out and deleted its object.
            await upload(client, gpg_home.encrypt(b"three"))
            assert await integrity.check_version(first) is None
            assert await integrity.results("db") == []
            report = await integrity.verify()
            assert [c.number for c in report.checks] == [2, 3]
            assert report.all_ok


async def test_a_storage_outage_is_unreadable_not_corrupt(
    tmp_path: Path, config_dir: Path, gpg_home: GpgHome
) -> None:
    backend = Backend(f"sqlite:///{tmp_path / 'db.sqlite'}", (tmp_path / "storage").as_uri())
    app = create_app(make_settings(tmp_path, backend.database_url, backend.storage_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await upload(client, gpg_home.encrypt(b"one"))
            engine = create_engine(backend.database_url)
            down = open_blob_store(
                "s3://bucket?endpoint=127.0.0.1:9&disableSSL=true&s3ForcePathStyle=true"
                "&region=us-east-1",
                io_timeout=2,
            )
            sink = RecordingSink()
            try:
                service = IntegrityService(
                    versions=SqlVersionRepository(engine),
                    store=down,
                    results=SqlIntegrityRepository(engine),
                    io_timeout=5,
                    events=sink,
                )
                report = await service.verify()
            finally:
                await down.close()
                await engine.dispose()
            assert [(c.number, c.status) for c in report.checks] == [(1, "unreadable")]
            assert report.checks[0].detail.startswith("storage error: ")
            assert not report.all_ok
            assert [e.reason for e in sink.events] == ["unreadable"]
            # Not damage: the health check passes and says so; the gauge counts nothing.
            assert await app.state.services.integrity.corrupt_counts() == {"db": 0}
            response = await client.get(f"{BASE}/db/health")
            checks = {c["name"]: c for c in response.json()["data"]["health"]}
            assert checks[CHECK]["status"] is True
            assert "could not be read at the last check: v1" in checks[CHECK]["message"]


async def test_memory_stays_flat_while_checking_a_large_version(
    tmp_path: Path, config_dir: Path, gpg_home: GpgHome
) -> None:
    backend = Backend(f"sqlite:///{tmp_path / 'db.sqlite'}", (tmp_path / "storage").as_uri())
    size = 96 * MiB
    app = create_app(make_settings(tmp_path, backend.database_url, backend.storage_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = pad_to(gpg_home.encrypt(b"large"), size)
            await upload(client, body)
            expected = hashlib.sha256(body).hexdigest()
            del body
            integrity = app.state.services.integrity
            tracemalloc.start()
            try:
                report = await integrity.verify()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert report.all_ok
    assert report.checks[0].actual_sha256 == expected
    assert report.bytes_read == size
    # Chunks of about 1 MiB, at most 8 waiting for the hashing thread.
    assert peak < 20 * MiB, f"peak {peak / MiB:.1f} MiB while reading {size / MiB:.0f} MiB"


class SlowStore:
    """The real store, with reads slowed down and counted: how many objects are being read
    at the same time, over every service sharing one instance of this."""

    def __init__(self, store: BlobStore, delay: float) -> None:
        self._store = store
        self._delay = delay
        self.reading = 0
        self.most = 0
        self.reads = 0

    async def stat(self, key: str) -> BlobInfo | None:
        return await self._store.stat(key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self.reading += 1
        self.reads += 1
        self.most = max(self.most, self.reading)
        try:
            await asyncio.sleep(self._delay)
            async for chunk in self._store.read(key, start, end):
                yield chunk
        finally:
            self.reading -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def shared_postgres(tmp_path: Path, postgres_url: str) -> Backend:
    return Backend(postgres_url, (tmp_path / "storage").as_uri())


async def test_the_lease_keeps_replicas_from_checking_at_once(
    tmp_path: Path, shared_postgres: Backend, config_dir: Path, gpg_home: GpgHome
) -> None:
    backend = shared_postgres
    app = create_app(make_settings(tmp_path, backend.database_url, backend.storage_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(3):
                await upload(client, gpg_home.encrypt(f"v{i}".encode()))
    real = open_blob_store(backend.storage_url, io_timeout=10)
    store = SlowStore(real, delay=0.1)
    engines = [create_engine(backend.database_url) for _ in range(2)]
    try:
        await migrate(engines[0])
        replicas = [
            IntegrityService(
                versions=SqlVersionRepository(engine),
                store=store,  # type: ignore[arg-type]
                results=SqlIntegrityRepository(engine),
                io_timeout=10,
                leases=SqlLeaseRepository(engine),
                lease_seconds=3,
            )
            for engine in engines
        ]
        # Without the lease, two passes overlap (the detector works).
        await asyncio.gather(*(r.verify() for r in replicas))
        assert store.most == 2
        store.most = store.reads = 0

        interval = 0.5
        began = time.monotonic()
        tasks = [asyncio.create_task(r.run_periodically(interval)) for r in replicas]
        # Until a few passes (3 versions each) were made, however long the machine takes.
        await eventually(lambda: store.reads >= 3 * 3, within=60)
        elapsed = time.monotonic() - began
        for task in tasks:
            task.cancel()
        for task in tasks:
            with pytest.raises(asyncio.CancelledError):
                await task
        assert store.most == 1
        # Passes of 3 versions at 0.1 s each, at most one per interval: not one per replica
        # per interval.
        passes = store.reads / 3
        assert 3 <= passes <= elapsed / interval + 1, (store.reads, elapsed)
        # A replica cancelled mid-pass gave the lease up; one that finished holds the
        # schedule until its interval is over.
        holder, _until = await SqlLeaseRepository(engines[0]).holder(LEASE_NAME)
        assert holder is not None
        assert {r.status for r in await replicas[0].results()} == {CheckStatus.OK.value}
    finally:
        for engine in engines:
            await engine.dispose()
        await real.close()


async def test_the_lease_holds_the_schedule_and_is_freed_by_a_cancelled_pass(
    tmp_path: Path, config_dir: Path, gpg_home: GpgHome
) -> None:
    backend = Backend(f"sqlite:///{tmp_path / 'db.sqlite'}", (tmp_path / "storage").as_uri())
    app = create_app(make_settings(tmp_path, backend.database_url, backend.storage_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await upload(client, gpg_home.encrypt(b"one"))
    engine = create_engine(backend.database_url)
    real = open_blob_store(backend.storage_url, io_timeout=10)
    leases = SqlLeaseRepository(engine)
    try:

        def replica(store: Any) -> IntegrityService:
            return IntegrityService(
                versions=SqlVersionRepository(engine),
                store=store,
                results=SqlIntegrityRepository(engine),
                io_timeout=10,
                leases=leases,
            )

        # A finished pass keeps everybody, itself included, from the next one for an hour.
        first = replica(real)
        report = await first.run_if_due(3600)
        assert report is not None
        assert report.all_ok
        holder, until = await leases.holder(LEASE_NAME)
        assert holder is not None
        assert until is not None
        assert 3590 < (until - report.started_at).total_seconds() <= 3600
        assert await first.run_if_due(3600) is None
        assert await replica(real).run_if_due(3600) is None

        # Once the hour is over (here: the lease freed), a pass cancelled midway (a
        # shutdown) gives the lease up at once for another replica.
        assert holder is not None
        await leases.release(LEASE_NAME, holder)
        slow = SlowStore(real, delay=5)
        stopping = asyncio.create_task(replica(slow).run_if_due(3600))
        await eventually(lambda: slow.reading == 1)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        _, until = await leases.holder(LEASE_NAME)
        assert until is None
        assert await replica(real).run_if_due(3600) is not None
    finally:
        await real.close()
        await engine.dispose()


async def test_the_schedule_survives_a_database_outage_and_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine("postgresql://nobody@127.0.0.1:9/nothing")
    store = open_blob_store((tmp_path / "storage").as_uri(), io_timeout=5)
    try:
        service = IntegrityService(
            versions=SqlVersionRepository(engine),
            store=store,
            results=SqlIntegrityRepository(engine),
            io_timeout=5,
            leases=SqlLeaseRepository(engine),
        )
        with caplog.at_level("WARNING", logger="backup_repository.services.integrity"):
            task = asyncio.create_task(service.run_periodically(0.1))

            def failures() -> int:
                return sum("scheduled integrity check failed" in r.message for r in caplog.records)

            # Two failed passes in a row: the schedule went on after the first.
            await eventually(lambda: failures() >= 2, within=30)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        await store.close()
        await engine.dispose()
