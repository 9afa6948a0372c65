"""Which SQL driver errors are the database refusing the data, and which are outages.

A refusal (a value too long, a NUL PostgreSQL cannot store, a CHECK or NOT NULL constraint) fails
the same way on every retry: the adapters raise ``WriteRefused`` for it, never an "unavailable"
error that would be retried forever. A unique-key violation is not a refusal here: the event log
relies on it to recognise a duplicate event or a rival writer's seq, and upserts race on it.
Tested against real PostgreSQL and SQLite errors in tests/integration/test_write_refusals.py.
"""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

_REFUSED_SQLSTATE_CLASSES = ("22", "23")  # data exception, integrity constraint violation
_UNIQUE_VIOLATION = "23505"
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


def refuses_data(exc: BaseException) -> bool:
    """Whether the database (or its driver) refused the data itself: retrying cannot help."""
    if isinstance(exc, DBAPIError):
        if isinstance(exc, IntegrityError | DataError):
            return True
        # asyncpg's errors (even a value it cannot encode, SQLSTATE 22000) reach SQLAlchemy as
        # generic DBAPIErrors that carry the SQLSTATE.
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(_REFUSED_SQLSTATE_CLASSES)
    # A parameter SQLAlchemy could not process, or text aiosqlite cannot encode (a surrogate).
    return isinstance(exc, StatementError | UnicodeError)


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is a unique-key (or primary-key) violation."""
    if not isinstance(exc, IntegrityError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == _UNIQUE_VIOLATION:
        return True
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return name in _SQLITE_UNIQUE
    return "UNIQUE constraint failed" in str(orig)


def refusal_reason(exc: BaseException) -> str:
    """The database's own words for a refusal, on one line."""
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).splitlines() or [type(cause).__name__])[0][:300]
