"""The notification operations API in process (httpx over ASGI): who may use it, the state
and the outbox pages, and a test message through a real webhook receiver on loopback
(delivered, refused, audited)."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.http.app import create_app
from support import make_settings, user_doc, write_config

ROUTE = "/api/stable/notifications"


class Hook(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[dict[str, Any]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Hook

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.bodies.append(json.loads(body))
        status = 400 if self.path == "/refuse" else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    server = Hook()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def webhook(name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "NotificationChannel",
        "metadata": {"name": name},
        "spec": {
            "type": "webhook",
            "webhook": {"url": url, "signingSecretRef": {"name": "hooks", "entry": "key"}},
        },
    }


def documents(hook: Hook) -> list[dict[str, Any]]:
    return [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc(
            "scoped",
            "scoped-pass",
            ["systemAdmin"],
            access_keys=[{"name": "ci", "password": "ci-pass", "objects": []}],
        ),
        user_doc("plain", "plain-pass"),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hooks"},
            "type": "Opaque",
            "stringData": {"key": "a-signing-key-for-the-api-test"},
        },
        webhook("ok-hook", hook.url("/ok")),
        webhook("refusing-hook", hook.url("/refuse")),
        {
            "apiVersion": "backups.riotkit.org/v1alpha1",
            "kind": "BackupCollection",
            "metadata": {"name": "db"},
            "spec": {
                "description": "db",
                "filenameTemplate": "db-${version}.gpg",
                "maxBackupsCount": 3,
                "maxOneVersionSize": "1M",
                "maxCollectionSize": "5M",
                "strategyName": "fifo",
                "accessControl": [],
                "notifications": {"channels": [{"name": "ok-hook", "events": ["missing"]}]},
            },
        },
    ]


@pytest.fixture
async def client(tmp_path: Path, hook: Hook) -> AsyncIterator[httpx.AsyncClient]:
    write_config(tmp_path / "config", documents(hook))
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def token(client: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    response = await client.post(
        "/api/stable/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['token']}"}


async def test_only_a_full_system_admin_may_operate(client: httpx.AsyncClient) -> None:
    plain = await token(client, "plain", "plain-pass")
    narrowed = await token(client, "scoped$ci", "ci-pass")
    for headers in (plain, narrowed):
        for method, path in (
            ("GET", f"{ROUTE}/state"),
            ("GET", f"{ROUTE}/outbox"),
            ("POST", f"{ROUTE}/channels/ok-hook/test"),
        ):
            response = await client.request(method, path, headers=headers)
            assert response.status_code == 403, (path, response.text)
            assert "systemAdmin" in response.json()["error"]
    assert (await client.get(f"{ROUTE}/state")).status_code == 401


async def test_state_outbox_and_test_messages(client: httpx.AsyncClient, hook: Hook) -> None:
    admin = await token(client, "admin", "admin-pass")
    # The first evaluation ran at start-up (or runs now): every condition of db is judged.
    state = (await client.get(f"{ROUTE}/state", headers=admin)).json()["data"]
    (db,) = state["collections"]
    assert db["collection"] == "db"
    assert db["channels"] == ["ok-hook"]

    sent = await client.post(f"{ROUTE}/channels/ok-hook/test", headers=admin)
    assert sent.status_code == 200, sent.text
    data = sent.json()["data"]
    assert data["delivered"] is True
    assert data["error"] == ""
    assert hook.bodies[-1]["id"] == data["eventId"]
    assert hook.bodies[-1]["type"] == "test"

    refused = (await client.post(f"{ROUTE}/channels/refusing-hook/test", headers=admin)).json()
    assert refused["data"]["delivered"] is False
    assert "400" in refused["data"]["error"]

    unknown = await client.post(f"{ROUTE}/channels/nope/test", headers=admin)
    assert unknown.status_code == 404
    assert "no notification channel named nope" in unknown.json()["error"]

    audit = (
        await client.get("/api/stable/audit", params={"action": "notification.test"}, headers=admin)
    ).json()["data"]["events"]
    assert [(e["outcome"], e["reason"], e["user"]) for e in audit] == [
        ("failure", "failed", "admin"),
        ("success", "delivered", "admin"),
    ]

    # Test messages do not go through the outbox; bad parameters are 400.
    page = (await client.get(f"{ROUTE}/outbox", headers=admin)).json()["data"]
    assert page == {"entries": [], "nextCursor": None}
    for params in ({"status": "lost"}, {"limit": "0"}, {"cursor": "x"}):
        bad = await client.get(f"{ROUTE}/outbox", params=params, headers=admin)
        assert bad.status_code == 400, params
