"""Settings built from the command line: defaults, PostgreSQL flags, validation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_repository.cli.server import build_settings, main
from backup_repository.settings import Listen, Settings, SettingsError

SECRET = "settings-test-secret-long-enough"


def options(**overrides: Any) -> dict[str, Any]:
    """What click hands to ``main`` with no flags given, plus overrides."""
    values: dict[str, Any] = {
        "listen": None,
        "db_url": None,
        "db_hostname": None,
        "db_port": 5432,
        "db_user": None,
        "db_password": None,
        "db_name": None,
        "jwt_secret_key": SECRET,
        "jwt_lifetime": timedelta(hours=8760),
        "health_check_key": "",
        "storage_url": None,
        "storage_io_timeout": timedelta(hours=2),
        "storage_health_timeout": timedelta(seconds=5),
        "http_upload_timeout": timedelta(minutes=180),
        "http_download_timeout": timedelta(minutes=180),
        "upload_lock_lease": timedelta(seconds=30),
        "replica_id": None,
        "rate_default_limit": 100,
        "rate_auth_limit": 10,
        "rate_collection_health_limit": 60,
        "rate_server_health_limit": 160,
        "provider": "filesystem",
        "config_local_path": None,
        "namespace": "backup-repository",
        "kubeconfig": None,
        "log_level": "info",
        "log_format": None,
        "verify_interval": None,
        "session_retention": timedelta(hours=720),
        "session_purge_interval": timedelta(hours=1),
        "notify_interval": timedelta(seconds=60),
        "notify_max_age": timedelta(hours=24),
        "notify_dispatch_interval": timedelta(seconds=2),
        "test_clock_file": None,
        "enable_test_facilities": False,
        "metrics_public": None,
        "redis_url": None,
        "trusted_proxies": "",
        "password_hash_concurrency": 2,
        "login_queue_limit": None,
        "rate_limit_ipv6_prefix": 64,
        "http2": False,
        "encode_password": None,
        "hash_jwt": None,
        "dev_mode": False,
    }
    values.update(overrides)
    return values


def test_main_takes_every_option_the_tests_assume() -> None:
    names = {p.name for p in main.params}
    assert names == set(options())


def test_defaults() -> None:
    settings = build_settings(options())
    assert settings.listen == Listen(host="0.0.0.0", port=8080)
    assert settings.db_url == "sqlite+aiosqlite:///data/backup-repository.db"
    assert settings.storage_url.startswith("file:///")
    assert settings.config_local_path == Path("~/.backup-repository").expanduser()
    assert settings.rate_default_limit == 100
    assert settings.jwt_lifetime == timedelta(hours=8760)


def test_postgres_flags_build_an_async_url_with_quoting() -> None:
    settings = build_settings(
        options(
            db_hostname="db.internal",
            db_port=6432,
            db_user="backups",
            db_password="p@ss/w:rd",
            db_name="br",
        )
    )
    assert settings.db_url.startswith("postgresql+asyncpg://backups:")
    assert "db.internal:6432/br" in settings.db_url
    assert "p@ss/w:rd" not in settings.db_url  # quoted


def test_db_url_and_postgres_flags_conflict() -> None:
    with pytest.raises(SettingsError, match="either --db-url"):
        build_settings(options(db_url="sqlite:///x.db", db_hostname="pg", db_name="x"))


def test_postgres_flags_need_host_and_name() -> None:
    with pytest.raises(SettingsError, match="--db-hostname and --db-name"):
        build_settings(options(db_user="x"))


def test_dev_mode_generates_and_keeps_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = build_settings(options(jwt_secret_key=None, dev_mode=True))
    second = build_settings(options(jwt_secret_key=None, dev_mode=True))
    assert first.jwt_secret_key == second.jwt_secret_key
    assert len(first.jwt_secret_key) >= 32
    assert first.listen.host == "127.0.0.1"
    assert first.config_local_path == Path("examples/config")


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"jwt_secret_key": None}, "--jwt-secret-key (BR_JWT_SECRET_KEY) is required"),
        ({"jwt_secret_key": "short"}, "at least 16"),
        ({"db_url": "oracle://x"}, "--db-url"),
        ({"storage_url": "/var/lib/x"}, "--storage-url"),
        ({"trusted_proxies": "10.0.0.0/8, nope"}, "--trusted-proxies"),
        ({"listen": "8080"}, "--listen"),
    ],
)
def test_invalid_settings(overrides: dict[str, Any], phrase: str) -> None:
    with pytest.raises(SettingsError) as info:
        build_settings(options(**overrides))
    assert phrase in str(info.value)


@pytest.mark.parametrize(
    ("text", "host", "port", "url"),
    [
        (":8080", "0.0.0.0", 8080, "http://localhost:8080"),
        ("127.0.0.1:9000", "127.0.0.1", 9000, "http://127.0.0.1:9000"),
        ("[::1]:8080", "::1", 8080, "http://[::1]:8080"),
        ("localhost:80", "localhost", 80, "http://localhost:80"),
    ],
)
def test_listen_parse(text: str, host: str, port: int, url: str) -> None:
    listen = Listen.parse(text)
    assert (listen.host, listen.port, listen.url()) == (host, port, url)


def test_trusted_proxies_parse() -> None:
    settings = build_settings(options(trusted_proxies="10.0.0.0/8, 192.168.1.7,::1"))
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]


def test_login_queue_defaults_to_32_per_hashing_thread_and_can_be_set() -> None:
    assert build_settings(options()).login_queue == 64
    assert build_settings(options(password_hash_concurrency=4)).login_queue == 128
    assert build_settings(options(login_queue_limit=0)).login_queue == 0
    assert build_settings(options(login_queue_limit=5)).login_queue == 5


def test_rate_limit_ipv6_prefix_default_and_bounds() -> None:
    assert build_settings(options()).rate_limit_ipv6_prefix == 64
    assert build_settings(options(rate_limit_ipv6_prefix=128)).rate_limit_ipv6_prefix == 128
    for wrong in (0, 31, 129):
        with pytest.raises(SettingsError, match="rate_limit_ipv6_prefix"):
            build_settings(options(rate_limit_ipv6_prefix=wrong))


def test_session_retention_and_purge_interval() -> None:
    settings = build_settings(options())
    assert settings.session_retention == timedelta(days=30)
    assert settings.session_purge_interval == timedelta(hours=1)
    # 0: sessions are kept forever (no purge task).
    assert build_settings(options(session_retention=timedelta(0))).session_retention is None
    with pytest.raises(SettingsError, match="durations must be positive"):
        build_settings(options(session_purge_interval=timedelta(0)))
    # The flags and their variables, through the command line parser.
    context = main.make_context(
        "backup-repository",
        ["--session-retention=2d", "--session-purge-interval", "5m"],
        resilient_parsing=True,
    )
    assert context.params["session_retention"] == timedelta(days=2)
    assert context.params["session_purge_interval"] == timedelta(minutes=5)
    for param in main.params:
        if param.name in {"session_retention", "session_purge_interval"}:
            assert param.envvar in {"BR_SESSION_RETENTION", "BR_SESSION_PURGE_INTERVAL"}


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, False),
        (["--http2"], {}, True),
        ([], {"BR_HTTP2": "true"}, True),
        (["--no-http2"], {"BR_HTTP2": "true"}, False),
    ],
)
def test_http2_is_off_unless_asked_for(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], expected: bool
) -> None:
    monkeypatch.delenv("BR_HTTP2", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    context = main.make_context("backup-repository", argv, resilient_parsing=True)
    assert context.params["http2"] is expected
    assert build_settings(options(http2=context.params["http2"])).http2 is expected


def test_rate_limit_defaults_of_the_flags_and_the_settings_agree() -> None:
    flags = {p.name: p.default for p in main.params}
    for name in (
        "rate_default_limit",
        "rate_auth_limit",
        "rate_collection_health_limit",
        "rate_server_health_limit",
    ):
        assert flags[name] == Settings.model_fields[name].default, name


def test_help_and_readme_agree_on_what_the_server_health_limit_covers() -> None:
    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    row = next(line for line in readme.splitlines() if "`--rate-server-health-limit`" in line)
    flag = next(p for p in main.params if p.name == "rate_server_health_limit")
    help_text = getattr(flag, "help", "") or ""
    for path in ("/health", "/ready", "/metrics"):
        assert path in help_text, help_text
        assert f"`{path}`" in row, row
