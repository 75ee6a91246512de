"""Rate limits when Redis is unreachable (docs/api.md, "Rate limits"): the real server keeps
answering, each replica counts on its own instead, and the log says so once per outage.
Redis is a real ``redis-server`` on a port of the test's own, so it can be killed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from support import (
    ServerProcess,
    default_documents,
    free_port,
    require_service,
    start_server,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

LOGIN = "/api/stable/auth/login"
AUTH_LIMIT = 3
FALLBACK = "shared rate limit store unavailable, limiting per replica"


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def start_redis(workdir: Path, port: int) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        require_service("redis-server", "redis-server is not on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(f"redis://127.0.0.1:{port}/0", process)

    def answers() -> bool:
        with server.client() as client:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

    wait_until(answers, timeout=15)
    return server


@pytest.fixture
def redis_port() -> int:
    return free_port()


@pytest.fixture
def redis_server(tmp_path: Path, redis_port: int) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", redis_port)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()


def start_limited(tmp_path: Path, redis_url: str) -> ServerProcess:
    write_config(tmp_path / "config", default_documents())
    return start_server(
        tmp_path / "server",
        tmp_path / "config",
        unlimited=False,
        extra_args=[
            f"--rate-auth-limit={AUTH_LIMIT}",
            "--rate-server-health-limit=1000",
            "--rate-default-limit=1000",
            f"--redis-url={redis_url}",
        ],
    )


def wrong_logins(server: ServerProcess, count: int) -> list[int]:
    return [
        httpx.post(
            server.url + LOGIN, json={"username": "plain", "password": "wrong"}, timeout=30
        ).status_code
        for _ in range(count)
    ]


def assert_still_serving(server: ServerProcess) -> None:
    """Every bucket answers, with its usual answer: no 500."""
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    refused = httpx.get(server.url + "/api/stable/auth/whoami", timeout=30)
    assert refused.status_code == 401
    assert refused.json()["status"] is False
    limited = httpx.post(server.url + LOGIN, json={"username": "plain", "password": "x"})
    assert limited.status_code == 429
    assert limited.json()["status"] is False
    assert int(limited.headers["Retry-After"]) >= 1


def test_a_redis_that_never_answers_limits_per_replica(tmp_path: Path) -> None:
    server = start_limited(tmp_path, f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    try:
        assert wrong_logins(server, AUTH_LIMIT + 1) == [401] * AUTH_LIMIT + [429]
        assert_still_serving(server)
        log = server.log()
        assert log.count(FALLBACK) == 1, log[-3000:]
        assert "Traceback" not in log
    finally:
        server.stop()


def test_a_redis_that_goes_away_mid_run_is_replaced_by_counting_per_replica(
    tmp_path: Path, redis_server: RedisServer, redis_port: int
) -> None:
    server = start_limited(tmp_path, redis_server.url)
    try:
        assert wrong_logins(server, 2) == [401, 401]
        with redis_server.client() as client:
            assert list(client.scan_iter("br-rate*")), "the logins were not counted in Redis"
        assert FALLBACK not in server.log()

        redis_server.kill()
        # The replica's own counters start from nothing: the limit is counted again.
        assert wrong_logins(server, AUTH_LIMIT + 1) == [401] * AUTH_LIMIT + [429]
        assert_still_serving(server)
        log = server.log()
        assert log.count(FALLBACK) == 1, log[-3000:]
        assert "Traceback" not in log

        # Redis back (empty): the counting is shared again, so the login is counted there.
        restarted = start_redis(tmp_path / "redis-again", redis_port)
        try:
            assert wrong_logins(server, 1) == [401]
            with restarted.client() as client:
                assert list(client.scan_iter("br-rate*"))
        finally:
            restarted.kill()
    finally:
        server.stop()
