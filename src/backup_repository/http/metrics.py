"""Prometheus metrics (served by ``routers/metrics.py``; every metric is described in
docs/monitoring.md).

- :class:`Metrics` owns its own registry (never the process-wide one: several apps may run
  in one process) with the counters and histograms fed while the server runs, and the
  *scrape sources*: async functions run at each scrape that return metric families read
  from the database or the configuration (per-collection gauges). A new such gauge is one
  function given to :meth:`Metrics.add_source`; see :func:`collection_gauge`.
- :class:`RequestMetrics` counts requests and their latency per route template and status,
  when the response has finished; the outermost layer (``request_log.RequestIdMiddleware``,
  which watches every response already) tells it of each request.
- :class:`MetricsSink` is an ``EventSink``: logins, uploads (bytes, refusals by reason),
  downloads and rotation deletions reach the counters through the services' events.

Label values are bounded: routes are templates (``<unmatched>`` for everything else),
methods outside the usual set are ``OTHER``, collections not in the configuration are
``<unknown>`` and refusal reasons outside :class:`RefusalReason` are ``other``. Nothing a
client sends can create new series.

The counters, the histogram and the gauge fed while the server runs are this module's own
small series (:class:`CounterFamily`, :class:`HistogramFamily`, :class:`GaugeFamily`: a
number or a list of bucket counts each, touched only by the event loop); prometheus_client
is imported at the first scrape, which hands them to its text exposition as the same
samples its own Counter, Histogram and Gauge give (``_total`` and ``_created``;
``_bucket``, ``_count``, ``_sum`` and ``_created``). A server nobody scrapes never loads it
(nor the HTTP and WSGI servers its exposition module imports).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from starlette.routing import BaseRoute, compile_path
from starlette.types import Scope

from backup_repository.http.openapi.description import ALPHA_PREFIX, STABLE_PREFIX
from backup_repository.services.events import Action, Event, Outcome, RefusalReason
from backup_repository.services.stats import StatsService

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

PREFIX = "backup_repository"
UNMATCHED_ROUTE = "<unmatched>"
UNKNOWN_COLLECTION = "<unknown>"
OTHER_METHOD = "OTHER"
OTHER_REASON = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests range from a health check (milliseconds) to an upload of many gigabytes (hours).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    float("inf"),
)
# A scrape source that takes longer is left out of this scrape (Prometheus' default scrape
# timeout is 10 s) and reported with ``backup_repository_scrape_source_up 0``.
SOURCE_TIMEOUT = 5.0

ScrapeSource = Callable[[], Awaitable[Iterable["Metric"]]]
"""Run at each scrape; returns the metric families to add to it."""

# What the text exposition is served as (prometheus_client's CONTENT_TYPE_PLAIN_0_0_4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def created_series_enabled() -> bool:
    """Whether counters and histograms have their ``_created`` series: unless
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` says no, as for prometheus_client's own."""
    setting = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return setting.lower() not in ("true", "1", "t")


# One sample of a series: the suffix of the metric's name, its own labels, the value.
_Sample = tuple[str, dict[str, str], float]


class CounterSeries:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount

    def samples(self, created: bool) -> list[_Sample]:
        samples: list[_Sample] = [("_total", {}, self.value)]
        if created:
            samples.append(("_created", {}, self.created))
        return samples


class GaugeSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def samples(self, created: bool) -> list[_Sample]:
        return [("", {}, self.value)]


@functools.cache
def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` labels of the buckets, as prometheus_client writes the bounds."""
    from prometheus_client.utils import floatToGoString

    return tuple(floatToGoString(bound) for bound in bounds)  # type: ignore[no-untyped-call]


class HistogramSeries:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        # The first bucket whose bound is not below the amount (none for NaN).
        index = bisect.bisect_left(self.bounds, amount)
        if index < len(self.bounds) and amount <= self.bounds[index]:
            self.counts[index] += 1

    def samples(self, created: bool) -> list[_Sample]:
        samples: list[_Sample] = []
        total = 0.0
        for le, count in zip(_le_labels(self.bounds), self.counts, strict=True):
            total += count
            samples.append(("_bucket", {"le": le}, total))
        samples.append(("_count", {}, total))
        if self.bounds[0] >= 0:
            samples.append(("_sum", {}, self.sum))
        if created:
            samples.append(("_created", {}, self.created))
        return samples


class _Series(Protocol):
    def samples(self, created: bool) -> list[_Sample]: ...


S = TypeVar("S", bound=_Series)


class _Family(ABC, Generic[S]):
    """A metric: its series by label values, in the order they first appeared. Each kind
    says how its new series is made (``_new``)."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.series: dict[tuple[str, ...], S] = {}

    @abstractmethod
    def _new(self) -> S: ...

    def labels(self, *values: object) -> S:
        key = tuple(str(value) for value in values)
        series = self.series.get(key)
        if series is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {key}")
            series = self.series[key] = self._new()
        return series

    def metric(self, created: bool) -> Metric:
        """The family as prometheus_client's registry would collect it."""
        from prometheus_client.metrics_core import Metric

        metric = Metric(self.name, self.documentation, self.kind)
        for values, series in self.series.items():
            labels = dict(zip(self.labelnames, values, strict=True))
            for suffix, own, value in series.samples(created):
                metric.add_sample(self.name + suffix, {**labels, **own}, value)
        return metric


