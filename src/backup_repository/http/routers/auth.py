"""The auth API (docs/api.md, "Auth"). Handlers parse, call the auth service, shape the
envelope."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from backup_repository.domain.errors import AuthenticationFailed, InvalidInput
from backup_repository.domain.units import parse_ttl
from backup_repository.http.deps import Auth, ClientIP, ServicesDep
from backup_repository.http.envelope import ok, rfc3339
from backup_repository.http.errors import describe_validation_error
from backup_repository.http.openapi import responses as openapi
from backup_repository.services.auth import MISSING_CREDENTIALS, ScopeElementInput
from backup_repository.services.ports import SessionRecord
from backup_repository.services.session_listing import (
    DEFAULT_SESSION_LIMIT,
    MAX_SESSION_CURSOR,
    MAX_SESSION_LIMIT,
    UNPAGED_LIMIT,
    SessionPage,
)
from backup_repository.services.tokens import IssuedToken

router = APIRouter(prefix="/api/stable/auth", tags=["auth"])

MAX_NAME = 512
MAX_PASSWORD = 4096


class ScopeElement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(max_length=64)
    name: str = Field(max_length=MAX_NAME)
    roles: list[str] = Field(max_length=16)


class OperationsScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    elements: list[ScopeElement] = Field(default_factory=list, max_length=100)


class LoginRequest(BaseModel):
    username: str = Field(default="", max_length=MAX_NAME)
    password: str = Field(default="", max_length=MAX_PASSWORD)
    operationsScope: OperationsScope | None = None
    ttl: StrictStr | StrictInt | None = None
    singleUseUpload: StrictStr | None = Field(
        default=None,
        max_length=255,
        description="a collection: the token allows one upload there and nothing else",
    )

    def ttl_delta(self) -> timedelta | None:
        if self.ttl is None or self.ttl == "":
            return None
        try:
            return parse_ttl(self.ttl)
        except ValueError as exc:
            raise InvalidInput(f"ttl: {exc}") from None


def _inline_definitions(schema: Any, definitions: dict[str, Any] | None = None) -> Any:
    """The JSON schema with its ``$defs`` references replaced by their definitions: inside an
    OpenAPI document ``#/$defs/...`` would point at the document's root, where there is none."""
    if definitions is None and isinstance(schema, dict):
        definitions = schema.get("$defs", {})
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and definitions:
            return _inline_definitions(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {
            key: _inline_definitions(value, definitions)
            for key, value in schema.items()
            if key != "$defs"
        }
    if isinstance(schema, list):
        return [_inline_definitions(item, definitions) for item in schema]
    return schema


_LOGIN_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_definitions(LoginRequest.model_json_schema())},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "username": {"type": "string"},
                        "password": {"type": "string"},
                        "ttl": {"type": "string"},
                        "operationsScope": {"type": "string", "description": "scope as JSON"},
                        "singleUseUpload": {"type": "string", "maxLength": 255},
                    },
                }
            },
        },
    }
}


async def _read_login(request: Request) -> LoginRequest:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw: Any
    if content_type in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        form = await request.form(max_files=0, max_fields=16)
        raw = {k: v for k, v in form.items() if isinstance(v, str)}
        scope = raw.get("operationsScope")
        if scope:
            try:
                raw["operationsScope"] = json.loads(scope)
            except (ValueError, RecursionError):
                raise InvalidInput("operationsScope: malformed JSON") from None
    else:
        body = await request.body()
        if not body.strip():
            raise AuthenticationFailed(MISSING_CREDENTIALS)
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            # Beyond JSONDecodeError and UnicodeDecodeError (both ValueErrors): a number of
            # more than 4300 digits is a plain ValueError, and nesting deeper than the
            # parser's limit ("[[[[..." fits 64 KiB) a RecursionError.
            raise InvalidInput("malformed JSON in request body") from None
    if not isinstance(raw, dict):
        raise InvalidInput("request body must be a JSON object")
    try:
        return LoginRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc.errors())) from None


def _token_data(issued: IssuedToken) -> dict[str, Any]:
    return {
        "token": issued.token,
        "sessionId": issued.session_id,
        "expire": rfc3339(issued.expires_at),
    }


def session_json(session: SessionRecord) -> dict[str, Any]:
    """A session as the reference's ``GrantedAccess`` serializes."""
    return {
        "id": session.id,
        "expiresAt": rfc3339(session.expires_at),
        "deactivated": session.deactivated,
        "description": session.description,
        "requesterIP": session.requester_ip,
        "user": session.user,
        "accessKeyName": session.access_key_name,
        "CreatedAt": rfc3339(session.created_at),
        "UpdatedAt": rfc3339(session.updated_at),
        "DeletedAt": None,
        "singleUseUpload": session.single_use_collection,
        "familyId": session.family,
    }


