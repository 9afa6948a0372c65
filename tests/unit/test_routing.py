"""Routing plugins: answers recorded as ``routed`` events and decided from, fallback on bad
answers, least-failing.

The tracker runs on the in-memory fakes with the fake clock of tests/unit/test_whatif.py; the
plugins are plain functions handed to a ``Router`` (loading them from entry points is tested in
tests/e2e/test_routing_plugin.py).
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from app.adapters.export_formats import open_writer
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.bootstrap.routing import build_router
from app.domain.chain import RecordedEvent
from app.domain.decide import decide, derived_event_id, next_deadline, routed, routing_request
from app.domain.events import (
    PoolFigures,
    Rerouted,
    Retried,
    Routed,
    RoutingRecord,
    canonical_json,
)
from app.domain.machine import fold
from app.domain.policy import Policy
from app.domain.routing import MAX_COOLDOWN, RoutingChoice, RoutingRequest
from app.entrypoints.shapes import flat_event
from app.services.export import EVENT_COLUMNS
from app.services.least_failing import route as least_failing
from app.services.rebuild import job_histories
from app.services.replay import replay_decisions
from app.services.routing import FleetWindow, LoadedPlugin, Router
from app.services.tracking import Tracker
from app.services.whatif import whatif
from tests.unit.test_whatif import (
    LIVE,
    FakeClock,
    at,
    done,
    drive,
    fail,
    fire_timers,
    res,
    sub,
)

ROUTED = Policy.from_toml(
    """
[defaults]
max_attempts = 4
routing = "test-plugin"
fallback_pools = ["east", "west"]
[defaults.retry]
initial_interval_seconds = 10
backoff_coefficient = 2.0
max_interval_seconds = 60
"""
)
Plugin = Callable[[RoutingRequest], object]


def router(plugin: Plugin, timeout_s: float = 0.5) -> Router:
    return Router({"test-plugin": LoadedPlugin(plugin, "9.9")}, timeout_s=timeout_s)  # type: ignore[arg-type]


def to_west(request: RoutingRequest) -> RoutingChoice:
    return RoutingChoice("west", timedelta(seconds=3))


def failing_job() -> list[tuple[float, list[object]]]:
    """A job on 'north' failing once, then completed on the pool it was sent to."""
    return [
        (0, [sub("j", 0, pool="north", queue="work.north")]),
        (1, [res("j", 1, "n1")]),
        (2, [fail("j", 2, "n1", "oom")]),
        (20, [res("j", 20, "n2", 2)]),
        (25, [done("j", 25, "n2", 2)]),
    ]


async def run(plugin: Plugin | None, policy: Policy = ROUTED) -> list[RecordedEvent]:
    log, store, clock = InMemoryEventLog(), InMemoryProjectionStore(), FakeClock()
    tracker = Tracker(log, store, policy, clock, router=router(plugin) if plugin else None)
    await drive(tracker, store, clock, failing_job())  # type: ignore[arg-type]
    return [r async for h in job_histories(log.scan()) for r in h]


def decision_of(history: list[RecordedEvent]) -> Retried | Rerouted:
    (found,) = [r.event for r in history if isinstance(r.event, Retried | Rerouted)]
    return found


def cooling(history: list[RecordedEvent]) -> RecordedEvent:
    return next(r for r in history if r.event.type == "failed")


def answer_of(history: list[RecordedEvent]) -> Routed:
    (found,) = [r.event for r in history if isinstance(r.event, Routed)]
    return found


def failed_once() -> list[RecordedEvent]:
    """The job's first three entries: submitted, reserved, failed (cooling down from at(2))."""
    return [
        RecordedEvent(n, at(t), "", "", e)
        for n, (t, (e,)) in enumerate(failing_job()[:3], start=1)  # type: ignore[misc]
    ]


def then(history: list[RecordedEvent], event: object, t: float) -> list[RecordedEvent]:
    return [*history, RecordedEvent(len(history) + 1, at(t), "", "", event)]  # type: ignore[arg-type]


async def test_the_tracker_records_the_plugins_answer_name_version_and_fleet() -> None:
    history = await run(to_west)
    event = decision_of(history)
    assert isinstance(event, Rerouted) and (event.from_pool, event.pool) == ("north", "west")
    assert event.routing is not None
    assert (event.routing.plugin, event.routing.version) == ("test-plugin", "9.9")
    assert (event.routing.pool, event.routing.cooldown_seconds, event.routing.fallback) == (
        "west",
        3.0,
        None,
    )
    assert event.occurred_at == at(5)  # failed at 2, plus the plugin's 3 s (not the policy's)
    # the fleet before the failure: north's one wait (queued at 0, reserved at 1), no outcome
    assert event.routing.fleet == (
        PoolFigures(pool="north", outcomes=0, failure_rate=0.0, wait_seconds=1.0),
    )
    # the answer was recorded as the cooldown began, in the same settle as the failure
    answer = answer_of(history)
    assert (answer.attempt, answer.routing, answer.source) == (1, event.routing, "jobtrail")
    assert next(r for r in history if r.event is answer).recorded_at == cooling(history).recorded_at
    assert answer.event_id == derived_event_id("j", "routed", 1)


