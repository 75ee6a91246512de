"""The log pipeline (logs.py): JSON and console lines, request ids, extra fields,
exceptions, and the redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from backup_repository import logs
from backup_repository.logs import (
    REDACTED,
    LogFormat,
    build_formatter,
    configure_logging,
    granian_log_config,
    redact_text,
    structlog_formatter,
)
from log_scan import scan_logs

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiIsImV4cCI6MTcwMH0"
    ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger writing JSON into a buffer; the test set-up restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("debug", "json", stream=buffer)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_a_json_line_has_the_standard_fields(stream: io.StringIO) -> None:
    logging.getLogger("backup_repository.test").info("stored %s v%d", "db", 3)
    (line,) = lines(stream)
    assert line["message"] == "stored db v3"
    assert line["level"] == "info"
    assert line["logger"] == "backup_repository.test"
    assert line["timestamp"].endswith("Z")
    assert "T" in line["timestamp"]
    assert "request_id" not in line


def test_extra_fields_become_keys(stream: io.StringIO) -> None:
    logging.getLogger("backup_repository.audit").info(
        "audit", extra={"action": "login", "outcome": "success", "size": 12, "stored": True}
    )
    (line,) = lines(stream)
    assert line["message"] == "audit"
    assert (line["action"], line["outcome"], line["size"], line["stored"]) == (
        "login",
        "success",
        12,
        True,
    )


def test_the_request_id_bound_in_the_context_is_on_every_line(stream: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        logging.getLogger("a").warning("one")
        structlog.get_logger("b").info("two", collection="db")
    logging.getLogger("a").warning("after")
    first, second, after = lines(stream)
    assert first["request_id"] == "req-1"
    assert second["request_id"] == "req-1"
    assert second["collection"] == "db"
    assert second["logger"] == "b"
    assert "request_id" not in after


def test_an_exception_is_one_string_field(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("unhandled error on GET /x")
    (line,) = lines(stream)
    assert line["level"] == "error"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom" in line["exception"]
    assert len(stream.getvalue().splitlines()) == 1


def test_sensitive_fields_are_redacted_whatever_their_value(stream: io.StringIO) -> None:
    logging.getLogger("x").info(
        "fields",
        extra={
            "password": "hunter2",
            "db_password": "pg-secret",
            "jwt_secret_key": "signing-secret",
            "Authorization": "Bearer abc",
            "refresh_token": "opaque",
            "nested": {"user": "u", "password": "inner", "list": ["x", JWT]},
            "user": "admin",
            "session": "0123456789ab",
        },
    )
    (line,) = lines(stream)
    for key in ("password", "db_password", "jwt_secret_key", "Authorization", "refresh_token"):
        assert line[key] == REDACTED, key
    assert line["nested"] == {"user": "u", "password": REDACTED, "list": ["x", REDACTED]}
    assert line["user"] == "admin"
    assert line["session"] == "0123456789ab"
    for secret in ("hunter2", "pg-secret", "signing-secret", "opaque", "inner", JWT[:20]):
        assert secret not in stream.getvalue()


def test_secrets_inside_messages_and_tracebacks_are_redacted(stream: io.StringIO) -> None:
    log = logging.getLogger("x")
    log.info("token %s issued", JWT)
    log.info("connecting to %s", "postgresql://postgres:SECRET@db:5432/app")
    log.info("header Authorization: Bearer %s", "opaque-token-value")
    log.info("storage s3://bucket?endpoint=http://s3&secret_access_key=AWS-SECRET&region=x")
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    for secret in (JWT[:30], "SECRET@", "opaque-token-value", "AWS-SECRET"):
        assert secret not in text, secret
    messages = [line["message"] for line in lines(stream)]
    assert messages[1] == f"connecting to postgresql://postgres:{REDACTED}@db:5432/app"
    assert "region=x" in messages[3]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR", "Basic", "BASIC"])
def test_credentials_are_redacted_whatever_the_case_of_their_scheme(scheme: str) -> None:
    # HTTP auth schemes are case-insensitive: "BEARER <token>" is as secret as "Bearer <token>".
    text = f"header Authorization: {scheme} opaque-token-value"
    assert redact_text(text) == f"header Authorization: {scheme} {REDACTED}"


def test_redact_text_leaves_ordinary_text_alone() -> None:
    text = "stored db v3 (12 bytes) for admin from 10.0.0.1; version=3 key=value"
    assert redact_text(text) == text
    assert redact_text("/ready?code=abc&x=1") == f"/ready?code={REDACTED}&x=1"


def test_console_lines_are_readable(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    try:
        configure_logging("info", "console", stream=buffer)
        with structlog.contextvars.bound_contextvars(request_id="abc"):
            logging.getLogger("backup_repository.x").info(
                "login of %r", "admin", extra={"password": "pw"}
            )
        logging.getLogger("backup_repository.x").debug("hidden at info")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()
    text = buffer.getvalue()
    assert "login of 'admin'" in text
    assert "request_id=abc" in text
    assert "backup_repository.x" in text
    assert "\x1b[" not in text  # not a terminal: no colours
    assert "pw" not in text.replace("password", "")
    assert "hidden at info" not in text
    assert not text.lstrip().startswith("{")


def test_configuring_again_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream=stream)
    configure_logging("info", "json", stream=stream)
    logging.getLogger("x").info("once")
    assert [line["message"] for line in lines(stream)] == ["once"]


def test_noisy_libraries_stay_quiet_but_alembic_follows_debug(stream: io.StringIO) -> None:
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.DEBUG
    configure_logging("info", "json", stream=stream)
    assert logging.getLogger("alembic.runtime.migration").getEffectiveLevel() == logging.WARNING


def test_granian_loggers_propagate_to_the_root_handler(stream: io.StringIO) -> None:
    config = granian_log_config("info")
    logging.config.dictConfig(config)
    logging.getLogger("_granian").info("Listening at: http://127.0.0.1:1")
    (line,) = lines(stream)
    assert line["logger"] == "_granian"
    assert line["message"].startswith("Listening at")


def test_the_end_of_run_scan_finds_secrets_and_tokens(tmp_path: Path) -> None:
    clean = tmp_path / "clean.log"
    clean.write_text('{"message": "login of \'admin\' from 127.0.0.1"}\n')
    leaky = tmp_path / "leaky.log"
    leaky.write_text(f"secret s3cr3t-signing-key and the password hunter2-long {JWT}\n")
    problems = scan_logs(
        [clean, leaky, tmp_path / "gone.log"], "s3cr3t-signing-key", {"hunter2-long", "x"}
    )
    (problem,) = problems
    assert problem.startswith(str(leaky))
    assert "the JWT secret" in problem
    assert "the password hun..." in problem
    assert "a token (eyJhbGciOiJI...)" in problem


def test_granians_experimental_notice_is_dropped(stream: io.StringIO) -> None:
    logging.getLogger("_granian").warning("Embedded server is experimental!")
    logging.getLogger("_granian").warning("Killing worker-1")
    assert [line["message"] for line in lines(stream)] == ["Killing worker-1"]


# -- the short path: the same bytes as structlog's whole chain ---------------------------------

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
ACCESS_FIELDS = {
    "method": "POST",
    "route": "/api/stable/repository/collection/{collectionId}/version",
    "status": 200,
    "duration_ms": 812.4,
    "bytes": 402,
    "client_ip": "10.1.2.3",
}
AUDIT_FIELDS = {
    "action": "upload",
    "outcome": "success",
    "user": "admin",
    "access_key": "",
    "client_ip": "10.1.2.3",
    "collection": "db",
    "version": 3,
    "size": 1048576,
    "reason": "",
    "session": "0123456789ab",
    "detail": "",
    "at": "2026-11-27T03:00:12.345678Z",
    "stored": True,
}


class _Shown:
    """A value JSON cannot encode: shown by str(), and by repr() on the console."""

    def __str__(self) -> str:
        return "shown as str"

    def __repr__(self) -> str:
        return "<shown as repr>"


FORMATS: list[tuple[LogFormat, bool]] = [("json", False), ("console", False), ("console", True)]


class _Lines(logging.Handler):
    """Formats each record when it is logged (in the context of the call, as the root
    handler does), by the short path and by structlog's whole chain, in every format."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.formatters = [
            (build_formatter(fmt, colors=colors), structlog_formatter(fmt, colors=colors))
            for fmt, colors in FORMATS
        ]
        self.records: list[logging.LogRecord] = []
        self.lines: dict[tuple[LogFormat, bool], list[tuple[str, str]]] = {
            key: [] for key in FORMATS
        }
        self.changed: list[object] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for key, (fast, whole) in zip(FORMATS, self.formatters, strict=True):
            before = dict(record.__dict__)
            line = fast.format(record)
            if record.__dict__ != before:
                self.changed.append(record.msg)
            self.lines[key].append((line, whole.format(record)))


