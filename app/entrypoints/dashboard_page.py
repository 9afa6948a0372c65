"""The operators' dashboard pages: self-contained HTML documents (inline CSS, JS and SVG).

It loads nothing from elsewhere. Every 2 s it reads ``stats`` and ``dashboard/data`` (relative
URLs, so it works behind a path prefix) and updates in place; producer-supplied text (job ids,
error messages) is only ever set as ``textContent``, never parsed as HTML.

The page is the Jinja2 template ``templates/dashboard.html``, autoescaped; its script and style
are ``templates/dashboard.js`` and ``templates/dashboard.css``, inlined byte for byte so that
the Content-Security-Policy admits exactly them by hash (app/entrypoints/dashboard.py). All
three ship inside the package (pyproject.toml's package-data), so an installed wheel serves them.

The job pages (``job_page_html``: ``page.html`` and the templates extending it) inline
``pages.js`` and the summary's style followed by ``pages.css`` the same way.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from app.domain.state import JobStatus

CARD_KEYS = ("total", *(status.value for status in JobStatus))
OUTCOMES = ("completed", "failed", "expired", "dead_lettered")
"""The chart's legend, in the order the script stacks the bars."""


@cache
def _environment() -> Environment:
    loader = PackageLoader("app.entrypoints", "templates")
    env = Environment(loader=loader, autoescape=True, keep_trailing_newline=True)
    env.filters["instant"] = instant
    env.filters["duration"] = duration
    return env


def instant(at: datetime) -> str:
    """An instant as the pages show it: UTC, to the millisecond."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def duration(span: timedelta | None) -> str:
    """A duration in seconds to the millisecond, or a dash when it is not known (yet)."""
    return "—" if span is None else f"{span.total_seconds():.3f} s"


@cache
def _asset(name: str) -> str:
    return (resources.files("app.entrypoints") / "templates" / name).read_text(encoding="utf-8")


def page_script() -> str:
    """The page's whole inline script, as the CSP hashes it."""
    return _asset("dashboard.js")


def page_style() -> str:
    """The page's whole inline style sheet, as the CSP hashes it."""
    return _asset("dashboard.css")


def job_pages_script() -> str:
    """The job pages' whole inline script, as their CSP hashes it."""
    return _asset("pages.js")


def job_pages_style() -> str:
    """The job pages' whole inline style sheet: the summary's, then their own."""
    return page_style() + _asset("pages.css")


def content_policy(script: str, style: str, *, form_action: str = "'none'") -> str:
    """The Content-Security-Policy admitting exactly this inline script and style, and fetches
    (and, if ``form_action`` says so, form submissions) to this origin only."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(script)}",
            f"style-src {_sha256(style)}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            f"form-action {form_action}",
            "frame-ancestors 'none'",
        )
    )


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def job_page_html(template: str, **context: Any) -> str:
    """A job page (``job.html``, ``jobs.html``, ``problem.html``) with ``context``, escaped."""
    own = {"script": Markup(job_pages_script()), "style": Markup(job_pages_style())}  # noqa: S704
    return _environment().get_template(template).render(**context, **own)


def page_html(cards: Sequence[str] = CARD_KEYS) -> str:
    """The whole page, to be served with a CSP that admits exactly its style and script.

    ``cards`` are the status counters shown (``total`` and every status), escaped like any text.
    """
    # Our own package files, inlined as they are: escaping would break the script and its hash.
    own = {"script": Markup(page_script()), "style": Markup(page_style())}  # noqa: S704
    return (
        _environment().get_template("dashboard.html").render(cards=cards, outcomes=OUTCOMES, **own)
    )
