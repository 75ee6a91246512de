"""``backup-repository import-reference`` against a "reference bucket" (a folder, and the
S3 test endpoint) holding real gpg-encrypted objects named by the collections' templates,
with and without the reference's ``uploaded_versions`` table; then the real server on the
same database and storage serves what was imported."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.storage.factory import open_blob_store
from gpg_fixtures import SAMPLES_DIR
from storage_fixtures import S3TestEndpoint
from support import (
    ServerProcess,
    collection_doc,
    free_port,
    server_command,
    start_server,
    user_doc,
    write_config,
)

BASE = "/api/stable/repository/collection"
DB_TEMPLATE = "db-${version}.sql.gz.asc"
FILES_TEMPLATE = "files-${version}.tar.gpg"

# Real OpenPGP messages made by gpg (tests/fixtures/openpgp), each different.
ENCRYPTED = [
    (SAMPLES_DIR / name).read_bytes()
    for name in ("public-key.gpg", "symmetric.asc", "two-recipients.gpg", "streamed.gpg")
]
PLAIN = (SAMPLES_DIR / "plain.txt").read_bytes()


# -- helpers ---------------------------------------------------------------------------------


def config(folder: Path) -> Path:
    db = collection_doc("db")
    db["spec"].update(filenameTemplate=DB_TEMPLATE, maxBackupsCount=10)
    db["spec"].update(maxOneVersionSize="1M", maxCollectionSize="20M")
    files = collection_doc("files")
    files["spec"].update(filenameTemplate=FILES_TEMPLATE, maxBackupsCount=10)
    write_config(folder, [user_doc("admin", "admin-pass", ["systemAdmin"]), db, files])
    return folder


def put_objects(storage_url: str, objects: Mapping[str, bytes]) -> None:
    async def put() -> None:
        store = open_blob_store(storage_url, io_timeout=10)
        try:
            for key, data in objects.items():

                async def chunks(data: bytes = data) -> AsyncIterator[bytes]:
                    yield data

                await store.put_stream(key, chunks())
        finally:
            await store.close()

    asyncio.run(put())


def read_object(storage_url: str, key: str) -> bytes | None:
    async def read() -> bytes | None:
        store = open_blob_store(storage_url, io_timeout=10)
        try:
            if await store.stat(key) is None:
                return None
            return b"".join([chunk async for chunk in store.read(key)])
        finally:
            await store.close()

    return asyncio.run(read())


@dataclass
class Run:
    code: int
    out: str
    err: str

    def line(self, collection: str) -> str:
        for line in self.out.splitlines():
            if line.startswith(f"{collection}: "):
                return line
        raise AssertionError(f"no line for {collection} in:\n{self.out}")


def run_import(
    workdir: Path,
    *args: str,
    db_url: str,
    storage_url: str,
    env: Mapping[str, str] | None = None,
) -> Run:
    """The command in a subprocess, configured partly by environment variables (as in a
    Kubernetes Job) and partly by flags."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    full_env.update(
        BR_DB_URL=db_url,
        BR_STORAGE_DRIVER_URL=storage_url,
        BR_LOG_LEVEL="warning",
    )
    full_env.update(env or {})
    completed = subprocess.run(
        server_command("import-reference", "--config-local-path", str(workdir / "config"), *args),
        capture_output=True,
        cwd=workdir,
        env=full_env,
        timeout=120,
        check=False,
    )
    return Run(completed.returncode, completed.stdout.decode(), completed.stderr.decode())


def login(server: ServerProcess) -> dict[str, str]:
    response = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": "admin", "password": "admin-pass"},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


def versions(
    server: ServerProcess, auth: dict[str, str], collection: str
) -> list[dict[str, object]]:
    response = httpx.get(f"{server.url}{BASE}/{collection}/version", headers=auth)
    assert response.status_code == 200, response.text
    found: list[dict[str, object]] = response.json()["data"]["versions"]
    return found


def download(server: ServerProcess, auth: dict[str, str], collection: str, number: int) -> bytes:
    response = httpx.get(f"{server.url}{BASE}/{collection}/version/{number}", headers=auth)
    assert response.status_code == 200, response.text
    return response.content


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    config(tmp_path / "config")
    return tmp_path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'server.db'}"


def serve(
    workdir: Path, db_url: str, storage_url: str, env: Mapping[str, str] | None = None
) -> ServerProcess:
    return start_server(
        workdir / "server",
        workdir / "config",
        db_url=db_url,
        extra_args=["--storage-url", storage_url],
        env=env,
    )


# -- by file names ---------------------------------------------------------------------------


