"""Notifications end to end: two real server processes (replicas) on one PostgreSQL
database, a real webhook receiver on loopback that records what it gets and can be made
to fail or to hang, and the test clock (``BR_TEST_CLOCK_FILE``) to move both servers past
a backup window without waiting.

One test walks through the story so that the servers are started once: a window closes
without a backup (exactly one ``missing`` per subscribed channel although two replicas
judge), the next upload recovers it, a version at a tenth of the usual size and three
refused uploads are ``suspicious``, a version corrupted in the storage and found by
``backup-repository verify`` is ``integrity``, a receiver that is down gets everything
once it is back, and a replica killed (``kill -9``) while delivering delivers the rest
after its restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from gpg_fixtures import GpgHome, pad_to
from support import ServerProcess, start_server, user_doc, wait_until, write_config

pytestmark = pytest.mark.e2e

BASE = "/api/stable/repository/collection"
SIGNING_KEY = "e2e-notification-signing-key-0123456789abcdef"
UPLOADER = ("uploader", "uploader-pass")
ADMIN = ("admin", "admin-pass")


# -- the receiver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    channel: str  # the path the channel posts to: "a" or "b"
    event: dict[str, Any]
    answered: int
    signed: bool  # the signature header checks out with the channel's signing key


class Receiver(ThreadingHTTPServer):
    """Records every webhook request; ``mode`` decides the answer: ``ok`` (204), ``down``
    (503) or ``hang`` (no answer for ``hang_seconds``, then 204)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ok"
        self.hang_seconds = 30.0
        self.deliveries: list[Delivery] = []
        self.attempts: list[str] = []  # event ids of every request, whatever the answer
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"

    def events(self, type_: str | None = None, channel: str | None = None) -> list[Delivery]:
        with self.lock:
            return [
                d
                for d in self.deliveries
                if (type_ is None or d.event["type"] == type_)
                and (channel is None or d.channel == channel)
            ]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        event = json.loads(body)
        timestamp = self.headers.get("X-Backup-Repository-Timestamp", "")
        mac = hmac.new(SIGNING_KEY.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        signed = (
            hmac.compare_digest(
                "sha256=" + mac.hexdigest(), self.headers.get("X-Backup-Repository-Signature", "")
            )
            and abs(time.time() - int(timestamp or 0)) < 300
        )
        with self.server.lock:
            self.server.attempts.append(event["id"])
        mode = self.server.mode
        if mode == "hang":
            time.sleep(self.server.hang_seconds)
        status = 503 if mode == "down" else 204
        if status == 204:
            with self.server.lock:
                self.server.deliveries.append(Delivery(self.path.strip("/"), event, status, signed))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.mode = "ok"
        server.shutdown()
        server.server_close()


# -- the configuration -----------------------------------------------------------------------


def channel(name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "NotificationChannel",
        "metadata": {"name": name},
        "spec": {
            "type": "webhook",
            "webhook": {
                "url": url,
                "signingSecretRef": {"name": "notify-secrets", "entry": "signing-key"},
                "timeout": "5s",
            },
        },
    }


def collection(
    name: str, notifications: dict[str, Any], windows: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupCollection",
        "metadata": {"name": name},
        "spec": {
            "description": f"{name} backups",
            "filenameTemplate": f"{name}-${{version}}.gpg",
            "maxBackupsCount": 10,
            "maxOneVersionSize": "1M",
            "maxCollectionSize": "20M",
            "strategyName": "fifo",
            "windows": windows or [],
            "accessControl": [
                {
                    "name": "uploader",
                    "type": "user",
                    "roles": ["backupUploader", "uploadsAnytime"],
                }
            ],
            "notifications": notifications,
        },
    }


def documents(receiver: Receiver) -> list[dict[str, Any]]:
    return [
        user_doc("admin", ADMIN[1], ["systemAdmin"]),
        user_doc("uploader", UPLOADER[1]),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "notify-secrets"},
            "type": "Opaque",
            "stringData": {"signing-key": SIGNING_KEY},
        },
        channel("hook-a", receiver.url("a")),
        channel("hook-b", receiver.url("b")),
        # Every night at 03:00 UTC for an hour; both channels get every event.
        collection(
            "nightly",
            {
                "channels": [{"name": "hook-a"}, {"name": "hook-b"}],
                "gracePeriod": "5m",
                "reminderInterval": "0",
            },
            windows=[{"from": "0 3 * * *", "duration": "1h"}],
        ),
        # No windows: judged by sizes, limits and integrity; hook-a only.
        collection(
            "sizes",
            {
                "channels": [
                    {"name": "hook-a", "events": ["suspicious", "integrity", "recovered"]}
                ],
                "reminderInterval": "0",
                # Refusals are recorded at real time: they must not age out when the
                # story moves the clock a day on.
                "refusalPeriod": "720h",
            },
        ),
    ]


