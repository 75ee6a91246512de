"""Fixtures of the client tests: exported GnuPG keys (once per run) and a live server
(once per module) with a fresh collection for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_support import KeyFiles, LiveServer, export_keys, start_live_server

from gpg_fixtures import require_gpg


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    require_gpg()
    return export_keys(tmp_path_factory.mktemp("client-keys"))


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path_factory.mktemp("client-server"))
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def collection(live_server: LiveServer) -> str:
    """A collection no other test of the module uses."""
    return live_server.new_collection()


@pytest.fixture
def bm_env(live_server: LiveServer, collection: str) -> dict[str, str]:
    """The global settings as BM_* variables: the server, ``collection``, an admin token."""
    return {
        "BM_URL": live_server.url,
        "BM_COLLECTION_ID": collection,
        "BM_AUTH_TOKEN": live_server.token(),
    }
