"""The auth API in process (httpx over ASGI), on SQLite and PostgreSQL, with the real
filesystem provider, database and Argon2."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from sqlalchemy.engine import make_url

from backup_repository.http.app import create_app
from backup_repository.services.tokens import session_id_of
from support import (
    JWT_SECRET,
    default_documents,
    eventually,
    make_settings,
    user_doc,
    write_config,
)

Client = httpx.AsyncClient


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write_config(tmp_path / "config", default_documents())
    return tmp_path / "config"


@pytest.fixture
async def client(
    tmp_path: Path, database_url: str, config_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path, database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def login(client: Client, username: str, password: str, **extra: Any) -> str:
    response = await client.post(
        "/api/stable/auth/login", json={"username": username, "password": password, **extra}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- login --------------------------------------------------------------------------------


async def test_login_returns_token_session_and_expiry(client: Client) -> None:
    response = await client.post(
        "/api/stable/auth/login", json={"username": "admin", "password": "admin-pass"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] is True
    data = body["data"]
    assert data["sessionId"] == session_id_of(data["token"])
    assert data["expire"].endswith("Z")
    claims = jwt.decode(data["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["login"] == "admin"
    assert claims["accessKeyName"] == ""
    assert claims["jti"]


async def test_login_with_form_body(client: Client) -> None:
    response = await client.post(
        "/api/stable/auth/login", data={"username": "plain", "password": "plain-pass"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["token"]


async def test_two_logins_give_distinct_tokens(client: Client) -> None:
    first = await login(client, "plain", "plain-pass")
    second = await login(client, "plain", "plain-pass")
    assert first != second
    sessions = (await client.get("/api/stable/auth/token", headers=bearer(first))).json()
    ids = {s["id"] for s in sessions["data"]["grantedAccesses"]}
    assert {session_id_of(first), session_id_of(second)} <= ids


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("admin", "wrong"),
        ("nobody", "admin-pass"),
        ("sleeper", "sleeper-pass"),
        ("uploader$missing", "ci-pass"),
        ("uploader$ci", "uploader-pass"),
        ("uploader", "ci-pass"),
    ],
)
async def test_bad_credentials_are_refused_with_reference_message(
    client: Client, username: str, password: str
) -> None:
    response = await client.post(
        "/api/stable/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 401
    body = response.json()
    assert body["status"] is False
    assert body["message"].startswith("incorrect Username or Password: ")
    assert body["error"] == body["message"]


@pytest.mark.parametrize("payload", [{}, {"username": "admin"}, {"password": "x"}])
async def test_missing_credentials(client: Client, payload: dict[str, str]) -> None:
    response = await client.post("/api/stable/auth/login", json=payload)
    assert response.status_code == 401
    assert "missing Username or Password" in response.json()["message"]


async def test_access_key_login_and_whoami(client: Client) -> None:
    token = await login(client, "uploader$ci", "ci-pass")
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["login"] == "uploader"
    assert claims["accessKeyName"] == "ci"
    who = (await client.get("/api/stable/auth/whoami", headers=bearer(token))).json()["data"]
    assert who["email"] == "uploader@example.org"
    assert who["sessionId"] == session_id_of(token)
    assert who["grantedAccess"]["accessKeyName"] == "ci"
    assert who["grantedAccess"]["user"] == "uploader"
    assert who["grantedAccess"]["requesterIP"] == "127.0.0.1"
    assert who["grantedAccess"]["deactivated"] is False


async def test_operations_scope_is_carried_in_the_token(client: Client) -> None:
    scope = {"elements": [{"type": "collection", "name": "db", "roles": ["backupDownloader"]}]}
    token = await login(client, "admin", "admin-pass", operationsScope=scope)
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    decoded = json.loads(base64.b64decode(claims["operationsScope"]))
    assert decoded["elements"][0]["name"] == "db"
    # A scoped token is narrowed: it can no longer act as a system administrator.
    response = await client.get(
        "/api/stable/auth/token", params={"userName": "plain"}, headers=bearer(token)
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "scope",
    [
        {"elements": [{"type": "user", "name": "db", "roles": ["backupUploader"]}]},
        {"elements": [{"type": "collection", "name": "db", "roles": ["root"]}]},
        {"elements": [{"type": "collection", "name": "db", "roles": []}]},
        {"elements": "all"},
    ],
)
async def test_invalid_operations_scope_is_400(client: Client, scope: Any) -> None:
    response = await client.post(
        "/api/stable/auth/login",
        json={"username": "admin", "password": "admin-pass", "operationsScope": scope},
    )
    assert response.status_code == 400
    assert response.json()["status"] is False


async def test_ttl_shortens_the_token(client: Client) -> None:
    token = await login(client, "plain", "plain-pass", ttl="1h")
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600
    token = await login(client, "plain", "plain-pass", ttl=120)
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("ttl", ["-1h", "0", "forever", "100000h", True])
async def test_bad_ttl_is_400(client: Client, ttl: Any) -> None:
    response = await client.post(
        "/api/stable/auth/login", json={"username": "plain", "password": "plain-pass", "ttl": ttl}
    )
    assert response.status_code == 400, response.text


async def test_expired_token_is_refused(client: Client) -> None:
    token = await login(client, "plain", "plain-pass", ttl="4s")
    # The token works until it expires...
    assert await _status(client, "/api/stable/auth/whoami", token, 200)
    # ...and is refused from then on.
    await eventually(
        lambda: _status(client, "/api/stable/auth/whoami", token, 401), within=15, interval=0.25
    )


async def _status(client: Client, path: str, token: str, expected: int) -> bool:
    response = await client.get(path, headers=bearer(token))
    return response.status_code == expected


# -- tokens that must not work ----------------------------------------------------------------


def _forge(claims: dict[str, Any], secret: str = JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


async def test_forged_tampered_and_unsigned_tokens_are_refused(client: Client) -> None:
    token = await login(client, "plain", "plain-pass")
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    header, payload, signature = token.split(".")
    escalated = dict(claims, login="admin")
    tampered_payload = base64.urlsafe_b64encode(json.dumps(escalated).encode()).rstrip(b"=")
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    candidates = [
        f"{header}.{tampered_payload.decode()}.{signature}",
        f"{unsigned_header.decode()}.{payload}.",
        _forge(escalated, secret="another-secret-of-enough-length-for-hs256"),
        # Correctly signed but never issued, so there is no session for it.
        _forge(dict(claims, jti="never-issued")),
        "not-a-token",
    ]
    for candidate in candidates:
        response = await client.get("/api/stable/auth/whoami", headers=bearer(candidate))
        assert response.status_code == 401, candidate
        assert response.json()["status"] is False


async def test_missing_or_malformed_authorization_header(client: Client) -> None:
    assert (await client.get("/api/stable/auth/whoami")).status_code == 401
    response = await client.get("/api/stable/auth/whoami", headers={"Authorization": "Basic x"})
    assert response.status_code == 401


# -- refresh, logout, sessions -------------------------------------------------------------


async def test_refresh_issues_a_new_stored_session(client: Client) -> None:
    token = await login(client, "uploader$ci", "ci-pass", ttl="2h")
    response = await client.get("/api/stable/auth/refresh_token", headers=bearer(token))
    assert response.status_code == 200
    new = response.json()["data"]
    assert new["token"] != token
    assert new["sessionId"] == session_id_of(new["token"])
    claims = jwt.decode(new["token"], JWT_SECRET, algorithms=["HS256"])
    original = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["accessKeyName"] == "ci"
    # At most the login's 2 h, and never past the login's expiry.
    assert claims["exp"] - claims["iat"] <= 7200
    assert claims["exp"] == original["exp"]
    who = await client.get("/api/stable/auth/whoami", headers=bearer(new["token"]))
    assert who.status_code == 200
    assert who.json()["data"]["grantedAccess"]["familyId"] == session_id_of(token)
    # Both stay valid; revoking the new session leaves the one it was refreshed from, and
    # revoking that one revokes the sessions refreshed from it.
    assert (await client.get("/api/stable/auth/whoami", headers=bearer(token))).status_code == 200
    await client.delete("/api/stable/auth/logout", headers=bearer(new["token"]))
    whoami = "/api/stable/auth/whoami"
    assert (await client.get(whoami, headers=bearer(new["token"]))).status_code == 401
    assert (await client.get(whoami, headers=bearer(token))).status_code == 200
    other = (await client.get("/api/stable/auth/refresh_token", headers=bearer(token))).json()
    await client.delete("/api/stable/auth/logout", headers=bearer(token))
    for revoked in (other["data"]["token"], token):
        assert (await client.get(whoami, headers=bearer(revoked))).status_code == 401


async def test_refresh_of_a_revoked_token_is_refused(client: Client) -> None:
    token = await login(client, "plain", "plain-pass")
    await client.delete("/api/stable/auth/logout", headers=bearer(token))
    response = await client.get("/api/stable/auth/refresh_token", headers=bearer(token))
    assert response.status_code == 401


async def test_logout_revokes_own_session(client: Client) -> None:
    token = await login(client, "plain", "plain-pass")
    response = await client.delete("/api/stable/auth/logout", headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["data"] == {
        "message": "JWT was revoked",
        "sessionId": session_id_of(token),
    }
    assert (await client.get("/api/stable/auth/whoami", headers=bearer(token))).status_code == 401
    # The session stays listed for auditing, marked deactivated.
    other = await login(client, "plain", "plain-pass")
    listed = (await client.get("/api/stable/auth/token", headers=bearer(other))).json()
    by_id = {s["id"]: s for s in listed["data"]["grantedAccesses"]}
    assert by_id[session_id_of(token)]["deactivated"] is True


async def test_logout_of_other_sessions(client: Client) -> None:
    plain_a = await login(client, "plain", "plain-pass")
    plain_b = await login(client, "plain", "plain-pass")
    manager = await login(client, "manager", "manager-pass")
    admin = await login(client, "admin", "admin-pass")

    # Another user's session: refused, and the session still works.
    response = await client.delete(
        "/api/stable/auth/logout",
        params={"sessionId": session_id_of(plain_a)},
        headers=bearer(manager),
    )
    assert response.status_code == 403
    assert "you don't have permissions to revoke session of other user" in response.json()["error"]
    assert (await client.get("/api/stable/auth/whoami", headers=bearer(plain_a))).status_code == 200

    # One's own other session: allowed.
    response = await client.delete(
        "/api/stable/auth/logout",
        params={"sessionId": session_id_of(plain_a)},
        headers=bearer(plain_b),
    )
    assert response.status_code == 200
    assert (await client.get("/api/stable/auth/whoami", headers=bearer(plain_a))).status_code == 401

    # A system administrator: any session.
    response = await client.delete(
        "/api/stable/auth/logout",
        params={"sessionId": session_id_of(plain_b)},
        headers=bearer(admin),
    )
    assert response.status_code == 200
    assert (await client.get("/api/stable/auth/whoami", headers=bearer(plain_b))).status_code == 401

    # Unknown session id.
    response = await client.delete(
        "/api/stable/auth/logout", params={"sessionId": "0" * 64}, headers=bearer(admin)
    )
    assert response.status_code == 404


async def test_access_key_token_cannot_revoke_owner_sessions(client: Client) -> None:
    owner = await login(client, "uploader", "uploader-pass")
    key = await login(client, "uploader$ci", "ci-pass")
    response = await client.delete(
        "/api/stable/auth/logout", params={"sessionId": session_id_of(owner)}, headers=bearer(key)
    )
    assert response.status_code == 403
    assert (await client.get("/api/stable/auth/whoami", headers=bearer(owner))).status_code == 200


async def test_token_listing(client: Client) -> None:
    plain = await login(client, "plain", "plain-pass")
    admin = await login(client, "admin", "admin-pass")
    own = (await client.get("/api/stable/auth/token", headers=bearer(plain))).json()
    assert {s["user"] for s in own["data"]["grantedAccesses"]} == {"plain"}

    response = await client.get(
        "/api/stable/auth/token", params={"userName": "admin"}, headers=bearer(plain)
    )
    assert response.status_code == 403
    assert "no permissions to act as other user" in response.json()["error"]

    response = await client.get(
        "/api/stable/auth/token", params={"userName": "plain"}, headers=bearer(admin)
    )
    assert response.status_code == 200
    ids = [s["id"] for s in response.json()["data"]["grantedAccesses"]]
    assert session_id_of(plain) in ids


async def test_user_lookup(client: Client) -> None:
    plain = await login(client, "plain", "plain-pass")
    manager = await login(client, "manager", "manager-pass")
    own = await client.get("/api/stable/auth/user/plain", headers=bearer(plain))
    assert own.json()["data"] == {"email": "plain@example.org", "permissions": []}

    response = await client.get("/api/stable/auth/user/admin", headers=bearer(plain))
    assert response.status_code == 403
    assert "no permissions to view that user account" in response.json()["error"]

    response = await client.get("/api/stable/auth/user/admin", headers=bearer(manager))
    assert response.status_code == 200
    assert response.json()["data"]["permissions"] == ["systemAdmin"]

    response = await client.get("/api/stable/auth/user/ghost", headers=bearer(manager))
    assert response.status_code == 404


# -- configuration changes take effect on existing tokens -------------------------------------


async def test_deactivating_a_user_or_removing_a_key_stops_existing_tokens(
    client: Client, config_dir: Path
) -> None:
    plain = await login(client, "plain", "plain-pass")
    key = await login(client, "uploader$ci", "ci-pass")
    owner = await login(client, "uploader", "uploader-pass")

    documents = default_documents()
    for doc in documents:
        if doc["metadata"]["name"] == "plain":
            doc["spec"]["deactivated"] = True
        if doc["metadata"]["name"] == "uploader":
            doc["spec"].pop("accessKeys")
    write_config(config_dir, documents)

    await eventually(lambda: _status(client, "/api/stable/auth/whoami", plain, 401))
    await eventually(lambda: _status(client, "/api/stable/auth/whoami", key, 401))
    assert (await client.get("/api/stable/auth/whoami", headers=bearer(owner))).status_code == 200
    response = await client.post(
        "/api/stable/auth/login", json={"username": "plain", "password": "plain-pass"}
    )
    assert response.status_code == 401


async def test_restrict_by_ip(client: Client, config_dir: Path) -> None:
    documents = [
        *default_documents(),
        user_doc("net", "net-pass", [], restrict_by_ip=["10.0.0.0/8", "192.168.1.7"]),
        user_doc("local", "local-pass", [], restrict_by_ip=["127.0.0.0/8"]),
        user_doc("named", "named-pass", [], restrict_by_ip=["localhost"]),
        user_doc("unresolvable", "u-pass", [], restrict_by_ip=["no-such-host.invalid"]),
    ]
    write_config(config_dir, documents)

    async def can_login(user: str, password: str) -> bool:
        response = await client.post(
            "/api/stable/auth/login", json={"username": user, "password": password}
        )
        return response.status_code == 200

    await eventually(lambda: can_login("local", "local-pass"))
    assert await can_login("named", "named-pass")
    assert not await can_login("net", "net-pass")
    assert not await can_login("unresolvable", "u-pass")

    # A token issued inside the allowed range stops working once the range excludes the client.
    token = await login(client, "local", "local-pass")
    for doc in documents:
        if doc["metadata"]["name"] == "local":
            doc["spec"]["restrictByIP"] = ["10.0.0.0/8"]
    write_config(config_dir, documents)
    await eventually(lambda: _status(client, "/api/stable/auth/whoami", token, 401))


# -- error envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        (
            "POST",
            "/api/stable/auth/login",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("POST", "/api/stable/auth/login", {"json": {"username": 5, "password": []}}, 400),
        ("POST", "/api/stable/auth/login", {"json": ["admin", "admin"]}, 400),
        ("POST", "/api/stable/auth/login", {"json": {"username": "a" * 600, "password": "x"}}, 400),
        (
            "POST",
            "/api/stable/auth/login",
            {"content": b"x" * 200_000, "headers": {"Content-Type": "application/json"}},
            413,
        ),
        ("GET", "/api/stable/does-not-exist", {}, 404),
        ("GET", "/api/stable/auth/login", {}, 405),
        ("PUT", "/health", {}, 405),
    ],
)
async def test_error_paths_use_the_envelope(
    client: Client, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] is False
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["data"] == {}


async def test_chunked_body_over_the_limit_is_413(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 4096

    response = await client.post(
        "/api/stable/auth/login", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["status"] is False


# -- health ------------------------------------------------------------------------------


async def test_health_and_ready(client: Client) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] is True
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    checks = {c["name"]: c for c in response.json()["data"]["health"]}
    assert checks["DbValidator"]["status"] is True
    assert checks["DbValidator"]["statusText"] == "DbValidator=true"
    assert checks["ConfigurationProviderValidator"]["status"] is True


@pytest.fixture
def keyed_app_factory(tmp_path: Path, database_url: str, config_dir: Path) -> Callable[..., Any]:
    def build(**overrides: Any) -> Any:
        return create_app(make_settings(tmp_path, database_url, **overrides))

    return build


async def test_ready_requires_the_health_code(keyed_app_factory: Callable[..., Any]) -> None:
    app = keyed_app_factory(health_check_key="s3cret-code")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.get("/ready")
            assert response.status_code == 403
            assert "health code invalid" in response.json()["error"]
            assert (await c.get("/ready", params={"code": "wrong"})).status_code == 403
            assert (await c.get("/ready", params={"code": "s3cret-code"})).status_code == 200
            response = await c.get("/ready", headers={"Authorization": "s3cret-code"})
            assert response.status_code == 200
            # As /metrics takes it (what Kubernetes probes and Prometheus send as a header).
            response = await c.get("/ready", headers={"Authorization": "Bearer s3cret-code"})
            assert response.status_code == 200
            response = await c.get("/ready", headers={"Authorization": "Bearer wrong"})
            assert response.status_code == 403


async def test_ready_reports_broken_objects_and_a_missing_folder(
    tmp_path: Path, database_url: str, config_dir: Path
) -> None:
    (config_dir / "broken.yaml").write_text(
        "apiVersion: backups.riotkit.org/v1alpha1\nkind: BackupUser\n"
        "metadata: {name: broken}\nspec: {email: b@example.org, roles: [wizard]}\n"
    )
    app = create_app(make_settings(tmp_path, database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.get("/ready")
            assert response.status_code == 200
            check = {x["name"]: x for x in response.json()["data"]["health"]}[
                "ConfigurationProviderValidator"
            ]
            assert any("broken.yaml" in d and "wizard" in d for d in check["details"])

    missing = create_app(make_settings(tmp_path, database_url, config_local_path=tmp_path / "nope"))
    async with missing.router.lifespan_context(missing):
        transport = httpx.ASGITransport(app=missing)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.get("/ready")
            assert response.status_code == 500
            assert response.json()["error"] == "one of checks failed"
            check = {x["name"]: x for x in response.json()["data"]["health"]}[
                "ConfigurationProviderValidator"
            ]
            assert check["status"] is False
            assert "configuration provider is not usable" in check["message"]


async def test_database_outage_gives_503_and_recovers(
    tmp_path: Path, postgres_url: str, config_dir: Path
) -> None:
    """While the database is unreachable, requests needing it answer 503 in the envelope and
    /ready names the failing check; when it returns, everything works again by itself."""
    url = make_url(postgres_url)
    name = str(url.database)
    admin_dsn = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    app = create_app(make_settings(tmp_path, postgres_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            token = await login(c, "plain", "plain-pass")
            admin = await asyncpg.connect(admin_dsn)
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    name,
                )
                await admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')
                try:
                    response = await c.get("/api/stable/auth/whoami", headers=bearer(token))
                    assert response.status_code == 503
                    assert response.json()["error"] == "database is unavailable, try again later"
                    response = await c.post(
                        "/api/stable/auth/login",
                        json={"username": "plain", "password": "plain-pass"},
                    )
                    assert response.status_code == 503
                    ready = await c.get("/ready")
                    assert ready.status_code == 500
                    checks = {x["name"]: x for x in ready.json()["data"]["health"]}
                    assert checks["DbValidator"]["status"] is False
                finally:
                    await admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                        f"{name}_away",
                    )
                    await admin.execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')
            finally:
                await admin.close()
            response = await c.get("/api/stable/auth/whoami", headers=bearer(token))
            assert response.status_code == 200
            assert (await c.get("/ready")).status_code == 200
