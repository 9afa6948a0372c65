"""What the demo simulates: the fleet, the job mix, each attempt's outcome, and its policy.

Pure: a seeded ``random.Random`` is passed in, so a run's choices are reproducible. A job's
payload carries what its nodes should do (``work_ms``, and for the showcase jobs a ``script`` of
outcomes per attempt), the way a real payload carries the prompt.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from app.domain.events import JobType, Priority

REGULAR_POOLS = ("gpu-a", "gpu-b", "cpu")
FALLBACK_POOL = "gpu-a"
EDGE_POOL = "edge"
"""A pool no node serves: its jobs (submitted with a short TTL) expire in the queue."""
LEASE_SECONDS = 3.0
STREAM_LEASE_SECONDS = 2.0
POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
OK = "ok"
STALL = "stall"
"""An outcome: the node goes quiet past its lease, then reports a late completion."""
FLAKY_ERROR = "gpu_xid_error"
FLAKY_FAILURE_RATE = 0.6
# error code, retryable, message, weight
FAILURES: tuple[tuple[str, bool, str, int], ...] = (
    ("oom", True, "CUDA out of memory", 4),
    ("timeout", True, "the model did not answer in time", 3),
    ("worker_crash", True, "worker process exited with signal 9", 2),
    ("invalid_input", False, "prompt is not valid UTF-8", 1),
    ("model_not_found", False, "model is not in the registry", 1),
)
RETRYABLE = {code: retryable for code, retryable, _, _ in FAILURES} | {FLAKY_ERROR: True}
MESSAGES = {code: message for code, _, message, _ in FAILURES} | {
    FLAKY_ERROR: "GPU fell off the bus (Xid 79)"
}
JOB_TYPES = (JobType.SYNC, JobType.POLLING, JobType.BATCH, JobType.STREAM)
JOB_TYPE_WEIGHTS = (40, 20, 25, 15)
PRIORITIES = (Priority.URGENT, Priority.BULK, Priority.TEST)
PRIORITY_WEIGHTS = (20, 65, 15)
TENANTS = ("acme", "globex", "initech", "umbrella")
MODELS = ("llama-3-8b", "llama-3-70b", "whisper-large", "sdxl-turbo")


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The knobs of ``jobtrail demo`` (validated: ValueError names the bad one)."""

    rate: float = 20.0
    nodes: int = 8
    duration: float = 60.0
    failure_rate: float = 0.15
    slow_nodes: int = 1
    flaky_pool: str = "gpu-flaky"
    seed: int = 7

    def __post_init__(self) -> None:
        checks = (
            (0.1 <= self.rate <= 200, "--rate must be between 0.1 and 200 jobs per second"),
            (4 <= self.nodes <= 64, "--nodes must be between 4 and 64"),
            (5 <= self.duration <= 3600, "--duration must be between 5 and 3600 seconds"),
            (0 <= self.failure_rate <= 1, "--failure-rate must be between 0 and 1"),
            (
                0 <= self.slow_nodes <= self.nodes - 4,
                f"--slow-nodes must leave 4 healthy nodes (at most {max(0, self.nodes - 4)} "
                f"with --nodes {self.nodes})",
            ),
            (bool(POOL_NAME.fullmatch(self.flaky_pool)), "--flaky-pool must be a pool name"),
            (self.flaky_pool not in (*REGULAR_POOLS, EDGE_POOL), "--flaky-pool must be new"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @staticmethod
    def default_slow_nodes(nodes: int) -> int:
        """One slow node where the fleet has room for it (4 healthy nodes), else none."""
        return min(1, max(0, nodes - 4))

    @property
    def submit_for(self) -> float:
        """The Cloud stops submitting before the end, so most jobs finish within the run."""
        return self.duration * 0.8


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One simulated node: the pool it serves and whether it is slow (misses leases)."""

    node_id: str
    pool: str
    slow: bool = False


def fleet(config: DemoConfig) -> list[NodeSpec]:
    """The nodes: a few on the flaky pool, the rest spread over the regular pools; the last
    ``slow_nodes`` regular nodes are slow."""
    flaky = max(1, config.nodes // 8)
    regular = config.nodes - flaky
    pools = [REGULAR_POOLS[i % len(REGULAR_POOLS)] for i in range(regular)]
    pools += [config.flaky_pool] * flaky
    return [
        NodeSpec(f"node-{i + 1:02d}", pool, slow=regular - config.slow_nodes <= i < regular)
        for i, pool in enumerate(pools)
    ]


def work_queues(pool: str) -> list[str]:
    return [f"jobtrail.work.{pool}.{job_type}" for job_type in JOB_TYPES]


@dataclass(frozen=True, slots=True)
class JobPlan:
    """A job the simulated Cloud submits (``JobtrailClient.submit`` keyword arguments)."""

    job_id: str
    job_type: JobType
    priority: Priority
    tenant: str
    model: str
    pool: str
    payload: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    showcase: str | None = None


def showcase_jobs(run_id: str, config: DemoConfig) -> list[JobPlan]:
    """Jobs that show every feature within seconds, whatever the dice say."""
    cases: tuple[tuple[str, str, list[str], dict[str, Any]], ...] = (
        ("retry", "gpu-a", ["oom", OK], {}),
        ("reroute", config.flaky_pool, [FLAKY_ERROR, OK], {}),
        ("dead-letter", "gpu-b", ["invalid_input"], {}),
        ("exhausted", "cpu", ["worker_crash"] * 3, {"max_attempts": 3}),
        ("lease", "gpu-b", [STALL, OK], {}),
        ("ttl", EDGE_POOL, [], {"ttl_seconds": 3}),
    )
    return [
        JobPlan(
            job_id=f"demo-{run_id}-{name}",
            job_type=JobType.SYNC,
            priority=Priority.URGENT,
            tenant="acme",
            model="llama-3-8b",
            pool=pool,
            payload={"work_ms": 150, "script": script},
            overrides=overrides,
            showcase=name,
        )
        for name, pool, script, overrides in cases
    ]


def random_job(rng: random.Random, run_id: str, number: int, config: DemoConfig) -> JobPlan:
    """One job of the mix: types, priorities, tenants, models, pools and some overrides."""
    job_type = rng.choices(JOB_TYPES, JOB_TYPE_WEIGHTS)[0]
    pools = (*REGULAR_POOLS, config.flaky_pool, EDGE_POOL)
    pool = rng.choices(pools, (30, 25, 25, 17, 3))[0]
    work_ms = rng.randint(1200, 2500) if job_type is JobType.STREAM else rng.randint(50, 400)
    overrides: dict[str, Any] = {}
    if pool == EDGE_POOL:
        overrides["ttl_seconds"] = 3
    elif rng.random() < 0.1:
        overrides["retry"] = {"initial_interval_seconds": 0.2}
    elif rng.random() < 0.05:
        overrides["max_attempts"] = 5
    return JobPlan(
        job_id=f"demo-{run_id}-{number:05d}",
        job_type=job_type,
        priority=rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0],
        tenant=rng.choice(TENANTS),
        model=rng.choice(MODELS),
        pool=pool,
        payload={"work_ms": work_ms, "prompt": f"request {number}"},
        overrides=overrides,
    )


def outcome(
    rng: random.Random, node: NodeSpec, config: DemoConfig, payload: Any, attempt: int
) -> str:
    """What this attempt does: ``ok``, ``stall`` or an error code."""
    script = payload.get("script") if isinstance(payload, dict) else None
    if isinstance(script, list) and attempt <= len(script):
        return str(script[attempt - 1])
    if node.slow:
        return STALL
    if node.pool == config.flaky_pool and rng.random() < FLAKY_FAILURE_RATE:
        return FLAKY_ERROR
    if rng.random() < config.failure_rate:
        codes = [code for code, _, _, _ in FAILURES]
        return rng.choices(codes, [weight for *_, weight in FAILURES])[0]
    return OK


def work_seconds(payload: Any) -> float:
    """How long the simulated inference takes (from the payload, bounded)."""
    work_ms = payload.get("work_ms", 200) if isinstance(payload, dict) else 200
    return min(max(float(work_ms), 0.0), 10_000.0) / 1000


def demo_policy(config: DemoConfig) -> str:
    """The tracker's policy for the demo: short leases and cooldowns, a reroute rule."""
    return f"""# jobtrail demo policy: everything happens within seconds.
jitter = 0.2

[defaults]
max_attempts = 3
lease_seconds = {LEASE_SECONDS}
ttl_seconds = 600
non_retryable_errors = ["invalid_input", "model_not_found"]

[defaults.retry]
initial_interval_seconds = 0.5
backoff_coefficient = 2.0
max_interval_seconds = 4

[job_types.batch]
max_attempts = 4

[job_types.stream]
lease_seconds = {STREAM_LEASE_SECONDS}

[priorities.test]
max_attempts = 2

[pools."{config.flaky_pool}"]
fallback_pools = ["{FALLBACK_POOL}"]
reroute_after_failures = 1
"""
