"""Structured logs: structlog over the standard library.

Every module logs with ``logging.getLogger(__name__)`` (or ``structlog.get_logger()``); one
handler on the root logger renders each record through structlog's processors:

- ``json``: one JSON object per line, for log collectors: ``timestamp`` (ISO 8601, UTC),
  ``level``, ``logger``, ``message``, ``request_id`` inside a request, the ``extra={...}``
  fields of the call as keys of their own, and ``exception`` (the traceback as a string).
- ``console``: the same fields as readable lines (coloured when the stream is a terminal),
  what ``make run`` shows.

Secrets never reach the output: :func:`redact` runs last before rendering, on every line.
It replaces the value of any field whose name says it holds a secret (``password``,
``token``, ``secret``, ``authorization``...), and inside every text it replaces JWT-shaped
strings, ``Bearer`` credentials, the password of URLs (``scheme://user:password@``) and
URL query parameters named like secrets (``?secret_access_key=``, ``?code=``).
This is defence in depth: the code does not log secrets in the first place.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO


def _import_structlog_without_rich() -> None:
    """Import structlog with ``rich`` out of its sight. structlog.dev imports rich (and
    through it pygments: about 100 modules, 5 MiB of resident memory) when it is installed,
    for an exception formatter the server never uses (the console renderer below is given
    ``plain_traceback``). rich stays importable for whoever asks for it afterwards."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" fails
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402
from structlog.typing import EventDict, Processor, WrappedLogger  # noqa: E402

LogFormat = Literal["json", "console"]

REDACTED = "[REDACTED]"

# Names of fields whose value is a secret, whatever it looks like.
SENSITIVE_KEY = re.compile(
    r"passw(or)?d|passwd|pwd|secret|token|authori[sz]ation|jwt|cookie|credential"
    r"|api_?key|private_?key|health_?check_?key|health_?key|signature",
    re.IGNORECASE,
)
# Secrets recognisable by their shape in any text.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
# A query parameter of a URL whose name says it carries a secret (?secret_access_key=...,
# ?code=..., X-Amz-Signature=...).
_SECRET_QUERY = re.compile(
    r"([?&](?:[^=&\s]*(?:passw|secret|token|key|signature|credential|code)[^=&\s]*)=)"
    r"[^&\s\"'#]+",
    re.IGNORECASE,
)

# Keys structlog and the stdlib bridge keep for themselves; never rewritten.
_INTERNAL = frozenset({"_record", "_from_structlog", "exc_info", "stack_info"})
# How deep nested extra values (dicts, lists) are searched.
_MAX_DEPTH = 4

# Libraries that say too much below WARNING, even when debugging the server (the database
# drivers and HTTP clients would log every statement or request, parameters included).
_ALWAYS_QUIET = (
    "aiosqlite",
    "asyncio",
    "httpx",
    "httpcore",
    "urllib3",
    "kubernetes",
    "multipart",
    "python_multipart",
    "watchfiles",
)
# Alembic announces every plugin and context at INFO; its own summary line suffices, but
# with --log-level=debug everything is shown.
_QUIET_UNLESS_DEBUG = ("alembic",)


def redact_text(text: str) -> str:
    """``text`` with JWT-shaped strings, Bearer/Basic credentials and URL passwords
    replaced."""
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "earer" in text or "asic" in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    if "=" in text:
        text = _SECRET_QUERY.sub(rf"\1{REDACTED}", text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _sensitive(k, v) else _redact_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(item, depth + 1) for item in value]
    return value


def _sensitive(key: object, value: object) -> bool:
    return (
        isinstance(key, str)
        and value not in (None, "", False)
        and SENSITIVE_KEY.search(key) is not None
    )


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: secrets out of every field and every text."""
    for key, value in list(event_dict.items()):
        if key in _INTERNAL:
            continue
        if _sensitive(key, value):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def _drop_color_message(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    # Some libraries put a second, ANSI-coloured copy of the message in ``extra``.
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    """Run on every line, from structlog or from the standard library."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def build_formatter(fmt: LogFormat, *, colors: bool = False) -> logging.Formatter:
    """The formatter of the root handler: the shared processors, the exception as a string,
    the redaction, then JSON or console rendering."""
    renderer: Processor
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        structlog.processors.StackInfoRenderer(),
        redact,
    ]
    if fmt == "json":
        final.append(structlog.processors.EventRenamer("message"))
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[*final, renderer],
    )


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (recognised when called again)."""


# Lines that say nothing an operator can act on, by logger: dropped.
_NOISE = {("_granian", "Embedded server is experimental!")}


def _not_noise(record: logging.LogRecord) -> bool:
    return not isinstance(record.msg, str) or (record.name, record.msg) not in _NOISE


def configure_logging(
    level: str = "info", fmt: LogFormat = "json", stream: TextIO | None = None
) -> None:
    """Route every log record, from any library, through one structlog pipeline to
    ``stream`` (standard error by default). May be called again; it replaces its handler."""
    target = stream if stream is not None else sys.stderr
    numeric = logging.getLevelNamesMapping()[level.upper()]
    colors = fmt == "console" and hasattr(target, "isatty") and target.isatty()

    handler = _Handler(target)
    handler.setFormatter(build_formatter(fmt, colors=colors))
    handler.addFilter(_not_noise)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, _Handler):
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    for name in _ALWAYS_QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    for name in _QUIET_UNLESS_DEBUG:
        logging.getLogger(name).setLevel(
            logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
        )


# ``tokens = bind_fields(request_id=...)``: every log line from then on carries the fields,
# until ``reset_fields(**tokens)`` (in the same task) gives them their previous values. Two
# calls, not a context manager: the request id layer runs them on every request (structlog is
# reached through this module, which imports it without rich).
bind_fields = structlog.contextvars.bind_contextvars
reset_fields = structlog.contextvars.reset_contextvars


def granian_log_config(level: str) -> dict[str, Any]:
    """``log_dictconfig`` for granian's embedded server: its loggers keep no handler of
    their own and propagate to the root handler above, so its lines have our format."""
    loggers: MutableMapping[str, Any] = {
        name: {"handlers": [], "propagate": True, "level": level.upper()}
        for name in ("_granian", "granian", "granian.access")
    }
    return {"version": 1, "disable_existing_loggers": False, "loggers": dict(loggers)}