class CounterFamily(_Family[CounterSeries]):
    kind = "counter"

    def _new(self) -> CounterSeries:
        return CounterSeries()


class GaugeFamily(_Family[GaugeSeries]):
    kind = "gauge"

    def _new(self) -> GaugeSeries:
        return GaugeSeries()


class HistogramFamily(_Family[HistogramSeries]):
    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str], buckets: Iterable[float]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(float(bound) for bound in buckets)

    def _new(self) -> HistogramSeries:
        return HistogramSeries(self.bounds)


class Metrics:
    def __init__(self, version: str, source_timeout: float = SOURCE_TIMEOUT) -> None:
        self._sources: dict[str, ScrapeSource] = {}
        self._source_timeout = source_timeout
        self._created = created_series_enabled()
        self.info = GaugeFamily(f"{PREFIX}_info", "The running version (always 1)", ["version"])
        self.info.labels(version).set(1)
        self.http_requests = CounterFamily(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
        )
        self.http_duration = HistogramFamily(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from the request to the end of its response, by method and route template",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
        )
        self.logins = CounterFamily(f"{PREFIX}_logins", "Login attempts by outcome", ["outcome"])
        self.token_operations = CounterFamily(
            f"{PREFIX}_token_operations",
            "Token refreshes and revocations by outcome",
            ["operation", "outcome"],
        )
        self.uploads = CounterFamily(
            f"{PREFIX}_uploads",
            "Uploads by collection and outcome (success: a version was recorded)",
            ["collection", "outcome"],
        )
        self.uploads_refused = CounterFamily(
            f"{PREFIX}_uploads_refused", "Refused uploads by reason", ["reason"]
        )
        self.uploaded_bytes = CounterFamily(
            f"{PREFIX}_uploaded_bytes",
            "Bytes of the versions recorded, by collection",
            ["collection"],
        )
        self.downloads = CounterFamily(
            f"{PREFIX}_downloads",
            "Downloads by collection and outcome (success: the response began)",
            ["collection", "outcome"],
        )
        self.downloaded_bytes = CounterFamily(
            f"{PREFIX}_downloaded_bytes",
            "Bytes of the downloads begun (the response length), by collection",
            ["collection"],
        )
        self.rotated_versions = CounterFamily(
            f"{PREFIX}_rotated_versions",
            "Versions deleted by rotation, by collection",
            ["collection"],
        )
        self.notifications_delivered = CounterFamily(
            f"{PREFIX}_notifications_delivered",
            "Notification delivery attempts by channel and outcome (delivered, retry, failed)",
            ["channel", "outcome"],
        )
        # In the order of the scrape.
        self._families: tuple[
            _Family[CounterSeries] | _Family[GaugeSeries] | _Family[HistogramSeries], ...
        ] = (
            self.info,
            self.http_requests,
            self.http_duration,
            self.logins,
            self.token_operations,
            self.uploads,
            self.uploads_refused,
            self.uploaded_bytes,
            self.downloads,
            self.downloaded_bytes,
            self.rotated_versions,
            self.notifications_delivered,
        )
        # The series of each (method, route, status), looked up once (``labels()`` builds a
        # key of strings on every call). Bounded as the labels are.
        self._request_series: dict[tuple[str, str, int], tuple[CounterSeries, HistogramSeries]] = {}
        # Series that alerts compute rates of exist from the start, at 0.
        for outcome in Outcome:
            self.logins.labels(outcome.value)
            for operation in ("refresh", "revoke"):
                self.token_operations.labels(operation, outcome.value)
        for reason in RefusalReason:
            self.uploads_refused.labels(reason.value)

    def add_source(self, name: str, source: ScrapeSource) -> None:
        """Run ``source`` at each scrape (replacing a source of the same name)."""
        self._sources[name] = source

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            series = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def collect(self) -> Iterator[Metric]:
        """The families fed while the server runs, as prometheus_client collects them."""
        for family in self._families:
            yield family.metric(self._created)

    async def render(self) -> bytes:
        """The Prometheus text format of every metric, the scrape sources run now."""
        from prometheus_client.exposition import generate_latest
        from prometheus_client.metrics_core import GaugeMetricFamily

        names = sorted(self._sources)
        results = await asyncio.gather(*(self._run(n, self._sources[n]) for n in names))
        up = GaugeMetricFamily(
            f"{PREFIX}_scrape_source_up",
            "1 when the source of scrape-time metrics answered in this scrape, else 0",
            labels=["source"],
        )
        families: list[Metric] = [up]
        for name, result in zip(names, results, strict=True):
            up.add_metric([name], 0 if result is None else 1)
            if result is not None:
                families.extend(result)
        return generate_latest(_Scrape(self, families))

    async def _run(self, name: str, source: ScrapeSource) -> list[Metric] | None:
        try:
            async with asyncio.timeout(self._source_timeout):
                return list(await source())
        except Exception:
            logger.exception("metrics source %s failed", name)
            return None


