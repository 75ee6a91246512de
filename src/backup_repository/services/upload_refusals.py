"""Why an upload was refused, and the event that says so (``Action.UPLOAD``, outcome
failure, with a :class:`RefusalReason`); emitted by services/uploads.py."""

from __future__ import annotations

from backup_repository.domain.errors import (
    AuthenticationFailed,
    Conflict,
    DependencyUnavailable,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from backup_repository.domain.openpgp import NotOpenPGP
from backup_repository.domain.signatures import BadSignatureInput, SignatureRefused
from backup_repository.domain.windows import WindowClosed
from backup_repository.services.auth import AuthContext
from backup_repository.services.collections import caller_event
from backup_repository.services.events import Action, Event, Outcome, RefusalReason
from backup_repository.storage.base import StorageError


def refusal_event(
    ctx: AuthContext | None,
    collection_id: str,
    client_ip: str,
    exc: BaseException,
    size: int | None,
) -> Event:
    """The event of an upload refused with ``exc`` after ``size`` bytes (None: before the
    body was looked at); ``ctx`` is None when the caller is not known (no valid token)."""
    reason = refusal_reason(exc).value
    detail = exc.message if isinstance(exc, DomainError) else type(exc).__name__
    if ctx is not None:
        return caller_event(
            ctx,
            Action.UPLOAD,
            Outcome.FAILURE,
            collection_id,
            size=size,
            reason=reason,
            detail=detail,
        )
    # Refused before the caller was known (no valid token).
    return Event(
        Action.UPLOAD,
        Outcome.FAILURE,
        client_ip=client_ip,
        collection=collection_id[:255],
        size=size,
        reason=reason,
        detail=detail,
    )


def refusal_reason(exc: BaseException) -> RefusalReason:
    """Why an upload failed, from the error that ended it."""
    if isinstance(exc, AuthenticationFailed):
        return RefusalReason.AUTH
    if isinstance(exc, SignatureRefused | BadSignatureInput):
        return RefusalReason.SIGNATURE
    if isinstance(exc, WindowClosed):
        return RefusalReason.WINDOW
    if isinstance(exc, Forbidden):
        return RefusalReason.AUTH
    if isinstance(exc, Conflict):
        return RefusalReason.LOCK
    if isinstance(exc, PayloadTooLarge):
        return RefusalReason.QUOTA
    if isinstance(exc, NotOpenPGP):
        return RefusalReason.OPENPGP
    if isinstance(exc, NotFound):
        return RefusalReason.NOT_FOUND
    if isinstance(exc, InvalidInput):
        return RefusalReason.INVALID
    if isinstance(exc, RequestTimeout | TimeoutError):
        return RefusalReason.TIMEOUT
    if isinstance(exc, DependencyUnavailable | StorageError):
        return RefusalReason.STORAGE
    return RefusalReason.ABORTED
