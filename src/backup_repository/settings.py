"""One validated Settings object, built once from the command line and ``BR_*`` variables
(``cli/server.py``) and handed to the composition root. Nothing reads the environment after
this point."""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backup_repository.db.urls import normalize_database_url
from backup_repository.domain.network import IPNetwork
from backup_repository.domain.replica import check_replica_id, replica_id_from_hostname
from backup_repository.storage.urls import parse_storage_url

LogLevel = Literal["debug", "info", "warning", "error", "critical"]

MIN_JWT_SECRET_LENGTH = 16
# The default --login-queue-limit is this many waiting logins per hashing thread.
LOGINS_WAITING_PER_HASH_THREAD = 32


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the flag and its variable."""


class Listen(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    port: int = Field(ge=0, le=65535)

    @classmethod
    def parse(cls, text: str) -> Listen:
        """``:8080``, ``0.0.0.0:8080``, ``127.0.0.1:8080``, ``[::1]:8080``, ``localhost:80``."""
        raw = text.strip()
        host, sep, port = raw.rpartition(":")
        if not sep or not port.isdigit():
            raise SettingsError(
                f"--listen (BR_LISTEN): {text!r} is not an address, expected e.g. ':8080' or "
                "'127.0.0.1:8080'"
            )
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host=host or "0.0.0.0", port=int(port))  # noqa: S104 (Go's ":8080")

    def url(self) -> str:
        host = "localhost" if self.host in {"0.0.0.0", "::", ""} else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    listen: Listen = Listen(host="0.0.0.0", port=8080)  # noqa: S104
    db_url: str
    jwt_secret_key: str = Field(repr=False)
    jwt_lifetime: timedelta = timedelta(hours=8760)
    health_check_key: str = Field(default="", repr=False)
    storage_url: str
    storage_io_timeout: timedelta = timedelta(hours=2)
    storage_health_timeout: timedelta = timedelta(seconds=5)
    http_upload_timeout: timedelta = timedelta(minutes=180)
    http_download_timeout: timedelta = timedelta(minutes=180)
    # How long a collection's upload lock outlives a replica that died while uploading.
    upload_lock_lease: timedelta = timedelta(seconds=30)
    # This replica's name in the lock tables, stable across its restarts (default: the host
    # name): a restart frees what the previous life of the same id held.
    replica_id: str = Field(default_factory=lambda: replica_id_from_hostname(socket.gethostname()))
    # Requests per second (default) and per minute (the three others); 0 disables a limit.
    # Why these values: docs/configuration.md (Rate limits and the login queue).
    rate_default_limit: int = Field(default=100, ge=0)
    rate_auth_limit: int = Field(default=10, ge=0)
    rate_collection_health_limit: int = Field(default=60, ge=0)
    rate_server_health_limit: int = Field(default=160, ge=0)
    provider: Literal["filesystem", "kubernetes"] = "filesystem"
    config_local_path: Path
    namespace: str = "backup-repository"
    # --provider=kubernetes: a kubeconfig file; None tries the in-cluster service account,
    # then $KUBECONFIG / ~/.kube/config.
    kubeconfig: Path | None = None
    log_level: LogLevel = "info"
    # JSON lines for log collectors, or readable lines (make run).
    log_format: Literal["json", "console"] = "json"
    # Re-read every stored version this often and record the result; None: never.
    verify_interval: timedelta | None = None
    # Sessions expired or revoked longer ago than this are deleted; None: kept forever.
    session_retention: timedelta | None = timedelta(days=30)
    # How often one replica looks for sessions to purge.
    session_purge_interval: timedelta = timedelta(hours=1)
    # Notifications (docs/notifications.md): conditions judged this often, one replica at a
    # time; None: no notifications from this replica (neither judged nor delivered).
    notify_interval: timedelta | None = timedelta(seconds=60)
    # An undelivered notification is retried until this long after it was queued.
    notify_max_age: timedelta = timedelta(hours=24)
    # How often each replica looks for notifications due for delivery.
    notify_dispatch_interval: timedelta = timedelta(seconds=2)
    # Test facility only: the server's clock is real time plus the seconds in this file
    # (services/clock.py); refused unless test facilities are enabled (cli/server.py).
    test_clock_file: Path | None = None
    # /metrics: None (neither --metrics-public nor --metrics-protected) asks for the health
    # check key when one is set and is public otherwise; True is public on purpose; False
    # always asks for the key (and needs one). See ``metrics_need_key``.
    metrics_public: bool | None = None
    redis_url: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Argon2 hashes computed at once; each takes 64 MiB with the reference parameters.
    password_hash_concurrency: int = Field(default=2, ge=1, le=64)
    # Logins that may wait for a hashing thread; more are answered 503 at once. None: 32 per
    # hashing thread (see login_queue).
    login_queue_limit: int | None = Field(default=None, ge=0, le=100_000)
    # An IPv6 client is rate-limited by its network of this many bits (its /64 by default).
    rate_limit_ipv6_prefix: int = Field(default=64, ge=32, le=128)
    # Largest JSON/form body accepted by endpoints other than uploads.
    max_request_body: int = Field(default=64 * 1024, ge=1024)
    # Cleartext HTTP/2 (h2c) next to HTTP/1.1 on the plain port; off: HTTP/1.1 only.
    http2: bool = False
    dev_mode: bool = False

    @property
    def login_queue(self) -> int:
        """Logins that may wait for a hashing thread. The default, 32 per thread, lets a
        burst of that many backup jobs starting at the same minute through with a wait of
        about 32 hashes (a few seconds); a longer queue would only make every login slow
        during a flood."""
        if self.login_queue_limit is not None:
            return self.login_queue_limit
        return LOGINS_WAITING_PER_HASH_THREAD * self.password_hash_concurrency

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        try:
            return normalize_database_url(value)
        except ValueError as exc:
            raise SettingsError(f"--db-url (BR_DB_URL): {exc}") from None

    @field_validator(
        "jwt_lifetime",
        "storage_health_timeout",
        "storage_io_timeout",
        "http_upload_timeout",
        "http_download_timeout",
        "upload_lock_lease",
        "session_purge_interval",
        "notify_max_age",
        "notify_dispatch_interval",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise SettingsError("durations must be positive")
        return value

    @field_validator("replica_id")
    @classmethod
    def _replica_id(cls, value: str) -> str:
        try:
            return check_replica_id(value)
        except ValueError as exc:
            raise SettingsError(f"--replica-id (BR_REPLICA_ID): {exc}") from None

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> tuple[IPNetwork, ...]:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise SettingsError("--trusted-proxies: expected a comma-separated list")
        networks: list[IPNetwork] = []
        for item in value:
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                networks.append(item)
                continue
            try:
                networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
            except ValueError:
                raise SettingsError(
                    f"--trusted-proxies (BR_TRUSTED_PROXIES): {item!r} is not an IP address "
                    "or CIDR network"
                ) from None
        return tuple(networks)

    @model_validator(mode="after")
    def _secure_defaults(self) -> Settings:
        if not self.jwt_secret_key:
            raise SettingsError(
                "--jwt-secret-key (BR_JWT_SECRET_KEY) is required: tokens are signed with it"
            )
        if len(self.jwt_secret_key) < MIN_JWT_SECRET_LENGTH and not self.dev_mode:
            raise SettingsError(
                f"--jwt-secret-key (BR_JWT_SECRET_KEY) must be at least "
                f"{MIN_JWT_SECRET_LENGTH} characters long"
            )
        try:
            parse_storage_url(self.storage_url)
        except ValueError as exc:
            raise SettingsError(f"--storage-url (BR_STORAGE_DRIVER_URL): {exc}") from None
        if self.metrics_public is False and not self.health_check_key:
            raise SettingsError(
                "--metrics-protected (BR_METRICS_PUBLIC=false) needs --health-check-key "
                "(BR_HEALTH_CHECK_KEY): /metrics is protected by that key"
            )
        return self

    @property
    def metrics_need_key(self) -> bool:
        """/metrics asks for the health check key: whenever one is set, unless made public
        on purpose."""
        return bool(self.health_check_key) and not self.metrics_public

    @property
    def metrics_public_by_default(self) -> bool:
        """/metrics is public only because no health check key is set (worth a warning)."""
        return self.metrics_public is None and not self.health_check_key