async def test_replay_decides_from_the_recorded_answer_without_the_plugin() -> None:
    calls: list[str] = []

    def counted(request: RoutingRequest) -> RoutingChoice:
        calls.append(request.state.job_id)
        return to_west(request)

    history = await run(counted)
    assert calls == ["j"]  # asked once per cooldown, however often the job was settled
    assert replay_decisions(history, ROUTED) == []
    assert calls == ["j"]
    # the policy alone would have decided otherwise: the record is what makes replay agree
    stripped = [
        replace(r, event=r.event.model_copy(update={"routing": None}))
        if isinstance(r.event, Retried | Rerouted)
        else r
        for r in history
        if not isinstance(r.event, Routed)
    ]
    assert replay_decisions(stripped, ROUTED) != []


RECORD = RoutingRecord(plugin="p", version="1", pool="east", cooldown_seconds=30)


def test_decide_follows_the_answer_folded_into_the_state() -> None:
    history = failed_once()
    state = fold(then(history, routed(fold(history), at(2), RECORD), 2))
    assert state.routing == RECORD
    deadline = next_deadline(state, ROUTED)
    assert deadline is not None and deadline.at == at(32)  # the policy alone says at(12)
    assert decide(state, at(31), ROUTED) == ()
    (event,) = decide(state, at(32), ROUTED)
    assert isinstance(event, Rerouted) and event.pool == "east" and event.routing == RECORD
    stay = replace(state, routing=RECORD.model_copy(update={"pool": None}))
    (retry,) = decide(stay, at(32), ROUTED)
    assert isinstance(retry, Retried) and retry.pool == "north"


def test_folding_routed_sets_the_cooldowns_answer_and_the_republish_clears_it() -> None:
    history = failed_once()
    answer = routed(fold(history), at(2), RECORD)
    history = then(history, answer, 2)
    assert fold(history).routing == RECORD and fold(history).anomalies == ()
    (republish,) = decide(fold(history), at(32), ROUTED)
    after = fold(then(history, republish, 32))
    assert after.routing is None and after.pool == "east" and after.anomalies == ()


def test_a_routed_event_out_of_place_is_an_anomaly_and_changes_nothing() -> None:
    history = failed_once()
    answer = routed(fold(history), at(2), RECORD)
    queued = fold(history[:1])
    assert queued.routing is None
    misplaced = fold(then(history[:1], answer, 2))
    assert misplaced.routing is None and [a.kind for a in misplaced.anomalies] == ["unexpected"]
    other = RECORD.model_copy(update={"pool": "west"})
    twice = then(then(history, answer, 2), routed(fold(history), at(3), other), 3)
    state = fold(twice)
    assert state.routing == RECORD and [a.kind for a in state.anomalies] == ["duplicate_routing"]


def test_the_answers_event_id_is_one_per_attempt_whoever_asks_and_when() -> None:
    state = fold(failed_once())
    first = Router({"test-plugin": LoadedPlugin(to_west, "1")}).decide(state, at(2), ROUTED)
    other = Router({"test-plugin": LoadedPlugin(to_west, "2")}).decide(state, at(9), ROUTED)
    assert [e.event_id for e in first] == [e.event_id for e in other]
    assert [e.event_id for e in first] == [derived_event_id("j", "routed", 1)]
    assert first != other  # two trackers may answer differently: the log keeps the first


def test_a_state_with_an_answer_is_not_asked_again() -> None:
    calls: list[str] = []

    def counted(request: RoutingRequest) -> RoutingChoice:
        calls.append(request.state.job_id)
        return to_west(request)

    history = failed_once()
    (answer,) = router(counted).decide(fold(history), at(2), ROUTED)
    answered = fold(then(history, answer, 2))
    assert router(counted).decide(answered, at(3), ROUTED) == ()  # cooling, nothing due yet
    (republish,) = router(counted).decide(answered, at(5), ROUTED)
    assert isinstance(republish, Rerouted) and republish.pool == "west"
    assert calls == ["j"]


