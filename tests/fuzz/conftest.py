"""The fuzzing harness: publish hostile and valid messages interleaved, then account for each.

It shares the fault suite's plumbing (tracker, census, artifacts) and its ``faults`` marker.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from app.adapters.rabbit import EVENTS_EXCHANGE, JOB_ID_HEADER, QUARANTINE_QUEUE, REASON_HEADER
from app.domain.events import canonical_json
from app.services.ingest import rejection_reason
from tests.faults.conftest import MARKER, Census, drain, fault_tracker
from tests.faults.test_kill_storm import Stream
from tests.fuzz.corpus import Case

__all__ = ["fault_tracker"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


# -- publishing and accounting -------------------------------------------------------------------


@dataclass
class Sent:
    """What was published, and what the broker refused (unroutable, returned)."""

    hostile: list[Case] = field(default_factory=list)
    refused: list[Case] = field(default_factory=list)
    valid_messages: int = 0


def _header_for(case: Case, chooser: random.Random) -> Any:
    """The case's own header for hand cases; for generated ones, the body's job id, none or junk."""
    if case.expect != "oracle":
        return case.header
    roll = chooser.random()
    if roll < 0.15:
        return None
    if roll < 0.3:
        return chooser.choice(['{"$gt": ""}', "../x", "h" * 300, "\u0000"])
    try:
        job = json.loads(case.body).get("job_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return job if isinstance(job, str) and job else None


async def publish_mixed(rabbit_url: str, hostile: list[Case], valid: list[Any], seed: str) -> Sent:
    """Publish both lists interleaved at random, each in its own order, one confirmed at a time."""
    chooser = random.Random(seed)
    sent = Sent()
    order = [True] * len(hostile) + [False] * len(valid)
    chooser.shuffle(order)
    connection = await aio_pika.connect_robust(rabbit_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        hostile_left, valid_left = iter(hostile), iter(valid)
        for is_hostile in order:
            if not is_hostile:
                item = next(valid_left)
                body, key, header = item.model_dump_json().encode(), f"job.{item.type}", item.job_id
                sent.valid_messages += 1
            else:
                case = next(hostile_left)
                body, key, header = case.body, case.routing_key, _header_for(case, chooser)
            headers = {} if header is None else {JOB_ID_HEADER: header}
            message = aio_pika.Message(body, headers=headers, delivery_mode=2)
            try:
                await exchange.publish(message, routing_key=key, mandatory=True)
            except aio_pika.exceptions.PublishError:
                assert is_hostile, "a valid event was refused by the broker"
                sent.refused.append(case)
                continue
            if is_hostile:
                sent.hostile.append(case)
    finally:
        await connection.close()
    return sent


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass
class Quarantine:
    """Messages taken from ``jobtrail.quarantine``: body digest → reasons."""

    reasons: dict[str, list[str]] = field(default_factory=dict)
    message_ids: dict[str, list[str | None]] = field(default_factory=dict)

    def take(self, rabbit_url: str) -> int:
        for message in drain(rabbit_url, QUARANTINE_QUEUE):
            reason = (message.headers or {}).get(REASON_HEADER)
            self.reasons.setdefault(digest(message.body), []).append(str(reason or ""))
            self.message_ids.setdefault(digest(message.body), []).append(message.message_id)
        return sum(len(r) for r in self.reasons.values())


def unconfirmed_quarantines(logs: str) -> Counter[str]:
    """Body digest -> how many times the tracker logged a delivery given back because its
    quarantined copy was not confirmed (the copy may have landed: a repeat is then expected)."""
    given_back: Counter[str] = Counter()
    for line in logs.splitlines():
        if "given back to the broker" not in line or "quarantine failed" not in line:
            continue
        try:
            given_back[str(json.loads(line)["body_sha256"])] += 1
        except (ValueError, KeyError):
            continue
    return given_back


@dataclass
class Outcomes:
    """Each hostile message's fate, counted."""

    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def problem(self, case: Case, what: str) -> None:
        self.counts["unaccounted"] += 1
        if len(self.problems) < 20:
            self.problems.append(f"{case.name}: {what} ({case.body[:80]!r})")


def expected_outcome(case: Case) -> tuple[str | None, str | None]:
    """(quarantine reason prefix, event id) the oracle gives; hand cases must agree with it."""
    parsed, reason = rejection_reason(case.body)
    if reason is not None:
        return reason.split(":", 1)[0], None
    assert parsed is not None
    return None, str(parsed.event_id)


