"""Latency samples, the SLA and fairness reports, and the policy's [sla] and [fairness] tables."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_queries import InMemoryJobQueries
from app.adapters.memory_store import InMemoryProjectionStore
from app.bootstrap.metrics import OTHER, Metrics
from app.domain.chain import RecordedEvent
from app.domain.events import ExpiryReason
from app.domain.machine import DEFAULT_SKEW_TOLERANCE, fold
from app.domain.policy import Policy
from app.domain.sla import Measure
from app.ports import LatencyRow
from app.services.analysis import Window
from app.services.latency import GroupKey, JobFacts, Sample, job_facts, row_samples
from app.services.projection import attempt_rows, job_row
from app.services.sla import (
    Dimension,
    FairnessReport,
    parse_by,
    report_window,
    sla_from_log,
    sla_from_projection,
    sla_report,
)
from tests.unit.factories import (
    T0,
    completed,
    expired,
    failed,
    recorded,
    rerouted,
    reserved,
    retried,
    submitted,
)
from tests.unit.test_whatif import END, LIVE, real_history
from tests.unit.test_whatif import at as whatif_at

SLA_POLICY = Policy.from_toml(
    """
[sla.urgent]
wait_p95_seconds = 2
end_to_end_p99_seconds = 60
[sla."batch.urgent"]
wait_p95_seconds = 30
[fairness]
starvation_factor = 3
min_attempts = 2
"""
)


def at(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def retried_history() -> list[RecordedEvent]:
    """Submitted at 0, reserved at 4, failed at 10, retried at 15, reserved at 16, done at 20."""
    events = [
        submitted(pool="gpu-a", tenant="acme", priority="urgent", job_type="sync"),
        reserved(at=T0 + at(4)),
        failed(at=T0 + at(10), error_code="oom"),
        retried(at=T0 + at(15), attempt=2, pool="gpu-b"),
        reserved(at=T0 + at(16), attempt=2),
        completed(at=T0 + at(20), attempt=2),
    ]
    return [recorded(e, seq) for seq, e in enumerate(events, start=1)]


def measured(samples: list[Sample]) -> list[tuple[str, str, float]]:
    return [(s.key.pool, s.measure, s.seconds) for s in samples]


def test_a_retried_attempt_waits_from_its_republish_and_runs_from_its_reservation() -> None:
    facts = job_facts(retried_history(), DEFAULT_SKEW_TOLERANCE)
    assert measured(facts.samples) == [
        ("gpu-a", Measure.WAIT, 4.0),
        ("gpu-a", Measure.RUN, 6.0),
        ("gpu-b", Measure.WAIT, 1.0),
        ("gpu-b", Measure.RUN, 4.0),
        ("gpu-b", Measure.END_TO_END, 20.0),
    ]
    assert [(s.key.pool, s.key.tenant, s.at) for s in facts.submissions] == [("gpu-a", "acme", T0)]


def projection_samples(history: list[RecordedEvent]) -> list[Sample]:
    row = job_row(fold(history), SLA_POLICY)
    attempts = attempt_rows(history[0].job_id, history)
    return [s for a in attempts for s in row_samples(LatencyRow.of(row, a))]


def test_the_projection_rows_hold_the_same_samples() -> None:
    history = retried_history()
    log_side = job_facts(history, DEFAULT_SKEW_TOLERANCE).samples
    assert sorted(projection_samples(history), key=repr) == sorted(log_side, key=repr)


Step = tuple[str, float, float, str]
"""One attempt: how it is queued, its wait, its run, and how it ends (``unreserved``: never)."""
steps = st.tuples(
    st.sampled_from(["retried", "rerouted"]),
    st.floats(0, 100),
    st.floats(0, 100),
    st.sampled_from(["completed", "failed", "lease", "ttl", "unreserved"]),
)


def lifecycle(attempts: list[Step]) -> list[RecordedEvent]:
    """A job whose attempts are queued, reserved and ended as ``attempts`` say (until one
    completes, expires or is never reserved), each event recorded when it occurred."""
    clock, events = T0, [submitted(pool="gpu-a", tenant="acme")]
    for n, (republish, wait, run, end) in enumerate(attempts, start=1):
        if n > 1:
            make = retried if republish == "retried" else rerouted
            events.append(make(at=clock, attempt=n, pool=f"pool-{n % 3}"))
        if end == "unreserved":
            break
        clock += at(wait)
        events.append(reserved(at=clock, attempt=n))
        clock += at(run)
        if end == "completed":
            events.append(completed(at=clock, attempt=n))
            break
        if end == "ttl":
            events.append(expired(at=clock, attempt=n, reason=ExpiryReason.TTL))
            break
        if end == "failed":
            events.append(failed(at=clock, attempt=n))
        else:
            events.append(expired(at=clock, attempt=n))
        clock += at(5)
    return [recorded(e, seq) for seq, e in enumerate(events, start=1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(steps, min_size=1, max_size=6))
def test_log_and_projection_agree_on_any_lifecycle(attempts: list[Step]) -> None:
    history = lifecycle(attempts)
    assert fold(history).anomalies == ()
    log_side = job_facts(history, DEFAULT_SKEW_TOLERANCE).samples
    assert sorted(projection_samples(history), key=repr) == sorted(log_side, key=repr)


def sample(measure: Measure, seconds: float, tenant: str = "acme", **key: str) -> Sample:
    group = GroupKey(
        key.get("pool", "gpu-a"), key.get("job_type", "sync"), key.get("priority", "urgent"), tenant
    )
    return Sample(group, measure, seconds, T0 + at(seconds))


def test_quantiles_counts_and_breaches_of_each_target() -> None:
    waits = [sample(Measure.WAIT, s) for s in (0.5, 1, 1, 1.5, 3, 5)]
    report = sla_report(waits, SLA_POLICY, Window(), (Dimension.POOL, Dimension.PRIORITY))
    (group,) = report.as_dict()["groups"]
    assert (group["pool"], group["priority"]) == ("gpu-a", "urgent")
    wait = group["wait"]
    assert (wait["count"], wait["p50"], wait["p95"], wait["p99"]) == (6, 1.0, 3.0, 3.0)
    assert wait["targets"] == {"p95": 2.0}
    assert wait["met"] == {"p95": False}
    assert wait["breaches"] == {"p95": 2}
    assert group["end_to_end"]["count"] == 0
    assert report.as_dict()["breaches"] == 2


def test_a_group_of_jobs_with_different_targets_counts_breaches_but_states_no_target() -> None:
    samples = [
        sample(Measure.WAIT, 10, job_type="sync"),
        sample(Measure.WAIT, 10, job_type="batch"),
    ]
    (group,) = sla_report(samples, SLA_POLICY, Window(), (Dimension.POOL,)).as_dict()["groups"]
    assert group["wait"]["targets"] is None and group["wait"]["met"] is None
    assert group["wait"]["breaches"] == {"p95": 1}  # only the sync job's 2 s target is broken


def test_only_samples_ending_in_the_window_count() -> None:
    samples = [sample(Measure.RUN, s) for s in (1, 2, 3, 4)]
    window = Window(T0 + at(2), T0 + at(4))
    (group,) = sla_report(samples, SLA_POLICY, window).as_dict()["groups"]
    assert group["run"]["count"] == 2


def test_group_by_is_parsed_and_an_unknown_dimension_is_named() -> None:
    assert parse_by("tenant, pool") == (Dimension.POOL, Dimension.TENANT)
    assert parse_by(None) == tuple(Dimension)
    with pytest.raises(ValueError, match="cannot group by 'node'"):
        parse_by("pool,node")


def test_the_window_defaults_to_the_last_hour_and_refuses_an_empty_one() -> None:
    assert report_window(None, None, T0) == Window(T0 - timedelta(hours=1), T0)
    with pytest.raises(ValueError, match="must be before"):
        report_window(T0, T0, T0)
    with pytest.raises(ValueError, match="leaves no hour before it"):
        report_window(None, datetime.min.replace(tzinfo=UTC), T0)
    with pytest.raises(ValueError, match="longer than 31 days"):
        report_window(T0 - timedelta(days=40), T0, T0)


def test_a_tenant_waiting_far_longer_than_its_pool_is_starved() -> None:
    facts = JobFacts(
        samples=[sample(Measure.WAIT, 1) for _ in range(8)]
        + [sample(Measure.WAIT, 30, tenant="globex") for _ in range(2)]
        + [sample(Measure.WAIT, 30, tenant="initech")]
    )
    report = FairnessReport(Window(), starvation_factor=3, min_attempts=2)
    report.add(facts)
    body = report.as_dict()
    assert [(s["pool"], s["tenant"]) for s in body["starved"]] == [("gpu-a", "globex")]
    (pool,) = body["pools"]
    assert (pool["started"], pool["wait_p95"]) == (11, 30.0)
    acme, globex, _ = pool["tenants"]
    assert (acme["started_share"], acme["wait_p95"]) == (round(8 / 11, 4), 1.0)
    assert globex["wait_p95_ratio"] == 1.0  # the pool's p95 is globex's own wait here...
    assert globex["others_wait_p95"] == 1.0  # ...but the other tenants wait 1 s


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[sla.gold]\nwait_p95_seconds = 1", "sla section 'gold' is not"),
        ('[sla."sync.gold"]\nwait_p95_seconds = 1', "sla section 'sync.gold'"),
        ("[sla.urgent]\nwait_p90_seconds = 1", "sla.urgent.wait_p90_seconds"),
        ("[sla.urgent]\nrun_p99_seconds = 0", "sla.urgent.run_p99_seconds"),
        ("[fairness]\nstarvation_factor = 1", "fairness.starvation_factor"),
    ],
)
def test_a_bad_sla_or_fairness_table_is_refused_with_its_place(toml: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.from_toml(toml)


def test_a_profile_target_overrides_its_class_target_by_target() -> None:
    batch = SLA_POLICY.sla_targets("batch", "urgent")
    assert batch.of(Measure.WAIT) == (("p95", 30.0),)
    assert batch.of(Measure.END_TO_END) == (("p99", 60.0),)
    assert SLA_POLICY.sla_targets("sync", "bulk").of(Measure.WAIT) == ()


async def test_log_and_projection_agree_on_the_whatif_script_the_real_tracker_wrote() -> None:
    """Retries, a reroute, lease and TTL expiries, a stale report, a redrive, a cancellation."""
    log, store = InMemoryEventLog(), InMemoryProjectionStore()
    await real_history(log, store)
    window = Window(whatif_at(0), whatif_at(END + 1))
    from_log = (await sla_from_log(log, LIVE, window)).as_dict()
    queries = InMemoryJobQueries(store)
    from_sql = (await sla_from_projection(queries, LIVE, window)).as_dict()
    assert from_log.pop("source") == "log" and from_sql.pop("source") == "projection"
    assert from_log == from_sql
    counts: Counter[str] = Counter()
    for group in from_log["groups"]:
        for measure in Measure:
            counts[measure] += group[measure]["count"]
    assert counts[Measure.END_TO_END] == 6  # the six completed jobs
    assert counts[Measure.WAIT] > counts[Measure.END_TO_END]


def test_the_shipped_policy_sets_urgent_targets_and_the_fairness_rule() -> None:
    shipped = Policy.from_toml(
        resources.files("app.domain").joinpath("default_policy.toml").read_text()
    )
    urgent = shipped.sla_targets("sync", "urgent")
    assert urgent.of(Measure.WAIT) == (("p95", 2.0),)
    assert urgent.of(Measure.END_TO_END) == (("p99", 60.0),)
    assert shipped.sla_targets("batch", "bulk").by_measure == ()
    assert shipped.document.fairness.starvation_factor == 2.0


def test_latency_histogram_labels_stay_bounded() -> None:
    metrics = Metrics()
    for i in range(100):
        metrics.observe_latency(Measure.WAIT, f"pool-{i}", "sync", "urgent", 1.0)
    metrics.observe_latency(Measure.RUN, "gpu-a", "no-such-type", "(none)", -2.0)
    pools: set[str] = set()
    runs: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == "jobtrail_job_wait_seconds_count":
                pools.add(s.labels["pool"])
            if s.name == "jobtrail_job_run_seconds_sum":
                runs[s.labels["job_type"], s.labels["priority"]] = s.value
    assert OTHER in pools and len(pools) == 64 + 1
    assert runs == {(OTHER, OTHER): 0.0}  # a negative time (a clock step) counts as zero