@pytest.fixture
def formatted() -> Iterator[_Lines]:
    """The root logger's only handler is a :class:`_Lines`."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    keeper = _Lines()
    for handler in handlers:
        root.removeHandler(handler)
    root.addHandler(keeper)
    root.setLevel(logging.DEBUG)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        yield keeper
    finally:
        root.removeHandler(keeper)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def _log_everything() -> None:
    """Representative lines: the access and audit lines, secrets of every kind, values of
    every type, odd field names, every level, exceptions and stacks, structlog's own."""
    access = logging.getLogger("backup_repository.access")
    audit = logging.getLogger("backup_repository.audit")
    log = logging.getLogger("backup_repository.services.auth")
    with structlog.contextvars.bound_contextvars(request_id="5b0e3c0f6f0a4b4fa1f1c4a9b0de1e21"):
        access.info("%s %s %s", "POST", ACCESS_FIELDS["route"], 200, extra=ACCESS_FIELDS)
        access.debug("%s %s %s", "GET", "/ready", 200, extra={**ACCESS_FIELDS, "route": "/ready"})
        audit.info("audit", extra=AUDIT_FIELDS)
        audit.error("audit", extra={**AUDIT_FIELDS, "stored": False, "error": "OperationalError"})
        log.info("login of %r from %s, session %s", "admin", "10.1.2.3", "3f1c9a0b7d2e")
        log.warning("token %s issued", JWT)
        log.info("connecting to %s", "postgresql://postgres:SECRET@db:5432/app")
        log.info("header Authorization: Bearer %s", "opaque-token-value")
        log.info("header authorization: BASIC dXNlcjpwYXNzd29yZA==")
        log.info("storage s3://b?endpoint=http://s3&secret_access_key=AWS-SECRET&region=x")
        log.info("/ready?code=abc&x=1 and key=value without a query")
        log.info(
            "fields",
            extra={
                "password": "hunter2",
                "db_password": "pg-secret",
                "jwt_secret_key": "signing-secret",
                "Authorization": "Bearer abc",
                "refresh_token": "opaque",
                "api_key": 0,
                "health_key": None,
                "cookie": "",
                "token": False,
                "nested": {"user": "u", "password": "inner", "list": ["x", JWT, ("t", 1)]},
                "deep": {"a": {"b": {"c": {"d": {"password": "deepest"}}}}},
                "url": "https://user:pw@example.com/path?signature=abc",
                "spaces": "a b",
                "quotes": 'it\'s "quoted"',
                "equals": "k=v",
                "newline": "one\ntwo",
                "tab": "a\tb",
                "unicode": "ünïcödé ✓",
                "empty": "",
                "number": 12,
                "float": 0.1,
                "big": 10**20,
                "flag": True,
                "nothing": None,
                "items": [1, "two", None],
                "pair": (1, 2),
                "shown": _Shown(),
                "color_message": "\x1b[1mcoloured\x1b[0m",
                "timestamp": "overridden",
                "logger_name": "named",
                "_record": "structlog's",
                "event": "the extra's event",
            },
        )
        log.info("%s", "a message longer than the thirty columns of the console's event")
        log.info("short")
        log.info("")
        log.debug("debug")
        log.critical("critical")
        log.log(25, "a level without a name")
        log.info("100%% sure, %d%%", 5)
        with structlog.contextvars.bound_contextvars(collection="db", attempt=2):
            log.info("more bound fields")
        with structlog.contextvars.bound_contextvars(
            event="bound", _record="bound", logger="bound", timestamp="bound"
        ):
            log.info("bound fields named as the chain's own")
        try:
            raise ValueError(f"bad token {JWT}")
        except ValueError:
            log.exception("failed")
        log.info("with a stack", stack_info=True)
        log.info("the exception as a field", extra={"exception": "text"})
        structlog.get_logger("backup_repository.structlog").info("from structlog", size=3)
    log.info("outside a request")


