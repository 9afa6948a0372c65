"""``jobtrail serve --workers N``: N tracker processes under one supervisor.

The supervisor prepares once (the HTTP socket, preflight, migrations: concurrent Alembic runs
would race), then starts N worker processes (``spawn``: a fresh interpreter each, as uvicorn's
workers) that run the tracker on the shared socket; the kernel gives each new connection to one
of them. The workers share the partitions through the membership table, like separate ``jobtrail
serve`` processes. A worker that dies is started again, after a growing delay while it keeps
dying soon after its start, until the supervisor gives up; SIGINT or SIGTERM stops every worker,
SIGKILL after ``JOBTRAIL_STOP_GRACE_S``. Nothing heavy is imported here: the workers import the
tracker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, NoReturn

import typer

from app.backoff import Backoff
from app.entrypoints import logs
from app.entrypoints.cli_common import fail, run, run_returning
from app.settings import Settings

log = logging.getLogger("jobtrail.supervisor")

MAX_WORKERS = 256
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Serve = Callable[[Settings, socket.socket | None], Coroutine[Any, Any, int]]
"""Runs one tracker until SIGTERM (``cli._serve``); a worker passes the supervisor's socket."""
Prepare = Callable[[Settings], Coroutine[Any, Any, socket.socket]]
"""Listens, runs the preflight and the migrations; the socket the workers share."""


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead worker is started again, and when the supervisor gives up on it."""

    settle_s: float = 10.0
    """A worker that ran this long had started fine: when it dies it is started again at once."""
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_early_exits: int = 5
    """Exits in a row within ``settle_s`` of starting after which the supervisor gives up."""

    def delay(self, early_exits: int) -> float | None:
        """Seconds before the next start after ``early_exits`` early exits in a row; None: give
        up (a worker that cannot start, such as one whose stores refuse it, is not looped on)."""
        if early_exits >= self.max_early_exits:
            return None
        if early_exits == 0:
            return 0.0
        first = min(self.first_delay_s, self.max_delay_s)  # a first delay over the cap is the cap
        return Backoff(first, self.max_delay_s).nth(early_exits - 1)


def worker_count(settings: Settings, requested: int | None) -> int:
    """How many trackers ``serve`` runs: ``--workers``, else JOBTRAIL_WORKERS, else the machine's
    cores when both stores take several writers and 1 with SQLite; ValueError for several
    workers on SQLite."""
    sqlite = [
        name
        for name, url in (("event log", settings.log_url), ("projections", settings.sql_url))
        if url.startswith("sqlite")
    ]
    wanted = requested if requested is not None else settings.workers
    if wanted is None:
        return 1 if sqlite else os.cpu_count() or 1
    if wanted > 1 and sqlite:
        raise ValueError(
            f"{wanted} workers need stores that take several writers, but SQLite (one writer) "
            f"holds the {' and the '.join(sqlite)}: "
            "use PostgreSQL (JOBTRAIL_SQL_URL, JOBTRAIL_LOG_URL) or MongoDB (JOBTRAIL_LOG_URL), "
            "or --workers 1"
        )
    return wanted


def serve_with_workers(
    settings: Settings, requested: int | None, *, prepare: Prepare, serve: Serve
) -> NoReturn:
    """``jobtrail serve``: one tracker in this process, or N worker processes under a supervisor."""
    try:
        count = worker_count(settings, requested)
    except ValueError as exc:
        fail(str(exc), 2)
    if count == 1:
        run(lambda: serve(settings, None))  # exactly the single-process serve: no supervisor
    if count > settings.partitions:
        log.warning(
            "%d workers share %d partitions: %d of them consume none (JOBTRAIL_PARTITIONS)",
            count,
            settings.partitions,
            count - settings.partitions,
        )
    sock = run_returning(lambda: prepare(settings))
    try:
        code = Supervisor(settings, count, sock, serve).run()
    finally:
        sock.close()
    raise typer.Exit(code)


@dataclass
class _Worker:
    process: BaseProcess
    started: float


class Supervisor:
    """Keeps ``count`` worker processes running ``serve`` on ``sock`` until SIGINT / SIGTERM."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        sock: socket.socket,
        serve: Serve,
        *,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings, self._count, self._sock, self._serve = settings, count, sock, serve
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._due: dict[int, float] = {}
        """Workers (by index) waiting to be started again, and when."""
        self._early: dict[int, int] = {}
        self._signals: list[int] = []
        self._wake_r, self._wake_w = -1, -1

    def run(self) -> int:
        """Start the workers and keep them running until a stop signal; the exit code: 0 when
        every worker stopped when asked, 1 otherwise or when a worker could not be kept up."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        failure: str | None = None
        try:
            for index in range(1, self._count + 1):
                self._start(index)
            failure = self._watch()
        finally:
            clean = self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        if failure is not None:  # one line, after the workers' own lines that say why
            typer.echo(f"jobtrail: {failure}", err=True)
            return 1
        log.info("jobtrail workers stopped", extra={"clean": clean})
        return 0 if clean else 1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self._signals.append(signum)
        with contextlib.suppress(BlockingIOError):  # a full pipe: a wake-up is pending anyway
            os.write(self._wake_w, b"\0")

    def _watch(self) -> str | None:
        """Wait for a signal or a worker's exit; start again what died. A reason to give up, or
        None once a stop signal came."""
        while not self._signals:
            sentinels = [worker.process.sentinel for worker in self._workers.values()]
            ready = wait([self._wake_r, *sentinels], timeout=self._until_due())
            if self._wake_r in ready:
                os.read(self._wake_r, 512)
            if self._signals:
                break  # exits from now on are the stop's
            ended = [i for i, w in self._workers.items() if w.process.exitcode is not None]
            for index in ended:
                if (failure := self._ended(index)) is not None:
                    return failure
            self._start_due()
        log.info(
            "jobtrail workers stopping", extra={"signal": signal.Signals(self._signals[0]).name}
        )
        return None

    def _ended(self, index: int) -> str | None:
        """Schedule the next start of the worker that exited; a reason to give up if none."""
        worker = self._workers.pop(index)
        pid, code = worker.process.pid, worker.process.exitcode
        worker.process.close()
        lived = self._clock() - worker.started
        early = self._early.get(index, 0) + 1 if lived < self._policy.settle_s else 0
        self._early[index] = early
        delay = self._policy.delay(early)
        if delay is None:
            return (
                f"worker {index} exited {early} times in a row within "
                f"{self._policy.settle_s:g} s of starting (last: {_exit(code)}); giving up"
            )
        log.warning(
            "jobtrail worker exited; starting another",
            extra={"worker": index, "pid": pid, "exit": _exit(code), "restart_in_s": delay},
        )
        self._due[index] = self._clock() + delay
        return None

    def _until_due(self) -> float | None:
        """Seconds until the next restart is due (None: none is)."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - self._clock())

    def _start_due(self) -> None:
        now = self._clock()
        for index in [i for i, at in self._due.items() if at <= now]:
            del self._due[index]
            self._start(index)

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=_worker_main,
            args=(self._serve, self._settings, index, self._sock),
            name=f"jobtrail-worker-{index}",
        )
        process.start()
        self._workers[index] = _Worker(process, self._clock())
        log.info("jobtrail worker started", extra={"worker": index, "pid": process.pid})

    def _stop_all(self) -> bool:
        """SIGTERM every worker, wait up to the grace period, SIGKILL the rest; whether every
        worker stopped when asked."""
        workers = sorted(self._workers.items())
        for _, worker in workers:
            if worker.process.exitcode is None:
                worker.process.terminate()
        deadline = self._clock() + self._settings.stop_grace_s
        for _, worker in workers:
            worker.process.join(max(0.0, deadline - self._clock()))
        stopped = [
            self._stopped(index, worker) for index, worker in workers
        ]  # each one, no short cut
        self._workers.clear()
        return all(stopped)

    def _stopped(self, index: int, worker: _Worker) -> bool:
        """Kill ``worker`` if it is still running; whether it had stopped when asked."""
        fields: dict[str, Any] = {"worker": index, "pid": worker.process.pid}
        if worker.process.exitcode is None:
            grace = self._settings.stop_grace_s
            log.error("jobtrail worker still running after %gs; killed", grace, extra=fields)
            worker.process.kill()
            worker.process.join()
            return False
        code = worker.process.exitcode
        asked = code in (0, -signal.SIGTERM)  # -SIGTERM: stopped before its handler was set
        log.log(
            logging.INFO if asked else logging.WARNING,
            "jobtrail worker stopped",
            extra=fields | {"exit": _exit(code)},
        )
        return asked


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


class _WorkerTag(logging.Filter):
    """Names the worker (index and pid) on every record a worker process logs."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._index
        record.pid = record.process
        return True


def _worker_main(serve: Serve, settings: Settings, index: int, sock: socket.socket) -> None:
    """A worker process (spawned): the tracker on the supervisor's socket, its lines tagged."""
    logs.configure(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    try:
        code = run_returning(lambda: serve(settings, sock))
    except typer.Exit as exc:  # an expected failure, already said in one line
        code = exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C reached it before its own handler was set
        code = 130
    except Exception:
        log.exception("jobtrail worker failed")
        code = 1
    sys.exit(code)
