"""The pure parts of the metrics (http/metrics.py, routers/metrics.py): bounded labels, the
event sink, scrape sources that fail or hang, the key check, the settings rule, and the
example alert rules of docs/monitoring.md (valid YAML and valid PromQL)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from backup_repository.http.deps import key_accepted, presented_keys
from backup_repository.http.metrics import (
    UNMATCHED_ROUTE,
    Metrics,
    MetricsSink,
    collection_gauge,
    method_label,
    reason_label,
    template_matcher,
)
from backup_repository.services.events import Action, Event, Outcome
from backup_repository.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_labels_are_bounded() -> None:
    assert method_label("GET") == "GET"
    assert method_label("BREW") == "OTHER"
    assert method_label("get") == "OTHER"
    assert reason_label("quota") == "quota"
    assert reason_label("made up by someone") == "other"


def test_template_matcher() -> None:
    match = template_matcher(
        ["/health", "/api/stable/repository/collection/{collectionId}/version"]
    )
    assert match("/health") == "/health"
    assert (
        match("/api/stable/repository/collection/db/version")
        == "/api/stable/repository/collection/{collectionId}/version"
    )
    assert match("/api/stable/repository/collection/a/b/version") == UNMATCHED_ROUTE
    assert match("/health/extra") == UNMATCHED_ROUTE
    assert match("/") == UNMATCHED_ROUTE


async def test_sink_counts_and_bounds_collections() -> None:
    metrics = Metrics("1.2.3")
    sink = MetricsSink(metrics, lambda name: name == "db")
    await sink.emit(Event(Action.LOGIN, Outcome.SUCCESS, user="u"))
    await sink.emit(Event(Action.LOGIN, Outcome.FAILURE, user="u"))
    await sink.emit(Event(Action.LOGIN, Outcome.FAILURE, user="u"))
    await sink.emit(Event(Action.UPLOAD, Outcome.SUCCESS, collection="db", size=100))
    await sink.emit(Event(Action.UPLOAD, Outcome.SUCCESS, collection="db", size=23))
    await sink.emit(Event(Action.UPLOAD, Outcome.FAILURE, collection="db", reason="quota"))
    await sink.emit(Event(Action.UPLOAD, Outcome.FAILURE, collection="x1", reason="not_found"))
    await sink.emit(Event(Action.UPLOAD, Outcome.FAILURE, collection="", reason="invented"))
    await sink.emit(Event(Action.DOWNLOAD, Outcome.SUCCESS, collection="db", size=7))
    await sink.emit(Event(Action.DOWNLOAD, Outcome.FAILURE, collection="x2"))
    await sink.emit(Event(Action.ROTATION_DELETE, Outcome.SUCCESS, collection="db", size=5))
    await sink.emit(Event(Action.TOKEN_REFRESH, Outcome.SUCCESS))
    await sink.emit(Event(Action.TOKEN_REVOKE, Outcome.FAILURE))
    m = samples(await metrics.render())

    def v(name: str, **labels: str) -> float:
        return m[(name, frozenset(labels.items()))]

    assert v("backup_repository_info", version="1.2.3") == 1
    assert v("backup_repository_logins_total", outcome="success") == 1
    assert v("backup_repository_logins_total", outcome="failure") == 2
    assert v("backup_repository_uploads_total", collection="db", outcome="success") == 2
    assert v("backup_repository_uploads_total", collection="db", outcome="failure") == 1
    assert v("backup_repository_uploads_total", collection="<unknown>", outcome="failure") == 2
    assert v("backup_repository_uploaded_bytes_total", collection="db") == 123
    assert v("backup_repository_uploads_refused_total", reason="quota") == 1
    assert v("backup_repository_uploads_refused_total", reason="not_found") == 1
    assert v("backup_repository_uploads_refused_total", reason="other") == 1
    assert v("backup_repository_uploads_refused_total", reason="lock") == 0
    assert v("backup_repository_downloads_total", collection="db", outcome="success") == 1
    assert v("backup_repository_downloads_total", collection="<unknown>", outcome="failure") == 1
    assert v("backup_repository_downloaded_bytes_total", collection="db") == 7
    assert v("backup_repository_rotated_versions_total", collection="db") == 1
    assert (
        v("backup_repository_token_operations_total", operation="refresh", outcome="success") == 1
    )
    assert v("backup_repository_token_operations_total", operation="revoke", outcome="failure") == 1
    collections = {dict(labels).get("collection") for (_, labels) in m}
    assert "x1" not in collections
    assert "x2" not in collections


async def test_registries_are_separate() -> None:
    first, second = Metrics("1"), Metrics("1")
    first.observe_request("GET", "/health", 200, 0.01)
    m = samples(await second.render())
    assert not any(name == "backup_repository_http_requests_total" for name, _ in m)


async def test_failing_and_hanging_sources_do_not_fail_the_scrape() -> None:
    metrics = Metrics("1", source_timeout=0.2)

    async def good() -> list[Metric]:
        return [collection_gauge("backup_repository_collection_versions", "v", {"b": 2, "a": 1})]

    async def broken() -> list[Metric]:
        raise RuntimeError("database down")

    async def hanging() -> list[Metric]:
        await asyncio.sleep(30)
        return []

    metrics.add_source("good", good)
    metrics.add_source("broken", broken)
    metrics.add_source("hanging", hanging)
    started = asyncio.get_running_loop().time()
    m = samples(await metrics.render())
    assert asyncio.get_running_loop().time() - started < 5
    up = "backup_repository_scrape_source_up"
    assert m[(up, frozenset({("source", "good")}))] == 1
    assert m[(up, frozenset({("source", "broken")}))] == 0
    assert m[(up, frozenset({("source", "hanging")}))] == 0
    versions = "backup_repository_collection_versions"
    assert m[(versions, frozenset({("collection", "a")}))] == 1
    assert m[(versions, frozenset({("collection", "b")}))] == 2
    # Registered again under the same name: replaced, not doubled.
    metrics.add_source("good", good)
    again = (await metrics.render()).decode()
    assert again.count('backup_repository_collection_versions{collection="a"}') == 1


@pytest.mark.parametrize(
    ("authorization", "code", "accepted"),
    [
        ("k3y", None, True),
        ("Bearer k3y", None, True),
        ("bearer   k3y", None, True),
        (None, "k3y", True),
        ("wrong", "k3y", True),
        ("Bearer wrong", None, False),
        ("Basic k3y", None, False),
        ("k3y ", None, False),
        (None, "k3yy", False),
    ],
)
def test_key_check(authorization: str | None, code: str | None, accepted: bool) -> None:
    assert key_accepted(presented_keys(authorization, code), "k3y") is accepted


def test_no_key_presented_and_no_key_expected() -> None:
    assert presented_keys(None, None) == []
    assert presented_keys("", "") == []
    assert key_accepted(["anything"], "") is False


def test_protected_metrics_need_a_key(tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "db_url": "sqlite:///x.db",
        "jwt_secret_key": "a-secret-that-is-long-enough",
        "storage_url": tmp_path.as_uri(),
        "config_local_path": tmp_path,
    }
    with pytest.raises(ValueError, match=r"--metrics-protected .* needs --health-check-key"):
        Settings(**values, metrics_public=False)
    assert Settings(**values, metrics_public=False, health_check_key="k").metrics_need_key


@pytest.mark.parametrize(
    ("metrics_public", "key", "need_key", "public_by_default"),
    [
        (None, "k", True, False),  # a key protects /metrics by default
        (None, "", False, True),  # no key: public, and the server warns
        (True, "k", False, False),  # public on purpose
        (True, "", False, False),
        (False, "k", True, False),  # --metrics-protected
    ],
)
def test_when_metrics_need_the_key(
    tmp_path: Path, metrics_public: bool | None, key: str, need_key: bool, public_by_default: bool
) -> None:
    settings = Settings(
        db_url="sqlite:///x.db",
        jwt_secret_key="a-secret-that-is-long-enough",
        storage_url=tmp_path.as_uri(),
        config_local_path=tmp_path,
        health_check_key=key,
        metrics_public=metrics_public,
    )
    assert settings.metrics_need_key is need_key
    assert settings.metrics_public_by_default is public_by_default


def _yaml_blocks() -> list[Any]:
    text = DOCS.read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_alert_rules_in_the_docs_are_valid() -> None:
    blocks = _yaml_blocks()
    rules_docs = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "PrometheusRule"]
    assert len(rules_docs) == 1
    doc = rules_docs[0]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    rules = [rule for group in doc["spec"]["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for expected in (
        "BackupMissing",
        "BackupNeverUploaded",
        "CollectionNearlyFull",
        "UploadsRefusedQuota",
        "UploadsRefusedOpenPGP",
        "HighErrorRate",
        "CorruptVersions",
    ):
        assert expected in names
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        promql_parser.parse(rule["expr"])  # raises ValueError on invalid PromQL


def test_promql_check_catches_mistakes() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(backup_repository_http_requests_total[5m])")


def test_scrape_configs_in_the_docs_parse() -> None:
    configs = [b for b in _yaml_blocks() if isinstance(b, dict) and "scrape_configs" in b]
    assert len(configs) == 2
    for config in configs:
        job = config["scrape_configs"][0]
        assert job["job_name"] == "backup-repository"
        assert job["static_configs"][0]["targets"]
    # The health check key as a Bearer credential from a file, or as ?code=.
    bearer, query = (config["scrape_configs"][0] for config in configs)
    assert bearer["authorization"]["type"] == "Bearer"
    assert bearer["authorization"]["credentials_file"]
    assert list(query["params"]) == ["code"]
