"""What every ``jobtrail`` command shares: the Typer app, settings, error handling, readers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from app.bootstrap import Readers, open_readers
from app.domain.events import JOB_ID_PATTERN
from app.ports import PublishFailed, StoreUnavailable
from app.settings import Settings

app = typer.Typer(
    name="jobtrail",
    help="Event-sourced job-state tracker for RabbitMQ job queues.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
T = TypeVar("T")
# Typer vendors click; its UsageError is public only as the base class of typer.BadParameter.
USAGE_ERROR: type[Any] = typer.BadParameter.__bases__[0]


def job_id_arg(value: str) -> str:
    if not re.fullmatch(JOB_ID_PATTERN, value):
        raise typer.BadParameter(f"{value[:60]!r} is not a job id (1-200 of A-Z a-z 0-9 . _ : -)")
    return value


JobIdArg = Annotated[str, typer.Argument(help="The job's id.", callback=job_id_arg)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on standard output.")]


def _require_sqlite_file(url: str, settings: Settings) -> None:
    """A SQLite database whose folder is missing (a command run from another directory than
    ``serve``, with the relative embedded default) is named, with the fix, instead of SQLite's
    bare "unable to open database file"."""
    if not url.startswith("sqlite") or ":///" not in url:
        return
    path = Path(url.split(":///", 1)[1].split("?", 1)[0])
    if str(path) in ("", ":memory:") or path.parent.is_dir():
        return  # (a missing file in an existing folder is SQLite's to create, as ever)
    fail(
        f"no Jobtrail database at {path} (the embedded default lives in JOBTRAIL_DATA_DIR, "
        f"now {settings.data_dir}: run there, or set JOBTRAIL_DATA_DIR or the URL; "
        "`jobtrail migrate` creates it)",
        3,
    )


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"jobtrail: {message}", err=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        fail(f"invalid setting JOBTRAIL_{str(first['loc'][0]).upper()}: {message}", 2)


def run_returning(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine and return its result; expected failures become one line and an exit
    code (``typer.Exit``)."""
    try:
        return asyncio.run(work())
    except (StoreUnavailable, PublishFailed) as exc:
        fail(str(exc) or exc.__class__.__name__, 3)
    except ValueError as exc:
        fail(str(exc), 2)


def run(work: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run a command's coroutine; turn expected failures into one line and an exit code."""
    raise typer.Exit(run_returning(work))


async def with_readers(settings: Settings, work: Callable[[Readers], Awaitable[int]]) -> int:
    """Open the log and projections, run ``work``, close them."""
    for url in (settings.sql_url, settings.log_url):
        _require_sqlite_file(url, settings)
    readers = open_readers(settings)
    try:
        return await work(readers)
    finally:
        await readers.close()
