"""``jobtrail demo``: watch every feature of Jobtrail within a minute, on the real tracker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from typing import Annotated

import typer

from app.bootstrap import Readers
from app.bootstrap.metrics import Metrics
from app.demo.runner import Summary, run_demo
from app.demo.scenario import DemoConfig
from app.entrypoints.cli_common import JsonOpt, app, fail, load_settings, run
from app.services.health import Health
from app.settings import Settings


@app.command()
def demo(
    rate: Annotated[float, typer.Option(help="Jobs the simulated Cloud submits per second.")] = 20,
    nodes: Annotated[int, typer.Option(help="Simulated nodes (at least 4).")] = 8,
    duration: Annotated[float, typer.Option(help="Seconds before the demo stops itself.")] = 60,
    failure_rate: Annotated[
        float, typer.Option(help="Share of attempts that fail (retryable or not).")
    ] = 0.15,
    slow_nodes: Annotated[
        int | None,
        typer.Option(help="Nodes that stall past their lease (default 1, 0 with --nodes 4)."),
    ] = None,
    flaky_pool: Annotated[
        str, typer.Option(help="A pool whose nodes often fail: its jobs get rerouted.")
    ] = "gpu-flaky",
    seed: Annotated[int, typer.Option(help="Seed of the simulation's dice.")] = 7,
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="API port on 127.0.0.1 (default JOBTRAIL_HTTP_PORT; 0: any)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the tracker with a simulated Cloud and node fleet (retries, reroutes, lease
    expiries, dead letters), serve the dashboard on loopback, stop after --duration seconds
    or on Ctrl-C, and print a summary."""
    try:
        slow = DemoConfig.default_slow_nodes(nodes) if slow_nodes is None else slow_nodes
        config = DemoConfig(rate, nodes, duration, failure_rate, slow, flaky_pool, seed)
    except ValueError as exc:
        fail(str(exc), 2)
    settings = load_settings()
    run(lambda: _demo(settings, config, port, as_json))


async def _demo(settings: Settings, config: DemoConfig, port: int | None, as_json: bool) -> int:
    def say(line: str) -> None:
        typer.echo(line, err=as_json)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        summary = await run_demo(settings, config, stop, say, port, serve=_serve_api)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    _print(summary, as_json)
    return 0


async def _serve_api(
    settings: Settings,
    readers: Readers,
    health: Health | None,
    metrics: Metrics,
    stop: asyncio.Event,
    /,
    *,
    sock: socket.socket,
) -> None:
    """The API beside the demo's tracker, as ``jobtrail serve`` runs it."""
    from app.entrypoints.api_server import serve_api  # FastAPI and uvicorn: only when serving

    await serve_api(settings, readers, health, metrics, stop, sock=sock)


def _print(summary: Summary, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary.as_json()))
        return
    for line in summary.lines():
        typer.echo(line)
