"""The ``kubernetes`` configuration provider: ``backupusers``, ``backupcollections`` and
``notificationchannels`` (group ``backups.riotkit.org``, version ``v1alpha1``) and ``secrets``
of one namespace, read through the Kubernetes API and kept current with watches
(docs/configuration.md, "Kubernetes provider").

Each resource is followed by a thread of its own, the way client-go's
informers do it: one list, then a watch from the list's ``resourceVersion``. A watch that
ends (the API server closes every watch after ``timeout_seconds``) or drops is opened again
from the last version seen; a ``410 Gone`` (the version was compacted away) means a new
list. Every change rebuilds the whole snapshot through :mod:`backup_repository.config.loader`,
exactly as the filesystem provider does, with sources such as ``kubernetes:backupusers/admin``.

When the API cannot be reached, refuses the credentials or answers 404 (the custom resource
definitions are not installed), the snapshot keeps the objects last read but says
``usable=False`` with the reason, which ``/ready`` shows; the thread retries with
exponential backoff and recovers by itself. ``notificationchannels`` is optional: a cluster
upgraded without its CRD or its RBAC rule is a problem of the configuration (``/ready``
degraded), not an unusable provider.

Secret values are used as the API returns them in ``data``: the text written under
``data:`` in the manifest, as the reference project (and the filesystem provider) does.
Secret contents are never logged.

Longer than most modules on purpose: the list and watch loop, its backoff, the reading of
the API's answers (401, 403, 404, 410, a dropped stream) into reasons and the kubeconfig
handling are one provider, tested together against a fake API server; the YAML and the
snapshot rules it shares with the filesystem provider live in ``documents.py`` and
``loader.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from backup_repository.config.documents import Document, UnreadFile
from backup_repository.config.loader import build
from backup_repository.config.models import (
    API_GROUP,
    API_VERSION,
    KIND_CHANNEL,
    KIND_COLLECTION,
    KIND_SECRET,
    KIND_USER,
)
from backup_repository.services.ports import ConfigProblem, ConfigSnapshot

logger = logging.getLogger("backup_repository.config")

SOURCE_PREFIX = "kubernetes:"
NOT_LOADED = "configuration not loaded yet from the Kubernetes API"


@dataclass(frozen=True)
class Resource:
    """One resource the provider follows."""

    plural: str
    kind: str
    api_version: str
    group: str  # "" for the core API (secrets)
    version: str
    # Optional: failing to read it is a problem of the configuration (degraded), not an
    # unusable provider, so that an upgrade without the new CRD keeps serving backups.
    optional: bool = False

    def path(self, namespace: str) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    @property
    def full_name(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[Resource, ...] = (
    Resource("backupusers", KIND_USER, API_VERSION, API_GROUP, "v1alpha1"),
    Resource("backupcollections", KIND_COLLECTION, API_VERSION, API_GROUP, "v1alpha1"),
    Resource(
        "notificationchannels", KIND_CHANNEL, API_VERSION, API_GROUP, "v1alpha1", optional=True
    ),
    Resource("secrets", KIND_SECRET, "v1", "", "v1"),
)


class CredentialsError(Exception):
    """No way to talk to the API: no kubeconfig, no in-cluster service account."""


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class _Stopped(Exception):
    """close() was called while a watch was being opened."""


@dataclass(frozen=True)
class ApiConnection:
    api: k8s_client.ApiClient
    host: str
    origin: str  # "kubeconfig <path>", "in-cluster service account", ...


def connect(kubeconfig: Path | None) -> ApiConnection:
    """An API client: from ``kubeconfig`` when given; else the in-cluster service account,
    else ``$KUBECONFIG`` or ``~/.kube/config``. Raises :class:`CredentialsError`."""
    configuration = k8s_client.Configuration()
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise CredentialsError(f"kubeconfig {kubeconfig} does not exist or is not a file")
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig),
                client_configuration=configuration,
                persist_config=False,
            )
        except (k8s_config.ConfigException, OSError, ValueError) as exc:
            raise CredentialsError(f"kubeconfig {kubeconfig} cannot be used: {exc}") from None
        origin = f"kubeconfig {kubeconfig}"
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            origin = "in-cluster service account"
        except k8s_config.ConfigException as in_cluster:
            default = os.environ.get("KUBECONFIG") or "~/.kube/config"
            try:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration, persist_config=False
                )
            except (k8s_config.ConfigException, OSError, ValueError) as exc:
                raise CredentialsError(
                    f"not running in a cluster ({in_cluster}) and no usable kubeconfig at "
                    f"{default} ({exc}); pass --kubeconfig"
                ) from None
            origin = f"kubeconfig {default}"
    # Our threads retry with backoff; urllib3's own quick retries only add noise to the log.
    configuration.retries = False
    return ApiConnection(k8s_client.ApiClient(configuration), str(configuration.host), origin)


def describe_failure(exc: BaseException, resource: Resource, namespace: str, host: str) -> str:
    """The operator-facing reason a request about ``resource`` failed (never a body)."""
    path = resource.path(namespace)
    if isinstance(exc, CredentialsError):
        return f"no Kubernetes credentials: {exc}"
    if isinstance(exc, ApiException):
        status = exc.status
        message = _status_message(exc)
        if status == 404:
            if resource.group:
                return (
                    f"the API answers 404 Not Found for {path}: the CustomResourceDefinition "
                    f"{resource.full_name} (version {resource.version}) is not installed"
                )
            return f"the API answers 404 Not Found for {path}"
        if status == 401:
            return f"the Kubernetes API at {host} refused the credentials (401 Unauthorized)"
        if status == 403:
            return (
                f"access to {resource.full_name} in namespace {namespace} is forbidden "
                f"(403: {message}); the service account needs get, list and watch on it"
            )
        return f"{path} answered {status} {exc.reason or ''}".rstrip() + (
            f": {message}" if message else ""
        )
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return f"the Kubernetes API at {host} is not reachable ({_network_reason(exc)})"
    if isinstance(exc, ValueError):
        return f"unexpected answer from {path}: {exc}"
    return f"reading {path} failed: {exc!r}"


def _status_message(exc: ApiException) -> str:
    """The ``message`` of the Status object the API sends with an error, if any."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else ""


