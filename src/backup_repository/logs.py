"""Structured logs: structlog over the standard library.

Every module logs with ``logging.getLogger(__name__)``; one handler on the root logger
renders each record as structlog's processors do:

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

A line of the standard library (every line of the server's own code) without an exception
or a stack takes a short path, :func:`plain_event`: the event dict structlog's processors
would build, made in one function from the record as it is (structlog's formatter copies the
record first), then redacted and rendered (JSON by one encoder built once; console lines
without colours by :func:`render_console`, the same bytes as structlog's ConsoleRenderer).
Every other record goes through structlog's whole chain (:func:`structlog_formatter`), which
stays the reference: ``tests/unit/test_logs.py`` compares both, byte for byte. The regular
expression on field names runs once per name (:func:`secret_name` keeps the answers).

structlog itself (about 1 MiB of resident memory with its console renderer and traceback
modules, which its package always imports) is imported at the first record the short path
does not take (an exception, a stack), or at once for coloured console lines; a server that
logs no exception never loads it. Fields bound with :func:`bind_fields` are context
variables named as structlog names its own (``structlog_<key>``), so structlog's chain finds
them too; structlog's own loggers (``structlog.get_logger()``) are routed to the same
handler once structlog is loaded. The server's modules log with ``logging.getLogger``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    import structlog
    from structlog.typing import EventDict, Processor, WrappedLogger


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


class _StructlogUse:
    """Whether :func:`configure_logging` routes structlog's own loggers to its handler:
    done when it runs if structlog is loaded, else when :func:`_structlog` loads it."""

    wanted = False


def _structlog() -> None:
    """Load structlog (without rich) for the records and renderers that need it, and route
    its own loggers as :func:`configure_logging` asked, the first time it is loaded."""
    loaded = "structlog" in sys.modules
    _import_structlog_without_rich()
    if not loaded and _StructlogUse.wanted:
        _configure_structlog()


# The prefix of the names of structlog's context variables
# (``structlog.contextvars.STRUCTLOG_KEY_PREFIX``): its chain merges every variable so named.
STRUCTLOG_KEY_PREFIX = "structlog_"

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
    # Auth schemes are case-insensitive ("BEARER x" is a credential too), as is _BEARER.
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    # A query parameter starts with ? or & and has an =.
    if "=" in text and ("?" in text or "&" in text):
        text = _SECRET_QUERY.sub(rf"\1{REDACTED}", text)
    return text


# Values that hold no text: left as they are, without the isinstance checks below.
_SCALARS = frozenset({int, float, bool, type(None)})


def _redact_value(value: Any, depth: int = 0) -> Any:
    if type(value) in _SCALARS:
        return value
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


@functools.lru_cache(maxsize=1024)
def secret_name(key: str) -> bool:
    """Whether a field named ``key`` holds a secret (:data:`SENSITIVE_KEY`). The names of
    fields come from the code, a few dozen: each is searched once, not on every line."""
    return SENSITIVE_KEY.search(key) is not None


def _sensitive(key: object, value: object) -> bool:
    return isinstance(key, str) and value not in (None, "", False) and secret_name(key)


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: secrets out of every field and every text. (What
    :func:`_sensitive` and :func:`_redact_value` do, unrolled: it runs on every field of
    every line.)"""
    for key, value in list(event_dict.items()):
        if key in _INTERNAL:
            continue
        if isinstance(key, str) and secret_name(key) and value not in (None, "", False):
            event_dict[key] = REDACTED
        elif type(value) is str:
            event_dict[key] = redact_text(value)
        elif type(value) not in _SCALARS:
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
    _structlog()
    import structlog

    return [
        merge_bound_fields,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def structlog_formatter(fmt: LogFormat, *, colors: bool = False) -> logging.Formatter:
    """structlog's whole chain: the shared processors, the exception as a string, the
    redaction, then JSON or console rendering. :func:`build_formatter` takes it for the
    records its short path does not (exceptions, stacks, lines of structlog's loggers)."""
    _structlog()
    import structlog

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
        renderer = _console_renderer(colors)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[*final, renderer],
    )


def _console_renderer(colors: bool) -> structlog.dev.ConsoleRenderer:
    _structlog()
    import structlog

    return structlog.dev.ConsoleRenderer(
        colors=colors, exception_formatter=structlog.dev.plain_traceback
    )


