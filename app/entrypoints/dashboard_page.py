"""The operators' dashboard page: one self-contained HTML document (inline CSS, JS and SVG).

It loads nothing from elsewhere. Every 2 s it reads ``stats`` and ``dashboard/data`` (relative
URLs, so it works behind a path prefix) and updates in place; producer-supplied text (job ids,
error messages) is only ever set as ``textContent``, never parsed as HTML.

The page is the Jinja2 template ``templates/dashboard.html``, autoescaped; its script and style
are ``templates/dashboard.js`` and ``templates/dashboard.css``, inlined byte for byte so that
the Content-Security-Policy admits exactly them by hash (app/entrypoints/dashboard.py). All
three ship inside the package (pyproject.toml's package-data), so an installed wheel serves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, Template
from markupsafe import Markup

from app.domain.state import JobStatus

CARD_KEYS = ("total", *(status.value for status in JobStatus))
OUTCOMES = ("completed", "failed", "expired", "dead_lettered")
"""The chart's legend, in the order the script stacks the bars."""


@cache
def _template() -> Template:
    loader = PackageLoader("app.entrypoints", "templates")
    env = Environment(loader=loader, autoescape=True, keep_trailing_newline=True)
    return env.get_template("dashboard.html")


@cache
def _asset(name: str) -> str:
    return (resources.files("app.entrypoints") / "templates" / name).read_text(encoding="utf-8")


def page_script() -> str:
    """The page's whole inline script, as the CSP hashes it."""
    return _asset("dashboard.js")


def page_style() -> str:
    """The page's whole inline style sheet, as the CSP hashes it."""
    return _asset("dashboard.css")


def page_html(cards: Sequence[str] = CARD_KEYS) -> str:
    """The whole page, to be served with a CSP that admits exactly its style and script.

    ``cards`` are the status counters shown (``total`` and every status), escaped like any text.
    """
    # Our own package files, inlined as they are: escaping would break the script and its hash.
    own = {"script": Markup(page_script()), "style": Markup(page_style())}  # noqa: S704
    return _template().render(cards=cards, outcomes=OUTCOMES, **own)