def _same_timestamps(line: str) -> str:
    return TIMESTAMP.sub("2026-11-27T03:00:12.345678Z", line)


@pytest.mark.parametrize(("fmt", "colors"), FORMATS)
def test_the_short_path_writes_the_bytes_of_structlogs_whole_chain(
    formatted: _Lines, fmt: LogFormat, colors: bool
) -> None:
    _log_everything()
    assert len(formatted.records) == 26
    assert formatted.changed == []  # the record is left as it was, for other handlers
    for record, (line, expected) in zip(
        formatted.records, formatted.lines[fmt, colors], strict=True
    ):
        if record.stack_info:  # structlog writes the stack of the call that formats
            line, expected = (
                text.split("Stack (most recent call last)")[0] for text in (line, expected)
            )
        assert _same_timestamps(line) == _same_timestamps(expected), record.msg


def test_an_access_line_as_written(formatted: _Lines) -> None:
    _log_everything()
    json_line, _ = formatted.lines["json", False][0]
    assert _same_timestamps(json_line) == (
        '{"request_id": "5b0e3c0f6f0a4b4fa1f1c4a9b0de1e21", "level": "info", '
        '"logger": "backup_repository.access", "method": "POST", '
        '"route": "/api/stable/repository/collection/{collectionId}/version", "status": 200, '
        '"duration_ms": 812.4, "bytes": 402, "client_ip": "10.1.2.3", '
        '"timestamp": "2026-11-27T03:00:12.345678Z", '
        '"message": "POST /api/stable/repository/collection/{collectionId}/version 200"}'
    )
    console_line, _ = formatted.lines["console", False][0]
    assert _same_timestamps(console_line) == (
        "2026-11-27T03:00:12.345678Z [info     ] "
        "POST /api/stable/repository/collection/{collectionId}/version 200 "
        "[backup_repository.access] bytes=402 client_ip=10.1.2.3 duration_ms=812.4 "
        "method=POST request_id=5b0e3c0f6f0a4b4fa1f1c4a9b0de1e21 "
        "route=/api/stable/repository/collection/{collectionId}/version status=200"
    )


