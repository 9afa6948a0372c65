"""Logs a person can read on a terminal, and JSON lines for machines.

``JOBTRAIL_LOG_FORMAT``: ``plain`` prints one line per record (time, level, logger: message,
then ``key=value`` for each extra field); ``json`` one JSON object per line; ``auto`` (the
default) picks ``plain`` when standard error is a terminal and ``json`` otherwise. A plain line
shows an exception as one line (its type and message); the traceback is printed at DEBUG level
only, and always kept in the JSON form.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with ANSI colours
}
NOISY = ("aiormq", "aio_pika", "faststream", "sqlalchemy", "pymongo", "alembic")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _at(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """Render a record and its ``extra`` fields as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "at": _at(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line |= _extras(record)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class PlainFormatter(logging.Formatter):
    """``2026-12-03 14:02:11.123 WARNING jobtrail.relay: message key=value ...`` on one line."""

    def __init__(self, *, tracebacks: bool = False) -> None:
        super().__init__()
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        at = _at(record).replace("T", " ").removesuffix("+00:00")
        parts = [f"{at} {record.levelname:<7} {record.name}: {record.getMessage()}"]
        parts += [f"{k}={_plain(v)}" for k, v in _extras(record).items()]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append(f"error={_plain(f'{type(exc).__name__}: {exc}')}")
        line = " ".join(parts)
        if record.exc_info and self._tracebacks:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _plain(value: object) -> str:
    text = str(value).replace("\n", " ")
    return json.dumps(text) if (" " in text or not text) else text


def configure(level: str, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every record to ``stream`` (standard error) in the chosen format, at ``level``."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.setLevel(level.upper())
    plain = fmt == "plain" or (fmt == "auto" and out.isatty())
    formatter = PlainFormatter(tracebacks=root.level <= logging.DEBUG) if plain else JsonFormatter()
    handler.setFormatter(formatter)
    root.handlers[:] = [handler]
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
