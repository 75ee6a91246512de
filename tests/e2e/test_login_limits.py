"""Rate limits keyed on the parsed client address (an IPv6 client by its /64, zone ids
dropped) and the bounded queue of logins waiting for Argon2, through the real server.

The server sees the addresses a trusted proxy forwards (``X-Forwarded-For`` from
127.0.0.1), as it does behind an ingress: loopback itself has only one IPv6 address.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from backup_repository.services.passwords import PasswordHasher
from support import KNOWN_PASSWORDS, ServerProcess, default_documents, start_server, user_doc
from support import write_config as write_objects

pytestmark = pytest.mark.e2e

LOGIN = "/api/stable/auth/login"
AUTH_LIMIT = 5
RATE_ARGS = [
    f"--rate-auth-limit={AUTH_LIMIT}",
    "--rate-default-limit=1000",
    "--rate-server-health-limit=1000",
    "--rate-collection-health-limit=1000",
    "--trusted-proxies=127.0.0.1",
]


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    write_objects(config, default_documents())
    return config


def attempts(server: ServerProcess, addresses: list[str]) -> list[int]:
    """One wrong-password login from each address, in order: their statuses."""
    statuses = []
    for address in addresses:
        response = httpx.post(
            server.url + LOGIN,
            json={"username": "plain", "password": "wrong"},
            headers={"X-Forwarded-For": address},
            timeout=30,
        )
        statuses.append(response.status_code)
    return statuses


def test_ipv6_addresses_of_one_64_share_a_login_bucket(tmp_path: Path) -> None:
    server = start_server(tmp_path, write_config(tmp_path), unlimited=False, extra_args=RATE_ARGS)
    try:
        # One host rotating the low 64 bits of its prefix: 15 addresses, one guess each.
        rotating = [f"2001:db8:0:7:{i:x}:{i * 7:x}:beef:{i}" for i in range(1, 16)]
        statuses = attempts(server, rotating)
        assert statuses == [401] * AUTH_LIMIT + [429] * (15 - AUTH_LIMIT), statuses

        refused = httpx.post(
            server.url + LOGIN,
            json={"username": "plain", "password": "plain-pass"},
            headers={"X-Forwarded-For": "2001:db8:0:7::1"},
        )
        assert refused.status_code == 429
        assert refused.json() == {"status": False, "data": {}, "error": refused.json()["error"]}
        assert "too many requests" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1

        # Another /64 of the same /48 has a bucket of its own.
        assert attempts(server, ["2001:db8:0:8::1"]) == [401]
        # IPv4 is keyed per address, as before; its IPv4-mapped IPv6 form is the same client.
        assert attempts(server, ["192.0.2.1"] * AUTH_LIMIT) == [401] * AUTH_LIMIT
        assert attempts(server, ["192.0.2.1", "::ffff:192.0.2.1"]) == [429, 429]
        assert attempts(server, ["192.0.2.2"]) == [401]
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_zone_ids_are_not_part_of_the_key_and_the_prefix_is_configurable(
    tmp_path: Path,
) -> None:
    server = start_server(
        tmp_path,
        write_config(tmp_path),
        unlimited=False,
        extra_args=[*RATE_ARGS, "--rate-limit-ipv6-prefix=128"],
    )
    try:
        # The same link-local address with other zone ids (and other spellings) is one client.
        spellings = [
            "fe80::1%eth0",
            "fe80::1%eth1",
            "fe80:0:0:0:0:0:0:1%2",
            "FE80::0001",
            "fe80::1%lo",
            "fe80::1",
        ]
        statuses = attempts(server, spellings)
        assert statuses == [401] * AUTH_LIMIT + [429], statuses
        # With /128 keys, the next address of the same /64 is another client.
        assert attempts(server, ["fe80::2%eth0"]) == [401]
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_shared_limiter_keys_ipv6_by_prefix_too(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path)
    args = [*RATE_ARGS, f"--redis-url={redis_url}"]
    first = start_server(tmp_path / "a", config, unlimited=False, extra_args=args)
    second = start_server(tmp_path / "b", config, unlimited=False, extra_args=args)
    try:
        statuses = []
        for i in range(1, 11):
            server = first if i % 2 else second
            statuses += attempts(server, [f"2001:db8:0:9::{i:x}%eth{i}"])
        assert statuses == [401] * AUTH_LIMIT + [429] * (10 - AUTH_LIMIT), statuses
        assert attempts(first, ["2001:db8:0:a::1"]) == [401]
        assert attempts(second, ["192.0.2.9"]) == [401]
    finally:
        first.stop()
        second.stop()


# -- the queue of logins waiting for Argon2 ---------------------------------------------------

# time_cost=8: each verification takes several times the reference's (about 0.3 s here),
# so that concurrent logins really wait for the one hashing thread.
SLOW_PASSWORD = "slow-login-pass"


def slow_user_config(tmp_path: Path) -> Path:
    KNOWN_PASSWORDS.add(SLOW_PASSWORD)
    slow = user_doc("slow", "unused-pass")
    slow["spec"]["password"] = PasswordHasher(1, time_cost=8).hash_sync(SLOW_PASSWORD)
    config = tmp_path / "config"
    write_objects(config, [slow])
    return config


async def concurrent_logins(url: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(LOGIN, json={"username": "slow", "password": SLOW_PASSWORD})
                for _ in range(count)
            )
        )


def test_logins_beyond_the_queue_limit_are_503_with_retry_after(
    tmp_path: Path, database_url: str
) -> None:
    server = start_server(
        tmp_path,
        slow_user_config(tmp_path),
        db_url=database_url,
        extra_args=["--password-hash-concurrency=1", "--login-queue-limit=2"],
    )
    try:
        # Without overload, every login of a full queue (1 hashing + 2 waiting) succeeds.
        within = asyncio.run(concurrent_logins(server.url, 3))
        assert [r.status_code for r in within] == [200, 200, 200], [r.text for r in within]

        # Twenty at once: three are admitted, the others are told to come back.
        answers = asyncio.run(concurrent_logins(server.url, 20))
        statuses = Counter(r.status_code for r in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] >= 10, statuses
        assert statuses[200] >= 3, statuses
        for response in answers:
            if response.status_code != 503:
                continue
            body = response.json()
            assert body["status"] is False
            assert body["data"] == {}
            assert "too many logins" in body["error"]
            assert "try again" in body["error"]
            assert int(response.headers["Retry-After"]) >= 1

        # The server keeps answering, and the next login succeeds.
        assert httpx.get(server.url + "/health").status_code == 200
        after = asyncio.run(concurrent_logins(server.url, 1))
        assert after[0].status_code == 200, after[0].text
        assert "Traceback" not in server.log()
    finally:
        server.stop()