def _network_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    text = str(exc)
    marker = "Failed to establish a new connection: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return text or type(exc).__name__


class KubernetesProvider:
    """Implements :class:`~backup_repository.services.ports.ConfigurationProvider`.

    ``watch_seconds`` is how long the API server keeps one watch open (it then ends it and
    the watch is opened again, which also notices a silent network partition: a watch
    waits at most ``watch_seconds`` plus ``request_timeout`` for any byte).
    ``request_timeout`` bounds a list and the connection set-up of a watch.
    After a failure the next attempt waits ``backoff_initial`` seconds, doubling up to
    ``backoff_max``. Every ``resync_interval`` seconds a resource is listed again anyway.
    """

    def __init__(
        self,
        namespace: str,
        kubeconfig: Path | None = None,
        *,
        watch_seconds: int = 60,
        request_timeout: float = 15.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        resync_interval: float = 600.0,
        start_timeout: float = 20.0,
        connector: Callable[[Path | None], ApiConnection] = connect,
    ) -> None:
        self._namespace = namespace
        self._kubeconfig = kubeconfig
        self._watch_seconds = max(1, int(watch_seconds))
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._resync_interval = resync_interval
        self._start_timeout = start_timeout
        self._connector = connector
        self._snapshot = ConfigSnapshot(usable=False, unusable_reason=NOT_LOADED)
        self._summary = ""
        self._warnings: set[str] = set()
        # Guards everything below (written by the threads).
        self._lock = threading.Lock()
        self._connection: ApiConnection | None = None
        self._objects: dict[str, dict[str, Mapping[str, Any]]] = {r.plural: {} for r in RESOURCES}
        self._listed: set[str] = set()
        self._errors: dict[str, str] = {}
        # The streaming responses of open watches, for close() to interrupt.
        self._responses: set[urllib3.BaseHTTPResponse] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._first_attempts: dict[str, threading.Event] = {
            r.plural: threading.Event() for r in RESOURCES
        }

    @property
    def namespace(self) -> str:
        return self._namespace

    def snapshot(self) -> ConfigSnapshot:
        return self._snapshot

    async def start(self) -> None:
        """Begin following the resources; returns once each was listed (or failed to
        be) the first time, or after ``start_timeout`` seconds."""
        if self._threads:
            return
        self._stop.clear()
        for event in self._first_attempts.values():
            event.clear()
        for resource in RESOURCES:
            thread = threading.Thread(
                target=self._follow,
                args=(resource,),
                name=f"config-kubernetes-{resource.plural}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()
        await asyncio.to_thread(self._wait_first_attempts, self._start_timeout)

    def _wait_first_attempts(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for event in self._first_attempts.values():
            event.wait(max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        threads, self._threads = self._threads, []
        if not threads:
            return
        with self._lock:
            self._stop.set()
            responses = list(self._responses)
        for response in responses:
            _interrupt(response)

        def join() -> None:
            deadline = time.monotonic() + 5.0
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

        await asyncio.to_thread(join)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            # A list still waiting for its answer; the daemon thread ends with the request.
            logger.warning("Kubernetes provider threads still finishing: %s", ", ".join(stuck))
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None and not stuck:
            connection.api.close()  # type: ignore[no-untyped-call]

    # The follow loop (one thread per resource) ------------------------------------------------

    def _follow(self, resource: Resource) -> None:
        backoff = self._backoff_initial
        version: str | None = None
        listed_at = 0.0
        expired_in_a_row = 0
        while not self._stop.is_set():
            try:
                if version is None or time.monotonic() - listed_at >= self._resync_interval:
                    version = self._list(resource)
                    listed_at = time.monotonic()
                    backoff = self._backoff_initial
                self._first_attempts[resource.plural].set()
                began = time.monotonic()
                version, changes = self._watch(resource, version)
                expired_in_a_row = 0
                if changes or time.monotonic() - began >= 1.0:
                    backoff = self._backoff_initial
                else:
                    # Ended at once with nothing new: do not hammer the API.
                    self._pause(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
            except _Expired:
                logger.info("watch of %s expired (410 Gone); listing again", resource.full_name)
                version = None
                expired_in_a_row += 1
                if expired_in_a_row > 1:
                    self._pause(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
            except Exception as exc:
                version = None
                if not self._stop.is_set():
                    self._fail(resource, exc)
                    self._first_attempts[resource.plural].set()
                    self._pause(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
        self._first_attempts[resource.plural].set()

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _api(self) -> ApiConnection:
        with self._lock:
            if self._connection is None:
                self._connection = self._connector(self._kubeconfig)
                logger.info(
                    "Kubernetes provider: API %s (%s), namespace %s",
                    self._connection.host,
                    self._connection.origin,
                    self._namespace,
                )
            return self._connection

    def _request(self, resource: Resource, **kwargs: Any) -> Any:
        api = self._api().api
        if resource.group:
            return k8s_client.CustomObjectsApi(api).list_namespaced_custom_object(
                resource.group, resource.version, self._namespace, resource.plural, **kwargs
            )
        return k8s_client.CoreV1Api(api).list_namespaced_secret(self._namespace, **kwargs)

    def _list(self, resource: Resource) -> str:
        response = self._request(
            resource, _preload_content=False, _request_timeout=self._request_timeout
        )
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ValueError("not a list of objects")
        metadata = body.get("metadata") or {}
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not isinstance(version, str) or not version:
            raise ValueError("the list has no metadata.resourceVersion")
        objects: dict[str, Mapping[str, Any]] = {}
        for item in body["items"]:
            name = _name_of(item)
            if name:
                objects[name] = item
        with self._lock:
            self._objects[resource.plural] = objects
            self._listed.add(resource.plural)
            recovered = self._errors.pop(resource.plural, None)
        if recovered is not None:
            logger.info(
                "Kubernetes provider: %s readable again (%d objects)",
                resource.full_name,
                len(objects),
            )
        self._rebuild()
        return version

    def _watch(self, resource: Resource, version: str) -> tuple[str, int]:
        """Follow changes from ``version`` until the watch ends; the last version seen and
        how many changes came. Raises :class:`_Expired` on 410 Gone."""
        opened: list[urllib3.BaseHTTPResponse] = []

        def call(**kwargs: Any) -> Any:
            response = self._request(resource, **kwargs)
            with self._lock:
                stopping = self._stop.is_set()
                if not stopping:
                    self._responses.add(response)
                    opened.append(response)
            if stopping:
                response.close()
                raise _Stopped
            return response

        watcher = k8s_watch.Watch(return_type="object")  # type: ignore[no-untyped-call]
        changes = 0
        try:
            events: Iterator[Any] = watcher.stream(  # type: ignore[no-untyped-call]
                call,
                resource_version=version,
                timeout_seconds=self._watch_seconds,
                allow_watch_bookmarks=True,
                _request_timeout=(
                    self._request_timeout,
                    self._watch_seconds + self._request_timeout,
                ),
            )
            for event in events:
                if not isinstance(event, dict):
                    continue
                version = self._apply(resource, event, version)
                changes += 1
        except _Stopped:
            pass
        except ApiException as exc:
            if exc.status == 410:
                raise _Expired from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if not opened:
                raise  # the watch could not be opened: the API is not reachable
            if not self._stop.is_set():
                logger.info(
                    "watch of %s dropped (%s); watching again from version %s",
                    resource.full_name,
                    _network_reason(exc),
                    version,
                )
        finally:
            with self._lock:
                self._responses.difference_update(opened)
        return version, changes

    def _apply(self, resource: Resource, event: Mapping[str, Any], version: str) -> str:
        kind = event.get("type")
        obj = event.get("raw_object")
        if not isinstance(obj, dict):
            return version
        metadata = obj.get("metadata")
        new_version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not isinstance(new_version, str) or not new_version:
            new_version = version
        if kind == "BOOKMARK":
            return new_version
        name = _name_of(obj)
        if not name:
            return new_version
        with self._lock:
            objects = dict(self._objects[resource.plural])
            if kind == "DELETED":
                objects.pop(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                objects[name] = obj
            else:
                return new_version
            self._objects[resource.plural] = objects
        self._rebuild()
        return new_version

    def _fail(self, resource: Resource, exc: BaseException) -> None:
        with self._lock:
            host = self._connection.host if self._connection else "(not connected)"
        reason = describe_failure(exc, resource, self._namespace, host)
        with self._lock:
            previous = self._errors.get(resource.plural)
            self._errors[resource.plural] = reason
        if previous != reason:
            logger.warning("Kubernetes provider: %s: %s; retrying", resource.full_name, reason)
        self._rebuild()

    # The snapshot -----------------------------------------------------------------------------

    def _rebuild(self) -> None:
        with self._lock:
            if any(
                r.plural not in self._listed and r.plural not in self._errors for r in RESOURCES
            ):
                # Users read before their Secrets would log problems that are not there.
                return
            documents = [
                Document(
                    source=f"{SOURCE_PREFIX}{resource.plural}/{name}",
                    index=1,
                    body=_with_type(obj, resource),
                )
                for resource in RESOURCES
                for name, obj in sorted(self._objects[resource.plural].items())
            ]
            reasons: list[str] = []
            unread: list[ConfigProblem] = []
            for resource in RESOURCES:
                reason = self._errors.get(resource.plural)
                if reason is None:
                    continue
                if resource.optional:
                    unread.append(
                        ConfigProblem(
                            source=f"{SOURCE_PREFIX}{resource.plural}",
                            message=f"{reason}; {resource.kind} objects are not read until "
                            "then (the other objects are)",
                        )
                    )
                elif reason not in reasons:
                    reasons.append(reason)
            try:
                result = build(
                    documents,
                    unread,
                    namespace=self._namespace,
                    unread=[
                        UnreadFile(p.source, KIND_CHANNEL)
                        for p in unread
                        if p.source.endswith("notificationchannels")
                    ],
                )
            except Exception as exc:
                # A bug, not a configuration error: refuse everything.
                logger.exception("configuration build failed")
                self._snapshot = ConfigSnapshot(
                    usable=False, unusable_reason=f"configuration could not be loaded: {exc!r}"
                )
                return
            built = result.snapshot
            snapshot = ConfigSnapshot(
                users=built.users,
                collections=built.collections,
                channels=built.channels,
                problems=built.problems,
                usable=not reasons,
                unusable_reason="; ".join(reasons),
            )
            previous = self._snapshot
            if snapshot == previous:
                return
            self._snapshot = snapshot
            summary = result.summary()
            content_changed = summary != self._summary or (
                built.users,
                built.collections,
                built.channels,
                built.problems,
            ) != (previous.users, previous.collections, previous.channels, previous.problems)
            self._summary = summary
            known_warnings, self._warnings = self._warnings, set(result.warnings)
        if content_changed:
            known = set(previous.problems)
            for problem in snapshot.problems:
                if problem not in known:
                    logger.warning("configuration problem: %s", problem)
            for warning in result.warnings:
                if warning not in known_warnings:
                    logger.warning("configuration warning: %s", warning)
            logger.info(
                "configuration loaded from Kubernetes namespace %s: %s",
                self._namespace,
                summary,
            )
        if snapshot.usable and not previous.usable:
            logger.info("Kubernetes provider usable")
        elif not snapshot.usable and previous.usable:
            logger.warning(
                "Kubernetes provider not usable (the objects last read stay in use): %s",
                snapshot.unusable_reason,
            )


def _interrupt(response: urllib3.BaseHTTPResponse) -> None:
    """Make a read blocked on ``response`` in another thread return at once."""
    # Already released or closed (ValueError, RuntimeError, OSError): nothing is blocked on
    # it. urllib3's base response class raises NotImplementedError: a response type that
    # cannot be shut down has no socket to unblock either.
    with contextlib.suppress(ValueError, RuntimeError, OSError, NotImplementedError):
        response.shutdown()


def _name_of(obj: object) -> str:
    if not isinstance(obj, dict):
        return ""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return ""
    name = metadata.get("name")
    return name if isinstance(name, str) else ""


def _with_type(obj: Mapping[str, Any], resource: Resource) -> Mapping[str, Any]:
    """The items of a list of core objects carry no ``kind`` / ``apiVersion``."""
    if "kind" in obj and "apiVersion" in obj:
        return obj
    body = dict(obj)
    body.setdefault("kind", resource.kind)
    body.setdefault("apiVersion", resource.api_version)
    return body
