"""docs/monitoring.md names every metric the real server exposes and every scrape-time
source: a metric or source added without its description fails here."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from support import default_documents, start_server, write_config

pytestmark = pytest.mark.e2e

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


def test_every_metric_and_source_is_documented(tmp_path: Path) -> None:
    write_config(tmp_path / "config", default_documents())
    server = start_server(tmp_path, tmp_path / "config")
    try:
        text = httpx.get(server.url + "/metrics", timeout=30).text
    finally:
        server.stop()
    names = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    sources = set(re.findall(r'_scrape_source_up\{source="(\w+)"\}', text))
    assert "backup_repository_collection_corrupt_versions" in names, text
    assert "integrity" in sources, text
    doc = DOC.read_text()
    # The client library adds a ``<name>_created`` gauge to each counter and histogram.
    names = {
        n for n in names if not (n.endswith("_created") and {n[:-8], n[:-8] + "_total"} & names)
    }
    missing = sorted(n for n in names if f"`{n}`" not in doc and f"`{n}_total`" not in doc)
    assert not missing, missing
    row = next(line for line in doc.splitlines() if "`backup_repository_scrape_source_up`" in line)
    assert all(f"`{source}`" in row for source in sources), (sources, row)
