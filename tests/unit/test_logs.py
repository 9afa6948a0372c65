"""Logs a person can read (plain lines on a terminal) and JSON lines for machines."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from app.entrypoints import logs


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _record(exc: BaseException | None = None) -> logging.LogRecord:
    record = logging.LogRecord(
        "jobtrail.relay", logging.WARNING, __file__, 1, "relay %s", ("x",), None
    )
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.job = "job-1"
    record.reason = "two words"
    return record


def _raised() -> ValueError:
    try:
        raise ValueError("bad\nthing")
    except ValueError as exc:
        return exc


def test_a_plain_line_has_time_level_message_and_key_values() -> None:
    line = logs.PlainFormatter().format(_record())
    assert "\n" not in line
    assert ' WARNING jobtrail.relay: relay x job=job-1 reason="two words"' in line
    assert line[:4].isdigit() and "+00:00" not in line


def test_a_plain_line_names_an_exception_without_its_traceback_unless_debugging() -> None:
    exc = _raised()
    line = logs.PlainFormatter().format(_record(exc))
    assert line.endswith('error="ValueError: bad thing"') and "Traceback" not in line
    debug = logs.PlainFormatter(tracebacks=True).format(_record(exc))
    assert "Traceback (most recent call last)" in debug


def test_json_keeps_the_traceback_and_the_extras() -> None:
    line = json.loads(logs.JsonFormatter().format(_record(_raised())))
    assert line["level"] == "warning" and line["msg"] == "relay x" and line["job"] == "job-1"
    assert "Traceback" in line["exc"]


@pytest.mark.parametrize(
    ("fmt", "tty", "formatter"),
    [
        ("auto", True, logs.PlainFormatter),
        ("auto", False, logs.JsonFormatter),
        ("json", True, logs.JsonFormatter),
        ("plain", False, logs.PlainFormatter),
    ],
)
def test_the_format_follows_the_setting_and_the_terminal(
    fmt: str, tty: bool, formatter: type[logging.Formatter]
) -> None:
    if tty:
        primary, secondary = os.openpty()
        stream = os.fdopen(primary, "w")
    else:
        stream, secondary = io.StringIO(), None
    try:
        logs.configure("INFO", fmt, stream)
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler.formatter, formatter)
    finally:
        stream.close()
        if secondary is not None:
            os.close(secondary)