async def test_a_restarted_tracker_finds_the_answer_in_the_log_and_does_not_ask_again() -> None:
    calls: list[str] = []

    def counted(request: RoutingRequest) -> RoutingChoice:
        calls.append(request.state.job_id)
        return RoutingChoice("west", timedelta(seconds=30))

    log, store, clock = InMemoryEventLog(), InMemoryProjectionStore(), FakeClock()
    first = Tracker(log, store, ROUTED, clock, router=router(counted))
    for offset, events in failing_job()[:3]:
        clock.at = at(offset)
        await first.record(events)  # type: ignore[arg-type]
    assert calls == ["j"]
    # a new tracker on the same log and store (its snapshot), and one on a fresh store (the
    # whole history: another tracker taking the partition over) settle the job again, later
    again = Tracker(log, store, ROUTED, clock, router=router(counted))
    elsewhere = Tracker(log, InMemoryProjectionStore(), ROUTED, clock, router=router(counted))
    clock.at = at(10)
    await again.settle(["j"])
    await elsewhere.settle(["j"])
    assert (again.folds.from_snapshot, elsewhere.folds.whole) == (1, 1)
    assert calls == ["j"]
    await fire_timers(again, store, clock, at(100), inclusive=True)
    assert calls == ["j"]
    history = await log.read_job("j")
    assert [r.event.type for r in history][-2:] == ["routed", "rerouted"]
    assert history[-1].recorded_at == at(32)  # failed at 2, plus the recorded 30 s


def test_an_event_without_a_record_keeps_its_canonical_json() -> None:
    event = Retried(
        event_id="00000000-0000-0000-0000-000000000001",  # type: ignore[arg-type]
        job_id="j",
        occurred_at=at(0),
        attempt=2,
        source="jobtrail",
        pool="p",
        queue="q",
    )
    assert "routing" not in canonical_json(event)  # old logs keep their hashes


def _raises(request: RoutingRequest) -> RoutingChoice:
    raise RuntimeError("boom")


def _unknown_pool(request: RoutingRequest) -> RoutingChoice:
    return RoutingChoice("mars", timedelta(seconds=1))


def _negative(request: RoutingRequest) -> RoutingChoice:
    return RoutingChoice(None, timedelta(seconds=-5))


def _wrong_type(request: RoutingRequest) -> object:
    return {"pool": "west", "cooldown": 3}


def _seconds_not_timedelta(request: RoutingRequest) -> RoutingChoice:
    return RoutingChoice(None, 3)  # type: ignore[arg-type]  # a plugin's mistake, on purpose


def _too_long(request: RoutingRequest) -> RoutingChoice:
    return RoutingChoice(None, MAX_COOLDOWN + timedelta(seconds=1))


RELEASE = threading.Event()


def _hangs(request: RoutingRequest) -> RoutingChoice:
    RELEASE.wait(5)
    return to_west(request)


@pytest.mark.parametrize(
    ("plugin", "why"),
    [
        (_raises, "raised RuntimeError: boom"),
        (_unknown_pool, "pool 'mars'"),
        (_negative, "negative cooldown"),
        (_wrong_type, "not a RoutingChoice"),
        (_seconds_not_timedelta, "answered cooldown 3, not a timedelta"),
        (_too_long, f"a cooldown over {MAX_COOLDOWN.days} days"),
        (_hangs, "did not answer within"),
    ],
)
async def test_a_bad_plugin_falls_back_to_the_policy_and_is_an_anomaly(
    plugin: Plugin, why: str
) -> None:
    if plugin is _hangs:
        RELEASE.clear()
    log, store, clock = InMemoryEventLog(), InMemoryProjectionStore(), FakeClock()
    tracker = Tracker(log, store, ROUTED, clock, router=router(plugin, timeout_s=0.05))
    await drive(tracker, store, clock, failing_job())  # type: ignore[arg-type]
    RELEASE.set()
    history = [r async for h in job_histories(log.scan()) for r in h]
    event = decision_of(history)
    assert isinstance(event, Retried) and event.pool == "north"  # the policy's rule: stay
    assert event.routing is not None and event.routing.fallback is not None
    assert why in event.routing.fallback
    rule = routing_request(fold(history[:3]), ROUTED, ()).rule
    assert event.routing.cooldown_seconds == rule.cooldown.total_seconds()
    assert event.occurred_at == cooling(history).recorded_at + rule.cooldown
    assert answer_of(history).routing == event.routing
    state = fold(history)
    assert state.status is not None and state.status.value == "completed"
    assert [a.kind for a in state.anomalies] == ["routing_fallback"]
    assert state.anomalies[0].event_type == "routed"  # flagged once, when the answer came
    assert replay_decisions(history, ROUTED) == []


def test_a_plugin_that_is_not_installed_falls_back() -> None:
    (answer,) = Router({}).decide(fold(failed_once()), at(2), ROUTED)
    assert isinstance(answer, Routed) and answer.routing.fallback == "is not installed"


def _request(fleet: tuple[PoolFigures, ...], here: str = "north") -> RoutingRequest:
    history = [
        RecordedEvent(n, at(t), "", "", e)
        for n, (t, (e,)) in enumerate(failing_job()[:3], start=1)  # type: ignore[misc]
    ]
    state = replace(fold(history), pool=here)
    return routing_request(state, ROUTED, fleet)


