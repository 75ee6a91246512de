"""``backup-repository``: the server's command line, with the reference project's flags.

Every flag also reads a ``BR_*`` environment variable. ``--encode-password`` and
``--hash-jwt`` print and exit. ``--dev`` (what ``make run`` uses) fills in a development
setup: the example configuration, a local SQLite file and storage folder, and a generated
JWT secret.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from backup_repository.cli.import_reference import import_reference
from backup_repository.cli.verify import verify
from backup_repository.db.urls import build_postgres_url
from backup_repository.domain.units import parse_duration
from backup_repository.logs import configure_logging
from backup_repository.services.passwords import PasswordHasher
from backup_repository.services.tokens import session_id_of
from backup_repository.settings import Listen, Settings, SettingsError

logger = logging.getLogger("backup_repository")

DEFAULT_DB_URL = "sqlite:///data/backup-repository.db"
DEV_CONFIG_PATH = Path("examples/config")
DEV_SECRET_FILE = Path("data/.dev-jwt-secret")
DEV_CREDENTIALS = (
    ("admin", "admin", "systemAdmin: everything"),
    ("ci-bot$uploader", "upload-only", "access key: may only upload to example-db"),
    ("ci-bot", "ci-bot-password", "uploads to and downloads from example-db"),
)


def _duration(flag: str) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return convert


F = TypeVar("F", bound=Callable[..., Any])


def _option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A flag that also reads the environment variable ``env``."""
    kwargs.setdefault("show_envvar", True)
    decorator: Callable[[F], F] = click.option(*names, envvar=env, **kwargs)
    return decorator


CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(
    context_settings=CONTEXT_SETTINGS,
    invoke_without_command=True,
    # The reference's server takes flags only; the subcommands are ours.
    subcommand_metavar="[COMMAND [ARGS]...]",
)
@click.pass_context
@_option("--listen", env="BR_LISTEN", default=None, help="Address to listen on, e.g. :8080")
@_option(
    "--db-url",
    env="BR_DB_URL",
    default=None,
    help=f"Database URL: sqlite:///relative.db, sqlite:////absolute.db or "
    f"postgresql://user:pass@host:port/db [default: {DEFAULT_DB_URL}]",
)
@_option("--db-hostname", env="BR_DB_HOSTNAME", default=None, help="PostgreSQL host")
@_option(
    "--db-port",
    env="BR_DB_PORT",
    default=5432,
    type=click.IntRange(1, 65535),
    show_default=True,
    help="PostgreSQL port",
)
@_option("--db-user", env="BR_DB_USERNAME", default=None, help="PostgreSQL user")
@_option("--db-password", env="BR_DB_PASSWORD", default=None, help="PostgreSQL password")
@_option("--db-name", env="BR_DB_NAME", default=None, help="PostgreSQL database name")
@_option(
    "-s",
    "--jwt-secret-key",
    env="BR_JWT_SECRET_KEY",
    default=None,
    help="Secret that signs tokens (required)",
)
@_option(
    "--jwt-lifetime",
    env="BR_JWT_LIFETIME",
    default="8760h",
    show_default=True,
    callback=_duration("--jwt-lifetime"),
    help="Lifetime of issued tokens",
)
@_option(
    "-k",
    "--health-check-key",
    env="BR_HEALTH_CHECK_KEY",
    default="",
    help="Code required by /ready (?code= or Authorization); empty: none",
)
@_option(
    "--storage-url",
    env="BR_STORAGE_DRIVER_URL",
    default=None,
    help="Storage URL: file:///path, s3://bucket?endpoint=..., gs://bucket, "
    "azblob://container [default: file://<working dir>/data/storage]",
)
@_option(
    "--storage-io-timeout",
    env="BR_STORAGE_IO_TIMEOUT",
    default="2h",
    show_default=True,
    callback=_duration("--storage-io-timeout"),
    help="Longest storage read/write of a file",
)
@_option(
    "--storage-health-timeout",
    env="BR_STORAGE_HEALTH_TIMEOUT",
    default="5s",
    show_default=True,
    callback=_duration("--storage-health-timeout"),
    help="Longest time a /ready check may take",
)
@_option(
    "--http-upload-timeout",
    env="BR_HTTP_UPLOAD_TIMEOUT",
    default="180m",
    show_default=True,
    callback=_duration("--http-upload-timeout"),
    help="Longest time an upload request may take",
)
@_option(
    "--http-download-timeout",
    env="BR_HTTP_DOWNLOAD_TIMEOUT",
    default="180m",
    show_default=True,
    callback=_duration("--http-download-timeout"),
    help="Longest time a download request may take",
)
@_option(
    "--upload-lock-lease",
    env="BR_UPLOAD_LOCK_LEASE",
    default="30s",
    show_default=True,
    callback=_duration("--upload-lock-lease"),
    help="How long the upload lock of a replica that died stays held",
)
@_option(
    "--rate-default-limit",
    env="BR_RATE_DEFAULT_LIMIT",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Requests per second per client IP (0: no limit)",
)
@_option(
    "--rate-auth-limit",
    env="BR_RATE_AUTH_LIMIT",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Logins per minute per client IP",
)
@_option(
    "--rate-collection-health-limit",
    env="BR_RATE_COLLECTION_HEALTH_LIMIT",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Collection health requests per minute per client IP",
)
@_option(
    "--rate-server-health-limit",
    env="BR_RATE_SERVER_HEALTH_LIMIT",
    default=160,
    show_default=True,
    type=click.IntRange(min=0),
    help="/health and /ready requests per minute per client IP",
)
@_option(
    "-p",
    "--provider",
    env="BR_CONFIG_PROVIDER",
    default="filesystem",
    show_default=True,
    type=click.Choice(["filesystem", "kubernetes"]),
    help="Where users and collections come from",
)
@_option(
    "--kubeconfig",
    env="BR_KUBECONFIG",
    default=None,
    help="kubeconfig file for --provider=kubernetes [default: in-cluster service account, "
    "then $KUBECONFIG or ~/.kube/config]",
)
@_option(
    "--config-local-path",
    env="BR_CONFIG_LOCAL_PATH",
    default=None,
    help="Configuration folder for --provider=filesystem [default: ~/.backup-repository]",
)
@_option(
    "-n",
    "--namespace",
    env="BR_NAMESPACE",
    default="backup-repository",
    show_default=True,
    help="Namespace of the objects",
)
@_option(
    "--log-level",
    env="BR_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
)
@_option(
    "--log-format",
    env="BR_LOG_FORMAT",
    default=None,
    type=click.Choice(["json", "console"]),
    help="Log lines as JSON or readable text [default: json; console with --dev]",
)
@_option(
    "--verify-interval",
    env="BR_VERIFY_INTERVAL",
    default="0",
    show_default=True,
    callback=_duration("--verify-interval"),
    help="Re-read and check every stored version this often (e.g. 24h); 0: never",
)
@_option(
    "--metrics-protected/--metrics-public",
    env="BR_METRICS_PROTECTED",
    default=False,
    show_default=True,
    help="Require the --health-check-key on /metrics",
)
@_option(
    "--redis-url",
    env="BR_REDIS_URL",
    default=None,
    help="Redis URL to share rate limits across replicas",
)
@_option(
    "--trusted-proxies",
    env="BR_TRUSTED_PROXIES",
    default="",
    help="Comma-separated IPs/CIDRs of proxies whose X-Forwarded-For is believed",
)
@_option(
    "--password-hash-concurrency",
    env="BR_PASSWORD_HASH_CONCURRENCY",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Argon2 hashes computed at once (64 MiB each)",
)
@click.option(
    "--encode-password", default=None, help="Print the encoded hash of a password and exit"
)
@click.option("--hash-jwt", default=None, help="Print the session id (SHA-256) of a token and exit")
@_option(
    "--dev",
    "dev_mode",
    env="BR_DEV_MODE",
    is_flag=True,
    default=False,
    help="Development defaults (make run): example configuration, generated JWT secret",
)
def main(ctx: click.Context, /, **options: Any) -> None:
    """Backup Repository: a storage server for end-to-end encrypted (OpenPGP) backups.

    Without a command, runs the server with the options given."""
    if ctx.invoked_subcommand is not None:
        return
    if options["encode_password"] is not None:
        click.echo(PasswordHasher(1).hash_sync(options["encode_password"]))
        return
    if options["hash_jwt"] is not None:
        click.echo(session_id_of(options["hash_jwt"]))
        return
    try:
        settings = build_settings(options)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    run_server(settings)


main.add_command(import_reference)
main.add_command(verify)


def resolve_db_url(options: dict[str, Any]) -> str:
    """The database URL from ``--db-url`` or the ``--db-hostname``/``--db-*`` set."""
    postgres_parts = [options[k] for k in ("db_hostname", "db_user", "db_name", "db_password")]
    if any(postgres_parts):
        if options["db_url"]:
            raise SettingsError("give either --db-url or the --db-hostname/--db-* set, not both")
        if not options["db_hostname"] or not options["db_name"]:
            raise SettingsError("--db-hostname and --db-name are both needed for PostgreSQL")
        db_url = build_postgres_url(
            options["db_hostname"],
            options["db_port"],
            options["db_user"] or "",
            options["db_password"] or "",
            options["db_name"],
        )
    else:
        db_url = options["db_url"] or DEFAULT_DB_URL
    return str(db_url)


