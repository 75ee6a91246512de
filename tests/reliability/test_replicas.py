"""Several replicas, one truth (issue 4, item 2).

Two or three real server processes share one PostgreSQL database and one storage (a folder
both use, or a prefix of the SeaweedFS S3 endpoint) and are hammered, round after round, by
client threads uploading at the same moment to one hot collection and to a few others,
through every replica. The collections are small (3 versions, 64 KiB per version, 256 KiB in
all) and the bodies random in size, so rotation and quotas are hit all the time.

What is checked, and why it proves the statements, is explained in docs/reliability.md
("Several replicas"). In short:

- a watcher thread samples the database (one consistent statement per sample) and the
  storage listing many times per second while the hammering runs, and records the largest
  live count and byte total it ever saw per collection;
- triggers installed in the test database (never in the product) log every change of the
  lock row and every version insert with its transaction id; replaying that log shows who
  held each collection's lock, from when to when, and which holder committed which number;
- afterwards the answers, the database, the storage and downloads through other replicas
  must all tell the same story.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from backup_repository.db.engine import create_engine, migrate
from gpg_fixtures import GpgHome, pad_to
from support import (
    ServerProcess,
    collection_doc,
    start_server,
    user_doc,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

BASE = "/api/stable/repository/collection"
LOGIN = "/api/stable/auth/login"
USER, PASSWORD = "hammer", "hammer-pass"

MAX_COUNT = 3
MAX_ONE = 64 * 1024
MAX_TOTAL = 256 * 1024
EXTRA = MAX_TOTAL - MAX_COUNT * MAX_ONE
LARGEST_UPLOAD = MAX_ONE + EXTRA
"""No upload can be larger: one version's share plus all the extra space (128 KiB)."""

HOT = "hot"
COLD = ("c1", "c2", "c3")
COLLECTIONS = (HOT, *COLD)
HOT_THREADS = 3
"""Threads 0-2 upload to the hot collection every round; the others pick among COLD."""
THREADS = 6
ANSWERS = frozenset({200, 409, 413})
PARALLEL_UPLOAD = "cannot upload to same collection in parallel"
QUOTA_EXCEEDED = "filesize reached allowed limit"
STAGING_FILE = re.compile(r"#[0-9]+\Z")
WATCH_INTERVAL_S = 0.002
FAST_ROUNDS = 10
SLOW_ROUNDS = 200


# -- configuration and the cluster ----------------------------------------------------------


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        user_doc(USER, PASSWORD, ["collectionManager"]),
        user_doc("plain", "plain-pass", []),
    ]
    for name in COLLECTIONS:
        doc = collection_doc(name)
        doc["spec"].update(
            maxBackupsCount=MAX_COUNT, maxOneVersionSize="64K", maxCollectionSize="256K"
        )
        docs.append(doc)
    return docs


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


HISTORY_SQL = """
CREATE TABLE test_lock_history (
    seq bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    txid bigint NOT NULL DEFAULT txid_current(),
    collection_id text NOT NULL,
    event text NOT NULL,
    old_owner text,
    new_owner text,
    old_expires timestamptz,
    old_last integer,
    new_last integer,
    version_id text,
    version_number integer,
    live_after integer,
    bytes_after bigint
);

CREATE FUNCTION test_log_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO test_lock_history (collection_id, event, new_owner, new_last)
        VALUES (NEW.collection_id, 'create', NEW.lock_owner, NEW.last_version_number);
    ELSE
        INSERT INTO test_lock_history
            (collection_id, event, old_owner, new_owner, old_expires, old_last, new_last)
        VALUES (NEW.collection_id, 'state', OLD.lock_owner, NEW.lock_owner,
                OLD.lock_expires_at, OLD.last_version_number, NEW.last_version_number);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER test_log_state AFTER INSERT OR UPDATE ON collection_states
    FOR EACH ROW EXECUTE FUNCTION test_log_state();

CREATE FUNCTION test_log_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_lock_history (collection_id, event, version_id, version_number)
    VALUES (NEW.collection_id, 'version', NEW.id, NEW.version_number);
    RETURN NEW;
END $$;

CREATE TRIGGER test_log_version AFTER INSERT ON backup_versions
    FOR EACH ROW EXECUTE FUNCTION test_log_version();

CREATE FUNCTION test_log_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_lock_history
        (collection_id, event, version_number, live_after, bytes_after)
    SELECT NEW.collection_id, 'committed', NEW.version_number, count(*), coalesce(sum(filesize), 0)
    FROM backup_versions WHERE collection_id = NEW.collection_id AND deleted_at IS NULL;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER test_log_commit AFTER INSERT ON backup_versions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_log_commit();
"""
"""Test instrumentation: every change of a lock row and every version insert, in the order
PostgreSQL serialized them. Changes of one collection_states row are serialized by its row
lock (the next UPDATE waits for the previous transaction to end), so ``seq`` orders them as
they were committed; rolled-back changes leave no history row. The deferred trigger runs as
the inserting transaction commits and records what the collection holds then: only those
transactions add live versions, so that is every state that could break a limit."""


