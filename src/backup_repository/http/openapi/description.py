"""The complete OpenAPI description: :func:`complete_description` takes what FastAPI
generates from the routers (``App.openapi`` in ``http/app.py`` calls it) and completes it:

- every response of every operation documents the ``X-Request-ID`` header;
- every operation documents the errors any request can meet before routing (malformed
  head, body and header limits, rate limit, a server fault, a dependency down) with the
  error envelope, also operations whose router forgot some;
- the ``/api/alpha/...`` aliases the reference still serves are described as deprecated
  copies of their ``/api/stable/...`` operations (each with its own operationId);
- the tags carry descriptions.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from backup_repository.http.openapi.responses import COMMON_ERROR_STATUSES, ERROR_TEXT
from backup_repository.http.request_log import REQUEST_ID, REQUEST_ID_HEADER

ALPHA_PREFIX = "/api/alpha/"
STABLE_PREFIX = "/api/stable/"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

REQUEST_ID_DOC: dict[str, Any] = {
    "description": "The id of this request, as in the server's log lines: the "
    "X-Request-ID the client sent when it is 1-64 letters, digits, '.', '_' or '-', "
    "else a new one (32 hex digits).",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{REQUEST_ID.pattern}$"},
}

TAG_DESCRIPTIONS: dict[str, str] = {
    "health": "Liveness and readiness of the server.",
    "auth": "Logins, tokens (sessions) and users.",
    "collections": "Backup collections: upload, download and list versions; collection health.",
    "audit": "The audit log of logins, tokens, uploads and downloads.",
    "metrics": "Prometheus metrics.",
    "notifications": "Notifications for system administrators: the current conditions of "
    "every collection, the outbox of deliveries, a test message to a channel.",
}

API_NOTES = """

Every answer is a JSON envelope `{"status": true, "data": {...}}`, or on error
`{"status": false, "error": "...", "data": {}}` (401 answers add `code` and `message`).
Downloads are the exception: the file itself, as `application/octet-stream`.

Every response carries an `X-Request-ID` header; the server's log lines of that request
carry the same id as `request_id`. A client (or proxy) may send its own `X-Request-ID`
(1-64 letters, digits, `.`, `_`, `-`) to have it used instead.

Paths under `/api/alpha/` are deprecated aliases of the same paths under `/api/stable/`.
"""


def _error_response(status: int | str) -> dict[str, Any]:
    schema = "UnauthorizedEnvelope" if status == 401 else "ErrorEnvelope"
    return {
        "description": ERROR_TEXT[status],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        operation
        for item in document.get("paths", {}).values()
        for method, operation in item.items()
        if method in _METHODS
    ]


def _add_alpha_aliases(document: dict[str, Any], app: FastAPI) -> None:
    paths: dict[str, Any] = document.setdefault("paths", {})
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path_format
        if (
            not isinstance(route, APIRoute)
            or not isinstance(path, str)
            or not path.startswith(ALPHA_PREFIX)
        ):
            continue
        stable_path = STABLE_PREFIX + path.removeprefix(ALPHA_PREFIX)
        stable = paths.get(stable_path)
        if stable is None:
            continue
        alias: dict[str, Any] = paths.get(path, {})
        for method in sorted(m.lower() for m in (context.methods or ())):
            operation = stable.get(method)
            if operation is None or method in alias:
                continue
            copied = copy.deepcopy(operation)
            copied["deprecated"] = True
            copied["operationId"] = f"{operation.get('operationId', method)}_alpha"
            copied["summary"] = f"{operation.get('summary', '')} (deprecated alias)".strip()
            copied["description"] = (
                f"Deprecated alias of `{method.upper()} {stable_path}`: the same operation "
                "under the prefix of the reference's older API."
            )
            alias[method] = copied
        if alias:
            for key, value in stable.items():
                if key not in _METHODS:
                    alias.setdefault(key, copy.deepcopy(value))
            paths[path] = alias


def complete_description(document: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    """The generated description completed in place (see the module's docstring)."""
    _add_alpha_aliases(document, app)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    has_envelopes = "ErrorEnvelope" in schemas and "UnauthorizedEnvelope" in schemas
    for operation in _operations(document):
        responses: dict[str, Any] = operation.setdefault("responses", {})
        if has_envelopes:
            for status in COMMON_ERROR_STATUSES:
                responses.setdefault(str(status), _error_response(status))
            if operation.get("security"):
                responses.setdefault("401", _error_response(401))
        for response in responses.values():
            if isinstance(response, dict) and "$ref" not in response:
                response.setdefault("headers", {})[REQUEST_ID_HEADER] = copy.deepcopy(
                    REQUEST_ID_DOC
                )
    used = sorted({tag for op in _operations(document) for tag in op.get("tags", ())})
    document["tags"] = [
        {"name": tag, **({"description": TAG_DESCRIPTIONS[tag]} if tag in TAG_DESCRIPTIONS else {})}
        for tag in used
    ]
    info = document.setdefault("info", {})
    info["description"] = (info.get("description") or "").rstrip() + API_NOTES.rstrip()
    return document
