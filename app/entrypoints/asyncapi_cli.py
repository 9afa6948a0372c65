"""``jobtrail asyncapi``: the event contract as an AsyncAPI 3.0 document (see asyncapi_doc.py).

The tracker's subscribers take raw bytes (validation is the ingestion service's job, so bad input
can be quarantined), so FastStream's own generator would leave every payload undescribed: the
document is built from the pydantic models ``parse_event`` validates with instead.
``jobtrail asyncapi`` prints or writes it; the API serves it at ``GET /asyncapi.json`` (with the
API's own settings); ``docs/asyncapi.json`` is the copy for the default settings.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import typer

from app.bootstrap import load_policy
from app.entrypoints.asyncapi_doc import contract
from app.entrypoints.cli_common import app, run
from app.settings import Settings


@lru_cache(maxsize=8)
def _rendered(rabbit_url: str, partitions: int, policy_file: Path | None) -> str:
    settings = Settings(rabbit_url=rabbit_url, partitions=partitions, policy_file=policy_file)
    return json.dumps(contract(rabbit_url, partitions, load_policy(settings)))


def event_contract(settings: Settings) -> dict[str, Any]:
    """The document for a tracker running with ``settings`` (built once per configuration).

    Its server, vhost, partitions and priorities are the configuration's; its credentials never
    appear. Callers get their own copy.
    """
    copy: dict[str, Any] = json.loads(
        _rendered(settings.rabbit_url, settings.partitions, settings.policy_file)
    )
    return copy


def render(document: dict[str, Any]) -> str:
    """The document as ``docs/asyncapi.json`` holds it: indented, keys sorted (stable)."""
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


@app.command()
def asyncapi(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of standard output."),
    ] = None,
) -> None:
    """Print (or write) the AsyncAPI 3.0 document of the event contract, as JSON.

    The server, vhost, partitions and priorities are this configuration's (JOBTRAIL_RABBIT_URL,
    JOBTRAIL_PARTITIONS, JOBTRAIL_POLICY_FILE); docs/asyncapi.json is written with the defaults.
    """

    async def work() -> int:
        text = render(event_contract(Settings()))
        if output is None:
            typer.echo(text, nl=False)
            return 0
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot write {output}: {exc.strerror or exc}") from exc
        typer.echo(f"wrote {output}", err=True)
        return 0

    run(work)