async def prepare_database(url: str) -> None:
    """Migrate the empty database as the server would, then install the history triggers
    (before any replica starts, so that no change goes unlogged)."""
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(HISTORY_SQL)
    finally:
        await connection.close()


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(fetch(dsn, sql, *args))


@dataclass(frozen=True)
class Listing:
    objects: dict[str, dict[str, int]]
    """collection -> {storage key: size} of the visible objects"""
    staging: dict[str, int]
    """collection -> number of writes in progress (file:// staging files)"""


class StorageView(Protocol):
    """The shared storage as the test sees it, without the product's code."""

    @property
    def url(self) -> str: ...

    @property
    def env(self) -> Mapping[str, str]: ...

    def listing(self) -> Listing: ...

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def incomplete_uploads(self) -> list[str]: ...


@dataclass
class FolderView:
    root: Path

    @property
    def url(self) -> str:
        return self.root.as_uri()

    @property
    def env(self) -> Mapping[str, str]:
        return {}

    def listing(self) -> Listing:
        objects: dict[str, dict[str, int]] = {}
        staging: dict[str, int] = {}
        for name in COLLECTIONS:
            found: dict[str, int] = {}
            writing = 0
            try:
                entries = list(os.scandir(self.root / name))
            except FileNotFoundError:
                entries = []
            for entry in entries:
                if STAGING_FILE.search(entry.name):
                    writing += 1
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted since the scan
                    found[f"{name}/{entry.name}"] = entry.stat().st_size
            objects[name] = found
            staging[name] = writing
        return Listing(objects, staging)

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def incomplete_uploads(self) -> list[str]:
        return [
            f"{collection}: {count} staging files"
            for collection, count in self.listing().staging.items()
            if count
        ]


@dataclass
class S3View:
    endpoint: Any  # storage_fixtures.S3TestEndpoint
    prefix: str
    _client: Any = None

    @property
    def url(self) -> str:
        return str(self.endpoint.url_for(self.prefix))

    @property
    def env(self) -> Mapping[str, str]:
        return dict(self.endpoint.env)

    def client(self) -> Any:
        if self._client is None:
            self._client = self.endpoint.client()
        return self._client

    def listing(self) -> Listing:
        objects: dict[str, dict[str, int]] = {name: {} for name in COLLECTIONS}
        token: dict[str, str] = {}
        while True:
            answer = self.client().list_objects_v2(
                Bucket=self.endpoint.bucket, Prefix=f"{self.prefix}/", **token
            )
            for item in answer.get("Contents", []):
                key = item["Key"][len(self.prefix) + 1 :]
                objects.setdefault(key.split("/", 1)[0], {})[key] = int(item["Size"])
            if not answer.get("IsTruncated"):
                break
            token = {"ContinuationToken": answer["NextContinuationToken"]}
        return Listing(objects, dict.fromkeys(COLLECTIONS, 0))

    def read(self, key: str) -> bytes | None:
        client = self.client()
        try:
            answer = client.get_object(Bucket=self.endpoint.bucket, Key=f"{self.prefix}/{key}")
        except client.exceptions.NoSuchKey:
            return None
        return bytes(answer["Body"].read())

    def incomplete_uploads(self) -> list[str]:
        return list(self.endpoint.incomplete_uploads(f"{self.prefix}/"))


@dataclass
class Cluster:
    replicas: list[ServerProcess]
    storage: StorageView
    dsn: str


def start_replicas(
    tmp_path: Path,
    db_url: str,
    storage: StorageView,
    count: int,
    extra_args: Sequence[str],
    unlimited: bool,
) -> list[ServerProcess]:
    """Start ``count`` replicas at once; stop the ones that started if another did not."""
    config = tmp_path / "config"

    def start(index: int) -> ServerProcess:
        return start_server(
            tmp_path / f"replica-{index}",
            config,
            db_url=db_url,
            extra_args=["--storage-url", storage.url, *extra_args],
            env=dict(storage.env),
            unlimited=unlimited,
        )

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(start, index) for index in range(count)]
    started = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    try:
        if failed:
            raise RuntimeError(f"a replica did not start: {failed[0]}") from failed[0]
        for replica in started:
            # The start-up clean-up takes each collection's lock once (in the background):
            # an upload meanwhile would be refused, so let it finish first.
            wait_until(lambda r=replica: "start-up clean-up done" in r.log(), timeout=30)
    except BaseException:
        for replica in started:
            replica.stop()
        raise
    return started


