"""Request-scoped dependencies (``Annotated`` style): the services container, the client's
address and the authenticated caller."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backup_repository.domain.errors import AuthenticationFailed
from backup_repository.http.metrics import Metrics
from backup_repository.services.audit import AuditService
from backup_repository.services.auth import AuthContext, AuthService
from backup_repository.services.collection_health import CollectionHealthService
from backup_repository.services.collections import CollectionService
from backup_repository.services.downloads import DownloadService
from backup_repository.services.events import FanOut
from backup_repository.services.health import ReadinessCheck
from backup_repository.services.integrity import IntegrityService
from backup_repository.services.notifications import NotificationService
from backup_repository.services.ports import ConfigurationProvider
from backup_repository.services.uploads import UploadService
from backup_repository.services.versions import VersionService
from backup_repository.settings import Settings


@dataclass
class Services:
    """Everything the handlers may call, built once by the composition root."""

    settings: Settings
    # The configuration as loaded (the console's administration pages show it).
    config: ConfigurationProvider
    auth: AuthService
    collections: CollectionService
    uploads: UploadService
    downloads: DownloadService
    collection_health: CollectionHealthService
    integrity: IntegrityService
    events: FanOut
    audit: AuditService
    readiness: list[ReadinessCheck]
    metrics: Metrics
    notifications: NotificationService
    # Protecting, unprotecting and deleting one version (collection managers).
    versions: VersionService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_client_ip(request: Request) -> str:
    ip = request.scope.get("state", {}).get("client_ip")
    if ip is None:
        client = request.client
        ip = client.host if client else ""
    return str(ip)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing or malformed Authorization header, expected Bearer")
    return token.strip()


# The dependencies are coroutines: FastAPI runs a plain function dependency in a worker
# thread, two trips to a thread and back on every request for a dictionary lookup each.
async def _services(request: Request) -> Services:
    return get_services(request)


async def _client_ip(request: Request) -> str:
    return get_client_ip(request)


ServicesDep = Annotated[Services, Depends(_services)]
ClientIP = Annotated[str, Depends(_client_ip)]


# Declares the Bearer scheme in the OpenAPI description (and marks the operations that need
# it); the header itself is checked by ``bearer_token``, which answers 401 in the envelope.
_BEARER_SCHEME = HTTPBearer(
    auto_error=False, scheme_name="bearerAuth", description="A token from /api/stable/auth/login"
)
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER_SCHEME)]


async def get_auth(request: Request, _scheme: BearerDoc) -> AuthContext:
    # The services and the address read directly: each sub-dependency costs FastAPI's
    # dependency machinery on every request.
    return await get_services(request).auth.authenticate(
        bearer_token(request), get_client_ip(request)
    )


Auth = Annotated[AuthContext, Depends(get_auth)]


# -- the health check key (/ready, and /metrics unless --metrics-public) ------------------


def presented_keys(authorization: str | None, code: str | None) -> list[str]:
    """The keys a caller may have meant: the header as it is, the header's Bearer
    credentials, and the ``code`` query value."""
    keys: list[str] = []
    if authorization:
        keys.append(authorization)
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            keys.append(credentials.strip())
    if code:
        keys.append(code)
    return keys


def key_accepted(keys: list[str], expected: str) -> bool:
    # Every candidate is compared (no early exit), in constant time each.
    matches = [hmac.compare_digest(key.encode(), expected.encode()) for key in keys]
    return bool(expected) and any(matches)