@router.post(
    "/login",
    summary="Log in as a user or an access key; get a token",
    openapi_extra=_LOGIN_BODY_DOC,
    responses={
        **openapi.ok(openapi.TokenEnvelope, "Logged in"),
        **openapi.errors(403, 404, 408),
    },
)
async def login(request: Request, services: ServicesDep, client_ip: ClientIP) -> JSONResponse:
    form = await _read_login(request)
    scope = [
        ScopeElementInput(type=e.type, name=e.name, roles=e.roles)
        for e in (form.operationsScope.elements if form.operationsScope else [])
    ]
    issued, _ = await services.auth.login(
        form.username,
        form.password,
        client_ip,
        scope=scope,
        ttl=form.ttl_delta(),
        single_use_upload=form.singleUseUpload,
    )
    return ok({**_token_data(issued), "msg": "logged in"})


@router.get(
    "/refresh_token",
    summary="Get a new token (a new session) for the caller",
    responses={
        **openapi.ok(openapi.TokenEnvelope, "A new token and session"),
        **openapi.errors(403),
    },
)
async def refresh_token(auth: Auth, services: ServicesDep, client_ip: ClientIP) -> JSONResponse:
    issued, _ = await services.auth.refresh(auth, client_ip)
    return ok({**_token_data(issued), "msg": "token refreshed"})


@router.get(
    "/whoami",
    summary="Who the token belongs to",
    responses={**openapi.ok(openapi.WhoAmIEnvelope), **openapi.errors()},
)
async def whoami(auth: Auth) -> JSONResponse:
    return ok(
        {
            "email": auth.user.email,
            "permissions": sorted(r.value for r in auth.user.roles),
            "sessionId": auth.session.id,
            "grantedAccess": session_json(auth.session),
            "user": auth.user.name,
            "accessKeyName": auth.principal.access_key_name,
        }
    )


@router.delete(
    "/logout",
    summary="Revoke the caller's token or a session",
    responses={**openapi.ok(openapi.LogoutEnvelope), **openapi.errors(403, 404)},
)
async def logout(
    auth: Auth,
    services: ServicesDep,
    client_ip: ClientIP,
    session_id: Annotated[str | None, Query(alias="sessionId", max_length=128)] = None,
) -> JSONResponse:
    revoked = await services.auth.logout(auth, session_id, client_ip)
    return ok({"message": "JWT was revoked", "sessionId": revoked})


@router.get(
    "/token",
    summary="List the sessions (tokens) of a user",
    description=(
        "Newest first. Without `limit` and `cursor` the answer is the reference's: the newest "
        f"{UNPAGED_LIMIT} sessions at most, no `nextCursor`. With either, one page and "
        "`nextCursor` (null on the last page). A token issued for an access key or with a "
        "scope sees only the sessions it may revoke."
    ),
    responses={**openapi.ok(openapi.SessionsEnvelope), **openapi.errors(403)},
)
async def tokens(
    auth: Auth,
    services: ServicesDep,
    user_name: Annotated[str | None, Query(alias="userName", max_length=MAX_NAME)] = None,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_SESSION_LIMIT,
            description=f"sessions per page (default {DEFAULT_SESSION_LIMIT})",
        ),
    ] = None,
    cursor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_SESSION_CURSOR,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="nextCursor of the previous page",
        ),
    ] = None,
) -> JSONResponse:
    if limit is None and cursor is None:
        listing = await services.auth.list_sessions(auth, user_name)
        return ok({"grantedAccesses": [session_json(s) for s in listing.sessions]})
    page = SessionPage(limit or DEFAULT_SESSION_LIMIT, cursor)
    listing = await services.auth.list_sessions(auth, user_name, page)
    return ok(
        {
            "grantedAccesses": [session_json(s) for s in listing.sessions],
            "nextCursor": listing.next_cursor,
        }
    )


@router.get(
    "/user/{name}",
    summary="A user's e-mail and roles",
    responses={**openapi.ok(openapi.UserEnvelope), **openapi.errors(403, 404)},
)
async def user(name: str, auth: Auth, services: ServicesDep) -> JSONResponse:
    found = services.auth.lookup_user(auth, name)
    return ok({"email": found.email, "permissions": sorted(r.value for r in found.roles)})
