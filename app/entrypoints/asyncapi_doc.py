"""The AsyncAPI 3.0 document of the event contract, for a tracker's running configuration.

The channels are the topology ``declare_topology`` declares, plus the work queues; the server,
vhost, partitions and priorities are the running configuration's (never its credentials); the
schemas and messages are in app/entrypoints/asyncapi_schemas.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

from app.domain.events import EVENT_TYPES, JobType, Priority
from app.domain.policy import Policy
from app.entrypoints.asyncapi_schemas import ROUTING_KEY_RULE, messages, schemas
from app.ports import topology

TITLE = "Jobtrail event contract"
VERSION = "1"
AMQP = "0.3.0"  # the AMQP bindings' version


def server_of(rabbit_url: str) -> tuple[str, str, str]:
    """(protocol, host:port, vhost) of an AMQP URL, as aio-pika reads it; never the password."""
    parts = urlsplit(rabbit_url)
    secure = parts.scheme == "amqps"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return (
        ("amqps" if secure else "amqp"),
        f"{host}:{parts.port or (5671 if secure else 5672)}",
        vhost,
    )


def priorities_of(policy: Policy) -> dict[str, int | dict[str, int]]:
    """The AMQP priority of each priority class (per job type where the policy varies it)."""
    found: dict[str, int | dict[str, int]] = {}
    cap = policy.document.max_priority
    for priority in Priority:
        per_type = {
            str(job_type): min(
                int(policy.section_for(job_type, priority, "").rabbit_priority or 0), cap
            )
            for job_type in JobType
        }
        values = set(per_type.values())
        found[str(priority)] = values.pop() if len(values) == 1 else per_type
    return found


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/{kind}/{name}"}


def _queue(name: str, vhost: str) -> dict[str, Any]:
    queue = {"name": name, "durable": True, "exclusive": False, "autoDelete": False}
    return {"amqp": {"is": "queue", "queue": queue | {"vhost": vhost}, "bindingVersion": AMQP}}


def _exchange(name: str, kind: str, vhost: str) -> dict[str, Any]:
    exchange = {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": vhost}
    return {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP}}


def _channel(
    address: str | None, description: str, messages: list[str], bindings: dict[str, Any]
) -> dict[str, Any]:
    return {
        "address": address,
        "description": description,
        "messages": {name: _ref("components/messages", name) for name in messages},
        "bindings": bindings,
    }


def _channels(vhost: str, partitions: int, priorities: dict[str, Any]) -> dict[str, Any]:
    events = [f"event.{t}" for t in EVENT_TYPES]
    channels = {
        f"event.{t}": _channel(
            f"job.{t}",
            f"`{t}` events, published persistent to the topic exchange "
            f"`{topology.EVENTS_EXCHANGE}` with routing key `job.{t}`. {ROUTING_KEY_RULE}",
            [f"event.{t}"],
            _exchange(topology.EVENTS_EXCHANGE, "topic", vhost),
        )
        for t in EVENT_TYPES
    }
    partition = _channel(
        "jobtrail.tracker.{partition}",
        "The trackers' input: jobtrail.events routes job.# through jobtrail.intake (fanout) "
        "and jobtrail.ring (consistent hash on x-jobtrail-job-id) to these quorum queues, "
        "single active consumer each; after x-delivery-limit "
        f"{topology.TRACKER_DELIVERY_LIMIT} deliveries RabbitMQ moves an event to "
        f"{topology.QUARANTINE_QUEUE}.",
        events,
        _queue("jobtrail.tracker.{partition}", vhost),
    )
    partition["parameters"] = {
        "partition": {
            "description": "partition index (JOBTRAIL_PARTITIONS of this deployment)",
            "enum": [str(i) for i in range(partitions)],
        }
    }
    work = _channel(
        "jobtrail.work.{pool}.{job_type}",
        "A work queue (a submitted event's `queue`; by default jobtrail.work.<pool>.<job_type>),"
        " durable, with x-max-priority and x-dead-letter-exchange jobtrail.broker-dlx. AMQP "
        f"priority of each priority class: {_priority_text(priorities)}.",
        ["cloudJob", "republishedJob"],
        _queue("jobtrail.work.{pool}.{job_type}", vhost),
    )
    work["parameters"] = {
        "pool": {"description": "the job's pool (the submitted or rerouted event's `pool`)"},
        "job_type": {"description": "the job type", "enum": [str(t) for t in JobType]},
    }
    work["x-jobtrail-priority-of-class"] = priorities
    return channels | {
        "partition": partition,
        "unrouted": _channel(
            topology.UNROUTED_QUEUE,
            "Events published while the ring is not built (after a broker start): the "
            "alternate exchange of jobtrail.intake feeds this quorum queue; the tracker that "
            "rebuilds the ring records them, in order.",
            events,
            _queue(topology.UNROUTED_QUEUE, vhost),
        ),
        "work": work,
        "dead": _channel(
            topology.DEAD_QUEUE, "Dead-lettered jobs, parked with their reason.", ["deadJob"],
            _queue(topology.DEAD_QUEUE, vhost),
        ),
        "quarantine": _channel(
            topology.QUARANTINE_QUEUE,
            "Input the tracker cannot accept (not UTF-8, not JSON, not a valid event, refused by "
            "the store, a broker dead-letter it cannot read) and poison events.",
            ["quarantined", "poisonEvent"],
            _queue(topology.QUARANTINE_QUEUE, vhost),
        ),
        "brokerDlx": _channel(
            None,
            "The dead-letter exchange of every work queue (fanout; the routing key is the "
            "work queue's).",
            ["brokerDeadJob"],
            _exchange(topology.BROKER_DLX, "fanout", vhost),
        ),
        "brokerDead": _channel(
            topology.BROKER_DEAD_QUEUE, "Bound to jobtrail.broker-dlx: Jobtrail consumes it.",
            ["brokerDeadJob"], _queue(topology.BROKER_DEAD_QUEUE, vhost),
        ),
    }  # fmt: skip


def _priority_text(priorities: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in priorities.items())


def _operation(action: str, channel: str, messages: list[str], summary: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "channel": _ref("channels", channel),
        "summary": summary,
        "messages": [_ref(f"channels/{channel}/messages", name) for name in messages],
    }
    if action == "send":
        binding = {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP}
        operation["bindings"] = {"amqp": binding}
    return operation


def _operations() -> dict[str, Any]:
    events = [f"event.{t}" for t in EVENT_TYPES]
    operations = {
        f"rekey.{t}": _operation(
            "send",
            f"event.{t}",
            [f"event.{t}"],
            f"Re-publish a `{t}` event that came without x-jobtrail-job-id, with it.",
        )
        for t in EVENT_TYPES
    }
    return operations | {
        "record": _operation("receive", "partition", events, "Record events, per partition."),
        "recordUnrouted": _operation(
            "receive", "unrouted", events, "Record what came while the ring was rebuilt."
        ),
        "republish": _operation(
            "send", "work", ["republishedJob"],
            "Publish the job for a retried, rerouted or redriven attempt (after the decision "
            "is committed), with its priority class's AMQP priority.",
        ),
        "deadLetter": _operation(
            "send", "dead", ["deadJob"], "Park a dead-lettered job, once the decision is committed."
        ),
        "quarantine": _operation(
            "send", "quarantine", ["quarantined"], "Park an input that cannot be accepted."
        ),
        "recordBrokerDeadLetters": _operation(
            "receive", "brokerDead", ["brokerDeadJob"],
            "Record job messages RabbitMQ dead-lettered as `dead_lettered` (source `broker`).",
        ),
    }  # fmt: skip


def contract(rabbit_url: str, partitions: int, policy: Policy) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for a tracker running with these settings (JSON-ready)."""
    protocol, host, vhost = server_of(rabbit_url)
    priorities = priorities_of(policy)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Lifecycle events of inference jobs and the messages Jobtrail "
            "publishes. Producers publish each event persistent to the topic exchange "
            "jobtrail.events with routing key job.<type> and the header x-jobtrail-job-id; "
            f"event_id is the idempotency key. {ROUTING_KEY_RULE} AMQP priority of each "
            f"priority class: {_priority_text(priorities)}. See docs/protocol.md and "
            "docs/events.md.",
        },
        "servers": {
            "rabbitmq": {
                "host": host,
                "protocol": protocol,
                "protocolVersion": "0.9.1",
                "pathname": "/" + quote(vhost, safe=""),
                "description": f"RabbitMQ, vhost {vhost!r}",
            }
        },
        "defaultContentType": "application/json",
        "channels": _channels(vhost, partitions, priorities),
        "operations": _operations(),
        "components": {"schemas": schemas(), "messages": messages()},
    }
