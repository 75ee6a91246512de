"""Nothing lost on crashes (issue 4, item 1).

Each round starts uploads to two small collections from three client threads (complete
ones, and partial ones that stop midway over a raw socket; random sizes, some large enough
for an S3 multipart upload), kills the server with SIGKILL at a random moment (a random
delay; or at the very start; or right after a 200 went out, while the other collection's
upload may be committing or rotating), looks at what the crash left in the database and
the storage, restarts the server and checks:

- every version the API confirmed with 200 is listed and downloads byte-identical
  (SHA-256), unless the rotation legitimately removed it (below);
- no version is listed that was not confirmed, except an upload whose whole body was sent
  and whose answer the crash swallowed ("in doubt": committed or not, both are right);
  a refused (409) or partial upload never is;
- version numbers are unique and gap-free in commit order: the database holds exactly the
  numbers 1..N, N is the collection's counter, the live ones are the newest min(n, N);
- after the next upload to the collection (which cleans up under the collection's lock)
  the storage holds exactly the objects of the live versions: no staging files, no
  objects stored but never recorded, none of rotated versions; every rotated version is
  marked purged but the one that upload rotated out (its row is marked by the one after).

"Legitimately removed by rotation" (fifo, n = maxBackupsCount): versions are numbered in
commit order 1..N, and every commit deletes what exceeds the newest n. So a confirmed
version v may be gone exactly when v <= N - n, and must be listed when v > N - n. N counts
every commit, also the in-doubt ones the client never heard of; using "the newest n
confirmed" instead would be wrong the moment an in-doubt upload was committed.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from reliability_support import PgpBodies, UploadOutcome, login, send_upload, sha256
from sqlalchemy import select

from backup_repository.db.engine import create_engine
from backup_repository.db.tables import backup_versions, collection_states
from support import ServerProcess, collection_doc, start_server, user_doc, write_config

pytestmark = pytest.mark.e2e

FAST_ROUNDS = 3
SLOW_ROUNDS = int(os.environ.get("BR_CRASH_ROUNDS", "20"))
LOCK_LEASE_S = 1.0
# maxBackupsCount of each collection: small, so that nearly every upload rotates.
COLLECTIONS = {"alpha": 3, "beta": 2}
BASE = "/api/stable/repository/collection"
KiB = 1024
MiB = 1024 * KiB
STAGING = re.compile(r"#[0-9]+\Z")
# How each round chooses the moment of the kill, in turn (the delays are random): in the
# first 50 ms; after 0.05-1 s; the moment a 200 arrived (the other uploads may be
# committing, rotating or deleting right then).
KILL_MODES = ("timer", "after-200", "early", "timer", "after-200")


# -- where the data lives ----------------------------------------------------------------------


class StorageView(Protocol):
    def objects(self) -> set[str]:
        """Keys of the finished objects, relative to the storage root."""

    def unfinished(self) -> set[str]:
        """Interrupted writes: staging files (file://), unfinished multipart uploads (S3)."""


@dataclass
class FileStorage:
    root: Path

    def _files(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]

    def objects(self) -> set[str]:
        return {key for key in self._files() if not STAGING.search(key)}

    def unfinished(self) -> set[str]:
        return {key for key in self._files() if STAGING.search(key)}


@dataclass
class S3Storage:
    endpoint: Any  # storage_fixtures.S3TestEndpoint
    prefix: str
    client: Any = None  # one boto3 client for all the checks: making one takes a while

    def __post_init__(self) -> None:
        self.client = self.endpoint.client()

    def objects(self) -> set[str]:
        keys: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.endpoint.bucket, Prefix=f"{self.prefix}/"
        ):
            keys.update(o["Key"].removeprefix(f"{self.prefix}/") for o in page.get("Contents", []))
        return keys

    def unfinished(self) -> set[str]:
        answer = self.client.list_multipart_uploads(
            Bucket=self.endpoint.bucket, Prefix=f"{self.prefix}/"
        )
        return {u["Key"].removeprefix(f"{self.prefix}/") for u in answer.get("Uploads", [])}


@dataclass
class Backend:
    name: str
    workdir: Path
    db_url: str
    storage_url: str
    storage: StorageView
    env: dict[str, str] = field(default_factory=dict)
    # Sizes of the uploads: (weight, smallest, largest); the large ones take two S3 parts.
    sizes: tuple[tuple[int, int, int], ...] = (
        (70, 1 * KiB, 200 * KiB),
        (22, 200 * KiB, 2 * MiB),
        (8, 8 * MiB + 1, 10 * MiB),
    )