# The attributes of every LogRecord: the others of a record are its ``extra`` fields (as
# structlog's ExtraAdder tells them apart).
_RECORD_KEYS = frozenset(logging.LogRecord("name", 0, "pathname", 0, "msg", (), None).__dict__)
# What structlog's formatter keeps in the event dict while its chain runs, removed before
# rendering (a field of the same name is removed with it).
_META = frozenset({"_record", "_from_structlog"})
# Fields bound in the context that send a line through structlog's whole chain (they would
# be taken for the exception and the stack).
_WHOLE_CHAIN = frozenset({"exc_info", "stack_info"})
_PREFIX_LENGTH = len(STRUCTLOG_KEY_PREFIX)
# structlog's name of a record's level (add_log_level of its lowercase name), for the usual
# ones; the others are asked of add_log_level.
_LEVELS = {name: name.lower() for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}


def plain_event(record: logging.LogRecord) -> EventDict | None:
    """The event dict structlog's chain makes of ``record`` up to the redaction, for a
    record of the standard library without an exception or a stack; None for the others.

    The same steps, in the same order, as the chain's: the message, the fields bound in the
    context (``request_id``), ``level``, ``logger``, the ``extra`` fields, ``timestamp``."""
    fields = record.__dict__
    if record.exc_info or record.stack_info or "_logger" in fields or "_name" in fields:
        return None
    event: EventDict = {"event": record.getMessage()}
    # The fields of bind_fields first, then any other variable of structlog's context, as
    # the chain's first two processors merge them.
    for key, var in _FIELD_VARS.items():
        value = var.get()
        if value is not Ellipsis:
            if key in _WHOLE_CHAIN:
                return None
            if key not in _META:
                event.setdefault(key, value)
    context = contextvars.copy_context()
    for var in context:
        name = var.name
        if name.startswith(STRUCTLOG_KEY_PREFIX):
            value = context[var]
            if value is Ellipsis:
                continue
            key = name[_PREFIX_LENGTH:]
            if key in _WHOLE_CHAIN:
                return None
            if key not in _META:
                event.setdefault(key, value)
    level = _LEVELS.get(record.levelname)
    if level is None:
        _structlog()
        import structlog

        level = structlog.stdlib.add_log_level(None, record.levelname.lower(), {})["level"]
    event["level"] = level
    event["logger"] = record.name
    for key, value in fields.items():
        if key not in _RECORD_KEYS and key not in _META:
            event[key] = value
    event.pop("color_message", None)
    event["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
    return event


# What the console renderer writes itself (the exception, the stack) when a field has it.
_CONSOLE_OWN = ("exception", "exc_info", "stack")
# Characters for which the console shows a text as its repr (quoted), as structlog does.
_CONSOLE_QUOTED = frozenset({" ", "\t", "=", "\r", "\n", '"', "'"})
_LEVEL_WIDTH = len("exception")  # the longest level name structlog knows
_EVENT_WIDTH = 30


def _console_value(value: object) -> str:
    if isinstance(value, str):
        return repr(value) if _CONSOLE_QUOTED.intersection(value) else value
    return repr(value)


def render_console(event: EventDict) -> str | None:
    """The line structlog's ConsoleRenderer without colours makes of ``event`` (timestamp,
    level, message padded, ``[logger]``, then the other fields sorted as ``key=value``), or
    None when it has an exception or a stack to write (the renderer then does it)."""
    for key in _CONSOLE_OWN:
        if key in event:
            return None
    parts: list[str] = []
    if "timestamp" in event:
        parts.append(str(event.pop("timestamp")))
    if "level" in event:
        level = event.pop("level")
        parts.append(f"[{level}{' ' * (_LEVEL_WIDTH - len(level))}]")
    if "event" in event:
        text = str(event.pop("event"))
        parts.append(text + " " * (_EVENT_WIDTH - len(text)))
    for key in ("logger", "logger_name"):
        if key in event:
            parts.append(f"[{event.pop(key)}]")
    parts.extend(f"{key}={_console_value(event[key])}" for key in sorted(event))
    return " ".join(part for part in parts if part).rstrip(" ")


class _LineFormatter(logging.Formatter):
    """The formatter of the root handler: a plain record (:func:`plain_event`) is redacted
    and rendered here; any other goes through structlog's whole chain."""

    def __init__(self, fmt: LogFormat, colors: bool) -> None:
        super().__init__()
        self._fmt: LogFormat = fmt
        self._colors = colors
        # structlog's chain, built for the first record that needs it (structlog loaded then).
        self._whole_chain: logging.Formatter | None = None
        self._render: Callable[[EventDict], str | None]
        if fmt == "json":
            self._render = _render_json
        elif colors:
            renderer = _console_renderer(colors)
            self._render = lambda event: renderer(None, "", event)
        else:
            self._render = render_console

    def format(self, record: logging.LogRecord) -> str:
        event = plain_event(record)
        if event is not None:
            line = self._render(redact(None, "", event))
            if line is not None:
                return line
        if self._whole_chain is None:
            self._whole_chain = structlog_formatter(self._fmt, colors=self._colors)
        return self._whole_chain.format(record)


# structlog's JSONRenderer(default=str) is json.dumps(event, default=str): the same encoder,
# built once instead of on every line.
_JSON = json.JSONEncoder(default=str)


def _render_json(event: EventDict) -> str:
    event["message"] = event.pop("event")
    return _JSON.encode(event)


def build_formatter(fmt: LogFormat, *, colors: bool = False) -> logging.Formatter:
    """The formatter of the root handler: JSON or console lines, redacted; the same bytes as
    structlog's whole chain (:func:`structlog_formatter`), with less work per line."""
    return _LineFormatter(fmt, colors)


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

    _StructlogUse.wanted = True
    if "structlog" in sys.modules:
        _configure_structlog()

    for name in _ALWAYS_QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    for name in _QUIET_UNLESS_DEBUG:
        logging.getLogger(name).setLevel(
            logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
        )


def _configure_structlog() -> None:
    """structlog's own loggers: filtered by the standard library's levels, then handed to
    the root handler (the same formatter and redaction as every other line)."""
    import structlog

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            merge_bound_fields,
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


# What the standard library says of a record whose caller it did not look up.
_NO_FILE = "(unknown file)"
_NO_FUNCTION = "(unknown function)"


def log_fields(
    logger: logging.Logger,
    level: int,
    message: str,
    args: tuple[object, ...],
    fields: Mapping[str, object],
) -> None:
    """``logger.log(level, message, *args, extra=fields)`` without looking up the calling
    file and line (the standard library walks up the stack for them on every line, and no
    output of :func:`configure_logging` shows them): for the lines written on every request,
    the access line and the audit lines. Nothing is made when ``level`` is not enabled."""
    if logger.isEnabledFor(level):
        logger.handle(
            logger.makeRecord(
                logger.name, level, _NO_FILE, 0, message, args, None, _NO_FUNCTION, fields
            )
        )


# The context variable of each field bound here, made once per name.
_FIELD_VARS: dict[str, contextvars.ContextVar[Any]] = {}


def bind_fields(**fields: Any) -> dict[str, contextvars.Token[Any]]:
    """Every log line from now on carries ``fields``, until ``reset_fields(**tokens)`` (in
    the same task) gives them their previous values; returns the tokens. Two calls, not a
    context manager: the request id layer runs them on every request. What structlog's
    ``bind_contextvars`` does, without loading structlog: each field is a context variable
    named ``structlog_<key>`` (unset: ``...``), which structlog's chain merges as its own."""
    tokens: dict[str, contextvars.Token[Any]] = {}
    for key, value in fields.items():
        var = _FIELD_VARS.get(key)
        if var is None:
            var = _FIELD_VARS[key] = contextvars.ContextVar(
                STRUCTLOG_KEY_PREFIX + key, default=Ellipsis
            )
        tokens[key] = var.set(value)
    return tokens


def reset_fields(**tokens: contextvars.Token[Any]) -> None:
    """Give the fields of ``bind_fields``' tokens the values they had before it."""
    for key, token in tokens.items():
        _FIELD_VARS[key].reset(token)


def merge_bound_fields(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """The processor that adds the fields of :func:`bind_fields` (before structlog's
    ``merge_contextvars``, so that they win over a variable of the same name bound through
    structlog, as on the short path)."""
    for key, var in _FIELD_VARS.items():
        value = var.get()
        if value is not Ellipsis:
            event_dict.setdefault(key, value)
    return event_dict


def granian_log_config(level: str) -> dict[str, Any]:
    """``log_dictconfig`` for granian's embedded server: its loggers keep no handler of
    their own and propagate to the root handler above, so its lines have our format."""
    loggers: MutableMapping[str, Any] = {
        name: {"handlers": [], "propagate": True, "level": level.upper()}
        for name in ("_granian", "granian", "granian.access")
    }
    return {"version": 1, "disable_existing_loggers": False, "loggers": dict(loggers)}