class _Scrape:
    """The metrics fed while the server runs, followed by those the sources produced for
    one scrape (a prometheus_client ``Collector``)."""

    def __init__(self, metrics: Metrics, families: list[Metric]) -> None:
        self._metrics = metrics
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics.collect()
        yield from self._families


# -- scrape sources ------------------------------------------------------------------------


def collection_gauge(name: str, documentation: str, values: Mapping[str, float]) -> Metric:
    """A gauge with one series per collection: the building block of scrape sources (which
    run at a scrape, when prometheus_client is imported)."""
    from prometheus_client.metrics_core import GaugeMetricFamily

    family = GaugeMetricFamily(name, documentation, labels=["collection"])
    for collection in sorted(values):
        family.add_metric([collection], values[collection])
    return family


def _utcnow() -> datetime:
    return datetime.now(UTC)


def collection_source(stats: StatsService, clock: Callable[[], datetime] = _utcnow) -> ScrapeSource:
    """Per configured collection: versions, bytes, limits and the last upload. A collection
    never uploaded to has no ``last_upload`` series (see docs/monitoring.md for the alert)."""

    async def collections() -> list[Metric]:
        rows = await stats.collections()
        now = clock()
        uploaded = {r.name: r.last_upload_at for r in rows if r.last_upload_at is not None}
        return [
            collection_gauge(
                f"{PREFIX}_collection_versions",
                "Live versions (not rotated out) of the collection",
                {r.name: r.versions for r in rows},
            ),
            collection_gauge(
                f"{PREFIX}_collection_bytes",
                "Bytes used by the live versions of the collection",
                {r.name: r.bytes for r in rows},
            ),
            collection_gauge(
                f"{PREFIX}_collection_max_bytes",
                "maxCollectionSize of the collection, in bytes",
                {r.name: r.max_bytes for r in rows},
            ),
            collection_gauge(
                f"{PREFIX}_collection_max_versions",
                "maxBackupsCount of the collection",
                {r.name: r.max_versions for r in rows},
            ),
            collection_gauge(
                f"{PREFIX}_collection_next_version_max_bytes",
                "The largest next version the quota allows now (after the rotation it causes), "
                "in bytes; 0: the next upload is refused",
                {r.name: r.next_version_room for r in rows},
            ),
            collection_gauge(
                f"{PREFIX}_collection_last_upload_timestamp_seconds",
                "Unix time of the last successful upload (absent: never uploaded)",
                {name: at.timestamp() for name, at in uploaded.items()},
            ),
            collection_gauge(
                f"{PREFIX}_collection_seconds_since_last_upload",
                "Seconds since the last successful upload (absent: never uploaded)",
                {name: max(0.0, (now - at).total_seconds()) for name, at in uploaded.items()},
            ),
        ]

    return collections