REFERENCE_BUCKET = {
    "db/db-1.sql.gz.asc": ENCRYPTED[0],
    "db/db-2.sql.gz.asc": ENCRYPTED[1],
    "db/db-4.sql.gz.asc": ENCRYPTED[2],  # 3 was rotated out by the reference
    "db/db-5.sql.gz.asc": PLAIN,  # not OpenPGP: reported, left alone
    "db/notes.txt": b"an operator's note\n",  # not a name the template gives
    "db/db-07.sql.gz.asc": ENCRYPTED[0],  # leading zero: not a name the template gives
    "files/files-1.tar.gpg": ENCRYPTED[3],
}


def test_import_by_names_then_the_server_serves_the_versions(
    workdir: Path, database_url: str, storage_url: str
) -> None:
    put_objects(storage_url, REFERENCE_BUCKET)

    first = run_import(workdir, db_url=database_url, storage_url=storage_url)
    assert first.code == 1, first  # some objects were skipped
    assert first.line("db").startswith("db: 3 registered, 0 already registered, 3 skipped")
    assert "last version number 0 -> 5" in first.line("db")
    assert first.line("files").startswith("files: 1 registered, 0 already registered, 0 skipped")
    assert re.search(r"skipped db/db-5\.sql\.gz\.asc: not-openpgp: .*GPG header", first.out)
    assert "skipped db/notes.txt: not-matching" in first.out
    assert "skipped db/db-07.sql.gz.asc: not-matching" in first.out
    assert "summary: 2 collection(s), 4 version(s) registered" in first.out

    server = serve(workdir, database_url, storage_url)
    try:
        auth = login(server)
        listed = versions(server, auth, "db")
        assert [v["versionNumber"] for v in listed] == [4, 2, 1]
        for version in listed:
            key = f"db/db-{version['versionNumber']}.sql.gz.asc"
            data = REFERENCE_BUCKET[key]
            assert version["filename"] == key.removeprefix("db/")
            assert version["filesize"] == len(data)
            assert version["sha256"] == sha256(data)
            assert download(server, auth, "db", int(str(version["versionNumber"]))) == data
        assert [v["versionNumber"] for v in versions(server, auth, "files")] == [1]
        assert download(server, auth, "files", 1) == ENCRYPTED[3]

        # The next number is past every number in the bucket: db-5 (not imported) stays.
        response = httpx.post(
            f"{server.url}{BASE}/db/version", content=ENCRYPTED[3], headers=auth, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["version"]["versionNumber"] == 6
        assert read_object(storage_url, "db/db-5.sql.gz.asc") == PLAIN
        assert read_object(storage_url, "db/db-6.sql.gz.asc") == ENCRYPTED[3]

        # Running it again registers nothing twice (the server may keep running).
        again = run_import(workdir, db_url=database_url, storage_url=storage_url)
        assert again.code == 1, again
        assert again.line("db").startswith("db: 0 registered, 4 already registered, 3 skipped")
        assert again.line("db").endswith("; last version number 6")
        assert again.line("files").startswith("files: 0 registered, 1 already registered")
        assert [v["versionNumber"] for v in versions(server, auth, "db")] == [6, 4, 2, 1]

        clean = run_import(
            workdir, "--collection", "files", db_url=database_url, storage_url=storage_url
        )
        assert clean.code == 0, clean
        assert "db:" not in clean.out
    finally:
        server.stop()


def test_non_openpgp_objects_are_registered_when_allowed(
    workdir: Path, sqlite_url: str, tmp_path: Path
) -> None:
    storage_url = (tmp_path / "bucket").as_uri()
    put_objects(storage_url, {"db/db-1.sql.gz.asc": PLAIN, "db/db-2.sql.gz.asc": ENCRYPTED[0]})
    run = run_import(
        workdir,
        "--allow-non-openpgp",
        "-c",
        "db",
        db_url=sqlite_url,
        storage_url=storage_url,
    )
    assert run.code == 0, run
    assert run.line("db").startswith("db: 2 registered")
    assert re.search(r"registered v1 db/db-1\.sql\.gz\.asc .*NOT OpenPGP", run.out)


def test_the_report_notes_collections_over_their_limits(tmp_path: Path, sqlite_url: str) -> None:
    tiny = collection_doc("tiny")
    tiny["spec"].update(filenameTemplate="t-${version}", maxBackupsCount=2)
    tiny["spec"].update(maxOneVersionSize="300", maxCollectionSize="700")
    write_config(tmp_path / "config", [tiny])
    storage_url = (tmp_path / "bucket").as_uri()
    put_objects(storage_url, {f"tiny/t-{n + 1}": ENCRYPTED[n] for n in range(3)})
    assert all(len(data) > 300 for data in ENCRYPTED[:3])

    run = run_import(tmp_path, db_url=sqlite_url, storage_url=storage_url)
    assert run.code == 0, run
    assert run.line("tiny").startswith("tiny: 3 registered")
    assert "note: 3 versions, more than maxBackupsCount (2)" in run.out
    assert "note: 3 version(s) larger than maxOneVersionSize (300 bytes)" in run.out
    assert "more than maxCollectionSize (700 bytes)" in run.out


def test_collections_from_the_kubernetes_provider(
    workdir: Path, sqlite_url: str, tmp_path: Path
) -> None:
    from k8s_fake import FakeKubernetesApi

    storage_url = (tmp_path / "bucket").as_uri()
    put_objects(storage_url, {"db/db-1.sql.gz.asc": ENCRYPTED[0], "files/files-2.tar.gpg": PLAIN})
    with FakeKubernetesApi("backups") as api:
        api.load_yaml_files(workdir / "config")
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        run = run_import(
            workdir,
            "--provider=kubernetes",
            "--namespace=backups",
            "--collection=db",
            # Not read with --provider=kubernetes (it would fail the run if it were).
            f"--config-local-path={tmp_path / 'no-such-folder'}",
            db_url=sqlite_url,
            storage_url=storage_url,
            env={"BR_KUBECONFIG": str(kubeconfig)},
        )
    assert run.code == 0, run
    assert run.line("db").startswith("db: 1 registered")
    assert "files:" not in run.out


def test_dry_run_writes_nothing(workdir: Path, tmp_path: Path, postgres_url: str) -> None:
    storage_url = (tmp_path / "bucket").as_uri()
    put_objects(storage_url, REFERENCE_BUCKET)
    sqlite_file = tmp_path / "never.db"

    run = run_import(
        workdir, "--dry-run", db_url=f"sqlite:///{sqlite_file}", storage_url=storage_url
    )
    assert run.code == 1, run
    assert run.line("db").startswith("db: 3 would register, 0 already registered, 3 skipped")
    assert "would register v4 db/db-4.sql.gz.asc" in run.out
    assert "(dry run: nothing was written)" in run.out
    assert not sqlite_file.exists()

    # An existing but empty PostgreSQL database: no tables appear.
    run = run_import(workdir, "--dry-run", db_url=postgres_url, storage_url=storage_url)
    assert run.line("files").startswith("files: 1 would register")
    assert asyncio.run(table_names(postgres_url)) == []

    # A migrated database with versions: nothing is added.
    done = run_import(workdir, "-c", "files", db_url=postgres_url, storage_url=storage_url)
    assert done.code == 0, done
    before = asyncio.run(version_rows(postgres_url))
    run = run_import(workdir, "--dry-run", db_url=postgres_url, storage_url=storage_url)
    assert run.line("files").startswith("files: 0 would register, 1 already registered")
    assert run.line("db").startswith("db: 3 would register")
    assert asyncio.run(version_rows(postgres_url)) == before
    assert asyncio.run(counters(postgres_url)) == {"files": 1}


def test_a_changed_object_is_a_conflict_and_nothing_is_overwritten(
    workdir: Path, sqlite_url: str, tmp_path: Path
) -> None:
    storage_url = (tmp_path / "bucket").as_uri()
    put_objects(storage_url, {"db/db-1.sql.gz.asc": ENCRYPTED[0]})
    assert run_import(workdir, "-c", "db", db_url=sqlite_url, storage_url=storage_url).code == 0

    put_objects(
        storage_url, {"db/db-1.sql.gz.asc": ENCRYPTED[2], "db/db-2.sql.gz.asc": ENCRYPTED[1]}
    )
    run = run_import(workdir, "-c", "db", db_url=sqlite_url, storage_url=storage_url)
    assert run.code == 1, run
    assert run.line("db").startswith(
        "db: 1 registered, 0 already registered, 1 skipped (1 conflict)"
    )
    assert (
        f"skipped db/db-1.sql.gz.asc: conflict: version 1 is registered with "
        f"{len(ENCRYPTED[0])} bytes, the object now has {len(ENCRYPTED[2])}"
    ) in run.out

    rows = asyncio.run(version_rows(sqlite_url))
    assert rows == [
        ("db", 1, len(ENCRYPTED[0]), sha256(ENCRYPTED[0])),
        ("db", 2, len(ENCRYPTED[1]), sha256(ENCRYPTED[1])),
    ]


def test_a_collection_with_an_upload_in_progress_is_not_imported(
    workdir: Path, sqlite_url: str, tmp_path: Path
) -> None:
    storage_url = (tmp_path / "bucket").as_uri()
    put_objects(storage_url, {"db/db-1.sql.gz.asc": ENCRYPTED[0]})

    async def hold_lock() -> None:
        engine = create_engine(sqlite_url)
        try:
            await migrate(engine)
            assert await SqlVersionRepository(engine).try_lock("db", "a-server", 600) == 0
        finally:
            await engine.dispose()

    asyncio.run(hold_lock())
    run = run_import(workdir, db_url=sqlite_url, storage_url=storage_url)
    assert run.code == 1, run
    assert run.line("db").startswith(
        "db: not imported: an upload to this collection is in progress"
    )
    assert "1 collection(s) not imported" in run.out
    assert asyncio.run(version_rows(sqlite_url)) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "nope"], "cannot import collection nope (no such BackupCollection)"),
        (["--reference-db-url", "mysql://x/y"], "--reference-db-url: database 'mysql'"),
        (["--storage-io-timeout", "soon"], "Invalid value for '--storage-io-timeout'"),
        (["--config-local-path", "/nonexistent/config"], "the configuration cannot be read"),
    ],
)
def test_usage_errors_exit_2(
    workdir: Path, sqlite_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    run = run_import(workdir, *args, db_url=sqlite_url, storage_url=(tmp_path / "b").as_uri())
    assert run.code == 2, run
    assert message in run.err


def test_a_bad_database_url_is_a_usage_error(workdir: Path, tmp_path: Path) -> None:
    run = run_import(workdir, db_url="oracle://db/x", storage_url=(tmp_path / "b").as_uri())
    assert run.code == 2, run
    assert "database 'oracle' is not supported" in run.err


def test_an_unreachable_database_is_named_without_its_password(
    workdir: Path, sqlite_url: str, tmp_path: Path
) -> None:
    closed = f"postgresql://ref:s3cret-pw@127.0.0.1:{free_port()}/reference"
    storage_url = (tmp_path / "b").as_uri()
    run = run_import(
        workdir, "--reference-db-url", closed, db_url=sqlite_url, storage_url=storage_url
    )
    assert run.code == 1, run
    assert "cannot reach the reference database at postgresql://ref:***@127.0.0.1" in run.err
    assert "s3cret-pw" not in run.err + run.out

    run = run_import(workdir, db_url=closed, storage_url=storage_url)
    assert run.code == 1, run
    assert "cannot reach the database at postgresql://ref:***@127.0.0.1" in run.err


# -- with the reference database ----------------------------------------------------------------

# The table GORM's AutoMigrate creates on PostgreSQL for the reference's UploadedVersion.
REFERENCE_DDL = (
    'CREATE TABLE "uploaded_versions" ("id" text, "collection_id" text, '
    '"version_number" bigint, "filename" text, "filesize" bigint, '
    '"uploaded_by_session_id" text, "uploader" text, "created_at" timestamptz, '
    '"updated_at" timestamptz, "deleted_at" timestamptz, PRIMARY KEY ("id"))',
    'CREATE INDEX "idx_uploaded_versions_deleted_at" ON "uploaded_versions" ("deleted_at")',
)
SESSION = "ab" * 32


def reference_rows() -> list[tuple[object, ...]]:
    def at(day: int) -> datetime:
        return datetime(2023, 3, day, 4, 30, tzinfo=UTC)

    return [
        # id, collection, number, filename, size, session, uploader, created, updated, deleted
        (
            "u2",
            "db",
            2,
            "db-2.sql.gz.asc",
            len(ENCRYPTED[1]),
            SESSION,
            "alice",
            at(2),
            at(2),
            at(9),
        ),
        ("u3", "db", 3, "db-3.sql.gz.asc", len(ENCRYPTED[0]), SESSION, "alice", at(3), at(3), None),
        ("u5", "db", 5, "db-5.sql.gz.asc", len(ENCRYPTED[2]), "", "bob", at(5), at(6), None),
        ("f1", "files", 1, "files-1.tar.gpg", len(ENCRYPTED[3]), "", "bob", at(1), at(1), None),
    ]


async def create_reference(url: str, rows: Sequence[tuple[object, ...]]) -> None:
    connection = await asyncpg.connect(dsn(url))
    try:
        for statement in REFERENCE_DDL:
            await connection.execute(statement)
        await connection.executemany(
            "INSERT INTO uploaded_versions VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            rows,
        )
    finally:
        await connection.close()


def test_import_with_the_reference_database(
    workdir: Path, sqlite_url: str, postgres_url: str, s3_storage_url: S3TestEndpoint
) -> None:
    storage_url = s3_storage_url.url_for(f"ref-{uuid.uuid4().hex[:12]}")
    put_objects(
        storage_url,
        {
            "db/db-3.sql.gz.asc": ENCRYPTED[0],
            "db/db-5.sql.gz.asc": ENCRYPTED[2],
            "files/files-1.tar.gpg": ENCRYPTED[3],
        },
    )
    asyncio.run(create_reference(postgres_url, reference_rows()))

    run = run_import(
        workdir,
        "--reference-db-url",
        postgres_url,
        db_url=sqlite_url,
        storage_url=storage_url,
    )
    assert run.code == 0, run
    assert (
        run.line("db")
        == "db: 2 registered, 0 already registered, 0 skipped; last version number 0 -> 5"
    )
    assert "created 2023-03-05T04:30:00Z" in run.out

    again = run_import(
        workdir,
        db_url=sqlite_url,
        storage_url=storage_url,
        env={"BR_REFERENCE_DB_URL": postgres_url},
    )
    assert again.code == 0, again
    assert again.line("db").startswith("db: 0 registered, 2 already registered, 0 skipped")

    server = serve(workdir, sqlite_url, storage_url)
    try:
        auth = login(server)
        listed = versions(server, auth, "db")
        assert [(v["versionNumber"], v["user"], v["CreatedAt"]) for v in listed] == [
            (5, "bob", "2023-03-05T04:30:00Z"),
            (3, "alice", "2023-03-03T04:30:00Z"),
        ]
        assert listed[1]["uploadedBySessionId"] == SESSION
        assert listed[0]["sha256"] == sha256(ENCRYPTED[2])
        assert download(server, auth, "db", 3) == ENCRYPTED[0]
        response = httpx.post(
            f"{server.url}{BASE}/db/version", content=ENCRYPTED[1], headers=auth, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["version"]["versionNumber"] == 6
    finally:
        server.stop()


def test_reference_rows_without_objects_and_unknown_collections_are_reported(
    workdir: Path, sqlite_url: str, postgres_url: str, tmp_path: Path
) -> None:
    storage_url = (tmp_path / "bucket").as_uri()
    put_objects(
        storage_url,
        {"db/db-3.sql.gz.asc": ENCRYPTED[0], "db/db-9.sql.gz.asc": ENCRYPTED[1]},
    )
    rows = [*reference_rows(), ("x1", "old", 1, "old-1.gpg", 5, "", "carol", None, None, None)]
    asyncio.run(create_reference(postgres_url, rows))
    run = run_import(
        workdir, "--reference-db-url", postgres_url, db_url=sqlite_url, storage_url=storage_url
    )
    assert run.code == 1, run
    assert "skipped v5: missing: the reference database records db/db-5.sql.gz.asc" in run.out
    assert "skipped db/db-9.sql.gz.asc: unreferenced" in run.out
    assert "last version number 0 -> 9" in run.line("db")
    assert "old: not imported: the reference database has 1 version(s) of it" in run.out


def test_a_database_without_the_reference_table_is_refused(
    workdir: Path, sqlite_url: str, postgres_url: str, tmp_path: Path
) -> None:
    run = run_import(
        workdir,
        "--reference-db-url",
        postgres_url,
        db_url=sqlite_url,
        storage_url=(tmp_path / "b").as_uri(),
    )
    assert run.code == 2, run
    assert "has no uploaded_versions table" in run.err


# -- database helpers ------------------------------------------------------------------------


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def table_names(url: str) -> list[str]:
    connection = await asyncpg.connect(dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
    finally:
        await connection.close()
    return [str(r[0]) for r in rows]


async def version_rows(url: str) -> list[tuple[str, int, int, str]]:
    from sqlalchemy import select

    from backup_repository.db.tables import backup_versions

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(
                        backup_versions.c.collection_id,
                        backup_versions.c.version_number,
                        backup_versions.c.filesize,
                        backup_versions.c.sha256,
                    ).order_by(backup_versions.c.collection_id, backup_versions.c.version_number)
                )
            ).all()
    finally:
        await engine.dispose()
    return [(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]


async def counters(url: str) -> dict[str, int]:
    from sqlalchemy import select

    from backup_repository.db.tables import collection_states

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(
                        collection_states.c.collection_id, collection_states.c.last_version_number
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    return {str(r[0]): int(r[1]) for r in rows}