def figures(pool: str, rate: float, outcomes: int = 10) -> PoolFigures:
    return PoolFigures(pool=pool, outcomes=outcomes, failure_rate=rate)


def test_least_failing_moves_to_the_fallback_pool_failing_least() -> None:
    fleet = (figures("east", 0.4), figures("north", 0.5), figures("west", 0.1))
    choice = least_failing(_request(fleet))
    assert choice.pool == "west"
    assert choice.cooldown == _request(fleet).rule.cooldown


def test_least_failing_stays_when_its_pool_fails_least() -> None:
    fleet = (figures("east", 0.4), figures("north", 0.05), figures("west", 0.1))
    assert least_failing(_request(fleet)).pool is None


def test_least_failing_prefers_a_seen_pool_and_follows_the_rule_when_its_pool_is_unseen() -> None:
    fleet = (figures("west", 0.3),)
    request = _request(fleet)  # north unseen; the rule (no reroute_after_failures) stays
    assert least_failing(request).pool is None
    moving = replace(request, rule=RoutingChoice("east", request.rule.cooldown))
    assert least_failing(moving).pool == "west"  # seen beats unseen, even at 30 %


def test_the_fleet_window_counts_each_attempt_once_per_pool() -> None:
    history = [
        RecordedEvent(n, at(t), "", "", e)
        for n, (t, (e,)) in enumerate(failing_job()[:3], start=1)  # type: ignore[misc]
    ]
    window = FleetWindow()
    window.observe(history)
    window.observe(history)
    assert window.snapshot(at(100)) == (
        PoolFigures(pool="north", outcomes=1, failure_rate=1.0, wait_seconds=1.0),
    )
    assert window.snapshot(at(2)) == (
        PoolFigures(pool="north", outcomes=0, failure_rate=0.0, wait_seconds=1.0),
    )


async def test_whatif_under_a_plugin_compares_load_per_pool() -> None:
    log, store, clock = InMemoryEventLog(), InMemoryProjectionStore(), FakeClock()
    await drive(Tracker(log, store, LIVE, clock), store, clock, failing_job())  # type: ignore[arg-type]
    report = await whatif(log, LIVE, ROUTED, at(100), router=router(to_west))
    assert report.real.attempts_by_pool == {"north": 2}
    assert report.simulated.attempts_by_pool == {"north": 1, "west": 1}
    assert (report.real.rerouted, report.simulated.rerouted) == (0, 1)
    assert report.jobs_changed == 1
    assert report.examples[0].simulated_decisions == ("rerouted#2:west",)
    assert report.real.as_dict()["mean_completion_seconds"] == 25.0


def test_the_policys_plugins_load_from_entry_points_or_fail_in_one_line() -> None:
    shipped = Policy.from_toml('[pools.gpu]\nrouting = "least-failing"\n')
    built = build_router(shipped)
    assert built is not None and set(built.plugins) == {"least-failing"}
    assert built.plugins["least-failing"].route is least_failing
    assert build_router(Policy.default()) is None
    with pytest.raises(ValueError, match=r"routing plugin 'nope' is not installed \(installed: "):
        build_router(Policy.from_toml('[defaults]\nrouting = "nope"\n'))


async def test_a_routed_decision_exports_its_record_as_json_text() -> None:
    history = await run(to_west)
    routed = next(r for r in history if isinstance(r.event, Rerouted))
    out = io.BytesIO()
    writer = open_writer("csv", out, EVENT_COLUMNS)
    writer.write([flat_event(routed)])
    writer.close()
    (row,) = csv.DictReader(io.StringIO(out.getvalue().decode()))
    assert json.loads(row["routing"])["plugin"] == "test-plugin"


async def test_whatif_under_another_plugin_asks_it_not_the_recorded_answers() -> None:
    log, store, clock = InMemoryEventLog(), InMemoryProjectionStore(), FakeClock()
    await drive(
        Tracker(log, store, ROUTED, clock, router=router(to_west)), store, clock, failing_job()
    )  # type: ignore[arg-type]
    same = await whatif(log, ROUTED, ROUTED, at(100), router=router(to_west))
    assert same.jobs_changed == 0

    def to_east(request: RoutingRequest) -> RoutingChoice:
        return RoutingChoice("east", timedelta(seconds=3))

    east = Router({"to-east": LoadedPlugin(to_east, "1.0")}, only="to-east")
    report = await whatif(log, ROUTED, ROUTED, at(100), router=east)
    assert report.examples[0].real_decisions == ("rerouted#2:west",)
    assert report.examples[0].simulated_decisions == ("rerouted#2:east",)
    assert report.simulated.attempts_by_pool == {"north": 1, "east": 1}