@contextlib.contextmanager
def running_cluster(
    tmp_path: Path,
    db_url: str,
    storage: StorageView,
    count: int,
    extra_args: Sequence[str] = ("--upload-lock-lease=10s",),
    unlimited: bool = True,
) -> Iterator[Cluster]:
    """Replicas on one migrated database (with the history triggers) and one storage; no
    rate limits unless ``unlimited`` is False."""
    write_config(tmp_path / "config", documents())
    asyncio.run(prepare_database(db_url))
    replicas = start_replicas(tmp_path, db_url, storage, count, extra_args, unlimited)
    try:
        yield Cluster(replicas, storage, asyncpg_dsn(db_url))
    finally:
        for replica in replicas:
            replica.stop()
    # Reached only when the test body passed: no replica logged a stack trace meanwhile.
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def login(url: str, username: str = USER, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(url + LOGIN, json={"username": username, "password": password}, timeout=60)


def token_for(replica: ServerProcess) -> str:
    response = login(replica.url)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["token"])


def storage_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StorageView:
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_storage_url")
        return S3View(endpoint, f"replicas-{uuid.uuid4().hex[:12]}")
    return FolderView(tmp_path / "shared-storage")


# -- what is sent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    round: int
    thread: int
    replica: int
    collection: str
    body: bytes
    sha256: str


@dataclass(frozen=True)
class Outcome:
    attempt: Attempt
    status: int
    """the HTTP status, or 0 when no answer came (a transport error)"""
    detail: str
    version: Mapping[str, Any] | None
    seconds: float


class Bodies:
    """Distinct OpenPGP messages of chosen sizes: a few real messages made by gpg, each
    grown to the size by a padding packet; no two bodies are the same bytes, so an object
    swapped for another one cannot go unnoticed."""

    def __init__(self, messages: Sequence[bytes], rng: random.Random) -> None:
        self._messages = list(messages)
        self._rng = rng
        self._made: set[tuple[int, int]] = set()

    def make(self, size: int) -> bytes:
        while True:
            index = self._rng.randrange(len(self._messages))
            message = self._messages[index]
            grown = max(size, len(message) + 8)
            if (index, grown) not in self._made:
                self._made.add((index, grown))
                return pad_to(message, grown)
            size += 1

    def draw_size(self) -> int:
        """Mostly within one version's share, often borrowing extra space (so that what
        the next upload may use shrinks), sometimes more than any upload may be."""
        roll = self._rng.random()
        if roll < 0.55:
            return self._rng.randint(1024, 48 * 1024)
        if roll < 0.80:
            return self._rng.randint(48 * 1024, MAX_ONE + 32 * 1024)
        if roll < 0.93:
            return self._rng.randint(MAX_ONE + 32 * 1024, LARGEST_UPLOAD)
        return self._rng.randint(LARGEST_UPLOAD + 1, LARGEST_UPLOAD + 32 * 1024)


def plan_rounds(
    rounds: int, replicas: int, messages: Sequence[bytes], seed: int
) -> list[list[Attempt]]:
    """Who sends what where, per round. Threads 0-2 always target the hot collection;
    threads 3-5 pick a cold one at random, so they sometimes collide and sometimes not.
    Thread ``t`` uses replica ``(t + round) % replicas``. Round 0 sends the cold
    collections one upload each, the first larger than any upload may be: a 413 that no
    contention can turn into a 409."""
    rng = random.Random(seed)
    bodies = Bodies(messages, rng)
    plan: list[list[Attempt]] = []
    for number in range(rounds):
        attempts: list[Attempt] = []
        for thread in range(THREADS):
            if thread < HOT_THREADS:
                collection = HOT
            elif number == 0:
                collection = COLD[thread - HOT_THREADS]
            else:
                collection = rng.choice(COLD)
            size = LARGEST_UPLOAD + 1 if (number, thread) == (0, 3) else bodies.draw_size()
            body = bodies.make(size)
            attempts.append(
                Attempt(
                    number,
                    thread,
                    (thread + number) % replicas,
                    collection,
                    body,
                    hashlib.sha256(body).hexdigest(),
                )
            )
        plan.append(attempts)
    return plan


def send(client: httpx.Client, attempt: Attempt) -> Outcome:
    started = time.monotonic()
    try:
        response = client.post(f"{BASE}/{attempt.collection}/version", content=attempt.body)
    except httpx.TransportError as exc:
        return Outcome(attempt, 0, repr(exc), None, time.monotonic() - started)
    seconds = time.monotonic() - started
    try:
        payload = response.json()
    except ValueError:
        return Outcome(attempt, response.status_code, response.text[:300], None, seconds)
    version = payload.get("data", {}).get("version") if response.status_code == 200 else None
    return Outcome(attempt, response.status_code, str(payload.get("error", "")), version, seconds)