def test_a_line_with_secrets_as_written(formatted: _Lines) -> None:
    _log_everything()
    (index,) = [i for i, record in enumerate(formatted.records) if record.msg == "fields"]
    line = json.loads(formatted.lines["json", False][index][0])
    assert line["request_id"] == "5b0e3c0f6f0a4b4fa1f1c4a9b0de1e21"
    assert line["message"] == "the extra's event"
    for key in ("password", "db_password", "jwt_secret_key", "Authorization", "refresh_token"):
        assert line[key] == REDACTED, key
    assert (line["api_key"], line["health_key"], line["cookie"], line["token"]) == (
        0,
        None,
        "",
        False,
    )
    assert line["nested"] == {"user": "u", "password": REDACTED, "list": ["x", REDACTED, ["t", 1]]}
    assert line["deep"] == {"a": {"b": {"c": {"d": {"password": "deepest"}}}}}  # too deep
    assert line["url"] == f"https://user:{REDACTED}@example.com/path?signature={REDACTED}"
    assert line["shown"] == "shown as str"
    assert "_record" not in line
    assert "color_message" not in line
    assert line["timestamp"] != "overridden"


def _counting(monkeypatch: pytest.MonkeyPatch, name: str, method: str) -> list[str]:
    """The calls of ``method`` of the pattern ``logs.<name>``, by their text."""
    pattern = getattr(logs, name)
    calls: list[str] = []

    class Counted:
        def __getattr__(self, attribute: str) -> Any:
            return getattr(pattern, attribute)

    def counted(*args: Any) -> Any:
        calls.append(args[-1])
        return getattr(pattern, method)(*args)

    counter = Counted()
    setattr(counter, method, counted)
    monkeypatch.setattr(logs, name, counter)
    return calls


