"""Command-line options the server and its subcommands (``verify``, ``import-reference``)
share: each flag also reads its ``BR_*`` environment variable, and the database, storage
and configuration provider flags are spelled, documented and resolved the same way
everywhere."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from click.core import ParameterSource
from sqlalchemy.engine import make_url

from backup_repository.db.urls import build_postgres_url, normalize_database_url
from backup_repository.domain.units import parse_duration
from backup_repository.settings import SettingsError

DEFAULT_DB_URL: Final = "sqlite:///data/backup-repository.db"
DEFAULT_CONFIG_PATH: Final = "~/.backup-repository"
CONTEXT_SETTINGS: Final[dict[str, Any]] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}
LOG_LEVELS: Final = click.Choice(
    ["debug", "info", "warning", "error", "critical"], case_sensitive=False
)

F = TypeVar("F", bound=Callable[..., Any])


def option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A flag that also reads the environment variable ``env``."""
    kwargs.setdefault("show_envvar", True)
    decorator: Callable[[F], F] = click.option(*names, envvar=env, **kwargs)
    return decorator


def log_level_option(default: str) -> Callable[[F], F]:
    """``--log-level`` (``BR_LOG_LEVEL``) with the command's own default."""
    return option(
        "--log-level", env="BR_LOG_LEVEL", default=default, show_default=True, type=LOG_LEVELS
    )


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """Callback: a Go-style duration (``30s``, ``1h30m``, ``5d``) as a timedelta."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def positive_duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    parsed = duration(ctx, param, value)
    if parsed is None or parsed <= timedelta(0):
        raise click.BadParameter("must be longer than zero")
    return parsed


def _apply(decorators: list[Callable[[F], F]]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def database_options(url_help: str = "Database URL") -> Callable[[F], F]:
    """``--db-url``, or the ``--db-hostname/--db-port/--db-user/--db-password/--db-name``
    set; see :func:`resolve_db_url`."""
    return _apply(
        [
            option(
                "--db-url",
                env="BR_DB_URL",
                default=None,
                help=f"{url_help}: sqlite:///relative.db, sqlite:////absolute.db or "
                f"postgresql://user:pass@host:port/db [default: {DEFAULT_DB_URL}]",
            ),
            option("--db-hostname", env="BR_DB_HOSTNAME", default=None, help="PostgreSQL host"),
            option(
                "--db-port",
                env="BR_DB_PORT",
                default=5432,
                type=click.IntRange(1, 65535),
                show_default=True,
                help="PostgreSQL port",
            ),
            option("--db-user", env="BR_DB_USERNAME", default=None, help="PostgreSQL user"),
            option("--db-password", env="BR_DB_PASSWORD", default=None, help="PostgreSQL password"),
            option("--db-name", env="BR_DB_NAME", default=None, help="PostgreSQL database name"),
        ]
    )


def storage_options(
    url_help: str = "Storage URL", timeout_help: str = "Longest storage read/write of a file"
) -> Callable[[F], F]:
    """``--storage-url`` (see :func:`resolve_storage_url`) and ``--storage-io-timeout``."""
    return _apply(
        [
            option(
                "--storage-url",
                env="BR_STORAGE_DRIVER_URL",
                default=None,
                help=f"{url_help}: file:///path, s3://bucket?endpoint=..., gs://bucket, "
                "azblob://container [default: file://<working dir>/data/storage]",
            ),
            option(
                "--storage-io-timeout",
                env="BR_STORAGE_IO_TIMEOUT",
                default="2h",
                show_default=True,
                callback=positive_duration,
                help=timeout_help,
            ),
        ]
    )


def provider_options(provider_help: str) -> Callable[[F], F]:
    """``--provider`` and what each provider reads: ``--config-local-path`` (filesystem),
    ``--namespace`` and ``--kubeconfig`` (kubernetes); see :func:`resolve_config_path` and
    :func:`resolve_kubeconfig`."""
    return _apply(
        [
            option(
                "-p",
                "--provider",
                env="BR_CONFIG_PROVIDER",
                default="filesystem",
                show_default=True,
                type=click.Choice(["filesystem", "kubernetes"]),
                help=provider_help,
            ),
            option(
                "--kubeconfig",
                env="BR_KUBECONFIG",
                default=None,
                help="kubeconfig file for --provider=kubernetes [default: in-cluster service "
                "account, then $KUBECONFIG or ~/.kube/config]",
            ),
            option(
                "--config-local-path",
                env="BR_CONFIG_LOCAL_PATH",
                default=None,
                help=f"Configuration folder for --provider=filesystem "
                f"[default: {DEFAULT_CONFIG_PATH}]",
            ),
            option(
                "-n",
                "--namespace",
                env="BR_NAMESPACE",
                default="backup-repository",
                show_default=True,
                help="Namespace of the objects",
            ),
        ]
    )


def resolve_config_path(options: dict[str, Any], default: str = DEFAULT_CONFIG_PATH) -> Path:
    """The configuration folder of ``--config-local-path``, else ``default``."""
    return Path(options["config_local_path"] or default).expanduser()


def resolve_kubeconfig(options: dict[str, Any]) -> Path | None:
    kubeconfig = options.get("kubeconfig")
    return Path(kubeconfig).expanduser() if kubeconfig else None


def resolve_db_url(options: dict[str, Any]) -> str:
    """The database URL from ``--db-url`` or the ``--db-hostname``/``--db-*`` set."""
    postgres_parts = [options[k] for k in ("db_hostname", "db_user", "db_name", "db_password")]
    if not any(postgres_parts):
        return str(options["db_url"] or DEFAULT_DB_URL)
    if options["db_url"]:
        raise SettingsError("give either --db-url or the --db-hostname/--db-* set, not both")
    if not options["db_hostname"] or not options["db_name"]:
        raise SettingsError("--db-hostname and --db-name are both needed for PostgreSQL")
    return build_postgres_url(
        options["db_hostname"],
        options["db_port"],
        options["db_user"] or "",
        options["db_password"] or "",
        options["db_name"],
    )


def resolve_storage_url(options: dict[str, Any]) -> str:
    return str(options["storage_url"] or (Path.cwd() / "data" / "storage").as_uri())


def missing_sqlite_file(db_url: str) -> str | None:
    """The path of a SQLite database file that does not exist (a command that only reads
    would create it empty: most likely a wrong path), else None."""
    url = make_url(normalize_database_url(db_url))
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return None if Path(database).expanduser().exists() else database


def inherit_group_options(
    ctx: click.Context, options: dict[str, Any], names: tuple[str, ...]
) -> None:
    """For a subcommand that repeats some of the server's flags: take each of ``names``
    from the parent command (``backup-repository --flag sub``) when it was given there
    and not to the subcommand itself."""
    parent = ctx.parent
    if parent is None:
        return
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    for name in names:
        if ctx.get_parameter_source(name) in given:
            continue
        if name in parent.params and parent.get_parameter_source(name) in given:
            options[name] = parent.params[name]
