"""A small synchronous client of the server's HTTP API (docs/api.md) on httpx: streamed
uploads from a generator, streamed downloads, listings and login. Every failure becomes a
:class:`ServerError` carrying the server's own ``error``/``message`` text."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from backup_repository.client.errors import ServerError, UsageError

log = logging.getLogger(__name__)

API = "/api/stable"
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error response read to find its message
_VERSION = re.compile(r"^(latest|v?[0-9]{1,18})$")


def check_url(url: str) -> str:
    """The server's base URL without a trailing slash; it may carry a path prefix."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise UsageError(f"--url must be an http:// or https:// address, got {url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"--url must not carry a query or fragment, got {url!r}")
    host = parts.hostname or ""
    if parts.scheme == "http" and host not in {"localhost", "127.0.0.1", "::1"}:
        log.warning("the server address is plain http: the token and backups travel unencrypted")
    return url.rstrip("/")


def check_version(version: str) -> str:
    """``latest``, a number or ``vN``, as the download endpoint takes them."""
    if not _VERSION.match(version):
        raise UsageError(f"--version must be 'latest', a number or vN, got {version!r}")
    return version


def error_text(response: httpx.Response, body: bytes) -> str:
    """The server's explanation: ``error`` of the envelope, else ``message``, else the
    start of the body."""
    text = ""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for key in ("error", "message"):
            value = document.get(key)
            if isinstance(value, str) and value:
                text = value
                break
    if not text:
        text = body[:300].decode("utf-8", errors="replace").strip()
    reason = response.reason_phrase or ""
    head = f"server answered {response.status_code} {reason}".rstrip()
    return f"{head}: {text}" if text else head


REFUSED_JWT = (
    "the token was refused: expired, revoked or mistyped; log in again (backup-maker login) "
    "and give the new token with -t, --auth-token-file or BM_AUTH_TOKEN"
)
LOGIN_REFUSED = "the username, access key or password was not accepted"
CHECK_LOGIN = (
    "check --username or BM_USERNAME (user, or user$accesskey with the access key's secret) "
    "and the password from BM_PASSWORD, --password-stdin or the prompt"
)


def hint(status: int, text: str, *, login: bool = False) -> str:
    """What to do next, after the server's own ``text``. A 401 of a login refuses the
    credentials (no token exists yet); a 401 of any other request refuses the token."""
    if status == 401 and login:
        if LOGIN_REFUSED in text:  # this server says it already; the reference does not
            return f" ({CHECK_LOGIN})"
        return f" ({LOGIN_REFUSED}: {CHECK_LOGIN})"
    if status == 401:
        return f" ({REFUSED_JWT})"
    if status == 429:
        return " (rate limited; try again later)"
    return ""


