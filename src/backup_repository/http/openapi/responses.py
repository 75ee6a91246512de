"""Response documentation for the OpenAPI description: the envelope of every answer, the
``data`` of each endpoint, and the error statuses an operation can answer with.

These models only describe; handlers still build their JSON with :mod:`..envelope`. The
schemathesis suite (``tests/security/test_schemathesis.py``) checks that every response
matches what is written here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Doc(BaseModel):
    # Descriptions of JSON the handlers write; later fields may be added without breaking
    # clients, so extra properties are allowed.
    model_config = ConfigDict(extra="allow")


# -- errors ----------------------------------------------------------------------------------


class ErrorEnvelope(_Doc):
    """Every error: ``status`` false and a readable ``error``; ``data`` is empty except for
    failed health reports."""

    status: Literal[False]
    error: str
    data: dict[str, Any]


class UnauthorizedEnvelope(ErrorEnvelope):
    """401: the reference's clients read the reason from ``message``."""

    code: Literal[401]
    message: str


# -- auth ------------------------------------------------------------------------------------


class GrantedAccess(_Doc):
    """A session (an issued token), as the reference's ``GrantedAccess``."""

    id: str = Field(description="SHA-256 hex of the token")
    expiresAt: str
    deactivated: bool
    description: str
    requesterIP: str
    user: str
    accessKeyName: str
    CreatedAt: str | None
    UpdatedAt: str | None
    DeletedAt: None
    singleUseUpload: str | None = Field(
        description="the collection of a single-use upload token (revoked by its one upload); "
        "null for other tokens",
    )
    familyId: str = Field(
        description="the token family: the session id of the login this token descends "
        "from (its own id for a login); no token of a family expires after its login, and "
        "revoking a session revokes the tokens refreshed from it, so revoking the login "
        "revokes the whole family",
    )


class TokenData(_Doc):
    token: str
    sessionId: str
    expire: str = Field(description="RFC 3339")
    msg: str


class TokenEnvelope(_Doc):
    status: Literal[True]
    data: TokenData


class WhoAmIData(_Doc):
    email: str
    permissions: list[str]
    sessionId: str
    grantedAccess: GrantedAccess
    user: str
    accessKeyName: str


class WhoAmIEnvelope(_Doc):
    status: Literal[True]
    data: WhoAmIData


class LogoutData(_Doc):
    message: Literal["JWT was revoked"]
    sessionId: str


class LogoutEnvelope(_Doc):
    status: Literal[True]
    data: LogoutData


class SessionsData(_Doc):
    grantedAccesses: list[GrantedAccess]
    nextCursor: str | None = Field(
        default=None,
        description="only when `limit` or `cursor` was given: pass as `cursor` for the next, "
        "older page; null on the last page",
    )


class SessionsEnvelope(_Doc):
    status: Literal[True]
    data: SessionsData


class UserData(_Doc):
    email: str
    permissions: list[str]


class UserEnvelope(_Doc):
    status: Literal[True]
    data: UserData


# -- collections -----------------------------------------------------------------------------


class Version(_Doc):
    id: str
    collectionId: str
    versionNumber: int
    filename: str
    filesize: int
    sha256: str
    uploadedBySessionId: str
    user: str
    accessKeyName: str | None = Field(
        default=None,
        description="the access key the upload was made with ('' for the user's own "
        "password); null when no longer known (the session was purged, or the version was "
        "imported)",
    )
    CreatedAt: str | None
    UpdatedAt: str | None
    DeletedAt: str | None
    protected: bool = Field(
        default=False,
        description="true when a collection manager protected the version: rotation never "
        "removes it and it cannot be deleted until unprotected; it still counts against the "
        "collection's limits",
    )
    signedBy: str | None = Field(
        default=None,
        description="the fingerprint (primary key) of the trusted uploader whose detached "
        "signature over the stored bytes was verified at upload; null for an unsigned "
        "version (its collection had no trustedUploaders then)",
    )


