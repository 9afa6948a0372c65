"""Policy layers, validation, job overrides and queue names."""

from __future__ import annotations

import re
from datetime import timedelta
from importlib import resources
from typing import Any

import pytest
from pydantic import ValidationError

from app.domain.events import JobType, Priority, RetryOverride
from app.domain.policy import BUILTIN, JobPolicy, Policy, RetrySettings
from app.domain.state import JobSpec


def spec(
    job_type: JobType = JobType.SYNC,
    priority: Priority = Priority.URGENT,
    pool: str = "gpu-a",
    **overrides: Any,
) -> JobSpec:
    return JobSpec(job_type, "llama", priority, "acme", pool, "q", "null", **overrides)


LAYERS = [
    ("defaults", "[defaults]"),
    ("job_types", "[job_types.sync]"),
    ("priorities", "[priorities.urgent]"),
    ("profiles", '[profiles."sync.urgent"]'),
    ("pools", "[pools.gpu-a]"),
]


def _layered(present: list[int]) -> str:
    """Each present layer i sets lease_seconds = 10 + i."""
    return "\n".join(f"{LAYERS[i][1]}\nlease_seconds = {10 + i}\n" for i in present)


@pytest.mark.parametrize("top", range(len(LAYERS)))
def test_the_highest_present_layer_wins(top: int) -> None:
    policy = Policy.from_toml(_layered(list(range(top + 1))))
    assert policy.for_job(spec()).lease_timeout == timedelta(seconds=10 + top)


@pytest.mark.parametrize("only", range(len(LAYERS)))
def test_each_layer_alone_beats_the_builtin(only: int) -> None:
    policy = Policy.from_toml(_layered([only]))
    assert policy.for_job(spec()).lease_timeout == timedelta(seconds=10 + only)


def test_layers_written_in_any_order_merge_in_the_documented_order() -> None:
    policy = Policy.from_toml(_layered([4, 2, 0, 3, 1]))
    assert policy.for_job(spec()).lease_timeout == timedelta(seconds=14)


def test_the_jobs_own_overrides_beat_every_layer() -> None:
    policy = Policy.from_toml(_layered([0, 1, 2, 3, 4]))
    rules = policy.for_job(spec(lease_seconds=99.5))
    assert rules.lease_timeout == timedelta(seconds=99.5)


def test_layers_only_apply_to_their_own_job_type_priority_and_pool() -> None:
    policy = Policy.from_toml(_layered([0, 1, 2, 3, 4]))
    assert policy.for_job(spec(pool="other")).lease_timeout == timedelta(seconds=13)
    assert policy.for_job(spec(JobType.BATCH, pool="other")).lease_timeout == timedelta(seconds=12)
    other_priority = spec(JobType.BATCH, Priority.BULK, pool="other")
    assert policy.for_job(other_priority).lease_timeout == timedelta(seconds=10)
    other_type = spec(JobType.SYNC, Priority.TEST, pool="other")
    assert policy.for_job(other_type).lease_timeout == timedelta(seconds=11)


def test_layers_merge_field_by_field() -> None:
    policy = Policy.from_toml(
        """
        [defaults]
        max_attempts = 7
        [defaults.retry]
        initial_interval_seconds = 1
        backoff_coefficient = 3
        [job_types.sync]
        ttl_seconds = 50
        [priorities.urgent]
        rabbit_priority = 8
        [profiles."sync.urgent".retry]
        max_interval_seconds = 45
        [pools.gpu-a]
        non_retryable_errors = ["bad"]
        """
    )
    assert policy.for_job(spec()) == JobPolicy(
        max_attempts=7,
        lease_timeout=timedelta(seconds=300),
        ttl=timedelta(seconds=50),
        retry=RetrySettings(timedelta(seconds=1), 3.0, timedelta(seconds=45)),
        rabbit_priority=8,
        non_retryable_errors=frozenset({"bad"}),
        fallback_pools=(),
        reroute_after_failures=None,
    )


def test_builtin_defaults_fill_every_field() -> None:
    assert all(
        value is not None
        for value in BUILTIN.model_dump(exclude={"reroute_after_failures", "routing"}).values()
    )
    policy = Policy.default()
    assert policy.jitter == 0.2
    assert policy.clock_skew_tolerance == timedelta(minutes=5)
    assert policy.for_job(spec()) == JobPolicy(
        max_attempts=3,
        lease_timeout=timedelta(minutes=5),
        ttl=timedelta(hours=4),
        retry=RetrySettings(timedelta(seconds=10), 2.0, timedelta(minutes=10)),
        rabbit_priority=5,
        non_retryable_errors=frozenset(),
        fallback_pools=(),
        reroute_after_failures=None,
    )


