"""The outbox statements of the SQL ProjectionStore: what is pending, claims, releases, marks.

Several trackers publish from one outbox, so a relay claims rows before publishing them. A claim
takes whole jobs (every unpublished row of a job, oldest first, or a prefix of them when the
limit cuts it short) and skips any job with a row under another owner's live claim: one job's
messages are then only ever in one tracker's hands, and go out in order.

Claims are serialised. On SQLite the writer's ``BEGIN IMMEDIATE`` does it; on PostgreSQL a
transaction-level advisory lock does, because row locks alone cannot: under READ COMMITTED a
claimer that skips (``SKIP LOCKED``) or waits for one row of a job still judges the job's
*other* rows on a snapshot taken before the competing claim committed, and could take a later
message of a job whose earlier one another tracker is publishing. With the lock, a claim's
statements (read the jobs others hold, then take rows) see every claim committed before it.
``SKIP LOCKED`` still keeps a claim from waiting for a row another tracker is marking published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Update, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.sql_models import outbox
from app.ports import OutboxMessage

OUTBOX_COLUMNS = [outbox.c[f.name] for f in fields(OutboxMessage)]

CLAIM_LOCK = 0x6A74_6F75_7462_7831
"""PostgreSQL advisory lock key held by each outbox claim's transaction ("jtoutbx1")."""
_NOT_IN_CHUNK = 1000  # job ids per NOT IN (...) list: far below both databases' parameter limits


def outbox_values(message: OutboxMessage, now: datetime) -> dict[str, Any]:
    """The row of ``message``; one without ``created_at`` is stamped ``now``."""
    return {
        "event_id": message.event_id,
        "job_id": message.job_id,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "body": message.body,
        "headers": None if message.headers is None else dict(message.headers),
        "priority": message.priority,
        "created_at": message.created_at or now,
    }


def pending_query(limit: int) -> Select[Any]:
    """Unpublished messages, oldest ``created_at`` first, then by event_id."""
    return (
        select(*OUTBOX_COLUMNS)
        .where(outbox.c.published_at.is_(None))
        .order_by(outbox.c.created_at, outbox.c.event_id)
        .limit(limit)
    )


def held_jobs_query(owner: str, now: datetime) -> Select[Any]:
    """Jobs with an unpublished row under another owner's live claim (few: what relays hold)."""
    c = outbox.c
    return (
        select(c.job_id)
        .where(c.published_at.is_(None), c.claimed_until > now, c.claimed_by != owner)
        .distinct()
    )


def claim_statement(
    dialect: str,
    owner: str,
    limit: int,
    now: datetime,
    lease: timedelta,
    held: Sequence[str] = (),
) -> Update:
    """Claim the oldest unpublished rows of jobs not in ``held``, returning them.

    ``held`` is read first, in the same serialised transaction, rather than joined here: on a
    table whose statistics are stale PostgreSQL planned the anti-join as a nested loop over
    every unpublished row (seconds with 20,000 of them).
    """
    candidate = outbox.alias("candidate")
    chunks = (held[n : n + _NOT_IN_CHUNK] for n in range(0, len(held), _NOT_IN_CHUNK))
    skip = [candidate.c.job_id.not_in(chunk) for chunk in chunks]
    free = (
        select(candidate.c.event_id)
        .where(candidate.c.published_at.is_(None), *skip)
        .order_by(candidate.c.created_at, candidate.c.event_id)
        .limit(limit)
    )
    if dialect == "postgresql":
        # A CTE runs once. As an ``IN (subquery)`` PostgreSQL may rescan it per row, and each
        # rescan skips the rows this statement already updated: it would claim past ``limit``.
        chosen = free.with_for_update(skip_locked=True).cte("chosen")
        where = outbox.c.event_id == chosen.c.event_id
    else:
        where = outbox.c.event_id.in_(free.scalar_subquery())
    return (
        update(outbox)
        .where(where, outbox.c.published_at.is_(None))
        .values(claimed_by=owner, claimed_until=now + lease)
        .returning(*OUTBOX_COLUMNS)
    )


async def claim(
    conn: AsyncConnection, owner: str, limit: int, now: datetime, lease: timedelta
) -> list[OutboxMessage]:
    """Take the claim inside the caller's write transaction; the rows oldest first."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK)))
    held = list((await conn.execute(held_jobs_query(owner, now))).scalars())
    result = await conn.execute(claim_statement(dialect, owner, limit, now, lease, held))
    rows = [OutboxMessage(**row._mapping) for row in result]
    return sorted(rows, key=lambda m: (m.created_at or now, m.event_id))


def release_statement(owner: str, event_ids: Sequence[str]) -> Update:
    """End ``owner``'s claims on the unpublished rows among ``event_ids``."""
    return (
        update(outbox)
        .where(
            outbox.c.event_id.in_(event_ids),
            outbox.c.claimed_by == owner,
            outbox.c.published_at.is_(None),
        )
        .values(claimed_by=None, claimed_until=None)
    )


def mark_statement(event_ids: Sequence[str], at: datetime) -> Update:
    """Stamp the unpublished rows among ``event_ids`` published at ``at``, whoever claimed them."""
    return (
        update(outbox)
        .where(outbox.c.event_id.in_(event_ids), outbox.c.published_at.is_(None))
        .values(published_at=at)
    )