class VersionData(_Doc):
    version: Version


class VersionEnvelope(_Doc):
    status: Literal[True]
    data: VersionData


class UploadData(_Doc):
    version: Version
    warnings: list[str] = Field(
        default_factory=list,
        description="what the uploader should know although the version was stored, e.g. "
        "that it is over maxOneVersionSize and used the collection's extra space",
    )


class UploadEnvelope(_Doc):
    status: Literal[True]
    data: UploadData


class Usage(_Doc):
    versions: int
    bytesUsed: int
    maxBackupsCount: int
    maxOneVersionSize: int
    maxCollectionSize: int


class BackupWindowState(_Doc):
    timezone: Literal["UTC"] = Field(description="windows are always evaluated in UTC")
    open: bool = Field(description="whether a backup window is open now (true without windows)")
    uploadAllowed: bool = Field(
        description="whether the caller may upload now: a window is open, or it has uploadsAnytime"
    )
    opensAt: str | None = Field(
        description="RFC 3339: when the open slot opened, or when the next one opens; "
        "null without windows"
    )
    closesAt: str | None = Field(
        description="RFC 3339: when that slot closes; null without windows"
    )


class VersionsData(_Doc):
    collectionId: str
    versions: list[Version]
    usage: Usage
    backupWindow: BackupWindowState


class VersionsEnvelope(_Doc):
    status: Literal[True]
    data: VersionsData


class Window(_Doc):
    from_: str = Field(alias="from", description="5-field cron expression of the start")
    duration: int = Field(description="seconds")
    timezone: Literal["UTC"] = Field(description="the cron expression is evaluated in UTC")


class CollectionInfo(_Doc):
    id: str
    description: str
    filenameTemplate: str
    strategyName: str
    windows: list[Window]
    usage: Usage


class CollectionsData(_Doc):
    collections: list[CollectionInfo]


class CollectionsEnvelope(_Doc):
    status: Literal[True]
    data: CollectionsData


class RetentionStrategy(_Doc):
    name: Literal["fifo", "fifo-plus-older", "gfs"]
    maxBackupsCount: int
    keepLastOlderNotMoreThan: int | None = Field(
        default=None, description="fifo-plus-older: seconds between older copies"
    )
    maxOlderCopies: int | None = Field(default=None, description="fifo-plus-older")
    keepLast: int | None = Field(default=None, description="gfs")
    keepHourly: int | None = Field(default=None, description="gfs")
    keepDaily: int | None = Field(default=None, description="gfs")
    keepWeekly: int | None = Field(default=None, description="gfs")
    keepMonthly: int | None = Field(default=None, description="gfs")
    keepYearly: int | None = Field(default=None, description="gfs")
    timeZone: str | None = Field(
        default=None, description="gfs: the IANA time zone its periods are counted in"
    )


class RetentionVersion(_Doc):
    version: int = Field(description="the version number (of the upload: the next number)")
    createdAt: str = Field(description="RFC 3339")
    size: int | None = Field(description="bytes; null for the upload, not made yet")
    upcoming: bool = Field(description="true for the hypothetical upload made now")
    keptBy: list[
        Literal["last", "hourly", "daily", "weekly", "monthly", "yearly", "older", "protected"]
    ] = Field(
        description="the rule that keeps the version (protected: a collection manager "
        "protected it, outside of every rule); empty when it is rotated out"
    )
    protected: bool = Field(default=False, description="true when the version is protected")
    period: str | None = Field(
        description="gfs: the period the version stands for under its rule (2026-12-03, "
        "2026-W49, 2026-12, 2026, 2026-12-03T14); null otherwise"
    )
    fate: Literal["kept", "rotated"]
    rotatedBecause: Literal["noRule", "maxBackupsCount"] | None = Field(
        description="noRule: no rule keeps it; maxBackupsCount: a rule keeps it, but the "
        "rules keep more than maxBackupsCount versions and it is among the oldest; null "
        "when kept"
    )


