"""The dashboard's HTTP side against a running tracker: the page, its data, tokens and queues.

The page itself is exercised in a real browser by test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.adapters.rabbit_management import RabbitManagement
from app.bootstrap import open_readers
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.entrypoints.dashboard import DASHBOARD_STATE, NOT_AVAILABLE, Dashboard, dashboard
from app.settings import Settings
from tests import servers
from tests.e2e.harness import new_job_id, publish, status, wait_for, wait_status

READER = "dash-reader-token-0123456789"


def with_dashboard(app: FastAPI, settings: Settings, api_url: str) -> FastAPI:
    """The app with the dashboard (create_api may already include it) reading ``api_url``."""
    if not any(getattr(route, "path", None) == "/dashboard" for route in app.routes):
        app.include_router(dashboard)
    management = RabbitManagement.from_urls(settings.rabbit_url, api_url)
    setattr(app.state, DASHBOARD_STATE, Dashboard(management, settings))
    return app


@asynccontextmanager
async def client(
    stack: dict[str, str], *, tokens: Tokens | None = None, api_url: str = servers.RABBIT_API
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        rabbit_url=stack["JOBTRAIL_RABBIT_URL"],
        log_url=stack["JOBTRAIL_LOG_URL"],
        sql_url=stack["JOBTRAIL_SQL_URL"],
    )
    readers = open_readers(settings)
    app = with_dashboard(
        create_api(settings, readers, tokens=tokens or Tokens()), settings, api_url
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://jobtrail") as http,
        ):
            yield http
    finally:
        await readers.close()


def get(stack: dict[str, str], path: str, **options: Any) -> httpx.Response:
    headers = options.pop("headers", {})

    async def go() -> httpx.Response:
        async with client(stack, **options) as http:
            return await http.get(path, headers=headers)

    return asyncio.run(go())


def submit(stack: dict[str, str], job: str, pool: str) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    publish(
        rabbit,
        lambda c: c.submit(job, job_type="sync", model="m", priority="bulk", tenant="t", pool=pool),
    )
    wait_for(lambda: status(stack, job), f"the submission of {job}")


def test_the_root_leads_to_a_self_contained_page(stack: dict[str, str]) -> None:
    root = get(stack, "/")
    assert (root.status_code, root.headers["location"]) == (307, "dashboard")
    page = get(stack, "/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    # Nothing is loaded from anywhere: no src attributes, no URL but the SVG namespace; links
    # lead only to the dashboard's own job pages.
    assert not re.search(r"\bsrc\s*=", html)
    links = set(re.findall(r"\bhref\s*=\s*\"([^\"]*)\"", html))
    assert links == {"dashboard/jobs", "dashboard/jobs?status=dead_lettered"}
    assert set(re.findall(r"https?://[^\s\"'`]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "@import" not in html and "url(" not in html
    # The CSP admits exactly the inline script and style, and connections to this origin only.
    policy = page.headers["content-security-policy"]
    script = re.search(r"<script>(.*)</script>", html, flags=re.DOTALL)
    style = re.search(r"<style>(.*)</style>", html, flags=re.DOTALL)
    assert script and style
    for source, directive in ((script[1], "script-src"), (style[1], "style-src")):
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in policy
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy


def test_the_data_lists_dead_letters_anomalies_and_queue_health(stack: dict[str, str]) -> None:
    pool = f"dash-{new_job_id()}"
    dead, odd = new_job_id("dead"), new_job_id("odd")
    for job in (dead, odd):
        submit(stack, job, pool)
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    publish(
        rabbit,
        lambda c: c.reserved(dead, 1, "n1"),
        lambda c: c.failed(dead, 1, "n1", "bad_input", "prompt is empty", retryable=False),
        lambda c: c.reserved(odd, 1, "n2"),
        lambda c: c.completed(odd, 1, "n2"),
        lambda c: c.completed(odd, 1, "n2"),  # a second completion: an anomaly
    )
    wait_status(stack, dead, "dead_lettered")
    wait_for(lambda: (status(stack, odd) or {}).get("anomalies"), "the anomaly")

    response = get(stack, "/dashboard/data")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    listed = {d["job_id"]: d for d in data["dead_letters"]["items"]}
    assert listed[dead]["reason"] == "non_retryable"
    assert listed[dead]["error_code"] == "bad_input"
    assert listed[dead]["detail"] == "prompt is empty"
    assert listed[dead]["pool"] == pool
    anomalies = {a["job_id"]: a for a in data["anomalies"]["items"]}
    assert anomalies[odd]["anomalies"] == 1 and anomalies[odd]["status"] == "completed"
    assert dead not in anomalies
    assert data["anomalies"]["scanned"] >= 2
    assert data["queues"]["available"] is True and data["queues"]["message"] is None
    latency = data["latency"]
    assert (latency["source"], latency["by"], latency["minutes"]) == (
        "projection",
        ["pool", "priority"],
        15,
    )
    (group,) = [g for g in latency["groups"] if g["pool"] == pool]
    assert group["priority"] == "bulk"
    counts = [group[m]["count"] for m in ("wait", "run", "end_to_end")]
    assert counts == [2, 2, 1]  # both reserved; one failed, one completed
    assert latency["starved"] == []
    queue = f"jobtrail.work.{pool}.sync"

    def work_queues() -> dict[str, Any]:
        return {q["name"]: q for q in get(stack, "/dashboard/data").json()["queues"]["items"]}

    # Both job messages wait in the pool's queue, unconsumed (the management API's figures
    # refresh every few seconds).
    work = wait_for(lambda: (w := work_queues()).get(queue, {}).get("ready") == 2 and w, queue)
    assert work[queue]["consumers"] == 0 and work[queue]["messages"] == 2
    assert all(name.startswith("jobtrail.work.") for name in work)


def test_without_the_management_api_the_panel_says_so_and_the_rest_renders(
    stack: dict[str, str],
) -> None:
    closed = f"http://127.0.0.1:{servers.free_port()}/api"
    wrong_password = servers.RABBIT_API.replace("://", "://guest:not-the-password@", 1)
    for api_url in (closed, wrong_password):
        response = get(stack, "/dashboard/data", api_url=api_url)
        assert response.status_code == 200, response.text
        queues = response.json()["queues"]
        assert queues["available"] is False
        assert queues["message"] == NOT_AVAILABLE
        assert queues["items"] == []
        assert "not-the-password" not in response.text
        assert "items" in response.json()["dead_letters"]


def test_unknown_query_parameters_are_refused(stack: dict[str, str]) -> None:
    for path in ("/dashboard/data?owner=me", "/asyncapi.json?v=2"):
        response = get(stack, path)
        assert response.status_code == 422
        assert response.json()["error"].startswith("unknown query parameter")


def test_a_read_token_guards_the_data_but_not_the_page(stack: dict[str, str]) -> None:
    tokens = Tokens.of(read=READER)
    assert get(stack, "/dashboard", tokens=tokens).status_code == 200
    for path in ("/dashboard/data", "/stats"):
        assert get(stack, path, tokens=tokens).status_code == 401
        bearer = {"Authorization": f"Bearer {READER}"}
        assert get(stack, path, tokens=tokens, headers=bearer).status_code == 200
