"""``backup-repository``: the server's command line, with the reference project's flags.

Every flag also reads a ``BR_*`` environment variable. ``--encode-password`` and
``--hash-jwt`` print and exit. ``--dev`` (what ``make run`` uses) fills in a development
setup: the example configuration, a local SQLite file and storage folder, and a generated
JWT secret.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any, cast

import click
from pydantic import ValidationError

from backup_repository.cli.options import (
    CONTEXT_SETTINGS,
    database_options,
    duration,
    log_level_option,
    option,
    positive_duration,
    provider_options,
    resolve_config_path,
    resolve_db_url,
    resolve_kubeconfig,
    resolve_storage_url,
    storage_options,
)
from backup_repository.cli.preflight import (
    DatabaseFlags,
    StartupError,
    check_dependencies,
    check_port,
)
from backup_repository.logs import configure_logging
from backup_repository.services.passwords import PasswordHasher
from backup_repository.services.ports import ConfigSnapshot
from backup_repository.services.tokens import session_id_of
from backup_repository.settings import Listen, Settings, SettingsError

logger = logging.getLogger("backup_repository")

# The value of a bare --encode-password: ask for the password.
ASK_PASSWORD = "\0ask"  # noqa: S105 (a marker, not a password)
DEV_CONFIG_PATH = Path("examples/config")
DEV_SECRET_FILE = Path("data/.dev-jwt-secret")
DEV_CREDENTIALS = (
    ("admin", "admin", "systemAdmin: everything"),
    ("ci-bot$uploader", "upload-only", "access key: may only upload to example-db"),
    ("ci-bot", "ci-bot-password", "uploads to and downloads from example-db"),
)

# The subcommands, by name: "module:attribute" of their click command. Imported when they
# run (or --help lists them), never by the server: what they use that the server does not
# (the reference importer, its domain rules) stays out of the server's memory.
SUBCOMMANDS = {
    "import-reference": "backup_repository.cli.import_reference:import_reference",
    "notify-test": "backup_repository.cli.notify:notify_test",
    "verify": "backup_repository.cli.verify:verify",
}


class _Commands(click.Group):
    """The server's group: its subcommands are imported when one is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *SUBCOMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = SUBCOMMANDS[cmd_name].partition(":")
        return cast(click.Command, getattr(importlib.import_module(module), attribute))