class RetentionView(_Doc):
    versions: list[RetentionVersion] = Field(description="newest first")
    versionsKept: int
    versionsRotated: int
    bytesKept: int
    bytesFreed: int


class RetentionAfterUpload(RetentionView):
    nextUploadMaxBytes: int = Field(
        description="the largest upload made now, once what it rotates out is gone"
    )
    quotaRule: str = Field(description="the quota rule that gives nextUploadMaxBytes")


class RetentionData(_Doc):
    collectionId: str
    now: str = Field(description="RFC 3339: the time of the hypothetical upload")
    strategy: RetentionStrategy
    current: RetentionView = Field(description="the live versions as the strategy sees them")
    afterUpload: RetentionAfterUpload = Field(
        description="the live versions and one more upload made now (listed first)"
    )


class RetentionEnvelope(_Doc):
    status: Literal[True]
    data: RetentionData


# -- health ----------------------------------------------------------------------------------


class ConfigProblemDoc(_Doc):
    source: str
    kind: str
    name: str
    field: str
    message: str


class Check(_Doc):
    name: str
    status: bool
    statusText: str
    message: str
    state: Literal["ok", "degraded", "failed"] | None = Field(
        default=None,
        description="ok; degraded: passes with something to fix (a configuration with "
        "broken objects); failed: status false",
    )
    details: list[str] | None = None
    problems: list[ConfigProblemDoc] | None = None


class HealthData(_Doc):
    health: list[Check]
    state: Literal["ok", "degraded", "failed"] | None = None


class HealthEnvelope(_Doc):
    status: Literal[True]
    data: HealthData


class FailedHealthEnvelope(_Doc):
    status: Literal[False]
    error: Literal["one of checks failed"]
    data: HealthData


class AliveData(_Doc):
    msg: str


class AliveEnvelope(_Doc):
    status: Literal[True]
    data: AliveData


# -- error statuses per operation --------------------------------------------------------------

_ERROR_TEXT: dict[int | str, str] = {
    400: "Malformed request: bad JSON, wrong types, values over their limits, a bad "
    "Content-Length header",
    401: "Missing, malformed, forged, expired or revoked token; bad credentials; client "
    "address outside the user's restrictByIP",
    403: "Authenticated but not allowed",
    404: "Unknown collection, version, user or session",
    408: "The request took longer than its time limit (an upload: --http-upload-timeout; "
    "another body: 30 s)",
    409: "Another upload to this collection is in progress (on any replica)",
    413: "Request body over its limit (64 KiB on every endpoint but uploads; the quota on uploads)",
    416: "Requested range not satisfiable",
    429: "Rate limit of the client's address exceeded; Retry-After says when to retry",
    431: "Request headers over 32 KiB",
    500: "A real server fault (logged; the body never holds a stack trace)",
    503: "A dependency (database, storage) is unavailable; or, on a login, too many logins "
    "are waiting for a password check (Retry-After says when to retry)",
    "4XX": "Any other client error (e.g. 405 for a method the path does not support)",
}

# Every operation can answer these: the header and body limits and the Content-Length check
# run before routing, the rate limit too, and a dependency can fail at any time.
_COMMON: tuple[int | str, ...] = (400, 413, 429, 431, 500, 503, "4XX")
# For the description's completion (openapi/description.py), which adds them where missing.
COMMON_ERROR_STATUSES = _COMMON
ERROR_TEXT = _ERROR_TEXT


def errors(*statuses: int | str, unauthorized: bool = True) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses of one operation: the common ones, the
    given ones, and 401 unless the operation never refuses a caller as unauthenticated."""
    wanted = [*_COMMON, *statuses]
    if unauthorized:
        wanted.append(401)
    result: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(wanted), key=str):
        model = UnauthorizedEnvelope if status == 401 else ErrorEnvelope
        result[status] = {"model": model, "description": _ERROR_TEXT[status]}
    return result


def ok(model: type[BaseModel], description: str = "Success") -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": description}}
