"""A small Kubernetes API server on a loopback port, for the ``kubernetes`` configuration
provider's tests: the official client talks real HTTP to it.

It implements what the provider uses, with the API server's wire format:

- ``GET /apis/backups.riotkit.org/v1alpha1/namespaces/{ns}/{plural}`` for ``backupusers``,
  ``backupcollections`` and ``notificationchannels``
  and ``GET /api/v1/namespaces/{ns}/secrets``, with ``/{name}`` for one object;
- the same with ``?watch=true&resourceVersion=N[&timeoutSeconds=S]``: a chunked stream of
  JSON lines ``{"type": "ADDED|MODIFIED|DELETED|ERROR", "object": {...}}`` replaying every
  change after ``N`` from its history, then following new ones; a version older than the
  history (after :meth:`FakeKubernetesApi.expire`) gets the ``ERROR`` event with a
  ``410 Gone`` Status, as a real API server answers after etcd compaction;
- ``/version`` and the discovery document of the group;
- ``Authorization: Bearer <token>`` is required (401 otherwise); every request is recorded.

Tests change the world through :meth:`put` / :meth:`delete` (which bump the resource version
and reach open watches at once), :meth:`uninstall` (the CRD is gone: 404), :meth:`forbid`
(403), :meth:`drop_watches` (connections cut mid-stream), :meth:`expire` and
:meth:`answer_gone` (410 Gone) and :meth:`stop` / :meth:`start` (the API goes down and comes
back on the same port).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import queue
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

GROUP = "backups.riotkit.org"
VERSION = "v1alpha1"
CUSTOM_KINDS = {
    "backupusers": "BackupUser",
    "backupcollections": "BackupCollection",
    "notificationchannels": "NotificationChannel",
}
PLURAL_OF_KIND = {kind: plural for plural, kind in CUSTOM_KINDS.items()}
PLURAL_OF_KIND["Secret"] = "secrets"
DEFAULT_TOKEN = "fake-api-token-1234"

_DROP = object()  # cut the connection without ending the chunked body
_END = object()  # end the stream properly


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    authorization: str


@dataclass(eq=False)
class _Stream:
    plural: str
    namespace: str
    events: queue.Queue[object] = field(default_factory=queue.Queue)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {},
        "code": code,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: FakeKubernetesApi) -> None:
        self.api = api
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_all(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server.api._handle(self)

    def send_json(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class FakeKubernetesApi:
    def __init__(self, namespace: str = "backup-repository", token: str = DEFAULT_TOKEN) -> None:
        self.namespace = namespace
        self.token = token
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._version = 100
        # plural -> (namespace, name) -> object
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            plural: {} for plural in (*CUSTOM_KINDS, "secrets")
        }
        self._history: list[tuple[int, str, str, dict[str, Any]]] = []
        self._oldest_watchable = 0
        self._installed = set(CUSTOM_KINDS)
        self._forbidden: set[str] = set()
        self._gone_watches = 0
        self._streams: set[_Stream] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # Life cycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeKubernetesApi:
        """Listen (again, on the same port after :meth:`stop`)."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self.port), self)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """The API goes down: the port is closed and every connection is cut."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._end_streams(lambda stream: True, _DROP)
        server.cut_all()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeKubernetesApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig file pointing at this server with a bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "tester", "namespace": self.namespace},
                }
            ],
            "current-context": "fake",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    # The world -------------------------------------------------------------------------------

    def put(self, obj: Mapping[str, Any]) -> int:
        """Create or replace an object (as ``kubectl apply`` would); its new version."""
        body = copy.deepcopy(dict(obj))
        plural = PLURAL_OF_KIND[body["kind"]]
        metadata = body.setdefault("metadata", {})
        namespace = metadata.setdefault("namespace", self.namespace)
        name = metadata["name"]
        if plural == "secrets":
            # The API server keeps bytes: stringData is merged into data, base64-encoded.
            data = dict(body.get("data") or {})
            for key, value in (body.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            body["data"] = data
        with self._lock:
            self._version += 1
            existing = self._objects[plural].get((namespace, name))
            metadata["uid"] = existing["metadata"]["uid"] if existing else str(uuid.uuid4())
            metadata["creationTimestamp"] = "2026-01-01T00:00:00Z"
            metadata["resourceVersion"] = str(self._version)
            self._objects[plural][(namespace, name)] = body
            self._record(plural, "MODIFIED" if existing else "ADDED", body)
            return self._version

    def delete(self, plural: str, name: str, namespace: str | None = None) -> None:
        namespace = namespace or self.namespace
        with self._lock:
            body = self._objects[plural].pop((namespace, name))
            self._version += 1
            body = copy.deepcopy(body)
            body["metadata"]["resourceVersion"] = str(self._version)
            self._record(plural, "DELETED", body)

    def load(self, documents: Iterable[Mapping[str, Any]]) -> None:
        for document in documents:
            if document.get("kind") in PLURAL_OF_KIND:
                self.put(document)

    def load_yaml_files(self, root: Path) -> int:
        """Every object of our kinds in the YAML files under ``root``; how many."""
        count = 0
        for path in sorted(root.rglob("*.y*ml")):
            for document in yaml.safe_load_all(path.read_text()):
                if isinstance(document, dict) and document.get("kind") in PLURAL_OF_KIND:
                    self.put(document)
                    count += 1
        return count

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                name: copy.deepcopy(obj)
                for (namespace, name), obj in self._objects[plural].items()
                if namespace == self.namespace
            }

    def uninstall(self, plural: str) -> None:
        """Delete the CRD: its objects stay (for :meth:`install`), the API answers 404."""
        with self._lock:
            self._installed.discard(plural)
        self._end_streams(lambda stream: stream.plural == plural, _END)

    def install(self, plural: str) -> None:
        with self._lock:
            self._installed.add(plural)

    def forbid(self, plural: str, forbidden: bool = True) -> None:
        """RBAC: 403 for the resource."""
        with self._lock:
            if forbidden:
                self._forbidden.add(plural)
            else:
                self._forbidden.discard(plural)
        if forbidden:
            self._end_streams(lambda stream: stream.plural == plural, _END)

    def drop_watches(self) -> int:
        """Cut every open watch mid-stream (a load balancer's idle timeout, a restarting
        API server); how many were cut."""
        return self._end_streams(lambda stream: True, _DROP)

    def expire(self) -> None:
        """Compact the history: watching from any version seen so far answers 410 Gone,
        and open watches receive the 410 ERROR event."""
        with self._lock:
            self._oldest_watchable = self._version
            self._history.clear()
        gone = {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")}
        self._end_streams(lambda stream: True, gone, _END)

    def answer_gone(self, count: int) -> None:
        """The next ``count`` watch requests are answered ``410 Gone`` as an HTTP status
        (what an API server without a watch cache does for a compacted version)."""
        with self._lock:
            self._gone_watches = count

    def watch_count(self, plural: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self._streams if plural is None or s.plural == plural)

    def requests_to(self, plural: str, *, watch: bool | None = None) -> list[RecordedRequest]:
        with self._lock:
            recorded = list(self.requests)
        return [
            r
            for r in recorded
            if r.path.rstrip("/").endswith("/" + plural)
            and (watch is None or (r.query.get("watch") in ("true", "1")) == watch)
        ]

    # Internals -------------------------------------------------------------------------------

    def _record(self, plural: str, kind: str, body: dict[str, Any]) -> None:
        """Under the lock: remember the change and send it to open watches."""
        snapshot = copy.deepcopy(body)
        self._history.append((self._version, plural, kind, snapshot))
        namespace = snapshot["metadata"]["namespace"]
        for stream in self._streams:
            if stream.plural == plural and stream.namespace == namespace:
                stream.events.put({"type": kind, "object": snapshot})

    def _end_streams(self, which: Any, *items: object) -> int:
        with self._lock:
            chosen = [s for s in self._streams if which(s)]
            for stream in chosen:
                self._streams.discard(stream)
        for stream in chosen:
            for item in items:
                stream.events.put(item)
        return len(chosen)

    def _handle(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        authorization = handler.headers.get("Authorization", "")
        with self._lock:
            self.requests.append(RecordedRequest("GET", url.path, query, authorization))
        if authorization != f"Bearer {self.token}":
            handler.send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        parts = [p for p in url.path.split("/") if p]
        if parts == ["version"]:
            handler.send_json(
                200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake", "platform": "x"}
            )
            return
        if parts == ["apis", GROUP, VERSION]:
            self._discovery(handler)
            return
        if (
            len(parts) in (6, 7)
            and parts[:4] == ["apis", GROUP, VERSION, "namespaces"]
            and parts[5] in CUSTOM_KINDS
        ):
            self._resource(handler, parts[5], parts, query)
            return
        if (
            len(parts) in (5, 6)
            and parts[:3] == ["api", "v1", "namespaces"]
            and parts[4] == "secrets"
        ):
            self._resource(handler, "secrets", parts, query)
            return
        handler.send_json(
            404, _status(404, "NotFound", "the server could not find the requested resource")
        )

    def _discovery(self, handler: _Handler) -> None:
        with self._lock:
            installed = sorted(self._installed)
        if not installed:
            handler.send_json(
                404, _status(404, "NotFound", "the server could not find the requested resource")
            )
            return
        handler.send_json(
            200,
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{GROUP}/{VERSION}",
                "resources": [
                    {
                        "name": plural,
                        "singularName": plural[:-1],
                        "namespaced": True,
                        "kind": CUSTOM_KINDS[plural],
                        "verbs": ["get", "list", "watch"],
                    }
                    for plural in installed
                ],
            },
        )

    def _resource(
        self,
        handler: _Handler,
        plural: str,
        parts: list[str],
        query: Mapping[str, str],
    ) -> None:
        # parts: [<api prefix...>, "namespaces", <namespace>, <plural>, (<name>)]
        namespace_index = parts.index("namespaces") + 1
        namespace = parts[namespace_index]
        name = parts[namespace_index + 2] if len(parts) > namespace_index + 2 else None
        with self._lock:
            installed = plural == "secrets" or plural in self._installed
            forbidden = plural in self._forbidden
        if not installed:
            handler.send_json(
                404, _status(404, "NotFound", "the server could not find the requested resource")
            )
            return
        if forbidden:
            handler.send_json(
                403,
                _status(
                    403,
                    "Forbidden",
                    f'{plural} is forbidden: User "system:serviceaccount:{namespace}:fake" '
                    f'cannot list resource "{plural}" in API group "" in the namespace '
                    f'"{namespace}"',
                ),
            )
            return
        if name is not None:
            with self._lock:
                obj = copy.deepcopy(self._objects[plural].get((namespace, name)))
            if obj is None:
                handler.send_json(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            else:
                handler.send_json(200, obj)
            return
        if query.get("watch") in ("true", "1"):
            self._watch(handler, plural, namespace, query)
            return
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._objects[plural].items())
                if ns == namespace
            ]
            version = str(self._version)
        if plural == "secrets":
            # Items of a list of core objects carry no kind / apiVersion.
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
            list_kind, api_version = "SecretList", "v1"
        else:
            list_kind, api_version = CUSTOM_KINDS[plural] + "List", f"{GROUP}/{VERSION}"
        handler.send_json(
            200,
            {
                "kind": list_kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": version},
                "items": items,
            },
        )

    def _watch(
        self, handler: _Handler, plural: str, namespace: str, query: Mapping[str, str]
    ) -> None:
        try:
            timeout = float(query.get("timeoutSeconds", "1800"))
            since = int(query.get("resourceVersion") or "0")
        except ValueError:
            handler.send_json(400, _status(400, "BadRequest", "bad resourceVersion"))
            return
        with self._lock:
            gone = self._gone_watches > 0
            if gone:
                self._gone_watches -= 1
        if gone:
            handler.send_json(410, _status(410, "Expired", "too old resource version"))
            return
        stream = _Stream(plural, namespace)
        with self._lock:
            if since and since < self._oldest_watchable:
                first: list[object] = [
                    {
                        "type": "ERROR",
                        "object": _status(410, "Expired", "too old resource version"),
                    },
                    _END,
                ]
            elif since:
                first = [
                    {"type": kind, "object": obj}
                    for version, p, kind, obj in self._history
                    if version > since and p == plural and obj["metadata"]["namespace"] == namespace
                ]
                self._streams.add(stream)
            else:
                first = [
                    {"type": "ADDED", "object": copy.deepcopy(obj)}
                    for (ns, _), obj in sorted(self._objects[plural].items())
                    if ns == namespace
                ]
                self._streams.add(stream)
        for item in first:
            stream.events.put(item)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    handler.write_chunk(b"")  # the API server ends watches after timeoutSeconds
                    return
                try:
                    item = stream.events.get(timeout=min(remaining, 0.2))
                except queue.Empty:
                    if _peer_closed(handler.connection):
                        return
                    continue
                if item is _DROP:
                    handler.close_connection = True
                    with contextlib.suppress(OSError):
                        handler.connection.shutdown(socket.SHUT_RDWR)
                    return
                if item is _END:
                    handler.write_chunk(b"")
                    return
                handler.write_chunk(json.dumps(item).encode() + b"\n")
        except OSError:
            handler.close_connection = True
        finally:
            with self._lock:
                self._streams.discard(stream)


def _peer_closed(connection: socket.socket) -> bool:
    """True when the client closed the connection (a watch is only ever read by it)."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
