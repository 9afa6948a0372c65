"""``jobtrail doctor``: every precondition of the broker and the stores, one line each."""

from __future__ import annotations

import typer

from app.bootstrap import preflight
from app.entrypoints.cli_common import app, load_settings, run
from app.settings import Settings


@app.command()
def doctor() -> None:
    """Check the broker (reachable, vhost, permissions, plugins) and the stores (reachable,
    migrated); print one line per check; exit 1 if any is not met."""
    settings = load_settings()

    async def work() -> int:
        checks = await preflight(settings, migrated=True)
        for check in checks:
            typer.echo(check.line())
        return 0 if all(check.ok for check in checks) else 1

    run(work)


async def refuse_to_start(settings: Settings, *, api_only: bool = False) -> None:
    """Before ``serve`` (or ``api``) runs anything: stop with one line per unmet precondition
    (exit 2). ``api`` needs no broker for its reads, but stores that are migrated."""
    checks = await preflight(settings, migrated=api_only, broker=not api_only)
    failed = [check for check in checks if not check.ok]
    for check in failed:
        typer.echo(f"jobtrail: {check.line()[5:]}", err=True)
    if failed:
        raise typer.Exit(2)
