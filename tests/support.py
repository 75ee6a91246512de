"""Shared test helpers: configuration folders written by the tests, and the real server
started as a separate process on a loopback port."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml

from backup_repository.services.events import Event
from backup_repository.services.passwords import PasswordHasher

JWT_SECRET = "test-secret-key-that-is-long-enough-for-hs256"
# For the check at the end of the run (conftest.py) that no server log holds a secret: the
# log of every server start_server() started, and every password given to user_doc().
SERVER_LOGS: list[Path] = []
KNOWN_PASSWORDS: set[str] = set()


def require_service(name: str, reason: str) -> NoReturn:
    """Skip the test because ``name`` is unavailable, or fail it under BR_REQUIRE_SERVICES=1."""
    if os.environ.get("BR_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required (BR_REQUIRE_SERVICES=1) but unavailable: {reason}")
    pytest.skip(reason)


@functools.cache
def password_hash(password: str) -> str:
    """Reference-format hash (base64 of the PHC string), computed once per password."""
    KNOWN_PASSWORDS.add(password)
    return PasswordHasher(1).hash_sync(password)


def user_doc(
    name: str,
    password: str,
    roles: Iterable[str] = (),
    *,
    email: str | None = None,
    deactivated: bool = False,
    restrict_by_ip: Iterable[str] | None = None,
    access_keys: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "email": email or f"{name}@example.org",
        "deactivated": deactivated,
        "password": password_hash(password),
        "roles": list(roles),
    }
    if restrict_by_ip is not None:
        spec["restrictByIP"] = list(restrict_by_ip)
    keys = [
        {
            "name": key["name"],
            "password": password_hash(key["password"]),
            "objects": key.get("objects", []),
        }
        for key in access_keys
    ]
    if keys:
        spec["accessKeys"] = keys
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupUser",
        "metadata": {"name": name},
        "spec": spec,
    }


def closed_windows() -> list[dict[str, str]]:
    """Backup windows that are closed now: one minute once a year, on a day that is not
    today."""
    day = (datetime.now(UTC) + timedelta(days=2)).strftime("%d %m")
    return [{"from": f"0 3 {day} *", "duration": "1m"}]


def collection_doc(name: str, acl: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupCollection",
        "metadata": {"name": name},
        "spec": {
            "description": f"{name} backups",
            "filenameTemplate": f"{name}-${{version}}.tar.gz",
            "maxBackupsCount": 3,
            "maxOneVersionSize": "1M",
            "maxCollectionSize": "5M",
            "strategyName": "fifo",
            "strategySpec": {},
            "accessControl": list(acl),
        },
    }


def default_documents() -> list[dict[str, Any]]:
    """A small world: an admin, a user manager, an uploader with an access key, a plain
    user, a deactivated user, and one collection."""
    return [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc("manager", "manager-pass", ["usersManager"]),
        user_doc(
            "uploader",
            "uploader-pass",
            [],
            access_keys=[
                {
                    "name": "ci",
                    "password": "ci-pass",
                    "objects": [{"name": "db", "type": "collection", "roles": ["backupUploader"]}],
                }
            ],
        ),
        user_doc("plain", "plain-pass", []),
        user_doc("sleeper", "sleeper-pass", [], deactivated=True),
        collection_doc(
            "db", acl=[{"name": "uploader", "type": "user", "roles": ["backupUploader"]}]
        ),
    ]


def write_config(folder: Path, documents: Iterable[Mapping[str, Any]]) -> Path:
    """Write objects as one multi-document file (atomically, so a watcher never reads half
    a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "objects.yaml"
    tmp = folder / ".objects.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(list(documents), sort_keys=False))
    os.replace(tmp, target)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return int(self.process.returncode)


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "backup_repository", *args]


def start_server(
    workdir: Path,
    config_dir: Path,
    *,
    db_url: str | None = None,
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    unlimited: bool = True,
    timeout: float = 30.0,
    replica_id: str | None = None,
) -> ServerProcess:
    """Start ``python -m backup_repository`` on a free loopback port and wait for /health.

    ``db_url``: None for a SQLite file in ``workdir``, "" to pass no ``--db-url`` at all.
    ``replica_id``: None for an id of its own (``test-<port>``: servers started side by
    side are separate replicas, as on separate machines), "" to pass none (the host name),
    or the id to start under (the same id again: a restart of that replica).
    """
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [f"--listen=127.0.0.1:{port}", f"--jwt-secret-key={JWT_SECRET}"]
    if db_url != "":
        args += ["--db-url", db_url or f"sqlite:///{workdir / 'server.db'}"]
    args += [
        "--config-local-path",
        str(config_dir),
        "--storage-url",
        (workdir / "storage").as_uri(),
        "--log-level=info",
    ]
    if unlimited:
        args += [
            "--rate-default-limit=0",
            "--rate-auth-limit=0",
            "--rate-collection-health-limit=0",
            "--rate-server-health-limit=0",
        ]
    if replica_id != "":
        args.append(f"--replica-id={replica_id or f'test-{port}'}")
    args += list(extra_args)
    log_path = workdir / f"server-{port}.log"
    SERVER_LOGS.append(log_path)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    full_env.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            server_command(*args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=full_env,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path, args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy within {timeout}s:\n{server.log()}")


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def eventually(predicate: Any, within: float = 10.0, interval: float = 0.05) -> Any:
    """Async ``wait_until``: awaits ``predicate()`` (sync or async) until it is truthy."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def make_settings(
    tmp_path: Path, database_url: str, storage_url: str | None = None, **overrides: Any
) -> Any:
    """Settings for an in-process app: the configuration folder ``tmp_path / "config"``,
    storage under ``tmp_path / "storage"`` unless given, no rate limits."""
    from backup_repository.settings import Settings

    values: dict[str, Any] = {
        "db_url": database_url,
        "jwt_secret_key": JWT_SECRET,
        "storage_url": storage_url or (tmp_path / "storage").as_uri(),
        "config_local_path": tmp_path / "config",
        "rate_default_limit": 0,
        "rate_auth_limit": 0,
        "rate_collection_health_limit": 0,
        "rate_server_health_limit": 0,
    }
    values.update(overrides)
    return Settings(**values)


class RecordingSink:
    """An event sink that keeps every event in memory, for tests of the services."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.events.append(event)
