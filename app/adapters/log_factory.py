"""Pick the EventLog adapter a URL names; nothing connects until the log is first used."""

from __future__ import annotations

from app.adapters.mongo_log import MongoEventLog
from app.adapters.sql_log import SqlEventLog
from app.ports import EventLog

MONGO_SCHEMES = ("mongodb", "mongodb+srv")


def open_event_log(url: str) -> EventLog:
    """``mongodb://`` / ``mongodb+srv://`` → MongoDB (database from the path, default
    ``jobtrail``); any other URL is a SQLAlchemy URL (``sqlite+aiosqlite://``, ``postgresql://``)."""
    scheme = url.partition("://")[0].lower()
    if scheme in MONGO_SCHEMES:
        return MongoEventLog(url)
    return SqlEventLog(url)