def hammer(cluster: Cluster, plan: Sequence[Sequence[Attempt]]) -> list[Outcome]:
    """Run the rounds: each thread waits at a barrier until all are ready, then sends its
    upload of the round; the next round starts when every answer of this one is in."""
    barrier = threading.Barrier(THREADS)
    outcomes: list[list[Outcome]] = [[] for _ in range(THREADS)]
    failures: list[BaseException] = []
    tokens = [token_for(cluster.replicas[t % len(cluster.replicas)]) for t in range(THREADS)]

    def worker(thread: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[thread]}"}
        clients = [
            httpx.Client(base_url=replica.url, headers=headers, timeout=60)
            for replica in cluster.replicas
        ]
        try:
            for attempts in plan:
                barrier.wait(timeout=120)
                attempt = attempts[thread]
                outcomes[thread].append(send(clients[attempt.replica], attempt))
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()
        finally:
            for client in clients:
                client.close()

    workers = [
        threading.Thread(target=worker, args=(t,), name=f"hammer-{t}") for t in range(THREADS)
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if failures:
        raise failures[0]
    return sorted(
        (o for per_thread in outcomes for o in per_thread),
        key=lambda o: (o.attempt.round, o.attempt.thread),
    )


# -- the watcher ----------------------------------------------------------------------------

SNAPSHOT_SQL = """
SELECT s.collection_id,
       s.last_version_number,
       s.lock_owner,
       count(v.id) FILTER (WHERE v.deleted_at IS NULL) AS live,
       coalesce(sum(v.filesize) FILTER (WHERE v.deleted_at IS NULL), 0) AS live_bytes,
       max(v.version_number) FILTER (WHERE v.deleted_at IS NULL) AS newest,
       count(v.id) AS recorded,
       coalesce(max(v.version_number), 0) AS highest
FROM collection_states s
LEFT JOIN backup_versions v ON v.collection_id = s.collection_id
GROUP BY s.collection_id, s.last_version_number, s.lock_owner
"""
"""One statement, so one snapshot: the counter, the lock and the versions as they were at
one instant (READ COMMITTED gives each statement a consistent view)."""


@dataclass
class Peaks:
    db_count: int = 0
    db_bytes: int = 0
    storage_count: int = 0
    storage_bytes: int = 0
    staging: int = 0
    locked_samples: int = 0


class Watcher(threading.Thread):
    """Samples the database and the storage listing in a loop while the hammering runs and
    keeps the maxima per collection; any sample that breaks a limit is recorded."""

    def __init__(self, dsn: str, storage: StorageView) -> None:
        super().__init__(name="watcher", daemon=True)
        self._dsn = dsn
        self._storage = storage
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self.peaks = {name: Peaks() for name in COLLECTIONS}
        self.violations: list[str] = []
        self.db_samples = 0
        self.storage_samples = 0
        self.seconds = 0.0

    def run(self) -> None:
        try:
            asyncio.run(self._watch())
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the watcher did not stop"
        if self.error is not None:
            raise self.error

    def _violation(self, text: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(text)

    async def _watch(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        started = time.monotonic()
        try:
            while not self._stopping.is_set():
                self._check_db(await connection.fetch(SNAPSHOT_SQL))
                self._check_storage(self._storage.listing())
                await asyncio.sleep(WATCH_INTERVAL_S)
        finally:
            self.seconds = time.monotonic() - started
            await connection.close()

    def _check_db(self, rows: Sequence[asyncpg.Record]) -> None:
        self.db_samples += 1
        for row in rows:
            name = row["collection_id"]
            peaks = self.peaks.setdefault(name, Peaks())
            live, live_bytes, last = row["live"], row["live_bytes"], row["last_version_number"]
            peaks.db_count = max(peaks.db_count, live)
            peaks.db_bytes = max(peaks.db_bytes, live_bytes)
            if row["lock_owner"] is not None:
                peaks.locked_samples += 1
            if live > MAX_COUNT:
                self._violation(f"database: {name} has {live} live versions")
            if live_bytes > MAX_TOTAL:
                self._violation(f"database: {name} holds {live_bytes} bytes")
            if not row["recorded"] == row["highest"] == last:
                self._violation(
                    f"database: {name} counter {last}, {row['recorded']} versions recorded, "
                    f"highest number {row['highest']}"
                )
            if live and row["newest"] != last:
                self._violation(f"database: {name} newest live v{row['newest']}, counter {last}")

    def _check_storage(self, listing: Listing) -> None:
        self.storage_samples += 1
        for name, objects in listing.objects.items():
            peaks = self.peaks.setdefault(name, Peaks())
            count, size = len(objects), sum(objects.values())
            peaks.storage_count = max(peaks.storage_count, count)
            peaks.storage_bytes = max(peaks.storage_bytes, size)
            peaks.staging = max(peaks.staging, listing.staging.get(name, 0))
            # One object may be in flight beyond the recorded versions: the new one between
            # its write and its commit, or the rotated one between the commit and its
            # deletion. Never two.
            if count > MAX_COUNT + 1:
                self._violation(f"storage: {name} has {count} objects: {sorted(objects)}")
            if size > MAX_TOTAL + LARGEST_UPLOAD:
                self._violation(f"storage: {name} holds {size} bytes: {objects}")
            if listing.staging.get(name, 0) > 1:
                self._violation(f"storage: {name} has {listing.staging[name]} writes at once")


# -- the lock history -----------------------------------------------------------------------


@dataclass
class Hold:
    owner: str
    acquired: int
    released: int | None = None
    commits: list[int] = field(default_factory=list)


@dataclass
class History:
    holds: dict[str, list[Hold]] = field(default_factory=lambda: defaultdict(list))
    takeovers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    committed: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    """collection -> (number, version id) in commit order"""
    after_commit: dict[str, list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """collection -> (live versions, their bytes) as each commit left them"""


def replay(rows: Sequence[Mapping[str, Any]]) -> History:
    """Walk the lock history in serialization order. A holder is whoever took the free
    lock; the lock passes to another owner only by release (owner set to NULL) or by a
    takeover of a lease (counted separately: legitimate only after a replica died). The
    counter may move only by one, only by its holder: while the lock stays with it, or in
    the update that releases it (an upload's commit advances the counter and frees the lock
    in one statement)."""
    history = History()
    versions = {row["txid"]: row for row in rows if row["event"] == "version"}
    holder: dict[str, Hold | None] = defaultdict(lambda: None)
    for row in rows:
        if row["event"] == "committed":
            history.after_commit[row["collection_id"]].append(
                (row["live_after"], row["bytes_after"])
            )
        if row["event"] != "state":
            continue
        name, seq = row["collection_id"], row["seq"]
        current = holder[name]
        if row["old_owner"] != (current.owner if current else None):
            history.problems.append(f"{name} #{seq}: history out of order")
        if row["new_owner"] != row["old_owner"]:
            if current is not None:
                current.released = seq
            if row["old_owner"] is not None and row["new_owner"] is not None:
                history.takeovers.append(
                    f"{name} #{seq}: {row['new_owner']} took the lock of {row['old_owner']} "
                    f"at {row['at']}, its lease ran until {row['old_expires']}"
                )
            holder[name] = None
            if row["new_owner"] is not None:
                taken = Hold(row["new_owner"], seq)
                holder[name] = taken
                history.holds[name].append(taken)
        if row["new_last"] != row["old_last"]:
            hold = current if current is not None and current.owner == row["old_owner"] else None
            if hold is None or row["new_owner"] not in (row["old_owner"], None):
                history.problems.append(f"{name} #{seq}: counter moved without the lock")
            elif row["new_last"] != row["old_last"] + 1:
                history.problems.append(
                    f"{name} #{seq}: counter went from {row['old_last']} to {row['new_last']}"
                )
            else:
                hold.commits.append(row["new_last"])
            version = versions.get(row["txid"])
            if version is None or version["version_number"] != row["new_last"]:
                history.problems.append(f"{name} #{seq}: counter moved without its version")
            else:
                history.committed[name].append((row["new_last"], version["version_id"]))
    for name, holds in history.holds.items():
        owners = Counter(hold.owner for hold in holds)
        history.problems += [
            f"{name}: {o} took the lock {n} times" for o, n in owners.items() if n > 1
        ]
        history.problems += [
            f"{name}: {h.owner} committed {h.commits}" for h in holds if len(h.commits) > 1
        ]
        history.problems += [
            f"{name}: {h.owner} never released" for h in holds if h.released is None
        ]
    return history


# -- the checks -----------------------------------------------------------------------------


@dataclass
class Figures:
    storage: str
    replicas: int
    rounds: int
    attempted: int
    statuses: Counter[int]
    seconds: float
    latencies: list[float]
    db_samples: int
    storage_samples: int
    peaks: dict[str, Peaks]
    holds: int
    after_commit: dict[str, list[tuple[int, int]]]

    def report(self) -> str:
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        lines = [
            f"{self.storage}, {self.replicas} replicas, {self.rounds} rounds, "
            f"{self.attempted} uploads in {self.seconds:.1f} s "
            f"({self.attempted / self.seconds:.0f}/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms): "
            + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
            f"watcher: {self.db_samples} database and {self.storage_samples} storage samples "
            f"({self.db_samples / self.seconds:.0f}/s); {self.holds} lock holds replayed",
        ]
        for name, peak in sorted(self.peaks.items()):
            commits = self.after_commit.get(name, [])
            lines.append(
                f"  {name}: {len(commits)} commits left at most "
                f"{max((c for c, _ in commits), default=0)}/{MAX_COUNT} versions, "
                f"{max((b for _, b in commits), default=0)}/{MAX_TOTAL} bytes; watcher saw "
                f"at most {peak.db_count} versions, {peak.db_bytes} bytes in the database, "
                f"{peak.storage_count} objects, {peak.storage_bytes} bytes, {peak.staging} "
                f"staging files in storage; lock held in {peak.locked_samples} samples"
            )
        return "\n".join(lines)


def accepted_uploads(outcomes: Sequence[Outcome]) -> dict[str, list[Outcome]]:
    """The 200 answers per collection."""
    accepted: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.status == 200 and outcome.version is not None:
            accepted[outcome.attempt.collection].append(outcome)
    return accepted


def check_answers(outcomes: Sequence[Outcome], accepted: Mapping[str, Sequence[Outcome]]) -> None:
    """Only 200, 409 and 413, each with its own message; the 200s per collection carry the
    numbers 1..N once each, and the bytes they describe are the bytes sent."""
    unexpected = [
        f"round {o.attempt.round} thread {o.attempt.thread} -> replica {o.attempt.replica} "
        f"{o.attempt.collection}: {o.status} {o.detail}"
        for o in outcomes
        if o.status not in ANSWERS
    ]
    assert not unexpected, "\n".join(unexpected[:20])
    for outcome in outcomes:
        if outcome.status == 409:
            assert PARALLEL_UPLOAD in outcome.detail, outcome.detail
        elif outcome.status == 413:
            assert QUOTA_EXCEEDED in outcome.detail, outcome.detail
    for outcome in outcomes:
        if outcome.status != 200:
            continue
        assert outcome.version is not None
        assert outcome.version["collectionId"] == outcome.attempt.collection
        assert outcome.version["sha256"] == outcome.attempt.sha256
        assert outcome.version["filesize"] == len(outcome.attempt.body)
    for name, done in accepted.items():
        numbers = sorted(o.version["versionNumber"] for o in done if o.version is not None)
        assert numbers == list(range(1, len(done) + 1)), f"{name}: {numbers}"
    # Oversized bodies never get through, whoever sends them where.
    assert all(o.status in {409, 413} for o in outcomes if len(o.attempt.body) > LARGEST_UPLOAD)


def check_rounds(outcomes: Sequence[Outcome]) -> None:
    """A 409 means someone held the lock at that moment. Every request of the previous
    round was answered (and so had released its lock) before this round began, so that
    someone is an upload of this round: per collection and round, at least one was not
    refused as parallel. A lock leaked or held by a ghost would refuse them all."""
    by_round: dict[tuple[int, str], list[int]] = defaultdict(list)
    for outcome in outcomes:
        by_round[(outcome.attempt.round, outcome.attempt.collection)].append(outcome.status)
    starved = {key: statuses for key, statuses in by_round.items() if set(statuses) == {409}}
    assert not starved, starved


def check_history(
    history: History, accepted: Mapping[str, Sequence[Outcome]], outcomes: Sequence[Outcome]
) -> None:
    assert not history.problems, "\n".join(history.problems[:20])
    assert not history.takeovers, "\n".join(history.takeovers[:20])
    for name in COLLECTIONS:
        committed = history.committed.get(name, [])
        # In commit order the numbers are 1, 2, 3, ...: unique and gap-free.
        assert [number for number, _ in committed] == list(range(1, len(committed) + 1))
        answered = {o.version["id"] for o in accepted.get(name, []) if o.version is not None}
        assert {version_id for _, version_id in committed} == answered, name
        # Each upload that got past the lock held it once, alone: every 200 did; a 413
        # may be refused from its Content-Length before or after taking the lock.
        statuses = Counter(o.status for o in outcomes if o.attempt.collection == name)
        uploads = [h for h in history.holds.get(name, []) if not h.owner.endswith(":cleanup")]
        assert statuses[200] <= len(uploads) <= statuses[200] + statuses[413], name
        # Every state a commit left behind is within the limits (only commits add versions).
        states = history.after_commit.get(name, [])
        assert len(states) == len(committed), name
        over = [(live, size) for live, size in states if live > MAX_COUNT or size > MAX_TOTAL]
        assert not over, f"{name}: commits left {over}"


def check_final_state(cluster: Cluster, accepted: Mapping[str, Sequence[Outcome]]) -> None:
    """The database, the storage and downloads through every replica agree with the 200
    answers: versions 1..N recorded with the confirmed bytes, the newest three live with
    their objects, nothing else stored, no lock left held."""
    states = {
        row["collection_id"]: row
        for row in query(
            cluster.dsn,
            "SELECT collection_id, last_version_number, lock_owner FROM collection_states",
        )
    }
    rows = query(
        cluster.dsn,
        "SELECT collection_id, version_number, id, sha256, filesize, storage_key,"
        " deleted_at IS NULL AS live FROM backup_versions ORDER BY collection_id, version_number",
    )
    live: dict[str, int] = {}
    expected_objects: dict[str, dict[str, int]] = {}
    for name in COLLECTIONS:
        done = {o.version["id"]: o for o in accepted.get(name, []) if o.version is not None}
        recorded = [row for row in rows if row["collection_id"] == name]
        total = len(done)
        assert name in states, f"{name}: no lock row"
        assert states[name]["lock_owner"] is None, f"{name}: lock left held"
        assert states[name]["last_version_number"] == total
        assert [row["version_number"] for row in recorded] == list(range(1, total + 1))
        for row in recorded:
            assert row["id"] in done, f"{name} v{row['version_number']} was never confirmed"
            outcome = done[row["id"]]
            assert outcome.version is not None
            assert row["version_number"] == outcome.version["versionNumber"]
            assert row["sha256"] == outcome.attempt.sha256
            assert row["filesize"] == len(outcome.attempt.body)
        kept = [row for row in recorded if row["live"]]
        assert [row["version_number"] for row in kept] == list(
            range(max(1, total - MAX_COUNT + 1), total + 1)
        )
        assert sum(row["filesize"] for row in kept) <= MAX_TOTAL
        live[name] = len(kept)
        expected_objects[name] = {row["storage_key"]: row["filesize"] for row in kept}
        for row in kept:
            data = cluster.storage.read(row["storage_key"])
            assert data is not None, f"{row['storage_key']} is missing"
            assert hashlib.sha256(data).hexdigest() == row["sha256"], row["storage_key"]
    listing = cluster.storage.listing()
    assert {k: v for k, v in listing.objects.items() if k in COLLECTIONS} == expected_objects
    assert not cluster.storage.incomplete_uploads()
    # Every live version downloads byte-identical through every replica.
    token = token_for(cluster.replicas[0])
    for replica in cluster.replicas:
        with httpx.Client(
            base_url=replica.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            for name in COLLECTIONS:
                listed = client.get(f"{BASE}/{name}/version").json()["data"]
                assert listed["usage"]["versions"] == live[name]
                for version in listed["versions"]:
                    body = client.get(f"{BASE}/{name}/version/{version['versionNumber']}")
                    assert body.status_code == 200
                    assert hashlib.sha256(body.content).hexdigest() == version["sha256"]


def check_watcher(watcher: Watcher) -> None:
    assert not watcher.violations, "\n".join(watcher.violations)
    # The watcher really watched: many samples, and it saw the limits reached.
    assert watcher.db_samples >= 10 * watcher.seconds
    assert watcher.storage_samples >= 10 * watcher.seconds
    hot = watcher.peaks[HOT]
    assert hot.db_count == MAX_COUNT
    assert hot.locked_samples > 0


def run_replicas_scenario(
    cluster: Cluster, storage_kind: str, messages: Sequence[bytes], rounds: int, seed: int
) -> Figures:
    plan = plan_rounds(rounds, len(cluster.replicas), messages, seed)
    watcher = Watcher(cluster.dsn, cluster.storage)
    watcher.start()
    started = time.monotonic()
    try:
        outcomes = hammer(cluster, plan)
    finally:
        seconds = time.monotonic() - started
        watcher.stop()
    statuses = Counter(o.status for o in outcomes)
    accepted = accepted_uploads(outcomes)
    history = replay(
        [dict(row) for row in query(cluster.dsn, "SELECT * FROM test_lock_history ORDER BY seq")]
    )
    # Every check runs, so that a failure shows everything that went wrong at once.
    failures: list[str] = []
    checks: list[tuple[str, Callable[[], None]]] = [
        ("answers", lambda: check_answers(outcomes, accepted)),
        ("rounds", lambda: check_rounds(outcomes)),
        ("lock history", lambda: check_history(history, accepted, outcomes)),
        ("watcher", lambda: check_watcher(watcher)),
        ("final state", lambda: check_final_state(cluster, accepted)),
    ]
    for name, check in checks:
        try:
            check()
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
        except Exception as exc:
            failures.append(f"{name}: {exc!r}")
    assert not failures, "\n\n".join(failures)
    assert statuses[413] > 0
    assert statuses[200] > 0
    figures = Figures(
        storage=storage_kind,
        replicas=len(cluster.replicas),
        rounds=rounds,
        attempted=len(outcomes),
        statuses=statuses,
        seconds=seconds,
        latencies=[o.seconds for o in outcomes],
        db_samples=watcher.db_samples,
        storage_samples=watcher.storage_samples,
        peaks=watcher.peaks,
        holds=sum(len(h) for h in history.holds.values()),
        after_commit=dict(history.after_commit),
    )
    print(f"\n[replicas] {figures.report()}")
    return figures


@pytest.fixture(scope="module")
def messages(gpg_home: GpgHome) -> list[bytes]:
    """A few real encrypted messages to pad into bodies of any size."""
    return [gpg_home.encrypt(f"backup {n}".encode() * (n + 1)) for n in range(16)]


# -- the tests ------------------------------------------------------------------------------


def test_two_replicas_hammered_on_one_folder(
    tmp_path: Path, postgres_url: str, messages: list[bytes]
) -> None:
    """The fast variant for ``make test``: two replicas, a shared folder, 10 rounds."""
    storage = FolderView(tmp_path / "shared-storage")
    with running_cluster(tmp_path, postgres_url, storage, 2) as cluster:
        run_replicas_scenario(cluster, "file", messages, rounds=FAST_ROUNDS, seed=10)


@pytest.mark.slow
@pytest.mark.parametrize("storage_kind", ["file", "s3"])
def test_three_replicas_hammered_for_many_rounds(
    storage_kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,
    messages: list[bytes],
) -> None:
    """Three replicas, SLOW_ROUNDS rounds of six concurrent uploads, on a folder and on
    S3."""
    storage = storage_for(storage_kind, request, tmp_path)
    with running_cluster(tmp_path, postgres_url, storage, 3) as cluster:
        run_replicas_scenario(cluster, storage_kind, messages, rounds=SLOW_ROUNDS, seed=7)


def _partial_upload(replica: ServerProcess, token: str, body: bytes, sent: int) -> socket.socket:
    port = int(replica.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {BASE}/{HOT}/version HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:sent])
    return sock


@pytest.mark.parametrize(
    "storage_kind",
    [
        pytest.param("file", id="file"),
        pytest.param("s3", id="s3"),
    ],
)
def test_stalled_replica_cannot_touch_the_next_holders_version(
    storage_kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,
    messages: list[bytes],
) -> None:
    """A lease can run out while its holder is alive but stalled (a frozen VM or container,
    a stop signal, a long pause). The next holder then commits the number the stalled one
    had computed. Whatever the stalled replica does when it wakes up, the version confirmed
    to the other client must stay intact.

    Regression test: the stalled replica used to complete its write over the confirmed
    object (on S3) and then delete it when its own commit was refused. Now the renewer
    stops an upload whose lease is lost, ownership is checked once more before the object
    becomes visible, and a refused commit never deletes the final name."""
    storage = storage_for(storage_kind, request, tmp_path)
    with running_cluster(
        tmp_path, postgres_url, storage, 2, extra_args=["--upload-lock-lease=1s"]
    ) as cluster:
        stalled, healthy = cluster.replicas
        token = token_for(healthy)
        first, late, confirmed = (pad_to(messages[i], 4096 + i) for i in range(3))

        def hot_lock() -> str:
            """ "held" or "expired" (by the database's clock), or "free"."""
            rows = query(
                cluster.dsn,
                "SELECT lock_owner IS NOT NULL AS held, lock_expires_at < now() AS expired"
                " FROM collection_states WHERE collection_id = $1",
                HOT,
            )
            if not rows or not rows[0]["held"]:
                return "free"
            return "expired" if rows[0]["expired"] else "held"

        with httpx.Client(
            base_url=healthy.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            assert client.post(f"{BASE}/{HOT}/version", content=first).status_code == 200
            sock = _partial_upload(stalled, token, late, len(late) // 2)
            try:
                wait_until(lambda: hot_lock() == "held")
                if storage_kind == "file":
                    wait_until(lambda: storage.listing().staging[HOT] == 1)
                os.kill(stalled.process.pid, signal.SIGSTOP)
                try:
                    wait_until(lambda: hot_lock() == "expired")
                    answer = client.post(f"{BASE}/{HOT}/version", content=confirmed)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["data"]["version"]["versionNumber"] == 2
                finally:
                    os.kill(stalled.process.pid, signal.SIGCONT)
                sock.sendall(late[len(late) // 2 :])
                reply = sock.recv(65536)
            finally:
                sock.close()
            assert b" 200 " not in reply.split(b"\r\n", 1)[0], reply[:300]
            download = client.get(f"{BASE}/{HOT}/version/2")
            assert download.status_code == 200, download.text
            assert download.content == confirmed
            assert storage.read(f"{HOT}/{HOT}-2.tar.gz") == confirmed


def test_rate_limits_shared_by_replicas_under_concurrent_logins(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    """Three replicas with --redis-url and a login limit of 8 per minute: 36 logins sent
    at once, 12 to each replica, get exactly 8 answers that are not 429, and then every
    replica refuses even a correct password. Without sharing, each replica would let 8
    through (24 in all)."""
    import redis

    # The fixture gives each test worker a Redis database of its own and clears it.
    url = redis_url
    client = redis.Redis.from_url(url)
    args = [
        "--rate-auth-limit=8",
        "--rate-default-limit=1000",
        "--rate-server-health-limit=1000",
        f"--redis-url={url}",
    ]
    try:
        for key in client.scan_iter("br-rate*"):
            client.delete(key)
        storage = FolderView(tmp_path / "shared-storage")
        with running_cluster(
            tmp_path, postgres_url, storage, 3, extra_args=args, unlimited=False
        ) as cluster:
            barrier = threading.Barrier(12)

            def attempt(index: int) -> list[int]:
                replica = cluster.replicas[index % 3]
                barrier.wait(timeout=30)
                return [login(replica.url, "plain", "wrong").status_code for _ in range(3)]

            with ThreadPoolExecutor(12) as pool:
                per_thread = list(pool.map(attempt, range(12)))
            statuses = Counter(status for answers in per_thread for status in answers)
            assert statuses == Counter({401: 8, 429: 28}), statuses
            for replica in cluster.replicas:
                refused = login(replica.url, "plain", "plain-pass")
                assert refused.status_code == 429
                assert int(refused.headers["Retry-After"]) >= 1
    finally:
        for key in client.scan_iter("br-rate*"):
            client.delete(key)
        client.close()
