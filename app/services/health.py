"""The tracker's health as its background loops report it: what /healthz and the logs say."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Health:
    """What /healthz and the logs say about the stores, fed by every background loop.

    Each loop (the batcher, the timer loop, the outbox relay, the ring keeper) degrades its own
    entry when it meets an outage and clears it when that loop next succeeds: the tracker is ok
    when no loop is degraded, without waiting for an event to pass through the batcher.
    """

    reasons: dict[str, str] = field(default_factory=dict)
    """loop name -> why that loop is degraded now."""

    def degrade(self, loop: str, reason: str) -> None:
        self.reasons[loop] = reason

    def recover(self, loop: str) -> None:
        self.reasons.pop(loop, None)

    @property
    def degraded_reason(self) -> str | None:
        """The reasons of the degraded loops (``loop: reason; ...``), or None when all are ok."""
        if not self.reasons:
            return None
        return "; ".join(f"{loop}: {why}" for loop, why in sorted(self.reasons.items()))

    @property
    def ok(self) -> bool:
        return not self.reasons