class CorruptCounts(Protocol):
    async def corrupt_counts(self) -> dict[str, int]: ...


def integrity_source(integrity: CorruptCounts) -> ScrapeSource:
    """Per collection with at least one checked live version: how many failed their latest
    integrity check (corrupt or missing; an unreadable storage is not counted)."""

    async def corrupt_versions() -> list[Metric]:
        counts = await integrity.corrupt_counts()
        return [
            collection_gauge(
                f"{PREFIX}_collection_corrupt_versions",
                "Live versions whose latest integrity check found them corrupt or missing",
                counts,
            )
        ]

    return corrupt_versions


class OutboxCounts(Protocol):
    async def outbox_counts(self) -> dict[str, int]: ...


def notification_source(notifications: OutboxCounts) -> ScrapeSource:
    """The notification outbox by status (pending, delivered, failed)."""

    async def outbox() -> list[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        counts = await notifications.outbox_counts()
        family = GaugeMetricFamily(
            f"{PREFIX}_notification_outbox",
            "Notifications in the outbox by status (pending: waiting for delivery or a retry)",
            labels=["status"],
        )
        for status in sorted(counts):
            family.add_metric([status], counts[status])
        return [family]

    return outbox


class DeliveryCounter:
    """Counts notification delivery attempts (the ``DeliveryObserver`` of
    services/notifications.py). Channel names come from the configuration only."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def delivery(self, channel: str, outcome: str) -> None:
        self._metrics.notifications_delivered.labels(channel, outcome).inc()


def configuration_source(stats: StatsService) -> ScrapeSource:
    async def configuration() -> list[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        config = stats.configuration()
        problems = GaugeMetricFamily(
            f"{PREFIX}_config_problems",
            "Problems of the configuration: files that could not be read, objects left out "
            "because they are broken, objects in use with a problem",
            value=config.problems,
        )
        usable = GaugeMetricFamily(
            f"{PREFIX}_config_usable",
            "1 when the configuration source could be read, else 0",
            value=1 if config.usable else 0,
        )
        return [problems, usable]

    return configuration


# -- the event sink ------------------------------------------------------------------------


_REASONS = frozenset(reason.value for reason in RefusalReason)


def reason_label(reason: str) -> str:
    return reason if reason in _REASONS else OTHER_REASON


class MetricsSink:
    """Counts the services' events. ``is_known`` tells whether a collection is configured:
    others are counted as ``<unknown>``, so invented names add no series."""

    def __init__(self, metrics: Metrics, is_known: Callable[[str], bool]) -> None:
        self._metrics = metrics
        self._is_known = is_known

    def _collection(self, name: str) -> str:
        return name if name and self._is_known(name) else UNKNOWN_COLLECTION

    async def emit(self, event: Event) -> None:
        metrics = self._metrics
        outcome = event.outcome.value
        success = event.outcome is Outcome.SUCCESS
        if event.action is Action.LOGIN:
            metrics.logins.labels(outcome).inc()
        elif event.action is Action.TOKEN_REFRESH:
            metrics.token_operations.labels("refresh", outcome).inc()
        elif event.action is Action.TOKEN_REVOKE:
            metrics.token_operations.labels("revoke", outcome).inc()
        elif event.action is Action.UPLOAD:
            collection = self._collection(event.collection)
            metrics.uploads.labels(collection, outcome).inc()
            if success:
                metrics.uploaded_bytes.labels(collection).inc(event.size or 0)
            else:
                metrics.uploads_refused.labels(reason_label(event.reason)).inc()
        elif event.action is Action.DOWNLOAD:
            collection = self._collection(event.collection)
            metrics.downloads.labels(collection, outcome).inc()
            if success:
                metrics.downloaded_bytes.labels(collection).inc(event.size or 0)
        elif event.action is Action.ROTATION_DELETE and success:
            metrics.rotated_versions.labels(self._collection(event.collection)).inc()


# -- the middleware ------------------------------------------------------------------------


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER_METHOD


def route_template(scope: Scope) -> str | None:
    """The path template of the route that answered, when routing chose one."""
    template = getattr(scope.get("route"), "path_format", None)
    return template if isinstance(template, str) else None


def template_matcher(templates: Iterable[str]) -> Callable[[str], str]:
    """Maps a path to the first of ``templates`` it fits, or to ``<unmatched>``."""
    patterns = [(compile_path(template)[0], template) for template in templates]

    def match(path: str) -> str:
        for regex, template in patterns:
            if regex.match(path):
                return template
        return UNMATCHED_ROUTE

    return match


def documented_templates(routes: Sequence[BaseRoute]) -> list[str]:
    """The paths of the OpenAPI description, in its order, from the routes alone: the
    templates of the routes FastAPI documents (API routes in the schema), then the
    deprecated ``/api/alpha/`` aliases ``http/openapi/description.py`` adds for them. The
    description itself (about 3 MiB once built, and kept) is left to ``/openapi.json`` and
    the ``/docs`` page."""
    from fastapi.routing import APIRoute, iter_route_contexts

    documented: dict[str, set[str]] = {}
    aliases: list[tuple[str, set[str]]] = []
    for context in iter_route_contexts(routes):
        path = context.path_format
        if not isinstance(context.original_route, APIRoute) or not isinstance(path, str):
            continue
        methods = set(context.methods or ())
        if context.include_in_schema and methods:
            documented.setdefault(path, set()).update(methods)
        if path.startswith(ALPHA_PREFIX):
            aliases.append((path, methods))
    templates = list(documented)
    for path, methods in aliases:
        stable = documented.get(STABLE_PREFIX + path.removeprefix(ALPHA_PREFIX), set())
        if methods & stable and path not in templates:
            templates.append(path)
    return templates


class RequestMetrics:
    """Counts every HTTP request once its response has finished (a streamed download when
    its last byte was handed to the server): a ``request_log.RequestEnd``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._matcher: Callable[[str], str] | None = None

    def _route(self, scope: Scope) -> str:
        template = route_template(scope)
        if template is not None:
            return template
        # Refused before routing (rate limit, header or body limits) or not found: the
        # templates of the documented operations tell which route the path was meant for.
        if self._matcher is None:
            routes = getattr(scope.get("app"), "routes", None)
            self._matcher = template_matcher(documented_templates(routes or []))
        return self._matcher(scope["path"])

    def __call__(self, scope: Scope, status: int, seconds: float) -> None:
        try:
            self.metrics.observe_request(
                method_label(scope["method"]), self._route(scope), status or 500, seconds
            )
        except Exception:  # counting must never change what the client got
            logger.exception("could not count request to %s", scope.get("path"))