def resolve_storage_url(options: dict[str, Any]) -> str:
    return str(options["storage_url"] or (Path.cwd() / "data" / "storage").as_uri())


def build_settings(options: dict[str, Any]) -> Settings:
    dev: bool = options["dev_mode"]
    db_url = resolve_db_url(options)
    jwt_secret = options["jwt_secret_key"] or ""
    if not jwt_secret and dev:
        jwt_secret = _dev_secret()
    config_path = options["config_local_path"] or (
        str(DEV_CONFIG_PATH) if dev else "~/.backup-repository"
    )
    storage_url = resolve_storage_url(options)
    verify_interval = options.get("verify_interval")
    listen = options["listen"] or ("127.0.0.1:8080" if dev else ":8080")
    values: dict[str, Any] = {
        "listen": Listen.parse(listen),
        "db_url": db_url,
        "jwt_secret_key": jwt_secret,
        "jwt_lifetime": options["jwt_lifetime"],
        "health_check_key": options["health_check_key"],
        "storage_url": storage_url,
        "storage_io_timeout": options["storage_io_timeout"],
        "storage_health_timeout": options["storage_health_timeout"],
        "http_upload_timeout": options["http_upload_timeout"],
        "http_download_timeout": options["http_download_timeout"],
        "upload_lock_lease": options["upload_lock_lease"],
        "rate_default_limit": options["rate_default_limit"],
        "rate_auth_limit": options["rate_auth_limit"],
        "rate_collection_health_limit": options["rate_collection_health_limit"],
        "rate_server_health_limit": options["rate_server_health_limit"],
        "provider": options["provider"],
        "config_local_path": Path(config_path).expanduser(),
        "namespace": options["namespace"],
        "kubeconfig": Path(options["kubeconfig"]).expanduser()
        if options.get("kubeconfig")
        else None,
        "log_level": options["log_level"].lower(),
        "log_format": options.get("log_format") or ("console" if dev else "json"),
        "verify_interval": verify_interval if verify_interval else None,
        "metrics_protected": bool(options.get("metrics_protected", False)),
        "redis_url": options["redis_url"] or None,
        "trusted_proxies": options["trusted_proxies"],
        "password_hash_concurrency": options["password_hash_concurrency"],
        "dev_mode": dev,
    }
    try:
        return Settings(**values)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            message = str(err.get("msg", "")).removeprefix("Value error, ")
            field = ".".join(str(p) for p in err.get("loc", ()))
            messages.append(
                message if message.startswith("--") or not field else f"{field}: {message}"
            )
        raise SettingsError("; ".join(messages)) from None


def _dev_secret() -> str:
    """A development secret kept in ./data so tokens survive a restart of ``make run``."""
    if DEV_SECRET_FILE.exists():
        secret = DEV_SECRET_FILE.read_text().strip()
        if secret:
            return secret
    DEV_SECRET_FILE.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    DEV_SECRET_FILE.write_text(secret + "\n")
    DEV_SECRET_FILE.chmod(0o600)
    return secret


def _banner(settings: Settings) -> None:
    url = settings.listen.url()
    if settings.log_format == "json":
        # Collectors read the output as JSON lines: one line instead of the drawing.
        logger.info("Backup Repository is listening on %s", url)
        return
    lines = [
        "",
        "=" * 78,
        f" Backup Repository is listening on {url}",
        f"   health:    {url}/health      readiness: {url}/ready",
        f"   log in:    curl -s -X POST {url}/api/stable/auth/login \\",
        "                   -H 'Content-Type: application/json' \\",
        '                   -d \'{"username": "admin", "password": "admin"}\'',
    ]
    if settings.dev_mode:
        lines += ["", " Example accounts (from examples/config, for trying out only):"]
        lines += [f"   {login:<18} password {pw:<16} {what}" for login, pw, what in DEV_CREDENTIALS]
        lines += [
            "",
            " WARNING: development mode. The JWT secret was generated and is kept in",
            f" {DEV_SECRET_FILE}; never run like this in production: set --jwt-secret-key",
            " (BR_JWT_SECRET_KEY) and your own configuration folder instead.",
        ]
    lines.append("=" * 78)
    click.echo("\n".join(lines), err=False)


def run_server(settings: Settings) -> None:
    from backup_repository.http.app import create_app
    from backup_repository.http.serve import serve

    if settings.dev_mode:
        logger.warning(
            "DEVELOPMENT MODE: generated JWT secret, example users with published passwords"
        )
    app = create_app(settings, on_started=lambda: _banner(settings))
    asyncio.run(serve(app, settings.listen, settings.log_level))
