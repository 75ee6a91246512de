"""The real server process over loopback HTTP: development mode as ``make run`` starts it,
the reference project's configuration folder, rate limits and trusted proxies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from support import (
    default_documents,
    free_port,
    server_command,
    start_server,
    user_doc,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
LOGIN = "/api/stable/auth/login"


def login(url: str, username: str, password: str, **kwargs: object) -> httpx.Response:
    return httpx.post(url + LOGIN, json={"username": username, "password": password}, **kwargs)  # type: ignore[arg-type]


def test_dev_mode_serves_the_example_configuration(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        server_command(
            "--dev",
            f"--listen=127.0.0.1:{port}",
            "--config-local-path",
            str(ROOT / "examples" / "config"),
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        banner: list[str] = []
        for line in process.stdout:
            banner.append(line)
            if "ci-bot$uploader" in line:
                break
        text = "".join(banner)
        assert f"listening on {url}" in text
        assert "admin" in text
        assert "DEVELOPMENT MODE" in text  # the warning line of the readable log
        assert (tmp_path / "data" / "backup-repository.db").exists()
        assert (tmp_path / "data" / ".dev-jwt-secret").stat().st_mode & 0o077 == 0

        assert login(url, "admin", "admin").status_code == 200
        uploader = login(url, "ci-bot$uploader", "upload-only")
        assert uploader.status_code == 200
        token = uploader.json()["data"]["token"]
        who = httpx.get(
            url + "/api/stable/auth/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        assert who.json()["data"]["accessKeyName"] == "uploader"
        assert httpx.get(url + "/ready").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()


def test_reference_configuration_folder_logs_in(tmp_path: Path) -> None:
    """The reference project's objects, in its folder layout, work unchanged. Its admin is
    restricted to 1.2.3.4, so the test logs in through a trusted proxy that forwards that
    address."""
    config = tmp_path / "config"
    shutil.copytree(FIXTURES / "reference-layout", config)
    server = start_server(tmp_path, config, extra_args=["--trusted-proxies=127.0.0.1"])
    try:
        # From the loopback address itself the admin is refused (restrictByIP: 1.2.3.4).
        assert login(server.url, "admin", "admin").status_code == 401
        forwarded = {"X-Forwarded-For": "1.2.3.4"}
        response = login(server.url, "admin", "admin", headers=forwarded)
        assert response.status_code == 200, response.text
        admin_token = response.json()["data"]["token"]
        who = httpx.get(
            server.url + "/api/stable/auth/whoami",
            headers={"Authorization": f"Bearer {admin_token}", **forwarded},
        ).json()["data"]
        assert who["email"] == "riotkit@riseup.net"
        assert set(who["permissions"]) == {"collectionManager", "userManager", "systemAdmin"}
        # The same token from another address is refused.
        response = httpx.get(
            server.url + "/api/stable/auth/whoami",
            headers={"Authorization": f"Bearer {admin_token}", "X-Forwarded-For": "5.6.7.8"},
        )
        assert response.status_code == 401

        response = login(server.url, "some-user$uploader", "test")
        assert response.status_code == 200, response.text
        token = response.json()["data"]["token"]
        who = httpx.get(
            server.url + "/api/stable/auth/whoami", headers={"Authorization": f"Bearer {token}"}
        ).json()["data"]
        assert who["email"] == "user@riseup.net"
        assert who["accessKeyName"] == "uploader"

        assert login(server.url, "some-user", "admin").status_code == 200
        assert login(server.url, "unprivileged", "admin").status_code == 200
        refused = login(server.url, "some-user$uploader", "admin")
        assert refused.status_code == 401
        assert refused.json()["message"].startswith("incorrect Username or Password")

        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 200, ready.text
    finally:
        assert server.stop() == 0


def test_kubectl_style_folder_logs_in(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(FIXTURES / "kubectl-style", config)
    server = start_server(tmp_path, config)
    try:
        assert login(server.url, "some-user$uploader", "test").status_code == 200
        ready = httpx.get(server.url + "/ready").json()
        check = {c["name"]: c for c in ready["data"]["health"]}["ConfigurationProviderValidator"]
        assert check["status"] is True
        assert "1 collection and" in check["message"]
    finally:
        server.stop()


def test_forwarded_for_is_ignored_from_untrusted_peers(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_config(config, [user_doc("office", "office-pass", [], restrict_by_ip=["1.2.3.4"])])
    server = start_server(tmp_path, config)  # no --trusted-proxies
    try:
        spoofed = login(server.url, "office", "office-pass", headers={"X-Forwarded-For": "1.2.3.4"})
        assert spoofed.status_code == 401
    finally:
        server.stop()


def test_rate_limits_answer_429_in_the_envelope(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_config(config, default_documents())
    server = start_server(
        tmp_path,
        config,
        unlimited=False,
        extra_args=[
            "--rate-auth-limit=3",
            "--rate-server-health-limit=1000",
            "--rate-default-limit=1000",
            "--rate-collection-health-limit=2",
        ],
    )
    try:
        statuses = [login(server.url, "plain", "wrong").status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        response = login(server.url, "plain", "plain-pass")
        assert response.status_code == 429
        body = response.json()
        assert body["status"] is False
        assert body["data"] == {}
        assert "too many requests" in body["error"]
        assert int(response.headers["Retry-After"]) >= 1
        # Other buckets are separate.
        assert httpx.get(server.url + "/health").status_code == 200
        health = [
            httpx.get(server.url + "/api/stable/repository/collection/db/health").status_code
            for _ in range(3)
        ]
        assert health[-1] == 429
    finally:
        server.stop()


def test_default_rate_limit_per_second(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_config(config, default_documents())
    server = start_server(
        tmp_path,
        config,
        unlimited=False,
        extra_args=["--rate-default-limit=2", "--rate-server-health-limit=1000"],
    )
    try:
        with httpx.Client() as client:
            statuses = [
                client.get(server.url + "/api/stable/auth/whoami").status_code for _ in range(5)
            ]
        assert statuses[:2] == [401, 401]
        assert 429 in statuses[2:]
        # A second later the window has moved on.
        wait_until(
            lambda: httpx.get(server.url + "/api/stable/auth/whoami").status_code == 401,
            timeout=5,
            interval=0.3,
        )
    finally:
        server.stop()


def test_shared_rate_limits_through_redis(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "config"
    write_config(config, default_documents())
    args = [
        "--rate-auth-limit=4",
        "--rate-server-health-limit=1000",
        "--rate-default-limit=1000",
        f"--redis-url={redis_url}",
    ]
    first = start_server(tmp_path / "a", config, unlimited=False, extra_args=args)
    second = start_server(tmp_path / "b", config, unlimited=False, extra_args=args)
    try:
        statuses = [
            login(server.url, "plain", "wrong").status_code
            for server in (first, second, first, second, first)
        ]
        assert statuses == [401, 401, 401, 401, 429]
    finally:
        first.stop()
        second.stop()


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_config(config, default_documents())
    server = start_server(tmp_path, config)
    assert server.stop() == 0
    assert "Traceback" not in server.log()