@dataclass(frozen=True)
class Row:
    collection: str
    number: int
    sha256: str
    storage_key: str
    deleted: bool
    purged: bool
    created_at: datetime


def read_database(url: str) -> tuple[list[Row], dict[str, int]]:
    """Every version row (live, deleted, purged) and each collection's counter, read
    directly while the server is down or idle."""

    async def read() -> tuple[list[Row], dict[str, int]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                versions = await connection.execute(
                    select(
                        backup_versions.c.collection_id,
                        backup_versions.c.version_number,
                        backup_versions.c.sha256,
                        backup_versions.c.storage_key,
                        backup_versions.c.deleted_at,
                        backup_versions.c.purged_at,
                        backup_versions.c.created_at,
                    )
                )
                rows = [
                    Row(r[0], r[1], r[2], r[3], r[4] is not None, r[5] is not None, r[6])
                    for r in versions
                ]
                states = await connection.execute(
                    select(
                        collection_states.c.collection_id, collection_states.c.last_version_number
                    )
                )
                counters = {str(s[0]): int(s[1]) for s in states}
        finally:
            await engine.dispose()
        return rows, counters

    return asyncio.run(read())


# -- what the clients saw ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    collection: str
    sha256: str
    size: int
    partial: bool
    outcome: UploadOutcome


@dataclass
class Ledger:
    """What one collection's clients know: confirmed versions, bodies in doubt (sent whole,
    answer lost in a crash) and bodies that must never be listed (refused, partial, or in
    doubt but not found after the crash)."""

    max_count: int
    confirmed: dict[int, str] = field(default_factory=dict)
    observed: dict[int, str] = field(default_factory=dict)  # in doubt, found committed
    in_doubt: set[str] = field(default_factory=set)
    in_doubt_total: int = 0
    never: set[str] = field(default_factory=set)

    def confirm(self, attempt: Attempt) -> None:
        version = attempt.outcome.version
        number = int(version["versionNumber"])
        assert version["sha256"] == attempt.sha256, attempt
        assert version["filesize"] == attempt.size, attempt
        assert number not in self.confirmed, f"number {number} confirmed twice"
        assert number not in self.observed, f"number {number} reused"
        self.confirmed[number] = attempt.sha256

    def record(self, attempt: Attempt, figures: Figures) -> None:
        status = attempt.outcome.status
        if status == 200:
            self.confirm(attempt)
            figures.confirmed += 1
        elif status is not None:
            # The only refusal expected here: the collection's lock is busy.
            assert status == 409, attempt.outcome
            self.never.add(attempt.sha256)
            figures.refused += 1
        elif attempt.partial:
            self.never.add(attempt.sha256)
            figures.partial += 1
        elif not attempt.outcome.sent_all:
            self.never.add(attempt.sha256)
            figures.cut += 1
        else:
            self.in_doubt.add(attempt.sha256)
            self.in_doubt_total += 1
            figures.in_doubt += 1

    def known(self) -> dict[int, str]:
        return {**self.confirmed, **self.observed}


@dataclass
class Figures:
    backend: str
    rounds: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    attempts: int = 0  # uploads during the rounds (before the kills)
    confirmed: int = 0
    next_uploads: int = 0  # the upload after each restart, always confirmed
    refused: int = 0
    partial: int = 0
    cut: int = 0
    in_doubt: int = 0
    in_doubt_committed: int = 0
    # What the crashes left behind, seen while the server was down: proof of which
    # windows the kills hit.
    left_staging: int = 0
    left_unrecorded: int = 0
    left_unpurged: int = 0
    rotated_away: int = 0
    incomplete_multipart: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    recovery_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        def spread(values: list[float]) -> str:
            if not values:
                return "-"
            return f"median {statistics.median(values):.2f}s, max {max(values):.2f}s"

        kills = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items()))
        parts = [
            f"crash rounds [{self.backend}]: {self.rounds} rounds in {self.seconds:.0f}s",
            f"kills: {kills}",
            f"{self.attempts} uploads during the rounds: {self.confirmed} confirmed, "
            f"{self.refused} refused (409), {self.partial} partial, {self.cut} cut off or "
            f"not sent by the kill, {self.in_doubt} in doubt ({self.in_doubt_committed} of "
            "them found committed)",
            f"{self.next_uploads} uploads after the restarts",
            f"{self.rotated_away} of all {self.confirmed + self.next_uploads} confirmed "
            "versions rotated away",
            f"left by the kills: {self.left_staging} staging files/multipart uploads, "
            f"{self.left_unrecorded} stored but unrecorded objects, {self.left_unpurged} "
            "rotated but undeleted objects",
            f"incomplete multipart uploads at the end: {self.incomplete_multipart}",
            f"restart {spread(self.restart_seconds)}",
            f"kill to next accepted upload {spread(self.recovery_seconds)}",
        ]
        return "; ".join(parts)