def test_field_names_are_searched_once_and_plain_text_not_at_all(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _counting(monkeypatch, "SENSITIVE_KEY", "search")
    texts = [
        _counting(monkeypatch, pattern, "sub")
        for pattern in ("_JWT", "_BEARER", "_URL_PASSWORD", "_SECRET_QUERY")
    ]
    logs.secret_name.cache_clear()
    access = logging.getLogger("backup_repository.access")
    for _ in range(3):
        with structlog.contextvars.bound_contextvars(request_id="r-1"):
            access.info("%s %s %s", "POST", ACCESS_FIELDS["route"], 200, extra=ACCESS_FIELDS)
    # Each name once (the fields, request_id, level, logger, event, timestamp), not per line.
    assert sorted(names) == sorted(
        {*ACCESS_FIELDS, "request_id", "level", "logger", "event", "timestamp"}
    )
    assert texts == [[], [], [], []]
    # A text with = but no query is not searched for query parameters either.
    logging.getLogger("x").info("version=3 key=value")
    assert texts[3] == []
    logging.getLogger("x").info("/ready?code=abc")
    assert texts[3] == ["/ready?code=abc"]
    assert len(lines(stream)) == 5


def test_a_plain_line_makes_no_second_record(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies: list[dict[str, Any]] = []
    make = logging.makeLogRecord

    def counted(fields: dict[str, Any]) -> logging.LogRecord:
        copies.append(fields)
        return make(fields)

    monkeypatch.setattr(logging, "makeLogRecord", counted)
    logging.getLogger("backup_repository.access").info("plain", extra={"status": 200})
    assert copies == []
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("with a traceback")
    assert len(copies) == 1  # structlog's whole chain, as before
    plain, failed = lines(stream)
    assert plain["status"] == 200
    assert "RuntimeError: boom" in failed["exception"]


def test_log_fields_writes_the_line_of_logger_log_without_looking_up_the_caller(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = logging.getLogger("backup_repository.access")
    kind = type(access)  # structlog's subclass of Logger once it is configured
    callers: list[object] = []
    find_caller = kind.findCaller

    def counted(self: logging.Logger, *args: Any) -> Any:
        callers.append(self.name)
        return find_caller(self, *args)

    monkeypatch.setattr(kind, "findCaller", counted)
    with structlog.contextvars.bound_contextvars(request_id="r-1"):
        access.log(logging.INFO, "%s %s", "GET", 200, extra=ACCESS_FIELDS)
        assert callers == ["backup_repository.access"]
        logs.log_fields(access, logging.INFO, "%s %s", ("GET", 200), ACCESS_FIELDS)
        logs.log_fields(access, logging.DEBUG - 1, "not enabled", (), {})
    assert callers == ["backup_repository.access"]
    by_log, by_log_fields = stream.getvalue().splitlines()
    assert _same_timestamps(by_log) == _same_timestamps(by_log_fields)
    assert json.loads(by_log_fields)["message"] == "GET 200"


# -- structlog loaded when a line needs it ---------------------------------------------------


def test_the_field_variables_are_named_as_structlogs_own() -> None:
    assert logs.STRUCTLOG_KEY_PREFIX == structlog.contextvars.STRUCTLOG_KEY_PREFIX


def test_bound_fields_are_structlogs_context_and_are_reset(stream: io.StringIO) -> None:
    outer = logs.bind_fields(request_id="outer", attempt=1)
    inner = logs.bind_fields(request_id="inner")
    assert structlog.contextvars.get_contextvars() == {"request_id": "inner", "attempt": 1}
    logging.getLogger("a").warning("inside")
    structlog.get_logger("b").warning("from structlog")
    logs.reset_fields(**inner)
    assert structlog.contextvars.get_contextvars() == {"request_id": "outer", "attempt": 1}
    logs.reset_fields(**outer)
    assert structlog.contextvars.get_contextvars() == {}
    logging.getLogger("a").warning("after")
    plain, chain, after = lines(stream)
    assert (plain["request_id"], plain["attempt"]) == ("inner", 1)
    assert (chain["request_id"], chain["attempt"]) == ("inner", 1)
    assert "request_id" not in after


def test_a_bound_field_wins_over_structlogs_variable_of_the_same_name(
    stream: io.StringIO,
) -> None:
    """As before, when both bound the one variable: the request id of the request, whatever
    was bound around it through structlog; on the short path and in the whole chain."""
    with structlog.contextvars.bound_contextvars(request_id="around"):
        tokens = logs.bind_fields(request_id="request")
        try:
            logging.getLogger("a").warning("plain")
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                logging.getLogger("a").exception("whole chain")
        finally:
            logs.reset_fields(**tokens)
    assert [line["request_id"] for line in lines(stream)] == ["request", "request"]


# A server's logging: configured, plain lines, then a line with an exception, then a line
# of structlog's own loggers.
_LOADED_WHEN_NEEDED = """
import io, json, logging, sys
from backup_repository.logs import bind_fields, configure_logging, reset_fields

out = io.StringIO()
configure_logging("info", sys.argv[1], stream=out)
tokens = bind_fields(request_id="r-1")
logging.getLogger("backup_repository.access").info("GET / 200", extra={"status": 200})
reset_fields(**tokens)
plain = "structlog" in sys.modules
try:
    raise RuntimeError("boom")
except RuntimeError:
    logging.getLogger("backup_repository.x").exception("failed")
import structlog
structlog.get_logger("backup_repository.y").info("from structlog", size=3)
print(json.dumps({"plain": plain, "after": "structlog" in sys.modules,
                  "rich": "rich" in sys.modules, "lines": out.getvalue().splitlines()}))
"""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_structlog_is_loaded_by_the_first_line_that_needs_it(fmt: LogFormat) -> None:
    answer = subprocess.run(
        [sys.executable, "-c", _LOADED_WHEN_NEEDED, fmt],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(answer.stdout)
    assert (result["plain"], result["after"], result["rich"]) == (False, True, False)
    access, failed, *traceback, native = result["lines"]
    if fmt == "json":
        assert json.loads(access)["request_id"] == "r-1"
        assert "RuntimeError: boom" in json.loads(failed)["exception"]
        assert (json.loads(native)["message"], json.loads(native)["size"]) == (
            "from structlog",
            3,
        )
    else:
        assert "request_id=r-1" in access
        assert "RuntimeError: boom" in "\n".join(traceback)
        assert "from structlog" in native
        assert "size=3" in native


def test_only_the_log_pipeline_imports_structlog() -> None:
    """The server's modules log with ``logging.getLogger``: structlog's own loggers would be
    routed to the handler only once structlog is loaded, which a server that logs no
    exception never does."""
    source = Path(logs.__file__).parent
    importing = sorted(
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+structlog\b", path.read_text(), re.MULTILINE)
    )
    assert importing == ["logs.py"]
