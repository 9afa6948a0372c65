"""Errors every port may raise: driver exceptions never cross a port; adapters translate
them into these."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """A store (log, SQL) could not be reached or failed transiently; retry later."""


class LogUnavailable(StoreUnavailable):
    """The event log could not be reached or failed transiently."""


class ProjectionUnavailable(StoreUnavailable):
    """The SQL projection store could not be reached or failed transiently."""


class WriteRefused(ValueError):
    """The store refused the data itself (a value it cannot hold, a constraint it enforces).

    Not an outage: writing the same data again fails the same way, so the write is never
    retried as it is. Ingestion isolates the event at fault and quarantines it with this reason.
    """


class PublishFailed(Exception):
    """The broker did not confirm a publish (unroutable, nacked, or disconnected)."""