# -- one round ---------------------------------------------------------------------------------


class Round:
    """Three client threads uploading until the server dies: one per collection and one
    that picks either (so some uploads meet a busy lock)."""

    def __init__(
        self, server: ServerProcess, token: str, backend: Backend, bodies: PgpBodies, seed: str
    ) -> None:
        self.server = server
        self.token = token
        self.backend = backend
        self.bodies = bodies
        self.seed = seed
        self.stop = threading.Event()
        self.answered = threading.Event()  # some upload got its 200
        self.attempts: list[Attempt] = []
        self.errors: list[BaseException] = []

    def size(self, rng: random.Random) -> int:
        weights = [w for w, _, _ in self.backend.sizes]
        _, low, high = rng.choices(self.backend.sizes, weights=weights)[0]
        return rng.randint(low, high)

    def worker(self, name: str, collections: list[str]) -> None:
        rng = random.Random(f"{self.seed}-{name}")
        try:
            while not self.stop.is_set():
                collection = rng.choice(collections)
                data = self.bodies.make(self.size(rng), rng)
                partial = rng.random() < 0.2
                if partial:
                    outcome = send_upload(
                        self.server.url,
                        self.token,
                        collection,
                        data,
                        stop_after=rng.randrange(len(data)),
                        hold=rng.uniform(0.0, 0.3),
                        stop=self.stop,
                    )
                else:
                    outcome = send_upload(self.server.url, self.token, collection, data)
                self.attempts.append(Attempt(collection, sha256(data), len(data), partial, outcome))
                if outcome.status == 200:
                    self.answered.set()
                elif outcome.status is None and not partial:
                    self.stop.wait(0.02)  # the server is going down; do not spin
        except BaseException as exc:
            self.errors.append(exc)

    def run(self, number: int, rng: random.Random) -> str:
        """Upload until the kill; return how the moment of the kill was chosen."""
        names = list(COLLECTIONS)
        threads = [
            threading.Thread(target=self.worker, args=(name, [name]), daemon=True) for name in names
        ]
        threads.append(threading.Thread(target=self.worker, args=("any", names), daemon=True))
        for thread in threads:
            thread.start()
        mode = KILL_MODES[number % len(KILL_MODES)]
        if mode == "early":
            time.sleep(rng.uniform(0.0, 0.05))
        elif mode == "timer":
            time.sleep(rng.uniform(0.05, 1.0))
        elif not self.answered.wait(5.0):
            mode = "after-200 (none came)"
        self.server.process.kill()
        self.server.process.wait(timeout=10)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "an upload client hung after the kill"
        if self.errors:
            raise self.errors[0]
        return mode


# -- the checks --------------------------------------------------------------------------------


def inspect_leftovers(backend: Backend, figures: Figures, seen_unfinished: set[str]) -> None:
    """Count what the crash left (the server is down, nothing changes meanwhile)."""
    rows, _ = read_database(backend.db_url)
    recorded = {r.storage_key for r in rows}
    objects = backend.storage.objects()
    unfinished = backend.storage.unfinished()
    figures.left_staging += len(unfinished - seen_unfinished)
    seen_unfinished.update(unfinished)
    figures.left_unrecorded += len(objects - recorded)
    figures.left_unpurged += sum(
        1 for r in rows if r.deleted and not r.purged and r.storage_key in objects
    )