def test_job_overrides_replace_single_fields() -> None:
    policy = Policy.from_toml(
        """
        [pools.gpu-a]
        fallback_pools = ["gpu-b"]
        reroute_after_failures = 3
        [defaults.retry]
        initial_interval_seconds = 4
        backoff_coefficient = 5
        max_interval_seconds = 400
        """
    )
    rules = policy.for_job(
        spec(
            max_attempts=9,
            ttl_seconds=77,
            retry=RetryOverride(max_interval_seconds=30),
            fallback_pools=("x", "y"),
            reroute_after_failures=1,
        )
    )
    assert rules.max_attempts == 9
    assert rules.ttl == timedelta(seconds=77)
    assert rules.retry == RetrySettings(timedelta(seconds=4), 5.0, timedelta(seconds=30))
    assert rules.fallback_pools == ("x", "y")
    assert rules.reroute_after_failures == 1


def test_an_empty_job_fallback_list_keeps_the_policys() -> None:
    policy = Policy.from_toml(
        '[pools.gpu-a]\nfallback_pools = ["gpu-b"]\nreroute_after_failures = 2'
    )
    rules = policy.for_job(spec(fallback_pools=()))
    assert rules.fallback_pools == ("gpu-b",)
    assert rules.reroute_after_failures == 2


def test_rabbit_priority_is_capped_by_max_priority() -> None:
    policy = Policy.from_toml("max_priority = 4\n[priorities.urgent]\nrabbit_priority = 9")
    assert policy.for_job(spec()).rabbit_priority == 4
    assert policy.for_job(spec(priority=Priority.BULK)).rabbit_priority == 4
    assert Policy.from_toml("max_priority = 9").for_job(spec()).rabbit_priority == 5


# --- validation ---------------------------------------------------------------------------------


def test_invalid_toml_is_a_value_error_naming_the_problem() -> None:
    with pytest.raises(ValueError, match=r"^policy is not valid TOML: .*line 1") as exc:
        Policy.from_toml("[defaults\nmax_attempts = 3")
    assert not isinstance(exc.value, ValidationError)
    assert exc.value.__cause__ is not None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("surprise = 1", "surprise"),
        ("[defaults]\nmax_attempt = 3", "defaults.max_attempt"),
        ("[defaults.retry]\njitter = 0.1", "defaults.retry.jitter"),
        ("[job_types.cron]\nmax_attempts = 3", "job_types.cron.[key]"),
        ("[priorities.high]\nmax_attempts = 3", "priorities.high.[key]"),
        ("[pools.p]\ncolour = 'red'", "pools.p.colour"),
        ("jitter = 0.6", "jitter"),
        ("max_priority = 0", "max_priority"),
        ("clock_skew_tolerance_seconds = 0", "clock_skew_tolerance_seconds"),
        ("[defaults]\nmax_attempts = 0", "defaults.max_attempts"),
        ("[defaults]\nlease_seconds = -5", "defaults.lease_seconds"),
        ("[defaults]\nrabbit_priority = 10", "defaults.rabbit_priority"),
        ("[defaults]\nreroute_after_failures = 0", "defaults.reroute_after_failures"),
        ("[defaults.retry]\nbackoff_coefficient = 0.5", "defaults.retry.backoff_coefficient"),
        ("[queues]\n'p.sync' = 3", "queues.p.sync"),
        # names decide would put into a Rerouted event must be valid names there
        ("[queues]\n'p.sync' = ''", "queues.p.sync"),
        (f"[queues]\n'p.sync' = '{'q' * 201}'", "queues.p.sync"),
        ("[pools.p]\nfallback_pools = ['']", "pools.p.fallback_pools.0"),
        (f"[defaults]\nfallback_pools = ['ok', '{'p' * 201}']", "defaults.fallback_pools.1"),
    ],
)
def test_invalid_settings_raise_a_value_error_naming_the_setting(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid policy: {re.escape(where)}: ") as exc:
        Policy.from_toml(text)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value.__cause__, ValidationError)


def test_an_unknown_key_is_named_with_pydantics_reason() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted") as exc:
        Policy.from_toml("[defaults]\nmax_attempt = 3")
    assert str(exc.value) == "invalid policy: defaults.max_attempt: Extra inputs are not permitted"


def test_several_invalid_settings_name_the_first_and_count_the_rest() -> None:
    with pytest.raises(ValueError, match=r"^invalid policy: jitter: .* \(and 2 more\)$"):
        Policy.from_toml("jitter = 0.9\nmax_priority = 0\n[defaults]\nmax_attempts = 0")


