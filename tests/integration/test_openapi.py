"""The OpenAPI description (``/openapi.json``) and the documentation page (``/docs``).

- the document is valid OpenAPI 3.1 (the specification's own JSON schema, every schema in
  it a valid JSON Schema, every ``$ref`` resolvable);
- it covers every route the app serves, whatever routers exist when the test runs: each
  API route by method and path (the ``/api/alpha/`` aliases as deprecated operations
  mirroring their ``/api/stable/`` twin), and nothing else is served but the description
  itself, the documentation page (:data:`NOT_API`) and the web console under ``/ui``;
- every operation documents the envelope of its answers, the errors any request can meet,
  401 when it takes a token, and the ``X-Request-ID`` header on every response;
- ``/docs`` is HTML that loads only files of the server, under a Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from schemathesis.specs.openapi.definitions import OPENAPI_31

from backup_repository.http.app import create_app
from support import default_documents, make_settings, write_config

# Served, but not part of the API: the description itself and its documentation page.
NOT_API = {"/openapi.json", "/docs", "/docs/assets/{name}"}
# The web console's pages and files (HTML for browsers, docs/console.md): not the API.
CONSOLE = "/ui"
COMMON_ERRORS = {"400", "413", "429", "431", "500", "503", "4XX"}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    write_config(tmp_path / "config", default_documents())
    return create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))


@pytest.fixture
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def schema_objects(document: dict[str, Any]) -> Iterator[Any]:
    yield from document.get("components", {}).get("schemas", {}).values()
    for _, _, operation in operations(document):
        for parameter in operation.get("parameters", ()):
            if "schema" in parameter:
                yield parameter["schema"]
        for media in operation.get("requestBody", {}).get("content", {}).values():
            if "schema" in media:
                yield media["schema"]
        for response in operation["responses"].values():
            for media in response.get("content", {}).values():
                if "schema" in media:
                    yield media["schema"]
            for header in response.get("headers", {}).values():
                if "schema" in header:
                    yield header["schema"]


async def test_the_description_is_served_and_is_the_apps(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == document


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    errors = sorted(
        jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(document), key=lambda e: e.path
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    for schema in schema_objects(document):
        jsonschema.Draft202012Validator.check_schema(schema)
    for ref in set(refs(document)):
        assert resolve(document, ref) is not None, ref
    operation_ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(operation_ids) == len(set(operation_ids)), operation_ids


def test_every_route_the_app_serves_is_described(app: FastAPI, document: dict[str, Any]) -> None:
    documented = {(method, path) for method, path, _ in operations(document)}
    served: set[tuple[str, str]] = set()
    others: set[str] = set()
    for context in iter_route_contexts(app.routes):
        path = context.path_format
        assert isinstance(path, str), context
        if path == CONSOLE or path.startswith(CONSOLE + "/"):
            continue
        if isinstance(context.original_route, APIRoute):
            served |= {(method.lower(), path) for method in context.methods or ()}
        else:
            others.add(path)
    missing = served - documented
    assert not missing, f"served but not described: {sorted(missing)}"
    assert others <= NOT_API, f"served outside the API description: {sorted(others - NOT_API)}"
    assert documented <= served, f"described but not served: {sorted(documented - served)}"
    # The core of the API is there (routers added later only add to it).
    for method, path in [
        ("post", "/api/stable/auth/login"),
        ("post", "/api/stable/repository/collection/{collectionId}/version"),
        ("get", "/api/stable/repository/collection/{collectionId}/version/{version}"),
        ("head", "/api/stable/repository/collection/{collectionId}/version/{version}"),
        ("get", "/health"),
        ("get", "/ready"),
    ]:
        assert (method, path) in documented


def test_the_alpha_aliases_are_deprecated_copies_of_stable_operations(
    document: dict[str, Any],
) -> None:
    aliases = [(method, path, op) for method, path, op in operations(document) if "/alpha/" in path]
    assert len(aliases) >= 6  # upload, list, collections, download GET and HEAD, health
    for method, path, operation in aliases:
        stable = document["paths"][path.replace("/api/alpha/", "/api/stable/")][method]
        assert operation["deprecated"] is True
        assert operation["operationId"] == stable["operationId"] + "_alpha"
        assert operation["responses"] == stable["responses"]
        assert operation.get("requestBody") == stable.get("requestBody")
        assert operation.get("parameters") == stable.get("parameters")
        assert "/api/stable/" in operation["description"]
    for method, path, operation in operations(document):
        if "/alpha/" not in path:
            assert not operation.get("deprecated"), (method, path)


def _schema_names(document: dict[str, Any], response: dict[str, Any]) -> set[str]:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    options = schema.get("anyOf", [schema])
    return {ref.rsplit("/", 1)[-1] for option in options for ref in refs(option)}


def test_every_operation_documents_its_answers(document: dict[str, Any]) -> None:
    tags = {tag["name"] for tag in document["tags"]}
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        assert operation.get("summary"), where
        assert operation.get("tags"), where
        assert set(operation["tags"]) <= tags, where
        responses: dict[str, Any] = operation["responses"]
        assert set(responses) >= COMMON_ERRORS, (where, sorted(responses))
        if operation.get("security"):
            assert "401" in responses, where
            assert "UnauthorizedEnvelope" in _schema_names(document, responses["401"]), where
        for status, response in responses.items():
            header = response.get("headers", {}).get("X-Request-ID")
            assert header is not None, (where, status)
            assert header["required"] is True, (where, status)
            assert response.get("description"), (where, status)
            if status.startswith(("4", "5")) and status != "401":
                names = _schema_names(document, response)
                assert names & {"ErrorEnvelope", "FailedHealthEnvelope"}, (where, status, names)
        successes = [s for s in responses if s.startswith("2")]
        assert successes, where
        for status in successes:
            content = responses[status].get("content", {})
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                if "$ref" in schema:
                    target = resolve(document, schema["$ref"])
                    assert "status" in target.get("properties", {}), (where, status)


def test_the_upload_body_is_a_binary_stream_or_a_form(document: dict[str, Any]) -> None:
    upload = document["paths"]["/api/stable/repository/collection/{collectionId}/version"]["post"]
    content = upload["requestBody"]["content"]
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    form = content["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}
    assert upload["requestBody"]["required"] is True


def test_the_description_explains_the_envelope_and_request_ids(document: dict[str, Any]) -> None:
    text = document["info"]["description"]
    assert '"status": false' in text
    assert "X-Request-ID" in text
    assert all(tag.get("description") for tag in document["tags"] if tag["name"] != "metrics")


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(str(values[name]))
        self._in_inline_script = tag == "script" and not values.get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts.append(data)


async def test_docs_page_loads_only_local_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    for directive in ("script-src", "style-src", "img-src", "connect-src"):
        assert not re.search(r"https?:|\*", directives[directive]), directive
    parser = _Assets()
    parser.feed(page.text)
    assert parser.urls, page.text
    for url in parser.urls:
        if url.startswith("data:"):
            continue
        assert not re.match(r"^[a-z]+:|^//", url), url  # relative: this server only
        asset = await client.get(urljoin(str(page.url), url))
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] in {"text/javascript", "text/css"}
        assert len(asset.content) > 10_000
    # The one inline script (starting Swagger UI) is allowed by its hash, nothing else.
    (script,) = parser.inline_scripts
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in directives["script-src"]
    assert "unsafe-inline" not in directives["script-src"]
    assert "openapi.json" in script


async def test_docs_assets_serve_nothing_else(client: httpx.AsyncClient) -> None:
    for name in ("redoc.standalone.js", "..%2F..%2Fcore.py", "favicon.png", "index.html"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.json()["status"] is False
    assert (await client.get("/redoc")).status_code == 404
