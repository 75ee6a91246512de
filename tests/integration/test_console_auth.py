"""The web console's log in and log out, cookies, CSRF and headers, in process (httpx over
ASGI) with the real database, filesystem provider and Argon2."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.http.app import create_app
from backup_repository.http.ui.headers import CONTENT_SECURITY_POLICY
from backup_repository.http.ui.session import safe_next
from backup_repository.services.passwords import PasswordHasher
from support import KNOWN_PASSWORDS, collection_doc, make_settings, write_config

Client = httpx.AsyncClient
PEER = ("127.0.0.1", 40000)
# Stored passwords that take a millisecond to check: the tests log in often.
_CHEAP = PasswordHasher(1, time_cost=1, memory_cost=1024, parallelism=1)


def _user(name: str, password: str, roles: list[str], **spec: Any) -> dict[str, Any]:
    KNOWN_PASSWORDS.add(password)  # for the check that no server log holds it
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupUser",
        "metadata": {"name": name},
        "spec": {
            "email": f"{name}@example.org",
            "password": _CHEAP.hash_sync(password),
            "roles": roles,
            **spec,
        },
    }


def documents() -> list[dict[str, Any]]:
    key = {
        "name": "ci",
        "password": _CHEAP.hash_sync("ci-pass"),
        "objects": [{"name": "db", "type": "collection", "roles": ["backupUploader"]}],
    }
    KNOWN_PASSWORDS.add("ci-pass")
    return [
        _user("admin", "admin-pass", ["systemAdmin"]),
        _user("uploader", "uploader-pass", [], accessKeys=[key]),
        _user("plain", "plain-pass", []),
        collection_doc("db", acl=[{"userName": "uploader", "roles": ["backupUploader"]}]),
    ]


async def _client(tmp_path: Path, database_url: str, **settings: Any) -> AsyncIterator[Client]:
    write_config(tmp_path / "config", documents())
    app = create_app(make_settings(tmp_path, database_url, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=PEER)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def sqlite_client(tmp_path: Path) -> AsyncIterator[Client]:
    async for c in _client(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"):
        yield c


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


async def login(
    client: Client, username: str, password: str, next_path: str = "/ui/", **headers: str
) -> httpx.Response:
    client.cookies.clear()
    page = await client.get("/ui/login", params={"next": next_path})
    assert page.status_code == 200, page.text
    return await client.post(
        "/ui/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": hidden(page.text, "csrf_token"),
            "next": hidden(page.text, "next"),
        },
        headers=headers,
    )


def cookie_line(response: httpx.Response, name: str) -> str:
    lines = [c for c in response.headers.get_list("set-cookie") if c.startswith(name + "=")]
    assert len(lines) == 1, response.headers.get_list("set-cookie")
    return lines[0]


async def test_login_session_and_logout(sqlite_client: Client) -> None:
    client = sqlite_client
    # Without a session a page sends to the login page, remembering where it was.
    first = await client.get("/ui/?name=db&x=1")
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/login?next=/ui/%3Fname%3Ddb%26x%3D1"

    wrong = await login(client, "admin", "not-the-password")
    assert wrong.status_code == 401
    assert "Wrong user name or password" in wrong.text
    assert "br_session" not in client.cookies
    unknown = await login(client, "nobody", "admin-pass")
    # Which of the two was wrong is not told: the same message either way.
    assert unknown.status_code == 401
    assert re.sub(r'value="[^"]*"', "", unknown.text).replace("nobody", "admin") == re.sub(
        r'value="[^"]*"', "", wrong.text
    )

    response = await login(client, "admin", "admin-pass", next_path="/ui/?name=d")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/?name=d"
    line = cookie_line(response, "br_session").lower()
    assert "httponly" in line
    assert "samesite=strict" in line
    assert "path=/;" in line or line.endswith("path=/")
    assert "secure" not in line.split(";", 1)[1]  # plain HTTP here
    token = client.cookies["br_session"]

    # The session is a row of the sessions table, listed with the API's tokens.
    bearer = {"Authorization": f"Bearer {token}"}
    listed = await client.get("/api/stable/auth/token", headers=bearer)
    assert listed.status_code == 200
    assert [s["description"] for s in listed.json()["data"]["grantedAccesses"]] == ["web console"]
    page = await client.get("/ui/")
    assert page.status_code == 200
    assert "admin" in page.text

    # Log out: POST with the session's CSRF token revokes the session, clears the cookie.
    out = await client.post("/ui/logout", data={"csrf_token": hidden(page.text, "csrf_token")})
    assert out.status_code == 303
    assert out.headers["location"] == "/ui/login?logged_out=1"
    assert "max-age=0" in cookie_line(out, "br_session").lower()
    assert (await client.get("/api/stable/auth/whoami", headers=bearer)).status_code == 401
    client.cookies.set("br_session", token)  # a revoked token in the cookie: log in again
    again = await client.get("/ui/")
    assert again.status_code == 303
    assert again.headers["location"].startswith("/ui/login")


async def test_access_key_login_and_secure_cookie(sqlite_client: Client) -> None:
    client = sqlite_client
    response = await login(client, "uploader$ci", "ci-pass")
    assert response.status_code == 303
    page = await client.get("/ui/")
    assert "uploader" in page.text
    assert "$ci" in page.text
    # Over TLS the cookie is Secure.
    tls = await login(client, "plain", "plain-pass")
    assert "secure" not in cookie_line(tls, "br_session").lower().split(";", 1)[1]
    client.base_url = httpx.URL("https://test")
    tls = await login(client, "plain", "plain-pass")
    assert "secure" in cookie_line(tls, "br_session").lower().split(";", 1)[1]


async def test_forwarded_proto_counts_only_from_trusted_proxies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for client in _client(tmp_path, url, trusted_proxies="127.0.0.1/32"):
        trusted = await login(client, "plain", "plain-pass", **{"X-Forwarded-Proto": "https"})
        assert "secure" in cookie_line(trusted, "br_session").lower().split(";", 1)[1]
    async for client in _client(tmp_path, url, trusted_proxies="10.0.0.0/8"):
        untrusted = await login(client, "plain", "plain-pass", **{"X-Forwarded-Proto": "https"})
        assert "secure" not in cookie_line(untrusted, "br_session").lower().split(";", 1)[1]


async def test_csrf_refusals(sqlite_client: Client) -> None:
    client = sqlite_client
    # The login form without its cookie (double submit) is refused before any check.
    login_page = await client.get("/ui/login")
    token = hidden(login_page.text, "csrf_token")
    client.cookies.delete("br_login_csrf")
    refused = await client.post(
        "/ui/login", data={"username": "admin", "password": "admin-pass", "csrf_token": token}
    )
    assert refused.status_code == 403
    assert "reload the page" in refused.text
    assert refused.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "br_session" not in client.cookies

    assert (await login(client, "admin", "admin-pass")).status_code == 303
    page = await client.get("/ui/")
    good = hidden(page.text, "csrf_token")
    for data, headers in [
        ({}, {}),
        ({"csrf_token": "0" * 64}, {}),
        ({"csrf_token": good}, {"Origin": "https://evil.example"}),
        ({"csrf_token": good}, {"Sec-Fetch-Site": "cross-site"}),
    ]:
        response = await client.post("/ui/logout", data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
        assert "Form refused" in response.text
    # Nothing happened: the session still works.
    assert (await client.get("/ui/")).status_code == 200
    same_site = await client.post(
        "/ui/logout",
        data={"csrf_token": good},
        headers={"Origin": "http://test", "Sec-Fetch-Site": "same-origin"},
    )
    assert same_site.status_code == 303


async def test_login_is_rate_limited_in_the_login_bucket(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for client in _client(tmp_path, url, rate_auth_limit=2):
        assert (await login(client, "admin", "wrong")).status_code == 401
        assert (await login(client, "admin", "wrong")).status_code == 401
        limited = await login(client, "admin", "admin-pass")
        assert limited.status_code == 429
        assert "Too many login attempts" in limited.text
        assert int(limited.headers["retry-after"]) > 0
        # The login page itself is not counted against the bucket.
        assert (await client.get("/ui/login")).status_code == 200


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/ui/"),
        ("/ui/collections/db", "/ui/collections/db"),
        ("/ui?name=x", "/ui?name=x"),
        ("//evil.example/ui", "/ui/"),
        ("https://evil.example/ui/", "/ui/"),
        ("/\\evil.example", "/ui/"),
        ("/uix", "/ui/"),
        ("/api/stable/auth/whoami", "/ui/"),
        ("/ui/\r\nSet-Cookie: x", "/ui/"),
    ],
)
def test_next_is_only_a_local_console_path(given: str | None, expected: str) -> None:
    assert safe_next(given) == expected


async def test_login_never_redirects_elsewhere(sqlite_client: Client) -> None:
    response = await login(sqlite_client, "admin", "admin-pass", next_path="//evil.example/")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"


async def test_bad_input_gets_a_page_never_a_500(sqlite_client: Client) -> None:
    client = sqlite_client
    page = await client.get("/ui/login")
    token = hidden(page.text, "csrf_token")
    with_file = await client.post(
        "/ui/login", data={"csrf_token": token}, files={"password": ("x", b"secret")}
    )
    assert with_file.status_code == 400
    assert with_file.headers["content-type"].startswith("text/html")
    assert (await login(client, "admin", "admin-pass")).status_code == 303
    for path, status in [
        ("/ui/collections/" + "x" * 300, 400),
        ("/ui/?name=" + "x" * 300, 400),
        ("/ui/collections/db/versions/0/download", 400),
        ("/ui/collections/db/versions/abc/download", 400),
        ("/ui/collections/db/versions/99/download", 404),
    ]:
        response = await client.get(path)
        assert response.status_code == status, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


async def test_an_unknown_console_path_is_a_console_page(sqlite_client: Client) -> None:
    for path in ("/ui/no-such-page", "/ui/collections/db/nothing/here", "/ui/static/nope.css"):
        response = await sqlite_client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        if path.startswith("/ui/static/"):
            continue  # a missing static file stays a plain 404
        assert response.headers["content-type"].startswith("text/html"), path
        assert "<html lang=" in response.text
        assert "Page not found" in response.text
    # The static files are still served, and the API's own 404 is untouched.
    assert (await sqlite_client.get("/ui/static/console.css")).status_code == 200
    api = await sqlite_client.get("/api/stable/no-such-route")
    assert api.status_code == 404
    assert api.headers["content-type"].startswith("application/json")
