"""The server's own counters, histogram and gauge (http/metrics.py) give the scrape the same
text as prometheus_client's Counter, Histogram and Gauge fed the same way, which they
replace so that the client library is imported at the first scrape only."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from backup_repository.http.metrics import (
    DURATION_BUCKETS,
    CounterFamily,
    GaugeFamily,
    HistogramFamily,
    Metrics,
    created_series_enabled,
)

# The values of ``_created`` series are the times the series appeared: equal in shape only.
_CREATED = re.compile(rb"^(\S+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def without_created_values(text: bytes) -> bytes:
    return _CREATED.sub(rb"\1 <time>", text)


class _Ours:
    def __init__(self) -> None:
        self.families: list[CounterFamily | GaugeFamily | HistogramFamily] = []

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric(created_series_enabled())


def test_the_same_text_as_the_client_librarys_metrics() -> None:
    registry = CollectorRegistry(auto_describe=True)
    theirs_counter = Counter("t_requests", "Requests", ["method", "status"], registry=registry)
    theirs_bytes = Counter("t_bytes", "Bytes", ["collection"], registry=registry)
    theirs_histogram = Histogram(
        "t_seconds", "Time", ["route"], buckets=DURATION_BUCKETS, registry=registry
    )
    theirs_gauge = Gauge("t_info", "Info", ["version"], registry=registry)
    ours = _Ours()
    counter = CounterFamily("t_requests", "Requests", ["method", "status"])
    size = CounterFamily("t_bytes", "Bytes", ["collection"])
    histogram = HistogramFamily("t_seconds", "Time", ["route"], buckets=DURATION_BUCKETS)
    gauge = GaugeFamily("t_info", "Info", ["version"])
    ours.families = [counter, size, histogram, gauge]

    theirs_gauge.labels("1.2.3").set(1)
    gauge.labels("1.2.3").set(1)
    for method, status in [("GET", 200), ("POST", 201), ("GET", 200), ("GET", 404)]:
        theirs_counter.labels(method, str(status)).inc()
        counter.labels(method, status).inc()
    for amount in (0, 1, 1_048_576, 549_755_813_888, 0.5):
        theirs_bytes.labels("db").inc(amount)
        size.labels("db").inc(amount)
    theirs_bytes.labels("never").inc(0)
    size.labels("never").inc(0)
    # Below, on and between the bounds, beyond the last finite one, and not a number.
    observed = [0.0, 0.001, 0.005, 0.0051, 0.3, 1.0, 59.9, 3600.0, 3600.5, 1e9, math.nan]
    for route, seconds in zip(["/a", "/b"] * len(observed), observed, strict=False):
        theirs_histogram.labels(route).observe(seconds)
        histogram.labels(route).observe(seconds)
    theirs_histogram.labels("/unused")
    histogram.labels("/unused")

    expected = without_created_values(generate_latest(registry))
    assert b"_created" in expected
    assert without_created_values(generate_latest(ours)) == expected


def test_counters_refuse_what_the_client_librarys_refuse() -> None:
    counter = CounterFamily("t", "T", ["a"])
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("x", "y")
    assert counter.labels("x").value == 0


def test_created_series_follow_the_client_librarys_setting() -> None:
    """``PROMETHEUS_DISABLE_CREATED_SERIES`` drops them, as for prometheus_client's own."""
    script = textwrap.dedent(
        """
        import asyncio
        from backup_repository.http.metrics import Metrics
        metrics = Metrics("1.0")
        metrics.observe_request("GET", "/health", 200, 0.01)
        print(asyncio.run(metrics.render()).decode())
        """
    )
    for setting, created in (("true", False), ("0", True)):
        answer = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PROMETHEUS_DISABLE_CREATED_SERIES": setting},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert ("_created" in answer.stdout) is created, answer.stdout
        assert "backup_repository_http_requests_total" in answer.stdout


def test_the_client_library_is_imported_by_the_first_scrape() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from backup_repository.http import metrics as module
        from backup_repository.http.routers import metrics as router
        metrics = module.Metrics("1.0")
        metrics.observe_request("GET", "/health", 200, 0.01)
        metrics.logins.labels("success").inc()
        print(any(name.split(".")[0] == "prometheus_client" for name in sys.modules))
        asyncio.run(metrics.render())
        print(any(name.split(".")[0] == "prometheus_client" for name in sys.modules))
        """
    )
    answer = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert answer.stdout.split() == ["False", "True"]


async def test_a_scrape_shows_what_was_counted_before_it() -> None:
    metrics = Metrics("1.0")
    metrics.observe_request("GET", "/health", 200, 0.01)
    metrics.observe_request("GET", "/health", 200, 0.2)
    metrics.uploaded_bytes.labels("db").inc(1024)
    text = (await metrics.render()).decode()
    assert 'backup_repository_info{version="1.0"} 1.0' in text
    assert (
        'backup_repository_http_requests_total{method="GET",route="/health",status="200"} 2.0'
        in text
    )
    assert (
        'backup_repository_http_request_duration_seconds_bucket{le="0.01",method="GET",'
        'route="/health"} 1.0'
    ) in text
    assert 'backup_repository_uploaded_bytes_total{collection="db"} 1024.0' in text
