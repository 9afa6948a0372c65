"""Deterministic replay: re-deciding a recorded history must reproduce every derived event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.domain.chain import RecordedEvent
from app.domain.decide import JOBTRAIL_SOURCE, decide, deciding_state
from app.domain.events import Routed, canonical_json
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

    A routing plugin's answer (a ``routed`` event) is not re-decided but folded as recorded,
    like an input: the plugin is not called, and the republish that follows is re-decided from
    that answer, so a plugin since changed or removed still replays what it decided then.
    """
    divergences: list[Divergence] = []
    state: JobState | None = None
    skew = policy.clock_skew_tolerance
    for recorded in events:
        event = recorded.event
        if event.source == JOBTRAIL_SOURCE and state is not None and not isinstance(event, Routed):
            again = decide(deciding_state(state, event), event.occurred_at, policy)
            replayed = canonical_json(again[0]) if again else "(nothing)"
            if replayed != canonical_json(event):
                divergences.append(
                    Divergence(event.job_id, recorded.seq, canonical_json(event), replayed)
                )
        state = fold([recorded], state, skew)
    return divergences
