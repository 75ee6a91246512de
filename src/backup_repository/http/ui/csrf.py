"""Cross-site request forgery protection of the console's forms.

Every form that changes something (POST) carries ``csrf_token``: an HMAC of the session id
with the server's JWT secret, so it is bound to the session, never stored and useless
without the session cookie. The login form, before there is a session, carries a random
value that must equal the ``br_login_csrf`` cookie (double submit). Both checks run before
the handler does anything; so does the check of ``Origin`` and ``Sec-Fetch-Site`` when the
browser sends them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

FIELD = "csrf_token"
LOGIN_COOKIE = "br_login_csrf"
_PURPOSE = b"backup-repository web console csrf\x00"


class CsrfRefused(Exception):
    """A form post without a valid CSRF token, or from another site (answered 403)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def session_token(session_id: str, secret: str) -> str:
    """The CSRF token of the forms of session ``session_id``."""
    return hmac.new(secret.encode(), _PURPOSE + session_id.encode(), hashlib.sha256).hexdigest()


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def check_origin(request: Request, hosts: set[str]) -> None:
    """Refuse a post that the browser says comes from another site; ``hosts`` are the
    host names (with port) the console is reached under."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        raise CsrfRefused(f"the form was sent from another site (Sec-Fetch-Site: {site[:32]})")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc.lower() not in hosts:
            raise CsrfRefused("the form was sent from another origin")
    elif origin == "null":
        raise CsrfRefused("the form was sent from an opaque origin")


def check_session_token(given: str | None, session_id: str, secret: str) -> None:
    expected = session_token(session_id, secret)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused("the form's security token is missing or does not match your session")


def check_login_token(given: str | None, cookie: str | None) -> None:
    if not cookie:
        raise CsrfRefused("the login form's security cookie is missing")
    if not given or not hmac.compare_digest(given.encode(), cookie.encode()):
        raise CsrfRefused("the login form's security token does not match its cookie")