@pytest.mark.parametrize(
    "name", ["sync", "sync.high", "cron.urgent", "sync.urgent.x", ".urgent", "urgent.sync"]
)
def test_profile_names_are_job_type_dot_priority(name: str) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"profile '{name}' is not '<job_type>.<priority>'")
    ):
        Policy.from_toml(f'[profiles."{name}"]\nmax_attempts = 2')


def test_every_profile_name_combination_is_accepted() -> None:
    text = "\n".join(f'[profiles."{t}.{p}"]\nmax_attempts = 2' for t in JobType for p in Priority)
    assert len(Policy.from_toml(text).document.profiles) == len(JobType) * len(Priority)


def test_a_policy_is_immutable() -> None:
    policy = Policy.default()
    with pytest.raises(ValidationError, match="frozen"):
        policy.document.jitter = 0.1  # type: ignore[misc]


# --- queues -------------------------------------------------------------------------------------


def test_queue_names_default_to_pool_and_job_type() -> None:
    policy = Policy.default()
    assert policy.queue_for("gpu-a", JobType.SYNC) == "jobtrail.work.gpu-a.sync"
    assert policy.queue_for("shared", JobType.BATCH) == "jobtrail.work.shared.batch"


def test_the_queues_table_overrides_one_pool_and_job_type() -> None:
    policy = Policy.from_toml('[queues]\n"gpu-a.sync" = "inference.gpu-a.sync"')
    assert policy.queue_for("gpu-a", JobType.SYNC) == "inference.gpu-a.sync"
    assert policy.queue_for("gpu-a", JobType.STREAM) == "jobtrail.work.gpu-a.stream"
    assert policy.queue_for("gpu-b", JobType.SYNC) == "jobtrail.work.gpu-b.sync"


# --- the shipped file ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return Policy.from_toml(
        resources.files("app.domain").joinpath("default_policy.toml").read_text()
    )


def test_the_shipped_policy_parses(shipped: Policy) -> None:
    assert shipped.jitter == 0.2
    assert shipped.clock_skew_tolerance == timedelta(minutes=5)
    assert shipped.document.max_priority == 9


@pytest.mark.parametrize(
    ("job_type", "priority", "max_attempts", "lease", "ttl", "rabbit", "initial", "maximum"),
    [
        (JobType.SYNC, Priority.URGENT, 4, 120, 900, 9, 2, 60),
        (JobType.SYNC, Priority.BULK, 3, 120, 900, 3, 10, 600),
        (JobType.SYNC, Priority.TEST, 2, 120, 900, 0, 10, 600),
        (JobType.BATCH, Priority.BULK, 5, 1800, 86400, 3, 10, 600),
        (JobType.BATCH, Priority.TEST, 2, 1800, 86400, 0, 10, 600),
        (JobType.POLLING, Priority.URGENT, 3, 300, 3600, 9, 10, 600),
        (JobType.STREAM, Priority.BULK, 3, 600, 3600, 3, 10, 600),
    ],
)
def test_the_shipped_policy_resolves(
    shipped: Policy,
    job_type: JobType,
    priority: Priority,
    max_attempts: int,
    lease: int,
    ttl: int,
    rabbit: int,
    initial: int,
    maximum: int,
) -> None:
    rules = shipped.for_job(spec(job_type, priority, pool="shared"))
    assert rules.max_attempts == max_attempts
    assert rules.lease_timeout == timedelta(seconds=lease)
    assert rules.ttl == timedelta(seconds=ttl)
    assert rules.rabbit_priority == rabbit
    assert rules.retry == RetrySettings(timedelta(seconds=initial), 2.0, timedelta(seconds=maximum))
    assert rules.non_retryable_errors == {"invalid_input", "model_not_found", "payload_too_large"}
    assert rules.fallback_pools == ()


def test_the_rules_memo_starts_afresh_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.domain.policy as policy_module

    monkeypatch.setattr(policy_module, "RULES_MEMO_SIZE", 2)
    policy = Policy.default()
    specs = [
        JobSpec(JobType.SYNC, "m", Priority.BULK, "t", f"pool-{n}", "q", "null") for n in range(3)
    ]
    first = policy.for_job(specs[0])
    policy.for_job(specs[1])
    assert policy.for_job(specs[0]) is first  # remembered while the memo has room
    policy.for_job(specs[2])  # the memo is full: it starts afresh
    again = policy.for_job(specs[0])
    assert again == first
    assert again is not first