# -- PostgreSQL, the servers -----------------------------------------------------------------


@pytest.fixture
def database(postgres_admin_url: str) -> Iterator[str]:
    name = f"br_notify_{uuid.uuid4().hex[:12]}"
    dsn = make_url(postgres_admin_url).set(drivername="postgresql")
    admin = dsn.render_as_string(hide_password=False)

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(admin, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Cluster:
    workdir: Path
    config: Path
    db_url: str
    clock_file: Path
    servers: dict[str, ServerProcess]

    def start(self, replica: str) -> ServerProcess:
        server = start_server(
            self.workdir,
            self.config,
            db_url=self.db_url,
            replica_id=replica,
            extra_args=["--notify-interval=1s", "--notify-dispatch-interval=200ms"],
            env={"BR_TEST_CLOCK_FILE": str(self.clock_file), "BR_ENABLE_TEST_FACILITIES": "1"},
            timeout=60,
        )
        self.servers[replica] = server
        return server

    def move_clock_to(self, moment: datetime) -> None:
        offset = (moment - datetime.now(UTC)).total_seconds()
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{offset:.3f}\n")
        os.replace(tmp, self.clock_file)

    def now(self) -> datetime:
        text = self.clock_file.read_text().strip() or "0"
        return datetime.now(UTC) + timedelta(seconds=float(text))


def login(server: ServerProcess, who: tuple[str, str]) -> dict[str, str]:
    response = httpx.post(
        server.url + "/api/stable/auth/login", json={"username": who[0], "password": who[1]}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


_TOKENS: dict[str, dict[str, str]] = {}


def upload(server: ServerProcess, name: str, body: bytes) -> int:
    if server.url not in _TOKENS:
        _TOKENS[server.url] = login(server, UPLOADER)
    response = httpx.post(
        f"{server.url}{BASE}/{name}/version", content=body, headers=_TOKENS[server.url], timeout=30
    )
    assert response.status_code == 200, response.text
    number: int = response.json()["data"]["version"]["versionNumber"]
    return number


def next_window_after(moment: datetime) -> datetime:
    """The first 03:00 UTC after ``moment``."""
    start = moment.replace(hour=3, minute=0, second=0, microsecond=0)
    return start if start > moment else start + timedelta(days=1)


def settle(seconds: float = 1.5) -> None:
    """Leave the servers a few evaluation rounds (every second) and deliveries."""
    time.sleep(seconds)


def test_notifications_across_replicas(
    tmp_path: Path, receiver: Receiver, database: str, gpg_home: GpgHome
) -> None:
    config = tmp_path / "config"
    write_config(config, documents(receiver))
    clock_file = tmp_path / "clock-offset"
    clock_file.write_text("0\n")
    cluster = Cluster(tmp_path / "work", config, database, clock_file, {})
    try:
        # Started side by side: each start takes seconds on a busy machine.
        with ThreadPoolExecutor(2) as pool:
            first, _ = pool.map(cluster.start, ["rep-a", "rep-b"])
        # Both collections are seen for the first time now: nothing is announced.
        settle()
        assert receiver.events() == []

        # -- missing, exactly once per channel, from two replicas ------------------------
        window = next_window_after(cluster.now())
        cluster.move_clock_to(window + timedelta(hours=1, minutes=6))
        wait_until(lambda: len(receiver.events("missing")) >= 2, timeout=10)
        settle()
        missing = receiver.events("missing")
        assert sorted(d.channel for d in missing) == ["a", "b"], missing
        assert len({d.event["id"] for d in missing}) == 1
        event = missing[0].event
        assert event["collection"] == "nightly"
        assert event["condition"] == "missing"
        assert event["reminder"] is False
        assert "none was ever uploaded" in event["summary"]

        # -- the next upload recovers it, once per channel --------------------------------
        v1 = gpg_home.encrypt(b"nightly dump " * 4000)
        upload(first, "nightly", v1)
        wait_until(lambda: len(receiver.events("recovered")) >= 2, timeout=10)
        settle()
        recovered = receiver.events("recovered")
        assert sorted(d.channel for d in recovered) == ["a", "b"]
        assert {d.event["condition"] for d in recovered} == {"missing"}
        assert len(receiver.events("missing")) == 2

        # -- a version at a tenth of the usual size ---------------------------------------
        usual = gpg_home.encrypt(b"usual")
        for _ in range(4):
            upload(first, "sizes", pad_to(usual, 100_000))
        upload(first, "sizes", pad_to(usual, 10_000))
        wait_until(lambda: receiver.events("suspicious"), timeout=10)
        settle()
        (suspicious,) = receiver.events("suspicious")
        assert suspicious.channel == "a"
        assert suspicious.event["condition"] == "shrunk"
        assert suspicious.event["facts"]["size"] == 10_000

        # -- a corrupted object found by `backup-repository verify` -----------------------
        stored = cluster.workdir / "storage" / "sizes" / "sizes-2.gpg"
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))
        verify = subprocess.run(
            [
                sys.executable,
                "-m",
                "backup_repository",
                "verify",
                "--db-url",
                database,
                "--storage-url",
                (cluster.workdir / "storage").as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("BR_")},
        )
        assert verify.returncode != 0, verify.stdout + verify.stderr
        wait_until(lambda: receiver.events("integrity"), timeout=10)
        (integrity,) = receiver.events("integrity")
        assert integrity.event["facts"]["versions"] == [2]

        # -- three refused uploads (not OpenPGP) are suspicious too -----------------------
        for _ in range(3):
            refused = httpx.post(
                f"{first.url}{BASE}/sizes/version",
                content=b"plain text, not encrypted",
                headers=_TOKENS[first.url],
            )
            assert refused.status_code == 400, refused.text
        wait_until(lambda: len(receiver.events("suspicious")) >= 2, timeout=10)
        conditions = sorted(d.event["condition"] for d in receiver.events("suspicious"))
        assert conditions == ["refusals", "shrunk"]

        # -- a receiver that is down gets everything once it is back ----------------------
        receiver.mode = "down"
        attempts_before = len(receiver.attempts)
        cluster.move_clock_to(cluster.now() + timedelta(days=1, hours=1))  # another window
        wait_until(lambda: len(receiver.attempts) >= attempts_before + 2, timeout=10)
        admin = login(first, ADMIN)

        def retried() -> list[dict[str, Any]]:
            entries: list[dict[str, Any]] = httpx.get(
                first.url + "/api/stable/notifications/outbox?status=pending", headers=admin
            ).json()["data"]["entries"]
            done = len(entries) == 2 and all(e["attempts"] >= 1 for e in entries)
            return entries if done else []

        pending = wait_until(retried, timeout=10)
        assert {e["event"]["type"] for e in pending} == {"missing"}
        assert all("503" in e["lastError"] for e in pending), pending
        receiver.mode = "ok"
        # The retry is due after about 10 s of the servers' clock: move it on.
        cluster.move_clock_to(cluster.now() + timedelta(seconds=30))
        wait_until(lambda: len(receiver.events("missing")) >= 4, timeout=10)
        second_missing = {d.event["id"] for d in receiver.events("missing")} - {event["id"]}
        assert len(second_missing) == 1

        # -- kill -9 during a delivery; the restarted replica delivers the rest ----------
        cluster.servers.pop("rep-b").stop()
        receiver.mode = "hang"
        receiver.hang_seconds = 4.0
        attempts_before = len(receiver.attempts)
        upload(first, "nightly", gpg_home.encrypt(b"nightly again " * 4000))
        wait_until(lambda: len(receiver.attempts) > attempts_before, timeout=10)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        receiver.mode = "ok"
        restarted = cluster.start("rep-a")
        admin = login(restarted, ADMIN)

        def outbox() -> list[dict[str, Any]]:
            entries: list[dict[str, Any]] = httpx.get(
                restarted.url + "/api/stable/notifications/outbox?limit=500", headers=admin
            ).json()["data"]["entries"]
            return entries

        wait_until(lambda: {e["status"] for e in outbox()} == {"delivered"}, timeout=15)
        recovered_ids = {d.event["id"] for d in receiver.events("recovered")}
        assert len(recovered_ids) == 2  # the first recovery and this one
        for path in ("a", "b"):
            assert {d.event["id"] for d in receiver.events("recovered", path)} == recovered_ids
        state = httpx.get(restarted.url + "/api/stable/notifications/state", headers=admin).json()[
            "data"
        ]["collections"]
        nightly = next(c for c in state if c["collection"] == "nightly")
        assert nightly["channels"] == ["hook-a", "hook-b"]
        conditions = {c["condition"]: c for c in nightly["conditions"]}
        assert conditions["missing"]["failing"] is False
        # Each change was announced once: one outbox row per channel and event, and as
        # many events as the story made (missing twice, recovered twice, suspicious twice,
        # integrity).
        rows = [(e["event"]["type"], e["event"]["id"], e["channel"]) for e in outbox()]
        assert len(rows) == len({(i, c) for _, i, c in rows})
        kinds = sorted(t for t, _, c in rows if c == "hook-a")
        assert kinds == [
            "integrity",
            "missing",
            "missing",
            "recovered",
            "recovered",
            "suspicious",
            "suspicious",
        ]
        # Signed with the channel's key, on real time although the clock was moved days on.
        assert all(d.signed for d in receiver.events())
        metrics = httpx.get(restarted.url + "/metrics").text
        assert 'backup_repository_notification_outbox{status="delivered"}' in metrics
        assert 'backup_repository_notification_outbox{status="pending"} 0.0' in metrics
        # The restarted replica delivered what its killed life had claimed.
        for name in ("hook-a", "hook-b"):
            assert (
                f'backup_repository_notifications_delivered_total{{channel="{name}",'
                'outcome="delivered"}' in metrics
            ), metrics
    finally:
        for server in cluster.servers.values():
            server.stop()


