"""Replica ids: what is accepted, the default from the host name, the tag owners carry, and
the --replica-id flag with BR_REPLICA_ID."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from backup_repository.cli.server import build_settings, main
from backup_repository.domain.replica import (
    MAX_TAG_LENGTH,
    OWNER_SEPARATOR,
    ReplicaIdentity,
    check_replica_id,
    lease_tag,
    replica_id_from_hostname,
)
from backup_repository.settings import Settings

SECRET = "replica-test-secret-long-enough"
# 63 characters: the longest host name a pod gets.
LONG_POD = "backup-repository-production-eu-west-1-primary-7d9f8c6b5d-x2k4q"


@pytest.mark.parametrize(
    "name",
    ["a", "node-1", "backup-repository-7d9f8c6b5d-x2k4q", "host.example.org", "br_0", "x" * 253],
)
def test_usable_ids(name: str) -> None:
    assert check_replica_id(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-node", "node-", ".node", "no/slash", "a b", "node%", "nöde", "x" * 254, "a\nb", "~"],
)
def test_unusable_ids_are_refused_with_what_is_allowed(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        check_replica_id(name)


def test_default_is_the_host_name_made_usable() -> None:
    assert replica_id_from_hostname("backup-repository-0") == "backup-repository-0"
    assert replica_id_from_hostname("my host (2)") == "my-host-2"
    assert replica_id_from_hostname("-.-") == "server"
    assert check_replica_id(replica_id_from_hostname("x" * 300)) == "x" * 253


def test_owners_fit_their_column_and_keep_replicas_apart() -> None:
    for name in ("a", LONG_POD, "y" * 253):
        identity = ReplicaIdentity.start(name)
        # The longest owner written: "<instance>:<16 hex digits>" in a String(64).
        assert len(f"{identity.instance}:{'0' * 16}") <= 64
        assert identity.instance.startswith(identity.tag + OWNER_SEPARATOR)
    assert lease_tag("node-1") == "node-1"
    long_tag = lease_tag(LONG_POD)
    assert len(long_tag) == MAX_TAG_LENGTH
    # Two long pod names that differ only at the end get different tags.
    assert lease_tag(LONG_POD[:-1] + "z") != long_tag
    # Every life of a replica has another random part, under the same tag.
    lives = {ReplicaIdentity.start("node-1").instance for _ in range(20)}
    assert len(lives) == 20
    assert {life.split(OWNER_SEPARATOR)[0] for life in lives} == {"node-1"}


def test_settings_default_to_the_host_name_and_refuse_a_bad_id() -> None:
    base = {"db_url": "sqlite:///x.db", "jwt_secret_key": SECRET, "storage_url": "file:///s"}
    settings = Settings(**base, config_local_path="c")  # type: ignore[arg-type]
    assert settings.replica_id == replica_id_from_hostname(socket.gethostname())
    with pytest.raises(ValueError, match=r"--replica-id \(BR_REPLICA_ID\)"):
        Settings(**base, config_local_path="c", replica_id="no/slash")  # type: ignore[arg-type]


def parsed(args: list[str]) -> Settings:
    """Settings from the real command-line parsing (flags and BR_* variables)."""
    common = ["--jwt-secret-key", SECRET, "--db-url", "sqlite:///x.db"]
    context = main.make_context("backup-repository", [*common, *args])
    return build_settings(dict(context.params))


def test_flag_and_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad id stops the server before it starts. (The variable reaching a running
    server: tests/e2e/test_restart_leases.py.)"""
    monkeypatch.delenv("BR_REPLICA_ID", raising=False)
    assert parsed([]).replica_id == replica_id_from_hostname(socket.gethostname())
    assert parsed(["--replica-id=from-flag"]).replica_id == "from-flag"
    monkeypatch.setenv("BR_REPLICA_ID", "from-env")
    assert parsed([]).replica_id == "from-env"
    assert parsed(["--replica-id", "flag-wins"]).replica_id == "flag-wins"
    runner = CliRunner()
    common = ["--jwt-secret-key", SECRET, "--db-url", "sqlite:///x.db"]
    for refused in (
        runner.invoke(main, [*common, "--replica-id=pod/0"]),
        runner.invoke(main, common, env={"BR_REPLICA_ID": "pod 0"}),
    ):
        assert refused.exit_code == 2, refused.output
        assert "--replica-id (BR_REPLICA_ID)" in refused.output
        assert "letters, digits" in refused.output