@click.group(
    cls=_Commands,
    context_settings=CONTEXT_SETTINGS,
    invoke_without_command=True,
    # The reference's server takes flags only; the subcommands are ours.
    subcommand_metavar="[COMMAND [ARGS]...]",
)
@click.pass_context
@option("--listen", env="BR_LISTEN", default=None, help="Address to listen on, e.g. :8080")
@database_options()
@option(
    "-s",
    "--jwt-secret-key",
    env="BR_JWT_SECRET_KEY",
    default=None,
    help="Secret that signs tokens (required)",
)
@option(
    "--jwt-lifetime",
    env="BR_JWT_LIFETIME",
    default="8760h",
    show_default=True,
    callback=duration,
    help="Lifetime of issued tokens",
)
@option(
    "-k",
    "--health-check-key",
    env="BR_HEALTH_CHECK_KEY",
    default="",
    help="Code required by /ready (?code= or Authorization); empty: none",
)
@storage_options()
@option(
    "--storage-health-timeout",
    env="BR_STORAGE_HEALTH_TIMEOUT",
    default="5s",
    show_default=True,
    callback=duration,
    help="Longest time a /ready check may take",
)
@option(
    "--http-upload-timeout",
    env="BR_HTTP_UPLOAD_TIMEOUT",
    default="180m",
    show_default=True,
    callback=duration,
    help="Longest time an upload request may take",
)
@option(
    "--http-download-timeout",
    env="BR_HTTP_DOWNLOAD_TIMEOUT",
    default="180m",
    show_default=True,
    callback=duration,
    help="Longest time a download request may take",
)
@option(
    "--upload-lock-lease",
    env="BR_UPLOAD_LOCK_LEASE",
    default="30s",
    show_default=True,
    callback=duration,
    help="How long the upload lock of a replica that died stays held",
)
@option(
    "--replica-id",
    env="BR_REPLICA_ID",
    default=None,
    help="This replica's name in the lock tables, the same across its restarts and "
    "different from every other replica's; a restart frees the locks its previous life "
    "held [default: the host name]",
)
@option(
    "--rate-default-limit",
    env="BR_RATE_DEFAULT_LIMIT",
    default=100,
    show_default=True,
    type=click.IntRange(min=0),
    help="Requests per second per client IP to everything but logins and health (0: no limit)",
)
@option(
    "--rate-auth-limit",
    env="BR_RATE_AUTH_LIMIT",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Logins and token refreshes per minute per client IP (0: no limit)",
)
@option(
    "--rate-collection-health-limit",
    env="BR_RATE_COLLECTION_HEALTH_LIMIT",
    default=60,
    show_default=True,
    type=click.IntRange(min=0),
    help="Collection health requests per minute per client IP (0: no limit)",
)
@option(
    "--rate-server-health-limit",
    env="BR_RATE_SERVER_HEALTH_LIMIT",
    default=160,
    show_default=True,
    type=click.IntRange(min=0),
    help="/health, /ready and /metrics requests per minute per client IP, together "
    "(Kubernetes probes and Prometheus scrapes count; 0: no limit)",
)
@provider_options("Where users and collections come from")
@log_level_option("info")
@option(
    "--log-format",
    env="BR_LOG_FORMAT",
    default=None,
    type=click.Choice(["json", "console"]),
    help="Log lines as JSON or readable text [default: json; console with --dev]",
)
@option(
    "--verify-interval",
    env="BR_VERIFY_INTERVAL",
    default="0",
    show_default=True,
    callback=duration,
    help="Re-read and check every stored version this often (e.g. 24h); 0: never",
)
@option(
    "--session-retention",
    env="BR_SESSION_RETENTION",
    default="720h",
    show_default=True,
    callback=duration,
    help="Delete sessions expired or revoked longer ago than this; 0: keep them forever",
)
@option(
    "--session-purge-interval",
    env="BR_SESSION_PURGE_INTERVAL",
    default="1h",
    show_default=True,
    callback=positive_duration,
    help="How often one replica purges old sessions (see --session-retention)",
)
@option(
    "--notify-interval",
    env="BR_NOTIFY_INTERVAL",
    default="60s",
    show_default=True,
    callback=duration,
    help="Judge every collection's notification conditions this often, one replica at a "
    "time; 0: no notifications from this replica",
)
@option(
    "--notify-max-age",
    env="BR_NOTIFY_MAX_AGE",
    default="24h",
    show_default=True,
    callback=positive_duration,
    help="Retry an undelivered notification until this long after it was queued",
)
@option(
    "--notify-dispatch-interval",
    env="BR_NOTIFY_DISPATCH_INTERVAL",
    default="2s",
    show_default=True,
    callback=positive_duration,
    help="How often each replica looks for notifications due for delivery",
)
@option(
    "--test-clock-file",
    env="BR_TEST_CLOCK_FILE",
    default=None,
    hidden=True,
    help="Test facility: the clock is real time plus the seconds in this file",
)
@option(
    "--enable-test-facilities",
    env="BR_ENABLE_TEST_FACILITIES",
    is_flag=True,
    default=False,
    hidden=True,
    help="Allow the test facilities (--test-clock-file)",
)
@option(
    "--metrics-public/--metrics-protected",
    env="BR_METRICS_PUBLIC",
    default=None,
    help="Serve /metrics without the health check key, on purpose (or always require it) "
    "[default: require it when --health-check-key is set]",
)
@option(
    "--redis-url",
    env="BR_REDIS_URL",
    default=None,
    help="Redis URL to share rate limits across replicas",
)
@option(
    "--trusted-proxies",
    env="BR_TRUSTED_PROXIES",
    default="",
    help="Comma-separated IPs/CIDRs of proxies whose X-Forwarded-For is believed",
)
@option(
    "--password-hash-concurrency",
    env="BR_PASSWORD_HASH_CONCURRENCY",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Argon2 hashes computed at once (64 MiB each)",
)
@option(
    "--http2/--no-http2",
    env="BR_HTTP2",
    default=False,
    show_default=True,
    help="Also speak cleartext HTTP/2 (h2c) on the port, with bounded header lists",
)
@option(
    "--login-queue-limit",
    env="BR_LOGIN_QUEUE_LIMIT",
    default=None,
    type=click.IntRange(0, 100_000),
    help="Logins that may wait for a hashing thread; more are answered 503 with Retry-After "
    "[default: 32 x --password-hash-concurrency]",
)
@option(
    "--rate-limit-ipv6-prefix",
    env="BR_RATE_LIMIT_IPV6_PREFIX",
    default=64,
    show_default=True,
    type=click.IntRange(32, 128),
    help="Rate limits count an IPv6 client by its network of this many bits (128: per address)",
)
@click.option(
    "--encode-password",
    is_flag=False,
    flag_value=ASK_PASSWORD,
    default=None,
    metavar="[-]",
    help="Print the encoded hash of a password for a Secret and exit; asks for the password "
    "without echoing it, or reads it from standard input with '-'",
)
@click.option("--hash-jwt", default=None, help="Print the session id (SHA-256) of a token and exit")
@option(
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
        password = _password_to_encode(options["encode_password"])
        click.echo(PasswordHasher(1).hash_sync(password))
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
    database = (
        DatabaseFlags.for_parts()
        if any(options[k] for k in ("db_hostname", "db_user", "db_name", "db_password"))
        else DatabaseFlags.for_url()
    )
    try:
        check_port(settings.listen)
        asyncio.run(check_dependencies(settings, database))
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # Nothing was started that needs cleaning up; skipping the interpreter's shutdown
        # keeps the storage client's runtime threads from aborting the process (SIGABRT,
        # seen under load) after the one line was printed, which would lose the exit code.
        os._exit(exc.exit_code)
    run_server(settings)


def build_settings(options: dict[str, Any]) -> Settings:
    dev: bool = options["dev_mode"]
    db_url = resolve_db_url(options)
    jwt_secret = options["jwt_secret_key"] or ""
    if not jwt_secret and dev:
        jwt_secret = _dev_secret()
    config_path = (
        resolve_config_path(options, str(DEV_CONFIG_PATH)) if dev else resolve_config_path(options)
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
        "config_local_path": config_path,
        "namespace": options["namespace"],
        "kubeconfig": resolve_kubeconfig(options),
        "log_level": options["log_level"].lower(),
        "log_format": options.get("log_format") or ("console" if dev else "json"),
        "verify_interval": verify_interval if verify_interval else None,
        "session_retention": options["session_retention"] or None,
        "session_purge_interval": options["session_purge_interval"],
        "metrics_public": options.get("metrics_public"),
        "redis_url": options["redis_url"] or None,
        "trusted_proxies": options["trusted_proxies"],
        "password_hash_concurrency": options["password_hash_concurrency"],
        "http2": bool(options.get("http2", False)),
        "login_queue_limit": options.get("login_queue_limit"),
        "rate_limit_ipv6_prefix": options.get("rate_limit_ipv6_prefix", 64),
        "dev_mode": dev,
    }
    notify_interval = options.get("notify_interval")
    values["notify_interval"] = notify_interval if notify_interval else None
    if options.get("notify_max_age") is not None:
        values["notify_max_age"] = options["notify_max_age"]
    if options.get("notify_dispatch_interval") is not None:
        values["notify_dispatch_interval"] = options["notify_dispatch_interval"]
    values["test_clock_file"] = _test_clock_file(options)
    if options.get("replica_id") is not None:
        values["replica_id"] = options["replica_id"]
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


def _test_clock_file(options: dict[str, Any]) -> Path | None:
    """The test clock's file (docs/notifications.md, "The test clock"), only with the test
    facilities enabled on purpose."""
    path = options.get("test_clock_file")
    if not path:
        return None
    if not options.get("enable_test_facilities"):
        raise SettingsError(
            "BR_TEST_CLOCK_FILE is a test facility that moves the server's clock; it is "
            "refused unless BR_ENABLE_TEST_FACILITIES=1 is set too (never in production): "
            "unset BR_TEST_CLOCK_FILE"
        )
    return Path(path)


def _password_to_encode(value: str) -> str:
    """The password for ``--encode-password``: asked for (no echo, twice) or read from
    standard input (``-``). One given as the value itself is refused: it would stay in the
    shell history and be visible to every user of the machine in ``ps``."""
    if value == ASK_PASSWORD:
        password = click.prompt(
            "Password",
            hide_input=True,
            confirmation_prompt=True,
            err=True,
            default="",
            show_default=False,
        )
    elif value == "-":
        password = sys.stdin.read()
        password = password.removesuffix("\n").removesuffix("\r")
    else:
        click.echo(
            "error: --encode-password: a password given on the command line stays in the shell "
            "history and shows in `ps`; run `backup-repository --encode-password` to be asked "
            'for it, or pipe it in: `printf %s "$PASSWORD" | backup-repository '
            "--encode-password -`",
            err=True,
        )
        sys.exit(2)
    if not password:
        click.echo(
            "error: --encode-password: the password is empty; type a password, or pipe a "
            "non-empty one into `--encode-password -`",
            err=True,
        )
        sys.exit(2)
    return str(password)


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


def _banner(settings: Settings, snapshot: ConfigSnapshot) -> None:
    """In production one line with the URL. In development mode a drawing with the example
    accounts the loaded configuration really has; a password is shown only when the
    account's stored hash is still that of the published example password."""
    url = settings.listen.url()
    if not settings.dev_mode or settings.log_format == "json":
        # Collectors read the output as JSON lines: one line instead of the drawing.
        logger.info("Backup Repository is listening on %s", url)
        return
    accounts = _example_accounts(snapshot)
    lines = [
        "",
        "=" * 78,
        f" Backup Repository is listening on {url}",
        f"   health:    {url}/health      readiness: {url}/ready",
    ]
    known = [(login, pw) for login, pw, _ in accounts if pw is not None]
    if known:
        login, pw = known[0]
        lines += [
            f"   log in:    curl -s -X POST {url}/api/stable/auth/login \\",
            "                   -H 'Content-Type: application/json' \\",
            f'                   -d \'{{"username": "{login}", "password": "{pw}"}}\'',
        ]
    where = settings.config_local_path if settings.provider == "filesystem" else "the cluster"
    if accounts:
        lines += ["", f" Example accounts (in {where}, for trying out only):"]
        lines += [
            f"   {login:<18} password {pw or '(not the example one)':<21} {what}"
            for login, pw, what in accounts
        ]
    else:
        lines += ["", f" No example accounts in {where}: log in with your own users."]
    lines += ["", " WARNING: development mode, never run like this in production."]
    if settings.jwt_secret_key == _stored_dev_secret():
        lines += [
            f" The JWT secret was generated and is kept in {DEV_SECRET_FILE}; set",
            " --jwt-secret-key (BR_JWT_SECRET_KEY) and your own configuration folder instead.",
        ]
    lines.append("=" * 78)
    click.echo("\n".join(lines), err=False)


def _example_accounts(snapshot: ConfigSnapshot) -> list[tuple[str, str | None, str]]:
    """The example accounts present in ``snapshot``: login, the example password when the
    stored hash still matches it (else None), what the account may do."""
    hasher = PasswordHasher(1)
    found: list[tuple[str, str | None, str]] = []
    for login, password, what in DEV_CREDENTIALS:
        user_name, _, key_name = login.partition("$")
        user = snapshot.users.get(user_name)
        if user is None:
            continue
        stored = user.password_hash
        if key_name:
            key = user.access_key(key_name)
            if key is None:
                continue
            stored = key.password_hash
        known = password if hasher.verify_sync(stored, password) else None
        found.append((login, known, what))
    return found


def _stored_dev_secret() -> str | None:
    try:
        return DEV_SECRET_FILE.read_text().strip() or None
    except OSError:
        return None


def run_server(settings: Settings) -> None:
    from backup_repository.http.app import create_app
    from backup_repository.http.serve import serve

    if settings.dev_mode:
        logger.warning("DEVELOPMENT MODE: development defaults, never run like this in production")
    if settings.metrics_public_by_default:
        logger.warning(
            "/metrics is public: it shows every collection's name, versions, bytes and last "
            "upload time to whoever reaches the port. Set --health-check-key "
            "(BR_HEALTH_CHECK_KEY) to require that key, or --metrics-public "
            "(BR_METRICS_PUBLIC=true) to keep it public on purpose"
        )
    app = create_app(settings, on_started=lambda snapshot: _banner(settings, snapshot))
    asyncio.run(serve(app, settings.listen, settings.log_level, http2=settings.http2))