def account(
    sent: Sent, quarantine: Quarantine, census: Census, unconfirmed: Counter[str]
) -> Outcomes:
    """Match every hostile message to its fate: quarantined with the right reason, recorded once
    (flagged or not), or a duplicate stored once; anything else is a problem."""
    out = Outcomes()
    out.counts["published"] = len(sent.hostile)
    out.counts["refused_by_broker"] = len(sent.refused)
    parked = {d: list(reasons) for d, reasons in quarantine.reasons.items()}
    flags: dict[str, list[str]] = {}
    for state in census.states.values():
        for anomaly in state.anomalies:
            flags.setdefault(anomaly.event_id, []).append(anomaly.kind)
    seen: Counter[str] = Counter()
    first: dict[str, str] = {}
    for case in sent.hostile:
        prefix, event_id = expected_outcome(case)
        if case.expect.startswith("invalid") and case.expect != prefix:
            out.problem(case, f"the corpus expects {case.expect}, the classifier says {prefix}")
        if prefix is not None:
            reasons: list[str | None] = [*parked.get(digest(case.body), [])] or [None]
            reason = reasons.pop()
            parked[digest(case.body)] = [r for r in reasons if r is not None]
            if reason is None:
                out.problem(case, "not in the quarantine")
            elif not reason.startswith(f"{prefix}: "):
                out.problem(case, f"quarantined with reason {reason[:80]!r}")
            else:
                out.counts[f"quarantined_{prefix}"] += 1
            continue
        assert event_id is not None
        seen[event_id] += 1
        content = canonical_json(rejection_reason(case.body)[0])  # type: ignore[arg-type]
        if first.setdefault(event_id, content) != content:
            out.counts["conflicting_resends"] += 1  # same id, other content: the first one stays
        _account_recorded(out, case, event_id, census.copies[event_id], seen[event_id], flags)
    _repeats_explained(out, parked, quarantine, {digest(c.body) for c in sent.hostile}, unconfirmed)
    leftovers = sum(len(r) for r in parked.values())
    out.counts["quarantined_unexpectedly"] = leftovers
    if leftovers:
        out.problems.append(f"{leftovers} quarantined messages match no hostile input")
    return out


def _account_recorded(
    out: Outcomes, case: Case, event_id: str, copies: int, nth: int, flags: dict[str, list[str]]
) -> None:
    if copies != 1:
        out.problem(case, f"recorded {copies} times")
        return
    if nth > 1:
        out.counts["deduplicated"] += 1
        return
    kinds = flags.get(event_id, [])
    out.counts["recorded_flagged" if kinds else "recorded_clean"] += 1
    wanted = case.expect.split(":", 1)
    if wanted[0] == "flagged" and wanted[1] not in kinds:
        out.problem(case, f"flagged {kinds}, not {wanted[1]}")
    if case.expect == "recorded" and kinds:
        out.problem(case, f"flagged {kinds} although valid")


def disturbed(valid: Stream, census: Census) -> list[str]:
    """Valid jobs not exactly as expected: wrong state, any anomaly, or a foreign event."""
    published: dict[str, set[str]] = {}
    for item in valid.events:
        published.setdefault(item.job_id, set()).add(str(item.event_id))
    bad = set(valid.unsettled(census))
    for job_id, ids in published.items():
        state = census.states.get(job_id)
        mine = {e for e, source, _, _ in census.sources.get(job_id, []) if source != "jobtrail"}
        if state is None or state.anomalies or mine != ids:
            bad.add(job_id)
    return sorted(bad)


def _repeats_explained(out: Outcomes, parked: dict[str, list[str]], quarantine: Quarantine,
                       sent: set[str], unconfirmed: Counter[str]) -> None:  # fmt: skip
    """Take out of ``parked`` the extra copies of a quarantined body that the tracker explains:
    as many as it logged unconfirmed quarantines of that body, each carrying the body's SHA-256
    as its message id (how a reader of the quarantine recognises a repeat)."""
    for body, extra in parked.items():
        ids = quarantine.message_ids.get(body, [])
        if not extra or body not in sent or any(i != body for i in ids):
            continue
        explained = min(len(extra), unconfirmed[body])
        out.counts["requarantined_after_an_unconfirmed_publish"] += explained
        parked[body] = extra[explained:]
