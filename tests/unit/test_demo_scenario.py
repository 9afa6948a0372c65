"""The demo's simulation plan: validated knobs, the fleet, the job mix and attempt outcomes."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from app.demo.scenario import (
    EDGE_POOL,
    FAILURES,
    FALLBACK_POOL,
    FLAKY_ERROR,
    OK,
    REGULAR_POOLS,
    STALL,
    DemoConfig,
    NodeSpec,
    demo_policy,
    fleet,
    outcome,
    random_job,
    showcase_jobs,
    work_seconds,
)
from app.domain.events import JobType, Priority
from app.domain.policy import Policy
from app.domain.state import JobSpec


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"rate": 0}, "--rate must be between 0.1 and 200 jobs per second"),
        ({"rate": 1000}, "--rate must be between 0.1 and 200 jobs per second"),
        ({"nodes": 3}, "--nodes must be between 4 and 64"),
        ({"duration": 4000}, "--duration must be between 5 and 3600 seconds"),
        ({"failure_rate": 1.5}, "--failure-rate must be between 0 and 1"),
        (
            {"nodes": 5, "slow_nodes": 2},
            "--slow-nodes must leave 4 healthy nodes (at most 1 with --nodes 5)",
        ),
        ({"flaky_pool": "Bad Pool"}, "--flaky-pool must be a pool name"),
        ({"flaky_pool": "a.b"}, "--flaky-pool must be a pool name"),
        ({"flaky_pool": "gpu-a"}, "--flaky-pool must be new"),
    ],
)
def test_bad_knobs_are_refused_with_the_option_named(
    knobs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DemoConfig(**knobs)  # type: ignore[arg-type]


def test_the_fleet_serves_every_pool_and_its_slow_nodes_are_regular() -> None:
    config = DemoConfig(nodes=8, slow_nodes=2)
    nodes = fleet(config)
    assert len(nodes) == 8
    assert len({n.node_id for n in nodes}) == 8
    pools = Counter(n.pool for n in nodes)
    assert set(pools) == {*REGULAR_POOLS, "gpu-flaky"}
    slow = [n for n in nodes if n.slow]
    assert len(slow) == 2 and all(n.pool in REGULAR_POOLS for n in slow)
    healthy = {n.pool for n in nodes if not n.slow}
    assert set(REGULAR_POOLS) <= healthy  # every regular pool keeps a healthy node
    assert not any(n.pool == EDGE_POOL for n in nodes)  # the edge pool is never served


def test_showcase_jobs_script_every_feature_and_follow_the_id_scheme() -> None:
    jobs = {j.showcase: j for j in showcase_jobs("abc123", DemoConfig())}
    assert set(jobs) == {"retry", "reroute", "dead-letter", "exhausted", "lease", "ttl"}
    assert all(j.job_id == f"demo-abc123-{name}" for name, j in jobs.items())
    assert jobs["reroute"].pool == "gpu-flaky"
    assert jobs["reroute"].payload["script"][0] == FLAKY_ERROR
    assert jobs["dead-letter"].payload["script"] == ["invalid_input"]
    assert jobs["lease"].payload["script"][0] == STALL
    assert jobs["ttl"].pool == EDGE_POOL and jobs["ttl"].overrides == {"ttl_seconds": 3}


def test_the_random_mix_is_reproducible_and_mixed() -> None:
    config = DemoConfig()
    first = [random_job(random.Random(7), "r", n, config) for n in range(1, 300)]
    again = [random_job(random.Random(7), "r", n, config) for n in range(1, 300)]
    assert first == again
    rng = random.Random(7)
    jobs = [random_job(rng, "r", n, config) for n in range(1, 600)]
    assert {j.job_type for j in jobs} == set(JobType)
    assert {j.priority for j in jobs} == set(Priority)
    assert {j.pool for j in jobs} == {*REGULAR_POOLS, "gpu-flaky", EDGE_POOL}
    assert len({j.tenant for j in jobs}) > 1 and len({j.model for j in jobs}) > 1
    assert all(j.overrides == {"ttl_seconds": 3} for j in jobs if j.pool == EDGE_POOL)
    assert any("retry" in j.overrides for j in jobs)
    assert len({j.job_id for j in jobs}) == len(jobs)


def test_outcomes_follow_the_script_then_the_node_and_the_failure_rate() -> None:
    config = DemoConfig(failure_rate=0.5)
    rng = random.Random(1)
    steady, slow = NodeSpec("n1", "gpu-a"), NodeSpec("n2", "gpu-b", slow=True)
    flaky = NodeSpec("n3", "gpu-flaky")
    script = {"script": ["oom", OK]}
    assert outcome(rng, steady, config, script, 1) == "oom"
    assert outcome(rng, slow, config, script, 2) == OK
    assert outcome(rng, slow, config, script, 3) == STALL  # past the script: the node decides
    seen = Counter(outcome(rng, steady, config, {}, 1) for _ in range(2000))
    codes = {code for code, *_ in FAILURES}
    assert set(seen) == codes | {OK}
    assert 0.4 < sum(seen[c] for c in codes) / 2000 < 0.6
    flaky_seen = Counter(outcome(rng, flaky, DemoConfig(failure_rate=0), {}, 1) for _ in range(500))
    assert set(flaky_seen) == {FLAKY_ERROR, OK}
    never = DemoConfig(failure_rate=0)
    assert {outcome(rng, steady, never, None, 1) for _ in range(200)} == {OK}


def test_work_time_comes_from_the_payload_within_bounds() -> None:
    assert work_seconds({"work_ms": 250}) == 0.25
    assert work_seconds({"work_ms": -5}) == 0.0
    assert work_seconds({"work_ms": 10**9}) == 10.0
    assert work_seconds("not a dict") == 0.2


def test_the_demo_policy_reroutes_the_flaky_pool_and_keeps_leases_short() -> None:
    policy = Policy.from_toml(demo_policy(DemoConfig(flaky_pool="spot-1")))
    spec = JobSpec(JobType.SYNC, "m", Priority.BULK, "t", "spot-1", "q", "null")
    rules = policy.for_job(spec)
    assert rules.fallback_pools == (FALLBACK_POOL,)
    assert rules.reroute_after_failures == 1
    assert rules.lease_timeout.total_seconds() <= 3
    assert rules.retry.initial_interval.total_seconds() <= 1
    assert "invalid_input" in rules.non_retryable_errors


@pytest.mark.parametrize(("nodes", "slow"), [(4, 0), (5, 1), (8, 1), (64, 1)])
def test_the_default_slow_nodes_fit_every_allowed_fleet(nodes: int, slow: int) -> None:
    assert DemoConfig.default_slow_nodes(nodes) == slow
    config = DemoConfig(nodes=nodes, slow_nodes=DemoConfig.default_slow_nodes(nodes))
    healthy = {n.pool for n in fleet(config) if not n.slow}
    assert set(REGULAR_POOLS) <= healthy
