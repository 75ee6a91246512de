"""The log pipeline (logs.py): JSON and console lines, request ids, extra fields,
exceptions, and the redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from backup_repository.logs import (
    REDACTED,
    configure_logging,
    granian_log_config,
    redact_text,
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
