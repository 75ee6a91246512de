"""Narrowed tokens, token families and old sessions, against the real server process over
loopback HTTP, on SQLite and PostgreSQL.

- a token narrowed by an access key or an operations scope revokes and sees only sessions
  at least as narrow as itself (domain/sessions.py), never its owner's full sessions;
- revoking a token revokes every token refreshed from it (children, grandchildren, ...),
  never the token it was refreshed from nor the others refreshed beside it, and no refresh
  ends after the login that started the family;
- sessions expired or revoked longer than ``--session-retention`` ago are purged;
- ``GET /api/stable/auth/token`` pages with ``limit`` and ``cursor``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.services.tokens import session_id_of
from support import ServerProcess, collection_doc, start_server, user_doc, wait_until, write_config

pytestmark = pytest.mark.e2e

AUTH = "/api/stable/auth"
UPLOADER = {"type": "collection", "name": "db", "roles": ["backupUploader"]}
DOWNLOADER = {"type": "collection", "name": "db", "roles": ["backupDownloader"]}


def documents() -> list[dict[str, Any]]:
    return [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc(
            "owner",
            "owner-pass",
            [],
            access_keys=[
                {"name": "ci", "password": "ci-pass", "objects": [UPLOADER]},
                {"name": "restore", "password": "restore-pass", "objects": [DOWNLOADER]},
            ],
        ),
        collection_doc(
            "db",
            acl=[
                {"name": "owner", "type": "user", "roles": ["backupUploader", "backupDownloader"]}
            ],
        ),
    ]


def start(tmp_path: Path, database_url: str, *extra: str) -> ServerProcess:
    config = tmp_path / "config"
    write_config(config, documents())
    return start_server(tmp_path / "work", config, db_url=database_url, extra_args=extra)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    process = start(tmp_path, database_url)
    try:
        yield process
    finally:
        process.stop()


class Api:
    def __init__(self, server: ServerProcess) -> None:
        self.url = server.url + AUTH

    def login(self, username: str, password: str, **extra: Any) -> dict[str, Any]:
        response = httpx.post(
            self.url + "/login", json={"username": username, "password": password, **extra}
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def token(self, username: str, password: str, **extra: Any) -> str:
        token: str = self.login(username, password, **extra)["token"]
        return token

    def get(self, path: str, token: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=bearer(token))

    def revoke(self, token: str, target: str | None = None) -> httpx.Response:
        params = {} if target is None else {"sessionId": session_id_of(target)}
        return httpx.delete(self.url + "/logout", params=params, headers=bearer(token))

    def works(self, token: str) -> bool:
        status = self.get("/whoami", token).status_code
        assert status in (200, 401)
        return status == 200

    def refresh(self, token: str) -> dict[str, Any]:
        response = self.get("/refresh_token", token)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def listed(self, token: str, **params: Any) -> list[dict[str, Any]]:
        response = self.get("/token", token, **params)
        assert response.status_code == 200, response.text
        sessions: list[dict[str, Any]] = response.json()["data"]["grantedAccesses"]
        return sessions


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scope(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"operationsScope": {"elements": list(elements)}}


def ids(sessions: list[dict[str, Any]]) -> set[str]:
    return {s["id"] for s in sessions}


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["status"] is False
    assert body["error"] == "you don't have permissions to revoke session of other user"


# -- narrowed tokens revoking sessions ----------------------------------------------------


def test_narrowed_tokens_revoke_only_sessions_at_least_as_narrow(server: ServerProcess) -> None:
    api = Api(server)
    full = api.token("owner", "owner-pass")
    upload_only = api.token("owner", "owner-pass", **scope(UPLOADER))
    upload_too = api.token("owner", "owner-pass", **scope(UPLOADER, DOWNLOADER))
    ci = api.token("owner$ci", "ci-pass")
    ci_scoped = api.token("owner$ci", "ci-pass", **scope(UPLOADER))

    # A scoped token never reaches a full session (the empty access key used to match).
    assert_refused(api.revoke(upload_only, full))
    assert_refused(api.revoke(upload_too, full))
    # Nor a wider scope, nor a session of an access key.
    assert_refused(api.revoke(upload_only, upload_too))
    assert_refused(api.revoke(upload_only, ci))
    # An access key token: no full session, no other key, no wider session of its own key.
    assert_refused(api.revoke(ci, full))
    assert_refused(api.revoke(ci, upload_only))
    assert_refused(api.revoke(ci_scoped, ci))
    assert all(api.works(t) for t in (full, upload_only, upload_too, ci, ci_scoped))

    # At least as narrow: allowed.
    assert api.revoke(upload_too, upload_only).status_code == 200
    assert not api.works(upload_only)
    assert api.revoke(ci, ci_scoped).status_code == 200
    assert not api.works(ci_scoped)
    # Itself: always.
    assert api.revoke(upload_too).status_code == 200
    assert not api.works(upload_too)
    # The full session may revoke anything of its user.
    assert api.revoke(full, ci).status_code == 200
    assert not api.works(ci)
    assert api.works(full)


# -- narrowed tokens listing sessions ------------------------------------------------------


def test_narrowed_tokens_list_only_sessions_they_may_revoke(server: ServerProcess) -> None:
    api = Api(server)
    full = api.token("owner", "owner-pass")
    ci_a = api.token("owner$ci", "ci-pass")
    ci_b = api.token("owner$ci", "ci-pass")
    ci_scoped = api.token("owner$ci", "ci-pass", **scope(UPLOADER))
    restore = api.token("owner$restore", "restore-pass")
    upload_only = api.token("owner", "owner-pass", **scope(UPLOADER))
    upload_too = api.token("owner", "owner-pass", **scope(UPLOADER, DOWNLOADER))
    every = {session_id_of(t) for t in (full, ci_a, ci_b, ci_scoped, restore, upload_only)}
    every.add(session_id_of(upload_too))

    assert ids(api.listed(full)) == every
    assert ids(api.listed(ci_a)) == {session_id_of(t) for t in (ci_a, ci_b, ci_scoped)}
    assert ids(api.listed(ci_scoped)) == {session_id_of(ci_scoped)}
    assert ids(api.listed(restore)) == {session_id_of(restore)}
    assert ids(api.listed(upload_only)) == {session_id_of(upload_only)}
    assert ids(api.listed(upload_too)) == {session_id_of(t) for t in (upload_only, upload_too)}
    # Paged listings apply the same rule.
    assert ids(api.listed(ci_a, limit=1)) <= {session_id_of(t) for t in (ci_a, ci_b, ci_scoped)}
    pages: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        data = api.get("/token", ci_a, **params).json()["data"]
        pages |= ids(data["grantedAccesses"])
        cursor = data["nextCursor"]
        if cursor is None:
            break
    assert pages == {session_id_of(t) for t in (ci_a, ci_b, ci_scoped)}


# -- token families ------------------------------------------------------------------------


def refused_as_revoked(response: httpx.Response) -> bool:
    return (
        response.status_code == 401
        and response.json()["error"] == "session was revoked or does not exist"
    )


def test_revoking_a_token_revokes_every_token_refreshed_from_it(server: ServerProcess) -> None:
    api = Api(server)
    other = api.token("owner", "owner-pass")

    t0 = api.token("owner", "owner-pass")
    t1 = api.refresh(t0)["token"]
    t2 = api.refresh(t1)["token"]  # refreshed from a refreshed token
    s1 = api.refresh(t0)["token"]  # a second token refreshed from the login
    families = {s["id"]: s["familyId"] for s in api.listed(other)}
    assert {families[session_id_of(t)] for t in (t0, t1, t2, s1)} == {session_id_of(t0)}

    # Revoking the login stops its children and grandchildren.
    assert api.revoke(t0).status_code == 200
    assert not any(api.works(t) for t in (t0, t1, t2, s1))
    # A revoked token, or one refreshed from it, gives no new token.
    assert refused_as_revoked(api.get("/refresh_token", t2))
    assert refused_as_revoked(api.get("/refresh_token", t0))

    # Other families are untouched.
    assert api.works(other)
    listed = {s["id"]: s for s in api.listed(other)}
    assert all(listed[session_id_of(t)]["deactivated"] for t in (t0, t1, t2, s1))
    assert not listed[session_id_of(other)]["deactivated"]


def test_revoking_a_refreshed_token_leaves_its_login_and_siblings(server: ServerProcess) -> None:
    api = Api(server)
    other = api.token("owner", "owner-pass")
    u0 = api.token("owner$ci", "ci-pass")
    u1 = api.refresh(u0)["token"]
    u2 = api.refresh(u1)["token"]
    sibling = api.refresh(u0)["token"]
    nephew = api.refresh(sibling)["token"]

    # Revoked by id from another session: the token and what was refreshed from it go...
    assert api.revoke(other, u1).status_code == 200
    assert not any(api.works(t) for t in (u1, u2))
    assert refused_as_revoked(api.get("/refresh_token", u2))
    # ...the login it came from and the tokens refreshed beside it stay, and still refresh.
    assert all(api.works(t) for t in (u0, sibling, nephew))
    assert api.works(api.refresh(u0)["token"])
    assert api.works(api.refresh(nephew)["token"])
    listed = {s["id"]: s["deactivated"] for s in api.listed(other)}
    assert [listed[session_id_of(t)] for t in (u0, u1, u2, sibling, nephew)] == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_refresh_then_revoke_the_old_token_keeps_the_new_one(server: ServerProcess) -> None:
    # An API client rotating its working token: it keeps its login, takes each new token
    # from it, and logs the previous one out.
    api = Api(server)
    login = api.token("owner$ci", "ci-pass")
    old = api.refresh(login)["token"]
    new = api.refresh(login)["token"]
    assert api.revoke(old).status_code == 200
    assert not api.works(old)
    assert api.works(new)
    assert api.works(login)
    newer = api.refresh(new)["token"]
    assert api.works(newer)

    # Revoking the token a refresh came from revokes the refreshed one with it: that is what
    # stops a thief who refreshed a leaked token.
    assert api.revoke(login, new).status_code == 200
    assert not any(api.works(t) for t in (new, newer))
    assert api.works(login)


def test_no_refresh_ends_after_the_login_of_its_family(server: ServerProcess) -> None:
    api = Api(server)
    login = api.login("owner", "owner-pass", ttl="1h")
    limit = datetime.fromisoformat(login["expire"])
    token = login["token"]
    for _ in range(2):
        time.sleep(1.1)  # token times have whole seconds
        refreshed = api.refresh(token)
        assert datetime.fromisoformat(refreshed["expire"]) <= limit
        token = refreshed["token"]

    # Once the login's time is over, the family is over: a new login is needed.
    short = api.login("owner", "owner-pass", ttl="2s")
    refreshed = api.refresh(short["token"])
    assert refreshed["expire"] <= short["expire"]
    wait_until(lambda: not api.works(refreshed["token"]), timeout=30)
    assert api.get("/refresh_token", refreshed["token"]).status_code == 401


# -- paging --------------------------------------------------------------------------------


def test_token_listing_pages_with_a_cursor(server: ServerProcess) -> None:
    api = Api(server)
    tokens = [api.token("owner", "owner-pass") for _ in range(7)]
    caller = tokens[-1]
    everything = api.listed(caller)

    # Without paging parameters: the reference's shape.
    response = api.get("/token", caller)
    assert set(response.json()["data"]) == {"grantedAccesses"}
    assert [s["id"] for s in everything][:1] == [session_id_of(caller)]  # newest first

    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = api.get("/token", caller, **params)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        sizes.append(len(data["grantedAccesses"]))
        seen += [s["id"] for s in data["grantedAccesses"]]
        cursor = data["nextCursor"]
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert seen == [s["id"] for s in everything]

    # A cursor stays valid while sessions are added: new ones never shift a page.
    first = api.get("/token", caller, limit=3).json()["data"]
    api.token("owner", "owner-pass")
    second = api.get("/token", caller, limit=3, cursor=first["nextCursor"]).json()["data"]
    assert [s["id"] for s in second["grantedAccesses"]] == seen[3:6]

    # An administrator pages another user's sessions the same way.
    admin = api.token("admin", "admin-pass")
    data = api.get("/token", admin, userName="owner", limit=100).json()["data"]
    assert len(data["grantedAccesses"]) == 8
    assert data["nextCursor"] is None


BAD_PAGING: list[dict[str, Any]] = [
    {"cursor": "!!"},
    {"cursor": "abc"},
    {"cursor": base64.urlsafe_b64encode(b"12:").decode().rstrip("=")},
    {"cursor": base64.urlsafe_b64encode(b"x:" + b"a" * 64).decode().rstrip("=")},
    {"cursor": base64.urlsafe_b64encode(b"9" * 40 + b":a").decode().rstrip("=")},
    {"cursor": "A" * 200},
    {"cursor": ""},
    {"limit": 0},
    {"limit": 501},
    {"limit": "ten"},
    {"limit": 10, "cursor": "%00"},
]


def test_bad_paging_parameters_are_400(server: ServerProcess) -> None:
    api = Api(server)
    caller = api.token("owner", "owner-pass")
    for params in BAD_PAGING:
        response = api.get("/token", caller, **params)
        assert response.status_code == 400, (params, response.text)
        body = response.json()
        assert body["status"] is False
        assert "limit" in body["error"] or "cursor" in body["error"], (params, body)


# -- purge ---------------------------------------------------------------------------------


def test_old_sessions_are_purged(tmp_path: Path, database_url: str) -> None:
    server = start(tmp_path, database_url, "--session-retention=1s", "--session-purge-interval=1s")
    try:
        api = Api(server)
        admin = api.token("admin", "admin-pass")
        expiring = api.token("owner", "owner-pass", ttl="1s")
        revoked = api.token("owner", "owner-pass")
        assert api.revoke(revoked).status_code == 200
        kept = api.token("owner", "owner-pass")
        gone = {session_id_of(expiring), session_id_of(revoked)}
        assert gone <= ids(api.listed(admin, userName="owner"))

        wait_until(
            lambda: not gone & ids(api.listed(admin, userName="owner")),
            timeout=20,
            interval=0.25,
        )
        assert session_id_of(kept) in ids(api.listed(admin, userName="owner"))
        assert api.works(kept)
        assert not api.works(revoked)
        assert "purged" in server.log()
    finally:
        server.stop()