# -- the long variant ------------------------------------------------------------------------

HOURLY = [f"hourly-{n}" for n in range(1, 5)]


def hourly_documents(receiver: Receiver) -> list[dict[str, Any]]:
    documents_ = documents(receiver)[:5]  # the users, the Secret and the two channels
    for name in HOURLY:
        documents_.append(
            collection(
                name,
                {
                    "channels": [{"name": "hook-a"}, {"name": "hook-b"}],
                    "gracePeriod": "1m",
                    "reminderInterval": "0",
                },
                windows=[{"from": "0 * * * *", "duration": "10m"}],
            )
        )
    return documents_


@pytest.mark.slow
def test_exactly_once_through_rounds_of_kills(
    tmp_path: Path, receiver: Receiver, database: str, gpg_home: GpgHome
) -> None:
    """Three replicas; eight hourly windows go by on the test clock. In each round every
    collection not uploaded to since the window opened is missing (announced when it was
    not already), half of the collections then get a backup (recovered), and one replica,
    picked in turn, is killed with SIGKILL while deliveries are under way and started
    again. Every change is announced exactly once per channel (one outbox row each, every
    row delivered), whatever replica judged it."""
    config = tmp_path / "config"
    write_config(config, hourly_documents(receiver))
    clock_file = tmp_path / "clock-offset"
    clock_file.write_text("0\n")
    cluster = Cluster(tmp_path / "work", config, database, clock_file, {})
    replicas = ["rep-a", "rep-b", "rep-c"]
    body = gpg_home.encrypt(b"hourly " * 2000)
    expected: dict[tuple[str, str], int] = {}
    failing = dict.fromkeys(HOURLY, False)
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(cluster.start, replicas))
        settle()
        moment = cluster.now()
        for round_ in range(8):
            window = moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            moment = window + timedelta(minutes=12)
            cluster.move_clock_to(moment)
            for name in HOURLY:
                if not failing[name]:
                    expected[name, "missing"] = expected.get((name, "missing"), 0) + 1
                failing[name] = True
            # Kill a replica while the round's announcements are being delivered.
            victim = replicas[round_ % 3]
            time.sleep(0.3 + 0.2 * (round_ % 3))
            killed = cluster.servers.pop(victim)
            killed.process.send_signal(signal.SIGKILL)
            killed.process.wait(timeout=10)
            alive = next(iter(cluster.servers.values()))
            for name in HOURLY[round_ % 2 :: 2]:
                upload(alive, name, body)
                expected[name, "recovered"] = expected.get((name, "recovered"), 0) + 1
                failing[name] = False
            cluster.start(victim)
        admin = login(next(iter(cluster.servers.values())), ADMIN)
        server = next(iter(cluster.servers.values()))

        def outbox() -> list[dict[str, Any]]:
            entries: list[dict[str, Any]] = httpx.get(
                server.url + "/api/stable/notifications/outbox?limit=500", headers=admin
            ).json()["data"]["entries"]
            return entries

        want = sum(expected.values()) * 2
        wait_until(
            lambda: len(outbox()) == want and {e["status"] for e in outbox()} == {"delivered"},
            timeout=60,
        )
        settle()
        rows = outbox()
        assert len(rows) == want
        for (name, type_), count in expected.items():
            for channel_name in ("hook-a", "hook-b"):
                ids = {
                    e["event"]["id"]
                    for e in rows
                    if e["event"]["collection"] == name
                    and e["event"]["type"] == type_
                    and e["channel"] == channel_name
                }
                assert len(ids) == count, (name, type_, channel_name)
                received = {
                    d.event["id"]
                    for d in receiver.events(type_, channel_name[-1])
                    if d.event["collection"] == name
                }
                assert received == ids, (name, type_, channel_name)
    finally:
        for server_ in cluster.servers.values():
            server_.stop()