def check_versions(
    server: ServerProcess,
    token: str,
    backend: Backend,
    ledgers: dict[str, Ledger],
    figures: Figures,
) -> dict[str, int]:
    """The checks of the module docstring, after a restart and before any upload. Returns
    each collection's N."""
    rows, counters = read_database(backend.db_url)
    tops: dict[str, int] = {}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        for name, ledger in ledgers.items():
            response = http.get(f"{BASE}/{name}/version", timeout=30)
            assert response.status_code == 200, response.text
            versions = response.json()["data"]["versions"]
            numbers = [int(v["versionNumber"]) for v in versions]
            top = counters.get(name, 0)
            tops[name] = top

            # Numbers: unique and gap-free in commit order, the newest min(n, N) live.
            mine = sorted((r for r in rows if r.collection == name), key=lambda r: r.number)
            assert [r.number for r in mine] == list(range(1, top + 1)), (name, mine)
            created = [r.created_at for r in mine]
            assert created == sorted(created), f"{name}: numbers out of commit order"
            assert numbers == list(range(top, max(top - ledger.max_count, 0), -1)), (
                name,
                numbers,
                top,
            )
            assert sorted(r.number for r in mine if not r.deleted) == sorted(numbers)
            assert top >= max(ledger.confirmed, default=0), (name, top, ledger.confirmed)

            # Nothing listed that was not confirmed (or in doubt); every confirmed version
            # the rotation may not have removed yet is there.
            known = ledger.known()
            for version in versions:
                number, digest = int(version["versionNumber"]), version["sha256"]
                assert digest not in ledger.never, f"{name} v{number}: refused/partial upload"
                if number in known:
                    assert digest == known[number], f"{name} v{number}: different content"
                else:
                    assert digest in ledger.in_doubt, f"{name} v{number}: never confirmed"
                    ledger.in_doubt.discard(digest)
                    ledger.observed[number] = digest
                    figures.in_doubt_committed += 1
                body = http.get(f"{BASE}/{name}/version/{number}", timeout=60)
                assert body.status_code == 200, body.text
                assert sha256(body.content) == digest, f"{name} v{number}: corrupt download"
            for number in ledger.confirmed:
                if number > top - ledger.max_count:
                    assert number in numbers, f"{name} v{number}: confirmed version lost"
            unconfirmed = top - len(ledger.confirmed)
            assert 0 <= unconfirmed <= ledger.in_doubt_total, (name, top, ledger)
            # An in-doubt body not listed now was not committed, or was committed and
            # rotated away: either way it must never show up later.
            ledger.never.update(ledger.in_doubt)
            ledger.in_doubt.clear()
    return tops


def upload_next(
    server: ServerProcess,
    token: str,
    backend: Backend,
    ledgers: dict[str, Ledger],
    tops: dict[str, int],
    bodies: PgpBodies,
    rng: random.Random,
    figures: Figures,
) -> None:
    """One upload per collection, accepted at once (the restart freed the dead server's
    locks, so no 409): it cleans up under the lock and takes number N+1. Then the storage
    holds exactly the live versions' objects."""
    for name, ledger in ledgers.items():
        data = bodies.make(rng.randint(1 * KiB, 64 * KiB), rng)
        outcome = send_upload(server.url, token, name, data)
        assert outcome.status == 200, outcome
        assert outcome.version["versionNumber"] == tops[name] + 1, (name, outcome, tops)
        ledger.confirm(Attempt(name, sha256(data), len(data), False, outcome))
        figures.next_uploads += 1

    rows, _ = read_database(backend.db_url)
    live = {r.storage_key for r in rows if not r.deleted}
    # Every rotated version is marked purged, but the one each of these uploads rotated
    # out: its object is deleted (checked below) and its row marked by the next upload.
    just_rotated = {(name, tops[name] + 1 - ledger.max_count) for name, ledger in ledgers.items()}
    unmarked = [r for r in rows if r.deleted and not r.purged]
    assert all((r.collection, r.number) in just_rotated for r in unmarked), (
        f"rotated versions not deleted: {unmarked}"
    )
    objects = backend.storage.objects()
    assert objects == live, f"orphans {sorted(objects - live)}, missing {sorted(live - objects)}"
    unfinished = backend.storage.unfinished()
    if isinstance(backend.storage, FileStorage):
        assert not unfinished, f"staging files left: {sorted(unfinished)}"
    else:
        # Unfinished multipart uploads cannot be listed through obstore; they stay until
        # the bucket's lifecycle rule aborts them. They are never visible as objects.
        allowed = re.compile(rf"\A({'|'.join(COLLECTIONS)})/\1-[0-9]+\.tar\.gz\Z")
        assert all(allowed.match(key) for key in unfinished), unfinished


# -- the test ----------------------------------------------------------------------------------


def write_world(folder: Path) -> None:
    documents: list[dict[str, Any]] = [user_doc("uploader", "uploader-pass", ["collectionManager"])]
    for name, count in COLLECTIONS.items():
        collection = collection_doc(name)
        collection["spec"].update(
            maxBackupsCount=count, maxOneVersionSize="16M", maxCollectionSize="200M"
        )
        documents.append(collection)
    write_config(folder, documents)