class RepositoryClient:
    """One connection pool to one server, authenticated with one token (or none)."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = check_url(url)
        headers = {"User-Agent": "backup-maker (backup-repository)"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RepositoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn transport failures into ServerError; anything else (an error raised by an
        upload's body generator) passes through unchanged."""
        try:
            yield
        except httpx.TimeoutException as exc:
            reason = str(exc) or type(exc).__name__
            raise ServerError(
                f"{what}: nothing moved for {self.timeout:g} s (--timeout): {reason}"
            ) from None
        except httpx.ConnectError as exc:
            raise ServerError(f"{what}: cannot connect to {self.url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ServerError(f"{what}: {exc or type(exc).__name__}") from None

    @staticmethod
    def _fail(
        response: httpx.Response, body: bytes, what: str, *, login: bool = False
    ) -> ServerError:
        if 300 <= response.status_code < 400:
            target = response.headers.get("location", "?")
            return ServerError(
                f"{what}: the server redirects to {target}; use that address as --url",
                response.status_code,
            )
        text = error_text(response, body)
        return ServerError(
            f"{what}: {text}{hint(response.status_code, text, login=login)}",
            response.status_code,
        )

    def _data(self, response: httpx.Response, what: str, *, login: bool = False) -> dict[str, Any]:
        if response.status_code != 200:
            raise self._fail(response, response.content, what, login=login)
        try:
            document = response.json()
        except ValueError:
            raise ServerError(
                f"{what}: the server answered with something that is not JSON"
            ) from None
        if not isinstance(document, dict) or document.get("status") is False:
            raise self._fail(response, response.content, what, login=login)
        data = document.get("data")
        return data if isinstance(data, dict) else {}

    def _get(self, path: str, what: str) -> dict[str, Any]:
        with self.errors(what):
            response = self._http.get(path)
        return self._data(response, what)

    @staticmethod
    def _collection_path(collection_id: str) -> str:
        return f"{API}/repository/collection/{quote(collection_id, safe='')}"

    # -- endpoints ------------------------------------------------------------------------

    def login(
        self,
        username: str,
        password: str,
        *,
        ttl: str | None = None,
        scope: list[dict[str, Any]] | None = None,
        single_use: str | None = None,
    ) -> dict[str, Any]:
        """``{token, sessionId, expire, ...}`` of a new session; with ``single_use`` (a
        collection) a token for one upload there."""
        body: dict[str, Any] = {"username": username, "password": password}
        if ttl:
            body["ttl"] = ttl
        if scope:
            body["operationsScope"] = {"elements": scope}
        if single_use is not None:
            body["singleUseUpload"] = single_use
        what = "login failed"
        with self.errors(what):
            response = self._http.post(f"{API}/auth/login", json=body)
        data = self._data(response, what, login=True)
        if not isinstance(data.get("token"), str):
            raise ServerError(f"{what}: the server's answer holds no token")
        return data

    def list_collections(self) -> dict[str, Any]:
        return self._get(f"{API}/repository/collection", "cannot list collections")

    def list_versions(self, collection_id: str) -> dict[str, Any]:
        return self._get(
            f"{self._collection_path(collection_id)}/version",
            f"cannot list the versions of collection {collection_id!r}",
        )

    def retention(self, collection_id: str) -> dict[str, Any]:
        """The retention dry run of the collection (collectionManager or systemAdmin)."""
        return self._get(
            f"{self._collection_path(collection_id)}/retention",
            f"cannot read the retention of collection {collection_id!r}",
        )

    def _version_data(self, response: httpx.Response, what: str) -> dict[str, Any]:
        version = self._data(response, what).get("version")
        if not isinstance(version, dict):
            raise ServerError(f"{what}: the server's answer holds no version")
        return version

    def protect(
        self, collection_id: str, version: str, *, protected: bool = True
    ) -> dict[str, Any]:
        """Protect ``version`` from rotation (or unprotect it); collectionManager only."""
        verb = "protect" if protected else "unprotect"
        what = f"cannot {verb} version {version!r} of collection {collection_id!r}"
        reference = quote(check_version(version), safe="")
        path = f"{self._collection_path(collection_id)}/version/{reference}/protect"
        with self.errors(what):
            response = self._http.post(path) if protected else self._http.delete(path)
        return self._version_data(response, what)

    def delete(self, collection_id: str, version: str, reason: str) -> dict[str, Any]:
        """Delete ``version``, saying why (kept in the audit log); collectionManager only,
        and never a protected version."""
        what = f"cannot delete version {version!r} of collection {collection_id!r}"
        reference = quote(check_version(version), safe="")
        with self.errors(what):
            response = self._http.delete(
                f"{self._collection_path(collection_id)}/version/{reference}",
                params={"reason": reason},
            )
        return self._version_data(response, what)

    def upload(
        self,
        collection_id: str,
        body: Iterator[bytes],
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send ``body`` as a raw chunked request body and return the new version.

        If the generator raises, the request is abandoned before its final chunk, so the
        server sees an incomplete body and records nothing; the exception propagates."""
        what = f"upload to collection {collection_id!r} failed"
        with self.errors(what):
            response = self._http.post(
                f"{self._collection_path(collection_id)}/version",
                content=body,
                headers={"Content-Type": "application/octet-stream", **(headers or {})},
            )
        data = self._data(response, what)
        version = data.get("version")
        if not isinstance(version, dict):
            raise ServerError(f"{what}: the server's answer holds no version")
        # Stored, but worth knowing (e.g. over maxOneVersionSize, in the extra space).
        warnings = data.get("warnings")
        for warning in warnings if isinstance(warnings, list) else []:
            log.warning("the server stored the upload with a warning: %s", warning)
        return version

    @contextlib.contextmanager
    def download(self, collection_id: str, version: str) -> Iterator[Download]:
        """An open streamed download of ``version`` (checked: status 200)."""
        what = f"download of version {version!r} of collection {collection_id!r} failed"
        reference = quote(check_version(version), safe="")
        path = f"{self._collection_path(collection_id)}/version/{reference}"
        request = self._http.build_request("GET", path, headers={"Accept-Encoding": "identity"})
        with self.errors(what):
            response = self._http.send(request, stream=True)
        try:
            if response.status_code != 200:
                with self.errors(what):
                    body = _read_limited(response)
                raise self._fail(response, body, what)
            yield Download(response, self, what)
        finally:
            response.close()


class Download:
    """A download in progress: headers, and the body as chunks."""

    def __init__(self, response: httpx.Response, client: RepositoryClient, what: str) -> None:
        self.response = response
        self._client = client
        self._what = what

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    @property
    def length(self) -> int | None:
        value = self.response.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def filename(self) -> str | None:
        match = re.search(
            r'filename="([^"]*)"', self.response.headers.get("content-disposition", "")
        )
        return match.group(1) if match else None

    def chunks(self, size: int) -> Iterator[bytes]:
        with self._client.errors(self._what):
            yield from self.response.iter_bytes(size)


def _read_limited(response: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_LIMIT:
            break
    return bytes(body[:ERROR_BODY_LIMIT])
