"""Start-up preflight: is every precondition of the broker and the stores met?

Each check answers with one line naming what is missing and how to fix it, so that ``jobtrail
serve`` stops at once with that line instead of serving while events pile up somewhere, and
``jobtrail doctor`` can print them all for an operator. The broker checks act as the tracker
will (declare, publish with confirms, bind, get, and declare a consistent-hash exchange) on
throw-away ``jobtrail.preflight.*`` objects, so permission patterns on ``jobtrail.*`` apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pymongo.errors import PyMongoError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from app.adapters.mongo_log import mongo_client
from app.adapters.rabbit import ClosingConnection
from app.adapters.sql_schema import alembic_config, make_engine

HASH_PLUGIN = "rabbitmq_consistent_hash_exchange"
TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    """One precondition: met or not, what was seen, and the fix when it is not met."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        fix = f" (fix: {self.fix})" if self.fix and not self.ok else ""
        return f"{mark} {self.name}: {self.detail}{fix}"


class _Refused(Exception):
    """A broker step failed: the check's name, what happened, and its fix."""

    def __init__(self, name: str, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.check = Check(name, False, detail, fix)


@contextlib.contextmanager
def _quiet_amqp() -> Iterator[None]:
    """The AMQP libraries log a traceback for every refused step the checks provoke on purpose."""
    loggers = [logging.getLogger(name) for name in ("aiormq", "aio_pika")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _where(url: str) -> tuple[str, str, str]:
    """(host:port, vhost, user) of an AMQP URL, for messages (never the password)."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname}:{parts.port or 5672}", vhost, parts.username or "guest"


async def check_broker(url: str) -> list[Check]:
    """Reachable, vhost open, permissions on ``jobtrail.*``, the consistent-hash plugin."""
    with _quiet_amqp():
        try:
            return await asyncio.wait_for(_broker_steps(url), TIMEOUT_S * 2)
        except _Refused as refused:
            return [refused.check]
        except TimeoutError:
            host, _, _ = _where(url)
            return [Check("broker", False, f"RabbitMQ at {host} did not answer in time")]


async def _broker_steps(url: str) -> list[Check]:
    host, vhost, user = _where(url)
    connection = await _connect(url, host, vhost, user)
    checks = [Check("broker", True, f"RabbitMQ at {host}, vhost {vhost!r}, user {user!r}")]
    try:
        checks.append(await _permissions(connection, vhost, user))
    except _Refused as refused:
        checks.append(refused.check)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    if not checks[-1].ok:
        return checks  # the plugin check declares too: it would only repeat the refusal
    try:
        checks.append(await _hash_plugin(url, host))
    except _Refused as refused:
        checks.append(refused.check)
    return checks


async def _connect(url: str, host: str, vhost: str, user: str) -> aio_pika.abc.AbstractConnection:
    try:
        return await aio_pika.connect(url, timeout=TIMEOUT_S, connection_class=ClosingConnection)
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise _Refused(
            "broker",
            f"RabbitMQ at {host} refused the credentials of user {user!r}",
            "check JOBTRAIL_RABBIT_URL's user and password",
        ) from exc
    except (aiormq.exceptions.AMQPConnectionError, OSError, TimeoutError) as exc:
        raise _Refused(
            "broker",
            f"RabbitMQ at {host} is not reachable ({exc})",
            "start RabbitMQ (rabbitmq-server -detached) or correct JOBTRAIL_RABBIT_URL",
        ) from exc
    except aiormq.exceptions.AMQPError as exc:  # RabbitMQ closes the handshake: no such vhost
        raise _Refused(
            "broker",
            f"RabbitMQ at {host} would not open vhost {vhost!r} for user {user!r}",
            f"rabbitmqctl add_vhost {vhost!r}; "
            f"rabbitmqctl set_permissions -p {vhost!r} {user} '.*' '.*' '.*'",
        ) from exc


async def _permissions(connection: aio_pika.abc.AbstractConnection, vhost: str, user: str) -> Check:
    """Configure, write and read on ``jobtrail.*`` objects, as the tracker needs them."""
    name = f"jobtrail.preflight.{uuid.uuid4().hex[:12]}"
    fix = f"rabbitmqctl set_permissions -p {vhost!r} {user} '^jobtrail\\..*' '^jobtrail\\..*' "
    fix += "'^jobtrail\\..*' (or wider)"
    step = "connect"
    try:
        channel = await connection.channel(publisher_confirms=True)
        step = "configure (declare an exchange and a queue)"
        exchange = await channel.declare_exchange(name, auto_delete=True)
        queue = await channel.declare_queue(name, exclusive=True)
        step = "read (bind a queue to an exchange)"
        await queue.bind(exchange, routing_key="preflight")
        step = "write (publish with confirms)"
        await exchange.publish(aio_pika.Message(b"preflight"), routing_key="preflight")
        step = "read (get from a queue)"
        await queue.get(timeout=TIMEOUT_S, fail=False)
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
    except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException) as exc:
        raise _Refused(
            "permissions", f"user {user!r} may not {step} on {name} in vhost {vhost!r}", fix
        ) from exc
    return Check("permissions", True, f"configure, write and read on jobtrail.* in {vhost!r}")


async def _hash_plugin(url: str, host: str) -> Check:
    """An unknown exchange type closes the whole connection, so this check has one of its own."""
    connection = await aio_pika.connect(url, timeout=TIMEOUT_S, connection_class=ClosingConnection)
    try:
        channel = await connection.channel()
        name = f"jobtrail.preflight.{uuid.uuid4().hex[:12]}.ring"
        exchange = await channel.declare_exchange(name, type="x-consistent-hash", auto_delete=True)
        await exchange.delete()
    except aiormq.exceptions.AMQPError as exc:
        if "unknown exchange type" not in str(exc):
            raise _Refused("consistent-hash plugin", f"declaring a ring failed: {exc}", "") from exc
        raise _Refused(
            "consistent-hash plugin",
            f"RabbitMQ at {host} has no exchange type x-consistent-hash: {HASH_PLUGIN} is off",
            f"rabbitmq-plugins enable {HASH_PLUGIN}",
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return Check("consistent-hash plugin", True, f"{HASH_PLUGIN} is enabled")


async def check_sql(url: str, role: str, *, migrated: bool) -> Check:
    """The SQL database answers (and, if ``migrated``, has the newest schema)."""
    engine = make_engine(url)
    try:
        async with asyncio.timeout(TIMEOUT_S), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            current, head = await conn.run_sync(_revisions)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        return Check(role, False, f"cannot reach the database: {reason}", "check the URL")
    finally:
        await engine.dispose()
    if migrated and current != head:
        return Check(
            role, False, f"schema at {current or 'none'}, newest {head}", "jobtrail migrate"
        )
    return Check(role, True, f"reachable, schema at {current or 'none'} (newest {head})")


def _revisions(connection: Connection) -> tuple[str | None, str | None]:
    current = MigrationContext.configure(connection).get_current_revision()
    return current, ScriptDirectory.from_config(alembic_config()).get_current_head()


async def check_mongo(url: str) -> Check:
    """The MongoDB log answers a ping."""
    try:
        client = mongo_client(url, int(TIMEOUT_S * 1000))
    except (PyMongoError, ValueError) as exc:
        return Check("event log", False, f"the MongoDB URL is refused: {exc}", "correct the URL")
    try:
        await client.admin.command("ping")
    except PyMongoError as exc:
        reason = str(exc).split(",")[0][:200]
        return Check("event log", False, f"MongoDB does not answer: {reason}", "check the URL")
    finally:
        await client.close()
    return Check("event log", True, "MongoDB answers")