def start(backend: Backend) -> ServerProcess:
    return start_server(
        backend.workdir,
        backend.workdir / "config",
        db_url=backend.db_url,
        env=backend.env,
        # The same replica every time: a restart frees what the killed server held.
        replica_id="crash-rounds",
        extra_args=[
            "--storage-url",
            backend.storage_url,
            f"--upload-lock-lease={LOCK_LEASE_S:g}s",
            "--log-level=warning",
        ],
    )


def crash_rounds(backend: Backend, bodies: PgpBodies, rounds: int) -> Figures:
    seed = os.environ.get("BR_CRASH_SEED", uuid.uuid4().hex[:8])
    rng = random.Random(seed)
    figures = Figures(backend.name)
    ledgers = {name: Ledger(count) for name, count in COLLECTIONS.items()}
    seen_unfinished: set[str] = set()
    write_world(backend.workdir / "config")
    started = time.monotonic()
    server = start(backend)
    try:
        token = login(server.url)
        tops = {name: 0 for name in COLLECTIONS}
        for number in range(rounds):
            context = f"seed {seed}, round {number}"
            this_round = Round(server, token, backend, bodies, f"{seed}-{number}")
            mode = this_round.run(number, rng)
            killed_at = time.monotonic()
            figures.kills[mode] += 1
            figures.rounds += 1
            for attempt in this_round.attempts:
                figures.attempts += 1
                ledgers[attempt.collection].record(attempt, figures)
            inspect_leftovers(backend, figures, seen_unfinished)

            server = start(backend)
            figures.restart_seconds.append(time.monotonic() - killed_at)
            try:
                tops = check_versions(server, token, backend, ledgers, figures)
                upload_next(server, token, backend, ledgers, tops, bodies, rng, figures)
            except AssertionError as exc:
                raise AssertionError(f"{context} (kill: {mode}): {exc}") from exc
            figures.recovery_seconds.append(time.monotonic() - killed_at)
        for name, ledger in ledgers.items():
            last = tops[name] + 1  # the number upload_next took
            figures.rotated_away += sum(1 for v in ledger.confirmed if v <= last - ledger.max_count)
        if isinstance(backend.storage, S3Storage):
            figures.incomplete_multipart = len(backend.storage.unfinished())
            # What a bucket's AbortIncompleteMultipartUpload rule does; the objects stay.
            objects = backend.storage.objects()
            backend.storage.endpoint.abort_incomplete_uploads(f"{backend.storage.prefix}/")
            assert backend.storage.unfinished() == set()
            assert backend.storage.objects() == objects
    finally:
        server.stop()
    figures.seconds = time.monotonic() - started
    return figures


@pytest.fixture(params=["sqlite-file", pytest.param("postgres-s3", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgres-s3":
        endpoint = request.getfixturevalue("s3_storage_url")
        database: str = request.getfixturevalue("postgres_url")
        prefix = f"crash-{uuid.uuid4().hex[:12]}"
        return Backend(
            "postgres-s3",
            tmp_path,
            database,
            endpoint.url_for(prefix),
            S3Storage(endpoint, prefix),
            env=endpoint.env,
        )
    root = tmp_path / "storage"
    return Backend(
        "sqlite-file", tmp_path, f"sqlite:///{tmp_path / 'server.db'}", root.as_uri(),
        FileStorage(root),
    )  # fmt: skip


def report(figures: Figures, check: Callable[[Figures], None]) -> None:
    print("\n" + figures.summary())
    check(figures)


def test_crash_rounds_quick(tmp_path: Path, pgp_bodies: PgpBodies) -> None:
    """A few rounds on SQLite and a folder, for ``make test``."""
    root = tmp_path / "storage"
    backend = Backend(
        "sqlite-file", tmp_path, f"sqlite:///{tmp_path / 'server.db'}", root.as_uri(),
        FileStorage(root),
    )  # fmt: skip
    figures = crash_rounds(backend, pgp_bodies, FAST_ROUNDS)
    report(figures, lambda f: _assert_exercised(f, FAST_ROUNDS))


@pytest.mark.slow
def test_crash_rounds(backend: Backend, pgp_bodies: PgpBodies) -> None:
    figures = crash_rounds(backend, pgp_bodies, SLOW_ROUNDS)
    report(figures, lambda f: _assert_exercised(f, SLOW_ROUNDS))


def _assert_exercised(figures: Figures, rounds: int) -> None:
    """The rounds must have done what they are for: versions confirmed while the clients
    were busy and rotated away, uploads cut off by the kills."""
    assert figures.rounds == rounds
    assert figures.confirmed > 0
    assert figures.rotated_away > 0
    assert figures.in_doubt + figures.partial + figures.cut > 0
