"""Deterministic replay: re-deciding a recorded history must reproduce every derived event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.domain.chain import RecordedEvent
from app.domain.decide import JOBTRAIL_SOURCE, decide, recorded_routing
from app.domain.events import canonical_json
from app.domain.machine import fold
from app.domain.policy import Policy
from app.domain.state import JobState


@dataclass(frozen=True, slots=True)
class Divergence:
    """A recorded decision that replay did not reproduce byte for byte."""

    job_id: str
    seq: int
    recorded: str
    replayed: str


def replay_decisions(events: Sequence[RecordedEvent], policy: Policy) -> list[Divergence]:
    """Compare each event Jobtrail decided with what ``decide`` says at the same instant now.

    A decision a routing plugin made is re-decided from the answer it recorded: the plugin is
    not called, so a plugin since changed or removed still replays what it decided then.
    """
    divergences: list[Divergence] = []
    state: JobState | None = None
    skew = policy.clock_skew_tolerance
    for recorded in events:
        event = recorded.event
        if event.source == JOBTRAIL_SOURCE and state is not None:
            again = decide(state, event.occurred_at, policy, recorded_routing(event))
            replayed = canonical_json(again[0]) if again else "(nothing)"
            if replayed != canonical_json(event):
                divergences.append(
                    Divergence(event.job_id, recorded.seq, canonical_json(event), replayed)
                )
        state = fold([recorded], state, skew)
    return divergences
