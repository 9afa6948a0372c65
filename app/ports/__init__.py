"""The ports the services need, and the types they exchange, in one package.

Adapters implement them; fakes implement them for tests. Driver exceptions never cross a port:
adapters translate them into the errors in ``app.ports.errors``. ``from app.ports import X``
names every port and type; ``app.ports.topology`` holds the broker names all sides agree on.
"""

from __future__ import annotations

from app.ports.audit import (
    AnchorBackend,
    AnchorStore,
    RecordedRange,
)
from app.ports.broker import (
    ActionPublisher,
    Publisher,
    RingBroker,
    Unrouted,
)
from app.ports.cluster import (
    BarrierStore,
    Membership,
    PartitionConsumers,
)
from app.ports.errors import (
    LogUnavailable,
    ProjectionUnavailable,
    PublishFailed,
    StoreUnavailable,
    WriteRefused,
)
from app.ports.export import (
    Column,
)
from app.ports.log import (
    AppendOutcome,
    AppendStatus,
    Clock,
    EventLog,
)
from app.ports.projection import (
    AttemptRow,
    JobRow,
    JobSnapshot,
    OutboxMessage,
    ProjectionStore,
    ProjectionUpdate,
    TimerRow,
)
from app.ports.queries import (
    EndedCount,
    FilterText,
    GroupCount,
    Instant,
    InvalidQuery,
    JobFilter,
    JobQueries,
    LatencyRow,
    PageKey,
    as_utc,
    parse_instant,
)
from app.ports.rebuild import (
    JobBundle,
    RebuildTarget,
    Side,
)

__all__ = [
    "ActionPublisher",
    "AnchorBackend",
    "AnchorStore",
    "AppendOutcome",
    "AppendStatus",
    "AttemptRow",
    "BarrierStore",
    "Clock",
    "Column",
    "EndedCount",
    "EventLog",
    "FilterText",
    "GroupCount",
    "Instant",
    "InvalidQuery",
    "JobBundle",
    "JobFilter",
    "JobQueries",
    "JobRow",
    "JobSnapshot",
    "LatencyRow",
    "LogUnavailable",
    "Membership",
    "OutboxMessage",
    "PageKey",
    "PartitionConsumers",
    "ProjectionStore",
    "ProjectionUnavailable",
    "ProjectionUpdate",
    "PublishFailed",
    "Publisher",
    "RebuildTarget",
    "RecordedRange",
    "RingBroker",
    "Side",
    "StoreUnavailable",
    "TimerRow",
    "Unrouted",
    "WriteRefused",
    "as_utc",
    "parse_instant",
]
